//! Fencing at run time: the leader powers off a silent node that has a fence agent before its
//! addresses move, and operators fence by hand with `clusterctl fence`.
//!
//! The decisions are pure and live elsewhere: `clusterd_lease::FenceGate` decides which
//! expired nodes wait for a fence and when to (re)try; [`gate_liveness`] applies it to the
//! planner's input; [`to_clear`] says which fencing records are over. This module carries them
//! out: it builds the agents from `[fencing]`, records "started" through Raft *before* running
//! an agent (a leader that cannot commit has no quorum and must not fence; only the one leader
//! that can commit ever fences, so two survivors never fence each other), runs the agent under
//! its deadline in a task of its own (placement of other addresses goes on meanwhile), and
//! records the reply or the error.

pub mod agents;

use crate::lock;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::FenceReply;
use clusterd_lease::FenceGate;
use tracing::{error, info, warn};

use crate::model::plan::Liveness;
use crate::model::{Command, FenceProgress, State};
use crate::node::Shared;

/// Apply the fence gate to the planner's input: expired nodes that must be fenced first are
/// taken out of `live.expired` until a fence of them succeeded after `last_grant`. Returns the
/// fences to start now. Pure apart from the gate's memory.
pub fn gate_liveness(
    gate: &mut FenceGate,
    live: &mut Liveness,
    state: &State,
    configured: impl Fn(&str) -> bool,
    last_grant: impl Fn(&str) -> Option<Instant>,
    now: Instant,
) -> Vec<String> {
    for node in live.current.keys() {
        gate.recovered(node);
    }
    let needs_fence = |node: &str| configured(node) && !state.owned_by(node).is_empty();
    let decision = gate.decide(&live.expired, needs_fence, last_grant, now);
    live.expired = decision.expired;
    decision.start
}

/// Fencing records that are over: nodes with a finished (fenced or failed) record that hold a
/// lease again, in a run that began after the record. `live.current` gives each node's
/// uninterrupted lease time.
pub fn to_clear(state: &State, live: &Liveness, now_ms: u64) -> Vec<String> {
    state
        .fencing
        .iter()
        .filter(|(node, r)| {
            r.progress != FenceProgress::Started
                && live
                    .current
                    .get(*node)
                    .is_some_and(|held| now_ms.saturating_sub(*held) > r.since_ms)
        })
        .map(|(node, _)| node.clone())
        .collect()
}

