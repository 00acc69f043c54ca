//! The node's configuration file: one serde type tree and its validation.
//!
//! This module owns the meaning of every key an operator may write in `clusterd.toml`, the
//! defaults, and the rules that refuse a bad file before the daemon touches the network. Every
//! struct denies unknown fields, so a misspelt key is an error rather than a silently ignored
//! setting. [`Config::validate`] collects *all* problems at once, each naming the field, the value
//! seen and what to write instead, because the operator reading them may be doing so at 3 a.m.
//!
//! It must not do IO beyond reading the file in [`load`]: it does not open sockets, check that
//! files named here exist or read the cluster key. Those belong to the modules that use them.
//!
//! Settings that must be identical on every node (`[cluster]`, `[raft]`, `[[addresses]]`,
//! `[checks]`, `[dns]` zones) cannot be cross-checked here; each node sees only its own file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod fencing;
mod observe;
pub use fencing::{
    DEFAULT_WEBHOOK_BODY, FenceAgentConfig, FenceAgentKind, FencingConfig, OptionsViaKind,
    RedfishAuthKind,
};
pub use observe::{HookEventKind, HooksConfig, MetricsConfig};

/// Default for `node.data_dir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/clusterd";
/// Default for `node.key_file`.
pub const DEFAULT_KEY_FILE: &str = "/etc/clusterd/cluster.key";

/// Read, parse and validate the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(
            path.display().to_string(),
            format!(
                "cannot read the configuration file: {e}; check the path given to clusterd \
                 and that the file is readable by the user clusterd runs as"
            ),
        )
    })?;
    parse(&text)
}

/// Parse and validate configuration text (no IO).
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    config.validate()?;
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// The type tree
// ---------------------------------------------------------------------------------------------

/// The whole configuration file of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node: its name, role, where it listens and where it keeps its state.
    pub node: NodeConfig,
    /// Cluster-wide membership settings. Optional; by default every member votes.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Raft timing and log housekeeping. Optional; the defaults suit a LAN.
    #[serde(default)]
    pub raft: RaftConfig,
    /// Address leases: how long a node may hold an address without hearing from the leader.
    /// Optional; the defaults fail over in about a second.
    #[serde(default)]
    pub leases: LeasesConfig,
    /// Where addresses go and when they return home. Optional.
    #[serde(default)]
    pub placement: PlacementConfig,
    /// Gratuitous ARP / neighbour advertisements after an address moves. Optional.
    #[serde(default)]
    pub announce: AnnounceConfig,
    /// The other members of the cluster (every node except this one).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Floating addresses the cluster moves between mail nodes. Must be identical on every node.
    #[serde(default)]
    pub addresses: Vec<AddressConfig>,
    /// Health checks by name (`[checks.imap]`). Addresses and DNS names refer to these names.
    #[serde(default)]
    pub checks: BTreeMap<String, CheckConfig>,
    /// Authoritative DNS served by this node. Optional; mail nodes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    /// Fence agents per node (`[fencing.nodes.mx2]`): power off a node that stopped answering
    /// before its addresses move. Optional; must be identical on every node.
    #[serde(default)]
    pub fencing: FencingConfig,
    /// Programs run on transitions (address acquired or released, node down or up, service
    /// state, fence result, ...). Optional; per node.
    #[serde(default)]
    pub hooks: HooksConfig,
    /// Where Prometheus scrapes this node. Optional; per node.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[node]`: who this node is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name, unique in the cluster: 1 to 63 characters of `a-z`, `0-9` and `-`,
    /// not starting or ending with `-` (e.g. "mx1").
    pub name: String,
    /// "mail" (holds addresses, runs checks, serves DNS) or "witness" (only votes). Default "mail".
    #[serde(default)]
    pub role: Role,
    /// Socket address to bind for peer Raft RPC and the admin API, e.g. "192.0.2.11:7400".
    pub listen: SocketAddr,
    /// Address peers and clusterctl use to reach this node. Defaults to `listen`; required when
    /// `listen` binds the unspecified address (0.0.0.0 or ::).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// Directory for the Raft log, snapshots and state. Absolute path. Default "/var/lib/clusterd".
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// File holding the cluster key (create it with `clusterctl keygen`). Absolute path, must not
    /// be world-readable. Default "/etc/clusterd/cluster.key".
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Decide and report placement, but never touch this node's addresses, firewall or ARP:
    /// for trying clusterd next to an existing setup (e.g. keepalived) before handing it the
    /// addresses. The node takes no address lease, so the cluster never counts on it to serve.
    /// Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

use crate::model::Role;

/// `[cluster]`: membership settings. Must be identical on every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Names of the members that vote in Raft elections: 3 or 5 of them. Default: every member
    /// (this node and all peers). Members left out join as non-voting learners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters: Option<Vec<String>>,
    /// Accept a cluster of exactly two voters. With two voters, losing either one stops the
    /// cluster (no quorum); prefer adding a witness. Default false.
    #[serde(default)]
    pub allow_two_voters: bool,
}

/// `[raft]`: consensus timing and log housekeeping. Must be identical on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats. Well below `election_timeout_min`. Default "50ms".
    pub heartbeat_interval: Millis,
    /// Shortest election timeout. A follower that hears no leader starts an election after
    /// `election_timeout_max` (the old leader's lease, during which voters refuse other
    /// candidates) plus a timeout picked at random between min and max: 300-400 ms of silence
    /// with the defaults, which is what a leader's death costs before a new one is elected.
    /// Default "100ms".
    pub election_timeout_min: Millis,
    /// Longest election timeout (see `election_timeout_min`). Default "200ms".
    pub election_timeout_max: Millis,
    /// Log entries since the last snapshot before a new snapshot is taken. At least 10.
    /// Default 1000.
    pub snapshot_after: u64,
    /// Number of events kept in the replicated history (`clusterctl history`). 10 to
    /// [`MAX_HISTORY_LIMIT`]. Default 500.
    pub history_limit: u64,
}

/// Most events the history may keep: the state budget ([`crate::model::MAX_STATE_BYTES`])
/// over the largest event ([`crate::model::MAX_EVENT_BYTES`]).
pub const MAX_HISTORY_LIMIT: u64 =
    (crate::model::MAX_STATE_BYTES / crate::model::MAX_EVENT_BYTES) as u64;

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval: Millis::from_millis(50),
            election_timeout_min: Millis::from_millis(100),
            election_timeout_max: Millis::from_millis(200),
            snapshot_after: 1000,
            history_limit: 500,
        }
    }
}

/// `[leases]`: the address leases behind the no-duplicate-address guarantee. Must be identical
/// on every node. `check-config` refuses settings that could let two nodes serve one address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// Length of a lease granted by the leader. A node that cannot renew drops its addresses
    /// within this; a dead node's addresses move after about this long. Default "800ms".
    pub lease: Millis,
    /// How often a node renews. At most a third of the lease. Default "200ms".
    pub renew_every: Millis,
    /// Largest clock-rate difference between two nodes, in parts per million. Default 10000 (1%).
    pub drift_ppm: u32,
    /// Slack for scheduling and netlink latency. Default "50ms".
    pub margin: Millis,
    /// The leader grants leases only while a quorum acknowledged it within this. At least two
    /// Raft heartbeats, at most half the lease. Default "150ms".
    pub quorum_fresh: Millis,
    /// What cuts off a node whose daemon froze: "nftables" (traffic and ARP for the address are
    /// dropped when the lease runs out; default) or "lifetime-only" (only the address lifetime,
    /// whole seconds: takeovers then wait several seconds longer).
    pub guard: GuardKind,
    /// Wait after a node's last lease before its addresses move. Default: the shortest safe
    /// value, computed from the settings above; a shorter one is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub takeover_delay: Option<Millis>,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        let t = clusterd_fencing::LeaseTimings::default();
        LeasesConfig {
            lease: t.lease.into(),
            renew_every: t.renew_every.into(),
            drift_ppm: t.drift_ppm,
            margin: t.margin.into(),
            quorum_fresh: t.quorum_fresh.into(),
            guard: GuardKind::Nftables,
            takeover_delay: None,
        }
    }
}

impl LeasesConfig {
    /// The lease arithmetic for these settings.
    pub fn timings(&self) -> clusterd_fencing::LeaseTimings {
        clusterd_fencing::LeaseTimings {
            lease: self.lease.get(),
            renew_every: self.renew_every.get(),
            drift_ppm: self.drift_ppm,
            margin: self.margin.get(),
            quorum_fresh: self.quorum_fresh.get(),
            guard: match self.guard {
                GuardKind::Nftables => clusterd_fencing::Guard::Nftables,
                GuardKind::LifetimeOnly => clusterd_fencing::Guard::LifetimeOnly,
            },
            takeover_delay: self.takeover_delay.map(Millis::get),
        }
    }
}

/// `leases.guard`: the kernel mechanism that enforces a lease when the daemon cannot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardKind {
    /// nftables set elements that time out with the lease (millisecond precision).
    #[default]
    Nftables,
    /// Only the address lifetime (whole seconds).
    LifetimeOnly,
}

/// `[placement]`: where addresses go. Must be identical on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// "auto": an address returns to its home node once that node has been healthy for
    /// `failback_after`; "manual": it stays until an operator moves it. Default "auto".
    pub failback: FailbackMode,
    /// How long the home node must be healthy before an address returns to it. Default "60s".
    pub failback_after: Millis,
    /// Hold-down against flapping: a node where a service failed is not chosen again for an
    /// address needing that service until the service has passed there this long. Default "30s".
    pub hold_down: Millis,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            failback: FailbackMode::Auto,
            failback_after: Millis::from_millis(60_000),
            hold_down: Millis::from_millis(30_000),
        }
    }
}

/// `[announce]`: how a new owner tells the network (switches, routers, clients' neighbour
/// caches) that an address moved: gratuitous ARP in both request and reply form (switches
/// differ in which they accept), or IPv6 unsolicited neighbour advertisements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnnounceConfig {
    /// Announcements sent at once after the address is added, `burst_interval` apart.
    /// Default 3.
    pub burst: u32,
    /// Gap between the announcements of the burst. Default "100ms".
    pub burst_interval: Millis,
    /// Further announcements over the next seconds, `repeat_interval` apart, for hosts that
    /// missed the burst. Default 3.
    pub repeats: u32,
    /// Gap between repeats. Default "1s".
    pub repeat_interval: Millis,
    /// A slow periodic announcement while the address is held, so switch forwarding tables
    /// that age out entries keep pointing at the owner. "0s" turns it off. Default "60s".
    pub refresh: Millis,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            burst: 3,
            burst_interval: Millis::from_millis(100),
            repeats: 3,
            repeat_interval: Millis::from_millis(1000),
            refresh: Millis::from_millis(60_000),
        }
    }
}

/// `placement.failback`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailbackMode {
    /// Return home after the stable period.
    #[default]
    Auto,
    /// Stay until moved by an operator.
    Manual,
}

/// `[[peers]]`: another member of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's `node.name`.
    pub name: String,
    /// Where the peer's clusterd listens (its `node.advertise`, or `node.listen`), e.g.
    /// "192.0.2.12:7400". Must be a concrete address, not 0.0.0.0 or ::.
    pub address: SocketAddr,
    /// The peer's `node.role`: "mail" or "witness". Default "mail".
    #[serde(default)]
    pub role: Role,
}

/// `[[addresses]]`: a floating address. The list must be identical on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressConfig {
    /// The address and its prefix length as configured on the interface, e.g. "192.0.2.101/24"
    /// or "2001:db8::101/64".
    pub ip: IpPrefix,
    /// Network interface the address is added to on whichever node holds it, e.g. "eth0".
    /// 1 to 15 characters, no '/' and no whitespace. Must exist on every mail node.
    pub interface: String,
    /// The mail node that holds this address when it is healthy; the address returns there.
    pub home: String,
    /// Names of `[checks.NAME]` sections that must pass on a node for it to hold this address.
    /// May be empty (then only the node being alive counts).
    #[serde(default)]
    pub services: Vec<String>,
}

