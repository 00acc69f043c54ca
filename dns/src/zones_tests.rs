//! Unit tests of answer building: one behaviour per test, no sockets.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, Record, RecordType};

use super::*;
use crate::example::example_snapshot;
use crate::snapshot::{Address, Srv};

fn compile(s: &Snapshot) -> Zones {
    Zones::compile(s).expect("snapshot compiles")
}

fn ask<'z>(z: &'z Zones, name: &str, t: RecordType) -> Answer<'z> {
    z.answer_str(name, t).expect("name parses")
}

fn ips(a: &Answer<'_>) -> Vec<IpAddr> {
    a.answers()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn soa_serial(records: &[Record]) -> Option<u32> {
    records.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

#[test]
fn a_answers_rotate_by_one_on_every_query() {
    let mut s = example_snapshot(1);
    s.zones[0].addresses.push(Address {
        ip: ip("192.0.2.103"),
        services: vec!["imap".into()],
        passing: BTreeSet::from(["imap".to_string()]),
    });
    let z = compile(&s);
    let first = ips(&ask(&z, "imap.mail.example.com.", RecordType::A));
    assert_eq!(
        first,
        vec![ip("192.0.2.101"), ip("192.0.2.102"), ip("192.0.2.103")]
    );
    let second = ips(&ask(&z, "imap.mail.example.com.", RecordType::A));
    assert_eq!(
        second,
        vec![ip("192.0.2.102"), ip("192.0.2.103"), ip("192.0.2.101")]
    );
    let third = ips(&ask(&z, "imap.mail.example.com.", RecordType::A));
    assert_eq!(
        third,
        vec![ip("192.0.2.103"), ip("192.0.2.101"), ip("192.0.2.102")]
    );
    // Queries for another name do not disturb this name's rotation.
    let _ = ask(&z, "smtp.mail.example.com.", RecordType::A);
    assert_eq!(
        ips(&ask(&z, "imap.mail.example.com.", RecordType::A)),
        first
    );
}

#[test]
fn rotation_is_pure_with_an_explicit_offset() {
    let z = compile(&example_snapshot(1));
    let name = LowerName::from(Name::from_ascii("mail.mail.example.com.").unwrap());
    let a = ips(&z.answer_rotated(&name, RecordType::A, 1));
    let b = ips(&z.answer_rotated(&name, RecordType::A, 1));
    assert_eq!(a, b);
    assert_eq!(a, vec![ip("192.0.2.102"), ip("192.0.2.101")]);
}

#[test]
fn aaaa_answers_only_ipv6_addresses() {
    let z = compile(&example_snapshot(1));
    let a = ask(&z, "mail.example.com.", RecordType::AAAA);
    assert_eq!(ips(&a), vec![ip("2001:db8::101")]);
    assert!(a.authoritative());
}

#[test]
fn a_name_answers_only_addresses_passing_all_its_services() {
    let mut s = example_snapshot(1);
    // 192.0.2.101's owner fails smtp.
    s.zones[0].addresses[0].passing.remove("smtp");
    let z = compile(&s);
    assert_eq!(
        ips(&ask(&z, "imap.mail.example.com.", RecordType::A)),
        vec![ip("192.0.2.101"), ip("192.0.2.102")]
    );
    assert_eq!(
        ips(&ask(&z, "smtp.mail.example.com.", RecordType::A)),
        vec![ip("192.0.2.102")]
    );
    assert_eq!(
        ips(&ask(&z, "mail.mail.example.com.", RecordType::A)),
        vec![ip("192.0.2.102")]
    );
}

#[test]
fn fail_open_answers_every_address_offering_the_services() {
    let mut s = example_snapshot(1);
    for a in &mut s.zones[0].addresses {
        a.passing.clear();
    }
    let z = compile(&s);
    let a = ask(&z, "imap.mail.example.com.", RecordType::A);
    assert_eq!(a.outcome, Outcome::Answer);
    assert_eq!(ips(&a), vec![ip("192.0.2.101"), ip("192.0.2.102")]);
    assert!(
        z.names()
            .iter()
            .all(|n| n.state == crate::NameState::FailOpen)
    );
}

#[test]
fn fail_closed_answers_nodata_with_soa() {
    let mut s = example_snapshot(7);
    s.fail_open = false;
    for a in &mut s.zones[0].addresses {
        a.passing.remove("imap");
    }
    let z = compile(&s);
    let a = ask(&z, "imap.mail.example.com.", RecordType::A);
    assert_eq!(a.outcome, Outcome::NoData);
    assert_eq!(a.response_code(), ResponseCode::NoError);
    assert_eq!(a.answer_count(), 0);
    assert_eq!(soa_serial(a.authority()), Some(7));
    // Names not needing imap are unaffected.
    assert_eq!(
        ips(&ask(&z, "smtp.mail.example.com.", RecordType::A)).len(),
        2
    );
}

#[test]
fn unknown_name_is_nxdomain_with_soa_in_authority() {
    let z = compile(&example_snapshot(42));
    let a = ask(&z, "nope.mail.example.com.", RecordType::A);
    assert_eq!(a.outcome, Outcome::NxDomain);
    assert_eq!(a.response_code(), ResponseCode::NXDomain);
    assert!(a.authoritative());
    assert_eq!(a.answer_count(), 0);
    assert_eq!(soa_serial(a.authority()), Some(42));
    // Below an existing name too.
    assert_eq!(
        ask(&z, "x.imap.mail.example.com.", RecordType::A).outcome,
        Outcome::NxDomain
    );
}

#[test]
fn existing_name_without_the_type_is_nodata_with_soa_in_authority() {
    let z = compile(&example_snapshot(42));
    let a = ask(&z, "imap.mail.example.com.", RecordType::MX);
    assert_eq!(a.outcome, Outcome::NoData);
    assert_eq!(soa_serial(a.authority()), Some(42));
    let a = ask(&z, "imap.mail.example.com.", RecordType::AAAA);
    assert_eq!(a.outcome, Outcome::Answer, "imap has an IPv6 address");
    let a = ask(&z, "mx2.ns.mail.example.com.", RecordType::AAAA);
    assert_eq!(a.outcome, Outcome::NoData);
}

#[test]
fn empty_non_terminals_are_nodata_not_nxdomain() {
    let z = compile(&example_snapshot(1));
    assert_eq!(
        ask(&z, "_tcp.mail.example.com.", RecordType::SRV).outcome,
        Outcome::NoData
    );
    assert_eq!(
        ask(&z, "ns.mail.example.com.", RecordType::A).outcome,
        Outcome::NoData
    );
}

#[test]
fn names_outside_our_zones_are_refused_without_aa() {
    let z = compile(&example_snapshot(1));
    for name in ["example.com.", "www.example.org.", "com.", "."] {
        let a = ask(&z, name, RecordType::A);
        assert_eq!(a.outcome, Outcome::Refused, "{name}");
        assert_eq!(a.response_code(), ResponseCode::Refused);
        assert!(!a.authoritative());
        assert!(a.authority().is_empty());
    }
    assert_eq!(
        ask(&Zones::empty(), "mail.example.com.", RecordType::A).outcome,
        Outcome::Refused
    );
}

#[test]
fn zone_transfers_are_refused() {
    let z = compile(&example_snapshot(1));
    assert_eq!(
        ask(&z, "mail.example.com.", RecordType::AXFR).outcome,
        Outcome::Refused
    );
    assert_eq!(
        ask(&z, "mail.example.com.", RecordType::IXFR).outcome,
        Outcome::Refused
    );
}

#[test]
fn lookups_ignore_case() {
    let z = compile(&example_snapshot(1));
    assert_eq!(
        ask(&z, "IMAP.Mail.EXAMPLE.com.", RecordType::A).answer_count(),
        2
    );
    let mut s = example_snapshot(1);
    s.zones[0].name = "MAIL.Example.COM.".into();
    s.zones[0].names.insert("Webmail".into(), vec![]);
    let z = compile(&s);
    assert_eq!(
        ask(&z, "webmail.mail.example.com.", RecordType::A).answer_count(),
        2
    );
}

#[test]
fn soa_serial_is_the_snapshot_serial() {
    for serial in [0, 1, 17, u32::MAX] {
        let z = compile(&example_snapshot(serial));
        assert_eq!(z.serial(), serial);
        let a = ask(&z, "mail.example.com.", RecordType::SOA);
        let soa_records: Vec<Record> = a.answers().cloned().collect();
        assert_eq!(soa_serial(&soa_records), Some(serial));
        let RData::SOA(soa) = &soa_records[0].data else {
            panic!("not an SOA")
        };
        assert_eq!(soa.minimum, SOA_MINIMUM);
        assert_eq!(soa.mname.to_ascii(), "mx1.ns.mail.example.com.");
    }
}

#[test]
fn mx_targets_get_preferences_in_order_and_their_addresses_as_additional() {
    let mut s = example_snapshot(1);
    s.zones[0].mx = vec!["smtp".into(), "mail".into()];
    let z = compile(&s);
    let a = ask(&z, "mail.example.com.", RecordType::MX);
    let mx: Vec<(u16, String)> = a
        .answers()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    let mut sorted = mx.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            (10, "smtp.mail.example.com.".into()),
            (20, "mail.mail.example.com.".into())
        ]
    );
    assert_eq!(a.additional().len(), 6, "3 addresses for each of 2 targets");
}

