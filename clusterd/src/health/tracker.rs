//! Rise and fall: turning single probe results into service states.
//!
//! A service starts pending. It becomes passing (or warning) after `rise` successes in a row and
//! critical after `fall` failures in a row. Once up, a degraded result switches passing to
//! warning and back at once: degraded signals never move addresses, so they need no damping.
//!
//! A refused connection is decisive: nothing listens, so no second opinion can differ, and the
//! service is critical at once. A slow or wrong answer still needs `fall` failures in a row.
//! While a check is changing state (failures counted but not yet `fall`, or passes counted but
//! not yet `rise`), the next probe comes after the short `fast_interval` rather than the full
//! `interval` ([`Tracker::next_probe`], HAProxy's `fastinter`): a failure is confirmed or
//! cleared within a fraction of a second, without probing more often while all is well.

use std::time::Duration;

use crate::model::Health;

/// What one probe run found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The protocol exchange worked.
    Ok,
    /// It worked, but something is degraded (reason).
    Warning(String),
    /// It failed (reason).
    Critical(String),
    /// Nothing listens: the connection was refused (reason). Decisive: critical at once.
    Refused(String),
}

impl Outcome {
    /// The reason, empty for a clean pass.
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Ok => "",
            Outcome::Warning(r) | Outcome::Critical(r) | Outcome::Refused(r) => r,
        }
    }
}

/// Rise/fall state of one check.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    state: Health,
    successes: u32,
    failures: u32,
}

impl Tracker {
    /// A pending check that needs `rise` passes to come up and `fall` failures to go down
    /// (each at least 1).
    pub fn new(rise: u32, fall: u32) -> Self {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            state: Health::Pending,
            successes: 0,
            failures: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Count one result; the new state if it changed.
    pub fn observe(&mut self, outcome: &Outcome) -> Option<Health> {
        let next = match outcome {
            Outcome::Ok | Outcome::Warning(_) => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                let wanted = if matches!(outcome, Outcome::Ok) {
                    Health::Passing
                } else {
                    Health::Warning
                };
                if self.state.is_up() || self.successes >= self.rise {
                    wanted
                } else {
                    self.state
                }
            }
            Outcome::Critical(_) | Outcome::Refused(_) => {
                self.failures = if matches!(outcome, Outcome::Refused(_)) {
                    self.failures.saturating_add(1).max(self.fall)
                } else {
                    self.failures.saturating_add(1)
                };
                self.successes = 0;
                if self.failures >= self.fall {
                    Health::Critical
                } else {
                    self.state
                }
            }
        };
        if next == self.state {
            None
        } else {
            self.state = next;
            Some(next)
        }
    }

    /// Whether the check is between states: a failure counted while not critical, or a pass
    /// counted while not up.
    fn changing(&self) -> bool {
        (self.failures > 0 && self.state != Health::Critical)
            || (self.successes > 0 && !self.state.is_up())
    }

