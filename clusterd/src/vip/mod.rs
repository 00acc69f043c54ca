//! The address runtime of a node: converges the kernel to "the floating addresses I own and
//! hold a valid lease for", announces them, and self-fences when the lease runs out.
//!
//! Every kernel effect goes through [`NetOps`]: [`linux::LinuxNet`] (rtnetlink, AF_PACKET,
//! nftables) on real nodes and [`mem::MemNet`] in tests. The runtime decides; `NetOps` acts.
//! Safety order: when letting go, the guard closes before the address is removed; the guard's
//! elements always expire by the lease deadline, however late a write reaches the kernel, so a
//! frozen daemon's node stops answering by itself. Only this module touches netlink and raw
//! sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{AnnounceConfig, IpPrefix};
use crate::model::{Command, State};
use crate::node::Shared;

pub mod cleanup;
pub mod linux;
pub mod mem;
pub mod neigh;
pub mod packet;
pub mod sockets;

/// A kernel operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} {target}: {reason}")]
pub struct NetError {
    /// What was attempted.
    pub op: &'static str,
    /// On what (address, interface).
    pub target: String,
    /// Why it failed.
    pub reason: String,
}

impl NetError {
    /// A failure of `op` on `target`.
    pub fn new(op: &'static str, target: impl ToString, reason: impl ToString) -> Self {
        NetError {
            op,
            target: target.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The kernel effects the address runtime needs. One real implementation, one in memory.
pub trait NetOps: Send + Sync + 'static {
    /// The addresses configured on `iface`.
    fn list(&self, iface: &str) -> impl Future<Output = Result<Vec<IpPrefix>, NetError>> + Send;
    /// Add `addr` to `iface`, or refresh it, with this lifetime (valid and preferred), so the
    /// kernel removes it by itself if nobody refreshes it.
    fn add(
        &self,
        iface: &str,
        addr: IpPrefix,
        lifetime_secs: u32,
    ) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Remove `addr` from `iface` (no error if it is not there).
    fn remove(
        &self,
        iface: &str,
        addr: IpPrefix,
    ) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Tell the link that this node now answers for `ip`: gratuitous ARP request and reply, or
    /// an unsolicited neighbour advertisement for IPv6.
    fn announce(
        &self,
        iface: &str,
        ip: IpAddr,
    ) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Until `stop`: when a link's carrier comes back after a blip, make the kernel ask for
    /// its peers again at once ([`neigh`]). An error when that cannot run (the caller retries).
    /// Does nothing where there is no kernel (tests).
    fn watch_links(
        &self,
        mut stop: watch::Receiver<bool>,
    ) -> impl Future<Output = Result<(), NetError>> + Send {
        async move {
            let _ = stop.wait_for(|s| *s).await;
            Ok(())
        }
    }
    /// Install the guard: traffic and ARP for any of `floating` are dropped unless allowed,
    /// including announcements leaving any of `interfaces` (the floating addresses' links).
    fn guard_setup(
        &self,
        floating: &[IpAddr],
        interfaces: &[String],
    ) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Replace the guard's allowed set: `allowed` may pass until `until` at the latest, then
    /// the kernel closes it by itself. A deadline, not a duration: however late the write
    /// reaches the kernel (a freeze, CPU starvation), it never allows anything past `until`;
    /// a write that cannot promise that fails and leaves the earlier, shorter allowance.
    /// With `allowed` empty the guard closes for every address.
    fn guard_allow(
        &self,
        allowed: &[IpAddr],
        until: Instant,
    ) -> impl Future<Output = Result<(), NetError>> + Send;
    /// Remove the guard entirely (clean shutdown, after the addresses are gone).
    fn guard_teardown(&self) -> impl Future<Output = Result<(), NetError>> + Send;
}

/// One floating address as the runtime handles it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Floating {
    key: String,
    prefix: IpPrefix,
    interface: String,
}

/// What the runtime wants, computed purely from the replica, the lease and the clock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Addresses to hold, with their epoch: `ip/prefix` -> epoch.
    pub hold: BTreeMap<String, u64>,
    /// Addresses to let go of for a planned move (owned by us, handoff pending): -> epoch.
    pub release: BTreeMap<String, u64>,
}

/// Which addresses `me` should hold now.
pub fn desired(state: &State, me: &str, lease_valid: bool) -> Desired {
    let mut d = Desired::default();
    for (ip, a) in &state.addresses {
        if a.owner.as_deref() != Some(me) {
            continue;
        }
        if a.handoff.is_some() {
            d.release.insert(ip.clone(), a.epoch);
        } else if lease_valid {
            d.hold.insert(ip.clone(), a.epoch);
        }
    }
    d
}

