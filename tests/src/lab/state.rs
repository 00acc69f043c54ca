//! The lab's persistent state: one JSON file in the run directory that says what exists, so
//! `lab` commands from another shell, `lab down` and the sweeper all act on the same facts.
//!
//! Naming: every namespace and interface starts with the run prefix (`cdl` + 5 hex digits), the
//! only thing the sweeper ever matches on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{IoContext, LabError, Result};
use super::process::ProcId;

/// Where run directories live unless the spec says otherwise.
pub const DEFAULT_RUN_ROOT: &str = "/run/clusterd-lab";
/// The fixed part of every run prefix.
pub const PREFIX_TAG: &str = "cdl";
/// Name of the state file inside a run directory.
pub const STATE_FILE: &str = "state.json";
/// Port clusterd listens on for peers and the admin API.
pub const CLUSTERD_PORT: u16 = 7400;
/// The IMAP/POP3 test user and its password.
pub const MAIL_USER: &str = "alice";
/// Password of [`MAIL_USER`].
pub const MAIL_PASSWORD: &str = "lab-password-alice";
/// The mail domain every node accepts.
pub const MAIL_DOMAIN: &str = "lab.example";

/// A fresh run prefix: `cdl` and 5 random hex digits (8 characters, so that interface names
/// like `cdl1a2b3-mx16b` stay within the kernel's 15-character limit).
pub fn new_prefix() -> String {
    format!("{PREFIX_TAG}{:05x}", rand::random::<u32>() & 0xf_ffff)
}

/// If `name` belongs to some lab run (starts with a run prefix followed by `-` or the end),
/// return that prefix.
pub fn run_prefix_of(name: &str) -> Option<&str> {
    let prefix = name.get(..PREFIX_TAG.len() + 5)?;
    let rest = &name[prefix.len()..];
    let ok = prefix.starts_with(PREFIX_TAG)
        && prefix[PREFIX_TAG.len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && (rest.is_empty() || rest.starts_with('-'));
    ok.then_some(prefix)
}

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs dovecot and postfix, may hold floating addresses.
    Mail,
    /// Votes only.
    Witness,
}

impl NodeRole {
    /// The role's name in clusterd's config.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Mail => "mail",
            NodeRole::Witness => "witness",
        }
    }
}

/// One node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// `mx1`, `mx2`, ... or `w1`.
    pub name: String,
    /// Mail node or witness.
    pub role: NodeRole,
    /// The node's network namespace.
    pub netns: String,
    /// The node's veth end, inside its namespace (`<prefix>-lan`, the same on every node).
    pub iface: String,
    /// The bridge-side veth end, inside the switch namespace.
    pub bridge_port: String,
    /// The node's MAC address on `iface`.
    pub mac: String,
    /// Fixed IPv4 address (`192.0.2.(10+i)`, /24).
    pub ipv4: Ipv4Addr,
    /// Fixed IPv6 address (`2001:db8::(10+i)`, /64).
    pub ipv6: Ipv6Addr,
    /// Per-node directory with configs, state and logs.
    pub dir: PathBuf,
    /// The floating address whose home this node is (mail nodes only).
    pub floating: Option<Ipv4Addr>,
    /// The IPv6 floating address whose home this node is (mail nodes of a lab with IPv6
    /// floating addresses only).
    #[serde(default)]
    pub floating6: Option<Ipv6Addr>,
    /// clusterd's config file, when clusterd runs in this lab.
    pub clusterd_config: Option<PathBuf>,
    /// The running clusterd process.
    pub clusterd: Option<ProcId>,
    /// dovecot's master process (mail nodes).
    pub dovecot: Option<ProcId>,
    /// Busy loops starving the node's CPU ([`crate::lab::Fault::Starve`]), while they run.
    #[serde(default)]
    pub starvers: Vec<ProcId>,
}

impl NodeState {
    /// Directory of this node's postfix configuration.
    pub fn postfix_config_dir(&self) -> PathBuf {
        self.dir.join("postfix")
    }

    /// dovecot's config file.
    pub fn dovecot_config(&self) -> PathBuf {
        self.dir.join("dovecot").join("dovecot.conf")
    }
}

/// The client namespace: plays the mail client and the resolver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientState {
    /// Its namespace.
    pub netns: String,
    /// Its interface inside the namespace.
    pub iface: String,
    /// The bridge-side end.
    pub bridge_port: String,
    /// Its MAC address.
    pub mac: String,
    /// `192.0.2.200`.
    pub ipv4: Ipv4Addr,
    /// `2001:db8::200`.
    pub ipv6: Ipv6Addr,
}