/// `[checks.NAME]`: one health check, run by every mail node against its own services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Protocol spoken by the probe: smtp, submission, smtps, imap, imaps, pop3, pop3s, lmtp,
    /// tcp (connect only) or exec (run a Nagios-style plugin).
    pub kind: CheckKind,
    /// TCP port probed on the local node. Defaults from `kind` (smtp 25, submission 587,
    /// smtps 465, imap 143, imaps 993, pop3 110, pop3s 995, lmtp 24). Required for tcp,
    /// not allowed for exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Time between two probes. Default "1s".
    #[serde(default = "default_check_interval")]
    pub interval: Millis,
    /// How long one probe may take before it counts as failed. At most `interval`. Default "1s".
    #[serde(default = "default_check_timeout")]
    pub timeout: Millis,
    /// Consecutive passes before a failing service counts as healthy again. At least 1. Default 2.
    #[serde(default = "default_rise_fall")]
    pub rise: u32,
    /// Consecutive failures before a healthy service counts as failed. At least 1. Default 2.
    #[serde(default = "default_rise_fall")]
    pub fall: u32,
    /// Upgrade the connection with STARTTLS before the protocol exchange. Only for smtp,
    /// submission, imap and pop3. Default false.
    #[serde(default)]
    pub starttls: bool,
    /// Test account the probe logs in with; a failed login is reported as degraded, not failed
    /// over. Only for imap, imaps, pop3 and pop3s; requires `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_user: Option<String>,
    /// Absolute path of a file holding the password of `login_user` (first line). Requires
    /// `login_user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// For exec only, and required there: the program (absolute path) and its arguments, run
    /// without a shell. Exit code 0 = OK, 1 = warning, 2 = critical, anything else = unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Postfix queue depth (from `postqueue -j`) above which the node is reported degraded.
    /// Optional; only for smtp, submission and smtps. At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_threshold: Option<u64>,
    /// The program (absolute path) and arguments that print the postfix queue as JSON, one
    /// line per message, like `postqueue -j`. Only with `queue_threshold`. Default
    /// ["/usr/sbin/postqueue", "-j"]; add "-c", "/etc/postfix-out" for a second instance.
    /// Run in the background, one read at a time, killed after 10 s; each probe reports the
    /// latest finished reading, so a slow queue never delays the service verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_command: Option<Vec<String>>,
    /// Address the probe connects to. Default "127.0.0.1": the node's own service (dovecot
    /// and postfix listen on all addresses, or on this one).
    #[serde(default = "default_check_host")]
    pub host: IpAddr,
    /// PEM file of CA certificates (absolute path). With it, a TLS probe (smtps, imaps, pop3s,
    /// or starttls) also verifies the certificate chain and name. Without it the probe proves
    /// the TLS handshake works and watches the expiry date, but not who issued the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Name sent as SNI and, with `tls_ca_file`, required in the certificate. Default: the
    /// host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// A TLS probe warns (degraded, no failover) when the certificate expires within this
    /// long. Default "14d".
    #[serde(default = "default_cert_warning")]
    pub cert_warning: Millis,
}

impl CheckConfig {
    /// A check of `kind` with every other field at its default.
    pub fn new(kind: CheckKind) -> Self {
        CheckConfig {
            kind,
            port: None,
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            rise: default_rise_fall(),
            fall: default_rise_fall(),
            starttls: false,
            login_user: None,
            password_file: None,
            command: None,
            queue_threshold: None,
            queue_command: None,
            host: default_check_host(),
            tls_ca_file: None,
            tls_server_name: None,
            cert_warning: default_cert_warning(),
        }
    }

    /// Whether this check speaks TLS (implicit, or upgraded with STARTTLS).
    pub fn uses_tls(&self) -> bool {
        self.starttls
            || matches!(
                self.kind,
                CheckKind::Smtps | CheckKind::Imaps | CheckKind::Pop3s
            )
    }
}

impl CheckConfig {
    /// The port the probe connects to: `port`, or the default of `kind`. `None` for exec (and for
    /// a tcp check without a port, which `validate` refuses).
    pub fn effective_port(&self) -> Option<u16> {
        if self.kind == CheckKind::Exec {
            return None;
        }
        self.port.or(self.kind.default_port())
    }
}

/// The protocol a health check speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// SMTP on port 25: banner, EHLO, NOOP, QUIT.
    Smtp,
    /// SMTP submission on port 587.
    Submission,
    /// SMTP with implicit TLS on port 465.
    Smtps,
    /// IMAP on port 143: `* OK` greeting, CAPABILITY, LOGOUT.
    Imap,
    /// IMAP with implicit TLS on port 993.
    Imaps,
    /// POP3 on port 110: `+OK` greeting.
    Pop3,
    /// POP3 with implicit TLS on port 995.
    Pop3s,
    /// LMTP on port 24.
    Lmtp,
    /// Plain TCP connect; needs an explicit port.
    Tcp,
    /// Run a Nagios-style plugin.
    Exec,
}

impl CheckKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [CheckKind; 10] = [
        CheckKind::Smtp,
        CheckKind::Submission,
        CheckKind::Smtps,
        CheckKind::Imap,
        CheckKind::Imaps,
        CheckKind::Pop3,
        CheckKind::Pop3s,
        CheckKind::Lmtp,
        CheckKind::Tcp,
        CheckKind::Exec,
    ];

    /// The well-known port of the protocol; `None` for tcp and exec.
    pub fn default_port(self) -> Option<u16> {
        match self {
            CheckKind::Smtp => Some(25),
            CheckKind::Submission => Some(587),
            CheckKind::Smtps => Some(465),
            CheckKind::Imap => Some(143),
            CheckKind::Imaps => Some(993),
            CheckKind::Pop3 => Some(110),
            CheckKind::Pop3s => Some(995),
            CheckKind::Lmtp => Some(24),
            CheckKind::Tcp | CheckKind::Exec => None,
        }
    }

    /// Whether `starttls = true` is meaningful for this kind.
    pub fn supports_starttls(self) -> bool {
        matches!(
            self,
            CheckKind::Smtp | CheckKind::Submission | CheckKind::Imap | CheckKind::Pop3
        )
    }

    /// Whether `login_user`/`password_file` are meaningful for this kind.
    pub fn supports_login(self) -> bool {
        matches!(
            self,
            CheckKind::Imap | CheckKind::Imaps | CheckKind::Pop3 | CheckKind::Pop3s
        )
    }

    /// Whether `queue_threshold` (postfix queue depth) is meaningful for this kind.
    pub fn supports_queue_threshold(self) -> bool {
        matches!(
            self,
            CheckKind::Smtp | CheckKind::Submission | CheckKind::Smtps
        )
    }

    fn list(pred: impl Fn(CheckKind) -> bool) -> String {
        CheckKind::ALL
            .iter()
            .filter(|k| pred(**k))
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckKind::Smtp => "smtp",
            CheckKind::Submission => "submission",
            CheckKind::Smtps => "smtps",
            CheckKind::Imap => "imap",
            CheckKind::Imaps => "imaps",
            CheckKind::Pop3 => "pop3",
            CheckKind::Pop3s => "pop3s",
            CheckKind::Lmtp => "lmtp",
            CheckKind::Tcp => "tcp",
            CheckKind::Exec => "exec",
        })
    }
}

/// `[dns]`: the authoritative DNS server on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Socket addresses to serve DNS on (UDP and TCP), e.g. ["192.0.2.11:53"]. At least one.
    pub listen: Vec<SocketAddr>,
    /// TTL in seconds of every answer. 1 to 86400. Default 30; keep it short so clients follow
    /// failovers.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// When no address passes its checks, answer with all addresses (true) rather than none
    /// (false). Default true.
    #[serde(default = "default_true")]
    pub fail_open: bool,
    /// UDP queries answered per second from one source (an IPv4 address or an IPv6 /64), with
    /// bursts of twice as many; further queries are dropped, so the server cannot be used to
    /// flood a spoofed victim. TCP is not limited (its source cannot be spoofed). 0 turns the
    /// limit off. Default 100: a resolver caches answers for the TTL, so even one serving many
    /// users asks far less often.
    #[serde(default = "default_dns_rate_limit")]
    pub rate_limit: u32,
    /// The zones served. At least one; must be identical on every node.
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
}

/// `[[dns.zones]]`: one authoritative zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The zone's fully qualified name, ending in '.', e.g. "mail.example.com.".
    pub name: String,
    /// Labels of `names` whose addresses are published as MX targets of the zone apex, e.g.
    /// ["mail"]. Optional.
    #[serde(default)]
    pub mx: Vec<String>,
    /// RFC 6186 service records for mail clients, e.g. `{ service = "_imaps._tcp", target =
    /// "imap", port = 993 }`. Optional.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub srv: Vec<SrvConfig>,
    /// Names in the zone: a label (or "@" for the zone apex) mapped to the check names whose
    /// addresses it answers with, e.g. { imap = ["imap"], mail = ["imap", "pop3", "smtp"] }.
    /// A name answers with the addresses that list all of these services and whose holder passes
    /// them.
    #[serde(default)]
    pub names: BTreeMap<String, Vec<String>>,
}

/// `[[dns.zones.srv]]`: one SRV record (RFC 6186 mail service discovery).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrvConfig {
    /// Service and protocol labels, e.g. "_imap._tcp", "_imaps._tcp", "_pop3s._tcp",
    /// "_submission._tcp", "_submissions._tcp".
    pub service: String,
    /// The name (a label of `names`) that clients should connect to.
    pub target: String,
    /// Port clients connect to, e.g. 993.
    pub port: u16,
    /// Lower is preferred. Default 0.
    #[serde(default)]
    pub priority: u16,
    /// Share among equal priorities. Default 1.
    #[serde(default = "default_srv_weight")]
    pub weight: u16,
}

fn default_srv_weight() -> u16 {
    1
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}
fn default_key_file() -> PathBuf {
    PathBuf::from(DEFAULT_KEY_FILE)
}
fn default_check_interval() -> Millis {
    Millis::from_millis(1000)
}
fn default_check_timeout() -> Millis {
    Millis::from_millis(1000)
}
fn default_rise_fall() -> u32 {
    2
}
fn default_check_host() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_cert_warning() -> Millis {
    Millis::from_millis(14 * 86_400_000)
}
fn default_ttl() -> u32 {
    30
}
fn default_dns_rate_limit() -> u32 {
    DEFAULT_DNS_RATE_LIMIT
}

/// Default `dns.rate_limit`.
pub const DEFAULT_DNS_RATE_LIMIT: u32 = 100;
/// Largest `dns.rate_limit` accepted.
pub const MAX_DNS_RATE_LIMIT: u32 = 1_000_000;
fn default_true() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

/// A duration written as a string with a unit: "50ms", "1s", "1.5s", "2m" or "1h".
/// Whole milliseconds only. Serialises back to the same form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Millis(pub Duration);

impl Millis {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Millis(Duration::from_millis(ms))
    }

    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Whole milliseconds (saturating).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<Duration> for Millis {
    fn from(d: Duration) -> Self {
        Millis(d)
    }
}

impl From<Millis> for Duration {
    fn from(m: Millis) -> Self {
        m.0
    }
}

const DURATION_FORMS: &str = "write a number and a unit as a string, like \"50ms\", \"1s\", \"1.5s\", \"2m\", \"1h\" or \"14d\"";

