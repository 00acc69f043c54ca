//! `[dns]`: the authoritative server, its zones and SRV records, and their checks.

use super::*;

/// `[dns]`: the authoritative DNS server on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Socket addresses to serve DNS on (UDP and TCP), e.g. ["192.0.2.11:53"]. At least one.
    pub listen: Vec<SocketAddr>,
    /// TTL in seconds of every answer. 1 to 86400. Default 30; keep it short so clients follow
    /// failovers.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// When no address passes its checks, answer with all addresses (true) rather than none
    /// (false). Default true.
    #[serde(default = "default_true")]
    pub fail_open: bool,
    /// UDP queries answered per second from one source (an IPv4 address or an IPv6 /64), with
    /// bursts of twice as many; further queries are dropped, so the server cannot be used to
    /// flood a spoofed victim. TCP is not limited (its source cannot be spoofed). 0 turns the
    /// limit off. Default 100: a resolver caches answers for the TTL, so even one serving many
    /// users asks far less often.
    #[serde(default = "default_dns_rate_limit")]
    pub rate_limit: u32,
    /// The zones served. At least one; must be identical on every node.
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
}

/// `[[dns.zones]]`: one authoritative zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The zone's fully qualified name, ending in '.', e.g. "mail.example.com.".
    pub name: String,
    /// Labels of `names` whose addresses are published as MX targets of the zone apex, e.g.
    /// ["mail"]. Optional.
    #[serde(default)]
    pub mx: Vec<String>,
    /// RFC 6186 service records for mail clients, e.g. `{ service = "_imaps._tcp", target =
    /// "imap", port = 993 }`. Optional.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub srv: Vec<SrvConfig>,
    /// Names in the zone: a label (or "@" for the zone apex) mapped to the check names whose
    /// addresses it answers with, e.g. { imap = ["imap"], mail = ["imap", "pop3", "smtp"] }.
    /// A name answers with the addresses that list all of these services and whose holder passes
    /// them.
    #[serde(default)]
    pub names: BTreeMap<String, Vec<String>>,
}

/// `[[dns.zones.srv]]`: one SRV record (RFC 6186 mail service discovery).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrvConfig {
    /// Service and protocol labels, e.g. "_imap._tcp", "_imaps._tcp", "_pop3s._tcp",
    /// "_submission._tcp", "_submissions._tcp".
    pub service: String,
    /// The name (a label of `names`) that clients should connect to.
    pub target: String,
    /// Port clients connect to, e.g. 993.
    pub port: u16,
    /// Lower is preferred. Default 0.
    #[serde(default)]
    pub priority: u16,
    /// Share among equal priorities. Default 1.
    #[serde(default = "default_srv_weight")]
    pub weight: u16,
}

