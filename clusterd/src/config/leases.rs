//! `[leases]`, `[placement]` and `[announce]`: how long an address lease lasts, the guard,
//! failback, announcements, and their checks.

use super::*;

/// `[leases]`: the address leases behind the no-duplicate-address guarantee. Must be identical
/// on every node. `check-config` refuses settings that could let two nodes serve one address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// Length of a lease granted by the leader. A node that cannot renew drops its addresses
    /// within this; a dead node's addresses move after about this long. Default "800ms".
    pub lease: Millis,
    /// How often a node renews. At most a third of the lease. Default "200ms".
    pub renew_every: Millis,
    /// Largest clock-rate difference between two nodes, in parts per million. Default 10000 (1%).
    pub drift_ppm: u32,
    /// Slack for scheduling and netlink latency. Default "50ms".
    pub margin: Millis,
    /// The leader grants leases only while a quorum acknowledged it within this. At least two
    /// Raft heartbeats, at most half the lease. Default "150ms".
    pub quorum_fresh: Millis,
    /// What cuts off a node whose daemon froze: "nftables" (traffic and ARP for the address are
    /// dropped when the lease runs out; default) or "lifetime-only" (only the address lifetime,
    /// whole seconds: takeovers then wait several seconds longer).
    pub guard: GuardKind,
    /// Wait after a node's last lease before its addresses move. Default: the shortest safe
    /// value, computed from the settings above; a shorter one is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub takeover_delay: Option<Millis>,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        let t = clusterd_lease::LeaseTimings::default();
        LeasesConfig {
            lease: t.lease.into(),
            renew_every: t.renew_every.into(),
            drift_ppm: t.drift_ppm,
            margin: t.margin.into(),
            quorum_fresh: t.quorum_fresh.into(),
            guard: GuardKind::Nftables,
            takeover_delay: None,
        }
    }
}

impl LeasesConfig {
    /// The lease arithmetic for these settings.
    pub fn timings(&self) -> clusterd_lease::LeaseTimings {
        clusterd_lease::LeaseTimings {
            lease: self.lease.get(),
            renew_every: self.renew_every.get(),
            drift_ppm: self.drift_ppm,
            margin: self.margin.get(),
            quorum_fresh: self.quorum_fresh.get(),
            guard: match self.guard {
                GuardKind::Nftables => clusterd_lease::Guard::Nftables,
                GuardKind::LifetimeOnly => clusterd_lease::Guard::LifetimeOnly,
            },
            takeover_delay: self.takeover_delay.map(Millis::get),
        }
    }
}

/// `leases.guard`: the kernel mechanism that enforces a lease when the daemon cannot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardKind {
    /// nftables set elements that time out with the lease (millisecond precision).
    #[default]
    Nftables,
    /// Only the address lifetime (whole seconds).
    LifetimeOnly,
}

/// `[placement]`: where addresses go. Must be identical on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// "auto": an address returns to its home node once that node has been healthy for
    /// `failback_after`; "manual": it stays until an operator moves it. Default "auto".
    pub failback: FailbackMode,
    /// How long the home node must be healthy before an address returns to it. Default "60s".
    pub failback_after: Millis,
    /// Hold-down against flapping: a node where a service failed is not chosen again for an
    /// address needing that service until the service has passed there this long. Default "30s".
    pub hold_down: Millis,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            failback: FailbackMode::Auto,
            failback_after: Millis::from_millis(60_000),
            hold_down: Millis::from_millis(30_000),
        }
    }
}

/// `[announce]`: how a new owner tells the network (switches, routers, clients' neighbour
/// caches) that an address moved: gratuitous ARP in both request and reply form (switches
/// differ in which they accept), or IPv6 unsolicited neighbour advertisements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnnounceConfig {
    /// Announcements sent at once after the address is added, `burst_interval` apart.
    /// Default 3.
    pub burst: u32,
    /// Gap between the announcements of the burst. Default "100ms".
    pub burst_interval: Millis,
    /// Further announcements over the next seconds, `repeat_interval` apart, for hosts that
    /// missed the burst. Default 3.
    pub repeats: u32,
    /// Gap between repeats. Default "1s".
    pub repeat_interval: Millis,
    /// A slow periodic announcement while the address is held, so switch forwarding tables
    /// that age out entries keep pointing at the owner. "0s" turns it off. Default "60s".
    pub refresh: Millis,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            burst: 3,
            burst_interval: Millis::from_millis(100),
            repeats: 3,
            repeat_interval: Millis::from_millis(1000),
            refresh: Millis::from_millis(60_000),
        }
    }
}

/// `placement.failback`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailbackMode {
    /// Return home after the stable period.
    #[default]
    Auto,
    /// Stay until moved by an operator.
    Manual,
}

