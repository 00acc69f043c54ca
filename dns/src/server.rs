//! The wire side: a hickory-server `RequestHandler` over the current compiled snapshot, and
//! [`serve`], which runs it on the sockets it is given until shutdown: UDP through the batched
//! loop of `crate::udp`, TCP through `crate::tcp`.
//!
//! Owns everything about a DNS message that is not the answer itself: EDNS echo and BADVERS,
//! FORMERR for questions it cannot answer, NOTIMP for other opcodes, REFUSED for other classes,
//! the AA/RA bits, truncation (TC) on UDP, the per-source rate limit, following the snapshot
//! watch, and the log lines about fail-open transitions. Answers come from [`crate::Zones`].
//! It must not open sockets (the caller binds them, so tests and the daemon choose addresses), talk
//! to Raft or invent serials.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_net::runtime::Time;
use hickory_net::xfer::Protocol;
use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::answers::{NameState, fail_transitions};
use crate::ratelimit::{Limiter, RateLimit};
use crate::snapshot::Snapshot;
use crate::stats::{Counted, QueryStats, Shard};
use crate::zones::{Answer, Rotor, Zones};

/// How the server runs. `Default` is what the daemon should use unless configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Largest UDP response sent to an EDNS client: the lesser of this and the client's
    /// advertised size. 1232 (the DNS Flag Day 2020 value) avoids IP fragmentation. Clients
    /// without EDNS always get at most 512 bytes.
    pub max_udp_payload: u16,
    /// A TCP connection idle this long (or this slow to send a query or take an answer) is
    /// closed.
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections per listener; further ones are closed at once until some end.
    pub max_tcp_connections: usize,
    /// Open TCP connections per listener from one source address; its further ones are closed
    /// at once, so one source cannot take every slot.
    pub max_tcp_per_source: usize,
    /// Per-source limit for UDP queries; `None` (the default) answers everything. Queries over
    /// the limit are dropped. TCP is not limited: its source cannot be spoofed.
    pub rate_limit: Option<RateLimit>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_udp_payload: 1232,
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_connections: 1024,
            max_tcp_per_source: 16,
            rate_limit: None,
        }
    }
}

/// Why [`serve`] stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A socket could not be inspected at start-up.
    #[error("dns: cannot read the local address of a socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Serves the zones of the latest snapshot on `udp` and `tcp` until `shutdown` completes.
///
/// Every new value on `snapshots` is compiled and served from the next query on; one that fails
/// [`Snapshot::validate`] is logged and the previous one kept (before the first valid one, every
/// question is REFUSED). When the sender is dropped the last snapshot is served until shutdown.
/// Logs `dns listening on udp|tcp ADDR` per socket, and one line per name entering or leaving
/// fail-open / fail-closed; nothing per query above DEBUG.
pub async fn serve(
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_counted(udp, tcp, snapshots, options, QueryStats::new(), shutdown).await
}

