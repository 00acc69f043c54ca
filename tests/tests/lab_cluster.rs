//! Raft across namespaces with the real daemon: a killed leader is replaced, a partitioned
//! leader is replaced and cannot commit, healing leaves one leader, and a whole-cluster restart
//! keeps the cluster's state.
//!
//! They run the clusterd and clusterctl built in the same target directory (`cargo test
//! --workspace` builds them first), or `CLUSTERD_BIN=/path/to/clusterd` (clusterctl next to it,
//! or `CLUSTERCTL_BIN`). Without a binary they fail and say how to build one. Run as root; see
//! tests/README.md.
// Election times on stderr are part of what these tests report.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clusterd_tests::lab::clusterd::{CLUSTERD_BIN_ENV, resolve_binaries};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::{Fault, LabSpec};

const ELECTION: Duration = Duration::from_secs(15);

fn cluster_lab() -> Result<TestLab> {
    let (clusterd, clusterctl) = resolve_binaries(None, None);
    if clusterd.is_none() || clusterctl.is_none() {
        bail!(
            "these tests need the daemon: build it (cargo build -p clusterd --bins, or run \
             cargo test --workspace) or set {CLUSTERD_BIN_ENV}=/path/to/clusterd"
        );
    }
    Ok(TestLab::up(LabSpec {
        mail_services: false,
        ..LabSpec::default()
    })?)
}

#[test]
fn killing_the_leaders_daemon_elects_a_new_leader_among_the_rest() -> Result<()> {
    let mut lab = cluster_lab()?;
    let old = lab.wait_for_leader(ELECTION)?;
    let t = Instant::now();
    lab.fault(&old, Fault::Kill)?;
    let new = lab.wait_for_new_leader(&old, ELECTION)?;
    eprintln!("leader {old} killed; {new} leads after {:?}", t.elapsed());
    ensure!(new != old, "the killed node {old} is still named leader");
    Ok(())
}

#[test]
fn partitioned_leader_is_replaced_and_cannot_commit_and_heal_leaves_one_leader() -> Result<()> {
    let mut lab = cluster_lab()?;
    let old = lab.wait_for_leader(ELECTION)?;
    let t = Instant::now();
    lab.fault(&old, Fault::Partition { from: None })?;
    let new = lab.wait_for_new_leader(&old, ELECTION)?;
    eprintln!(
        "leader {old} partitioned; {new} leads after {:?}",
        t.elapsed()
    );
    ensure!(new != old);

    let marker = format!("written on the cut-off leader {}", std::process::id());
    let wrote = lab.clusterctl(&old, &["note", &marker]);
    match &wrote {
        Ok(out) => bail!("the partitioned old leader committed a write: {out}"),
        Err(e) => {
            eprintln!("write on the cut-off leader refused: {e}");
            // Refused at once and saying why, not after a long hang.
            ensure!(
                format!("{e:#}").contains("quorum"),
                "the refusal does not name the lost quorum: {e:#}"
            );
        }
    }

    lab.fault(&old, Fault::Heal)?;
    let after = lab.wait_for_leader(ELECTION)?;
    eprintln!("healed; everyone agrees on {after}");
    let history = lab.clusterctl(&new, &["history"])?;
    ensure!(
        !history.contains(&marker),
        "the cut-off leader's write reached the history"
    );
    Ok(())
}

#[test]
fn restarting_every_daemon_at_once_brings_the_cluster_back_with_its_state() -> Result<()> {
    let mut lab = cluster_lab()?;
    let leader = lab.wait_for_leader(ELECTION)?;
    let marker = format!("before the full restart {}", std::process::id());
    lab.clusterctl(&leader, &["note", &marker])
        .context("writing a note")?;
    let t = Instant::now();
    lab.restart_all_daemons()?;
    let leader = lab.wait_for_leader(ELECTION)?;
    eprintln!("full restart: {leader} leads after {:?}", t.elapsed());
    let history = lab.clusterctl(&leader, &["history"])?;
    ensure!(
        history.contains(&marker),
        "the note did not survive the restart:\n{history}"
    );
    Ok(())
}
