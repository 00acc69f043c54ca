//! Two mail nodes and a witness: the witness only votes, so it lets the surviving mail node keep
//! quorum and take over, and its own death moves nothing. The invariant monitors (address
//! sampler and client-side ARP/ND prober) run throughout and fail a test on any duplicate.
// What each test saw (timings, who led) goes to stderr as part of its report.
#![allow(clippy::print_stderr)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clusterd_tests::lab::clusterd::AddressOwner;
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::{Fault, LabSpec, Monitors};

/// Both floating addresses, each greeting as its home node.
fn homes_serve_their_addresses(lab: &TestLab) -> Result<[(IpAddr, &'static str); 2]> {
    let homes = [
        (IpAddr::from(lab.floating_of("mx1")?), "mx1"),
        (IpAddr::from(lab.floating_of("mx2")?), "mx2"),
    ];
    for (ip, node) in homes {
        lab.wait_for_greeter(ip, node, Duration::from_secs(15))
            .with_context(|| format!("{node} never served its home address {ip}"))?;
    }
    Ok(homes)
}

#[test]
fn survivor_of_two_mail_nodes_serves_both_addresses_when_the_other_dies() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    let homes = homes_serve_their_addresses(&lab)?;
    let monitors = Monitors::start(&lab)?;

    lab.fault("mx1", Fault::Kill)?;
    for (ip, home) in homes {
        let took = lab.wait_for_greeter(ip, "mx2", Duration::from_secs(10))?;
        eprintln!("mx1 killed; {ip} (home {home}) greets as mx2 after {took:?}");
    }
    // mx2 and the witness keep quorum; the survivor owns both addresses.
    let leader = lab.wait_for_leader_seen_by(&["mx2", "w1"], Duration::from_secs(10))?;
    ensure!(leader != "mx1", "the dead mx1 still leads");
    let status = lab.cluster_status("mx2")?;
    for a in status.owners() {
        ensure!(
            a.owner.as_deref() == Some("mx2"),
            "{} is owned by {:?}, not by the survivor mx2",
            a.ip,
            a.owner
        );
    }
    // Still both, a few lease periods later.
    std::thread::sleep(Duration::from_secs(2));
    for (ip, _) in homes {
        ensure!(
            lab.imap_greeter(ip).as_deref() == Some("mx2"),
            "{ip} no longer greets as mx2"
        );
    }
    monitors.finish()?;
    Ok(())
}

#[test]
fn witness_death_moves_nothing() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    let homes = homes_serve_their_addresses(&lab)?;
    let leader = lab.wait_for_leader(Duration::from_secs(15))?;
    let before: Vec<AddressOwner> = lab.cluster_status("mx1")?.owners();
    ensure!(
        before.len() == 2 && before.iter().all(|a| a.owner.is_some()),
        "addresses not placed before the test: {before:?}"
    );
    let monitors = Monitors::start(&lab)?;

    lab.fault("w1", Fault::Kill)?;
    eprintln!("killed the witness w1 (the leader was {leader})");
    // Several lease periods (800 ms each), and past a new leader's quiet period if the witness
    // led: owners and epochs must not change, as both mail nodes seen from both.
    let watch = Duration::from_secs(6);
    let start = Instant::now();
    let mut unserved: Vec<(IpAddr, Duration)> = Vec::new();
    while start.elapsed() < watch {
        for via in ["mx1", "mx2"] {
            // A node may not answer while it elects a new leader; it must not disagree.
            if let Ok(status) = lab.cluster_status(via) {
                let now = status.owners();
                ensure!(
                    now == before,
                    "after the witness died, {via} reports {now:?} instead of {before:?} ({:?} \
                     after the kill)",
                    start.elapsed()
                );
            }
        }
        for (ip, home) in homes {
            if lab.imap_greeter(ip).as_deref() != Some(home) {
                unserved.push((ip, start.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (ip, home) in homes {
        lab.wait_for_greeter(ip, home, Duration::from_secs(5))?;
    }
    if !unserved.is_empty() {
        eprintln!("probes that got no greeting from the home node: {unserved:?}");
    }
    let survivors = lab.wait_for_leader_seen_by(&["mx1", "mx2"], Duration::from_secs(10))?;
    eprintln!("leader after the witness died: {survivors}");
    ensure!(survivors != "w1", "the dead witness still leads");
    let after = lab.cluster_status("mx2")?.owners();
    ensure!(
        after == before,
        "owners or epochs changed: {before:?} -> {after:?}"
    );
    monitors.finish()?;
    Ok(())
}
