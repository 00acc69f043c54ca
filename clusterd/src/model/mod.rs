//! The replicated cluster model: what every node agrees on through Raft.
//!
//! This module owns the cluster state (members, floating addresses and their owners, per-node
//! admin state, the bounded event history), the commands that are Raft log entries, and `apply`,
//! which turns one command into the next state. It is pure: no IO, no tokio, no clock reads.
//! Every timestamp arrives inside a command, stamped by the node that proposed it, so every
//! replica computes the same state from the same log.
//!
//! Members come from Raft's own membership log entries (`set_membership`); the model keeps a copy
//! so that planners and `status` can reason about names and roles without reaching into openraft.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a member does in the cluster.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs dovecot/postfix: may hold floating addresses, runs health checks, serves DNS, votes.
    #[default]
    Mail,
    /// Only votes, so that two mail nodes keep quorum when one of them dies. No addresses, no checks.
    Witness,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Mail => "mail",
            Role::Witness => "witness",
        })
    }
}

mod command;
pub mod drill;
mod event;
pub mod fence;
pub mod health;
pub mod plan;
mod refusal;

pub use command::*;
pub use drill::{Drill, DrillKind};
pub use event::*;
pub use fence::{FenceProgress, FenceRecord};
pub use health::{Health, HealthReport, ServiceHealth};
pub use refusal::{Refusal, RefusalKind};

/// A state whose members are `mail` mail nodes and `witnesses`, all voters (for unit tests).
#[cfg(test)]
pub(crate) fn test_state(mail: &[&str], witnesses: &[&str]) -> State {
    let member = |name: &&str, role| {
        (
            Member {
                name: name.to_string(),
                addr: format!("{name}:7400"),
                role,
            },
            true,
        )
    };
    let mut s = State::default();
    s.set_membership(
        mail.iter()
            .map(|n| member(n, Role::Mail))
            .chain(witnesses.iter().map(|n| member(n, Role::Witness))),
    );
    s
}

/// Raft node id. Operators only ever see names; the id is derived from the name.
pub type NodeId = u64;

/// The stable Raft node id of a member name: the first 8 bytes of SHA-256 of the name.
///
/// Deriving the id from the name means every node computes the same id for a peer from its
/// config alone, with nothing numeric for operators to keep in step.
pub fn node_id(name: &str) -> NodeId {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// A cluster member as stored in Raft membership: how to reach it and what it may do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique member name, e.g. `mx1`.
    pub name: String,
    /// `host:port` of its peer and admin API.
    pub addr: String,
    /// Whether it may hold addresses (`mail`) or only votes (`witness`).
    pub role: Role,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// A floating address as declared in config: identical on every node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AddressSpec {
    /// `ip/prefix`, e.g. `192.0.2.101/24`; the key of the address everywhere.
    pub ip: String,
    /// Interface the address is configured on.
    pub interface: String,
    /// The member that holds it when all is well.
    pub home: String,
    /// Services (check names) the owner must pass.
    pub services: Vec<String>,
}

/// Operator-set state of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes part normally.
    #[default]
    Active,
    /// Keeps running and voting but should hold no addresses.
    Drained,
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdminState::Active => "active",
            AdminState::Drained => "drained",
        })
    }
}

/// A member as the state machine knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// `host:port` of its API.
    pub addr: String,
    /// Mail node or witness.
    pub role: Role,
    /// Voter (true) or learner (false).
    pub voter: bool,
    /// Operator-set admin state.
    pub admin: AdminState,
}

/// A floating address and who serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressState {
    /// The declared address.
    pub spec: AddressSpec,
    /// Current owner, if assigned.
    pub owner: Option<String>,
    /// Assignment epoch (fencing token), increases with every change of owner.
    pub epoch: u64,
    /// When the current owner was assigned (unix ms), if assigned.
    pub since_ms: Option<u64>,
    /// A planned move in progress: the owner removes the address, confirms, then `to` gets it.
    #[serde(default)]
    pub handoff: Option<Handoff>,
    /// When the owner of the current epoch reported the address configured (unix ms).
    #[serde(default)]
    pub serving_since_ms: Option<u64>,
    /// When the previous owner confirmed removal in a planned move (unix ms), until the new
    /// owner reports serving; used to report how long the address was unserved.
    #[serde(default)]
    pub released_ms: Option<u64>,
    /// Placed by an operator away from home: automatic failback leaves it alone.
    #[serde(default)]
    pub pinned: bool,
    /// When the address was first declared (unix ms): a new address waits a little for its
    /// home before going elsewhere.
    #[serde(default)]
    pub declared_ms: Option<u64>,
}

