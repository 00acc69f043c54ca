//! Pre-vote: a voter asks the others whether they would vote for it before it starts an
//! election, and starts one only when a majority would.
//!
//! openraft 0.9 has no pre-vote. Without it, a voter that hears nothing (cut off one way, or
//! both) times out again and again, raising its term each time; when it is heard again, the
//! leader sees the higher term and steps down, and the cluster elects anew for nothing: one
//! election, and a new leader's quiet period before it may move any address (a failover that
//! falls into it waits). The chaos campaign saw terms in the seventies after 30 faults.
//!
//! So elections are off in openraft (`runtime_config().elect(false)`) until this loop has
//! asked: every [`ASK_EVERY`] (backing off while refused, see [`next_wait`]), a voter that is not the leader and has not heard from one for
//! the leader lease (`election_timeout_max`) asks every other voter. A voter answers yes only
//! if it has not heard from a leader within that lease either (a leader: if a quorum has not
//! confirmed it within the lease) and the asking node's log is at least as long as its own.
//! With a majority of yes (its own included), openraft's election timer is let loose, and
//! fires as before (randomised, after the lease); otherwise it stays off. A node that hears
//! nothing never gets a yes, so it never raises its term.
//!
//! The answer's rules are [`answer`] (pure); the loop is [`run`]; the route is
//! `POST /raft/prevote` ([`crate::api`]).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::node::Shared;

/// How often a voter without a leader asks.
pub const ASK_EVERY: Duration = Duration::from_millis(20);

/// The longest a refused voter waits before asking again, as a fraction of the leader lease:
/// a quarter, so an election after a real loss of the leader is delayed by at most that.
pub const BACKOFF_LEASE_DIVISOR: u32 = 4;

/// How long to wait before the next round: [`ASK_EVERY`] after a grant or while a leader is
/// heard; after a refusal, twice the last wait, up to a quarter of the lease (at least
/// [`ASK_EVERY`]). A node cut off from a majority thus asks 4 times a lease, not 50 times a
/// second.
pub fn next_wait(last: Duration, refused: bool, lease: Duration) -> Duration {
    if !refused {
        return ASK_EVERY;
    }
    (last * 2).min(lease / BACKOFF_LEASE_DIVISOR).max(ASK_EVERY)
}

/// A pre-vote request: would you vote for `candidate`, whose log ends at `last_log_index`?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVote {
    /// The asking node.
    pub candidate: String,
    /// Index of its last log entry.
    pub last_log_index: Option<u64>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteReply {
    /// Yes or no.
    pub granted: bool,
    /// Why not (empty for yes).
    pub why: String,
}

/// What a voter knows when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knows {
    /// It leads, and a quorum confirmed that this long ago (ms).
    pub leads_confirmed_ms: Option<u64>,
    /// It follows, and last heard from the leader this long ago (ms).
    pub leader_heard_ms: Option<u64>,
    /// Index of its own last log entry.
    pub last_log_index: Option<u64>,
}

/// The answer to `req` from a voter that `knows` this, with the leader lease `lease_ms`.
pub fn answer(req: &PreVote, knows: Knows, lease_ms: u64) -> PreVoteReply {
    let no = |why: String| PreVoteReply {
        granted: false,
        why,
    };
    if let Some(ms) = knows.leads_confirmed_ms.filter(|ms| *ms <= lease_ms) {
        return no(format!("I lead, confirmed by a quorum {ms} ms ago"));
    }
    if let Some(ms) = knows.leader_heard_ms.filter(|ms| *ms <= lease_ms) {
        return no(format!("I heard from the leader {ms} ms ago"));
    }
    if req.last_log_index < knows.last_log_index {
        return no(format!(
            "your log ends at {:?}, mine at {:?}",
            req.last_log_index, knows.last_log_index
        ));
    }
    PreVoteReply {
        granted: true,
        why: String::new(),
    }
}

/// Whether `granted` yes answers (its own included) among `voters` are a majority.
pub fn majority(granted: usize, voters: usize) -> bool {
    granted * 2 > voters
}

/// What this node knows right now (for answering).
pub fn knows(s: &Shared) -> Knows {
    let m = s.raft.metrics().borrow().clone();
    let leads_confirmed_ms = s.leading(&m).and_then(|l| l.confirmed_ms);
    Knows {
        leads_confirmed_ms,
        leader_heard_ms: s.leader_contact_ms(),
        last_log_index: m.last_log_index,
    }
}

/// The leader lease: how long after hearing from a leader a voter refuses other candidates.
pub fn lease_ms(s: &Shared) -> u64 {
    s.config.raft.election_timeout_max.0.as_millis() as u64
}

