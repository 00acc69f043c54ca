//! Address leases at run time: the leader's grant table, the holder's renewal loop, and the
//! leader's placement loop that turns lease knowledge into [`model::plan`] input.
//!
//! The arithmetic (how long a lease lasts for its holder, when the leader may take it back) is
//! `clusterd_fencing::LeaseTimings`; this module only keeps the clocks. Grants live in the
//! leader's memory, not in Raft: a new leader starts with an empty table and waits its quiet
//! period before reassigning anything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clusterd_fencing::LeaseTimings;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::api::{self, admin_paths};
use crate::auth;
use crate::client::ApiClient;
use crate::daemon::Shared;
use crate::model::plan::{self, Liveness, Policy};
use crate::model::{Command, Role};

/// Body of `POST /v1/lease`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The node asking.
    pub node: String,
}

/// Answer to a lease request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Lease length granted, in ms, counted by the holder from when it sent the request.
    pub lease_ms: u64,
    /// The granting leader.
    pub leader: String,
    /// Its term.
    pub term: u64,
    /// The leader's last log index when it granted: the holder acts on ownership only from a
    /// replica that has applied at least this far, so a node that was frozen or cut off never
    /// re-takes an address from its stale view of who owns it.
    pub log_index: u64,
}

/// A lease as its holder keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    /// When the holder must have let go.
    pub deadline: Instant,
    /// The replica must have applied at least this log index before holding anything.
    pub min_applied: u64,
}

/// One node's grants as the leader sees them.
#[derive(Debug, Clone, Copy)]
struct Granted {
    last: Instant,
    /// Start of the current run of grants without a gap longer than a lease.
    since: Instant,
}

/// The leader's memory of grants, reset whenever leadership changes.
#[derive(Debug, Default)]
pub struct LeaseTable {
    term: Option<u64>,
    elected_at: Option<Instant>,
    grants: BTreeMap<String, Granted>,
}

impl LeaseTable {
    /// Start over for a new term (called when this node becomes leader).
    fn reset_for(&mut self, term: u64, now: Instant) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.elected_at = Some(now);
            self.grants.clear();
        }
    }

    fn grant(&mut self, node: &str, now: Instant, timings: &LeaseTimings) {
        let since = match self.grants.get(node) {
            Some(g) if now.duration_since(g.last) <= timings.lease => g.since,
            _ => now,
        };
        self.grants
            .insert(node.to_string(), Granted { last: now, since });
    }

    /// Whether this leader is still in its quiet period after election: it may not know who
    /// holds what yet, and not every live node has renewed with it yet.
    pub fn quiet(&self, now: Instant, timings: &LeaseTimings) -> bool {
        self.quiet_until(timings).is_none_or(|q| now < q)
    }

    /// When this leader's quiet period after election ends (`None` before an election).
    pub fn quiet_until(&self, timings: &LeaseTimings) -> Option<Instant> {
        self.elected_at.map(|e| timings.new_leader_quiet_until(e))
    }

    /// This leader's last grant to `node` in the current term.
    pub fn last_grant(&self, node: &str) -> Option<Instant> {
        self.grants.get(node).map(|g| g.last)
    }

    /// What the planner may assume about every node in `nodes`, at `now`.
    pub fn liveness<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a String>,
        now: Instant,
        timings: &LeaseTimings,
    ) -> Liveness {
        let mut live = Liveness::default();
        let Some(elected_at) = self.elected_at else {
            return live;
        };
        let quiet = now < timings.new_leader_quiet_until(elected_at);
        for node in nodes {
            match self.grants.get(node) {
                Some(g) if now.duration_since(g.last) < timings.lease => {
                    let held_ms = now.duration_since(g.since).as_millis() as u64;
                    live.current.insert(node.clone(), held_ms);
                }
                Some(g) if !quiet && now >= timings.reassign_after(g.last) => {
                    live.expired.insert(node.clone());
                }
                None if !quiet => {
                    live.expired.insert(node.clone());
                }
                _ => {}
            }
        }
        live
    }
}

/// Shared lease state of a node: the leader's table, and this node's own lease as a holder.
#[derive(Debug)]
pub struct Leases {
    /// Lease arithmetic from config.
    pub timings: LeaseTimings,
    /// The table, meaningful while this node leads.
    pub table: Mutex<LeaseTable>,
    /// This node's own lease (`None`: no lease).
    pub holder: watch::Sender<Option<HeldLease>>,
    /// While leading: when the last leadership check that a quorum confirmed *began*, and in
    /// which term ([`confirm_loop`]).
    pub confirmed: Mutex<Option<(Instant, u64)>>,
}