impl AddressState {
    fn new(spec: AddressSpec, at_ms: u64) -> Self {
        AddressState {
            declared_ms: Some(at_ms),
            spec,
            owner: None,
            epoch: 0,
            since_ms: None,
            handoff: None,
            serving_since_ms: None,
            released_ms: None,
            pinned: false,
        }
    }
}

/// A planned move of an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The node that gets the address once the owner released it.
    pub to: String,
    /// Why.
    pub reason: MoveReason,
    /// When the move was decided (unix ms).
    pub at_ms: u64,
}

/// What a node reported as its configured address set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    /// The node's declared addresses, sorted by ip.
    pub addresses: Vec<AddressSpec>,
    /// When it reported them (unix ms).
    pub at_ms: u64,
}

/// Events kept when nothing else is configured.
pub const DEFAULT_HISTORY_LIMIT: usize = 500;

/// The whole replicated cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Members by name, from Raft membership.
    pub members: BTreeMap<String, MemberState>,
    /// Floating addresses by `ip/prefix`.
    pub addresses: BTreeMap<String, AddressState>,
    /// Each node's last reported address set.
    pub declared: BTreeMap<String, Declared>,
    /// Membership as last recorded in the history: (voters, learners).
    pub recorded_membership: (Vec<String>, Vec<String>),
    /// Bounded event history, oldest first. Each event is shared, so that publishing the state
    /// after every apply copies pointers, not the history (which may reach tens of MB).
    pub events: VecDeque<std::sync::Arc<Event>>,
    /// Sequence number of the next event.
    pub next_event_seq: u64,
    /// How many events to keep.
    pub history_limit: usize,
    /// Increases with every change of the address set or of who serves an address (assignment,
    /// serving report, handoff start or cancel); DNS derives its SOA serial from it, so every
    /// node computes the same serial and it never goes backwards.
    #[serde(default)]
    pub revision: u64,
    /// Each mail node's service health by check name, as its probes last decided.
    #[serde(default)]
    pub health: BTreeMap<String, BTreeMap<String, ServiceHealth>>,
    /// Failover drills in progress, by node (at most one at a time).
    #[serde(default)]
    pub drills: BTreeMap<String, Drill>,
    /// Each node's latest fence, by node name.
    #[serde(default)]
    pub fencing: BTreeMap<String, FenceRecord>,
}

impl Default for State {
    fn default() -> Self {
        State::new(DEFAULT_HISTORY_LIMIT)
    }
}

impl State {
    /// An empty state keeping at most `history_limit` events.
    pub fn new(history_limit: usize) -> Self {
        State {
            members: BTreeMap::new(),
            addresses: BTreeMap::new(),
            declared: BTreeMap::new(),
            recorded_membership: (Vec::new(), Vec::new()),
            events: VecDeque::new(),
            next_event_seq: 1,
            history_limit: history_limit.max(1),
            revision: 0,
            health: BTreeMap::new(),
            drills: BTreeMap::new(),
            fencing: BTreeMap::new(),
        }
    }

    /// Replace the member list from a Raft membership: `(name -> member, voter?)`.
    ///
    /// Admin state survives for members that stay.
    pub fn set_membership(&mut self, members: impl IntoIterator<Item = (Member, bool)>) {
        let mut next = BTreeMap::new();
        for (m, voter) in members {
            let admin = self
                .members
                .get(&m.name)
                .map(|s| s.admin)
                .unwrap_or_default();
            next.insert(
                m.name.clone(),
                MemberState {
                    addr: m.addr,
                    role: m.role,
                    voter,
                    admin,
                },
            );
        }
        self.members = next;
    }

    /// Voters and learners by name, as currently known.
    pub fn membership(&self) -> (Vec<String>, Vec<String>) {
        let voters = self
            .members
            .iter()
            .filter(|(_, m)| m.voter)
            .map(|(n, _)| n.clone())
            .collect();
        let learners = self
            .members
            .iter()
            .filter(|(_, m)| !m.voter)
            .map(|(n, _)| n.clone())
            .collect();
        (voters, learners)
    }

