//! Running a chaos schedule in a real lab, with every observer on, and judging the result.
//!
//! Observers, all running throughout (restarted in windows of at most [`WINDOW`], overlapping,
//! because each stops by itself after ten minutes):
//! - the invariant monitors: the address sampler (netlink in every node, guard-aware), the
//!   kernel's address events, the client's ARP/ND prober and ICMP echo to every node's MAC;
//! - a greeting watch per floating address: a new IMAP connection every [`GREET_EVERY`];
//! - a DNS sampler: `mail.lab.example. A` from the client to each mail node in turn;
//! - a status sampler per node: `clusterctl status --json` every second.
//!
//! After every burst the campaign waits for the quiet point: every daemon alive, every
//! address greeting a client, every node agreeing on the owners, operator actions undone (a
//! drained node undrained, the learner back). Reaching it takes at most [`HEALED_BOUND`] or
//! the run fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clusterd::status::StatusReport;
use clusterd_dns::proto::op::{Message, Query};
use clusterd_dns::proto::rr::{Name, RData, RecordType};
use clusterd_dns::proto::serialize::binary::BinDecodable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::check::{self, DnsAnswer, StatusSample};
use super::schedule::{Action, Schedule, Step};
use crate::lab::clusterd::LAB_ZONE;
use crate::lab::process::ns_command;
use crate::lab::state::CLUSTERD_PORT;
use crate::lab::testing::TestLab;
use crate::lab::{Fault, LabError, LabSpec, LabState, Result, netns};
use crate::monitor::{HolderTimeline, Monitors, Observed};
use crate::watch::{GreetingWatch, WatchLog};

/// Longest life of one set of observers before the next set takes over.
pub const WINDOW: Duration = Duration::from_secs(420);

/// A new IMAP connection to every floating address this often.
pub const GREET_EVERY: Duration = Duration::from_millis(20);

/// After the last fault of a burst healed, every address is served again, every node agrees
/// on every owner and every operator action is undone within this.
pub const HEALED_BOUND: Duration = Duration::from_secs(10);

/// The lease of the lab's clusterd (the default): how long DNS may go on naming an address
/// nobody serves.
pub const LEASE: Duration = Duration::from_millis(800);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The schedule.
    pub schedule: Schedule,
    /// Stop starting bursts after this long (the run still ends with a quiet point).
    pub max_duration: Option<Duration>,
    /// Where the schedule, the report and (on failure) the daemons' logs are written.
    pub out_dir: PathBuf,
    /// Parent of the lab's run directory.
    pub run_root: PathBuf,
}

/// What a run found and measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Faults injected.
    pub faults: usize,
    /// Bursts completed.
    pub bursts: usize,
    /// Faults per kind.
    pub kinds: BTreeMap<String, usize>,
    /// Bursts in which faults overlapped.
    pub overlapping_bursts: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Every violation, with the burst it appeared in.
    pub violations: Vec<String>,
    /// Operator actions that failed (allowed during faults; counted, not violations).
    pub refused_actions: Vec<String>,
    /// Observations made.
    pub address_samples: u64,
    /// Points from kernel address events and guard readings.
    pub event_points: u64,
    /// ARP/ND rounds.
    pub arp_rounds: u64,
    /// ICMP echo rounds.
    pub echo_rounds: u64,
    /// Greetings received.
    pub greetings: u64,
    /// Connection attempts that got no greeting.
    pub failed_greetings: u64,
    /// Greetings that went from one node to another and back within the flap window, each
    /// explained by the history as two handovers (not violations).
    pub handed_back: u64,
    /// DNS answers received.
    pub dns_answers: u64,
    /// Status samples taken.
    pub status_samples: u64,
    /// History events checked.
    pub history_events: u64,
    /// Highest Raft term seen.
    pub max_term: u64,
    /// Per burst: from the last heal until every address greeted again.
    pub served_after_heal: Vec<Duration>,
    /// Per burst: from the last heal until every node agreed on the owners.
    pub agreed_after_heal: Vec<Duration>,
    /// Longest time DNS went on naming an address nobody held, during the faults (outside
    /// them it is a violation beyond one lease).
    pub dns_stale_max: Duration,
}