impl FromStr for Millis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("invalid duration {s:?}: {why}; {DURATION_FORMS}");
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("the unit is missing"))?;
        let (number, unit) = t.split_at(split);
        let unit_ms: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad("the unit must be ms, s, m, h or d")),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if whole.is_empty() || (number.contains('.') && frac.is_empty()) {
            return Err(bad("the number is malformed"));
        }
        if frac.len() > 9 {
            return Err(bad("too many decimal places"));
        }
        let whole: u128 = whole.parse().map_err(|_| bad("the number is malformed"))?;
        let frac_value: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad("the number is malformed"))?
        };
        let scale = 10u128.pow(frac.len() as u32);
        // Exact integer arithmetic: total = (whole + frac/scale) * unit_ms.
        let numerator = whole
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac_value))
            .and_then(|v| v.checked_mul(unit_ms))
            .ok_or_else(|| bad("the value is too large"))?;
        if numerator % scale != 0 {
            return Err(bad("it is finer than one millisecond"));
        }
        let ms = u64::try_from(numerator / scale).map_err(|_| bad("the value is too large"))?;
        Ok(Millis::from_millis(ms))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms == 0 {
            write!(f, "0ms")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else if ms > 1_000 {
            let frac = format!("{:03}", ms % 1_000);
            write!(f, "{}.{}s", ms / 1_000, frac.trim_end_matches('0'))
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a duration string like \"50ms\", \"1s\", \"1.5s\", \"2m\" or \"1h\" \
                     (with quotes)"
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Millis, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// An interface address with its prefix length, written "192.0.2.101/24" or "2001:db8::1/64".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    /// The address itself.
    pub addr: IpAddr,
    /// The prefix length: 1 to 32 for IPv4, 1 to 128 for IPv6.
    pub prefix_len: u8,
}

impl IpPrefix {
    /// The largest prefix length for this address family (32 or 128).
    pub fn max_prefix_len(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }
}

impl FromStr for IpPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let forms =
            "write it as \"ADDRESS/PREFIX\", like \"192.0.2.101/24\" or \"2001:db8::101/64\"";
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid address {s:?}: the /prefix is missing; {forms}"))?;
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid address {s:?}: {ip:?} is not an IP address; {forms}"))?;
        let prefix_len: u8 = len.parse().map_err(|_| {
            format!("invalid address {s:?}: {len:?} is not a prefix length; {forms}")
        })?;
        let p = IpPrefix { addr, prefix_len };
        if prefix_len == 0 || prefix_len > p.max_prefix_len() {
            return Err(format!(
                "invalid address {s:?}: the prefix length must be 1 to {}; {forms}",
                p.max_prefix_len()
            ));
        }
        Ok(p)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IpPrefix;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "an address with prefix like \"192.0.2.101/24\" (with quotes)"
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IpPrefix, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything wrong with a configuration, all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// One entry per problem, in the order the file is checked.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                field: field.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a key path like "addresses[1].home" or "checks.imap.port"; for syntax errors the
    /// key path guessed from the file and the line and column.
    pub field: String,
    /// What is wrong, the value seen, and what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Turn a toml/serde error into a problem that names the key and line, with advice.
fn toml_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim_end().to_string();
    let advice = if message.starts_with("unknown field") {
        "; remove the key or correct its spelling"
    } else if message.starts_with("unknown variant") {
        "; use one of the values listed"
    } else if message.starts_with("missing field") {
        "; add it (see the example configurations shipped in examples/)"
    } else if message.starts_with("invalid type") {
        "; write the value in the form expected (strings need double quotes, lists are [..])"
    } else if message.starts_with("duplicate key") || message.contains("duplicate") {
        "; keep only one of them"
    } else if message.contains("; write") {
        // Our own value parsers already said what to write.
        ""
    } else {
        "; fix the TOML syntax here (strings need double quotes, tables are written [name])"
    };
    let field = match err.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            let mut path = key_path(text, line);
            if let Some(missing) = missing_field_name(&message) {
                path = if path.is_empty() {
                    missing.to_string()
                } else {
                    format!("{path}.{missing}")
                };
            }
            if path.is_empty() {
                format!("line {line}, column {column}")
            } else {
                format!("{path} (line {line}, column {column})")
            }
        }
        None => missing_field_name(&message)
            .map(str::to_string)
            .unwrap_or_else(|| "(file)".to_string()),
    };
    ConfigError::single(field, format!("{message}{advice}"))
}

