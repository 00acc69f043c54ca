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

mod addresses;
mod checks;
mod cluster;
mod dns;
mod fencing;
mod leases;
mod observe;
mod problems;
mod raft;
mod values;
pub use addresses::*;
pub use checks::*;
pub use cluster::*;
pub use dns::*;
pub use fencing::{
    DEFAULT_WEBHOOK_BODY, FenceAgentConfig, FenceAgentKind, FencingConfig, OptionsViaKind,
    RedfishAuthKind,
};
pub use leases::*;
pub use observe::{HookEventKind, HooksConfig, MetricsConfig};
pub use problems::*;
pub use raft::*;
pub use values::*;

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

use crate::model::{AddressSpec, Role};

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

impl From<Millis> for Duration {
    fn from(m: Millis) -> Self {
        m.0
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

impl Config {
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
    pub(super) fn parse_err(text: &str) -> Problem {
        match parse(text) {
            Ok(_) => panic!("expected a parse error"),
            Err(e) => {
                assert_eq!(e.problems.len(), 1, "{e}");
                e.problems[0].clone()
            }
        }
    }

    pub(super) fn peer(name: &str, last_octet: u8, role: Role) -> PeerConfig {
        PeerConfig {
            name: name.to_string(),
            address: SocketAddr::from(([192, 0, 2, last_octet], 7400)),
            role,
        }
    }

    pub(super) fn check(kind: CheckKind) -> CheckConfig {
        CheckConfig::new(kind)
    }

    pub(super) fn with_check(name: &str, c: CheckConfig) -> Config {
        let mut cfg = base();
        cfg.checks.insert(name.to_string(), c);
        cfg
    }

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
}
