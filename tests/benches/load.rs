//! No false failovers under load: every CPU of the machine busy, what moves?
//!
//! The lab (two mail nodes with real dovecot and postfix, a witness), default settings. In each
//! node's namespace `stress-ng --cpu N` (N = the machine's CPUs) runs for the whole window, so
//! the daemons compete with 3N busy processes. Every second the bench reads owners, epochs and
//! the Raft term from a node; it counts address moves and leader changes, and the address
//! sampler and ARP prober report any duplicate. `LOAD_NICE=-10` first renices every clusterd
//! (what `Nice=-10` in the unit would do) to compare; `LOAD_CONFIG` is TOML added to every
//! node's config, e.g. shorter leases: `LOAD_CONFIG=$'[leases]\nlease = "300ms"\n...'`.
//!
//! Run as root: `apt-get install -y stress-ng`, `cargo build --release -p clusterd --bins &&
//! cargo bench -p clusterd-tests --bench load` (`LOAD_SECS`, default 600).
#![allow(clippy::print_stdout)]

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clusterd_tests::LabSpec;
use clusterd_tests::lab::process::ns_command;
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::{AddressSampler, ArpProber};

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .with_context(|| format!("{name} must be a number, not {v:?}")),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<()> {
    let secs: u64 = env_num("LOAD_SECS", 600)?;
    let nice: i32 = env_num("LOAD_NICE", 0)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if std::process::Command::new("stress-ng")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("stress-ng is not installed: apt-get install -y stress-ng");
    }
    let extra_config = std::env::var("LOAD_CONFIG").unwrap_or_default();
    let mut lab = TestLab::up(LabSpec {
        extra_config: extra_config.clone(),
        ..LabSpec::default()
    })?;
    // The lab runs $CLUSTERD_BIN, else the clusterd built next to this bench.
    let bin = lab
        .state()
        .clusterd_bin
        .clone()
        .context("build clusterd first: cargo build --release -p clusterd --bins")?;
    lab.wait_for_greeter("192.0.2.101".parse()?, "mx1", Duration::from_secs(20))?;
    lab.wait_for_greeter("192.0.2.102".parse()?, "mx2", Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_secs(3));
    let names: Vec<String> = lab.state().nodes.iter().map(|n| n.name.clone()).collect();
    if nice != 0 {
        for n in &names {
            let pid = lab
                .node(n)?
                .clusterd
                .context("a daemon is not running")?
                .pid;
            let status = std::process::Command::new("renice")
                .args(["-n", &nice.to_string(), "-p", &pid.to_string()])
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("renice of {n}'s clusterd failed");
            }
        }
    }
    let targets = lab.state().floating.iter().map(|f| f.ip).collect();
    let sampler = AddressSampler::start(&lab)?;
    let prober = ArpProber::start_with(
        &lab,
        targets,
        Duration::from_millis(50),
        Duration::from_secs(secs + 600),
    )?;
    println!(
        "# load: stress-ng --cpu {cpus} in each of {} namespaces for {secs} s, clusterd nice \
         {nice} ({})",
        names.len(),
        bin.display()
    );
    if !extra_config.is_empty() {
        println!("config added:\n{}", extra_config.trim_end());
    }
    let mut hogs: Vec<Child> = Vec::new();
    for n in &names {
        let ns = lab.node(n)?.netns.clone();
        let child = ns_command(&ns, "stress-ng")
            .args([
                "--cpu",
                &cpus.to_string(),
                "--timeout",
                &format!("{secs}s"),
                "--quiet",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start stress-ng")?;
        hogs.push(child);
    }
    let start = lab.cluster_status("w1")?;
    let mut last = start.clone();
    let (mut moves, mut leader_changes) = (0usize, 0usize);
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        // A node too starved to answer within clusterctl's bound is tried again next second.
        let Ok(now) = lab.cluster_status("w1") else {
            continue;
        };
        for (a, b) in last.owners().iter().zip(now.owners().iter()) {
            if a.epoch != b.epoch {
                moves += 1;
                println!(
                    "{:>5.0} s: {} moved {:?} -> {:?} (epoch {} -> {})",
                    began.elapsed().as_secs_f64(),
                    a.ip,
                    a.owner,
                    b.owner,
                    a.epoch,
                    b.epoch
                );
            }
        }
        if now.term != last.term {
            leader_changes += 1;
            println!(
                "{:>5.0} s: leader {:?} -> {:?} (term {} -> {})",
                began.elapsed().as_secs_f64(),
                last.leader,
                now.leader,
                last.term,
                now.term
            );
        }
        last = now;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    for mut h in hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    let duplicates =
        sampler.stop().sampled.duplicates().len() + prober.stop().timeline.duplicates().len();
    lab.down()?;
    let hours = secs as f64 / 3600.0;
    println!();
    println!("| under full CPU load, {secs} s, clusterd nice {nice} | count | per hour |");
    println!("|---|---|---|");
    println!("| address moves | {moves} | {:.1} |", moves as f64 / hours);
    println!(
        "| leader changes | {leader_changes} | {:.1} |",
        leader_changes as f64 / hours
    );
    println!("| duplicates seen by the monitors | {duplicates} | |");
    println!("load average at the end: {}", load.trim());
    Ok(())
}
