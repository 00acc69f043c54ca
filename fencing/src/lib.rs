//! clusterd-fencing: the lease arithmetic that keeps one floating address on one node, the
//! fence gate that decides when a silent node must be fenced before its addresses move, and
//! the fence agents that power off nodes leases cannot stop.
//!
//! This crate depends on nothing of clusterd's. The lease and gate parts are arithmetic over
//! durations and instants that callers supply: they never read a clock and never do IO. The
//! agents ([`redfish`], [`exec`], [`webhook`]) do the IO, behind the [`Fencer`] trait.

pub mod agent;
pub mod exec;
pub mod gate;
pub mod lease;
pub mod redfish;
#[cfg(test)]
mod test_http;
pub mod tls;
pub mod webhook;

pub use agent::{FenceError, FenceOptions, Fencer, PowerAction, Secret, fence};
pub use gate::{Backoff, FenceGate, GateDecision};
pub use lease::{GUARD_WRITE_WINDOW, Guard, LeaseTimings, TimingProblem, guard_kernel_timeout};
pub use tls::Trust;
