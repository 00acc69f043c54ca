//! In-memory [`NetOps`] for tests: a shared "world" of nodes with their configured addresses
//! and guards, which records every instant at which two nodes would both answer for one
//! address (configured there and allowed by that node's guard).
//!
//! This is for tests of the runtime's logic only; the real kernel work is in `linux`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{NetError, NetOps};
use crate::config::IpPrefix;

/// One node's kernel as the world sees it.
#[derive(Debug, Default)]
struct Host {
    addrs: BTreeMap<String, BTreeSet<IpPrefix>>,
    guarded: BTreeSet<IpAddr>,
    allowed: BTreeMap<IpAddr, Instant>,
    announcements: Vec<(IpAddr, Instant)>,
}

impl Host {
    fn answers_for(&self, ip: IpAddr, now: Instant) -> bool {
        let configured = self.addrs.values().any(|s| s.iter().any(|p| p.addr == ip));
        let allowed =
            !self.guarded.contains(&ip) || self.allowed.get(&ip).is_some_and(|t| *t > now);
        configured && allowed
    }
}

/// The shared world of all in-memory nodes.
#[derive(Debug, Default)]
pub struct World {
    hosts: Mutex<BTreeMap<String, Host>>,
    violations: Mutex<Vec<String>>,
    /// Per node, which life of its daemon may act ([`World::kill`] ends one).
    lives: Mutex<BTreeMap<String, u64>>,
    /// Nodes whose address operations wait ([`World::pause`]).
    paused: Mutex<BTreeSet<String>>,
}

impl World {
    /// A new, empty world.
    pub fn new() -> Arc<World> {
        Arc::new(World::default())
    }

    /// The `NetOps` of `node` in this world (for the node's current life).
    pub fn node(self: &Arc<Self>, node: &str) -> MemNet {
        crate::lock(&self.hosts)
            .entry(node.to_string())
            .or_default();
        MemNet {
            world: self.clone(),
            node: node.to_string(),
            life: self.life(node),
        }
    }

    fn life(&self, node: &str) -> u64 {
        crate::lock(&self.lives).get(node).copied().unwrap_or(0)
    }

    /// `kill -9` of `node`'s daemon as its kernel sees it: every `MemNet` handed out so far
    /// for it does nothing from now on, and its addresses and guard stay as they are (the
    /// guard's allowance runs out by itself). [`World::node`] gives the next life a new one.
    pub fn kill(&self, node: &str) {
        *crate::lock(&self.lives)
            .entry(node.to_string())
            .or_default() += 1;
    }

    /// Hold (`true`) or release every address operation of `node` (a frozen daemon: its
    /// guard's allowance keeps running out meanwhile).
    pub fn pause(&self, node: &str, paused: bool) {
        let mut p = crate::lock(&self.paused);
        if paused {
            p.insert(node.to_string());
        } else {
            p.remove(node);
        }
    }

    fn is_paused(&self, node: &str) -> bool {
        crate::lock(&self.paused).contains(node)
    }

