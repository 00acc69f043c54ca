//! The fence gate: which silent nodes' addresses may move now, and which nodes must be fenced
//! first.
//!
//! The leader's placement planner moves the addresses of nodes whose lease surely ended. For a
//! node with a fence agent, "lease ended" is not enough: its host may still answer (a hung
//! kernel, a paused VM). The gate holds such a node back until a fence of it succeeded *after*
//! the leader's last grant to it, starts that fence (once at a time), and after a failure
//! waits an exponentially growing delay before the next attempt. A failed fence keeps the node
//! held back: its addresses stay unserved rather than risk two holders.
//!
//! Pure: the caller passes instants, what each node needs and its last grant; the gate keeps
//! only per-term memory, forgotten when leadership changes (a new leader fences again; powering
//! off an already-off node is harmless).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Delay before retrying a failed fence: `first`, doubling per consecutive failure, at most
/// `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub first: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (at least 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// One node's fencing as this leader knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NodeFence {
    /// A fence is under way.
    running: bool,
    /// The last fence that succeeded (and was recorded) in this term.
    fenced_at: Option<Instant>,
    /// Consecutive failures since the last success or recovery.
    failures: u32,
    /// No new attempt before this.
    retry_at: Option<Instant>,
}

/// What the gate decided for one planning round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateDecision {
    /// The expired nodes whose addresses may move now.
    pub expired: BTreeSet<String>,
    /// Fences to start now (each is now counted as running).
    pub start: Vec<String>,
    /// Expired nodes held back because no fence of them succeeded since their last grant.
    pub blocked: Vec<String>,
}

/// The leader's fencing memory for one term.
#[derive(Clone, Debug, Default)]
pub struct FenceGate {
    term: Option<u64>,
    nodes: BTreeMap<String, NodeFence>,
}

