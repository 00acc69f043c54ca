//! Failover benchmark: how long a mail client waits for a floating address to greet again,
//! clusterd side by side with keepalived (VRRP) in the same lab topology and the same run.
//!
//! Lab: two mail nodes (real dovecot and postfix) and a witness in network namespaces. The
//! measured address is mx1's 192.0.2.101. A greeting watch in the client namespace opens a new
//! IMAP connection to it every 10 ms (many in flight); a failover takes from the fault injection
//! to the first greeting from the new owner. Each round faults whichever node owns the address
//! now and undoes the fault afterwards (failback is manual, so the address stays put).
//!
//! - clusterd: kill -9 of the owner's daemon, SIGSTOP of it, a partition of the owner from the
//!   other nodes (nftables in its namespace; the client still reaches it), its link down at the
//!   switch; the owner being the Raft leader and its daemon killed (each round first moves the
//!   address to the leader); and planned moves (`clusterctl move`), with the unserved time as
//!   the client saw it and as clusterd reported it.
//! - keepalived (the same address, VRRP between mx1 and mx2, equal priority, nopreempt), with
//!   its default timing (VRRPv2, advert 1 s) and a fast one (VRRPv3, advert 0.1 s): kill -9 of
//!   all its processes on the master, SIGSTOP of them, link down. (A partition that leaves the
//!   client connected makes both nodes master: keepalived has no quorum; not measured.)
//!
//! The address sampler and the ARP prober run throughout (every 50 ms here, to load the shared
//! machine less) and the duplicate time they saw is reported per fault.
//!
//! Run as root: `cargo build --release -p clusterd --bins && cargo bench -p clusterd-tests
//! --bench failover`. `FAILOVER_ROUNDS` (default 20) sets the rounds per fault;
//! `FAILOVER_ANCHOR=none` skips keepalived (`apt-get install -y keepalived` to have it);
//! `FAILOVER_FAULTS` (default `kill,stop,partition,deaf,mute,link,leader,move`) picks the fault
//! kinds (`deaf`, `mute`: one-way partitions of the owner, it hears no peer / no peer hears it).
//! `FAILOVER_CONFIG` is TOML added to every node's clusterd config (e.g. a `[leases]` section).
//! Every process and namespace is the lab's and goes with it; every wait is bounded.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clusterd_tests::lab::clusterd::built_binary;
use clusterd_tests::lab::keepalived::{self, Keepalived, Vrrp};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::{AddressSampler, ArpProber, HolderTimeline};
use clusterd_tests::watch::GreetingWatch;
use clusterd_tests::{Fault, Lab, LabSpec, Placement};
use nix::sys::signal::Signal;

const WATCH_EVERY: Duration = Duration::from_millis(10);
const WATCH_TIMEOUT: Duration = Duration::from_millis(500);
const MONITOR_EVERY: Duration = Duration::from_millis(50);
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// The fast keepalived setting.
const VRRP_FAST: Vrrp = Vrrp {
    version: 3,
    advert: Duration::from_millis(100),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Kill,
    Stop,
    Partition,
    Deaf,
    Mute,
    LinkDown,
    LeaderKill,
    Move,
}

impl Kind {
    /// The faults (everything but planned moves).
    const UNPLANNED: [Kind; 7] = [
        Kind::Kill,
        Kind::Stop,
        Kind::Partition,
        Kind::Deaf,
        Kind::Mute,
        Kind::LinkDown,
        Kind::LeaderKill,
    ];
    const ALL: [Kind; 8] = [
        Kind::Kill,
        Kind::Stop,
        Kind::Partition,
        Kind::Deaf,
        Kind::Mute,
        Kind::LinkDown,
        Kind::LeaderKill,
        Kind::Move,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Kill => "kill -9 of the owner's daemon",
            Kind::Stop => "SIGSTOP of the owner's daemon",
            Kind::Partition => "owner partitioned from the other nodes",
            Kind::Deaf => "one-way: owner hears no peer, still sends",
            Kind::Mute => "one-way: owner's sends lost, still hears",
            Kind::LinkDown => "owner's link down",
            Kind::LeaderKill => "kill -9 of the owner, the Raft leader",
            Kind::Move => "planned move (clusterctl move)",
        }
    }

    /// The name `FAILOVER_FAULTS` uses.
    fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Stop => "stop",
            Kind::Partition => "partition",
            Kind::Deaf => "deaf",
            Kind::Mute => "mute",
            Kind::LinkDown => "link",
            Kind::LeaderKill => "leader",
            Kind::Move => "move",
        }
    }
}

