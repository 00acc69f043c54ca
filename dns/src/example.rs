//! A sample snapshot: the zone `mail.example.com.` of a two-node mail cluster.
//!
//! Owns nothing the server needs; it exists so that tests, the benchmark and the docs share one
//! realistic zone. Documentation addresses only (192.0.2.0/24, 2001:db8::/32).

use std::collections::{BTreeMap, BTreeSet};

use crate::snapshot::{Address, NameServer, Snapshot, Srv, Zone};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

/// `mail.example.com.` with names `@` and `mail` (imap, pop3, smtp), `imap`, `pop3`, `smtp`,
/// `submission`; MX `smtp`; the six RFC 6186 SRV records; nameservers `mx1` and `mx2`; three
/// floating addresses (192.0.2.101, 192.0.2.102, 2001:db8::101) offering and passing everything.
pub fn example_snapshot(serial: u32) -> Snapshot {
    let all = strings(&["imap", "pop3", "smtp"]);
    let mut names = BTreeMap::new();
    names.insert("@".to_string(), all.clone());
    names.insert("mail".to_string(), all.clone());
    names.insert("imap".to_string(), strings(&["imap"]));
    names.insert("pop3".to_string(), strings(&["pop3"]));
    names.insert("smtp".to_string(), strings(&["smtp"]));
    names.insert("submission".to_string(), strings(&["smtp"]));
    let srv = |service: &str, target: &str, port| Srv {
        service: service.to_string(),
        target: target.to_string(),
        port,
        priority: 0,
        weight: 1,
    };
    let address = |ip: &str| Address {
        ip: ip.parse().expect("example address"),
        services: all.clone(),
        passing: all.iter().cloned().collect::<BTreeSet<_>>(),
    };
    Snapshot {
        serial,
        ttl: 30,
        fail_open: true,
        zones: vec![Zone {
            name: "mail.example.com.".to_string(),
            names,
            mx: strings(&["smtp"]),
            srv: vec![
                srv("_imap._tcp", "imap", 143),
                srv("_imaps._tcp", "imap", 993),
                srv("_pop3._tcp", "pop3", 110),
                srv("_pop3s._tcp", "pop3", 995),
                srv("_submission._tcp", "submission", 587),
                srv("_submissions._tcp", "submission", 465),
            ],
            nameservers: vec![
                NameServer {
                    name: "mx1".to_string(),
                    addrs: vec![
                        "192.0.2.11".parse().expect("ip"),
                        "2001:db8::11".parse().expect("ip"),
                    ],
                },
                NameServer {
                    name: "mx2".to_string(),
                    addrs: vec!["192.0.2.12".parse().expect("ip")],
                },
            ],
            addresses: vec![
                address("192.0.2.101"),
                address("192.0.2.102"),
                address("2001:db8::101"),
            ],
        }],
    }
}