/// [`serve`], counting every query by question type and response code into `stats`, which the
/// caller reads (e.g. for metrics) while the server runs.
pub async fn serve_counted(
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    options: ServeOptions,
    stats: QueryStats,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let current = Arc::new(ArcSwap::from_pointee(Zones::empty()));
    let first = snapshots.borrow_and_update().clone();
    install(&current, &first);

    let handler = Handler {
        zones: current.clone(),
        limiter: options.rate_limit.map(|l| Arc::new(Limiter::new(l))),
        max_udp_payload: options.max_udp_payload.max(512),
        // TCP connections share one shard; each UDP loop gets its own below.
        stats: stats.shard(),
    };
    // UDP: one receive loop per socket answering inline (no task or channel per query); give it
    // several SO_REUSEPORT sockets (`bind_udp`) to use several cores.
    let mut udp_loops = JoinSet::new();
    let mut udp_sockets = HashMap::new();
    for socket in udp {
        let addr = socket.local_addr()?;
        info!(%addr, "dns listening on udp {addr}");
        let socket = Arc::new(socket);
        let task = udp_loops.spawn(crate::udp::udp_loop(
            socket.clone(),
            handler.counting_into(stats.shard()),
        ));
        udp_sockets.insert(task.id(), socket);
    }
    let udp_handler = handler.clone();
    // TCP: one accept loop per listener, one task per connection, at most
    // `max_tcp_connections` per listener.
    let mut tcp_loops = JoinSet::new();
    for listener in tcp {
        let addr = listener.local_addr()?;
        info!(%addr, "dns listening on tcp {addr}");
        tcp_loops.spawn(crate::tcp::tcp_loop(
            listener,
            handler.clone(),
            options.tcp_idle_timeout,
            options.max_tcp_connections,
            options.max_tcp_per_source,
        ));
    }

    tokio::pin!(shutdown);
    let mut following = true;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(ended) = udp_loops.join_next_with_id() => {
                // A loop ends only by a panic answering some query or a dead socket; restart the
                // former so one bad packet cannot silence UDP.
                if let Err(e) = ended
                    && e.is_panic()
                    && let Some(socket) = udp_sockets.remove(&e.id())
                {
                    error!("dns udp loop panicked, restarting it: {e}");
                    let task = udp_loops.spawn(crate::udp::udp_loop(
                        socket.clone(),
                        udp_handler.counting_into(stats.shard()),
                    ));
                    udp_sockets.insert(task.id(), socket);
                }
            }
            changed = snapshots.changed(), if following => match changed {
                Ok(()) => {
                    let next = snapshots.borrow_and_update().clone();
                    install(&current, &next);
                }
                Err(_) => {
                    info!("dns snapshot sender closed; serving the last snapshot until shutdown");
                    following = false;
                }
            },
        }
    }
    udp_loops.shutdown().await;
    tcp_loops.shutdown().await;
    info!("dns server stopped");
    Ok(())
}

/// Compiles `snapshot` and makes it the one answered from, logging what changed for operators.
fn install(current: &ArcSwap<Zones>, snapshot: &Snapshot) {
    let zones = match Zones::compile(snapshot) {
        Ok(zones) => zones,
        Err(e) => {
            error!(
                serial = snapshot.serial,
                "dns snapshot rejected, still serving the previous one: {e}"
            );
            return;
        }
    };
    let previous = current.load();
    if zones.serial() < previous.serial() {
        warn!(
            old = previous.serial(),
            new = zones.serial(),
            "dns serial went backwards; secondaries and caches may keep old answers"
        );
    }
    for t in fail_transitions(previous.names(), zones.names()) {
        let from = t.from.map_or_else(|| "new".to_string(), |s| s.to_string());
        let addresses: Vec<String> = t.addresses.iter().map(ToString::to_string).collect();
        let services = t.services.join(",");
        match t.to {
            NameState::FailOpen => warn!(
                name = %t.name, services, from, addresses = ?addresses,
                "dns name {} entered fail-open: no address passes {services}; answering every address offering them",
                t.name
            ),
            NameState::FailClosed => warn!(
                name = %t.name, services, from, "dns name {} entered fail-closed: no address passes {services}; answering no address",
                t.name
            ),
            NameState::Passing => info!(
                name = %t.name, services, from, addresses = ?addresses,
                "dns name {} left {from}: answering the addresses that pass {services}",
                t.name
            ),
        }
    }
    debug!(serial = zones.serial(), "dns snapshot installed");
    current.store(Arc::new(zones));
}

/// Answers every query from the snapshot current when it arrives.
#[derive(Debug, Clone)]
pub(crate) struct Handler {
    zones: Arc<ArcSwap<Zones>>,
    limiter: Option<Arc<Limiter>>,
    max_udp_payload: u16,
    stats: Arc<Shard>,
}

/// What fits into a UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    All,
    WithoutAdditional,
    /// Not even the answer fits: send TC with empty sections so the client retries over TCP.
    Truncated,
}

const HEADER_LEN: usize = 12;
/// An OPT record without options: root name, type, class, TTL, RDLENGTH.
const OPT_LEN: usize = 11;

