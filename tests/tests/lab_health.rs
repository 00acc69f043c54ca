//! Service-driven failover in the lab: clusterd's probes against each node's real dovecot and
//! postfix, real mail clients in the client namespace, and the invariant monitors (address
//! sampler and ARP prober) running during every test: one address is never answered by two
//! nodes at once.
// Failover times on stderr are part of what these tests report.
#![allow(clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clusterd::model::{EventKind, Health, MoveReason};
use clusterd::status::{ServiceReport, StatusReport};
use clusterd_tests::lab::testing::TestLab;
use clusterd_tests::monitor::Monitors;
use clusterd_tests::probe::{imap_session, pop3_session, smtp_send};
use clusterd_tests::{Fault, LabSpec, Service};

const FLOATING_MX1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const FLOATING_MX2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 102);
const KEY_MX1: &str = "192.0.2.101/24";
/// Hold-down configured in these labs.
const HOLD_DOWN_MS: u64 = 4000;

/// Two mail nodes and the witness, with a short failback period and hold-down so the return
/// of an address fits in a test.
fn spec() -> LabSpec {
    LabSpec {
        extra_config: format!(
            "[placement]\nfailback_after = \"2s\"\nhold_down = \"{}s\"\n",
            HOLD_DOWN_MS / 1000
        ),
        ..LabSpec::default()
    }
}

/// `clusterctl status --json` on `node`.
fn status(lab: &TestLab, node: &str) -> Result<StatusReport> {
    let json = lab.clusterctl(node, &["status", "--json"])?;
    serde_json::from_str(&json).context("parsing clusterctl status --json")
}

