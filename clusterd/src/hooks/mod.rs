//! Transition hooks: the operator's programs run when something changes, with the facts in
//! `CLUSTERD_*` environment variables.
//!
//! Transitions come from three places: the address runtime (this node acquired or released an
//! address), the applied history ([`observe`]: owner changes, service health, fencing, leader
//! and membership changes) and, on the leader, its contact with every member (node down/up,
//! watched by [`crate::placement`]).
//! [`event`] decides which node runs which transition, so each runs on one node only.
//!
//! [`Hooks::emit`] never blocks and never fails: it appends to a bounded queue (dropping the
//! oldest when full, with a log line and a counter). One task ([`run`]) takes transitions in
//! order and runs every script for each, one at a time, without a shell, each under
//! `hooks.timeout`, after which the script's whole process group is killed. Failures are logged
//! (exit status and the first line of stderr) and counted; nothing waits for a hook.

pub mod event;
pub mod queue;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use crate::model::EventKind;
use crate::node::Shared;
pub use event::{Contact, HookEvent, NodeWatch, Runs};

/// How often the observer wakes when the history does not change (it beats its liveness).
const OBSERVE_TICK: Duration = Duration::from_millis(200);
/// Run the queued hooks in order until `stop` ([`queue::Hooks::run`]).
pub async fn run(s: Arc<Shared>, stop: watch::Receiver<bool>) {
    s.hooks.run(stop).await;
}

/// This node configured `address`: record it and run `address_acquired`.
pub fn address_acquired(s: &Shared, address: &str, interface: &str, epoch: u64) {
    s.metrics.held(address, epoch);
    // Why this node became the owner: the history's latest owner change for this epoch.
    let reason = s
        .replica
        .borrow()
        .state
        .events
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::OwnerChanged {
                ip,
                to,
                epoch: ep,
                reason,
                ..
            } if ip == address && *to == s.me && *ep == epoch => {
                Some(crate::metrics::registry::token(reason))
            }
            _ => None,
        })
        .unwrap_or_default();
    s.hooks.emit(HookEvent::address(
        true,
        &s.me,
        address,
        interface,
        Some(epoch),
        &reason,
        crate::clock::unix_ms(),
    ));
}

/// This node removed `address` because of `reason`: record it and run `address_released`.
pub fn address_released(s: &Shared, address: &str, interface: &str, reason: &str) {
    let epoch = s.metrics.released(address);
    s.hooks.emit(HookEvent::address(
        false,
        &s.me,
        address,
        interface,
        epoch,
        reason,
        crate::clock::unix_ms(),
    ));
}

