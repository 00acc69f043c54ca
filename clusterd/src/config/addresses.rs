//! `[[addresses]]`: the floating addresses, their home nodes and services, and their checks.

use super::*;

/// `[[addresses]]`: a floating address. The list must be identical on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressConfig {
    /// The address and its prefix length as configured on the interface, e.g. "192.0.2.101/24"
    /// or "2001:db8::101/64".
    pub ip: IpPrefix,
    /// Network interface the address is added to on whichever node holds it, e.g. "eth0".
    /// 1 to 15 characters, no '/' and no whitespace. Must exist on every mail node.
    pub interface: String,
    /// The mail node that holds this address when it is healthy; the address returns there.
    pub home: String,
    /// Names of `[checks.NAME]` sections that must pass on a node for it to hold this address.
    /// May be empty (then only the node being alive counts).
    #[serde(default)]
    pub services: Vec<String>,
}

impl Config {
    pub(super) fn check_addresses(&self, v: &mut Problems) {
        let members = self.members();
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for (i, a) in self.addresses.iter().enumerate() {
            let f = format!("addresses[{i}]");
            let ip = a.ip.addr;
            if a.ip.prefix_len == 0 || a.ip.prefix_len > a.ip.max_prefix_len() {
                v.push(
                    format!("{f}.ip"),
                    format!(
                        "{} has prefix length {}; write 1 to {}, the prefix of the subnet on the \
                         interface, e.g. \"{}/24\"",
                        a.ip,
                        a.ip.prefix_len,
                        a.ip.max_prefix_len(),
                        ip
                    ),
                );
            }
            if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                v.push(
                    format!("{f}.ip"),
                    format!(
                        "{ip} is not a unicast address clients can reach; write the floating \
                         address, e.g. \"192.0.2.101/24\""
                    ),
                );
            }
            if let Some(first) = seen.get(&ip) {
                v.push(
                    format!("{f}.ip"),
                    format!(
                        "{ip} is already listed as addresses[{first}]; each floating address \
                         appears once, so remove one of them"
                    ),
                );
            } else {
                seen.insert(ip, i);
            }
            let iface = &a.interface;
            if iface.is_empty()
                || iface.len() > 15
                || iface.contains(['/', '"', '\\'])
                || iface.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                v.push(
                    format!("{f}.interface"),
                    format!(
                        "{iface:?} is not a valid interface name; write 1 to 15 characters \
                         without '/', quotes, backslashes or spaces, as `ip link` shows it, \
                         e.g. \"eth0\""
                    ),
                );
            }
            match members.iter().find(|m| m.name == a.home) {
                None => v.push(
                    format!("{f}.home"),
                    format!(
                        "{:?} is not a member; write the name of a mail node, one of: {}",
                        a.home,
                        join_quoted(mail_names(&members).iter())
                    ),
                ),
                Some(m) if m.role == Role::Witness => v.push(
                    format!("{f}.home"),
                    format!(
                        "{:?} is a witness, and a witness never holds addresses; write the name \
                         of a mail node, one of: {}",
                        a.home,
                        join_quoted(mail_names(&members).iter())
                    ),
                ),
                Some(_) => {}
            }
            let mut listed = BTreeSet::new();
            for (j, s) in a.services.iter().enumerate() {
                if !self.checks.contains_key(s) {
                    v.push(format!("{f}.services[{j}]"), self.unknown_check_message(s));
                }
                if !listed.insert(s) {
                    v.push(
                        format!("{f}.services[{j}]"),
                        format!("{s:?} is listed twice; list each service once"),
                    );
                }
            }
        }
    }
}

impl Config {
    /// The configured floating addresses in model form, sorted by ip: what this node declares
    /// and what its leadership reconciles the cluster to.
    pub fn declared_addresses(&self) -> Vec<AddressSpec> {
        let mut specs: Vec<AddressSpec> = self
            .addresses
            .iter()
            .map(|a| AddressSpec {
                ip: a.ip.to_string(),
                interface: a.interface.clone(),
                home: a.home.clone(),
                services: a.services.clone(),
            })
            .collect();
        specs.sort();
        specs
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_refused, assert_valid, base};

    #[test]
    fn duplicate_address_ips_refused() {
        let mut c = base();
        c.addresses[1].ip = "192.0.2.101/25".parse().expect("prefix");
        assert_refused(&c, "addresses[1].ip", "already listed as addresses[0]");
    }

    #[test]
    fn non_unicast_address_refused() {
        let mut c = base();
        c.addresses[1].ip = "127.0.0.1/8".parse().expect("prefix");
        assert_refused(&c, "addresses[1].ip", "not a unicast address");
    }

    #[test]
    fn address_prefix_out_of_range_refused() {
        let mut c = base();
        c.addresses[0].ip.prefix_len = 0;
        assert_refused(&c, "addresses[0].ip", "write 1 to 32");
    }

    #[test]
    fn address_home_must_be_a_member() {
        let mut c = base();
        c.addresses[0].home = "mx9".into();
        assert_refused(&c, "addresses[0].home", "\"mx9\" is not a member");
    }

    #[test]
    fn witness_cannot_be_address_home() {
        let mut c = base();
        c.addresses[0].home = "w1".into();
        assert_refused(&c, "addresses[0].home", "witness never holds addresses");
    }

    #[test]
    fn address_service_must_name_a_check() {
        let mut c = base();
        c.addresses[0].services.push("pop3".into());
        assert_refused(&c, "addresses[0].services[2]", "\"pop3\" names no check");
    }

    #[test]
    fn address_without_services_accepted() {
        let mut c = base();
        c.addresses[0].services.clear();
        assert_valid(&c);
    }

    #[test]
    fn bad_interface_names_refused() {
        for bad in [
            "",
            "eth0/1",
            "eth 0",
            "averyveryverylongname",
            "eth\"0",
            "eth\\0",
        ] {
            let mut c = base();
            c.addresses[0].interface = bad.into();
            assert_refused(&c, "addresses[0].interface", "1 to 15 characters");
        }
    }
}