/// Poll `f` every 100 ms until it returns `Some`, or fail after `within`.
fn wait<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > within {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn health(r: &StatusReport, node: &str, check: &str) -> Option<Health> {
    r.health
        .iter()
        .find(|h| h.node == node && h.check == check)
        .map(|h| h.state)
}

fn owner(r: &StatusReport, key: &str) -> Option<(String, u64)> {
    r.addresses
        .iter()
        .find(|a| a.ip == key)
        .and_then(|a| Some((a.owner.clone()?, a.epoch)))
}

fn wait_all_passing(lab: &TestLab) -> Result<()> {
    wait(
        "every service passing and each address at home",
        Duration::from_secs(20),
        || {
            let r = status(lab, "mx1").ok()?;
            let passing = ["mx1", "mx2"].iter().all(|n| {
                ["imap", "pop3", "smtp"]
                    .iter()
                    .all(|c| health(&r, n, c) == Some(Health::Passing))
            });
            (passing && lab.imap_greeter(IpAddr::V4(FLOATING_MX1)).as_deref() == Some("mx1"))
                .then_some(())
        },
    )
}

/// The DNS servers of the lab: every mail node's own address.
fn dns_servers(lab: &TestLab) -> Result<Vec<IpAddr>> {
    Ok(vec![
        IpAddr::V4(lab.node("mx1")?.ipv4),
        IpAddr::V4(lab.node("mx2")?.ipv4),
    ])
}

/// When the history says `node`'s `check` last became passing (unix ms).
fn last_passing(r: &StatusReport, node: &str, check: &str) -> Option<u64> {
    r.events.iter().rev().find_map(|e| match &e.kind {
        EventKind::HealthChanged {
            node: n,
            check: c,
            to: Health::Passing,
            ..
        } if n == node && c == check => Some(e.at_ms),
        _ => None,
    })
}

#[test]
fn dovecot_stopped_on_the_owner_moves_its_address_and_it_returns_after_the_hold_down() -> Result<()>
{
    let mut lab = TestLab::up(spec())?;
    wait_all_passing(&lab)?;
    let monitors = Monitors::start(&lab)?;
    let servers = dns_servers(&lab)?;
    let serial_before = lab
        .dns_serial(servers[0])
        .context("no SOA from mx1's DNS")?;

    let stopped = Instant::now();
    lab.fault("mx1", Fault::ServiceStop(Service::Dovecot))?;
    // A real IMAP client on mx1's address logs in on mx2 and reads the mailbox; same for POP3.
    let imap = wait(
        "IMAP login on .101 served by mx2",
        Duration::from_secs(15),
        || {
            lab.in_client(|| imap_session(IpAddr::V4(FLOATING_MX1), None, Duration::from_secs(1)))
                .ok()?
                .ok()
                .filter(|o| o.node == "mx2")
        },
    )?;
    eprintln!(
        "dovecot stopped on mx1; an IMAP client logs in on mx2 via {FLOATING_MX1} after {:?} \
         ({} messages in INBOX)",
        stopped.elapsed(),
        imap.messages
    );
    // DNS on every node follows: a new serial, and imap answers both addresses (both on mx2,
    // which passes imap).
    let moved = Instant::now();
    for server in &servers {
        wait("DNS serial moved", Duration::from_secs(1), || {
            lab.dns_serial(*server).filter(|s| *s > serial_before)
        })
        .with_context(|| format!("DNS at {server} after the failover"))?;
        ensure!(
            lab.dig(*server, "imap.lab.example", "A")? == ["192.0.2.101", "192.0.2.102"],
            "imap.lab.example at {server}"
        );
    }
    eprintln!(
        "DNS on both mail nodes updated within {:?}",
        moved.elapsed()
    );
    let pop3 = lab
        .in_client(|| pop3_session(IpAddr::V4(FLOATING_MX1), Duration::from_secs(2)))?
        .map_err(|e| anyhow!("POP3 on {FLOATING_MX1}: {e}"))?;
    ensure!(
        pop3.node == "mx2",
        "POP3 on {FLOATING_MX1} greeted by {}",
        pop3.node
    );

    let r = status(&lab, "mx2")?;
    ensure!(
        health(&r, "mx1", "imap") == Some(Health::Critical),
        "mx1 imap not critical"
    );
    ensure!(
        r.events.iter().any(|e| matches!(&e.kind,
            EventKind::OwnerChanged { ip, to, reason: MoveReason::ServiceFailed, .. }
                if ip == KEY_MX1 && to == "mx2")),
        "no 'service failed' move of {KEY_MX1} in the history"
    );

    // dovecot comes back: the address returns home, but only after the hold-down.
    lab.fault("mx1", Fault::ServiceStart(Service::Dovecot))?;
    wait("mx1 greets on .101 again", Duration::from_secs(30), || {
        (lab.imap_greeter(IpAddr::V4(FLOATING_MX1)).as_deref() == Some("mx1")).then_some(())
    })?;
    let r = status(&lab, "mx2")?;
    let up = last_passing(&r, "mx1", "imap").context("mx1 imap passing again in history")?;
    let back = r
        .events
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::HandoffStarted {
                ip,
                to,
                reason: MoveReason::Failback,
                ..
            } if ip == KEY_MX1 && to == "mx1" => Some(e.at_ms),
            _ => None,
        })
        .context("failback of .101 in history")?;
    ensure!(
        back >= up + HOLD_DOWN_MS,
        "failback {} ms after imap passed again on mx1, inside the {HOLD_DOWN_MS} ms hold-down",
        back as i64 - up as i64
    );
    monitors.finish()?;
    Ok(())
}