fn missing_field_name(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

/// 1-based line and column of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Best-effort key path of line `line` (1-based): the enclosing table header (with the index of
/// array tables, e.g. "peers[1]") and the key written on that line.
fn key_path(text: &str, line: usize) -> String {
    let mut header = String::new();
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    let mut key = None;
    for (i, raw) in text.lines().enumerate().take(line) {
        let l = raw.trim();
        if let Some(inner) = l.strip_prefix("[[") {
            let name = inner.split("]]").next().unwrap_or("").trim().to_string();
            let n = array_counts.entry(name.clone()).or_insert(0);
            *n += 1;
            header = format!("{name}[{}]", *n - 1);
            key = None;
        } else if let Some(inner) = l.strip_prefix('[') {
            let name = inner.split(']').next().unwrap_or("").trim().to_string();
            // A sub-table of an array table, e.g. [dns.zones.names] after [[dns.zones]].
            header = array_counts
                .iter()
                .filter(|(a, _)| name.starts_with(&format!("{a}.")))
                .max_by_key(|(a, _)| a.len())
                .map(|(a, n)| format!("{a}[{}]{}", n - 1, &name[a.len()..]))
                .unwrap_or(name);
            key = None;
        } else if i + 1 == line {
            key = l
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string());
        }
    }
    match (header.is_empty(), key) {
        (_, None) => header,
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{header}.{k}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

/// A member of the cluster as the rest of the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberSpec {
    /// The member's node name.
    pub name: String,
    /// Where its clusterd is reached (this node: `advertise()`; peers: `address`).
    pub address: SocketAddr,
    /// Mail node or witness.
    pub role: Role,
}

impl Config {
    /// This node and all peers, sorted by name.
    pub fn members(&self) -> Vec<MemberSpec> {
        let mut members: Vec<MemberSpec> = std::iter::once(MemberSpec {
            name: self.node.name.clone(),
            address: self.advertise(),
            role: self.node.role,
        })
        .chain(self.peers.iter().map(|p| MemberSpec {
            name: p.name.clone(),
            address: p.address,
            role: p.role,
        }))
        .collect();
        members.sort();
        members
    }

    /// Names of the voting members, sorted: `cluster.voters` if set, else every member.
    pub fn voters(&self) -> Vec<String> {
        let mut voters: Vec<String> = match &self.cluster.voters {
            Some(v) => v.clone(),
            None => self.members().into_iter().map(|m| m.name).collect(),
        };
        voters.sort();
        voters.dedup();
        voters
    }

    /// Whether `name` is a voting member.
    pub fn is_voter(&self, name: &str) -> bool {
        self.voters().iter().any(|v| v == name)
    }

    /// The address peers use to reach this node: `node.advertise`, else `node.listen`.
    pub fn advertise(&self) -> SocketAddr {
        self.node.advertise.unwrap_or(self.node.listen)
    }

    /// Check every rule; return all problems found, not only the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Problems::default();
        self.check_node(&mut v);
        self.check_members(&mut v);
        self.check_voters(&mut v);
        self.check_raft(&mut v);
        self.check_leases(&mut v);
        self.check_announce(&mut v);
        self.check_checks(&mut v);
        self.check_addresses(&mut v);
        self.check_dns(&mut v);
        self.check_fencing(&mut v);
        self.check_hooks(&mut v);
        self.check_metrics(&mut v);
        self.check_listeners(&mut v);
        if v.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: v.0 })
        }
    }

    /// The TCP listeners of this node (the API, the metrics listener, DNS over TCP) must not
    /// share a port on overlapping addresses: the daemon would fail to bind one of them and
    /// serve without it.
    fn check_listeners(&self, v: &mut Problems) {
        let mut listeners: Vec<(String, SocketAddr)> =
            vec![("node.listen".into(), self.node.listen)];
        if let Some(m) = self.metrics.listen {
            listeners.push(("metrics.listen".into(), m));
        }
        if let Some(dns) = &self.dns {
            listeners.extend(
                dns.listen
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("dns.listen[{i}]"), *l)),
            );
        }
        let overlap = |a: &SocketAddr, b: &SocketAddr| {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip()
                    || (a.ip().is_unspecified() && (a.is_ipv6() || b.is_ipv4()))
                    || (b.ip().is_unspecified() && (b.is_ipv6() || a.is_ipv4())))
        };
        for (i, (field_a, a)) in listeners.iter().enumerate() {
            for (field_b, b) in &listeners[i + 1..] {
                // The same DNS address twice is reported by the DNS section itself.
                let both_dns = field_a.starts_with("dns.") && field_b.starts_with("dns.");
                if overlap(a, b) && !(both_dns && a == b) {
                    v.push(
                        field_b.clone(),
                        format!(
                            "{b} overlaps {field_a} ({a}): two listeners cannot share a TCP \
                             port on the same address; give {field_b} another port"
                        ),
                    );
                }
            }
        }
    }

    fn check_node(&self, v: &mut Problems) {
        let n = &self.node;
        check_name(v, "node.name", &n.name, "node name");
        if n.listen.ip().is_unspecified() && n.advertise.is_none() {
            v.push(
                "node.advertise",
                format!(
                    "node.listen is {} (all addresses), so peers cannot use it to reach this \
                     node; set advertise to this node's address peers can reach, e.g. \
                     advertise = \"192.0.2.11:{}\"",
                    n.listen,
                    n.listen.port()
                ),
            );
        }
        if let Some(adv) = n.advertise.filter(|a| a.ip().is_unspecified()) {
            v.push(
                "node.advertise",
                format!(
                    "{adv} is the unspecified address, which peers cannot connect to; write \
                     this node's concrete address, e.g. \"192.0.2.11:{}\"",
                    adv.port()
                ),
            );
        }
        if self.advertise().port() == 0 {
            v.push(
                "node.listen",
                format!(
                    "port 0 in {} would pick a random port that peers cannot know; write a \
                     fixed port, e.g. 7400",
                    self.advertise()
                ),
            );
        }
        check_absolute(v, "node.data_dir", &n.data_dir, DEFAULT_DATA_DIR);
        check_absolute(v, "node.key_file", &n.key_file, DEFAULT_KEY_FILE);
    }

    fn check_members(&self, v: &mut Problems) {
        let mut names: HashMap<&str, String> = HashMap::new();
        names.insert(&self.node.name, "node.name".to_string());
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        addrs.insert(self.advertise(), "node.advertise".to_string());
        for (i, p) in self.peers.iter().enumerate() {
            let f = format!("peers[{i}]");
            check_name(v, &format!("{f}.name"), &p.name, "peer name");
            if p.name == self.node.name {
                v.push(
                    format!("{f}.name"),
                    format!(
                        "{:?} is this node's own name (node.name); [[peers]] lists only the \
                         other members, so remove this entry",
                        p.name
                    ),
                );
            } else if let Some(first) = names.get(p.name.as_str()) {
                v.push(
                    format!("{f}.name"),
                    format!(
                        "{:?} is already used by {first}; every member needs its own name, so \
                         rename or remove one of them",
                        p.name
                    ),
                );
            } else {
                names.insert(&p.name, format!("{f}.name"));
            }
            if p.address.ip().is_unspecified() {
                v.push(
                    format!("{f}.address"),
                    format!(
                        "{} is the unspecified address, which cannot be connected to; write the \
                         peer's own address, e.g. \"192.0.2.12:{}\"",
                        p.address,
                        p.address.port()
                    ),
                );
            }
            if p.address.port() == 0 {
                v.push(
                    format!("{f}.address"),
                    format!(
                        "port 0 in {} cannot be connected to; write the port the peer listens \
                         on, e.g. 7400",
                        p.address
                    ),
                );
            }
            if let Some(first) = addrs.get(&p.address) {
                v.push(
                    format!("{f}.address"),
                    format!(
                        "{} is already used by {first}; every member listens on its own \
                         address, so correct one of them",
                        p.address
                    ),
                );
            } else {
                addrs.insert(p.address, format!("{f}.address"));
            }
        }
    }

    fn check_voters(&self, v: &mut Problems) {
        let members = self.members();
        let member_names: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let field = "cluster.voters";
        if let Some(list) = &self.cluster.voters {
            let mut seen = BTreeSet::new();
            for (i, name) in list.iter().enumerate() {
                if !member_names.contains(name.as_str()) {
                    v.push(
                        format!("{field}[{i}]"),
                        format!(
                            "{name:?} is not a member; voters must be node.name or a \
                             [[peers]] name, one of: {}",
                            join_quoted(member_names.iter())
                        ),
                    );
                }
                if !seen.insert(name.as_str()) {
                    v.push(
                        format!("{field}[{i}]"),
                        format!("{name:?} is listed twice; list each voter once"),
                    );
                }
            }
        }
        let voters = self.voters();
        let shown = join_quoted(voters.iter());
        let source = if self.cluster.voters.is_some() {
            "cluster.voters lists"
        } else {
            "cluster.voters is not set, so every member votes:"
        };
        match voters.len() {
            3 | 5 => {}
            2 if self.cluster.allow_two_voters => {}
            2 => v.push(
                field,
                format!(
                    "{source} 2 voters ({shown}). With two voters, losing either one stops the \
                     cluster (no quorum, so addresses are dropped everywhere). Add a third \
                     voter: a small node with role = \"witness\" that only votes, listed in \
                     [[peers]] on every node; or set cluster.allow_two_voters = true to accept \
                     that risk"
                ),
            ),
            0 | 1 => v.push(
                field,
                format!(
                    "{source} {} voter(s) ({shown}); a cluster needs 3 or 5 voters so that it \
                     survives losing one. Add members under [[peers]] (a witness node is \
                     enough for the third)",
                    voters.len()
                ),
            ),
            4 => v.push(
                field,
                format!(
                    "{source} 4 voters ({shown}); 4 voters survive no more failures than 3 \
                     and need one more for quorum. Make one a learner by leaving it out of \
                     cluster.voters, e.g. cluster.voters = [three of them]"
                ),
            ),
            n => v.push(
                field,
                format!(
                    "{source} {n} voters ({shown}); more than 5 voters slow every decision. \
                     Keep 5 voters in cluster.voters; the rest join as learners"
                ),
            ),
        }
        for m in members.iter().filter(|m| m.role == Role::Witness) {
            if !voters.contains(&m.name) {
                v.push(
                    field,
                    format!(
                        "{:?} has role witness but is not a voter; a witness does nothing \
                         but vote, so add it to cluster.voters (or remove it)",
                        m.name
                    ),
                );
            }
        }
    }

    fn check_announce(&self, v: &mut Problems) {
        let a = &self.announce;
        if a.burst == 0 || a.burst > 20 {
            v.push(
                "announce.burst",
                format!(
                    "burst = {} announcements; use 1 to 20 (default 3): with none, clients and \
                     switches keep sending to the old owner until their caches expire",
                    a.burst
                ),
            );
        }
        if a.repeats > 100 {
            v.push(
                "announce.repeats",
                format!("repeats = {}; use at most 100 (default 3)", a.repeats),
            );
        }
        for (field, d) in [
            ("announce.burst_interval", a.burst_interval),
            ("announce.repeat_interval", a.repeat_interval),
        ] {
            if d.get() < std::time::Duration::from_millis(10) {
                v.push(
                    field,
                    format!("{d} is too short to be useful; use at least \"10ms\""),
                );
            }
        }
    }

    fn check_leases(&self, v: &mut Problems) {
        for p in self.leases.timings().problems() {
            v.push(format!("leases.{}", p.field), p.message);
        }
        let heartbeat = self.raft.heartbeat_interval.get();
        if self.leases.quorum_fresh.get() < heartbeat * 2 {
            v.push(
                "leases.quorum_fresh",
                format!(
                    "quorum_fresh ({}) is under two Raft heartbeats ({} each): the leader would                      often have no fresh quorum and refuse to renew leases; set it to at least {}",
                    self.leases.quorum_fresh,
                    self.raft.heartbeat_interval,
                    Millis::from(heartbeat * 2)
                ),
            );
        }
        if self.placement.failback_after.get() < self.leases.lease.get() {
            v.push(
                "placement.failback_after",
                format!(
                    "failback_after ({}) is shorter than a lease ({}): addresses would bounce                      back to a node before it proved stable; use at least a few seconds, e.g.                      \"60s\"",
                    self.placement.failback_after, self.leases.lease
                ),
            );
        }
    }

    fn check_raft(&self, v: &mut Problems) {
        let r = &self.raft;
        let mut all_positive = true;
        for (name, d) in [
            ("heartbeat_interval", r.heartbeat_interval),
            ("election_timeout_min", r.election_timeout_min),
            ("election_timeout_max", r.election_timeout_max),
        ] {
            if d.get().is_zero() {
                all_positive = false;
                v.push(
                    format!("raft.{name}"),
                    format!(
                        "{d} is not a usable duration; write a positive one, e.g. \"{}\"",
                        match name {
                            "heartbeat_interval" => "50ms",
                            "election_timeout_min" => "100ms",
                            _ => "200ms",
                        }
                    ),
                );
            }
        }
        if all_positive {
            if r.election_timeout_min >= r.election_timeout_max {
                v.push(
                    "raft.election_timeout_min",
                    format!(
                        "election_timeout_min ({}) must be below election_timeout_max ({}); \
                         nodes pick a random timeout between them to avoid split votes, e.g. \
                         min = \"150ms\", max = \"300ms\"",
                        r.election_timeout_min, r.election_timeout_max
                    ),
                );
            }
            if r.heartbeat_interval >= r.election_timeout_min {
                v.push(
                    "raft.heartbeat_interval",
                    format!(
                        "heartbeat_interval ({}) is not below election_timeout_min ({}); \
                         heartbeat_interval must be well below election_timeout_min, e.g. a \
                         third, or followers start elections against a healthy leader",
                        r.heartbeat_interval, r.election_timeout_min
                    ),
                );
            }
        }
        if r.snapshot_after < 10 {
            v.push(
                "raft.snapshot_after",
                format!(
                    "{} is too small, snapshots would be taken almost every entry; write at \
                     least 10 (default 1000)",
                    r.snapshot_after
                ),
            );
        }
        if !(10..=MAX_HISTORY_LIMIT).contains(&r.history_limit) {
            v.push(
                "raft.history_limit",
                format!(
                    "{} is out of range; write a number from 10 to {MAX_HISTORY_LIMIT} \
                     (default 500): events of up to {} KiB each must keep the replicated state, \
                     and so every snapshot, under {} MiB",
                    r.history_limit,
                    crate::model::MAX_EVENT_BYTES / 1024,
                    crate::model::MAX_STATE_BYTES / (1024 * 1024)
                ),
            );
        }
    }

    fn check_checks(&self, v: &mut Problems) {
        for (name, c) in &self.checks {
            let f = format!("checks.{name}");
            check_name(v, &f, name, "check name");
            let k = c.kind;
            match (k, c.port) {
                (CheckKind::Tcp, None) => v.push(
                    format!("{f}.port"),
                    "a tcp check has no default port; add port = N, the port to connect to"
                        .to_string(),
                ),
                (CheckKind::Exec, Some(p)) => v.push(
                    format!("{f}.port"),
                    format!(
                        "port = {p} is not used by an exec check; remove it and pass the port \
                         to the plugin in command instead"
                    ),
                ),
                (_, Some(0)) => v.push(
                    format!("{f}.port"),
                    format!(
                        "port 0 cannot be probed; write the service's port{}",
                        k.default_port()
                            .map(|p| format!(" or remove the key to use the default {p}"))
                            .unwrap_or_default()
                    ),
                ),
                _ => {}
            }
            let mut durations_ok = true;
            for (key, d) in [("interval", c.interval), ("timeout", c.timeout)] {
                if d.get().is_zero() {
                    durations_ok = false;
                    v.push(
                        format!("{f}.{key}"),
                        format!("{d} is not a usable duration; write a positive one, e.g. \"1s\""),
                    );
                }
            }
            if durations_ok && c.timeout > c.interval {
                v.push(
                    format!("{f}.timeout"),
                    format!(
                        "timeout ({}) is longer than interval ({}), so probes would overlap; \
                         make timeout at most interval, e.g. timeout = \"{}\"",
                        c.timeout, c.interval, c.interval
                    ),
                );
            }
            for (key, n) in [("rise", c.rise), ("fall", c.fall)] {
                if n == 0 {
                    v.push(
                        format!("{f}.{key}"),
                        format!(
                            "{key} = 0 would never count a result; write at least 1 (default 2)"
                        ),
                    );
                }
            }
            if c.starttls && !k.supports_starttls() {
                v.push(
                    format!("{f}.starttls"),
                    format!(
                        "starttls applies only to kinds {}, not {k}; remove it{}",
                        CheckKind::list(CheckKind::supports_starttls),
                        if matches!(k, CheckKind::Smtps | CheckKind::Imaps | CheckKind::Pop3s) {
                            " (this kind already uses TLS from the start)"
                        } else {
                            ""
                        }
                    ),
                );
            }
            let has_login = c.login_user.is_some() || c.password_file.is_some();
            if has_login && !k.supports_login() {
                v.push(
                    format!(
                        "{f}.{}",
                        if c.login_user.is_some() {
                            "login_user"
                        } else {
                            "password_file"
                        }
                    ),
                    format!(
                        "a test login applies only to kinds {}, not {k}; remove login_user and \
                         password_file",
                        CheckKind::list(CheckKind::supports_login)
                    ),
                );
            } else {
                match (&c.login_user, &c.password_file) {
                    (Some(user), None) => v.push(
                        format!("{f}.password_file"),
                        format!(
                            "login_user = {user:?} needs the password too; add password_file = \
                             \"/etc/clusterd/probe.pass\" (a file holding the password)"
                        ),
                    ),
                    (None, Some(_)) => v.push(
                        format!("{f}.login_user"),
                        "password_file is set but login_user is not; add login_user = \"probe\" \
                         (the test account) or remove password_file"
                            .to_string(),
                    ),
                    _ => {}
                }
            }
            if c.login_user.as_ref().is_some_and(|u| u.trim().is_empty()) {
                v.push(
                    format!("{f}.login_user"),
                    "login_user is empty; write the test account's name, e.g. \"probe\""
                        .to_string(),
                );
            }
            if let Some(p) = &c.password_file {
                check_absolute(
                    v,
                    &format!("{f}.password_file"),
                    p,
                    "/etc/clusterd/probe.pass",
                );
            }
            match (k, &c.command) {
                (CheckKind::Exec, None) => v.push(
                    format!("{f}.command"),
                    "an exec check needs the program to run; add command = \
                     [\"/usr/lib/nagios/plugins/check_foo\", \"-x\"]"
                        .to_string(),
                ),
                (CheckKind::Exec, Some(cmd)) if cmd.is_empty() => v.push(
                    format!("{f}.command"),
                    "command is empty; write the program and its arguments, e.g. \
                     [\"/usr/lib/nagios/plugins/check_foo\", \"-x\"]"
                        .to_string(),
                ),
                (CheckKind::Exec, Some(cmd)) => {
                    if !Path::new(&cmd[0]).is_absolute() {
                        v.push(
                            format!("{f}.command"),
                            format!(
                                "the program {:?} is not an absolute path; commands run without \
                                 a shell or PATH search, so write the full path, e.g. \
                                 \"/usr/lib/nagios/plugins/{}\"",
                                cmd[0], cmd[0]
                            ),
                        );
                    }
                }
                (_, Some(_)) => v.push(
                    format!("{f}.command"),
                    format!(
                        "command applies only to kind = \"exec\", not {k}; remove it, or \
                         change kind to \"exec\""
                    ),
                ),
                (_, None) => {}
            }
            if let Some(q) = c.queue_threshold {
                if !k.supports_queue_threshold() {
                    v.push(
                        format!("{f}.queue_threshold"),
                        format!(
                            "queue_threshold (postfix queue depth) applies only to kinds {}, \
                             not {k}; remove it",
                            CheckKind::list(CheckKind::supports_queue_threshold)
                        ),
                    );
                } else if q == 0 {
                    v.push(
                        format!("{f}.queue_threshold"),
                        "0 would always warn; write at least 1, e.g. 1000".to_string(),
                    );
                }
            }
            match (&c.queue_command, c.queue_threshold) {
                (Some(_), None) => v.push(
                    format!("{f}.queue_command"),
                    "queue_command is only run to compare with queue_threshold; add \
                     queue_threshold = 1000 or remove queue_command"
                        .to_string(),
                ),
                (Some(cmd), Some(_)) if cmd.is_empty() || !Path::new(&cmd[0]).is_absolute() => v
                    .push(
                        format!("{f}.queue_command"),
                        "write the program as an absolute path and its arguments, e.g. \
                         [\"/usr/sbin/postqueue\", \"-c\", \"/etc/postfix\", \"-j\"]"
                            .to_string(),
                    ),
                _ => {}
            }
            if !c.uses_tls() {
                for (key, set) in [
                    ("tls_ca_file", c.tls_ca_file.is_some()),
                    ("tls_server_name", c.tls_server_name.is_some()),
                ] {
                    if set {
                        v.push(
                            format!("{f}.{key}"),
                            format!(
                                "{key} applies only to TLS probes (kinds smtps, imaps, pop3s, or \
                                 starttls = true); remove it or enable starttls"
                            ),
                        );
                    }
                }
            }
            if let Some(p) = &c.tls_ca_file {
                check_absolute(
                    v,
                    &format!("{f}.tls_ca_file"),
                    p,
                    "/etc/ssl/certs/mail-ca.pem",
                );
            }
            if let Some(n) = &c.tls_server_name
                && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
            {
                v.push(
                    format!("{f}.tls_server_name"),
                    format!(
                        "{n:?} is not a DNS name or IP address; write e.g. \"mail.example.com\""
                    ),
                );
            }
        }
    }

    fn check_addresses(&self, v: &mut Problems) {
        let members = self.members();
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for (i, a) in self.addresses.iter().enumerate() {
            let f = format!("addresses[{i}]");
            let ip = a.ip.addr;
            if a.ip.prefix_len == 0 || a.ip.prefix_len > a.ip.max_prefix_len() {
                v.push(
                    format!("{f}.ip"),
                    format!(
                        "{} has prefix length {}; write 1 to {}, the prefix of the subnet on the \
                         interface, e.g. \"{}/24\"",
                        a.ip,
                        a.ip.prefix_len,
                        a.ip.max_prefix_len(),
                        ip
                    ),
                );
            }
            if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                v.push(
                    format!("{f}.ip"),
                    format!(
                        "{ip} is not a unicast address clients can reach; write the floating \
                         address, e.g. \"192.0.2.101/24\""
                    ),
                );
            }
            if let Some(first) = seen.get(&ip) {
                v.push(
                    format!("{f}.ip"),
                    format!(
                        "{ip} is already listed as addresses[{first}]; each floating address \
                         appears once, so remove one of them"
                    ),
                );
            } else {
                seen.insert(ip, i);
            }
            let iface = &a.interface;
            if iface.is_empty()
                || iface.len() > 15
                || iface.contains(['/', '"', '\\'])
                || iface.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                v.push(
                    format!("{f}.interface"),
                    format!(
                        "{iface:?} is not a valid interface name; write 1 to 15 characters \
                         without '/', quotes, backslashes or spaces, as `ip link` shows it, \
                         e.g. \"eth0\""
                    ),
                );
            }
            match members.iter().find(|m| m.name == a.home) {
                None => v.push(
                    format!("{f}.home"),
                    format!(
                        "{:?} is not a member; write the name of a mail node, one of: {}",
                        a.home,
                        join_quoted(mail_names(&members).iter())
                    ),
                ),
                Some(m) if m.role == Role::Witness => v.push(
                    format!("{f}.home"),
                    format!(
                        "{:?} is a witness, and a witness never holds addresses; write the name \
                         of a mail node, one of: {}",
                        a.home,
                        join_quoted(mail_names(&members).iter())
                    ),
                ),
                Some(_) => {}
            }
            let mut listed = BTreeSet::new();
            for (j, s) in a.services.iter().enumerate() {
                if !self.checks.contains_key(s) {
                    v.push(format!("{f}.services[{j}]"), self.unknown_check_message(s));
                }
                if !listed.insert(s) {
                    v.push(
                        format!("{f}.services[{j}]"),
                        format!("{s:?} is listed twice; list each service once"),
                    );
                }
            }
        }
    }

    fn check_dns(&self, v: &mut Problems) {
        let Some(dns) = &self.dns else { return };
        if self.node.role == Role::Witness {
            v.push(
                "dns",
                "this node is a witness, and a witness does not serve DNS; remove the [dns] \
                 section from this file (keep it on the mail nodes)",
            );
        }
        if dns.listen.is_empty() {
            v.push(
                "dns.listen",
                "no address to serve DNS on; write at least one, e.g. listen = \
                 [\"192.0.2.11:53\"], or remove the [dns] section",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, l) in dns.listen.iter().enumerate() {
            if !seen.insert(l) {
                v.push(
                    format!("dns.listen[{i}]"),
                    format!("{l} is listed twice; list each address once"),
                );
            }
        }
        if dns.rate_limit > MAX_DNS_RATE_LIMIT {
            v.push(
                "dns.rate_limit",
                format!(
                    "{} queries per second per source is more than {MAX_DNS_RATE_LIMIT}; write a \
                     smaller number (default {DEFAULT_DNS_RATE_LIMIT}), or 0 to turn the limit off",
                    dns.rate_limit
                ),
            );
        }
        if !(1..=86_400).contains(&dns.ttl) {
            v.push(
                "dns.ttl",
                format!(
                    "{} is out of range; write 1 to 86400 seconds, short so clients follow \
                     failovers (default 30)",
                    dns.ttl
                ),
            );
        }
        if dns.zones.is_empty() {
            v.push(
                "dns.zones",
                "no zone to serve; add a [[dns.zones]] table with name = \"mail.example.com.\" \
                 and its names, or remove the [dns] section",
            );
        }
        let mut zone_names: HashMap<&str, usize> = HashMap::new();
        for (i, z) in dns.zones.iter().enumerate() {
            let f = format!("dns.zones[{i}]");
            if let Err(why) = check_fqdn(&z.name) {
                v.push(format!("{f}.name"), format!("{:?} {why}", z.name));
            }
            if let Some(first) = zone_names.get(z.name.as_str()) {
                v.push(
                    format!("{f}.name"),
                    format!(
                        "zone {:?} is already defined as dns.zones[{first}]; merge their names \
                         into one [[dns.zones]] table",
                        z.name
                    ),
                );
            } else {
                zone_names.insert(&z.name, i);
            }
            if z.names.is_empty() {
                v.push(
                    format!("{f}.names"),
                    "the zone has no names; add e.g. names = { imap = [\"imap\"], smtp = \
                     [\"smtp\"] }",
                );
            }
            for (label, services) in &z.names {
                let nf = format!("{f}.names.{label}");
                if label != "@" && check_label(label).is_err() {
                    v.push(
                        nf.clone(),
                        format!(
                            "{label:?} is not a valid name; write one DNS label (1 to 63 of \
                             a-z, 0-9 and '-', not starting or ending with '-') or \"@\" for \
                             the zone apex"
                        ),
                    );
                }
                if services.is_empty() {
                    v.push(
                        nf.clone(),
                        format!(
                            "{label:?} lists no services; list the checks whose addresses it \
                             answers with, e.g. {label} = [\"imap\"]"
                        ),
                    );
                }
                for (j, s) in services.iter().enumerate() {
                    if !self.checks.contains_key(s) {
                        v.push(format!("{nf}[{j}]"), self.unknown_check_message(s));
                    }
                }
            }
            for (j, r) in z.srv.iter().enumerate() {
                let sf = format!("{f}.srv[{j}]");
                let parts: Vec<&str> = r.service.split('.').collect();
                let well_formed = parts.len() == 2
                    && parts[0].len() > 1
                    && parts[0].starts_with('_')
                    && check_label(&parts[0][1..]).is_ok()
                    && (parts[1] == "_tcp" || parts[1] == "_udp");
                if !well_formed {
                    v.push(
                        format!("{sf}.service"),
                        format!(
                            "{:?} is not a service name; write \"_SERVICE._tcp\", e.g. \
                             \"_imaps._tcp\" or \"_submission._tcp\" (RFC 6186)",
                            r.service
                        ),
                    );
                }
                if !z.names.contains_key(&r.target) {
                    v.push(
                        format!("{sf}.target"),
                        format!(
                            "{:?} is not one of this zone's names; SRV targets must be names \
                             defined in names, one of: {}",
                            r.target,
                            join_quoted(z.names.keys())
                        ),
                    );
                }
                if r.port == 0 {
                    v.push(
                        format!("{sf}.port"),
                        "port 0 is not a service port; write the port clients use, e.g. 993"
                            .to_string(),
                    );
                }
            }
            let mut mx_seen = BTreeSet::new();
            for (j, m) in z.mx.iter().enumerate() {
                if !z.names.contains_key(m) {
                    v.push(
                        format!("{f}.mx[{j}]"),
                        format!(
                            "{m:?} is not one of this zone's names; MX targets must be names \
                             defined in names, one of: {}",
                            join_quoted(z.names.keys())
                        ),
                    );
                }
                if !mx_seen.insert(m) {
                    v.push(
                        format!("{f}.mx[{j}]"),
                        format!("{m:?} is listed twice; list each MX target once"),
                    );
                }
            }
        }
    }

    fn unknown_check_message(&self, service: &str) -> String {
        if self.checks.is_empty() {
            format!(
                "{service:?} names no check; there are no [checks.NAME] sections, so add \
                 [checks.{service}] with its kind, or remove it from the list"
            )
        } else {
            format!(
                "{service:?} names no check; write one of the [checks.NAME] names ({}), or \
                 add a [checks.{service}] section",
                join_quoted(self.checks.keys())
            )
        }
    }
}

