//! The address sampler: every few milliseconds, dump the addresses configured in every node
//! namespace over a netlink socket opened inside that namespace, and record who holds what.
//!
//! No process is forked per sample: one thread enters each namespace in turn just to open a
//! `NETLINK_ROUTE` socket there (a socket stays bound to the namespace it was created in), then
//! loops over the sockets with `RTM_GETADDR` dumps. Only global-scope addresses count; a node's
//! own fixed address is not reported unless another node holds it too.
//!
//! Sampling alone can miss an overlap of a few milliseconds between two samples, so the same
//! thread also listens to the kernel's address events (`RTM_NEWADDR`/`RTM_DELADDR` multicast)
//! in every namespace and reads a node's guard again the moment an address appears there. From
//! the events (exact times) and the guard readings (each element's expiry, so a guard that
//! timed out in a frozen node counts from the instant it did) it builds a second timeline,
//! [`Sampled::events`], in which an overlap of any length shows.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::holders::{HolderTimeline, Holders};
use crate::lab::{Lab, LabError, Result, netns};

/// Default time between samples (the issue asks for at least every 20 ms).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
/// Multicast groups of IPv4 and IPv6 address changes.
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// How long a guard element whose expiry the listing did not show counts as allowed.
const UNKNOWN_EXPIRY: Duration = Duration::from_millis(20);
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RT_SCOPE_UNIVERSE: u8 = 0;

/// A netlink route socket inside one namespace.
#[derive(Debug)]
struct AddrSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl AddrSocket {
    /// Open a socket in the calling thread's current namespace.
    fn open() -> nix::Result<AddrSocket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
        Ok(AddrSocket {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// All global-scope addresses in the namespace.
    fn dump(&mut self) -> std::result::Result<Vec<IpAddr>, String> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = Vec::with_capacity(24);
        req.extend_from_slice(&24u32.to_ne_bytes());
        req.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[0u8; 8]); // ifaddrmsg: AF_UNSPEC, all interfaces
        send(self.fd.as_raw_fd(), &req, MsgFlags::empty()).map_err(|e| format!("send: {e}"))?;
        let mut out = Vec::new();
        for _ in 0..1000 {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())
                .map_err(|e| format!("recv: {e}"))?;
            if parse_dump(&self.buf[..n], self.seq, &mut out)? {
                return Ok(out);
            }
        }
        Err("netlink dump did not end".into())
    }
}

/// A netlink socket in the calling thread's namespace subscribed to address changes.
fn open_event_socket() -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkRoute,
    )?;
    setsockopt(&fd, sockopt::RcvBuf, &(1 << 20))?;
    bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR),
    )?;
    Ok(fd)
}

/// The address changes in one datagram of the address multicast groups: `(address, added)`.
fn parse_events(buf: &[u8]) -> Vec<(IpAddr, bool)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, off) as usize;
        if len < NLMSG_HDR || off + len > buf.len() {
            break;
        }
        let kind = u16_at(buf, off + 4);
        let msg = &buf[off..off + len];
        off += (len + 3) & !3;
        if (kind == RTM_NEWADDR || kind == RTM_DELADDR)
            && let Some(ip) = address_of(msg)
        {
            out.push((ip, kind == RTM_NEWADDR));
        }
    }
    out
}

