//! The HTTP server under the API and metrics listeners, bounded against clients that hold
//! connections open: a connection cap in total and per source address, a time limit on
//! reading a request's headers (which also closes idle keep-alive connections), and a small
//! header buffer.
//!
//! Member nodes are told apart by their source address. They are capped per address only, so
//! that strangers filling the shared pool never lock the cluster's own traffic out; everyone
//! else (operators, Prometheus, attackers) shares [`Bounds::max_connections`] and gets at most
//! [`Bounds::max_per_source`] each. A connection over a cap is closed as soon as it is
//! accepted, counted in [`Stats`] and logged at most once per [`REFUSAL_LOG_EVERY`].
//!
//! What a request may then do (its body, its signature) is the router's business
//! (`api::authenticate`). This module knows nothing of Raft or of the cluster.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::lock;

/// Connections open at once from sources that are not member nodes, all together.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections open at once from one source address that is not a member node.
pub const MAX_PER_SOURCE: usize = 16;
/// Connections open at once from one member node's address (Raft, leases, health reports,
/// forwarded requests and `status` all share a peer's connection pool).
pub const MAX_PER_MEMBER: usize = 64;
/// Time a client has to send a request's headers once the connection is open or idle: the
/// bound on slow header senders and on idle keep-alive connections. Kept above the clients'
/// own idle time (`raft::network::CLIENT_IDLE`), so that a server never closes a connection
/// a client is about to reuse.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes buffered while reading one request's headers (hyper's smallest allowed buffer).
pub const MAX_HEADER_BYTES: usize = 8192;
/// How long in-flight requests may take to finish when the server stops.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);
/// How often a refused connection is logged at most.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after an accept error (descriptors or memory exhausted), before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`MAX_PER_SOURCE`].
    pub max_per_source: usize,
    /// See [`MAX_PER_MEMBER`].
    pub max_per_member: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_connections: MAX_CONNECTIONS,
            max_per_source: MAX_PER_SOURCE,
            max_per_member: MAX_PER_MEMBER,
        }
    }
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address already had its share.
    PerSource,
    /// Non-member connections as a whole were at their cap.
    Total,
}

impl Refusal {
    /// The metrics label.
    pub fn token(self) -> &'static str {
        match self {
            Refusal::PerSource => "per_source",
            Refusal::Total => "total",
        }
    }
}

/// Who holds how many connections: pure bookkeeping, no IO.
#[derive(Debug, Default)]
pub struct Admission {
    by_source: HashMap<IpAddr, usize>,
    strangers: usize,
}

impl Admission {
    /// Count a new connection from `source` if the bounds allow it.
    pub fn admit(&mut self, source: IpAddr, member: bool, b: &Bounds) -> Result<(), Refusal> {
        let held = self.by_source.get(&source).copied().unwrap_or(0);
        let share = if member {
            b.max_per_member
        } else {
            b.max_per_source
        };
        if held >= share {
            return Err(Refusal::PerSource);
        }
        if !member && self.strangers >= b.max_connections {
            return Err(Refusal::Total);
        }
        *self.by_source.entry(source).or_default() += 1;
        if !member {
            self.strangers += 1;
        }
        Ok(())
    }

    /// A connection [`Admission::admit`] counted has closed.
    pub fn release(&mut self, source: IpAddr, member: bool) {
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
        if !member {
            self.strangers = self.strangers.saturating_sub(1);
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.by_source.values().sum()
    }
}

/// One server's connections (who holds how many) and refusals, read by the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    admission: Mutex<Admission>,
    refused_per_source: AtomicU64,
    refused_total: AtomicU64,
}

