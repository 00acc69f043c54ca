//! The chaos campaign's checker: pure functions over what the observers recorded. Each returns
//! the violations it found as text naming what, when and who; the runner adds the burst and the
//! schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use clusterd::model::{Event, EventKind};

use crate::monitor::HolderTimeline;
use crate::watch::Greeting;

/// Greetings from X, then Y, then X again, each connection started after the previous greeting
/// arrived, all within this: the address flapped between two holders. No planned move or
/// failover hands an address over and back that fast (a takeover waits for a lease, and the
/// campaign's moves of one address are seconds apart).
pub const FLAP_WINDOW: Duration = Duration::from_millis(500);

/// Greetings naming two nodes in one short window, in the order that proves both served the
/// address unless it was handed over and back: X greeted, then a connection started later got
/// Y, then one started after that got X again, all within [`FLAP_WINDOW`]. `greetings` need not
/// be sorted. Whether the history explains it is [`flap_explained`].
pub fn greeting_flaps(ip: IpAddr, greetings: &[Greeting], origin: Instant) -> Vec<Flap> {
    let mut g: Vec<&Greeting> = greetings.iter().filter(|g| g.node.is_some()).collect();
    g.sort_by_key(|g| g.started);
    let mut found = Vec::new();
    let mut last_reported: Option<Instant> = None;
    for (k, third) in g.iter().enumerate() {
        let floor = third.at.checked_sub(FLAP_WINDOW).unwrap_or(third.at);
        let first_idx = g[..k].partition_point(|x| x.started < floor);
        let window = &g[first_idx..k];
        let hit = window.iter().find_map(|second| {
            (second.node != third.node && second.at < third.started).then_some(())?;
            window
                .iter()
                .find(|first| first.node == third.node && first.at < second.started)
                .map(|first| (*first, *second))
        });
        if let Some((first, second)) = hit {
            // One report per flap, not one per greeting inside it.
            if last_reported.is_some_and(|t| first.started <= t) {
                continue;
            }
            last_reported = Some(third.at);
            let rel = |t: Instant| t.saturating_duration_since(origin);
            found.push(Flap {
                ip,
                first: first.clone(),
                second: second.clone(),
                third: (*third).clone(),
                text: format!(
                    "{ip}: greetings from {} ({:?}), then {} ({:?}), then {} again ({:?}) within \
                     {:?}",
                    name(first),
                    rel(first.at),
                    name(second),
                    rel(second.at),
                    name(third),
                    rel(third.at),
                    third.at.saturating_duration_since(first.started)
                ),
            });
        }
    }
    found
}

/// Greetings that went X, Y, X within [`FLAP_WINDOW`] ([`greeting_flaps`]).
#[derive(Debug, Clone)]
pub struct Flap {
    /// The address.
    pub ip: IpAddr,
    /// X's greeting.
    pub first: Greeting,
    /// Y's.
    pub second: Greeting,
    /// X's again.
    pub third: Greeting,
    /// What to report.
    pub text: String,
}

/// How far the history's times (stamped by the proposing leader, before the change reached
/// the nodes) may be from the greetings'.
pub const HISTORY_SLACK: Duration = Duration::from_millis(50);

/// Whether the replicated history explains `flap` as two quick handovers: the address's owner
/// became Y after X's first greeting started and before Y greeted, and became X again after
/// that and before X's second greeting. `owners` are the history's owner changes of the
/// address: when (on the greetings' clock) and to whom. Each handover itself is vouched for by
/// the four holder views, which see any overlap; what is left unexplained is two nodes
/// answering at once.
pub fn flap_explained(flap: &Flap, owners: &[(Instant, String)]) -> bool {
    let (Some(x), Some(y)) = (&flap.first.node, &flap.second.node) else {
        return false;
    };
    let from = flap
        .first
        .started
        .checked_sub(HISTORY_SLACK)
        .unwrap_or(flap.first.started);
    owners.iter().any(|(t1, to_y)| {
        to_y == y
            && *t1 >= from
            && *t1 <= flap.second.at + HISTORY_SLACK
            && owners
                .iter()
                .any(|(t2, to_x)| to_x == x && t2 > t1 && *t2 <= flap.third.at + HISTORY_SLACK)
    })
}

