//! `[raft]`: heartbeats, election timeouts, snapshots and the history limit, and their checks.

use super::*;

/// `[raft]`: consensus timing and log housekeeping. Must be identical on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats. Well below `election_timeout_min`. Default "50ms".
    pub heartbeat_interval: Millis,
    /// Shortest election timeout. A follower that hears no leader starts an election after
    /// `election_timeout_max` (the old leader's lease, during which voters refuse other
    /// candidates) plus a timeout picked at random between min and max: 300-400 ms of silence
    /// with the defaults, which is what a leader's death costs before a new one is elected.
    /// Default "100ms".
    pub election_timeout_min: Millis,
    /// Longest election timeout (see `election_timeout_min`). Default "200ms".
    pub election_timeout_max: Millis,
    /// Log entries since the last snapshot before a new snapshot is taken. At least 10.
    /// Default 1000.
    pub snapshot_after: u64,
    /// Number of events kept in the replicated history (`clusterctl history`). 10 to
    /// [`MAX_HISTORY_LIMIT`]. Default 500.
    pub history_limit: u64,
}

/// Most events the history may keep: the state budget ([`crate::model::MAX_STATE_BYTES`])
/// over the largest event ([`crate::model::MAX_EVENT_BYTES`]).
pub const MAX_HISTORY_LIMIT: u64 =
    (crate::model::MAX_STATE_BYTES / crate::model::MAX_EVENT_BYTES) as u64;

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval: Millis::from_millis(50),
            election_timeout_min: Millis::from_millis(100),
            election_timeout_max: Millis::from_millis(200),
            snapshot_after: 1000,
            history_limit: 500,
        }
    }
}

impl Config {
    pub(super) fn check_raft(&self, v: &mut Problems) {
        let r = &self.raft;
        let mut all_positive = true;
        for (name, d) in [
            ("heartbeat_interval", r.heartbeat_interval),
            ("election_timeout_min", r.election_timeout_min),
            ("election_timeout_max", r.election_timeout_max),
        ] {
            if d.get().is_zero() {
                all_positive = false;
                v.push(
                    format!("raft.{name}"),
                    format!(
                        "{d} is not a usable duration; write a positive one, e.g. \"{}\"",
                        match name {
                            "heartbeat_interval" => "50ms",
                            "election_timeout_min" => "100ms",
                            _ => "200ms",
                        }
                    ),
                );
            }
        }
        if all_positive {
            if r.election_timeout_min >= r.election_timeout_max {
                v.push(
                    "raft.election_timeout_min",
                    format!(
                        "election_timeout_min ({}) must be below election_timeout_max ({}); \
                         nodes pick a random timeout between them to avoid split votes, e.g. \
                         min = \"150ms\", max = \"300ms\"",
                        r.election_timeout_min, r.election_timeout_max
                    ),
                );
            }
            if r.heartbeat_interval >= r.election_timeout_min {
                v.push(
                    "raft.heartbeat_interval",
                    format!(
                        "heartbeat_interval ({}) is not below election_timeout_min ({}); \
                         heartbeat_interval must be well below election_timeout_min, e.g. a \
                         third, or followers start elections against a healthy leader",
                        r.heartbeat_interval, r.election_timeout_min
                    ),
                );
            }
        }
        if r.snapshot_after < 10 {
            v.push(
                "raft.snapshot_after",
                format!(
                    "{} is too small, snapshots would be taken almost every entry; write at \
                     least 10 (default 1000)",
                    r.snapshot_after
                ),
            );
        }
        if !(10..=MAX_HISTORY_LIMIT).contains(&r.history_limit) {
            v.push(
                "raft.history_limit",
                format!(
                    "{} is out of range; write a number from 10 to {MAX_HISTORY_LIMIT} \
                     (default 500): events of up to {} KiB each must keep the replicated state, \
                     and so every snapshot, under {} MiB",
                    r.history_limit,
                    crate::model::MAX_EVENT_BYTES / 1024,
                    crate::model::MAX_STATE_BYTES / (1024 * 1024)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_refused, base};
    use super::*;

    #[test]
    fn election_timeout_min_must_be_below_max() {
        let mut c = base();
        c.raft.election_timeout_max = Millis::from_millis(100);
        assert_refused(
            &c,
            "raft.election_timeout_min",
            "must be below election_timeout_max",
        );
    }

    #[test]
    fn heartbeat_must_be_below_election_timeout() {
        let mut c = base();
        c.raft.heartbeat_interval = Millis::from_millis(150);
        assert_refused(
            &c,
            "raft.heartbeat_interval",
            "heartbeat_interval must be well below election_timeout_min, e.g. a third",
        );
    }

    #[test]
    fn zero_raft_durations_refused() {
        let mut c = base();
        c.raft.heartbeat_interval = Millis::from_millis(0);
        assert_refused(&c, "raft.heartbeat_interval", "positive");
    }

    #[test]
    fn snapshot_after_below_ten_refused() {
        let mut c = base();
        c.raft.snapshot_after = 9;
        assert_refused(&c, "raft.snapshot_after", "at least 10");
    }

    #[test]
    fn history_limit_out_of_range_refused() {
        for bad in [9, MAX_HISTORY_LIMIT + 1, 100_000] {
            let mut c = base();
            c.raft.history_limit = bad;
            assert_refused(&c, "raft.history_limit", "10 to 8192");
            assert_refused(&c, "raft.history_limit", "under 64 MiB");
        }
        let mut c = base();
        c.raft.history_limit = MAX_HISTORY_LIMIT;
        assert!(c.validate().is_ok());
    }
}
