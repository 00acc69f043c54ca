//! The HTTP API of a node: Raft RPC for peers and the admin API for `clusterctl`.
//!
//! Every route is behind [`authenticate`]: a request without a valid cluster-key signature gets
//! 401, changes nothing, and is logged at most once per [`UNAUTHORIZED_LOG_EVERY`]. Requests
//! that only the leader can serve are applied locally on the leader and forwarded one hop by
//! other nodes; without a leader they get 503 with what to check.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use openraft::ChangeMembers;
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use tracing::{info, warn};

use crate::auth::{
    self, HEADER_BODY, HEADER_NODE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TARGET, HEADER_TIME,
    Presented,
};
use crate::client::{
    AddMemberRequest, ApiErrorBody, ClientError, EventsQuery, HEADER_FORWARDED, MembershipReply,
    NoteRequest, RemoveMemberQuery, admin_paths,
};
use crate::model::{Applied, Command, Member, NodeId, RefusalKind, Role, node_id};
use crate::node::Shared;
use crate::raft::TypeConfig;
use crate::raft::network::paths;
use crate::raft::propose::{
    LeaderRoute, ProposeError, leader_route, propose, propose_as, write_error,
};
use crate::status::StatusReport;

/// Unauthenticated requests are logged at most this often.
pub const UNAUTHORIZED_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a membership change may take before the API gives up waiting.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(15);

/// An error answer: status and an explanation for the operator.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// The explanation given to the caller.
    pub fn message_text(&self) -> &str {
        &self.message
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Every failed write's status code, in one place.
impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        let status = match e {
            // The leader's answer, or why it could not be had: as for any forwarded request.
            ProposeError::Forward(e) => return ApiError::from(e),
            ProposeError::NoLeader { .. }
            | ProposeError::LeadershipMoving(_)
            | ProposeError::QuorumLost { .. }
            | ProposeError::NotCommitted { .. }
            | ProposeError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProposeError::Refused(ref r) => match r.kind() {
                RefusalKind::Unknown => StatusCode::NOT_FOUND,
                RefusalKind::Invalid => StatusCode::BAD_REQUEST,
                RefusalKind::Conflict => StatusCode::CONFLICT,
            },
            ProposeError::Membership(_) => StatusCode::CONFLICT,
            ProposeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProposeError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api { status, message } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                message,
            ),
            other => ApiError::unavailable(format!("forwarding to the leader failed: {other}")),
        }
    }
}

/// The router of one node.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(paths::APPEND, post(raft_append))
        .route(paths::VOTE, post(raft_vote))
        .route(paths::SNAPSHOT, post(raft_snapshot))
        .route(paths::PREVOTE, post(raft_prevote))
        .route(admin_paths::STATUS, get(get_status))
        .route(admin_paths::HISTORY, get(get_history))
        .route(admin_paths::PROPOSE, post(post_propose))
        .route(admin_paths::NOTE, post(post_note))
        .route(admin_paths::MEMBERS, post(post_member))
        .route(admin_paths::LEASE, post(post_lease))
        .route(admin_paths::DNS, get(get_dns))
        .route(admin_paths::HEALTH, get(get_health))
        .route(admin_paths::FENCE, post(post_fence))
        .route(admin_paths::METRICS, crate::metrics::route())
        .route("/v1/members/{name}", delete(delete_member))
        // `authenticate` reads every body under the limit of its route.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(shared.clone(), authenticate))
        .with_state(shared)
}

