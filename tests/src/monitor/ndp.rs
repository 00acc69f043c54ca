//! IPv6 neighbour discovery on the wire, for the client-side prober: neighbour solicitations it
//! sends ("who has 2001:db8::101?") and the advertisements it reads back, solicited or not.
//!
//! Frames are built and parsed byte by byte (Ethernet + IPv6 + ICMPv6, RFC 4861), independently
//! of clusterd's own announcement code, so the lab checks what clusterd puts on the wire rather
//! than trusting it.

use std::net::Ipv6Addr;

/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// ICMPv6 neighbour solicitation.
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 neighbour advertisement.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// The all-nodes multicast group unsolicited advertisements go to.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

const ETH_LEN: usize = 14;
const IPV6_LEN: usize = 40;
const NEXT_HEADER_ICMPV6: u8 = 58;

/// The solicited-node multicast group of `target` (ff02::1:ffXX:XXXX).
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let o = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address of an IPv6 multicast group (33:33 + its last 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The ICMPv6 checksum over the IPv6 pseudo-header and `body` (with its checksum field zero,
/// or as received: a correct packet sums to zero).
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A multicast neighbour solicitation for `target` from `src_mac`/`src_ip`, as a whole Ethernet
/// frame: to the target's solicited-node group, hop limit 255, with a source link-layer option.
pub fn neighbour_solicitation(src_mac: [u8; 6], src_ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let dst = solicited_node(target);
    let mut icmp = vec![0u8; 32];
    icmp[0] = ND_NEIGHBOR_SOLICIT;
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = 1; // source link-layer address option
    icmp[25] = 1; // 8 bytes
    icmp[26..32].copy_from_slice(&src_mac);
    let sum = icmpv6_checksum(src_ip, dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(ETH_LEN + IPV6_LEN + icmp.len());
    f.extend_from_slice(&multicast_mac(dst));
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class or flow label
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.push(NEXT_HEADER_ICMPV6);
    f.push(255); // hop limit: neighbour discovery accepts nothing else
    f.extend_from_slice(&src_ip.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// A neighbour solicitation or advertisement as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdPacket {
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// Ethernet source.
    pub eth_src: [u8; 6],
    /// IPv6 source.
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// IPv6 hop limit.
    pub hop_limit: u8,
    /// [`ND_NEIGHBOR_SOLICIT`] or [`ND_NEIGHBOR_ADVERT`].
    pub kind: u8,
    /// Advertisements: the router flag.
    pub router: bool,
    /// Advertisements: the solicited flag (an answer to a solicitation).
    pub solicited: bool,
    /// Advertisements: the override flag (replace a cached link-layer address).
    pub override_flag: bool,
    /// The address asked about or advertised.
    pub target: Ipv6Addr,
    /// The link-layer address option: source (solicitations) or target (advertisements).
    pub lladdr: Option<[u8; 6]>,
    /// Whether the ICMPv6 checksum is right.
    pub checksum_ok: bool,
}

/// Parse an Ethernet frame carrying an ICMPv6 neighbour solicitation or advertisement directly
/// after the IPv6 header; anything else is `None`.
pub fn parse_nd(f: &[u8]) -> Option<NdPacket> {
    if f.len() < ETH_LEN + IPV6_LEN + 24 || f[12..14] != ETH_P_IPV6.to_be_bytes() {
        return None;
    }
    let ip = &f[ETH_LEN..];
    if ip[0] >> 4 != 6 || ip[6] != NEXT_HEADER_ICMPV6 {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let icmp = ip.get(IPV6_LEN..IPV6_LEN + payload_len)?;
    let kind = icmp[0];
    if !(kind == ND_NEIGHBOR_SOLICIT || kind == ND_NEIGHBOR_ADVERT) || icmp.len() < 24 {
        return None;
    }
    let addr = |b: &[u8]| -> Ipv6Addr {
        <[u8; 16]>::try_from(b).map_or(Ipv6Addr::UNSPECIFIED, Ipv6Addr::from)
    };
    let mac = |b: &[u8]| -> [u8; 6] { b.try_into().unwrap_or([0; 6]) };
    let src = addr(&ip[8..24]);
    let dst = addr(&ip[24..40]);
    let wanted_option = if kind == ND_NEIGHBOR_SOLICIT { 1 } else { 2 };
    let mut lladdr = None;
    let mut opts = &icmp[24..];
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            break;
        }
        if opts[0] == wanted_option && len == 8 {
            lladdr = Some(mac(&opts[2..8]));
        }
        opts = &opts[len..];
    }
    Some(NdPacket {
        eth_dst: mac(&f[0..6]),
        eth_src: mac(&f[6..12]),
        src,
        dst,
        hop_limit: ip[7],
        kind,
        router: icmp[4] & 0x80 != 0,
        solicited: icmp[4] & 0x40 != 0,
        override_flag: icmp[4] & 0x20 != 0,
        target: addr(&icmp[8..24]),
        lladdr,
        checksum_ok: icmpv6_checksum(src, dst, icmp) == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0xcd, 0, 0, 2, 0xc8];

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn solicited_node_group_keeps_the_last_24_bits() {
        assert_eq!(solicited_node(v6("2001:db8::101")), v6("ff02::1:ff00:101"));
        assert_eq!(
            solicited_node(v6("2001:db8::abcd:1234:5678")),
            v6("ff02::1:ff34:5678")
        );
        assert_eq!(
            multicast_mac(v6("ff02::1:ff00:101")),
            [0x33, 0x33, 0xff, 0, 1, 1]
        );
    }

    #[test]
    fn solicitation_has_the_rfc4861_layout_and_parses_back_with_a_valid_checksum() {
        let f = neighbour_solicitation(MAC, v6("2001:db8::1:200"), v6("2001:db8::101"));
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0, 1, 1]);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let p = parse_nd(&f).unwrap();
        assert_eq!(p.kind, ND_NEIGHBOR_SOLICIT);
        assert_eq!(p.hop_limit, 255);
        assert_eq!(p.dst, v6("ff02::1:ff00:101"));
        assert_eq!(p.target, v6("2001:db8::101"));
        assert_eq!(p.lladdr, Some(MAC));
        assert!(p.checksum_ok);
    }

    #[test]
    fn a_corrupted_packet_fails_the_checksum() {
        let mut f = neighbour_solicitation(MAC, v6("2001:db8::1:200"), v6("2001:db8::101"));
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(!parse_nd(&f).unwrap().checksum_ok);
    }

    #[test]
    fn clusterds_unsolicited_advertisement_parses_with_override_and_target_option() {
        // The ICMPv6 body clusterd sends, wrapped the way the kernel sends it to ff02::1.
        let target = v6("2001:db8::101");
        let src = v6("fe80::cd:ff:fe00:20b");
        let mut icmp = clusterd::vip::packet::unsolicited_na(MAC, target).to_vec();
        let sum = icmpv6_checksum(src, ALL_NODES, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut f = Vec::new();
        f.extend_from_slice(&multicast_mac(ALL_NODES));
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&ALL_NODES.octets());
        f.extend_from_slice(&icmp);
        let p = parse_nd(&f).unwrap();
        assert_eq!(p.kind, ND_NEIGHBOR_ADVERT);
        assert!(p.override_flag && !p.solicited && !p.router);
        assert_eq!((p.target, p.lladdr, p.dst), (target, Some(MAC), ALL_NODES));
        assert!(p.checksum_ok);
    }

    #[test]
    fn other_ipv6_traffic_is_not_neighbour_discovery() {
        let mut f = neighbour_solicitation(MAC, v6("2001:db8::1:200"), v6("2001:db8::101"));
        f[14 + 40] = 128; // echo request
        assert_eq!(parse_nd(&f), None);
        f[12] = 0x08; // not IPv6 at all
        assert_eq!(parse_nd(&f), None);
    }
}
