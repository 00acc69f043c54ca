//! Outgoing Raft RPCs over HTTP, signed with the cluster key.
//!
//! One reqwest client per peer, reused for every RPC to it. Each RPC honours openraft's
//! per-call deadline (`RPCOption::hard_ttl`). A peer that refuses connections, or that rejects
//! our signature, maps to `Unreachable` so openraft backs off; a peer that does not answer in
//! time maps to `Timeout`. Every outcome updates [`PeerSeen`], which `status` reports as
//! reachability and last contact.

use crate::lock;
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
use crate::lease::table::VoteAnswers;
use crate::model::{Member, NodeId};
use crate::wire::{Http, WireError, WireRequest};

/// Most entries the leader sends in one AppendEntries (openraft's `max_payload_entries`).
pub const MAX_APPEND_ENTRIES: u64 = 64;
/// Largest AppendEntries body a node accepts: a full batch of the largest entries
/// ([`crate::model::MAX_COMMAND_BYTES`] each, plus the entry's envelope), with room to spare.
pub const APPEND_BODY_LIMIT: usize =
    MAX_APPEND_ENTRIES as usize * (crate::model::MAX_COMMAND_BYTES + 1024) + 64 * 1024;
/// Snapshot bytes sent per InstallSnapshot request (openraft's `snapshot_max_chunk_size`).
pub const SNAPSHOT_CHUNK: u64 = 1024 * 1024;
/// Largest metadata part of a snapshot chunk ([`encode_snapshot_chunk`]).
pub const MAX_CHUNK_META: usize = 64 * 1024;
/// Largest InstallSnapshot body a node accepts: one chunk's bytes as they are, plus its
/// metadata.
pub const SNAPSHOT_BODY_LIMIT: usize = SNAPSHOT_CHUNK as usize + MAX_CHUNK_META;
/// Content type of a snapshot chunk on the wire.
pub const SNAPSHOT_CONTENT_TYPE: &str = "application/vnd.clusterd.snapshot-chunk";

/// A snapshot chunk on the wire: the length of the metadata (4 bytes, big-endian), the
/// request without its data as JSON, then the data's bytes as they are (JSON would spend up to
/// four characters on each byte).
pub fn encode_snapshot_chunk(
    req: &InstallSnapshotRequest<TypeConfig>,
) -> Result<Vec<u8>, serde_json::Error> {
    let meta = serde_json::to_vec(&InstallSnapshotRequest::<TypeConfig> {
        vote: req.vote,
        meta: req.meta.clone(),
        offset: req.offset,
        data: Vec::new(),
        done: req.done,
    })?;
    let len = u32::try_from(meta.len()).unwrap_or(u32::MAX);
    let mut body = Vec::with_capacity(4 + meta.len() + req.data.len());
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(&meta);
    body.extend_from_slice(&req.data);
    Ok(body)
}

/// The request [`encode_snapshot_chunk`] wrote, or why `body` is not one.
pub fn decode_snapshot_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or("a snapshot chunk shorter than its length prefix")?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > MAX_CHUNK_META || len > rest.len() {
        return Err(format!(
            "a snapshot chunk's metadata of {len} bytes (at most {MAX_CHUNK_META}, and no more \
             than the {} bytes that follow)",
            rest.len()
        ));
    }
    let (meta, data) = rest.split_at(len);
    let mut req: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(meta)
        .map_err(|e| format!("a snapshot chunk's metadata does not parse: {e}"))?;
    req.data = data.to_vec();
    Ok(req)
}
/// Largest body of every other request (votes and the admin API).
pub const SMALL_BODY_LIMIT: usize = 128 * 1024;

/// The largest body a request to `path` may carry.
pub fn body_limit(path: &str) -> usize {
    match path {
        paths::APPEND => APPEND_BODY_LIMIT,
        paths::SNAPSHOT => SNAPSHOT_BODY_LIMIT,
        _ => SMALL_BODY_LIMIT,
    }
}

/// How long a client keeps an idle connection for reuse: well under the time a server
/// leaves an idle connection open ([`crate::http_server::HEADER_TIMEOUT`]), so that no request
/// is sent on a connection the server is closing.
pub const CLIENT_IDLE: Duration = Duration::from_secs(5);

/// Largest answer to a Raft RPC a node reads (answers are a vote and a log id or two).
pub const MAX_RPC_ANSWER: usize = 64 * 1024;

