//! clusterd-fencing: the lease arithmetic that keeps one floating address on one node, and
//! (later) the fence agents that power off nodes leases cannot stop.
//!
//! This crate depends on nothing of clusterd's: it is arithmetic over durations and instants
//! that callers supply. It never reads a clock and never does IO in the lease part.

pub mod lease;

pub use lease::{Guard, LeaseTimings, TimingProblem};
