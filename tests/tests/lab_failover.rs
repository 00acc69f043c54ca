//! Floating-address takeover in the lab, with the real daemon, real dovecot and the invariant
//! monitors running throughout: the address sampler (configured *and* allowed by the node's
//! nftables guard) and the client-side ARP prober must never see two holders at once.
// Failover times on stderr are part of what these tests report.
#![allow(clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::{Fault, LabSpec, Monitors};

const FLOATING_MX1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);

/// The node named in the IMAP greeting on `ip`, as the client sees it.
fn imap_greeter(lab: &TestLab, ip: Ipv4Addr) -> Option<String> {
    lab.imap_greeter(ip.into())
}

fn wait_for_greeter(lab: &TestLab, ip: Ipv4Addr, node: &str, within: Duration) -> Result<Duration> {
    Ok(lab.wait_for_greeter(ip.into(), node, within)?)
}

#[test]
fn killed_owner_is_replaced_and_never_answers_alongside_the_new_owner() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(15))
        .context("mx1 never served its home address")?;
    let monitors = Monitors::start(&lab)?;

    let killed = Instant::now();
    lab.fault("mx1", Fault::Kill)?;
    let took = wait_for_greeter(&lab, FLOATING_MX1, "mx2", Duration::from_secs(10))?;
    eprintln!("mx1 killed; mx2 greets on {FLOATING_MX1} after {took:?}");

    // The client's neighbour cache now points at mx2.
    let mx2_mac = lab.node("mx2")?.mac.clone();
    let neigh = lab.ip("client", &["neigh", "show", &FLOATING_MX1.to_string()])?;
    ensure!(
        neigh.contains(&mx2_mac),
        "client's neighbour entry for {FLOATING_MX1} is not mx2's {mx2_mac}: {neigh}"
    );
    // The dead node's stale address disappears by itself (address lifetime).
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let addrs = lab.addresses_of("mx1")?;
        if !addrs.iter().any(|a| a.starts_with("192.0.2.101/")) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the dead mx1 still has {FLOATING_MX1} configured {:?} after the kill: {addrs:?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    monitors.finish()?;
    Ok(())
}

#[test]
fn frozen_owner_resumed_after_takeover_does_not_answer_again() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(15))?;
    let monitors = Monitors::start(&lab)?;
    lab.fault("mx1", Fault::Stop)?;
    let took = wait_for_greeter(&lab, FLOATING_MX1, "mx2", Duration::from_secs(10))?;
    eprintln!("mx1 frozen; mx2 greets on {FLOATING_MX1} after {took:?}");
    lab.fault("mx1", Fault::Cont)?;
    // The resumed daemon has no lease for the address any more: it must not take it back.
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        imap_greeter(&lab, FLOATING_MX1).as_deref() == Some("mx2"),
        "{FLOATING_MX1} no longer greets as mx2 after mx1 resumed"
    );
    monitors.finish()?;
    Ok(())
}