impl Handler {
    /// This handler counting its queries into `shard` (one per UDP loop).
    fn counting_into(&self, shard: Arc<Shard>) -> Handler {
        Handler {
            stats: shard,
            ..self.clone()
        }
    }

    /// Count a message that was answered FORMERR before it reached the handler.
    pub(crate) fn count_malformed(&self) {
        self.stats
            .count(None, Counted::Answered(ResponseCode::FormErr));
    }

    fn response_edns(&self, request: &Request) -> Option<Edns> {
        request.edns.as_ref().map(|theirs| {
            let mut edns = Edns::new();
            // hickory encodes UDP responses up to the OPT's payload size, so this doubles as the
            // limit for this response.
            edns.set_max_payload(theirs.max_payload().min(self.max_udp_payload));
            edns.set_version(0);
            edns
        })
    }

    /// Decides what of `answer` fits under `limit` bytes, encoding trial messages only when the
    /// records' size bound says it might not fit.
    fn fit(
        &self,
        request: &Request,
        meta: Metadata,
        answer: &Answer<'_>,
        edns: Option<&Edns>,
        limit: usize,
    ) -> Fit {
        let fixed = HEADER_LEN
            + request.queries.as_bytes().len()
            + if edns.is_some() { OPT_LEN } else { 0 };
        if fixed + answer.wire_bound() + answer.additional_wire_bound() <= limit {
            return Fit::All;
        }
        let encodes_whole = |with_additional: bool| -> bool {
            let mut buf = Vec::with_capacity(limit);
            let mut encoder = BinEncoder::new(&mut buf);
            encoder.set_max_size(u16::try_from(limit).unwrap_or(u16::MAX));
            let mut builder = MessageResponseBuilder::new(&request.queries, None);
            if let Some(edns) = edns {
                builder.edns(edns);
            }
            let additional: &[Record] = if with_additional {
                answer.additional()
            } else {
                &[]
            };
            let response =
                builder.build(meta, answer.answers(), answer.authority(), [], additional);
            matches!(response.destructive_emit(&mut encoder), Ok(info) if !info.truncation)
        };
        if encodes_whole(true) {
            Fit::All
        } else if encodes_whole(false) {
            Fit::WithoutAdditional
        } else {
            Fit::Truncated
        }
    }
}

fn info_only(meta: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata: meta,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let qtype = match request.queries.queries() {
            [q] => Some(q.query_type()),
            _ => None,
        };
        if request.protocol() == Protocol::Udp && !self.admit(request.src().ip(), qtype) {
            let mut meta = Metadata::response_from_request(&request.metadata);
            meta.response_code = ResponseCode::Refused;
            return info_only(meta);
        }
        let zones = self.zones.load_full();
        let responded = self.respond(request, response_handle, &zones, None).await;
        self.count(qtype, responded.info.response_code);
        responded.info
    }
}

/// What answering one query produced: what was sent, and the rotation it used.
pub(crate) struct Responded {
    /// The response's header information.
    pub(crate) info: ResponseInfo,
    /// The answer's round-robin position, when its records rotate.
    pub(crate) rotor: Option<Rotor>,
    /// The rotation used (0 when the answer does not rotate).
    pub(crate) rotation: usize,
}

impl Handler {
    /// The snapshot answered from now.
    pub(crate) fn zones(&self) -> arc_swap::Guard<Arc<Zones>> {
        self.zones.load()
    }

