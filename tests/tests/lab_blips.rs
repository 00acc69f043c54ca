//! Link blips shorter than half a lease, in the lab, with the invariant monitors running: a
//! node whose link goes down for 300 ms, once or ten times in a row, keeps its addresses and
//! the cluster keeps its leader. After the carrier returns the node must reach its peers at
//! once: the kernel flushed its neighbour entries when the carrier went, and without clusterd's
//! link watch the entries created during the blip wait a second before asking again.
// What the blips changed is reported on stderr.
#![allow(clippy::print_stderr)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clusterd_tests::lab::clusterd::AddressOwner;
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::{Fault, LabSpec, Monitors};

/// Shorter than half the default lease (800 ms).
const BLIP: Duration = Duration::from_millis(300);

/// Take `node`'s link down for [`BLIP`], `times` times, [`BLIP`] apart.
fn blips(lab: &mut TestLab, node: &str, times: usize) -> Result<()> {
    for _ in 0..times {
        lab.fault(node, Fault::LinkDown)?;
        std::thread::sleep(BLIP);
        lab.fault(node, Fault::LinkUp)?;
        std::thread::sleep(BLIP);
    }
    Ok(())
}

/// Owner and epoch of every address, and the term, as `observer` sees them.
fn picture(lab: &TestLab, observer: &str) -> Result<(Vec<AddressOwner>, u64)> {
    let s = lab.cluster_status(observer)?;
    Ok((s.owners(), s.term))
}

/// Blip `node` and check that nothing moved and the term stayed (seen from `observer`).
fn nothing_changes(lab: &mut TestLab, node: &str, times: usize, observer: &str) -> Result<()> {
    let (before, term) = picture(lab, observer)?;
    blips(lab, node, times)?;
    // Long enough for a lost lease to have moved an address.
    std::thread::sleep(Duration::from_secs(2));
    let (after, term_after) = picture(lab, observer)?;
    eprintln!("{node}: {times} blip(s) of {BLIP:?}: term {term} -> {term_after}");
    ensure!(
        before == after,
        "{times} blip(s) of {node}'s link moved addresses: {before:?} -> {after:?}"
    );
    ensure!(
        term == term_after,
        "{times} blip(s) of {node}'s link changed the leader: term {term} -> {term_after}"
    );
    Ok(())
}

#[test]
fn blips_shorter_than_half_a_lease_move_nothing_and_keep_the_leader() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    lab.wait_for_greeter("192.0.2.101".parse()?, "mx1", Duration::from_secs(15))
        .context("mx1 never served its home address")?;
    lab.wait_for_greeter("192.0.2.102".parse()?, "mx2", Duration::from_secs(15))
        .context("mx2 never served its home address")?;
    let leader = lab.wait_for_leader(Duration::from_secs(15))?;
    let owner = if leader == "mx1" { "mx2" } else { "mx1" };
    let observer = if leader == "w1" { "mx1" } else { "w1" };
    let monitors = Monitors::start(&lab)?;
    // An owner that does not lead: one blip, then a flap of ten.
    nothing_changes(&mut lab, owner, 1, observer)?;
    nothing_changes(&mut lab, owner, 10, observer)?;
    // The peers could talk again right after each blip: the link watch said so.
    let log = std::fs::read_to_string(lab.node(owner)?.dir.join("clusterd.log"))
        .context("the owner's clusterd log")?;
    ensure!(
        log.contains("link carrier is back"),
        "{owner}'s link watch never saw its carrier come back"
    );
    monitors.finish()?;
    Ok(())
}
