//! The client-side ARP and neighbour-discovery prober: from the client namespace, ask "who has
//! A?" for every floating address every few milliseconds on a raw AF_PACKET socket (ARP for
//! IPv4, a neighbour solicitation for IPv6) and record which MACs answered, mapped to node
//! names. Two MACs answering one round for one address is a duplicate as the network sees it,
//! whatever the daemons believe.
//!
//! Solicitations go out from [`ND_PROBE_SOURCE`], an address configured nowhere: the answers
//! reach this socket but not the client's kernel, so probing never touches the client's
//! neighbour cache (tests check that clusterd's unsolicited advertisements update it).
//! Announcements seen on the way (gratuitous ARP, unsolicited neighbour advertisements) and the
//! client kernel's own solicitations are recorded separately.
//!
//! Each round also sends an ICMP echo request for every IPv4 floating address to every mail
//! node's MAC (Ethernet unicast, so no ARP decides where it goes). A node answers only if the
//! address is configured there and its guard lets the traffic through: two nodes answering one
//! round's echo for one address is two holders serving traffic, a stronger observation than
//! ARP (which a node could answer while its guard drops everything else). Replies count in the
//! round whose sequence number they carry; late ones are dropped rather than blamed on a later
//! round.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::net::if_::if_nametoindex;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, bind, recv, send, socket,
};

use super::holders::{HolderTimeline, Holders};
use super::ndp::{self, ALL_NODES, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT};
use crate::lab::topology::ND_PROBE_SOURCE;
use crate::lab::{Lab, LabError, Result, netns};
use clusterd::vip::linux::link_addr;

/// Default time between probe rounds (the issue asks for at least every 20 ms).
pub const PROBE_EVERY: Duration = Duration::from_millis(10);

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV4: u16 = 0x0800;
/// The ICMP echo identifier of the prober's requests.
const ECHO_ID: u16 = 0xc1d0;
/// Every protocol: ARP and IPv6 on one socket, including frames the client itself sends.
const ETH_P_ALL: u16 = 0x0003;

/// Parse "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

/// Format a MAC as "aa:bb:cc:dd:ee:ff".
pub fn format_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An ARP request (op 1) from `sha`/`spa` for `tpa`, broadcast.
pub fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // op request
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    // tha stays zero
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request from `src_mac`/`src` to `dst` sent to the Ethernet address `dst_mac`,
/// with identifier [`ECHO_ID`] and sequence number `seq`.
pub fn echo_request(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    seq: u16,
) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45; // version 4, 5 words
    ip[2..4].copy_from_slice(&28u16.to_be_bytes()); // total length
    ip[4..6].copy_from_slice(&seq.to_be_bytes()); // identification
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 1; // ICMP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = inet_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let icmp = &mut f[34..42];
    icmp[0] = 8; // echo request
    icmp[4..6].copy_from_slice(&ECHO_ID.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    let sum = inet_checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// An ICMP echo reply to the prober: who sent it (Ethernet source), for which address, to
/// which of its rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoReply {
    /// Ethernet source: the node that answered.
    pub eth_src: [u8; 6],
    /// IPv4 source: the address that answered.
    pub src: Ipv4Addr,
    /// The sequence number of the request it answers.
    pub seq: u16,
}

/// Parse an Ethernet frame carrying an ICMP echo reply with the prober's identifier.
pub fn parse_echo_reply(f: &[u8]) -> Option<EchoReply> {
    if f.len() < 34 || f[12..14] != ETH_P_IPV4.to_be_bytes() || f[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let icmp = f.get(14 + ihl..14 + ihl + 8)?;
    if f[23] != 1 || icmp[0] != 0 || icmp[4..6] != ECHO_ID.to_be_bytes() {
        return None;
    }
    Some(EchoReply {
        eth_src: f[6..12].try_into().ok()?,
        src: Ipv4Addr::new(f[26], f[27], f[28], f[29]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
    })
}

/// The fields of an ARP packet the prober cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket {
    /// 1 request, 2 reply.
    pub op: u16,
    /// Sender MAC.
    pub sha: [u8; 6],
    /// Sender IP.
    pub spa: Ipv4Addr,
    /// Target MAC.
    pub tha: [u8; 6],
    /// Target IP.
    pub tpa: Ipv4Addr,
}

/// Parse an Ethernet frame carrying IPv4-over-Ethernet ARP.
pub fn parse_arp(f: &[u8]) -> Option<ArpPacket> {
    if f.len() < 42 || f[12..14] != ETH_P_ARP.to_be_bytes() || f[18] != 6 || f[19] != 4 {
        return None;
    }
    let ip = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
    let mac = |i: usize| -> [u8; 6] { f[i..i + 6].try_into().unwrap_or([0; 6]) };
    Some(ArpPacket {
        op: u16::from_be_bytes([f[20], f[21]]),
        sha: mac(22),
        spa: ip(28),
        tha: mac(32),
        tpa: ip(38),
    })
}

/// A gratuitous ARP seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// When, since the prober started.
    pub at: Duration,
    /// The announced address.
    pub ip: Ipv4Addr,
    /// The announcing node (or its MAC if unknown).
    pub node: String,
    /// 1 request form, 2 reply form.
    pub op: u16,
}

