//! Replicated service health: what each mail node's probes last decided about each service.
//!
//! Nodes probe their own dovecot and postfix and propose only transitions (see
//! `crate::health`); this module keeps the result in the cluster state and answers the
//! planner's and DNS's questions: does a node pass the services an address needs, is it
//! failing one, and has it passed long enough since its last failure to be trusted again
//! (hold-down against flapping).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Applied, EventKind, Refusal, Role, State};

/// Health of one service on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not decided yet: the node (re)started and its probes have not risen or fallen.
    Pending,
    /// The service answers correctly.
    Passing,
    /// The service answers but something is degraded (queue depth, test login, certificate
    /// expiry, plugin WARNING). Counts as passing for placement and DNS; reported and alerted.
    Warning,
    /// The service fails. Addresses that need it leave the node.
    Critical,
}

impl Health {
    /// Whether the service counts as serving (passing or warning).
    pub fn is_up(self) -> bool {
        matches!(self, Health::Passing | Health::Warning)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Pending => "pending",
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        })
    }
}

/// The replicated health of one service on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// Current state.
    pub health: Health,
    /// When it entered this state (unix ms, the node's clock).
    pub since_ms: u64,
    /// Why, in the probe's words (empty when passing without remarks).
    pub reason: String,
    /// Latency of the probe that caused the transition (ms).
    pub latency_ms: Option<u64>,
    /// When the service last went from not up to up (unix ms); the hold-down counts from here.
    pub up_since_ms: Option<u64>,
    /// When the service last became critical (unix ms); `None` if it never failed.
    pub failed_ms: Option<u64>,
}

/// One health transition as a node proposes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The reporting node.
    pub node: String,
    /// Check name (`[checks.NAME]`).
    pub check: String,
    /// The new state.
    pub health: Health,
    /// Why.
    pub reason: String,
    /// Latency of the deciding probe (ms).
    pub latency_ms: Option<u64>,
    /// When it was decided (unix ms, the node's clock).
    pub at_ms: u64,
}

impl State {
    /// The replicated health of `check` on `node`, if it ever reported.
    pub fn health_of(&self, node: &str, check: &str) -> Option<&ServiceHealth> {
        self.health.get(node).and_then(|m| m.get(check))
    }

    /// Whether `check` is up (passing or warning) on `node`.
    pub fn check_up(&self, node: &str, check: &str) -> bool {
        self.health_of(node, check)
            .is_some_and(|h| h.health.is_up())
    }