/// The lease the runtime may act on: the newest grant whose log index this replica has
/// applied, else the previous one it acted on (shorter, already checked); none once the holder
/// has no lease at all.
pub fn effective_lease(
    previous: Option<crate::lease::table::HeldLease>,
    latest: Option<crate::lease::table::HeldLease>,
    last_applied: u64,
) -> Option<crate::lease::table::HeldLease> {
    match latest {
        Some(l) if last_applied >= l.min_applied => Some(l),
        Some(_) => previous,
        None => None,
    }
}

/// Whether an announcement for `ip` may go out at `now`: only while the address is allowed
/// by the lease. A daemon resumed after a freeze runs its overdue announcement timers before
/// its loop notices the lease ended; a gratuitous ARP then would point clients at a node that
/// no longer answers (ARP sent on a packet socket passes no nftables hook, so the guard cannot
/// stop it).
pub fn may_announce(allowed: &BTreeMap<IpAddr, Instant>, ip: IpAddr, now: Instant) -> bool {
    allowed.get(&ip).is_some_and(|until| *until > now)
}

/// Announcement schedule after an add: offsets from the add.
pub fn announce_schedule(cfg: &AnnounceConfig) -> Vec<Duration> {
    let mut at = Vec::new();
    for i in 0..cfg.burst {
        at.push(cfg.burst_interval.get() * i);
    }
    let last = at.last().copied().unwrap_or_default();
    for i in 1..=cfg.repeats {
        at.push(last + cfg.repeat_interval.get() * i);
    }
    at
}

/// Pause before the link watch is opened again after a failure.
const LINK_WATCH_RETRY: Duration = Duration::from_secs(1);

