//! Liveness beats of the daemon's loops, kept by the node handle: each watched loop beats
//! ([`Loops::beat`]); the watchdog and `status` ask which fell silent ([`Loops::stuck`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The node's own duties: logging Raft changes, declaring its addresses (`daemon`).
pub const DUTIES: &str = "duties";
/// The address runtime's loop.
pub const ADDRESSES: &str = "address runtime";
/// The leader's loop: records, member watch, placement (`placement`).
pub const PLACEMENT: &str = "placement";
/// The lease renewal loop (`lease`).
pub const LEASE_RENEWAL: &str = "lease renewal";
/// The leadership confirmation loop (`lease`).
pub const LEADERSHIP: &str = "leadership check";
/// The health reporter (`health`).
pub const HEALTH: &str = "health";
/// The DNS feed (`dns_feed`).
pub const DNS: &str = "DNS";
/// The hook observer (`hooks`).
pub const HOOKS: &str = "hook observer";
/// The pre-vote loop (`raft::prevote`), which lets openraft elect.
pub const ELECTIONS: &str = "elections";
/// How long a watched loop may stay silent before `status` reports it (the watchdog allows
/// half its interval). Every watched loop beats at least once a second when healthy, and once
/// per proposal it waits for (at most 5 s) when the leader is slow.
pub const LOOP_SILENCE: Duration = Duration::from_secs(10);
/// The least silence the watchdog allows a loop, whatever its interval.
pub const WATCHDOG_LOOP_FLOOR: Duration = Duration::from_secs(3);

/// Where the daemon's loops report that they are alive, and the address runtime that it
/// converged once.
#[derive(Debug)]
pub struct Loops {
    beats: std::sync::Mutex<BTreeMap<&'static str, Instant>>,
    /// The loops that must beat (registered as the daemon starts them).
    watched: std::sync::Mutex<Vec<&'static str>>,
    since: Instant,
    converged: AtomicBool,
}

impl Default for Loops {
    fn default() -> Self {
        Loops {
            beats: Default::default(),
            watched: Default::default(),
            since: crate::clock::now(),
            converged: AtomicBool::new(false),
        }
    }
}

impl Loops {
    /// Loop `name` runs from now on and must beat.
    pub fn watch(&self, name: &'static str) {
        let mut watched = crate::lock(&self.watched);
        if !watched.contains(&name) {
            watched.push(name);
        }
    }

    /// The watched loops silent for longer than `limit`, with how long.
    pub fn stuck(&self, limit: Duration) -> Vec<(&'static str, Duration)> {
        let watched = crate::lock(&self.watched).clone();
        stuck_loops(
            &self.snapshot(),
            &watched,
            self.since,
            crate::clock::now(),
            limit,
        )
    }

    /// Loop `name` is alive now.
    pub fn beat(&self, name: &'static str) {
        crate::lock(&self.beats).insert(name, crate::clock::now());
    }

    /// The address runtime completed a pass with a valid lease and no kernel error.
    pub fn mark_converged(&self) {
        self.converged.store(true, Ordering::Relaxed);
    }

    /// Whether the address runtime converged at least once.
    pub fn converged(&self) -> bool {
        self.converged.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> BTreeMap<&'static str, Instant> {
        crate::lock(&self.beats).clone()
    }
}

/// The loops among `expected` whose last beat (or `since`, if they never beat) is older than
/// `limit` at `now`, with how long they have been silent.
pub fn stuck_loops(
    beats: &BTreeMap<&'static str, Instant>,
    expected: &[&'static str],
    since: Instant,
    now: Instant,
    limit: Duration,
) -> Vec<(&'static str, Duration)> {
    expected
        .iter()
        .filter_map(|name| {
            let last = beats.get(name).copied().unwrap_or(since).max(since);
            let silent = now.saturating_duration_since(last);
            (silent > limit).then_some((*name, silent))
        })
        .collect()
}
