//! `clusterctl drill` in the lab: the real clusterctl, run from a mail node's namespace, drills
//! a node and a service of the other mail node while the invariant monitors run, and refuses
//! drills the cluster could not survive.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clusterd::drill::DrillReport;
use clusterd::model::EventKind;
use clusterd::status::StatusReport;
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::Monitors;
use clusterd_tests::{Fault, LabSpec, Service};

/// Wait until every check passes on both mail nodes and .101 is on mx1.
fn settled(lab: &TestLab) -> Result<()> {
    for _ in 0..200 {
        let r = status(lab)?;
        let passing = r.health.len() == 6 && r.health.iter().all(|h| h.state.is_up());
        let home = r
            .addresses
            .iter()
            .all(|a| a.owner.as_deref() == Some(a.home.as_str()));
        if passing && home {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the lab never settled: {:?}", status(lab)?.health)
}

fn status(lab: &TestLab) -> Result<StatusReport> {
    Ok(serde_json::from_str(
        &lab.clusterctl("mx2", &["status", "--json"])?,
    )?)
}

/// Run `clusterctl drill ARGS --json` on mx2; the parsed report, or the failure text.
fn drill(lab: &TestLab, args: &[&str]) -> Result<std::result::Result<DrillReport, String>> {
    let mut cmd = lab.command(
        "mx2",
        lab.state()
            .clusterctl_bin
            .as_ref()
            .context("no clusterctl")?
            .to_str()
            .context("path")?,
    )?;
    cmd.arg("--config")
        .arg(
            lab.node("mx2")?
                .clusterd_config
                .as_ref()
                .context("no config")?,
        )
        .arg("drill")
        .args(args)
        .arg("--json");
    let out = cmd.output()?;
    if out.status.success() {
        Ok(Ok(serde_json::from_slice(&out.stdout).with_context(
            || format!("parsing {}", String::from_utf8_lossy(&out.stdout)),
        )?))
    } else {
        Ok(Err(format!(
            "exit {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

#[test]
fn node_and_service_drills_move_the_address_measure_it_and_restore_it() -> Result<()> {
    let lab = TestLab::up(LabSpec::default())?;
    settled(&lab)?;
    let monitors = Monitors::start(&lab)?;

    let report = drill(&lab, &["node", "mx1"])?.map_err(anyhow::Error::msg)?;
    ensure!(report.ok, "{report:?}");
    ensure!(
        report.failover.len() == 3,
        "imap, pop3 and smtp of .101: {report:?}"
    );
    for t in &report.failover {
        ensure!(t.address == "192.0.2.101/24", "{t:?}");
        ensure!(t.before.as_deref() == Some("mx1"), "{t:?}");
        ensure!(t.after.as_deref() == Some("mx2"), "{t:?}");
        ensure!(t.outcome.served_ms.is_some(), "{t:?}");
    }
    ensure!(
        report.dns.len() == 2 && report.dns.iter().all(|d| d.changed_ms.is_some()),
        "DNS on both nodes: {:?}",
        report.dns
    );
    ensure!(
        report.restore.len() == 3
            && report
                .restore
                .iter()
                .all(|t| t.after.as_deref() == Some("mx1")),
        "restored to mx1: {:?}",
        report.restore
    );
    settled(&lab)?;

    let report = drill(&lab, &["service", "mx1", "imap"])?.map_err(anyhow::Error::msg)?;
    ensure!(report.ok, "{report:?}");
    ensure!(
        report.failover.len() == 1 && report.failover[0].service == "imap",
        "{report:?}"
    );
    ensure!(
        report.failover[0].after.as_deref() == Some("mx2"),
        "{report:?}"
    );
    ensure!(
        report
            .restore
            .iter()
            .all(|t| t.after.as_deref() == Some("mx1")),
        "{report:?}"
    );

    // Both results are in the history, and no drill is left running.
    let r = status(&lab)?;
    ensure!(r.drills.is_empty(), "{:?}", r.drills);
    let history = lab.clusterctl("mx1", &["history"])?;
    ensure!(
        history.contains("failover drill of mx1: passed (node failure)")
            && history.contains("failover drill of mx1: passed (imap failure)"),
        "history:\n{history}"
    );
    monitors.finish()?;
    Ok(())
}

#[test]
fn a_drill_is_refused_when_the_cluster_could_not_survive_it_and_can_be_kept() -> Result<()> {
    // Short failback and hold-down: mx2's address comes home soon after its dovecot is back.
    let mut lab = TestLab::up(LabSpec {
        extra_config: "[placement]\nfailback_after = \"2s\"\nhold_down = \"2s\"\n".into(),
        ..LabSpec::default()
    })?;
    settled(&lab)?;
    // A witness holds nothing.
    let refused = drill(&lab, &["node", "w1"])?
        .err()
        .context("drill of w1 ran")?;
    ensure!(refused.contains("witness"), "{refused}");
    // With dovecot down on mx2, nobody else could take mx1's address.
    lab.fault("mx2", Fault::ServiceStop(Service::Dovecot))?;
    for _ in 0..100 {
        let r = status(&lab)?;
        if r.health
            .iter()
            .any(|h| h.node == "mx2" && h.check == "imap" && !h.state.is_up())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = drill(&lab, &["node", "mx1"])?
        .err()
        .context("the drill ran")?;
    ensure!(
        refused.contains("exit Some(1)") && refused.contains("no other node could take"),
        "{refused}"
    );
    ensure!(
        status(&lab)?.drills.is_empty(),
        "a refused drill left state"
    );
    lab.fault("mx2", Fault::ServiceStart(Service::Dovecot))?;
    settled(&lab)?;

    // --no-restore keeps mx1 failed until `drill end`.
    let report = drill(&lab, &["node", "mx1", "--no-restore"])?.map_err(anyhow::Error::msg)?;
    ensure!(report.ok && report.restore.is_empty(), "{report:?}");
    let r = status(&lab)?;
    ensure!(
        r.drills.len() == 1 && r.drills[0].node == "mx1",
        "{:?}",
        r.drills
    );
    ensure!(
        lab.clusterctl("mx2", &["status"])?
            .contains("DRILL: mx1 plays node failure"),
        "status table does not show the drill"
    );
    let ended = lab.clusterctl("mx2", &["drill", "end", "mx1"])?;
    ensure!(ended.contains("ended"), "{ended}");
    let r = status(&lab)?;
    ensure!(r.drills.is_empty(), "{:?}", r.drills);
    ensure!(
        r.events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::DrillEnded { node, .. } if node == "mx1")),
        "no DrillEnded in recent events"
    );
    Ok(())
}