#[test]
fn ns_records_name_node_hosts_with_glue() {
    let z = compile(&example_snapshot(1));
    let a = ask(&z, "mail.example.com.", RecordType::NS);
    let mut ns: Vec<String> = a
        .answers()
        .filter_map(|r| match &r.data {
            RData::NS(ns) => Some(ns.0.to_ascii()),
            _ => None,
        })
        .collect();
    ns.sort();
    assert_eq!(
        ns,
        vec!["mx1.ns.mail.example.com.", "mx2.ns.mail.example.com."]
    );
    let glue: Vec<(String, String)> = a
        .additional()
        .iter()
        .map(|r| (r.name.to_ascii(), r.data.to_string()))
        .collect();
    assert!(glue.contains(&("mx1.ns.mail.example.com.".into(), "192.0.2.11".into())));
    assert!(glue.contains(&("mx1.ns.mail.example.com.".into(), "2001:db8::11".into())));
    assert!(glue.contains(&("mx2.ns.mail.example.com.".into(), "192.0.2.12".into())));
    assert_eq!(
        ips(&ask(&z, "mx2.ns.mail.example.com.", RecordType::A)),
        vec![ip("192.0.2.12")]
    );
}

#[test]
fn srv_records_point_at_names_with_ports() {
    let z = compile(&example_snapshot(1));
    let a = ask(&z, "_imaps._tcp.mail.example.com.", RecordType::SRV);
    let srv: Vec<(u16, String)> = a
        .answers()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    assert_eq!(srv, vec![(993, "imap.mail.example.com.".into())]);
    assert_eq!(a.additional().len(), 3);
}

