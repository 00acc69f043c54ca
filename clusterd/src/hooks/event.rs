//! What a hook is told: one transition as facts, the node that runs hooks for it, and the
//! environment a script gets. Pure: no IO, no clock reads.
//!
//! Who runs what (so that an operator gets one page per transition, not one per node):
//! - `address_acquired`, `address_released`: the node that added or removed the address.
//! - `service_state`: the node whose check changed (it runs the probe).
//! - `leader_elected`: the new leader.
//! - `owner_changed`, `fence_started`, `fence_result`, `membership_changed`, `admin_changed`:
//!   the node that is leader when it applies them (the one that decided them).
//! - `node_down`, `node_up`: the leader, from its own contact with each member
//!   ([`NodeWatch`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::HookEventKind;
use crate::metrics::registry::token;
use crate::model::{Event, EventKind};

/// One transition, as a hook sees it. Fields that do not apply are empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEvent {
    /// What happened.
    pub kind: HookEventKind,
    /// The node it is about: the new owner, the node that went down, the fenced node, the
    /// node whose service changed, the new leader, the node that acquired an address.
    pub node: String,
    /// The floating address, `ip/prefix`.
    pub address: String,
    /// Its interface (address events on the node holding it).
    pub interface: String,
    /// The check name (service_state).
    pub service: String,
    /// The new state: up/down, passing/warning/critical/pending, started/fenced/failed,
    /// active/drained, acquired/released.
    pub state: String,
    /// The state or owner before, when known.
    pub previous: String,
    /// Why, as a token (`lease_expired`, `handed_over`, ...) or in the probe's or agent's
    /// words.
    pub reason: String,
    /// Ownership epoch (address and owner events).
    pub epoch: Option<u64>,
    /// Raft term (leader_elected).
    pub term: Option<u64>,
    /// When it happened (unix ms).
    pub at_ms: u64,
    /// Sequence number in the replicated history, for transitions that come from it.
    pub seq: Option<u64>,
    /// One line for humans, e.g. for a pager.
    pub message: String,
}

/// Which node runs hooks for a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runs {
    /// The named node.
    On(String),
    /// Whichever node leads when it applies the transition.
    Leader,
}

impl HookEvent {
    fn new(kind: HookEventKind, at_ms: u64) -> Self {
        HookEvent {
            kind,
            node: String::new(),
            address: String::new(),
            interface: String::new(),
            service: String::new(),
            state: String::new(),
            previous: String::new(),
            reason: String::new(),
            epoch: None,
            term: None,
            at_ms,
            seq: None,
            message: String::new(),
        }
    }