    /// Whether the history lacks the current membership (the leader then proposes
    /// [`Command::RecordMembership`]).
    pub fn membership_unrecorded(&self) -> bool {
        self.membership() != self.recorded_membership
    }

    /// The cluster's address set in declaration form, sorted by ip.
    pub fn address_specs(&self) -> Vec<AddressSpec> {
        self.addresses.values().map(|a| a.spec.clone()).collect()
    }

    /// How `node`'s declared set differs from the cluster's, or `None` when they match or the
    /// node has not reported yet.
    pub fn declaration_difference(&self, node: &str) -> Option<String> {
        let declared = self.declared.get(node)?;
        describe_difference(&self.address_specs(), &declared.addresses)
    }

    /// Apply the command of one log entry, appended by the leader of `log_term`. A leader's
    /// decision written in a term other than its own is refused: it was made against the lease
    /// table of a term that ended, and the new term's table may have granted a lease the decision
    /// never saw (a takeover would then leave the address on two nodes).
    pub fn apply_entry(&mut self, cmd: &Command, log_term: u64) -> Applied {
        if let Some(decided) = cmd.decided_term()
            && decided != log_term
        {
            return Applied::refused(Refusal::OtherTerm {
                decided,
                written: log_term,
            });
        }
        self.apply(cmd)
    }

