//! TEMPORARY stub: replaced by the real config module.
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role { #[default] Mail, Witness }

#[derive(Debug, Clone)]
pub struct Config { pub node: Node, pub cluster: Cluster, pub raft: Raft, pub peers: Vec<Peer>, pub addresses: Vec<Address> }
#[derive(Debug, Clone)]
pub struct Node { pub name: String, pub role: Role, pub listen: SocketAddr, pub advertise: Option<SocketAddr>, pub data_dir: PathBuf, pub key_file: PathBuf }
#[derive(Debug, Clone)]
pub struct Cluster { pub voters: Option<Vec<String>>, pub allow_two_voters: bool }
#[derive(Debug, Clone)]
pub struct Raft { pub heartbeat_interval: Dur, pub election_timeout_min: Dur, pub election_timeout_max: Dur, pub snapshot_after: u64, pub history_limit: usize }
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);
#[derive(Debug, Clone)]
pub struct Peer { pub name: String, pub address: SocketAddr, pub role: Role }
#[derive(Debug, Clone)]
pub struct Address { pub ip: IpPrefix, pub interface: String, pub home: String, pub services: Vec<String> }
#[derive(Debug, Clone)]
pub struct IpPrefix { pub addr: std::net::IpAddr, pub prefix_len: u8 }
impl std::fmt::Display for IpPrefix { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{}/{}", self.addr, self.prefix_len) } }
pub struct MemberSpec { pub name: String, pub address: SocketAddr, pub role: Role }
#[derive(Debug, thiserror::Error)]
#[error("config")]
pub struct ConfigError { pub problems: Vec<String> }
pub fn load(_path: &Path) -> Result<Config, ConfigError> { Err(ConfigError { problems: vec![] }) }
impl Config {
    pub fn members(&self) -> Vec<MemberSpec> { let mut v: Vec<MemberSpec> = self.peers.iter().map(|p| MemberSpec { name: p.name.clone(), address: p.address, role: p.role }).collect(); v.push(MemberSpec { name: self.node.name.clone(), address: self.advertise(), role: self.node.role }); v.sort_by(|a, b| a.name.cmp(&b.name)); v }
    pub fn voters(&self) -> Vec<String> { self.cluster.voters.clone().unwrap_or_else(|| self.members().into_iter().map(|m| m.name).collect()) }
    pub fn is_voter(&self, name: &str) -> bool { self.voters().iter().any(|v| v == name) }
    pub fn advertise(&self) -> SocketAddr { self.node.advertise.unwrap_or(self.node.listen) }
}
pub fn check_member_name(name: &str) -> Result<(), String> { if name.is_empty() { Err("empty".into()) } else { Ok(()) } }