    /// `me` configured (`acquired`) or removed `address` on `interface`, at `epoch` if known.
    /// `reason`: why it became the owner (`lease_expired`, `failback`, ...; empty if unknown),
    /// or why it let go (`handed_over`, `lease_over`, `no_longer_owner`, `stale`, `shutdown`).
    pub fn address(
        acquired: bool,
        me: &str,
        address: &str,
        interface: &str,
        epoch: Option<u64>,
        reason: &str,
        at_ms: u64,
    ) -> Self {
        let (kind, state) = if acquired {
            (HookEventKind::AddressAcquired, "acquired")
        } else {
            (HookEventKind::AddressReleased, "released")
        };
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(", {reason}")
        };
        let at = epoch.map(|e| format!(" (epoch {e}{why})")).unwrap_or(why);
        HookEvent {
            node: me.to_string(),
            address: address.to_string(),
            interface: interface.to_string(),
            state: state.into(),
            reason: reason.to_string(),
            epoch,
            message: format!("{me} {state} {address} on {interface}{at}"),
            ..HookEvent::new(kind, at_ms)
        }
    }

    /// The leader's verdict that `node` went down or came back.
    pub fn node(node: &str, up: bool, reason: &str, at_ms: u64) -> Self {
        let (kind, state, previous) = if up {
            (HookEventKind::NodeUp, "up", "down")
        } else {
            (HookEventKind::NodeDown, "down", "up")
        };
        HookEvent {
            node: node.to_string(),
            state: state.into(),
            previous: previous.into(),
            reason: reason.to_string(),
            message: format!("{node} is {state}: {reason}"),
            ..HookEvent::new(kind, at_ms)
        }
    }

    /// The hook event of a replicated history event, and who runs it; `None` for history
    /// events that are no hook's business (notes, handoffs, serving reports, ...).
    pub fn from_history(e: &Event) -> Option<(HookEvent, Runs)> {
        let base = |kind| HookEvent {
            seq: Some(e.seq),
            message: e.kind.to_string(),
            ..HookEvent::new(kind, e.at_ms)
        };
        let (event, runs) = match &e.kind {
            EventKind::OwnerChanged {
                ip,
                from,
                to,
                epoch,
                reason,
            } => (
                HookEvent {
                    node: to.clone(),
                    address: ip.clone(),
                    previous: from.clone().unwrap_or_default(),
                    reason: token(reason),
                    epoch: Some(*epoch),
                    ..base(HookEventKind::OwnerChanged)
                },
                Runs::Leader,
            ),
            EventKind::HealthChanged {
                node,
                check,
                from,
                to,
                reason,
            } => (
                HookEvent {
                    node: node.clone(),
                    service: check.clone(),
                    state: to.to_string(),
                    previous: from.map(|f| f.to_string()).unwrap_or_default(),
                    reason: reason.clone(),
                    ..base(HookEventKind::ServiceState)
                },
                Runs::On(node.clone()),
            ),
            EventKind::FenceStarted {
                node,
                agent,
                attempt,
                by,
            } => (
                HookEvent {
                    node: node.clone(),
                    state: "started".into(),
                    reason: format!("attempt {attempt} with {agent}, by {by}"),
                    ..base(HookEventKind::FenceStarted)
                },
                Runs::Leader,
            ),
            EventKind::Fenced {
                node, reply: why, ..
            }
            | EventKind::FenceFailed {
                node, error: why, ..
            } => (
                HookEvent {
                    node: node.clone(),
                    state: if matches!(e.kind, EventKind::Fenced { .. }) {
                        "fenced"
                    } else {
                        "failed"
                    }
                    .into(),
                    previous: "started".into(),
                    reason: why.clone(),
                    ..base(HookEventKind::FenceResult)
                },
                Runs::Leader,
            ),
            EventKind::LeaderElected { node, term } => (
                HookEvent {
                    node: node.clone(),
                    state: "leader".into(),
                    term: Some(*term),
                    ..base(HookEventKind::LeaderElected)
                },
                Runs::On(node.clone()),
            ),
            EventKind::MembershipChanged { voters, learners } => (
                HookEvent {
                    state: format!(
                        "voters={} learners={}",
                        voters.join(","),
                        learners.join(",")
                    ),
                    ..base(HookEventKind::MembershipChanged)
                },
                Runs::Leader,
            ),
            EventKind::AdminChanged { node, state, by } => (
                HookEvent {
                    node: node.clone(),
                    state: state.to_string(),
                    reason: format!("via {by}"),
                    ..base(HookEventKind::AdminChanged)
                },
                Runs::Leader,
            ),
            _ => return None,
        };
        Some((event, runs))
    }

    /// The environment a script gets for this event on node `me`, as delivery number `id`.
    /// Every variable is always set (empty when it does not apply), so scripts may use
    /// `set -u`.
    pub fn environment(&self, me: &str, id: u64) -> Vec<(&'static str, String)> {
        let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
        let ip = self
            .address
            .split_once('/')
            .map_or(self.address.as_str(), |(ip, _)| ip);
        vec![
            ("CLUSTERD_EVENT", self.kind.to_string()),
            ("CLUSTERD_SELF", me.to_string()),
            ("CLUSTERD_NODE", self.node.clone()),
            ("CLUSTERD_ADDRESS", self.address.clone()),
            ("CLUSTERD_IP", ip.to_string()),
            ("CLUSTERD_INTERFACE", self.interface.clone()),
            ("CLUSTERD_SERVICE", self.service.clone()),
            ("CLUSTERD_STATE", self.state.clone()),
            ("CLUSTERD_PREVIOUS", self.previous.clone()),
            ("CLUSTERD_REASON", self.reason.clone()),
            ("CLUSTERD_EPOCH", opt(self.epoch)),
            ("CLUSTERD_TERM", opt(self.term)),
            ("CLUSTERD_AT_MS", self.at_ms.to_string()),
            ("CLUSTERD_SEQ", opt(self.seq)),
            ("CLUSTERD_HOOK_ID", id.to_string()),
            ("CLUSTERD_MESSAGE", self.message.clone()),
        ]
    }
}

