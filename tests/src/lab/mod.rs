//! The lab: builds a mail cluster out of network namespaces and tears it down again.
//!
//! [`Lab::up`] creates the namespaces, bridge and veths ([`topology`]), starts dovecot and
//! postfix on every mail node ([`mail`]), and clusterd on every node when a binary is known
//! ([`clusterd`]). The state is saved in the run directory after every change, so
//! [`Lab::attach`] from another process (the `lab` program) sees the same lab. Dropping an owned
//! [`Lab`] tears it down; [`Lab::detach`] leaves it running for `lab down`.
//!
//! This module must never touch anything without the run prefix, never route the lab anywhere,
//! and never end a process it did not start.

pub mod cleanup;
pub mod clusterd;
mod error;
pub mod exclusive;
pub mod keepalived;
pub mod mail;
pub mod netns;
pub mod prereq;
pub mod process;
pub mod state;
pub mod testing;
pub mod topology;
pub mod unprivileged;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub use error::{LabError, Result};
pub use mail::Service;
pub use state::{ClientState, FloatingAddr, LabState, NodeRole, NodeState, Placement};

use error::IoContext;
use process::{ProcId, describe, ns_command, run};

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Number of mail nodes (`mx1`..): 1 to 16.
    pub mail_nodes: usize,
    /// Whether to add a witness node `w1`.
    pub witness: bool,
    /// Parent of the run directory (default `/run/clusterd-lab`).
    pub run_root: PathBuf,
    /// Start dovecot and postfix on the mail nodes.
    pub mail_services: bool,
    /// Run clusterd on every node. Needs at least three nodes (e.g. two mail nodes and the
    /// witness), because a cluster needs three voters.
    pub run_daemons: bool,
    /// clusterd binary; `None` falls back to `$CLUSTERD_BIN`, then to the one built next to
    /// the running program; if none is found, no daemon runs.
    pub clusterd_bin: Option<PathBuf>,
    /// clusterctl binary; default `$CLUSTERCTL_BIN` or next to clusterd.
    pub clusterctl_bin: Option<PathBuf>,
    /// Wait until the daemons agree on a leader (only when clusterd and clusterctl are known).
    pub wait_for_leader: bool,
    /// Deadline for services to answer and for the leader election.
    pub ready_timeout: Duration,
    /// TOML appended to every node's clusterd config (cluster-wide sections such as
    /// `[fencing]`); empty for none.
    pub extra_config: String,
    /// Also give every mail node an IPv6 floating address (`2001:db8::101`, ... /64) besides
    /// its IPv4 one.
    pub ipv6_floating: bool,
    /// clusterd's `[placement]` (failback) in every node's config; `None`: clusterd's default
    /// (automatic failback after 60 s).
    pub placement: Option<Placement>,
    /// `[dns] fail_open` in every mail node's config; `None`: clusterd's default (answer every
    /// address when none passes). `Some(false)` makes every answer a claim that its
    /// addresses are served, which the chaos campaign checks.
    pub dns_fail_open: Option<bool>,
    /// TOML lines added to every mail node's `[checks.imap]`, e.g. `fall = 3`; empty for the
    /// defaults.
    pub imap_check_extra: String,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            mail_nodes: 2,
            witness: true,
            run_root: PathBuf::from(state::DEFAULT_RUN_ROOT),
            mail_services: true,
            run_daemons: true,
            clusterd_bin: None,
            clusterctl_bin: None,
            wait_for_leader: true,
            ready_timeout: Duration::from_secs(30),
            extra_config: String::new(),
            ipv6_floating: false,
            placement: None,
            dns_fail_open: None,
            imap_check_extra: String::new(),
        }
    }
}

