//! The lab's network: a `switch` namespace holding a bridge, one namespace per node and one for
//! the client, each joined to the bridge by a veth pair. Interfaces are created directly inside
//! their namespaces, so nothing ever appears in the host's namespace, and nothing is routed
//! anywhere: the bridge has no uplink and the namespaces have no default route.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use super::error::Result;
use super::netns;
use super::process::run;
use super::state::LabState;

/// The lab's IPv4 subnet (TEST-NET-1).
pub const SUBNET_V4: &str = "192.0.2.0/24";
/// The lab's IPv6 subnet (documentation prefix).
pub const SUBNET_V6: &str = "2001:db8::/64";

/// Fixed IPv4 address of node index `i` (1-based): `192.0.2.(10+i)`.
pub fn node_ipv4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + i)
}

/// Fixed IPv6 address of node index `i`: `2001:db8::(10+i)` (written in decimal digits).
pub fn node_ipv6(i: u8) -> Ipv6Addr {
    let digits = u16::from_str_radix(&(10 + u16::from(i)).to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, digits)
}

/// Floating address planned for mail node `i`: `192.0.2.(100+i)`.
pub fn floating_ipv4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 100 + i)
}

/// IPv6 floating address planned for mail node `i`: `2001:db8::(100+i)` (decimal digits, like
/// the node addresses), so `192.0.2.101` and `2001:db8::101` belong to the same node.
pub fn floating_ipv6(i: u8) -> Ipv6Addr {
    let digits = u16::from_str_radix(&(100 + u16::from(i)).to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, digits)
}

/// The source address of the client-side neighbour-discovery prober: inside the lab's prefix
/// but configured nowhere, so the answers it provokes never reach (or update) the client's own
/// neighbour cache.
pub const ND_PROBE_SOURCE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 0x200);

/// The client's IPv4 address.
pub const CLIENT_IPV4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
/// The client's IPv6 address.
pub const CLIENT_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200);

/// A locally administered, deterministic MAC for the host with IPv4 last octet `octet`.
pub fn mac_for(octet: u8) -> String {
    format!("02:cd:00:00:02:{octet:02x}")
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Create every namespace, the bridge and the veth pairs described by `state`, with addresses.
pub fn build(state: &LabState) -> Result<()> {
    let sw = state.switch_netns.as_str();
    netns::add(sw)?;
    ip(&["-n", sw, "link", "add", &state.bridge, "type", "bridge"])?;
    ip(&["-n", sw, "link", "set", &state.bridge, "up"])?;

    let mut endpoints: Vec<(&str, &str, &str, &str, String, String)> = state
        .nodes
        .iter()
        .map(|n| {
            (
                n.netns.as_str(),
                n.iface.as_str(),
                n.bridge_port.as_str(),
                n.mac.as_str(),
                format!("{}/24", n.ipv4),
                format!("{}/64", n.ipv6),
            )
        })
        .collect();
    let c = &state.client;
    endpoints.push((
        &c.netns,
        &c.iface,
        &c.bridge_port,
        &c.mac,
        format!("{}/24", c.ipv4),
        format!("{}/64", c.ipv6),
    ));

    for (ns, iface, port, mac, v4, v6) in endpoints {
        netns::add(ns)?;
        ip(&[
            "-n", sw, "link", "add", port, "type", "veth", "peer", "name", iface, "address", mac,
            "netns", ns,
        ])?;
        ip(&["-n", sw, "link", "set", port, "master", &state.bridge, "up"])?;
        ip(&["-n", ns, "link", "set", iface, "up"])?;
        ip(&["-n", ns, "addr", "add", &v4, "dev", iface])?;
        ip(&["-n", ns, "addr", "add", &v6, "dev", iface, "nodad"])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(node_ipv4(1).to_string(), "192.0.2.11");
        assert_eq!(node_ipv6(1).to_string(), "2001:db8::11");
        assert_eq!(node_ipv6(3).to_string(), "2001:db8::13");
        assert_eq!(floating_ipv4(2).to_string(), "192.0.2.102");
        assert_eq!(floating_ipv6(2).to_string(), "2001:db8::102");
        assert_eq!(floating_ipv6(16).to_string(), "2001:db8::116");
        assert_eq!(ND_PROBE_SOURCE.to_string(), "2001:db8::1:200");
        assert_eq!(mac_for(200), "02:cd:00:00:02:c8");
    }
}
