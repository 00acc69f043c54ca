//! The lab comes up and goes down cleanly, again and again, and the sweeper removes what a
//! crashed run left behind without touching a live lab. Run as root; see tests/README.md.
// Timings on stderr are part of what these tests report.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clusterd_tests::lab::cleanup::{self, leftovers};
use clusterd_tests::lab::netns;
use clusterd_tests::lab::process::ProcId;
use clusterd_tests::lab::testing;
use clusterd_tests::{Lab, LabSpec};

#[test]
fn lab_comes_up_and_goes_down_cleanly_three_times() -> Result<()> {
    let spec = LabSpec::default();
    let _exclusive = testing::exclusive(&spec)?;
    for round in 1..=3 {
        let t = Instant::now();
        let lab = Lab::up(spec.clone())?;
        let st = lab.state().clone();
        let present = netns::list()?;
        for ns in st.namespaces() {
            ensure!(
                present.contains(&ns),
                "round {round}: namespace {ns} missing while up"
            );
        }
        ensure!(
            st.nodes
                .iter()
                .filter(|n| n.dovecot.is_some_and(|p| p.alive()))
                .count()
                == 2
        );
        lab.down()?;
        let left = leftovers(&st);
        ensure!(
            left.is_empty(),
            "round {round} left behind:\n  {}",
            left.join("\n  ")
        );
        eprintln!("round {round}: up and down in {:?}", t.elapsed());
    }
    Ok(())
}

#[test]
fn sweeper_removes_a_crashed_runs_leftovers_and_spares_a_live_lab() -> Result<()> {
    let spec = LabSpec {
        mail_nodes: 1,
        witness: false,
        run_daemons: false,
        ..LabSpec::default()
    };
    let _exclusive = testing::exclusive(&spec)?;
    let live = Lab::up(spec.clone())?;
    let crashed = Lab::up(spec.clone())?;
    // Simulate a crash: the owner is a process that has exited, and nobody tears down.
    let mut st = crashed.state().clone();
    std::mem::forget(crashed);
    let mut child = std::process::Command::new("true").spawn()?;
    let dead = ProcId {
        pid: child.id(),
        start_time: ProcId::of(child.id()).map_or(1, |p| p.start_time),
    };
    child.wait()?;
    st.owner = Some(dead);
    st.save()?;

    let report = cleanup::sweep(&spec.run_root)?;
    ensure!(
        report.removed.contains(&st.prefix),
        "sweeper kept the crashed run: {report:?}"
    );
    ensure!(
        report.kept.contains(&live.state().prefix),
        "sweeper touched the live lab: {report:?}"
    );
    let left = leftovers(&st);
    ensure!(
        left.is_empty(),
        "crashed run left behind:\n  {}",
        left.join("\n  ")
    );
    let greet = live.greeting_from(
        "client",
        std::net::SocketAddr::new(live.state().nodes[0].ipv4.into(), 143),
        Duration::from_secs(2),
    )?;
    ensure!(
        greet.is_ok(),
        "the live lab stopped answering after the sweep: {greet:?}"
    );
    let st_live = live.state().clone();
    live.down()?;
    ensure!(leftovers(&st_live).is_empty());
    Ok(())
}
