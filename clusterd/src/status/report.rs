//! The status report of a running node, assembled from its Raft metrics, replica, lease table,
//! peer observations and probes (`GET /v1/status`); the schema and its table are [`super`].

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ServerState;

use super::{AddressReport, Freshness, NodeReport, ServiceReport, StatusReport};
use crate::client::admin_paths;
use crate::model::{NodeId, Role};
use crate::node::Shared;

/// How long `status` waits for a peer's own probe results.
const PEER_HEALTH_TIMEOUT: Duration = Duration::from_millis(300);

/// Ask every other mail node for its probes' last latency (in parallel, briefly); a node that
/// does not answer in time keeps the latency of the probe that decided its state.
pub async fn add_live_probe_latency(s: &Shared, report: &mut StatusReport) {
    let peers: Vec<(String, String)> = report
        .nodes
        .iter()
        .filter(|n| n.name != s.me && n.role == Role::Mail)
        .map(|n| (n.name.clone(), n.address.clone()))
        .collect();
    let asks = peers.into_iter().map(|(name, addr)| {
        let client = s
            .client_to(name.clone(), addr)
            .with_timeout(PEER_HEALTH_TIMEOUT);
        async move {
            let live: Result<
                std::collections::BTreeMap<String, crate::health::view::LocalCheck>,
                _,
            > = client.get(admin_paths::HEALTH).await;
            (name, live.ok())
        }
    });
    for (node, live) in futures_util::future::join_all(asks).await {
        let Some(live) = live else { continue };
        for h in report.health.iter_mut().filter(|h| h.node == node) {
            if let Some(ms) = live.get(&h.check).and_then(|l| l.last_latency_ms) {
                h.latency_ms = Some(ms);
                h.live = true;
            }
        }
    }
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Build this node's status report from its metrics, replica and peer observations.
pub fn build_status(s: &Shared, event_limit: usize) -> StatusReport {
    let metrics = s.raft.metrics().borrow().clone();
    let replica = s.replica.borrow().clone();
    let peers = crate::lock(&s.peers).clone();
    let leader_contact = s.leader_contact_ms();
    let is_leader = metrics.state == ServerState::Leader;
    let reachable_within = s.reachable_within;
    let membership = metrics.membership_config.membership();
    let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
    let leader_name = metrics
        .current_leader
        .and_then(|l| membership.get_node(&l))
        .map(|n| n.name.clone());

    let mut nodes: Vec<NodeReport> = membership
        .nodes()
        .map(|(id, member)| {
            let voter = voter_ids.contains(id);
            let is_self = *id == s.id;
            let is_current_leader = metrics.current_leader == Some(*id);
            let raft_state = if is_self {
                state_name(metrics.state).to_string()
            } else if is_current_leader {
                "leader".to_string()
            } else if voter {
                "follower".to_string()
            } else {
                "learner".to_string()
            };
            let last_contact_ms = if is_self {
                Some(0)
            } else if is_leader {
                peers
                    .get(id)
                    .and_then(|p| p.last_ok)
                    .map(|t| crate::clock::since(t).as_millis() as u64)
            } else if is_current_leader {
                leader_contact
            } else {
                None
            };
            let reachable = if is_self {
                Some(true)
            } else if is_leader || is_current_leader {
                Some(last_contact_ms.is_some_and(|ms| ms <= reachable_within.as_millis() as u64))
            } else {
                None
            };
            let matched_index = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index);
            let state_member = replica.state.members.get(&member.name);
            let declared = if replica.state.declared.contains_key(&member.name) {
                replica
                    .state
                    .declaration_difference(&member.name)
                    .unwrap_or_else(|| "same".to_string())
            } else if member.role == Role::Witness {
                "-".to_string()
            } else {
                "unreported".to_string()
            };
            NodeReport {
                name: member.name.clone(),
                role: member.role,
                voter,
                raft_state,
                reachable,
                last_contact_ms,
                matched_index,
                admin: state_member.map(|m| m.admin).unwrap_or_default(),
                address: member.addr.clone(),
                declared,
                fence_agent: s.fencing.describe(&member.name),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));

    let addresses = replica
        .state
        .addresses
        .values()
        .map(|a| AddressReport {
            ip: a.spec.ip.clone(),
            interface: a.spec.interface.clone(),
            home: a.spec.home.clone(),
            services: a.spec.services.clone(),
            owner: a.owner.clone(),
            epoch: a.epoch,
            since_ms: a.since_ms,
            stuck: stuck_reason(&replica.state, a, s.config.placement.hold_down.as_millis()),
        })
        .collect();
    let live = s.probes.snapshot();
    let health = replica
        .state
        .health
        .iter()
        .flat_map(|(node, checks)| {
            let live = &live;
            checks.iter().map(move |(check, h)| {
                let mine = (*node == s.me).then(|| live.get(check)).flatten();
                ServiceReport {
                    node: node.clone(),
                    check: check.clone(),
                    state: h.health,
                    since_ms: h.since_ms,
                    reason: h.reason.clone(),
                    latency_ms: mine.and_then(|l| l.last_latency_ms).or(h.latency_ms),
                    live: mine.is_some_and(|l| l.last_latency_ms.is_some()),
                }
            })
        })
        .collect();

    let (last_contact_ms, summary) = if is_leader {
        let ack = s.leading(&metrics).and_then(|l| l.confirmed_ms);
        (
            ack,
            match ack {
                Some(ms) if u128::from(ms) > s.quorum_lost_after.as_millis() => format!(
                    "leader WITHOUT QUORUM: no quorum confirmed it for {ms} ms, it cannot \
                     commit; this view may be stale"
                ),
                Some(ms) => format!("leader, quorum confirmed {ms} ms ago"),
                None => "leader, no quorum confirmation yet".to_string(),
            },
        )
    } else {
        (
            leader_contact,
            match leader_contact {
                Some(ms) => format!(
                    "{}, replica as of leader contact {} ago",
                    state_name(metrics.state),
                    super::age(ms)
                ),
                None => format!(
                    "{}, no contact with a leader yet: this view may be stale",
                    state_name(metrics.state)
                ),
            },
        )
    };
    let events = &replica.state.events;
    let skip = events.len().saturating_sub(event_limit);
    StatusReport {
        answered_by: s.me.clone(),
        leader: leader_name,
        term: metrics.current_term,
        commit_index: replica.last_applied,
        snapshot_index: metrics.snapshot.map(|l| l.index),
        purged_index: metrics.purged.map(|l| l.index),
        freshness: Freshness {
            raft_state: state_name(metrics.state).to_string(),
            last_contact_ms,
            summary,
        },
        nodes,
        addresses,
        events: events.iter().skip(skip).map(|e| (**e).clone()).collect(),
        fencing: replica
            .state
            .fencing
            .iter()
            .map(|(node, r)| super::FenceReport {
                node: node.clone(),
                state: r.progress,
                agent: r.agent.clone(),
                attempt: r.attempt,
                by: r.by.clone(),
                since_ms: r.since_ms,
                detail: r.detail.clone(),
                retry_in_ms: r.retry_in_ms,
                blocked_addresses: if r.progress == crate::model::FenceProgress::Fenced {
                    Vec::new()
                } else {
                    replica.state.owned_by(node)
                },
            })
            .collect(),
        dns_failing: crate::dns_feed::report(&s.me, &s.config, &replica.state)
            .filter(|_| s.config.node.role == Role::Mail)
            .map(|r| {
                r.names
                    .into_iter()
                    .filter(|n| n.state != "passing")
                    .collect()
            })
            .unwrap_or_default(),
        health,
        drills: replica
            .state
            .drills
            .iter()
            .map(|(node, d)| super::DrillStatus {
                node: node.clone(),
                kind: d.kind.clone(),
                by: d.by.clone(),
                since_ms: d.started_ms,
            })
            .collect(),
        stuck_loops: s
            .loops
            .stuck(crate::systemd::loops::LOOP_SILENCE)
            .into_iter()
            .map(|(name, silent)| super::StuckLoop {
                name: name.to_string(),
                silent_ms: silent.as_millis() as u64,
            })
            .collect(),
    }
}

/// Why `a` stays on an owner failing one of its services, if it does.
fn stuck_reason(
    state: &crate::model::State,
    a: &crate::model::AddressState,
    hold_down_ms: u64,
) -> Option<String> {
    let now = crate::clock::unix_ms();
    if !crate::model::plan::stuck_on_failing_owner(state, a, now, hold_down_ms) {
        return None;
    }
    let owner = a.owner.as_deref()?;
    Some(format!(
        "{} critical on {owner} and no other node passes {} (or is still in hold-down)",
        state.failing(owner, &a.spec.services).join(", "),
        a.spec.services.join(", ")
    ))
}
