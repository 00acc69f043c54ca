//! Property tests of the replicated model: arbitrary command sequences, arbitrary lease views.
//!
//! Whatever the log holds (commands from a leader that lost its term, a replayed report, an
//! operator's request for a node that left), applying it never panics, never gives an address
//! to a node that may not hold one, never lets an epoch go backwards or an owner change without
//! a new epoch, applies the same way on every node, and survives a snapshot (JSON round trip).
//! Whatever the leader knows of leases, what its planner proposes applies without a refusal and
//! keeps those properties. Cases per property: `PROPTEST_CASES` (default 256 here; the
//! benchmark run in BENCHMARKS.md uses more).

use std::collections::{BTreeMap, BTreeSet};

use clusterd::model::plan::{Liveness, Policy, plan};
use clusterd::model::{
    AddressSpec, AdminState, Command, DrillKind, Health, HealthReport, Member, MoveReason, Role,
    State,
};
use proptest::prelude::*;

const MAIL: [&str; 3] = ["mx1", "mx2", "mx3"];
/// Members and names that are not: a witness and a node that never joined.
const NAMES: [&str; 5] = ["mx1", "mx2", "mx3", "w1", "ghost"];
/// Two floating addresses and one nobody declared.
const IPS: [&str; 3] = ["192.0.2.101/24", "2001:db8::101/64", "198.51.100.9/24"];
const CHECKS: [&str; 2] = ["imap", "smtp"];

fn specs() -> Vec<AddressSpec> {
    vec![
        AddressSpec {
            ip: IPS[0].into(),
            interface: "eth0".into(),
            home: "mx1".into(),
            services: vec!["imap".into()],
        },
        AddressSpec {
            ip: IPS[1].into(),
            interface: "eth0".into(),
            home: "mx2".into(),
            services: vec!["imap".into(), "smtp".into()],
        },
    ]
}

/// Three mail nodes and a witness, with both addresses declared.
fn cluster() -> State {
    let mut s = State::new(50);
    s.set_membership(MAIL.iter().chain(["w1"].iter()).map(|n| {
        (
            Member {
                name: n.to_string(),
                addr: format!("{n}:7400"),
                role: if *n == "w1" {
                    Role::Witness
                } else {
                    Role::Mail
                },
            },
            true,
        )
    }));
    let applied = s.apply(&Command::SetAddresses {
        by: "mx1".into(),
        addresses: specs(),
        at_ms: 0,
    });
    assert!(applied.refused.is_none(), "{applied:?}");
    s
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(NAMES.to_vec()).prop_map(String::from)
}

fn ip() -> impl Strategy<Value = String> {
    prop::sample::select(IPS.to_vec()).prop_map(String::from)
}

fn check() -> impl Strategy<Value = String> {
    prop::sample::select(CHECKS.to_vec()).prop_map(String::from)
}

fn health() -> impl Strategy<Value = Health> {
    prop::sample::select(vec![
        Health::Pending,
        Health::Passing,
        Health::Warning,
        Health::Critical,
    ])
}

fn reason() -> impl Strategy<Value = MoveReason> {
    prop::sample::select(vec![
        MoveReason::Initial,
        MoveReason::LeaseExpired,
        MoveReason::Drained,
        MoveReason::Operator,
        MoveReason::Failback,
    ])
}

/// The fields of a leader's decision (`Assign`, `StartHandoff`): address, target, epoch, reason,
/// time, and the term it was stamped with, from the same small domain as the terms of log
/// entries (or none, as entries of earlier builds carry).
fn decision(
    t: std::ops::Range<u64>,
    epoch: std::ops::Range<u64>,
) -> impl Strategy<Value = (String, String, u64, MoveReason, u64, Option<u64>)> {
    (ip(), name(), epoch, reason(), t, prop::option::of(1u64..4))
}