/// What the leader knows of one member's contact at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// It answered this leader within the window.
    Recent,
    /// No answer for this long (or never, when `None`).
    Silent(Option<Duration>),
}

/// The leader's memory of which members are up, to report each change once.
///
/// Starts over when the term changes. During `grace` after that, nothing is judged (peers
/// have not had time to answer the new leader). A member first seen silent is reported down;
/// one first seen answering is not reported (it was up all along, as far as anyone knows).
#[derive(Debug, Default)]
pub struct NodeWatch {
    term: Option<u64>,
    up: BTreeMap<String, bool>,
}

impl NodeWatch {
    /// Compare `contact` (every member but the leader itself) with what was last reported, in
    /// `term`, `since_election` after this node became leader; return the changes to report as
    /// `(node, up, reason)`.
    pub fn observe(
        &mut self,
        term: u64,
        since_election: Duration,
        grace: Duration,
        contact: &BTreeMap<String, Contact>,
    ) -> Vec<(String, bool, String)> {
        if self.term != Some(term) {
            self.term = Some(term);
            self.up.clear();
        }
        if since_election < grace {
            return Vec::new();
        }
        let members: BTreeSet<&String> = contact.keys().collect();
        self.up.retain(|n, _| members.contains(n));
        let mut changes = Vec::new();
        for (node, c) in contact {
            let up = *c == Contact::Recent;
            let before = self.up.insert(node.clone(), up);
            let report = match before {
                None => !up,
                Some(b) => b != up,
            };
            if report {
                let reason = match c {
                    Contact::Recent => "answering the leader again".to_string(),
                    Contact::Silent(Some(d)) => {
                        format!("no answer to the leader for {} ms", d.as_millis())
                    }
                    Contact::Silent(None) => "has not answered this leader".to_string(),
                };
                changes.push((node.clone(), up, reason));
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AdminState, Health, MoveReason};

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            at_ms: 1_700_000_000_000,
            kind,
        }
    }

