//! Health checks: each mail node probes its own dovecot and postfix and replicates only the
//! transitions.
//!
//! One task per `[checks.NAME]` runs the probe every `interval` ([`probe`]), or every
//! `fast_interval` while the check is changing state, and feeds the result to a rise/fall
//! [`tracker`]. A listener watch reads the kernel's listening sockets every
//! [`LISTEN_WATCH_EVERY`] and wakes a check's task at once when its port stops or starts
//! listening, so a stopped service is probed (and refused, which is decisive) within a tenth of
//! a second instead of at the next interval. A reporter task makes the replicated state match what
//! the trackers decided: first a `HealthReset` (a node that just started passes nothing until
//! its checks rose), then a `Health` command for every check whose replicated state differs.
//! It reconciles instead of queueing, so a failed proposal is simply retried with the latest
//! state. The last result of every probe (latency, reason) stays local, for `status` and
//! `/v1/health`.

pub mod probe;
#[cfg(test)]
mod probe_tests;
pub mod tls;
pub mod tracker;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};

use crate::model::{Command, Health, HealthReport, Role};
use crate::node::Shared;
use crate::vip::sockets::{self, SockDiag, StateFlags, TcpSocket};
use probe::Probe;
use tracker::{Outcome, Tracker};
use view::LocalCheck;

/// Pause between reconciliations when nothing changed, and after a failed proposal.
const REPORT_RETRY: Duration = Duration::from_millis(300);
/// How often the listener watch reads the kernel's listening sockets.
pub const LISTEN_WATCH_EVERY: Duration = Duration::from_millis(100);

