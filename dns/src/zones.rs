//! Answer building: a [`Snapshot`] compiled into lookup tables, and the answer to one question.
//!
//! Owns every DNS decision that does not depend on the wire: which zone a name belongs to,
//! NXDOMAIN versus NODATA (empty non-terminals exist), REFUSED outside our zones and for zone
//! transfers, the SOA in negative answers, NS glue and MX/SRV additional data, and the round-robin
//! rotation. All records are built once per snapshot so that a query only looks up and borrows.
//! It must not touch sockets, EDNS, truncation or rate limits (that is `server`), and never
//! invents a serial.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, MX, NS, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use crate::answers::{NameAnswer, name_answers};
use crate::snapshot::{Snapshot, SnapshotError, Zone};

/// SOA MINIMUM, the TTL resolvers cache negative answers for (RFC 2308: the lesser of this and
/// the SOA's own TTL). Small, so that a name that comes back is seen again quickly.
pub const SOA_MINIMUM: u32 = 5;
/// SOA REFRESH, RETRY and EXPIRE: only meaningful to secondaries, which clusterd does not use.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;

/// The kind of answer to one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// NOERROR with records in the answer section.
    Answer,
    /// NOERROR, no answer records (the name exists without that type); SOA in authority.
    NoData,
    /// NXDOMAIN (the name does not exist in our zone); SOA in authority.
    NxDomain,
    /// REFUSED: outside our zones, or a zone transfer. Not authoritative.
    Refused,
}

/// The round-robin position of one RRset with several records, shared by everything that
/// answers it (each UDP loop's answer cache included), so rotation advances by one per query
/// whichever path answers.
#[derive(Debug, Clone)]
pub struct Rotor {
    next: Arc<AtomicUsize>,
    period: usize,
}

impl Rotor {
    /// The rotation for the next query (in `0..period`), advancing the position by one.
    pub fn advance(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.period
    }

    /// How many different rotations there are: the RRset's record count.
    pub fn period(&self) -> usize {
        self.period
    }
}

/// The answer to one question, borrowing the compiled records.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'z> {
    /// What kind of answer this is.
    pub outcome: Outcome,
    records: &'z [Record],
    rotation: usize,
    /// The RRset's round-robin position, for answers of more than one record.
    next: Option<&'z Arc<AtomicUsize>>,
    authority: &'z [Record],
    additional: &'z [Record],
    /// Upper bound of the encoded size of answer + authority records (no name compression).
    bound: usize,
    /// Upper bound of the encoded size of the additional records.
    additional_bound: usize,
}

impl<'z> Answer<'z> {
    fn refused() -> Self {
        Answer {
            outcome: Outcome::Refused,
            records: &[],
            rotation: 0,
            next: None,
            authority: &[],
            additional: &[],
            bound: 0,
            additional_bound: 0,
        }
    }

    /// The rotation of this answer's records, in `0..answer_count()` (0 for fewer than two).
    pub fn rotation(&self) -> usize {
        if self.records.is_empty() {
            0
        } else {
            self.rotation % self.records.len()
        }
    }

    /// The round-robin position this answer's rotation was taken from; `None` when the answer
    /// does not rotate (fewer than two records, negative answers, ANY).
    pub fn rotor(&self) -> Option<Rotor> {
        let next = self.next?;
        (self.records.len() > 1).then(|| Rotor {
            next: next.clone(),
            period: self.records.len(),
        })
    }

    /// Upper bound in bytes of the answer and authority records on the wire (each record encoded
    /// alone, i.e. without name compression). The server compares it with the UDP limit and only
    /// encodes a trial message when it might not fit.
    pub fn wire_bound(&self) -> usize {
        self.bound
    }

    /// Upper bound in bytes of the additional records on the wire.
    pub fn additional_wire_bound(&self) -> usize {
        self.additional_bound
    }

    /// RCODE of the response.
    pub fn response_code(&self) -> ResponseCode {
        match self.outcome {
            Outcome::Answer | Outcome::NoData => ResponseCode::NoError,
            Outcome::NxDomain => ResponseCode::NXDomain,
            Outcome::Refused => ResponseCode::Refused,
        }
    }

    /// Whether the AA bit is set: for everything inside our zones.
    pub fn authoritative(&self) -> bool {
        self.outcome != Outcome::Refused
    }

    /// The answer section, rotated.
    pub fn answers(&self) -> impl Iterator<Item = &'z Record> + Clone + Send + 'z {
        let k = self.rotation();
        self.records[k..].iter().chain(self.records[..k].iter())
    }

    /// Number of records in the answer section.
    pub fn answer_count(&self) -> usize {
        self.records.len()
    }

