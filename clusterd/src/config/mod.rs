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
