//! Transition hooks: the operator's programs run when something changes, with the facts in
//! `CLUSTERD_*` environment variables.
//!
//! Transitions come from three places: the address runtime (this node acquired or released an
//! address), the applied history ([`observe`]: owner changes, service health, fencing, leader
//! and membership changes) and, on the leader, its contact with every member (node down/up).
//! [`event`] decides which node runs which transition, so each runs on one node only.
//!
//! [`Hooks::emit`] never blocks and never fails: it appends to a bounded queue (dropping the
//! oldest when full, with a log line and a counter). One task ([`run`]) takes transitions in
//! order and runs every script for each, one at a time, without a shell, each under
//! `hooks.timeout`, after which the script's whole process group is killed. Failures are logged
//! (exit status and the first line of stderr) and counted; nothing waits for a hook.

pub mod event;

use crate::lock;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::auth;
use crate::config::{HookEventKind, HooksConfig};
use crate::daemon::Shared;
use crate::health::probe::GroupKill;
use crate::metrics::Text;
use crate::model::EventKind;
pub use event::{Contact, HookEvent, NodeWatch, Runs};

/// How often the observer looks at the leader's contact with members when nothing changed.
const OBSERVE_TICK: Duration = Duration::from_millis(200);
/// How long stderr is still read after a script exited (a background child may keep it open).
const STDERR_GRACE: Duration = Duration::from_millis(200);
/// Bytes of stderr kept from one run.
const STDERR_KEEP: usize = 4096;

/// How one run of one script ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Ok,
    /// Another exit code or a signal, with the first line of stderr.
    Failed {
        /// "exit code 3" or "signal 9".
        status: String,
        /// First line of its standard error (may be empty).
        stderr: String,
    },
    /// Still running at the timeout; its process group was killed.
    TimedOut,
    /// It could not be started.
    Error(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed { .. } => "failed",
            Outcome::TimedOut => "timeout",
            Outcome::Error(_) => "error",
        }
    }
}

/// A transition waiting to run, with its delivery number.
#[derive(Debug)]
struct Queued {
    id: u64,
    event: HookEvent,
}

/// This node's hook queue and its counters.
#[derive(Debug)]
pub struct Hooks {
    me: String,
    scripts: Vec<PathBuf>,
    timeout: Duration,
    capacity: usize,
    only: Option<BTreeSet<HookEventKind>>,
    queue: Mutex<VecDeque<Queued>>,
    wake: Notify,
    next_id: AtomicU64,
    runs: Mutex<BTreeMap<&'static str, u64>>,
    dropped: AtomicU64,
}