/// The address an `RTM_NEWADDR`/`RTM_DELADDR` message is about, if of global scope.
fn address_of(msg: &[u8]) -> Option<IpAddr> {
    if msg.len() < NLMSG_HDR + 8 {
        return None;
    }
    let family = msg[NLMSG_HDR];
    let scope = msg[NLMSG_HDR + 3];
    if scope != RT_SCOPE_UNIVERSE {
        return None;
    }
    let mut local = None;
    let mut address = None;
    let mut a = NLMSG_HDR + 8;
    while a + 4 <= msg.len() {
        let alen = u16_at(msg, a) as usize;
        let atype = u16_at(msg, a + 2);
        if alen < 4 || a + alen > msg.len() {
            break;
        }
        let data = &msg[a + 4..a + alen];
        let ip = match (i32::from(family), data.len()) {
            (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (libc::AF_INET6, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => None,
        };
        match atype {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            _ => {}
        }
        a += (alen + 3) & !3;
    }
    local.or(address)
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Parse one datagram of an address dump; `Ok(true)` when the dump is complete.
fn parse_dump(buf: &[u8], seq: u32, out: &mut Vec<IpAddr>) -> std::result::Result<bool, String> {
    let mut off = 0;
    while off + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, off) as usize;
        if len < NLMSG_HDR || off + len > buf.len() {
            return Err("truncated netlink message".into());
        }
        let kind = u16_at(buf, off + 4);
        let msg_seq = u32_at(buf, off + 8);
        let msg = &buf[off..off + len];
        off += (len + 3) & !3;
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = if msg.len() >= 20 {
                    u32_at(msg, 16) as i32
                } else {
                    -1
                };
                if code != 0 {
                    return Err(format!("netlink error {code}"));
                }
            }
            RTM_NEWADDR => {
                if let Some(ip) = address_of(msg) {
                    out.push(ip);
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// Samples every node namespace's addresses until stopped (or `max_duration` passes).
/// Reads a node's nftables address guard (clusterd's `inet clusterd_guard` table) through one
/// long-lived `nft -i` inside the node's namespace, so that sampling forks nothing. An address
/// configured on a node whose guard does not allow it does not answer there, so it is not
/// counted as held.
struct GuardReader {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

/// The table the reader creates in each namespace so every query ends with a known line.
const MARKER_TABLE: &str = "lab_sampler_marker";

/// What a node's guard allows right now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Guard {
    /// No clusterd guard installed: configured addresses answer.
    Absent,
    /// Only these floating addresses answer, each for the time its element has left (`None`
    /// when the listing did not say).
    Allows(BTreeMap<IpAddr, Option<Duration>>),
}

impl GuardReader {
    fn open(netns: &str) -> std::result::Result<GuardReader, String> {
        let (read, write) = std::io::pipe().map_err(|e| e.to_string())?;
        let write2 = write.try_clone().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "nft", "-i"])
            .stdin(std::process::Stdio::piped())
            .stdout(write)
            .stderr(write2)
            .spawn()
            .map_err(|e| format!("nft -i in {netns}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let (tx, lines) = mpsc::channel();
        thread::Builder::new()
            .name("guard-reader".into())
            .spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(read).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let mut reader = GuardReader {
            child,
            stdin,
            lines,
        };
        reader.send(&format!("add table inet {MARKER_TABLE}"))?;
        Ok(reader)
    }

    fn send(&mut self, line: &str) -> std::result::Result<(), String> {
        use std::io::Write;
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("nft: {e}"))
    }

    /// The guard's state: clusterd's guard table (or the error saying it is absent), then the
    /// marker table, whose closing brace ends the answer.
    fn read(&mut self) -> std::result::Result<Guard, String> {
        while self.lines.try_recv().is_ok() {}
        self.send("list table inet clusterd_guard")?;
        self.send(&format!("list table inet {MARKER_TABLE}"))?;
        let mut text = Vec::new();
        let mut in_marker = false;
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(2))
                .map_err(|_| "nft did not answer".to_string())?;
            if line.starts_with(&format!("table inet {MARKER_TABLE}")) {
                in_marker = true;
            } else if in_marker && line == "}" {
                break;
            } else if !in_marker {
                text.push(line);
            }
        }
        let guard = parse_guard(&text);
        // "No guard" only when nft says the table does not exist; anything else without the
        // table (an interrupted listing, an error) is a failed reading, not an open guard.
        if guard == Guard::Absent && !text.iter().any(|l| l.contains("No such file or directory")) {
            return Err(format!(
                "unexpected guard listing: {}",
                text.iter().take(4).cloned().collect::<Vec<_>>().join(" | ")
            ));
        }
        Ok(guard)
    }
}

impl Drop for GuardReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parse `nft list ruleset` output for the elements of clusterd's held4/held6 sets and the
/// time each has left (`192.0.2.101 timeout 800ms expires 512ms`).
fn parse_guard(lines: &[String]) -> Guard {
    let mut in_table = false;
    let mut in_held = false;
    let mut found = false;
    let mut allowed = BTreeMap::new();
    let mut current: Option<IpAddr> = None;
    let mut expires_next = false;
    for line in lines {
        let t = line.trim();
        if t.starts_with("table ") {
            in_table = t.starts_with("table inet clusterd_guard");
            found |= in_table;
            continue;
        }
        if !in_table {
            continue;
        }
        if t.starts_with("set held4") || t.starts_with("set held6") {
            in_held = true;
            continue;
        }
        if in_held && t == "}" {
            in_held = false;
            current = None;
            continue;
        }
        if in_held {
            for word in t.split([' ', ',', '{', '}']).filter(|w| !w.is_empty()) {
                if expires_next {
                    expires_next = false;
                    if let (Some(ip), Some(left)) = (current, parse_nft_time(word)) {
                        allowed.insert(ip, Some(left));
                    }
                } else if word == "expires" {
                    expires_next = true;
                } else if let Ok(ip) = word.parse::<IpAddr>() {
                    allowed.insert(ip, None);
                    current = Some(ip);
                }
            }
        }
    }
    if found {
        Guard::Allows(allowed)
    } else {
        Guard::Absent
    }
}

/// An nftables time such as `512ms`, `1s200ms`, `2m3s` or `1h`.
pub fn parse_nft_time(word: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = word;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            _ => return None,
        };
        total += unit * u32::try_from(n).ok()?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// A change of configured addresses in one node, as the kernel announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AddrEvent {
    /// When the monitor read it.
    at: Duration,
    /// When the monitor last found the node's event socket empty: the event happened after
    /// this (a monitor that was kept off the CPU reads several nodes' events late, in socket
    /// order rather than in the order they happened).
    earliest: Duration,
    node: usize,
    ip: IpAddr,
    added: bool,
}

