//! A timeline of "who holds which address", shared by both monitors, and the check the safety
//! invariant needs: at no sample did one address have two holders.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Holders of each address at one instant (addresses with no holder are absent).
pub type Holders = BTreeMap<IpAddr, BTreeSet<String>>;

/// One address held by more than one node for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The address.
    pub ip: IpAddr,
    /// Who held it at once.
    pub holders: BTreeSet<String>,
    /// First sample that saw it, since the monitor started.
    pub from: Duration,
    /// First later sample that no longer saw it (`None`: still duplicated at the end).
    pub until: Option<Duration>,
}

/// What a monitor saw: the holder map at every change, plus sampling statistics that prove the
/// monitor was not blind (sample count, longest gap between two samples).
#[derive(Debug, Clone, Default)]
pub struct HolderTimeline {
    /// Which monitor produced this (`addresses`, `arp`).
    pub source: String,
    /// `(time since start, holders)` whenever the map changed.
    pub changes: Vec<(Duration, Holders)>,
    /// Number of samples taken.
    pub samples: u64,
    /// Longest time between two consecutive samples.
    pub max_gap: Duration,
    /// Time of the last sample.
    pub last_sample: Duration,
    /// Errors while sampling (e.g. a namespace that vanished), with time; kept, not fatal.
    pub errors: Vec<(Duration, String)>,
    /// What the monitor adds to explain what it saw (e.g. the events before an overlap).
    pub notes: Vec<(Duration, String)>,
    /// When the monitor started: the origin of every time in this timeline.
    pub started: Option<Instant>,
}

impl HolderTimeline {
    /// An empty timeline for `source`.
    pub fn new(source: &str) -> HolderTimeline {
        HolderTimeline {
            source: source.to_owned(),
            ..HolderTimeline::default()
        }
    }

    /// Record a sample taken at `at`.
    pub fn record(&mut self, at: Duration, holders: Holders) {
        if self.samples > 0 {
            self.max_gap = self.max_gap.max(at.saturating_sub(self.last_sample));
        }
        self.samples += 1;
        self.last_sample = at;
        if self.changes.last().map(|(_, h)| h) != Some(&holders) {
            self.changes.push((at, holders));
        }
    }

    /// An instant as a time on this timeline (zero for instants before it started).
    pub fn time_of(&self, instant: Instant) -> Duration {
        self.started
            .map_or(Duration::ZERO, |s| instant.saturating_duration_since(s))
    }

    /// Whether `node` held `ip` at any sample from `from` on.
    pub fn held_by_since(&self, ip: IpAddr, node: &str, from: Duration) -> bool {
        let holds = |h: &Holders| h.get(&ip).is_some_and(|w| w.contains(node));
        holds(&self.holders_at(from)) || self.changes.iter().any(|(at, h)| *at > from && holds(h))
    }

