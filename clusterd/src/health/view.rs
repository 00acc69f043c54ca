//! This node's own view of its checks, kept by the node handle: written by the check loops
//! ([`super::run`]), read by the reporter, `GET /v1/health` and `status`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::model::Health;

/// This node's latest probe results, by check name.
#[derive(Debug, Default)]
pub struct LocalView {
    checks: Mutex<BTreeMap<String, LocalCheck>>,
    /// Woken when a check's decided state changed.
    pub(super) changed: Notify,
}

/// The local view of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalCheck {
    /// State decided by rise/fall.
    pub health: Health,
    /// When that state was decided (unix ms).
    pub since_ms: u64,
    /// Reason given with the decision.
    pub reason: String,
    /// Latency of the probe that decided it (ms).
    pub decided_latency_ms: Option<u64>,
    /// Result of the last probe: "ok", "warning" or "critical"; empty before the first.
    pub last_result: String,
    /// Reason of the last probe.
    pub last_reason: String,
    /// Latency of the last probe (ms).
    pub last_latency_ms: Option<u64>,
    /// When the last probe finished (unix ms).
    pub last_at_ms: Option<u64>,
}

impl LocalView {
    /// A copy of every check's local view.
    pub fn snapshot(&self) -> BTreeMap<String, LocalCheck> {
        self.lock().clone()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LocalCheck>> {
        crate::lock(&self.checks)
    }
}
