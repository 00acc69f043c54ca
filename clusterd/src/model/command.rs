//! The commands of the replicated log, the state machine's answer, and the size every command
//! must stay under.

use super::*;

/// A Raft log entry's payload: everything that changes the cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Proposed by a node right after it became leader.
    LeaderElected {
        /// The leader.
        node: String,
        /// Its term.
        term: u64,
        /// Unix ms.
        at_ms: u64,
    },
    /// Proposed by the leader when Raft membership differs from the last recorded one.
    RecordMembership {
        /// Unix ms.
        at_ms: u64,
    },
    /// The leader reconciles the cluster's address set to its own config.
    SetAddresses {
        /// The leader.
        by: String,
        /// The full declared set.
        addresses: Vec<AddressSpec>,
        /// Unix ms.
        at_ms: u64,
    },
    /// A node reports its configured address set.
    Declare {
        /// The reporting node.
        node: String,
        /// Its configured addresses.
        addresses: Vec<AddressSpec>,
        /// Unix ms.
        at_ms: u64,
    },
    /// Operator sets a node's admin state.
    SetAdmin {
        /// The node.
        node: String,
        /// The new state.
        state: AdminState,
        /// The node the request came through.
        by: String,
        /// Unix ms.
        at_ms: u64,
    },
    /// Operator note in the history.
    Note {
        /// The node the request came through.
        by: String,
        /// The text.
        text: String,
        /// Unix ms.
        at_ms: u64,
    },
    /// The leader's planner gives an address to a node. Applied only if the address is still
    /// at `epoch` (a stale decision changes nothing).
    Assign {
        /// `ip/prefix`.
        ip: String,
        /// The new owner.
        to: String,
        /// The epoch the decision was made at.
        epoch: u64,
        /// Why.
        reason: MoveReason,
        /// Unix ms.
        at_ms: u64,
        /// The Raft term of the leader that decided it. The state machine refuses the command
        /// when its log entry was written in another term (the leader lost the leadership in
        /// between, and the new term's lease table may have granted what the decision did not
        /// see). `None` is not checked: entries written by earlier builds replay as they applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<u64>,
    },
    /// The leader's planner starts a planned move (the owner releases first).
    StartHandoff {
        /// `ip/prefix`.
        ip: String,
        /// The next owner.
        to: String,
        /// The epoch the decision was made at.
        epoch: u64,
        /// Why.
        reason: MoveReason,
        /// Unix ms.
        at_ms: u64,
        /// The Raft term of the leader that decided it. The state machine refuses the command
        /// when its log entry was written in another term (the leader lost the leadership in
        /// between, and the new term's lease table may have granted what the decision did not
        /// see). `None` is not checked: entries written by earlier builds replay as they applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<u64>,
    },
    /// The leader's planner calls off a planned move whose target became unfit.
    CancelHandoff {
        /// `ip/prefix`.
        ip: String,
        /// The epoch the decision was made at.
        epoch: u64,
        /// Unix ms.
        at_ms: u64,
    },
    /// The owner confirms it removed the address for a planned move; the handoff target
    /// becomes the owner.
    Released {
        /// `ip/prefix`.
        ip: String,
        /// The releasing owner.
        node: String,
        /// Its epoch.
        epoch: u64,
        /// When it removed the address (unix ms).
        at_ms: u64,
    },
    /// The owner reports the address configured and announced.
    Serving {
        /// `ip/prefix`.
        ip: String,
        /// The owner.
        node: String,
        /// Its epoch.
        epoch: u64,
        /// When it added the address (unix ms).
        at_ms: u64,
    },
    /// An operator moves an address to a node.
    RequestMove {
        /// `ip/prefix`.
        ip: String,
        /// The target node.
        to: String,
        /// The node the request came through.
        by: String,
        /// Unix ms.
        at_ms: u64,
    },
    /// A node's probe decided a new state for one of its services.
    Health(HealthReport),
    /// A node (re)started its probes; its checks are pending until they rise or fall.
    HealthReset {
        /// The node.
        node: String,
        /// The checks it runs.
        checks: Vec<String>,
        /// Unix ms.
        at_ms: u64,
    },
    /// The leader is about to run a node's fence agent (committed first: no quorum, no fence).
    FenceStarted {
        /// The node.
        node: String,
        /// The agent and its target.
        agent: String,
        /// Attempt number.
        attempt: u32,
        /// Who started it.
        by: String,
        /// Unix ms.
        at_ms: u64,
    },
    /// The agent confirmed the node off.
    FenceSucceeded {
        /// The node.
        node: String,
        /// The agent's reply.
        reply: String,
        /// Unix ms.
        at_ms: u64,
    },
    /// The agent failed.
    FenceFailed {
        /// The node.
        node: String,
        /// Why.
        error: String,
        /// When the leader tries again.
        retry_in_ms: u64,
        /// Unix ms.
        at_ms: u64,
    },
    /// Forget a node's fencing state (it holds a lease again).
    FenceCleared {
        /// The node.
        node: String,
        /// Why.
        reason: String,
        /// Unix ms.
        at_ms: u64,
    },
    /// Start a failover drill on a mail node.
    StartDrill {
        /// The node.
        node: String,
        /// What it simulates.
        kind: DrillKind,
        /// Who asked.
        by: String,
        /// Unix ms.
        at_ms: u64,
    },
    /// Record a drill's measurements in the history.
    DrillReport {
        /// The drilled node.
        node: String,
        /// Summary.
        result: String,
        /// Unix ms.
        at_ms: u64,
    },
    /// End the drill on a node.
    EndDrill {
        /// The node.
        node: String,
        /// Who asked.
        by: String,
        /// Unix ms.
        at_ms: u64,
    },
}

