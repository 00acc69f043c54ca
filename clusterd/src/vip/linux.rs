//! The real [`NetOps`]: addresses over rtnetlink, announcements on raw sockets, and the
//! nftables guard through one long-lived `nft -i` process (no fork per renewal).
//!
//! The guard: table `inet clusterd_guard` drops IP traffic to and from a floating address
//! unless it is in the `held4`/`held6` sets, and table `arp clusterd_guard` drops ARP for it
//! unless it is in `held`. Set elements carry the time left on the lease as their timeout, so
//! the kernel closes the guard when the lease ends even if this daemon is frozen or dead.
//!
//! A timeout is a duration, counted from when the kernel applies it, so a write delayed after
//! its timeout was computed would stretch the allowance. Every opening write therefore comes in
//! two steps ([`LinuxNet::guard_arm`], [`LinuxNet::guard_commit`]): a token that expires after
//! [`GUARD_WRITE_WINDOW`] goes into the `fresh` set; then the clock is read, and the timeout
//! (time left less the window) is written in one transaction with the token's deletion. A
//! transaction that arrives after the token expired fails as a whole and changes nothing.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clusterd_lease::{GUARD_WRITE_WINDOW, guard_kernel_timeout};

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, CacheInfo};
use netlink_packet_route::link::LinkAttribute;
use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrLike, sendto,
    socket,
};

use super::packet::{ETH_P_ARP, gratuitous_arp, unsolicited_na};
use super::{NetError, NetOps};
use crate::config::IpPrefix;

const TABLE: &str = "clusterd_guard";
const NFT_TIMEOUT: Duration = Duration::from_secs(2);

/// rtnetlink + raw sockets + nftables.
pub struct LinuxNet {
    handle: rtnetlink::Handle,
    links: Mutex<HashMap<String, (u32, [u8; 6])>>,
    nft: Mutex<Option<Nft>>,
    tokens: AtomicU32,
}

/// Proof that a guard write was armed: the token placed in the guard's `fresh` set, valid
/// in the kernel for [`GUARD_WRITE_WINDOW`] after it was acknowledged.
#[derive(Debug)]
pub struct GuardToken(u32);

impl std::fmt::Debug for LinuxNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxNet").finish_non_exhaustive()
    }
}

impl LinuxNet {
    /// Open the netlink connection (needs a tokio runtime; CAP_NET_ADMIN to change anything).
    pub fn new() -> Result<Self, NetError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::new("open", "netlink", e))?;
        tokio::spawn(conn);
        Ok(LinuxNet {
            handle,
            links: Mutex::new(HashMap::new()),
            nft: Mutex::new(None),
            tokens: AtomicU32::new(1),
        })
    }

    /// First step of opening the guard: place a fresh token that the kernel forgets after
    /// [`GUARD_WRITE_WINDOW`].
    pub fn guard_arm(&self) -> Result<GuardToken, NetError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        self.nft(&format!(
            "add element inet {TABLE} fresh {{ {token} timeout {}ms }}",
            GUARD_WRITE_WINDOW.as_millis()
        ))?;
        Ok(GuardToken(token))
    }

    /// Second step: allow `allowed` until `until` at the latest. The kernel applies it only
    /// while `token` is still there; otherwise the write fails and the guard keeps its
    /// earlier allowance, which ends sooner.
    pub fn guard_commit(
        &self,
        token: GuardToken,
        allowed: &[IpAddr],
        until: Instant,
    ) -> Result<(), NetError> {
        let Some(timeout) = guard_kernel_timeout(until, Instant::now()) else {
            return self.guard_close();
        };
        self.nft(&guard_allow_script(allowed, timeout, Some(token.0)))
            .map_err(|e| {
                if e.reason.contains("No such file or directory") {
                    NetError::new(
                        "apply",
                        "nftables guard",
                        format!(
                            "the write reached the kernel more than {} ms after its timeout \
                             was computed, so it was refused and the guard keeps its earlier \
                             allowance",
                            GUARD_WRITE_WINDOW.as_millis()
                        ),
                    )
                } else {
                    e
                }
            })
    }

    /// Close the guard for every address. Needs no token: no delay can make closing unsafe.
    fn guard_close(&self) -> Result<(), NetError> {
        self.nft(&guard_allow_script(&[], Duration::ZERO, None))
    }

    async fn link(&self, iface: &str) -> Result<(u32, [u8; 6]), NetError> {
        if let Some(l) = crate::lock(&self.links).get(iface) {
            return Ok(*l);
        }
        let msg = self
            .handle
            .link()
            .get()
            .match_name(iface.to_string())
            .execute()
            .try_next()
            .await
            .map_err(|e| NetError::new("find interface", iface, e))?
            .ok_or_else(|| NetError::new("find interface", iface, "no such interface"))?;
        let mut mac = [0u8; 6];
        for attr in &msg.attributes {
            if let LinkAttribute::Address(a) = attr
                && a.len() == 6
            {
                mac.copy_from_slice(a);
            }
        }
        let entry = (msg.header.index, mac);
        crate::lock(&self.links).insert(iface.to_string(), entry);
        Ok(entry)
    }

    fn nft(&self, commands: &str) -> Result<(), NetError> {
        let mut guard = crate::lock(&self.nft);
        if guard.is_none() {
            *guard = Some(Nft::start()?);
        }
        let result = guard.as_mut().map(|n| n.run(commands)).unwrap_or(Ok(()));
        if result.as_ref().is_err_and(|e| e.op != "apply") {
            // A broken pipe or a stuck process: start afresh next time. (A transaction the
            // kernel refused leaves the process working.)
            if let Some(mut n) = guard.take() {
                n.stop();
            }
        }
        result
    }
}

