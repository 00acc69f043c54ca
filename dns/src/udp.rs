//! The UDP side of the server: receive a batch of datagrams, answer each, send the batch.
//!
//! Owns the socket I/O of UDP: `recvmmsg`/`sendmmsg` batches of up to [`BATCH`] datagrams per
//! system call (as NSD and Knot do), answered inline in between (no task or channel per query),
//! from the loop's own answer cache (`cache`) when the same query was answered before. Parsing
//! and encoding are `wire`'s, answers the shared [`Handler`]'s; this module must not decide
//! answers, truncation or rate limits.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, error};

use crate::cache::{AnswerCache, answer_udp};
use crate::server::Handler;
use crate::wire::Outbox;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 32;
/// Largest query accepted; longer datagrams are dropped (no real query comes close).
const MAX_QUERY: usize = 4096;

/// Receives, answers and sends on one UDP socket until aborted or the socket fails.
pub(crate) async fn udp_loop(socket: Arc<UdpSocket>, handler: Handler) {
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_QUERY]).collect();
    let outbox = Outbox::default();
    let mut cache = AnswerCache::new(handler.zones().clone());
    let fd = socket.as_raw_fd();
    loop {
        if let Err(e) = socket.readable().await {
            error!("dns udp socket failed, no longer answering on it: {e}");
            return;
        }
        let received = match socket.try_io(Interest::READABLE, || recv_batch(fd, &mut bufs)) {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
                ) =>
            {
                error!("dns udp socket failed, no longer answering on it: {e}");
                return;
            }
            // ICMP errors of earlier replies surface here on Linux; they concern one client.
            Err(e) => {
                debug!("dns udp receive error: {e}");
                continue;
            }
        };
        for (i, datagram) in received.iter().enumerate() {
            if let Some((len, src)) = datagram {
                answer_udp(&handler, &mut cache, &bufs[i][..*len], *src, &outbox).await;
            }
        }
        let replies = outbox.take();
        send_batch(&socket, fd, &replies).await;
    }
}

/// One `recvmmsg`: for each slot of `bufs`, in order, `Some((length, source))` for a datagram
/// worth answering, `None` for one to drop (truncated, no usable source).
fn recv_batch(fd: RawFd, bufs: &mut [Vec<u8>]) -> io::Result<Vec<Option<(usize, SocketAddr)>>> {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), None);
    let mut slices: Vec<[IoSliceMut<'_>; 1]> =
        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
    let messages = recvmmsg(
        fd,
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    Ok(messages
        .map(|m| {
            if m.flags.contains(MsgFlags::MSG_TRUNC) {
                return None;
            }
            let src = m.address.as_ref().and_then(to_socket_addr)?;
            (src.port() != 0).then_some((m.bytes, src))
        })
        .collect())
}

fn to_socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        Some(SocketAddr::from(*v4))
    } else {
        addr.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
    }
}

/// Sends every reply, `sendmmsg` by `sendmmsg`, waiting for the socket when its buffer is full.
/// A reply the kernel refuses outright (the first of a call fails) is skipped.
async fn send_batch(socket: &UdpSocket, fd: RawFd, replies: &[(Vec<u8>, SocketAddr)]) {
    let mut sent = 0;
    while sent < replies.len() {
        match socket.try_io(Interest::WRITABLE, || send_mmsg(fd, &replies[sent..])) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = socket.writable().await {
                    debug!("dns udp socket not writable: {e}");
                    return;
                }
            }
            Err(e) => {
                debug!(dst = %replies[sent].1, "dns udp response not sent: {e}");
                sent += 1;
            }
        }
    }
}

fn send_mmsg(fd: RawFd, replies: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
    let replies = &replies[..replies.len().min(BATCH)];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), None);
    let slices: Vec<[IoSlice<'_>; 1]> = replies.iter().map(|(b, _)| [IoSlice::new(b)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = replies
        .iter()
        .map(|(_, a)| Some(SockaddrStorage::from(*a)))
        .collect();
    let cmsgs: [ControlMessage<'_>; 0] = [];
    let results = sendmmsg(
        fd,
        &mut headers,
        slices.iter(),
        &addrs,
        cmsgs,
        MsgFlags::MSG_DONTWAIT,
    )?;
    Ok(results.count())
}
