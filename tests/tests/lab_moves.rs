//! Planned moves in the lab, driven by `clusterctl` from inside a node's namespace as an
//! operator would: `move`, `drain`/`undrain`, and failback (automatic after the failback period,
//! or never with `failback = "manual"`). The invariant monitors run throughout.
// clusterctl's reports (moves, unserved time) go to stderr as part of the test's report.
#![allow(clippy::print_stderr)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clusterd::model::{EventKind, MoveReason};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::{Fault, LabSpec, Monitors, Placement};

/// A lab whose addresses are at home, with the given failback policy.
fn lab_at_home(placement: Placement) -> Result<(TestLab, IpAddr)> {
    let lab = TestLab::up(LabSpec {
        placement: Some(placement),
        ..LabSpec::default()
    })?;
    let ip = IpAddr::V4(lab.floating_of("mx1")?);
    lab.wait_for_greeter(ip, "mx1", Duration::from_secs(15))
        .context("mx1 never served its home address")?;
    lab.wait_for_greeter(
        IpAddr::V4(lab.floating_of("mx2")?),
        "mx2",
        Duration::from_secs(15),
    )?;
    Ok((lab, ip))
}

/// Whether the history has `ip` changing owner to `to` for `reason`.
fn moved_for(lab: &TestLab, ip: IpAddr, to: &str, reason: MoveReason) -> Result<bool> {
    let key = format!("{ip}/");
    Ok(lab.history("mx2")?.iter().any(|e| {
        matches!(&e.kind, EventKind::OwnerChanged { ip: i, to: t, reason: r, .. }
            if i.starts_with(&key) && t == to && *r == reason)
    }))
}

/// The history shows `ip` failing back to mx1, and the monitors never saw two holders.
fn failed_back_without_overlap(lab: &TestLab, ip: IpAddr, monitors: Monitors) -> Result<()> {
    ensure!(
        moved_for(lab, ip, "mx1", MoveReason::Failback)?,
        "the history has no failback of {ip} to mx1"
    );
    monitors.finish()?;
    Ok(())
}

/// `clusterctl drain NODE` / `undrain NODE` from `via`'s namespace; its output.
fn clusterctl(lab: &TestLab, via: &str, args: &[&str]) -> Result<String> {
    let out = lab.clusterctl(via, args)?;
    eprintln!("clusterctl {} (on {via}): {}", args.join(" "), out.trim());
    Ok(out)
}

#[test]
fn operator_moves_an_address_and_the_history_says_why_and_for_how_long_it_was_unserved()
-> Result<()> {
    let (lab, ip) = lab_at_home(Placement::ManualFailback)?;
    let monitors = Monitors::start(&lab)?;
    let out = clusterctl(&lab, "mx1", &["move", &ip.to_string(), "mx2"])?;
    ensure!(
        out.contains(&format!("{ip}/24 moved to mx2")) && out.contains("unserved for"),
        "clusterctl move printed: {out}"
    );
    lab.wait_for_greeter(ip, "mx2", Duration::from_secs(10))?;
    ensure!(
        moved_for(&lab, ip, "mx2", MoveReason::Operator)?,
        "the history has no operator move of {ip} to mx2"
    );
    // The history records the unserved time the command reported.
    let events = lab.history("mx1")?;
    let unserved = events.iter().rev().find_map(|e| match &e.kind {
        EventKind::Serving {
            ip: i,
            node,
            unserved_ms,
            ..
        } if i.starts_with(&format!("{ip}/")) && node == "mx2" => *unserved_ms,
        _ => None,
    });
    let ms = unserved.context("no unserved time recorded for the move")?;
    ensure!(
        out.contains(&format!("unserved for {ms} ms")),
        "clusterctl said {out:?}, the history {ms} ms"
    );
    let text = clusterctl(&lab, "mx2", &["history", "-n", "20"])?;
    ensure!(
        text.contains("moved by operator"),
        "clusterctl history does not say why: {text}"
    );
    monitors.finish()?;
    Ok(())
}

#[test]
fn drained_node_gives_up_its_addresses_and_gets_them_back_after_undrain_and_failback() -> Result<()>
{
    let failback = Duration::from_secs(3);
    let (lab, ip) = lab_at_home(Placement::AutoFailback(failback))?;
    let monitors = Monitors::start(&lab)?;
    let out = clusterctl(&lab, "mx2", &["drain", "mx1"])?;
    ensure!(
        out.contains("mx1 is drained"),
        "clusterctl drain printed: {out}"
    );
    lab.wait_for_greeter(ip, "mx2", Duration::from_secs(10))?;
    ensure!(
        moved_for(&lab, ip, "mx2", MoveReason::Drained)?,
        "the history has no drain move of {ip}"
    );
    // Drained, mx1 gets nothing back, however long it stays healthy.
    std::thread::sleep(failback * 2);
    ensure!(
        lab.imap_greeter(ip).as_deref() == Some("mx2"),
        "{ip} left mx2 while mx1 was drained"
    );
    clusterctl(&lab, "mx2", &["undrain", "mx1"])?;
    let took = lab.wait_for_greeter(ip, "mx1", failback + Duration::from_secs(15))?;
    eprintln!("undrained; {ip} back on mx1 after {took:?} (failback period {failback:?})");
    failed_back_without_overlap(&lab, ip, monitors)
}