fn mail_names(members: &[MemberSpec]) -> Vec<&str> {
    members
        .iter()
        .filter(|m| m.role == Role::Mail)
        .map(|m| m.name.as_str())
        .collect()
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

fn join_quoted<T: AsRef<str>>(items: impl Iterator<Item = T>) -> String {
    items
        .map(|s| format!("{:?}", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check a member name given at run time (e.g. `clusterctl members add`); the error says what
/// to write instead.
pub fn check_member_name(name: &str) -> Result<(), String> {
    check_label(name).map_err(|()| {
        format!(
            "node name {name:?} is not allowed; write 1 to 63 characters of lowercase a-z, \
             0-9 and '-', not starting or ending with '-', e.g. \"mx3\""
        )
    })
}

/// Node and check names: 1-63 of [a-z0-9-], not starting or ending with '-'.
fn check_name(v: &mut Problems, field: &str, name: &str, what: &str) {
    if check_label(name).is_err() {
        v.push(
            field,
            format!(
                "{what} {name:?} is not allowed; write 1 to 63 characters of lowercase a-z, \
                 0-9 and '-', not starting or ending with '-', e.g. \"mx1\""
            ),
        );
    }
}

fn check_label(label: &str) -> Result<(), ()> {
    let ok = (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok { Ok(()) } else { Err(()) }
}

fn check_fqdn(name: &str) -> Result<(), String> {
    let Some(body) = name.strip_suffix('.') else {
        return Err(format!(
            "must be fully qualified and end with '.'; write \"{name}.\""
        ));
    };
    if body.is_empty() {
        return Err(
            "is the root zone, which clusterd does not serve; write the zone's name, e.g. \
             \"mail.example.com.\""
                .to_string(),
        );
    }
    if body.len() > 253 {
        return Err(format!(
            "is {} characters long; a DNS name has at most 253, so shorten it",
            body.len()
        ));
    }
    for label in body.split('.') {
        if check_label(label).is_err() {
            return Err(format!(
                "has the label {label:?}; each label must be 1 to 63 of lowercase a-z, 0-9 and \
                 '-', not starting or ending with '-', e.g. \"mail.example.com.\""
            ));
        }
    }
    Ok(())
}

fn check_absolute(v: &mut Problems, field: &str, path: &Path, example: &str) {
    if !path.is_absolute() {
        v.push(
            field,
            format!(
                "{:?} is a relative path, which would depend on the directory clusterd starts \
                 in; write an absolute path, e.g. {example:?}",
                path.display().to_string()
            ),
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid two-mail-nodes-plus-witness configuration, seen from mx1.
    pub(super) const BASE: &str = r#"
[node]
name = "mx1"
listen = "192.0.2.11:7400"

[[peers]]
name = "mx2"
address = "192.0.2.12:7400"

[[peers]]
name = "w1"
address = "192.0.2.13:7400"
role = "witness"

[[addresses]]
ip = "192.0.2.101/24"
interface = "eth0"
home = "mx1"
services = ["imap", "smtp"]

[[addresses]]
ip = "192.0.2.102/24"
interface = "eth0"
home = "mx2"
services = ["imap", "smtp"]

[checks.imap]
kind = "imap"

[checks.smtp]
kind = "smtp"

[dns]
listen = ["192.0.2.11:53"]

[[dns.zones]]
name = "mail.example.com."
mx = ["mail"]
names = { imap = ["imap"], smtp = ["smtp"], mail = ["imap", "smtp"] }
"#;

    pub(crate) fn base() -> Config {
        match parse(BASE) {
            Ok(c) => c,
            Err(e) => panic!("BASE must validate:\n{e}"),
        }
    }

    fn problems(c: &Config) -> Vec<Problem> {
        match c.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.problems,
        }
    }

    /// Assert that `c` is refused with a problem on `field` whose message contains `needle`.
    #[track_caller]
    pub(super) fn assert_refused(c: &Config, field: &str, needle: &str) {
        let ps = problems(c);
        assert!(
            ps.iter()
                .any(|p| p.field == field && p.message.contains(needle)),
            "expected a problem on {field:?} mentioning {needle:?}, got:\n{}",
            ConfigError {
                problems: ps.clone()
            }
        );
    }

    #[track_caller]
    pub(super) fn assert_valid(c: &Config) {
        if let Err(e) = c.validate() {
            panic!("expected valid, got:\n{e}");
        }
    }

    #[track_caller]
    fn parse_err(text: &str) -> Problem {
        match parse(text) {
            Ok(_) => panic!("expected a parse error"),
            Err(e) => {
                assert_eq!(e.problems.len(), 1, "{e}");
                e.problems[0].clone()
            }
        }
    }

    fn peer(name: &str, last_octet: u8, role: Role) -> PeerConfig {
        PeerConfig {
            name: name.to_string(),
            address: SocketAddr::from(([192, 0, 2, last_octet], 7400)),
            role,
        }
    }

    fn check(kind: CheckKind) -> CheckConfig {
        CheckConfig::new(kind)
    }

    fn with_check(name: &str, c: CheckConfig) -> Config {
        let mut cfg = base();
        cfg.checks.insert(name.to_string(), c);
        cfg
    }

    // ----- examples and defaults -----

    #[test]
    fn shipped_examples_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut found = 0;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read examples dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    found += 1;
                    if let Err(e) = load(&path) {
                        panic!("{} does not validate:\n{e}", path.display());
                    }
                }
            }
        }
        assert!(
            found >= 6,
            "expected at least 6 example configs, found {found}"
        );
    }

    #[test]
    fn witness_example_has_same_cluster_settings_as_mail_nodes() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-mail-nodes-and-witness");
        let mx1 = load(&dir.join("mx1.toml")).expect("mx1");
        let w1 = load(&dir.join("w1.toml")).expect("w1");
        assert_eq!(mx1.addresses, w1.addresses);
        assert_eq!(mx1.checks, w1.checks);
        assert_eq!(mx1.raft, w1.raft);
        assert_eq!(mx1.voters(), w1.voters());
        assert_eq!(mx1.members(), w1.members());
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = base();
        assert_eq!(c.node.role, Role::Mail);
        assert_eq!(c.node.data_dir, Path::new("/var/lib/clusterd"));
        assert_eq!(c.node.key_file, Path::new("/etc/clusterd/cluster.key"));
        assert_eq!(c.cluster, ClusterConfig::default());
        assert_eq!(c.raft.heartbeat_interval, Millis::from_millis(50));
        assert_eq!(c.raft.election_timeout_min, Millis::from_millis(100));
        assert_eq!(c.raft.election_timeout_max, Millis::from_millis(200));
        assert_eq!(c.raft.snapshot_after, 1000);
        assert_eq!(c.raft.history_limit, 500);
        let imap = &c.checks["imap"];
        assert_eq!(imap.interval, Millis::from_millis(1000));
        assert_eq!(imap.timeout, Millis::from_millis(1000));
        assert_eq!((imap.rise, imap.fall), (2, 2));
        assert!(!imap.starttls);
        assert_eq!(imap.effective_port(), Some(143));
        let dns = c.dns.as_ref().expect("dns");
        assert_eq!(dns.ttl, 30);
        assert!(dns.fail_open);
    }

    #[test]
    fn check_ports_default_from_kind() {
        let expect = [
            (CheckKind::Smtp, Some(25)),
            (CheckKind::Submission, Some(587)),
            (CheckKind::Smtps, Some(465)),
            (CheckKind::Imap, Some(143)),
            (CheckKind::Imaps, Some(993)),
            (CheckKind::Pop3, Some(110)),
            (CheckKind::Pop3s, Some(995)),
            (CheckKind::Lmtp, Some(24)),
            (CheckKind::Tcp, None),
            (CheckKind::Exec, None),
        ];
        for (kind, port) in expect {
            assert_eq!(check(kind).effective_port(), port, "{kind}");
        }
        let mut explicit = check(CheckKind::Imap);
        explicit.port = Some(1143);
        assert_eq!(explicit.effective_port(), Some(1143));
    }

    #[test]
    fn serialised_config_parses_back_identical() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-mail-nodes-and-witness");
        for c in [base(), load(&dir.join("mx1.toml")).expect("mx1")] {
            let text = toml::to_string(&c).expect("serialise");
            let back = match parse(&text) {
                Ok(b) => b,
                Err(e) => panic!("re-parse failed:\n{e}\n---\n{text}"),
            };
            assert_eq!(back, c, "{text}");
        }
    }

    // ----- queries -----

    #[test]
    fn members_include_this_node_sorted_by_name() {
        let mut c = base();
        c.node.name = "mx3".to_string();
        c.node.advertise = Some("192.0.2.99:7401".parse().expect("addr"));
        let m = c.members();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["mx2", "mx3", "w1"]);
        assert_eq!(m[1].address, "192.0.2.99:7401".parse().expect("addr"));
        assert_eq!(m[1].role, Role::Mail);
        assert_eq!(m[2].role, Role::Witness);
    }

    #[test]
    fn voters_default_to_every_member() {
        let c = base();
        assert_eq!(c.voters(), ["mx1", "mx2", "w1"]);
        assert!(c.is_voter("mx1") && c.is_voter("w1"));
        assert!(!c.is_voter("mx9"));
    }

    #[test]
    fn members_left_out_of_voters_are_learners() {
        let mut c = base();
        c.peers.push(peer("mx3", 14, Role::Mail));
        c.cluster.voters = Some(vec!["w1".into(), "mx2".into(), "mx1".into()]);
        assert_valid(&c);
        assert_eq!(c.voters(), ["mx1", "mx2", "w1"]);
        assert!(!c.is_voter("mx3"));
    }

    #[test]
    fn advertise_falls_back_to_listen() {
        let mut c = base();
        assert_eq!(c.advertise(), c.node.listen);
        let adv: SocketAddr = "198.51.100.1:7400".parse().expect("addr");
        c.node.advertise = Some(adv);
        assert_eq!(c.advertise(), adv);
    }

    // ----- durations and prefixes -----

    #[test]
    fn durations_accept_documented_forms() {
        for (text, ms) in [
            ("50ms", 50),
            ("1s", 1000),
            ("1.5s", 1500),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("0.25s", 250),
            ("0s", 0),
        ] {
            assert_eq!(
                text.parse::<Millis>(),
                Ok(Millis::from_millis(ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_duration_names_accepted_forms() {
        for text in [
            "50", "1.5", "fast", "1 sec", "-1s", "1.s", ".5s", "0.0001s", "s",
        ] {
            let err = text.parse::<Millis>().expect_err(text);
            assert!(
                err.contains("\"50ms\", \"1s\", \"1.5s\", \"2m\""),
                "{text}: {err}"
            );
        }
        let p =
            parse_err(&BASE.replace("kind = \"imap\"", "kind = \"imap\"\ninterval = \"1 sec\""));
        assert!(p.field.starts_with("checks.imap.interval"), "{p}");
        assert!(p.message.contains("\"1.5s\""), "{p}");
        let p = parse_err(&BASE.replace("kind = \"imap\"", "kind = \"imap\"\ninterval = 1"));
        assert!(p.message.contains("duration string"), "{p}");
    }

    #[test]
    fn durations_serialise_to_the_accepted_form() {
        for (ms, text) in [
            (50, "50ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (1050, "1.05s"),
            (120_000, "2m"),
            (90_000, "1.5m"),
            (7_200_000, "2h"),
            (0, "0ms"),
        ] {
            let shown = Millis::from_millis(ms).to_string();
            if ms == 90_000 {
                // Not a whole number of minutes: shown in seconds.
                assert_eq!(shown, "90s");
            } else {
                assert_eq!(shown, text);
            }
            assert_eq!(shown.parse::<Millis>(), Ok(Millis::from_millis(ms)));
        }
    }

    #[test]
    fn ip_prefix_parses_and_displays_as_ip_slash_prefix() {
        let p: IpPrefix = "192.0.2.101/24".parse().expect("v4");
        assert_eq!(p.addr, IpAddr::from([192, 0, 2, 101]));
        assert_eq!(p.prefix_len, 24);
        assert_eq!(p.to_string(), "192.0.2.101/24");
        let p: IpPrefix = "2001:db8::101/64".parse().expect("v6");
        assert_eq!(p.to_string(), "2001:db8::101/64");
        assert!("2001:db8::1/128".parse::<IpPrefix>().is_ok());
    }

    #[test]
    fn ip_prefix_out_of_range_refused() {
        for bad in [
            "192.0.2.1/33",
            "192.0.2.1/0",
            "2001:db8::1/129",
            "192.0.2.1",
            "mx1/24",
        ] {
            let err = bad.parse::<IpPrefix>().expect_err(bad);
            assert!(err.contains("192.0.2.101/24"), "{bad}: {err}");
        }
        let p = parse_err(&BASE.replace("192.0.2.102/24", "192.0.2.102/40"));
        assert_eq!(p.field, "addresses[1].ip (line 22, column 6)");
        assert!(p.message.contains("1 to 32"), "{p}");
    }

    // ----- toml errors -----

    #[test]
    fn unknown_field_lists_allowed_fields_and_line() {
        let p = parse_err(&BASE.replace("name = \"mx1\"", "nmae = \"mx1\""));
        assert_eq!(p.field, "node.nmae (line 3, column 1)");
        assert!(p.message.contains("unknown field `nmae`"), "{p}");
        assert!(
            p.message.contains("`name`") && p.message.contains("`key_file`"),
            "{p}"
        );
        assert!(p.message.contains("correct its spelling"), "{p}");
    }

    #[test]
    fn unknown_field_in_array_table_names_its_index() {
        let p = parse_err(&BASE.replace("role = \"witness\"", "role = \"witness\"\nport = 1"));
        assert!(p.field.starts_with("peers[1].port"), "{p}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let p = parse_err(&BASE.replace("kind = \"smtp\"", "kind = \"smtp\"\nrise = \"two\""));
        assert!(p.field.starts_with("checks.smtp.rise"), "{p}");
        assert!(p.message.contains("invalid type"), "{p}");
    }

    #[test]
    fn unknown_check_kind_lists_kinds() {
        let p = parse_err(&BASE.replace("kind = \"smtp\"", "kind = \"esmtp\""));
        assert!(p.field.starts_with("checks.smtp.kind"), "{p}");
        assert!(
            p.message.contains("`lmtp`") && p.message.contains("`exec`"),
            "{p}"
        );
    }

    #[test]
    fn missing_required_field_is_named() {
        let p = parse_err(&BASE.replace("listen = \"192.0.2.11:7400\"", ""));
        assert!(p.field.starts_with("node.listen"), "{p}");
        assert!(p.message.contains("add it"), "{p}");
        let p = parse_err("");
        assert!(p.field.starts_with("node"), "{p}");
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let p = parse_err(&BASE.replace("name = \"mx1\"", "name = mx1"));
        assert!(p.field.contains("line 3"), "{p}");
        assert!(p.message.contains("TOML syntax"), "{p}");
    }

    #[test]
    fn load_of_missing_file_names_the_path() {
        let err = load(Path::new("/nonexistent/clusterd.toml")).expect_err("missing");
        assert_eq!(err.problems[0].field, "/nonexistent/clusterd.toml");
        assert!(err.problems[0].message.contains("cannot read"), "{err}");
    }

    #[test]
    fn load_reads_and_validates_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clusterd.toml");
        std::fs::write(&path, BASE).expect("write");
        assert_eq!(load(&path).expect("valid"), base());
    }

    #[test]
    fn every_problem_is_reported_one_per_line() {
        let mut c = base();
        c.node.name = "MX1".into();
        c.addresses[0].home = "nobody".into();
        c.raft.snapshot_after = 1;
        let err = c.validate().expect_err("invalid");
        assert!(err.problems.len() >= 3, "{err}");
        let text = err.to_string();
        assert_eq!(text.lines().count(), err.problems.len(), "{text}");
        assert!(text.contains("node.name: "), "{text}");
        assert!(text.contains("addresses[0].home: "), "{text}");
        assert!(text.contains("raft.snapshot_after: "), "{text}");
    }

    // ----- node and members -----

    #[test]
    fn node_name_outside_charset_refused() {
        for bad in ["MX1", "-mx1", "mx1-", "", "mx_1", "mx.1", &"a".repeat(64)] {
            let mut c = base();
            c.node.name = bad.to_string();
            c.cluster.voters = None;
            assert_refused(&c, "node.name", "1 to 63 characters");
        }
        let mut c = base();
        c.node.name = "a".repeat(63);
        c.addresses[0].home = c.node.name.clone();
        assert_valid(&c);
    }

    #[test]
    fn peer_name_outside_charset_refused() {
        let mut c = base();
        c.peers[0].name = "Mx2".into();
        assert_refused(&c, "peers[0].name", "lowercase");
    }

    #[test]
    fn node_listed_in_peers_refused() {
        let mut c = base();
        c.peers.push(peer("mx1", 14, Role::Mail));
        assert_refused(&c, "peers[2].name", "this node's own name");
    }

    #[test]
    fn duplicate_member_names_refused() {
        let mut c = base();
        c.peers.push(peer("mx2", 14, Role::Mail));
        assert_refused(&c, "peers[2].name", "already used by peers[0].name");
    }

    #[test]
    fn duplicate_member_addresses_refused() {
        let mut c = base();
        c.peers[0].address = c.node.listen;
        assert_refused(&c, "peers[0].address", "already used by node.advertise");
        let mut c = base();
        c.peers[1].address = c.peers[0].address;
        assert_refused(&c, "peers[1].address", "already used by peers[0].address");
    }

    #[test]
    fn unspecified_listen_requires_advertise() {
        let mut c = base();
        c.node.listen = "0.0.0.0:7400".parse().expect("addr");
        assert_refused(&c, "node.advertise", "set advertise");
        c.node.listen = "[::]:7400".parse().expect("addr");
        assert_refused(&c, "node.advertise", "set advertise");
        c.node.advertise = Some("192.0.2.11:7400".parse().expect("addr"));
        assert_valid(&c);
    }

    #[test]
    fn unspecified_advertise_refused() {
        let mut c = base();
        c.node.advertise = Some("0.0.0.0:7400".parse().expect("addr"));
        assert_refused(&c, "node.advertise", "unspecified");
    }

    #[test]
    fn unspecified_peer_address_refused() {
        let mut c = base();
        c.peers[0].address = "0.0.0.0:7400".parse().expect("addr");
        assert_refused(&c, "peers[0].address", "unspecified");
    }

    #[test]
    fn port_zero_refused() {
        let mut c = base();
        c.node.listen = "192.0.2.11:0".parse().expect("addr");
        assert_refused(&c, "node.listen", "port 0");
        let mut c = base();
        c.peers[0].address = "192.0.2.12:0".parse().expect("addr");
        assert_refused(&c, "peers[0].address", "port 0");
    }

    #[test]
    fn relative_data_dir_refused() {
        let mut c = base();
        c.node.data_dir = "var/lib/clusterd".into();
        assert_refused(&c, "node.data_dir", "absolute path");
    }

    #[test]
    fn relative_key_file_refused() {
        let mut c = base();
        c.node.key_file = "cluster.key".into();
        assert_refused(&c, "node.key_file", "absolute path");
    }

    // ----- voters -----

    #[test]
    fn two_voters_refused_without_override() {
        let mut c = base();
        c.peers.pop();
        assert_refused(&c, "cluster.voters", "losing either one stops the cluster");
        assert_refused(&c, "cluster.voters", "role = \"witness\"");
        assert_refused(&c, "cluster.voters", "cluster.allow_two_voters = true");
    }

    #[test]
    fn takeover_delay_shorter_than_the_lease_is_refused() {
        let mut c = base();
        c.leases.takeover_delay = Some(Millis::from_millis(500));
        assert_refused(&c, "leases.takeover_delay", "at least 858 ms");
    }

    #[test]
    fn takeover_delay_without_nftables_must_cover_the_address_lifetime() {
        let mut c = base();
        c.leases.guard = GuardKind::LifetimeOnly;
        c.leases.takeover_delay = Some(Millis::from_millis(2000));
        assert_refused(&c, "leases.takeover_delay", "address lifetime");
        c.leases.takeover_delay = None;
        assert_valid(&c);
        assert_eq!(c.leases.timings().takeover_delay().as_millis(), 4858);
    }

    #[test]
    fn lease_renewal_slower_than_a_third_of_the_lease_is_refused() {
        let mut c = base();
        c.leases.renew_every = Millis::from_millis(400);
        assert_refused(&c, "leases.renew_every", "fewer than three tries");
    }

    #[test]
    fn quorum_freshness_under_two_heartbeats_is_refused() {
        let mut c = base();
        c.raft.heartbeat_interval = Millis::from_millis(100);
        c.leases.quorum_fresh = Millis::from_millis(150);
        assert_refused(&c, "leases.quorum_fresh", "two Raft heartbeats");
    }

    #[test]
    fn failback_sooner_than_a_lease_is_refused() {
        let mut c = base();
        c.placement.failback_after = Millis::from_millis(100);
        assert_refused(&c, "placement.failback_after", "shorter than a lease");
    }

    #[test]
    fn lease_and_placement_sections_parse_with_their_names() {
        let text = format!(
            "{BASE}\n[leases]\nlease = \"1s\"\nrenew_every = \"250ms\"\n\
             guard = \"lifetime-only\"\ntakeover_delay = \"10s\"\n\n\
             [placement]\nfailback = \"manual\"\nfailback_after = \"2m\"\n"
        );
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.leases.guard, GuardKind::LifetimeOnly);
        assert_eq!(c.leases.lease, Millis::from_millis(1000));
        assert_eq!(c.leases.takeover_delay, Some(Millis::from_millis(10_000)));
        assert_eq!(c.placement.failback, FailbackMode::Manual);
        assert_eq!(c.placement.failback_after, Millis::from_millis(120_000));
        assert_eq!(base().leases, LeasesConfig::default());
    }

    #[test]
    fn srv_record_with_bad_service_unknown_target_or_port_0_is_refused() {
        let mut c = base();
        let zone = &mut c.dns.as_mut().unwrap().zones[0];
        zone.srv.push(SrvConfig {
            service: "imaps".into(),
            target: "nope".into(),
            port: 0,
            priority: 0,
            weight: 1,
        });
        assert_refused(&c, "dns.zones[0].srv[0].service", "_imaps._tcp");
        assert_refused(
            &c,
            "dns.zones[0].srv[0].target",
            "not one of this zone's names",
        );
        assert_refused(&c, "dns.zones[0].srv[0].port", "port 0");
        let zone = &mut c.dns.as_mut().unwrap().zones[0];
        zone.srv[0] = SrvConfig {
            service: "_imaps._tcp".into(),
            target: "imap".into(),
            port: 993,
            priority: 0,
            weight: 1,
        };
        assert_valid(&c);
    }

    #[test]
    fn announcement_burst_of_zero_is_refused() {
        let mut c = base();
        c.announce.burst = 0;
        assert_refused(&c, "announce.burst", "use 1 to 20");
    }

    #[test]
    fn announcement_interval_under_10ms_is_refused() {
        let mut c = base();
        c.announce.repeat_interval = Millis::from_millis(1);
        assert_refused(&c, "announce.repeat_interval", "at least");
    }

    #[test]
    fn two_voters_accepted_with_override() {
        let mut c = base();
        c.peers.pop();
        c.cluster.allow_two_voters = true;
        assert_valid(&c);
    }

    #[test]
    fn one_voter_refused() {
        let mut c = base();
        c.peers.clear();
        c.addresses.truncate(1);
        assert_refused(&c, "cluster.voters", "3 or 5 voters");
        let mut c = base();
        c.cluster.voters = Some(vec!["mx1".into()]);
        c.peers.pop();
        c.cluster.allow_two_voters = true;
        assert_refused(&c, "cluster.voters", "3 or 5 voters");
    }

    #[test]
    fn four_voters_refused_with_learner_advice() {
        let mut c = base();
        c.peers.push(peer("mx3", 14, Role::Mail));
        assert_refused(&c, "cluster.voters", "leaving it out of cluster.voters");
    }

    #[test]
    fn five_voters_accepted() {
        let mut c = base();
        c.peers.push(peer("mx3", 14, Role::Mail));
        c.peers.push(peer("mx4", 15, Role::Mail));
        assert_valid(&c);
    }

    #[test]
    fn more_than_five_voters_refused() {
        let mut c = base();
        for (i, n) in ["mx3", "mx4", "mx5"].iter().enumerate() {
            c.peers.push(peer(n, 14 + i as u8, Role::Mail));
        }
        assert_refused(&c, "cluster.voters", "Keep 5 voters");
        c.cluster.voters = Some(vec![
            "mx1".into(),
            "mx2".into(),
            "mx3".into(),
            "mx4".into(),
            "w1".into(),
        ]);
        assert_valid(&c);
    }

    #[test]
    fn voter_that_is_not_a_member_refused() {
        let mut c = base();
        c.cluster.voters = Some(vec!["mx1".into(), "mx2".into(), "w2".into()]);
        assert_refused(&c, "cluster.voters[2]", "\"w2\" is not a member");
    }

    #[test]
    fn voter_listed_twice_refused() {
        let mut c = base();
        c.cluster.voters = Some(vec!["mx1".into(), "mx2".into(), "w1".into(), "mx2".into()]);
        assert_refused(&c, "cluster.voters[3]", "listed twice");
    }

    #[test]
    fn witness_must_be_a_voter() {
        let mut c = base();
        c.peers.push(peer("mx3", 14, Role::Mail));
        c.cluster.voters = Some(vec!["mx1".into(), "mx2".into(), "mx3".into()]);
        assert_refused(
            &c,
            "cluster.voters",
            "\"w1\" has role witness but is not a voter",
        );
    }

    // ----- raft -----

    #[test]
    fn election_timeout_min_must_be_below_max() {
        let mut c = base();
        c.raft.election_timeout_max = Millis::from_millis(100);
        assert_refused(
            &c,
            "raft.election_timeout_min",
            "must be below election_timeout_max",
        );
    }

    #[test]
    fn heartbeat_must_be_below_election_timeout() {
        let mut c = base();
        c.raft.heartbeat_interval = Millis::from_millis(150);
        assert_refused(
            &c,
            "raft.heartbeat_interval",
            "heartbeat_interval must be well below election_timeout_min, e.g. a third",
        );
    }

    #[test]
    fn zero_raft_durations_refused() {
        let mut c = base();
        c.raft.heartbeat_interval = Millis::from_millis(0);
        assert_refused(&c, "raft.heartbeat_interval", "positive");
    }

    #[test]
    fn snapshot_after_below_ten_refused() {
        let mut c = base();
        c.raft.snapshot_after = 9;
        assert_refused(&c, "raft.snapshot_after", "at least 10");
    }

    #[test]
    fn history_limit_out_of_range_refused() {
        for bad in [9, MAX_HISTORY_LIMIT + 1, 100_000] {
            let mut c = base();
            c.raft.history_limit = bad;
            assert_refused(&c, "raft.history_limit", "10 to 8192");
            assert_refused(&c, "raft.history_limit", "under 64 MiB");
        }
        let mut c = base();
        c.raft.history_limit = MAX_HISTORY_LIMIT;
        assert!(c.validate().is_ok());
    }

    // ----- addresses -----

    #[test]
    fn duplicate_address_ips_refused() {
        let mut c = base();
        c.addresses[1].ip = "192.0.2.101/25".parse().expect("prefix");
        assert_refused(&c, "addresses[1].ip", "already listed as addresses[0]");
    }

    #[test]
    fn non_unicast_address_refused() {
        let mut c = base();
        c.addresses[1].ip = "127.0.0.1/8".parse().expect("prefix");
        assert_refused(&c, "addresses[1].ip", "not a unicast address");
    }

    #[test]
    fn address_prefix_out_of_range_refused() {
        let mut c = base();
        c.addresses[0].ip.prefix_len = 0;
        assert_refused(&c, "addresses[0].ip", "write 1 to 32");
    }

    #[test]
    fn address_home_must_be_a_member() {
        let mut c = base();
        c.addresses[0].home = "mx9".into();
        assert_refused(&c, "addresses[0].home", "\"mx9\" is not a member");
    }

    #[test]
    fn witness_cannot_be_address_home() {
        let mut c = base();
        c.addresses[0].home = "w1".into();
        assert_refused(&c, "addresses[0].home", "witness never holds addresses");
    }

    #[test]
    fn address_service_must_name_a_check() {
        let mut c = base();
        c.addresses[0].services.push("pop3".into());
        assert_refused(&c, "addresses[0].services[2]", "\"pop3\" names no check");
    }

    #[test]
    fn address_without_services_accepted() {
        let mut c = base();
        c.addresses[0].services.clear();
        assert_valid(&c);
    }

    #[test]
    fn bad_interface_names_refused() {
        for bad in [
            "",
            "eth0/1",
            "eth 0",
            "averyveryverylongname",
            "eth\"0",
            "eth\\0",
        ] {
            let mut c = base();
            c.addresses[0].interface = bad.into();
            assert_refused(&c, "addresses[0].interface", "1 to 15 characters");
        }
    }

    // ----- checks -----

    #[test]
    fn check_name_outside_charset_refused() {
        let c = with_check("IMAP_2", check(CheckKind::Imap));
        assert_refused(&c, "checks.IMAP_2", "check name");
    }

    #[test]
    fn tcp_check_requires_port() {
        let c = with_check("sieve", check(CheckKind::Tcp));
        assert_refused(&c, "checks.sieve.port", "add port = N");
        let mut t = check(CheckKind::Tcp);
        t.port = Some(4190);
        assert_valid(&with_check("sieve", t));
    }

    #[test]
    fn exec_check_forbids_port() {
        let mut e = check(CheckKind::Exec);
        e.command = Some(vec!["/usr/lib/nagios/plugins/check_disk".into()]);
        assert_valid(&with_check("disk", e.clone()));
        e.port = Some(25);
        assert_refused(
            &with_check("disk", e),
            "checks.disk.port",
            "not used by an exec check",
        );
    }

    #[test]
    fn queue_command_needs_a_threshold_and_an_absolute_program() {
        let mut c = check(CheckKind::Smtp);
        c.queue_command = Some(vec!["/usr/sbin/postqueue".into(), "-j".into()]);
        assert_refused(
            &with_check("smtp", c.clone()),
            "checks.smtp.queue_command",
            "add queue_threshold",
        );
        c.queue_threshold = Some(100);
        assert_valid(&with_check("smtp", c.clone()));
        c.queue_command = Some(vec!["postqueue".into()]);
        assert_refused(
            &with_check("smtp", c),
            "checks.smtp.queue_command",
            "absolute path",
        );
    }

    #[test]
    fn tls_settings_only_on_tls_checks() {
        let mut c = check(CheckKind::Imap);
        c.tls_ca_file = Some("/etc/ssl/ca.pem".into());
        assert_refused(
            &with_check("imap", c.clone()),
            "checks.imap.tls_ca_file",
            "only to TLS probes",
        );
        c.tls_ca_file = None;
        c.tls_server_name = Some("mail.example.com".into());
        assert_refused(
            &with_check("imap", c.clone()),
            "checks.imap.tls_server_name",
            "only to TLS probes",
        );
        c.starttls = true;
        assert_valid(&with_check("imap", c.clone()));
        let mut i = check(CheckKind::Imaps);
        i.tls_ca_file = Some("ca.pem".into());
        assert_refused(
            &with_check("imaps", i.clone()),
            "checks.imaps.tls_ca_file",
            "absolute",
        );
        i.tls_ca_file = None;
        i.tls_server_name = Some("not a name!".into());
        assert_refused(
            &with_check("imaps", i),
            "checks.imaps.tls_server_name",
            "not a DNS name",
        );
    }

    #[test]
    fn check_host_and_cert_warning_parse_with_days() {
        let c = parse(&format!(
            "{BASE}\n[checks.imaps]\nkind = \"imaps\"\nhost = \"192.0.2.11\"\ncert_warning = \"30d\"\n"
        ))
        .unwrap();
        let i = &c.checks["imaps"];
        assert_eq!(i.host, "192.0.2.11".parse::<IpAddr>().unwrap());
        assert_eq!(i.cert_warning.as_millis(), 30 * 86_400_000);
        assert_eq!(
            c.checks["imap"].host,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn port_zero_check_refused() {
        let mut i = check(CheckKind::Imap);
        i.port = Some(0);
        assert_refused(&with_check("imap", i), "checks.imap.port", "default 143");
    }

    #[test]
    fn exec_check_requires_command() {
        let c = with_check("disk", check(CheckKind::Exec));
        assert_refused(&c, "checks.disk.command", "needs the program");
        let mut e = check(CheckKind::Exec);
        e.command = Some(vec![]);
        assert_refused(
            &with_check("disk", e),
            "checks.disk.command",
            "command is empty",
        );
    }

    #[test]
    fn exec_command_must_be_absolute() {
        let mut e = check(CheckKind::Exec);
        e.command = Some(vec!["check_disk".into(), "-w".into()]);
        assert_refused(
            &with_check("disk", e),
            "checks.disk.command",
            "absolute path",
        );
    }

    #[test]
    fn command_forbidden_for_protocol_checks() {
        let mut i = check(CheckKind::Imap);
        i.command = Some(vec!["/bin/true".into()]);
        assert_refused(
            &with_check("imap", i),
            "checks.imap.command",
            "only to kind = \"exec\"",
        );
    }

    #[test]
    fn zero_check_durations_refused() {
        let mut i = check(CheckKind::Imap);
        i.interval = Millis::from_millis(0);
        assert_refused(&with_check("imap", i), "checks.imap.interval", "positive");
        let mut i = check(CheckKind::Imap);
        i.timeout = Millis::from_millis(0);
        assert_refused(&with_check("imap", i), "checks.imap.timeout", "positive");
    }

    #[test]
    fn timeout_longer_than_interval_refused() {
        let mut i = check(CheckKind::Imap);
        i.timeout = Millis::from_millis(2000);
        assert_refused(
            &with_check("imap", i),
            "checks.imap.timeout",
            "at most interval",
        );
    }

    #[test]
    fn rise_and_fall_zero_refused() {
        let mut i = check(CheckKind::Imap);
        i.rise = 0;
        i.fall = 0;
        let c = with_check("imap", i);
        assert_refused(&c, "checks.imap.rise", "at least 1");
        assert_refused(&c, "checks.imap.fall", "at least 1");
    }

    #[test]
    fn starttls_only_for_plaintext_protocols() {
        for kind in [
            CheckKind::Smtp,
            CheckKind::Submission,
            CheckKind::Imap,
            CheckKind::Pop3,
        ] {
            let mut k = check(kind);
            k.starttls = true;
            assert_valid(&with_check("x", k));
        }
        let mut k = check(CheckKind::Imaps);
        k.starttls = true;
        assert_refused(&with_check("x", k), "checks.x.starttls", "already uses TLS");
        let mut k = check(CheckKind::Lmtp);
        k.starttls = true;
        assert_refused(&with_check("x", k), "checks.x.starttls", "not lmtp");
    }

    #[test]
    fn login_only_for_imap_and_pop3() {
        let mut s = check(CheckKind::Smtp);
        s.login_user = Some("probe".into());
        s.password_file = Some("/etc/clusterd/probe.pass".into());
        assert_refused(
            &with_check("x", s),
            "checks.x.login_user",
            "imap, imaps, pop3, pop3s",
        );
        let mut p = check(CheckKind::Pop3s);
        p.login_user = Some("probe".into());
        p.password_file = Some("/etc/clusterd/probe.pass".into());
        assert_valid(&with_check("x", p));
    }

    #[test]
    fn login_user_requires_password_file() {
        let mut i = check(CheckKind::Imap);
        i.login_user = Some("probe".into());
        assert_refused(
            &with_check("imap", i),
            "checks.imap.password_file",
            "needs the password",
        );
    }

    #[test]
    fn password_file_requires_login_user() {
        let mut i = check(CheckKind::Imap);
        i.password_file = Some("/etc/clusterd/probe.pass".into());
        assert_refused(
            &with_check("imap", i),
            "checks.imap.login_user",
            "login_user is not",
        );
    }

    #[test]
    fn relative_password_file_refused() {
        let mut i = check(CheckKind::Imap);
        i.login_user = Some("probe".into());
        i.password_file = Some("probe.pass".into());
        assert_refused(
            &with_check("imap", i),
            "checks.imap.password_file",
            "absolute path",
        );
    }

    #[test]
    fn listeners_sharing_a_port_on_overlapping_addresses_are_refused_naming_both() {
        let with_dns = |listen: &[&str]| {
            let mut c = base();
            c.dns.as_mut().unwrap().listen = listen.iter().map(|l| l.parse().unwrap()).collect();
            c
        };
        // DNS over TCP on the API's own address and port.
        assert_refused(
            &with_dns(&["192.0.2.11:7400"]),
            "dns.listen[0]",
            "overlaps node.listen (192.0.2.11:7400)",
        );
        // All addresses overlaps every address of the family, IPv6's any overlaps IPv4 too.
        assert_refused(&with_dns(&["0.0.0.0:7400"]), "dns.listen[0]", "node.listen");
        assert_refused(&with_dns(&["[::]:7400"]), "dns.listen[0]", "node.listen");
        // Another port, or another address, is fine.
        assert_valid(&with_dns(&[
            "192.0.2.11:53",
            "192.0.2.12:7400",
            "[2001:db8::11]:7400",
        ]));
        // The metrics listener too.
        let mut c = base();
        c.metrics.listen = Some("192.0.2.11:53".parse().unwrap());
        assert_refused(&c, "dns.listen[0]", "overlaps metrics.listen");
    }

    #[test]
    fn dns_rate_limit_defaults_on_and_one_past_its_maximum_is_refused() {
        let c = base();
        assert_eq!(c.dns.as_ref().unwrap().rate_limit, DEFAULT_DNS_RATE_LIMIT);
        let mut c = base();
        c.dns.as_mut().unwrap().rate_limit = MAX_DNS_RATE_LIMIT;
        assert_valid(&c);
        c.dns.as_mut().unwrap().rate_limit = MAX_DNS_RATE_LIMIT + 1;
        assert_refused(&c, "dns.rate_limit", "0 to turn the limit off");
        c.dns.as_mut().unwrap().rate_limit = 0;
        assert_valid(&c);
    }

    #[test]
    fn queue_threshold_only_for_smtp_kinds() {
        let mut s = check(CheckKind::Smtps);
        s.queue_threshold = Some(1000);
        assert_valid(&with_check("x", s));
        let mut i = check(CheckKind::Imap);
        i.queue_threshold = Some(1000);
        assert_refused(
            &with_check("x", i),
            "checks.x.queue_threshold",
            "smtp, submission, smtps",
        );
        let mut z = check(CheckKind::Smtp);
        z.queue_threshold = Some(0);
        assert_refused(
            &with_check("x", z),
            "checks.x.queue_threshold",
            "at least 1",
        );
    }

    // ----- dns -----

    fn zone(c: &mut Config) -> &mut ZoneConfig {
        &mut c.dns.as_mut().expect("dns").zones[0]
    }

    #[test]
    fn zone_name_must_end_with_dot() {
        let mut c = base();
        zone(&mut c).name = "mail.example.com".into();
        assert_refused(&c, "dns.zones[0].name", "write \"mail.example.com.\"");
    }

    #[test]
    fn zone_name_with_bad_label_refused() {
        for bad in [
            "mail..example.com.",
            "Mail.example.com.",
            "-mail.example.com.",
            ".",
        ] {
            let mut c = base();
            zone(&mut c).name = bad.into();
            assert_refused(&c, "dns.zones[0].name", "");
        }
        let mut c = base();
        zone(&mut c).name = format!("{}.example.com.", "a".repeat(64));
        assert_refused(&c, "dns.zones[0].name", "1 to 63");
    }

    #[test]
    fn zone_name_longer_than_253_refused() {
        let mut c = base();
        let long = vec!["a".repeat(63); 4].join(".");
        zone(&mut c).name = format!("{long}.");
        assert_refused(&c, "dns.zones[0].name", "at most 253");
    }

    #[test]
    fn duplicate_zones_refused() {
        let mut c = base();
        let z = zone(&mut c).clone();
        c.dns.as_mut().expect("dns").zones.push(z);
        assert_refused(&c, "dns.zones[1].name", "already defined as dns.zones[0]");
    }

    #[test]
    fn dns_name_service_must_name_a_check() {
        let mut c = base();
        zone(&mut c)
            .names
            .insert("pop3".into(), vec!["pop3".into()]);
        assert_refused(&c, "dns.zones[0].names.pop3[0]", "\"pop3\" names no check");
    }

    #[test]
    fn dns_name_must_be_a_label_or_apex() {
        let mut c = base();
        zone(&mut c).names.insert("@".into(), vec!["smtp".into()]);
        assert_valid(&c);
        zone(&mut c)
            .names
            .insert("imap.eu".into(), vec!["imap".into()]);
        assert_refused(&c, "dns.zones[0].names.imap.eu", "\"@\" for the zone apex");
    }

    #[test]
    fn mx_must_name_a_zone_name() {
        let mut c = base();
        zone(&mut c).mx.push("mx".into());
        assert_refused(
            &c,
            "dns.zones[0].mx[1]",
            "\"mx\" is not one of this zone's names",
        );
    }

    #[test]
    fn dns_without_listen_refused() {
        let mut c = base();
        c.dns.as_mut().expect("dns").listen.clear();
        assert_refused(&c, "dns.listen", "at least one");
    }

    #[test]
    fn dns_without_zones_refused() {
        let mut c = base();
        c.dns.as_mut().expect("dns").zones.clear();
        assert_refused(&c, "dns.zones", "add a [[dns.zones]]");
    }

    #[test]
    fn dns_ttl_out_of_range_refused() {
        for bad in [0, 86_401] {
            let mut c = base();
            c.dns.as_mut().expect("dns").ttl = bad;
            assert_refused(&c, "dns.ttl", "1 to 86400");
        }
    }

    #[test]
    fn witness_with_dns_refused() {
        let mut c = base();
        c.node.role = Role::Witness;
        c.addresses.retain(|a| a.home != "mx1");
        assert_refused(&c, "dns", "does not serve DNS");
        c.dns = None;
        assert_valid(&c);
    }
}