fn prefix_of(msg: &netlink_packet_route::address::AddressMessage) -> Option<IpPrefix> {
    msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(IpPrefix {
            addr: *ip,
            prefix_len: msg.header.prefix_len,
        }),
        _ => None,
    })
}

impl NetOps for LinuxNet {
    async fn list(&self, iface: &str) -> Result<Vec<IpPrefix>, NetError> {
        let (index, _) = self.link(iface).await?;
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| NetError::new("list addresses", iface, e))?
        {
            if let Some(p) = prefix_of(&msg) {
                out.push(p);
            }
        }
        Ok(out)
    }

    async fn add(&self, iface: &str, addr: IpPrefix, lifetime_secs: u32) -> Result<(), NetError> {
        let (index, _) = self.link(iface).await?;
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr, addr.prefix_len)
            .replace();
        let msg = req.message_mut();
        let mut lifetime = CacheInfo::default();
        lifetime.ifa_preferred = lifetime_secs;
        lifetime.ifa_valid = lifetime_secs;
        msg.attributes.push(AddressAttribute::CacheInfo(lifetime));
        if addr.addr.is_ipv6() {
            // Usable at once: duplicate address detection would hold it back for a second,
            // and the lease already guarantees nobody else has it.
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| NetError::new("add address", format!("{addr} on {iface}"), e))
    }

    async fn remove(&self, iface: &str, addr: IpPrefix) -> Result<(), NetError> {
        let (index, _) = self.link(iface).await?;
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr.addr)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| NetError::new("find address", addr, e))?
        {
            if prefix_of(&msg) == Some(addr) {
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(|e| {
                        NetError::new("remove address", format!("{addr} on {iface}"), e)
                    })?;
            }
        }
        Ok(())
    }

    async fn announce(&self, iface: &str, ip: IpAddr) -> Result<(), NetError> {
        let (index, mac) = self.link(iface).await?;
        match ip {
            IpAddr::V4(v4) => send_garp(index, mac, v4),
            IpAddr::V6(v6) => send_na(index, mac, v6),
        }
        .map_err(|e| NetError::new("announce", format!("{ip} on {iface}"), e))
    }

    async fn watch_links(&self, stop: tokio::sync::watch::Receiver<bool>) -> Result<(), NetError> {
        super::neigh::watch_links(stop).await
    }

    async fn guard_setup(
        &self,
        floating: &[IpAddr],
        interfaces: &[String],
    ) -> Result<(), NetError> {
        self.nft(&guard_setup_script(floating, interfaces))
    }

    async fn guard_allow(&self, allowed: &[IpAddr], until: Instant) -> Result<(), NetError> {
        if allowed.is_empty() {
            return self.guard_close();
        }
        let token = self.guard_arm()?;
        self.guard_commit(token, allowed, until)
    }

    async fn guard_teardown(&self) -> Result<(), NetError> {
        let nft = crate::lock(&self.nft).take();
        let nft = match nft {
            Some(n) => n,
            None => Nft::start()?,
        };
        // Adding a table that exists changes nothing, so this works whether or not the tables
        // are there (`clusterd cleanup` runs it after any kind of stop).
        nft.finish(&remove_guard_tables())
    }
}

