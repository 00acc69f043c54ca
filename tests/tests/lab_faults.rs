//! Each fault verb does what it says, checked from outside the node, and its counterpart undoes
//! it. The daemon verbs (kill, stop, cont, restart) act on a stand-in process here, so they are
//! checked without depending on clusterd. Run as root; see tests/README.md.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clusterd_tests::lab::process::wait_until;
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::{Fault, LabSpec, Service};

/// Whether `from` (a node or "client") gets a greeting from `to`:`port` within half a second.
fn reaches(lab: &TestLab, from: &str, to: &str, port: u16) -> Result<bool> {
    let ip: IpAddr = lab.node(to)?.ipv4.into();
    let g = lab.greeting_from(from, SocketAddr::new(ip, port), Duration::from_millis(500))?;
    Ok(g.is_ok())
}

/// Wait (bounded) until `from` reaches `to`:`port` again.
fn reaches_soon(lab: &TestLab, from: &str, to: &str, port: u16) -> bool {
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        reaches(lab, from, to, port).unwrap_or(false)
    })
}

#[test]
fn link_down_cuts_the_node_off_at_the_switch_and_link_up_restores_it() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    ensure!(
        reaches(&lab, "client", "mx2", 25)?,
        "mx2 unreachable before the fault"
    );
    lab.fault("mx2", Fault::LinkDown)?;
    ensure!(
        !reaches(&lab, "client", "mx2", 25)?,
        "client still reaches mx2 with its link down"
    );
    ensure!(
        !reaches(&lab, "mx1", "mx2", 25)?,
        "mx1 still reaches mx2 with its link down"
    );
    let link = lab.ip("mx2", &["link", "show", &lab.node("mx2")?.iface.clone()])?;
    ensure!(
        link.contains("NO-CARRIER") || link.contains("LOWERLAYERDOWN"),
        "mx2 sees carrier: {link}"
    );
    ensure!(
        reaches(&lab, "client", "mx1", 25)?,
        "link-down on mx2 cut mx1 too"
    );
    lab.fault("mx2", Fault::LinkUp)?;
    ensure!(
        reaches_soon(&lab, "client", "mx2", 25),
        "link-up did not restore mx2"
    );
    ensure!(
        reaches_soon(&lab, "mx1", "mx2", 25),
        "link-up did not restore mx1 -> mx2"
    );
    Ok(())
}

#[test]
fn partition_cuts_the_node_from_its_peers_but_not_from_the_client() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    lab.fault("mx2", Fault::Partition { from: None })?;
    ensure!(
        !reaches(&lab, "mx1", "mx2", 25)?,
        "mx1 reaches partitioned mx2"
    );
    ensure!(
        !reaches(&lab, "w1", "mx2", 25)?,
        "w1 reaches partitioned mx2"
    );
    ensure!(
        !reaches(&lab, "mx2", "mx1", 25)?,
        "partitioned mx2 reaches mx1"
    );
    ensure!(
        reaches(&lab, "client", "mx2", 25)?,
        "the partition cut the client off too"
    );
    ensure!(reaches(&lab, "mx1", "mx1", 25)?, "mx1 lost itself");
    let v6: IpAddr = lab.node("mx2")?.ipv6.into();
    let g = lab.greeting_from("mx1", SocketAddr::new(v6, 25), Duration::from_millis(500))?;
    ensure!(g.is_err(), "mx1 reaches partitioned mx2 over IPv6");

    lab.fault("mx2", Fault::Heal)?;
    ensure!(!lab.partitioned("mx2")?, "heal left partition rules behind");
    ensure!(
        reaches_soon(&lab, "mx1", "mx2", 25),
        "heal did not restore mx1 -> mx2"
    );
    ensure!(
        reaches_soon(&lab, "mx2", "mx1", 25),
        "heal did not restore mx2 -> mx1"
    );
    ensure!(
        reaches_soon(&lab, "w1", "mx2", 25),
        "heal did not restore w1 -> mx2"
    );
    Ok(())
}

