//! clusterd-lease: the arithmetic that keeps one floating address on one node, and the fence
//! gate that decides when a silent node must be fenced before its addresses move.
//!
//! Pure: arithmetic over durations and instants that callers supply. It never reads a clock,
//! never does IO, and depends on nothing but the standard library, so every rule of the safety
//! argument can be read and tested here alone. The daemon keeps the clocks
//! (`clusterd::lease`), the fence agents that do the IO live in `clusterd-fencing`.

pub mod gate;
pub mod handover;
pub mod timings;

pub use gate::{Backoff, FenceGate, GateDecision};
pub use handover::{Contacts, contact_at, quorum_contact};
pub use timings::{GUARD_WRITE_WINDOW, Guard, LeaseTimings, TimingProblem, guard_kernel_timeout};
