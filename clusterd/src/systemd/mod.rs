//! Service manager integration: readiness, watchdog and status over systemd's notify protocol
//! (`sd_notify`), implemented here on a Unix datagram socket (no C library, no unsafe).
//!
//! - `READY=1` only once this node is a member of the cluster, knows a leader, has applied
//!   what the leader had applied, and (on a node that holds addresses) its address runtime
//!   completed one pass with a valid lease. A unit that is "active" is therefore doing its job.
//! - `WATCHDOG=1` only while the daemon's own loops are alive: every watched loop beat
//!   recently ([`Loops::beat`]), the Raft core answers, and the API answers a signed request.
//!   A wedged daemon stops pinging and systemd restarts it; a blind timer would hide that.
//! - `STATUS=` says what the node is waiting for, or whom it follows and what it holds.
//! - `STOPPING=1` when shutdown begins.
//!
//! Without `$NOTIFY_SOCKET` nothing is sent, but the node still logs one "ready" line.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

pub mod loops;

use loops::WATCHDOG_LOOP_FLOOR;

use crate::client::admin_paths;
use crate::node::Shared;
use crate::status::StatusReport;

/// How often readiness is checked until the node is ready.
const READY_POLL: Duration = Duration::from_millis(250);

/// The service manager's notify socket (`$NOTIFY_SOCKET`): a path, or `@name` for an
/// abstract socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: NotifyTarget,
}

#[derive(Debug)]
enum NotifyTarget {
    Path(std::path::PathBuf),
    Abstract(std::os::unix::net::SocketAddr),
}

