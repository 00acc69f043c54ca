//! Service failure as a mail client sees it, in the lab with real dovecot, postfix and clusterd
//! at default check settings (interval 1 s, fast_interval 100 ms, timeout 1 s, rise 2, fall 2,
//! listener watch on):
//!
//! 1. Failover: stop dovecot on the owner of 192.0.2.101 (SIGTERM: dovecot greets nobody from
//!    then on but keeps its listening sockets until its processes exit, about 1 s later), or
//!    crash it (SIGKILL of its master), then time until an IMAP client in the client namespace
//!    gets the other node's greeting on that address. Then start dovecot again and repeat the
//!    other way round (failback is manual here, so each run moves the address once). p50/p99/max
//!    over the runs, from the fault and from the exit of dovecot's processes.
//! 2. CPU cost: CPU time of clusterd on a mail node with its three probes, next to the
//!    witness's clusterd, which runs no probes, over the same minute, per component: the
//!    daemon, the children it ran and reaped (plugins, `postqueue`), and the children still
//!    running (the guard's long-lived `nft -i`, which `/proc/PID/stat`'s child times miss).
//!
//! Run as root, with release binaries of the current tree (the lab runs the clusterd next to the
//! bench): `cargo build --release -p clusterd && cargo bench -p clusterd-tests --bench health`
//! (`-- --runs N`, default 20; `--cpu-secs N`, default 60).
#![allow(clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::{Fault, LabSpec, Service};

const FLOATING: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const HOLD_DOWN: Duration = Duration::from_secs(2);

fn main() -> Result<()> {
    let runs = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map(|n| n.parse::<usize>())
        .transpose()
        .context("--runs N")?
        .unwrap_or(20);
    let cpu_secs = std::env::args()
        .skip_while(|a| a != "--cpu-secs")
        .nth(1)
        .map(|n| n.parse::<u64>())
        .transpose()
        .context("--cpu-secs N")?
        .unwrap_or(60);
    let mut lab = TestLab::up(LabSpec {
        extra_config: format!(
            "[placement]\nfailback = \"manual\"\nhold_down = \"{}s\"\n",
            HOLD_DOWN.as_secs()
        ),
        ..LabSpec::default()
    })?;
    lab.wait_for_greeter(IpAddr::V4(FLOATING), "mx1", Duration::from_secs(30))
        .context("mx1 never served .101")?;
    // Let every check rise before measuring.
    std::thread::sleep(Duration::from_secs(3));

    let cpu = cpu_cost(&lab, Duration::from_secs(cpu_secs))?;

    let mut owner = "mx1";
    let mut results = Vec::new();
    for (label, fault) in [
        ("stopped (SIGTERM)", Fault::ServiceStop(Service::Dovecot)),
        (
            "crashed (SIGKILL of its master)",
            Fault::ServiceCrash(Service::Dovecot),
        ),
    ] {
        let mut times = Vec::new();
        let mut after_exit = Vec::new();
        for run in 0..runs {
            let other = if owner == "mx1" { "mx2" } else { "mx1" };
            let stopped = Instant::now();
            lab.fault(owner, fault.clone())?;
            let exited = stopped.elapsed();
            lab.wait_for_greeter(IpAddr::V4(FLOATING), other, Duration::from_secs(20))
                .with_context(|| format!("run {run}: {other} never greeted on {FLOATING}"))?;
            let took = stopped.elapsed();
            times.push(took);
            after_exit.push(took.saturating_sub(exited));
            println!(
                "run {run:>2}: dovecot {label} on {owner}: its processes gone after \
                 {exited:?}, {other} greets after {took:?}"
            );
            lab.fault(owner, Fault::ServiceStart(Service::Dovecot))?;
            // The node that failed must rise (2 probes) and serve its hold-down before it can
            // take the address in the next run.
            std::thread::sleep(HOLD_DOWN + Duration::from_secs(3));
            owner = other;
        }
        results.push((label, times, after_exit));
    }
    lab.down()?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let summary = |times: &mut Vec<Duration>| {
        times.sort();
        let pct = |p: f64| {
            let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
            times[i]
        };
        format!(
            "p50 {:.0} ms   p99 {:.0} ms   max {:.0} ms",
            ms(pct(0.50)),
            ms(pct(0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO))
        )
    };
    println!();
    println!("service failure to first IMAP greeting from the new owner, {runs} runs each");
    println!(
        "default checks: interval 1s, fast_interval 100ms, timeout 1s, rise 2, fall 2, \
         listener watch"
    );
    for (label, mut times, mut after_exit) in results {
        println!("  dovecot {label}");
        println!(
            "    from the fault:                       {}",
            summary(&mut times)
        );
        println!(
            "    from the exit of dovecot's processes: {}",
            summary(&mut after_exit)
        );
    }
    println!();
    println!(
        "CPU over {} s, % of one core: the daemon itself, the children it ran and reaped \
         (probe plugins, postqueue), the children still running (the guard's nft -i)",
        cpu.window.as_secs()
    );
    for (label, c) in [
        (
            "mail node, 3 probes (imap login, pop3, smtp + postqueue)",
            &cpu.mail,
        ),
        ("witness, no probes, no addresses", &cpu.witness),
    ] {
        println!(
            "  {label:<58} daemon {:.2}  reaped {:.2}  running children {:.2} ({})  total {:.2}",
            c.own,
            c.reaped,
            c.live,
            c.live_names.join(", "),
            c.total()
        );
    }
    println!(
        "  per mail node beyond the witness: {:.2} % of one core",
        cpu.mail.total() - cpu.witness.total()
    );
    Ok(())
}

