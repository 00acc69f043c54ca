//! Invariant monitors: watch the cluster from inside (addresses configured in each node) and
//! from outside (who answers ARP or neighbour solicitations for a floating address) and report
//! any instant at which an address had two holders.

pub mod addresses;
pub mod arp;
pub mod holders;
pub mod ndp;

pub use addresses::AddressSampler;
pub use arp::{ArpLog, ArpProber};
pub use holders::{Duplicate, HolderTimeline};

use crate::lab::{Lab, Result};

/// Both monitors, started and stopped together: what every failover test runs throughout.
#[derive(Debug)]
pub struct Monitors {
    sampler: AddressSampler,
    prober: ArpProber,
}

/// What the two monitors saw.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Addresses configured (and allowed by the guard) in every node namespace.
    pub addresses: HolderTimeline,
    /// Who answered ARP and neighbour solicitations, plus announcements, as the client saw it.
    pub network: ArpLog,
}

impl Monitors {
    /// Start the address sampler and the client-side ARP/ND prober on every floating address.
    pub fn start(lab: &Lab) -> Result<Monitors> {
        Ok(Monitors {
            sampler: AddressSampler::start(lab)?,
            prober: ArpProber::start(lab)?,
        })
    }

    /// Stop both and require that neither saw two holders of one address at once (and that
    /// both ran): what every failover test ends with. The error is the monitors' report.
    pub fn finish(self) -> Result<Observed> {
        let seen = self.stop();
        seen.never_two_holders()
            .map_err(crate::lab::LabError::State)?;
        Ok(seen)
    }

    /// Stop both.
    pub fn stop(self) -> Observed {
        Observed {
            addresses: self.sampler.stop(),
            network: self.prober.stop(),
        }
    }
}

impl Observed {
    /// `Ok` if neither monitor ever saw two holders of one address and both actually ran
    /// (more than 20 samples each); otherwise a report saying what was seen, when and who.
    pub fn never_two_holders(&self) -> std::result::Result<(), String> {
        self.addresses.assert_single_holder()?;
        self.network.timeline.assert_single_holder()?;
        if self.addresses.samples <= 20 || self.network.timeline.samples <= 20 {
            return Err(format!(
                "monitors barely ran: {} and {} samples",
                self.addresses.samples, self.network.timeline.samples
            ));
        }
        Ok(())
    }
}
