//! Rise and fall: turning single probe results into service states.
//!
//! A service starts pending. It becomes passing (or warning) after `rise` successes in a row and
//! critical after `fall` failures in a row. Once up, a degraded result switches passing to
//! warning and back at once: degraded signals never move addresses, so they need no damping.

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
}

impl Outcome {
    /// The reason, empty for a clean pass.
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Ok => "",
            Outcome::Warning(r) | Outcome::Critical(r) => r,
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
            Outcome::Critical(_) => {
                self.failures = self.failures.saturating_add(1);
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
