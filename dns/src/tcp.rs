//! The TCP side of the server: accept connections, read length-prefixed queries, write answers.
//!
//! Owns TCP framing (RFC 1035 4.2.2 two-byte length prefix, RFC 7766 several queries per
//! connection, answered in order), the idle timeout on every read and write, and the caps on open
//! connections, per listener and per source address (one over a cap is closed at once, so a flood
//! of idle connections can neither exhaust memory or tasks nor, from one source, lock everyone
//! else out). Parsing and encoding are `wire`'s, answers the shared `Handler`'s; this module
//! must not decide answers. A connection that sends something unparseable is answered FORMERR if
//! its header is readable, and closed otherwise.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, error, warn};

use crate::server::Handler;
use crate::wire::{Outbox, answer_message};

/// Accepts connections on `listener` until aborted; dropping this future closes them all.
pub(crate) async fn tcp_loop(
    listener: TcpListener,
    handler: Handler,
    idle: Duration,
    max_connections: usize,
    max_per_source: usize,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let per_source = Arc::new(Mutex::new(HashMap::new()));
    let mut connections = JoinSet::new();
    let mut warned_full = false;
    let mut warned_source = false;
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotConnected | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                error!("dns tcp listener failed, no longer accepting on it: {e}");
                return;
            }
            // EMFILE and friends: back off briefly instead of spinning.
            Err(e) => {
                debug!("dns tcp accept error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !warned_full {
                warn!(
                    max_connections,
                    "dns tcp connection limit reached; closing new connections until some end"
                );
                warned_full = true;
            }
            continue; // dropping `stream` closes it
        };
        warned_full = false;
        let Some(share) = SourceShare::take(&per_source, src.ip(), max_per_source.max(1)) else {
            if !warned_source {
                warn!(
                    %src,
                    max_per_source,
                    "dns tcp connections from one source at their cap; closing its new ones"
                );
                warned_source = true;
            }
            continue;
        };
        warned_source = false;
        let handler = handler.clone();
        connections.spawn(async move {
            serve_connection(stream, src, &handler, idle).await;
            drop(share);
            drop(slot);
        });
    }
}

/// One connection's place in its source's count, given back when dropped.
struct SourceShare {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl SourceShare {
    /// Count one more connection from `source`, unless it already holds `max`.
    fn take(
        counts: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        source: IpAddr,
        max: usize,
    ) -> Option<SourceShare> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let held = map.entry(source).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(SourceShare {
            counts: counts.clone(),
            source,
        })
    }
}

impl Drop for SourceShare {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// Answers queries on one connection, in order, until the client closes, idles for `idle`, or
/// sends something without a readable header.
async fn serve_connection(
    mut stream: TcpStream,
    src: SocketAddr,
    handler: &Handler,
    idle: Duration,
) {
    let outbox = Outbox::default();
    let mut message = Vec::with_capacity(512);
    loop {
        let len = match timeout(idle, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        message.resize(len, 0);
        if !matches!(
            timeout(idle, stream.read_exact(&mut message)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        answer_message(handler, &message, src, Protocol::Tcp, &outbox).await;
        let replies = outbox.take();
        if replies.is_empty() {
            debug!(%src, "dns tcp message without a readable header; closing");
            return;
        }
        for (wire, _) in replies {
            let Ok(prefix) = u16::try_from(wire.len()) else {
                return;
            };
            let mut frame = Vec::with_capacity(2 + wire.len());
            frame.extend_from_slice(&prefix.to_be_bytes());
            frame.extend_from_slice(&wire);
            if !matches!(timeout(idle, stream.write_all(&frame)).await, Ok(Ok(()))) {
                return;
            }
        }
    }
}