#[test]
fn postfix_stopped_moves_the_address_and_mail_sent_to_it_is_read_on_the_new_owner() -> Result<()> {
    let mut lab = TestLab::up(spec())?;
    wait_all_passing(&lab)?;
    let monitors = Monitors::start(&lab)?;
    let stopped = Instant::now();
    lab.fault("mx1", Fault::ServiceStop(Service::Postfix))?;
    let subject = format!("failover test {}", std::process::id());
    let s = subject.clone();
    let node = wait(
        "SMTP on .101 accepted by mx2",
        Duration::from_secs(15),
        || {
            let s = s.clone();
            lab.in_client(move || {
                smtp_send(IpAddr::V4(FLOATING_MX1), 25, &s, Duration::from_secs(2))
            })
            .ok()?
            .ok()
        },
    )?;
    ensure!(
        node == "mx2",
        "mail on {FLOATING_MX1} was accepted by {node}"
    );
    eprintln!(
        "postfix stopped on mx1; {FLOATING_MX1} accepts mail on mx2 after {:?}",
        stopped.elapsed()
    );
    // mx2's postfix hands it to mx2's dovecot over LMTP; IMAP on the same address shows it.
    let s = subject.clone();
    let found = wait(
        "the message in mx2's INBOX",
        Duration::from_secs(15),
        || {
            let s = s.clone();
            lab.in_client(move || {
                imap_session(IpAddr::V4(FLOATING_MX1), Some(&s), Duration::from_secs(2))
            })
            .ok()?
            .ok()
            .filter(|o| !o.matches.is_empty())
        },
    )?;
    ensure!(found.node == "mx2", "read the message on {}", found.node);
    let r = status(&lab, "mx2")?;
    ensure!(
        health(&r, "mx1", "smtp") == Some(Health::Critical),
        "mx1 smtp not critical"
    );
    ensure!(
        health(&r, "mx1", "imap") == Some(Health::Passing),
        "mx1 imap should still pass"
    );
    monitors.finish()?;
    Ok(())
}

#[test]
fn a_crashed_dovecot_is_seen_by_the_listener_watch_and_critical_on_one_refusal() -> Result<()> {
    // fall = 3, probes 2 s apart, and a "fast" re-probe as slow as that: a failure that is not
    // decisive would need three probes, at least 4 s, before imap counted as critical.
    let mut lab = TestLab::up(LabSpec {
        imap_check_extra: "interval = \"2s\"\nfast_interval = \"2s\"\nfall = 3\n".into(),
        ..spec()
    })?;
    wait_all_passing(&lab)?;
    let monitors = Monitors::start(&lab)?;
    let crashed_at = clusterd::clock::unix_ms();
    lab.fault("mx1", Fault::ServiceCrash(Service::Dovecot))?;
    wait("mx2 greets on .101", Duration::from_secs(15), || {
        (lab.imap_greeter(IpAddr::V4(FLOATING_MX1)).as_deref() == Some("mx2")).then_some(())
    })?;
    let r = status(&lab, "mx2")?;
    mx1_imap_critical(&r, "Connection refused")?;
    let critical_at = r
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::HealthChanged {
                node,
                check,
                to: Health::Critical,
                ..
            } if node == "mx1" && check == "imap" => Some(e.at_ms),
            _ => None,
        })
        .context("mx1 imap's critical transition in the history")?;
    eprintln!(
        "dovecot crashed on mx1; imap critical after {} ms",
        critical_at.saturating_sub(crashed_at)
    );
    ensure!(
        critical_at < crashed_at + 2000,
        "imap became critical {} ms after the crash: three failures were counted, so the \
         refusal was not decisive",
        critical_at.saturating_sub(crashed_at)
    );
    // The listener watch started that probe.
    let log = std::fs::read_to_string(lab.node("mx1")?.dir.join("clusterd.log"))
        .context("mx1's clusterd log")?;
    ensure!(
        log.lines()
            .any(|l| l.contains("checked port changed; probing now")
                && l.contains("check=imap")
                && l.contains("listening=false")),
        "the listener watch never woke the imap check on mx1"
    );
    monitors.finish()?;
    Ok(())
}

/// mx1's imap as `r` shows it; an error unless it is critical for a reason containing `why`.
fn mx1_imap_critical<'a>(r: &'a StatusReport, why: &str) -> Result<&'a ServiceReport> {
    let imap = r
        .health
        .iter()
        .find(|h| h.node == "mx1" && h.check == "imap")
        .context("mx1 imap in status")?;
    ensure!(imap.state == Health::Critical, "mx1 imap is {}", imap.state);
    ensure!(
        imap.reason.contains(why),
        "mx1 imap should be critical for \"{why}\", got: {}",
        imap.reason
    );
    Ok(imap)
}