/// Fence `node` now: record the start through Raft, run the agent, record the outcome and tell
/// the gate. `by` says who asked. The caller has marked the fence running in the gate.
pub async fn run(
    s: Arc<Shared>,
    node: String,
    by: String,
    term: u64,
) -> Result<FenceReply, String> {
    let fencing = &s.fencing;
    let attempt = lock(&fencing.gate).failures(&node) + 1;
    // Count a failure in this term's gate; returns the wait before the next attempt.
    let failed = || {
        let mut gate = lock(&fencing.gate);
        if gate.term() == Some(term) {
            gate.failed(&node, crate::clock::now(), &fencing.backoff)
        } else {
            Duration::ZERO
        }
    };
    let (agent, options) = match fencing.agent(&node) {
        Ok(a) => a,
        Err(e) => {
            let retry = failed();
            error!(node = %node, error = %e, retry_in_ms = retry.as_millis() as u64, "cannot fence");
            return Err(e);
        }
    };
    let agent_name = agent.describe();
    let start = Command::FenceStarted {
        node: node.clone(),
        agent: agent_name.clone(),
        attempt,
        by: by.clone(),
        at_ms: crate::clock::unix_ms(),
    };
    if let Err(e) = crate::raft::propose::propose(&s, start).await {
        // Without a committed start there is no quorum behind this fence: do not run it.
        let msg = format!(
            "fence of {node} not started: it could not be recorded ({}); only a leader with a \
             quorum fences",
            e
        );
        failed();
        warn!(node = %node, "{msg}");
        return Err(msg);
    }
    info!(node = %node, agent = %agent_name, attempt, by = %by, "fencing");
    let outcome = clusterd_fencing::fence(agent.as_ref(), &options).await;
    let confirmed_at = crate::clock::now();
    match outcome {
        Ok(reply) => {
            let done = Command::FenceSucceeded {
                node: node.clone(),
                reply: reply.clone(),
                at_ms: crate::clock::unix_ms(),
            };
            match crate::raft::propose::propose(&s, done).await {
                Ok(_) => {
                    let mut gate = lock(&fencing.gate);
                    if gate.term() == Some(term) {
                        gate.succeeded(&node, confirmed_at);
                    }
                    info!(node = %node, agent = %agent_name, reply = %reply, "fenced");
                    Ok(FenceReply {
                        node,
                        agent: agent_name,
                        reply,
                    })
                }
                Err(e) => {
                    let msg = format!(
                        "{node} was fenced ({reply}) but that could not be recorded ({}); its \
                         addresses wait for a recorded fence",
                        e
                    );
                    failed();
                    warn!(node = %node, "{msg}");
                    Err(msg)
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let retry = failed();
            error!(
                node = %node, agent = %agent_name, attempt, error = %msg,
                retry_in_ms = retry.as_millis() as u64,
                "FENCE FAILED: the node's addresses stay where they are until a fence succeeds"
            );
            let record = Command::FenceFailed {
                node: node.clone(),
                error: msg.clone(),
                retry_in_ms: retry.as_millis() as u64,
                at_ms: crate::clock::unix_ms(),
            };
            if let Err(e) = crate::raft::propose::propose(&s, record).await {
                warn!(node = %node, error = %e, "could not record the failed fence");
            }
            Err(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::agents::check_secret_files;
    use super::*;
    use crate::model::{AddressSpec, Member, Role};

    #[test]
    fn check_config_refuses_a_secret_file_open_to_group_or_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("bmc.pass");
        std::fs::write(&pass, "pw\n").unwrap();
        let mut config = crate::config::tests::base();
        config.fencing = toml::from_str(&format!(
            "[nodes.mx2]\nagent = \"exec\"\ncommand = [\"/usr/sbin/fence_ipmilan\"]\n\
             password_file = {:?}\n\n[nodes.mx3]\nagent = \"exec\"\n\
             command = [\"/usr/sbin/fence_ipmilan\"]\npassword_file = \"/nonexistent/mx3.pass\"\n",
            pass.display().to_string()
        ))
        .unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(check_secret_files(&config), Ok(()));
        for (mode, shown) in [(0o640, "0640"), (0o604, "0604")] {
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(mode)).unwrap();
            let problems = check_secret_files(&config).unwrap_err().problems;
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, "fencing.nodes.mx2.password_file");
            let message = &problems[0].message;
            assert!(message.contains(&format!("(mode {shown})")), "{message}");
            assert!(
                message.contains(&format!("chmod 600 {}", pass.display())),
                "{message}"
            );
        }
        // A check's test login password file follows the same rule.
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let probe = dir.path().join("probe.pass");
        std::fs::write(&probe, "pw\n").unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
        let check = config.checks.keys().next().cloned().expect("a check");
        config.checks.get_mut(&check).unwrap().password_file = Some(probe);
        let problems = check_secret_files(&config).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, format!("checks.{check}.password_file"));
    }

    fn state() -> State {
        let mut s = State::default();
        s.set_membership(["mx1", "mx2", "mx3"].map(|n| {
            (
                Member {
                    name: n.into(),
                    addr: format!("{n}:7400"),
                    role: Role::Mail,
                },
                true,
            )
        }));
        s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![AddressSpec {
                ip: "192.0.2.102/24".into(),
                interface: "eth0".into(),
                home: "mx2".into(),
                services: vec![],
            }],
            at_ms: 0,
        });
        s.apply(&Command::Assign {
            ip: "192.0.2.102/24".into(),
            to: "mx2".into(),
            epoch: 0,
            reason: crate::model::MoveReason::Initial,
            at_ms: 1,
            term: None,
        });
        s
    }

    fn live(current: &[(&str, u64)], expired: &[&str]) -> Liveness {
        Liveness {
            current: current.iter().map(|(n, h)| (n.to_string(), *h)).collect(),
            expired: expired.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn an_expired_owner_with_an_agent_is_held_back_until_fenced() {
        let s = state();
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let t0 = crate::clock::now();
        let mut l = live(&[("mx1", 5000)], &["mx2", "mx3"]);
        let start = gate_liveness(&mut gate, &mut l, &s, |n| n != "mx1", |_| Some(t0), t0);
        // mx3 owns nothing: no need to fence it before "moving" nothing.
        assert_eq!(start, vec!["mx2".to_string()]);
        assert_eq!(l.expired, ["mx3".to_string()].into());
        gate.succeeded("mx2", t0 + Duration::from_millis(10));
        let mut l = live(&[("mx1", 5000)], &["mx2"]);
        let start = gate_liveness(&mut gate, &mut l, &s, |_| true, |_| Some(t0), t0);
        assert!(start.is_empty());
        assert!(l.expired.contains("mx2"));
    }

    #[test]
    fn an_expired_owner_without_an_agent_moves_at_once() {
        let s = state();
        let mut gate = FenceGate::default();
        gate.reset_for(1);
        let mut l = live(&[], &["mx2"]);
        let start = gate_liveness(
            &mut gate,
            &mut l,
            &s,
            |_| false,
            |_| None,
            crate::clock::now(),
        );
        assert!(start.is_empty());
        assert!(l.expired.contains("mx2"));
    }

    #[test]
    fn records_clear_only_after_the_node_renews_in_a_new_run() {
        let mut s = state();
        s.apply(&Command::FenceStarted {
            node: "mx2".into(),
            agent: "exec".into(),
            attempt: 1,
            by: "leader mx1".into(),
            at_ms: 10_000,
        });
        // Still running: never cleared.
        assert!(to_clear(&s, &live(&[("mx2", 1)], &[]), 20_000).is_empty());
        s.apply(&Command::FenceSucceeded {
            node: "mx2".into(),
            reply: "off".into(),
            at_ms: 11_000,
        });
        // Its lease run began before the fence (it was live when fenced by hand): keep.
        assert!(to_clear(&s, &live(&[("mx2", 5_000)], &[]), 12_000).is_empty());
        // Not holding a lease: keep.
        assert!(to_clear(&s, &live(&[], &["mx2"]), 30_000).is_empty());
        // Back with a lease run that began after the fence: clear.
        assert_eq!(
            to_clear(&s, &live(&[("mx2", 2_000)], &[]), 30_000),
            vec!["mx2".to_string()]
        );
    }
}
