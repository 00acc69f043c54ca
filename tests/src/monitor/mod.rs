//! Invariant monitors: watch the cluster from inside (addresses configured in each node,
//! sampled and from the kernel's address events) and from outside (who answers ARP or neighbour
//! solicitations for a floating address, and which MACs answer an ICMP echo for it) and report
//! any instant at which an address had two holders.

pub mod addresses;
pub mod arp;
pub mod holders;
pub mod ndp;

pub use addresses::{AddressSampler, Sampled};
pub use arp::{ArpLog, ArpProber};
pub use holders::{Duplicate, HolderTimeline};

use crate::lab::{Lab, Result};

/// Both monitors, started and stopped together: what every failover test runs throughout.
#[derive(Debug)]
pub struct Monitors {
    sampler: AddressSampler,
    prober: ArpProber,
    started: std::time::Instant,
}

/// The least time monitors watch, however quickly the test is done: a fast move must still
/// be seen by enough samples (at every 10 ms, 40) to show the monitors were not blind.
pub const MIN_WATCH: std::time::Duration = std::time::Duration::from_millis(400);

/// What the two monitors saw.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Addresses configured (and allowed by the guard) in every node namespace, sampled.
    pub addresses: HolderTimeline,
    /// The same from the kernel's address events and the guard's expiry times, to the instant.
    pub events: HolderTimeline,
    /// Who answered ARP and neighbour solicitations, plus announcements, as the client saw it.
    pub network: ArpLog,
}

impl Monitors {
    /// Start the address sampler and the client-side ARP/ND prober on every floating address.
    pub fn start(lab: &Lab) -> Result<Monitors> {
        Ok(Monitors {
            sampler: AddressSampler::start(lab)?,
            prober: ArpProber::start(lab)?,
            started: std::time::Instant::now(),
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

    /// Stop both (after [`MIN_WATCH`] at least).
    pub fn stop(self) -> Observed {
        std::thread::sleep(MIN_WATCH.saturating_sub(self.started.elapsed()));
        let sampled = self.sampler.stop();
        Observed {
            addresses: sampled.sampled,
            events: sampled.events,
            network: self.prober.stop(),
        }
    }
}

impl Observed {
    /// `Ok` if no monitor ever saw two holders of one address (the sampled addresses, the
    /// kernel's address events, ARP/ND answers, ICMP echo answers per MAC) and the samplers
    /// actually ran (more than 20 samples each); otherwise a report saying what was seen, when
    /// and who.
    pub fn never_two_holders(&self) -> std::result::Result<(), String> {
        self.addresses.assert_single_holder()?;
        self.events.assert_single_holder()?;
        self.network.timeline.assert_single_holder()?;
        self.network.echo.assert_single_holder()?;
        if self.addresses.samples <= 20
            || self.network.timeline.samples <= 20
            || (self.network.echo.samples > 0 && self.network.echo.samples <= 20)
        {
            return Err(format!(
                "monitors barely ran: {}, {} and {} samples",
                self.addresses.samples, self.network.timeline.samples, self.network.echo.samples
            ));
        }
        Ok(())
    }
}