impl Outcome {
    /// The outcome as the text block the campaign prints and BENCHMARKS.md quotes.
    pub fn summary(&self) -> String {
        let pct = |v: &[Duration], p: f64| -> String {
            if v.is_empty() {
                return "-".into();
            }
            let mut s = v.to_vec();
            s.sort();
            let i = ((s.len() as f64 - 1.0) * p).round() as usize;
            format!("{:.2} s", s[i].as_secs_f64())
        };
        let kinds: Vec<String> = self.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        format!(
            "{} faults in {} bursts ({} with overlapping faults) in {:.0} s; kinds: {}\n\
             violations: {}\n\
             observed: {} address samples, {} kernel-event points, {} ARP/ND rounds, {} ICMP \
             echo rounds, {} greetings ({} attempts without one), {} DNS answers, {} status \
             samples, {} history events\n\
             highest Raft term: {}\n\
             served again after the last heal: p50 {}, p99 {}, max {} (bound {:?})\n\
             nodes agreeing after the last heal: p50 {}, max {}\n\
             longest time DNS named an address nobody held (during faults): {:.2} s\n\
             operator actions refused during faults: {}\n\
             addresses handed over and back within {:?} (each explained by the history): {}",
            self.faults,
            self.bursts,
            self.overlapping_bursts,
            self.elapsed.as_secs_f64(),
            kinds.join(", "),
            self.violations.len(),
            self.address_samples,
            self.event_points,
            self.arp_rounds,
            self.echo_rounds,
            self.greetings,
            self.failed_greetings,
            self.dns_answers,
            self.status_samples,
            self.history_events,
            self.max_term,
            pct(&self.served_after_heal, 0.5),
            pct(&self.served_after_heal, 0.99),
            pct(&self.served_after_heal, 1.0),
            HEALED_BOUND,
            pct(&self.agreed_after_heal, 0.5),
            pct(&self.agreed_after_heal, 1.0),
            self.dns_stale_max.as_secs_f64(),
            self.refused_actions.len(),
            check::FLAP_WINDOW,
            self.handed_back,
        )
    }
}

/// The lab a schedule runs in: its shape, the learner, DNS answering fail-closed so that every
/// answer claims its addresses are served.
pub fn lab_spec(schedule: &Schedule) -> LabSpec {
    let shape = &schedule.shape;
    let voters: Vec<String> = shape.voters().iter().map(|v| format!("{v:?}")).collect();
    LabSpec {
        mail_nodes: shape.mail_nodes,
        witness: shape.witness,
        extra_config: format!("\n[cluster]\nvoters = [{}]\n", voters.join(", ")),
        dns_fail_open: Some(false),
        ready_timeout: Duration::from_secs(60),
        ..LabSpec::default()
    }
}

/// Run `opts.schedule` in a new lab; `progress` gets a line per burst. The outcome lists the
/// violations; an `Err` means the campaign itself could not run (no lab, no observers).
pub fn run(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Outcome> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| io(&opts.out_dir, e))?;
    let schedule_file = opts.out_dir.join("schedule.json");
    let json = serde_json::to_vec_pretty(&opts.schedule)
        .map_err(|e| LabError::State(format!("writing the schedule: {e}")))?;
    std::fs::write(&schedule_file, json).map_err(|e| io(&schedule_file, e))?;
    let lab = TestLab::up(LabSpec {
        run_root: opts.run_root.clone(),
        ..lab_spec(&opts.schedule)
    })?;
    let mut c = Campaign::start(lab, opts)?;
    let result = c.run_all(progress);
    let outcome = c.finish(result);
    std::fs::write(opts.out_dir.join("report.txt"), report_text(opts, &outcome))
        .map_err(|e| io(&opts.out_dir, e))?;
    Ok(outcome)
}

/// The report written next to the schedule.
fn report_text(opts: &Options, outcome: &Outcome) -> String {
    let mut s = outcome.summary();
    s.push_str("\n\n");
    for v in &outcome.violations {
        s.push_str("VIOLATION: ");
        s.push_str(v);
        s.push('\n');
    }
    for r in &outcome.refused_actions {
        s.push_str("refused: ");
        s.push_str(r);
        s.push('\n');
    }
    s.push_str(&format!(
        "\nreplay: lab chaos --replay {}\n\n",
        opts.out_dir.join("schedule.json").display()
    ));
    s.push_str(&opts.schedule.describe());
    s
}