/// How long an authenticated client has to send its whole body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of an unauthenticated request's body read (and thrown away) before the 401 is
/// sent, so that a client that sent a small body reads the answer rather than a reset.
const DRAIN_UNAUTHENTICATED: u64 = 16 * 1024;
/// How long that draining may take.
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// Verify the signature of every request before any handler sees it, on its headers alone:
/// the body of a request that is not signed with the cluster key is never read. A signed
/// request's body is then read within its route's limit and [`BODY_TIMEOUT`] and checked
/// against the signed hash.
async fn authenticate(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let limit = crate::raft::network::body_limit(parts.uri.path());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body over {limit} bytes (the limit of {})",
                parts.uri.path()
            ),
        )
        .into_response()
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let now = crate::clock::unix_ms();
    let verdict = shared
        .key
        .verify(
            parts.method.as_str(),
            path,
            Presented {
                time: header(HEADER_TIME),
                nonce: header(HEADER_NONCE),
                target: header(HEADER_TARGET),
                signature: header(HEADER_SIGNATURE),
                body: header(HEADER_BODY),
            },
            now,
            &shared.me,
        )
        .and_then(|signed| {
            crate::lock(&shared.unauthorized)
                .replays
                .admit(signed.time_ms, signed.nonce, now)
        });
    if let Err(e) = verdict {
        if declared.is_some_and(|n| n <= DRAIN_UNAUTHENTICATED) {
            let drain = axum::body::to_bytes(body, DRAIN_UNAUTHENTICATED as usize);
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        }
        return unauthorized(&shared, peer, parts.uri.path(), e);
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
            .into_response();
        }
    };
    if !header(HEADER_BODY).is_some_and(|h| auth::body_matches(h, &bytes)) {
        return unauthorized(
            &shared,
            peer,
            parts.uri.path(),
            auth::AuthError::BodyMismatch,
        );
    }
    let path = parts.uri.path().to_string();
    json_errors(
        next.run(Request::from_parts(parts, Body::from(bytes)))
            .await,
        &path,
    )
    .await
}

/// Most bytes of a plain-text error kept when it is turned into JSON.
const MAX_ERROR_TEXT: usize = 4096;

/// Turn an error answer that is not JSON (axum's own rejections of a body, query or path it
/// cannot parse, an unknown route, a wrong method) into our `{"error": ...}`, so that every
/// error a client sees has one shape.
async fn json_errors(resp: Response, path: &str) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match (status, text.is_empty()) {
        (StatusCode::NOT_FOUND, true) => format!("no such route: {path}"),
        (StatusCode::METHOD_NOT_ALLOWED, true) => format!("method not allowed on {path}"),
        (_, true) => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
        (_, false) => text,
    };
    ApiError::new(status, message).into_response()
}

/// The 401 answer to a request that failed authentication, logged at most once per
/// [`UNAUTHORIZED_LOG_EVERY`].
fn unauthorized(shared: &Shared, peer: SocketAddr, path: &str, e: auth::AuthError) -> Response {
    let mut log = crate::lock(&shared.unauthorized);
    let due = log
        .last
        .is_none_or(|t| crate::clock::since(t) >= UNAUTHORIZED_LOG_EVERY);
    // A client that did not know which node it reached learns it and signs again: routine.
    let routine = matches!(&e, auth::AuthError::WrongTarget { named, .. }
        if named == auth::UNKNOWN_TARGET);
    if due && !routine {
        warn!(
            from = %peer,
            path = %path,
            reason = %e,
            suppressed = log.suppressed,
            "rejected unauthenticated request"
        );
        log.last = Some(crate::clock::now());
        log.suppressed = 0;
    } else if !routine {
        log.suppressed += 1;
    }
    drop(log);
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("unauthorized: {e}; requests must be signed with the cluster key"),
    )
    .into_response();
    if let Ok(me) = axum::http::HeaderValue::from_str(&shared.me) {
        response.headers_mut().insert(HEADER_NODE, me);
    }
    response
}

async fn raft_append(
    State(s): State<Arc<Shared>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    let term = req.vote.leader_id().term;
    // Held until the contact is noted, so a vote's answer never misses this heartbeat.
    let _gate = s.leases.contact_gate.read().await;
    let res = s.raft.append_entries(req).await;
    if let Ok(r) = &res
        && !matches!(r, AppendEntriesResponse::HigherVote(_))
    {
        s.note_leader_contact(term);
    }
    Json(res)
}

/// A vote; a granted one carries this node's last contact with a leader of an earlier term
/// ([`crate::wire::HEADER_CONTACT`], `clusterd_lease::handover`), read once no heartbeat
/// accepted before the vote is still on its way to being noted.
async fn raft_vote(State(s): State<Arc<Shared>>, Json(req): Json<VoteRequest<NodeId>>) -> Response {
    let term = req.vote.leader_id().term;
    let res = s.raft.vote(req).await;
    let granted = res
        .as_ref()
        .is_ok_and(|v| v.vote_granted && v.vote.leader_id().term == term);
    let contact = if granted {
        let _gate = s.leases.contact_gate.write().await;
        let now = crate::clock::now();
        let last = crate::lock(&s.leases.contacts).latest_before(term, now);
        Some(crate::raft::network::contact_header(
            term,
            now.saturating_duration_since(last),
        ))
    } else {
        None
    };
    let mut response = Json(res).into_response();
    if let Some(value) = contact.and_then(|c| axum::http::HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .insert(crate::wire::HEADER_CONTACT, value);
    }
    response
}