/// A fault the lab can inject into a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the node's clusterd.
    Kill,
    /// SIGSTOP the node's clusterd (a frozen daemon).
    Stop,
    /// SIGCONT it again.
    Cont,
    /// Stop the node's clusterd (SIGTERM, then SIGKILL) if it runs, and start it again.
    Restart,
    /// Take the node's link down at the switch (the node sees carrier loss).
    LinkDown,
    /// Bring it back.
    LinkUp,
    /// Drop IP traffic between the node and the other nodes (or only `from`), with nftables
    /// inside the node's namespace. Accumulates; the client still reaches the node.
    Partition {
        /// Only cut this one peer.
        from: Option<String>,
    },
    /// One-way partition: the node hears nothing from the other nodes (or only from `from`),
    /// while what it sends still arrives. Accumulates with the other partition faults.
    DeafTo {
        /// Only this peer.
        from: Option<String>,
    },
    /// One-way partition: nothing the node sends reaches the other nodes (or only `to`), while
    /// it still hears them. Accumulates with the other partition faults.
    MuteTo {
        /// Only this peer.
        to: Option<String>,
    },
    /// Remove every partition rule of the node.
    Heal,
    /// Starve the node's clusterd of CPU: as many busy loops as the machine has CPUs run in the
    /// node's namespace (at nice 19) and the daemon is put in the idle scheduling class, so
    /// it runs only when nothing else wants a CPU.
    Starve,
    /// End the starvation: the busy loops are killed, the daemon is scheduled normally again.
    Unstarve,
    /// Stop dovecot or postfix on the node (SIGTERM: the service shuts down in its own way).
    ServiceStop(Service),
    /// Crash dovecot or postfix: SIGKILL of its master process alone; its workers exit by
    /// themselves (any left after 2 s are killed too).
    ServiceCrash(Service),
    /// Start it again.
    ServiceStart(Service),
    /// Silently drop incoming TCP to this port inside the node (from the client, the peers and
    /// the node's own probes alike): connections hang instead of being refused. Accumulates.
    BlockPort(u16),
    /// Remove every port block of the node.
    UnblockPorts,
}

/// Which directions a partition fault cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ways {
    In,
    Out,
    Both,
}

/// The nftables table the partition fault uses inside a node namespace.
pub const PARTITION_TABLE: &str = "lab_partition";

/// The nftables table the port-block fault uses inside a node namespace.
pub const BLOCK_TABLE: &str = "lab_block";

/// A lab: its state plus the children this process started (reaped, never leaked as zombies).
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    children: HashMap<u32, Child>,
    owned: bool,
}

impl Lab {
    /// Build a lab. On any error everything created so far is removed again.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        prereq::check()?;
        if spec.mail_nodes == 0 || spec.mail_nodes > 16 {
            return Err(LabError::State(format!(
                "a lab has 1 to 16 mail nodes, not {}",
                spec.mail_nodes
            )));
        }
        std::fs::create_dir_all(&spec.run_root)
            .ctx(|| format!("creating {}", spec.run_root.display()))?;
        // Leftovers of crashed runs would only confuse; live labs are left alone.
        cleanup::sweep(&spec.run_root)?;

