//! Writing a command to the replicated log: applied through this node's Raft core when it leads
//! with a quorum, forwarded one hop to the leader otherwise.
//!
//! Every loop that changes the cluster (declarations, health, takeovers, fences, hooks'
//! records) and the HTTP API write through here. Failures are a [`ProposeError`]; the API maps
//! them to status codes in one place (`impl From<ProposeError> for api::ApiError`), the loops
//! log them and retry.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};

use crate::client::{ApiClient, ClientError, HEADER_FORWARDED, admin_paths};
use crate::model::{Applied, Command, CommandTooLarge, Member, NodeId, Refusal};
use crate::node::Shared;

/// How long a write may take to commit before the writer gives up waiting.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting write looks whether its leader lost its quorum.
const QUORUM_LOOK_EVERY: Duration = Duration::from_millis(50);

/// Why a command was not written (or was written and refused by the model).
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known here.
    #[error(
        "{me} knows no leader right now (no quorum?); check `clusterctl status` on the other nodes"
    )]
    NoLeader {
        /// This node.
        me: String,
    },
    /// Leadership is changing; the same request a moment later will find the leader.
    #[error("{0}; retry in a moment")]
    LeadershipMoving(&'static str),
    /// This node leads, but no quorum acknowledged it lately: it cannot commit.
    #[error(
        "{me} leads but no quorum acknowledged it for {ack_ms} ms; it cannot commit: check the \
         network and `clusterctl status` on the other nodes"
    )]
    QuorumLost {
        /// This node.
        me: String,
        /// Since the last quorum acknowledgement.
        ack_ms: u64,
    },
    /// The write did not commit in time.
    #[error(
        "the write was not committed within {secs} s: {me} may have lost its quorum; check \
         `clusterctl status` on the other nodes",
        secs = WRITE_TIMEOUT.as_secs()
    )]
    NotCommitted {
        /// This node.
        me: String,
    },
    /// Committed, and refused by the model (the reason is the model's).
    #[error("{0}")]
    Refused(Refusal),
    /// Too large to be one log entry; never sent.
    #[error("{0}: one log entry must stay far below what a follower accepts")]
    TooLarge(CommandTooLarge),
    /// openraft refused a membership change.
    #[error("{0}")]
    Membership(String),
    /// The Raft core stopped.
    #[error("raft stopped: {0}")]
    Stopped(String),
    /// The leader answered with an error, or could not be reached.
    #[error("{}", forward_text(.0))]
    Forward(ClientError),
    /// The command could not be encoded (a defect, not an input).
    #[error("the command could not be encoded: {0}")]
    Encode(String),
}

fn forward_text(e: &ClientError) -> String {
    match e {
        // The leader's own explanation, as it gave it.
        ClientError::Api { message, .. } => message.clone(),
        other => format!("forwarding to the leader failed: {other}"),
    }
}

impl From<ClientError> for ProposeError {
    fn from(e: ClientError) -> Self {
        ProposeError::Forward(e)
    }
}

/// Propose `cmd`: written here when this node leads, forwarded to the leader otherwise. A
/// refusal by the model is [`ProposeError::Refused`].
pub async fn propose(s: &Shared, cmd: Command) -> Result<Applied, ProposeError> {
    propose_as(s, cmd, false).await
}

/// [`propose`] for a request that was `forwarded` here already: it is not forwarded again.
pub async fn propose_as(
    s: &Shared,
    cmd: Command,
    forwarded: bool,
) -> Result<Applied, ProposeError> {
    // Refused at intake, whoever leads and whether anyone does: no use routing it.
    let body = serde_json::to_vec(&cmd).map_err(|e| ProposeError::Encode(e.to_string()))?;
    CommandTooLarge::check(body.len()).map_err(ProposeError::TooLarge)?;
    let applied = match leader_route(s, forwarded)? {
        LeaderRoute::Here => write_here(s, cmd).await?.applied,
        LeaderRoute::Forward(client) => {
            client
                .send(
                    "POST",
                    admin_paths::PROPOSE,
                    body,
                    &[(HEADER_FORWARDED, "1")],
                )
                .await?
        }
    };
    match &applied.refused {
        Some(reason) => Err(ProposeError::Refused(reason.clone())),
        None => Ok(applied),
    }
}

