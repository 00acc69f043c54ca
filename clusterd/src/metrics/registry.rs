//! The counters and histograms of `/metrics`, kept by the node handle and counted into by
//! every subsystem; [`super::render`] turns them and the node's state into the text format.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock;
use crate::model::MoveReason;

/// Upper bounds (seconds) of the probe latency histogram buckets.
pub const PROBE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters and histograms recorded by the daemon's parts, read at scrape time.
#[derive(Debug, Default)]
pub struct Registry {
    /// The DNS server's query counters (the server counts, `render` reads).
    pub dns: clusterd_dns::QueryStats,
    /// The API listener's connection counters (the server counts, `render` reads).
    pub http: Arc<crate::http_server::Stats>,
    /// The plain metrics listener's.
    pub metrics_http: Arc<crate::http_server::Stats>,
    pub(super) announcements: Mutex<BTreeMap<(String, &'static str), u64>>,
    pub(super) failovers: Mutex<BTreeMap<String, u64>>,
    pub(super) fences: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) probes: Mutex<BTreeMap<String, ProbeStats>>,
    /// Addresses configured on this node, with the epoch they were added at.
    pub(super) held: Mutex<BTreeMap<String, u64>>,
}

impl Registry {
    /// One gratuitous ARP / neighbour advertisement round for `address`, sent or failed.
    pub fn announced(&self, address: &str, sent: bool) {
        let result = if sent { "sent" } else { "failed" };
        *lock(&self.announcements)
            .entry((address.to_string(), result))
            .or_default() += 1;
    }

    /// An applied ownership change of an address that had an owner.
    pub fn failover(&self, reason: MoveReason) {
        *lock(&self.failovers).entry(token(&reason)).or_default() += 1;
    }

    /// An applied fence result: "fenced" or "failed".
    pub fn fence_result(&self, result: &'static str) {
        *lock(&self.fences).entry(result).or_default() += 1;
    }

    /// One probe of `check` that took `latency` and came to `result` ("ok", "warning",
    /// "critical").
    pub fn probe(&self, check: &str, latency: Duration, result: &'static str) {
        let mut probes = lock(&self.probes);
        let p = probes.entry(check.to_string()).or_default();
        p.latency.observe(latency.as_secs_f64());
        *p.results.entry(result).or_default() += 1;
    }

    /// This node configured `address` at `epoch`.
    pub fn held(&self, address: &str, epoch: u64) {
        lock(&self.held).insert(address.to_string(), epoch);
    }

    /// This node removed `address`; returns the epoch it was held at, if known.
    pub fn released(&self, address: &str) -> Option<u64> {
        lock(&self.held).remove(address)
    }
}

/// The serde name of a model enum value (`lease_expired`, `critical`, `drained`).
pub fn token<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[derive(Debug, Default)]
pub(super) struct ProbeStats {
    pub(super) latency: Histogram,
    pub(super) results: BTreeMap<&'static str, u64>,
}

/// A histogram over [`PROBE_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is above every bound.
    pub(super) counts: [u64; PROBE_BUCKETS.len() + 1],
    pub(super) sum: f64,
}

impl Histogram {
    /// Record one observation (seconds).
    pub fn observe(&mut self, value: f64) {
        let slot = PROBE_BUCKETS
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(PROBE_BUCKETS.len());
        self.counts[slot] += 1;
        self.sum += value;
    }
}