async fn raft_prevote(
    State(s): State<Arc<Shared>>,
    Json(req): Json<crate::raft::prevote::PreVote>,
) -> Json<crate::raft::prevote::PreVoteReply> {
    use crate::raft::prevote;
    Json(prevote::answer(
        &req,
        prevote::knows(&s),
        prevote::lease_ms(&s),
    ))
}

async fn raft_snapshot(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let req = match crate::raft::network::decode_snapshot_chunk(&body) {
        Ok(req) => req,
        Err(why) => return ApiError::new(StatusCode::BAD_REQUEST, why).into_response(),
    };
    drop(body);
    let term = req.vote.leader_id().term;
    let _gate = s.leases.contact_gate.read().await;
    let res = s.raft.install_snapshot(req).await;
    if res.is_ok() {
        s.note_leader_contact(term);
    }
    Json(res).into_response()
}

async fn get_status(
    State(s): State<Arc<Shared>>,
    Query(q): Query<EventsQuery>,
) -> Json<StatusReport> {
    let mut report = crate::status::report::build_status(&s, q.limit.unwrap_or(20));
    if q.live.unwrap_or(0) != 0 {
        crate::status::report::add_live_probe_latency(&s, &mut report).await;
    }
    Json(report)
}

async fn get_history(
    State(s): State<Arc<Shared>>,
    Query(q): Query<EventsQuery>,
) -> Json<Vec<Arc<crate::model::Event>>> {
    // Shares the events (serialized as they are), copies no text.
    let replica = s.replica.borrow().clone();
    let limit = q.limit.unwrap_or(usize::MAX);
    let events = &replica.state.events;
    let skip = events.len().saturating_sub(limit);
    Json(events.iter().skip(skip).cloned().collect())
}

async fn post_propose(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(cmd): Json<Command>,
) -> Result<Json<Applied>, ApiError> {
    Ok(Json(propose_as(&s, cmd, is_forwarded(&headers)).await?))
}

async fn post_note(
    State(s): State<Arc<Shared>>,
    Json(req): Json<NoteRequest>,
) -> Result<Json<Applied>, ApiError> {
    if req.text.len() > crate::model::MAX_NOTE_LEN {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the note is {} bytes; keep it under {}",
                req.text.len(),
                crate::model::MAX_NOTE_LEN
            ),
        ));
    }
    let cmd = Command::Note {
        by: s.me.clone(),
        text: req.text,
        at_ms: crate::clock::unix_ms(),
    };
    Ok(Json(propose(&s, cmd).await?))
}

async fn get_dns(State(s): State<Arc<Shared>>) -> Result<Json<crate::status::DnsReport>, ApiError> {
    let replica = s.replica.borrow().clone();
    crate::dns_feed::report(&s.me, &s.config, &replica.state)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{} serves no DNS (no [dns] section in its config)", s.me),
            )
        })
}

async fn get_health(
    State(s): State<Arc<Shared>>,
) -> Json<std::collections::BTreeMap<String, crate::health::view::LocalCheck>> {
    Json(s.probes.snapshot())
}

async fn post_lease(
    State(s): State<Arc<Shared>>,
    Json(req): Json<crate::lease::table::LeaseRequest>,
) -> Result<Json<crate::lease::table::LeaseGrant>, ApiError> {
    crate::lease::grant(&s, &req.node)
        .map(Json)
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(HEADER_FORWARDED)
}