#[test]
fn dns_on_every_live_node_follows_a_failover_within_a_second() -> Result<()> {
    let mut lab = TestLab::up(LabSpec {
        mail_nodes: 3,
        witness: false,
        ..LabSpec::default()
    })?;
    wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(15))?;
    let live = [
        ("mx2", lab.node("mx2")?.ipv4),
        ("mx3", lab.node("mx3")?.ipv4),
    ];
    // Every mail node answers the zone with the three served addresses.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = true;
        for (_, ip) in live {
            let got = lab.dig(IpAddr::V4(ip), "mail.lab.example", "A")?;
            all &= got == ["192.0.2.101", "192.0.2.102", "192.0.2.103"];
        }
        if all {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "DNS never answered all three addresses"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before: Vec<u64> = live
        .iter()
        .map(|(n, ip)| {
            lab.dns_serial(IpAddr::V4(*ip))
                .with_context(|| format!("no SOA from {n}"))
        })
        .collect::<Result<_>>()?;
    ensure!(
        before.iter().all(|s| *s == before[0]),
        "serials differ: {before:?}"
    );

    lab.fault("mx1", Fault::Kill)?;
    let new_owner = loop {
        if let Some(g) = imap_greeter(&lab, FLOATING_MX1).filter(|g| g != "mx1") {
            break g;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let changed = Instant::now();
    for (name, ip) in live {
        loop {
            if lab
                .dns_serial(IpAddr::V4(ip))
                .is_some_and(|s| s > before[0])
            {
                break;
            }
            ensure!(
                changed.elapsed() < Duration::from_secs(1),
                "{name}'s DNS serial did not move within 1 s of {new_owner} taking {FLOATING_MX1}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!(
        "{new_owner} took {FLOATING_MX1}; DNS on mx2 and mx3 updated within {:?}",
        changed.elapsed()
    );
    let got = lab.dig(IpAddr::V4(live[0].1), "imap.lab.example", "A")?;
    ensure!(
        got == ["192.0.2.101", "192.0.2.102", "192.0.2.103"],
        "{got:?}"
    );
    // `clusterctl dns` reports what the node's DNS answers, with the same serial.
    let report: serde_json::Value =
        serde_json::from_str(&lab.clusterctl("mx2", &["dns", "--json"])?)?;
    let reported = report["serial"]
        .as_u64()
        .context("no serial in clusterctl dns")?;
    ensure!(
        Some(reported) == lab.dns_serial(IpAddr::V4(live[0].1)),
        "clusterctl dns says serial {reported}, the DNS server another"
    );
    Ok(())
}

/// Inject `fault` on mx1 (owner of 192.0.2.101), wait for mx2 to greet on it, undo with `undo`,
/// and require that the monitors never saw two holders, before or after the undo.
fn takeover_without_overlap(fault: Fault, undo: Fault) -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(15))?;
    let monitors = Monitors::start(&lab)?;
    let label = format!("{fault:?}");
    lab.fault("mx1", fault)?;
    let took = wait_for_greeter(&lab, FLOATING_MX1, "mx2", Duration::from_secs(10))?;
    eprintln!("{label} on mx1; mx2 greets on {FLOATING_MX1} after {took:?}");
    lab.fault("mx1", undo)?;
    // mx1 is back: it must catch up and stay off the address (failback waits 60 s).
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        imap_greeter(&lab, FLOATING_MX1).as_deref() == Some("mx2"),
        "{FLOATING_MX1} no longer greets as mx2 after mx1 came back"
    );
    monitors.finish()?;
    Ok(())
}

#[test]
fn partitioned_owner_drops_its_address_and_the_majority_takes_over() -> Result<()> {
    // The client still reaches mx1: only mx1's own self-fencing keeps it from answering.
    takeover_without_overlap(Fault::Partition { from: None }, Fault::Heal)
}

#[test]
fn owner_whose_link_goes_down_is_replaced_and_stays_off_when_it_comes_back() -> Result<()> {
    takeover_without_overlap(Fault::LinkDown, Fault::LinkUp)
}

/// Make a mail node the Raft leader (restarting the witness if it leads) and wait until its
/// home address greets as it. Returns (leader, the other mail node, the leader's address).
fn mail_leader_owning_an_address(lab: &mut TestLab) -> Result<(String, String, Ipv4Addr)> {
    let mut leader = lab.wait_for_leader(Duration::from_secs(15))?;
    if leader == "w1" {
        // Move leadership to a mail node: stop the witness, then bring it back.
        lab.fault("w1", Fault::Kill)?;
        leader = lab.wait_for_new_leader("w1", Duration::from_secs(15))?;
        lab.fault("w1", Fault::Restart)?;
        lab.wait_for_leader_seen_by(&["mx1", "mx2", "w1"], Duration::from_secs(15))?;
    }
    let other = if leader == "mx1" { "mx2" } else { "mx1" };
    let floating = lab.floating_of(&leader)?;
    wait_for_greeter(lab, floating, &leader, Duration::from_secs(15))?;
    Ok((leader, other.to_string(), floating))
}

#[test]
fn leader_that_owns_an_address_dies_and_its_address_moves() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(15))?;
    let (leader, other, floating) = mail_leader_owning_an_address(&mut lab)?;
    let monitors = Monitors::start(&lab)?;
    lab.fault(&leader, Fault::Kill)?;
    let took = wait_for_greeter(&lab, floating, &other, Duration::from_secs(10))?;
    eprintln!("leader {leader} (owner of {floating}) killed; {other} greets after {took:?}");
    monitors.finish()?;
    Ok(())
}

#[test]
fn frozen_leader_owning_an_address_resumed_after_takeover_does_not_take_it_back() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(15))?;
    let (leader, other, floating) = mail_leader_owning_an_address(&mut lab)?;
    let monitors = Monitors::start(&lab)?;
    lab.fault(&leader, Fault::Stop)?;
    let took = wait_for_greeter(&lab, floating, &other, Duration::from_secs(10))?;
    eprintln!("leader {leader} (owner of {floating}) frozen; {other} greets after {took:?}");
    // Resumed, the old leader still believes it leads until it hears the new term: it must not
    // grant itself a lease on that stale belief and put the address back.
    lab.fault(&leader, Fault::Cont)?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        imap_greeter(&lab, floating).as_deref() == Some(other.as_str()),
        "{floating} no longer greets as {other} after {leader} resumed"
    );
    monitors.finish()?;
    Ok(())
}

#[test]
fn owner_frozen_right_after_taking_an_address_announces_nothing_stale_when_resumed() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(15))?;
    let monitors = Monitors::start(&lab)?;
    // mx2 takes the address in a planned move and is frozen at once, with the repeats of its
    // announcement (1.2 s, 2.2 s, 3.2 s after the add) still due.
    lab.clusterctl("mx1", &["move", &FLOATING_MX1.to_string(), "mx2"])?;
    lab.fault("mx2", Fault::Stop)?;
    let took = wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(10))?;
    eprintln!("mx2 frozen right after taking {FLOATING_MX1}; back on mx1 after {took:?}");
    let resumed = std::time::Instant::now();
    lab.fault("mx2", Fault::Cont)?;
    // Its overdue timers fire on resume: a gratuitous ARP now would point the client at a node
    // that no longer answers for the address.
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        imap_greeter(&lab, FLOATING_MX1).as_deref() == Some("mx1"),
        "{FLOATING_MX1} no longer greets as mx1 after mx2 resumed"
    );
    let seen = monitors.finish()?;
    let since = seen.network.timeline.time_of(resumed);
    let stale: Vec<_> = seen
        .network
        .announcements
        .iter()
        .filter(|a| a.node == "mx2" && a.at >= since)
        .collect();
    ensure!(
        stale.is_empty(),
        "the resumed mx2 announced an address it no longer holds: {stale:?}"
    );
    Ok(())
}