impl Config {
    pub(super) fn check_dns(&self, v: &mut Problems) {
        let Some(dns) = &self.dns else { return };
        if self.node.role == Role::Witness {
            v.push(
                "dns",
                "this node is a witness, and a witness does not serve DNS; remove the [dns] \
                 section from this file (keep it on the mail nodes)",
            );
        }
        if dns.listen.is_empty() {
            v.push(
                "dns.listen",
                "no address to serve DNS on; write at least one, e.g. listen = \
                 [\"192.0.2.11:53\"], or remove the [dns] section",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, l) in dns.listen.iter().enumerate() {
            if !seen.insert(l) {
                v.push(
                    format!("dns.listen[{i}]"),
                    format!("{l} is listed twice; list each address once"),
                );
            }
        }
        if dns.rate_limit > MAX_DNS_RATE_LIMIT {
            v.push(
                "dns.rate_limit",
                format!(
                    "{} queries per second per source is more than {MAX_DNS_RATE_LIMIT}; write a \
                     smaller number (default {DEFAULT_DNS_RATE_LIMIT}), or 0 to turn the limit off",
                    dns.rate_limit
                ),
            );
        }
        if !(1..=86_400).contains(&dns.ttl) {
            v.push(
                "dns.ttl",
                format!(
                    "{} is out of range; write 1 to 86400 seconds, short so clients follow \
                     failovers (default 30)",
                    dns.ttl
                ),
            );
        }
        if dns.zones.is_empty() {
            v.push(
                "dns.zones",
                "no zone to serve; add a [[dns.zones]] table with name = \"mail.example.com.\" \
                 and its names, or remove the [dns] section",
            );
        }
        let mut zone_names: HashMap<&str, usize> = HashMap::new();
        for (i, z) in dns.zones.iter().enumerate() {
            let f = format!("dns.zones[{i}]");
            if let Err(why) = check_fqdn(&z.name) {
                v.push(format!("{f}.name"), format!("{:?} {why}", z.name));
            }
            if let Some(first) = zone_names.get(z.name.as_str()) {
                v.push(
                    format!("{f}.name"),
                    format!(
                        "zone {:?} is already defined as dns.zones[{first}]; merge their names \
                         into one [[dns.zones]] table",
                        z.name
                    ),
                );
            } else {
                zone_names.insert(&z.name, i);
            }
            if z.names.is_empty() {
                v.push(
                    format!("{f}.names"),
                    "the zone has no names; add e.g. names = { imap = [\"imap\"], smtp = \
                     [\"smtp\"] }",
                );
            }
            for (label, services) in &z.names {
                let nf = format!("{f}.names.{label}");
                if label != "@" && check_label(label).is_err() {
                    v.push(
                        nf.clone(),
                        format!(
                            "{label:?} is not a valid name; write one DNS label (1 to 63 of \
                             a-z, 0-9 and '-', not starting or ending with '-') or \"@\" for \
                             the zone apex"
                        ),
                    );
                }
                if services.is_empty() {
                    v.push(
                        nf.clone(),
                        format!(
                            "{label:?} lists no services; list the checks whose addresses it \
                             answers with, e.g. {label} = [\"imap\"]"
                        ),
                    );
                }
                for (j, s) in services.iter().enumerate() {
                    if !self.checks.contains_key(s) {
                        v.push(format!("{nf}[{j}]"), self.unknown_check_message(s));
                    }
                }
            }
            for (j, r) in z.srv.iter().enumerate() {
                let sf = format!("{f}.srv[{j}]");
                let parts: Vec<&str> = r.service.split('.').collect();
                let well_formed = parts.len() == 2
                    && parts[0].len() > 1
                    && parts[0].starts_with('_')
                    && check_label(&parts[0][1..]).is_ok()
                    && (parts[1] == "_tcp" || parts[1] == "_udp");
                if !well_formed {
                    v.push(
                        format!("{sf}.service"),
                        format!(
                            "{:?} is not a service name; write \"_SERVICE._tcp\", e.g. \
                             \"_imaps._tcp\" or \"_submission._tcp\" (RFC 6186)",
                            r.service
                        ),
                    );
                }
                if !z.names.contains_key(&r.target) {
                    v.push(
                        format!("{sf}.target"),
                        format!(
                            "{:?} is not one of this zone's names; SRV targets must be names \
                             defined in names, one of: {}",
                            r.target,
                            join_quoted(z.names.keys())
                        ),
                    );
                }
                if r.port == 0 {
                    v.push(
                        format!("{sf}.port"),
                        "port 0 is not a service port; write the port clients use, e.g. 993"
                            .to_string(),
                    );
                }
            }
            let mut mx_seen = BTreeSet::new();
            for (j, m) in z.mx.iter().enumerate() {
                if !z.names.contains_key(m) {
                    v.push(
                        format!("{f}.mx[{j}]"),
                        format!(
                            "{m:?} is not one of this zone's names; MX targets must be names \
                             defined in names, one of: {}",
                            join_quoted(z.names.keys())
                        ),
                    );
                }
                if !mx_seen.insert(m) {
                    v.push(
                        format!("{f}.mx[{j}]"),
                        format!("{m:?} is listed twice; list each MX target once"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_refused, assert_valid, base};
    use super::*;

    #[test]
    fn srv_record_with_bad_service_unknown_target_or_port_0_is_refused() {
        let mut c = base();
        let zone = &mut c.dns.as_mut().unwrap().zones[0];
        zone.srv.push(SrvConfig {
            service: "imaps".into(),
            target: "nope".into(),
            port: 0,
            priority: 0,
            weight: 1,
        });
        assert_refused(&c, "dns.zones[0].srv[0].service", "_imaps._tcp");
        assert_refused(
            &c,
            "dns.zones[0].srv[0].target",
            "not one of this zone's names",
        );
        assert_refused(&c, "dns.zones[0].srv[0].port", "port 0");
        let zone = &mut c.dns.as_mut().unwrap().zones[0];
        zone.srv[0] = SrvConfig {
            service: "_imaps._tcp".into(),
            target: "imap".into(),
            port: 993,
            priority: 0,
            weight: 1,
        };
        assert_valid(&c);
    }

    #[test]
    fn dns_rate_limit_defaults_on_and_one_past_its_maximum_is_refused() {
        let c = base();
        assert_eq!(c.dns.as_ref().unwrap().rate_limit, DEFAULT_DNS_RATE_LIMIT);
        let mut c = base();
        c.dns.as_mut().unwrap().rate_limit = MAX_DNS_RATE_LIMIT;
        assert_valid(&c);
        c.dns.as_mut().unwrap().rate_limit = MAX_DNS_RATE_LIMIT + 1;
        assert_refused(&c, "dns.rate_limit", "0 to turn the limit off");
        c.dns.as_mut().unwrap().rate_limit = 0;
        assert_valid(&c);
    }

    fn zone(c: &mut Config) -> &mut ZoneConfig {
        &mut c.dns.as_mut().expect("dns").zones[0]
    }

    #[test]
    fn zone_name_must_end_with_dot() {
        let mut c = base();
        zone(&mut c).name = "mail.example.com".into();
        assert_refused(&c, "dns.zones[0].name", "write \"mail.example.com.\"");
    }

    #[test]
    fn zone_name_with_bad_label_refused() {
        for bad in [
            "mail..example.com.",
            "Mail.example.com.",
            "-mail.example.com.",
            ".",
        ] {
            let mut c = base();
            zone(&mut c).name = bad.into();
            assert_refused(&c, "dns.zones[0].name", "");
        }
        let mut c = base();
        zone(&mut c).name = format!("{}.example.com.", "a".repeat(64));
        assert_refused(&c, "dns.zones[0].name", "1 to 63");
    }

    #[test]
    fn zone_name_longer_than_253_refused() {
        let mut c = base();
        let long = vec!["a".repeat(63); 4].join(".");
        zone(&mut c).name = format!("{long}.");
        assert_refused(&c, "dns.zones[0].name", "at most 253");
    }

    #[test]
    fn duplicate_zones_refused() {
        let mut c = base();
        let z = zone(&mut c).clone();
        c.dns.as_mut().expect("dns").zones.push(z);
        assert_refused(&c, "dns.zones[1].name", "already defined as dns.zones[0]");
    }

    #[test]
    fn dns_name_service_must_name_a_check() {
        let mut c = base();
        zone(&mut c)
            .names
            .insert("pop3".into(), vec!["pop3".into()]);
        assert_refused(&c, "dns.zones[0].names.pop3[0]", "\"pop3\" names no check");
    }

    #[test]
    fn dns_name_must_be_a_label_or_apex() {
        let mut c = base();
        zone(&mut c).names.insert("@".into(), vec!["smtp".into()]);
        assert_valid(&c);
        zone(&mut c)
            .names
            .insert("imap.eu".into(), vec!["imap".into()]);
        assert_refused(&c, "dns.zones[0].names.imap.eu", "\"@\" for the zone apex");
    }

    #[test]
    fn mx_must_name_a_zone_name() {
        let mut c = base();
        zone(&mut c).mx.push("mx".into());
        assert_refused(
            &c,
            "dns.zones[0].mx[1]",
            "\"mx\" is not one of this zone's names",
        );
    }

    #[test]
    fn dns_without_listen_refused() {
        let mut c = base();
        c.dns.as_mut().expect("dns").listen.clear();
        assert_refused(&c, "dns.listen", "at least one");
    }

    #[test]
    fn dns_without_zones_refused() {
        let mut c = base();
        c.dns.as_mut().expect("dns").zones.clear();
        assert_refused(&c, "dns.zones", "add a [[dns.zones]]");
    }

    #[test]
    fn dns_ttl_out_of_range_refused() {
        for bad in [0, 86_401] {
            let mut c = base();
            c.dns.as_mut().expect("dns").ttl = bad;
            assert_refused(&c, "dns.ttl", "1 to 86400");
        }
    }

    #[test]
    fn witness_with_dns_refused() {
        let mut c = base();
        c.node.role = Role::Witness;
        c.addresses.retain(|a| a.home != "mx1");
        assert_refused(&c, "dns", "does not serve DNS");
        c.dns = None;
        assert_valid(&c);
    }
}
