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
//! - [`server`]: the hickory-server handler (EDNS, TC, FORMERR, rate limit) and [`serve`].
//! - `udp`: the UDP socket loop (`recvmmsg`/`sendmmsg` batches) in front of the same handler.
//! - [`bind`]: opening the sockets (several `SO_REUSEPORT` UDP sockets for multi-core).
//!
//! Deliberately absent: any dependency on the `clusterd` crate or Raft, zone files, zone
//! transfers, DNSSEC, recursion. The server never invents a serial.

pub mod answers;
pub mod bind;
pub mod example;
pub mod ratelimit;
pub mod server;
pub mod snapshot;
mod udp;
pub mod zones;

pub use answers::{FailTransition, NameAnswer, NameState, fail_transitions, name_answers};
pub use bind::{bind_tcp, bind_udp};
pub use ratelimit::RateLimit;
pub use server::{ServeError, ServeOptions, serve};
pub use snapshot::{Address, NameServer, Snapshot, SnapshotError, Srv, Zone};
pub use zones::{Answer, Outcome, SOA_MINIMUM, Zones};

/// The hickory types that appear in this crate's API (`RecordType`, `Record`, `LowerName`, ...).
pub use hickory_proto as proto;
