//! The chaos campaign: random, overlapping faults and operator actions against a real lab,
//! with every invariant observer running, and a checker that fails the run on any violation of
//! what clusterd promises.
//!
//! - [`schedule`]: the seeded, serialisable fault schedule (pure);
//! - [`check`]: the checks over what the observers recorded (pure);
//! - [`run`]: carrying a schedule out in a lab and collecting the observations.
//!
//! `lab chaos --faults N --seed S [--minutes M]` runs a campaign; every failure prints the seed
//! and writes the schedule, which `lab chaos --replay FILE` runs again.

pub mod check;
pub mod run;
pub mod schedule;

pub use run::{Options, Outcome};
pub use schedule::{Schedule, Shape};
