//! Opening the sockets [`crate::serve`] answers on, for callers that want the usual setup.
//!
//! Owns the socket options: several UDP sockets on one address with `SO_REUSEPORT`, so the kernel
//! spreads queries over them and the server runs one receive loop per socket (one loop alone
//! cannot use more than about one core). It must not serve or decide anything; `serve` still
//! accepts any sockets the caller bound itself.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

/// Requested receive buffer of each UDP socket, in bytes.
const UDP_RECV_BUFFER: usize = 1 << 20;

/// Binds `count` (at least 1) UDP sockets to `addr` with `SO_REUSEPORT`. With port 0 the first
/// socket picks the port and the others share it. Call inside a tokio runtime.
pub fn bind_udp(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_port(true)?;
        // Bursts queue here while the loop answers; the kernel caps this at net.core.rmem_max.
        socket.set_recv_buffer_size(UDP_RECV_BUFFER)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let socket = UdpSocket::from_std(socket.into())?;
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Binds a TCP listener on `addr` (`SO_REUSEADDR`, so a restart does not wait for TIME_WAIT).
/// Call inside a tokio runtime.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn udp_sockets_share_one_port() {
        let sockets = bind_udp("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(sockets.len(), 3);
        let port = sockets[0].local_addr().unwrap().port();
        assert!(
            sockets
                .iter()
                .all(|s| s.local_addr().unwrap().port() == port)
        );
    }

    #[tokio::test]
    async fn tcp_binds_beside_udp_on_the_same_port() {
        // The UDP port's TCP twin may belong to someone else's connection: try a few ports.
        for _ in 0..20 {
            let udp = bind_udp("127.0.0.1:0".parse().unwrap(), 1).unwrap();
            let addr = udp[0].local_addr().unwrap();
            if let Ok(tcp) = bind_tcp(addr) {
                assert_eq!(tcp.local_addr().unwrap(), addr);
                return;
            }
        }
        panic!("no port where both UDP and TCP bind after 20 tries");
    }
}
