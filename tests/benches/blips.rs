//! Link blips and flaps: what a short loss of carrier costs. For each case, rounds of: note the
//! owners, epochs and Raft term, take a node's link down for the blip (at the switch, so the
//! node sees its carrier go), bring it back, wait 2 s, look again. Counts the rounds that moved
//! an address and those that changed the leader. The address sampler and ARP prober run
//! throughout and report any duplicate.
//!
//! Cases: a 300 ms blip (under half the default 800 ms lease) of an owner that does not lead;
//! the same of the owner that leads; a flap of ten 300 ms blips 300 ms apart; and a blip of
//! half the lease (400 ms) of the leader, the edge.
//!
//! Run as root, with release binaries: `cargo build --release -p clusterd --bins && cargo bench
//! -p clusterd-tests --bench blips` (`BLIP_ROUNDS`, default 10).
#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::{AddressSampler, ArpProber};
use clusterd_tests::{Fault, LabSpec};

/// One case: whose link, how long, how many times.
struct Case {
    label: &'static str,
    leader: bool,
    blip: Duration,
    times: usize,
}

const CASES: [Case; 4] = [
    Case {
        label: "300 ms blip of an owner that does not lead",
        leader: false,
        blip: Duration::from_millis(300),
        times: 1,
    },
    Case {
        label: "300 ms blip of the owner that leads",
        leader: true,
        blip: Duration::from_millis(300),
        times: 1,
    },
    Case {
        label: "flap: 10 x (300 ms down, 300 ms up) of an owner",
        leader: false,
        blip: Duration::from_millis(300),
        times: 10,
    },
    Case {
        label: "400 ms blip (half the lease) of the owner that leads",
        leader: true,
        blip: Duration::from_millis(400),
        times: 1,
    },
];

fn main() -> Result<()> {
    let rounds: usize = std::env::var("BLIP_ROUNDS")
        .ok()
        .map(|v| v.parse().context("BLIP_ROUNDS must be a number"))
        .transpose()?
        .unwrap_or(10);
    let mut lab = TestLab::up(LabSpec {
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
    let targets = lab.state().floating.iter().map(|f| f.ip).collect();
    let sampler = AddressSampler::start(&lab)?;
    let prober = ArpProber::start_with(
        &lab,
        targets,
        Duration::from_millis(20),
        Duration::from_secs(3600),
    )?;
    println!(
        "# link blips: {rounds} rounds per case, clusterd {}",
        bin.display()
    );
    let mut rows = Vec::new();
    for case in &CASES {
        let (mut moved, mut new_leader) = (0, 0);
        for round in 0..rounds {
            let node = pick(&mut lab, case.leader)?;
            let observer = if node == "mx1" { "mx2" } else { "mx1" };
            let before = lab.cluster_status(observer)?;
            for _ in 0..case.times {
                lab.fault(&node, Fault::LinkDown)?;
                std::thread::sleep(case.blip);
                lab.fault(&node, Fault::LinkUp)?;
                std::thread::sleep(case.blip);
            }
            std::thread::sleep(Duration::from_secs(2));
            let after = lab.cluster_status(observer)?;
            let m = before.owners() != after.owners();
            let l = before.term != after.term;
            moved += usize::from(m);
            new_leader += usize::from(l);
            println!(
                "{:<55} round {:>2} ({node}): {}, term {} -> {}",
                case.label,
                round + 1,
                if m {
                    "addresses moved"
                } else {
                    "nothing moved"
                },
                before.term,
                after.term
            );
        }
        rows.push((case.label, moved, new_leader));
    }
    let duplicates =
        sampler.stop().sampled.duplicates().len() + prober.stop().timeline.duplicates().len();
    lab.down()?;
    println!();
    println!(
        "| case ({rounds} rounds each) | rounds that moved an address | rounds that changed the leader |"
    );
    println!("|---|---|---|");
    for (label, moved, new_leader) in rows {
        println!("| {label} | {moved} | {new_leader} |");
    }
    println!("\nduplicates seen by the monitors: {duplicates}");
    Ok(())
}

/// A mail node that owns an address and leads (`leader`) or does not; makes a mail node lead
/// when asked to (restarting the witness's daemon while it leads), bounded.
fn pick(lab: &mut TestLab, leader: bool) -> Result<String> {
    for _ in 0..10 {
        let l = lab.wait_for_leader(Duration::from_secs(20))?;
        if !leader {
            return Ok(if l == "mx1" { "mx2" } else { "mx1" }.to_string());
        }
        if l != "w1" {
            // Each mail node owns its home address in this lab (automatic failback).
            lab.wait_for_greeter(lab.floating_of(&l)?.into(), &l, Duration::from_secs(90))?;
            return Ok(l);
        }
        lab.fault("w1", Fault::Kill)?;
        let elected = lab.wait_for_new_leader("w1", Duration::from_secs(20));
        lab.fault("w1", Fault::Restart)?;
        elected?;
    }
    bail!("no mail node would lead in 10 tries")
}