/// Forward the request as it came to the leader, or tell the caller to go on locally.
async fn forward_unless_leader(
    s: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<Option<Response>, ApiError> {
    let within = MEMBERSHIP_TIMEOUT + Duration::from_secs(5);
    forward_unless_leader_within(s, method, path, headers, body, within).await
}

/// [`forward_unless_leader`], waiting up to `within` for the leader's answer.
async fn forward_unless_leader_within(
    s: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
    within: Duration,
) -> Result<Option<Response>, ApiError> {
    match leader_route(s, is_forwarded(headers))? {
        LeaderRoute::Here => Ok(None),
        LeaderRoute::Forward(client) => {
            let client = client.with_timeout(within);
            let (status, bytes) = client
                .send_raw(method.as_str(), path, body, &[(HEADER_FORWARDED, "1")])
                .await?;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok(Some(
                (
                    status,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    bytes,
                )
                    .into_response(),
            ))
        }
    }
}

async fn post_fence(
    State(s): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: crate::client::FenceRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))?;
    let within = s.fencing.deadline() + Duration::from_secs(5);
    if let Some(resp) = forward_unless_leader_within(
        &s,
        &method,
        admin_paths::FENCE,
        &headers,
        body.to_vec(),
        within,
    )
    .await?
    {
        return Ok(resp);
    }
    let node = req.node.clone();
    let metrics = s.raft.metrics().borrow().clone();
    let replica = s.replica.borrow().clone();
    if let Some(refusal) = fence_refusal(&s, &metrics, &replica.state, &req) {
        return Err(ApiError::new(StatusCode::CONFLICT, refusal));
    }
    {
        let mut gate = crate::lock(&s.fencing.gate);
        gate.reset_for(metrics.current_term);
        if !gate.begin(&node) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a fence of {node} is already under way; see `clusterctl status`"),
            ));
        }
    }
    info!(node = %node, "fence requested by an operator");
    let by = format!("operator via {}", s.me);
    crate::fence::run(s.clone(), node, by, metrics.current_term)
        .await
        .map(|reply| Json(reply).into_response())
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e))
}

/// Why an operator's fence of `req.node` is refused, if it is.
fn fence_refusal(
    s: &Shared,
    metrics: &crate::raft::Metrics,
    state: &crate::model::State,
    req: &crate::client::FenceRequest,
) -> Option<String> {
    let node = req.node.as_str();
    let Some(member) = state.members.get(node) else {
        return Some(format!(
            "{node} is not a member; `clusterctl status` lists the members"
        ));
    };
    if !s.fencing.configured(node) {
        return Some(format!(
            "{node} has no fence agent: add [fencing.nodes.{node}] to every node's config{}",
            if member.role == Role::Witness {
                " (a witness holds no addresses and needs none to be safe)"
            } else {
                ""
            }
        ));
    }
    if node == s.me {
        return Some(format!(
            "{node} leads the cluster and would fence itself; restart clusterd on {node} so \
             another node leads, then fence it from there"
        ));
    }
    if req.force {
        return None;
    }
    let voters: Vec<&String> = state
        .members
        .iter()
        .filter(|(_, m)| m.voter)
        .map(|(n, _)| n)
        .collect();
    if member.voter {
        let peers = crate::lock(&s.peers).clone();
        let membership = metrics.membership_config.membership();
        let reachable = |name: &str| {
            name == s.me
                || membership
                    .nodes()
                    .find(|(_, m)| m.name == name)
                    .and_then(|(id, _)| peers.get(id))
                    .and_then(|p| p.last_ok)
                    .is_some_and(|t| crate::clock::since(t) <= s.reachable_within)
        };
        let left = voters
            .iter()
            .filter(|n| n.as_str() != node && reachable(n))
            .count();
        let quorum = voters.len() / 2 + 1;
        if left < quorum {
            return Some(format!(
                "fencing {node} would leave {left} of {} voters reachable, fewer than a quorum \
                 ({quorum}): the cluster would stop deciding anything; bring the other voters \
                 back first, or pass --force",
                voters.len()
            ));
        }
    }
    if member.role == Role::Mail {
        let table = crate::lock(&s.leases.table);
        let lease = s.leases.timings.lease;
        let others_live = state
            .members
            .iter()
            .filter(|(n, m)| n.as_str() != node && m.role == Role::Mail)
            .any(|(n, _)| {
                table
                    .last_grant(n)
                    .is_some_and(|g| crate::clock::since(g) < lease)
            });
        if !others_live && !state.owned_by(node).is_empty() {
            return Some(format!(
                "{node} holds {} and no other mail node holds a lease to take over: fencing it \
                 leaves them unserved; bring another mail node up first, or pass --force",
                state.owned_by(node).join(", ")
            ));
        }
    }
    None
}