/// The fault kinds `FAILOVER_FAULTS` names (all by default).
fn chosen_kinds() -> Result<Vec<Kind>> {
    let Ok(list) = std::env::var("FAILOVER_FAULTS") else {
        return Ok(Kind::ALL.to_vec());
    };
    list.split(',')
        .map(|name| {
            Kind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .with_context(|| {
                    format!(
                        "FAILOVER_FAULTS: unknown fault {name:?}; use a comma-separated list of \
                         kill, stop, partition, deaf, mute, link, leader, move"
                    )
                })
        })
        .collect()
}

/// The measurements of one fault kind under one mechanism.
#[derive(Debug, Default)]
struct Series {
    /// Fault to first greeting from the new owner; `None`: not within the bound.
    took: Vec<Option<Duration>>,
    /// Whether the owner was the Raft leader when faulted (clusterd only).
    owner_led: Vec<bool>,
    /// Planned moves: the client's gap between the old owner's last and the new owner's first
    /// greeting, and clusterd's reported unserved time.
    client_gap: Vec<Duration>,
    reported_unserved: Vec<Duration>,
    /// Network-visible duplicate time (ARP prober) and address-level duplicate time (sampler).
    dup_network: Duration,
    dup_configured: Duration,
    /// Stale addresses removed by hand to go on (keepalived after kill -9).
    cleanups: usize,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let rounds: usize = std::env::var("FAILOVER_ROUNDS")
        .ok()
        .map(|v| v.parse().context("FAILOVER_ROUNDS must be a number"))
        .transpose()?
        .unwrap_or(20);
    let anchor = std::env::var("FAILOVER_ANCHOR").unwrap_or_else(|_| "keepalived".into());
    let clusterd_bin = std::env::var_os("CLUSTERD_BIN")
        .map(PathBuf::from)
        .or_else(|| built_binary("clusterd"))
        .context(
            "no clusterd binary next to the bench: build it first with \
             `cargo build --release -p clusterd --bins` (or set CLUSTERD_BIN)",
        )?;
    let keepalived_version = match anchor.as_str() {
        "none" => None,
        "keepalived" => Some(keepalived::version().context(
            "keepalived is not installed: apt-get install -y keepalived (or FAILOVER_ANCHOR=none)",
        )?),
        other => bail!("FAILOVER_ANCHOR={other}: use keepalived or none"),
    };
    println!("# failover bench: {rounds} rounds per fault");
    println!("machine: {}", machine_note());
    println!("clusterd: {}", clusterd_bin.display());
    if let Some(v) = &keepalived_version {
        println!("anchor: {v}");
    }

    let kinds = chosen_kinds()?;
    let started = Instant::now();
    println!("\n## clusterd (load {})", loadavg());
    let clusterd = clusterd_phase(&clusterd_bin, rounds, &kinds)?;
    let mut anchors = Vec::new();
    if keepalived_version.is_some() {
        for vrrp in [Vrrp::DEFAULT, VRRP_FAST] {
            println!("\n## keepalived, {} (load {})", vrrp.label(), loadavg());
            anchors.push((vrrp, keepalived_phase(vrrp, rounds, &kinds)?));
        }
    }
    println!(
        "\nload at the end: {}; the run took {:?}",
        loadavg(),
        started.elapsed()
    );
    print!("{}", report(&clusterd, &anchors, rounds));
    Ok(())
}

/// Start a watch on `ip`:143 and the two monitors (lighter sampling than in tests).
fn instruments(lab: &Lab, ip: IpAddr) -> Result<GreetingWatch> {
    Ok(GreetingWatch::start(
        lab,
        SocketAddr::new(ip, 143),
        WATCH_EVERY,
        WATCH_TIMEOUT,
        Duration::from_secs(7200),
    )?)
}

fn monitors(lab: &Lab) -> Result<(AddressSampler, ArpProber)> {
    let targets = lab.state().floating.iter().map(|f| f.ip).collect();
    Ok((
        AddressSampler::start_with(lab, MONITOR_EVERY, Duration::from_secs(3600))?,
        ArpProber::start_with(lab, targets, MONITOR_EVERY, Duration::from_secs(3600))?,
    ))
}