    /// Apply one command. Deterministic: the same state and command give the same result on
    /// every replica.
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        match cmd {
            Command::LeaderElected { node, term, at_ms } => {
                self.push_event(
                    *at_ms,
                    EventKind::LeaderElected {
                        node: node.clone(),
                        term: *term,
                    },
                );
                Applied::changed(true)
            }
            Command::RecordMembership { at_ms } => {
                if !self.membership_unrecorded() {
                    return Applied::changed(false);
                }
                let (voters, learners) = self.membership();
                self.recorded_membership = (voters.clone(), learners.clone());
                self.push_event(*at_ms, EventKind::MembershipChanged { voters, learners });
                Applied::changed(true)
            }
            Command::SetAddresses {
                by,
                addresses,
                at_ms,
            } => self.set_addresses(by, addresses, *at_ms),
            Command::Declare {
                node,
                addresses,
                at_ms,
            } => {
                let mut addresses = addresses.clone();
                addresses.sort();
                if self.declared.get(node).map(|d| &d.addresses) == Some(&addresses) {
                    return Applied::changed(false);
                }
                self.declared.insert(
                    node.clone(),
                    Declared {
                        addresses,
                        at_ms: *at_ms,
                    },
                );
                if let Some(detail) = self.declaration_difference(node) {
                    self.push_event(
                        *at_ms,
                        EventKind::DeclarationDiffers {
                            node: node.clone(),
                            detail,
                        },
                    );
                }
                Applied::changed(true)
            }
            Command::SetAdmin {
                node,
                state,
                by,
                at_ms,
            } => {
                let Some(member) = self.members.get_mut(node) else {
                    return Applied::refused(Refusal::NotAMember { node: node.clone() });
                };
                if member.admin == *state {
                    return Applied::changed(false);
                }
                member.admin = *state;
                self.push_event(
                    *at_ms,
                    EventKind::AdminChanged {
                        node: node.clone(),
                        state: *state,
                        by: by.clone(),
                    },
                );
                Applied::changed(true)
            }
            Command::Assign {
                ip,
                to,
                epoch,
                reason,
                at_ms,
                term: _,
            } => self.assign(ip, to, *epoch, *reason, *at_ms),
            Command::StartHandoff {
                ip,
                to,
                epoch,
                reason,
                at_ms,
                term: _,
            } => self.start_handoff(ip, to, *epoch, *reason, *at_ms),
            Command::CancelHandoff { ip, epoch, at_ms } => {
                let Some(a) = self.addresses.get_mut(ip) else {
                    return Applied::refused(Refusal::UnknownAddress { ip: ip.to_string() });
                };
                if a.epoch != *epoch {
                    return Applied::refused(Refusal::Stale {
                        ip: ip.clone(),
                        epoch: *epoch,
                        current: a.epoch,
                    });
                }
                let Some(h) = a.handoff.take() else {
                    return Applied::changed(false);
                };
                let ip = ip.clone();
                self.revision += 1;
                self.push_event(*at_ms, EventKind::HandoffCancelled { ip, to: h.to });
                Applied::changed(true)
            }
            Command::Released {
                ip,
                node,
                epoch,
                at_ms,
            } => {
                let Some(a) = self.addresses.get(ip) else {
                    return Applied::refused(Refusal::UnknownAddress { ip: ip.to_string() });
                };
                if a.epoch != *epoch || a.owner.as_deref() != Some(node.as_str()) {
                    return Applied::refused(Refusal::Stale {
                        ip: ip.clone(),
                        epoch: *epoch,
                        current: a.epoch,
                    });
                }
                let Some(h) = a.handoff.clone() else {
                    return Applied::refused(Refusal::NothingToRelease { ip: ip.clone() });
                };
                let applied = self.assign(ip, &h.to, *epoch, h.reason, *at_ms);
                if let Some(a) = self.addresses.get_mut(ip) {
                    a.released_ms = Some(*at_ms);
                }
                applied
            }
            Command::Serving {
                ip,
                node,
                epoch,
                at_ms,
            } => {
                let Some(a) = self.addresses.get_mut(ip) else {
                    return Applied::refused(Refusal::UnknownAddress { ip: ip.to_string() });
                };
                if a.epoch != *epoch || a.owner.as_deref() != Some(node.as_str()) {
                    return Applied::refused(Refusal::Stale {
                        ip: ip.clone(),
                        epoch: *epoch,
                        current: a.epoch,
                    });
                }
                if a.serving_since_ms.is_some() {
                    return Applied::changed(false);
                }
                a.serving_since_ms = Some(*at_ms);
                let unserved_ms = a.released_ms.take().map(|r| at_ms.saturating_sub(r));
                self.revision += 1;
                let ip = ip.clone();
                self.push_event(
                    *at_ms,
                    EventKind::Serving {
                        ip,
                        node: node.clone(),
                        epoch: *epoch,
                        unserved_ms,
                    },
                );
                Applied::changed(true)
            }
            Command::RequestMove { ip, to, by, at_ms } => self.request_move(ip, to, by, *at_ms),
            Command::Health(report) => self.report_health(report),
            Command::StartDrill {
                node,
                kind,
                by,
                at_ms,
            } => self.start_drill(node, kind, by, *at_ms),
            Command::DrillReport {
                node,
                result,
                at_ms,
            } => {
                if result.len() > MAX_NOTE_LEN * 4 {
                    return Applied::refused(Refusal::ReportTooLong);
                }
                self.push_event(
                    *at_ms,
                    EventKind::DrillReport {
                        node: node.clone(),
                        result: result.clone(),
                    },
                );
                Applied::changed(true)
            }
            Command::EndDrill { node, by, at_ms } => self.end_drill(node, by, *at_ms),
            Command::HealthReset {
                node,
                checks,
                at_ms,
            } => self.reset_health(node, checks, *at_ms),
            Command::Note { by, text, at_ms } => {
                if text.trim().is_empty() {
                    return Applied::refused(Refusal::EmptyNote);
                }
                if text.len() > MAX_NOTE_LEN {
                    return Applied::refused(Refusal::NoteTooLong { bytes: text.len() });
                }
                self.push_event(
                    *at_ms,
                    EventKind::Note {
                        by: by.clone(),
                        text: text.clone(),
                    },
                );
                Applied::changed(true)
            }
            Command::FenceStarted { .. }
            | Command::FenceSucceeded { .. }
            | Command::FenceFailed { .. }
            | Command::FenceCleared { .. } => self.apply_fence(cmd),
        }
    }

    fn set_addresses(&mut self, by: &str, addresses: &[AddressSpec], at_ms: u64) -> Applied {
        let mut wanted: BTreeMap<&str, &AddressSpec> = BTreeMap::new();
        for spec in addresses {
            if wanted.insert(spec.ip.as_str(), spec).is_some() {
                return Applied::refused(Refusal::DeclaredTwice {
                    ip: spec.ip.clone(),
                });
            }
        }
        let removed: Vec<String> = self
            .addresses
            .keys()
            .filter(|ip| !wanted.contains_key(ip.as_str()))
            .cloned()
            .collect();
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for (ip, spec) in &wanted {
            match self.addresses.get_mut(*ip) {
                None => {
                    added.push(ip.to_string());
                    self.addresses
                        .insert(ip.to_string(), AddressState::new((*spec).clone(), at_ms));
                }
                Some(existing) if existing.spec != **spec => {
                    changed.push(ip.to_string());
                    existing.spec = (*spec).clone();
                }
                Some(_) => {}
            }
        }
        for ip in &removed {
            self.addresses.remove(ip);
        }
        if added.is_empty() && removed.is_empty() && changed.is_empty() {
            return Applied::changed(false);
        }
        self.revision += 1;
        self.push_event(
            at_ms,
            EventKind::AddressesChanged {
                added,
                removed,
                changed,
                by: by.to_string(),
            },
        );
        Applied::changed(true)
    }

    /// Whether `node` may be given addresses at all: a mail member that is not drained.
    pub fn can_hold(&self, node: &str) -> bool {
        self.members
            .get(node)
            .is_some_and(|m| m.role == Role::Mail && m.admin == AdminState::Active)
    }

    fn assign(
        &mut self,
        ip: &str,
        to: &str,
        epoch: u64,
        reason: MoveReason,
        at_ms: u64,
    ) -> Applied {
        if self.members.get(to).is_none_or(|m| m.role != Role::Mail) {
            return Applied::refused(Refusal::CannotHold {
                node: to.to_string(),
                ip: ip.to_string(),
            });
        }
        let Some(a) = self.addresses.get_mut(ip) else {
            return Applied::refused(Refusal::UnknownAddress { ip: ip.to_string() });
        };
        if a.epoch != epoch {
            return Applied::refused(Refusal::Stale {
                ip: ip.to_string(),
                epoch,
                current: a.epoch,
            });
        }
        let from = a.owner.replace(to.to_string());
        a.epoch += 1;
        a.since_ms = Some(at_ms);
        a.handoff = None;
        a.serving_since_ms = None;
        a.released_ms = None;
        a.pinned = reason == MoveReason::Operator && a.spec.home != to;
        let epoch = a.epoch;
        self.revision += 1;
        self.push_event(
            at_ms,
            EventKind::OwnerChanged {
                ip: ip.to_string(),
                from,
                to: to.to_string(),
                epoch,
                reason,
            },
        );
        Applied::changed(true)
    }

    fn start_handoff(
        &mut self,
        ip: &str,
        to: &str,
        epoch: u64,
        reason: MoveReason,
        at_ms: u64,
    ) -> Applied {
        if !self.can_hold(to) {
            return Applied::refused(Refusal::NotActive {
                node: to.to_string(),
                ip: ip.to_string(),
            });
        }
        let Some(a) = self.addresses.get_mut(ip) else {
            return Applied::refused(Refusal::UnknownAddress { ip: ip.to_string() });
        };
        if a.epoch != epoch {
            return Applied::refused(Refusal::Stale {
                ip: ip.to_string(),
                epoch,
                current: a.epoch,
            });
        }
        let Some(from) = a.owner.clone() else {
            return Applied::refused(Refusal::NoOwner { ip: ip.to_string() });
        };
        if from == to || a.handoff.as_ref().is_some_and(|h| h.to == to) {
            return Applied::changed(false);
        }
        a.handoff = Some(Handoff {
            to: to.to_string(),
            reason,
            at_ms,
        });
        self.revision += 1;
        self.push_event(
            at_ms,
            EventKind::HandoffStarted {
                ip: ip.to_string(),
                from,
                to: to.to_string(),
                reason,
            },
        );
        Applied::changed(true)
    }

    fn request_move(&mut self, ip: &str, to: &str, by: &str, at_ms: u64) -> Applied {
        let Some(a) = self.addresses.get(ip) else {
            return Applied::refused(Refusal::UnknownAddress { ip: ip.to_string() });
        };
        if !self.can_hold(to) {
            return Applied::refused(Refusal::NotActive {
                node: to.to_string(),
                ip: ip.to_string(),
            });
        }
        if a.owner.as_deref() != Some(to) {
            let failing = self.failing(to, &a.spec.services);
            if !failing.is_empty() {
                // The planner would take it straight back (a service-failed handoff): refuse
                // rather than move the address twice.
                return Applied::refused(Refusal::ServiceFailing {
                    node: to.to_string(),
                    ip: ip.to_string(),
                    checks: failing.into_iter().map(str::to_string).collect(),
                });
            }
        }
        let epoch = a.epoch;
        match a.owner.clone() {
            None => self.assign(ip, to, epoch, MoveReason::Operator, at_ms),
            Some(owner) if owner == to => {
                let a = self.addresses.get_mut(ip).map(|a| {
                    a.pinned = a.spec.home != to;
                    a.handoff.take()
                });
                if let Some(Some(h)) = a {
                    self.push_event(
                        at_ms,
                        EventKind::HandoffCancelled {
                            ip: ip.to_string(),
                            to: h.to,
                        },
                    );
                }
                let _ = by;
                Applied::changed(false)
            }
            Some(_) => self.start_handoff(ip, to, epoch, MoveReason::Operator, at_ms),
        }
    }

    fn push_event(&mut self, at_ms: u64, kind: EventKind) {
        self.events.push_back(std::sync::Arc::new(Event {
            seq: self.next_event_seq,
            at_ms,
            kind: bounded(kind),
        }));
        self.next_event_seq += 1;
        while self.events.len() > self.history_limit {
            self.events.pop_front();
        }
    }
}

