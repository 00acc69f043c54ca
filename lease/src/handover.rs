//! How soon a new leader may reassign addresses: from when its voters last heard an earlier
//! leader, rather than from its own election.
//!
//! The argument, for a new leader of term `T`:
//!
//! - A leader of an earlier term grants a lease at `g` only while a leadership check it began
//!   at `c >= g - quorum_fresh` (its clock) was acknowledged by a quorum `Q` of its voters. Each
//!   voter of `Q` accepted that check's heartbeat at some `a >= c`.
//! - A voter that has voted in term `T` never accepts a heartbeat of an earlier term again. So
//!   once it voted, "when did I last accept a heartbeat of a term before `T`" has a final
//!   answer, and the voter sends it with its vote: `since`, the time from that last contact
//!   to its answer. A voter that still leads an earlier term answers 0 (it may be granting);
//!   one that led an earlier term counts the moment it noticed it no longer led (every grant
//!   of that term rests on a check begun before), and one that restarted counts its start.
//! - The new leader's voters, any quorum `M` of them, meet every `Q` (quorums intersect). So the
//!   latest last contact within `M` ([`quorum_contact`]) is after some `a >= c`, and every old
//!   grant was made before it plus `quorum_fresh` (stretched by drift).
//! - An old grant's lease is over by `takeover_delay` after the grant
//!   ([`crate::LeaseTimings::takeover_delay`]). Hence no old lease outlives
//!   [`crate::LeaseTimings::quiet_after_contact`] of that contact.
//!
//! The new leader reads each answer in its own clock as `received - since` ([`contact_at`]),
//! which can only be later than the real contact (the answer travelled before it was received),
//! with `since` shrunk by the drift. When the answers do not cover a quorum, nothing is gained:
//! the leader waits its whole quiet period from election
//! ([`crate::LeaseTimings::new_leader_quiet_until`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::timings::scale;

/// The latest instant, in the receiver's clock, at which a voter that answered "my last
/// contact with an earlier leader was `since` ago" when its answer arrived at `received` can
/// have had that contact. `since` is measured on the voter's clock, so it is shrunk by the
/// drift; an instant before the receiver's clock can express is taken as `received`.
pub fn contact_at(received: Instant, since: Duration, drift_ppm: u32) -> Instant {
    let since = scale(since, 1_000_000u64.saturating_sub(u64::from(drift_ppm)));
    received.checked_sub(since).unwrap_or(received)
}

/// The earliest instant by which every member of some quorum had its last contact with an
/// earlier leader, from the voters' `answers` (as [`contact_at`] gave them) and the voter sets
/// of the membership (`configs`: one set, or two for a joint membership, where a quorum is a
/// majority of each). `None` if the answers do not cover a majority of every set, or there is
/// no set.
pub fn quorum_contact<N: Ord>(
    answers: &BTreeMap<N, Instant>,
    configs: &[BTreeSet<N>],
) -> Option<Instant> {
    let mut latest: Option<Instant> = None;
    for voters in configs {
        let mut known: Vec<Instant> = voters
            .iter()
            .filter_map(|v| answers.get(v).copied())
            .collect();
        known.sort();
        let majority = voters.len() / 2 + 1;
        // The majority of this set with the earliest contacts; its last one bounds them all.
        let bound = *known.get(majority - 1)?;
        latest = Some(latest.map_or(bound, |l| l.max(bound)));
    }
    latest
}

/// What one node keeps of its contacts with leaders, to answer a vote ([`Self::latest_before`]).
///
/// Contacts are kept per term for the last [`Contacts::KEPT_TERMS`] terms; the latest contact
/// of the terms dropped is kept as one instant, so an answer is never earlier than the truth.
/// A node's contacts with a term never come after its first contact with a later term (it
/// accepts no earlier term once it saw a later one), so the kept terms are the recent ones.
#[derive(Clone, Debug)]
pub struct Contacts {
    started: Instant,
    by_term: BTreeMap<u64, Instant>,
    dropped: Option<Instant>,
    /// When a leader last reached this node (its own leadership not counted).
    last_heard: Option<Instant>,
    /// The term this node leads (or may still lead: it stopped granting when it noticed).
    leading: Option<u64>,
}

impl Contacts {
    /// Terms kept one by one.
    pub const KEPT_TERMS: usize = 8;

    /// A node that started at `started`: whatever it accepted before is unknown, so `started`
    /// counts as a contact with every earlier term.
    pub fn new(started: Instant) -> Self {
        Contacts {
            started,
            by_term: BTreeMap::new(),
            dropped: None,
            last_heard: None,
            leading: None,
        }
    }

