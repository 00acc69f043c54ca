//! A signed HTTP client for the admin API, used by `clusterctl`, by nodes forwarding requests to
//! the leader, and by tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{self, ClusterKey};
use crate::model::Role;
use crate::raft::network::http_client;
use crate::wire::{Http, WireError, WireRequest};

/// Header marking a request already forwarded once (no second hop).
pub const HEADER_FORWARDED: &str = "x-clusterd-forwarded";

/// Admin API paths.
pub mod admin_paths {
    /// `GET`: the status report.
    pub const STATUS: &str = "/v1/status";
    /// `GET`: history events.
    pub const HISTORY: &str = "/v1/history";
    /// `POST`: propose a model command (leader).
    pub const PROPOSE: &str = "/v1/propose";
    /// `POST`: add an operator note to the history.
    pub const NOTE: &str = "/v1/note";
    /// `POST`: add a member; `DELETE /v1/members/NAME`: remove one.
    pub const MEMBERS: &str = "/v1/members";
    /// `GET`: what this node's DNS answers now.
    pub const DNS: &str = "/v1/dns";
    /// `GET`: this node's own probes, last result of each (not forwarded).
    pub const HEALTH: &str = "/v1/health";
    /// `POST`: grant or renew an address lease (leader only, never forwarded: the holder
    /// measures its lease from its own send time and must reach the leader itself).
    pub const LEASE: &str = "/v1/lease";
    /// `POST`: fence a node now (leader; an operator's `clusterctl fence`).
    pub const FENCE: &str = "/v1/fence";
    /// `GET`: this node's metrics in the Prometheus text format (not forwarded).
    pub const METRICS: &str = "/metrics";
}

/// Error body of every non-2xx admin answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// Body of `POST /v1/note`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NoteRequest {
    /// The note.
    pub text: String,
}

/// Body of `POST /v1/members`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddMemberRequest {
    /// Member name.
    pub name: String,
    /// Its API `host:port`.
    pub addr: String,
    /// Its role.
    pub role: Role,
    /// Make it a voter (after it caught up as a learner).
    #[serde(default)]
    pub voter: bool,
    /// Accept a voter count other than 3 or 5.
    #[serde(default)]
    pub force: bool,
}

/// Query of `DELETE /v1/members/NAME`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RemoveMemberQuery {
    /// Accept a voter count other than 3 or 5.
    #[serde(default)]
    pub force: bool,
}

/// Membership after a change.
#[derive(Debug, Serialize, Deserialize)]
pub struct MembershipReply {
    /// Voter names.
    pub voters: Vec<String>,
    /// Learner names.
    pub learners: Vec<String>,
    /// What happened.
    pub message: String,
}

/// Query of the status and history routes.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EventsQuery {
    /// How many recent events to include.
    pub limit: Option<usize>,
    /// `status` only: also ask every mail node for its probes' last latency (`live=1`). Costs
    /// a request per node; `clusterctl status` asks for it, pollers should not.
    #[serde(default)]
    pub live: Option<u8>,
}

/// Body of `POST /v1/fence`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FenceRequest {
    /// The node to fence.
    pub node: String,
    /// Fence even if that leaves the cluster without a quorum or without a live mail node.
    #[serde(default)]
    pub force: bool,
}

/// Answer of `POST /v1/fence`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FenceReply {
    /// The node.
    pub node: String,
    /// The agent used.
    pub agent: String,
    /// What it answered.
    pub reply: String,
}

/// Largest answer the client reads: twice the largest replicated state (a whole history in one
/// answer fits), so that no node, however broken, can make a reader hold more.
pub const MAX_ANSWER_BYTES: usize = 2 * crate::model::MAX_STATE_BYTES;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect or no answer in time.
    #[error("cannot reach clusterd at {addr}: {reason}")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// The transport error.
        reason: String,
    },
    /// The node refused our signature.
    #[error(
        "clusterd at {addr} refused our credentials (401: {reason}): use the cluster's key file (--key-file or key_file in the config)"
    )]
    Unauthorized {
        /// `host:port`.
        addr: String,
        /// What the node said.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The node's explanation.
        message: String,
    },
    /// No HTTP client could be built.
    #[error("cannot set up an HTTP client: {reason}")]
    Setup {
        /// Why.
        reason: String,
    },
    /// The answer could not be decoded.
    #[error("unexpected answer from {addr}: {reason}")]
    Decode {
        /// `host:port`.
        addr: String,
        /// The decode error.
        reason: String,
    },
}

impl ClientError {
    /// Whether trying again (or another node) may help: unreachable, or no leader right now.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Api { status: 503, .. }
        )
    }
}