/// An unsolicited neighbour advertisement seen on the wire, with the fields RFC 4861 and
/// clusterd's design fix for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// When, since the prober started.
    pub at: Duration,
    /// The advertised address.
    pub target: Ipv6Addr,
    /// The advertising node (by Ethernet source; its MAC if unknown).
    pub node: String,
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// IPv6 hop limit.
    pub hop_limit: u8,
    /// Override flag.
    pub override_flag: bool,
    /// Solicited flag.
    pub solicited: bool,
    /// The target link-layer address option.
    pub lladdr: Option<[u8; 6]>,
    /// Whether the ICMPv6 checksum was right.
    pub checksum_ok: bool,
}

/// A neighbour solicitation the client's own kernel sent for a probed address (not the
/// prober's): the client looking the address up by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solicitation {
    /// When, since the prober started.
    pub at: Duration,
    /// The address looked up.
    pub target: Ipv6Addr,
    /// Multicast (address resolution) or unicast to a cached MAC (reachability probe).
    pub multicast: bool,
}

/// What the prober saw.
#[derive(Debug, Clone, Default)]
pub struct ArpLog {
    /// Holders per round, as a timeline (IPv4 by ARP, IPv6 by neighbour solicitation).
    pub timeline: HolderTimeline,
    /// Nodes answering an ICMP echo sent to their own MAC, per round (IPv4 addresses).
    pub echo: HolderTimeline,
    /// Gratuitous ARP packets seen.
    pub announcements: Vec<Announcement>,
    /// Unsolicited neighbour advertisements (to ff02::1) for probed IPv6 addresses.
    pub advertisements: Vec<Advertisement>,
    /// Solicitations the client's kernel sent for probed IPv6 addresses.
    pub solicitations: Vec<Solicitation>,
}

/// Asks for every floating address from the client namespace until stopped.
#[derive(Debug)]
pub struct ArpProber {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ArpLog>>,
}

impl ArpProber {
    /// Probe the lab's floating addresses (IPv4 and IPv6) every [`PROBE_EVERY`], for at most
    /// 10 minutes.
    pub fn start(lab: &Lab) -> Result<ArpProber> {
        let targets = lab.state().floating.iter().map(|f| f.ip).collect();
        Self::start_with(lab, targets, PROBE_EVERY, Duration::from_secs(600))
    }