#[test]
fn any_answers_one_rrset_only() {
    let z = compile(&example_snapshot(1));
    // The apex holds SOA, NS, MX and more: ANY gets the smallest of them alone (RFC 8482).
    let apex = ask(&z, "mail.example.com.", RecordType::ANY);
    assert!(apex.answer_count() >= 1);
    let types: std::collections::BTreeSet<RecordType> =
        apex.answers().map(|r| r.record_type()).collect();
    assert_eq!(types.len(), 1, "{types:?}");
    let every: usize = [
        RecordType::SOA,
        RecordType::NS,
        RecordType::MX,
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
    ]
    .into_iter()
    .map(|t| ask(&z, "mail.example.com.", t))
    .filter(|a| a.outcome == Outcome::Answer)
    .inspect(|a| assert!(apex.wire_bound() <= a.wire_bound()))
    .count();
    assert!(every >= 2, "the apex should hold several RRsets");
    assert!(apex.additional().is_empty() && apex.authority().is_empty());
    // The same choice every time.
    let again = ask(&z, "mail.example.com.", RecordType::ANY);
    assert_eq!(
        apex.answers().collect::<Vec<_>>(),
        again.answers().collect::<Vec<_>>()
    );
    let a = ask(&z, "imap.mail.example.com.", RecordType::ANY);
    assert!(a.answer_count() >= 1);
    assert_eq!(
        ask(&z, "_tcp.mail.example.com.", RecordType::ANY).outcome,
        Outcome::NoData
    );
}

