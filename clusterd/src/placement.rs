//! The leader's duties, in one home. While this node leads, one loop ([`run`]) does, every
//! tick and in this order:
//!
//! 1. **records** its leadership in the log ([`Records`]): `LeaderElected` once per term,
//!    `RecordMembership` when the Raft membership changed, `SetAddresses` when the cluster's
//!    address set differs from this node's config;
//! 2. **watches the members** ([`Members`]): node down / node up hooks from its own Raft
//!    contact with each, only while a quorum confirmed its leadership (a leader cut off from
//!    the majority sees everyone silent and reports nothing);
//! 3. **places addresses** ([`place`]): nothing during the quiet period after its election,
//!    then the lease verdicts, the fence gate, the planner and `FenceCleared`, each plan
//!    written only in the term it was made in.
//!
//! "Do I lead, with what freshness" is asked once per round, of [`Shared::leading`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::hooks::{Contact, HookEvent, NodeWatch};
use crate::model::plan::{self, Policy};
use crate::model::{AddressSpec, Command, Role};
use crate::node::{Leading, Shared};
use crate::raft::Metrics;
use crate::raft::propose::ProposeError;

/// How often the loop runs when nothing wakes it sooner.
const TICK: Duration = Duration::from_millis(50);
/// Pause after a failed record before trying it again.
const RECORD_RETRY: Duration = Duration::from_millis(300);