#[test]
fn partition_from_one_peer_cuts_only_that_peer() -> Result<()> {
    let mut lab = TestLab::up(LabSpec::default())?;
    lab.fault(
        "mx2",
        Fault::Partition {
            from: Some("mx1".into()),
        },
    )?;
    ensure!(
        !reaches(&lab, "mx1", "mx2", 25)?,
        "mx1 reaches mx2 partitioned from it"
    );
    ensure!(reaches(&lab, "w1", "mx2", 25)?, "w1 was cut too");
    lab.fault(
        "mx2",
        Fault::Partition {
            from: Some("w1".into()),
        },
    )?;
    ensure!(
        !reaches(&lab, "w1", "mx2", 25)?,
        "a second --from did not add to the partition"
    );
    lab.fault("mx2", Fault::Heal)?;
    ensure!(
        reaches_soon(&lab, "mx1", "mx2", 25),
        "heal did not restore mx1 -> mx2"
    );
    ensure!(
        reaches_soon(&lab, "w1", "mx2", 25),
        "heal did not restore w1 -> mx2"
    );
    Ok(())
}

#[test]
fn service_stop_takes_one_daemon_away_and_service_start_brings_it_back() -> Result<()> {
    let mut lab = TestLab::up(LabSpec {
        mail_nodes: 1,
        witness: false,
        run_daemons: false,
        ..LabSpec::default()
    })?;
    lab.fault("mx1", Fault::ServiceStop(Service::Dovecot))?;
    ensure!(
        !reaches(&lab, "client", "mx1", 143)?,
        "IMAP still answers with dovecot stopped"
    );
    ensure!(
        !reaches(&lab, "client", "mx1", 110)?,
        "POP3 still answers with dovecot stopped"
    );
    ensure!(
        reaches(&lab, "client", "mx1", 25)?,
        "stopping dovecot took postfix away"
    );
    lab.fault("mx1", Fault::ServiceStart(Service::Dovecot))?;
    ensure!(
        reaches(&lab, "client", "mx1", 143)?,
        "IMAP did not come back"
    );

    lab.fault("mx1", Fault::ServiceStop(Service::Postfix))?;
    ensure!(
        !reaches(&lab, "client", "mx1", 25)?,
        "SMTP still answers with postfix stopped"
    );
    ensure!(
        !reaches(&lab, "client", "mx1", 587)?,
        "submission answers with postfix stopped"
    );
    ensure!(
        reaches(&lab, "client", "mx1", 143)?,
        "stopping postfix took dovecot away"
    );
    lab.fault("mx1", Fault::ServiceStart(Service::Postfix))?;
    ensure!(
        reaches(&lab, "client", "mx1", 25)?,
        "SMTP did not come back"
    );
    ensure!(
        reaches(&lab, "client", "mx1", 587)?,
        "submission did not come back"
    );
    Ok(())
}

#[test]
fn daemon_verbs_kill_stop_cont_restart_act_on_the_recorded_process() -> Result<()> {
    // The real daemon on two mail nodes and the witness.
    let mut lab = TestLab::up(LabSpec {
        mail_services: false,
        ..LabSpec::default()
    })?;
    let first = lab.node("mx1")?.clusterd.context("clusterd not recorded")?;
    ensure!(first.alive());
    let config = std::fs::read_to_string(
        lab.node("mx1")?
            .clusterd_config
            .clone()
            .context("no config")?,
    )?;
    ensure!(
        config.contains("[node]") && config.contains("name = \"mx1\""),
        "{config}"
    );

    lab.fault("mx1", Fault::Stop)?;
    ensure!(wait_until(
        Duration::from_secs(2),
        Duration::from_millis(10),
        || first.stopped()
    ));
    lab.fault("mx1", Fault::Cont)?;
    ensure!(wait_until(
        Duration::from_secs(2),
        Duration::from_millis(10),
        || !first.stopped()
    ));
    ensure!(first.alive());

    lab.fault("mx1", Fault::Restart)?;
    let second = lab
        .node("mx1")?
        .clusterd
        .context("restart recorded nothing")?;
    ensure!(!first.alive(), "restart left the old process running");
    ensure!(
        second.alive() && second != first,
        "restart did not start a new process"
    );

    lab.fault("mx1", Fault::Kill)?;
    ensure!(
        second.wait_gone(Duration::from_secs(2)),
        "kill did not end the daemon"
    );
    lab.fault("mx1", Fault::Restart)?;
    let third = lab
        .node("mx1")?
        .clusterd
        .context("restart after kill recorded nothing")?;
    ensure!(third.alive(), "restart after kill did not start the daemon");
    Ok(())
}