fn io(path: &std::path::Path, e: std::io::Error) -> LabError {
    LabError::State(format!("{}: {e}", path.display()))
}

/// One set of observers.
struct Window {
    started: Instant,
    monitors: Monitors,
    watches: Vec<(IpAddr, GreetingWatch)>,
}

/// A running operator command.
struct Pending {
    what: String,
    child: Child,
    deadline: Instant,
}

struct Campaign<'a> {
    lab: TestLab,
    opts: &'a Options,
    origin: Instant,
    window: Option<Window>,
    /// Per node, which life of its daemon runs (bumped at every kill and start).
    lives: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    status_threads: Vec<JoinHandle<Vec<StatusSample>>>,
    dns_thread: Option<JoinHandle<Vec<DnsAnswer>>>,
    timelines: Vec<HolderTimeline>,
    histories: check::Histories,
    /// The wall clock at `origin` (unix ms), to place history events on the greetings' clock.
    origin_unix_ms: u64,
    /// Greetings that went back and forth between two nodes, judged at the end.
    flaps: Vec<check::Flap>,
    /// From each quiet point to the start of the next burst: when DNS is judged strictly.
    quiet: Vec<(Instant, Instant)>,
    /// When the last quiet point was reached.
    quiet_since: Option<Instant>,
    pending: Vec<Pending>,
    /// Nodes whose daemon the schedule has down (killed, not yet restarted).
    down: BTreeSet<String>,
    /// Nodes drained by the schedule and not yet undrained.
    drained: BTreeSet<String>,
    learner_out: bool,
    rng: StdRng,
    out: Outcome,
}