/// The nftables families the guard has a table in.
const GUARD_FAMILIES: [&str; 3] = ["inet", "arp", "netdev"];

/// Commands that remove every guard table, whether or not it exists (adding a table that
/// exists changes nothing).
fn remove_guard_tables() -> String {
    GUARD_FAMILIES
        .iter()
        .map(|f| format!("add table {f} {TABLE}; delete table {f} {TABLE}; "))
        .collect()
}

/// The key of an IPv6 address in the sets matched against a neighbour-discovery target field
/// (`@th,64,128`, bytes 8-23 of the ICMPv6 message): the address as a 128-bit integer, because
/// nftables 1.0.6 has no `icmpv6 taddr` and will not compare a raw payload with an address set.
fn nd_key(ip: Ipv6Addr) -> String {
    format!("0x{:032x}", u128::from(ip))
}

/// The nftables transaction that installs the guard for `floating` (from a clean slate).
///
/// IPv4: IP traffic to and from an address not held is dropped (`inet`), and so is ARP for it
/// (`arp`), both ways, except ARP sent *from* a floating address: another node's announcement
/// of an address it took over (sender and target the address) must reach this node's
/// neighbour cache, or this node would go on sending to the old owner's MAC for as long as its
/// entry stays reachable (tens of seconds; the chaos campaign found drills run from a third
/// mail node failing so). Whatever the kernel might answer to such a packet for an address it
/// still has but does not hold leaves with that address as sender and is dropped on output. IPv6: IP traffic likewise, which already stops the kernel's answers to
/// neighbour solicitations (a neighbour advertisement for a local address has that address as
/// its source); in addition, solicitations for an address not held are dropped on input (a
/// multicast solicitation is addressed to the solicited-node group, not to the address) and
/// advertisements for it on output whatever their source, so a node whose lease ended neither
/// answers for the address nor announces it, as with ARP.
///
/// Gratuitous ARP leaves on a packet socket, which passes neither the `inet` nor the `arp`
/// hooks: a `netdev` egress chain on each of `interfaces` (kernel 5.16 or later) drops ARP
/// whose sender is a floating address not held, so an announcement checked against the lease
/// just before a freeze is dropped by the kernel if it leaves after the allowance ended. (The
/// packet socket must not set `PACKET_QDISC_BYPASS`, which skips the egress hook.)
pub fn guard_setup_script(floating: &[IpAddr], interfaces: &[String]) -> String {
    let list = |v6: bool, f: &dyn Fn(&IpAddr) -> String| -> String {
        floating
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(f)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let v4 = list(false, &|ip| ip.to_string());
    let v6 = list(true, &|ip| ip.to_string());
    let nd = list(true, &|ip| match ip {
        IpAddr::V6(v6) => nd_key(*v6),
        IpAddr::V4(_) => String::new(),
    });
    let nd_target = "@th,64,128";
    let mut script = String::new();
    // Start from a clean slate (a previous run may have left its tables).
    script.push_str(&remove_guard_tables());
    script.push_str(&format!(
        "add table inet {TABLE}; \
         add set inet {TABLE} floating4 {{ type ipv4_addr; }}; \
         add set inet {TABLE} floating6 {{ type ipv6_addr; }}; \
         add set inet {TABLE} held4 {{ type ipv4_addr; flags timeout; }}; \
         add set inet {TABLE} held6 {{ type ipv6_addr; flags timeout; }}; \
         add set inet {TABLE} nd_floating6 {{ typeof {nd_target}; }}; \
         add set inet {TABLE} nd_held6 {{ typeof {nd_target}; flags timeout; }}; \
         add set inet {TABLE} fresh {{ type mark; flags timeout; }}; \
         add chain inet {TABLE} input {{ type filter hook input priority -200; policy accept; }}; \
         add chain inet {TABLE} output {{ type filter hook output priority -200; policy accept; }}; \
         add rule inet {TABLE} input ip daddr @floating4 ip daddr != @held4 drop; \
         add rule inet {TABLE} input ip6 daddr @floating6 ip6 daddr != @held6 drop; \
         add rule inet {TABLE} input icmpv6 type nd-neighbor-solicit \
           {nd_target} @nd_floating6 {nd_target} != @nd_held6 drop; \
         add rule inet {TABLE} output ip saddr @floating4 ip saddr != @held4 drop; \
         add rule inet {TABLE} output ip6 saddr @floating6 ip6 saddr != @held6 drop; \
         add rule inet {TABLE} output icmpv6 type nd-neighbor-advert \
           {nd_target} @nd_floating6 {nd_target} != @nd_held6 drop; \
         add table arp {TABLE}; \
         add set arp {TABLE} floating {{ type ipv4_addr; }}; \
         add set arp {TABLE} held {{ type ipv4_addr; flags timeout; }}; \
         add chain arp {TABLE} input {{ type filter hook input priority 0; policy accept; }}; \
         add chain arp {TABLE} output {{ type filter hook output priority 0; policy accept; }}; \
         add rule arp {TABLE} input arp saddr ip @floating accept; \
         add rule arp {TABLE} input arp daddr ip @floating arp daddr ip != @held drop; \
         add rule arp {TABLE} output arp saddr ip @floating arp saddr ip != @held drop; \
         add table netdev {TABLE}; \
         add set netdev {TABLE} floating {{ type ipv4_addr; }}; \
         add set netdev {TABLE} held {{ type ipv4_addr; flags timeout; }}; "
    ));
    let mut devices: Vec<&String> = interfaces.iter().collect();
    devices.sort();
    devices.dedup();
    for (i, dev) in devices.iter().enumerate() {
        script.push_str(&format!(
            "add chain netdev {TABLE} egress{i} {{ type filter hook egress device \"{dev}\" \
               priority 0; policy accept; }}; \
             add rule netdev {TABLE} egress{i} ether type arp \
               arp saddr ip @floating arp saddr ip != @held drop; "
        ));
    }
    if !v4.is_empty() {
        script.push_str(&format!(
            "add element inet {TABLE} floating4 {{ {v4} }}; \
             add element arp {TABLE} floating {{ {v4} }}; \
             add element netdev {TABLE} floating {{ {v4} }}; "
        ));
    }
    if !v6.is_empty() {
        script.push_str(&format!(
            "add element inet {TABLE} floating6 {{ {v6} }}; \
             add element inet {TABLE} nd_floating6 {{ {nd} }}; "
        ));
    }
    script
}

/// The nftables transaction that replaces the guard's allowed sets: each address allowed for
/// `timeout`, after which the kernel closes it. One transaction, because re-adding an element
/// does not refresh its timeout while flush + add does. With a `token`, the transaction first
/// deletes it from the `fresh` set, so it fails as a whole once the token expired.
pub fn guard_allow_script(allowed: &[IpAddr], timeout: Duration, token: Option<u32>) -> String {
    let timeout = format!("timeout {}ms", timeout.as_millis().max(1));
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut nd = Vec::new();
    for ip in allowed {
        match ip {
            IpAddr::V4(a) => v4.push(format!("{a} {timeout}")),
            IpAddr::V6(a) => {
                v6.push(format!("{a} {timeout}"));
                nd.push(format!("{} {timeout}", nd_key(*a)));
            }
        }
    }
    let mut script = String::new();
    if let Some(token) = token {
        script.push_str(&format!(
            "delete element inet {TABLE} fresh {{ {token} }}; "
        ));
    }
    script.push_str(&format!(
        "flush set inet {TABLE} held4; flush set inet {TABLE} held6; \
         flush set inet {TABLE} nd_held6; flush set arp {TABLE} held; \
         flush set netdev {TABLE} held; "
    ));
    if !v4.is_empty() {
        let list = v4.join(", ");
        script.push_str(&format!(
            "add element inet {TABLE} held4 {{ {list} }}; add element arp {TABLE} held {{ {list} }}; \
             add element netdev {TABLE} held {{ {list} }}; "
        ));
    }
    if !v6.is_empty() {
        script.push_str(&format!(
            "add element inet {TABLE} held6 {{ {} }}; add element inet {TABLE} nd_held6 {{ {} }}; ",
            v6.join(", "),
            nd.join(", ")
        ));
    }
    script
}

/// A long-lived `nft -i`. Each call writes one line (one transaction) and then a listing of the
/// guard's ARP table as a marker; output up to the marker's closing brace belongs to the call,
/// and any "Error" in it fails the call.
struct Nft {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Nft {
    fn start() -> Result<Nft, NetError> {
        let (read, write) = std::io::pipe().map_err(|e| NetError::new("start", "nft", e))?;
        let write2 = write
            .try_clone()
            .map_err(|e| NetError::new("start", "nft", e))?;
        let mut child = Command::new("nft")
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(write)
            .stderr(write2)
            .spawn()
            .map_err(|e| {
                NetError::new(
                    "start",
                    "nft",
                    format!("{e} (install nftables: apt-get install -y nftables)"),
                )
            })?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| NetError::new("start", "nft", "no stdin"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("nft-reader".into())
            .spawn(move || {
                for line in BufReader::new(read).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| NetError::new("start", "nft reader", e))?;
        Ok(Nft {
            child,
            stdin,
            lines,
        })
    }

    fn run(&mut self, commands: &str) -> Result<(), NetError> {
        // Drain anything left over from an earlier call.
        while self.lines.try_recv().is_ok() {}
        writeln!(self.stdin, "{commands}")
            .and_then(|()| writeln!(self.stdin, "list table arp {TABLE}"))
            .and_then(|()| self.stdin.flush())
            .map_err(|e| NetError::new("write", "nft", e))?;
        let mut error = None;
        let deadline = std::time::Instant::now() + NFT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| NetError::new("run", "nft", "no answer within 2 s"))?;
            if line.starts_with("Error") {
                error.get_or_insert(line);
            } else if line == "}" {
                break;
            }
        }
        match error {
            Some(e) => Err(NetError::new("apply", "nftables guard", e)),
            None => Ok(()),
        }
    }

    /// Run a last line, close nft's input and wait for it to exit.
    fn finish(mut self, commands: &str) -> Result<(), NetError> {
        while self.lines.try_recv().is_ok() {}
        let written = writeln!(self.stdin, "{commands}").and_then(|()| self.stdin.flush());
        drop(self.stdin);
        let mut error = written.err().map(|e| e.to_string());
        let deadline = std::time::Instant::now() + NFT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("Error") => {
                    error.get_or_insert(line);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        match error {
            Some(e) => Err(NetError::new("apply", "nftables guard", e)),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The link-layer destination for a broadcast frame of EtherType `protocol` (host order) on
/// interface `ifindex`, for AF_PACKET sockets (also used by the lab's ARP prober).
pub fn link_addr(ifindex: u32, protocol: u16) -> Option<LinkAddr> {
    let sll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
    };
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `sll` is a fully initialised sockaddr_ll living for the whole call and `len` is
    // exactly its size; from_raw copies it after checking family and length.
    unsafe { LinkAddr::from_raw((&raw const sll).cast::<libc::sockaddr>(), Some(len)) }
}

fn send_garp(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> std::io::Result<()> {
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )?;
    let to = link_addr(ifindex, ETH_P_ARP)
        .ok_or_else(|| std::io::Error::other("cannot build the link-layer address"))?;
    for reply in [false, true] {
        let frame = gratuitous_arp(mac, ip, reply);
        match sendto(fd.as_raw_fd(), &frame, &to, MsgFlags::empty()) {
            Ok(_) => {}
            // What the guard's egress chain answers when it drops the frame.
            Err(nix::errno::Errno::ENOBUFS) => {
                return Err(std::io::Error::other(
                    "dropped on its way out (ENOBUFS): the address guard drops announcements \
                     once this node's lease for the address has ended",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn send_na(ifindex: u32, mac: [u8; 6], target: Ipv6Addr) -> std::io::Result<()> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::RAW,
        Some(socket2::Protocol::ICMPV6),
    )?;
    sock.set_multicast_hops_v6(255)?;
    sock.set_multicast_if_v6(ifindex)?;
    sock.set_unicast_hops_v6(255)?;
    let to = SocketAddrV6::new(
        "ff02::1".parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
        0,
        0,
        ifindex,
    );
    sock.send_to(&unsolicited_na(mac, target), &to.into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips() -> Vec<IpAddr> {
        vec![
            "192.0.2.101".parse().unwrap(),
            "2001:db8::101".parse().unwrap(),
        ]
    }

    #[test]
    fn neighbour_discovery_keys_are_the_address_as_a_128_bit_integer() {
        assert_eq!(
            nd_key("2001:db8::101".parse().unwrap()),
            "0x20010db8000000000000000000000101"
        );
    }

    #[test]
    fn guard_drops_solicitations_and_advertisements_for_ipv6_addresses_not_held() {
        let s = guard_setup_script(&ips(), &["eth0".to_string()]);
        assert!(s.contains(
            "input icmpv6 type nd-neighbor-solicit @th,64,128 @nd_floating6 \
             @th,64,128 != @nd_held6 drop"
        ));
        assert!(s.contains(
            "output icmpv6 type nd-neighbor-advert @th,64,128 @nd_floating6 \
             @th,64,128 != @nd_held6 drop"
        ));
        assert!(s.contains("add element inet clusterd_guard floating6 { 2001:db8::101 }"));
        assert!(s.contains(
            "add element inet clusterd_guard nd_floating6 { 0x20010db8000000000000000000000101 }"
        ));
        assert!(s.contains("add element arp clusterd_guard floating { 192.0.2.101 }"));
    }

    #[test]
    fn guard_takes_in_other_nodes_announcements_but_answers_no_request_for_an_address_not_held() {
        let s = guard_setup_script(&ips(), &["eth0".to_string()]);
        let accept = s
            .find("add rule arp clusterd_guard input arp saddr ip @floating accept")
            .expect("announcements accepted");
        let drop = s
            .find("add rule arp clusterd_guard input arp daddr ip @floating arp daddr ip != @held drop")
            .expect("requests for addresses not held dropped");
        assert!(accept < drop, "the accept must come first");
        assert!(s.contains(
            "add rule arp clusterd_guard output arp saddr ip @floating arp saddr ip != @held drop"
        ));
    }

    #[test]
    fn guard_drops_gratuitous_arp_for_addresses_not_held_at_each_interfaces_egress() {
        let ifaces = ["eth1".to_string(), "eth0".to_string(), "eth1".to_string()];
        let s = guard_setup_script(&ips(), &ifaces);
        // One egress chain per interface, however many addresses use it.
        assert_eq!(s.matches("hook egress").count(), 2);
        assert!(s.contains("type filter hook egress device \"eth0\""));
        assert!(s.contains("type filter hook egress device \"eth1\""));
        assert!(s.contains("ether type arp arp saddr ip @floating arp saddr ip != @held drop"));
        assert!(s.contains("add element netdev clusterd_guard floating { 192.0.2.101 }"));
        assert!(s.contains("delete table netdev clusterd_guard;"));
    }

    #[test]
    fn allowing_an_ipv6_address_opens_traffic_and_neighbour_discovery_with_one_timeout() {
        let s = guard_allow_script(&ips(), Duration::from_millis(650), Some(7));
        // The token goes first: without it the whole transaction fails.
        assert!(s.starts_with(
            "delete element inet clusterd_guard fresh { 7 }; flush set inet clusterd_guard held4;"
        ));
        assert!(s.contains("flush set inet clusterd_guard nd_held6;"));
        assert!(s.contains("held6 { 2001:db8::101 timeout 650ms }"));
        assert!(s.contains("nd_held6 { 0x20010db8000000000000000000000101 timeout 650ms }"));
        assert!(s.contains("held { 192.0.2.101 timeout 650ms }"));
        assert!(s.contains("add element netdev clusterd_guard held { 192.0.2.101 timeout 650ms }"));
        // Nothing allowed: every set flushed, nothing added, no token needed.
        let closed = guard_allow_script(&[], Duration::ZERO, None);
        assert!(!closed.contains("add element") && !closed.contains("fresh"));
    }
}