    /// The authority section: the zone's SOA in negative answers, else empty.
    pub fn authority(&self) -> &'z [Record] {
        self.authority
    }

    /// The additional section: glue for NS, target addresses for MX and SRV.
    pub fn additional(&self) -> &'z [Record] {
        self.additional
    }
}

/// One RRset at a node, with its additional records and its round-robin position.
#[derive(Debug)]
struct RRset {
    rtype: RecordType,
    records: Vec<Record>,
    additional: Vec<Record>,
    next: Arc<AtomicUsize>,
    bound: usize,
    additional_bound: usize,
}

#[derive(Debug, Default)]
struct Node {
    rrsets: Vec<RRset>,
    /// The answer to QTYPE ANY: the node's smallest RRset alone (RFC 8482 minimal answer, so
    /// that ANY cannot be used to amplify traffic).
    any: Vec<Record>,
    any_bound: usize,
}

/// Encoded size of `records` when each is encoded alone: an upper bound of their size in any
/// message, since compression only shrinks names.
fn wire_len(records: &[Record]) -> usize {
    let mut buf = Vec::with_capacity(64);
    records
        .iter()
        .map(|r| {
            buf.clear();
            let mut encoder = BinEncoder::new(&mut buf);
            // A record that does not encode is counted as huge, so the server trial-encodes.
            match r.emit(&mut encoder) {
                Ok(()) => buf.len(),
                Err(_) => usize::from(u16::MAX),
            }
        })
        .sum()
}

impl Node {
    fn add(&mut self, record: Record, additional: &[Record]) {
        let rtype = record.record_type();
        match self.rrsets.iter_mut().find(|r| r.rtype == rtype) {
            Some(set) => {
                set.records.push(record);
                for a in additional {
                    if !set.additional.contains(a) {
                        set.additional.push(a.clone());
                    }
                }
            }
            None => self.rrsets.push(RRset {
                rtype,
                records: vec![record],
                additional: additional.to_vec(),
                next: Arc::new(AtomicUsize::new(0)),
                bound: 0,
                additional_bound: 0,
            }),
        }
    }

    fn measure(&mut self) {
        for set in &mut self.rrsets {
            set.bound = wire_len(&set.records);
            set.additional_bound = wire_len(&set.additional);
        }
        // The first of the smallest, so the choice is stable from one snapshot to the next.
        let smallest = self
            .rrsets
            .iter()
            .enumerate()
            .min_by_key(|(i, set)| (set.bound, *i))
            .map(|(_, set)| set);
        self.any = smallest.map(|set| set.records.clone()).unwrap_or_default();
        self.any_bound = smallest.map_or(0, |set| set.bound);
    }
}

#[derive(Debug)]
struct CompiledZone {
    origin: LowerName,
    soa: Vec<Record>,
    soa_bound: usize,
    nodes: HashMap<LowerName, Node>,
}

/// A snapshot compiled for answering: immutable except for the rotation counters.
#[derive(Debug)]
pub struct Zones {
    serial: u32,
    /// Longest origin first, so the first zone containing a name is the closest enclosing one.
    zones: Vec<CompiledZone>,
    names: Vec<NameAnswer>,
}

fn parse_zone(zone: &Zone) -> Result<Name, SnapshotError> {
    let err = |reason: String| SnapshotError::ZoneName {
        zone: zone.name.clone(),
        reason,
    };
    let name = Name::from_ascii(&zone.name).map_err(|e| err(e.to_string()))?;
    if !name.is_fqdn() {
        return Err(err("no trailing dot".into()));
    }
    Ok(name.to_lowercase())
}

fn parse_label(
    zone: &Zone,
    origin: &Name,
    what: &'static str,
    label: &str,
) -> Result<Name, SnapshotError> {
    let err = |reason: String| SnapshotError::Label {
        zone: zone.name.clone(),
        what,
        label: label.to_string(),
        reason,
    };
    if label == "@" {
        return Ok(origin.clone());
    }
    if label.is_empty() || label.ends_with('.') {
        return Err(err(
            "must be relative to the zone, without a trailing dot".into()
        ));
    }
    let rel = Name::from_ascii(label).map_err(|e| err(e.to_string()))?;
    rel.append_domain(origin)
        .map(|n| n.to_lowercase())
        .map_err(|e| err(e.to_string()))
}

fn address_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