/// HTTP paths of the peer RPCs.
pub mod paths {
    /// AppendEntries.
    pub const APPEND: &str = "/raft/append";
    /// RequestVote.
    pub const VOTE: &str = "/raft/vote";
    /// InstallSnapshot (one chunk).
    pub const SNAPSHOT: &str = "/raft/snapshot";
    /// Pre-vote ([`crate::raft::prevote`]).
    pub const PREVOTE: &str = "/raft/prevote";
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
    http: Http,
    budgets: HashMap<NodeId, Arc<Mutex<Batch>>>,
    peers: PeerTable,
    backoff: Duration,
    votes: Arc<Mutex<VoteAnswers>>,
    drift_ppm: u32,
}

/// How many bytes of entries one AppendEntries to a peer carries: openraft 0.9 gives an
/// AppendEntries exactly one heartbeat interval and retries the same batch after a timeout,
/// so a follower that cannot take a full batch that fast (behind, on a slow disk, starved of
/// CPU) would never catch up. The budget halves on every timeout (down to one entry) and
/// doubles after an answer well within the deadline (up to [`APPEND_BODY_LIMIT`]); the rest of
/// a batch goes in later requests (`PartialSuccess`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Bytes of encoded entries to send at most (at least one entry always goes).
    pub bytes: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Batch { bytes: BATCH_START }
    }
}

/// Entry bytes per AppendEntries at first.
const BATCH_START: usize = 64 * 1024;
/// The smallest budget (one entry of this size still goes whole).
const BATCH_MIN: usize = 1024;

impl Batch {
    /// How many of `sizes` (encoded entry sizes, in order) to send: at least one.
    pub fn take(&self, sizes: &[usize]) -> usize {
        let mut total = 0;
        let mut n = 0;
        for s in sizes {
            total += s;
            if n > 0 && total > self.bytes {
                break;
            }
            n += 1;
        }
        n
    }

    /// The peer did not answer within the deadline.
    pub fn timed_out(&mut self) {
        self.bytes = (self.bytes / 2).max(BATCH_MIN);
    }

    /// The peer answered after `took` of a `deadline`.
    pub fn answered(&mut self, took: Duration, deadline: Duration) {
        if took < deadline / 4 {
            self.bytes = (self.bytes * 2).min(APPEND_BODY_LIMIT);
        }
    }
}

impl Network {
    /// A network for node `me`, signing with `key`, recording peer observations in `peers`.
    /// `backoff` is how long openraft waits before retrying an unreachable peer.
    /// Every peer connection goes through `http` (one pool, built once at start). The contacts
    /// that come with granted votes go to `votes`, read back with the cluster's clock drift
    /// bound `drift_ppm` (`clusterd_lease::contact_at`).
    pub fn new(
        me: NodeId,
        key: ClusterKey,
        peers: PeerTable,
        backoff: Duration,
        http: Http,
        votes: Arc<Mutex<VoteAnswers>>,
        drift_ppm: u32,
    ) -> Self {
        Network {
            me,
            key,
            budgets: HashMap::new(),
            http,
            peers,
            backoff,
            votes,
            drift_ppm,
        }
    }
}

/// The HTTP client settings shared by peer RPCs and API forwarding. Building one can fail
/// when the environment is short of resources (it opens files, e.g. with no descriptor left):
/// the daemon builds it once at start and shares it, so a starved node never fails here later.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(CLIENT_IDLE)
        .tcp_nodelay(true)
        .build()
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        let client = self.http.clone();
        PeerClient {
            me: self.me,
            target,
            node: node.clone(),
            client,
            batch: self.budgets.entry(target).or_default().clone(),
            key: self.key.clone(),
            peers: self.peers.clone(),
            backoff: self.backoff,
            votes: self.votes.clone(),
            drift_ppm: self.drift_ppm,
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    me: NodeId,
    target: NodeId,
    node: Member,
    client: Http,
    batch: Arc<Mutex<Batch>>,
    key: ClusterKey,
    peers: PeerTable,
    backoff: Duration,
    votes: Arc<Mutex<VoteAnswers>>,
    drift_ppm: u32,
}