#[test]
fn with_manual_failback_an_undrained_node_gets_its_address_back_only_when_moved() -> Result<()> {
    let (lab, ip) = lab_at_home(Placement::ManualFailback)?;
    let monitors = Monitors::start(&lab)?;
    clusterctl(&lab, "mx1", &["drain", "mx1"])?;
    lab.wait_for_greeter(ip, "mx2", Duration::from_secs(10))?;
    clusterctl(&lab, "mx1", &["undrain", "mx1"])?;
    // Longer than the automatic test's failback period and a few leases: it stays away.
    std::thread::sleep(Duration::from_secs(8));
    ensure!(
        lab.imap_greeter(ip).as_deref() == Some("mx2"),
        "{ip} moved off mx2 by itself with failback = manual"
    );
    ensure!(
        lab.cluster_status("mx1")?
            .owner_of(&ip.to_string())
            .as_deref()
            == Some("mx2"),
        "status does not show mx2 owning {ip}"
    );
    ensure!(
        !moved_for(&lab, ip, "mx1", MoveReason::Failback)?,
        "a failback happened with failback = manual"
    );
    // The operator brings it home.
    clusterctl(&lab, "mx1", &["move", &ip.to_string(), "mx1"])?;
    lab.wait_for_greeter(ip, "mx1", Duration::from_secs(10))?;
    monitors.finish()?;
    Ok(())
}

#[test]
fn restarted_home_node_gets_its_address_back_once_stable_for_the_failback_period() -> Result<()> {
    let failback = Duration::from_secs(3);
    let (mut lab, ip) = lab_at_home(Placement::AutoFailback(failback))?;
    let monitors = Monitors::start(&lab)?;
    lab.fault("mx1", Fault::Kill)?;
    lab.wait_for_greeter(ip, "mx2", Duration::from_secs(10))?;
    let restarted = Instant::now();
    lab.fault("mx1", Fault::Restart)?;
    // Not before mx1 has held a lease for the failback period (which starts after the restart).
    let mut early = None;
    let back = loop {
        match lab.imap_greeter(ip).as_deref() {
            Some("mx1") => break restarted.elapsed(),
            _ if restarted.elapsed() > failback + Duration::from_secs(20) => {
                anyhow::bail!(
                    "{ip} not back on mx1 {:?} after the restart",
                    restarted.elapsed()
                )
            }
            _ => {}
        }
        if lab
            .cluster_status("mx2")?
            .owner_of(&ip.to_string())
            .as_deref()
            == Some("mx1")
            && restarted.elapsed() < failback
        {
            early = Some(restarted.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("mx1 restarted; {ip} back on mx1 after {back:?} (failback period {failback:?})");
    ensure!(
        back >= failback && early.is_none(),
        "{ip} went back to mx1 {:?} after its restart, before the failback period of {failback:?}",
        early.unwrap_or(back)
    );
    failed_back_without_overlap(&lab, ip, monitors)
}

#[test]
fn a_third_mail_node_follows_a_moved_address_at_once_through_the_announcement() -> Result<()> {
    // mx3 talks to 192.0.2.101 on mx1 (its neighbour cache holds mx1's MAC), then the address
    // moves to mx2. mx3's own guard must let mx2's gratuitous ARP in, or mx3 keeps sending to
    // mx1 for as long as its entry stays reachable (tens of seconds).
    let lab = TestLab::up(LabSpec {
        mail_nodes: 3,
        witness: false,
        placement: Some(Placement::ManualFailback),
        ..LabSpec::default()
    })?;
    let ip = IpAddr::V4(lab.floating_of("mx1")?);
    lab.wait_for_greeter(ip, "mx1", Duration::from_secs(20))
        .context("mx1 never served its home address")?;
    let addr = std::net::SocketAddr::new(ip, 143);
    let greeting = lab.greeting_from("mx3", addr, Duration::from_secs(2))??;
    ensure!(greeting.contains("mx1"), "from mx3: {greeting}");
    let mx1_mac = lab.node("mx1")?.mac.clone();
    ensure!(
        lab.neighbour_mac("mx3", ip)?.as_deref() == Some(mx1_mac.as_str()),
        "mx3 has no entry for {ip} with mx1's MAC"
    );
    let monitors = Monitors::start(&lab)?;
    clusterctl(&lab, "mx3", &["move", &ip.to_string(), "mx2"])?;
    let mx2_mac = lab.node("mx2")?.mac.clone();
    let moved = Instant::now();
    let mut seen = None;
    while moved.elapsed() < Duration::from_secs(2) {
        seen = lab.neighbour_mac("mx3", ip)?;
        if seen.as_deref() == Some(mx2_mac.as_str()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        seen.as_deref() == Some(mx2_mac.as_str()),
        "2 s after the move, mx3's neighbour entry for {ip} is {seen:?}, not mx2's {mx2_mac}: \
         the announcement did not reach its cache"
    );
    let greeting = lab.greeting_from("mx3", addr, Duration::from_secs(2))??;
    ensure!(
        greeting.contains("mx2"),
        "from mx3 after the move: {greeting}"
    );
    monitors.finish()?;
    Ok(())
}
