//! Peer reachability across short link blips.
//!
//! When a link loses its carrier the kernel flushes the link's neighbour (ARP/NDP) entries.
//! Packets sent during the blip create new entries whose solicitations cannot leave, and once
//! the carrier is back such an entry waits for its retransmission timer (1 s by default) before
//! asking again: peers stayed unreachable for about a second after a 300 ms blip, longer than
//! a lease allows. [`watch_links`] follows the kernel's link events (rtnetlink multicast) and,
//! when a link's carrier comes back, deletes the entries left unresolved on it (incomplete or
//! failed), so the next packet to a peer asks for it at once.

use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::neighbour::{NeighbourMessage, NeighbourState};
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::watch;
use tracing::info;

use super::NetError;

/// Most unresolved entries deleted on one link at once.
pub const MAX_FORGOTTEN: usize = 4096;

/// Which links have their carrier, as last reported; says which just got it back.
#[derive(Debug, Default)]
pub struct Carriers(HashMap<u32, bool>);

impl Carriers {
    /// Link `index` reports `lower_up`; true if that is its carrier coming back (a link seen
    /// for the first time is not).
    pub fn came_back(&mut self, index: u32, lower_up: bool) -> bool {
        let was = self.0.insert(index, lower_up);
        lower_up && was == Some(false)
    }
}

/// Whether a neighbour entry was left unresolved: asked for and not (yet) answered.
pub fn unresolved(n: &NeighbourMessage, index: u32) -> bool {
    n.header.ifindex == index
        && matches!(
            n.header.state,
            NeighbourState::Incomplete | NeighbourState::Failed
        )
}

/// Follow link events until `stop`; an error when the event stream cannot be opened or ends.
pub async fn watch_links(mut stop: watch::Receiver<bool>) -> Result<(), NetError> {
    let (conn, handle, mut events) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
        .map_err(|e| NetError::new("watch", "link events", e))?;
    let mut conn = tokio::spawn(conn);
    let mut carriers = Carriers::default();
    let result = loop {
        let event = tokio::select! {
            event = events.next() => event,
            ended = &mut conn => {
                break Err(NetError::new(
                    "watch",
                    "link events",
                    format!("the netlink connection ended: {ended:?}"),
                ));
            }
            _ = stop.wait_for(|s| *s) => break Ok(()),
        };
        let Some((msg, _)) = event else {
            break Err(NetError::new(
                "watch",
                "link events",
                "the event stream ended",
            ));
        };
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = msg.payload else {
            continue;
        };
        let index = link.header.index;
        let lower_up = link.header.flags.contains(LinkFlags::LowerUp);
        if carriers.came_back(index, lower_up) {
            let forgotten = forget_unresolved(&handle, index).await?;
            info!(
                link = index,
                forgotten,
                "link carrier is back; unresolved neighbour entries forgotten so peers are asked \
                 for again at once"
            );
        }
    };
    conn.abort();
    result
}

/// Delete the unresolved neighbour entries of link `index` (both families); how many.
async fn forget_unresolved(handle: &Handle, index: u32) -> Result<usize, NetError> {
    let err = |e: rtnetlink::Error| NetError::new("forget neighbours", index, e);
    let stale: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .execute()
        .try_filter(|n| futures_util::future::ready(unresolved(n, index)))
        .take(MAX_FORGOTTEN)
        .try_collect()
        .await
        .map_err(err)?;
    let mut forgotten = 0;
    for n in stale {
        // Gone already (answered meanwhile, or flushed): nothing to do.
        if handle.neighbours().del(n).execute().await.is_ok() {
            forgotten += 1;
        }
    }
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_carrier_coming_back_counts() {
        let mut c = Carriers::default();
        assert!(!c.came_back(2, true), "first sight");
        assert!(!c.came_back(2, true));
        assert!(!c.came_back(2, false), "going down");
        assert!(c.came_back(2, true), "back");
        assert!(!c.came_back(3, false));
        assert!(c.came_back(3, true));
    }

    #[test]
    fn only_incomplete_or_failed_entries_of_the_link_are_unresolved() {
        let entry = |index, state| {
            let mut n = NeighbourMessage::default();
            n.header.ifindex = index;
            n.header.state = state;
            n
        };
        assert!(unresolved(&entry(2, NeighbourState::Incomplete), 2));
        assert!(unresolved(&entry(2, NeighbourState::Failed), 2));
        for state in [
            NeighbourState::Reachable,
            NeighbourState::Stale,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
            NeighbourState::Noarp,
        ] {
            assert!(!unresolved(&entry(2, state), 2), "{state:?}");
        }
        assert!(!unresolved(&entry(3, NeighbourState::Incomplete), 2));
    }
}
