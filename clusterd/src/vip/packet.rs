//! Announcement frames: gratuitous ARP (request and reply form) and the IPv6 unsolicited
//! neighbour advertisement. Pure byte layout, unit-tested; sending is `linux`'s job.

use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// A broadcast Ethernet frame carrying a gratuitous ARP for `ip` from `mac`.
///
/// Request form: op 1, sender = target = `ip`, target MAC zero. Reply form: op 2, sender =
/// target = `ip`, target MAC = `mac`. Switches and hosts differ in which they honour, so both
/// are sent.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr, reply: bool) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&(if reply { 2u16 } else { 1u16 }).to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    if reply {
        f[32..38].copy_from_slice(&mac);
    }
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// The ICMPv6 body of an unsolicited neighbour advertisement for `target` (to be sent to
/// ff02::1 with hop limit 255; the kernel fills the checksum on raw ICMPv6 sockets): type 136,
/// code 0, Override flag set (Solicited clear), the target, and a target link-layer address
/// option carrying `mac`.
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 136;
    p[1] = 0;
    // p[2..4]: checksum, filled by the kernel.
    p[4..8].copy_from_slice(&0x2000_0000u32.to_be_bytes()); // O flag
    p[8..24].copy_from_slice(&target.octets());
    p[24] = 2; // option: target link-layer address
    p[25] = 1; // length in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0xcd, 0, 0, 2, 11];

    #[test]
    fn gratuitous_arp_request_has_sender_equal_target_and_zero_target_mac() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(192, 0, 2, 101), false);
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &MAC, "sender MAC");
        assert_eq!(&f[28..32], &[192, 0, 2, 101], "sender IP");
        assert_eq!(&f[32..38], &[0; 6], "target MAC");
        assert_eq!(&f[38..42], &[192, 0, 2, 101], "target IP");
    }

    #[test]
    fn gratuitous_arp_reply_carries_our_mac_as_target() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(192, 0, 2, 101), true);
        assert_eq!(&f[20..22], &[0, 2], "reply");
        assert_eq!(&f[32..38], &MAC);
        assert_eq!(&f[38..42], &[192, 0, 2, 101]);
    }

    #[test]
    fn neighbour_advertisement_sets_override_and_link_layer_option() {
        let target: Ipv6Addr = "2001:db8::101".parse().unwrap();
        let p = unsolicited_na(MAC, target);
        assert_eq!(p[0], 136);
        assert_eq!(p[1], 0);
        assert_eq!(&p[4..8], &[0x20, 0, 0, 0], "override only, not solicited");
        assert_eq!(&p[8..24], &target.octets());
        assert_eq!(&p[24..26], &[2, 1]);
        assert_eq!(&p[26..32], &MAC);
    }
}