fn name(g: &Greeting) -> &str {
    g.node.as_deref().unwrap_or("?")
}

/// One node's view of the cluster at one moment.
#[derive(Debug, Clone)]
pub struct StatusSample {
    /// When it was taken.
    pub at: Instant,
    /// The node asked.
    pub node: String,
    /// Which life of the node's daemon answered (bumped at every kill or restart).
    pub life: u64,
    /// The leader it knows.
    pub leader: Option<String>,
    /// The Raft term it knows.
    pub term: u64,
    /// Owner and epoch per address (`ip/prefix`).
    pub owners: BTreeMap<String, (Option<String>, u64)>,
}

/// Within one life of one daemon, the epoch of an address never decreases (its applied state
/// only moves forward).
pub fn epochs_never_go_back(samples: &[StatusSample], origin: Instant) -> Vec<String> {
    let mut last: BTreeMap<(&str, u64, &str), (u64, Instant)> = BTreeMap::new();
    let mut found = Vec::new();
    for s in samples {
        for (ip, (_, epoch)) in &s.owners {
            let key = (s.node.as_str(), s.life, ip.as_str());
            if let Some((before, when)) = last.get(&key)
                && epoch < before
            {
                found.push(format!(
                    "{} saw the epoch of {ip} go back from {before} ({:?}) to {epoch} ({:?})",
                    s.node,
                    when.saturating_duration_since(origin),
                    s.at.saturating_duration_since(origin)
                ));
            }
            last.insert(key, (*epoch, s.at));
        }
    }
    found
}

/// Histories read from the nodes over the campaign, checked as they are read, keeping one
/// copy of each event (a 1000-fault campaign reads the history some 4000 times):
/// every sequence number names the same event wherever it was read, each history is
/// contiguous, the epochs of every address's owner changes increase, and the last read of
/// every node reaches the highest sequence number ever read (nothing committed was lost).
#[derive(Debug, Default)]
pub struct Histories {
    by_seq: BTreeMap<u64, (String, Event)>,
    last_read: BTreeMap<String, u64>,
    highest: u64,
    found: Vec<String>,
}

impl Histories {
    /// One read of `node`'s history.
    pub fn add(&mut self, node: &str, events: &[Event]) {
        for w in events.windows(2) {
            if w[1].seq != w[0].seq + 1 {
                self.found.push(format!(
                    "{node}'s history jumps from seq {} to {}",
                    w[0].seq, w[1].seq
                ));
            }
        }
        for e in events {
            self.highest = self.highest.max(e.seq);
            match self.by_seq.get(&e.seq) {
                Some((other, seen)) if seen != e => self.found.push(format!(
                    "event {} differs: {other} read {:?}, {node} read {:?}",
                    e.seq, seen.kind, e.kind
                )),
                Some(_) => {}
                None => {
                    self.by_seq.insert(e.seq, (node.to_string(), e.clone()));
                }
            }
        }
        self.last_read
            .insert(node.to_string(), events.last().map_or(0, |e| e.seq));
    }