impl Leases {
    /// Leases with `timings`, nothing granted or held.
    pub fn new(timings: LeaseTimings) -> Self {
        Leases {
            timings,
            table: Mutex::new(LeaseTable::default()),
            holder: watch::channel(None).0,
            confirmed: Mutex::new(None),
        }
    }
}

/// How long ago (ms) a quorum last confirmed this node's leadership in `term`, counted from
/// when that confirmation was asked for; `None` if never in this term.
///
/// Why not `RaftMetrics::millis_since_quorum_ack`: it is computed when openraft publishes
/// metrics, and a daemon resumed after a freeze reads the value published before the freeze
/// (a few ms) until openraft runs again. A leader deposed while frozen then granted itself a
/// lease and put its old address back next to the new owner's. An instant taken here before the
/// confirmation was asked for only grows older, whatever happens to the process.
pub fn confirmed_age_ms(confirmed: Option<(Instant, u64)>, term: u64, now: Instant) -> Option<u64> {
    match confirmed {
        Some((at, t)) if t == term => Some(now.saturating_duration_since(at).as_millis() as u64),
        _ => None,
    }
}

/// The leader's leadership check: every third of `quorum_fresh`, ask a quorum to confirm that
/// this node still leads (heartbeats through openraft's `get_read_log_id`), and record when the
/// confirmed check began. [`grant`] grants only while that is fresh.
pub async fn confirm_loop(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = (s.leases.timings.quorum_fresh / 3).max(Duration::from_millis(10));
    let mut pause = every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let metrics = s.raft.metrics().borrow().clone();
        pause = every;
        if metrics.state != ServerState::Leader || metrics.current_leader != Some(s.id) {
            *s.leases.confirmed.lock().unwrap_or_else(|p| p.into_inner()) = None;
            continue;
        }
        // A leader without a confirmation in its term grants nothing: check again soon.
        let current = s
            .leases
            .confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(_, t)| t == metrics.current_term);
        if !current {
            pause = Duration::from_millis(5);
        }
        let asked = Instant::now();
        let confirmed =
            tokio::time::timeout(s.leases.timings.quorum_fresh, s.raft.get_read_log_id())
                .await
                .is_ok_and(|r| r.is_ok());
        let term = s.raft.metrics().borrow().current_term;
        if confirmed && term == metrics.current_term {
            let mut c = s.leases.confirmed.lock().unwrap_or_else(|p| p.into_inner());
            if c.is_none_or(|(at, t)| t != term || at < asked) {
                *c = Some((asked, term));
            }
        }
    }
}

/// Grant (or refuse) a lease to `node` on this node, which must lead with a fresh quorum.
pub fn grant(s: &Shared, node: &str) -> Result<LeaseGrant, String> {
    let metrics = s.raft.metrics().borrow().clone();
    if metrics.state != ServerState::Leader || metrics.current_leader != Some(s.id) {
        return Err(format!("{} is not the leader", s.me));
    }
    let now = Instant::now();
    let confirmed = *s.leases.confirmed.lock().unwrap_or_else(|p| p.into_inner());
    let age = confirmed_age_ms(confirmed, metrics.current_term, now);
    if !s.leases.timings.may_grant(age) {
        return Err(format!(
            "{} has no fresh quorum (leadership last confirmed {age:?} ms ago)",
            s.me
        ));
    }
    let mut table = s.leases.table.lock().unwrap_or_else(|p| p.into_inner());
    table.reset_for(metrics.current_term, now);
    table.grant(node, now, &s.leases.timings);
    Ok(LeaseGrant {
        lease_ms: s.leases.timings.lease.as_millis() as u64,
        leader: s.me.clone(),
        term: metrics.current_term,
        log_index: metrics.last_log_index.unwrap_or(0),
    })
}

