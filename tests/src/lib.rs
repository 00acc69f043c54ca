//! The clusterd lab: real mail nodes in Linux network namespaces, fault injection, and the
//! invariant monitors every end-to-end test runs.
//!
//! Layout:
//! - [`lab`] builds and tears down a lab (namespaces, bridge, veths, dovecot, postfix, clusterd),
//!   keeps its state in one run directory, injects faults, and sweeps leftovers of crashed runs.
//! - [`monitor`] watches the safety invariant from two sides: addresses configured in every node
//!   namespace (netlink) and ARP answers seen by the client (raw packets).
//! - [`probe`] speaks IMAP, POP3 and SMTP from the client namespace like a mail client does.
//! - [`bmc`] plays the nodes' out-of-band power control: Redfish BMCs and a webhook power API
//!   over HTTPS with a CA made per run, whose power-off really stops a lab node.
//! - [`chaos`] runs seeded campaigns of random, overlapping faults and operator actions and
//!   checks every promise against what the observers saw.
//! - [`watch`] measures a failover as a client sees it: many overlapping connection attempts,
//!   which node greeted and when.
//!
//! Everything here is synchronous (threads with deadlines) so a test needs no runtime, and every
//! wait is bounded. The lab only ever uses documentation address ranges and never touches the
//! host's own network namespace beyond creating and deleting its own, prefixed namespaces.

pub mod bmc;
pub mod chaos;
pub mod lab;
pub mod monitor;
pub mod probe;
pub mod watch;

pub use lab::clusterd::ClusterStatus;
pub use lab::testing::TestLab;
pub use lab::{Fault, Lab, LabError, LabSpec, LabState, NodeRole, NodeState, Placement, Service};
pub use monitor::{AddressSampler, ArpProber, HolderTimeline, Monitors, Observed, Sampled};
pub use probe::{ProbeLog, ProberSpec, Protocol, ServiceProber};
