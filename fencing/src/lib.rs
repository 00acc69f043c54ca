//! clusterd-fencing: the fence agents that power off nodes leases cannot stop.
//!
//! This crate depends on nothing of clusterd's. The agents ([`redfish`], [`exec`],
//! [`webhook`]) do the IO, behind the [`Fencer`] trait; when to fence is the pure gate of
//! `clusterd-lease`.

pub mod agent;
pub mod exec;
pub mod redfish;
#[cfg(test)]
mod test_http;
pub mod tls;
pub mod webhook;

pub use agent::{FenceError, FenceOptions, Fencer, PowerAction, Secret, fence};
pub use tls::Trust;