/// Keep [`NetOps::watch_links`] running until `stop`: after a failure it is logged (once per
/// run of failures) and opened again after [`LINK_WATCH_RETRY`].
pub async fn watch_links<N: NetOps>(net: Arc<N>, mut stop: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        match net.watch_links(stop.clone()).await {
            Ok(()) => return,
            Err(e) => {
                if !failing {
                    warn!(error = %e, "link watch failed; peers may stay unreachable for a \
                        second after a link blip until it runs again");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LINK_WATCH_RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Run the address runtime of a mail node until `stop`.
pub async fn run<N: NetOps>(s: Arc<Shared>, net: Arc<N>, mut stop: watch::Receiver<bool>) {
    let floating: Vec<Floating> = s
        .config
        .addresses
        .iter()
        .map(|a| Floating {
            key: a.ip.to_string(),
            prefix: a.ip,
            interface: a.interface.clone(),
        })
        .collect();
    let ips: Vec<IpAddr> = floating.iter().map(|f| f.prefix.addr).collect();
    let links: Vec<String> = floating.iter().map(|f| f.interface.clone()).collect();
    if let Err(e) = net.guard_setup(&ips, &links).await {
        warn!(error = %e, "cannot install the address guard; holding no address");
        let _ = stop.wait_for(|s| *s).await;
        return;
    }
    let timings = s.leases.timings;
    let lifetime = timings.address_lifetime_secs();
    let mut lease_rx = s.leases.holder.subscribe();
    let mut replica_rx = s.replica.clone();
    // Reports to the leader run in the background, so a slow commit never delays a removal.
    let served = Reports::default();
    let released = Reports::default();
    let mut announcing: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut last_deadline: Option<Instant> = None;
    let mut effective: Option<crate::lease::table::HeldLease> = None;
    let mut held_now: BTreeSet<String> = BTreeSet::new();
    // What the guard allows, until when: announcements check it right before sending.
    let (allowed_tx, allowed_rx) = watch::channel(BTreeMap::<IpAddr, Instant>::new());
    loop {
        s.loops.beat(crate::systemd::loops::ADDRESSES);
        // Whether this pass met no kernel error (readiness waits for one clean pass).
        let mut clean = true;
        let now = crate::clock::now();
        let lease = *lease_rx.borrow_and_update();
        let replica = replica_rx.borrow_and_update().clone();
        // A grant counts only once this replica has caught up with the leader's log as of the
        // grant: a node resumed after a freeze must not act on its stale view of ownership.
        // Until a newer grant is caught up, the previous one (shorter, already checked) holds.
        effective = effective_lease(effective, lease, replica.last_applied.unwrap_or(0));
        let deadline = effective.map(|l| l.deadline);
        let lease_valid = deadline.is_some_and(|d| d > now);
        let want = desired(&replica.state, &s.me, lease_valid);

        // 1. Guard first: it closes for everything not wanted, and is refreshed to the lease.
        let (allowed, until): (Vec<IpAddr>, Instant) = match deadline {
            Some(d) if d > now => (
                floating
                    .iter()
                    .filter(|f| want.hold.contains_key(&f.key))
                    .map(|f| f.prefix.addr)
                    .collect(),
                d,
            ),
            _ => (Vec::new(), now),
        };
        allowed_tx.send_replace(allowed.iter().map(|ip| (*ip, until)).collect());
        let renewed = deadline != last_deadline;
        let hold_set: BTreeSet<String> = want.hold.keys().cloned().collect();
        if renewed || hold_set != held_now {
            match net.guard_allow(&allowed, until).await {
                // Retried on the next pass until it lands.
                Ok(()) => last_deadline = deadline,
                Err(e) => {
                    warn!(error = %e, "guard update failed");
                    clean = false;
                }
            }
        }
        if !lease_valid && !held_now.is_empty() {
            warn!(
                addresses = ?held_now,
                "lease over: self-fencing, removing every floating address"
            );
        }

        // 2. Converge addresses on each interface.
        for f in &floating {
            let configured = match net.list(&f.interface).await {
                Ok(list) => list.contains(&f.prefix),
                Err(e) => {
                    debug!(error = %e, "cannot list addresses");
                    clean = false;
                    continue;
                }
            };
            if let Some(epoch) = want.hold.get(&f.key) {
                // This pass decided at `now`; if the daemon froze since, the lease it decided
                // on may have ended (and the address been taken): add nothing on that stale
                // decision. The next pass, deciding afresh, lets go.
                if deadline.is_none_or(|d| d <= crate::clock::now()) {
                    clean = false;
                    continue;
                }
                if (!configured || renewed)
                    && let Err(e) = net.add(&f.interface, f.prefix, lifetime).await
                {
                    warn!(address = %f.key, error = %e, "cannot add address");
                    clean = false;
                    continue;
                }
                if !configured {
                    if held_now.contains(&f.key) {
                        warn!(address = %f.key, "address was removed behind our back; put it back");
                    } else {
                        info!(address = %f.key, epoch, interface = %f.interface, "address added");
                        crate::hooks::address_acquired(&s, &f.key, &f.interface, *epoch);
                    }
                    let counter = s.clone();
                    let key = f.key.clone();
                    let task = tokio::spawn(announce_task(
                        net.clone(),
                        f.interface.clone(),
                        f.prefix.addr,
                        s.config.announce.clone(),
                        allowed_rx.clone(),
                        move |sent| counter.metrics.announced(&key, sent),
                    ));
                    if let Some(old) = announcing.insert(f.key.clone(), task) {
                        old.abort();
                    }
                }
                served.report(&s, &f.key, *epoch, |ip, node, epoch| Command::Serving {
                    ip,
                    node,
                    epoch,
                    at_ms: crate::clock::unix_ms(),
                });
            } else {
                // Not ours (any more): stop announcing it, even if its lifetime already removed
                // it while this daemon was frozen.
                if let Some(task) = announcing.remove(&f.key) {
                    task.abort();
                }
            }
            if configured && !want.hold.contains_key(&f.key) {
                if let Err(e) = net.remove(&f.interface, f.prefix).await {
                    warn!(address = %f.key, error = %e, "cannot remove address");
                    clean = false;
                    continue;
                }
                // (log wording, hook reason)
                let (why, token) = if want.release.contains_key(&f.key) {
                    ("handed over", "handed_over")
                } else if !lease_valid {
                    ("lease over", "lease_over")
                } else if held_now.contains(&f.key) {
                    ("no longer ours", "no_longer_owner")
                } else {
                    ("found configured but not held here", "stale")
                };
                info!(address = %f.key, reason = why, "address removed");
                crate::hooks::address_released(&s, &f.key, &f.interface, token);
            }
            if let Some(epoch) = want.release.get(&f.key) {
                released.report(&s, &f.key, *epoch, |ip, node, epoch| Command::Released {
                    ip,
                    node,
                    epoch,
                    at_ms: crate::clock::unix_ms(),
                });
            }
        }
        held_now = hold_set;
        if clean && lease_valid {
            s.loops.mark_converged();
        }

        // 3. Sleep until something changes, the lease runs out, or the next check.
        let wake = match deadline {
            Some(d) if d > now => d.min(now + Duration::from_millis(200)),
            _ => now + Duration::from_millis(200),
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = lease_rx.changed() => {}
            _ = replica_rx.changed() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // Clean shutdown: close the guard, remove our addresses, remove the guard.
    for task in announcing.into_values() {
        task.abort();
    }
    let _ = net.guard_allow(&[], crate::clock::now()).await;
    for f in &floating {
        if let Ok(list) = net.list(&f.interface).await
            && list.contains(&f.prefix)
        {
            match net.remove(&f.interface, f.prefix).await {
                Ok(()) => {
                    info!(address = %f.key, "address removed at shutdown");
                    crate::hooks::address_released(&s, &f.key, &f.interface, "shutdown");
                }
                Err(e) => warn!(address = %f.key, error = %e, "cannot remove address"),
            }
        }
    }
    if let Err(e) = net.guard_teardown().await {
        warn!(error = %e, "cannot remove the guard tables");
    }
}

/// Per-address reports (serving, released) to the leader: one in flight at a time, retried
/// on the next pass until the leader took it.
#[derive(Clone, Default)]
struct Reports {
    /// address -> (epoch, done)
    sent: Arc<std::sync::Mutex<BTreeMap<String, (u64, bool)>>>,
}

impl Reports {
    fn report(
        &self,
        s: &Arc<Shared>,
        key: &str,
        epoch: u64,
        make: impl FnOnce(String, String, u64) -> Command,
    ) {
        {
            let mut sent = crate::lock(&self.sent);
            if sent.get(key).is_some_and(|(e, _)| *e == epoch) {
                return; // done, or in flight
            }
            sent.insert(key.to_string(), (epoch, false));
        }
        let cmd = make(key.to_string(), s.me.clone(), epoch);
        let (s, sent, key) = (s.clone(), self.sent.clone(), key.to_string());
        tokio::spawn(async move {
            let ok = crate::raft::propose::propose(&s, cmd).await.is_ok();
            let mut sent = crate::lock(&sent);
            if ok {
                sent.insert(key, (epoch, true));
            } else if sent.get(&key) == Some(&(epoch, false)) {
                sent.remove(&key);
            }
        });
    }
}

async fn announce_task<N: NetOps>(
    net: Arc<N>,
    iface: String,
    ip: IpAddr,
    cfg: AnnounceConfig,
    allowed: watch::Receiver<BTreeMap<IpAddr, Instant>>,
    counted: impl Fn(bool) + Send + Sync + 'static,
) {
    let announce = |what: &'static str| {
        let (net, iface, allowed, counted) = (&net, &iface, &allowed, &counted);
        async move {
            if !may_announce(&allowed.borrow(), ip, crate::clock::now()) {
                debug!(address = %ip, "{what} skipped: the lease for it is over");
                return;
            }
            let sent = net.announce(iface, ip).await;
            counted(sent.is_ok());
            if let Err(e) = sent {
                warn!(address = %ip, error = %e, "{what} failed");
            }
        }
    };
    let start = tokio::time::Instant::now();
    for at in announce_schedule(&cfg) {
        tokio::time::sleep_until(start + at).await;
        announce("announcement").await;
    }
    let refresh = cfg.refresh.get();
    if refresh.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(refresh).await;
        announce("periodic announcement").await;
    }
}

/// Parse the model's `ip/prefix` key.
pub fn parse_key(key: &str) -> Option<IpPrefix> {
    IpPrefix::from_str(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AddressSpec, MoveReason};

    fn state() -> State {
        let mut s = crate::model::test_state(&["mx1", "mx2"], &[]);
        s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![AddressSpec {
                ip: "192.0.2.101/24".into(),
                interface: "eth0".into(),
                home: "mx1".into(),
                services: vec![],
            }],
            at_ms: 0,
        });
        s.apply(&Command::Assign {
            ip: "192.0.2.101/24".into(),
            to: "mx1".into(),
            epoch: 0,
            reason: MoveReason::Initial,
            at_ms: 0,
            term: None,
        });
        s
    }

    #[test]
    fn owner_with_a_lease_holds() {
        let d = desired(&state(), "mx1", true);
        assert_eq!(d.hold.get("192.0.2.101/24"), Some(&1));
        assert!(d.release.is_empty());
    }

    #[test]
    fn owner_without_a_lease_holds_nothing() {
        assert_eq!(desired(&state(), "mx1", false), Desired::default());
    }

    #[test]
    fn other_nodes_hold_nothing() {
        assert_eq!(desired(&state(), "mx2", true), Desired::default());
    }

    #[test]
    fn owner_with_a_pending_handoff_releases_even_without_a_lease() {
        let mut s = state();
        s.apply(&Command::RequestMove {
            ip: "192.0.2.101/24".into(),
            to: "mx2".into(),
            by: "mx1".into(),
            at_ms: 1,
        });
        for lease in [true, false] {
            let d = desired(&s, "mx1", lease);
            assert!(d.hold.is_empty());
            assert_eq!(d.release.get("192.0.2.101/24"), Some(&1));
        }
    }

    fn lease(deadline_ms: u64, min_applied: u64) -> crate::lease::table::HeldLease {
        crate::lease::table::HeldLease {
            deadline: crate::clock::now() + Duration::from_millis(deadline_ms),
            min_applied,
        }
    }

    #[test]
    fn a_grant_is_not_acted_on_before_the_replica_caught_up_with_it() {
        // A node resumed after a freeze: its old lease is gone, a fresh grant arrived, but its
        // replica still shows the ownership it had before the freeze.
        let fresh = lease(800, 40);
        assert_eq!(effective_lease(None, Some(fresh), 25), None);
        assert_eq!(effective_lease(None, Some(fresh), 40), Some(fresh));
    }

    #[test]
    fn a_caught_up_lease_keeps_holding_while_the_next_grant_catches_up() {
        // The leader renews its own lease while one of its writes is not applied yet: keep the
        // previous, already checked lease rather than dropping the addresses for a moment.
        let old = lease(500, 10);
        let newer = lease(800, 12);
        assert_eq!(effective_lease(Some(old), Some(newer), 11), Some(old));
        assert_eq!(effective_lease(Some(old), Some(newer), 12), Some(newer));
    }

    #[test]
    fn no_lease_means_nothing_to_act_on() {
        assert_eq!(effective_lease(Some(lease(500, 1)), None, 99), None);
    }

    #[test]
    fn announcing_needs_the_address_allowed_now() {
        let ip: IpAddr = "192.0.2.101".parse().unwrap();
        let now = crate::clock::now();
        let until = BTreeMap::from([(ip, now + Duration::from_millis(300))]);
        assert!(may_announce(&until, ip, now));
        // A daemon resumed after a freeze: the allowance it last published has run out.
        assert!(!may_announce(&until, ip, now + Duration::from_millis(300)));
        assert!(!may_announce(&BTreeMap::new(), ip, now));
        assert!(!may_announce(&until, "192.0.2.102".parse().unwrap(), now));
    }

    #[tokio::test]
    async fn overdue_announcements_of_an_address_no_longer_allowed_are_not_sent() {
        let world = mem::World::new();
        let net = Arc::new(world.node("mx1"));
        let ip: IpAddr = "192.0.2.101".parse().unwrap();
        let forever = crate::clock::now() + Duration::from_secs(3600);
        let (tx, rx) = watch::channel(BTreeMap::from([(ip, forever)]));
        let cfg = AnnounceConfig {
            burst: 3,
            burst_interval: crate::config::Millis::from_millis(10),
            repeats: 3,
            repeat_interval: crate::config::Millis::from_millis(2000),
            refresh: crate::config::Millis::from_millis(0),
        };
        let start = crate::clock::now();
        let task = tokio::spawn(announce_task(net, "eth0".into(), ip, cfg, rx, |_| {}));
        // The burst goes out while the address is allowed.
        while world.announcements("mx1", ip) < 3 {
            assert!(
                crate::clock::since(start) < Duration::from_secs(1),
                "no burst"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then the lease is over: the repeat due at 2 s is skipped.
        tx.send_replace(BTreeMap::new());
        tokio::time::sleep_until((start + Duration::from_millis(2500)).into()).await;
        assert_eq!(world.announcements("mx1", ip), 3);
        task.abort();
    }

    #[test]
    fn announcements_burst_then_repeat() {
        let cfg = AnnounceConfig::default();
        let ms: Vec<u128> = announce_schedule(&cfg)
            .iter()
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, vec![0, 100, 200, 1200, 2200, 3200]);
    }
}