/// A write this leader committed: the state machine's answer (which may be a refusal) and
/// the entry's log index.
#[derive(Debug, Clone)]
pub struct Written {
    /// What `apply` said.
    pub applied: Applied,
    /// Where the entry sits in the log.
    pub index: u64,
    /// The term of the leader that appended it (a write submitted in one term can land in a
    /// later one when this node lost and won the leadership meanwhile).
    pub term: u64,
}

/// Write `cmd` through this node's own Raft core, which must lead; never forwarded. A
/// refusal by the state machine is a `Written` too (the entry is in the log all the same).
pub async fn write_here(s: &Shared, cmd: Command) -> Result<Written, ProposeError> {
    cmd.check_size().map_err(ProposeError::TooLarge)?;
    let write = tokio::time::timeout(WRITE_TIMEOUT, s.raft.client_write(cmd));
    tokio::select! {
        result = write => match result {
            Ok(Ok(resp)) => Ok(Written {
                applied: resp.data,
                index: resp.log_id.index,
                term: resp.log_id.leader_id.term,
            }),
            Ok(Err(e)) => Err(write_error(e)),
            Err(_) => Err(ProposeError::NotCommitted { me: s.me.clone() }),
        },
        lost = quorum_lost(s) => Err(lost),
    }
}

/// openraft 0.9 has no CheckQuorum: a cut-off leader still believes it leads. It has lost its
/// quorum when no quorum confirmed its leadership for longer than `Shared::quorum_lost_after`
/// ([`Shared::leading`]).
fn no_quorum(s: &Shared, metrics: &crate::raft::Metrics) -> Option<ProposeError> {
    // `None`: elected a moment ago and not confirmed yet; the write itself will tell.
    let ack = s.leading(metrics)?.confirmed_ms?;
    if u128::from(ack) <= s.quorum_lost_after.as_millis() {
        return None;
    }
    Some(ProposeError::QuorumLost {
        me: s.me.clone(),
        ack_ms: ack,
    })
}

/// Resolves when this leader has lost its quorum (see [`no_quorum`]); pends while it has one.
async fn quorum_lost(s: &Shared) -> ProposeError {
    loop {
        tokio::time::sleep(QUORUM_LOOK_EVERY).await;
        let metrics = s.raft.metrics().borrow().clone();
        if let Some(lost) = no_quorum(s, &metrics) {
            return lost;
        }
    }
}

/// Where a write goes.
#[derive(Debug)]
pub enum LeaderRoute {
    /// This node leads with a quorum.
    Here,
    /// To the leader, through this client.
    Forward(ApiClient),
}

/// Where a write from here goes now; a request `forwarded` once is not forwarded again.
pub fn leader_route(s: &Shared, forwarded: bool) -> Result<LeaderRoute, ProposeError> {
    let metrics = s.raft.metrics().borrow().clone();
    match metrics.current_leader {
        Some(_) if s.leads(&metrics) => match no_quorum(s, &metrics) {
            Some(lost) => Err(lost),
            None => Ok(LeaderRoute::Here),
        },
        Some(_) if forwarded => Err(ProposeError::LeadershipMoving("leadership is moving")),
        Some(_) => {
            let (_, node) = crate::raft::leader_member(&metrics).ok_or(
                ProposeError::LeadershipMoving("the leader is not in the membership yet"),
            )?;
            Ok(LeaderRoute::Forward(s.client_to(node.name, node.addr)))
        }
        None => Err(ProposeError::NoLeader { me: s.me.clone() }),
    }
}

/// A failed `client_write` or membership change, as a [`ProposeError`].
pub fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            ProposeError::LeadershipMoving("leadership moved while writing")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ProposeError::Membership(e.to_string())
        }
        RaftError::Fatal(e) => ProposeError::Stopped(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_refusal_reads_as_the_leaders_own_words() {
        let e = ProposeError::Forward(ClientError::Api {
            status: 409,
            message: "mx3 is drained".into(),
        });
        assert_eq!(e.to_string(), "mx3 is drained");
        let moving = ProposeError::LeadershipMoving("leadership moved while writing");
        assert_eq!(
            moving.to_string(),
            "leadership moved while writing; retry in a moment"
        );
        let lost = ProposeError::QuorumLost {
            me: "mx1".into(),
            ack_ms: 1200,
        };
        assert!(lost.to_string().starts_with("mx1 leads but no quorum"));
    }
}