fn membership_names(s: &Shared) -> (BTreeSet<NodeId>, Vec<String>, Vec<String>) {
    crate::raft::membership_names(&s.raft.metrics().borrow())
}

fn voter_count_problem(count: usize, force: bool) -> Option<String> {
    if force || count == 3 || count == 5 {
        return None;
    }
    Some(format!(
        "this would leave {count} voters; clusterd runs with 3 or 5 (an even count adds no \
         failure tolerance, fewer than 3 cannot survive a failure). Add or remove a voter to \
         get there, use a witness node as the third voter, or pass --force to accept it"
    ))
}

async fn post_member(
    State(s): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AddMemberRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))?;
    if let Err(problem) = crate::config::check_member_name(&req.name) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, problem));
    }
    if req.addr.parse::<SocketAddr>().is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "address {:?} is not HOST:PORT with an IP, e.g. 192.0.2.14:7400",
                req.addr
            ),
        ));
    }
    if req.role == Role::Witness && !req.voter {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a witness only votes; add it with --voter",
        ));
    }
    if let Some(resp) =
        forward_unless_leader(&s, &method, admin_paths::MEMBERS, &headers, body.to_vec()).await?
    {
        return Ok(resp);
    }
    let id = node_id(&req.name);
    let member = Member {
        name: req.name.clone(),
        addr: req.addr.clone(),
        role: req.role,
    };
    let metrics = s.raft.metrics().borrow().clone();
    let existing = metrics
        .membership_config
        .membership()
        .get_node(&id)
        .cloned();
    let (voter_ids, ..) = membership_names(&s);
    let already_voter = voter_ids.contains(&id);
    if let Some(existing) = &existing
        && existing != &member
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{} is already a member as {} ({:?}); remove it first to change its address or role",
                req.name, existing.addr, existing.role
            ),
        ));
    }
    if req.voter
        && !already_voter
        && let Some(p) = voter_count_problem(voter_ids.len() + 1, req.force)
    {
        return Err(ApiError::new(StatusCode::CONFLICT, p));
    }
    if existing.is_none() {
        let added = tokio::time::timeout(MEMBERSHIP_TIMEOUT, s.raft.add_learner(id, member, true))
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "{} did not catch up within {}s; is it running and reachable at {}?",
                    req.name,
                    MEMBERSHIP_TIMEOUT.as_secs(),
                    req.addr
                ))
            })?;
        added.map_err(write_error)?;
        info!(node = %req.name, addr = %req.addr, "added learner");
    }
    if req.voter && !already_voter {
        let ids: BTreeSet<NodeId> = [id].into();
        tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            s.raft
                .change_membership(ChangeMembers::AddVoterIds(ids), true),
        )
        .await
        .map_err(|_| {
            ApiError::unavailable("membership change did not finish in time; check status")
        })?
        .map_err(write_error)?;
        info!(node = %req.name, "promoted to voter");
    }
    let (_, voters, learners) = membership_names(&s);
    let message = match (existing.is_some(), req.voter, already_voter) {
        (true, false, _) | (true, true, true) => format!("{} is already a member", req.name),
        (_, true, _) => format!("{} added as a voter", req.name),
        (false, false, _) => format!("{} added as a learner", req.name),
    };
    Ok(Json(MembershipReply {
        voters,
        learners,
        message,
    })
    .into_response())
}