    /// Whether a UDP query from `src` passes the rate limit; one that does not is counted as
    /// dropped.
    pub(crate) fn admit(&self, src: IpAddr, qtype: Option<RecordType>) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        if limiter.allow(src, Instant::now()) {
            return true;
        }
        debug!(%src, "dns query over the rate limit dropped");
        self.stats.count(qtype, Counted::Dropped);
        false
    }

    /// Count one answered query.
    pub(crate) fn count(&self, qtype: Option<RecordType>, rcode: ResponseCode) {
        self.stats.count(qtype, Counted::Answered(rcode));
    }

    /// Answer one query that passed the rate limit from `zones`, with the answer rotated by
    /// `rotation`, or by the next round-robin position when `None`.
    pub(crate) async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
        zones: &Zones,
        rotation: Option<usize>,
    ) -> Responded {
        let udp = request.protocol() == Protocol::Udp;
        let mut meta = Metadata::response_from_request(&request.metadata);

        let edns = self.response_edns(request);
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }

        let error = if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.queries.len() != 1 {
            Some(ResponseCode::FormErr)
        } else if request.queries.queries()[0].query_class() != DNSClass::IN {
            Some(ResponseCode::Refused)
        } else {
            None
        };
        if let Some(code) = error {
            let response = builder.error_msg(&request.metadata, code);
            return Responded {
                info: send(&mut response_handle, response, request.src(), meta).await,
                rotor: None,
                rotation: 0,
            };
        }

        let query = &request.queries.queries()[0];
        let answer = match rotation {
            Some(r) => zones.answer_rotated(query.name(), query.query_type(), r),
            None => zones.answer(query.name(), query.query_type()),
        };
        meta.response_code = answer.response_code();
        meta.authoritative = answer.authoritative();

        let fit = if udp {
            let limit = edns.as_ref().map_or(512, Edns::max_payload);
            self.fit(request, meta, &answer, edns.as_ref(), usize::from(limit))
        } else {
            Fit::All
        };
        let info = match fit {
            Fit::All => {
                let response = builder.build(
                    meta,
                    answer.answers(),
                    answer.authority(),
                    [],
                    answer.additional(),
                );
                send(&mut response_handle, response, request.src(), meta).await
            }
            Fit::WithoutAdditional => {
                let response = builder.build(meta, answer.answers(), answer.authority(), [], []);
                send(&mut response_handle, response, request.src(), meta).await
            }
            Fit::Truncated => {
                meta.truncation = true;
                let response = builder.build_no_records(meta);
                send(&mut response_handle, response, request.src(), meta).await
            }
        };
        Responded {
            info,
            rotor: answer.rotor(),
            rotation: answer.rotation(),
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    src: SocketAddr,
    mut meta: Metadata,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            debug!(%src, "dns response not sent: {e}");
            meta.response_code = ResponseCode::ServFail;
            info_only(meta)
        }
    }
}

/// The server's answer path without sockets: what the UDP loop (answer cache included) and a
/// TCP connection do with one message. For fuzzing and tests of the whole path from bytes in to
/// bytes out.
#[derive(Debug)]
pub struct Responder {
    handler: Handler,
    cache: crate::cache::AnswerCache,
    outbox: crate::wire::Outbox,
}

impl Responder {
    /// A responder serving `snapshot` with `options` (an invalid snapshot serves nothing).
    pub fn new(snapshot: &Snapshot, options: &ServeOptions) -> Responder {
        let current = Arc::new(ArcSwap::from_pointee(Zones::empty()));
        install(&current, snapshot);
        let handler = Handler {
            zones: current,
            limiter: options.rate_limit.map(|l| Arc::new(Limiter::new(l))),
            max_udp_payload: options.max_udp_payload.max(512),
            stats: QueryStats::new().shard(),
        };
        let cache = crate::cache::AnswerCache::new(handler.zones().clone());
        Responder {
            handler,
            cache,
            outbox: crate::wire::Outbox::default(),
        }
    }

    /// The answer to `message` received over UDP from `src`, if one is sent.
    pub async fn udp(&mut self, message: &[u8], src: std::net::SocketAddr) -> Option<Vec<u8>> {
        crate::cache::answer_udp(&self.handler, &mut self.cache, message, src, &self.outbox).await;
        self.outbox.take().into_iter().next().map(|(wire, _)| wire)
    }

    /// The answer to `message` received over TCP from `src`, if one is sent.
    pub async fn tcp(&self, message: &[u8], src: std::net::SocketAddr) -> Option<Vec<u8>> {
        crate::wire::answer_message(
            &self.handler,
            message,
            src,
            hickory_net::xfer::Protocol::Tcp,
            &self.outbox,
        )
        .await;
        self.outbox.take().into_iter().next().map(|(wire, _)| wire)
    }
}
