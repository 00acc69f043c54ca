//! The daemon's clocks, in one place: the monotonic clock every lease, timeout and age is
//! measured with, and the wall clock of signatures and history stamps.
//!
//! Both follow tokio's clock, which in a normal build is the system's own. A simulation
//! ([`simulate`], in tests built with tokio's `test-util`) runs them on tokio's paused clock
//! instead, so that thousands of fault schedules run in virtual time against the real code:
//! leases, the placement planner and openraft's timers then all see the same virtual time.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

thread_local! {
    /// `(unix ms, monotonic instant)` the simulated wall clock counts from, on this thread.
    static SIMULATED: Cell<Option<(u64, Instant)>> = const { Cell::new(None) };
}

/// Now, on the monotonic clock.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Time passed since `t` (zero for an instant in the future).
pub fn since(t: Instant) -> Duration {
    now().saturating_duration_since(t)
}

/// Milliseconds since the unix epoch: the system's wall clock, or the simulated one.
pub fn unix_ms() -> u64 {
    match SIMULATED.with(Cell::get) {
        Some((epoch_ms, base)) => epoch_ms + since(base).as_millis() as u64,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    }
}

/// Run this thread's wall clock from `epoch_ms` on, advancing with [`now`] (for a simulation
/// on a paused, single-threaded runtime: every task of the simulated cluster runs here).
pub fn simulate(epoch_ms: u64) {
    SIMULATED.with(|c| c.set(Some((epoch_ms, now()))));
}

/// Back to the system's wall clock on this thread.
pub fn stop_simulating() {
    SIMULATED.with(|c| c.set(None));
}

/// Whether this thread runs a simulation.
pub fn simulated() -> bool {
    SIMULATED.with(Cell::get).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_is_the_systems_until_simulated() {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        assert!(unix_ms().abs_diff(system) < 1_000);
        assert!(!simulated());
        simulate(1_000);
        assert!(simulated());
        assert!((1_000..1_100).contains(&unix_ms()));
        stop_simulating();
        assert!(unix_ms().abs_diff(system) < 60_000);
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_paused_clock_both_clocks_advance_with_virtual_time() {
        simulate(5_000);
        let t = now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(since(t), Duration::from_secs(3600));
        assert_eq!(unix_ms(), 5_000 + 3_600_000);
        stop_simulating();
    }
}