    /// Every owner change of the address `ip` (without its prefix) in the history read: when
    /// (unix ms, as the proposer stamped it) and to whom.
    pub fn owner_changes(&self, ip: IpAddr) -> Vec<(u64, String)> {
        let ip = ip.to_string();
        self.by_seq
            .values()
            .filter_map(|(_, e)| match &e.kind {
                EventKind::OwnerChanged { ip: key, to, .. }
                    if key.split('/').next() == Some(ip.as_str()) =>
                {
                    Some((e.at_ms, to.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// What was found, with the epochs and every node in `final_reads` reaching the end.
    pub fn finish(&self, final_reads: &[String]) -> Vec<String> {
        let mut found = self.found.clone();
        let mut epochs: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (seq, (_, e)) in &self.by_seq {
            if let EventKind::OwnerChanged { ip, epoch, .. } = &e.kind {
                if let Some((before, at)) = epochs.get(ip.as_str())
                    && epoch <= before
                {
                    found.push(format!(
                        "{ip}: owner change {seq} has epoch {epoch}, not above {before} of \
                         owner change {at}"
                    ));
                }
                epochs.insert(ip, (*epoch, *seq));
            }
        }
        for node in final_reads {
            let last = self.last_read.get(node).copied().unwrap_or(0);
            if last < self.highest {
                found.push(format!(
                    "{node}'s last history ends at seq {last}, but seq {} was read before",
                    self.highest
                ));
            }
        }
        found
    }
}

/// One DNS answer the client got.
#[derive(Debug, Clone)]
pub struct DnsAnswer {
    /// When it arrived.
    pub at: Instant,
    /// The node whose DNS server answered.
    pub server: String,
    /// The addresses answered.
    pub addresses: Vec<IpAddr>,
}

/// How long before `a` each answered address was last held (zero: held at that moment), as
/// the address sampler (which honours the guard) saw it; `None` for an address the timeline
/// never saw held. Answers outside every timeline give nothing.
pub fn dns_staleness(
    a: &DnsAnswer,
    timelines: &[HolderTimeline],
) -> Vec<(IpAddr, Option<Duration>)> {
    let Some(tl) = timelines.iter().find(|tl| covers(tl, a.at)) else {
        return Vec::new();
    };
    let t = tl.time_of(a.at);
    a.addresses
        .iter()
        .map(|ip| {
            let held =
                |h: &crate::monitor::holders::Holders| h.get(ip).is_some_and(|w| !w.is_empty());
            if held(&tl.holders_at(t)) {
                return (*ip, Some(Duration::ZERO));
            }
            let last = tl
                .changes
                .iter()
                .take_while(|(at, _)| *at <= t)
                .filter(|(_, h)| held(h))
                .map(|(at, _)| *at)
                .last();
            // Held until the next change after its last holding one.
            let until =
                last.and_then(|l| tl.changes.iter().find(|(at, _)| *at > l).map(|(at, _)| *at));
            (*ip, until.map(|u| t.saturating_sub(u)))
        })
        .collect()
}

/// Outside the faults (from each quiet point to the next burst, `judged`), DNS never answers
/// with an address nobody has served for longer than `grace` (one lease). One report per
/// server and address.
pub fn dns_matches_holders(
    answers: &[DnsAnswer],
    timelines: &[HolderTimeline],
    judged: &[(Instant, Instant)],
    grace: Duration,
) -> Vec<String> {
    let mut found = Vec::new();
    let mut reported: BTreeSet<(String, IpAddr)> = BTreeSet::new();
    for a in answers {
        if !judged.iter().any(|(from, to)| a.at >= *from && a.at <= *to) {
            continue;
        }
        for (ip, stale) in dns_staleness(a, timelines) {
            let too_old = match stale {
                Some(d) => d > grace,
                // Never held within the timeline: judged once the timeline is a lease old.
                None => timelines
                    .iter()
                    .find(|tl| covers(tl, a.at))
                    .is_some_and(|tl| tl.time_of(a.at) > grace),
            };
            if too_old && reported.insert((a.server.clone(), ip)) {
                found.push(format!(
                    "{}'s DNS answered {ip} outside any fault although nobody had held it for \
                     {} (later answers of this kind from {} are not listed)",
                    a.server,
                    stale.map_or("the whole window".to_owned(), |d| format!("{d:?}")),
                    a.server
                ));
            }
        }
    }
    found
}

fn covers(tl: &HolderTimeline, at: Instant) -> bool {
    tl.started.is_some_and(|s| at >= s) && tl.time_of(at) <= tl.last_sample
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::holders::Holders;

    /// [`Histories`] over `reads` (`(node, events)`, oldest read first).
    fn histories_agree(reads: &[(String, Vec<Event>)], final_reads: &[String]) -> Vec<String> {
        let mut h = Histories::default();
        for (node, events) in reads {
            h.add(node, events);
        }
        h.finish(final_reads)
    }

    fn greet(origin: Instant, started: u64, at: u64, node: &str) -> Greeting {
        Greeting {
            started: origin + Duration::from_millis(started),
            at: origin + Duration::from_millis(at),
            node: Some(node.into()),
        }
    }

    const IP: &str = "192.0.2.101";

    #[test]
    fn a_handover_is_no_flap_but_back_and_forth_within_the_window_is() {
        let o = Instant::now();
        let ip: IpAddr = IP.parse().unwrap();
        let handover = [
            greet(o, 0, 5, "mx1"),
            greet(o, 20, 26, "mx1"),
            // In flight while the address moved: started before mx2's greeting arrived.
            greet(o, 40, 60, "mx1"),
            greet(o, 45, 50, "mx2"),
            greet(o, 60, 66, "mx2"),
        ];
        assert!(greeting_flaps(ip, &handover, o).is_empty());
        let mut flap = handover.to_vec();
        flap.push(greet(o, 80, 90, "mx1"));
        let found = greeting_flaps(ip, &flap, o);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].text.contains("mx1") && found[0].text.contains("mx2"));
        // The same sequence spread over seconds is a move and a move back.
        let slow = [
            greet(o, 0, 5, "mx1"),
            greet(o, 1_000, 1_005, "mx2"),
            greet(o, 2_000, 2_005, "mx1"),
        ];
        assert!(greeting_flaps(ip, &slow, o).is_empty());
    }

    #[test]
    fn a_flap_is_explained_only_by_owner_changes_to_y_and_back_to_x_in_that_order() {
        let o = Instant::now();
        let ip: IpAddr = IP.parse().unwrap();
        let greetings = [
            greet(o, 1000, 1005, "mx1"),
            greet(o, 1200, 1210, "mx2"),
            greet(o, 1300, 1305, "mx1"),
        ];
        let flaps = greeting_flaps(ip, &greetings, o);
        assert_eq!(flaps.len(), 1);
        let f = &flaps[0];
        let at = |ms: u64| o + Duration::from_millis(ms);
        let owner = |ms: u64, n: &str| (at(ms), n.to_string());
        // Handed to mx2, then back to mx1: two handovers.
        assert!(flap_explained(f, &[owner(1100, "mx2"), owner(1250, "mx1")]));
        // Nothing recorded, only the move to mx2, or the two in the wrong order: two holders.
        assert!(!flap_explained(f, &[]));
        assert!(!flap_explained(f, &[owner(1100, "mx2")]));
        assert!(!flap_explained(
            f,
            &[owner(1100, "mx1"), owner(1250, "mx2")]
        ));
        // A move back recorded after mx1 greeted again does not explain that greeting.
        assert!(!flap_explained(
            f,
            &[owner(1100, "mx2"), owner(1400, "mx1")]
        ));
        // A move to mx2 long before the flap does not explain it either.
        assert!(!flap_explained(f, &[owner(100, "mx2"), owner(1250, "mx1")]));
    }

    fn sample(o: Instant, ms: u64, node: &str, life: u64, epoch: u64) -> StatusSample {
        StatusSample {
            at: o + Duration::from_millis(ms),
            node: node.into(),
            life,
            leader: Some("w1".into()),
            term: 1,
            owners: BTreeMap::from([(format!("{IP}/24"), (Some("mx1".into()), epoch))]),
        }
    }

    #[test]
    fn an_epoch_going_back_within_one_life_is_found_and_a_restart_forgiven() {
        let o = Instant::now();
        let fine = [
            sample(o, 0, "mx1", 0, 3),
            sample(o, 10, "mx1", 0, 4),
            sample(o, 20, "mx2", 0, 2),
            sample(o, 30, "mx1", 1, 1),
        ];
        assert!(epochs_never_go_back(&fine, o).is_empty());
        let back = [sample(o, 0, "mx1", 0, 4), sample(o, 10, "mx1", 0, 3)];
        let found = epochs_never_go_back(&back, o);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("from 4") && found[0].contains("to 3"));
    }

    fn ev(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            at_ms: seq * 10,
            kind,
        }
    }

    fn owner(seq: u64, epoch: u64) -> Event {
        ev(
            seq,
            EventKind::OwnerChanged {
                ip: format!("{IP}/24"),
                from: None,
                to: "mx1".into(),
                epoch,
                reason: clusterd::model::MoveReason::LeaseExpired,
            },
        )
    }

    fn note(seq: u64, text: &str) -> Event {
        ev(
            seq,
            EventKind::Note {
                text: text.into(),
                by: "mx1".into(),
            },
        )
    }

    #[test]
    fn histories_must_agree_stay_contiguous_raise_epochs_and_keep_their_tail() {
        let a = vec![owner(1, 1), note(2, "x"), owner(3, 2)];
        let reads = vec![
            ("mx1".to_string(), a.clone()),
            ("mx2".into(), a[1..].to_vec()),
        ];
        assert!(histories_agree(&reads, &["mx1".into(), "mx2".into()]).is_empty());

        let diverged = vec![
            ("mx1".to_string(), a.clone()),
            ("mx2".into(), vec![note(2, "y")]),
        ];
        assert_eq!(histories_agree(&diverged, &[]).len(), 1);

        let gap = vec![("mx1".to_string(), vec![owner(1, 1), owner(3, 2)])];
        assert_eq!(histories_agree(&gap, &[]).len(), 1);

        let epoch_back = vec![("mx1".to_string(), vec![owner(1, 2), owner(2, 2)])];
        assert_eq!(histories_agree(&epoch_back, &[]).len(), 1);

        let lost_tail = vec![
            ("mx1".to_string(), a.clone()),
            ("mx1".to_string(), a[..2].to_vec()),
        ];
        let found = histories_agree(&lost_tail, &["mx1".into()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("seq 3"));
    }

    fn holders(ip: &str, who: &[&str]) -> Holders {
        let mut h = Holders::new();
        if !who.is_empty() {
            h.insert(
                ip.parse().unwrap(),
                who.iter().map(|w| w.to_string()).collect(),
            );
        }
        h
    }

    #[test]
    fn dns_may_lag_a_lost_holder_by_one_lease_and_no_more() {
        let o = Instant::now();
        let mut tl = HolderTimeline::new("test");
        tl.started = Some(o);
        tl.record(Duration::from_millis(0), holders(IP, &["mx1"]));
        tl.record(Duration::from_millis(1_000), holders(IP, &[]));
        tl.record(Duration::from_millis(5_000), holders(IP, &[]));
        let ip: IpAddr = IP.parse().unwrap();
        let answer = |ms: u64| DnsAnswer {
            at: o + Duration::from_millis(ms),
            server: "mx2".into(),
            addresses: vec![ip],
        };
        let grace = Duration::from_millis(800);
        let all = [(o, o + Duration::from_secs(60))];
        let tls = std::slice::from_ref(&tl);
        let ok = [answer(900), answer(1_700)];
        assert!(dns_matches_holders(&ok, tls, &all, grace).is_empty());
        let stale = [answer(1_900), answer(2_500), answer(4_000)];
        let found = dns_matches_holders(&stale, tls, &all, grace);
        assert_eq!(
            found.len(),
            1,
            "one report per server and address: {found:?}"
        );
        assert!(found[0].contains("mx2") && found[0].contains(IP));
        // During a burst the same answers are measured, not judged.
        let quiet_later = [(o + Duration::from_secs(10), o + Duration::from_secs(20))];
        assert!(dns_matches_holders(&stale, tls, &quiet_later, grace).is_empty());
        let staleness = dns_staleness(&answer(2_500), tls);
        assert_eq!(staleness, vec![(ip, Some(Duration::from_millis(1_500)))]);
        assert_eq!(
            dns_staleness(&answer(500), tls),
            vec![(ip, Some(Duration::ZERO))]
        );
    }
}