/// The state machine's answer to one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Whether the state changed.
    pub changed: bool,
    /// Why the command was refused, if it was.
    #[serde(default, deserialize_with = "super::refusal::deserialize_refused")]
    pub refused: Option<Refusal>,
}

impl Applied {
    pub(super) fn changed(changed: bool) -> Self {
        Applied {
            changed,
            refused: None,
        }
    }

    pub(super) fn refused(reason: Refusal) -> Self {
        Applied {
            changed: false,
            refused: Some(reason),
        }
    }
}

/// Longest operator note accepted, in bytes.
pub const MAX_NOTE_LEN: usize = 1000;

/// Largest encoded (JSON) size of one command. Checked where a command is proposed, before it
/// can reach the log: every entry must stay far below what a follower accepts in one
/// AppendEntries (see `raft::network::APPEND_BODY_LIMIT`), or one oversized entry would be
/// refused by every follower for ever and stall the cluster.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

impl Command {
    /// The term a leader's decision was made in, for the commands that carry one.
    pub fn decided_term(&self) -> Option<u64> {
        match self {
            Command::Assign { term, .. } | Command::StartHandoff { term, .. } => *term,
            _ => None,
        }
    }

    /// The command stamped with the term its decision was made in (unchanged if it carries none).
    pub fn decided_in(mut self, decided: u64) -> Self {
        if let Command::Assign { term, .. } | Command::StartHandoff { term, .. } = &mut self {
            *term = Some(decided);
        }
        self
    }

    /// Refuse a command whose encoding is larger than [`MAX_COMMAND_BYTES`].
    pub fn check_size(&self) -> Result<(), CommandTooLarge> {
        CommandTooLarge::check(serde_json::to_vec(self).map_or(usize::MAX, |v| v.len()))
    }
}

impl CommandTooLarge {
    /// Refuse an encoding of `bytes` bytes if it is larger than [`MAX_COMMAND_BYTES`].
    pub fn check(bytes: usize) -> Result<(), CommandTooLarge> {
        if bytes > MAX_COMMAND_BYTES {
            Err(CommandTooLarge { bytes })
        } else {
            Ok(())
        }
    }
}

/// A command too large to be a log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the command is {bytes} bytes encoded; the limit is {MAX_COMMAND_BYTES}")]
pub struct CommandTooLarge {
    /// Its encoded size.
    pub bytes: usize,
}
