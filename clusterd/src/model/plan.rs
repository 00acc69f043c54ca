//! The leader's placement planner: from the cluster state and what the leader knows of leases,
//! the commands that move addresses where they should be.
//!
//! Pure: the daemon computes [`Liveness`] from its lease table with `clusterd_fencing`
//! arithmetic, passes the time, and proposes the returned commands. The rules, in order of
//! precedence for each address:
//!
//! 1. Nobody owns it: give it to the best candidate (below). A new address whose home may hold
//!    addresses but is not healthy yet (no lease, or a failing first probe) waits
//!    [`HOME_WAIT_MS`] from its declaration for the home: nodes of a new cluster come up seconds
//!    apart, and an address placed elsewhere would only return after the failback period.
//! 2. Its owner's lease has surely ended (and this leader's quiet period after election is over),
//!    or the owner left the cluster: give it to the handoff target if that is still a good
//!    choice, else the best candidate. With no live node it stays where it is.
//! 3. Its owner is live but drained: start a planned handoff to the best candidate.
//! 4. A planned handoff whose target is no longer fit (lease lapsed, drained, or now failing a
//!    service the address needs): call it off.
//! 5. A service the address needs is critical on its owner: a planned handoff to the best
//!    *healthy* candidate. If no node passes, the address stays (no ping-pong).
//! 6. Auto failback: its home node has held a current lease for the failback period, passes the
//!    address's services past the hold-down, and the address is elsewhere (and not pinned there
//!    by an operator): hand it back.
//!
//! The best candidate is, among nodes holding a current lease that may hold addresses: the home
//! node if healthy for the address, else the healthy node with the fewest addresses (ties broken
//! by name, so placement is stable); only when no node is healthy, the home node, else the least
//! loaded node. Healthy means every service the address needs is up there, and each one that
//! ever failed there has been up for the hold-down period since.
//!
//! A node that is neither current nor surely expired (its lease just lapsed) is left alone:
//! its addresses stay, and it gets nothing new.

use std::collections::{BTreeMap, BTreeSet};

use super::{AddressState, Command, MoveReason, State};

/// How long a new address waits for its home to become healthy before it goes elsewhere (ms).
pub const HOME_WAIT_MS: u64 = 5_000;

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
    /// How long a service that failed on a node must pass again before the node is chosen for
    /// an address needing it (ms).
    pub hold_down_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            auto_failback: true,
            failback_after_ms: 60_000,
            hold_down_ms: 30_000,
        }
    }
}

/// Candidate choice for one planning pass.
struct Chooser<'a> {
    state: &'a State,
    live: &'a Liveness,
    policy: &'a Policy,
    now_ms: u64,
    /// Addresses each node holds or is about to receive, updated as we plan.
    load: BTreeMap<String, usize>,
}