    /// Nodes that answer for `ip` right now.
    pub fn holders(&self, ip: IpAddr) -> Vec<String> {
        let now = crate::clock::now();
        crate::lock(&self.hosts)
            .iter()
            .filter(|(_, h)| h.answers_for(ip, now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// How many announcements `node` sent for `ip`.
    pub fn announcements(&self, node: &str, ip: IpAddr) -> usize {
        crate::lock(&self.hosts)
            .get(node)
            .map(|h| h.announcements.iter().filter(|(a, _)| *a == ip).count())
            .unwrap_or(0)
    }

    /// Every moment two nodes answered for one address, as found at each change.
    pub fn violations(&self) -> Vec<String> {
        crate::lock(&self.violations).clone()
    }

    /// Remove an address from a node behind the daemon's back (drift).
    pub fn remove_by_hand(&self, node: &str, iface: &str, addr: IpPrefix) {
        let mut hosts = crate::lock(&self.hosts);
        if let Some(set) = hosts.get_mut(node).and_then(|h| h.addrs.get_mut(iface)) {
            set.remove(&addr);
        }
    }

    fn check(&self, hosts: &BTreeMap<String, Host>, ip: IpAddr) {
        let now = crate::clock::now();
        let holders: Vec<&String> = hosts
            .iter()
            .filter(|(_, h)| h.answers_for(ip, now))
            .map(|(n, _)| n)
            .collect();
        if holders.len() > 1 {
            let lives = crate::lock(&self.lives).clone();
            let who: Vec<String> = holders
                .iter()
                .map(|n| {
                    let h = &hosts[*n];
                    let guard = match (h.guarded.contains(&ip), h.allowed.get(&ip)) {
                        (false, _) => "unguarded".to_string(),
                        (true, Some(t)) => format!(
                            "guard open {} ms more",
                            t.saturating_duration_since(now).as_millis()
                        ),
                        (true, None) => "guard closed".to_string(),
                    };
                    format!(
                        "{n} (life {}, {guard})",
                        lives.get(*n).copied().unwrap_or(0)
                    )
                })
                .collect();
            crate::lock(&self.violations).push(format!(
                "{ip} answered by {} at unix ms {}",
                who.join(" and "),
                crate::clock::unix_ms()
            ));
        }
    }
}

/// One node's view of the world.
#[derive(Debug, Clone)]
pub struct MemNet {
    world: Arc<World>,
    node: String,
    life: u64,
}

impl MemNet {
    /// Run `f` on this node's host, once the node is not paused; nothing (the default) for a
    /// life that was killed.
    async fn with_host<T: Default>(
        &self,
        f: impl FnOnce(&mut Host, &World, &mut BTreeMap<String, Host>) -> T,
    ) -> T {
        while self.world.is_paused(&self.node) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if self.world.life(&self.node) != self.life {
            return T::default();
        }
        let mut hosts = crate::lock(&self.world.hosts);
        let mut host = hosts.remove(&self.node).unwrap_or_default();
        let out = f(&mut host, &self.world, &mut hosts);
        hosts.insert(self.node.clone(), host);
        out
    }
}

impl NetOps for MemNet {
    async fn list(&self, iface: &str) -> Result<Vec<IpPrefix>, NetError> {
        Ok(self
            .with_host(|h, _, _| {
                h.addrs
                    .get(iface)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default()
            })
            .await)
    }

    async fn add(&self, iface: &str, addr: IpPrefix, _lifetime_secs: u32) -> Result<(), NetError> {
        self.with_host(|h, world, others| {
            h.addrs.entry(iface.to_string()).or_default().insert(addr);
            let me = std::mem::take(h);
            others.insert(self.node.clone(), me);
            world.check(others, addr.addr);
            *h = others.remove(&self.node).unwrap_or_default();
        })
        .await;
        Ok(())
    }

    async fn remove(&self, iface: &str, addr: IpPrefix) -> Result<(), NetError> {
        self.with_host(|h, _, _| {
            if let Some(set) = h.addrs.get_mut(iface) {
                set.remove(&addr);
            }
        })
        .await;
        Ok(())
    }

    async fn announce(&self, _iface: &str, ip: IpAddr) -> Result<(), NetError> {
        self.with_host(|h, _, _| h.announcements.push((ip, crate::clock::now())))
            .await;
        Ok(())
    }

    async fn guard_setup(
        &self,
        floating: &[IpAddr],
        _interfaces: &[String],
    ) -> Result<(), NetError> {
        self.with_host(|h, _, _| h.guarded = floating.iter().copied().collect())
            .await;
        Ok(())
    }

    async fn guard_allow(&self, allowed: &[IpAddr], until: Instant) -> Result<(), NetError> {
        self.with_host(|h, world, others| {
            h.allowed = allowed.iter().map(|ip| (*ip, until)).collect();
            let me = std::mem::take(h);
            others.insert(self.node.clone(), me);
            for ip in allowed {
                world.check(others, *ip);
            }
            *h = others.remove(&self.node).unwrap_or_default();
        })
        .await;
        Ok(())
    }

    async fn guard_teardown(&self) -> Result<(), NetError> {
        self.with_host(|h, _, _| {
            h.guarded.clear();
            h.allowed.clear();
        })
        .await;
        Ok(())
    }
}