async fn delete_member(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<RemoveMemberQuery>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Every member's name passed this check when it joined; anything else is no member.
    if let Err(problem) = crate::config::check_member_name(&name) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, problem));
    }
    // Forwarded as received: a path rebuilt from the decoded name could differ from it.
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    if let Some(resp) = forward_unless_leader(&s, &method, &path, &headers, Vec::new()).await? {
        return Ok(resp);
    }
    let id = node_id(&name);
    let metrics = s.raft.metrics().borrow().clone();
    if metrics
        .membership_config
        .membership()
        .get_node(&id)
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{name} is not a member; `clusterctl status` lists the members"),
        ));
    }
    let (voter_ids, ..) = membership_names(&s);
    let ids: BTreeSet<NodeId> = [id].into();
    let change = if voter_ids.contains(&id) {
        if let Some(p) = voter_count_problem(voter_ids.len() - 1, q.force) {
            return Err(ApiError::new(StatusCode::CONFLICT, p));
        }
        ChangeMembers::RemoveVoters(ids)
    } else {
        ChangeMembers::RemoveNodes(ids)
    };
    tokio::time::timeout(MEMBERSHIP_TIMEOUT, s.raft.change_membership(change, false))
        .await
        .map_err(|_| {
            ApiError::unavailable("membership change did not finish in time; check status")
        })?
        .map_err(write_error)?;
    info!(node = %name, "removed member");
    let (_, voters, learners) = membership_names(&s);
    Ok(Json(MembershipReply {
        voters,
        learners,
        message: format!("{name} removed; stop its clusterd and take it out of the peers lists"),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response) -> (StatusCode, ApiErrorBody) {
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(ApiErrorBody {
            error: format!("not JSON: {}", String::from_utf8_lossy(&bytes)),
        });
        (status, body)
    }

    #[test]
    fn every_failed_write_gets_its_status_code() {
        let code = |e: ProposeError| ApiError::from(e).status;
        let me = || "mx1".to_string();
        assert_eq!(
            code(ProposeError::NoLeader { me: me() }),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            code(ProposeError::QuorumLost {
                me: me(),
                ack_ms: 900
            }),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            code(ProposeError::NotCommitted { me: me() }),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            code(ProposeError::LeadershipMoving("leadership is moving")),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // A refusal's kind picks the code: unknown names 404, malformed requests 400, the
        // rest (the state does not allow it now) 409.
        use crate::model::Refusal;
        let refused = |r| code(ProposeError::Refused(r));
        let drained = Refusal::NotActive {
            node: "mx3".into(),
            ip: "192.0.2.101/24".into(),
        };
        assert_eq!(refused(drained), StatusCode::CONFLICT);
        let unknown = Refusal::UnknownAddress {
            ip: "192.0.2.250/24".into(),
        };
        assert_eq!(refused(unknown), StatusCode::NOT_FOUND);
        assert_eq!(refused(Refusal::EmptyNote), StatusCode::BAD_REQUEST);
        assert_eq!(
            code(ProposeError::Membership("busy".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            code(ProposeError::TooLarge(crate::model::CommandTooLarge {
                bytes: crate::model::MAX_COMMAND_BYTES + 1,
            })),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // The leader's own answer passes through with its status and words.
        let forwarded = ApiError::from(ProposeError::Forward(ClientError::Api {
            status: 409,
            message: "mx3 cannot take 192.0.2.101/24".into(),
        }));
        assert_eq!(forwarded.status, StatusCode::CONFLICT);
        assert_eq!(forwarded.message_text(), "mx3 cannot take 192.0.2.101/24");
        let unreachable = ApiError::from(ProposeError::Forward(ClientError::Api {
            status: 42,
            message: "nonsense".into(),
        }));
        assert_eq!(unreachable.status, StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn a_plain_text_or_empty_error_becomes_the_json_error_body() {
        let plain = (StatusCode::BAD_REQUEST, "Failed to parse the request body").into_response();
        let (status, body) = body_of(json_errors(plain, "/v1/propose").await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body.error, "Failed to parse the request body");
        let empty = StatusCode::NOT_FOUND.into_response();
        let (status, body) = body_of(json_errors(empty, "/v1/nothing").await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body.error, "no such route: /v1/nothing");
        // JSON errors and successes pass untouched.
        let ok = (StatusCode::OK, "fine").into_response();
        assert_eq!(json_errors(ok, "/").await.status(), StatusCode::OK);
    }

    #[test]
    fn membership_changes_keep_three_or_five_voters_unless_forced() {
        for n in [3, 5] {
            assert!(voter_count_problem(n, false).is_none());
        }
        for n in [1, 2, 4, 6] {
            let why = voter_count_problem(n, false).unwrap_or_default();
            assert!(why.contains(&format!("leave {n} voters")) && why.contains("--force"));
            assert!(voter_count_problem(n, true).is_none());
        }
    }
}