    /// Holders at time `t` (the last change at or before `t`).
    pub fn holders_at(&self, t: Duration) -> Holders {
        self.changes
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, h)| h.clone())
            .unwrap_or_default()
    }

    /// Every stretch during which an address had two or more holders.
    pub fn duplicates(&self) -> Vec<Duplicate> {
        let mut open: BTreeMap<IpAddr, Duplicate> = BTreeMap::new();
        let mut done = Vec::new();
        for (at, holders) in &self.changes {
            for (ip, who) in holders.iter().filter(|(_, w)| w.len() > 1) {
                match open.get_mut(ip) {
                    Some(d) if d.holders == *who => {}
                    _ => {
                        if let Some(mut d) = open.remove(ip) {
                            d.until = Some(*at);
                            done.push(d);
                        }
                        open.insert(
                            *ip,
                            Duplicate {
                                ip: *ip,
                                holders: who.clone(),
                                from: *at,
                                until: None,
                            },
                        );
                    }
                }
            }
            let ended: Vec<IpAddr> = open
                .keys()
                .filter(|ip| holders.get(ip).is_none_or(|w| w.len() < 2))
                .copied()
                .collect();
            for ip in ended {
                if let Some(mut d) = open.remove(&ip) {
                    d.until = Some(*at);
                    done.push(d);
                }
            }
        }
        done.extend(open.into_values());
        done.sort_by_key(|d| d.from);
        done
    }

    /// `Ok` if no address ever had two holders; otherwise a report saying when and who.
    pub fn assert_single_holder(&self) -> Result<(), String> {
        let dups = self.duplicates();
        if dups.is_empty() {
            return Ok(());
        }
        let mut s = format!(
            "{} monitor saw {} duplicate address holding(s):\n",
            self.source,
            dups.len()
        );
        for d in &dups {
            let _ = writeln!(
                s,
                "  {} held by {:?} from {:?} until {}",
                d.ip,
                d.holders,
                d.from,
                d.until
                    .map_or("the end of monitoring".to_owned(), |u| format!("{u:?}"))
            );
        }
        s.push_str(&self.report());
        Err(s)
    }

    /// The timeline as text, one change per line.
    pub fn report(&self) -> String {
        let mut s = format!(
            "{} timeline ({} samples, longest gap {:?}):\n",
            self.source, self.samples, self.max_gap
        );
        for (at, holders) in &self.changes {
            let list: Vec<String> = holders
                .iter()
                .map(|(ip, who)| {
                    format!("{ip}={}", who.iter().cloned().collect::<Vec<_>>().join("+"))
                })
                .collect();
            let _ = writeln!(s, "  {at:>12?}  {}", list.join(" "));
        }
        for (at, e) in &self.errors {
            let _ = writeln!(s, "  {at:>12?}  error: {e}");
        }
        for (at, n) in &self.notes {
            let _ = writeln!(s, "  {at:>12?}  note: {n}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &[&str])]) -> Holders {
        pairs
            .iter()
            .map(|(ip, who)| {
                (
                    ip.parse().unwrap(),
                    who.iter().map(|w| w.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_clean_handover_is_not_a_duplicate() {
        let mut t = HolderTimeline::new("test");
        t.record(Duration::from_millis(0), h(&[("192.0.2.101", &["mx1"])]));
        t.record(Duration::from_millis(10), h(&[]));
        t.record(Duration::from_millis(20), h(&[("192.0.2.101", &["mx2"])]));
        assert!(t.assert_single_holder().is_ok());
        assert_eq!(t.changes.len(), 3);
        assert_eq!(t.max_gap, Duration::from_millis(10));
    }

    #[test]
    fn holding_since_a_time_counts_the_state_at_that_time_and_every_later_change() {
        let mut t = HolderTimeline::new("test");
        let ip: IpAddr = "2001:db8::101".parse().unwrap();
        t.record(Duration::from_millis(0), h(&[("2001:db8::101", &["mx1"])]));
        t.record(Duration::from_millis(10), h(&[("2001:db8::101", &["mx2"])]));
        t.record(Duration::from_millis(20), h(&[]));
        assert!(t.held_by_since(ip, "mx1", Duration::from_millis(5)));
        assert!(!t.held_by_since(ip, "mx1", Duration::from_millis(10)));
        assert!(t.held_by_since(ip, "mx2", Duration::from_millis(15)));
        assert!(!t.held_by_since(ip, "mx2", Duration::from_millis(20)));
    }

    #[test]
    fn two_holders_at_once_are_reported_with_when_and_who() {
        let mut t = HolderTimeline::new("test");
        t.record(Duration::from_millis(0), h(&[("192.0.2.101", &["mx1"])]));
        t.record(
            Duration::from_millis(10),
            h(&[("192.0.2.101", &["mx1", "mx2"])]),
        );
        t.record(
            Duration::from_millis(20),
            h(&[("192.0.2.101", &["mx1", "mx2"])]),
        );
        t.record(Duration::from_millis(30), h(&[("192.0.2.101", &["mx2"])]));
        let d = t.duplicates();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].from, Duration::from_millis(10));
        assert_eq!(d[0].until, Some(Duration::from_millis(30)));
        let err = t.assert_single_holder().unwrap_err();
        assert!(err.contains("mx1") && err.contains("mx2") && err.contains("192.0.2.101"));
    }
}