struct Cpu {
    window: Duration,
    mail: Share,
    witness: Share,
}

/// One node's clusterd and its children over the window, in % of one core.
#[derive(Debug, Default)]
struct Share {
    /// The daemon's own utime + stime.
    own: f64,
    /// Children it waited for (cutime + cstime): probe plugins, `postqueue`.
    reaped: f64,
    /// Children still running at the end (utime + stime of each over the window).
    live: f64,
    /// Their names.
    live_names: Vec<String>,
}

impl Share {
    fn total(&self) -> f64 {
        self.own + self.reaped + self.live
    }
}

/// (own, reaped) ticks of a process and the utime + stime of each live descendant, by pid.
#[derive(Debug, Default)]
struct Reading {
    own: u64,
    reaped: u64,
    children: std::collections::BTreeMap<u32, (String, u64)>,
}

fn reading(pid: u32) -> Result<Reading> {
    let (own, reaped) = ticks(pid)?;
    let mut children = std::collections::BTreeMap::new();
    if let Some(p) = clusterd_tests::lab::process::ProcId::of(pid) {
        for d in p.descendants() {
            if let Ok((t, _)) = ticks(d.pid) {
                let name = std::fs::read_to_string(format!("/proc/{}/comm", d.pid))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                children.insert(d.pid, (name, t));
            }
        }
    }
    Ok(Reading {
        own,
        reaped,
        children,
    })
}

/// CPU of clusterd (and its children) on mx2 (a mail node) and w1 (witness) over `window`.
fn cpu_cost(lab: &TestLab, window: Duration) -> Result<Cpu> {
    let pid = |n: &str| -> Result<u32> {
        Ok(lab
            .node(n)?
            .clusterd
            .context("clusterd is not running")?
            .pid)
    };
    let (mail, witness) = (pid("mx2")?, pid("w1")?);
    let before = (reading(mail)?, reading(witness)?);
    let start = Instant::now();
    std::thread::sleep(window);
    let after = (reading(mail)?, reading(witness)?);
    let secs = start.elapsed().as_secs_f64();
    let hz = 100.0; // USER_HZ on Linux
    let pct = |ticks: u64| ticks as f64 / hz / secs * 100.0;
    let share = |a: &Reading, b: &Reading| {
        let mut live = 0;
        let mut live_names = Vec::new();
        for (pid, (name, t)) in &b.children {
            // A child born during the window counts from zero.
            let was = a.children.get(pid).map_or(0, |(_, t)| *t);
            live += t.saturating_sub(was);
            live_names.push(name.clone());
        }
        Share {
            own: pct(b.own.saturating_sub(a.own)),
            reaped: pct(b.reaped.saturating_sub(a.reaped)),
            live: pct(live),
            live_names,
        }
    };
    Ok(Cpu {
        window,
        mail: share(&before.0, &after.0),
        witness: share(&before.1, &after.1),
    })
}

/// (utime + stime, cutime + cstime) of a process, in clock ticks.
fn ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime..cstime are fields 14..17.
    let v: Vec<u64> = f
        .get(11..15)
        .context("short stat")?
        .iter()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .collect();
    Ok((v[0] + v[1], v[2] + v[3]))
}