    fn env_of(e: &HookEvent) -> BTreeMap<&'static str, String> {
        e.environment("mx3", 7).into_iter().collect()
    }

    /// `e`'s environment on mx3 as delivery 7 has these values.
    #[track_caller]
    fn assert_env(e: &HookEvent, expected: &[(&str, &str)]) {
        let env = env_of(e);
        for (name, value) in expected {
            assert_eq!(env[name], *value, "{name}");
        }
    }

    #[test]
    fn owner_change_runs_on_the_leader_with_address_owners_epoch_and_reason() {
        let (e, runs) = HookEvent::from_history(&event(
            42,
            EventKind::OwnerChanged {
                ip: "192.0.2.101/24".into(),
                from: Some("mx1".into()),
                to: "mx2".into(),
                epoch: 5,
                reason: MoveReason::LeaseExpired,
            },
        ))
        .unwrap();
        assert_eq!(runs, Runs::Leader);
        assert_env(
            &e,
            &[
                ("CLUSTERD_EVENT", "owner_changed"),
                ("CLUSTERD_SELF", "mx3"),
                ("CLUSTERD_NODE", "mx2"),
                ("CLUSTERD_PREVIOUS", "mx1"),
                ("CLUSTERD_ADDRESS", "192.0.2.101/24"),
                ("CLUSTERD_IP", "192.0.2.101"),
                ("CLUSTERD_EPOCH", "5"),
                ("CLUSTERD_REASON", "lease_expired"),
                ("CLUSTERD_SEQ", "42"),
                ("CLUSTERD_AT_MS", "1700000000000"),
                ("CLUSTERD_HOOK_ID", "7"),
                (
                    "CLUSTERD_MESSAGE",
                    "192.0.2.101/24: mx1 -> mx2 (epoch 5, lease expired)",
                ),
            ],
        );
    }

    #[test]
    fn first_placement_has_no_previous_owner() {
        let (e, _) = HookEvent::from_history(&event(
            1,
            EventKind::OwnerChanged {
                ip: "2001:db8::101/64".into(),
                from: None,
                to: "mx1".into(),
                epoch: 1,
                reason: MoveReason::Initial,
            },
        ))
        .unwrap();
        assert_env(
            &e,
            &[
                ("CLUSTERD_PREVIOUS", ""),
                ("CLUSTERD_IP", "2001:db8::101"),
                ("CLUSTERD_REASON", "initial"),
            ],
        );
    }

    #[test]
    fn service_state_runs_on_the_node_whose_check_changed() {
        let (e, runs) = HookEvent::from_history(&event(
            9,
            EventKind::HealthChanged {
                node: "mx2".into(),
                check: "imap".into(),
                from: Some(Health::Passing),
                to: Health::Critical,
                reason: "connection refused".into(),
            },
        ))
        .unwrap();
        assert_eq!(runs, Runs::On("mx2".into()));
        assert_env(
            &e,
            &[
                ("CLUSTERD_EVENT", "service_state"),
                ("CLUSTERD_SERVICE", "imap"),
                ("CLUSTERD_STATE", "critical"),
                ("CLUSTERD_PREVIOUS", "passing"),
                ("CLUSTERD_REASON", "connection refused"),
                ("CLUSTERD_EPOCH", ""),
            ],
        );
    }

    #[test]
    fn fence_results_say_fenced_or_failed_with_the_agents_words() {
        let (ok, runs) = HookEvent::from_history(&event(
            3,
            EventKind::Fenced {
                node: "mx2".into(),
                agent: "redfish https://192.0.2.232".into(),
                reply: "power is Off".into(),
                took_ms: 900,
            },
        ))
        .unwrap();
        assert_eq!(runs, Runs::Leader);
        assert_eq!(
            (ok.kind, ok.state.as_str()),
            (HookEventKind::FenceResult, "fenced")
        );
        assert_eq!(ok.reason, "power is Off");
        let (failed, _) = HookEvent::from_history(&event(
            4,
            EventKind::FenceFailed {
                node: "mx2".into(),
                agent: "exec".into(),
                attempt: 2,
                error: "exit code 1".into(),
                retry_in_ms: 2000,
            },
        ))
        .unwrap();
        assert_eq!(failed.state, "failed");
        assert_eq!(failed.reason, "exit code 1");
        let (started, _) = HookEvent::from_history(&event(
            2,
            EventKind::FenceStarted {
                node: "mx2".into(),
                agent: "exec".into(),
                attempt: 2,
                by: "leader mx1".into(),
            },
        ))
        .unwrap();
        assert_eq!(started.kind, HookEventKind::FenceStarted);
        assert_eq!(started.reason, "attempt 2 with exec, by leader mx1");
    }

    #[test]
    fn leader_election_runs_on_the_new_leader_with_its_term() {
        let (e, runs) = HookEvent::from_history(&event(
            5,
            EventKind::LeaderElected {
                node: "mx1".into(),
                term: 12,
            },
        ))
        .unwrap();
        assert_eq!(runs, Runs::On("mx1".into()));
        assert_eq!(env_of(&e)["CLUSTERD_TERM"], "12");
    }

    #[test]
    fn membership_and_admin_changes_run_on_the_leader() {
        let (m, runs) = HookEvent::from_history(&event(
            6,
            EventKind::MembershipChanged {
                voters: vec!["mx1".into(), "mx2".into(), "w1".into()],
                learners: vec!["mx3".into()],
            },
        ))
        .unwrap();
        assert_eq!(runs, Runs::Leader);
        assert_eq!(m.state, "voters=mx1,mx2,w1 learners=mx3");
        let (a, runs) = HookEvent::from_history(&event(
            7,
            EventKind::AdminChanged {
                node: "mx2".into(),
                state: AdminState::Drained,
                by: "mx1".into(),
            },
        ))
        .unwrap();
        assert_eq!(runs, Runs::Leader);
        assert_eq!((a.node.as_str(), a.state.as_str()), ("mx2", "drained"));
    }

    #[test]
    fn history_events_of_no_concern_to_hooks_map_to_nothing() {
        let note = event(
            8,
            EventKind::Note {
                by: "mx1".into(),
                text: "maintenance".into(),
            },
        );
        assert_eq!(HookEvent::from_history(&note), None);
    }

    #[test]
    fn address_events_carry_interface_epoch_and_reason() {
        let a = HookEvent::address(
            true,
            "mx2",
            "192.0.2.101/24",
            "eth0",
            Some(6),
            "lease_expired",
            10,
        );
        assert_env(
            &a,
            &[
                ("CLUSTERD_EVENT", "address_acquired"),
                ("CLUSTERD_NODE", "mx2"),
                ("CLUSTERD_INTERFACE", "eth0"),
                ("CLUSTERD_EPOCH", "6"),
                ("CLUSTERD_STATE", "acquired"),
                ("CLUSTERD_SEQ", ""),
                (
                    "CLUSTERD_MESSAGE",
                    "mx2 acquired 192.0.2.101/24 on eth0 (epoch 6, lease_expired)",
                ),
            ],
        );
        let r = HookEvent::address(
            false,
            "mx2",
            "192.0.2.101/24",
            "eth0",
            None,
            "lease_over",
            11,
        );
        assert_env(
            &r,
            &[
                ("CLUSTERD_EVENT", "address_released"),
                ("CLUSTERD_REASON", "lease_over"),
                ("CLUSTERD_EPOCH", ""),
                (
                    "CLUSTERD_MESSAGE",
                    "mx2 released 192.0.2.101/24 on eth0, lease_over",
                ),
            ],
        );
    }

    #[test]
    fn every_variable_is_always_set() {
        let e = HookEvent::node("w1", false, "no answer", 1);
        let names: Vec<&str> = e.environment("mx1", 1).iter().map(|(k, _)| *k).collect();
        assert_eq!(names.len(), 16);
        assert!(names.iter().all(|n| n.starts_with("CLUSTERD_")));
    }

    fn contact(entries: &[(&str, Contact)]) -> BTreeMap<String, Contact> {
        entries.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    const GRACE: Duration = Duration::from_secs(1);
    const AFTER: Duration = Duration::from_secs(2);

    #[test]
    fn nothing_is_judged_during_the_grace_after_election() {
        let mut w = NodeWatch::default();
        let c = contact(&[("mx2", Contact::Silent(None))]);
        assert!(
            w.observe(3, Duration::from_millis(500), GRACE, &c)
                .is_empty()
        );
        assert_eq!(w.observe(3, AFTER, GRACE, &c).len(), 1);
    }

    #[test]
    fn a_node_is_reported_down_once_and_up_once() {
        let mut w = NodeWatch::default();
        let up = contact(&[("mx2", Contact::Recent), ("w1", Contact::Recent)]);
        assert!(
            w.observe(3, AFTER, GRACE, &up).is_empty(),
            "first sight up: silent"
        );
        let down = contact(&[
            ("mx2", Contact::Silent(Some(Duration::from_millis(950)))),
            ("w1", Contact::Recent),
        ]);
        assert_eq!(
            w.observe(3, AFTER, GRACE, &down),
            vec![(
                "mx2".to_string(),
                false,
                "no answer to the leader for 950 ms".to_string()
            )]
        );
        assert!(
            w.observe(3, AFTER, GRACE, &down).is_empty(),
            "reported once"
        );
        let back = w.observe(3, AFTER, GRACE, &up);
        assert_eq!(back.len(), 1);
        assert!(back[0].1);
    }

    #[test]
    fn a_new_term_reports_nodes_found_down_but_not_those_found_up() {
        let mut w = NodeWatch::default();
        let c = contact(&[("mx1", Contact::Silent(None)), ("mx2", Contact::Recent)]);
        let changes = w.observe(4, AFTER, GRACE, &c);
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].0.as_str(), changes[0].1), ("mx1", false));
        // Same verdicts again in the next term: reported again by that term's leader.
        assert_eq!(w.observe(5, AFTER, GRACE, &c).len(), 1);
    }
}
