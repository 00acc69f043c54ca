//! Address leases at run time: the leader's leadership check and grants, and the holder's
//! renewal loop. The leader's placement loop, which turns the grant table into the planner's
//! input, is [`crate::placement`].
//!
//! The arithmetic (how long a lease lasts for its holder, when the leader may take it back) is
//! `clusterd_lease::LeaseTimings`; this module only keeps the clocks. Grants live in the
//! leader's memory, not in Raft: a new leader starts with an empty table and waits its quiet
//! period before reassigning anything.

pub mod table;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::client::ApiClient;
use crate::client::admin_paths;
use crate::node::Shared;
use table::{HeldLease, LeaseGrant, LeaseRequest};

/// The leader's leadership check: every third of `quorum_fresh`, ask a quorum to confirm that
/// this node still leads (heartbeats through openraft's `get_read_log_id`), and record when the
/// confirmed check began. [`grant`] grants only while that is fresh.
pub async fn confirm_loop(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = (s.leases.timings.quorum_fresh / 3).max(Duration::from_millis(10));
    let mut pause = every;
    loop {
        s.loops.beat(crate::systemd::loops::LEADERSHIP);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let metrics = s.raft.metrics().borrow().clone();
        pause = every;
        if !s.leads(&metrics) {
            *crate::lock(&s.leases.confirmed) = None;
            // Every grant rested on a check begun before now (this loop's own, earlier).
            crate::lock(&s.leases.contacts).stopped_leading(crate::clock::now());
            continue;
        }
        // A leader without a confirmation in its term grants nothing: check again soon.
        let current =
            crate::lock(&s.leases.confirmed).is_some_and(|(_, t)| t == metrics.current_term);
        if !current {
            pause = Duration::from_millis(5);
        }
        // Noted before the check: a vote this node grants from now on says it may be granting
        // (`clusterd_lease::Contacts::leading`), until this loop sees it no longer leads.
        crate::lock(&s.leases.contacts).leading(metrics.current_term, crate::clock::now());
        let asked = crate::clock::now();
        let confirmed =
            tokio::time::timeout(s.leases.timings.quorum_fresh, s.raft.get_read_log_id())
                .await
                .is_ok_and(|r| r.is_ok());
        let term = s.raft.metrics().borrow().current_term;
        if confirmed && term == metrics.current_term {
            let mut c = crate::lock(&s.leases.confirmed);
            if c.is_none_or(|(at, t)| t != term || at < asked) {
                *c = Some((asked, term));
            }
        }
    }
}

/// Why this node grants no lease now. Every reason is passing: the holder asks again at its
/// next renewal (the API answers 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefused {
    /// This node does not lead.
    #[error("{me} is not the leader")]
    NotLeader {
        /// This node.
        me: String,
    },
    /// No quorum confirmed the leadership within `quorum_fresh`.
    #[error("{me} has no fresh quorum (leadership last confirmed {age_ms:?} ms ago)")]
    NoFreshQuorum {
        /// This node.
        me: String,
        /// Since the last confirmation (`None`: none in this term).
        age_ms: Option<u64>,
    },
    /// The grant rule holds it back ([`table::Withheld`]).
    #[error("{me} withholds a lease from {node}: {why}")]
    Withheld {
        /// This node.
        me: String,
        /// The node that asked.
        node: String,
        /// Why.
        why: table::Withheld,
    },
}

/// Grant (or refuse) a lease to `node` on this node, which must lead with a fresh quorum. The
/// grant names this leader's last log index, or a later one the grant rule asks for (see
/// [`LeaseTable`]).
pub fn grant(s: &Shared, node: &str) -> Result<LeaseGrant, GrantRefused> {
    let metrics = s.raft.metrics().borrow().clone();
    let me = || s.me.clone();
    let Some(leading) = s.leading(&metrics) else {
        return Err(GrantRefused::NotLeader { me: me() });
    };
    let now = crate::clock::now();
    let age_ms = leading.confirmed_ms;
    if !s.leases.timings.may_grant(age_ms) {
        return Err(GrantRefused::NoFreshQuorum { me: me(), age_ms });
    }
    let mut table = crate::lock(&s.leases.table);
    let log_index = table
        .grant(
            metrics.current_term,
            node,
            now,
            metrics.last_log_index.unwrap_or(0),
            &s.leases.timings,
        )
        .map_err(|why| GrantRefused::Withheld {
            me: me(),
            node: node.to_string(),
            why,
        })?;
    Ok(LeaseGrant {
        lease_ms: s.leases.timings.lease.as_millis() as u64,
        leader: s.me.clone(),
        term: metrics.current_term,
        log_index,
    })
}

/// The holder's loop (mail nodes): renew every `renew_every`, publish how long the lease lasts.
pub async fn renew_loop(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let timings = s.leases.timings;
    let request = LeaseRequest { node: s.me.clone() };
    let mut client: Option<ApiClient> = None;
    let mut had_lease = false;
    loop {
        s.loops.beat(crate::systemd::loops::LEASE_RENEWAL);
        let sent_at = crate::clock::now();
        let leader = crate::raft::leader_member(&s.raft.metrics().borrow());
        // A node drill: behave like a dead node for the addresses (renew nothing), so they take
        // the real failure path while the daemon keeps running.
        let drilled = s.replica.borrow().state.node_drilled(&s.me);
        let granted = match leader.map(|(id, m)| (id, m.addr, m.name)) {
            _ if drilled => Err("failover drill: playing a failed node".to_string()),
            None => Err("no leader known".to_string()),
            Some((leader, _, _)) if leader == s.id => grant(&s, &s.me).map_err(|e| e.to_string()),
            Some((_, addr, name)) => {
                let c = match &client {
                    Some(c) if c.addr() == addr => c.clone(),
                    _ => {
                        let c = s
                            .client_to(name, addr)
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
                if had_lease && current.is_none_or(|l| crate::clock::now() >= l.deadline) {
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