impl FenceGate {
    /// Start over when the term changes (a new leader knows nothing of its predecessor's fences).
    pub fn reset_for(&mut self, term: u64) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.nodes.clear();
        }
    }

    /// The term this memory belongs to.
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Split `expired` into nodes whose addresses may move and nodes that wait for a fence.
    ///
    /// `needs_fence(node)`: the node has a fence agent and something to take from it (it owns
    /// addresses). `last_grant(node)`: this leader's last lease grant to it (`None`: none in
    /// this term). A node passes once a fence succeeded after its last grant.
    pub fn decide(
        &mut self,
        expired: &BTreeSet<String>,
        needs_fence: impl Fn(&str) -> bool,
        last_grant: impl Fn(&str) -> Option<Instant>,
        now: Instant,
    ) -> GateDecision {
        let mut out = GateDecision::default();
        for node in expired {
            if !needs_fence(node) {
                out.expired.insert(node.clone());
                continue;
            }
            let entry = self.nodes.entry(node.clone()).or_default();
            let fenced_since_grant = match (entry.fenced_at, last_grant(node)) {
                (Some(fenced), Some(grant)) => fenced > grant,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if fenced_since_grant {
                out.expired.insert(node.clone());
                continue;
            }
            out.blocked.push(node.clone());
            if !entry.running && entry.retry_at.is_none_or(|r| now >= r) {
                entry.running = true;
                out.start.push(node.clone());
            }
        }
        out
    }

    /// Start a fence outside the planning round (an operator's request). `false` when one of
    /// this node is already under way.
    pub fn begin(&mut self, node: &str) -> bool {
        let entry = self.nodes.entry(node.to_string()).or_default();
        if entry.running {
            return false;
        }
        entry.running = true;
        true
    }

    /// A fence of `node` succeeded and was recorded; `at` is when the agent confirmed it.
    pub fn succeeded(&mut self, node: &str, at: Instant) {
        let entry = self.nodes.entry(node.to_string()).or_default();
        entry.running = false;
        entry.fenced_at = Some(at);
        entry.failures = 0;
        entry.retry_at = None;
    }

    /// A fence of `node` failed at `now`; returns how long until the next attempt.
    pub fn failed(&mut self, node: &str, now: Instant, backoff: &Backoff) -> Duration {
        let entry = self.nodes.entry(node.to_string()).or_default();
        entry.running = false;
        entry.failures = entry.failures.saturating_add(1);
        let delay = backoff.delay(entry.failures);
        entry.retry_at = Some(now + delay);
        delay
    }

    /// Consecutive failed attempts of `node` so far.
    pub fn failures(&self, node: &str) -> u32 {
        self.nodes.get(node).map_or(0, |n| n.failures)
    }

    /// Whether a fence of `node` is under way.
    pub fn running(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.running)
    }

    /// `node` holds a lease again: forget its failures (a later silence starts afresh).
    pub fn recovered(&mut self, node: &str) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.failures = 0;
            entry.retry_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nodes_without_a_fence_agent_pass_at_once() {
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let d = gate.decide(&set(&["mx1", "mx2"]), |_| false, |_| None, Instant::now());
        assert_eq!(d.expired, set(&["mx1", "mx2"]));
        assert!(d.start.is_empty() && d.blocked.is_empty());
    }

    #[test]
    fn a_node_needing_a_fence_is_held_back_and_fenced_once_at_a_time() {
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let t0 = Instant::now();
        let needs = |n: &str| n == "mx2";
        let d = gate.decide(&set(&["mx1", "mx2"]), needs, |_| Some(t0), t0);
        assert_eq!(d.expired, set(&["mx1"]));
        assert_eq!(d.start, vec!["mx2".to_string()]);
        assert_eq!(d.blocked, vec!["mx2".to_string()]);
        // The next round, while the fence runs: still held back, nothing new started.
        let d = gate.decide(&set(&["mx2"]), needs, |_| Some(t0), t0 + ms(50));
        assert!(d.expired.is_empty() && d.start.is_empty());
        assert!(gate.running("mx2"));
    }

    #[test]
    fn a_fence_after_the_last_grant_releases_the_node() {
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let grant = Instant::now();
        let all = set(&["mx2"]);
        gate.decide(&all, |_| true, |_| Some(grant), grant + ms(900));
        gate.succeeded("mx2", grant + ms(1500));
        let d = gate.decide(&all, |_| true, |_| Some(grant), grant + ms(1600));
        assert_eq!(d.expired, all);
        assert!(d.blocked.is_empty() && d.start.is_empty());
    }

    #[test]
    fn a_fence_before_a_later_grant_does_not_count() {
        // mx2 was fenced, came back, renewed, and went silent again: fence it again.
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let t0 = Instant::now();
        gate.decide(&set(&["mx2"]), |_| true, |_| Some(t0), t0 + ms(900));
        gate.succeeded("mx2", t0 + ms(1000));
        let later_grant = t0 + ms(60_000);
        let d = gate.decide(
            &set(&["mx2"]),
            |_| true,
            |_| Some(later_grant),
            later_grant + ms(900),
        );
        assert!(d.expired.is_empty());
        assert_eq!(d.start, vec!["mx2".to_string()]);
    }

    #[test]
    fn a_node_never_granted_this_term_passes_after_any_fence_this_term() {
        let mut gate = FenceGate::default();
        gate.reset_for(3);
        let t0 = Instant::now();
        let d = gate.decide(&set(&["mx2"]), |_| true, |_| None, t0);
        assert_eq!(d.start, vec!["mx2".to_string()]);
        gate.succeeded("mx2", t0 + ms(10));
        let d = gate.decide(&set(&["mx2"]), |_| true, |_| None, t0 + ms(20));
        assert_eq!(d.expired, set(&["mx2"]));
    }

    #[test]
    fn a_failed_fence_blocks_and_is_retried_after_a_growing_delay() {
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let backoff = Backoff {
            first: ms(1000),
            max: ms(3000),
        };
        let t0 = Instant::now();
        let all = set(&["mx2"]);
        let decide = |gate: &mut FenceGate, at| gate.decide(&all, |_| true, |_| Some(t0), at);
        assert_eq!(decide(&mut gate, t0).start.len(), 1);
        assert_eq!(gate.failed("mx2", t0 + ms(100), &backoff), ms(1000));
        let d = decide(&mut gate, t0 + ms(500));
        assert!(d.start.is_empty() && d.expired.is_empty(), "{d:?}");
        assert_eq!(d.blocked, vec!["mx2".to_string()]);
        assert_eq!(decide(&mut gate, t0 + ms(1100)).start.len(), 1);
        assert_eq!(gate.failed("mx2", t0 + ms(1200), &backoff), ms(2000));
        assert_eq!(gate.failed("mx2", t0 + ms(3300), &backoff), ms(3000));
        assert_eq!(gate.failures("mx2"), 3);
        gate.recovered("mx2");
        assert_eq!(gate.failures("mx2"), 0);
        assert_eq!(decide(&mut gate, t0 + ms(3400)).start.len(), 1);
    }

    #[test]
    fn a_new_term_forgets_fences_and_failures() {
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let t0 = Instant::now();
        gate.decide(&set(&["mx2"]), |_| true, |_| None, t0);
        gate.succeeded("mx2", t0);
        gate.reset_for(1);
        assert_eq!(
            gate.decide(&set(&["mx2"]), |_| true, |_| None, t0).expired,
            set(&["mx2"])
        );
        gate.reset_for(2);
        let d = gate.decide(&set(&["mx2"]), |_| true, |_| None, t0);
        assert!(d.expired.is_empty());
        assert_eq!(gate.term(), Some(2));
    }

    #[test]
    fn operator_fences_do_not_overlap_automatic_ones() {
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        assert!(gate.begin("mx2"));
        assert!(!gate.begin("mx2"));
        let d = gate.decide(&set(&["mx2"]), |_| true, |_| None, Instant::now());
        assert!(d.start.is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), ms(1000));
        assert_eq!(b.delay(2), ms(2000));
        assert_eq!(b.delay(5), ms(16_000));
        assert_eq!(b.delay(6), ms(30_000));
        assert_eq!(b.delay(u32::MAX), ms(30_000));
    }
}