impl Chooser<'_> {
    /// May hold addresses and holds a current lease.
    fn fit(&self, node: &str) -> bool {
        self.state.can_hold(node) && self.live.current.contains_key(node)
    }

    /// Fit, and passes every service `a` needs past the hold-down.
    fn healthy(&self, node: &str, a: &AddressState) -> bool {
        self.fit(node)
            && self.state.eligible(
                node,
                &a.spec.services,
                self.now_ms,
                self.policy.hold_down_ms,
            )
    }

    fn least_loaded(&self, ok: impl Fn(&str) -> bool) -> Option<String> {
        self.live
            .current
            .keys()
            .filter(|n| ok(n))
            .min_by_key(|n| (self.load.get(*n).copied().unwrap_or(0), (*n).clone()))
            .cloned()
    }

    /// The best node for `a` other than `except`: `first` (e.g. a handoff target) or home if
    /// healthy, else the least loaded healthy node; unless `healthy_only`, then the same among
    /// merely fit nodes.
    fn choose(
        &self,
        a: &AddressState,
        first: Option<&str>,
        except: Option<&str>,
        healthy_only: bool,
    ) -> Option<String> {
        let not_except = |n: &str| Some(n) != except;
        let preferred = [first, Some(a.spec.home.as_str())];
        let pick = |ok: &dyn Fn(&str) -> bool| {
            preferred
                .iter()
                .flatten()
                .find(|n| not_except(n) && ok(n))
                .map(|n| n.to_string())
                .or_else(|| self.least_loaded(|n| not_except(n) && ok(n)))
        };
        pick(&|n| self.healthy(n, a)).or_else(|| {
            if healthy_only {
                None
            } else {
                pick(&|n| self.fit(n))
            }
        })
    }

    fn took(&mut self, to: &str, from: Option<&str>) {
        *self.load.entry(to.to_string()).or_default() += 1;
        if let Some(n) = from.and_then(|f| self.load.get_mut(f)) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The node a command takes an address from without its consent: an [`Command::Assign`] of
/// an address that `state` says another node owns (a takeover). The leader must not grant that
/// node a lease naming an earlier log index once it decided this (`lease::LeaseTable`). A
/// planned move is not a taking: the owner releases first.
pub fn taken_from<'a>(state: &'a State, cmd: &Command) -> Option<&'a str> {
    let Command::Assign { ip, to, .. } = cmd else {
        return None;
    };
    state
        .addresses
        .get(ip)
        .and_then(|a| a.owner.as_deref())
        .filter(|owner| owner != to)
}

/// The commands that bring placement where it should be. At most one command per address.
pub fn plan(state: &State, live: &Liveness, policy: &Policy, now_ms: u64) -> Vec<Command> {
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for a in state.addresses.values() {
        if let Some(o) = &a.owner {
            *load.entry(o.clone()).or_default() += 1;
        }
        if let Some(h) = &a.handoff {
            *load.entry(h.to.clone()).or_default() += 1;
        }
    }
    let mut c = Chooser {
        state,
        live,
        policy,
        now_ms,
        load,
    };

    // Addresses going home first, so the load seen by the others counts them.
    let mut order: Vec<(&String, &AddressState)> = state.addresses.iter().collect();
    order.sort_by_key(|(ip, a)| {
        let home_ok = c.fit(&a.spec.home);
        (
            !(a.owner.is_none() && c.healthy(&a.spec.home, a)),
            !(a.owner.is_none() && home_ok),
            (*ip).clone(),
        )
    });
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
            term: None,
        };
        let handoff = |to: String, reason| Command::StartHandoff {
            ip: ip.clone(),
            to,
            epoch,
            reason,
            at_ms: now_ms,
            term: None,
        };
        let Some(owner) = a.owner.as_deref() else {
            let waiting_for_home = state.can_hold(home)
                && !c.healthy(home, a)
                && a.declared_ms
                    .is_some_and(|d| now_ms < d.saturating_add(HOME_WAIT_MS));
            if waiting_for_home {
                continue;
            }
            if let Some(t) = c.choose(a, None, None, false) {
                c.took(&t, None);
                out.push(assign(t, MoveReason::Initial));
            }
            continue;
        };

        let owner_gone = state
            .members
            .get(owner)
            .is_none_or(|m| m.role != super::Role::Mail);
        if live.expired.contains(owner) {
            let target = c.choose(
                a,
                a.handoff.as_ref().map(|h| h.to.as_str()),
                Some(owner),
                false,
            );
            if let Some(t) = target {
                c.took(&t, Some(owner));
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
            if !c.fit(&h.to) || !state.failing(&h.to, &a.spec.services).is_empty() {
                out.push(Command::CancelHandoff {
                    ip: ip.clone(),
                    epoch,
                    at_ms: now_ms,
                });
            }
            continue;
        }

        if !state.can_hold(owner) {
            // Drained (or no longer a mail node): a planned move to the best live node.
            if let Some(t) = c.choose(a, None, Some(owner), false) {
                c.took(&t, None);
                let reason = if owner_gone {
                    MoveReason::NotMember
                } else {
                    MoveReason::Drained
                };
                out.push(handoff(t, reason));
            }
            continue;
        }
        if !state.failing(owner, &a.spec.services).is_empty() {
            // Only to a node where everything passes; otherwise stay (no ping-pong).
            if let Some(t) = c.choose(a, None, Some(owner), true) {
                c.took(&t, None);
                out.push(handoff(t, MoveReason::ServiceFailed));
            }
            continue;
        }
        if policy.auto_failback
            && owner != home
            && !a.pinned
            && c.healthy(home, a)
            && live.current.get(home).copied().unwrap_or(0) >= policy.failback_after_ms
        {
            out.push(handoff(home.to_string(), MoveReason::Failback));
        }
    }
    out
}