    /// The services of `services` that are critical on `node`.
    pub fn failing<'a>(&self, node: &str, services: &'a [String]) -> Vec<&'a str> {
        services
            .iter()
            .filter(|c| {
                self.health_of(node, c)
                    .is_some_and(|h| h.health == Health::Critical)
            })
            .map(String::as_str)
            .collect()
    }

    /// Whether `node` may be chosen for an address needing `services` at `now_ms`: every one is
    /// up, and every one that ever failed there has been up for at least `hold_down_ms`.
    pub fn eligible(
        &self,
        node: &str,
        services: &[String],
        now_ms: u64,
        hold_down_ms: u64,
    ) -> bool {
        services.iter().all(|c| {
            self.health_of(node, c).is_some_and(|h| {
                h.health.is_up()
                    && (h.failed_ms.is_none()
                        || h.up_since_ms
                            .is_some_and(|up| now_ms.saturating_sub(up) >= hold_down_ms))
            })
        })
    }

    /// A node (re)started its probes: every check in `checks` is pending until it rises or falls
    /// again; checks it no longer runs are forgotten. Failure times survive, so a node that
    /// restarts after failing still serves out its hold-down.
    pub(super) fn reset_health(&mut self, node: &str, checks: &[String], at_ms: u64) -> Applied {
        if self.members.get(node).is_none_or(|m| m.role != Role::Mail) {
            return Applied::refused(Refusal::RunsNoChecks {
                node: node.to_string(),
            });
        }
        let old = self.health.remove(node).unwrap_or_default();
        let mut next = BTreeMap::new();
        let mut changed = old.keys().any(|c| !checks.contains(c));
        for check in checks {
            let prev = old.get(check);
            if prev.is_some_and(|p| p.health.is_up()) {
                self.revision += 1;
            }
            if prev.is_none_or(|p| p.health != Health::Pending) {
                changed = true;
            }
            next.insert(
                check.clone(),
                ServiceHealth {
                    health: Health::Pending,
                    since_ms: prev
                        .filter(|p| p.health == Health::Pending)
                        .map_or(at_ms, |p| p.since_ms),
                    reason: "probes starting".to_string(),
                    latency_ms: None,
                    up_since_ms: None,
                    failed_ms: prev.and_then(|p| p.failed_ms),
                },
            );
        }
        self.health.insert(node.to_string(), next);
        if changed {
            self.push_event(
                at_ms,
                EventKind::HealthReset {
                    node: node.to_string(),
                    checks: checks.to_vec(),
                },
            );
        }
        Applied::changed(changed)
    }

    /// Record one transition reported by a node.
    pub(super) fn report_health(&mut self, r: &HealthReport) -> Applied {
        if self
            .members
            .get(&r.node)
            .is_none_or(|m| m.role != Role::Mail)
        {
            return Applied::refused(Refusal::RunsNoChecks {
                node: r.node.clone(),
            });
        }
        let checks = self.health.entry(r.node.clone()).or_default();
        let prev = checks.get(&r.check).cloned();
        if prev
            .as_ref()
            .is_some_and(|p| p.health == r.health && p.reason == r.reason)
        {
            return Applied::changed(false);
        }
        let was_up = prev.as_ref().is_some_and(|p| p.health.is_up());
        let up_since_ms = match (was_up, r.health.is_up()) {
            (true, true) => prev.as_ref().and_then(|p| p.up_since_ms),
            (false, true) => Some(r.at_ms),
            (_, false) => None,
        };
        let failed_ms = if r.health == Health::Critical {
            Some(r.at_ms)
        } else {
            prev.as_ref().and_then(|p| p.failed_ms)
        };
        let since_ms = match &prev {
            Some(p) if p.health == r.health => p.since_ms,
            _ => r.at_ms,
        };
        checks.insert(
            r.check.clone(),
            ServiceHealth {
                health: r.health,
                since_ms,
                reason: r.reason.clone(),
                latency_ms: r.latency_ms,
                up_since_ms,
                failed_ms,
            },
        );
        if was_up != r.health.is_up() {
            self.revision += 1;
        }
        self.push_event(
            r.at_ms,
            EventKind::HealthChanged {
                node: r.node.clone(),
                check: r.check.clone(),
                from: prev.map(|p| p.health),
                to: r.health,
                reason: r.reason.clone(),
            },
        );
        Applied::changed(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Command, test_state};

    fn state() -> State {
        test_state(&["mx1", "mx2"], &["w1"])
    }

    fn report(s: &mut State, node: &str, check: &str, health: Health, at_ms: u64) -> Applied {
        s.apply(&Command::Health(HealthReport {
            node: node.into(),
            check: check.into(),
            health,
            reason: format!("{health} at {at_ms}"),
            latency_ms: Some(3),
            at_ms,
        }))
    }

    fn svc(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_that_never_reported_passes_nothing_but_an_address_without_services() {
        let s = state();
        assert!(!s.check_up("mx1", "imap"));
        assert!(s.eligible("mx1", &[], 0, 1000));
        assert!(s.failing("mx1", &svc(&["imap"])).is_empty());
    }

    #[test]
    fn warning_counts_as_up_and_critical_as_failing() {
        let mut s = state();
        report(&mut s, "mx1", "imap", Health::Warning, 10);
        report(&mut s, "mx1", "smtp", Health::Critical, 10);
        assert!(s.check_up("mx1", "imap"));
        assert!(!s.check_up("mx1", "smtp"));
        assert_eq!(s.failing("mx1", &svc(&["imap", "smtp"])), vec!["smtp"]);
    }

    #[test]
    fn pending_is_neither_up_nor_failing() {
        let mut s = state();
        s.apply(&Command::HealthReset {
            node: "mx1".into(),
            checks: svc(&["imap"]),
            at_ms: 5,
        });
        assert_eq!(s.health_of("mx1", "imap").unwrap().health, Health::Pending);
        assert!(!s.check_up("mx1", "imap"));
        assert!(s.failing("mx1", &svc(&["imap"])).is_empty());
    }

    #[test]
    fn a_service_that_never_failed_is_eligible_at_once() {
        let mut s = state();
        report(&mut s, "mx1", "imap", Health::Passing, 100);
        assert!(s.eligible("mx1", &svc(&["imap"]), 100, 30_000));
    }

    #[test]
    fn after_a_failure_the_hold_down_counts_from_when_it_came_back() {
        let mut s = state();
        report(&mut s, "mx1", "imap", Health::Passing, 100);
        report(&mut s, "mx1", "imap", Health::Critical, 200);
        assert!(!s.eligible("mx1", &svc(&["imap"]), 200, 1000));
        report(&mut s, "mx1", "imap", Health::Passing, 300);
        assert!(!s.eligible("mx1", &svc(&["imap"]), 1299, 1000));
        assert!(s.eligible("mx1", &svc(&["imap"]), 1300, 1000));
        // Passing -> warning is not a new start of being up.
        report(&mut s, "mx1", "imap", Health::Warning, 1400);
        assert_eq!(s.health_of("mx1", "imap").unwrap().up_since_ms, Some(300));
    }

    #[test]
    fn a_restart_keeps_the_failure_time_so_the_hold_down_survives_it() {
        let mut s = state();
        report(&mut s, "mx1", "imap", Health::Critical, 200);
        s.apply(&Command::HealthReset {
            node: "mx1".into(),
            checks: svc(&["imap"]),
            at_ms: 250,
        });
        report(&mut s, "mx1", "imap", Health::Passing, 300);
        let h = s.health_of("mx1", "imap").unwrap();
        assert_eq!(h.failed_ms, Some(200));
        assert!(!s.eligible("mx1", &svc(&["imap"]), 400, 1000));
    }

    #[test]
    fn reset_forgets_checks_no_longer_run_and_makes_the_rest_pending() {
        let mut s = state();
        report(&mut s, "mx1", "imap", Health::Passing, 100);
        report(&mut s, "mx1", "pop3", Health::Passing, 100);
        let rev = s.revision;
        let a = s.apply(&Command::HealthReset {
            node: "mx1".into(),
            checks: svc(&["imap"]),
            at_ms: 200,
        });
        assert!(a.changed);
        assert!(s.health_of("mx1", "pop3").is_none());
        assert_eq!(s.health_of("mx1", "imap").unwrap().health, Health::Pending);
        assert!(
            s.revision > rev,
            "DNS answers change when imap stops counting as up"
        );
        // The same reset again changes nothing and writes no event.
        let events = s.events.len();
        let a = s.apply(&Command::HealthReset {
            node: "mx1".into(),
            checks: svc(&["imap"]),
            at_ms: 300,
        });
        assert!(!a.changed);
        assert_eq!(s.events.len(), events);
    }

    #[test]
    fn transitions_are_recorded_in_history_and_repeats_are_ignored() {
        let mut s = state();
        assert!(report(&mut s, "mx1", "imap", Health::Passing, 100).changed);
        let events = s.events.len();
        let same = s.apply(&Command::Health(HealthReport {
            node: "mx1".into(),
            check: "imap".into(),
            health: Health::Passing,
            reason: "passing at 100".into(),
            latency_ms: Some(9),
            at_ms: 150,
        }));
        assert!(!same.changed);
        assert_eq!(s.events.len(), events);
        report(&mut s, "mx1", "imap", Health::Critical, 200);
        let last = s.events.back().unwrap();
        assert_eq!(
            last.kind,
            EventKind::HealthChanged {
                node: "mx1".into(),
                check: "imap".into(),
                from: Some(Health::Passing),
                to: Health::Critical,
                reason: "critical at 200".into(),
            }
        );
        assert_eq!(s.health_of("mx1", "imap").unwrap().since_ms, 200);
    }

    #[test]
    fn the_revision_moves_only_when_up_ness_changes() {
        let mut s = state();
        let r0 = s.revision;
        report(&mut s, "mx1", "imap", Health::Passing, 100);
        let r1 = s.revision;
        assert!(r1 > r0);
        report(&mut s, "mx1", "imap", Health::Warning, 200);
        assert_eq!(s.revision, r1);
        report(&mut s, "mx1", "imap", Health::Critical, 300);
        assert!(s.revision > r1);
    }

    #[test]
    fn witnesses_and_strangers_cannot_report_health() {
        let mut s = state();
        assert!(
            report(&mut s, "w1", "imap", Health::Passing, 1)
                .refused
                .is_some()
        );
        assert!(
            report(&mut s, "mx9", "imap", Health::Passing, 1)
                .refused
                .is_some()
        );
        let r = s.apply(&Command::HealthReset {
            node: "w1".into(),
            checks: svc(&["imap"]),
            at_ms: 1,
        });
        assert!(r.refused.is_some());
        assert!(s.health.is_empty());
    }
}