fn duplicate_time(t: &HolderTimeline) -> Duration {
    t.duplicates()
        .iter()
        .map(|d| d.until.unwrap_or(t.last_sample).saturating_sub(d.from))
        .sum()
}

fn stop_monitors(m: (AddressSampler, ArpProber), series: &mut Series) {
    let configured = m.0.stop();
    let network = m.1.stop();
    series.dup_configured +=
        duplicate_time(&configured.sampled).max(duplicate_time(&configured.events));
    series.dup_network += duplicate_time(&network.timeline).max(duplicate_time(&network.echo));
}

// ---------------------------------------------------------------------------------------------
// clusterd
// ---------------------------------------------------------------------------------------------

/// A fresh clusterd lab with mx1 serving the measured address, and a watch on it. One lab per
/// fault kind, so the lab lock (which other lab users wait for) is never held for long.
fn clusterd_lab(bin: &std::path::Path) -> Result<(TestLab, IpAddr, GreetingWatch)> {
    let lab = TestLab::up(LabSpec {
        clusterd_bin: Some(bin.to_owned()),
        clusterctl_bin: bin.parent().map(|d| d.join("clusterctl")),
        placement: Some(Placement::ManualFailback),
        extra_config: std::env::var("FAILOVER_CONFIG").unwrap_or_default(),
        ..LabSpec::default()
    })?;
    let ip = IpAddr::V4(lab.floating_of("mx1")?);
    lab.wait_for_greeter(ip, "mx1", Duration::from_secs(20))?;
    let watch = instruments(&lab, ip)?;
    Ok((lab, ip, watch))
}

