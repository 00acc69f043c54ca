//! The one way a node's requests reach its peers: HTTP through reqwest, or, in a simulation,
//! a [`PeerWire`] that delivers them in memory. Raft RPCs ([`crate::raft::network`]) and every
//! API call between nodes ([`crate::client::ApiClient`]: lease renewals, forwarded proposals,
//! joins) go through [`Http::send`], so a simulated network cuts, delays or duplicates all of
//! them alike.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::auth;

/// One request to a peer.
#[derive(Debug, Clone)]
pub struct WireRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The peer's `host:port`.
    pub addr: String,
    /// Path and query.
    pub path: String,
    /// Headers (signature headers included).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Longest answer body taken.
    pub max_answer: usize,
}

/// A peer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireAnswer {
    /// HTTP status.
    pub status: u16,
    /// The answering node's name (`x-clusterd-node`), if it gave it.
    pub node: Option<String>,
    /// The whole body.
    pub body: Vec<u8>,
    /// With a granted vote: the voter's last contact with an earlier leader
    /// ([`HEADER_CONTACT`]), if it gave it.
    pub contact: Option<String>,
}

/// Response header of a granted vote: `TERM SINCE_MS`, the voter's time since it last
/// acknowledged a leader of a term before TERM (`clusterd_lease::handover`). Earlier builds
/// neither send nor read it.
pub const HEADER_CONTACT: &str = "x-clusterd-contact";

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// None within the request's timeout.
    Timeout,
    /// No connection (refused, no route).
    Connect(String),
    /// The connection failed on the way.
    Failed(String),
    /// The answer is longer than the request allows (the rest was not read).
    TooLong(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Timeout => f.write_str("no answer in time"),
            WireError::Connect(_) => f.write_str("connection refused or no route"),
            WireError::Failed(e) | WireError::TooLong(e) => f.write_str(e),
        }
    }
}

/// What a [`PeerWire`] returns.
pub type WireFuture = Pin<Box<dyn Future<Output = Result<WireAnswer, WireError>> + Send>>;

/// A network in memory (a simulation's), in place of HTTP.
pub trait PeerWire: Send + Sync + fmt::Debug + 'static {
    /// Deliver `req` and bring back the answer.
    fn send(&self, req: WireRequest) -> WireFuture;
}

/// How a node reaches its peers.
#[derive(Clone, Debug)]
pub enum Http {
    /// Real HTTP (one shared connection pool).
    Real(reqwest::Client),
    /// A simulated network.
    Sim(Arc<dyn PeerWire>),
}

impl From<reqwest::Client> for Http {
    fn from(c: reqwest::Client) -> Http {
        Http::Real(c)
    }
}

impl Http {
    /// Send `req` and read the whole answer (at most `req.max_answer` bytes).
    pub async fn send(&self, req: WireRequest) -> Result<WireAnswer, WireError> {
        match self {
            Http::Real(client) => send_http(client, req).await,
            Http::Sim(wire) => wire.send(req).await,
        }
    }
}

async fn send_http(client: &reqwest::Client, req: WireRequest) -> Result<WireAnswer, WireError> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|e| WireError::Failed(e.to_string()))?;
    let mut r = client
        .request(method, format!("http://{}{}", req.addr, req.path))
        .timeout(req.timeout);
    for (name, value) in &req.headers {
        r = r.header(name.as_str(), value.as_str());
    }
    let resp = r.body(req.body).send().await.map_err(|e| {
        if e.is_timeout() {
            WireError::Timeout
        } else if e.is_connect() {
            WireError::Connect(e.to_string())
        } else {
            WireError::Failed(e.to_string())
        }
    })?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let node = header(auth::HEADER_NODE);
    let contact = header(HEADER_CONTACT);
    let body = clusterd_fencing::agent::read_whole(resp, req.max_answer)
        .await
        .map_err(|end| {
            let reason = end.describe(req.max_answer);
            match end {
                clusterd_fencing::agent::BodyEnd::Failed(_) => WireError::Failed(reason),
                _ => WireError::TooLong(reason),
            }
        })?;
    Ok(WireAnswer {
        status,
        node,
        body,
        contact,
    })
}
