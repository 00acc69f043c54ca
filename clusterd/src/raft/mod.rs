//! Raft plumbing: openraft's type configuration, the redb store, and the HTTP peer network.
//!
//! This module adapts openraft to clusterd; it holds no cluster logic. What a log entry means is
//! decided in `model`; who may talk to whom is enforced in `api` (signatures) and here (signing
//! outgoing RPCs).

use std::io::Cursor;

pub mod network;
pub mod prevote;
pub mod propose;
pub mod store;

use crate::model::{Applied, Command, Member, NodeId};

openraft::declare_raft_types!(
    /// clusterd's openraft types: commands from `model`, members by name and address.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle used throughout the daemon.
pub type Raft = openraft::Raft<TypeConfig>;

/// Raft metrics with our types.
pub type Metrics = openraft::RaftMetrics<NodeId, Member>;

/// Voter ids, and voter and learner names (sorted), of the membership in `metrics`.
pub fn membership_names(
    metrics: &Metrics,
) -> (std::collections::BTreeSet<NodeId>, Vec<String>, Vec<String>) {
    let m = metrics.membership_config.membership();
    let voter_ids: std::collections::BTreeSet<NodeId> = m.voter_ids().collect();
    let (mut voters, mut learners) = (Vec::new(), Vec::new());
    for (id, node) in m.nodes() {
        if voter_ids.contains(id) {
            voters.push(node.name.clone());
        } else {
            learners.push(node.name.clone());
        }
    }
    voters.sort();
    learners.sort();
    (voter_ids, voters, learners)
}

/// The current leader's id and member record, if a leader is known and in the membership.
pub fn leader_member(metrics: &Metrics) -> Option<(NodeId, Member)> {
    let leader = metrics.current_leader?;
    let node = metrics.membership_config.membership().get_node(&leader)?;
    Some((leader, node.clone()))
}
