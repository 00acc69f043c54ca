//! Invariant monitors: watch the cluster from inside (addresses configured in each node) and
//! from outside (who answers ARP for a floating address) and report any instant at which an
//! address had two holders.

pub mod addresses;
pub mod arp;
pub mod holders;

pub use addresses::AddressSampler;
pub use arp::ArpProber;
pub use holders::{Duplicate, HolderTimeline};

/// Both invariant monitors, started together; [`Monitors::finish`] fails if either saw two
/// holders of one address at any moment (or barely ran).
#[derive(Debug)]
pub struct Monitors {
    sampler: AddressSampler,
    arp: ArpProber,
}

impl Monitors {
    /// Start the address sampler and the client-side ARP prober on `lab`.
    pub fn start(lab: &crate::Lab) -> crate::lab::Result<Monitors> {
        Ok(Monitors {
            sampler: AddressSampler::start(lab)?,
            arp: ArpProber::start(lab)?,
        })
    }

    /// Stop both; the address sampler's timeline if neither saw a duplicate.
    pub fn finish(self) -> Result<HolderTimeline, String> {
        let addresses = self.sampler.stop();
        let arp = self.arp.stop();
        addresses.assert_single_holder()?;
        arp.timeline.assert_single_holder()?;
        if addresses.samples <= 20 || arp.timeline.samples <= 20 {
            return Err(format!(
                "the monitors barely ran ({} and {} samples)",
                addresses.samples, arp.timeline.samples
            ));
        }
        Ok(addresses)
    }
}