#[test]
fn the_closest_enclosing_zone_answers() {
    let mut s = example_snapshot(1);
    let mut parent = s.zones[0].clone();
    parent.name = "example.com.".into();
    parent.names.clear();
    parent.mx.clear();
    parent.srv.clear();
    s.zones.insert(0, parent);
    let z = compile(&s);
    assert_eq!(
        ask(&z, "imap.mail.example.com.", RecordType::A).answer_count(),
        2
    );
    let a = ask(&z, "other.example.com.", RecordType::A);
    assert_eq!(a.outcome, Outcome::NxDomain);
    assert_eq!(a.authority()[0].name.to_ascii(), "example.com.");
}

#[test]
fn invalid_snapshots_are_rejected_with_the_reason() {
    let mut s = example_snapshot(1);
    s.zones[0].mx = vec!["nope".into()];
    assert!(matches!(
        s.validate(),
        Err(SnapshotError::UnknownTarget { .. })
    ));

    let mut s = example_snapshot(1);
    s.zones[0].srv.push(Srv {
        service: "_x._tcp".into(),
        target: "nope".into(),
        port: 1,
        priority: 0,
        weight: 0,
    });
    assert!(matches!(
        s.validate(),
        Err(SnapshotError::UnknownTarget { .. })
    ));

    let mut s = example_snapshot(1);
    s.zones[0].name = "mail.example.com".into();
    assert!(matches!(s.validate(), Err(SnapshotError::ZoneName { .. })));

    let mut s = example_snapshot(1);
    s.zones.push(s.zones[0].clone());
    assert!(matches!(
        s.validate(),
        Err(SnapshotError::DuplicateZone { .. })
    ));

    let mut s = example_snapshot(1);
    s.zones[0].names.insert("mx1.ns".into(), vec![]);
    assert!(matches!(s.validate(), Err(SnapshotError::Label { .. })));

    let mut s = example_snapshot(1);
    s.zones[0].names.insert("bad..label".into(), vec![]);
    let e = s.validate().unwrap_err();
    assert!(e.to_string().contains("bad..label"), "{e}");

    assert_eq!(example_snapshot(1).validate(), Ok(()));
}

#[test]
fn wire_bound_is_an_upper_bound_of_the_encoded_records() {
    let z = compile(&example_snapshot(1));
    let a = ask(&z, "mail.example.com.", RecordType::NS);
    let records: Vec<Record> = a.answers().cloned().collect();
    let mut message = hickory_proto::op::Message::query();
    message.add_answers(records);
    let len = message.to_vec().unwrap().len();
    assert!(a.wire_bound() + 12 >= len);
    assert!(a.wire_bound() > 0 && a.additional_wire_bound() > 0);
}

#[test]
fn zone_file_lists_soa_first_and_every_record_once() {
    let z = compile(&example_snapshot(3));
    let text = z.zone_file("Mail.Example.com.").expect("our zone");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(
            "mail.example.com. 30 IN SOA mx1.ns.mail.example.com. hostmaster.mail.example.com. 3 "
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines.contains(&"imap.mail.example.com. 30 IN A 192.0.2.101"),
        "{text}"
    );
    assert!(
        lines.contains(&"mail.example.com. 30 IN MX 10 smtp.mail.example.com."),
        "{text}"
    );
    assert!(
        lines.contains(&"mx2.ns.mail.example.com. 30 IN A 192.0.2.12"),
        "{text}"
    );
    assert_eq!(lines.iter().filter(|l| l.contains(" SOA ")).count(), 1);
    // SOA + 2 NS + 3 glue + MX + 6 SRV + 6 names x 3 addresses.
    assert_eq!(lines.len(), 1 + 2 + 3 + 1 + 6 + 18, "{text}");
    assert!(z.zone_file("example.org.").is_none());
}