#[test]
fn a_black_holed_imap_port_is_critical_after_fall_timeouts_and_the_address_moves() -> Result<()> {
    let mut lab = TestLab::up(spec())?;
    wait_all_passing(&lab)?;
    let monitors = Monitors::start(&lab)?;
    let blocked = Instant::now();
    lab.fault("mx1", Fault::BlockPort(143))?;
    wait("mx2 greets on .101", Duration::from_secs(15), || {
        (lab.imap_greeter(IpAddr::V4(FLOATING_MX1)).as_deref() == Some("mx2")).then_some(())
    })?;
    eprintln!(
        "IMAP port of mx1 black-holed; mx2 greets on {FLOATING_MX1} after {:?}",
        blocked.elapsed()
    );
    let r = status(&lab, "mx2")?;
    let imap = mx1_imap_critical(&r, "no answer within")?;
    // With the default 1 s timeout and fall 2, the hang is noticed after two probes that each
    // waited their full timeout (the second one right after the first: fast_interval).
    ensure!(
        imap.latency_ms.is_some_and(|ms| ms >= 1000),
        "the deciding probe waited {:?}",
        imap.latency_ms
    );
    monitors.finish()?;
    Ok(())
}

#[test]
fn dovecot_down_on_both_mail_nodes_moves_nothing_and_status_says_so() -> Result<()> {
    let mut lab = TestLab::up(spec())?;
    wait_all_passing(&lab)?;
    let monitors = Monitors::start(&lab)?;
    lab.fault("mx1", Fault::ServiceStop(Service::Dovecot))?;
    lab.fault("mx2", Fault::ServiceStop(Service::Dovecot))?;
    wait("imap critical on both", Duration::from_secs(15), || {
        let r = status(&lab, "mx1").ok()?;
        (health(&r, "mx1", "imap") == Some(Health::Critical)
            && health(&r, "mx2", "imap") == Some(Health::Critical))
        .then_some(())
    })?;
    // A handover decided in the instant only mx1 had failed may still complete; then nothing
    // may move for many probe intervals.
    std::thread::sleep(Duration::from_secs(2));
    let before = status(&lab, "mx1")?;
    let owners: Vec<_> = [KEY_MX1, "192.0.2.102/24"]
        .iter()
        .map(|k| owner(&before, k))
        .collect();
    std::thread::sleep(Duration::from_secs(6));
    let after = status(&lab, "mx1")?;
    let now: Vec<_> = [KEY_MX1, "192.0.2.102/24"]
        .iter()
        .map(|k| owner(&after, k))
        .collect();
    ensure!(owners == now, "addresses moved: {owners:?} -> {now:?}");
    ensure!(
        after.addresses.iter().all(|a| a.stuck.is_some()),
        "status does not say the addresses stay for lack of a passing node: {:?}",
        after.addresses
    );
    let table = lab.clusterctl("mx1", &["status"])?;
    ensure!(table.contains("STAYS on"), "status table:\n{table}");
    ensure!(table.contains("CRITICAL"), "status table:\n{table}");
    // DNS: nothing passes imap, so imap.lab.example fails open (answers every address), and
    // `clusterctl dns` and status say so; smtp still passes on both.
    for server in dns_servers(&lab)? {
        ensure!(
            lab.dig(server, "imap.lab.example", "A")? == ["192.0.2.101", "192.0.2.102"],
            "imap.lab.example at {server} should fail open"
        );
    }
    let dns: clusterd::status::DnsReport =
        serde_json::from_str(&lab.clusterctl("mx2", &["dns", "--json"])?)?;
    let state_of = |name: &str| {
        dns.names
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.state.clone())
    };
    ensure!(
        state_of("imap.lab.example.").as_deref() == Some("fail-open"),
        "{dns:?}"
    );
    ensure!(
        state_of("smtp.lab.example.").as_deref() == Some("passing"),
        "{dns:?}"
    );
    ensure!(table.contains("fail-open"), "status table:\n{table}");
    // Both addresses are still reachable (postfix still runs): the cluster did not give up on them.
    for ip in [FLOATING_MX1, FLOATING_MX2] {
        let addr = SocketAddr::new(IpAddr::V4(ip), 25);
        lab.greeting_from("client", addr, Duration::from_secs(1))?
            .map_err(|e| anyhow!("SMTP on {ip}: {e}"))?;
    }
    monitors.finish()?;
    Ok(())
}

