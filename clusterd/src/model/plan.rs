//! The leader's placement planner: from the cluster state and what the leader knows of leases,
//! the commands that move addresses where they should be.
//!
//! Pure: the daemon computes [`Liveness`] from its lease table with `clusterd_fencing`
//! arithmetic, passes the time, and proposes the returned commands. The rules, in order of
//! precedence for each address:
//!
//! 1. Nobody owns it: give it to its home node if the home holds a current lease, otherwise to
//!    the live mail node with the fewest addresses (ties broken by name, so placement is stable).
//! 2. Its owner's lease has surely ended (and this leader's quiet period after election is over),
//!    or the owner left the cluster: give it to the handoff target, home, or the least loaded
//!    live node, in that order. With no live node it stays where it is.
//! 3. Its owner is live but drained: start a planned handoff to the best live node.
//! 4. A planned handoff whose target is no longer fit: call it off.
//! 5. Auto failback: its home node has held a current lease for the failback period and the
//!    address is elsewhere (and not pinned there by an operator): hand it back.
//!
//! A node that is neither current nor surely expired (its lease just lapsed) is left alone:
//! its addresses stay, and it gets nothing new.

use std::collections::{BTreeMap, BTreeSet};

use super::{Command, MoveReason, State};

/// What the leader knows of each node's lease, as of the planning instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    /// Nodes holding a current lease, with how long they have held one without a gap (ms).
    pub current: BTreeMap<String, u64>,
    /// Nodes whose lease has surely ended: their addresses may go to others.
    pub expired: BTreeSet<String>,
}

/// Placement policy from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Return addresses to their home automatically.
    pub auto_failback: bool,
    /// How long the home must have held a current lease first (ms).
    pub failback_after_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            auto_failback: true,
            failback_after_ms: 60_000,
        }
    }
}