/// Largest replicated state the configuration may allow: what a snapshot may reach.
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;

/// Describe how `declared` differs from `cluster`, or `None` when equal (order ignored).
pub fn describe_difference(cluster: &[AddressSpec], declared: &[AddressSpec]) -> Option<String> {
    let by_ip = |specs: &[AddressSpec]| -> BTreeMap<String, AddressSpec> {
        specs.iter().map(|s| (s.ip.clone(), s.clone())).collect()
    };
    let cluster = by_ip(cluster);
    let declared = by_ip(declared);
    let mut parts = Vec::new();
    let only_declared: BTreeSet<&String> = declared
        .keys()
        .filter(|k| !cluster.contains_key(*k))
        .collect();
    let only_cluster: BTreeSet<&String> = cluster
        .keys()
        .filter(|k| !declared.contains_key(*k))
        .collect();
    if !only_declared.is_empty() {
        parts.push(format!(
            "not in the cluster: {}",
            only_declared
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !only_cluster.is_empty() {
        parts.push(format!(
            "missing from its config: {}",
            only_cluster
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (ip, d) in &declared {
        if let Some(c) = cluster.get(ip)
            && c != d
        {
            parts.push(format!(
                "{ip} differs (cluster: {} home {} [{}], config: {} home {} [{}])",
                c.interface,
                c.home,
                c.services.join(","),
                d.interface,
                d.home,
                d.services.join(",")
            ));
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(kind: &EventKind) -> usize {
        serde_json::to_vec(kind).unwrap().len()
    }

    #[test]
    fn an_event_with_a_huge_text_is_cut_to_the_event_limit_the_same_way_everywhere() {
        let failed = |error: String| EventKind::FenceFailed {
            node: "mx2".into(),
            agent: "redfish".into(),
            attempt: 3,
            error,
            retry_in_ms: 5000,
        };
        let huge = failed("é".repeat(30_000));
        assert!(size(&huge) > MAX_EVENT_BYTES);
        let cut = bounded(huge.clone());
        assert!(size(&cut) <= MAX_EVENT_BYTES, "{} bytes", size(&cut));
        assert_eq!(cut, bounded(huge));
        let EventKind::FenceFailed {
            node,
            error,
            attempt,
            ..
        } = cut
        else {
            panic!("the kind changed");
        };
        assert_eq!((node.as_str(), attempt), ("mx2", 3));
        assert!(error.ends_with(" [cut]") && error.starts_with("éé"));
        // What fits is kept whole: the longest drill report is.
        let report = EventKind::DrillReport {
            node: "mx1".into(),
            result: "r".repeat(MAX_NOTE_LEN * 4),
        };
        assert_eq!(bounded(report.clone()), report);
    }

    #[test]
    fn the_history_at_its_limit_stays_within_the_state_budget_it_was_configured_for() {
        let limit = 50;
        let mut s = State::new(limit);
        for i in 0..(limit as u64 * 2) {
            s.push_event(
                i,
                EventKind::HealthChanged {
                    node: "mx1".into(),
                    check: "imap".into(),
                    from: Some(Health::Passing),
                    to: Health::Critical,
                    reason: format!("{i} {}", "x".repeat(20_000)),
                },
            );
        }
        assert_eq!(s.events.len(), limit);
        let bytes = serde_json::to_vec(&s.events).unwrap().len();
        assert!(bytes <= limit * MAX_EVENT_BYTES, "{bytes} bytes");
    }

    fn spec(ip: &str, home: &str) -> AddressSpec {
        AddressSpec {
            ip: ip.to_string(),
            interface: "eth0".to_string(),
            home: home.to_string(),
            services: vec!["imap".to_string()],
        }
    }

    fn member(name: &str, role: Role) -> Member {
        Member {
            name: name.to_string(),
            addr: format!("{name}:7400"),
            role,
        }
    }

    fn three_members() -> State {
        let mut s = State::default();
        s.set_membership([
            (member("mx1", Role::Mail), true),
            (member("mx2", Role::Mail), true),
            (member("w1", Role::Witness), true),
        ]);
        s
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("mx1"), node_id("mx1"));
        assert_ne!(node_id("mx1"), node_id("mx2"));
        // Pinned: changing the derivation would orphan every existing cluster's membership.
        assert_eq!(node_id(""), 0xe3b0_c442_98fc_1c14);
    }

    #[test]
    fn set_addresses_adds_changes_and_removes_with_one_event() {
        let mut s = three_members();
        let r = s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![spec("192.0.2.101/24", "mx1"), spec("192.0.2.102/24", "mx2")],
            at_ms: 10,
        });
        assert!(r.changed);
        assert_eq!(s.addresses.len(), 2);
        assert_eq!(s.events.len(), 1);

        let mut moved = spec("192.0.2.102/24", "mx1");
        moved.interface = "eth1".into();
        let r = s.apply(&Command::SetAddresses {
            by: "mx2".into(),
            addresses: vec![moved.clone(), spec("192.0.2.103/24", "mx2")],
            at_ms: 20,
        });
        assert!(r.changed);
        let keys: Vec<_> = s.addresses.keys().cloned().collect();
        assert_eq!(keys, vec!["192.0.2.102/24", "192.0.2.103/24"]);
        assert_eq!(s.addresses["192.0.2.102/24"].spec, moved);
        match &s.events.back().unwrap().kind {
            EventKind::AddressesChanged {
                added,
                removed,
                changed,
                by,
            } => {
                assert_eq!(added, &vec!["192.0.2.103/24".to_string()]);
                assert_eq!(removed, &vec!["192.0.2.101/24".to_string()]);
                assert_eq!(changed, &vec!["192.0.2.102/24".to_string()]);
                assert_eq!(by, "mx2");
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    #[test]
    fn unchanged_address_set_records_nothing() {
        let mut s = three_members();
        let cmd = Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![spec("192.0.2.101/24", "mx1")],
            at_ms: 10,
        };
        s.apply(&cmd);
        let before = s.clone();
        let r = s.apply(&cmd);
        assert!(!r.changed);
        assert_eq!(s, before);
    }

    #[test]
    fn duplicate_address_in_one_declaration_is_refused() {
        let mut s = three_members();
        let r = s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![spec("192.0.2.101/24", "mx1"), spec("192.0.2.101/24", "mx2")],
            at_ms: 10,
        });
        assert!(matches!(r.refused, Some(Refusal::DeclaredTwice { .. })));
        assert!(s.addresses.is_empty());
    }

    #[test]
    fn address_change_keeps_owner_and_epoch() {
        let mut s = three_members();
        s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![spec("192.0.2.101/24", "mx1")],
            at_ms: 1,
        });
        let a = s.addresses.get_mut("192.0.2.101/24").unwrap();
        a.owner = Some("mx1".into());
        a.epoch = 7;
        let mut changed = spec("192.0.2.101/24", "mx1");
        changed.services.push("pop3".into());
        s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![changed],
            at_ms: 2,
        });
        let a = &s.addresses["192.0.2.101/24"];
        assert_eq!(a.owner.as_deref(), Some("mx1"));
        assert_eq!(a.epoch, 7);
    }

    #[test]
    fn differing_declaration_is_shown_and_recorded() {
        let mut s = three_members();
        s.apply(&Command::SetAddresses {
            by: "mx1".into(),
            addresses: vec![spec("192.0.2.101/24", "mx1")],
            at_ms: 1,
        });
        s.apply(&Command::Declare {
            node: "mx1".into(),
            addresses: vec![spec("192.0.2.101/24", "mx1")],
            at_ms: 2,
        });
        assert_eq!(s.declaration_difference("mx1"), None);
        s.apply(&Command::Declare {
            node: "mx2".into(),
            addresses: vec![spec("192.0.2.101/24", "mx2"), spec("192.0.2.109/24", "mx2")],
            at_ms: 3,
        });
        let d = s.declaration_difference("mx2").unwrap();
        assert!(d.contains("not in the cluster: 192.0.2.109/24"), "{d}");
        assert!(d.contains("192.0.2.101/24 differs"), "{d}");
        assert!(matches!(
            s.events.back().unwrap().kind,
            EventKind::DeclarationDiffers { .. }
        ));
        assert_eq!(s.declaration_difference("w1"), None, "not reported yet");
    }

    #[test]
    fn repeated_declaration_changes_nothing() {
        let mut s = three_members();
        let cmd = Command::Declare {
            node: "mx2".into(),
            addresses: vec![spec("192.0.2.109/24", "mx2")],
            at_ms: 3,
        };
        s.apply(&cmd);
        let before = s.clone();
        assert!(!s.apply(&cmd).changed);
        assert_eq!(s, before);
    }

    #[test]
    fn missing_address_in_declaration_is_described() {
        let d = describe_difference(
            &[spec("192.0.2.101/24", "mx1"), spec("192.0.2.102/24", "mx2")],
            &[spec("192.0.2.102/24", "mx2")],
        )
        .unwrap();
        assert_eq!(d, "missing from its config: 192.0.2.101/24");
    }

    #[test]
    fn history_is_bounded_and_sequence_keeps_counting() {
        let mut s = State::new(3);
        for i in 0..5 {
            s.apply(&Command::Note {
                by: "mx1".into(),
                text: format!("n{i}"),
                at_ms: i,
            });
        }
        assert_eq!(s.events.len(), 3);
        let seqs: Vec<u64> = s.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(s.next_event_seq, 6);
    }

    #[test]
    fn empty_or_huge_notes_are_refused() {
        let mut s = State::default();
        let r = s.apply(&Command::Note {
            by: "mx1".into(),
            text: "  ".into(),
            at_ms: 0,
        });
        assert!(r.refused.is_some());
        let r = s.apply(&Command::Note {
            by: "mx1".into(),
            text: "x".repeat(MAX_NOTE_LEN + 1),
            at_ms: 0,
        });
        assert!(matches!(r.refused, Some(Refusal::NoteTooLong { .. })));
        assert!(s.events.is_empty());
    }

    #[test]
    fn admin_state_of_unknown_node_is_refused() {
        let mut s = three_members();
        let r = s.apply(&Command::SetAdmin {
            node: "mx9".into(),
            state: AdminState::Drained,
            by: "mx1".into(),
            at_ms: 0,
        });
        assert!(matches!(r.refused, Some(Refusal::NotAMember { .. })));
    }

    #[test]
    fn admin_state_survives_membership_change_of_others() {
        let mut s = three_members();
        s.apply(&Command::SetAdmin {
            node: "mx2".into(),
            state: AdminState::Drained,
            by: "mx1".into(),
            at_ms: 0,
        });
        s.set_membership([
            (member("mx1", Role::Mail), true),
            (member("mx2", Role::Mail), true),
            (member("w1", Role::Witness), true),
            (member("mx3", Role::Mail), false),
        ]);
        assert_eq!(s.members["mx2"].admin, AdminState::Drained);
        assert_eq!(s.members["mx3"].admin, AdminState::Active);
        assert!(!s.members["mx3"].voter);
    }

    #[test]
    fn membership_is_recorded_once_per_change() {
        let mut s = three_members();
        assert!(s.membership_unrecorded());
        assert!(s.apply(&Command::RecordMembership { at_ms: 5 }).changed);
        assert!(!s.membership_unrecorded());
        assert!(!s.apply(&Command::RecordMembership { at_ms: 6 }).changed);
        assert_eq!(s.events.len(), 1);
        assert_eq!(
            s.events[0].kind.to_string(),
            "membership: voters [mx1, mx2, w1]"
        );
    }

    #[test]
    fn leader_election_is_recorded_with_term() {
        let mut s = State::default();
        s.apply(&Command::LeaderElected {
            node: "mx2".into(),
            term: 4,
            at_ms: 99,
        });
        let e = &s.events[0];
        assert_eq!(e.at_ms, 99);
        assert_eq!(e.kind.to_string(), "mx2 became leader in term 4");
    }

    #[test]
    fn commands_round_trip_through_json() {
        let cmd = Command::SetAdmin {
            node: "mx2".into(),
            state: AdminState::Drained,
            by: "mx1".into(),
            at_ms: 3,
        };
        let text = serde_json::to_string(&cmd).unwrap();
        assert!(text.contains("\"cmd\":\"set_admin\""), "{text}");
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), cmd);
    }
}