/// One reading of one node's guard: when, and what it allowed until when.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GuardRead {
    at: Duration,
    node: usize,
    /// `None`: no guard, so every configured address answers.
    allows: Option<BTreeMap<IpAddr, Duration>>,
}

impl GuardRead {
    fn new(at: Duration, node: usize, guard: &Guard) -> GuardRead {
        GuardRead {
            at,
            node,
            allows: match guard {
                Guard::Absent => None,
                Guard::Allows(m) => Some(
                    m.iter()
                        .map(|(ip, left)| (*ip, at + left.unwrap_or(UNKNOWN_EXPIRY)))
                        .collect(),
                ),
            },
        }
    }
}

/// Events at the time that can be proven: an address appeared no earlier than it was read, and
/// went away no later than the node's socket was last found empty, but after the node's
/// previous event (by a nanosecond: an address added and removed within one read was still
/// there for a while). So a monitor that fell behind can shorten an overlap, but never makes
/// one up out of events it read late and out of order.
fn placed(events: &[AddrEvent]) -> Vec<AddrEvent> {
    let mut last: BTreeMap<usize, Duration> = BTreeMap::new();
    let mut out: Vec<AddrEvent> = events
        .iter()
        .map(|e| {
            let at = if e.added {
                e.at
            } else {
                let earliest = e.earliest.min(e.at);
                match last.get(&e.node) {
                    Some(prev) if earliest <= *prev => *prev + Duration::from_nanos(1),
                    _ => earliest,
                }
            };
            last.insert(e.node, at);
            AddrEvent { at, ..e.clone() }
        })
        .collect();
    out.sort_by_key(|e| e.at);
    out
}

/// The holders at every instant the kernel's events or the guard readings change them:
/// an address is held by a node while it is configured there (from `initial` and the events,
/// to the instant) and either the node has no guard or a guard reading made at or before that
/// instant allows it beyond it. Readings only ever extend an allowance: a guard closed between
/// two readings still counts until the element would have expired, which errs towards seeing
/// a holder (the daemon closes its guard right before removing the address, whose removal
/// ends the holding exactly). A node's own fixed addresses count only when another holds them.
fn event_timeline(
    names: &[String],
    own: &BTreeMap<IpAddr, String>,
    initial: &[BTreeSet<IpAddr>],
    events: &[AddrEvent],
    reads: &[GuardRead],
) -> HolderTimeline {
    let mut timeline = HolderTimeline::new("kernel address events");
    let events = &placed(events);
    let mut points: BTreeSet<Duration> = events.iter().map(|e| e.at).collect();
    for r in reads {
        points.insert(r.at);
        points.extend(r.allows.iter().flat_map(|m| m.values().copied()));
    }
    let mut configured: Vec<BTreeSet<IpAddr>> = initial.to_vec();
    configured.resize(names.len(), BTreeSet::new());
    // Per node: no guard seen (by the latest reading), and the furthest allowance per address.
    let mut absent = vec![true; names.len()];
    let mut until: Vec<BTreeMap<IpAddr, Duration>> = vec![BTreeMap::new(); names.len()];
    let (mut e, mut r) = (0, 0);
    for t in points {
        while let Some(ev) = events.get(e).filter(|ev| ev.at <= t) {
            if let Some(set) = configured.get_mut(ev.node) {
                if ev.added {
                    set.insert(ev.ip);
                } else {
                    set.remove(&ev.ip);
                }
            }
            e += 1;
        }
        while let Some(rd) = reads.get(r).filter(|rd| rd.at <= t) {
            if rd.node < names.len() {
                absent[rd.node] = rd.allows.is_none();
                for (ip, u) in rd.allows.iter().flatten() {
                    let slot = until[rd.node].entry(*ip).or_insert(*u);
                    *slot = (*slot).max(*u);
                }
                // An element a reading no longer shows was closed by then (a daemon closes
                // its guard before it removes the address, and a starved one may take a while
                // between the two): allowed at most until this reading.
                if let Some(now_allowed) = &rd.allows {
                    for (ip, u) in until[rd.node].iter_mut() {
                        if !now_allowed.contains_key(ip) && *u > rd.at {
                            *u = rd.at;
                        }
                    }
                }
            }
            r += 1;
        }
        let mut holders: Holders = BTreeMap::new();
        for (n, name) in names.iter().enumerate() {
            for ip in &configured[n] {
                let allowed =
                    absent[n] || own.contains_key(ip) || until[n].get(ip).is_some_and(|u| *u > t);
                if allowed {
                    holders.entry(*ip).or_default().insert(name.clone());
                }
            }
        }
        holders.retain(|ip, who| !(who.len() == 1 && own.get(ip).is_some_and(|o| who.contains(o))));
        timeline.record(t, holders);
    }
    timeline
}

