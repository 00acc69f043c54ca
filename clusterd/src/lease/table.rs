//! The lease state a node keeps (by the node handle): as leader, the grants it gave
//! ([`LeaseTable`]); as holder, its own lease ([`HeldLease`]); and when a quorum last
//! confirmed its leadership. Clocks only: the arithmetic is `clusterd_lease::LeaseTimings`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clusterd_lease::{Contacts, LeaseTimings};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::plan::Liveness;

/// Body of `POST /v1/lease`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The node asking.
    pub node: String,
}

/// Answer to a lease request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Lease length granted, in ms, counted by the holder from when it sent the request.
    pub lease_ms: u64,
    /// The granting leader.
    pub leader: String,
    /// Its term.
    pub term: u64,
    /// The leader's last log index when it granted: the holder acts on ownership only from a
    /// replica that has applied at least this far, so a node that was frozen or cut off never
    /// re-takes an address from its stale view of who owns it.
    pub log_index: u64,
}

/// A lease as its holder keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    /// When the holder must have let go.
    pub deadline: Instant,
    /// The replica must have applied at least this log index before holding anything.
    pub min_applied: u64,
}

/// One node's grants as the leader sees them.
#[derive(Debug, Clone, Copy)]
struct Granted {
    last: Instant,
    /// Start of the current run of grants without a gap longer than a lease.
    since: Instant,
}

/// The leader's memory of grants, reset whenever leadership changes.
///
/// It also keeps the grant rule: once this leader decided to take an address from a node, it
/// grants that node nothing until the takeover's log index is known, and from then on only
/// grants naming that index or a later one. The holder acts on a grant only from a replica that
/// has applied that far, where it no longer owns the address. Without this, a node resumed
/// after a freeze could renew in the milliseconds between the decision and its entry reaching
/// the log, get a grant naming the log before the takeover, and hold the address next to its
/// new owner until that lease ran out.
#[derive(Debug, Default)]
pub struct LeaseTable {
    term: Option<u64>,
    elected_at: Option<Instant>,
    /// When a quorum of this term's voters last heard an earlier leader, at the latest
    /// (`clusterd_lease::handover`); `None` until known, or if their answers cover no quorum.
    voters_contact: Option<Instant>,
    /// Whether the voters' answers were already looked at in this term.
    contact_asked: bool,
    grants: BTreeMap<String, Granted>,
    /// Nodes with a takeover decided in this term whose write has not come back yet.
    taking: BTreeSet<String>,
    /// Nodes with a takeover whose write failed: it may or may not be in the log, so they get
    /// nothing until a later write of this leader commits (and with it everything before).
    unsettled: BTreeSet<String>,
    /// The lowest log index a grant to each node may name.
    floor: BTreeMap<String, u64>,
}

/// Why the leader's table refuses a node a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// A takeover of one of its addresses is on its way into the log.
    TakeoverInFlight,
    /// A takeover of one of its addresses failed to commit and may still be in the log.
    TakeoverUnsettled,
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Withheld::TakeoverInFlight => "a takeover of its addresses is being committed",
            Withheld::TakeoverUnsettled => {
                "a takeover of its addresses did not commit and may still be in the log"
            }
        })
    }
}

