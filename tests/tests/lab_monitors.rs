//! The invariant monitors are not blind: one floating address configured by hand on two nodes
//! must show up as two holders in the address sampler, the kernel's address events, the ARP
//! prober and the ICMP echo per MAC, with when and who; an overlap of about a millisecond, too
//! short for any sampling, must show in the event view; and a single holder must not. Run as
//! root; see tests/README.md.
// The sampling statistics on stderr are part of what this test reports.
#![allow(clippy::print_stderr)]

use std::net::IpAddr;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Result, ensure};
use clusterd_tests::LabSpec;
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::{AddressSampler, ArpProber, HolderTimeline};

fn check_sampling(t: &HolderTimeline, ran_for: Duration) -> Result<()> {
    eprintln!(
        "{}: {} samples in {:?}, longest gap {:?}",
        t.source, t.samples, ran_for, t.max_gap
    );
    // At least one sample per 20 ms on average, and never blind for long.
    ensure!(
        t.samples as u128 >= ran_for.as_millis() / 20,
        "{} took too few samples: {}",
        t.source,
        t.samples
    );
    ensure!(
        t.max_gap < Duration::from_millis(100),
        "{} was blind for {:?}",
        t.source,
        t.max_gap
    );
    ensure!(t.errors.is_empty(), "{} errors: {:?}", t.source, t.errors);
    Ok(())
}

/// A lab without daemons or mail services, its first floating address (and as a /24), and the
/// interfaces of mx1 and mx2: addresses are put on them by hand.
fn bare_lab() -> Result<(TestLab, IpAddr, String, String, String)> {
    let lab = TestLab::up(LabSpec {
        mail_services: false,
        run_daemons: false,
        ..LabSpec::default()
    })?;
    let floating = lab.state().floating[0].ip;
    let if1 = lab.node("mx1")?.iface.clone();
    let if2 = lab.node("mx2")?.iface.clone();
    Ok((lab, floating, format!("{floating}/24"), if1, if2))
}

#[test]
fn monitors_report_one_floating_address_configured_on_two_nodes() -> Result<()> {
    let (lab, floating, cidr, if1, if2) = bare_lab()?;
    let ip: IpAddr = floating;

    let sampler = AddressSampler::start(&lab)?;
    let arp = ArpProber::start(&lab)?;
    let step = Duration::from_millis(300);
    sleep(step);
    lab.ip("mx1", &["addr", "add", &cidr, "dev", &if1])?;
    sleep(step);
    lab.ip("mx2", &["addr", "add", &cidr, "dev", &if2])?;
    sleep(step);
    lab.ip("mx2", &["addr", "del", &cidr, "dev", &if2])?;
    sleep(step);
    lab.ip("mx1", &["addr", "del", &cidr, "dev", &if1])?;
    sleep(step);
    let addresses = sampler.stop();
    let arp = arp.stop();
    let ran_for = step * 5;
    ensure!(
        addresses.events.errors.is_empty(),
        "{:?}",
        addresses.events.errors
    );

    for t in [
        &addresses.sampled,
        &addresses.events,
        &arp.timeline,
        &arp.echo,
    ] {
        if t.source != addresses.events.source {
            check_sampling(t, ran_for)?;
        }
        // Not blind: the single-holder phase was seen first...
        ensure!(
            t.changes.iter().any(|(_, h)| h
                .get(&ip)
                .is_some_and(|w| w.len() == 1 && w.contains("mx1"))),
            "{} never saw mx1 alone holding {ip}:\n{}",
            t.source,
            t.report()
        );
        // ...then the duplicate, with who and when.
        let dups = t.duplicates();
        ensure!(
            dups.len() == 1,
            "{} duplicates: {dups:?}\n{}",
            t.source,
            t.report()
        );
        let d = &dups[0];
        ensure!(d.ip == ip);
        ensure!(
            d.holders.iter().map(String::as_str).eq(["mx1", "mx2"]),
            "{d:?}"
        );
        let lasted = d.until.map(|u| u - d.from);
        ensure!(
            lasted.is_some_and(|l| l > step / 2 && l < step * 2),
            "{} saw the duplicate for {lasted:?}, expected about {step:?}",
            t.source
        );
        let report = t.assert_single_holder().unwrap_err();
        ensure!(
            report.contains("mx1") && report.contains("mx2") && report.contains(&ip.to_string())
        );
    }
    Ok(())
}

#[test]
fn monitors_accept_a_clean_handover() -> Result<()> {
    let (lab, floating, cidr, if1, if2) = bare_lab()?;
    let sampler = AddressSampler::start(&lab)?;
    let arp = ArpProber::start(&lab)?;
    let step = Duration::from_millis(200);
    lab.ip("mx1", &["addr", "add", &cidr, "dev", &if1])?;
    sleep(step);
    lab.ip("mx1", &["addr", "del", &cidr, "dev", &if1])?;
    lab.ip("mx2", &["addr", "add", &cidr, "dev", &if2])?;
    sleep(step);
    let addresses = sampler.stop();
    let arp = arp.stop();
    for t in [
        &addresses.sampled,
        &addresses.events,
        &arp.timeline,
        &arp.echo,
    ] {
        if let Err(report) = t.assert_single_holder() {
            anyhow::bail!("false alarm on a clean handover:\n{report}");
        }
        let last = t.changes.last().map(|(_, h)| h.clone()).unwrap_or_default();
        ensure!(
            last.get(&floating).is_some_and(|w| w.contains("mx2")),
            "{} did not see mx2 take over:\n{}",
            t.source,
            t.report()
        );
    }
    Ok(())
}

#[test]
fn kernel_events_catch_an_overlap_too_short_for_sampling() -> Result<()> {
    let (lab, _, cidr, if1, if2) = bare_lab()?;
    let sampler = AddressSampler::start(&lab)?;
    lab.ip("mx1", &["addr", "add", &cidr, "dev", &if1])?;
    sleep(Duration::from_millis(100));
    // mx2 has the address for about as long as one `ip` process takes between two commands.
    let dir = tempfile::tempdir()?;
    let batch = dir.path().join("blip");
    std::fs::write(
        &batch,
        format!("addr add {cidr} dev {if2}\naddr del {cidr} dev {if2}\n"),
    )?;
    lab.ip("mx2", &["-batch", &batch.to_string_lossy()])?;
    sleep(Duration::from_millis(100));
    lab.ip("mx1", &["addr", "del", &cidr, "dev", &if1])?;
    sleep(Duration::from_millis(50));
    let seen = sampler.stop();
    let dups = seen.events.duplicates();
    ensure!(
        dups.len() == 1,
        "the event view saw {} overlaps:\n{}",
        dups.len(),
        seen.events.report()
    );
    let lasted = dups[0].until.map(|u| u - dups[0].from);
    eprintln!(
        "event view: overlap of {lasted:?}; the sampler saw {} duplicate(s) in {} samples",
        seen.sampled.duplicates().len(),
        seen.sampled.samples
    );
    ensure!(
        lasted.is_some_and(|l| l < Duration::from_millis(10)),
        "the overlap lasted {lasted:?}, expected under 10 ms"
    );
    Ok(())
}
