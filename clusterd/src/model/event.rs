//! The replicated history: events, what each says, and the bound that keeps the state small.

use super::*;

/// Why an address changed hands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// First placement of an address nobody held.
    Initial,
    /// The owner's lease ran out (dead, frozen, cut off or without quorum).
    LeaseExpired,
    /// The owner was drained by an operator.
    Drained,
    /// An operator moved it.
    Operator,
    /// Back to its home node after the home was stable for the failback period.
    Failback,
    /// The owner is no longer a mail member of the cluster.
    NotMember,
    /// A service the address needs is critical on the owner and passes on the new node.
    ServiceFailed,
}

impl fmt::Display for MoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MoveReason::Initial => "initial placement",
            MoveReason::LeaseExpired => "lease expired",
            MoveReason::Drained => "drained",
            MoveReason::Operator => "moved by operator",
            MoveReason::Failback => "failback",
            MoveReason::NotMember => "owner left the cluster",
            MoveReason::ServiceFailed => "service failed",
        })
    }
}

/// One entry of the replicated history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, increasing by one per event over the life of the cluster.
    pub seq: u64,
    /// When it happened (unix ms, from the proposing node's clock).
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of history events, each with the facts an operator needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A node became Raft leader.
    LeaderElected {
        /// The new leader.
        node: String,
        /// Its term.
        term: u64,
    },
    /// Raft membership changed.
    MembershipChanged {
        /// Voters after the change.
        voters: Vec<String>,
        /// Learners after the change.
        learners: Vec<String>,
    },
    /// The declared address set in the cluster state changed.
    AddressesChanged {
        /// Addresses added.
        added: Vec<String>,
        /// Addresses removed.
        removed: Vec<String>,
        /// Addresses whose interface, home or services changed.
        changed: Vec<String>,
        /// The node whose config was applied (the leader at the time).
        by: String,
    },
    /// A node's declared address set differs from the cluster's.
    DeclarationDiffers {
        /// The node.
        node: String,
        /// What differs, for humans.
        detail: String,
    },
    /// An operator changed a node's admin state.
    AdminChanged {
        /// The node.
        node: String,
        /// The new state.
        state: AdminState,
        /// Who asked (node the request came through).
        by: String,
    },
    /// An address got a new owner.
    OwnerChanged {
        /// `ip/prefix`.
        ip: String,
        /// Previous owner.
        from: Option<String>,
        /// New owner.
        to: String,
        /// The new epoch.
        epoch: u64,
        /// Why.
        reason: MoveReason,
    },
    /// A planned move started: the owner is asked to release the address.
    HandoffStarted {
        /// `ip/prefix`.
        ip: String,
        /// Current owner.
        from: String,
        /// Next owner.
        to: String,
        /// Why.
        reason: MoveReason,
    },
    /// A planned move was called off (its target became unfit).
    HandoffCancelled {
        /// `ip/prefix`.
        ip: String,
        /// The target that became unfit.
        to: String,
    },
    /// The owner reported the address configured and announced.
    Serving {
        /// `ip/prefix`.
        ip: String,
        /// The owner.
        node: String,
        /// Its epoch.
        epoch: u64,
        /// For a planned move: ms between the old owner's removal and this.
        unserved_ms: Option<u64>,
    },
    /// A note written by an operator.
    Note {
        /// Node the note was written through.
        by: String,
        /// The text.
        text: String,
    },
    /// A service's health changed on a node.
    HealthChanged {
        /// The node.
        node: String,
        /// Check name.
        check: String,
        /// Previous state (`None`: first report).
        from: Option<Health>,
        /// New state.
        to: Health,
        /// The probe's reason.
        reason: String,
    },
    /// A node (re)started its probes: its checks are pending until they rise or fall.
    HealthReset {
        /// The node.
        node: String,
        /// The checks it runs.
        checks: Vec<String>,
    },
    /// The leader (or an operator) started fencing a node.
    FenceStarted {
        /// The node being fenced.
        node: String,
        /// The agent and its target.
        agent: String,
        /// Attempt number.
        attempt: u32,
        /// Who started it.
        by: String,
    },
    /// The agent confirmed the node off.
    Fenced {
        /// The node.
        node: String,
        /// The agent.
        agent: String,
        /// What the agent answered.
        reply: String,
        /// From the start of the attempt to the confirmation.
        took_ms: u64,
    },
    /// A fence failed; the node's addresses stay where they are until one succeeds.
    FenceFailed {
        /// The node.
        node: String,
        /// The agent.
        agent: String,
        /// Attempt number.
        attempt: u32,
        /// Why.
        error: String,
        /// When the next attempt comes.
        retry_in_ms: u64,
    },
    /// A node's fencing state was cleared (it holds a lease again).
    FenceCleared {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// An operator started a failover drill.
    DrillStarted {
        /// The node playing failed.
        node: String,
        /// What it simulates.
        kind: DrillKind,
        /// Who started it.
        by: String,
    },
    /// A failover drill's measurements, as the operator's clusterctl saw them.
    DrillReport {
        /// The drilled node.
        node: String,
        /// Summary of the result.
        result: String,
    },
    /// A failover drill ended (the node takes part normally again).
    DrillEnded {
        /// The node.
        node: String,
        /// Who ended it.
        by: String,
    },
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::LeaderElected { node, term } => {
                write!(f, "{node} became leader in term {term}")
            }
            EventKind::MembershipChanged { voters, learners } => {
                write!(f, "membership: voters [{}]", voters.join(", "))?;
                if !learners.is_empty() {
                    write!(f, ", learners [{}]", learners.join(", "))?;
                }
                Ok(())
            }
            EventKind::AddressesChanged {
                added,
                removed,
                changed,
                by,
            } => {
                write!(f, "addresses from {by}'s config:")?;
                for (label, list) in [("added", added), ("removed", removed), ("changed", changed)]
                {
                    if !list.is_empty() {
                        write!(f, " {label} {}", list.join(", "))?;
                    }
                }
                Ok(())
            }
            EventKind::DeclarationDiffers { node, detail } => {
                write!(f, "{node} declares different addresses: {detail}")
            }
            EventKind::AdminChanged { node, state, by } => {
                write!(f, "{node} set {state} (via {by})")
            }
            EventKind::OwnerChanged {
                ip,
                from,
                to,
                epoch,
                reason,
            } => write!(
                f,
                "{ip}: {} -> {to} (epoch {epoch}, {reason})",
                from.as_deref().unwrap_or("nobody")
            ),
            EventKind::HandoffStarted {
                ip,
                from,
                to,
                reason,
            } => write!(f, "{ip}: handing over from {from} to {to} ({reason})"),
            EventKind::HandoffCancelled { ip, to } => {
                write!(f, "{ip}: handover to {to} called off ({to} is not fit)")
            }
            EventKind::Serving {
                ip,
                node,
                epoch,
                unserved_ms,
            } => {
                write!(f, "{ip}: served by {node} (epoch {epoch})")?;
                if let Some(ms) = unserved_ms {
                    write!(f, ", unserved for {ms} ms")?;
                }
                Ok(())
            }
            EventKind::Note { by, text } => write!(f, "note (via {by}): {text}"),
            EventKind::HealthChanged {
                node,
                check,
                from,
                to,
                reason,
            } => {
                write!(f, "{node} {check}: ")?;
                if let Some(from) = from {
                    write!(f, "{from} -> ")?;
                }
                write!(f, "{to}")?;
                if !reason.is_empty() {
                    write!(f, " ({reason})")?;
                }
                Ok(())
            }
            EventKind::HealthReset { node, checks } => {
                write!(
                    f,
                    "{node} started its checks [{}]: pending",
                    checks.join(", ")
                )
            }
            EventKind::FenceStarted {
                node,
                agent,
                attempt,
                by,
            } => write!(
                f,
                "fencing {node} with {agent} (attempt {attempt}, by {by})"
            ),
            EventKind::Fenced {
                node,
                agent,
                reply,
                took_ms,
            } => write!(f, "{node} fenced by {agent} in {took_ms} ms: {reply}"),
            EventKind::FenceFailed {
                node,
                agent,
                attempt,
                error,
                retry_in_ms,
            } => write!(
                f,
                "fencing {node} FAILED (attempt {attempt}, {agent}): {error}; its addresses \
                 stay put, retry in {retry_in_ms} ms"
            ),
            EventKind::FenceCleared { node, reason } => {
                write!(f, "fencing state of {node} cleared: {reason}")
            }
            EventKind::DrillStarted { node, kind, by } => {
                write!(f, "failover drill started: {node} plays {kind} (by {by})")
            }
            EventKind::DrillReport { node, result } => {
                write!(f, "failover drill of {node}: {result}")
            }
            EventKind::DrillEnded { node, by } => {
                write!(f, "failover drill of {node} ended (by {by})")
            }
        }
    }
}