impl LeaseTable {
    /// The term the table was last reset for (`None`: this node never led).
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Start over for a new term (called when this node becomes leader).
    pub fn reset_for(&mut self, term: u64, now: Instant) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.elected_at = Some(now);
            self.voters_contact = None;
            self.contact_asked = false;
            self.grants.clear();
            self.taking.clear();
            self.unsettled.clear();
            self.floor.clear();
        }
    }

    /// Record a grant to `node` at `now` in `term`, whose log is at `last_log_index`, and return
    /// the log index the grant names; or refuse it under the grant rule. A refused node is not
    /// recorded as granted.
    pub(super) fn grant(
        &mut self,
        term: u64,
        node: &str,
        now: Instant,
        last_log_index: u64,
        timings: &LeaseTimings,
    ) -> Result<u64, Withheld> {
        self.reset_for(term, now);
        if self.taking.contains(node) {
            return Err(Withheld::TakeoverInFlight);
        }
        if self.unsettled.contains(node) {
            return Err(Withheld::TakeoverUnsettled);
        }
        let since = match self.grants.get(node) {
            Some(g) if now.duration_since(g.last) <= timings.lease => g.since,
            _ => now,
        };
        self.grants
            .insert(node.to_string(), Granted { last: now, since });
        Ok(last_log_index.max(self.floor.get(node).copied().unwrap_or(0)))
    }

    /// The leader decided, in `term`, to take an address from `node`: withhold grants from it
    /// until [`LeaseTable::takeover_written`]. Must happen under the same lock as the
    /// [`LeaseTable::liveness`] the decision came from, so no grant slips in between.
    pub fn takeover_decided(&mut self, term: u64, node: &str) {
        if self.term == Some(term) {
            self.taking.insert(node.to_string());
        }
    }

    /// The takeovers from `node` decided in `term` came back: all committed, the last at
    /// `index` (`Some`, even if the state machine refused one), or not all (`None`: a failed
    /// or unsent one may still be, or never be, in the log).
    pub fn takeover_written(&mut self, term: u64, node: &str, index: Option<u64>) {
        if self.term != Some(term) {
            return;
        }
        self.taking.remove(node);
        match index {
            Some(i) => self.raise_floor(node, i),
            None => {
                self.unsettled.insert(node.to_string());
            }
        }
    }

    /// Whether a failed takeover write still needs a later write to settle it.
    pub fn needs_settling(&self) -> bool {
        !self.unsettled.is_empty()
    }

    /// A write of this leader submitted after every failed takeover came back committed at
    /// `index`: Raft commits in log order, so whatever of those takeovers reached the log is
    /// at or before `index` and applied. Grants to their nodes name at least `index`.
    pub fn settled(&mut self, term: u64, index: u64) {
        if self.term != Some(term) {
            return;
        }
        for node in std::mem::take(&mut self.unsettled) {
            self.raise_floor(&node, index);
        }
    }

    fn raise_floor(&mut self, node: &str, index: u64) {
        let f = self.floor.entry(node.to_string()).or_default();
        *f = (*f).max(index);
    }

    /// Whether this leader is still in its quiet period after election: it may not know who
    /// holds what yet, and not every live node has renewed with it yet.
    pub fn quiet(&self, now: Instant, timings: &LeaseTimings) -> bool {
        self.quiet_until(timings).is_none_or(|q| now < q)
    }

    /// When this leader's quiet period after election ends (`None` before an election): a
    /// whole quiet period from election, or sooner when its voters bounded the old grants.
    pub fn quiet_until(&self, timings: &LeaseTimings) -> Option<Instant> {
        self.elected_at
            .map(|e| timings.quiet_until(e, self.voters_contact))
    }

    /// Whether the voters' answers of `term` still need looking at (once per term).
    pub fn wants_voters_contact(&self, term: u64) -> bool {
        self.term == Some(term) && !self.contact_asked
    }

    /// The voters of `term` (a quorum of them) last heard an earlier leader at `contact` at the
    /// latest (`None`: their answers cover no quorum). Ignored for another term.
    pub fn set_voters_contact(&mut self, term: u64, contact: Option<Instant>) {
        if self.term == Some(term) {
            self.contact_asked = true;
            self.voters_contact = contact;
        }
    }

    /// This leader's last grant to `node` in the current term.
    pub fn last_grant(&self, node: &str) -> Option<Instant> {
        self.grants.get(node).map(|g| g.last)
    }

    /// What the planner may assume about every node in `nodes`, at `now`.
    pub fn liveness<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a String>,
        now: Instant,
        timings: &LeaseTimings,
    ) -> Liveness {
        let mut live = Liveness::default();
        let Some(elected_at) = self.elected_at else {
            return live;
        };
        let quiet = now < timings.quiet_until(elected_at, self.voters_contact);
        for node in nodes {
            match self.grants.get(node) {
                Some(g) if now.duration_since(g.last) < timings.lease => {
                    let held_ms = now.duration_since(g.since).as_millis() as u64;
                    live.current.insert(node.clone(), held_ms);
                }
                Some(g) if !quiet && now >= timings.reassign_after(g.last) => {
                    live.expired.insert(node.clone());
                }
                None if !quiet => {
                    live.expired.insert(node.clone());
                }
                _ => {}
            }
        }
        live
    }
}