impl<'a> Campaign<'a> {
    fn start(lab: TestLab, opts: &'a Options) -> Result<Campaign<'a>> {
        let shape = &opts.schedule.shape;
        // Served by someone: a learner joins after the voters placed its home address
        // elsewhere, and gets it back only with failback.
        for (ip, _) in &shape.addresses {
            let ip: IpAddr = ip
                .parse()
                .map_err(|e| LabError::State(format!("schedule address {ip}: {e}")))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while lab.imap_greeter(ip).is_none() {
                if Instant::now() >= deadline {
                    return Err(LabError::Timeout {
                        what: format!("an IMAP greeting on {ip}"),
                        after: Duration::from_secs(30),
                    });
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        let lives: BTreeMap<String, u64> = shape.nodes().into_iter().map(|n| (n, 0)).collect();
        let mut c = Campaign {
            origin: Instant::now(),
            window: None,
            lives: Arc::new(Mutex::new(lives)),
            stop: Arc::new(AtomicBool::new(false)),
            status_threads: Vec::new(),
            dns_thread: None,
            timelines: Vec::new(),
            histories: check::Histories::default(),
            origin_unix_ms: clusterd::clock::unix_ms(),
            flaps: Vec::new(),
            quiet: Vec::new(),
            quiet_since: Some(Instant::now()),
            pending: Vec::new(),
            down: BTreeSet::new(),
            drained: BTreeSet::new(),
            learner_out: false,
            rng: StdRng::seed_from_u64(opts.schedule.seed ^ 0x5eed),
            out: Outcome::default(),
            lab,
            opts,
        };
        c.window = Some(c.open_window()?);
        c.start_samplers()?;
        Ok(c)
    }

    fn open_window(&self) -> Result<Window> {
        let monitors = Monitors::start(&self.lab)?;
        let mut watches = Vec::new();
        for (ip, _) in &self.opts.schedule.shape.addresses {
            let ip: IpAddr = ip
                .parse()
                .map_err(|e| LabError::State(format!("schedule address {ip}: {e}")))?;
            let w = GreetingWatch::start(
                &self.lab,
                SocketAddr::new(ip, 143),
                GREET_EVERY,
                Duration::from_secs(1),
                Duration::from_secs(600),
            )?;
            watches.push((ip, w));
        }
        Ok(Window {
            started: Instant::now(),
            monitors,
            watches,
        })
    }

    /// Stop a window and judge what it saw.
    fn close_window(&mut self, w: Window) {
        let seen: Observed = w.monitors.stop();
        if let Err(report) = seen.never_two_holders() {
            // Which of the four views saw it (the report names the first).
            let views = [
                ("sampled addresses", &seen.addresses),
                ("kernel events", &seen.events),
                ("ARP/ND", &seen.network.timeline),
                ("ICMP echo", &seen.network.echo),
            ];
            let saw: Vec<&str> = views
                .iter()
                .filter(|(_, tl)| !tl.duplicates().is_empty())
                .map(|(name, _)| *name)
                .collect();
            self.violation(
                None,
                format!("two holders (seen by: {}): {report}", saw.join(", ")),
            );
        }
        self.out.address_samples += seen.addresses.samples;
        self.out.event_points += seen.events.samples;
        self.out.arp_rounds += seen.network.timeline.samples;
        self.out.echo_rounds += seen.network.echo.samples;
        self.timelines.push(seen.addresses);
        for (ip, watch) in w.watches {
            let log: WatchLog = watch.stop();
            self.out.greetings += log.greetings.len() as u64;
            self.out.failed_greetings += log.failed;
            // Judged at the end, against the whole history (a flap may be two handovers).
            self.flaps
                .extend(check::greeting_flaps(ip, &log.greetings, self.origin));
        }
    }

    fn start_samplers(&mut self) -> Result<()> {
        let st = self.lab.state().clone();
        for node in self.opts.schedule.shape.nodes() {
            let (st, stop, lives) = (st.clone(), self.stop.clone(), self.lives.clone());
            let h = thread::Builder::new()
                .name(format!("status-{node}"))
                .spawn(move || sample_status(&st, &node, &stop, &lives))
                .map_err(|e| LabError::State(format!("starting a status sampler: {e}")))?;
            self.status_threads.push(h);
        }
        let servers: Vec<(String, IpAddr)> = st
            .mail_nodes()
            .map(|n| (n.name.clone(), IpAddr::V4(n.ipv4)))
            .collect();
        let (client_ns, stop) = (st.client.netns.clone(), self.stop.clone());
        let h = thread::Builder::new()
            .name("dns-sampler".into())
            .spawn(move || sample_dns(&client_ns, &servers, &stop))
            .map_err(|e| LabError::State(format!("starting the DNS sampler: {e}")))?;
        self.dns_thread = Some(h);
        Ok(())
    }

    fn violation(&mut self, burst: Option<usize>, what: String) {
        let at = self.origin.elapsed();
        let text = match burst {
            Some(b) => format!("burst {b} ({at:.1?} into the run): {what}"),
            None => format!("{at:.1?} into the run: {what}"),
        };
        self.out.violations.push(text);
    }

    fn run_all(&mut self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let started = Instant::now();
        let bursts = self.opts.schedule.bursts.clone();
        for (i, burst) in bursts.iter().enumerate() {
            if self
                .opts
                .max_duration
                .is_some_and(|m| started.elapsed() >= m)
            {
                progress(&format!("time is up after {i} bursts"));
                break;
            }
            if self
                .window
                .as_ref()
                .is_some_and(|w| w.started.elapsed() >= WINDOW)
            {
                let next = self.open_window()?;
                if let Some(old) = self.window.replace(next) {
                    self.close_window(old);
                }
            }
            let before = self.out.violations.len();
            self.run_burst(i, &burst.steps)?;
            self.out.bursts += 1;
            self.out.faults += burst.steps.len();
            for st in &burst.steps {
                *self
                    .out
                    .kinds
                    .entry(st.action.name().to_owned())
                    .or_default() += 1;
            }
            if burst
                .steps
                .windows(2)
                .any(|w| w[1].at_ms < w[0].busy_until_ms())
            {
                self.out.overlapping_bursts += 1;
            }
            let served = self
                .out
                .served_after_heal
                .last()
                .copied()
                .unwrap_or_default();
            progress(&format!(
                "burst {i}: {} fault(s) [{}], served again {:.2} s after the last heal{}",
                burst.steps.len(),
                burst
                    .steps
                    .iter()
                    .map(|s| format!("{} {}", s.action.name(), s.node))
                    .collect::<Vec<_>>()
                    .join(", "),
                served.as_secs_f64(),
                if self.out.violations.len() > before {
                    " -- VIOLATION"
                } else {
                    ""
                }
            ));
        }
        Ok(())
    }

    /// Inject one burst's faults on their timeline, heal them, wait for the quiet point.
    fn run_burst(&mut self, burst: usize, steps: &[Step]) -> Result<()> {
        // Events: (time, is_end, step index); ends before starts at the same instant.
        let mut events: Vec<(u64, bool, usize)> = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            events.push((s.at_ms, false, i));
            if s.for_ms > 0 {
                events.push((s.end_ms(), true, i));
            }
        }
        events.sort_by_key(|(t, end, i)| (*t, !*end, *i));
        let begun = Instant::now();
        if let Some(q) = self.quiet_since.take() {
            self.quiet.push((q, begun));
        }
        for (t, end, i) in events {
            let due = begun + Duration::from_millis(t);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            let step = &steps[i];
            let r = if end {
                self.heal(step)
            } else {
                self.inject(step)
            };
            if let Err(e) = r {
                self.violation(
                    Some(burst),
                    format!(
                        "the lab could not {} {:?} on {}: {e}",
                        if end { "heal" } else { "inject" },
                        step.action,
                        step.node
                    ),
                );
            }
        }
        // Operator actions (a drill plays a failed node until it ends) are part of the burst:
        // the quiet point is counted from the last of them.
        self.reap_operators(burst);
        let healed = Instant::now();
        self.settle(burst, healed);
        Ok(())
    }

    fn bump(&self, node: &str) {
        if let Ok(mut l) = self.lives.lock() {
            *l.entry(node.to_owned()).or_default() += 1;
        }
    }

    fn inject(&mut self, step: &Step) -> Result<()> {
        let node = step.node.as_str();
        match &step.action {
            Action::Kill => {
                self.bump(node);
                self.down.insert(node.to_owned());
                self.lab.fault(node, Fault::Kill)
            }
            Action::Freeze => self.lab.fault(node, Fault::Stop),
            Action::Partition { peer } => self
                .lab
                .fault(node, Fault::Partition { from: peer.clone() }),
            Action::DeafTo { peer } => self.lab.fault(node, Fault::DeafTo { from: peer.clone() }),
            Action::MuteTo { peer } => self.lab.fault(node, Fault::MuteTo { to: peer.clone() }),
            Action::LinkDown => self.lab.fault(node, Fault::LinkDown),
            Action::RestartAll { graceful } => {
                let names = self.lab.node_names();
                for n in &names {
                    self.bump(n);
                }
                if *graceful {
                    for n in &names {
                        self.lab.fault(n, Fault::Restart)?;
                    }
                    Ok(())
                } else {
                    self.lab.restart_all_daemons()
                }
                .inspect(|_| {
                    for n in &names {
                        self.bump(n);
                    }
                })
            }
            Action::Starve => self.lab.fault(node, Fault::Starve),
            Action::ServiceDown { service } => self.lab.fault(node, Fault::ServiceStop(*service)),
            Action::Move { address } => {
                self.operator(&["move", address, node, "--timeout", "8"], 10)
            }
            Action::Drain => {
                self.drained.insert(node.to_owned());
                self.operator(&["drain", node, "--timeout", "8"], 10)
            }
            Action::Drill => self.operator(&["drill", "node", node, "--bound", "10s"], 30),
            Action::LearnerOut => {
                self.learner_out = true;
                self.operator(&["members", "remove", node], 10)
            }
        }
    }

    fn heal(&mut self, step: &Step) -> Result<()> {
        let node = step.node.as_str();
        match &step.action {
            Action::Kill => {
                self.bump(node);
                self.down.remove(node);
                self.lab.fault(node, Fault::Restart)
            }
            Action::Freeze => self.lab.fault(node, Fault::Cont),
            Action::Partition { .. } | Action::DeafTo { .. } | Action::MuteTo { .. } => {
                self.lab.fault(node, Fault::Heal)
            }
            Action::LinkDown => self.lab.fault(node, Fault::LinkUp),
            Action::Starve => self.lab.fault(node, Fault::Unstarve),
            Action::ServiceDown { service } => self.lab.fault(node, Fault::ServiceStart(*service)),
            Action::Drain => self.operator(&["undrain", node], 10),
            Action::LearnerOut => {
                self.operator(&add_learner(node).each_ref().map(String::as_str), 10)
            }
            Action::RestartAll { .. } | Action::Move { .. } | Action::Drill => Ok(()),
        }
    }

    /// Start `clusterctl ARGS` on a node whose daemon is up (chosen at random), in the
    /// background; it is waited for (at most `secs`) at the quiet point.
    fn operator(&mut self, args: &[&str], secs: u64) -> Result<()> {
        let up: Vec<String> = self
            .lab
            .state()
            .nodes
            .iter()
            .filter(|n| {
                !self.down.contains(&n.name)
                    && n.clusterd.is_some_and(|p| p.alive() && !p.stopped())
            })
            .map(|n| n.name.clone())
            .collect();
        let Some(via) = up.get(self.rng.random_range(0..up.len().max(1))).cloned() else {
            self.out.refused_actions.push(format!(
                "clusterctl {}: no daemon up to ask",
                args.join(" ")
            ));
            return Ok(());
        };
        let mut cmd = clusterctl_command(self.lab.state(), &via, args)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .map_err(|e| LabError::State(format!("starting clusterctl: {e}")))?;
        self.pending.push(Pending {
            what: format!("clusterctl {} (via {via})", args.join(" ")),
            child,
            deadline: Instant::now() + Duration::from_secs(secs),
        });
        Ok(())
    }

    /// Wait for the running operator commands (bounded); failures are counted.
    fn reap_operators(&mut self, burst: usize) {
        for mut p in std::mem::take(&mut self.pending) {
            let status = loop {
                match p.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < p.deadline => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    _ => break None,
                }
            };
            let Some(status) = status else {
                let _ = p.child.kill();
                let _ = p.child.wait();
                self.violation(
                    Some(burst),
                    format!("{} gave no answer within its bound", p.what),
                );
                continue;
            };
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = p.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                self.out.refused_actions.push(format!(
                    "burst {burst}: {} exited {}: {}",
                    p.what,
                    status.code().unwrap_or(-1),
                    err.trim()
                ));
            }
        }
    }

    /// The quiet point after a burst: every daemon alive, every address served, every node
    /// agreeing on the owners, every operator action undone, within [`HEALED_BOUND`].
    fn settle(&mut self, burst: usize, healed: Instant) {
        let deadline = healed + HEALED_BOUND;
        let shape = self.opts.schedule.shape.clone();
        let ips: Vec<IpAddr> = shape
            .addresses
            .iter()
            .filter_map(|(ip, _)| ip.parse().ok())
            .collect();
        let mut served: Option<Duration> = None;
        let mut agreed: Option<Duration> = None;
        let mut last = String::new();
        let mut unserved: Vec<IpAddr> = Vec::new();
        let mut next_fix = Instant::now();
        while Instant::now() < deadline && (served.is_none() || agreed.is_none()) {
            if served.is_none() {
                unserved = ips
                    .iter()
                    .copied()
                    .filter(|ip| self.lab.imap_greeter(*ip).is_none())
                    .collect();
                if unserved.is_empty() {
                    served = Some(healed.elapsed());
                }
            }
            if agreed.is_none() {
                match self.agreement(&shape) {
                    Ok(()) => agreed = Some(healed.elapsed()),
                    Err(why) => {
                        last = why;
                        if Instant::now() >= next_fix {
                            self.undo_operator_actions(burst);
                            next_fix = Instant::now() + Duration::from_secs(2);
                        }
                    }
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.reap_operators(burst);
        for n in &self.lab.state().nodes.clone() {
            if !n.clusterd.is_some_and(|p| p.alive()) {
                self.violation(
                    Some(burst),
                    format!("clusterd on {} is not running", n.name),
                );
            }
        }
        match served {
            Some(d) => self.out.served_after_heal.push(d),
            None => self.violation(
                Some(burst),
                format!(
                    "{unserved:?} still gave the client no IMAP greeting {HEALED_BOUND:?} after \
                     the last heal (nodes' view: {last})"
                ),
            ),
        }
        match agreed {
            Some(d) => {
                self.out.agreed_after_heal.push(d);
                if served.is_some() {
                    self.quiet_since = Some(Instant::now());
                }
                self.drained.clear();
                self.learner_out = false;
            }
            None => self.violation(
                Some(burst),
                format!("the nodes did not agree {HEALED_BOUND:?} after the last heal: {last}"),
            ),
        }
        if let Some(w) = &self.window {
            for (_, watch) in &w.watches {
                watch.drain();
            }
        }
        // Histories at the quiet point: checked against each other at the end.
        for n in shape.nodes() {
            if let Ok(h) = self.lab.history(&n) {
                self.out.history_events += h.len() as u64;
                self.histories.add(&n, &h);
            }
        }
    }

    /// `Ok` when every node answers, all name the same leader, the same owner for every
    /// address, no node is drained and the learner is a member; otherwise what differs.
    fn agreement(&self, shape: &super::schedule::Shape) -> std::result::Result<(), String> {
        let mut views = BTreeMap::new();
        for n in shape.nodes() {
            let out = self
                .lab
                .clusterctl(&n, &["status", "--json"])
                .map_err(|e| format!("{n}: {e}"))?;
            let r: StatusReport =
                serde_json::from_str(&out).map_err(|e| format!("{n}: status: {e}"))?;
            let owners: Vec<(String, Option<String>)> = r
                .addresses
                .iter()
                .map(|a| (a.ip.clone(), a.owner.clone()))
                .collect();
            if owners.iter().any(|(_, o)| o.is_none()) {
                return Err(format!("{n} sees an address without owner: {owners:?}"));
            }
            if let Some(d) = r
                .nodes
                .iter()
                .find(|m| m.admin != clusterd::model::AdminState::Active)
            {
                return Err(format!("{n} sees {} {:?}", d.name, d.admin));
            }
            if let Some(l) = shape.learner_name()
                && !r.nodes.iter().any(|m| m.name == l)
            {
                return Err(format!("{n} does not list the learner {l}"));
            }
            views.insert(n, (r.leader, owners));
        }
        let distinct: BTreeSet<_> = views.values().collect();
        if distinct.len() == 1 {
            Ok(())
        } else {
            Err(format!("views differ: {views:?}"))
        }
    }

    /// Undrain every drained node and add the learner back, if the schedule left them so
    /// (their commands may have been refused during the faults).
    fn undo_operator_actions(&mut self, burst: usize) {
        for n in std::mem::take(&mut self.drained) {
            let _ = self.operator(&["undrain", &n], 5);
        }
        if self.learner_out
            && let Some(l) = self.opts.schedule.shape.learner_name()
        {
            let _ = self.operator(&add_learner(&l).each_ref().map(String::as_str), 5);
        }
        self.reap_operators(burst);
    }

    /// Stop every observer and judge; a campaign error becomes a violation too.
    fn finish(mut self, result: Result<()>) -> Outcome {
        if let Err(e) = result {
            self.violation(None, format!("the campaign stopped: {e}"));
        }
        if let Some(w) = self.window.take() {
            self.close_window(w);
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for h in std::mem::take(&mut self.status_threads) {
            samples.extend(h.join().unwrap_or_default());
        }
        samples.sort_by_key(|s| s.at);
        self.out.status_samples = samples.len() as u64;
        self.out.max_term = samples.iter().map(|s| s.term).max().unwrap_or(0);
        for v in check::epochs_never_go_back(&samples, self.origin) {
            self.violation(None, v);
        }
        let answers = self
            .dns_thread
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        self.out.dns_answers = answers.len() as u64;
        if answers.is_empty() {
            self.violation(None, "the DNS sampler got no answer at all".into());
        }
        if let Some(q) = self.quiet_since.take() {
            self.quiet.push((q, Instant::now()));
        }
        self.out.dns_stale_max = answers
            .iter()
            .flat_map(|a| check::dns_staleness(a, &self.timelines))
            .filter_map(|(_, d)| d)
            .max()
            .unwrap_or_default();
        for v in check::dns_matches_holders(&answers, &self.timelines, &self.quiet, LEASE) {
            self.violation(None, format!("DNS: {v}"));
        }
        for f in std::mem::take(&mut self.flaps) {
            let owners: Vec<(Instant, String)> = self
                .histories
                .owner_changes(f.ip)
                .into_iter()
                .filter_map(|(ms, to)| {
                    let at = self
                        .origin
                        .checked_add(Duration::from_millis(ms.checked_sub(self.origin_unix_ms)?))?;
                    Some((at, to))
                })
                .collect();
            if check::flap_explained(&f, &owners) {
                self.out.handed_back += 1;
            } else {
                self.violation(None, format!("greetings from two nodes: {}", f.text));
            }
        }
        let finals: Vec<String> = self.opts.schedule.shape.nodes();
        for v in self.histories.finish(&finals) {
            self.violation(None, format!("history: {v}"));
        }
        for n in &self.lab.state().nodes.clone() {
            let log = std::fs::read_to_string(n.dir.join("clusterd.log")).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
                self.violation(None, format!("clusterd on {} panicked: {line}", n.name));
            }
        }
        self.out.elapsed = self.origin.elapsed();
        if !self.out.violations.is_empty() {
            let logs = self.opts.out_dir.join("logs");
            let _ = std::fs::create_dir_all(&logs);
            for n in &self.lab.state().nodes {
                let _ = std::fs::copy(
                    n.dir.join("clusterd.log"),
                    logs.join(format!("{}.log", n.name)),
                );
            }
        }
        self.out
    }
}

/// `members add` arguments that put the learner back.
fn add_learner(node: &str) -> [String; 6] {
    let i: u8 = node.trim_start_matches("mx").parse().unwrap_or(0);
    let ip = crate::lab::topology::node_ipv4(i);
    [
        "members".into(),
        "add".into(),
        node.into(),
        format!("{ip}:{CLUSTERD_PORT}"),
        "--role".into(),
        "mail".into(),
    ]
}

/// `clusterctl --config <node's config> ARGS` inside node `via`, not yet started.
fn clusterctl_command(st: &LabState, via: &str, args: &[&str]) -> Result<Command> {
    let node = st.node(via)?;
    let bin = st
        .clusterctl_bin
        .as_ref()
        .ok_or_else(|| LabError::State("no clusterctl binary known to this lab".into()))?;
    let config = node
        .clusterd_config
        .as_ref()
        .ok_or_else(|| LabError::State(format!("{via} has no clusterd config")))?;
    let mut cmd = ns_command(&node.netns, bin);
    cmd.arg("--config").arg(config).args(args);
    Ok(cmd)
}

/// Every second until `stop`: node's `status --json`, tagged with the life of its daemon (a
/// sample during which the life changed is dropped).
fn sample_status(
    st: &LabState,
    node: &str,
    stop: &AtomicBool,
    lives: &Mutex<BTreeMap<String, u64>>,
) -> Vec<StatusSample> {
    let life = || {
        lives
            .lock()
            .ok()
            .and_then(|l| l.get(node).copied())
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    let Ok(me) = st.node(node) else {
        return out;
    };
    while !stop.load(Ordering::Relaxed) {
        let before = life();
        let at = Instant::now();
        if let Ok(text) = crate::lab::clusterd::clusterctl(st, me, &["status", "--json"])
            && let Ok(r) = serde_json::from_str::<StatusReport>(&text)
            && life() == before
        {
            out.push(StatusSample {
                at,
                node: node.to_owned(),
                life: before,
                leader: r.leader,
                term: r.term,
                owners: r
                    .addresses
                    .into_iter()
                    .map(|a| (a.ip, (a.owner, a.epoch)))
                    .collect(),
            });
        }
        let next = at + Duration::from_secs(1);
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    out
}

/// Every 100 ms until `stop`, from the client namespace: `mail.<zone> A` to the next mail
/// node's DNS server (300 ms to answer).
fn sample_dns(client_ns: &str, servers: &[(String, IpAddr)], stop: &AtomicBool) -> Vec<DnsAnswer> {
    let mut out = Vec::new();
    if netns::enter(client_ns).is_err() {
        return out;
    }
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return out;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(300)));
    let Ok(name) = Name::from_ascii(format!("mail.{LAB_ZONE}")) else {
        return out;
    };
    let mut id: u16 = 0;
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        for (server, ip) in servers {
            id = id.wrapping_add(1);
            let mut q = Message::query();
            q.metadata.id = id;
            q.add_query(Query::query(name.clone(), RecordType::A));
            let Ok(wire) = q.to_vec() else { continue };
            let sent = Instant::now();
            if sock.send_to(&wire, SocketAddr::new(*ip, 53)).is_err() {
                continue;
            }
            // Drain until our answer (late answers to earlier ids are skipped).
            while sent.elapsed() < Duration::from_millis(300) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    break;
                };
                let Ok(m) = Message::from_bytes(&buf[..n]) else {
                    continue;
                };
                if m.metadata.id != id {
                    continue;
                }
                let addresses = m
                    .answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        _ => None,
                    })
                    .collect();
                out.push(DnsAnswer {
                    at: Instant::now(),
                    server: server.clone(),
                    addresses,
                });
                break;
            }
            thread::sleep(Duration::from_millis(100));
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    out
}