/// Any command a log may hold, with fields from small domains so that they collide.
fn command() -> impl Strategy<Value = Command> {
    let t = 0u64..400_000;
    let epoch = 0u64..8;
    prop_oneof![
        (name(), 1u64..20, t.clone()).prop_map(|(node, term, at_ms)| Command::LeaderElected {
            node,
            term,
            at_ms
        }),
        t.clone()
            .prop_map(|at_ms| Command::RecordMembership { at_ms }),
        (name(), any::<bool>(), t.clone()).prop_map(|(node, drained, at_ms)| Command::SetAdmin {
            node,
            state: if drained {
                AdminState::Drained
            } else {
                AdminState::Active
            },
            by: "mx1".into(),
            at_ms,
        }),
        decision(t.clone(), epoch.clone()).prop_map(|(ip, to, epoch, reason, at_ms, term)| {
            Command::Assign {
                ip,
                to,
                epoch,
                reason,
                at_ms,
                term,
            }
        }),
        decision(t.clone(), epoch.clone()).prop_map(|(ip, to, epoch, reason, at_ms, term)| {
            Command::StartHandoff {
                ip,
                to,
                epoch,
                reason,
                at_ms,
                term,
            }
        }),
        (ip(), epoch.clone(), t.clone()).prop_map(|(ip, epoch, at_ms)| Command::CancelHandoff {
            ip,
            epoch,
            at_ms
        }),
        (ip(), name(), epoch.clone(), t.clone()).prop_map(|(ip, node, epoch, at_ms)| {
            Command::Released {
                ip,
                node,
                epoch,
                at_ms,
            }
        }),
        (ip(), name(), epoch.clone(), t.clone()).prop_map(|(ip, node, epoch, at_ms)| {
            Command::Serving {
                ip,
                node,
                epoch,
                at_ms,
            }
        }),
        (ip(), name(), t.clone()).prop_map(|(ip, to, at_ms)| Command::RequestMove {
            ip,
            to,
            by: "mx2".into(),
            at_ms
        }),
        (name(), check(), health(), t.clone()).prop_map(|(node, check, health, at_ms)| {
            Command::Health(HealthReport {
                node,
                check,
                health,
                reason: "probe".into(),
                latency_ms: Some(3),
                at_ms,
            })
        }),
        (name(), t.clone()).prop_map(|(node, at_ms)| Command::HealthReset {
            node,
            checks: CHECKS.iter().map(|c| c.to_string()).collect(),
            at_ms
        }),
        (name(), 1u32..4, t.clone()).prop_map(|(node, attempt, at_ms)| Command::FenceStarted {
            node,
            agent: "exec".into(),
            attempt,
            by: "mx1".into(),
            at_ms
        }),
        (name(), t.clone()).prop_map(|(node, at_ms)| Command::FenceSucceeded {
            node,
            reply: "off".into(),
            at_ms
        }),
        (name(), t.clone()).prop_map(|(node, at_ms)| Command::FenceFailed {
            node,
            error: "no answer".into(),
            retry_in_ms: 5000,
            at_ms
        }),
        (name(), t.clone()).prop_map(|(node, at_ms)| Command::FenceCleared {
            node,
            reason: "lease".into(),
            at_ms
        }),
        (name(), prop::option::of(check()), t.clone()).prop_map(|(node, service, at_ms)| {
            Command::StartDrill {
                node,
                kind: match service {
                    Some(check) => DrillKind::Service { check },
                    None => DrillKind::Node,
                },
                by: "mx3".into(),
                at_ms,
            }
        }),
        (name(), t.clone()).prop_map(|(node, at_ms)| Command::EndDrill {
            node,
            by: "mx3".into(),
            at_ms
        }),
        (name(), t).prop_map(|(by, at_ms)| Command::Note {
            by,
            text: "maintenance".into(),
            at_ms
        }),
    ]
}

/// What a leader may know of leases: some nodes current (with when their lease ends), some
/// surely expired, never both.
fn liveness() -> impl Strategy<Value = Liveness> {
    prop::collection::vec((name(), 0u8..3, 0u64..400_000), 0..5).prop_map(|views| {
        let mut live = Liveness::default();
        for (node, kind, until) in views {
            match kind {
                0 if !live.expired.contains(&node) => {
                    live.current.insert(node, until);
                }
                1 if !live.current.contains_key(&node) => {
                    live.expired.insert(node);
                }
                _ => {}
            }
        }
        live
    })
}

fn policy() -> impl Strategy<Value = Policy> {
    (any::<bool>(), 0u64..120_000, 0u64..60_000).prop_map(
        |(auto_failback, failback_after_ms, hold_down_ms)| Policy {
            auto_failback,
            failback_after_ms,
            hold_down_ms,
        },
    )
}