/// Run this node's checks and report their transitions until `stop`. Does nothing on a witness
/// or without checks.
pub async fn run(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if s.config.node.role != Role::Mail || s.config.checks.is_empty() {
        // Nothing to probe: idle until the daemon stops (it supervises this task).
        let _ = stop.wait_for(|s| *s).await;
        return;
    }
    let now = crate::clock::unix_ms();
    {
        let mut view = s.probes.lock();
        for name in s.config.checks.keys() {
            view.insert(
                name.clone(),
                LocalCheck {
                    health: Health::Pending,
                    since_ms: now,
                    reason: "probes starting".into(),
                    decided_latency_ms: None,
                    last_result: String::new(),
                    last_reason: String::new(),
                    last_latency_ms: None,
                    last_at_ms: None,
                },
            );
        }
    }
    let mut tasks = Vec::new();
    let mut watched = Vec::new();
    for (name, c) in &s.config.checks {
        let probe = Probe::new(c);
        if let Err(e) = &probe {
            warn!(check = %name, error = %e, "check cannot run; it stays critical");
        }
        let wake = Arc::new(Notify::new());
        if let Some(port) = c.effective_port().filter(|_| c.watch_listener) {
            watched.push((name.clone(), SocketAddr::new(c.host, port), wake.clone()));
        }
        tasks.push(tokio::spawn(check_loop(
            s.clone(),
            name.clone(),
            probe,
            Tracker::new(c.rise, c.fall),
            Pace {
                interval: c.interval.into(),
                fast: c.fast_interval.into(),
                wake,
            },
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(watch_listeners(watched, stop.clone())));
    // A check loop or the listener watch that ends before the daemon stops (a panic) ends the
    // whole health task, so the daemon notices instead of reporting that check's last state for
    // ever.
    let mut checks = futures_util::future::select_all(tasks.iter_mut());
    tokio::select! {
        () = report_loop(&s, &mut stop) => {}
        (ended, _, _) = &mut checks => {
            // The other check loops end by themselves on the stop signal.
            if !*stop.borrow() {
                let how = match ended {
                    Ok(()) => "returned".to_string(),
                    Err(e) => e.to_string(),
                };
                error!(
                    how = %how,
                    "a check loop or the listener watch ended on its own; stopping the health task"
                );
            }
            return;
        }
    }
    drop(checks);
    for t in tasks {
        let _ = t.await;
    }
}

/// When a check probes: every `interval`, every `fast` while changing state, and at once when
/// `wake` is notified (the listener watch saw its port close or open).
struct Pace {
    interval: Duration,
    fast: Duration,
    wake: Arc<Notify>,
}

async fn check_loop(
    s: Arc<Shared>,
    name: String,
    probe: Result<Probe, String>,
    mut tracker: Tracker,
    pace: Pace,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = pace.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Counted from the start of this probe, so a slow probe does not slow the pace.
        let started = tokio::time::Instant::now();
        let drilled = s.replica.borrow().state.service_drilled(&s.me, &name);
        let result = match &probe {
            // A service drill: the probe's verdict is replaced, the rest is the real path.
            _ if drilled => probe::ProbeResult {
                outcome: Outcome::Critical("failover drill: playing a failed service".into()),
                latency: Duration::ZERO,
            },
            Ok(p) => tokio::select! {
                r = p.run() => r,
                _ = stop.wait_for(|s| *s) => return,
            },
            Err(e) => probe::ProbeResult {
                outcome: Outcome::Critical(e.clone()),
                latency: Duration::ZERO,
            },
        };
        let now = crate::clock::unix_ms();
        let latency_ms = result.latency.as_millis() as u64;
        let transition = tracker.observe(&result.outcome);
        next = started + tracker.next_probe(pace.interval, pace.fast);
        let mut view = s.probes.lock();
        let Some(entry) = view.get_mut(&name) else {
            return;
        };
        let label = match result.outcome {
            Outcome::Ok => "ok",
            Outcome::Warning(_) => "warning",
            Outcome::Critical(_) | Outcome::Refused(_) => "critical",
        };
        s.metrics.probe(&name, result.latency, label);
        entry.last_result = label.to_string();
        entry.last_reason = result.outcome.reason().to_string();
        entry.last_latency_ms = Some(latency_ms);
        entry.last_at_ms = Some(now);
        if let Some(health) = transition {
            let reason = result.outcome.reason();
            if matches!(health, Health::Critical | Health::Warning) {
                warn!(check = %name, %health, reason, latency_ms, "service health changed");
            } else {
                info!(check = %name, %health, reason, latency_ms, "service health changed");
            }
            entry.health = health;
            entry.since_ms = now;
            entry.reason = result.outcome.reason().to_string();
            entry.decided_latency_ms = Some(latency_ms);
            drop(view);
            s.probes.changed.notify_one();
        }
    }
}

/// Which watched ports listen, as last seen; says which changed.
#[derive(Debug, Default)]
struct Listeners {
    seen: Vec<Option<bool>>,
}

impl Listeners {
    /// Compare each target with `sockets`; the indexes of targets that started or stopped
    /// listening since the last reading, with whether they listen now (nothing on the first
    /// reading).
    fn changed(&mut self, targets: &[SocketAddr], sockets: &[TcpSocket]) -> Vec<(usize, bool)> {
        self.seen.resize(targets.len(), None);
        let mut out = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let now = sockets::listening(sockets, *target);
            if self.seen[i].is_some_and(|was| was != now) {
                out.push((i, now));
            }
            self.seen[i] = Some(now);
        }
        out
    }
}

/// Read the listening sockets every [`LISTEN_WATCH_EVERY`] and wake a check whose port stopped
/// or started listening. A failed reading is logged (once per run of failures) and retried
/// with a fresh netlink socket; meanwhile the checks keep their own pace.
async fn watch_listeners(
    watched: Vec<(String, SocketAddr, Arc<Notify>)>,
    mut stop: watch::Receiver<bool>,
) {
    if watched.is_empty() {
        let _ = stop.wait_for(|s| *s).await;
        return;
    }
    let targets: Vec<SocketAddr> = watched.iter().map(|(_, a, _)| *a).collect();
    let mut listeners = Listeners::default();
    let mut diag: Option<SockDiag> = None;
    let mut failing = false;
    let mut ticks = tokio::time::interval(LISTEN_WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let reading = match diag.as_mut() {
            Some(d) => d.tcp(StateFlags::LISTEN).await,
            None => match SockDiag::open() {
                Ok(d) => diag.insert(d).tcp(StateFlags::LISTEN).await,
                Err(e) => Err(e),
            },
        };
        match reading {
            Ok(socks) => {
                if failing {
                    info!("listener watch reads the kernel's sockets again");
                    failing = false;
                }
                for (i, listening) in listeners.changed(&targets, &socks) {
                    let (name, addr, wake) = &watched[i];
                    info!(check = %name, %addr, listening, "checked port changed; probing now");
                    wake.notify_one();
                }
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "listener watch cannot read the kernel's sockets; \
                        checks keep their interval");
                    failing = true;
                }
                diag = None;
            }
        }
    }
}

