//! IPv6 floating addresses in the lab: takeover with an unsolicited neighbour advertisement that
//! updates the client's neighbour cache by itself, and the nftables guard keeping a node whose
//! lease ended from answering neighbour solicitations (and ARP) for an address it still has
//! configured. The invariant monitors run throughout; the client-side prober asks for the IPv6
//! addresses from an address configured nowhere, so it never touches the client's own cache.
// What each test saw (timings, announcements) goes to stderr as part of its report.
#![allow(clippy::print_stderr)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::arp::{format_mac, parse_mac};
use clusterd_tests::monitor::ndp::{ALL_NODES, multicast_mac};
use clusterd_tests::{Fault, LabSpec, Monitors};

fn ipv6_lab() -> Result<TestLab> {
    Ok(TestLab::up(LabSpec {
        ipv6_floating: true,
        ..LabSpec::default()
    })?)
}

#[test]
fn ipv6_address_of_a_killed_owner_moves_and_its_announcement_updates_the_client() -> Result<()> {
    let mut lab = ipv6_lab()?;
    let ip = lab.floating6_of("mx1")?;
    let addr = IpAddr::V6(ip);
    // The client talks to the address once, so its kernel caches mx1's MAC for it.
    lab.wait_for_greeter(addr, "mx1", Duration::from_secs(15))?;
    let mx1_mac = lab.node("mx1")?.mac.clone();
    let mx2_mac = lab.node("mx2")?.mac.clone();
    ensure!(
        lab.neighbour_mac("client", IpAddr::V6(ip))?.as_deref() == Some(mx1_mac.as_str()),
        "the client has not cached mx1's {mx1_mac} for {ip}"
    );
    let monitors = Monitors::start(&lab)?;

    let killed = Instant::now();
    lab.fault("mx1", Fault::Kill)?;
    // No traffic to the address now: only an announcement can change the client's cache.
    let changed = loop {
        let now = lab.neighbour_mac("client", IpAddr::V6(ip))?;
        if now.as_deref() == Some(mx2_mac.as_str()) {
            break Instant::now();
        }
        if killed.elapsed() > Duration::from_secs(10) {
            bail!("the client's neighbour cache for {ip} still says {now:?} 10 s after mx1 died");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "mx1 killed; the client's cache points {ip} at mx2 after {:?}",
        changed - killed
    );
    let took = lab.wait_for_greeter(addr, "mx2", Duration::from_secs(10))?;
    eprintln!("[{ip}]:143 greets as mx2 {took:?} later");
    let seen = monitors.finish()?;

    // The announcement that did it: from mx2, for the address, before the cache changed, in
    // the form RFC 4861 section 7.2.6 gives (all-nodes, hop limit 255, override, not
    // solicited, target link-layer address).
    let net = &seen.network;
    let (t_killed, t_changed) = (net.timeline.time_of(killed), net.timeline.time_of(changed));
    let from_mx2: Vec<_> = net
        .advertisements
        .iter()
        .filter(|a| a.target == ip && a.node == "mx2")
        .collect();
    let first = from_mx2
        .first()
        .with_context(|| format!("no unsolicited advertisement of {ip} from mx2 was seen"))?;
    eprintln!(
        "{} advertisements of {ip} from mx2; the first {:?} after the kill",
        from_mx2.len(),
        first.at.saturating_sub(t_killed)
    );
    ensure!(
        first.at <= t_changed,
        "the first advertisement ({:?}) came after the cache changed ({t_changed:?})",
        first.at
    );
    let mx2 = parse_mac(&mx2_mac).context("mx2's MAC")?;
    for a in &from_mx2 {
        ensure!(
            a.eth_dst == multicast_mac(ALL_NODES) && a.dst == ALL_NODES,
            "advertisement not sent to all nodes: {a:?}"
        );
        ensure!(
            a.hop_limit == 255,
            "hop limit {} (must be 255)",
            a.hop_limit
        );
        ensure!(
            a.override_flag && !a.solicited,
            "flags wrong (override must be set, solicited clear): {a:?}"
        );
        ensure!(
            a.lladdr == Some(mx2),
            "target link-layer option {:?} is not mx2's {mx2_mac}",
            a.lladdr.map(|m| format_mac(&m))
        );
        ensure!(a.checksum_ok, "bad ICMPv6 checksum: {a:?}");
    }
    // ... and not the client looking the address up by itself.
    let asked: Vec<_> = net
        .solicitations
        .iter()
        .filter(|s| s.target == ip && s.at >= t_killed && s.at <= t_changed)
        .collect();
    ensure!(
        asked.is_empty(),
        "the client solicited {ip} itself before its cache changed: {asked:?}"
    );
    Ok(())
}

#[test]
fn frozen_owner_whose_lease_ended_answers_no_solicitation_for_addresses_it_still_has() -> Result<()>
{
    let mut lab = ipv6_lab()?;
    let v4 = IpAddr::V4(lab.floating_of("mx1")?);
    let v6 = IpAddr::V6(lab.floating6_of("mx1")?);
    for ip in [v4, v6] {
        lab.wait_for_greeter(ip, "mx1", Duration::from_secs(15))?;
    }
    let monitors = Monitors::start(&lab)?;
    lab.fault("mx1", Fault::Stop)?;
    for ip in [v4, v6] {
        let took = lab.wait_for_greeter(ip, "mx2", Duration::from_secs(10))?;
        eprintln!("mx1 frozen; {ip} greets as mx2 after {took:?}");
    }
    // The frozen daemon cannot touch its addresses; configure them on mx1 again without a
    // lifetime, as if their removal had failed. Only mx1's guard, closed by the kernel when the
    // lease ran out, keeps it from answering for them.
    let iface = lab.node("mx1")?.iface.clone();
    let cidrs = [format!("{v4}/24"), format!("{v6}/64")];
    for cidr in &cidrs {
        lab.ip("mx1", &["addr", "replace", cidr, "dev", &iface, "nodad"])?;
    }
    let readded = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let configured = lab.addresses_of("mx1")?;
    for cidr in &cidrs {
        ensure!(
            configured.contains(cidr),
            "{cidr} vanished from mx1 while its daemon was frozen: {configured:?}"
        );
    }
    for ip in [v4, v6] {
        ensure!(
            lab.imap_greeter(ip).as_deref() == Some("mx2"),
            "{ip} no longer greets as mx2"
        );
    }
    // Resumed, the daemon holds no lease for them and removes them itself.
    lab.fault("mx1", Fault::Cont)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = lab.addresses_of("mx1")?;
        if !cidrs.iter().any(|c| left.contains(c)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the resumed mx1 still has {left:?} 10 s after SIGCONT"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = monitors.finish()?;
    let net = &seen.network.timeline;
    let since = net.time_of(readded);
    for ip in [v4, v6] {
        ensure!(
            !net.held_by_since(ip, "mx1", since),
            "mx1 answered for {ip} after its lease ended:\n{}",
            net.report()
        );
        ensure!(
            net.held_by_since(ip, "mx2", since),
            "the prober never saw mx2 answer for {ip}: was it blind?\n{}",
            net.report()
        );
    }
    Ok(())
}