impl Stats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.admission).open()
    }

    /// Connections closed at accept, by [`Refusal`].
    pub fn refused(&self) -> [(Refusal, u64); 2] {
        [
            (
                Refusal::PerSource,
                self.refused_per_source.load(Ordering::Relaxed),
            ),
            (Refusal::Total, self.refused_total.load(Ordering::Relaxed)),
        ]
    }

    fn count(&self, r: Refusal) {
        match r {
            Refusal::PerSource => &self.refused_per_source,
            Refusal::Total => &self.refused_total,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// Tells member nodes' source addresses apart (see the module documentation).
pub type IsMember = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Serve `app` on `listener` within `bounds` until `stop` turns true, then let in-flight
/// requests finish for up to [`DRAIN_TIME`]. Handlers see the client's address as
/// `ConnectInfo<SocketAddr>`. `name` names the listener in logs.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    is_member: IsMember,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut refusals = RefusalLog::default();
    let mut accept_errors = RefusalLog::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or memory: the listener stays, the next accept may work.
                if accept_errors.due() {
                    warn!(listener = name, error = %e, suppressed = accept_errors.suppressed,
                        "cannot accept a connection; trying again");
                    accept_errors.logged();
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let source = peer.ip().to_canonical();
        let member = is_member(source);
        let admitted = lock(&stats.admission).admit(source, member, &bounds);
        if let Err(refusal) = admitted {
            stats.count(refusal);
            if refusals.due() {
                warn!(listener = name, from = %peer, cap = refusal.token(),
                    suppressed = refusals.suppressed,
                    "too many connections: closed a new one at once");
                refusals.logged();
            }
            drop(stream);
            continue;
        }
        let ticket = Ticket {
            stats: stats.clone(),
            source,
            member,
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_one(stream, peer, app.clone(), stop.clone(), ticket));
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            listener = name,
            left = connections.len(),
            "connections still open after the drain time: closed"
        );
    }
    connections.shutdown().await;
}

/// One admitted connection's place in the counts, given back when it closes.
struct Ticket {
    stats: Arc<Stats>,
    source: IpAddr,
    member: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.stats.admission).release(self.source, self.member);
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<bool>,
    _ticket: Ticket,
) {
    let service = app.map_request(move |req: axum::http::Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let service = TowerToHyperService::new(service.map_err(|e: Infallible| match e {}));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    debug!(from = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A log line at most every [`REFUSAL_LOG_EVERY`], counting what it left out.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn due(&mut self) -> bool {
        let due = self
            .last
            .is_none_or(|t| crate::clock::since(t) >= REFUSAL_LOG_EVERY);
        if !due {
            self.suppressed += 1;
        }
        due
    }

    fn logged(&mut self) {
        self.last = Some(crate::clock::now());
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const SMALL: Bounds = Bounds {
        max_connections: 3,
        max_per_source: 2,
        max_per_member: 4,
    };

    #[test]
    fn a_source_gets_its_share_and_not_one_more() {
        let mut a = Admission::default();
        let x = ip("198.51.100.1");
        assert_eq!(a.admit(x, false, &SMALL), Ok(()));
        assert_eq!(a.admit(x, false, &SMALL), Ok(()));
        assert_eq!(a.admit(x, false, &SMALL), Err(Refusal::PerSource));
        a.release(x, false);
        assert_eq!(a.admit(x, false, &SMALL), Ok(()));
        assert_eq!(a.open(), 2);
    }

    #[test]
    fn strangers_together_stop_at_the_total_and_members_still_get_in() {
        let mut a = Admission::default();
        for s in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
            assert_eq!(a.admit(ip(s), false, &SMALL), Ok(()));
        }
        assert_eq!(
            a.admit(ip("198.51.100.4"), false, &SMALL),
            Err(Refusal::Total)
        );
        let peer = ip("192.0.2.11");
        for _ in 0..4 {
            assert_eq!(a.admit(peer, true, &SMALL), Ok(()));
        }
        assert_eq!(a.admit(peer, true, &SMALL), Err(Refusal::PerSource));
        // A member closing does not make room for strangers; a stranger closing does.
        a.release(peer, true);
        assert_eq!(
            a.admit(ip("198.51.100.4"), false, &SMALL),
            Err(Refusal::Total)
        );
        a.release(ip("198.51.100.1"), false);
        assert_eq!(a.admit(ip("198.51.100.4"), false, &SMALL), Ok(()));
        assert_eq!(a.open(), 6);
    }

    #[test]
    fn releasing_everything_leaves_no_trace() {
        let mut a = Admission::default();
        let x = ip("2001:db8::1");
        a.admit(x, false, &SMALL).unwrap();
        a.admit(x, true, &SMALL).unwrap();
        a.release(x, false);
        a.release(x, true);
        assert_eq!(a.open(), 0);
        assert!(a.by_source.is_empty());
        assert_eq!(a.strangers, 0);
        // A release of something never admitted does not underflow.
        a.release(x, false);
        assert_eq!(a.strangers, 0);
    }

    #[test]
    fn refusal_log_lets_one_line_through_per_period_and_counts_the_rest() {
        let mut l = RefusalLog::default();
        assert!(l.due());
        l.logged();
        assert!(!l.due());
        assert!(!l.due());
        assert_eq!(l.suppressed, 2);
    }
}