/// Keep the replicated health of this node equal to what its trackers decided.
async fn report_loop(s: &Shared, stop: &mut watch::Receiver<bool>) {
    let checks: Vec<String> = s.config.checks.keys().cloned().collect();
    let mut reset_done = false;
    let mut replica = s.replica.clone();
    loop {
        s.loops.beat(crate::systemd::loops::HEALTH);
        let ok = reconcile(s, &checks, &mut reset_done).await;
        tokio::select! {
            _ = s.probes.changed.notified() => {}
            _ = replica.changed() => {}
            _ = tokio::time::sleep(if ok { REPORT_RETRY * 3 } else { REPORT_RETRY }) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One reconciliation pass; false if a proposal failed.
async fn reconcile(s: &Shared, checks: &[String], reset_done: &mut bool) -> bool {
    if !*reset_done {
        let cmd = Command::HealthReset {
            node: s.me.clone(),
            checks: checks.to_vec(),
            at_ms: crate::clock::unix_ms(),
        };
        match crate::raft::propose::propose(s, cmd).await {
            Ok(a) if a.refused.is_none() => *reset_done = true,
            Ok(a) => {
                debug!(reason = ?a.refused, "health reset refused; retrying");
                return false;
            }
            Err(e) => {
                debug!(error = %e, "health reset not committed; retrying");
                return false;
            }
        }
    }
    let decided = s.probes.snapshot();
    let replicated = s.replica.borrow().state.health.get(&s.me).cloned();
    for (check, local) in decided {
        let current = replicated.as_ref().and_then(|m| m.get(&check));
        if current.is_some_and(|c| c.health == local.health) {
            continue;
        }
        if local.health == Health::Pending {
            // The reset already says so.
            continue;
        }
        let cmd = Command::Health(HealthReport {
            node: s.me.clone(),
            check: check.clone(),
            health: local.health,
            reason: local.reason.clone(),
            latency_ms: local.decided_latency_ms,
            at_ms: local.since_ms,
        });
        match crate::raft::propose::propose(s, cmd).await {
            Ok(a) if a.refused.is_none() => {}
            Ok(a) => {
                debug!(check = %check, reason = ?a.refused, "health report refused; retrying");
                return false;
            }
            Err(e) => {
                debug!(check = %check, error = %e, "health report not committed; retrying");
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: &str) -> TcpSocket {
        TcpSocket {
            local: addr.parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: sockets::TCP_LISTEN,
        }
    }

    #[test]
    fn the_watch_wakes_a_check_when_its_port_stops_or_starts_listening() {
        let targets: Vec<SocketAddr> = vec![
            "127.0.0.1:143".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        ];
        let both = [listener("0.0.0.0:143"), listener("127.0.0.1:25")];
        let mut l = Listeners::default();
        assert!(
            l.changed(&targets, &both).is_empty(),
            "the first reading wakes nothing"
        );
        assert!(l.changed(&targets, &both).is_empty());
        assert_eq!(
            l.changed(&targets, &both[1..]),
            [(0, false)],
            "imap stopped"
        );
        assert!(l.changed(&targets, &both[1..]).is_empty(), "still stopped");
        assert_eq!(l.changed(&targets, &[]), [(1, false)], "smtp stopped");
        assert_eq!(
            l.changed(&targets, &both),
            [(0, true), (1, true)],
            "both back"
        );
    }
}