impl Notifier {
    /// The notifier named by `$NOTIFY_SOCKET`, if the service manager set one.
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::new(&name.to_string_lossy()) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(socket = ?name, error = %e, "cannot use NOTIFY_SOCKET; not notifying");
                None
            }
        }
    }

    /// A notifier for socket `name` (`/path` or `@abstract`).
    pub fn new(name: &str) -> std::io::Result<Notifier> {
        use std::os::linux::net::SocketAddrExt;
        let target = match name.strip_prefix('@') {
            Some(abstract_name) => NotifyTarget::Abstract(
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
            ),
            None => NotifyTarget::Path(name.into()),
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
        })
    }

    /// Send one notification (newline-separated `KEY=value` assignments).
    pub fn notify(&self, message: &str) -> std::io::Result<()> {
        let sent = match &self.target {
            NotifyTarget::Path(p) => self.socket.send_to(message.as_bytes(), p),
            NotifyTarget::Abstract(a) => self.socket.send_to_addr(message.as_bytes(), a),
        }?;
        if sent == message.len() {
            Ok(())
        } else {
            Err(std::io::Error::other("notification truncated"))
        }
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this process if
/// `$WATCHDOG_PID` names one).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Readiness, watchdog and status until `stop`; then `STOPPING=1`. `holds_addresses`: this
/// node runs the address runtime, whose first convergence readiness waits for.
pub async fn run(
    s: Arc<Shared>,
    api_addr: String,
    holds_addresses: bool,
    mut stop: watch::Receiver<bool>,
) {
    let notifier = Notifier::from_env();
    let send = |message: &str| {
        if let Some(n) = &notifier
            && let Err(e) = n.notify(message)
        {
            warn!(error = %e, "cannot notify the service manager");
        }
    };
    let watchdog = watchdog_interval();
    let mut ready = false;
    let mut last_status = String::new();
    let mut next_ping = crate::clock::now();
    // Why the watchdog is not pinged; shown as the status instead of the summary meanwhile.
    let mut unhealthy: Option<String> = None;
    let mut last_warning: Option<Instant> = None;
    // One line: a newline would start another assignment in the notification.
    let one_line = |t: String| t.replace('\n', " ");
    loop {
        let status = if ready {
            Ok(summary(&s))
        } else {
            readiness(&s, holds_addresses).await
        };
        match status.map(one_line).map_err(one_line) {
            Ok(text) if !ready => {
                ready = true;
                info!(node = %s.me, "ready: {text}");
                send(&format!("READY=1\nSTATUS={text}"));
                last_status = text;
            }
            Ok(text) | Err(text) if text != last_status && unhealthy.is_none() => {
                send(&format!("STATUS={text}"));
                last_status = text;
            }
            _ => {}
        }
        if let Some(interval) = watchdog
            && crate::clock::now() >= next_ping
        {
            // A loop may be silent for half the interval (at least WATCHDOG_LOOP_FLOOR, so that
            // a loop waiting on one slow proposal is not taken for wedged under a very short
            // interval); checks get a quarter each.
            let limit = (interval / 2).max(WATCHDOG_LOOP_FLOOR);
            match alive(&s, &api_addr, limit, interval / 4).await {
                Ok(()) => {
                    send("WATCHDOG=1");
                    next_ping = crate::clock::now() + interval / 4;
                    if unhealthy.take().is_some() {
                        info!(node = %s.me, "watchdog checks pass again");
                        last_status.clear();
                    }
                }
                Err(why) => {
                    let why = one_line(why);
                    // One warning per 10 s at most: the reason's numbers change every check.
                    if last_warning
                        .is_none_or(|t| crate::clock::since(t) >= Duration::from_secs(10))
                    {
                        warn!(node = %s.me, "watchdog not pinged: {why}");
                        last_warning = Some(crate::clock::now());
                    }
                    if unhealthy.is_none() {
                        send(&format!("STATUS=unhealthy: {why}"));
                    }
                    unhealthy = Some(why);
                }
            }
        }
        let tick = if ready {
            watchdog.map_or(Duration::from_secs(1), |w| {
                (w / 4).min(Duration::from_secs(1))
            })
        } else {
            READY_POLL
        };
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    send("STOPPING=1\nSTATUS=stopping: releasing addresses");
}

/// `Ok(status)` once the node is ready, else `Err(what it waits for)`.
async fn readiness(s: &Shared, holds_addresses: bool) -> Result<String, String> {
    let metrics = s.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    if membership.get_node(&s.id).is_none() {
        return Err("joining the cluster".into());
    }
    let Some(leader) = metrics.current_leader else {
        return Err("waiting for a leader (is a majority of voters running?)".into());
    };
    let applied = s.replica.borrow().last_applied;
    if leader != s.id {
        let Some(node) = membership.get_node(&leader) else {
            return Err("waiting for a leader".into());
        };
        let client = s
            .client_to(node.name.clone(), node.addr.clone())
            .with_timeout(Duration::from_secs(2));
        let report: StatusReport = client
            .get(admin_paths::STATUS)
            .await
            .map_err(|e| format!("cannot ask the leader how far it is: {e}"))?;
        if applied < report.commit_index {
            return Err(format!(
                "catching up with the leader (applied {}, leader {})",
                applied.unwrap_or(0),
                report.commit_index.unwrap_or(0)
            ));
        }
    }
    if holds_addresses && !s.loops.converged() {
        return Err("waiting for an address lease and converging addresses".into());
    }
    Ok(summary(s))
}

/// What `systemctl status` shows once ready: leader, term and the addresses held here.
fn summary(s: &Shared) -> String {
    let metrics = s.raft.metrics().borrow().clone();
    let leader = metrics
        .current_leader
        .and_then(|id| metrics.membership_config.membership().get_node(&id))
        .map_or_else(|| "none".to_string(), |n| n.name.clone());
    let replica = s.replica.borrow().clone();
    let held: Vec<&str> = replica
        .state
        .addresses
        .iter()
        .filter(|(_, a)| a.owner.as_deref() == Some(s.me.as_str()))
        .map(|(ip, _)| ip.as_str())
        .collect();
    let held = if held.is_empty() {
        "no address".to_string()
    } else {
        held.join(", ")
    };
    format!(
        "leader {leader}, term {}; owns {held}",
        metrics.current_term
    )
}

/// `Ok` when every watched loop beat within `limit`, the Raft core answers and the API answers
/// a signed request, each within `check_timeout`.
async fn alive(
    s: &Shared,
    api_addr: &str,
    limit: Duration,
    check_timeout: Duration,
) -> Result<(), String> {
    let stuck = s.loops.stuck(limit);
    if !stuck.is_empty() {
        let list: Vec<String> = stuck
            .iter()
            .map(|(name, silent)| format!("{name} loop silent for {} ms", silent.as_millis()))
            .collect();
        return Err(list.join(", "));
    }
    match tokio::time::timeout(check_timeout, s.raft.is_initialized()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("raft core stopped: {e}")),
        Err(_) => {
            return Err(format!(
                "raft core did not answer within {} ms",
                check_timeout.as_millis()
            ));
        }
    }
    let client = s
        .client_to(s.me.clone(), api_addr)
        .with_timeout(check_timeout);
    client
        .get::<StatusReport>(&format!("{}?limit=0", admin_paths::STATUS))
        .await
        .map(|_| ())
        .map_err(|e| format!("API on {api_addr} did not answer: {e}"))
}

/// The address to reach a listener on `local` from this host (a wildcard listen address is
/// reached on loopback).
pub fn reachable(local: std::net::SocketAddr) -> String {
    let ip = match local.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    std::net::SocketAddr::new(ip, local.port()).to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::loops::{ADDRESSES, DNS, DUTIES, HEALTH, PLACEMENT};

    use super::loops::{Loops, stuck_loops};
    use super::*;

    #[test]
    fn watched_loops_that_never_beat_or_stop_beating_are_stuck_others_not() {
        let loops = Loops::default();
        loops.watch(PLACEMENT);
        loops.watch(DNS);
        loops.watch(DNS);
        loops.beat(HEALTH); // beats but is not watched: ignored
        std::thread::sleep(Duration::from_millis(30));
        let names = |stuck: Vec<(&'static str, Duration)>| -> Vec<&'static str> {
            stuck.into_iter().map(|(n, _)| n).collect()
        };
        assert_eq!(
            names(loops.stuck(Duration::from_millis(10))),
            vec![PLACEMENT, DNS]
        );
        loops.beat(DNS);
        assert_eq!(
            names(loops.stuck(Duration::from_millis(10))),
            vec![PLACEMENT]
        );
        assert!(loops.stuck(Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn loops_silent_longer_than_the_limit_are_stuck() {
        let t0 = crate::clock::now();
        let limit = Duration::from_secs(5);
        let mut beats = BTreeMap::new();
        beats.insert(DUTIES, t0 + Duration::from_secs(9));
        beats.insert(ADDRESSES, t0 + Duration::from_secs(2));
        let stuck = stuck_loops(
            &beats,
            &[DUTIES, ADDRESSES],
            t0,
            t0 + Duration::from_secs(10),
            limit,
        );
        assert_eq!(stuck, vec![(ADDRESSES, Duration::from_secs(8))]);
    }

    #[test]
    fn a_loop_that_never_beat_gets_the_limit_from_start_then_counts_as_stuck() {
        let t0 = crate::clock::now();
        let limit = Duration::from_secs(5);
        let beats = BTreeMap::new();
        assert!(
            stuck_loops(&beats, &[ADDRESSES], t0, t0 + Duration::from_secs(4), limit).is_empty()
        );
        assert_eq!(
            stuck_loops(&beats, &[ADDRESSES], t0, t0 + Duration::from_secs(6), limit),
            vec![(ADDRESSES, Duration::from_secs(6))]
        );
    }

    #[test]
    fn loops_not_expected_are_ignored() {
        let t0 = crate::clock::now();
        let mut beats = BTreeMap::new();
        beats.insert(ADDRESSES, t0);
        let later = t0 + Duration::from_secs(60);
        assert!(stuck_loops(&beats, &[], t0, later, Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn notifications_reach_a_path_socket_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.to_str().unwrap())
            .unwrap()
            .notify("READY=1\nSTATUS=ok")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("clusterd-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .notify("WATCHDOG=1")
            .unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        assert_eq!(reachable("0.0.0.0:7400".parse().unwrap()), "127.0.0.1:7400");
        assert_eq!(reachable("[::]:7400".parse().unwrap()), "[::1]:7400");
        assert_eq!(
            reachable("192.0.2.11:7400".parse().unwrap()),
            "192.0.2.11:7400"
        );
    }
}
