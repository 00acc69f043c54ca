//! `clusterd-dns`: the authoritative, round-robin DNS server of a clusterd mail node.
//!
//! Every mail node answers the same zones from its own replica of the cluster state, so DNS stays
//! up while any node is. The daemon maps its replicated model into a [`Snapshot`] (names, the
//! services they need, floating addresses with the services that pass on their current owner,
//! nameservers, a serial taken from replicated state) and sends it through a
//! `tokio::sync::watch`; [`serve`] answers from the latest one.
//!
//! Layout, from pure to effectful:
//! - [`snapshot`]: the input types and their validation.
//! - [`answers`]: which addresses a name answers (service filter, fail open/closed), the
//!   per-name view for `clusterctl dns`, fail-open transitions.
//! - [`zones`]: a snapshot compiled into records; the answer to one question (NXDOMAIN vs NODATA,
//!   REFUSED, SOA in negative answers, glue, rotation).
//! - [`ratelimit`]: per-source token buckets.
//! - [`stats`]: query counters by type and response code (a shard per UDP loop, no locks).
//! - [`server`]: the hickory-server handler (EDNS, TC, FORMERR, rate limit) and [`serve`].
//! - `wire` (one message in, one encoded response out), `udp` (`recvmmsg`/`sendmmsg` batches)
//!   and `tcp` (framing, idle timeout, connection cap): the transports in front of the handler.
//! - [`bind`]: opening the sockets (several `SO_REUSEPORT` UDP sockets for multi-core).
//!
//! Wiring it into a daemon:
//!
//! ```no_run
//! # async fn wire() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use clusterd_dns::{ServeOptions, Snapshot, bind_tcp, bind_udp, serve};
//!
//! let addr = "192.0.2.11:53".parse()?;
//! let first = Snapshot { serial: 1, ttl: 30, fail_open: true, zones: vec![] };
//! first.validate()?; // at start-up, so bad config fails loudly
//! let (snapshots, rx) = tokio::sync::watch::channel(Arc::new(first));
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(serve(
//!     bind_udp(addr, 2)?, // one SO_REUSEPORT socket per core
//!     vec![bind_tcp(addr)?],
//!     rx,
//!     ServeOptions::default(),
//!     async move { let _ = stopped.await; },
//! ));
//! // After every applied change that alters an answer, with a serial from replicated state:
//! snapshots.send_replace(Arc::new(Snapshot { serial: 2, ttl: 30, fail_open: true, zones: vec![] }));
//! // At shutdown:
//! let _ = stop.send(());
//! server.await??;
//! # Ok(()) }
//! ```
//!
//! Deliberately absent: any dependency on the `clusterd` crate or Raft, zone files, zone
//! transfers, DNSSEC, recursion. The server never invents a serial.

pub mod answers;
pub mod bind;
mod cache;
pub mod example;
pub mod ratelimit;
pub mod server;
pub mod snapshot;
pub mod stats;
mod tcp;
mod udp;
mod wire;
pub mod zones;

pub use answers::{FailTransition, NameAnswer, NameState, fail_transitions, name_answers};
pub use bind::{bind_tcp, bind_udp};
pub use ratelimit::RateLimit;
pub use server::{Responder, ServeError, ServeOptions, serve, serve_counted};
pub use snapshot::{Address, NameServer, Snapshot, SnapshotError, Srv, Zone};
pub use stats::{QueryCount, QueryStats};
pub use zones::{Answer, Outcome, SOA_MINIMUM, Zones};

/// The hickory types that appear in this crate's API (`RecordType`, `Record`, `LowerName`, ...).
pub use hickory_proto as proto;