    /// This node accepted a heartbeat or entries of the leader of `term` at `at`.
    pub fn heard(&mut self, term: u64, at: Instant) {
        self.last_heard = Some(self.last_heard.map_or(at, |l| l.max(at)));
        self.keep(term, at);
    }

    /// When a leader last reached this node (`None`: never in this life).
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// A contact with `term` at `at`, kept for [`Self::latest_before`].
    fn keep(&mut self, term: u64, at: Instant) {
        let e = self.by_term.entry(term).or_insert(at);
        *e = (*e).max(at);
        while self.by_term.len() > Self::KEPT_TERMS {
            if let Some((_, at)) = self.by_term.pop_first() {
                self.dropped = Some(self.dropped.map_or(at, |d| d.max(at)));
            }
        }
    }

    /// This node leads in `term`, as seen at `now` (before its first leadership check of that
    /// term: it grants nothing before one is confirmed). Leading a new term ends the earlier
    /// one ([`Self::stopped_leading`]).
    pub fn leading(&mut self, term: u64, now: Instant) {
        if self.leading.is_some_and(|t| t != term) {
            self.stopped_leading(now);
        }
        self.leading = Some(term);
    }

    /// This node noticed at `now` that it no longer leads. Every grant it made rests on a
    /// leadership check that began before `now`, so `now` counts as its last contact with its
    /// own term, as if it had heard itself then.
    pub fn stopped_leading(&mut self, now: Instant) {
        if let Some(t) = self.leading.take() {
            self.keep(t, now);
        }
    }

