//! The greeting watch: how a mail client experiences a failover, measured finely enough to
//! compare failover mechanisms. From the client namespace it opens a new TCP connection to the
//! address every few milliseconds (non-blocking, many in flight, each given up after a timeout)
//! and records which node's greeting arrived and when.
//!
//! One connection attempt at a time (as [`crate::probe::greeting`] makes) would blur the
//! measurement: an attempt whose SYN went to the old owner's MAC waits for the kernel's one-second
//! retransmission, while a client connecting a moment later already reaches the new owner.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, connect, getsockopt, socket, sockopt,
};

use crate::lab::{Lab, LabError, Result, netns};
use crate::probe::greeting_node;

/// One greeting the client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// When the connection attempt started.
    pub started: Instant,
    /// When the greeting line arrived.
    pub at: Instant,
    /// The node it names (`None`: a line naming no node).
    pub node: Option<String>,
}

/// What a watch saw in total.
#[derive(Debug, Clone, Default)]
pub struct WatchLog {
    /// Every greeting, in order of arrival.
    pub greetings: Vec<Greeting>,
    /// Attempts that got no greeting (refused, reset, or timed out).
    pub failed: u64,
}

impl WatchLog {
    /// The last greeting from `node` that arrived before `before`.
    pub fn last_from_before(&self, node: &str, before: Instant) -> Option<&Greeting> {
        self.greetings
            .iter()
            .rev()
            .find(|g| g.at < before && g.node.as_deref() == Some(node))
    }

    /// The first greeting from `node` that arrived at or after `after`.
    pub fn first_from_after(&self, node: &str, after: Instant) -> Option<&Greeting> {
        self.greetings
            .iter()
            .find(|g| g.at >= after && g.node.as_deref() == Some(node))
    }
}

/// Opens connections to one address from the client namespace until stopped.
#[derive(Debug)]
pub struct GreetingWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<WatchLog>>,
    events: mpsc::Receiver<Greeting>,
}

struct Attempt {
    fd: OwnedFd,
    started: Instant,
    connected: bool,
    buf: Vec<u8>,
}

impl GreetingWatch {
    /// Start a connection to `addr` every `every`, each given up after `timeout`; the watch
    /// stops by itself after `max_duration`. Returns once the first attempt is under way.
    pub fn start(
        lab: &Lab,
        addr: SocketAddr,
        every: Duration,
        timeout: Duration,
        max_duration: Duration,
    ) -> Result<GreetingWatch> {
        let ns = lab.state().client.netns.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (tx, events) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
        let thread = thread::Builder::new()
            .name("greeting-watch".into())
            .spawn(move || {
                let mut log = WatchLog::default();
                if let Err(e) = netns::enter(&ns) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return log;
                }
                let _ = ready_tx.send(Ok(()));
                let begun = Instant::now();
                let mut next = begun;
                let mut attempts: Vec<Attempt> = Vec::new();
                while !stop2.load(Ordering::Relaxed) && begun.elapsed() < max_duration {
                    let now = Instant::now();
                    if now >= next {
                        match open(addr) {
                            Ok(fd) => attempts.push(Attempt {
                                fd,
                                started: now,
                                connected: false,
                                buf: Vec::new(),
                            }),
                            Err(_) => log.failed += 1,
                        }
                        next = (next + every).max(now);
                    }
                    let before = attempts.len();
                    attempts.retain(|a| now.duration_since(a.started) < timeout);
                    log.failed += (before - attempts.len()) as u64;
                    let wait = next.saturating_duration_since(Instant::now());
                    let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
                    let mut fds: Vec<PollFd> = attempts
                        .iter()
                        .map(|a| {
                            let flags = if a.connected {
                                PollFlags::POLLIN
                            } else {
                                PollFlags::POLLOUT
                            };
                            PollFd::new(a.fd.as_fd(), flags)
                        })
                        .collect();
                    if fds.is_empty() {
                        thread::sleep(wait);
                        continue;
                    }
                    match poll(&mut fds, ms) {
                        Ok(0) | Err(Errno::EINTR) => continue,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                    let ready: Vec<bool> = fds
                        .iter()
                        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                        .collect();
                    drop(fds);
                    let mut done = vec![false; attempts.len()];
                    for (i, a) in attempts.iter_mut().enumerate() {
                        if !ready[i] {
                            continue;
                        }
                        match step(a) {
                            Step::Pending => {}
                            Step::Failed => {
                                log.failed += 1;
                                done[i] = true;
                            }
                            Step::Greeted(line) => {
                                let g = Greeting {
                                    started: a.started,
                                    at: Instant::now(),
                                    node: greeting_node(&line),
                                };
                                let _ = tx.send(g.clone());
                                log.greetings.push(g);
                                done[i] = true;
                            }
                        }
                    }
                    let mut i = 0;
                    attempts.retain(|_| {
                        i += 1;
                        !done[i - 1]
                    });
                }
                log
            })
            .map_err(|e| LabError::State(format!("starting the greeting watch: {e}")))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(GreetingWatch {
                stop,
                thread: Some(thread),
                events,
            }),
            Ok(Err(e)) => Err(LabError::State(format!("greeting watch: {e}"))),
            Err(_) => Err(LabError::Timeout {
                what: "the greeting watch to enter the client namespace".into(),
                after: Duration::from_secs(10),
            }),
        }
    }

    /// The next greeting (bounded wait), in order of arrival.
    pub fn next(&self, within: Duration) -> Option<Greeting> {
        self.events.recv_timeout(within).ok()
    }

    /// Wait (bounded) for a greeting from `node`; when it arrived. Greetings from other nodes
    /// on the way are skipped.
    pub fn wait_for(&self, node: &str, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(g) if g.node.as_deref() == Some(node) => return Some(g.at),
                Some(_) => {}
                None => return None,
            }
        }
        None
    }

    /// Forget greetings received so far (so that [`Self::wait_for`] only sees newer ones).
    pub fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Stop and return everything seen.
    pub fn stop(mut self) -> WatchLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for GreetingWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A non-blocking connection to `addr`, under way.
fn open(addr: SocketAddr) -> nix::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e),
    }
}

enum Step {
    Pending,
    Failed,
    Greeted(String),
}

/// Advance one attempt whose socket is ready.
fn step(a: &mut Attempt) -> Step {
    if !a.connected {
        return match getsockopt(&a.fd, sockopt::SocketError) {
            Ok(0) => {
                a.connected = true;
                Step::Pending
            }
            _ => Step::Failed,
        };
    }
    let mut chunk = [0u8; 512];
    match nix::unistd::read(&a.fd, &mut chunk) {
        Ok(0) => Step::Failed,
        Ok(n) => {
            a.buf.extend_from_slice(&chunk[..n]);
            match a.buf.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    Step::Greeted(String::from_utf8_lossy(&a.buf[..end]).trim().to_owned())
                }
                None if a.buf.len() > 4096 => Step::Failed,
                None => Step::Pending,
            }
        }
        Err(Errno::EAGAIN | Errno::EINTR) => Step::Pending,
        Err(_) => Step::Failed,
    }
}