        let prefix = state::new_prefix();
        let run_dir = spec.run_root.join(&prefix);
        std::fs::create_dir(&run_dir).ctx(|| format!("creating {}", run_dir.display()))?;
        set_mode(&spec.run_root, 0o755)?;
        set_mode(&run_dir, 0o755)?;
        let (clusterd_bin, clusterctl_bin) = if spec.run_daemons {
            clusterd::resolve_binaries(spec.clusterd_bin.clone(), spec.clusterctl_bin.clone())
        } else {
            (None, None)
        };
        let members = spec.mail_nodes + usize::from(spec.witness);
        if clusterd_bin.is_some() && members < 3 {
            return Err(LabError::State(format!(
                "a lab running clusterd needs at least 3 nodes (it has {members}): a cluster \
                 needs 3 voters; add --witness or more mail nodes, or run it without the daemon"
            )));
        }
        let st = plan(&spec, &prefix, &run_dir, clusterd_bin, clusterctl_bin);
        for node in &st.nodes {
            std::fs::create_dir(&node.dir).ctx(|| format!("creating {}", node.dir.display()))?;
            set_mode(&node.dir, 0o755)?;
        }
        st.save()?;
        let mut lab = Lab {
            state: st,
            children: HashMap::new(),
            owned: true,
        };
        // From here on, an error drops `lab`, which tears down what exists.
        topology::build(&lab.state)?;
        lab.state.netns_inodes = lab
            .state
            .namespaces()
            .iter()
            .filter_map(|ns| cleanup::netns_inode(ns))
            .collect();
        lab.state.save()?;
        if spec.mail_services {
            lab.start_mail(spec.ready_timeout)?;
        }
        if let Some(bin) = lab.state.clusterd_bin.clone() {
            clusterd::write_configs(&mut lab.state)?;
            if !spec.extra_config.is_empty() {
                clusterd::append_config(&lab.state, &spec.extra_config)?;
            }
            lab.state.save()?;
            for name in lab.node_names() {
                lab.start_clusterd(&bin, &name)?;
            }
            if spec.wait_for_leader && lab.state.clusterctl_bin.is_some() {
                lab.wait_for_leader(spec.ready_timeout)?;
            }
        }
        Ok(lab)
    }

    /// Attach to a lab left running in `run_dir` (by `lab up`). Dropping it changes nothing.
    pub fn attach(run_dir: &Path) -> Result<Lab> {
        Ok(Lab {
            state: LabState::load(run_dir)?,
            children: HashMap::new(),
            owned: false,
        })
    }

    /// Leave the lab running after this handle is gone; only `lab down` removes it then.
    pub fn detach(mut self) -> Result<LabState> {
        self.state.owner = None;
        self.state.save()?;
        self.owned = false;
        Ok(self.state.clone())
    }

    /// Tear the lab down now: stop every process, delete every namespace and the run directory.
    pub fn down(mut self) -> Result<()> {
        self.owned = false;
        self.reap();
        let r = cleanup::teardown(&self.state);
        self.reap();
        r
    }

    /// The lab's state (names, addresses, pids, directories).
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// Names of all nodes, mail nodes first.
    pub fn node_names(&self) -> Vec<String> {
        self.state.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Result<&NodeState> {
        self.state.node(name)
    }

    /// The floating address whose home is mail node `name`.
    pub fn floating_of(&self, name: &str) -> Result<std::net::Ipv4Addr> {
        self.node(name)?
            .floating
            .ok_or_else(|| LabError::State(format!("{name} has no floating address (a witness?)")))
    }

    /// The IPv6 floating address whose home is mail node `name`.
    pub fn floating6_of(&self, name: &str) -> Result<std::net::Ipv6Addr> {
        self.node(name)?.floating6.ok_or_else(|| {
            LabError::State(format!(
                "{name} has no IPv6 floating address (a witness, or a lab without \
                 LabSpec::ipv6_floating?)"
            ))
        })
    }

    /// Whether clusterd runs in this lab.
    pub fn has_clusterd(&self) -> bool {
        self.state.clusterd_bin.is_some()
    }

    /// A command that runs inside node `name`'s namespace.
    pub fn command(&self, name: &str, program: &str) -> Result<Command> {
        Ok(ns_command(&self.node(name)?.netns, program))
    }

    /// Run `f` on a thread inside the client namespace (mail sessions, DNS queries, ...).
    pub fn in_client<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        netns::run_in(&self.state.client.netns, f)
    }

    /// Run `f` on a thread inside node `name`'s namespace.
    pub fn in_node<R, F>(&self, name: &str, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        netns::run_in(&self.node(name)?.netns, f)
    }

    /// The namespace of node `name`, or of the client for `"client"`.
    pub fn netns_of(&self, name: &str) -> Result<String> {
        if name == "client" {
            Ok(self.state.client.netns.clone())
        } else {
            Ok(self.node(name)?.netns.clone())
        }
    }

    /// The first line a server at `addr` sends, as seen from `from` (a node or `"client"`);
    /// the inner error says why nothing came (refused, timed out, ...).
    pub fn greeting_from(
        &self,
        from: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<std::result::Result<String, crate::probe::ProbeError>> {
        netns::run_in(&self.netns_of(from)?, move || {
            crate::probe::greeting(addr, timeout)
        })
    }

    /// `dig +short NAME RTYPE` from the client namespace against the DNS server at `server`
    /// (one try, one second): the answer lines, sorted.
    pub fn dig(&self, server: IpAddr, name: &str, rtype: &str) -> Result<Vec<String>> {
        let mut cmd = ns_command(&self.state.client.netns, "dig");
        cmd.arg(format!("@{server}"))
            .args(["+short", "+time=1", "+tries=1", name, rtype]);
        let out = run(&mut cmd).map_err(|e| match e {
            LabError::Io { .. } => LabError::Prerequisite {
                what: "dig".into(),
                fix: "apt-get install -y dnsutils".into(),
            },
            other => other,
        })?;
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        lines.sort();
        Ok(lines)
    }

    /// The SOA serial of the lab zone as the DNS server at `server` answers it.
    pub fn dns_serial(&self, server: IpAddr) -> Option<u64> {
        self.dig(server, clusterd::LAB_ZONE, "SOA")
            .ok()?
            .first()?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    }

    /// The node named in the IMAP greeting on `ip` port 143, as the client sees it now (`None`:
    /// no greeting within 300 ms, or one naming no node).
    pub fn imap_greeter(&self, ip: IpAddr) -> Option<String> {
        let addr = SocketAddr::new(ip, 143);
        let greeting = self
            .greeting_from("client", addr, Duration::from_millis(300))
            .ok()?
            .ok()?;
        crate::probe::greeting_node(&greeting)
    }

    /// Wait (bounded) until the client gets an IMAP greeting from `node` on `ip`; returns how
    /// long that took.
    pub fn wait_for_greeter(&self, ip: IpAddr, node: &str, within: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < within {
            last = self.imap_greeter(ip);
            if last.as_deref() == Some(node) {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LabError::Timeout {
            what: format!(
                "{node}'s IMAP greeting on {ip} (last greeter: {})",
                last.as_deref().unwrap_or("none")
            ),
            after: within,
        })
    }

    /// Run `ip ARGS...` inside node `name` (or the client), e.g. to add an address by hand.
    pub fn ip(&self, name: &str, args: &[&str]) -> Result<String> {
        let ns = self.netns_of(name)?;
        run(Command::new("ip").arg("-n").arg(ns).args(args))
    }

    /// The link-layer address node `name`'s (or the client's) kernel has cached for `ip`
    /// (`ip neigh`), in lower case; `None` without an entry.
    pub fn neighbour_mac(&self, name: &str, ip: IpAddr) -> Result<Option<String>> {
        let out = self.ip(name, &["neigh", "show", &ip.to_string()])?;
        Ok(out
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(str::to_lowercase))
    }

    /// Every address configured on node `name`'s interface (as `ip` prints them).
    pub fn addresses_of(&self, name: &str) -> Result<Vec<String>> {
        let node = self.node(name)?;
        let out = run(Command::new("ip").args([
            "-n",
            &node.netns,
            "-o",
            "addr",
            "show",
            "dev",
            &node.iface,
        ]))?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.find(|x| *x == "inet" || *x == "inet6")?;
                w.next().map(str::to_owned)
            })
            .collect())
    }

    /// `clusterctl status --json` as node `name` sees it.
    pub fn cluster_status(&self, name: &str) -> Result<clusterd::ClusterStatus> {
        clusterd::status(&self.state, self.node(name)?)
    }

    /// The cluster's event history (`clusterctl history --json`) as node `name` sees it.
    pub fn history(&self, name: &str) -> Result<Vec<::clusterd::model::Event>> {
        let out = self.clusterctl(name, &["history", "--json"])?;
        serde_json::from_str(&out).map_err(|e| {
            LabError::State(format!(
                "clusterctl history --json on {name} printed something unexpected ({e}): {out}"
            ))
        })
    }

    /// Wait (bounded) until the running daemons agree on a leader; returns its name.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<String> {
        clusterd::wait_for_leader(&self.state, timeout)
    }

    /// Wait (bounded) until the nodes in `observers` agree on a leader (e.g. the majority side
    /// of a partition, which the cut-off old leader would contradict).
    pub fn wait_for_leader_seen_by(&self, observers: &[&str], timeout: Duration) -> Result<String> {
        clusterd::wait_for_leader_seen_by(&self.state, observers, None, timeout)
    }

    /// Wait (bounded) until every other node whose daemon runs agrees on a leader that is not
    /// `old` (after killing, stopping or partitioning `old`). Returns the new leader.
    pub fn wait_for_new_leader(&self, old: &str, timeout: Duration) -> Result<String> {
        let observers: Vec<&str> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.name != old && n.clusterd.is_some_and(|p| p.alive()))
            .map(|n| n.name.as_str())
            .collect();
        clusterd::wait_for_leader_seen_by(&self.state, &observers, Some(old), timeout)
    }

    /// Run `clusterctl --config <node's config> ARGS...` inside node `name`; its stdout.
    pub fn clusterctl(&self, name: &str, args: &[&str]) -> Result<String> {
        clusterd::clusterctl(&self.state, self.node(name)?, args)
    }

    /// Kill every daemon first, then start them all again (a whole-cluster restart).
    pub fn restart_all_daemons(&mut self) -> Result<()> {
        let bin = self.state.clusterd_bin.clone().ok_or_else(no_clusterd)?;
        for node in &self.state.nodes {
            if let Some(p) = node.clusterd {
                p.signal(Signal::SIGKILL)?;
            }
        }
        for node in &self.state.nodes {
            if let Some(p) = node.clusterd
                && !p.wait_gone(Duration::from_secs(5))
            {
                return Err(LabError::Timeout {
                    what: format!("clusterd on {} to die", node.name),
                    after: Duration::from_secs(5),
                });
            }
        }
        self.reap();
        for name in self.node_names() {
            self.start_clusterd(&bin, &name)?;
        }
        Ok(())
    }

    /// Inject a fault into node `name`. Saves the state afterwards.
    pub fn fault(&mut self, name: &str, fault: Fault) -> Result<()> {
        self.reap();
        let node = self.node(name)?.clone();
        match fault {
            Fault::Kill => self.clusterd_pid(&node)?.signal(Signal::SIGKILL)?,
            Fault::Stop => self.clusterd_pid(&node)?.signal(Signal::SIGSTOP)?,
            Fault::Cont => self.clusterd_pid(&node)?.signal(Signal::SIGCONT)?,
            Fault::Restart => {
                let bin = self.state.clusterd_bin.clone().ok_or_else(no_clusterd)?;
                if let Some(p) = node.clusterd {
                    p.terminate(Duration::from_secs(5))?;
                }
                self.start_clusterd(&bin, name)?;
            }
            Fault::LinkDown | Fault::LinkUp => {
                let updown = if fault == Fault::LinkDown {
                    "down"
                } else {
                    "up"
                };
                run(Command::new("ip").args([
                    "-n",
                    &self.state.switch_netns,
                    "link",
                    "set",
                    &node.bridge_port,
                    updown,
                ]))?;
            }
            Fault::Partition { from } => self.partition(&node, from.as_deref(), Ways::Both)?,
            Fault::DeafTo { from } => self.partition(&node, from.as_deref(), Ways::In)?,
            Fault::MuteTo { to } => self.partition(&node, to.as_deref(), Ways::Out)?,
            Fault::Starve => self.starve(&node)?,
            Fault::Unstarve => self.unstarve(&node)?,
            Fault::Heal => {
                let mut cmd = ns_command(&node.netns, "nft");
                cmd.args(["delete", "table", "inet", PARTITION_TABLE]);
                if self.partitioned(name)? {
                    run(&mut cmd)?;
                }
            }
            Fault::ServiceStop(Service::Dovecot) => {
                if let Some(p) = node.dovecot {
                    mail::stop_dovecot(&p)?;
                }
                self.state.node_mut(name)?.dovecot = None;
            }
            Fault::ServiceCrash(Service::Dovecot) => {
                if let Some(p) = node.dovecot {
                    p.crash(Duration::from_secs(2))?;
                }
                self.state.node_mut(name)?.dovecot = None;
            }
            Fault::ServiceCrash(Service::Postfix) => mail::crash_postfix(&node)?,
            Fault::ServiceStart(Service::Dovecot) => {
                if node.dovecot.is_some_and(|p| p.alive()) {
                    return Ok(());
                }
                let (id, child) = mail::start_dovecot(&node)?;
                self.children.insert(id.pid, child);
                self.state.node_mut(name)?.dovecot = Some(id);
                self.wait_service(&node, &[143, 110], Duration::from_secs(10))?;
            }
            Fault::BlockPort(port) => {
                let rules = format!(
                    "table inet {BLOCK_TABLE} {{\n\
                     \tchain input {{ type filter hook input priority -10; policy accept; }}\n\
                     }}\n\
                     add rule inet {BLOCK_TABLE} input tcp dport {port} drop\n"
                );
                nft_script(&node, "block.nft", &rules)?;
            }
            Fault::UnblockPorts => {
                nft_script(
                    &node,
                    "unblock.nft",
                    &format!("table inet {BLOCK_TABLE}\ndelete table inet {BLOCK_TABLE}\n"),
                )?;
            }
            Fault::ServiceStop(Service::Postfix) => mail::stop_postfix(&node)?,
            Fault::ServiceStart(Service::Postfix) => {
                if !mail::postfix_running(&node) {
                    mail::start_postfix(&node)?;
                }
                self.wait_service(&node, &[25, 587], Duration::from_secs(10))?;
            }
        }
        self.reap();
        self.state.save()
    }

    /// Whether node `name` has partition rules in place.
    pub fn partitioned(&self, name: &str) -> Result<bool> {
        let node = self.node(name)?;
        let mut cmd = ns_command(&node.netns, "nft");
        cmd.args(["list", "table", "inet", PARTITION_TABLE]);
        Ok(run(&mut cmd).is_ok())
    }

    fn partition(&self, node: &NodeState, from: Option<&str>, ways: Ways) -> Result<()> {
        let peers: Vec<&NodeState> = match from {
            Some(f) => vec![self.node(f)?],
            None => self
                .state
                .nodes
                .iter()
                .filter(|n| n.name != node.name)
                .collect(),
        };
        if peers.iter().any(|p| p.name == node.name) {
            return Err(LabError::State(format!(
                "cannot partition {} from itself",
                node.name
            )));
        }
        let v4: Vec<String> = peers.iter().map(|p| p.ipv4.to_string()).collect();
        let v6: Vec<String> = peers.iter().map(|p| p.ipv6.to_string()).collect();
        let t = PARTITION_TABLE;
        let mut script = String::new();
        if !self.partitioned(&node.name)? {
            script.push_str(&format!(
                "table inet {t} {{\n\
                 \tset in4 {{ type ipv4_addr; }}\n\
                 \tset in6 {{ type ipv6_addr; }}\n\
                 \tset out4 {{ type ipv4_addr; }}\n\
                 \tset out6 {{ type ipv6_addr; }}\n\
                 \tchain input {{ type filter hook input priority -10; policy accept; \
                 ip saddr @in4 drop; ip6 saddr @in6 drop; }}\n\
                 \tchain output {{ type filter hook output priority -10; policy accept; \
                 ip daddr @out4 drop; ip6 daddr @out6 drop; }}\n}}\n"
            ));
        }
        let (v4, v6) = (v4.join(", "), v6.join(", "));
        if ways != Ways::Out {
            script.push_str(&format!(
                "add element inet {t} in4 {{ {v4} }}\nadd element inet {t} in6 {{ {v6} }}\n"
            ));
        }
        if ways != Ways::In {
            script.push_str(&format!(
                "add element inet {t} out4 {{ {v4} }}\nadd element inet {t} out6 {{ {v6} }}\n"
            ));
        }
        nft_script(node, "partition.nft", &script)
    }

    fn starve(&mut self, node: &NodeState) -> Result<()> {
        let daemon = self.clusterd_pid(node)?;
        if !node.starvers.is_empty() {
            return Ok(());
        }
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut started = Vec::new();
        for _ in 0..cpus {
            let mut cmd = ns_command(&node.netns, "nice");
            cmd.args(["-n", "19", "sh", "-c", "while :; do :; done"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let child = cmd.spawn().ctx(|| describe(&cmd))?;
            let id = ProcId::of(child.id()).ok_or_else(|| {
                LabError::State(format!("a busy loop on {} exited at once", node.name))
            })?;
            self.children.insert(id.pid, child);
            started.push(id);
        }
        self.state.node_mut(&node.name)?.starvers = started;
        self.state.save()?;
        run(Command::new("chrt").args([
            "--all-tasks",
            "--idle",
            "-p",
            "0",
            &daemon.pid.to_string(),
        ]))
        .map(drop)
        .map_err(|e| match e {
            LabError::Io { .. } => LabError::Prerequisite {
                what: "chrt".into(),
                fix: "apt-get install -y util-linux".into(),
            },
            other => other,
        })
    }

    fn unstarve(&mut self, node: &NodeState) -> Result<()> {
        for p in node.starvers.iter().filter(|p| p.alive()) {
            p.signal(Signal::SIGKILL)?;
        }
        self.state.node_mut(&node.name)?.starvers.clear();
        if let Some(daemon) = node.clusterd.filter(ProcId::alive) {
            run(Command::new("chrt").args([
                "--all-tasks",
                "--other",
                "-p",
                "0",
                &daemon.pid.to_string(),
            ]))?;
        }
        Ok(())
    }

    fn clusterd_pid(&self, node: &NodeState) -> Result<ProcId> {
        if self.state.clusterd_bin.is_none() {
            return Err(no_clusterd());
        }
        node.clusterd
            .ok_or_else(|| LabError::State(format!("clusterd was never started on {}", node.name)))
    }

    fn start_clusterd(&mut self, bin: &Path, name: &str) -> Result<()> {
        let node = self.node(name)?.clone();
        let (id, child) = clusterd::start(bin, &node)?;
        self.children.insert(id.pid, child);
        self.state.node_mut(name)?.clusterd = Some(id);
        self.state.save()
    }

    fn start_mail(&mut self, timeout: Duration) -> Result<()> {
        let nodes: Vec<NodeState> = self.state.mail_nodes().cloned().collect();
        for node in &nodes {
            mail::write_configs(node)?;
            let (id, child) = mail::start_dovecot(node)?;
            self.children.insert(id.pid, child);
            self.state.node_mut(&node.name)?.dovecot = Some(id);
            self.state.save()?;
        }
        // `postfix start` takes about a second each (its own checks); start them side by side.
        let started: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|node| s.spawn(move || mail::start_postfix(node)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(LabError::State("starting postfix panicked".into()))
                    })
                })
                .collect()
        });
        started.into_iter().collect::<Result<Vec<()>>>()?;
        let deadline = Instant::now() + timeout;
        for node in &nodes {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_service(node, &[143, 110, 25, 587], left)?;
        }
        Ok(())
    }

    /// Wait until each port on the node's own address greets with the node's name, as seen
    /// from the client namespace.
    fn wait_service(&self, node: &NodeState, ports: &[u16], timeout: Duration) -> Result<()> {
        let ip = IpAddr::V4(node.ipv4);
        let name = node.name.clone();
        let ports = ports.to_vec();
        let outcome = self.in_client(move || {
            let deadline = Instant::now() + timeout;
            for port in ports {
                let addr = SocketAddr::new(ip, port);
                let mut last;
                loop {
                    match crate::probe::greeting(addr, Duration::from_millis(500)) {
                        Ok(g) if crate::probe::greeting_node(&g).as_deref() == Some(&name) => {
                            break;
                        }
                        Ok(g) => last = g,
                        Err(e) => last = e.to_string(),
                    }
                    if Instant::now() >= deadline {
                        return Err(format!("{addr} on {name} (last: {last})"));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Ok(())
        })?;
        outcome.map_err(|what| LabError::Timeout {
            what: format!("the mail service at {what}"),
            after: timeout,
        })
    }

    /// Reap children that exited, so they never linger as zombies.
    fn reap(&mut self) {
        self.children
            .retain(|_, c| matches!(c.try_wait(), Ok(None)));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            self.owned = false;
            // Nothing sensible to do with an error while dropping; `leftovers` reports it.
            let _ = cleanup::teardown(&self.state);
        }
        self.reap();
    }
}

fn no_clusterd() -> LabError {
    LabError::State(format!(
        "clusterd does not run in this lab: no binary was given (set {} when bringing it up)",
        clusterd::CLUSTERD_BIN_ENV
    ))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting permissions of {}", path.display()))
}

/// Load an nftables script into the node's namespace (kept as `file` in the node's directory
/// for post-mortems).
fn nft_script(node: &NodeState, file: &str, script: &str) -> Result<()> {
    let path = node.dir.join(file);
    std::fs::write(&path, script).ctx(|| format!("writing {}", path.display()))?;
    let mut cmd = ns_command(&node.netns, "nft");
    cmd.arg("-f").arg(&path);
    run(&mut cmd).map(drop)
}

/// Decide names, addresses and directories of a lab (no side effects).
pub(crate) fn plan(
    spec: &LabSpec,
    prefix: &str,
    run_dir: &Path,
    clusterd_bin: Option<PathBuf>,
    clusterctl_bin: Option<PathBuf>,
) -> LabState {
    let mut nodes = Vec::new();
    let mut floating = Vec::new();
    let mut floating6 = Vec::new();
    let mut roles: Vec<(String, NodeRole)> = (1..=spec.mail_nodes)
        .map(|i| (format!("mx{i}"), NodeRole::Mail))
        .collect();
    if spec.witness {
        roles.push(("w1".to_owned(), NodeRole::Witness));
    }
    for (idx, (name, role)) in roles.into_iter().enumerate() {
        let i = (idx + 1) as u8;
        let ipv4 = topology::node_ipv4(i);
        let fl = (role == NodeRole::Mail).then(|| topology::floating_ipv4(i));
        if let Some(ip) = fl {
            floating.push(FloatingAddr {
                ip: ip.into(),
                prefix_len: 24,
                home: name.clone(),
            });
        }
        let fl6 =
            (role == NodeRole::Mail && spec.ipv6_floating).then(|| topology::floating_ipv6(i));
        if let Some(ip) = fl6 {
            floating6.push(FloatingAddr {
                ip: ip.into(),
                prefix_len: 64,
                home: name.clone(),
            });
        }
        nodes.push(NodeState {
            netns: format!("{prefix}-{name}"),
            // Same name on every node: clusterd's `[[addresses]] interface` is cluster-wide.
            iface: format!("{prefix}-lan"),
            bridge_port: format!("{prefix}-{name}b"),
            mac: topology::mac_for(ipv4.octets()[3]),
            ipv4,
            ipv6: topology::node_ipv6(i),
            dir: run_dir.join(&name),
            floating: fl,
            floating6: fl6,
            clusterd_config: None,
            clusterd: None,
            dovecot: None,
            starvers: Vec::new(),
            role,
            name,
        });
    }
    LabState {
        prefix: prefix.to_owned(),
        run_dir: run_dir.to_owned(),
        owner: ProcId::current(),
        switch_netns: format!("{prefix}-switch"),
        bridge: format!("{prefix}-br"),
        client: ClientState {
            netns: format!("{prefix}-client"),
            iface: format!("{prefix}-lan"),
            bridge_port: format!("{prefix}-clb"),
            mac: topology::mac_for(topology::CLIENT_IPV4.octets()[3]),
            ipv4: topology::CLIENT_IPV4,
            ipv6: topology::CLIENT_IPV6,
        },
        nodes,
        floating: floating.into_iter().chain(floating6).collect(),
        placement: spec.placement,
        dns_fail_open: spec.dns_fail_open,
        imap_check_extra: spec.imap_check_extra.clone(),
        netns_inodes: Vec::new(),
        clusterd_bin,
        clusterctl_bin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_everything_with_the_prefix_and_fits_interface_names() {
        let spec = LabSpec {
            mail_nodes: 16,
            ..LabSpec::default()
        };
        let st = plan(
            &spec,
            "cdl0a1b2",
            Path::new("/run/clusterd-lab/cdl0a1b2"),
            None,
            None,
        );
        assert_eq!(st.nodes.len(), 17);
        assert_eq!(st.floating.len(), 16);
        assert_eq!(st.nodes[16].name, "w1");
        assert_eq!(st.nodes[16].floating, None);
        for n in &st.nodes {
            assert!(n.netns.starts_with("cdl0a1b2-"));
            assert!(
                n.iface.len() <= 15 && n.bridge_port.len() <= 15,
                "{}",
                n.bridge_port
            );
        }
        assert_eq!(st.floating[0].ip.to_string(), "192.0.2.101");
        assert_eq!(st.floating[0].home, "mx1");
        assert_eq!(
            st.nodes[0].floating6, None,
            "IPv6 floating addresses are opt-in"
        );
        assert_eq!(st.nodes[1].ipv4.to_string(), "192.0.2.12");
    }

    #[test]
    fn ipv6_floating_addresses_follow_the_ipv4_ones_with_the_same_homes() {
        let spec = LabSpec {
            ipv6_floating: true,
            ..LabSpec::default()
        };
        let st = plan(&spec, "cdl0a1b2", Path::new("/run/x/cdl0a1b2"), None, None);
        let listed: Vec<(String, u8, &str)> = st
            .floating
            .iter()
            .map(|f| (f.ip.to_string(), f.prefix_len, f.home.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("192.0.2.101".to_string(), 24, "mx1"),
                ("192.0.2.102".to_string(), 24, "mx2"),
                ("2001:db8::101".to_string(), 64, "mx1"),
                ("2001:db8::102".to_string(), 64, "mx2"),
            ]
        );
        assert_eq!(
            st.nodes[1].floating6.map(|a| a.to_string()).as_deref(),
            Some("2001:db8::102")
        );
        assert_eq!(st.nodes[2].floating6, None, "the witness holds nothing");
    }
}