/// A floating address the cluster will own (the lab only plans it; clusterd configures it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloatingAddr {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The mail node it belongs to when everything is healthy.
    pub home: String,
}

/// Where addresses go back to after a failover, as written into every node's clusterd config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// `failback = "auto"`: an address returns home once its home node has held a lease for
    /// this long (`failback_after`).
    AutoFailback(std::time::Duration),
    /// `failback = "manual"`: an address stays where it is until an operator moves it.
    ManualFailback,
}

/// Everything a running lab consists of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// The run prefix every namespace and interface name starts with.
    pub prefix: String,
    /// The run directory holding this file, node directories and logs.
    pub run_dir: PathBuf,
    /// The process that owns the lab and tears it down on exit; `None` for a lab left running
    /// by `lab up` on purpose (only `lab down` removes it then).
    pub owner: Option<ProcId>,
    /// The namespace holding the bridge.
    pub switch_netns: String,
    /// The bridge's name.
    pub bridge: String,
    /// The client namespace.
    pub client: ClientState,
    /// All nodes, mail nodes first.
    pub nodes: Vec<NodeState>,
    /// Floating addresses: one IPv4 address per mail node, then one IPv6 address per mail
    /// node when the lab has IPv6 floating addresses.
    pub floating: Vec<FloatingAddr>,
    /// The `[placement]` section every node's clusterd config gets (`None`: clusterd's
    /// defaults).
    #[serde(default)]
    pub placement: Option<Placement>,
    /// `[dns] fail_open` of every mail node (`None`: clusterd's default, fail open).
    #[serde(default)]
    pub dns_fail_open: Option<bool>,
    /// TOML lines added to every mail node's `[checks.imap]` (empty: the defaults).
    #[serde(default)]
    pub imap_check_extra: String,
    /// Inodes of the lab's namespaces, to find processes still inside them after teardown.
    #[serde(default)]
    pub netns_inodes: Vec<u64>,
    /// The clusterd binary used, if any.
    pub clusterd_bin: Option<PathBuf>,
    /// The clusterctl binary used, if any.
    pub clusterctl_bin: Option<PathBuf>,
}

impl LabState {
    /// Path of the state file.
    pub fn state_file(&self) -> PathBuf {
        self.run_dir.join(STATE_FILE)
    }

    /// Write the state atomically (temp file + rename).
    pub fn save(&self) -> Result<()> {
        let tmp = self.run_dir.join(format!("{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| LabError::State(format!("serialising lab state: {e}")))?;
        std::fs::write(&tmp, json).ctx(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.state_file())
            .ctx(|| format!("renaming {} into place", tmp.display()))
    }

    /// Read the state of the lab in `run_dir`.
    pub fn load(run_dir: &Path) -> Result<LabState> {
        let path = run_dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| LabError::State(format!("{} is not a lab state: {e}", path.display())))
    }

    /// All namespaces of this lab, switch last (so ports vanish before the bridge).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().map(|n| n.netns.clone()).collect();
        v.push(self.client.netns.clone());
        v.push(self.switch_netns.clone());
        v
    }

    /// Look up a node by name.
    pub fn node(&self, name: &str) -> Result<&NodeState> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::UnknownNode(name.to_owned()))
    }

    /// Mutable lookup by name.
    pub fn node_mut(&mut self, name: &str) -> Result<&mut NodeState> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::UnknownNode(name.to_owned()))
    }

    /// The mail nodes.
    pub fn mail_nodes(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(|n| n.role == NodeRole::Mail)
    }

    /// Which node a MAC address belongs to, if any.
    pub fn node_by_mac(&self, mac: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.mac.eq_ignore_ascii_case(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_prefix_is_recognised_only_with_tag_hex_and_separator() {
        let p = new_prefix();
        assert_eq!(p.len(), 8);
        assert_eq!(run_prefix_of(&format!("{p}-mx1")), Some(p.as_str()));
        assert_eq!(run_prefix_of(&p), Some(p.as_str()));
        assert_eq!(run_prefix_of("cdl1a2b3x-mx1"), None);
        assert_eq!(run_prefix_of("cdlzzzzz-mx1"), None);
        assert_eq!(run_prefix_of("eth0"), None);
        assert_eq!(run_prefix_of("cdl1A2b3-mx1"), None);
    }
}
