//! Fencing in the replicated model: the leader records that it starts a fence *before* it runs
//! the agent (if that cannot commit, the leader has no quorum and does not fence), then the
//! agent's reply or error. Every replica therefore shows the same fencing state, which
//! `clusterctl status` reports, and the history keeps the order: a node's fence is recorded
//! before any takeover of its addresses that needed it.

use serde::{Deserialize, Serialize};

use super::{Applied, Command, EventKind, Refusal, State};

/// Where a node's latest fence stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceProgress {
    /// The agent is running.
    Started,
    /// The agent confirmed the node off.
    Fenced,
    /// The agent failed; the leader retries, and the node's addresses stay where they are.
    Failed,
}

impl std::fmt::Display for FenceProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FenceProgress::Started => "fencing",
            FenceProgress::Fenced => "fenced",
            FenceProgress::Failed => "FENCE FAILED",
        })
    }
}

/// A node's latest fence, as every replica knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// Where it stands.
    pub progress: FenceProgress,
    /// The agent and its target (no secrets).
    pub agent: String,
    /// Attempt number since the node last held a lease (1 for the first).
    pub attempt: u32,
    /// Who started it: the leader on its own, or an operator through a node.
    pub by: String,
    /// When the current attempt started (unix ms, leader's clock).
    pub started_ms: u64,
    /// When it reached its current progress (unix ms).
    pub since_ms: u64,
    /// The agent's reply (fenced) or the error (failed); empty while running.
    pub detail: String,
    /// After a failure: when the leader tries again, in ms from `since_ms`.
    pub retry_in_ms: Option<u64>,
}

impl State {
    /// Apply one of the fencing commands (the others are not handled here).
    pub(super) fn apply_fence(&mut self, cmd: &Command) -> Applied {
        match cmd {
            Command::FenceStarted {
                node,
                agent,
                attempt,
                by,
                at_ms,
            } => {
                if !self.members.contains_key(node) {
                    return Applied::refused(Refusal::NotAMember { node: node.clone() });
                }
                self.fencing.insert(
                    node.clone(),
                    FenceRecord {
                        progress: FenceProgress::Started,
                        agent: agent.clone(),
                        attempt: *attempt,
                        by: by.clone(),
                        started_ms: *at_ms,
                        since_ms: *at_ms,
                        detail: String::new(),
                        retry_in_ms: None,
                    },
                );
                self.push_event(
                    *at_ms,
                    EventKind::FenceStarted {
                        node: node.clone(),
                        agent: agent.clone(),
                        attempt: *attempt,
                        by: by.clone(),
                    },
                );
                Applied::changed(true)
            }
            Command::FenceSucceeded { node, reply, at_ms } => {
                let Some(r) = self.started(node) else {
                    return not_started(node);
                };
                r.progress = FenceProgress::Fenced;
                r.since_ms = *at_ms;
                r.detail = reply.clone();
                let event = EventKind::Fenced {
                    node: node.clone(),
                    agent: r.agent.clone(),
                    reply: reply.clone(),
                    took_ms: at_ms.saturating_sub(r.started_ms),
                };
                self.push_event(*at_ms, event);
                Applied::changed(true)
            }
            Command::FenceFailed {
                node,
                error,
                retry_in_ms,
                at_ms,
            } => {
                let Some(r) = self.started(node) else {
                    return not_started(node);
                };
                r.progress = FenceProgress::Failed;
                r.since_ms = *at_ms;
                r.detail = error.clone();
                r.retry_in_ms = Some(*retry_in_ms);
                let event = EventKind::FenceFailed {
                    node: node.clone(),
                    agent: r.agent.clone(),
                    attempt: r.attempt,
                    error: error.clone(),
                    retry_in_ms: *retry_in_ms,
                };
                self.push_event(*at_ms, event);
                Applied::changed(true)
            }
            Command::FenceCleared {
                node,
                reason,
                at_ms,
            } => {
                if self.fencing.remove(node).is_none() {
                    return Applied::changed(false);
                }
                self.push_event(
                    *at_ms,
                    EventKind::FenceCleared {
                        node: node.clone(),
                        reason: reason.clone(),
                    },
                );
                Applied::changed(true)
            }
            _ => Applied::refused(Refusal::NotFencing),
        }
    }

    fn started(&mut self, node: &str) -> Option<&mut FenceRecord> {
        self.fencing
            .get_mut(node)
            .filter(|r| r.progress == FenceProgress::Started)
    }