/// Follow the applied history (hooks this node runs, failover and fence counters) until `stop`.
/// Node down / node up come from the leader's member watch ([`crate::placement`]).
pub async fn observe(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut replica_rx = s.replica.clone();
    // Transitions already in the history at start-up were dealt with before.
    let mut last_seq = replica_rx.borrow_and_update().state.next_event_seq - 1;
    loop {
        s.loops.beat(crate::systemd::loops::HOOKS);
        let replica = replica_rx.borrow_and_update().clone();
        let metrics = s.raft.metrics().borrow().clone();
        let leading = s.leads(&metrics);
        let events = &replica.state.events;
        if let Some(first) = events.iter().find(|e| e.seq > last_seq)
            && first.seq > last_seq + 1
        {
            info!(
                missed = first.seq - last_seq - 1,
                "history moved on by more than it keeps (or a snapshot was installed): \
                 some transitions were not seen by hooks or counters"
            );
        }
        let seen = last_seq;
        for e in events.iter().filter(|e| e.seq > seen) {
            last_seq = e.seq;
            match &e.kind {
                EventKind::OwnerChanged {
                    from: Some(_),
                    reason,
                    ..
                } => s.metrics.failover(*reason),
                EventKind::Fenced { .. } => s.metrics.fence_result("fenced"),
                EventKind::FenceFailed { .. } => s.metrics.fence_result("failed"),
                _ => {}
            }
            if let Some((event, runs)) = HookEvent::from_history(e) {
                let mine = match runs {
                    Runs::On(node) => node == s.me,
                    Runs::Leader => leading,
                };
                if mine {
                    s.hooks.emit(event);
                }
            }
        }

        tokio::select! {
            _ = replica_rx.changed() => {}
            _ = tokio::time::sleep(OBSERVE_TICK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::Ordering;

    use super::queue::*;
    use super::*;
    use crate::config::{HookEventKind, HooksConfig};

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn env() -> Vec<(&'static str, String)> {
        HookEvent::node("mx2", false, "no answer", 5).environment("mx1", 1)
    }

    #[tokio::test]
    async fn a_script_sees_only_path_and_the_clusterd_variables() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let s = script(dir.path(), "dump", &format!("env > {}", out.display()));
        assert_eq!(
            run_script(&s, &env(), Duration::from_secs(5)).await,
            Outcome::Ok
        );
        let text = std::fs::read_to_string(out).unwrap();
        assert!(text.contains("CLUSTERD_EVENT=node_down\n"), "{text}");
        assert!(text.contains("CLUSTERD_NODE=mx2\n"), "{text}");
        assert!(text.contains("CLUSTERD_SELF=mx1\n"), "{text}");
        for line in text.lines() {
            let name = line.split('=').next().unwrap();
            assert!(
                name.starts_with("CLUSTERD_") || ["PATH", "PWD", "SHLVL", "_"].contains(&name),
                "unexpected variable {line}"
            );
        }
    }

    #[tokio::test]
    async fn a_failing_script_reports_its_exit_code_and_first_stderr_line() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(
            dir.path(),
            "fail",
            "echo 'pager down' >&2; echo more >&2; exit 3",
        );
        assert_eq!(
            run_script(&s, &env(), Duration::from_secs(5)).await,
            Outcome::Failed {
                status: "exit code 3".into(),
                stderr: "pager down".into()
            }
        );
    }

    #[tokio::test]
    async fn a_slow_script_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let s = script(
            dir.path(),
            "slow",
            &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
        );
        let started = crate::clock::now();
        assert_eq!(
            run_script(&s, &env(), Duration::from_millis(300)).await,
            Outcome::TimedOut
        );
        assert!(crate::clock::since(started) < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` was in the script's process group: it is gone too (a zombie
        // until reaped by init counts as gone: it no longer runs).
        let deadline = crate::clock::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim().chars().next();
            if stat.is_empty() || state == Some('Z') {
                break;
            }
            assert!(
                crate::clock::now() < deadline,
                "child {pid} still runs: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_script_is_an_error_not_a_panic() {
        let out = run_script(
            Path::new("/nonexistent/hook"),
            &env(),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(out, Outcome::Error(_)), "{out:?}");
    }

    fn hooks(queue: usize, events: Option<Vec<HookEventKind>>) -> Hooks {
        Hooks::new(
            "mx1",
            &HooksConfig {
                scripts: vec!["/bin/true".into()],
                queue,
                events,
                ..HooksConfig::default()
            },
        )
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let h = hooks(2, None);
        for node in ["a", "b", "c"] {
            h.emit(HookEvent::node(node, false, "x", 1));
        }
        assert_eq!(h.dropped.load(Ordering::Relaxed), 1);
        let left: Vec<(u64, String)> = std::iter::from_fn(|| h.next())
            .map(|q| (q.id, q.event.node))
            .collect();
        assert_eq!(left, vec![(2, "b".to_string()), (3, "c".to_string())]);
    }

    #[test]
    fn only_the_listed_events_are_queued() {
        let h = hooks(10, Some(vec![HookEventKind::NodeUp]));
        h.emit(HookEvent::node("a", false, "x", 1));
        h.emit(HookEvent::node("a", true, "x", 2));
        let kinds: Vec<HookEventKind> = std::iter::from_fn(|| h.next())
            .map(|q| q.event.kind)
            .collect();
        assert_eq!(kinds, vec![HookEventKind::NodeUp]);
    }

    #[test]
    fn without_scripts_nothing_is_queued() {
        let h = Hooks::new("mx1", &HooksConfig::default());
        h.emit(HookEvent::node("a", false, "x", 1));
        assert!(h.next().is_none());
    }
}