/// What the sampler saw: the sampled timeline and the one built from the kernel's events.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// Holders at every sample (every [`SAMPLE_EVERY`]).
    pub sampled: HolderTimeline,
    /// Holders at every address event and guard reading, to the instant.
    pub events: HolderTimeline,
}

#[derive(Debug)]
pub struct AddressSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Sampled>>,
}

impl AddressSampler {
    /// Start sampling every [`SAMPLE_EVERY`] for at most 10 minutes.
    pub fn start(lab: &Lab) -> Result<AddressSampler> {
        Self::start_with(lab, SAMPLE_EVERY, Duration::from_secs(600))
    }

    /// Start sampling every `every`; the sampler stops by itself after `max_duration`.
    /// Returns once every namespace's sockets are open, so the first sample is imminent.
    pub fn start_with(
        lab: &Lab,
        every: Duration,
        max_duration: Duration,
    ) -> Result<AddressSampler> {
        let st = lab.state();
        let nodes: Vec<(String, String)> = st
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.netns.clone()))
            .collect();
        // A node's own fixed addresses are expected; they are only news when duplicated.
        let own: BTreeMap<IpAddr, String> = st
            .nodes
            .iter()
            .flat_map(|n| {
                [
                    (IpAddr::V4(n.ipv4), n.name.clone()),
                    (IpAddr::V6(n.ipv6), n.name.clone()),
                ]
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
        let thread = thread::Builder::new()
            .name("address-sampler".into())
            .spawn(move || {
                let mut run = SamplerRun::default();
                let opened = run.open(&nodes);
                let failed = opened.is_err();
                let _ = ready_tx.send(opened);
                if !failed {
                    run.sample_until(&stop2, &own, every, max_duration);
                }
                run.finish(&own)
            })
            .map_err(|e| LabError::State(format!("starting the address sampler: {e}")))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(AddressSampler {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(LabError::State(format!("address sampler: {e}"))),
            Err(_) => Err(LabError::Timeout {
                what: "the address sampler to open its sockets".into(),
                after: Duration::from_secs(10),
            }),
        }
    }

    /// Stop and return both timelines.
    pub fn stop(mut self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| Sampled {
                sampled: HolderTimeline::new("address sampler (panicked)"),
                events: HolderTimeline::new("kernel address events (panicked)"),
            })
    }
}

/// The sampler thread's sockets and what it recorded.
#[derive(Default)]
struct SamplerRun {
    names: Vec<String>,
    guards: Vec<GuardReader>,
    dumps: Vec<AddrSocket>,
    event_fds: Vec<OwnedFd>,
    started: Option<Instant>,
    sampled: HolderTimeline,
    /// Addresses configured in each node at the first sample.
    initial: Vec<BTreeSet<IpAddr>>,
    events: Vec<AddrEvent>,
    /// Per node: when its event socket was last found empty.
    drained: Vec<Duration>,
    reads: Vec<GuardRead>,
    event_errors: Vec<(Duration, String)>,
}

impl SamplerRun {
    /// Open a guard reader, a dump socket and an event socket in every node's namespace.
    fn open(&mut self, nodes: &[(String, String)]) -> std::result::Result<(), String> {
        self.sampled = HolderTimeline::new("address sampler");
        for (name, ns) in nodes {
            self.guards
                .push(GuardReader::open(ns).map_err(|e| format!("{name}: {e}"))?);
            netns::enter(ns).map_err(|e| format!("{name}: {e}"))?;
            self.dumps
                .push(AddrSocket::open().map_err(|e| format!("{name}: {e}"))?);
            self.event_fds
                .push(open_event_socket().map_err(|e| format!("{name}: address events: {e}"))?);
            self.names.push(name.clone());
            self.drained.push(Duration::ZERO);
        }
        Ok(())
    }

