//! Which addresses each name answers: the service filter and the fail-open policy.
//!
//! Owns the one rule that makes DNS match what is really served: a name answers the addresses
//! that offer all of its services and whose owner passes all of them; when there are none, every
//! address offering them (fail open) or nothing (fail closed). Also the per-name view the daemon
//! shows in `clusterctl dns` and the fail-open transitions it logs. Pure functions over a
//! [`Snapshot`]: no sockets, no clock, no logging here (the server logs the transitions).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::snapshot::{Snapshot, Zone};

/// Why a name answers what it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameState {
    /// At least one address offering the name's services passes all of them; only those are
    /// answered.
    Passing,
    /// No address passes; every address offering the services is answered (fail open).
    FailOpen,
    /// No address passes; nothing is answered (NODATA, fail closed).
    FailClosed,
}

impl std::fmt::Display for NameState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameState::Passing => "passing",
            NameState::FailOpen => "fail-open",
            NameState::FailClosed => "fail-closed",
        })
    }
}

/// What one name of one zone answers right now (A and AAAA together, before rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAnswer {
    /// The zone apex, as in [`Zone::name`] but lowercase.
    pub zone: String,
    /// The label as configured (`"@"` for the apex).
    pub label: String,
    /// The fully qualified name, lowercase, with the trailing dot.
    pub name: String,
    /// The services the name needs.
    pub services: Vec<String>,
    /// The addresses answered, in snapshot order (the server rotates them per query).
    pub addresses: Vec<IpAddr>,
    /// Why these addresses.
    pub state: NameState,
}

/// A name whose state changed to or from a failing state between two snapshots; the server logs
/// one line per transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailTransition {
    /// Fully qualified name.
    pub name: String,
    /// The state in the previous snapshot, `None` if the name did not exist there.
    pub from: Option<NameState>,
    /// The state now.
    pub to: NameState,
    /// The addresses answered now.
    pub addresses: Vec<IpAddr>,
    /// The services the name needs.
    pub services: Vec<String>,
}

/// The fully qualified, lowercase name of `label` in `zone` (`"@"` is the apex).
pub fn qualify(label: &str, zone: &str) -> String {
    let zone = zone.to_ascii_lowercase();
    if label == "@" {
        zone
    } else {
        format!(
            "{}.{}",
            label.trim_end_matches('.').to_ascii_lowercase(),
            zone
        )
    }
}

/// The addresses a name needing `services` answers in `zone`, and why.
///
/// Fail open with no address offering the services at all still answers nothing; its state is
/// then `FailOpen` with an empty list.
pub fn select_addresses(
    zone: &Zone,
    services: &[String],
    fail_open: bool,
) -> (Vec<IpAddr>, NameState) {
    let offering: Vec<_> = zone
        .addresses
        .iter()
        .filter(|a| services.iter().all(|s| a.services.contains(s)))
        .collect();
    let passing: Vec<IpAddr> = offering
        .iter()
        .filter(|a| services.iter().all(|s| a.passing.contains(s)))
        .map(|a| a.ip)
        .collect();
    if !passing.is_empty() {
        (passing, NameState::Passing)
    } else if fail_open {
        (offering.iter().map(|a| a.ip).collect(), NameState::FailOpen)
    } else {
        (Vec::new(), NameState::FailClosed)
    }
}

/// For every name of every zone, what the server answers for it now. This is what
/// `clusterctl dns` shows, and what the server compiles its A/AAAA records from.
pub fn name_answers(snapshot: &Snapshot) -> Vec<NameAnswer> {
    let mut out = Vec::new();
    for zone in &snapshot.zones {
        let zone_name = zone.name.to_ascii_lowercase();
        for (label, services) in &zone.names {
            let (addresses, state) = select_addresses(zone, services, snapshot.fail_open);
            out.push(NameAnswer {
                zone: zone_name.clone(),
                label: label.clone(),
                name: qualify(label, &zone_name),
                services: services.clone(),
                addresses,
                state,
            });
        }
    }
    out
}