/// The holder's loop (mail nodes): renew every `renew_every`, publish how long the lease lasts.
pub async fn renew_loop(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let timings = s.leases.timings;
    let request = LeaseRequest { node: s.me.clone() };
    let mut client: Option<ApiClient> = None;
    let mut had_lease = false;
    loop {
        let sent_at = Instant::now();
        let leader = crate::raft::leader_member(&s.raft.metrics().borrow());
        // A node drill: behave like a dead node for the addresses (renew nothing), so they take
        // the real failure path while the daemon keeps running.
        let drilled = s.replica.borrow().state.node_drilled(&s.me);
        let granted = match leader.map(|(id, m)| (id, m.addr)) {
            _ if drilled => Err("failover drill: playing a failed node".to_string()),
            None => Err("no leader known".to_string()),
            Some((leader, _)) if leader == s.id => grant(&s, &s.me),
            Some((_, addr)) => {
                let c = match &client {
                    Some(c) if c.addr() == addr => c.clone(),
                    _ => {
                        let c = ApiClient::new(addr, s.key.clone())
                            .with_timeout(timings.renew_every.max(Duration::from_millis(100)));
                        client = Some(c.clone());
                        c
                    }
                };
                c.post::<_, LeaseGrant>(admin_paths::LEASE, &request)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match granted {
            Ok(grant) => {
                let held = HeldLease {
                    deadline: timings.holder_deadline(sent_at),
                    min_applied: grant.log_index,
                };
                s.leases.holder.send_replace(Some(held));
                if !had_lease {
                    info!("holding an address lease");
                    had_lease = true;
                }
            }
            Err(e) => {
                let current = *s.leases.holder.borrow();
                if had_lease && current.is_none_or(|l| Instant::now() >= l.deadline) {
                    warn!(reason = %e, "address lease lost: dropping addresses");
                    s.leases.holder.send_replace(None);
                    had_lease = false;
                } else {
                    debug!(reason = %e, "lease renewal failed");
                }
            }
        }
        let next = sent_at + timings.renew_every;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The leader's placement loop: every `tick`, compute liveness and propose the planner's
/// commands.
pub async fn placement_loop(s: Arc<Shared>, policy: Policy, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(50);
    let mut metrics_rx = s.raft.metrics();
    loop {
        // The loop notices its own election as it happens (the table has not seen the term yet)
        // and wakes when the quiet period ends, rather than on the next tick, so a new
        // leader's first takeover is not up to two ticks late.
        let (led_term, quiet_until) = {
            let table = s.leases.table.lock().unwrap_or_else(|p| p.into_inner());
            (table.term, table.quiet_until(&s.leases.timings))
        };
        let now = Instant::now();
        let next = match quiet_until {
            Some(q) if q > now => q.min(now + tick),
            _ => now + tick,
        };
        let me = s.id;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = metrics_rx.wait_for(|m| {
                m.state == ServerState::Leader
                    && m.current_leader == Some(me)
                    && Some(m.current_term) != led_term
            }) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let metrics = s.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader || metrics.current_leader != Some(s.id) {
            continue;
        }
        let now = Instant::now();
        // Elected: the quiet period counts from now (or from the first lease request this
        // leader answered, if that came first). Plan nothing, not even first placements, until
        // every live node has had time to renew with this leader: otherwise an address could be
        // placed away from a home that simply had not renewed yet.
        let quiet = {
            let mut table = s.leases.table.lock().unwrap_or_else(|p| p.into_inner());
            table.reset_for(metrics.current_term, now);
            table.quiet(now, &s.leases.timings)
        };
        if quiet || !s.leases.timings.may_grant(metrics.millis_since_quorum_ack) {
            continue;
        }
        let replica = s.replica.borrow().clone();
        let live = {
            let table = s.leases.table.lock().unwrap_or_else(|p| p.into_inner());
            let mut names: Vec<&String> = replica
                .state
                .members
                .iter()
                .filter(|(_, m)| m.role == Role::Mail)
                .map(|(n, _)| n)
                .collect();
            // Owners that left the membership still need an expiry verdict.
            for a in replica.state.addresses.values() {
                if let Some(o) = &a.owner
                    && !names.contains(&o)
                {
                    names.push(o);
                }
            }
            let mut live = table.liveness(names, now, &s.leases.timings);
            // A silent node with a fence agent keeps its addresses until it is fenced.
            let mut gate = s.fencing.gate.lock().unwrap_or_else(|p| p.into_inner());
            gate.reset_for(metrics.current_term);
            let start = crate::fence::gate_liveness(
                &mut gate,
                &mut live,
                &replica.state,
                // A drilled node gave its lease up on purpose and is alive: never fence it.
                |n| s.fencing.configured(n) && !replica.state.node_drilled(n),
                |n| table.last_grant(n),
                now,
            );
            for node in start {
                let by = format!("leader {}", s.me);
                let task = crate::fence::run(s.clone(), node, by, metrics.current_term);
                tokio::spawn(task);
            }
            live
        };
        let now_ms = auth::unix_ms();
        for node in crate::fence::to_clear(&replica.state, &live, now_ms) {
            let cmd = Command::FenceCleared {
                node,
                reason: "it holds an address lease again".into(),
                at_ms: now_ms,
            };
            if let Err(e) = api::propose(&s, cmd).await {
                debug!(error = %e.message_text(), "fencing record not cleared");
            }
        }
        let commands = plan::plan(&replica.state, &live, &policy, now_ms);
        for cmd in commands {
            info!(command = ?cmd, "placement");
            if let Err(e) = api::propose(&s, cmd).await {
                debug!(error = %e.message_text(), "placement command not applied");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> LeaseTimings {
        LeaseTimings::default()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_new_leader_declares_nobody_expired_during_its_quiet_period() {
        let mut table = LeaseTable::default();
        let t0 = Instant::now();
        table.reset_for(2, t0);
        let nodes = names(&["mx1", "mx2"]);
        let live = table.liveness(&nodes, t0 + Duration::from_millis(500), &t());
        assert!(live.expired.is_empty() && live.current.is_empty());
        let after = t0 + t().quorum_fresh + t().takeover_delay() + Duration::from_millis(1);
        let live = table.liveness(&nodes, after, &t());
        assert_eq!(live.expired.len(), 2);
    }

    #[test]
    fn renewing_nodes_are_current_with_their_uninterrupted_time() {
        let mut table = LeaseTable::default();
        let t0 = Instant::now();
        table.reset_for(1, t0);
        for i in 0..10 {
            table.grant("mx1", t0 + Duration::from_millis(200 * i), &t());
        }
        let now = t0 + Duration::from_millis(1900);
        let live = table.liveness(&names(&["mx1"]), now, &t());
        assert_eq!(live.current.get("mx1"), Some(&1900));
    }

    #[test]
    fn a_gap_longer_than_a_lease_restarts_the_stable_time() {
        let mut table = LeaseTable::default();
        let t0 = Instant::now();
        table.reset_for(1, t0);
        table.grant("mx1", t0, &t());
        table.grant("mx1", t0 + Duration::from_secs(5), &t());
        let live = table.liveness(&names(&["mx1"]), t0 + Duration::from_millis(5100), &t());
        assert_eq!(live.current.get("mx1"), Some(&100));
    }

    #[test]
    fn silent_node_is_neither_current_nor_expired_until_the_takeover_delay() {
        let mut table = LeaseTable::default();
        let t0 = Instant::now();
        table.reset_for(1, t0);
        let late = t0 + Duration::from_secs(10);
        table.grant("mx1", late, &t());
        let nodes = names(&["mx1"]);
        let lapsed = late + t().lease + Duration::from_millis(1);
        let live = table.liveness(&nodes, lapsed, &t());
        assert!(live.current.is_empty() && live.expired.is_empty());
        let gone = late + t().takeover_delay();
        assert!(table.liveness(&nodes, gone, &t()).expired.contains("mx1"));
    }

    #[test]
    fn leadership_confirmed_ages_from_when_it_was_asked_and_counts_only_in_its_term() {
        let asked = Instant::now();
        let later = asked + Duration::from_millis(40);
        assert_eq!(confirmed_age_ms(Some((asked, 3)), 3, later), Some(40));
        // A daemon frozen for two seconds and resumed: the confirmation is two seconds old.
        let resumed = asked + Duration::from_secs(2);
        assert_eq!(confirmed_age_ms(Some((asked, 3)), 3, resumed), Some(2000));
        assert!(!t().may_grant(confirmed_age_ms(Some((asked, 3)), 3, resumed)));
        // Another term's confirmation, or none, grants nothing.
        assert_eq!(confirmed_age_ms(Some((asked, 3)), 4, later), None);
        assert_eq!(confirmed_age_ms(None, 3, later), None);
    }

    #[test]
    fn a_new_term_forgets_old_grants() {
        let mut table = LeaseTable::default();
        let t0 = Instant::now();
        table.reset_for(1, t0);
        table.grant("mx1", t0, &t());
        table.reset_for(2, t0 + Duration::from_millis(10));
        let live = table.liveness(&names(&["mx1"]), t0 + Duration::from_millis(20), &t());
        assert!(live.current.is_empty());
    }
}
