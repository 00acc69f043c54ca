//! The one place the lab needs `unsafe`: building a `sockaddr_ll` for an AF_PACKET socket, which
//! nix only offers through `SockaddrLike::from_raw`.
#![allow(unsafe_code)]

use nix::sys::socket::{LinkAddr, SockaddrLike};

/// A link-layer address for interface `ifindex`, EtherType `protocol` (host order), broadcast
/// destination.
pub(crate) fn link_addr(ifindex: u32, protocol: u16) -> Option<LinkAddr> {
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
    // SAFETY: `sll` is a fully initialised sockaddr_ll that lives for the whole call, and `len`
    // is exactly its size; from_raw copies it and checks the family and length.
    unsafe { LinkAddr::from_raw((&raw const sll).cast::<libc::sockaddr>(), Some(len)) }
}