/// The contacts the voters of this node's latest candidacy sent with their votes: per voter,
/// the latest instant (this node's clock, `clusterd_lease::contact_at`) it can have last
/// acknowledged a leader of an earlier term. Only the latest term is kept.
#[derive(Debug, Default)]
pub struct VoteAnswers {
    term: u64,
    answers: BTreeMap<crate::model::NodeId, Instant>,
}

impl VoteAnswers {
    /// `voter` granted its vote in `term` and last heard an earlier leader by `at`. A repeated
    /// answer keeps the later instant.
    pub fn record(&mut self, term: u64, voter: crate::model::NodeId, at: Instant) {
        if term > self.term {
            self.term = term;
            self.answers.clear();
        }
        if term == self.term {
            let e = self.answers.entry(voter).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// The answers of `term` (empty for any other).
    pub fn of_term(&self, term: u64) -> BTreeMap<crate::model::NodeId, Instant> {
        if term == self.term {
            self.answers.clone()
        } else {
            BTreeMap::new()
        }
    }
}

/// Shared lease state of a node: the leader's table, and this node's own lease as a holder.
#[derive(Debug)]
pub struct Leases {
    /// Lease arithmetic from config.
    pub timings: LeaseTimings,
    /// The table, meaningful while this node leads.
    pub table: Mutex<LeaseTable>,
    /// This node's own lease (`None`: no lease).
    pub holder: watch::Sender<Option<HeldLease>>,
    /// While leading: when the last leadership check that a quorum confirmed *began*, and in
    /// which term ([`confirm_loop`]).
    pub confirmed: Mutex<Option<(Instant, u64)>>,
    /// This node's contacts with leaders, answered with every vote it grants.
    pub contacts: Mutex<Contacts>,
    /// Held (shared) from before a heartbeat is handed to Raft until its contact is noted, and
    /// (exclusive) while a vote's answer is read: an answer never misses a heartbeat accepted
    /// before the vote.
    pub contact_gate: tokio::sync::RwLock<()>,
    /// The answers that came with the votes for this node.
    pub votes: Arc<Mutex<VoteAnswers>>,
}

impl Leases {
    /// Leases with `timings`, nothing granted or held, for a daemon started at `started`;
    /// the network records vote answers in `votes`.
    pub fn new(timings: LeaseTimings, started: Instant, votes: Arc<Mutex<VoteAnswers>>) -> Self {
        Leases {
            timings,
            table: Mutex::new(LeaseTable::default()),
            holder: watch::channel(None).0,
            confirmed: Mutex::new(None),
            contacts: Mutex::new(Contacts::new(started)),
            contact_gate: tokio::sync::RwLock::new(()),
            votes,
        }
    }
}

/// How long ago (ms) a quorum last confirmed this node's leadership in `term`, counted from
/// when that confirmation was asked for; `None` if never in this term.
///
/// Why not `RaftMetrics::millis_since_quorum_ack`: it is computed when openraft publishes
/// metrics, and a daemon resumed after a freeze reads the value published before the freeze
/// (a few ms) until openraft runs again. A leader deposed while frozen then granted itself a
/// lease and put its old address back next to the new owner's. An instant taken here before the
/// confirmation was asked for only grows older, whatever happens to the process.
pub fn confirmed_age_ms(confirmed: Option<(Instant, u64)>, term: u64, now: Instant) -> Option<u64> {
    match confirmed {
        Some((at, t)) if t == term => Some(now.saturating_duration_since(at).as_millis() as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::Command;
    use crate::model::plan::{self, Policy};

    fn t() -> LeaseTimings {
        LeaseTimings::default()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_new_leader_declares_nobody_expired_during_its_quiet_period() {
        let mut table = LeaseTable::default();
        let t0 = crate::clock::now();
        table.reset_for(2, t0);
        let nodes = names(&["mx1", "mx2"]);
        let live = table.liveness(&nodes, t0 + Duration::from_millis(500), &t());
        assert!(live.expired.is_empty() && live.current.is_empty());
        let after = t0 + t().quorum_fresh + t().takeover_delay() + Duration::from_millis(1);
        let live = table.liveness(&nodes, after, &t());
        assert_eq!(live.expired.len(), 2);
    }

    #[test]
    fn the_voters_contact_shortens_the_quiet_period_of_its_own_term_only() {
        let ms = Duration::from_millis;
        let mut table = LeaseTable::default();
        let t0 = crate::clock::now() + ms(10_000);
        let whole = t0 + t().quorum_fresh + t().takeover_delay();
        table.reset_for(3, t0);
        assert_eq!(table.quiet_until(&t()), Some(whole));
        assert!(table.wants_voters_contact(3));
        assert!(!table.wants_voters_contact(2));
        // The voters last heard the old leader 300 ms before this election.
        let contact = t0 - ms(300);
        table.set_voters_contact(2, Some(contact));
        assert_eq!(
            table.quiet_until(&t()),
            Some(whole),
            "another term's answer is ignored"
        );
        table.set_voters_contact(3, Some(contact));
        assert!(!table.wants_voters_contact(3), "looked at once per term");
        let sooner = t().quiet_after_contact(contact);
        assert!(sooner < whole);
        assert_eq!(table.quiet_until(&t()), Some(sooner));
        let nodes = names(&["mx1"]);
        assert!(
            table
                .liveness(&nodes, sooner - ms(1), &t())
                .expired
                .is_empty()
        );
        assert_eq!(table.liveness(&nodes, sooner, &t()).expired.len(), 1);
        // A contact after the election never lengthens the quiet period.
        table.reset_for(4, t0);
        table.set_voters_contact(4, Some(t0 + ms(5_000)));
        assert_eq!(table.quiet_until(&t()), Some(whole));
        // No quorum of answers: the whole quiet period.
        table.reset_for(5, t0);
        table.set_voters_contact(5, None);
        assert_eq!(table.quiet_until(&t()), Some(whole));
    }

    #[test]
    fn vote_answers_keep_the_latest_term_and_the_later_of_two_answers() {
        let ms = Duration::from_millis;
        let t0 = crate::clock::now();
        let mut v = VoteAnswers::default();
        v.record(3, 1, t0 + ms(10));
        v.record(3, 1, t0 + ms(5));
        v.record(3, 2, t0 + ms(20));
        assert_eq!(v.of_term(3), [(1, t0 + ms(10)), (2, t0 + ms(20))].into());
        v.record(2, 3, t0);
        assert_eq!(v.of_term(2), BTreeMap::new(), "an older term is not kept");
        v.record(4, 3, t0);
        assert_eq!(v.of_term(3), BTreeMap::new());
        assert_eq!(v.of_term(4), [(3, t0)].into());
    }

    #[test]
    fn renewing_nodes_are_current_with_their_uninterrupted_time() {
        let mut table = LeaseTable::default();
        let t0 = crate::clock::now();
        table.reset_for(1, t0);
        for i in 0..10 {
            table
                .grant(1, "mx1", t0 + Duration::from_millis(200 * i), 5, &t())
                .unwrap();
        }
        let now = t0 + Duration::from_millis(1900);
        let live = table.liveness(&names(&["mx1"]), now, &t());
        assert_eq!(live.current.get("mx1"), Some(&1900));
    }

    #[test]
    fn a_gap_longer_than_a_lease_restarts_the_stable_time() {
        let mut table = LeaseTable::default();
        let t0 = crate::clock::now();
        table.reset_for(1, t0);
        table.grant(1, "mx1", t0, 5, &t()).unwrap();
        table
            .grant(1, "mx1", t0 + Duration::from_secs(5), 5, &t())
            .unwrap();
        let live = table.liveness(&names(&["mx1"]), t0 + Duration::from_millis(5100), &t());
        assert_eq!(live.current.get("mx1"), Some(&100));
    }

    #[test]
    fn silent_node_is_neither_current_nor_expired_until_the_takeover_delay() {
        let mut table = LeaseTable::default();
        let t0 = crate::clock::now();
        table.reset_for(1, t0);
        let late = t0 + Duration::from_secs(10);
        table.grant(1, "mx1", late, 5, &t()).unwrap();
        let nodes = names(&["mx1"]);
        let lapsed = late + t().lease + Duration::from_millis(1);
        let live = table.liveness(&nodes, lapsed, &t());
        assert!(live.current.is_empty() && live.expired.is_empty());
        let gone = late + t().takeover_delay();
        assert!(table.liveness(&nodes, gone, &t()).expired.contains("mx1"));
    }

    #[test]
    fn leadership_confirmed_ages_from_when_it_was_asked_and_counts_only_in_its_term() {
        let asked = crate::clock::now();
        let later = asked + Duration::from_millis(40);
        assert_eq!(confirmed_age_ms(Some((asked, 3)), 3, later), Some(40));
        // A daemon frozen for two seconds and resumed: the confirmation is two seconds old.
        let resumed = asked + Duration::from_secs(2);
        assert_eq!(confirmed_age_ms(Some((asked, 3)), 3, resumed), Some(2000));
        assert!(!t().may_grant(confirmed_age_ms(Some((asked, 3)), 3, resumed)));
        // Another term's confirmation, or none, grants nothing.
        assert_eq!(confirmed_age_ms(Some((asked, 3)), 4, later), None);
        assert_eq!(confirmed_age_ms(None, 3, later), None);
    }

    #[test]
    fn a_new_term_forgets_old_grants() {
        let mut table = LeaseTable::default();
        let t0 = crate::clock::now();
        table.reset_for(1, t0);
        table.grant(1, "mx1", t0, 5, &t()).unwrap();
        table.reset_for(2, t0 + Duration::from_millis(10));
        let live = table.liveness(&names(&["mx1"]), t0 + Duration::from_millis(20), &t());
        assert!(live.current.is_empty());
    }

    /// A table whose leader (term 1, elected at `t0`) last granted mx1 at `t0`, and an instant
    /// past its quiet period at which mx1 is surely expired.
    fn mx1_silent_since(t0: Instant) -> (LeaseTable, Instant) {
        let mut table = LeaseTable::default();
        table.reset_for(1, t0);
        table.grant(1, "mx1", t0, 10, &t()).unwrap();
        table.grant(1, "mx2", t0, 10, &t()).unwrap();
        (table, t0 + t().quorum_fresh + t().takeover_delay())
    }

    #[test]
    fn a_node_gets_no_lease_while_a_takeover_of_its_address_is_on_its_way_into_the_log() {
        let t0 = crate::clock::now();
        let (mut table, expired) = mx1_silent_since(t0);
        let live = table.liveness(&names(&["mx1"]), expired, &t());
        assert!(live.expired.contains("mx1"));
        table.takeover_decided(1, "mx1");
        // mx1 resumes and renews before the takeover's entry is in the log (the leader's log
        // still ends at 10): no grant at all.
        let resumed = expired + Duration::from_millis(3);
        assert_eq!(
            table.grant(1, "mx1", resumed, 10, &t()),
            Err(Withheld::TakeoverInFlight)
        );
        // Nor once it is in the log but not committed (the log ends at 11).
        assert_eq!(
            table.grant(1, "mx1", resumed, 11, &t()),
            Err(Withheld::TakeoverInFlight)
        );
        // Refusals are not grants: mx1 stays expired.
        assert!(
            table
                .liveness(&names(&["mx1"]), resumed, &t())
                .expired
                .contains("mx1")
        );
        // Committed at 11: grants name 11 at least, even from metrics that still say 10.
        table.takeover_written(1, "mx1", Some(11));
        assert_eq!(table.grant(1, "mx1", resumed, 10, &t()), Ok(11));
        assert_eq!(table.grant(1, "mx1", resumed, 14, &t()), Ok(14));
        // Other nodes are never held up by it.
        table.takeover_decided(1, "mx1");
        assert_eq!(table.grant(1, "mx2", resumed, 12, &t()), Ok(12));
        // A takeover not sent at all (an earlier write of its round failed) counts as failed.
        table.takeover_written(1, "mx1", None);
        assert_eq!(
            table.grant(1, "mx1", resumed, 12, &t()),
            Err(Withheld::TakeoverUnsettled)
        );
    }

    #[test]
    fn a_failed_takeover_write_withholds_leases_until_a_later_write_commits() {
        let t0 = crate::clock::now();
        let (mut table, expired) = mx1_silent_since(t0);
        table.takeover_decided(1, "mx1");
        // Timed out: it may be in the log at some unknown index.
        table.takeover_written(1, "mx1", None);
        assert!(table.needs_settling());
        assert_eq!(
            table.grant(1, "mx1", expired, 12, &t()),
            Err(Withheld::TakeoverUnsettled)
        );
        // A later write of this leader committed at 15: whatever of the takeover is in the
        // log is at or before 15.
        table.settled(1, 15);
        assert!(!table.needs_settling());
        assert_eq!(table.grant(1, "mx1", expired, 12, &t()), Ok(15));
    }

    #[test]
    fn a_new_term_forgets_the_takeovers_of_the_old_one() {
        let t0 = crate::clock::now();
        let (mut table, expired) = mx1_silent_since(t0);
        table.takeover_decided(1, "mx1");
        table.takeover_written(1, "mx1", None);
        // Leadership moved and came back: the new term's quiet period covers the old term's
        // decisions, and its log (hence every grant) contains whatever of them was appended.
        assert_eq!(table.grant(2, "mx1", expired, 20, &t()), Ok(20));
        // Late answers about the old term change nothing.
        table.takeover_written(1, "mx1", Some(99));
        table.settled(1, 99);
        assert_eq!(table.grant(2, "mx1", expired, 20, &t()), Ok(20));
    }

    /// The interleaving of the freeze race, step by step, with the real planner, lease table,
    /// effective-lease rule and address runtime decision: an owner frozen for about a lease
    /// resumes and renews at every point of its takeover, its replica at any index from the
    /// grant's on. Whenever the new owner holds the address, the old one must not.
    #[test]
    fn a_resumed_owner_never_holds_alongside_the_new_owner_wherever_its_renewal_falls() {
        use crate::model::{AddressSpec, MoveReason, State};
        use crate::vip::{desired, effective_lease};
        let ip = "192.0.2.101/24";
        // log[i] = the state after entry i; the owner mx1 holds the address from index 10.
        let mut s = crate::model::test_state(&["mx1", "mx2"], &[]);
        s.apply(&Command::SetAddresses {
            by: "mx2".into(),
            addresses: vec![AddressSpec {
                ip: ip.into(),
                interface: "eth0".into(),
                home: "mx1".into(),
                services: vec![],
            }],
            at_ms: 0,
        });
        s.apply(&Command::Assign {
            ip: ip.into(),
            to: "mx1".into(),
            epoch: 0,
            reason: MoveReason::Initial,
            at_ms: 0,
            term: None,
        });
        let mut log: BTreeMap<u64, State> = BTreeMap::from([(10, s.clone())]);

        #[derive(Debug, Clone, Copy)]
        enum Renewal {
            AfterDecision,
            AppendedNotPublished,
            AppendedPublished,
            Committed,
        }
        for renewal in [
            Renewal::AfterDecision,
            Renewal::AppendedNotPublished,
            Renewal::AppendedPublished,
            Renewal::Committed,
        ] {
            let t0 = crate::clock::now();
            let (mut table, expired) = mx1_silent_since(t0);
            let live = table.liveness(&names(&["mx1", "mx2"]), expired, &t());
            let mut plan_live = live.clone();
            plan_live.current.insert("mx2".into(), 5_000);
            let cmds = plan::plan(&s, &plan_live, &Policy::default(), 1);
            assert_eq!(cmds.len(), 1, "{renewal:?}: {cmds:?}");
            assert_eq!(plan::taken_from(&s, &cmds[0]), Some("mx1"));
            table.takeover_decided(1, "mx1");
            let mut after = s.clone();
            assert!(after.apply(&cmds[0]).refused.is_none());
            log.insert(11, after);

            // What the leader's log and metrics say when mx1's renewal arrives.
            let resumed = expired + Duration::from_millis(2);
            let metrics_last = match renewal {
                Renewal::AfterDecision | Renewal::AppendedNotPublished => 10,
                Renewal::AppendedPublished | Renewal::Committed => 11,
            };
            if matches!(renewal, Renewal::Committed) {
                table.takeover_written(1, "mx1", Some(11));
            }
            let granted = table.grant(1, "mx1", resumed, metrics_last, &t());
            // The new owner holds the address from the commit on.
            let mx2_holds = desired(&log[&11], "mx2", true).hold.contains_key(ip);
            assert!(mx2_holds);
            let Ok(index) = granted else {
                continue; // no lease, nothing held
            };
            let lease = HeldLease {
                deadline: resumed + t().holder_validity(),
                min_applied: index,
            };
            for applied in 10..=11 {
                let acted = effective_lease(None, Some(lease), applied);
                let mx1_holds =
                    acted.is_some() && desired(&log[&applied], "mx1", true).hold.contains_key(ip);
                assert!(
                    !mx1_holds,
                    "{renewal:?}: mx1 granted at index {index} holds {ip} from a replica at \
                     {applied} while mx2 owns it"
                );
            }
        }
    }
}