/// A client for one node's admin API.
///
/// Every request is signed for the node it goes to (see [`auth`]). A client made for an
/// address without the node's name learns the name from the node's first refusal and signs
/// again, once.
#[derive(Clone, Debug)]
pub struct ApiClient {
    addr: String,
    key: ClusterKey,
    http: Http,
    timeout: Duration,
    /// The name of the node at `addr`, once known (shared by clones for the same address).
    node: Arc<Mutex<Option<String>>>,
}

impl ApiClient {
    /// A client for the node at `addr` (`host:port`), whose name it learns on first contact,
    /// with an HTTP client of its own (clusterctl, tests). Fails when the environment cannot
    /// give it one (e.g. no file descriptor left).
    pub fn new(addr: impl Into<String>, key: ClusterKey) -> Result<Self, ClientError> {
        let http = http_client().map_err(|e| ClientError::Setup {
            reason: e.to_string(),
        })?;
        Ok(Self::with_http(http, addr, key))
    }

    /// A client for the node at `addr` sharing `http` (the daemon's one connection pool, or a
    /// simulated network).
    pub fn with_http(http: impl Into<Http>, addr: impl Into<String>, key: ClusterKey) -> Self {
        ApiClient {
            addr: addr.into(),
            key,
            http: http.into(),
            timeout: Duration::from_secs(10),
            node: Arc::default(),
        }
    }

    /// The same client, for the node named `node` (requests are signed for it).
    pub fn for_node(self, node: impl Into<String>) -> Self {
        ApiClient {
            node: Arc::new(Mutex::new(Some(node.into()))),
            ..self
        }
    }

    /// A client for another node with the same key, deadline and connection pool.
    pub fn clone_to(&self, addr: impl Into<String>) -> Self {
        ApiClient {
            addr: addr.into(),
            node: Arc::default(),
            ..self.clone()
        }
    }

    fn node(&self) -> Option<String> {
        crate::lock(&self.node).clone()
    }

    /// Use another per-request deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The node's `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send("GET", path, Vec::new(), &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        self.send("POST", path, bytes, &[]).await
    }

    /// `DELETE path`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send("DELETE", path, Vec::new(), &[]).await
    }

    /// Send a request with an arbitrary method and raw body, plus extra headers.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        extra_headers: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.send_raw(method, path, body, extra_headers).await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ApiErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })
    }

    /// Send a signed request and return the status and body as they came (401 is an error).
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        extra_headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let named = self.node();
        let target = named.as_deref().unwrap_or(auth::UNKNOWN_TARGET);
        let resp = self
            .send_once(method, path, target, body.clone(), extra_headers)
            .await?;
        let resp = match resp {
            Answer::Refused {
                node: Some(node), ..
            } if named.as_ref() != Some(&node) => {
                // The node we reached is not (or not known to be) the one we signed for: sign
                // again for it, once.
                *crate::lock(&self.node) = Some(node.clone());
                self.send_once(method, path, &node, body, extra_headers)
                    .await?
            }
            other => other,
        };
        match resp {
            Answer::Refused { reason, .. } => Err(ClientError::Unauthorized {
                addr: self.addr.clone(),
                reason,
            }),
            Answer::Done(status, bytes) => Ok((status, bytes)),
        }
    }

    async fn send_once(
        &self,
        method: &str,
        path: &str,
        target: &str,
        body: Vec<u8>,
        extra_headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        headers.extend(
            auth::sign_headers(&self.key, method, path, target, &body)
                .into_iter()
                .map(|(n, v)| (n.to_string(), v)),
        );
        headers.extend(
            extra_headers
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string())),
        );
        let answer = self
            .http
            .send(WireRequest {
                method: method.to_string(),
                addr: self.addr.clone(),
                path: path.to_string(),
                headers,
                body,
                timeout: self.timeout,
                max_answer: MAX_ANSWER_BYTES,
            })
            .await
            .map_err(|e| {
                let addr = self.addr.clone();
                match e {
                    // A connection that broke may work next time; an answer too long will not.
                    WireError::TooLong(reason) => ClientError::Decode { addr, reason },
                    other => ClientError::Unreachable {
                        addr,
                        reason: other.to_string(),
                    },
                }
            })?;
        let (status, node, bytes) = (answer.status, answer.node, answer.body);
        if status == 401 {
            let reason = serde_json::from_slice::<ApiErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Ok(Answer::Refused { node, reason });
        }
        Ok(Answer::Done(status, bytes))
    }
}

/// One answer: refused (401, with the answering node's name if it gave it), or anything else.
enum Answer {
    Refused {
        node: Option<String>,
        reason: String,
    },
    Done(u16, Vec<u8>),
}

/// Run `f` until it succeeds or fails for good: retryable errors (unreachable, no leader yet)
/// are tried again up to 5 times, 400 ms apart.
pub async fn with_retries<T, F, Fut>(mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if e.is_retryable() && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            other => return other,
        }
    }
}