/// The commands that bring placement where it should be. At most one command per address.
pub fn plan(state: &State, live: &Liveness, policy: &Policy, now_ms: u64) -> Vec<Command> {
    let fit = |node: &str| state.can_hold(node) && live.current.contains_key(node);
    // Addresses each node holds or is about to receive, updated as we plan.
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for a in state.addresses.values() {
        if let Some(o) = &a.owner {
            *load.entry(o.clone()).or_default() += 1;
        }
        if let Some(h) = &a.handoff {
            *load.entry(h.to.clone()).or_default() += 1;
        }
    }
    let least_loaded = |load: &BTreeMap<String, usize>, except: Option<&str>| -> Option<String> {
        live.current
            .keys()
            .filter(|n| Some(n.as_str()) != except && fit(n))
            .min_by_key(|n| (load.get(*n).copied().unwrap_or(0), (*n).clone()))
            .cloned()
    };

    // Addresses going home first, so the load seen by the others counts them.
    let mut order: Vec<(&String, &super::AddressState)> = state.addresses.iter().collect();
    order.sort_by_key(|(ip, a)| (!(a.owner.is_none() && fit(&a.spec.home)), (*ip).clone()));
    let mut out = Vec::new();
    for (ip, a) in order {
        let home = a.spec.home.as_str();
        let epoch = a.epoch;
        let assign = |to: String, reason| Command::Assign {
            ip: ip.clone(),
            to,
            epoch,
            reason,
            at_ms: now_ms,
        };
        let Some(owner) = a.owner.as_deref() else {
            let target = if fit(home) {
                Some(home.to_string())
            } else {
                least_loaded(&load, None)
            };
            if let Some(t) = target {
                *load.entry(t.clone()).or_default() += 1;
                out.push(assign(t, MoveReason::Initial));
            }
            continue;
        };

        let owner_gone = state
            .members
            .get(owner)
            .is_none_or(|m| m.role != super::Role::Mail);
        if live.expired.contains(owner) {
            let preferred = a
                .handoff
                .as_ref()
                .map(|h| h.to.as_str())
                .filter(|t| fit(t))
                .or_else(|| (home != owner && fit(home)).then_some(home))
                .map(str::to_string);
            let target = preferred.or_else(|| least_loaded(&load, Some(owner)));
            if let Some(t) = target {
                *load.entry(t.clone()).or_default() += 1;
                if let Some(n) = load.get_mut(owner) {
                    *n = n.saturating_sub(1);
                }
                let reason = if owner_gone {
                    MoveReason::NotMember
                } else {
                    MoveReason::LeaseExpired
                };
                out.push(assign(t, reason));
            }
            continue;
        }
        if !live.current.contains_key(owner) {
            // Its lease just lapsed or this leader is still in its quiet period: wait.
            continue;
        }

        if let Some(h) = &a.handoff {
            if !fit(&h.to) {
                out.push(Command::CancelHandoff {
                    ip: ip.clone(),
                    epoch,
                    at_ms: now_ms,
                });
            }
            continue;
        }

        let handoff = |to: String, reason| Command::StartHandoff {
            ip: ip.clone(),
            to,
            epoch,
            reason,
            at_ms: now_ms,
        };
        if !state.can_hold(owner) {
            // Drained (or no longer a mail node): a planned move to the best live node.
            let target = if fit(home) && home != owner {
                Some(home.to_string())
            } else {
                least_loaded(&load, Some(owner))
            };
            if let Some(t) = target {
                *load.entry(t.clone()).or_default() += 1;
                let reason = if owner_gone {
                    MoveReason::NotMember
                } else {
                    MoveReason::Drained
                };
                out.push(handoff(t, reason));
            }
            continue;
        }
        if policy.auto_failback
            && owner != home
            && !a.pinned
            && fit(home)
            && live.current.get(home).copied().unwrap_or(0) >= policy.failback_after_ms
        {
            out.push(handoff(home.to_string(), MoveReason::Failback));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AddressSpec, AdminState, Member, Role};

    const NOW: u64 = 1_000_000;

    fn member(name: &str, role: Role) -> (Member, bool) {
        (
            Member {
                name: name.into(),
                addr: format!("{name}:7400"),
                role,
            },
            true,
        )
    }

    /// mx1, mx2, mx3 mail nodes and a witness; addresses .101 home mx1, .102 home mx2.
    fn state() -> State {
        let mut s = State::default();
        s.set_membership([
            member("mx1", Role::Mail),
            member("mx2", Role::Mail),
            member("mx3", Role::Mail),
            member("w1", Role::Witness),
        ]);
        let spec = |ip: &str, home: &str| AddressSpec {
            ip: ip.into(),
            interface: "eth0".into(),
            home: home.into(),
            services: vec![],
        };
        s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![spec("192.0.2.101/24", "mx1"), spec("192.0.2.102/24", "mx2")],
            at_ms: 0,
        });
        s
    }

    fn live(current: &[(&str, u64)], expired: &[&str]) -> Liveness {
        Liveness {
            current: current.iter().map(|(n, ms)| (n.to_string(), *ms)).collect(),
            expired: expired.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn all_live() -> Liveness {
        live(
            &[("mx1", 1000), ("mx2", 1000), ("mx3", 1000), ("w1", 1000)],
            &[],
        )
    }

    /// Apply the plan's commands, asserting the model accepts each.
    fn run(s: &mut State, l: &Liveness, p: &Policy) -> Vec<Command> {
        let cmds = plan(s, l, p, NOW);
        for c in &cmds {
            let r = s.apply(c);
            assert!(r.refused.is_none(), "{c:?} refused: {:?}", r.refused);
        }
        cmds
    }

    fn owner(s: &State, ip: &str) -> Option<String> {
        s.addresses[ip].owner.clone()
    }

    fn placed() -> State {
        let mut s = state();
        run(&mut s, &all_live(), &Policy::default());
        s
    }

    #[test]
    fn unowned_addresses_go_home() {
        let s = placed();
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx1"));
        assert_eq!(owner(&s, "192.0.2.102/24").as_deref(), Some("mx2"));
        assert_eq!(s.addresses["192.0.2.101/24"].epoch, 1);
    }

    #[test]
    fn unowned_address_with_dead_home_goes_to_least_loaded_live_node() {
        let mut s = state();
        run(
            &mut s,
            &live(&[("mx2", 10), ("mx3", 10)], &["mx1"]),
            &Policy::default(),
        );
        // .101's home mx1 is down: mx2 gets .102 (home), so .101 goes to mx3 (fewest).
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
        assert_eq!(owner(&s, "192.0.2.102/24").as_deref(), Some("mx2"));
    }

    #[test]
    fn nothing_is_placed_on_a_witness_or_without_a_current_lease() {
        let mut s = state();
        let cmds = run(&mut s, &live(&[("w1", 10)], &[]), &Policy::default());
        assert!(cmds.is_empty(), "{cmds:?}");
    }

    #[test]
    fn settled_placement_plans_nothing() {
        let s = placed();
        assert!(plan(&s, &all_live(), &Policy::default(), NOW).is_empty());
    }

    #[test]
    fn expired_owner_loses_its_address_to_the_least_loaded_live_node() {
        let mut s = placed();
        let l = live(&[("mx2", 5000), ("mx3", 5000)], &["mx1"]);
        let cmds = run(&mut s, &l, &Policy::default());
        assert_eq!(cmds.len(), 1);
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
        assert_eq!(s.addresses["192.0.2.101/24"].epoch, 2);
        assert!(matches!(
            cmds[0],
            Command::Assign {
                reason: MoveReason::LeaseExpired,
                ..
            }
        ));
    }

    #[test]
    fn owner_whose_lease_just_lapsed_keeps_its_address_until_surely_expired() {
        let s = placed();
        // mx1 is neither current nor expired: the leader cannot be sure it let go.
        let l = live(&[("mx2", 5000), ("mx3", 5000)], &[]);
        assert!(plan(&s, &l, &Policy::default(), NOW).is_empty());
    }

    #[test]
    fn expired_owner_with_no_live_node_keeps_its_address() {
        let s = placed();
        let l = live(&[], &["mx1", "mx2", "mx3"]);
        assert!(plan(&s, &l, &Policy::default(), NOW).is_empty());
    }

    #[test]
    fn stable_tie_break_by_name() {
        let mut s = placed();
        // mx1 and mx2 both die: mx3 takes both.
        run(
            &mut s,
            &live(&[("mx3", 9)], &["mx1", "mx2"]),
            &Policy::default(),
        );
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
        assert_eq!(owner(&s, "192.0.2.102/24").as_deref(), Some("mx3"));
    }

    #[test]
    fn drained_owner_hands_over_and_the_target_gets_it_after_release() {
        let mut s = placed();
        s.apply(&Command::SetAdmin {
            node: "mx1".into(),
            state: AdminState::Drained,
            by: "mx1".into(),
            at_ms: 1,
        });
        let cmds = run(&mut s, &all_live(), &Policy::default());
        assert!(matches!(
            &cmds[..],
            [Command::StartHandoff { to, reason: MoveReason::Drained, .. }] if to == "mx3"
        ));
        // mx1 still owns it until it confirms removal.
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx1"));
        assert!(plan(&s, &all_live(), &Policy::default(), NOW).is_empty());
        let r = s.apply(&Command::Released {
            ip: "192.0.2.101/24".into(),
            node: "mx1".into(),
            epoch: 1,
            at_ms: 100,
        });
        assert!(r.changed);
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
        let r = s.apply(&Command::Serving {
            ip: "192.0.2.101/24".into(),
            node: "mx3".into(),
            epoch: 2,
            at_ms: 130,
        });
        assert!(r.changed);
        assert!(matches!(
            s.events.back().unwrap().kind,
            crate::model::EventKind::Serving {
                unserved_ms: Some(30),
                ..
            }
        ));
    }

    #[test]
    fn drained_owner_that_dies_mid_handoff_is_taken_over_after_expiry() {
        let mut s = placed();
        s.apply(&Command::SetAdmin {
            node: "mx1".into(),
            state: AdminState::Drained,
            by: "mx1".into(),
            at_ms: 1,
        });
        run(&mut s, &all_live(), &Policy::default());
        let l = live(&[("mx2", 9), ("mx3", 9)], &["mx1"]);
        run(&mut s, &l, &Policy::default());
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
        assert!(s.addresses["192.0.2.101/24"].handoff.is_none());
    }

    #[test]
    fn handoff_to_a_node_that_lost_its_lease_is_called_off() {
        let mut s = placed();
        s.apply(&Command::RequestMove {
            ip: "192.0.2.101/24".into(),
            to: "mx3".into(),
            by: "mx2".into(),
            at_ms: 5,
        });
        assert!(s.addresses["192.0.2.101/24"].handoff.is_some());
        let l = live(&[("mx1", 9), ("mx2", 9)], &[]);
        let cmds = run(&mut s, &l, &Policy::default());
        assert!(
            matches!(&cmds[..], [Command::CancelHandoff { .. }]),
            "{cmds:?}"
        );
        assert!(s.addresses["192.0.2.101/24"].handoff.is_none());
    }

    #[test]
    fn failback_waits_for_the_stable_period_then_hands_back() {
        let mut s = placed();
        run(
            &mut s,
            &live(&[("mx2", 9), ("mx3", 9)], &["mx1"]),
            &Policy::default(),
        );
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
        let policy = Policy {
            auto_failback: true,
            failback_after_ms: 60_000,
        };
        // mx1 is back but only for 10 s.
        let back = live(&[("mx1", 10_000), ("mx2", 90_000), ("mx3", 90_000)], &[]);
        assert!(plan(&s, &back, &policy, NOW).is_empty());
        let stable = live(&[("mx1", 60_000), ("mx2", 90_000), ("mx3", 90_000)], &[]);
        let cmds = run(&mut s, &stable, &policy);
        assert!(matches!(
            &cmds[..],
            [Command::StartHandoff { to, reason: MoveReason::Failback, .. }] if to == "mx1"
        ));
    }

    #[test]
    fn manual_failback_never_moves_back() {
        let mut s = placed();
        run(
            &mut s,
            &live(&[("mx2", 9), ("mx3", 9)], &["mx1"]),
            &Policy::default(),
        );
        let policy = Policy {
            auto_failback: false,
            failback_after_ms: 1,
        };
        let stable = live(&[("mx1", 999_999), ("mx2", 9), ("mx3", 9)], &[]);
        assert!(plan(&s, &stable, &policy, NOW).is_empty());
    }

    #[test]
    fn operator_move_away_from_home_is_not_undone_by_failback() {
        let mut s = placed();
        s.apply(&Command::RequestMove {
            ip: "192.0.2.101/24".into(),
            to: "mx3".into(),
            by: "mx1".into(),
            at_ms: 5,
        });
        s.apply(&Command::Released {
            ip: "192.0.2.101/24".into(),
            node: "mx1".into(),
            epoch: 1,
            at_ms: 6,
        });
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
        assert!(s.addresses["192.0.2.101/24"].pinned);
        let stable = live(&[("mx1", 999_999), ("mx2", 9), ("mx3", 9)], &[]);
        assert!(plan(&s, &stable, &Policy::default(), NOW).is_empty());
    }

    #[test]
    fn stale_decisions_change_nothing() {
        let mut s = placed();
        let before = s.clone();
        let r = s.apply(&Command::Assign {
            ip: "192.0.2.101/24".into(),
            to: "mx2".into(),
            epoch: 0,
            reason: MoveReason::LeaseExpired,
            at_ms: 9,
        });
        assert!(r.refused.unwrap().contains("stale"));
        let r = s.apply(&Command::Released {
            ip: "192.0.2.101/24".into(),
            node: "mx2".into(),
            epoch: 1,
            at_ms: 9,
        });
        assert!(r.refused.is_some());
        assert_eq!(s, before);
    }

    #[test]
    fn epochs_only_increase_across_every_change_of_owner() {
        let mut s = placed();
        let mut last = s.addresses["192.0.2.101/24"].epoch;
        let scenarios = [
            live(&[("mx2", 9), ("mx3", 9)], &["mx1"]),
            live(&[("mx1", 99_999), ("mx2", 9)], &["mx3"]),
            live(&[("mx3", 99_999)], &["mx1", "mx2"]),
        ];
        for l in &scenarios {
            run(&mut s, l, &Policy::default());
            let e = s.addresses["192.0.2.101/24"].epoch;
            assert!(e >= last);
            last = e;
        }
        assert!(last >= 3, "epoch {last}");
    }

    #[test]
    fn witness_or_unknown_node_cannot_be_assigned_by_anyone() {
        let mut s = state();
        for to in ["w1", "mx9"] {
            let r = s.apply(&Command::Assign {
                ip: "192.0.2.101/24".into(),
                to: to.into(),
                epoch: 0,
                reason: MoveReason::Operator,
                at_ms: 1,
            });
            assert!(r.refused.is_some(), "{to}");
        }
        let r = s.apply(&Command::RequestMove {
            ip: "192.0.2.101/24".into(),
            to: "w1".into(),
            by: "mx1".into(),
            at_ms: 1,
        });
        assert!(r.refused.unwrap().contains("not an active mail member"));
    }

    #[test]
    fn removed_owner_loses_its_address_once_expired() {
        let mut s = placed();
        s.set_membership([
            member("mx2", Role::Mail),
            member("mx3", Role::Mail),
            member("w1", Role::Witness),
        ]);
        let l = live(&[("mx2", 9), ("mx3", 9)], &["mx1"]);
        let cmds = run(&mut s, &l, &Policy::default());
        assert!(matches!(
            &cmds[..],
            [Command::Assign {
                reason: MoveReason::NotMember,
                ..
            }]
        ));
    }

    #[test]
    fn revision_counts_owner_changes() {
        let s = state();
        let r0 = s.revision;
        let s = {
            let mut s = s;
            run(&mut s, &all_live(), &Policy::default());
            s
        };
        assert_eq!(s.revision, r0 + 2);
    }
}