impl Zones {
    /// An empty set of zones: every question is REFUSED. What the server answers before its first
    /// valid snapshot.
    pub fn empty() -> Self {
        Zones {
            serial: 0,
            zones: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Compiles a snapshot, or says why it cannot be served.
    pub fn compile(snapshot: &Snapshot) -> Result<Self, SnapshotError> {
        let ttl = snapshot.ttl;
        let names = name_answers(snapshot);
        let mut zones = Vec::with_capacity(snapshot.zones.len());
        for zone in &snapshot.zones {
            let origin = parse_zone(zone)?;
            if zones
                .iter()
                .any(|z: &CompiledZone| z.origin == LowerName::from(&origin))
            {
                return Err(SnapshotError::DuplicateZone {
                    zone: zone.name.clone(),
                });
            }
            let mut nodes: HashMap<LowerName, Node> = HashMap::new();

            // Nameservers: NS at the apex, glue at <node>.ns.<zone>.
            let mut ns_hosts = Vec::new();
            let mut glue = Vec::new();
            for ns in &zone.nameservers {
                let host = parse_label(zone, &origin, "nameserver", &format!("{}.ns", ns.name))?;
                if ns.name.contains('.') {
                    return Err(SnapshotError::Label {
                        zone: zone.name.clone(),
                        what: "nameserver",
                        label: ns.name.clone(),
                        reason: "must be a single label".into(),
                    });
                }
                for ip in &ns.addrs {
                    glue.push(address_record(&host, ttl, *ip));
                }
                ns_hosts.push(host);
            }
            for host in &ns_hosts {
                let node = nodes.entry(LowerName::from(host)).or_default();
                for g in glue.iter().filter(|g| &g.name == host) {
                    node.add(g.clone(), &[]);
                }
            }
            for host in &ns_hosts {
                let rec = Record::from_rdata(origin.clone(), ttl, RData::NS(NS(host.clone())));
                nodes
                    .entry(LowerName::from(&origin))
                    .or_default()
                    .add(rec, &glue);
            }

            // Service names: A/AAAA of the selected addresses.
            let mut address_records: HashMap<LowerName, Vec<Record>> = HashMap::new();
            let zone_name = origin.to_ascii();
            for label in zone.names.keys() {
                let name = parse_label(zone, &origin, "name", label)?;
                if ns_hosts.contains(&name) {
                    return Err(SnapshotError::Label {
                        zone: zone.name.clone(),
                        what: "name",
                        label: label.clone(),
                        reason: "is the host name of a nameserver (<node>.ns); choose another"
                            .into(),
                    });
                }
                let fqdn = crate::answers::qualify(label, &zone_name);
                let answer = names.iter().find(|n| n.name == fqdn && n.zone == zone_name);
                let records: Vec<Record> = answer
                    .map(|a| {
                        a.addresses
                            .iter()
                            .map(|ip| address_record(&name, ttl, *ip))
                            .collect()
                    })
                    .unwrap_or_default();
                let node = nodes.entry(LowerName::from(&name)).or_default();
                for r in &records {
                    node.add(r.clone(), &[]);
                }
                address_records.insert(LowerName::from(&name), records);
            }
            let target =
                |what: String, label: &str| -> Result<(Name, Vec<Record>), SnapshotError> {
                    let name = parse_label(zone, &origin, "target", label)?;
                    match address_records.get(&LowerName::from(&name)) {
                        Some(records) => Ok((name, records.clone())),
                        None => Err(SnapshotError::UnknownTarget {
                            zone: zone.name.clone(),
                            what,
                            target: label.to_string(),
                        }),
                    }
                };

            for (i, label) in zone.mx.iter().enumerate() {
                let (exchange, additional) = target("MX".into(), label)?;
                let preference = u16::try_from((i + 1) * 10).unwrap_or(u16::MAX);
                let rec = Record::from_rdata(
                    origin.clone(),
                    ttl,
                    RData::MX(MX::new(preference, exchange)),
                );
                nodes
                    .entry(LowerName::from(&origin))
                    .or_default()
                    .add(rec, &additional);
            }
            for srv in &zone.srv {
                let owner = parse_label(zone, &origin, "SRV service", &srv.service)?;
                let (target_name, additional) =
                    target(format!("SRV {}", srv.service), &srv.target)?;
                let rec = Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(srv.priority, srv.weight, srv.port, target_name)),
                );
                nodes
                    .entry(LowerName::from(&owner))
                    .or_default()
                    .add(rec, &additional);
            }

            // SOA at the apex.
            let mname = ns_hosts.first().cloned().unwrap_or_else(|| origin.clone());
            let rname = Name::from_ascii("hostmaster")
                .and_then(|h| h.append_domain(&origin))
                .unwrap_or_else(|_| origin.clone());
            let soa = Record::from_rdata(
                origin.clone(),
                ttl,
                RData::SOA(SOA::new(
                    mname,
                    rname,
                    snapshot.serial,
                    SOA_REFRESH,
                    SOA_RETRY,
                    SOA_EXPIRE,
                    SOA_MINIMUM,
                )),
            );
            nodes
                .entry(LowerName::from(&origin))
                .or_default()
                .add(soa.clone(), &[]);

            // Empty non-terminals (e.g. `_tcp` under `_imap._tcp`, `ns` under `mx1.ns`) exist:
            // they answer NODATA, not NXDOMAIN (RFC 8020).
            let origin_labels = origin.num_labels();
            let existing: Vec<Name> = nodes.keys().map(Name::from).collect();
            for name in existing {
                let mut n = name.base_name();
                while n.num_labels() > origin_labels {
                    nodes.entry(LowerName::from(&n)).or_default();
                    n = n.base_name();
                }
            }

            for node in nodes.values_mut() {
                node.measure();
            }
            let soa = vec![soa];
            zones.push(CompiledZone {
                origin: LowerName::from(&origin),
                soa_bound: wire_len(&soa),
                soa,
                nodes,
            });
        }
        zones.sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));
        Ok(Zones {
            serial: snapshot.serial,
            zones,
            names,
        })
    }

    /// The serial every zone's SOA carries.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// What each name answers (before rotation), as in [`crate::name_answers`].
    pub fn names(&self) -> &[NameAnswer] {
        &self.names
    }

    /// Every record of the zone `origin` in master-file format (SOA first, then by owner name),
    /// for showing operators what is served and for loading the same zone into other servers
    /// (the benchmark does). `None` if `origin` is not one of our zones.
    pub fn zone_file(&self, origin: &str) -> Option<String> {
        let origin = LowerName::from(Name::from_ascii(origin).ok()?);
        let zone = self.zones.iter().find(|z| z.origin == origin)?;
        let mut lines: Vec<String> = Vec::new();
        let mut names: Vec<&LowerName> = zone.nodes.keys().collect();
        names.sort();
        for name in names {
            for set in &zone.nodes[name].rrsets {
                if set.rtype != RecordType::SOA {
                    lines.extend(set.records.iter().map(ToString::to_string));
                }
            }
        }
        let mut out = String::new();
        for line in zone.soa.iter().map(ToString::to_string).chain(lines) {
            out.push_str(&line);
            out.push('\n');
        }
        Some(out)
    }

    /// The answer to `qname`/`qtype`, advancing that RRset's round-robin position by one.
    pub fn answer(&self, qname: &LowerName, qtype: RecordType) -> Answer<'_> {
        self.lookup(qname, qtype, None)
    }

    /// The answer to `qname`/`qtype` with the answer section rotated left by `rotation`, without
    /// touching the round-robin position. Pure; for tests, for showing answers, and for the
    /// answer cache, which advances the position itself ([`Rotor::advance`]).
    pub fn answer_rotated(
        &self,
        qname: &LowerName,
        qtype: RecordType,
        rotation: usize,
    ) -> Answer<'_> {
        self.lookup(qname, qtype, Some(rotation))
    }

    /// Like [`Zones::answer`] for a name given as text; `None` if it does not parse.
    pub fn answer_str(&self, qname: &str, qtype: RecordType) -> Option<Answer<'_>> {
        let name = Name::from_ascii(qname).ok()?;
        Some(self.answer(&LowerName::from(&name), qtype))
    }

    fn lookup(&self, qname: &LowerName, qtype: RecordType, rotation: Option<usize>) -> Answer<'_> {
        let Some(zone) = self.zones.iter().find(|z| z.origin.zone_of(qname)) else {
            return Answer::refused();
        };
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Answer::refused();
        }
        let negative = |outcome| Answer {
            outcome,
            records: &[],
            rotation: 0,
            next: None,
            authority: &zone.soa,
            additional: &[],
            bound: zone.soa_bound,
            additional_bound: 0,
        };
        let Some(node) = zone.nodes.get(qname) else {
            return negative(Outcome::NxDomain);
        };
        if qtype == RecordType::ANY {
            if node.any.is_empty() {
                return negative(Outcome::NoData);
            }
            return Answer {
                outcome: Outcome::Answer,
                records: &node.any,
                rotation: 0,
                next: None,
                authority: &[],
                additional: &[],
                bound: node.any_bound,
                additional_bound: 0,
            };
        }
        match node.rrsets.iter().find(|r| r.rtype == qtype) {
            None => negative(Outcome::NoData),
            Some(set) => {
                let rotation = rotation.unwrap_or_else(|| set.next.fetch_add(1, Ordering::Relaxed));
                Answer {
                    outcome: Outcome::Answer,
                    records: &set.records,
                    rotation,
                    next: Some(&set.next),
                    authority: &[],
                    additional: &set.additional,
                    bound: set.bound,
                    additional_bound: set.additional_bound,
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "zones_tests.rs"]
mod tests;