impl Hooks {
    /// The hooks of node `me` as configured.
    pub fn new(me: &str, config: &HooksConfig) -> Self {
        Hooks {
            me: me.to_string(),
            scripts: config.scripts.clone(),
            timeout: config.timeout.get(),
            capacity: config.queue.max(1),
            only: config.events.as_ref().map(|e| e.iter().copied().collect()),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            next_id: AtomicU64::new(1),
            runs: Mutex::new(BTreeMap::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether hooks run for `kind` on this node.
    pub fn wants(&self, kind: HookEventKind) -> bool {
        !self.scripts.is_empty() && self.only.as_ref().is_none_or(|o| o.contains(&kind))
    }

    /// Queue `event` for the scripts. Never blocks: when the queue is full the oldest waiting
    /// transition is dropped.
    pub fn emit(&self, event: HookEvent) {
        if !self.wants(event.kind) {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = {
            let mut q = lock(&self.queue);
            q.push_back(Queued { id, event });
            if q.len() > self.capacity {
                q.pop_front()
            } else {
                None
            }
        };
        if let Some(old) = dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(
                hook_id = old.id,
                event = %old.event.kind,
                message = %old.event.message,
                queue = self.capacity,
                "hook queue full: dropped the oldest transition without running its hooks"
            );
        }
        self.wake.notify_one();
    }

    fn next(&self) -> Option<Queued> {
        lock(&self.queue).pop_front()
    }

    fn count(&self, outcome: &Outcome) {
        *lock(&self.runs).entry(outcome.label()).or_default() += 1;
    }

    /// Write the hook metric families.
    pub fn render_metrics(&self, t: &mut Text) {
        t.labelled(
            "clusterd_hook_runs_total",
            "counter",
            "Hook script runs on this node, by result (ok, failed, timeout, error).",
            "result",
            lock(&self.runs).clone(),
        );
        t.family(
            "clusterd_hook_events_dropped_total",
            "counter",
            "Transitions dropped unrun because the hook queue was full.",
        );
        t.sample(
            "clusterd_hook_events_dropped_total",
            &[],
            self.dropped.load(Ordering::Relaxed),
        );
        t.family(
            "clusterd_hook_queue_length",
            "gauge",
            "Transitions waiting for their hooks.",
        );
        t.sample("clusterd_hook_queue_length", &[], lock(&self.queue).len());
    }

    async fn deliver(&self, q: Queued, deadline: Option<Instant>) {
        let env = q.event.environment(&self.me, q.id);
        for script in &self.scripts {
            let timeout = match deadline {
                Some(d) => self
                    .timeout
                    .min(d.saturating_duration_since(crate::clock::now())),
                None => self.timeout,
            };
            let started = crate::clock::now();
            let outcome = run_script(script, &env, timeout).await;
            self.count(&outcome);
            let took_ms = crate::clock::since(started).as_millis() as u64;
            let script = script.display();
            let (id, event) = (q.id, q.event.kind);
            match &outcome {
                Outcome::Ok => debug!(%script, hook_id = id, %event, took_ms, "hook ran"),
                Outcome::Failed { status, stderr } => warn!(
                    %script, hook_id = id, %event, %status, stderr = %stderr, took_ms,
                    "hook failed: {script} exited with {status}"
                ),
                Outcome::TimedOut => warn!(
                    %script, hook_id = id, %event, timeout_ms = timeout.as_millis() as u64,
                    "hook timed out: killed {script} and its process group"
                ),
                Outcome::Error(e) => warn!(
                    %script, hook_id = id, %event, error = %e,
                    "hook could not run: {script}: {e}"
                ),
            }
        }
    }
}

/// Run one script with `env` (and PATH) under `timeout`; kill its process group at the timeout.
pub async fn run_script(
    script: &Path,
    env: &[(&'static str, String)],
    timeout: Duration,
) -> Outcome {
    // PATH given to scripts when the daemon has none: the same as fence agents get.
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| clusterd_fencing::exec::DEFAULT_PATH.into());
    let spawned = tokio::process::Command::new(script)
        .env_clear()
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let mut group = GroupKill(child.id());
    let stderr = child.stderr.take();
    let reader = tokio::spawn(async move {
        let mut kept = Vec::new();
        if let Some(pipe) = stderr {
            let _ = pipe.take(STDERR_KEEP as u64).read_to_end(&mut kept).await;
        }
        kept
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Outcome::Error(e.to_string()),
        Err(_) => {
            drop(group); // SIGKILL to the whole group
            let _ = child.wait().await;
            reader.abort();
            return Outcome::TimedOut;
        }
    };
    // Reaped: its process group id may be reused from now on; children it left behind keep
    // running.
    group.0 = None;
    if status.success() {
        reader.abort();
        return Outcome::Ok;
    }
    let stderr = match tokio::time::timeout(STDERR_GRACE, reader).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes)
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_string(),
        _ => String::new(),
    };
    use std::os::unix::process::ExitStatusExt;
    let status = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "an unknown status".into(),
    };
    Outcome::Failed { status, stderr }
}

/// Run the queued hooks in order until `stop`; then deliver what is still queued for at most
/// one `hooks.timeout` (so the addresses released at shutdown still reach the scripts).
pub async fn run(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let hooks = &s.hooks;
    if hooks.scripts.is_empty() {
        return;
    }
    for script in &hooks.scripts {
        if let Err(e) = std::fs::metadata(script) {
            warn!(script = %script.display(), error = %e, "hook script not found; its runs will fail");
        }
    }
    info!(scripts = hooks.scripts.len(), "hooks ready");
    loop {
        if let Some(q) = hooks.next() {
            hooks.deliver(q, None).await;
            continue;
        }
        tokio::select! {
            _ = hooks.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let deadline = crate::clock::now() + hooks.timeout;
    while crate::clock::now() < deadline {
        let Some(q) = hooks.next() else { return };
        hooks.deliver(q, Some(deadline)).await;
    }
    let left = lock(&hooks.queue).len();
    if left > 0 {
        warn!(
            left,
            "shutting down with transitions whose hooks did not run"
        );
    }
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
                Some(crate::metrics::token(reason))
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
        auth::unix_ms(),
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
        auth::unix_ms(),
    ));
}

fn leads(s: &Shared, m: &crate::raft::Metrics) -> bool {
    m.state == ServerState::Leader && m.current_leader == Some(s.id)
}

/// Follow the applied history (hooks this node runs, failover and fence counters) and, while
/// this node leads with a quorum, its contact with every member (node_down / node_up), until
/// `stop`.
pub async fn observe(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut replica_rx = s.replica.clone();
    // Transitions already in the history at start-up were dealt with before.
    let mut last_seq = replica_rx.borrow_and_update().state.next_event_seq - 1;
    let mut watch = NodeWatch::default();
    let mut leader_since: Option<(u64, Instant)> = None;
    loop {
        s.loops.beat(crate::systemd::HOOKS);
        let replica = replica_rx.borrow_and_update().clone();
        let metrics = s.raft.metrics().borrow().clone();
        let leading = leads(&s, &metrics);
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

        if leading {
            let term = metrics.current_term;
            let since = match leader_since {
                Some((t, at)) if t == term => at,
                _ => {
                    let now = crate::clock::now();
                    leader_since = Some((term, now));
                    now
                }
            };
            // A leader cut off from the majority sees everyone silent: it reports nothing, and
            // the majority's new leader reports it down instead.
            let quorum = metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| Duration::from_millis(ms) < s.quorum_lost_after);
            if quorum {
                let contact = member_contact(&s, &replica.state);
                let now_ms = auth::unix_ms();
                for (node, up, reason) in watch.observe(
                    term,
                    crate::clock::since(since),
                    s.reachable_within,
                    &contact,
                ) {
                    if up {
                        info!(%node, %reason, "node up");
                    } else {
                        warn!(%node, %reason, "node down");
                    }
                    s.hooks.emit(HookEvent::node(&node, up, &reason, now_ms));
                }
            }
        } else {
            leader_since = None;
        }

        tokio::select! {
            _ = replica_rx.changed() => {}
            _ = tokio::time::sleep(OBSERVE_TICK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The leader's contact with every other member, from its own Raft RPCs to them.
fn member_contact(s: &Shared, state: &crate::model::State) -> BTreeMap<String, Contact> {
    let peers = lock(&s.peers).clone();
    state
        .members
        .iter()
        .filter(|(name, _)| **name != s.me)
        .map(|(name, _)| {
            let seen = peers.get(&crate::model::node_id(name));
            let last_ok = seen.and_then(|p| p.last_ok).map(crate::clock::since);
            let c = match last_ok {
                Some(age) if age < s.reachable_within => Contact::Recent,
                other => Contact::Silent(other),
            };
            (name.clone(), c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
