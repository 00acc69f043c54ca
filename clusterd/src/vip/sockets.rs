//! The node's TCP sockets, read from the kernel over `sock_diag` netlink (what `ss` reads),
//! never by parsing a tool's output.
//!
//! [`SockDiag::tcp`] dumps the TCP sockets in given states, both address families. The health
//! checks use the listening sockets to notice at once that a service stopped listening
//! ([`listening`]). Every dump is bounded: at most [`MAX_SOCKETS`] sockets and
//! [`DUMP_TIMEOUT`] of waiting; a kernel answer that does not parse is an error, never a panic.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
/// Which TCP states a dump returns.
pub use netlink_packet_sock_diag::inet::StateFlags;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket};

/// Most sockets one dump returns; more is an error ([`DiagError::TooMany`]), so a node with a
/// flood of connections cannot make a dump grow without bound.
pub const MAX_SOCKETS: usize = 65_536;
/// Longest wait for one dump to finish.
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The netlink socket could not be opened or used.
    #[error("sock_diag netlink: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request (errno).
    #[error("sock_diag request refused by the kernel: {0}")]
    Refused(io::Error),
    /// An answer that does not parse.
    #[error("sock_diag answer does not parse: {0}")]
    Malformed(String),
    /// More than [`MAX_SOCKETS`] sockets.
    #[error("more than {MAX_SOCKETS} sockets in one dump")]
    TooMany,
    /// No end of dump within [`DUMP_TIMEOUT`].
    #[error("sock_diag dump unfinished after {} ms", DUMP_TIMEOUT.as_millis())]
    TimedOut,
}

/// One TCP socket of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// Local address and port (unspecified address for a wildcard listener).
    pub local: SocketAddr,
    /// Remote address and port (unspecified for a listener).
    pub remote: SocketAddr,
    /// Kernel TCP state (`TCP_LISTEN` = 10, `TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
}

/// Kernel TCP state of a listening socket.
pub const TCP_LISTEN: u8 = netlink_packet_sock_diag::constants::TCP_LISTEN;

/// A `sock_diag` netlink socket, reused for every dump.
pub struct SockDiag {
    socket: TokioSocket,
    seq: u32,
}

impl std::fmt::Debug for SockDiag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockDiag").field("seq", &self.seq).finish()
    }
}

impl SockDiag {
    /// Open the netlink socket (no privilege needed to read this network namespace's sockets).
    pub fn open() -> Result<SockDiag, DiagError> {
        let mut socket = TokioSocket::new(NETLINK_SOCK_DIAG)?;
        socket.socket_mut().bind_auto()?;
        socket
            .socket_mut()
            .connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(SockDiag { socket, seq: 0 })
    }

    /// Every TCP socket, IPv4 and IPv6, in one of `states`.
    pub async fn tcp(&mut self, states: StateFlags) -> Result<Vec<TcpSocket>, DiagError> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            tokio::time::timeout(DUMP_TIMEOUT, self.dump(family, states.clone(), &mut out))
                .await
                .map_err(|_| DiagError::TimedOut)??;
        }
        Ok(out)
    }

    async fn dump(
        &mut self,
        family: u8,
        states: StateFlags,
        out: &mut Vec<TcpSocket>,
    ) -> Result<(), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id,
            })
            .into(),
        );
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf).await?;
        loop {
            let (datagram, _) = self.socket.recv_from_full().await?;
            if parse_datagram(&datagram, self.seq, out)? {
                return Ok(());
            }
        }
    }
}

/// Add the sockets of one datagram of a dump answer to `out`; true once the dump's end came.
/// Messages of another sequence number (a late answer to an earlier, timed-out dump) are
/// skipped.
pub fn parse_datagram(
    mut bytes: &[u8],
    seq: u32,
    out: &mut Vec<TcpSocket>,
) -> Result<bool, DiagError> {
    while !bytes.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
            .map_err(|e| DiagError::Malformed(e.to_string()))?;
        let len = msg.header.length as usize;
        if len == 0 || len > bytes.len() {
            return Err(DiagError::Malformed(format!(
                "message length {len} in a datagram of {} bytes",
                bytes.len()
            )));
        }
        // Messages are aligned to 4 bytes within a datagram.
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or_default();
        if msg.header.sequence_number != seq {
            continue;
        }
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => {
                return match e.code {
                    Some(code) => Err(DiagError::Refused(io::Error::from_raw_os_error(
                        -code.get(),
                    ))),
                    None => Ok(true),
                };
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                if out.len() >= MAX_SOCKETS {
                    return Err(DiagError::TooMany);
                }
                let id = &r.header.socket_id;
                out.push(TcpSocket {
                    local: SocketAddr::new(id.source_address, id.source_port),
                    remote: SocketAddr::new(id.destination_address, id.destination_port),
                    state: r.header.state,
                });
            }
            // Noop, overrun, requests: nothing to list.
            _ => {}
        }
    }
    Ok(false)
}

