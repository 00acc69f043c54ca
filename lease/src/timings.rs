//! Lease arithmetic: when a node may hold a floating address, when it must let go, and when the
//! leader may give a silent node's address to someone else.
//!
//! This is the arithmetic behind clusterd's safety invariant (no two live nodes ever serve one
//! address). It is pure: callers pass instants, nothing here reads a clock. The reasoning:
//!
//! - A holder measures its lease from when it *sent* the renewal, on its monotonic clock, and
//!   acts on it for `lease * (1 - drift) - margin` at most ([`LeaseTimings::holder_deadline`]).
//!   Its kernel guard (nftables set element) is given the time left until that deadline, less
//!   [`GUARD_WRITE_WINDOW`], so the kernel closes even if the daemon freezes. A guard write is
//!   only accepted by the kernel within that window of the moment its timeout was computed
//!   ([`guard_kernel_timeout`]), so a write delayed by a freeze or CPU starvation can never
//!   keep the guard open past the deadline.
//! - The leader grants only while a quorum acknowledged it within `quorum_fresh`
//!   ([`LeaseTimings::may_grant`]), so a cut-off leader stops granting.
//! - The leader treats a holder's lease as over `lease * (1 + drift) + margin` after its last
//!   grant to it, plus the address lifetime when no nftables guard runs
//!   ([`LeaseTimings::takeover_delay`]). Since the holder's deadline is measured from a send
//!   that happened before the grant, the holder has let go (or been cut off by its kernel) by
//!   then, even with clocks running at different rates within `drift`.
//! - A newly elected leader does not know what its predecessor granted. Its predecessor granted
//!   only while a quorum acknowledged it within `quorum_fresh`, and one of that quorum voted for
//!   the new leader, so every old grant was made before `elected + quorum_fresh` and the new
//!   leader waits `quorum_fresh + takeover_delay` before reassigning anything
//!   ([`LeaseTimings::new_leader_quiet_until`]), or less when its voters tell it when they last
//!   heard an earlier leader ([`crate::handover`], [`LeaseTimings::quiet_after_contact`]).

use std::fmt;
use std::time::{Duration, Instant};

/// How late the kernel removes an address whose `valid_lft` ran out (its address-expiry work
/// runs about once a second).
pub const KERNEL_LIFETIME_LATENESS: Duration = Duration::from_secs(2);

/// How long after computing a guard timeout its write may still reach the kernel. The daemon
/// first places a token in the guard that expires after this window, reads the clock, and then
/// sends the timeout in one transaction with the token's removal: a transaction arriving later
/// finds no token and is refused as a whole. The timeout given is the time left less this
/// window, so whenever the kernel accepts it the guard closes by the holder's deadline.
pub const GUARD_WRITE_WINDOW: Duration = Duration::from_millis(100);

/// The timeout to write into the kernel guard at `now` for an allowance that must end by
/// `until`: the time left less [`GUARD_WRITE_WINDOW`]. `None` when nothing is left, and the
/// guard must close.
pub fn guard_kernel_timeout(until: Instant, now: Instant) -> Option<Duration> {
    let left = until
        .checked_duration_since(now)?
        .checked_sub(GUARD_WRITE_WINDOW)?;
    (!left.is_zero()).then_some(left)
}

/// What enforces a lease in the kernel when the daemon cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Guard {
    /// nftables drops traffic and ARP for an address once its set element times out
    /// (millisecond precision). The default.
    #[default]
    Nftables,
    /// Only the address lifetime (`valid_lft`, whole seconds, removed up to 2 s late) stops a
    /// frozen node: takeovers must wait that long too.
    LifetimeOnly,
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guard::Nftables => "nftables",
            Guard::LifetimeOnly => "lifetime-only",
        })
    }
}

/// The lease settings of a cluster. Identical on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// Length of a granted lease.
    pub lease: Duration,
    /// How often a holder asks for renewal.
    pub renew_every: Duration,
    /// Largest clock-rate difference between two nodes, in parts per million.
    pub drift_ppm: u32,
    /// Slack for scheduling and netlink latency.
    pub margin: Duration,
    /// The leader grants only if a quorum acknowledged it within this.
    pub quorum_fresh: Duration,
    /// The kernel guard in use.
    pub guard: Guard,
    /// Explicit takeover delay; `None` uses the minimum that keeps the invariant.
    pub takeover_delay: Option<Duration>,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            lease: Duration::from_millis(800),
            renew_every: Duration::from_millis(200),
            drift_ppm: 10_000,
            margin: Duration::from_millis(50),
            quorum_fresh: Duration::from_millis(150),
            guard: Guard::Nftables,
            takeover_delay: None,
        }
    }
}

/// One reason the timings are unsafe or unworkable: which setting, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimingProblem {
    /// The setting at fault (as named in the `[leases]` config section).
    pub field: &'static str,
    /// What is wrong and the fix.
    pub message: String,
}