    /// How long until the next probe: `fast` while the check is between states, else
    /// `interval`.
    pub fn next_probe(&self, interval: Duration, fast: Duration) -> Duration {
        if self.changing() {
            fast.min(interval)
        } else {
            interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Outcome {
        Outcome::Refused("connection refused".into())
    }

    fn crit() -> Outcome {
        Outcome::Critical("refused".into())
    }

    fn warn() -> Outcome {
        Outcome::Warning("queue".into())
    }

    #[test]
    fn starts_pending_and_rises_after_rise_passes() {
        let mut t = Tracker::new(2, 2);
        assert_eq!(t.state(), Health::Pending);
        assert_eq!(t.observe(&Outcome::Ok), None);
        assert_eq!(t.observe(&Outcome::Ok), Some(Health::Passing));
        assert_eq!(t.observe(&Outcome::Ok), None);
    }

    #[test]
    fn falls_only_after_fall_failures_in_a_row() {
        let mut t = Tracker::new(1, 3);
        t.observe(&Outcome::Ok);
        assert_eq!(t.observe(&crit()), None);
        assert_eq!(t.observe(&crit()), None);
        assert_eq!(
            t.observe(&Outcome::Ok),
            None,
            "a pass resets the failure count"
        );
        assert_eq!(t.observe(&crit()), None);
        assert_eq!(t.observe(&crit()), None);
        assert_eq!(t.observe(&crit()), Some(Health::Critical));
        assert_eq!(t.observe(&crit()), None);
    }

    #[test]
    fn a_critical_service_needs_rise_passes_in_a_row_to_come_back() {
        let mut t = Tracker::new(3, 1);
        t.observe(&crit());
        assert_eq!(t.state(), Health::Critical);
        t.observe(&Outcome::Ok);
        t.observe(&Outcome::Ok);
        assert_eq!(t.observe(&crit()), None);
        t.observe(&Outcome::Ok);
        t.observe(&Outcome::Ok);
        assert_eq!(t.observe(&Outcome::Ok), Some(Health::Passing));
    }

    #[test]
    fn a_pending_service_that_fails_becomes_critical_after_fall() {
        let mut t = Tracker::new(2, 2);
        assert_eq!(t.observe(&crit()), None);
        assert_eq!(t.observe(&crit()), Some(Health::Critical));
    }

    #[test]
    fn degraded_results_count_as_passes_and_switch_at_once_once_up() {
        let mut t = Tracker::new(2, 2);
        assert_eq!(t.observe(&warn()), None);
        assert_eq!(t.observe(&warn()), Some(Health::Warning));
        assert_eq!(t.observe(&Outcome::Ok), Some(Health::Passing));
        assert_eq!(t.observe(&warn()), Some(Health::Warning));
        assert_eq!(t.observe(&crit()), None);
        assert_eq!(t.observe(&crit()), Some(Health::Critical));
    }

    #[test]
    fn rise_and_fall_of_zero_act_as_one() {
        let mut t = Tracker::new(0, 0);
        assert_eq!(t.observe(&Outcome::Ok), Some(Health::Passing));
        assert_eq!(t.observe(&crit()), Some(Health::Critical));
    }

    #[test]
    fn a_refused_connection_is_critical_at_once_whatever_fall() {
        for fall in [1, 2, 5] {
            let mut t = Tracker::new(1, fall);
            t.observe(&Outcome::Ok);
            assert_eq!(t.observe(&refused()), Some(Health::Critical), "fall {fall}");
        }
        let mut pending = Tracker::new(2, 3);
        assert_eq!(pending.observe(&refused()), Some(Health::Critical));
        let mut warning = Tracker::new(1, 3);
        warning.observe(&warn());
        assert_eq!(warning.observe(&refused()), Some(Health::Critical));
    }

    #[test]
    fn a_single_slow_answer_moves_nothing_even_probed_fast() {
        let mut t = Tracker::new(2, 2);
        t.observe(&Outcome::Ok);
        t.observe(&Outcome::Ok);
        assert_eq!(t.observe(&crit()), None);
        assert_eq!(t.observe(&Outcome::Ok), None);
        assert_eq!(t.state(), Health::Passing);
    }

    #[test]
    fn probes_come_fast_only_while_the_state_is_changing() {
        let (every, fast) = (Duration::from_secs(1), Duration::from_millis(100));
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.next_probe(every, fast), every, "pending, nothing counted");
        t.observe(&Outcome::Ok);
        assert_eq!(t.next_probe(every, fast), fast, "rising");
        t.observe(&Outcome::Ok);
        assert_eq!(t.next_probe(every, fast), every, "up and steady");
        t.observe(&crit());
        assert_eq!(
            t.next_probe(every, fast),
            fast,
            "one failure: confirm it fast"
        );
        t.observe(&crit());
        assert_eq!(t.next_probe(every, fast), fast);
        t.observe(&crit());
        assert_eq!(t.state(), Health::Critical);
        assert_eq!(t.next_probe(every, fast), every, "down and steady");
        t.observe(&Outcome::Ok);
        assert_eq!(t.next_probe(every, fast), fast, "coming back");
        t.observe(&crit());
        assert_eq!(t.next_probe(every, fast), every, "back to steady down");
        assert_eq!(
            t.next_probe(every, Duration::from_secs(5)),
            every,
            "fast is never slower than the interval"
        );
    }
}