    /// The latest instant this node can have acknowledged a leader of a term before `term`,
    /// asked at `now`: its start, any contact kept (a term it led counts until it noticed it
    /// stopped leading), and `now` itself while it still leads an earlier term.
    pub fn latest_before(&self, term: u64, now: Instant) -> Instant {
        if self.leading.is_some_and(|t| t < term) {
            return now;
        }
        self.by_term
            .range(..term)
            .map(|(_, at)| *at)
            .chain(self.dropped)
            .fold(self.started, Instant::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LeaseTimings;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn an_answer_is_read_back_from_its_arrival_with_since_shrunk_by_drift() {
        let t0 = Instant::now() + ms(10_000);
        assert_eq!(contact_at(t0, ms(1000), 10_000), t0 - ms(990));
        assert_eq!(contact_at(t0, ms(0), 10_000), t0);
        let now = Instant::now();
        assert!(
            contact_at(now, Duration::MAX, 0) <= now,
            "any since, however long, reads back without a panic and never after the arrival"
        );
    }

    #[test]
    fn a_quorum_takes_the_majority_with_the_earliest_contacts() {
        let t0 = Instant::now();
        let answers: BTreeMap<u64, Instant> =
            [(1, t0 + ms(300)), (2, t0 + ms(100)), (3, t0 + ms(200))].into();
        assert_eq!(
            quorum_contact(&answers, &[set(&[1, 2, 3])]),
            Some(t0 + ms(200))
        );
        let two: BTreeMap<u64, Instant> = [(1, t0 + ms(300)), (2, t0 + ms(100))].into();
        assert_eq!(quorum_contact(&two, &[set(&[1, 2, 3])]), Some(t0 + ms(300)));
        let one: BTreeMap<u64, Instant> = [(2, t0)].into();
        assert_eq!(quorum_contact(&one, &[set(&[1, 2, 3])]), None);
        assert_eq!(quorum_contact(&answers, &[]), None);
        // Five voters need three answers.
        assert_eq!(
            quorum_contact(&answers, &[set(&[1, 2, 3, 4, 5])]),
            Some(t0 + ms(300))
        );
        assert_eq!(quorum_contact(&two, &[set(&[1, 2, 3, 4, 5])]), None);
    }

    #[test]
    fn a_joint_membership_needs_a_majority_of_each_set() {
        let t0 = Instant::now();
        let answers: BTreeMap<u64, Instant> =
            [(1, t0 + ms(10)), (2, t0 + ms(20)), (4, t0 + ms(500))].into();
        // Old {1,2,3}: 1 and 2 (20 ms). New {2,4,5}: 2 and 4 (500 ms). Both: 500 ms.
        assert_eq!(
            quorum_contact(&answers, &[set(&[1, 2, 3]), set(&[2, 4, 5])]),
            Some(t0 + ms(500))
        );
        assert_eq!(
            quorum_contact(&answers, &[set(&[1, 2, 3]), set(&[3, 5, 6])]),
            None
        );
    }

    #[test]
    fn contacts_answer_the_latest_of_earlier_terms_their_start_and_now_if_they_led() {
        let t0 = Instant::now();
        let mut c = Contacts::new(t0);
        assert_eq!(
            c.latest_before(5, t0 + ms(900)),
            t0,
            "nothing heard: the start"
        );
        c.heard(3, t0 + ms(100));
        c.heard(3, t0 + ms(200));
        c.heard(3, t0 + ms(150));
        c.heard(5, t0 + ms(400));
        assert_eq!(c.latest_before(5, t0 + ms(900)), t0 + ms(200));
        assert_eq!(c.latest_before(6, t0 + ms(900)), t0 + ms(400));
        assert_eq!(c.latest_before(3, t0 + ms(900)), t0);
        c.leading(4, t0 + ms(500));
        assert_eq!(
            c.latest_before(4, t0 + ms(900)),
            t0 + ms(200),
            "leads 4, asked about 4"
        );
        assert_eq!(
            c.latest_before(5, t0 + ms(900)),
            t0 + ms(900),
            "still leads 4: until now"
        );
        c.stopped_leading(t0 + ms(600));
        assert_eq!(
            c.last_heard(),
            Some(t0 + ms(400)),
            "its own leadership is no leader reaching it"
        );
        assert_eq!(
            c.latest_before(6, t0 + ms(900)),
            t0 + ms(600),
            "led 4 until it noticed at 600"
        );
        c.leading(6, t0 + ms(700));
        c.leading(7, t0 + ms(800));
        assert_eq!(
            c.latest_before(7, t0 + ms(900)),
            t0 + ms(800),
            "leading a new term ends the old one"
        );
        assert_eq!(c.latest_before(8, t0 + ms(900)), t0 + ms(900));
    }

    #[test]
    fn contacts_of_dropped_terms_still_count() {
        let t0 = Instant::now();
        let mut c = Contacts::new(t0);
        for term in 1..=(Contacts::KEPT_TERMS as u64 + 3) {
            c.heard(term, t0 + ms(term * 10));
        }
        assert_eq!(c.by_term.len(), Contacts::KEPT_TERMS, "bounded");
        // Terms 1-3 were dropped; asking about term 2 must not go back to the start.
        assert_eq!(c.latest_before(2, t0 + ms(999)), t0 + ms(30));
    }

    /// The whole argument, tried on many small histories: an old leader grants while a quorum
    /// of three or five voters acknowledged a check begun at most `quorum_fresh` before; each
    /// voter answers the new leader with its true last contact (or later); every quorum of the
    /// answers bounds every old lease.
    #[test]
    fn no_old_lease_outlives_the_quiet_period_counted_from_any_quorum_of_answers() {
        let timings = LeaseTimings::default();
        let t0 = Instant::now();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for voters in [3u64, 5] {
            let all: BTreeSet<u64> = (0..voters).collect();
            for _ in 0..20_000 {
                // Old leader's last confirmed check began at c; it acked by a quorum Q.
                let c = t0 + ms(next(2000));
                let grant = c + ms(next(timings.quorum_fresh.as_millis() as u64));
                let mut q: Vec<u64> = all.iter().copied().collect();
                while q.len() > (voters / 2 + 1) as usize {
                    q.remove(next(q.len() as u64) as usize);
                }
                // Each voter's last contact: at or after c for Q's members, anything for others.
                let answers: BTreeMap<u64, Instant> = all
                    .iter()
                    .map(|v| {
                        let last = if q.contains(v) {
                            c + ms(next(300))
                        } else {
                            t0 + ms(next(2300))
                        };
                        (*v, last)
                    })
                    .collect();
                // The new leader hears from a random quorum of them.
                let mut heard = answers.clone();
                while heard.len() > (voters / 2 + 1) as usize {
                    let k = *heard.keys().nth(next(heard.len() as u64) as usize).unwrap();
                    heard.remove(&k);
                }
                let contact = quorum_contact(&heard, std::slice::from_ref(&all)).unwrap();
                let lease_over = grant + timings.takeover_delay();
                assert!(
                    timings.quiet_after_contact(contact) >= lease_over,
                    "{voters} voters: grant at {:?}, contact bound at {:?}",
                    grant - t0,
                    contact - t0
                );
            }
        }
    }
}