    /// Addresses owned by `node`: what a fence of it would free.
    pub fn owned_by(&self, node: &str) -> Vec<String> {
        self.addresses
            .values()
            .filter(|a| a.owner.as_deref() == Some(node))
            .map(|a| a.spec.ip.clone())
            .collect()
    }
}

fn not_started(node: &str) -> Applied {
    Applied::refused(Refusal::NoFence {
        node: node.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        crate::model::test_state(&["mx2"], &[])
    }

    fn start(s: &mut State, at_ms: u64) -> Applied {
        s.apply(&Command::FenceStarted {
            node: "mx2".into(),
            agent: "redfish https://192.0.2.232".into(),
            attempt: 1,
            by: "leader mx1".into(),
            at_ms,
        })
    }

    #[test]
    fn a_fence_is_recorded_from_start_to_reply() {
        let mut s = state();
        assert!(start(&mut s, 100).changed);
        assert_eq!(s.fencing["mx2"].progress, FenceProgress::Started);
        let r = s.apply(&Command::FenceSucceeded {
            node: "mx2".into(),
            reply: "PowerState Off".into(),
            at_ms: 1600,
        });
        assert!(r.changed, "{r:?}");
        let rec = &s.fencing["mx2"];
        assert_eq!(rec.progress, FenceProgress::Fenced);
        assert_eq!(rec.detail, "PowerState Off");
        let kinds: Vec<String> = s.events.iter().map(|e| e.kind.to_string()).collect();
        assert_eq!(
            kinds,
            vec![
                "fencing mx2 with redfish https://192.0.2.232 (attempt 1, by leader mx1)",
                "mx2 fenced by redfish https://192.0.2.232 in 1500 ms: PowerState Off",
            ]
        );
    }

    #[test]
    fn a_failure_is_recorded_with_its_retry() {
        let mut s = state();
        start(&mut s, 100);
        s.apply(&Command::FenceFailed {
            node: "mx2".into(),
            error: "HTTP 500".into(),
            retry_in_ms: 2000,
            at_ms: 300,
        });
        let rec = &s.fencing["mx2"];
        assert_eq!(rec.progress, FenceProgress::Failed);
        assert_eq!(rec.retry_in_ms, Some(2000));
        assert!(
            s.events.back().unwrap().kind.to_string().contains("FAILED"),
            "{}",
            s.events.back().unwrap().kind
        );
    }

    #[test]
    fn a_reply_without_a_recorded_start_is_refused() {
        let mut s = state();
        let r = s.apply(&Command::FenceSucceeded {
            node: "mx2".into(),
            reply: "off".into(),
            at_ms: 1,
        });
        assert_eq!(r.refused, Some(Refusal::NoFence { node: "mx2".into() }));
        start(&mut s, 2);
        s.apply(&Command::FenceSucceeded {
            node: "mx2".into(),
            reply: "off".into(),
            at_ms: 3,
        });
        // A second reply to the same start changes nothing.
        let r = s.apply(&Command::FenceFailed {
            node: "mx2".into(),
            error: "late".into(),
            retry_in_ms: 1,
            at_ms: 4,
        });
        assert!(r.refused.is_some());
        assert_eq!(s.fencing["mx2"].progress, FenceProgress::Fenced);
    }

    #[test]
    fn fencing_an_unknown_node_is_refused() {
        let mut s = state();
        let r = s.apply(&Command::FenceStarted {
            node: "mx9".into(),
            agent: "exec".into(),
            attempt: 1,
            by: "leader mx1".into(),
            at_ms: 1,
        });
        assert!(matches!(r.refused, Some(Refusal::NotAMember { .. })));
        assert!(s.fencing.is_empty() && s.events.is_empty());
    }

    #[test]
    fn clearing_forgets_the_record_once() {
        let mut s = state();
        start(&mut s, 1);
        let clear = Command::FenceCleared {
            node: "mx2".into(),
            reason: "holds a lease again".into(),
            at_ms: 5,
        };
        assert!(s.apply(&clear).changed);
        assert!(!s.apply(&clear).changed);
        assert!(s.fencing.is_empty());
    }

    #[test]
    fn fencing_commands_round_trip_through_json() {
        let cmd = Command::FenceFailed {
            node: "mx2".into(),
            error: "unreachable".into(),
            retry_in_ms: 1000,
            at_ms: 9,
        };
        let text = serde_json::to_string(&cmd).unwrap();
        assert!(text.contains("\"cmd\":\"fence_failed\""), "{text}");
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), cmd);
    }
}
