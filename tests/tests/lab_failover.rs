//! Floating-address takeover in the lab, with the real daemon, real dovecot and the invariant
//! monitors running throughout: the address sampler (configured *and* allowed by the node's
//! nftables guard) and the client-side ARP prober must never see two holders at once.
// Failover times on stderr are part of what these tests report.
#![allow(clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::{AddressSampler, ArpProber};
use clusterd_tests::{Fault, LabSpec};

const FLOATING_MX1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);

/// The node name in the IMAP greeting on `ip`, as the client sees it.
fn imap_greeter(lab: &TestLab, ip: Ipv4Addr) -> Option<String> {
    let addr = SocketAddr::new(IpAddr::V4(ip), 143);
    let greeting = lab
        .greeting_from("client", addr, Duration::from_millis(300))
        .ok()?
        .ok()?;
    clusterd_tests::probe::greeting_node(&greeting)
}

fn wait_for_greeter(lab: &TestLab, ip: Ipv4Addr, node: &str, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if imap_greeter(lab, ip).as_deref() == Some(node) {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{ip} did not greet as {node} within {within:?}")
}

#[test]
fn killed_owner_is_replaced_and_never_answers_alongside_the_new_owner() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(15))
        .context("mx1 never served its home address")?;
    let sampler = AddressSampler::start(&lab)?;
    let arp = ArpProber::start(&lab)?;

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
    let timeline = sampler.stop();
    let arp = arp.stop();
    timeline
        .assert_single_holder()
        .map_err(anyhow::Error::msg)?;
    arp.timeline
        .assert_single_holder()
        .map_err(anyhow::Error::msg)?;
    ensure!(
        timeline.samples > 50 && arp.timeline.samples > 50,
        "monitors barely ran: {} and {} samples",
        timeline.samples,
        arp.timeline.samples
    );
    Ok(())
}

#[test]
fn frozen_owner_resumed_after_takeover_does_not_answer_again() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    wait_for_greeter(&lab, FLOATING_MX1, "mx1", Duration::from_secs(15))?;
    let sampler = AddressSampler::start(&lab)?;
    let arp = ArpProber::start(&lab)?;
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
    sampler
        .stop()
        .assert_single_holder()
        .map_err(anyhow::Error::msg)?;
    arp.stop()
        .timeline
        .assert_single_holder()
        .map_err(anyhow::Error::msg)?;
    Ok(())
}