fn clusterd_phase(
    bin: &std::path::Path,
    rounds: usize,
    kinds: &[Kind],
) -> Result<HashMap<Kind, Series>> {
    let mut out = HashMap::new();
    for kind in Kind::UNPLANNED {
        if !kinds.contains(&kind) {
            continue;
        }
        let (mut lab, ip, watch) = clusterd_lab(bin)?;
        let mut series = Series::default();
        let mon = monitors(&lab)?;
        for round in 0..rounds {
            let mut owner = settle_clusterd(&lab, ip)?;
            let mut leader = lab.wait_for_leader(Duration::from_secs(20))?;
            if kind == Kind::LeaderKill {
                (owner, leader) = owner_leads(&mut lab, ip)?;
            }
            let other = if owner == "mx1" { "mx2" } else { "mx1" };
            let (fault, undo) = match kind {
                Kind::Kill | Kind::LeaderKill => (Fault::Kill, Fault::Restart),
                Kind::Stop => (Fault::Stop, Fault::Cont),
                Kind::Partition => (Fault::Partition { from: None }, Fault::Heal),
                Kind::Deaf => (Fault::DeafTo { from: None }, Fault::Heal),
                Kind::Mute => (Fault::MuteTo { to: None }, Fault::Heal),
                _ => (Fault::LinkDown, Fault::LinkUp),
            };
            watch.drain();
            let t0 = Instant::now();
            lab.fault(&owner, fault)?;
            let took = watch.wait_for(other, FAILOVER_BOUND).map(|t| t - t0);
            lab.fault(&owner, undo)?;
            println!(
                "{:<40} round {:>2}: {owner}{} -> {other}: {}",
                kind.label(),
                round + 1,
                if leader == owner { " (leader)" } else { "" },
                took.map_or("no greeting within 20 s".into(), |d| format!(
                    "{:.0} ms",
                    ms(d)
                ))
            );
            series.took.push(took);
            series.owner_led.push(leader == owner);
        }
        settle_clusterd(&lab, ip)?;
        stop_monitors(mon, &mut series);
        out.insert(kind, series);
        watch.stop();
        lab.down()?;
    }
    if !kinds.contains(&Kind::Move) {
        return Ok(out);
    }
    // Planned moves.
    let (mut lab, ip, watch) = clusterd_lab(bin)?;
    let mut series = Series::default();
    let mon = monitors(&lab)?;
    for round in 0..rounds {
        let owner = settle_clusterd(&lab, ip)?;
        let other = if owner == "mx1" { "mx2" } else { "mx1" };
        watch.drain();
        let t0 = Instant::now();
        let said = lab.clusterctl(&owner, &["move", &ip.to_string(), other])?;
        let mut last_old = t0;
        let mut first_new = None;
        let deadline = t0 + FAILOVER_BOUND;
        while first_new.is_none() && Instant::now() < deadline {
            match watch.next(Duration::from_millis(200)) {
                Some(g) if g.node.as_deref() == Some(other) => first_new = Some(g.at),
                Some(g) if g.node.as_deref() == Some(owner.as_str()) => last_old = g.at,
                _ => {}
            }
        }
        let took = first_new.map(|t| t - t0);
        let gap = first_new.map(|t| t.saturating_duration_since(last_old));
        let reported = said
            .split("unserved for ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .map(Duration::from_millis);
        println!(
            "{:<40} round {:>2}: {owner} -> {other}: first greeting after {}, client gap {}, \
             clusterd reports {}",
            Kind::Move.label(),
            round + 1,
            took.map_or("-".into(), |d| format!("{:.0} ms", ms(d))),
            gap.map_or("-".into(), |d| format!("{:.0} ms", ms(d))),
            reported.map_or("-".into(), |d| format!("{} ms", d.as_millis())),
        );
        series.took.push(took);
        series.client_gap.extend(gap);
        series.reported_unserved.extend(reported);
    }
    stop_monitors(mon, &mut series);
    out.insert(Kind::Move, series);
    watch.stop();
    lab.down()?;
    Ok(out)
}

/// Make the Raft leader own `ip`: move the address to it if it is a mail node, else restart
/// the witness's daemon until a mail node leads (bounded). Returns (owner, leader), settled.
fn owner_leads(lab: &mut Lab, ip: IpAddr) -> Result<(String, String)> {
    let mut tried = Vec::new();
    for _ in 0..10 {
        let owner = settle_clusterd(lab, ip)?;
        let leader = lab.wait_for_leader(Duration::from_secs(20))?;
        if leader == owner {
            return Ok((owner, leader));
        }
        tried.push(format!("{owner} owns, {leader} leads"));
        if leader == "mx1" || leader == "mx2" {
            lab.clusterctl(&leader, &["move", &ip.to_string(), &leader])?;
        } else {
            // The witness leads: stop its daemon until a mail node leads, then restart it.
            lab.fault(&leader, Fault::Kill)?;
            let elected = lab.wait_for_new_leader(&leader, Duration::from_secs(20));
            lab.fault(&leader, Fault::Restart)?;
            elected?;
        }
    }
    bail!(
        "could not make the owner of {ip} the Raft leader in 10 tries: {}",
        tried.join("; ")
    )
}

/// Wait until every daemon agrees on a leader, the address has an owner that greets, and the
/// other mail node has had time to renew its lease (so it is a fit target). Returns the owner.
fn settle_clusterd(lab: &Lab, ip: IpAddr) -> Result<String> {
    let leader = lab.wait_for_leader(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let owner = loop {
        let owner = lab.cluster_status(&leader)?.owner_of(&ip.to_string());
        let greeter = lab.imap_greeter(ip);
        if let Some(o) = owner.clone()
            && greeter.as_deref() == Some(o.as_str())
        {
            break o;
        }
        if Instant::now() >= deadline {
            bail!(
                "{ip} has no serving owner 30 s after the last fault: {leader} (leader) says \
                 {owner:?} owns it, {greeter:?} greets on it; {leader}'s status:\n{}",
                lab.clusterctl(&leader, &["status"])
                    .unwrap_or_else(|e| e.to_string())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Several leases of renewals by every node, and past a new leader's quiet period.
    std::thread::sleep(Duration::from_millis(2500));
    Ok(owner)
}

// ---------------------------------------------------------------------------------------------
// keepalived
// ---------------------------------------------------------------------------------------------

fn keepalived_phase(vrrp: Vrrp, rounds: usize, kinds: &[Kind]) -> Result<HashMap<Kind, Series>> {
    let mut out = HashMap::new();
    for kind in [Kind::Kill, Kind::Stop, Kind::LinkDown] {
        if !kinds.contains(&kind) {
            continue;
        }
        // A fresh lab per fault kind, as for clusterd.
        let mut lab = TestLab::up(LabSpec {
            run_daemons: false,
            ..LabSpec::default()
        })?;
        let fl = lab.state().floating[0].clone();
        let IpAddr::V4(vip) = fl.ip else {
            bail!("the lab's first floating address is not IPv4");
        };
        let ip = fl.ip;
        let mut running: HashMap<String, Keepalived> = HashMap::new();
        for name in ["mx1", "mx2"] {
            running.insert(
                name.into(),
                Keepalived::start(lab.node(name)?, vip, fl.prefix_len, vrrp)?,
            );
        }
        let watch = instruments(&lab, ip)?;
        let mut series = Series::default();
        let mon = monitors(&lab)?;
        for round in 0..rounds {
            let owner = settle_keepalived(&lab, ip, fl.prefix_len, &mut series)?;
            let other = if owner == "mx1" { "mx2" } else { "mx1" };
            watch.drain();
            let t0 = Instant::now();
            match kind {
                Kind::Kill => running
                    .get_mut(&owner)
                    .context("no keepalived on the owner")?
                    .kill()?,
                Kind::Stop => running
                    .get(&owner)
                    .context("no keepalived on the owner")?
                    .signal_all(Signal::SIGSTOP)?,
                _ => lab.fault(&owner, Fault::LinkDown)?,
            }
            let took = watch.wait_for(other, FAILOVER_BOUND).map(|t| t - t0);
            match kind {
                Kind::Kill => {
                    running.remove(&owner);
                    running.insert(
                        owner.clone(),
                        Keepalived::start(lab.node(&owner)?, vip, fl.prefix_len, vrrp)?,
                    );
                }
                Kind::Stop => running
                    .get(&owner)
                    .context("no keepalived on the owner")?
                    .signal_all(Signal::SIGCONT)?,
                _ => lab.fault(&owner, Fault::LinkUp)?,
            }
            println!(
                "{:<40} round {:>2}: {owner} -> {other}: {}",
                kind.label(),
                round + 1,
                took.map_or("no greeting within 20 s".into(), |d| format!(
                    "{:.0} ms",
                    ms(d)
                ))
            );
            if took.is_none() {
                for name in ["mx1", "mx2"] {
                    println!(
                        "  {name}: keepalived last logged {:?}, addresses {:?}",
                        keepalived::last_state(lab.node(name)?),
                        lab.addresses_of(name)?
                    );
                }
            }
            series.took.push(took);
        }
        settle_keepalived(&lab, ip, fl.prefix_len, &mut series)?;
        stop_monitors(mon, &mut series);
        out.insert(kind, series);
        watch.stop();
        for (_, k) in running.drain() {
            k.stop()?;
        }
        lab.down()?;
    }
    Ok(out)
}

/// Wait until exactly one mail node has the address, the client greets from it, and that holds
/// for a second. A node left with the address after its keepalived died (the kernel keeps it)
/// is cleaned by hand after 10 s, and counted. Returns the holder.
fn settle_keepalived(lab: &Lab, ip: IpAddr, prefix_len: u8, series: &mut Series) -> Result<String> {
    let cidr = format!("{ip}/{prefix_len}");
    let start = Instant::now();
    let mut stable_since: Option<(Instant, String)> = None;
    loop {
        let mut holders = Vec::new();
        for name in ["mx1", "mx2"] {
            if lab.addresses_of(name)?.contains(&cidr) {
                holders.push(name.to_string());
            }
        }
        let greeter = lab.imap_greeter(ip);
        match (holders.as_slice(), greeter) {
            ([one], Some(g)) if *one == g => match &stable_since {
                Some((since, who)) if *who == g => {
                    if since.elapsed() >= Duration::from_secs(1) {
                        return Ok(g);
                    }
                }
                _ => stable_since = Some((Instant::now(), g)),
            },
            ([_, _], _) if start.elapsed() > Duration::from_secs(10) => {
                // Two holders for 10 s: remove the address where keepalived is not master.
                for name in ["mx1", "mx2"] {
                    let state = keepalived::last_state(lab.node(name)?);
                    if state.as_deref() != Some("MASTER") {
                        let iface = lab.node(name)?.iface.clone();
                        lab.ip(name, &["addr", "del", &cidr, "dev", &iface])?;
                        println!("  {name} ({state:?}) kept {cidr} for 10 s: removed it by hand");
                        series.cleanups += 1;
                    }
                }
                stable_since = None;
            }
            _ => stable_since = None,
        }
        if start.elapsed() > Duration::from_secs(40) {
            bail!("keepalived did not settle on one holder of {cidr} within 40 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn stats(values: impl IntoIterator<Item = Duration>) -> Option<(Duration, Duration, Duration)> {
    let mut v: Vec<Duration> = values.into_iter().collect();
    v.sort();
    Some((percentile(&v, 0.5)?, percentile(&v, 0.99)?, *v.last()?))
}

fn cell(values: impl IntoIterator<Item = Duration>) -> String {
    stats(values).map_or("-".into(), |(p50, p99, max)| {
        format!("{:.0} / {:.0} / {:.0}", ms(p50), ms(p99), ms(max))
    })
}

fn done(s: &Series) -> Vec<Duration> {
    s.took.iter().flatten().copied().collect()
}

fn report(
    clusterd: &HashMap<Kind, Series>,
    anchors: &[(Vrrp, HashMap<Kind, Series>)],
    n: usize,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n## Fault to first IMAP greeting from the new owner, ms (p50 / p99 / max), {n} rounds"
    );
    let mut header = "| fault | clusterd |".to_string();
    let mut rule = "|---|---|".to_string();
    for (vrrp, _) in anchors {
        let _ = write!(
            header,
            " keepalived {} | clusterd / keepalived (p50) |",
            vrrp.label()
        );
        rule.push_str("---|---|");
    }
    let _ = writeln!(t, "{header}\n{rule}");
    for kind in Kind::ALL {
        let Some(c) = clusterd.get(&kind) else {
            continue;
        };
        let c_p50 = stats(done(c)).map(|s| s.0);
        let mut row = format!("| {} | {} |", kind.label(), cell(done(c)));
        for (_, a) in anchors {
            match a.get(&kind) {
                Some(k) => {
                    let ratio = match (c_p50, stats(done(k)).map(|s| s.0)) {
                        (Some(c), Some(k)) if !k.is_zero() => format!("{:.2}", ms(c) / ms(k)),
                        _ => "-".into(),
                    };
                    let _ = write!(row, " {} | {ratio} |", cell(done(k)));
                }
                None => row.push_str(" n/a | - |"),
            }
        }
        let _ = writeln!(t, "{row}");
    }
    let _ = writeln!(t, "\n## Details");
    for kind in Kind::UNPLANNED {
        if let Some(c) = clusterd.get(&kind) {
            let split = |led: bool| {
                c.took
                    .iter()
                    .zip(&c.owner_led)
                    .filter(|(_, l)| **l == led)
                    .filter_map(|(t, _)| *t)
                    .collect::<Vec<_>>()
            };
            let _ = writeln!(
                t,
                "clusterd, {}: owner not the leader {} (n={}), owner the leader {} (n={}); \
                 no greeting within 20 s: {}; duplicates seen: network {:?}, configured {:?}",
                kind.label(),
                cell(split(false)),
                split(false).len(),
                cell(split(true)),
                split(true).len(),
                c.took.iter().filter(|t| t.is_none()).count(),
                c.dup_network,
                c.dup_configured
            );
        }
    }
    if let Some(m) = clusterd.get(&Kind::Move) {
        let _ = writeln!(
            t,
            "clusterd, planned moves: client's gap between old and new owner's greetings {}; \
             unserved time clusterd reported {}; duplicates seen: network {:?}, configured {:?}",
            cell(m.client_gap.iter().copied()),
            cell(m.reported_unserved.iter().copied()),
            m.dup_network,
            m.dup_configured
        );
    }
    for (vrrp, a) in anchors {
        for kind in [Kind::Kill, Kind::Stop, Kind::LinkDown] {
            if let Some(k) = a.get(&kind) {
                let _ = writeln!(
                    t,
                    "keepalived {}, {}: no greeting within 20 s: {}; duplicates seen: network \
                     {:?}, configured {:?}; stale addresses removed by hand: {}",
                    vrrp.label(),
                    kind.label(),
                    k.took.iter().filter(|t| t.is_none()).count(),
                    k.dup_network,
                    k.dup_configured,
                    k.cleanups
                );
            }
        }
    }
    t
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine_note() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("?".into(), |kb| format!("{} GiB", kb / 1024 / 1024));
    format!("{cpus} x {model}, {mem}, load {}", loadavg())
}