impl Config {
    pub(super) fn check_announce(&self, v: &mut Problems) {
        let a = &self.announce;
        if a.burst == 0 || a.burst > 20 {
            v.push(
                "announce.burst",
                format!(
                    "burst = {} announcements; use 1 to 20 (default 3): with none, clients and \
                     switches keep sending to the old owner until their caches expire",
                    a.burst
                ),
            );
        }
        if a.repeats > 100 {
            v.push(
                "announce.repeats",
                format!("repeats = {}; use at most 100 (default 3)", a.repeats),
            );
        }
        for (field, d) in [
            ("announce.burst_interval", a.burst_interval),
            ("announce.repeat_interval", a.repeat_interval),
        ] {
            if d.get() < std::time::Duration::from_millis(10) {
                v.push(
                    field,
                    format!("{d} is too short to be useful; use at least \"10ms\""),
                );
            }
        }
    }

    pub(super) fn check_leases(&self, v: &mut Problems) {
        for p in self.leases.timings().problems() {
            v.push(format!("leases.{}", p.field), p.message);
        }
        let heartbeat = self.raft.heartbeat_interval.get();
        if self.leases.quorum_fresh.get() < heartbeat * 2 {
            v.push(
                "leases.quorum_fresh",
                format!(
                    "quorum_fresh ({}) is under two Raft heartbeats ({} each): the leader would                      often have no fresh quorum and refuse to renew leases; set it to at least {}",
                    self.leases.quorum_fresh,
                    self.raft.heartbeat_interval,
                    Millis::from(heartbeat * 2)
                ),
            );
        }
        if self.placement.failback_after.get() < self.leases.lease.get() {
            v.push(
                "placement.failback_after",
                format!(
                    "failback_after ({}) is shorter than a lease ({}): addresses would bounce                      back to a node before it proved stable; use at least a few seconds, e.g.                      \"60s\"",
                    self.placement.failback_after, self.leases.lease
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{BASE, assert_refused, assert_valid, base};
    use super::*;

    #[test]
    fn takeover_delay_shorter_than_the_lease_is_refused() {
        let mut c = base();
        c.leases.takeover_delay = Some(Millis::from_millis(500));
        assert_refused(&c, "leases.takeover_delay", "at least 858 ms");
    }

    #[test]
    fn takeover_delay_without_nftables_must_cover_the_address_lifetime() {
        let mut c = base();
        c.leases.guard = GuardKind::LifetimeOnly;
        c.leases.takeover_delay = Some(Millis::from_millis(2000));
        assert_refused(&c, "leases.takeover_delay", "address lifetime");
        c.leases.takeover_delay = None;
        assert_valid(&c);
        assert_eq!(c.leases.timings().takeover_delay().as_millis(), 4858);
    }

    #[test]
    fn lease_renewal_slower_than_a_third_of_the_lease_is_refused() {
        let mut c = base();
        c.leases.renew_every = Millis::from_millis(400);
        assert_refused(&c, "leases.renew_every", "fewer than three tries");
    }

    #[test]
    fn quorum_freshness_under_two_heartbeats_is_refused() {
        let mut c = base();
        c.raft.heartbeat_interval = Millis::from_millis(100);
        c.leases.quorum_fresh = Millis::from_millis(150);
        assert_refused(&c, "leases.quorum_fresh", "two Raft heartbeats");
    }

    #[test]
    fn failback_sooner_than_a_lease_is_refused() {
        let mut c = base();
        c.placement.failback_after = Millis::from_millis(100);
        assert_refused(&c, "placement.failback_after", "shorter than a lease");
    }

    #[test]
    fn lease_and_placement_sections_parse_with_their_names() {
        let text = format!(
            "{BASE}\n[leases]\nlease = \"1s\"\nrenew_every = \"250ms\"\n\
             guard = \"lifetime-only\"\ntakeover_delay = \"10s\"\n\n\
             [placement]\nfailback = \"manual\"\nfailback_after = \"2m\"\n"
        );
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.leases.guard, GuardKind::LifetimeOnly);
        assert_eq!(c.leases.lease, Millis::from_millis(1000));
        assert_eq!(c.leases.takeover_delay, Some(Millis::from_millis(10_000)));
        assert_eq!(c.placement.failback, FailbackMode::Manual);
        assert_eq!(c.placement.failback_after, Millis::from_millis(120_000));
        assert_eq!(base().leases, LeasesConfig::default());
    }

    #[test]
    fn announcement_burst_of_zero_is_refused() {
        let mut c = base();
        c.announce.burst = 0;
        assert_refused(&c, "announce.burst", "use 1 to 20");
    }

    #[test]
    fn announcement_interval_under_10ms_is_refused() {
        let mut c = base();
        c.announce.repeat_interval = Millis::from_millis(1);
        assert_refused(&c, "announce.repeat_interval", "at least");
    }
}
