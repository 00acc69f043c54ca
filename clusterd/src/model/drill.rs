//! Failover drills in the replicated state: which node is pretending to fail, and how.
//!
//! A node drill makes the node stop renewing its address lease (it keeps running and voting), so
//! its addresses take the real failure path: the node drops them when its lease runs out and the
//! leader reassigns them once that lease has surely ended. A service drill makes the node's probe
//! of one check report critical, so the address moves the way a real service failure moves it.
//! Fencing never fires for a drilled node: it gave its lease up on purpose and is alive.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Applied, EventKind, Refusal, Role, State};

/// What a drill simulates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DrillKind {
    /// The node fails for its addresses (stops renewing its lease).
    Node,
    /// One of the node's services fails (its check reports critical).
    Service {
        /// Check name.
        check: String,
    },
}

impl fmt::Display for DrillKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrillKind::Node => f.write_str("node failure"),
            DrillKind::Service { check } => write!(f, "{check} failure"),
        }
    }
}

/// A running drill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drill {
    /// What it simulates.
    pub kind: DrillKind,
    /// Who started it.
    pub by: String,
    /// When (unix ms).
    pub started_ms: u64,
}

impl State {
    /// The drill running on `node`, if any.
    pub fn drill_of(&self, node: &str) -> Option<&Drill> {
        self.drills.get(node)
    }

    /// Whether `node` is pretending to have failed as a whole.
    pub fn node_drilled(&self, node: &str) -> bool {
        self.drill_of(node)
            .is_some_and(|d| d.kind == DrillKind::Node)
    }

    /// Whether `node` is pretending that `check` fails.
    pub fn service_drilled(&self, node: &str, check: &str) -> bool {
        self.drill_of(node)
            .is_some_and(|d| matches!(&d.kind, DrillKind::Service { check: c } if c == check))
    }

    pub(super) fn start_drill(
        &mut self,
        node: &str,
        kind: &DrillKind,
        by: &str,
        at_ms: u64,
    ) -> Applied {
        if self.members.get(node).is_none_or(|m| m.role != Role::Mail) {
            return Applied::refused(Refusal::NoDrillOn {
                node: node.to_string(),
            });
        }
        if let Some((other, d)) = self.drills.iter().next() {
            return Applied::refused(Refusal::DrillRunning {
                node: other.clone(),
                kind: d.kind.to_string(),
                since_ms: d.started_ms,
            });
        }
        self.drills.insert(
            node.to_string(),
            Drill {
                kind: kind.clone(),
                by: by.to_string(),
                started_ms: at_ms,
            },
        );
        self.push_event(
            at_ms,
            EventKind::DrillStarted {
                node: node.to_string(),
                kind: kind.clone(),
                by: by.to_string(),
            },
        );
        Applied::changed(true)
    }

    pub(super) fn end_drill(&mut self, node: &str, by: &str, at_ms: u64) -> Applied {
        if self.drills.remove(node).is_none() {
            return Applied::changed(false);
        }
        self.push_event(
            at_ms,
            EventKind::DrillEnded {
                node: node.to_string(),
                by: by.to_string(),
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

    fn start(s: &mut State, node: &str, kind: DrillKind) -> Applied {
        s.apply(&Command::StartDrill {
            node: node.into(),
            kind,
            by: "clusterctl".into(),
            at_ms: 5,
        })
    }

    #[test]
    fn a_node_drill_is_recorded_and_ended() {
        let mut s = state();
        assert!(start(&mut s, "mx1", DrillKind::Node).changed);
        assert!(s.node_drilled("mx1"));
        assert!(!s.service_drilled("mx1", "imap"));
        assert!(matches!(
            s.events.back().map(|e| &e.kind),
            Some(EventKind::DrillStarted { node, .. }) if node == "mx1"
        ));
        let end = Command::EndDrill {
            node: "mx1".into(),
            by: "clusterctl".into(),
            at_ms: 9,
        };
        assert!(s.apply(&end).changed);
        assert!(!s.node_drilled("mx1"));
        assert!(!s.apply(&end).changed, "ending twice changes nothing");
    }

    #[test]
    fn a_service_drill_names_its_check() {
        let mut s = state();
        start(
            &mut s,
            "mx2",
            DrillKind::Service {
                check: "imap".into(),
            },
        );
        assert!(s.service_drilled("mx2", "imap"));
        assert!(!s.service_drilled("mx2", "smtp"));
        assert!(!s.node_drilled("mx2"));
    }

    #[test]
    fn one_drill_at_a_time_and_only_on_mail_nodes() {
        let mut s = state();
        assert!(start(&mut s, "w1", DrillKind::Node).refused.is_some());
        assert!(start(&mut s, "mx9", DrillKind::Node).refused.is_some());
        assert!(start(&mut s, "mx1", DrillKind::Node).refused.is_none());
        let again = start(&mut s, "mx2", DrillKind::Node);
        assert!(
            matches!(&again.refused, Some(Refusal::DrillRunning { node, .. }) if node == "mx1"),
            "{again:?}"
        );
    }
}