    fn since_start(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Read node `n`'s guard now, record the reading for the event view, and return it.
    fn read_guard(&mut self, n: usize) -> Guard {
        let at = self.since_start();
        // A failed reading is tried twice more before it counts (as no guard, which errs
        // towards seeing a holder, and is reported).
        let mut reading = self.guards[n].read();
        for _ in 0..2 {
            if reading.is_ok() {
                break;
            }
            reading = self.guards[n].read();
        }
        match reading {
            Ok(g) => {
                let read = GuardRead::new(at, n, &g);
                let had_guard = self
                    .reads
                    .iter()
                    .rev()
                    .find(|r| r.node == n)
                    .is_some_and(|last| last.allows.is_some());
                if had_guard && read.allows.is_none() {
                    let msg = format!("{}: its guard table vanished", self.names[n]);
                    self.event_errors.push((at, msg));
                }
                // Consecutive equal readings (the same deadlines) add nothing.
                let same = self
                    .reads
                    .iter()
                    .rev()
                    .find(|r| r.node == n)
                    .is_some_and(|last| same_allowance(last, &read));
                if !same {
                    self.reads.push(read);
                }
                g
            }
            Err(e) => {
                let msg = format!("{} guard: {e}", self.names[n]);
                self.sampled.errors.push((at, msg));
                Guard::Absent
            }
        }
    }

    fn sample_until(
        &mut self,
        stop: &AtomicBool,
        own: &BTreeMap<IpAddr, String>,
        every: Duration,
        max_duration: Duration,
    ) {
        let started = Instant::now();
        self.started = Some(started);
        self.sampled.started = Some(started);
        let mut next = started;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < max_duration {
            self.sample(own);
            next += every;
            self.listen_until(next, own);
            if next < Instant::now() {
                next = Instant::now();
            }
        }
    }

    /// What node `n` answers for now (its guard, then its addresses), and every address
    /// configured there; `None` when its addresses could not be read.
    fn held_by(
        &mut self,
        n: usize,
        own: &BTreeMap<IpAddr, String>,
    ) -> Option<(BTreeSet<IpAddr>, Vec<IpAddr>)> {
        let allowed = self.read_guard(n);
        match self.dumps[n].dump() {
            Ok(addrs) => {
                let answers = addrs
                    .iter()
                    .filter(|ip| match &allowed {
                        Guard::Absent => true,
                        Guard::Allows(set) => set.contains_key(ip) || own.contains_key(ip),
                    })
                    .copied()
                    .collect();
                Some((answers, addrs))
            }
            Err(e) => {
                let at = self.since_start();
                let msg = format!("{}: {e}", self.names[n]);
                self.sampled.errors.push((at, msg));
                None
            }
        }
    }

    /// One sample: every node's guard and addresses, one node after another. Reading the nodes
    /// takes a few milliseconds under load, so a handover that completes between two nodes'
    /// reads would look like two holders: an address seen on two nodes is read again on those
    /// nodes, in the opposite order, and counts as held twice only if that agrees. (The event
    /// view places overlaps exactly, whatever their length.)
    fn sample(&mut self, own: &BTreeMap<IpAddr, String>) {
        let at = self.since_start();
        let first = self.initial.is_empty();
        let mut holders: Holders = BTreeMap::new();
        for n in 0..self.names.len() {
            let held = self.held_by(n, own);
            if first {
                self.initial.push(
                    held.as_ref()
                        .map(|(_, all)| all.iter().copied().collect())
                        .unwrap_or_default(),
                );
            }
            for ip in held.map(|(answers, _)| answers).unwrap_or_default() {
                holders.entry(ip).or_default().insert(self.names[n].clone());
            }
        }
        holders.retain(|ip, who| !(who.len() == 1 && own.get(ip).is_some_and(|o| who.contains(o))));
        let doubled: Vec<IpAddr> = holders
            .iter()
            .filter(|(_, who)| who.len() > 1)
            .map(|(ip, _)| *ip)
            .collect();
        if !doubled.is_empty() {
            let involved: BTreeSet<usize> = (0..self.names.len())
                .filter(|n| {
                    doubled
                        .iter()
                        .any(|ip| holders[ip].contains(&self.names[*n]))
                })
                .collect();
            for n in involved.into_iter().rev() {
                let again = self
                    .held_by(n, own)
                    .map(|(answers, _)| answers)
                    .unwrap_or_default();
                for ip in &doubled {
                    if !again.contains(ip)
                        && let Some(who) = holders.get_mut(ip)
                    {
                        who.remove(&self.names[n]);
                    }
                }
            }
            holders.retain(|_, who| !who.is_empty());
        }
        self.sampled.record(at, holders);
    }

    /// Until `deadline`, take in every node's address events; an address appearing in a node
    /// gets that node's guard read at once, so the event view knows whether it answers.
    fn listen_until(&mut self, deadline: Instant, own: &BTreeMap<IpAddr, String>) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            // Every socket this poll finds empty had no event pending when it began.
            let polled = self.since_start();
            let ready: Vec<usize> = {
                let mut fds: Vec<PollFd> = self
                    .event_fds
                    .iter()
                    .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                    .collect();
                let result = poll(&mut fds, ms);
                if result.is_ok() {
                    for (n, f) in fds.iter().enumerate() {
                        if f.revents().is_none_or(|r| r.is_empty())
                            && let Some(d) = self.drained.get_mut(n)
                        {
                            *d = (*d).max(polled);
                        }
                    }
                }
                match result {
                    Ok(0) | Err(Errno::EINTR) => continue,
                    Ok(_) => {}
                    Err(e) => {
                        let at = self.since_start();
                        self.event_errors.push((at, format!("poll: {e}")));
                        thread::sleep(left);
                        return;
                    }
                }
                fds.iter()
                    .enumerate()
                    .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(i, _)| i)
                    .collect()
            };
            for n in ready {
                let mut appeared = false;
                let earliest = self.drained.get(n).copied().unwrap_or_default();
                loop {
                    match recv(self.event_fds[n].as_raw_fd(), &mut buf, MsgFlags::empty()) {
                        Ok(len) => {
                            let at = self.since_start();
                            for (ip, added) in parse_events(&buf[..len]) {
                                appeared |= added && !own.contains_key(&ip);
                                self.events.push(AddrEvent {
                                    at,
                                    earliest,
                                    node: n,
                                    ip,
                                    added,
                                });
                            }
                        }
                        Err(Errno::EAGAIN | Errno::EINTR) => {
                            let now = self.since_start();
                            if let Some(d) = self.drained.get_mut(n) {
                                *d = now;
                            }
                            break;
                        }
                        Err(e) => {
                            // ENOBUFS: events were lost; the sampled view still stands.
                            let at = self.since_start();
                            let msg = format!("{} address events: {e}", self.names[n]);
                            self.event_errors.push((at, msg));
                            break;
                        }
                    }
                }
                if appeared {
                    self.read_guard(n);
                }
            }
        }
    }

    fn finish(mut self, own: &BTreeMap<IpAddr, String>) -> Sampled {
        self.initial.resize(self.names.len(), BTreeSet::new());
        let mut events = event_timeline(&self.names, own, &self.initial, &self.events, &self.reads);
        events.started = self.started;
        events.errors = std::mem::take(&mut self.event_errors);
        // What led to an overlap, for its report: the involved nodes' events and guard
        // readings in the 1.5 s before it.
        for d in events.duplicates() {
            let from = d.from.saturating_sub(Duration::from_millis(1500));
            let until = d.until.unwrap_or(d.from) + Duration::from_millis(100);
            let involved = |n: usize| d.holders.contains(&self.names[n]);
            for e in self.events.iter().filter(|e| involved(e.node)) {
                if e.at >= from && e.at <= until && e.ip == d.ip {
                    let what = if e.added { "added" } else { "removed" };
                    let msg = format!("{}: {} {what} (kernel event)", self.names[e.node], e.ip);
                    events.notes.push((e.at, msg));
                }
            }
            for r in self.reads.iter().filter(|r| involved(r.node)) {
                if r.at >= from && r.at <= until {
                    let msg = format!("{}: guard reading {:?}", self.names[r.node], r.allows);
                    events.notes.push((r.at, msg));
                }
            }
        }
        events.notes.sort_by_key(|(at, _)| *at);
        Sampled {
            sampled: self.sampled,
            events,
        }
    }
}

