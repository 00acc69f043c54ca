//! Outgoing Raft RPCs over HTTP, signed with the cluster key.
//!
//! One reqwest client per peer, reused for every RPC to it. Each RPC honours openraft's
//! per-call deadline (`RPCOption::hard_ttl`). A peer that refuses connections, or that rejects
//! our signature, maps to `Unreachable` so openraft backs off; a peer that does not answer in
//! time maps to `Timeout`. Every outcome updates [`PeerSeen`], which `status` reports as
//! reachability and last contact.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::RPCTypes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TypeConfig;
use crate::auth::{self, ClusterKey};
use crate::model::{Member, NodeId};

/// HTTP paths of the peer RPCs.
pub mod paths {
    /// AppendEntries.
    pub const APPEND: &str = "/raft/append";
    /// RequestVote.
    pub const VOTE: &str = "/raft/vote";
    /// InstallSnapshot (one chunk).
    pub const SNAPSHOT: &str = "/raft/snapshot";
}

/// What this node last saw of a peer through its own RPCs.
#[derive(Clone, Debug, Default)]
pub struct PeerSeen {
    /// Last successful RPC.
    pub last_ok: Option<Instant>,
    /// Last failure, with when it happened.
    pub last_error: Option<(Instant, String)>,
}

/// Shared map of peer observations, written by the network and read by `status`.
pub type PeerTable = Arc<Mutex<HashMap<NodeId, PeerSeen>>>;

/// Builds one [`PeerClient`] per target, each reusing that peer's HTTP client.
#[derive(Debug, Clone)]
pub struct Network {
    me: NodeId,
    key: ClusterKey,
    clients: HashMap<NodeId, reqwest::Client>,
    peers: PeerTable,
    backoff: Duration,
}

impl Network {
    /// A network for node `me`, signing with `key`, recording peer observations in `peers`.
    /// `backoff` is how long openraft waits before retrying an unreachable peer.
    pub fn new(me: NodeId, key: ClusterKey, peers: PeerTable, backoff: Duration) -> Self {
        Network {
            me,
            key,
            clients: HashMap::new(),
            peers,
            backoff,
        }
    }
}

/// The HTTP client settings shared by peer RPCs and API forwarding.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        // Only fails when the TLS backend cannot initialise, which is a broken build.
        .expect("HTTP client")
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        let client = self
            .clients
            .entry(target)
            .or_insert_with(http_client)
            .clone();
        PeerClient {
            me: self.me,
            target,
            node: node.clone(),
            client,
            key: self.key.clone(),
            peers: self.peers.clone(),
            backoff: self.backoff,
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    me: NodeId,
    target: NodeId,
    node: Member,
    client: reqwest::Client,
    key: ClusterKey,
    peers: PeerTable,
    backoff: Duration,
}

impl PeerClient {
    fn note(&self, outcome: Result<(), String>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let seen = peers.entry(self.target).or_default();
        match outcome {
            Ok(()) => seen.last_ok = Some(Instant::now()),
            Err(e) => seen.last_error = Some((Instant::now(), e)),
        }
    }

    async fn call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = self.call_inner(action, path, req, option).await;
        self.note(match &result {
            Ok(_) | Err(RPCError::RemoteError(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
        result
    }

    async fn call_inner<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let url = format!("http://{}{}", self.node.addr, path);
        let mut request = self
            .client
            .post(&url)
            .timeout(option.hard_ttl())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in auth::sign_headers(&self.key, "POST", path, &self.node.name, &body) {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.map_err(|e| {
            if e.is_timeout() {
                RPCError::Timeout(Timeout {
                    action,
                    id: self.me,
                    target: self.target,
                    timeout: option.hard_ttl(),
                })
            } else if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let e = std::io::Error::other(format!(
                "{} rejected our signature: every node needs the same cluster key",
                self.node
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        if !status.is_success() {
            let e = std::io::Error::other(format!("{} answered HTTP {status}", self.node));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply: Result<Resp, E> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RPCTypes::AppendEntries, paths::APPEND, &rpc, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RPCTypes::InstallSnapshot, paths::SNAPSHOT, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, paths::VOTE, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