    /// Probe `targets` every `every`; stops by itself after `max_duration`.
    pub fn start_with(
        lab: &Lab,
        targets: Vec<IpAddr>,
        every: Duration,
        max_duration: Duration,
    ) -> Result<ArpProber> {
        let st = lab.state();
        let client = st.client.clone();
        let my_mac = parse_mac(&client.mac)
            .ok_or_else(|| LabError::State(format!("bad client MAC {}", client.mac)))?;
        let names: BTreeMap<[u8; 6], String> = st
            .nodes
            .iter()
            .filter_map(|n| Some((parse_mac(&n.mac)?, n.name.clone())))
            .collect();
        let macs: Vec<[u8; 6]> = names.keys().copied().collect();
        let name_of = move |m: &[u8; 6]| names.get(m).cloned().unwrap_or_else(|| format_mac(m));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
        let thread = thread::Builder::new()
            .name("arp-prober".into())
            .spawn(move || {
                let mut log = ArpLog {
                    timeline: HolderTimeline::new("ARP/ND prober"),
                    echo: HolderTimeline::new("ICMP echo per MAC"),
                    ..ArpLog::default()
                };
                let opened = (|| -> std::result::Result<_, String> {
                    netns::enter(&client.netns).map_err(|e| e.to_string())?;
                    let ifindex =
                        if_nametoindex(client.iface.as_str()).map_err(|e| e.to_string())?;
                    let fd = socket(
                        AddressFamily::Packet,
                        SockType::Raw,
                        SockFlag::SOCK_CLOEXEC,
                        SockProtocol::EthAll,
                    )
                    .map_err(|e| format!("AF_PACKET socket: {e}"))?;
                    let addr = link_addr(ifindex, ETH_P_ALL).ok_or("bad sockaddr_ll")?;
                    bind(fd.as_raw_fd(), &addr).map_err(|e| format!("bind: {e}"))?;
                    Ok(fd)
                })();
                let fd = match opened {
                    Ok(fd) => {
                        let _ = ready_tx.send(Ok(()));
                        fd
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return log;
                    }
                };
                let requests: Vec<Vec<u8>> = targets
                    .iter()
                    .map(|t| match t {
                        IpAddr::V4(t) => arp_request(my_mac, client.ipv4, *t).to_vec(),
                        IpAddr::V6(t) => ndp::neighbour_solicitation(my_mac, ND_PROBE_SOURCE, *t),
                    })
                    .collect();
                let echo_targets: Vec<Ipv4Addr> = targets
                    .iter()
                    .filter_map(|t| match t {
                        IpAddr::V4(t) => Some(*t),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                let mut buf = [0u8; 2048];
                let started = Instant::now();
                log.timeline.started = Some(started);
                log.echo.started = Some(started);
                let mut round_end = started;
                let mut seq: u16 = 0;
                while !stop2.load(Ordering::Relaxed) && started.elapsed() < max_duration {
                    let at = started.elapsed();
                    seq = seq.wrapping_add(1);
                    for r in &requests {
                        if let Err(e) = send(fd.as_raw_fd(), r, MsgFlags::empty()) {
                            log.timeline.errors.push((at, format!("send: {e}")));
                        }
                    }
                    for t in &echo_targets {
                        for mac in &macs {
                            let r = echo_request(my_mac, *mac, client.ipv4, *t, seq);
                            if let Err(e) = send(fd.as_raw_fd(), &r, MsgFlags::empty()) {
                                log.echo.errors.push((at, format!("send: {e}")));
                            }
                        }
                    }
                    round_end += every;
                    let mut holders: Holders = BTreeMap::new();
                    let mut echoed: Holders = BTreeMap::new();
                    loop {
                        let left = round_end.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        // poll has ms resolution on an hrtimer; SO_RCVTIMEO rounds to jiffies.
                        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                        match poll(&mut fds, ms) {
                            Ok(0) | Err(Errno::EINTR) => continue,
                            Ok(_) => {}
                            Err(e) => {
                                log.timeline.errors.push((at, format!("poll: {e}")));
                                break;
                            }
                        }
                        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                            Ok(n) => n,
                            Err(Errno::EAGAIN | Errno::EINTR) => continue,
                            Err(e) => {
                                log.timeline.errors.push((at, format!("recv: {e}")));
                                break;
                            }
                        };
                        let frame = &buf[..n];
                        if let Some(r) = parse_echo_reply(frame) {
                            if r.seq == seq && echo_targets.contains(&r.src) {
                                echoed
                                    .entry(IpAddr::V4(r.src))
                                    .or_default()
                                    .insert(name_of(&r.eth_src));
                            }
                            continue;
                        }
                        if let Some(p) = ndp::parse_nd(frame) {
                            let at = started.elapsed();
                            record_nd(&p, at, &targets, my_mac, &name_of, &mut holders, &mut log);
                            continue;
                        }
                        let Some(p) = parse_arp(frame) else {
                            continue;
                        };
                        if !targets.contains(&IpAddr::V4(p.spa)) {
                            continue;
                        }
                        if p.spa == p.tpa {
                            log.announcements.push(Announcement {
                                at: started.elapsed(),
                                ip: p.spa,
                                node: name_of(&p.sha),
                                op: p.op,
                            });
                        } else if p.op == 2 && p.tha == my_mac && p.tpa == client.ipv4 {
                            holders
                                .entry(IpAddr::V4(p.spa))
                                .or_default()
                                .insert(name_of(&p.sha));
                        }
                    }
                    log.timeline.record(at, holders);
                    if !echo_targets.is_empty() {
                        log.echo.record(at, echoed);
                    }
                    let now = Instant::now();
                    if round_end < now {
                        round_end = now;
                    }
                }
                log
            })
            .map_err(|e| LabError::State(format!("starting the ARP prober: {e}")))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(ArpProber {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(LabError::State(format!("ARP prober: {e}"))),
            Err(_) => Err(LabError::Timeout {
                what: "the ARP prober to open its socket".into(),
                after: Duration::from_secs(10),
            }),
        }
    }

    /// Stop and return what was seen.
    pub fn stop(mut self) -> ArpLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// File one neighbour-discovery packet: an answer to the prober (a holder this round), an
/// unsolicited advertisement, or the client kernel's own solicitation.
fn record_nd(
    p: &ndp::NdPacket,
    at: Duration,
    targets: &[IpAddr],
    my_mac: [u8; 6],
    name_of: &impl Fn(&[u8; 6]) -> String,
    holders: &mut Holders,
    log: &mut ArpLog,
) {
    if !targets.contains(&IpAddr::V6(p.target)) {
        return;
    }
    match p.kind {
        ND_NEIGHBOR_ADVERT if p.dst == ND_PROBE_SOURCE => {
            let mac = p.lladdr.unwrap_or(p.eth_src);
            holders
                .entry(IpAddr::V6(p.target))
                .or_default()
                .insert(name_of(&mac));
        }
        ND_NEIGHBOR_ADVERT if p.dst == ALL_NODES || !p.solicited => {
            log.advertisements.push(Advertisement {
                at,
                target: p.target,
                node: name_of(&p.eth_src),
                eth_dst: p.eth_dst,
                dst: p.dst,
                hop_limit: p.hop_limit,
                override_flag: p.override_flag,
                solicited: p.solicited,
                lladdr: p.lladdr,
                checksum_ok: p.checksum_ok,
            });
        }
        ND_NEIGHBOR_SOLICIT if p.eth_src == my_mac && p.src != ND_PROBE_SOURCE => {
            log.solicitations.push(Solicitation {
                at,
                target: p.target,
                multicast: p.dst.is_multicast(),
            });
        }
        _ => {}
    }
}

impl Drop for ArpProber {
    /// A monitor dropped without `stop` (e.g. a failing test) ends its thread too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_has_the_rfc826_layout_and_parses_back() {
        let mac = parse_mac("02:cd:00:00:02:c8").unwrap();
        let f = arp_request(
            mac,
            Ipv4Addr::new(192, 0, 2, 200),
            Ipv4Addr::new(192, 0, 2, 101),
        );
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        let p = parse_arp(&f).unwrap();
        assert_eq!(p.op, 1);
        assert_eq!(p.sha, mac);
        assert_eq!(p.tha, [0; 6]);
        assert_eq!(p.tpa, Ipv4Addr::new(192, 0, 2, 101));
        assert_eq!(format_mac(&mac), "02:cd:00:00:02:c8");
    }

    #[test]
    fn echo_request_has_valid_checksums_and_a_reply_parses_back() {
        let client = parse_mac("02:cd:00:00:02:c8").unwrap();
        let node = parse_mac("02:cd:00:00:02:0b").unwrap();
        let src = Ipv4Addr::new(192, 0, 2, 200);
        let dst = Ipv4Addr::new(192, 0, 2, 101);
        let f = echo_request(client, node, src, dst, 7);
        assert_eq!(&f[0..6], &node);
        // A correct checksum sums (with itself) to zero.
        assert_eq!(inet_checksum(&f[14..34]), 0);
        assert_eq!(inet_checksum(&f[34..42]), 0);
        // The node's answer: addresses and MACs swapped, type 0.
        let mut reply = f;
        reply[0..6].copy_from_slice(&client);
        reply[6..12].copy_from_slice(&node);
        reply[26..30].copy_from_slice(&dst.octets());
        reply[30..34].copy_from_slice(&src.octets());
        reply[34] = 0;
        assert_eq!(
            parse_echo_reply(&reply),
            Some(EchoReply {
                eth_src: node,
                src: dst,
                seq: 7
            })
        );
        // Our own request is no reply.
        assert_eq!(parse_echo_reply(&f), None);
    }
}