/// Whether two readings of one node allow the same addresses until (within 2 ms) the same
/// instants.
fn same_allowance(a: &GuardRead, b: &GuardRead) -> bool {
    match (&a.allows, &b.allows) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|((ia, ua), (ib, ub))| {
                    ia == ib && ua.abs_diff(*ub) <= Duration::from_millis(2)
                })
        }
        _ => false,
    }
}

impl Drop for AddressSampler {
    /// A monitor dropped without `stop` (e.g. a failing test) ends its thread too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: &str = "192.0.2.101";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ip() -> IpAddr {
        IP.parse().unwrap()
    }

    fn names() -> Vec<String> {
        vec!["mx1".into(), "mx2".into()]
    }

    fn event(at: u64, node: usize, added: bool) -> AddrEvent {
        AddrEvent {
            at: ms(at),
            earliest: ms(at),
            node,
            ip: ip(),
            added,
        }
    }

    fn allows(at: u64, node: usize, until: Option<u64>) -> GuardRead {
        GuardRead {
            at: ms(at),
            node,
            allows: Some(until.map(|u| (ip(), ms(u))).into_iter().collect()),
        }
    }

    #[test]
    fn nft_times_parse_in_every_unit() {
        assert_eq!(parse_nft_time("512ms"), Some(ms(512)));
        assert_eq!(parse_nft_time("1s200ms"), Some(ms(1200)));
        assert_eq!(parse_nft_time("2m3s"), Some(Duration::from_secs(123)));
        assert_eq!(parse_nft_time("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_nft_time("12x"), None);
        assert_eq!(parse_nft_time("ms"), None);
    }

    #[test]
    fn the_guard_listing_gives_each_held_address_its_time_left() {
        let listing = [
            "table inet clusterd_guard {",
            "\tset held4 {",
            "\t\ttype ipv4_addr",
            "\t\tflags timeout",
            "\t\telements = { 192.0.2.101 timeout 800ms expires 512ms,",
            "\t\t\t     192.0.2.102 timeout 1s expires 1s",
            "\t\t}",
            "\t}",
            "\tset held6 {",
            "\t\ttype ipv6_addr",
            "\t\tflags timeout",
            "\t}",
            "}",
        ]
        .map(String::from);
        let Guard::Allows(m) = parse_guard(&listing) else {
            panic!("guard not found");
        };
        assert_eq!(m.get(&ip()), Some(&Some(ms(512))));
        assert_eq!(
            m.get(&"192.0.2.102".parse().unwrap()),
            Some(&Some(Duration::from_secs(1)))
        );
        assert_eq!(m.len(), 2);
        assert_eq!(parse_guard(&[]), Guard::Absent);
    }

    #[test]
    fn an_overlap_of_two_milliseconds_between_samples_shows_in_the_event_view() {
        let initial = vec![BTreeSet::from([ip()]), BTreeSet::new()];
        let reads = [
            allows(0, 0, Some(800)),
            allows(0, 1, None),
            // mx2 opened its guard and added the address at 101 ms, removed it at 103 ms.
            allows(101, 1, Some(900)),
        ];
        let events = [event(101, 1, true), event(103, 1, false)];
        let t = event_timeline(&names(), &BTreeMap::new(), &initial, &events, &reads);
        let dups = t.duplicates();
        assert_eq!(dups.len(), 1, "{}", t.report());
        assert_eq!((dups[0].from, dups[0].until), (ms(101), Some(ms(103))));
    }

    #[test]
    fn events_read_late_and_out_of_order_make_no_overlap_up() {
        // mx2 removed the address, then mx1 added it; the monitor was off the CPU and read
        // mx1's socket first (at 200 ms) and mx2's just after (203 ms), although mx2's socket
        // held its event since it was last empty (50 ms).
        let initial = vec![BTreeSet::new(), BTreeSet::from([ip()])];
        let reads = [
            allows(0, 0, None),
            allows(0, 1, Some(900)),
            allows(200, 0, Some(1000)),
        ];
        let late = |at: u64, earliest: u64, node: usize, added: bool| AddrEvent {
            earliest: ms(earliest),
            ..event(at, node, added)
        };
        let events = [late(200, 50, 0, true), late(203, 50, 1, false)];
        let t = event_timeline(&names(), &BTreeMap::new(), &initial, &events, &reads);
        assert!(t.duplicates().is_empty(), "{}", t.report());
        // An address added and removed within one read of mx2's socket, while mx1 held it
        // throughout, was held by both for a while, however short.
        let held_by_mx1 = vec![BTreeSet::from([ip()]), BTreeSet::new()];
        let mx2_opens = [
            allows(0, 0, Some(900)),
            allows(0, 1, None),
            allows(200, 1, Some(900)),
        ];
        let blip = [late(200, 150, 1, true), late(200, 150, 1, false)];
        let t = event_timeline(&names(), &BTreeMap::new(), &held_by_mx1, &blip, &mx2_opens);
        assert_eq!(t.duplicates().len(), 1, "{}", t.report());
        // Read in time, the same two events are a real overlap of 3 ms.
        let events = [late(200, 199, 0, true), late(203, 202, 1, false)];
        let t = event_timeline(&names(), &BTreeMap::new(), &initial, &events, &reads);
        assert_eq!(t.duplicates().len(), 1, "{}", t.report());
    }

    #[test]
    fn an_address_left_configured_behind_a_closed_guard_is_not_held_after_the_reading() {
        // mx1 closed its guard for the address at about 100 ms (a reading at 120 ms shows it
        // gone, although the element would have run until 800 ms) and removed the address only
        // at 900 ms (starved in between); mx2 added it at 500 ms.
        let initial = vec![BTreeSet::from([ip()]), BTreeSet::new()];
        let reads = [
            allows(0, 0, Some(800)),
            allows(0, 1, None),
            allows(120, 0, None),
            allows(500, 1, Some(1300)),
        ];
        let events = [event(500, 1, true), event(900, 0, false)];
        let t = event_timeline(&names(), &BTreeMap::new(), &initial, &events, &reads);
        assert!(t.duplicates().is_empty(), "{}", t.report());
        // Without the reading at 120 ms, the element counts until it would have expired.
        let reads = [reads[0].clone(), reads[1].clone(), reads[3].clone()];
        let t = event_timeline(&names(), &BTreeMap::new(), &initial, &events, &reads);
        assert_eq!(t.duplicates().len(), 1, "{}", t.report());
    }

    #[test]
    fn an_address_left_configured_behind_an_expired_guard_is_not_held() {
        // mx1 froze with its address configured; its guard element expired at 800 ms and the
        // new owner added the address at 850 ms; mx1 removed it on resuming at 1000 ms.
        let initial = vec![BTreeSet::from([ip()]), BTreeSet::new()];
        let reads = [
            allows(0, 0, Some(800)),
            allows(0, 1, None),
            allows(850, 1, Some(1650)),
        ];
        let events = [event(850, 1, true), event(1000, 0, false)];
        let t = event_timeline(&names(), &BTreeMap::new(), &initial, &events, &reads);
        assert!(t.duplicates().is_empty(), "{}", t.report());
        let only = |who: &[&str]| -> Holders {
            BTreeMap::from([(ip(), who.iter().map(|w| w.to_string()).collect())])
        };
        assert_eq!(t.holders_at(ms(799)), only(&["mx1"]));
        assert_eq!(t.holders_at(ms(820)), BTreeMap::new());
        assert_eq!(t.holders_at(ms(900)), only(&["mx2"]));
    }

    #[test]
    fn a_node_without_a_guard_holds_what_is_configured() {
        let initial = vec![BTreeSet::from([ip()]), BTreeSet::new()];
        let reads = [
            GuardRead {
                at: ms(0),
                node: 0,
                allows: None,
            },
            GuardRead {
                at: ms(0),
                node: 1,
                allows: None,
            },
        ];
        let events = [event(300, 1, true), event(600, 1, false)];
        let t = event_timeline(&names(), &BTreeMap::new(), &initial, &events, &reads);
        let dups = t.duplicates();
        assert_eq!(dups.len(), 1);
        assert_eq!((dups[0].from, dups[0].until), (ms(300), Some(ms(600))));
    }

    #[test]
    fn address_events_parse_from_netlink_datagrams() {
        // RTM_NEWADDR for 192.0.2.101 (IFA_LOCAL), global scope.
        let mut msg = Vec::new();
        let attr_len = 8u16;
        let len = (NLMSG_HDR + 8 + usize::from(attr_len)) as u32;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWADDR.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[libc::AF_INET as u8, 24, 0, RT_SCOPE_UNIVERSE, 2, 0, 0, 0]);
        msg.extend_from_slice(&attr_len.to_ne_bytes());
        msg.extend_from_slice(&IFA_LOCAL.to_ne_bytes());
        msg.extend_from_slice(&[192, 0, 2, 101]);
        assert_eq!(parse_events(&msg), vec![(ip(), true)]);
        let mut del = msg.clone();
        del[4..6].copy_from_slice(&RTM_DELADDR.to_ne_bytes());
        assert_eq!(parse_events(&del), vec![(ip(), false)]);
        // Link-scope addresses are not floating addresses.
        msg[NLMSG_HDR + 3] = 253;
        assert!(parse_events(&msg).is_empty());
        assert!(parse_events(&msg[..10]).is_empty());
    }
}