/// Largest encoded event the history keeps whole: a longer one has its long texts (a probe's
/// output, an agent's error) cut, so that the replicated state stays within
/// `history_limit * MAX_EVENT_BYTES` (the budget `check-config` enforces).
pub const MAX_EVENT_BYTES: usize = 8 * 1024;

/// `kind`, with its longest texts cut until it encodes within [`MAX_EVENT_BYTES`]. Pure and
/// deterministic, as everything `apply` does: every node cuts the same way.
pub(super) fn bounded(kind: EventKind) -> EventKind {
    // Every apply comes here: measure without building anything; only an oversized event is
    // taken apart.
    if encoded_len(&kind) <= MAX_EVENT_BYTES {
        return kind;
    }
    let Ok(mut value) = serde_json::to_value(&kind) else {
        return kind;
    };
    for keep in [1024, 256, 64] {
        clip_texts(&mut value, keep);
        if encoded_len(&value) <= MAX_EVENT_BYTES {
            break;
        }
    }
    serde_json::from_value(value).unwrap_or(kind)
}

/// Bytes `v` takes as JSON (`usize::MAX` if it does not encode), counted without a buffer.
pub(super) fn encoded_len(v: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, v) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// Cut every string in `v` longer than `keep` bytes to `keep` (at a character boundary),
/// marking the cut.
pub(super) fn clip_texts(v: &mut serde_json::Value, keep: usize) {
    match v {
        serde_json::Value::String(s) if s.len() > keep => {
            let mut end = keep;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push_str(" [cut]");
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| clip_texts(i, keep)),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(|f| clip_texts(f, keep));
        }
        _ => {}
    }
}
