//! This node's hook queue, kept by the node handle: transitions are queued ([`Hooks::emit`],
//! bounded, never blocking) and run in order by [`super::run`], each script under its
//! timeout in its own process group ([`run_script`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::event::HookEvent;
use crate::config::{HookEventKind, HooksConfig};
use crate::health::probe::GroupKill;
use crate::lock;
use crate::metrics::text::Text;

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
pub(super) struct Queued {
    pub(super) id: u64,
    pub(super) event: HookEvent,
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
    pub(super) dropped: AtomicU64,
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

    pub(super) fn next(&self) -> Option<Queued> {
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

    /// Run the queued hooks in order until `stop`; then deliver what is still queued for at most
    /// one `hooks.timeout` (so the addresses released at shutdown still reach the scripts).
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let hooks = self;
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