/// The names that entered or left a failing state (fail open or fail closed) from `old` to `new`.
/// A name new in `new` is reported only if it starts out failing.
pub fn fail_transitions(old: &[NameAnswer], new: &[NameAnswer]) -> Vec<FailTransition> {
    let before: BTreeMap<&str, NameState> =
        old.iter().map(|n| (n.name.as_str(), n.state)).collect();
    new.iter()
        .filter_map(|n| {
            let from = before.get(n.name.as_str()).copied();
            let changed = from != Some(n.state);
            let failing =
                n.state != NameState::Passing || from.is_some_and(|f| f != NameState::Passing);
            (changed && failing).then(|| FailTransition {
                name: n.name.clone(),
                from,
                to: n.state,
                addresses: n.addresses.clone(),
                services: n.services.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Address;
    use std::collections::BTreeSet;

    fn addr(ip: &str, services: &[&str], passing: &[&str]) -> Address {
        Address {
            ip: ip.parse().unwrap(),
            services: services.iter().map(|s| s.to_string()).collect(),
            passing: passing
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>(),
        }
    }

    fn svc(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn zone(addresses: Vec<Address>) -> Zone {
        Zone {
            name: "Mail.Example.com.".into(),
            addresses,
            ..Zone::default()
        }
    }

    #[test]
    fn name_answers_only_addresses_passing_all_its_services() {
        let z = zone(vec![
            addr("192.0.2.1", &["imap", "smtp"], &["imap", "smtp"]),
            addr("192.0.2.2", &["imap", "smtp"], &["imap"]),
            addr("192.0.2.3", &["imap"], &["imap"]),
        ]);
        let (ips, state) = select_addresses(&z, &svc(&["imap", "smtp"]), true);
        assert_eq!(ips, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(state, NameState::Passing);
        let (ips, _) = select_addresses(&z, &svc(&["imap"]), true);
        assert_eq!(ips.len(), 3);
    }

    #[test]
    fn fail_open_answers_every_address_offering_the_services() {
        let z = zone(vec![
            addr("192.0.2.1", &["imap"], &[]),
            addr("2001:db8::1", &["imap"], &["smtp"]),
            addr("192.0.2.3", &["smtp"], &["smtp"]),
        ]);
        let (ips, state) = select_addresses(&z, &svc(&["imap"]), true);
        assert_eq!(state, NameState::FailOpen);
        assert_eq!(
            ips,
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn fail_closed_answers_nothing() {
        let z = zone(vec![addr("192.0.2.1", &["imap"], &[])]);
        let (ips, state) = select_addresses(&z, &svc(&["imap"]), false);
        assert_eq!(state, NameState::FailClosed);
        assert!(ips.is_empty());
    }

    #[test]
    fn qualify_lowercases_and_handles_apex() {
        assert_eq!(qualify("@", "Mail.Example.COM."), "mail.example.com.");
        assert_eq!(
            qualify("IMAP", "mail.example.com."),
            "imap.mail.example.com."
        );
    }

    #[test]
    fn transitions_report_entering_and_leaving_fail_open_only() {
        let mk = |state| NameAnswer {
            zone: "z.".into(),
            label: "imap".into(),
            name: "imap.z.".into(),
            services: svc(&["imap"]),
            addresses: vec![],
            state,
        };
        let passing = [mk(NameState::Passing)];
        let open = [mk(NameState::FailOpen)];
        assert!(fail_transitions(&passing, &passing).is_empty());
        assert!(fail_transitions(&open, &open).is_empty());
        let t = fail_transitions(&passing, &open);
        assert_eq!(
            (t[0].from, t[0].to),
            (Some(NameState::Passing), NameState::FailOpen)
        );
        let t = fail_transitions(&open, &passing);
        assert_eq!(
            (t[0].from, t[0].to),
            (Some(NameState::FailOpen), NameState::Passing)
        );
        assert!(fail_transitions(&[], &passing).is_empty());
        assert_eq!(fail_transitions(&[], &open)[0].from, None);
    }
}
