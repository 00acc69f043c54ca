pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dns_feed;
pub mod docs;
pub mod drill;
pub mod fence;
pub mod health;
pub mod hooks;
pub mod http_server;
pub mod lease;
pub mod metrics;
pub mod model;
pub mod node;
pub mod placement;
pub mod raft;
pub mod status;
pub mod systemd;
pub mod vip;
pub mod wire;

/// Lock `m` whether or not a thread panicked while holding it: every value kept behind a
/// mutex here stays consistent between statements (no invariant spans a panic point), so a
/// poisoned lock is still safe to use, and a daemon must not die of someone else's panic.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
