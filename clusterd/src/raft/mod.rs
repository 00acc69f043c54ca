//! Raft plumbing: openraft's type configuration, the redb store, and the HTTP peer network.
//!
//! This module adapts openraft to clusterd; it holds no cluster logic. What a log entry means is
//! decided in `model`; who may talk to whom is enforced in `api` (signatures) and here (signing
//! outgoing RPCs).

use std::io::Cursor;

pub mod network;
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