/// `d * ppm_num / 1_000_000`, saturating.
pub(crate) fn scale(d: Duration, ppm_num: u64) -> Duration {
    // d * ppm_num / 1_000_000 in nanoseconds, without overflow for any sane lease.
    let nanos = d.as_nanos() * u128::from(ppm_num) / 1_000_000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl LeaseTimings {
    /// How long a holder may act on a lease, counted from when it sent the renewal request.
    pub fn holder_validity(&self) -> Duration {
        scale(
            self.lease,
            1_000_000u64.saturating_sub(u64::from(self.drift_ppm)),
        )
        .saturating_sub(self.margin)
    }

    /// The instant by which a holder must have removed its addresses and closed its guard,
    /// for a renewal it sent at `sent_at` and that was granted.
    pub fn holder_deadline(&self, sent_at: Instant) -> Instant {
        sent_at + self.holder_validity()
    }

    /// The `valid_lft`/`preferred_lft` (whole seconds) to give an address at each renewal: it
    /// outlives the lease so a live holder never loses it between renewals, and is short so a
    /// dead holder's address disappears by itself.
    pub fn address_lifetime_secs(&self) -> u32 {
        let secs = self.lease.as_millis().div_ceil(1000) as u32;
        secs.max(1) + 1
    }

    /// The shortest takeover delay that keeps the invariant with these settings.
    pub fn min_takeover_delay(&self) -> Duration {
        let base = scale(self.lease, 1_000_000 + u64::from(self.drift_ppm)) + self.margin;
        match self.guard {
            Guard::Nftables => base,
            Guard::LifetimeOnly => {
                base + Duration::from_secs(u64::from(self.address_lifetime_secs()))
                    + KERNEL_LIFETIME_LATENESS
            }
        }
    }

    /// How long after its last grant to a node the leader must wait before giving that node's
    /// addresses to another.
    pub fn takeover_delay(&self) -> Duration {
        self.takeover_delay
            .unwrap_or_else(|| self.min_takeover_delay())
    }

    /// The instant after which the leader may reassign the addresses of a node it last granted
    /// a lease at `last_grant`.
    pub fn reassign_after(&self, last_grant: Instant) -> Instant {
        last_grant + self.takeover_delay()
    }

    /// A leader elected at `elected_at` reassigns nothing before this instant.
    pub fn new_leader_quiet_until(&self, elected_at: Instant) -> Instant {
        elected_at + self.quorum_fresh + self.takeover_delay()
    }

    /// A leader whose voters (a quorum of them) last heard an earlier leader at `contact` at
    /// the latest ([`crate::handover::quorum_contact`]) reassigns nothing before this instant:
    /// every old grant was made within `quorum_fresh` (stretched by drift) of that contact, and
    /// its lease is over a takeover delay after the grant.
    pub fn quiet_after_contact(&self, contact: Instant) -> Instant {
        contact
            + scale(self.quorum_fresh, 1_000_000 + u64::from(self.drift_ppm))
            + self.takeover_delay()
    }

    /// When a new leader elected at `elected_at` may reassign: the end of its quiet period from
    /// election, or sooner if its voters' answers bound the old grants (`contact`).
    pub fn quiet_until(&self, elected_at: Instant, contact: Option<Instant>) -> Instant {
        let from_election = self.new_leader_quiet_until(elected_at);
        contact.map_or(from_election, |c| {
            from_election.min(self.quiet_after_contact(c))
        })
    }

    /// Whether a leader may grant or renew a lease now, given the time since a quorum last
    /// acknowledged it (`None`: never).
    pub fn may_grant(&self, millis_since_quorum_ack: Option<u64>) -> bool {
        millis_since_quorum_ack.is_some_and(|ack| u128::from(ack) < ms(self.quorum_fresh))
    }

    /// Every reason these timings are unsafe or unworkable. Empty when they are fine.
    pub fn problems(&self) -> Vec<TimingProblem> {
        let mut out = Vec::new();
        let mut push = |field, message: String| out.push(TimingProblem { field, message });
        if self.lease < Duration::from_millis(100) {
            push(
                "lease",
                format!(
                    "lease of {} ms is too short to renew over a network; use at least 100ms \
                     (default 800ms)",
                    ms(self.lease)
                ),
            );
        }
        if self.drift_ppm > 100_000 {
            push(
                "drift_ppm",
                format!(
                    "clock drift of {} ppm is beyond any working clock; use at most 100000 \
                     (default 10000, i.e. 1%)",
                    self.drift_ppm
                ),
            );
        }
        if self.margin < Duration::from_millis(10) {
            push(
                "margin",
                format!(
                    "margin of {} ms leaves no room for scheduling delays; use at least 10ms \
                     (default 50ms)",
                    ms(self.margin)
                ),
            );
        }
        if self.renew_every.is_zero() || self.renew_every * 3 > self.holder_validity() {
            push(
                "renew_every",
                format!(
                    "renewing every {} ms gives fewer than three tries within a lease usable \
                     for {} ms; renew at most every {} ms or lengthen the lease",
                    ms(self.renew_every),
                    ms(self.holder_validity()),
                    ms(self.holder_validity() / 3)
                ),
            );
        }
        if self.guard == Guard::Nftables
            && self.renew_every * 2 + GUARD_WRITE_WINDOW > self.holder_validity()
        {
            push(
                "renew_every",
                format!(
                    "the kernel guard opens for the usable lease ({} ms) less its {} ms write \
                     window, which must outlast two renewal periods of {} ms so one lost \
                     renewal does not close it; renew at most every {} ms or lengthen the lease",
                    ms(self.holder_validity()),
                    ms(GUARD_WRITE_WINDOW),
                    ms(self.renew_every),
                    ms(self.holder_validity().saturating_sub(GUARD_WRITE_WINDOW) / 2)
                ),
            );
        }
        if self.quorum_fresh.is_zero() || self.quorum_fresh * 2 > self.lease {
            push(
                "quorum_fresh",
                format!(
                    "quorum_fresh of {} ms must be above 0 and at most half the lease ({} ms); \
                     a leader that lost its quorum would otherwise grant for too long",
                    ms(self.quorum_fresh),
                    ms(self.lease / 2)
                ),
            );
        }
        if let Some(delay) = self.takeover_delay {
            let min = self.min_takeover_delay();
            if delay < min {
                let why = match self.guard {
                    Guard::Nftables => "the lease plus drift and margin".to_string(),
                    Guard::LifetimeOnly => format!(
                        "the lease plus drift and margin plus the address lifetime ({} s) and \
                         the kernel's removal lateness ({} s), since no nftables guard cuts a \
                         frozen node off sooner",
                        self.address_lifetime_secs(),
                        KERNEL_LIFETIME_LATENESS.as_secs()
                    ),
                };
                push(
                    "takeover_delay",
                    format!(
                        "takeover_delay of {} ms is shorter than {why} = {} ms: a node that \
                         stopped answering could still serve the address when another takes \
                         it; remove takeover_delay or set it to at least {} ms",
                        ms(delay),
                        ms(min),
                        ms(min)
                    ),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> LeaseTimings {
        LeaseTimings::default()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(t().problems(), vec![]);
    }

    #[test]
    fn holder_validity_is_lease_shrunk_by_drift_and_margin() {
        // 800 ms * 0.99 - 50 ms = 742 ms
        assert_eq!(t().holder_validity(), ms(742));
    }

    #[test]
    fn holder_deadline_counts_from_the_send_time() {
        let sent = Instant::now();
        assert_eq!(t().holder_deadline(sent), sent + ms(742));
    }

    #[test]
    fn guard_timeout_is_what_is_left_less_the_window_and_none_once_over() {
        let sent = Instant::now();
        let deadline = t().holder_deadline(sent);
        assert_eq!(
            guard_kernel_timeout(deadline, sent + ms(100)),
            Some(ms(542))
        );
        assert_eq!(guard_kernel_timeout(deadline, sent + ms(742)), None);
        assert_eq!(guard_kernel_timeout(deadline, sent + ms(5000)), None);
    }

    #[test]
    fn kernel_guard_timeout_leaves_the_write_window_before_the_deadline() {
        let now = Instant::now();
        let until = now + ms(742);
        assert_eq!(guard_kernel_timeout(until, now), Some(ms(642)));
        // A write that reaches the kernel as late as it may (the window after `now`) still
        // closes by the deadline.
        let latest_accepted = now + GUARD_WRITE_WINDOW;
        assert!(latest_accepted + guard_kernel_timeout(until, now).unwrap() <= until);
        assert_eq!(guard_kernel_timeout(until, until - ms(100)), None);
        assert_eq!(guard_kernel_timeout(until, until - ms(101)), Some(ms(1)));
        assert_eq!(guard_kernel_timeout(until, until), None);
        assert_eq!(guard_kernel_timeout(until, until + ms(1)), None);
    }

    #[test]
    fn the_guard_must_outlast_two_renewal_periods() {
        // A 300 ms lease is usable for 247 ms; less the 100 ms window, renewals every 73 ms
        // fit twice, every 74 ms do not (while three tries per lease would still fit).
        let at = |renew| LeaseTimings {
            lease: ms(300),
            renew_every: ms(renew),
            ..t()
        };
        assert_eq!(at(73).problems(), vec![]);
        let problems = at(74).problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "renew_every");
        assert!(problems[0].message.contains("write window"), "{problems:?}");
        // Only the address lifetime guards: no write window to leave.
        let lifetime_only = LeaseTimings {
            guard: Guard::LifetimeOnly,
            ..at(74)
        };
        assert_eq!(lifetime_only.problems(), vec![]);
    }

    #[test]
    fn takeover_waits_for_lease_stretched_by_drift_plus_margin() {
        // 800 ms * 1.01 + 50 ms = 858 ms
        assert_eq!(t().takeover_delay(), ms(858));
        let grant = Instant::now();
        assert_eq!(t().reassign_after(grant), grant + ms(858));
    }

    #[test]
    fn holder_lets_go_before_the_leader_reassigns_even_with_drift() {
        // The holder sent its request at `sent`; the leader granted later, at `grant`.
        // Worst case: the holder's clock runs slow by the full drift, so its 742 ms last
        // 742 / (1 - 0.01) real ms, still before the leader's 858 ms from an even later grant.
        let timings = t();
        let holder_real = timings.holder_validity().as_secs_f64() / (1.0 - 0.01);
        let leader_real = timings.takeover_delay().as_secs_f64() / (1.0 + 0.01);
        assert!(holder_real < leader_real, "{holder_real} >= {leader_real}");
    }

    #[test]
    fn lifetime_only_guard_adds_address_lifetime_and_kernel_lateness() {
        let timings = LeaseTimings {
            guard: Guard::LifetimeOnly,
            ..t()
        };
        // lifetime: ceil(0.8 s) + 1 = 2 s; + 2 s lateness; + 858 ms
        assert_eq!(timings.address_lifetime_secs(), 2);
        assert_eq!(timings.takeover_delay(), ms(4858));
    }

    #[test]
    fn address_lifetime_outlives_the_lease() {
        for lease in [100, 800, 1000, 1001, 5000] {
            let timings = LeaseTimings {
                lease: ms(lease),
                ..t()
            };
            let lifetime = Duration::from_secs(u64::from(timings.address_lifetime_secs()));
            assert!(lifetime > timings.lease, "lease {lease}");
        }
    }

    #[test]
    fn new_leader_waits_quorum_freshness_plus_takeover_delay() {
        let elected = Instant::now();
        assert_eq!(
            t().new_leader_quiet_until(elected),
            elected + ms(150) + ms(858)
        );
    }

    #[test]
    fn grants_need_a_fresh_quorum_ack() {
        assert!(t().may_grant(Some(0)));
        assert!(t().may_grant(Some(149)));
        assert!(!t().may_grant(Some(150)));
        assert!(!t().may_grant(None));
    }

    #[test]
    fn too_short_takeover_delay_is_refused_with_the_minimum() {
        let timings = LeaseTimings {
            takeover_delay: Some(ms(500)),
            ..t()
        };
        let p = timings.problems();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "takeover_delay");
        assert!(p[0].message.contains("at least 858 ms"), "{}", p[0].message);
    }

    #[test]
    fn takeover_delay_shorter_than_lifetime_backstop_is_refused_without_nftables() {
        let timings = LeaseTimings {
            guard: Guard::LifetimeOnly,
            takeover_delay: Some(ms(1000)),
            ..t()
        };
        let p = timings.problems();
        assert_eq!(p[0].field, "takeover_delay");
        assert!(
            p[0].message.contains("address lifetime"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn longer_takeover_delay_is_accepted_and_used() {
        let timings = LeaseTimings {
            takeover_delay: Some(ms(2000)),
            ..t()
        };
        assert!(timings.problems().is_empty());
        assert_eq!(timings.takeover_delay(), ms(2000));
    }

    #[test]
    fn renewal_slower_than_a_third_of_the_lease_is_refused() {
        let timings = LeaseTimings {
            renew_every: ms(300),
            ..t()
        };
        let p = timings.problems();
        assert_eq!(p[0].field, "renew_every");
        assert!(
            p[0].message.contains("at most every 247 ms"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn quorum_freshness_above_half_the_lease_is_refused() {
        let timings = LeaseTimings {
            quorum_fresh: ms(500),
            ..t()
        };
        assert_eq!(timings.problems()[0].field, "quorum_fresh");
    }

    #[test]
    fn tiny_lease_huge_drift_and_tiny_margin_are_refused() {
        let timings = LeaseTimings {
            lease: ms(50),
            renew_every: ms(5),
            quorum_fresh: ms(20),
            drift_ppm: 200_000,
            margin: ms(1),
            ..t()
        };
        let fields: Vec<_> = timings.problems().iter().map(|p| p.field).collect();
        assert!(fields.contains(&"lease"), "{fields:?}");
        assert!(fields.contains(&"drift_ppm"), "{fields:?}");
        assert!(fields.contains(&"margin"), "{fields:?}");
    }
}