#[test]
fn degraded_signals_show_in_status_and_history_but_move_nothing() -> Result<()> {
    let lab = TestLab::up(spec())?;
    wait_all_passing(&lab)?;
    let monitors = Monitors::start(&lab)?;
    let before = status(&lab, "mx1")?;
    let owners = (owner(&before, KEY_MX1), owner(&before, "192.0.2.102/24"));

    // The IMAP probe's test login fails (wrong password): a warning, not a failure.
    let pass = clusterd_tests::lab::clusterd::probe_password_path(lab.node("mx1")?);
    std::fs::write(&pass, "not-the-password\n")?;
    // The postfix queue of mx2 grows past the threshold: hold LMTP deliveries, send mail.
    let mx2 = lab.node("mx2")?.clone();
    let postconf = |args: &[&str]| -> Result<()> {
        let mut cmd = lab.command("mx2", "postconf")?;
        cmd.arg("-c").arg(mx2.postfix_config_dir()).args(args);
        let out = cmd.output()?;
        ensure!(out.status.success(), "postconf {args:?}: {out:?}");
        Ok(())
    };
    postconf(&["-e", "defer_transports = lmtp"])?;
    let mut reload = lab.command("mx2", "postfix")?;
    reload.arg("-c").arg(mx2.postfix_config_dir()).arg("reload");
    ensure!(reload.output()?.status.success(), "postfix reload on mx2");
    let over = clusterd_tests::lab::clusterd::LAB_QUEUE_THRESHOLD + 1;
    for i in 0..over {
        lab.in_client(move || {
            smtp_send(
                IpAddr::V4(FLOATING_MX2),
                25,
                &format!("queued {i}"),
                Duration::from_secs(2),
            )
        })?
        .map_err(|e| anyhow!("sending to {FLOATING_MX2}: {e}"))?;
    }

    let r = wait("both warnings in status", Duration::from_secs(15), || {
        let r = status(&lab, "mx1").ok()?;
        (health(&r, "mx1", "imap") == Some(Health::Warning)
            && health(&r, "mx2", "smtp") == Some(Health::Warning))
        .then_some(r)
    })?;
    let reason = |node: &str, check: &str| {
        r.health
            .iter()
            .find(|h| h.node == node && h.check == check)
            .map(|h| h.reason.clone())
            .unwrap_or_default()
    };
    ensure!(
        reason("mx1", "imap").contains("test login as alice failed"),
        "{}",
        reason("mx1", "imap")
    );
    ensure!(
        !reason("mx1", "imap").contains("not-the-password"),
        "the password leaked into the reason"
    );
    ensure!(
        reason("mx2", "smtp").contains(&format!("postfix queue holds {over} messages")),
        "{}",
        reason("mx2", "smtp")
    );
    let history = lab.clusterctl("mx1", &["history"])?;
    ensure!(
        history.contains("mx1 imap: passing -> warning"),
        "history:\n{history}"
    );
    ensure!(
        history.contains("mx2 smtp: passing -> warning"),
        "history:\n{history}"
    );
    // Nothing moves for a while.
    std::thread::sleep(Duration::from_secs(4));
    let after = status(&lab, "mx1")?;
    ensure!(
        (owner(&after, KEY_MX1), owner(&after, "192.0.2.102/24")) == owners,
        "a warning moved an address"
    );
    monitors.finish()?;
    Ok(())
}