/// The leader's loop (see the module documentation), until `stop`. Beats
/// [`crate::systemd::loops::PLACEMENT`].
pub async fn run(s: Arc<Shared>, policy: Policy, mut stop: watch::Receiver<bool>) {
    let mut metrics_rx = s.raft.metrics();
    let mut records = Records::new(s.config.declared_addresses());
    let mut members = Members::default();
    loop {
        s.loops.beat(crate::systemd::loops::PLACEMENT);
        // The loop notices its own election as it happens (the table has not seen the term yet)
        // and wakes when the quiet period ends, rather than on the next tick, so a new
        // leader's first takeover is not up to two ticks late.
        let (led_term, quiet_until) = {
            let table = crate::lock(&s.leases.table);
            (table.term(), table.quiet_until(&s.leases.timings))
        };
        let now = crate::clock::now();
        let next = match quiet_until {
            Some(q) if q > now => q.min(now + TICK),
            _ => now + TICK,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = metrics_rx.wait_for(|m| s.leads(m) && Some(m.current_term) != led_term) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let metrics = s.raft.metrics().borrow().clone();
        let Some(leading) = s.leading(&metrics) else {
            members.stood_down();
            continue;
        };
        // Elected: the quiet period counts from now (or from the first lease request this
        // leader answered, if that came first), before any record is written.
        crate::lock(&s.leases.table).reset_for(leading.term, crate::clock::now());
        if crate::lock(&s.leases.table).wants_voters_contact(leading.term) {
            let contact = voters_contact(&s, leading.term, &metrics).await;
            let mut table = crate::lock(&s.leases.table);
            table.set_voters_contact(leading.term, contact);
            let now = crate::clock::now();
            let left = |q: Option<Instant>| {
                q.map_or(0, |q| q.saturating_duration_since(now).as_millis() as u64)
            };
            let quiet = left(table.quiet_until(&s.leases.timings));
            drop(table);
            match contact {
                Some(c) => info!(
                    term = leading.term,
                    quiet_ms = quiet,
                    voters_last_heard_earlier_leader_ms_ago =
                        now.saturating_duration_since(c).as_millis() as u64,
                    "elected; reassigning nothing until the earlier leader's grants are over"
                ),
                None => info!(
                    term = leading.term,
                    quiet_ms = quiet,
                    "elected; the voters' answers cover no quorum, so reassigning nothing for a \
                     whole quiet period"
                ),
            }
        }
        records.keep(&s, &metrics).await;
        members.watch(&s, leading);
        place(&s, &policy, leading).await;
    }
}

/// When a quorum of this term's voters last heard a leader of an earlier term, at the latest
/// (`clusterd_lease::handover`): the answers that came with their votes, and this node's own
/// contacts (read once no heartbeat accepted before is still being noted).
async fn voters_contact(s: &Shared, term: u64, m: &Metrics) -> Option<Instant> {
    let own = {
        let _gate = s.leases.contact_gate.write().await;
        crate::lock(&s.leases.contacts).latest_before(term, crate::clock::now())
    };
    let mut answers = crate::lock(&s.leases.votes).of_term(term);
    answers.insert(s.id, own);
    clusterd_lease::quorum_contact(
        &answers,
        m.membership_config.membership().get_joint_config(),
    )
}

/// What the leader records of its leadership, and when it may try again after a failure.
#[derive(Debug)]
struct Records {
    /// This node's configured addresses (what `SetAddresses` reconciles the cluster to).
    declared: Vec<AddressSpec>,
    /// The term whose `LeaderElected` is committed.
    announced: Option<u64>,
    /// No record is tried before this (after a failure), unless the term changed.
    retry_at: Option<(u64, Instant)>,
}

impl Records {
    fn new(declared: Vec<AddressSpec>) -> Self {
        Records {
            declared,
            announced: None,
            retry_at: None,
        }
    }

    /// Write what is missing; a failure is retried after [`RECORD_RETRY`], or at once in a new
    /// term (its leader may accept what the old one could not).
    async fn keep(&mut self, s: &Shared, metrics: &Metrics) {
        let term = metrics.current_term;
        if self
            .retry_at
            .is_some_and(|(t, at)| t == term && crate::clock::now() < at)
        {
            return;
        }
        if let Err(e) = self.write(s, metrics).await {
            debug!(error = %e, "leadership record failed; will retry");
            self.retry_at = Some((term, crate::clock::now() + RECORD_RETRY));
        }
    }

    async fn write(&mut self, s: &Shared, metrics: &Metrics) -> Result<(), ProposeError> {
        let replica = s.replica.borrow().clone();
        let at_ms = crate::clock::unix_ms();
        if self.announced != Some(metrics.current_term) {
            let elected = Command::LeaderElected {
                node: s.me.clone(),
                term: metrics.current_term,
                at_ms,
            };
            crate::raft::propose::propose(s, elected).await?;
            self.announced = Some(metrics.current_term);
        }
        let joint = metrics
            .membership_config
            .membership()
            .get_joint_config()
            .len()
            > 1;
        if replica.state.membership_unrecorded() && !joint {
            crate::raft::propose::propose(s, Command::RecordMembership { at_ms }).await?;
        }
        if replica.state.address_specs() != self.declared {
            info!(
                addresses = self.declared.len(),
                "reconciling the cluster's address set to this node's config"
            );
            let set = Command::SetAddresses {
                by: s.me.clone(),
                addresses: self.declared.clone(),
                at_ms,
            };
            crate::raft::propose::propose(s, set).await?;
        }
        Ok(())
    }
}

/// The leader's watch over its contact with every member (node down / node up hooks).
#[derive(Debug, Default)]
struct Members {
    watch: NodeWatch,
    /// The term this node leads in and since when.
    since: Option<(u64, Instant)>,
}

impl Members {
    /// This node no longer leads: the next term's watch starts afresh.
    fn stood_down(&mut self) {
        self.since = None;
    }

    /// Report the members whose contact changed since the last report, while a quorum
    /// confirmed the leadership within `Shared::quorum_lost_after`.
    fn watch(&mut self, s: &Shared, leading: Leading) {
        let since = match self.since {
            Some((t, at)) if t == leading.term => at,
            _ => {
                let now = crate::clock::now();
                self.since = Some((leading.term, now));
                now
            }
        };
        if !leading.confirmed_within(s.quorum_lost_after) {
            return;
        }
        let replica = s.replica.borrow().clone();
        let contact = member_contact(s, &replica.state);
        let now_ms = crate::clock::unix_ms();
        let changes = self.watch.observe(
            leading.term,
            crate::clock::since(since),
            s.reachable_within,
            &contact,
        );
        for (node, up, reason) in changes {
            if up {
                info!(%node, %reason, "node up");
            } else {
                warn!(%node, %reason, "node down");
            }
            s.hooks.emit(HookEvent::node(&node, up, &reason, now_ms));
        }
    }
}

/// The leader's contact with every other member, from its own Raft RPCs to them.
fn member_contact(s: &Shared, state: &crate::model::State) -> BTreeMap<String, Contact> {
    let peers = crate::lock(&s.peers).clone();
    state
        .members
        .keys()
        .filter(|name| **name != s.me)
        .map(|name| {
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

/// One placement round of the leader of `leading.term`: compute liveness from the lease table,
/// gate it through fencing, and write the planner's commands, stamped with the term.
async fn place(s: &Arc<Shared>, policy: &Policy, leading: Leading) {
    let now = crate::clock::now();
    // Plan nothing, not even first placements, during the quiet period after the election
    // ([`run`] started it): until every live node has had time to renew with this leader, an
    // address could be placed away from a home that simply had not renewed yet.
    let quiet = crate::lock(&s.leases.table).quiet(now, &s.leases.timings);
    if quiet || !s.leases.timings.may_grant(leading.confirmed_ms) {
        return;
    }
    let term = leading.term;
    // A takeover write that failed may still be in the log: settle it with a write of our
    // own before planning more (its commit commits everything before it).
    let unsettled = crate::lock(&s.leases.table).needs_settling();
    if unsettled {
        match crate::raft::propose::write_here(
            s,
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
                return;
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
            let task = crate::fence::run(Arc::clone(s), node, by, term);
            tokio::spawn(task);
        }
        let commands: Vec<(Command, Option<String>)> =
            plan::plan(&replica.state, &live, policy, now_ms)
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
        if let Err(e) = crate::raft::propose::propose(s, cmd).await {
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
        let still = crate::lock(&s.leases.table).term() == Some(term)
            && s.leading(&now_metrics).is_some_and(|l| l.term == term);
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
            match crate::raft::propose::write_here(s, cmd).await {
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