/// Whether one of `sockets` listens where a connection to `target` would land: same port, and
/// the target's address, a wildcard of its family, or the IPv6 wildcard (which takes IPv4 too
/// unless the socket is IPv6-only; counting it is the cautious answer here, since the caller
/// only uses a missing listener to probe sooner).
pub fn listening(sockets: &[TcpSocket], target: SocketAddr) -> bool {
    sockets.iter().any(|s| {
        s.state == TCP_LISTEN
            && s.local.port() == target.port()
            && (s.local.ip() == target.ip()
                || s.local.ip().is_unspecified()
                || mapped(s.local.ip()) == Some(target.ip()))
    })
}

/// The IPv4 address of an IPv4-mapped IPv6 address.
fn mapped(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_sock_diag::inet::{InetResponse, InetResponseHeader};

    fn sock(local: &str, state: u8) -> TcpSocket {
        TcpSocket {
            local: local.parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state,
        }
    }

    #[test]
    fn a_listener_matches_its_address_a_wildcard_or_a_mapped_address() {
        let target: SocketAddr = "127.0.0.1:143".parse().unwrap();
        for local in [
            "127.0.0.1:143",
            "0.0.0.0:143",
            "[::]:143",
            "[::ffff:127.0.0.1]:143",
        ] {
            assert!(listening(&[sock(local, TCP_LISTEN)], target), "{local}");
        }
        for local in ["127.0.0.1:110", "192.0.2.11:143", "[::1]:143"] {
            assert!(!listening(&[sock(local, TCP_LISTEN)], target), "{local}");
        }
        assert!(
            !listening(&[sock("127.0.0.1:143", 1)], target),
            "an established socket is no listener"
        );
    }

    fn answer(seq: u32, payload: NetlinkPayload<SockDiagMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, payload);
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    fn listener(port: u16) -> NetlinkPayload<SockDiagMessage> {
        let mut id = SocketId::new_v4();
        id.source_port = port;
        SockDiagMessage::InetResponse(Box::new(InetResponse {
            header: InetResponseHeader {
                family: AF_INET,
                state: TCP_LISTEN,
                timer: None,
                socket_id: id,
                recv_queue: 0,
                send_queue: 128,
                uid: 0,
                inode: 1,
            },
            nlas: Default::default(),
        }))
        .into()
    }

    #[test]
    fn a_dump_datagram_parses_until_done_and_skips_other_sequences() {
        let mut bytes = answer(7, listener(143));
        bytes.extend(answer(6, listener(25)));
        bytes.extend(answer(7, listener(110)));
        let mut out = Vec::new();
        assert!(!parse_datagram(&bytes, 7, &mut out).unwrap());
        let ports: Vec<u16> = out.iter().map(|s| s.local.port()).collect();
        assert_eq!(ports, [143, 110]);
        let done = answer(7, NetlinkPayload::Done(Default::default()));
        assert!(parse_datagram(&done, 7, &mut out).unwrap());
    }

    #[test]
    fn garbage_and_truncated_answers_are_errors_not_panics() {
        let whole = answer(1, listener(143));
        for cut in 0..whole.len() {
            let mut out = Vec::new();
            let r = parse_datagram(&whole[..cut], 1, &mut out);
            assert!(cut == 0 || r.is_err(), "{cut} bytes parsed: {r:?}");
        }
        let mut out = Vec::new();
        assert!(parse_datagram(&[0xff; 40], 1, &mut out).is_err());
    }

    #[test]
    fn one_socket_past_the_bound_is_an_error() {
        let one = answer(1, listener(143));
        let mut out = vec![sock("127.0.0.1:1", TCP_LISTEN); MAX_SOCKETS - 1];
        assert!(!parse_datagram(&one, 1, &mut out).unwrap());
        assert!(matches!(
            parse_datagram(&one, 1, &mut out),
            Err(DiagError::TooMany)
        ));
    }

    #[tokio::test]
    async fn the_kernel_lists_a_socket_this_test_listens_on() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let socks = diag.tcp(StateFlags::LISTEN).await.unwrap();
        assert!(listening(&socks, addr), "{addr} not in {socks:?}");
        drop(l);
        let socks = diag.tcp(StateFlags::LISTEN).await.unwrap();
        assert!(!listening(&socks, addr), "{addr} still listed after close");
    }
}
