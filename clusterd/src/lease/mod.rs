//! Address leases at run time: the leader's grant table, the holder's renewal loop, and the
//! leader's placement loop that turns lease knowledge into [`model::plan`] input.
//!
//! The arithmetic (how long a lease lasts for its holder, when the leader may take it back) is
//! `clusterd_lease::LeaseTimings`; this module only keeps the clocks. Grants live in the
//! leader's memory, not in Raft: a new leader starts with an empty table and waits its quiet
//! period before reassigning anything.

pub mod table;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::client::ApiClient;
use crate::client::admin_paths;
use crate::model::plan::{self, Policy};
use crate::model::{Command, Role};
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
            continue;
        }
        // A leader without a confirmation in its term grants nothing: check again soon.
        let current =
            crate::lock(&s.leases.confirmed).is_some_and(|(_, t)| t == metrics.current_term);
        if !current {
            pause = Duration::from_millis(5);
        }
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

/// Grant (or refuse) a lease to `node` on this node, which must lead with a fresh quorum. The
/// grant names this leader's last log index, or a later one the grant rule asks for (see
/// [`LeaseTable`]).
pub fn grant(s: &Shared, node: &str) -> Result<LeaseGrant, String> {
    let metrics = s.raft.metrics().borrow().clone();
    let Some(leading) = s.leading(&metrics) else {
        return Err(format!("{} is not the leader", s.me));
    };
    let now = crate::clock::now();
    let age = leading.confirmed_ms;
    if !s.leases.timings.may_grant(age) {
        return Err(format!(
            "{} has no fresh quorum (leadership last confirmed {age:?} ms ago)",
            s.me
        ));
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
        .map_err(|w| format!("{} withholds a lease from {node}: {w}", s.me))?;
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
            Some((leader, _, _)) if leader == s.id => grant(&s, &s.me),
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

/// The leader's placement loop: every `tick`, compute liveness and propose the planner's
/// commands.
pub async fn placement_loop(s: Arc<Shared>, policy: Policy, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(50);
    let mut metrics_rx = s.raft.metrics();
    loop {
        s.loops.beat(crate::systemd::loops::PLACEMENT);
        // The loop notices its own election as it happens (the table has not seen the term yet)
        // and wakes when the quiet period ends, rather than on the next tick, so a new
        // leader's first takeover is not up to two ticks late.
        let (led_term, quiet_until) = {
            let table = crate::lock(&s.leases.table);
            (table.term, table.quiet_until(&s.leases.timings))
        };
        let now = crate::clock::now();
        let next = match quiet_until {
            Some(q) if q > now => q.min(now + tick),
            _ => now + tick,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = metrics_rx.wait_for(|m| s.leads(m) && Some(m.current_term) != led_term) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let metrics = s.raft.metrics().borrow().clone();
        let Some(leading) = s.leading(&metrics) else {
            continue;
        };
        let now = crate::clock::now();
        // Elected: the quiet period counts from now (or from the first lease request this
        // leader answered, if that came first). Plan nothing, not even first placements, until
        // every live node has had time to renew with this leader: otherwise an address could be
        // placed away from a home that simply had not renewed yet.
        let quiet = {
            let mut table = crate::lock(&s.leases.table);
            table.reset_for(metrics.current_term, now);
            table.quiet(now, &s.leases.timings)
        };
        if quiet || !s.leases.timings.may_grant(leading.confirmed_ms) {
            continue;
        }
        let term = metrics.current_term;
        // A takeover write that failed may still be in the log: settle it with a write of our
        // own before planning more (its commit commits everything before it).
        let unsettled = crate::lock(&s.leases.table).needs_settling();
        if unsettled {
            match crate::raft::propose::write_here(
                &s,
                Command::RecordMembership {
                    at_ms: crate::clock::unix_ms(),
                },
            )
            .await
            {
                Ok(w) => {
                    let mut table = crate::lock(&s.leases.table);
                    table.settled(term, w.index);
                }
                Err(e) => {
                    debug!(error = %e, "failed takeover not settled yet");
                    continue;
                }
            }
        }
        let replica = s.replica.borrow().clone();
        let now_ms = crate::clock::unix_ms();
        // Verdicts, plan and the grant rule's bookkeeping under one hold of the table: a grant
        // either came before (and the verdict counted it) or is withheld until the takeover's
        // log index is known.
        let (live, commands) = {
            let mut table = crate::lock(&s.leases.table);
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
            let mut gate = crate::lock(&s.fencing.gate);
            gate.reset_for(term);
            let start = crate::fence::gate_liveness(
                &mut gate,
                &mut live,
                &replica.state,
                // A drilled node gave its lease up on purpose and is alive: never fence it.
                |n| s.fencing.configured(n) && !replica.state.node_drilled(n),
                |n| table.last_grant(n),
                now,
            );
            drop(gate);
            for node in start {
                let by = format!("leader {}", s.me);
                let task = crate::fence::run(s.clone(), node, by, term);
                tokio::spawn(task);
            }
            let commands: Vec<(Command, Option<String>)> =
                plan::plan(&replica.state, &live, &policy, now_ms)
                    .into_iter()
                    .map(|cmd| {
                        // Stamped with its term: the state machine refuses it if it lands in
                        // another (the check below cannot see a re-election that happens
                        // between it and the append).
                        let cmd = cmd.decided_in(term);
                        let from = plan::taken_from(&replica.state, &cmd).map(str::to_string);
                        if let Some(node) = &from {
                            table.takeover_decided(term, node);
                        }
                        (cmd, from)
                    })
                    .collect();
            (live, commands)
        };
        for node in crate::fence::to_clear(&replica.state, &live, now_ms) {
            let cmd = Command::FenceCleared {
                node,
                reason: "it holds an address lease again".into(),
                at_ms: now_ms,
            };
            if let Err(e) = crate::raft::propose::propose(&s, cmd).await {
                debug!(error = %e, "fencing record not cleared");
            }
        }
        // Per node taken from: the index of its last takeover, or `None` once one of them
        // failed or was not sent (after the first failure nothing more is sent this round).
        let mut taken: BTreeMap<String, Option<u64>> = BTreeMap::new();
        let mut failed = false;
        for (cmd, from) in commands {
            // A plan holds only in the term it was made in: the verdicts, the takeovers marked in
            // flight and the grants they withhold belong to that term's table. Once this node
            // lost the leadership (even if it won it back: the new term's table granted leases
            // without knowing of this plan), nothing more of it is written.
            let now_metrics = s.raft.metrics().borrow().clone();
            let still = crate::lock(&s.leases.table).term == Some(term)
                && now_metrics.current_term == term
                && s.leads(&now_metrics);
            if !still && !failed {
                warn!(
                    term,
                    "leadership changed while writing a plan: dropping the rest of it"
                );
                failed = true;
            }
            let index = if failed {
                None
            } else {
                info!(command = ?cmd, "placement");
                match crate::raft::propose::write_here(&s, cmd).await {
                    Ok(w) if w.term != term => {
                        // Submitted in `term`, appended by this node as leader of a later term:
                        // the state machine refused it (its stamp names `term`), and the rest
                        // of the plan is stale too.
                        warn!(
                            term,
                            written_in = w.term,
                            "a placement write landed in a later term: dropping the rest of the plan"
                        );
                        failed = true;
                        Some(w.index)
                    }
                    Ok(w) => {
                        if let Some(reason) = &w.applied.refused {
                            debug!(%reason, "placement command refused");
                        }
                        Some(w.index)
                    }
                    Err(e) => {
                        debug!(error = %e, "placement command not applied");
                        failed = true;
                        None
                    }
                }
            };
            if let Some(node) = from {
                let last = taken.entry(node).or_insert(Some(0));
                *last = last.zip(index).map(|(a, b)| a.max(b));
            }
        }
        let mut table = crate::lock(&s.leases.table);
        for (node, index) in taken {
            table.takeover_written(term, &node, index);
        }
    }
}