/// The candidate side: keep openraft's elections off unless a majority would vote for this
/// node now. Beats [`crate::systemd::loops::ELECTIONS`].
pub async fn run(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let lease = lease_ms(&s);
    let mut allowed = false;
    let mut wait = ASK_EVERY;
    loop {
        s.loops.beat(crate::systemd::loops::ELECTIONS);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let m = s.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            wait = ASK_EVERY;
            continue;
        }
        let heard = s.leader_contact_ms().is_some_and(|ms| ms <= lease);
        let allow = if heard { false } else { ask(&s, &m).await };
        wait = next_wait(wait, !heard && !allow, Duration::from_millis(lease));
        if allow != allowed {
            s.raft.runtime_config().elect(allow);
            allowed = allow;
        }
    }
}

/// Ask every other voter; whether a majority (this node included) said yes.
async fn ask(s: &Shared, m: &crate::raft::Metrics) -> bool {
    let membership = m.membership_config.membership();
    let voters: Vec<_> = membership.voter_ids().collect();
    if !voters.contains(&s.id) {
        return false;
    }
    let req = PreVote {
        candidate: s.me.clone(),
        last_log_index: m.last_log_index,
    };
    let timeout = Duration::from_millis(s.config.raft.heartbeat_interval.0.as_millis() as u64 * 2)
        .max(Duration::from_millis(50));
    let asks = voters
        .iter()
        .filter(|id| **id != s.id)
        .filter_map(|id| membership.get_node(id))
        .map(|node| {
            let client = s
                .client_to(node.name.clone(), node.addr.clone())
                .with_timeout(timeout);
            let req = req.clone();
            async move {
                client
                    .post::<_, PreVoteReply>(super::network::paths::PREVOTE, &req)
                    .await
                    .is_ok_and(|r| r.granted)
            }
        });
    let yes = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .filter(|g| *g)
        .count();
    majority(yes + 1, voters.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(last: Option<u64>) -> PreVote {
        PreVote {
            candidate: "w1".into(),
            last_log_index: last,
        }
    }

    const NOBODY: Knows = Knows {
        leads_confirmed_ms: None,
        leader_heard_ms: None,
        last_log_index: Some(10),
    };

    #[test]
    fn a_voter_that_hears_a_leader_or_leads_says_no_until_the_lease_ran_out() {
        let hears = Knows {
            leader_heard_ms: Some(150),
            ..NOBODY
        };
        assert!(!answer(&req(Some(10)), hears, 200).granted);
        assert!(
            answer(
                &req(Some(10)),
                Knows {
                    leader_heard_ms: Some(201),
                    ..hears
                },
                200
            )
            .granted
        );
        let leads = Knows {
            leads_confirmed_ms: Some(40),
            ..NOBODY
        };
        let r = answer(&req(Some(99)), leads, 200);
        assert!(!r.granted && r.why.contains("I lead"));
        assert!(
            answer(
                &req(Some(10)),
                Knows {
                    leads_confirmed_ms: Some(250),
                    ..leads
                },
                200
            )
            .granted
        );
    }

    #[test]
    fn a_candidate_with_a_shorter_log_is_refused() {
        assert!(!answer(&req(Some(9)), NOBODY, 200).granted);
        assert!(!answer(&req(None), NOBODY, 200).granted);
        assert!(answer(&req(Some(10)), NOBODY, 200).granted);
        assert!(answer(&req(Some(11)), NOBODY, 200).granted);
        let empty = Knows {
            last_log_index: None,
            ..NOBODY
        };
        assert!(answer(&req(None), empty, 200).granted);
    }

    #[test]
    fn a_refused_voter_backs_off_to_a_quarter_lease_and_starts_over_when_granted() {
        let lease = Duration::from_millis(800);
        let mut w = ASK_EVERY;
        let mut seen = vec![];
        for _ in 0..6 {
            w = next_wait(w, true, lease);
            seen.push(w.as_millis());
        }
        assert_eq!(seen, [40, 80, 160, 200, 200, 200]);
        assert_eq!(next_wait(w, false, lease), ASK_EVERY);
        // A lease so short that a quarter of it is below the base interval: never below it.
        let tiny = Duration::from_millis(40);
        assert_eq!(next_wait(ASK_EVERY, true, tiny), ASK_EVERY);
    }

    #[test]
    fn a_majority_counts_the_candidate_itself() {
        assert!(majority(1, 1));
        assert!(!majority(1, 2) && majority(2, 2));
        assert!(!majority(1, 3) && majority(2, 3));
        assert!(!majority(2, 5) && majority(3, 5));
    }
}