/// Whether `a` stays on an owner that fails one of its services because no other node passes
/// them all (what `status` reports as "stuck"). Uses membership and replicated health only.
pub fn stuck_on_failing_owner(
    state: &State,
    a: &AddressState,
    now_ms: u64,
    hold_down_ms: u64,
) -> bool {
    let Some(owner) = a.owner.as_deref() else {
        return false;
    };
    !state.failing(owner, &a.spec.services).is_empty()
        && !state.members.keys().any(|n| {
            n != owner
                && state.can_hold(n)
                && state.eligible(n, &a.spec.services, now_ms, hold_down_ms)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AddressSpec, AdminState, Member, Refusal, Role};

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
    fn a_takeover_takes_from_the_old_owner_and_nothing_else_takes() {
        let s = placed();
        let l = live(&[("mx2", 5000), ("mx3", 5000)], &["mx1"]);
        let cmds = plan(&s, &l, &Policy::default(), NOW);
        assert_eq!(cmds.len(), 1);
        assert_eq!(taken_from(&s, &cmds[0]), Some("mx1"));
        // A planned move, an assignment to the owner itself and a first placement take nothing.
        let ip = "192.0.2.101/24".to_string();
        let handoff = Command::StartHandoff {
            ip: ip.clone(),
            to: "mx2".into(),
            epoch: 1,
            reason: MoveReason::Operator,
            at_ms: NOW,
            term: None,
        };
        assert_eq!(taken_from(&s, &handoff), None);
        let to_owner = Command::Assign {
            ip,
            to: "mx1".into(),
            epoch: 1,
            reason: MoveReason::Initial,
            at_ms: NOW,
            term: None,
        };
        assert_eq!(taken_from(&s, &to_owner), None);
        assert_eq!(taken_from(&state(), &cmds[0]), None);
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
        drain(&mut s, "mx1");
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
        drain(&mut s, "mx1");
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
            hold_down_ms: 30_000,
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
            hold_down_ms: 30_000,
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
    fn a_decision_applies_only_in_the_term_it_was_made_in() {
        let s = placed();
        let l = live(&[("mx2", 5000), ("mx3", 5000)], &["mx1"]);
        let cmds = plan(&s, &l, &Policy::default(), NOW);
        let [takeover] = &cmds[..] else {
            panic!("one takeover expected: {cmds:?}");
        };
        let takeover = takeover.clone().decided_in(3);
        assert_eq!(takeover.decided_term(), Some(3));
        // Written by the leader of a later term (it lost and won the leadership meanwhile):
        // refused, and nothing changes.
        let mut later = s.clone();
        let r = later.apply_entry(&takeover, 4);
        let written_later = Refusal::OtherTerm {
            decided: 3,
            written: 4,
        };
        assert_eq!(r.refused, Some(written_later));
        assert_eq!(later, s);
        // In its own term it applies.
        let mut same = s.clone();
        let r = same.apply_entry(&takeover, 3);
        assert!(r.changed && r.refused.is_none(), "{r:?}");
        assert_ne!(owner(&same, "192.0.2.101/24").as_deref(), Some("mx1"));
        // A planned move is stamped and checked the same way; a command without a stamp, or of a
        // kind no leader decides, is applied in any term.
        let handoff = Command::StartHandoff {
            ip: "192.0.2.101/24".into(),
            to: "mx2".into(),
            epoch: 1,
            reason: MoveReason::Operator,
            at_ms: NOW,
            term: None,
        };
        assert!(s.clone().apply_entry(&handoff, 9).refused.is_none());
        let stamped = handoff.decided_in(2);
        assert!(s.clone().apply_entry(&stamped, 9).refused.is_some());
        let note = Command::Note {
            by: "mx1".into(),
            text: "hello".into(),
            at_ms: NOW,
        }
        .decided_in(2);
        assert_eq!(note.decided_term(), None);
        assert!(s.clone().apply_entry(&note, 9).refused.is_none());
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
            term: None,
        });
        assert!(matches!(
            r.refused,
            Some(Refusal::Stale {
                epoch: 0,
                current: 1,
                ..
            })
        ));
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
                term: None,
            });
            assert!(r.refused.is_some(), "{to}");
        }
        let r = s.apply(&Command::RequestMove {
            ip: "192.0.2.101/24".into(),
            to: "w1".into(),
            by: "mx1".into(),
            at_ms: 1,
        });
        assert!(matches!(r.refused, Some(Refusal::NotActive { .. })));
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

    // ---- health ----

    use crate::model::{Health, HealthReport};

    /// Like `state()` but both addresses need imap.
    fn with_services() -> State {
        let mut s = state();
        let spec = |ip: &str, home: &str| AddressSpec {
            ip: ip.into(),
            interface: "eth0".into(),
            home: home.into(),
            services: vec!["imap".into()],
        };
        s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![spec("192.0.2.101/24", "mx1"), spec("192.0.2.102/24", "mx2")],
            at_ms: 0,
        });
        s
    }

    fn health(s: &mut State, node: &str, h: Health, at_ms: u64) {
        let a = s.apply(&Command::Health(HealthReport {
            node: node.into(),
            check: "imap".into(),
            health: h,
            reason: String::new(),
            latency_ms: None,
            at_ms,
        }));
        assert!(a.refused.is_none(), "{a:?}");
    }

    #[test]
    fn an_operator_move_to_a_node_failing_the_addresss_service_is_refused() {
        let mut s = healthy_cluster();
        health(&mut s, "mx2", Health::Critical, 5000);
        let mv = |s: &mut State, to: &str| {
            s.apply(&Command::RequestMove {
                ip: "192.0.2.101/24".into(),
                to: to.into(),
                by: "op".into(),
                at_ms: 6000,
            })
        };
        let r = mv(&mut s, "mx2");
        assert_eq!(
            r.refused,
            Some(Refusal::ServiceFailing {
                node: "mx2".into(),
                ip: "192.0.2.101/24".into(),
                checks: vec!["imap".into()],
            })
        );
        assert!(s.addresses["192.0.2.101/24"].handoff.is_none());
        // A node that passes takes it as before; the owner itself may be named (it pins).
        assert!(mv(&mut s, "mx3").refused.is_none());
        health(&mut s, "mx1", Health::Critical, 7000);
        assert!(mv(&mut s, "mx1").refused.is_none());
    }

    /// Placed at home, imap passing everywhere since long ago.
    fn healthy_cluster() -> State {
        let mut s = with_services();
        for n in ["mx1", "mx2", "mx3"] {
            health(&mut s, n, Health::Passing, 0);
        }
        run(&mut s, &all_live(), &Policy::default());
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx1"));
        s
    }

    /// An operator drains `node`.
    fn drain(s: &mut State, node: &str) {
        s.apply(&Command::SetAdmin {
            node: node.into(),
            state: AdminState::Drained,
            by: "op".into(),
            at_ms: 1,
        });
    }

    /// (address, new owner) of every assignment in `cmds`.
    fn assigned(cmds: &[Command]) -> Vec<(String, String)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Assign { ip, to, .. } => Some((ip.clone(), to.clone())),
                _ => None,
            })
            .collect()
    }

    fn handoff_to(cmds: &[Command]) -> Vec<(String, MoveReason)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::StartHandoff { to, reason, .. } => Some((to.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_critical_service_on_the_owner_hands_the_address_to_a_passing_node() {
        let mut s = healthy_cluster();
        health(&mut s, "mx1", Health::Critical, NOW - 10);
        let cmds = plan(&s, &all_live(), &Policy::default(), NOW);
        // mx3 holds nothing, mx2 holds .102: mx3 is the least loaded passing node.
        assert_eq!(
            handoff_to(&cmds),
            vec![("mx3".to_string(), MoveReason::ServiceFailed)]
        );
    }

    #[test]
    fn a_warning_moves_nothing() {
        let mut s = healthy_cluster();
        health(&mut s, "mx1", Health::Warning, NOW - 10);
        assert!(plan(&s, &all_live(), &Policy::default(), NOW).is_empty());
    }

    #[test]
    fn when_no_node_passes_the_address_stays_and_is_reported_stuck() {
        let mut s = healthy_cluster();
        for n in ["mx1", "mx2", "mx3"] {
            health(&mut s, n, Health::Critical, NOW - 10);
        }
        assert!(plan(&s, &all_live(), &Policy::default(), NOW).is_empty());
        let a = &s.addresses["192.0.2.101/24"];
        assert!(stuck_on_failing_owner(&s, a, NOW, 30_000));
        // Pending nodes do not count as passing either.
        let mut s = healthy_cluster();
        health(&mut s, "mx1", Health::Critical, NOW - 10);
        for n in ["mx2", "mx3"] {
            s.apply(&Command::HealthReset {
                node: n.into(),
                checks: vec!["imap".into()],
                at_ms: NOW - 5,
            });
        }
        assert!(plan(&s, &all_live(), &Policy::default(), NOW).is_empty());
    }

    #[test]
    fn a_node_that_failed_recently_is_not_chosen_until_the_hold_down_passed() {
        let mut s = healthy_cluster();
        // mx3 failed and came back 10 s ago; mx2 is fine but busier.
        health(&mut s, "mx3", Health::Critical, NOW - 20_000);
        health(&mut s, "mx3", Health::Passing, NOW - 10_000);
        health(&mut s, "mx1", Health::Critical, NOW - 10);
        let p = Policy::default();
        assert_eq!(
            handoff_to(&plan(&s, &all_live(), &p, NOW)),
            vec![("mx2".to_string(), MoveReason::ServiceFailed)]
        );
        // Once mx3 has passed for the hold-down, it is the least loaded choice again.
        assert_eq!(
            handoff_to(&plan(&s, &all_live(), &p, NOW - 10_000 + 30_000)),
            vec![("mx3".to_string(), MoveReason::ServiceFailed)]
        );
    }

    #[test]
    fn failback_waits_for_the_home_hold_down_as_well_as_the_stable_period() {
        let mut s = healthy_cluster();
        health(&mut s, "mx1", Health::Critical, NOW - 100);
        run(&mut s, &all_live(), &Policy::default());
        s.apply(&Command::Released {
            ip: "192.0.2.101/24".into(),
            node: "mx1".into(),
            epoch: s.addresses["192.0.2.101/24"].epoch,
            at_ms: NOW,
        });
        run(&mut s, &all_live(), &Policy::default());
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
        health(&mut s, "mx1", Health::Passing, NOW);
        let p = Policy {
            auto_failback: true,
            failback_after_ms: 0,
            hold_down_ms: 5_000,
        };
        let stable = live(&[("mx1", 999_999), ("mx2", 9), ("mx3", 9)], &[]);
        assert!(plan(&s, &stable, &p, NOW + 4_999).is_empty());
        assert_eq!(
            handoff_to(&plan(&s, &stable, &p, NOW + 5_000)),
            vec![("mx1".to_string(), MoveReason::Failback)]
        );
    }

    #[test]
    fn a_dead_owner_s_address_goes_to_a_passing_node_before_a_less_loaded_failing_one() {
        let mut s = healthy_cluster();
        health(&mut s, "mx3", Health::Critical, NOW - 10);
        let l = live(&[("mx2", 9), ("mx3", 9)], &["mx1"]);
        let cmds = run(&mut s, &l, &Policy::default());
        assert_eq!(cmds.len(), 1);
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx2"));
    }

    #[test]
    fn a_dead_owner_s_address_still_goes_somewhere_when_nothing_passes() {
        let mut s = healthy_cluster();
        health(&mut s, "mx2", Health::Critical, NOW - 10);
        health(&mut s, "mx3", Health::Critical, NOW - 10);
        let l = live(&[("mx2", 9), ("mx3", 9)], &["mx1"]);
        run(&mut s, &l, &Policy::default());
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
    }

    #[test]
    fn initial_placement_goes_home_while_every_check_is_still_pending() {
        let mut s = with_services();
        for n in ["mx1", "mx2", "mx3"] {
            s.apply(&Command::HealthReset {
                node: n.into(),
                checks: vec!["imap".into()],
                at_ms: NOW,
            });
        }
        run(&mut s, &all_live(), &Policy::default());
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx1"));
        assert_eq!(owner(&s, "192.0.2.102/24").as_deref(), Some("mx2"));
    }

    #[test]
    fn a_new_address_waits_for_its_home_then_goes_elsewhere() {
        // Declared at 0; mx1 (home of .101) has no lease yet.
        let s = state();
        let without_mx1 = live(&[("mx2", 10), ("mx3", 10)], &[]);
        let cmds = plan(&s, &without_mx1, &Policy::default(), HOME_WAIT_MS - 1);
        assert_eq!(
            assigned(&cmds),
            vec![("192.0.2.102/24".to_string(), "mx2".to_string())],
            "only .102, whose home is there, is placed: {cmds:?}"
        );
        // The home arrives in time: it gets its address.
        let cmds = plan(&s, &all_live(), &Policy::default(), HOME_WAIT_MS - 1);
        assert!(assigned(&cmds).contains(&("192.0.2.101/24".into(), "mx1".into())));
        // It does not: after the wait the address goes to the least loaded live node.
        let cmds = plan(&s, &without_mx1, &Policy::default(), HOME_WAIT_MS);
        assert!(assigned(&cmds).contains(&("192.0.2.101/24".into(), "mx3".into())));
    }

    #[test]
    fn a_new_address_does_not_wait_for_a_drained_home() {
        let mut s = state();
        drain(&mut s, "mx1");
        let cmds = plan(&s, &all_live(), &Policy::default(), 2);
        assert!(assigned(&cmds).contains(&("192.0.2.101/24".into(), "mx3".into())));
    }

    #[test]
    fn initial_placement_avoids_a_home_that_fails_the_service() {
        let mut s = with_services();
        health(&mut s, "mx1", Health::Critical, NOW - 10);
        health(&mut s, "mx2", Health::Passing, NOW - 10);
        health(&mut s, "mx3", Health::Passing, NOW - 10);
        run(&mut s, &all_live(), &Policy::default());
        assert_eq!(owner(&s, "192.0.2.101/24").as_deref(), Some("mx3"));
    }

    #[test]
    fn a_handoff_to_a_node_that_starts_failing_is_called_off() {
        let mut s = healthy_cluster();
        health(&mut s, "mx1", Health::Critical, NOW - 100);
        run(&mut s, &all_live(), &Policy::default());
        assert!(s.addresses["192.0.2.101/24"].handoff.is_some());
        health(&mut s, "mx3", Health::Critical, NOW - 50);
        let cmds = run(&mut s, &all_live(), &Policy::default());
        assert!(matches!(&cmds[..], [Command::CancelHandoff { .. }]));
        assert!(s.addresses["192.0.2.101/24"].handoff.is_none());
        // Next round picks mx2, which still passes.
        assert_eq!(
            handoff_to(&run(&mut s, &all_live(), &Policy::default())),
            vec![("mx2".to_string(), MoveReason::ServiceFailed)]
        );
    }

    #[test]
    fn addresses_without_services_ignore_health() {
        let mut s = placed();
        for n in ["mx1", "mx2", "mx3"] {
            health(&mut s, n, Health::Critical, NOW - 10);
        }
        assert!(plan(&s, &all_live(), &Policy::default(), NOW).is_empty());
    }
}
