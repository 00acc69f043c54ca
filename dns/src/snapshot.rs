//! The input of the DNS server: an immutable picture of what the cluster serves right now.
//!
//! Owns the plain data types the daemon fills from its replicated model (zones, names, services,
//! addresses and which of their services pass) and their validation. It must not know about Raft,
//! the `clusterd` crate or sockets: the daemon maps its state into a [`Snapshot`] and sends it as
//! `Arc<Snapshot>` through a `tokio::sync::watch`, and everything here stays a pure value.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Everything the DNS server answers from, at one instant.
///
/// Immutable once sent: the server compiles it into lookup tables on receipt and never looks
/// back at the previous one (except to log fail-open transitions).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// SOA serial of every zone. Comes from replicated state (for example the Raft log index of
    /// the last change that altered an answer) so that it never goes backwards across leader
    /// changes, restarts or nodes. The server never invents or increments one.
    pub serial: u32,
    /// TTL in seconds of every record served (answers, NS, glue, SOA).
    pub ttl: u32,
    /// What a name answers when none of its addresses passes all its services: every address
    /// offering those services (`true`, like Route 53 and PowerDNS) or nothing, i.e. NODATA
    /// (`false`).
    pub fail_open: bool,
    /// The zones served, each authoritative.
    pub zones: Vec<Zone>,
}

/// One authoritative zone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Zone {
    /// Zone apex: FQDN with a trailing dot, e.g. `"mail.example.com."`. Matched
    /// case-insensitively.
    pub name: String,
    /// Label relative to the apex (`"@"` for the apex itself; may contain dots, e.g. `"a.b"`) ->
    /// services an address must offer and pass to be answered for it, e.g. `"imap" -> ["imap"]`,
    /// `"mail" -> ["imap", "pop3", "smtp"]`.
    pub names: BTreeMap<String, Vec<String>>,
    /// Labels of `names` used as MX targets of the apex, with preferences 10, 20, ... in order.
    pub mx: Vec<String>,
    /// RFC 6186 SRV records, e.g. `_imap._tcp` -> `imap` port 143.
    pub srv: Vec<Srv>,
    /// One entry per mail node: an NS record at the apex naming `<name>.ns.<zone>` and the glue
    /// A/AAAA records of that host name.
    pub nameservers: Vec<NameServer>,
    /// The floating addresses.
    pub addresses: Vec<Address>,
}

/// An SRV record at `<service>.<zone>` pointing at a label of [`Zone::names`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Srv {
    /// Owner label relative to the apex, e.g. `"_imap._tcp"`, `"_submissions._tcp"`.
    pub service: String,
    /// Target: a label of [`Zone::names`] (or `"@"`).
    pub target: String,
    /// Port clients connect to.
    pub port: u16,
    /// SRV priority (lower is preferred).
    pub priority: u16,
    /// SRV weight among equal priorities.
    pub weight: u16,
}

/// A mail node serving the zone: NS `<name>.ns.<zone>` with glue `addrs`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NameServer {
    /// Node name, a single DNS label, e.g. `"mx1"`.
    pub name: String,
    /// The node's own (not floating) addresses where it serves DNS; become A/AAAA glue.
    pub addrs: Vec<IpAddr>,
}

/// A floating address and the health of what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The address, IPv4 (answered as A) or IPv6 (answered as AAAA).
    pub ip: IpAddr,
    /// Services this address offers, e.g. `["imap", "pop3", "smtp"]`.
    pub services: Vec<String>,
    /// Services whose current owner passes its checks. Empty when the address has no owner.
    pub passing: BTreeSet<String>,
}

/// Why a snapshot cannot be served. The server keeps serving the previous snapshot and logs this;
/// the daemon should also check its config with [`Snapshot::validate`] at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A zone name is not an absolute domain name.
    #[error(
        "dns zone {zone:?} is not a valid absolute domain name ({reason}); write it like \"mail.example.com.\" with the trailing dot"
    )]
    ZoneName {
        /// The zone as given.
        zone: String,
        /// What the parser said.
        reason: String,
    },
    /// The same zone appears twice.
    #[error("dns zone {zone:?} is listed twice; merge the two entries")]
    DuplicateZone {
        /// The zone as given.
        zone: String,
    },
    /// A label (name, SRV owner or node name) is not a valid relative domain name.
    #[error("dns zone {zone:?}: {what} {label:?} is not a valid relative name ({reason})")]
    Label {
        /// The zone the label belongs to.
        zone: String,
        /// Which kind of label ("name", "SRV service", "nameserver").
        what: &'static str,
        /// The label as given.
        label: String,
        /// What the parser said.
        reason: String,
    },
    /// An MX or SRV target is not one of the zone's names.
    #[error(
        "dns zone {zone:?}: {what} target {target:?} is not in the zone's names; add it to names or fix the target"
    )]
    UnknownTarget {
        /// The zone.
        zone: String,
        /// "MX" or "SRV <service>".
        what: String,
        /// The target label as given.
        target: String,
    },
}

impl Snapshot {
    /// Checks that the snapshot can be served, with the same rules the server applies when it
    /// receives one.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        crate::zones::Zones::compile(self).map(|_| ())
    }
}