/// Owner and epoch of every address.
fn owners(s: &State) -> BTreeMap<String, (Option<String>, u64)> {
    s.addresses
        .iter()
        .map(|(ip, a)| (ip.clone(), (a.owner.clone(), a.epoch)))
        .collect()
}

/// The properties every applied command keeps, from `before` to `after`.
fn check_step(before: &State, after: &State, cmd: &Command) -> Result<(), TestCaseError> {
    let (was, now) = (owners(before), owners(after));
    prop_assert_eq!(
        was.keys().collect::<BTreeSet<_>>(),
        now.keys().collect::<BTreeSet<_>>(),
        "addresses appeared or vanished on {:?}",
        cmd
    );
    for (ip, (owner, epoch)) in &now {
        let (old_owner, old_epoch) = &was[ip];
        prop_assert!(
            epoch >= old_epoch,
            "{ip}: epoch went back from {old_epoch} to {epoch} on {cmd:?}"
        );
        prop_assert!(
            owner == old_owner || epoch > old_epoch,
            "{ip}: owner changed from {old_owner:?} to {owner:?} without a new epoch on {cmd:?}"
        );
        // A new owner is a mail member (a drained one only by a decision made before the
        // drain committed: the planner then hands the address on).
        if let Some(o) = owner
            && owner != old_owner
        {
            prop_assert!(
                after.members.get(o).is_some_and(|m| m.role == Role::Mail),
                "{ip} given to {o}, which is no mail member, on {cmd:?}"
            );
        }
        let a = &after.addresses[ip];
        if let (Some(h), Some(o)) = (&a.handoff, owner) {
            prop_assert_ne!(&h.to, o, "{}: a handoff to its own owner on {:?}", ip, cmd);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_command_sequence_keeps_owners_epochs_and_replicas_consistent(
        cmds in prop::collection::vec((command(), 1u64..4), 1..80)
    ) {
        let mut s = cluster();
        let mut replica = cluster();
        for (cmd, log_term) in &cmds {
            let before = s.clone();
            let applied = s.apply_entry(cmd, *log_term);
            prop_assert!(!(applied.changed && applied.refused.is_some()), "{applied:?}");
            if applied.refused.is_some() {
                prop_assert_eq!(&s, &before, "a refused command changed the state: {:?}", cmd);
            }
            // A decision written in another term than its own changes nothing.
            if cmd.decided_term().is_some_and(|t| t != *log_term) {
                prop_assert!(applied.refused.is_some(), "{:?} in term {} applied", cmd, log_term);
            }
            check_step(&before, &s, cmd)?;
            // Every node applies the same log to the same result.
            prop_assert_eq!(replica.apply_entry(cmd, *log_term), applied);
        }
        prop_assert_eq!(&replica, &s);
        // A snapshot restores the state exactly.
        let json = serde_json::to_vec(&s).unwrap();
        let restored: State = serde_json::from_slice(&json).unwrap();
        prop_assert_eq!(restored, s);
    }

    #[test]
    fn what_the_planner_proposes_applies_without_refusal_and_keeps_the_properties(
        cmds in prop::collection::vec(command(), 0..60),
        rounds in prop::collection::vec((liveness(), 0u64..60_000), 1..6),
        policy in policy(),
    ) {
        let mut s = cluster();
        let mut now_ms = 0;
        for cmd in &cmds {
            s.apply(cmd);
            if let Some(at) = serde_json::to_value(cmd).ok()
                .and_then(|v| v.get("at_ms").and_then(|t| t.as_u64())) {
                now_ms = now_ms.max(at);
            }
        }
        for (live, later) in rounds {
            now_ms += later;
            for cmd in plan(&s, &live, &policy, now_ms) {
                let before = s.clone();
                let applied = s.apply(&cmd);
                prop_assert!(
                    applied.refused.is_none(),
                    "the planner proposed {:?}, refused: {:?}", cmd, applied.refused
                );
                check_step(&before, &s, &cmd)?;
                // The planner only moves addresses to active mail nodes whose lease it knows
                // current.
                if let Command::Assign { to, .. } | Command::StartHandoff { to, .. } = &cmd {
                    prop_assert!(live.current.contains_key(to), "{:?} to a node not current", cmd);
                    prop_assert!(before.can_hold(to), "{:?} to a node that may not hold", cmd);
                }
            }
        }
    }
}
