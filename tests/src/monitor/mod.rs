//! Invariant monitors: watch the cluster from inside (addresses configured in each node) and
//! from outside (who answers ARP for a floating address) and report any instant at which an
//! address had two holders.

pub mod addresses;
pub mod arp;
pub mod holders;

pub use addresses::AddressSampler;
pub use arp::ArpProber;
pub use holders::{Duplicate, HolderTimeline};