impl PeerClient {
    fn note(&self, outcome: Result<(), String>) {
        let mut peers = crate::lock(&self.peers);
        let seen = peers.entry(self.target).or_default();
        match outcome {
            Ok(()) => seen.last_ok = Some(crate::clock::now()),
            Err(e) => seen.last_error = Some((crate::clock::now(), e)),
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
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call_answer(action, path, body, "application/json", option)
            .await
            .map(|(resp, _)| resp)
    }

    /// [`PeerClient::call`] with a body already encoded as `content_type`, also returning the
    /// answer's [`crate::wire::HEADER_CONTACT`].
    async fn call_answer<Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
        option: &RPCOption,
    ) -> Result<(Resp, Option<String>), RPCError<NodeId, Member, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result = self
            .call_inner(action, path, body, content_type, option)
            .await;
        self.note(match &result {
            Ok(_) | Err(RPCError::RemoteError(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
        result
    }

    async fn call_inner<Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
        option: &RPCOption,
    ) -> Result<(Resp, Option<String>), RPCError<NodeId, Member, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut headers = vec![("content-type".to_string(), content_type.to_string())];
        headers.extend(
            auth::sign_headers(&self.key, "POST", path, &self.node.name, &body)
                .into_iter()
                .map(|(n, v)| (n.to_string(), v)),
        );
        let answer = self
            .client
            .send(WireRequest {
                method: "POST".into(),
                addr: self.node.addr.clone(),
                path: path.to_string(),
                headers,
                body,
                timeout: option.hard_ttl(),
                max_answer: MAX_RPC_ANSWER,
            })
            .await
            .map_err(|e| match e {
                WireError::Timeout => RPCError::Timeout(Timeout {
                    action,
                    id: self.me,
                    target: self.target,
                    timeout: option.hard_ttl(),
                }),
                WireError::Connect(reason) => {
                    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(reason)))
                }
                WireError::Failed(reason) | WireError::TooLong(reason) => RPCError::Network(
                    NetworkError::new(&std::io::Error::other(format!("{}: {reason}", self.node))),
                ),
            })?;
        if answer.status == 401 {
            let e = std::io::Error::other(format!(
                "{} rejected our signature: every node needs the same cluster key",
                self.node
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        if !(200..300).contains(&answer.status) {
            let e = std::io::Error::other(format!("{} answered HTTP {}", self.node, answer.status));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let bytes = answer.body;
        let reply: Result<Resp, E> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map(|r| (r, answer.contact)).map_err(|e| {
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
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        // Send as much of the batch as the peer's budget allows (see `Batch`).
        let all = rpc.entries.len();
        if all > 1 {
            let sizes: Vec<usize> = rpc
                .entries
                .iter()
                .map(|e| serde_json::to_vec(e).map_or(usize::MAX, |v| v.len()))
                .collect();
            let n = lock(&self.batch).take(&sizes);
            rpc.entries.truncate(n);
        }
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        let started = crate::clock::now();
        let result = self
            .call(RPCTypes::AppendEntries, paths::APPEND, &rpc, &option)
            .await;
        match &result {
            Err(RPCError::Timeout(_)) => lock(&self.batch).timed_out(),
            Ok(_) => lock(&self.batch).answered(crate::clock::since(started), option.hard_ttl()),
            Err(_) => {}
        }
        match result {
            Ok(AppendEntriesResponse::Success) if rpc.entries.len() < all => {
                Ok(AppendEntriesResponse::PartialSuccess(last_sent))
            }
            other => other,
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body =
            encode_snapshot_chunk(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call_answer(
            RPCTypes::InstallSnapshot,
            paths::SNAPSHOT,
            body,
            SNAPSHOT_CONTENT_TYPE,
            &option,
        )
        .await
        .map(|(resp, _)| resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let body =
            serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let (resp, contact): (VoteResponse<NodeId>, _) = self
            .call_answer(
                RPCTypes::Vote,
                paths::VOTE,
                body,
                "application/json",
                &option,
            )
            .await?;
        let received = crate::clock::now();
        let term = rpc.vote.leader_id().term;
        if resp.vote_granted
            && resp.vote.leader_id().term == term
            && let Some(since) = contact.as_deref().and_then(|c| parse_contact(c, term))
        {
            let at = clusterd_lease::contact_at(received, since, self.drift_ppm);
            lock(&self.votes).record(term, self.target, at);
        }
        Ok(resp)
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}

/// The [`crate::wire::HEADER_CONTACT`] value a voter sends with a vote granted in `term`.
pub fn contact_header(term: u64, since: Duration) -> String {
    format!("{term} {}", since.as_millis())
}

/// The time since the voter's last contact with an earlier leader, from a
/// [`crate::wire::HEADER_CONTACT`] value, if it is well formed and about `term`.
pub fn parse_contact(value: &str, term: u64) -> Option<Duration> {
    let (t, since) = value.split_once(' ')?;
    (t.parse::<u64>().ok()? == term).then_some(())?;
    since.parse::<u64>().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_header_reads_back_only_for_its_own_term_and_when_well_formed() {
        let h = contact_header(7, Duration::from_millis(1234));
        assert_eq!(h, "7 1234");
        assert_eq!(parse_contact(&h, 7), Some(Duration::from_millis(1234)));
        assert_eq!(parse_contact(&h, 8), None);
        for bad in [
            "",
            "7",
            "7 ",
            "x 5",
            "7 -1",
            "7 1.5",
            "7 99999999999999999999",
        ] {
            assert_eq!(parse_contact(bad, 7), None, "{bad:?}");
        }
    }

    fn chunk(data: Vec<u8>) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: openraft::Vote::new_committed(3, 7),
            meta: openraft::SnapshotMeta {
                last_log_id: Some(openraft::LogId::new(
                    openraft::CommittedLeaderId::new(3, 7),
                    42,
                )),
                last_membership: Default::default(),
                snapshot_id: "3-42".into(),
            },
            offset: 1024,
            data,
            done: false,
        }
    }

    #[test]
    fn a_snapshot_chunk_travels_as_its_bytes_and_comes_back_whole() {
        let data: Vec<u8> = (0..=255u8).cycle().take(SNAPSHOT_CHUNK as usize).collect();
        let req = chunk(data.clone());
        let body = encode_snapshot_chunk(&req).unwrap();
        // The data costs one byte per byte: a full chunk fits the route's limit.
        assert!(body.len() <= SNAPSHOT_BODY_LIMIT, "{} bytes", body.len());
        assert!(body.len() < data.len() + 1024);
        let back = decode_snapshot_chunk(&body).unwrap();
        assert_eq!(back.data, data);
        assert_eq!(back.offset, 1024);
        assert_eq!(back.meta.snapshot_id, "3-42");
        assert_eq!(back.vote, req.vote);
        assert!(!back.done);
    }

    #[test]
    fn a_malformed_snapshot_chunk_is_refused_not_trusted() {
        let good = encode_snapshot_chunk(&chunk(vec![1, 2, 3])).unwrap();
        assert!(decode_snapshot_chunk(&[]).is_err());
        assert!(decode_snapshot_chunk(&[0, 0]).is_err());
        // A length past the end, or past the metadata limit.
        let mut long = good.clone();
        long[..4].copy_from_slice(&(good.len() as u32).to_be_bytes());
        assert!(decode_snapshot_chunk(&long).is_err());
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_snapshot_chunk(&huge).is_err());
        // Metadata that is not the request's.
        let mut garbled = good.clone();
        garbled[4] = b'[';
        assert!(decode_snapshot_chunk(&garbled).is_err());
        assert_eq!(decode_snapshot_chunk(&good).unwrap().data, vec![1, 2, 3]);
    }

    #[test]
    fn a_batch_takes_entries_up_to_its_budget_and_always_one() {
        let b = Batch { bytes: 3000 };
        assert_eq!(b.take(&[1000, 1000, 1000, 1000]), 3);
        assert_eq!(b.take(&[1000, 1000, 1001]), 2);
        // One entry larger than the budget still goes, alone.
        assert_eq!(b.take(&[65_000, 10]), 1);
        assert_eq!(b.take(&[]), 0);
    }

    #[test]
    fn the_budget_halves_on_timeouts_to_a_floor_and_grows_back_on_quick_answers() {
        let mut b = Batch::default();
        let deadline = Duration::from_millis(50);
        for _ in 0..20 {
            b.timed_out();
        }
        assert_eq!(b.bytes, BATCH_MIN);
        // A slow answer (over a quarter of the deadline) keeps it where it is.
        b.answered(Duration::from_millis(20), deadline);
        assert_eq!(b.bytes, BATCH_MIN);
        b.answered(Duration::from_millis(5), deadline);
        assert_eq!(b.bytes, 2 * BATCH_MIN);
        for _ in 0..30 {
            b.answered(Duration::from_millis(1), deadline);
        }
        assert_eq!(b.bytes, APPEND_BODY_LIMIT);
    }
}
