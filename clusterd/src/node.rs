//! The node handle: what every part of a running daemon shares (its name and id, config,
//! Raft handle, key, replica, and the state of each subsystem), below every task and the API.
//!
//! [`crate::daemon`] builds one [`Shared`] and hands it to the tasks it starts and to the
//! router; nothing here starts a task or does IO.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;

use crate::auth::ClusterKey;
use crate::client::ApiClient;
use crate::config::Config;
use crate::lease::table::confirmed_age_ms;
use crate::model::NodeId;
use crate::raft::network::PeerTable;
use crate::raft::store::Replica;
use crate::raft::{Metrics, Raft};

/// What the API handlers and background duties share.
pub struct Shared {
    /// This node's name.
    pub me: String,
    /// This node's Raft id.
    pub id: NodeId,
    /// The loaded config.
    pub config: Config,
    /// The Raft handle.
    pub raft: Raft,
    /// The cluster key.
    pub key: ClusterKey,
    /// The one HTTP client (connection pool) for requests to peers.
    pub http: crate::wire::Http,
    /// Every applied state.
    pub replica: watch::Receiver<Arc<Replica>>,
    /// What this node saw of its peers through its own RPCs.
    pub peers: PeerTable,
    /// Throttle for unauthenticated-request log lines.
    pub unauthorized: Mutex<crate::auth::UnauthorizedLog>,
    /// Liveness beats of the daemon's loops, for the service manager's watchdog.
    pub loops: crate::systemd::loops::Loops,
    /// A peer heard from within this long counts as reachable.
    pub reachable_within: Duration,
    /// A leader that no quorum acknowledged for this long refuses writes at once.
    pub quorum_lost_after: Duration,
    /// Address leases: the leader's grants and this node's own lease.
    pub leases: crate::lease::table::Leases,
    /// This node's latest probe results.
    pub probes: crate::health::view::LocalView,
    /// Fence agents and, while this node leads, the fence gate.
    pub fencing: crate::fence::agents::Fencing,
    /// The transition hooks' queue.
    pub hooks: crate::hooks::queue::Hooks,
    /// Counters and histograms for `/metrics`.
    pub metrics: crate::metrics::registry::Registry,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Record that the leader of `term` just reached this node (and so that this node
    /// acknowledged it, which a vote it grants later reports).
    pub fn note_leader_contact(&self, term: u64) {
        crate::lock(&self.leases.contacts).heard(term, crate::clock::now());
    }

    /// A signed client for the node `name` at `addr`, over the daemon's one HTTP client.
    pub fn client_to(&self, name: impl Into<String>, addr: impl Into<String>) -> ApiClient {
        ApiClient::with_http(self.http.clone(), addr, self.key.clone()).for_node(name)
    }

    /// Whether `ip` is the address of a member node (a configured peer, this node, or a node
    /// of the current Raft membership): connections from it get their own share
    /// ([`crate::http_server`]).
    pub fn is_member_address(&self, ip: std::net::IpAddr) -> bool {
        let node = &self.config.node;
        if node.listen.ip() == ip
            || node.advertise.is_some_and(|a| a.ip() == ip)
            || self.config.peers.iter().any(|p| p.address.ip() == ip)
        {
            return true;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .any(|(_, n)| n.addr.parse::<SocketAddr>().is_ok_and(|a| a.ip() == ip))
    }

    /// ms since the leader last reached this node.
    pub fn leader_contact_ms(&self) -> Option<u64> {
        crate::lock(&self.leases.contacts)
            .last_heard()
            .map(|t| crate::clock::since(t).as_millis() as u64)
    }

    /// Whether this node leads, by `m`: it is in the leader state and names itself leader
    /// (openraft can report one without the other for a moment around an election). Every
    /// "do I lead" in the daemon asks this.
    pub fn leads(&self, m: &Metrics) -> bool {
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Whether this node leads by `m`, and how fresh its quorum is: the one source of quorum
    /// freshness for lease grants, placement, node up/down reports, writes and `/metrics`.
    /// The age comes from the leadership check ([`crate::lease::confirm_loop`]) on this node's
    /// monotonic clock, never from openraft's `millis_since_quorum_ack`, which a daemon resumed
    /// after a freeze reads as it was before the freeze until openraft runs again.
    pub fn leading(&self, m: &Metrics) -> Option<Leading> {
        if !self.leads(m) {
            return None;
        }
        let confirmed = *crate::lock(&self.leases.confirmed);
        Some(Leading {
            term: m.current_term,
            confirmed_ms: confirmed_age_ms(confirmed, m.current_term, crate::clock::now()),
        })
    }
}

/// This node's leadership, as [`Shared::leading`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leading {
    /// The term it leads in.
    pub term: u64,
    /// ms since a quorum last confirmed the leadership, counted from when that check began;
    /// `None` until the first check of this term is confirmed.
    pub confirmed_ms: Option<u64>,
}

impl Leading {
    /// Whether a quorum confirmed the leadership less than `within` ago.
    pub fn confirmed_within(&self, within: Duration) -> bool {
        self.confirmed_ms
            .is_some_and(|ms| u128::from(ms) < within.as_millis())
    }
}
