//! The UDP answer cache: the encoded response to a query, reused for the same query until the
//! snapshot changes.
//!
//! A response is a function of the query's bytes (less its ID and the case of its name), the
//! snapshot and the rotation. So each UDP loop keeps, per query with the ID zeroed and the name
//! lowercased, the encoded response for each rotation of its answer; a repeated query costs a
//! copy, its ID and name patched in, instead of parsing, building and compressing a message.
//! Rotation still advances by one per query on the RRset's shared position ([`Rotor`]), so
//! cached and uncached answers rotate together. The cache follows the snapshot (cleared when
//! another one is installed), holds at most [`MAX_ENTRIES`] queries (cleared when full, so
//! random names cannot grow it), and takes only plain queries: one question, no answer or
//! authority records, at most one additional record (EDNS). Everything else, and every miss,
//! goes through `wire` and the `Handler` as before.
//!
//! Owns the key, the entries and patching; it must not decide answers (the `Handler` does) or do
//! socket I/O.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_net::xfer::Protocol;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::server::Handler;
use crate::wire::{Outbox, collector, parse_query};
use crate::zones::{Rotor, Zones};

/// Most queries one loop's cache holds before it starts over.
pub(crate) const MAX_ENTRIES: usize = 4096;
/// Longest query that is cached.
const MAX_KEY: usize = 512;
const HEADER_LEN: usize = 12;

/// Where the parts of a plain query are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// End of the question name (it starts right after the header).
    name_end: usize,
    /// End of the question (name, type, class).
    question_end: usize,
    /// The question's type.
    qtype: RecordType,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

impl Shape {
    /// The shape of `bytes` if it is a plain query worth caching: a query (QR clear) with
    /// opcode QUERY, one question with an uncompressed name, no answer or authority records and
    /// at most one additional record.
    pub(crate) fn of(bytes: &[u8]) -> Option<Shape> {
        if bytes.len() > MAX_KEY {
            return None;
        }
        let flags = u16_at(bytes, 2)?;
        let (qd, an, ns, ar) = (
            u16_at(bytes, 4)?,
            u16_at(bytes, 6)?,
            u16_at(bytes, 8)?,
            u16_at(bytes, 10)?,
        );
        // QR (bit 15) clear, OPCODE (bits 11-14) QUERY.
        if flags & 0xF800 != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
            return None;
        }
        let mut at = HEADER_LEN;
        loop {
            let len = usize::from(*bytes.get(at)?);
            if len > 63 {
                return None; // a compression pointer or an unknown label type
            }
            at += 1 + len;
            if len == 0 {
                break;
            }
        }
        if at - HEADER_LEN > 255 {
            return None;
        }
        let qtype = RecordType::from(u16_at(bytes, at)?);
        u16_at(bytes, at + 2)?;
        Some(Shape {
            name_end: at,
            question_end: at + 4,
            qtype,
        })
    }

    /// The cache key of `bytes` (of this shape), written into `key`: the query with its ID
    /// zeroed and its name in lower case.
    fn key_into(&self, bytes: &[u8], key: &mut Vec<u8>) {
        key.clear();
        key.extend_from_slice(bytes);
        key[0] = 0;
        key[1] = 0;
        key[HEADER_LEN..self.name_end].make_ascii_lowercase();
    }

    /// Whether `response` carries this query's question at the same place, up to case.
    fn echoed_in(&self, query: &[u8], response: &[u8]) -> bool {
        response.len() >= self.question_end
            && response[HEADER_LEN..self.question_end]
                .eq_ignore_ascii_case(&query[HEADER_LEN..self.question_end])
    }

    /// `cached` made into the response to `query`: its ID, and its name as the client wrote it
    /// (resolvers that randomize the case of names check it).
    fn patch(&self, cached: &[u8], query: &[u8]) -> Vec<u8> {
        let mut wire = cached.to_vec();
        wire[..2].copy_from_slice(&query[..2]);
        wire[HEADER_LEN..self.name_end].copy_from_slice(&query[HEADER_LEN..self.name_end]);
        wire
    }
}

/// One cached response.
#[derive(Debug)]
struct Cached {
    wire: Vec<u8>,
    rcode: ResponseCode,
}

/// The responses to one query, one per rotation.
#[derive(Debug)]
struct Entry {
    rotor: Option<Rotor>,
    by_rotation: Vec<Option<Cached>>,
}

/// One UDP loop's cache (not shared, so no locking).
#[derive(Debug)]
pub(crate) struct AnswerCache {
    /// The snapshot the entries were answered from.
    zones: Arc<Zones>,
    entries: HashMap<Vec<u8>, Entry>,
    /// The key of the query at hand (reused, so a hit allocates only its response).
    key: Vec<u8>,
}

impl AnswerCache {
    /// An empty cache for answers from `zones`.
    pub(crate) fn new(zones: Arc<Zones>) -> Self {
        AnswerCache {
            zones,
            entries: HashMap::new(),
            key: Vec::new(),
        }
    }

    /// Forget everything unless the entries were answered from `zones` (a pointer comparison
    /// per query; the snapshot is cloned only when it changed).
    fn follow(&mut self, zones: &Arc<Zones>) {
        if !Arc::ptr_eq(&self.zones, zones) {
            self.entries.clear();
            self.zones = zones.clone();
        }
    }

    fn insert(&mut self, key: Vec<u8>, rotor: Option<Rotor>, rotation: usize, cached: Cached) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.clear();
        }
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            by_rotation: (0..rotor.as_ref().map_or(1, Rotor::period))
                .map(|_| None)
                .collect(),
            rotor,
        });
        if let Some(slot) = entry.by_rotation.get_mut(rotation) {
            *slot = Some(cached);
        }
    }
}

/// Answers one UDP message from `src` into `outbox`, from `cache` when it can.
pub(crate) async fn answer_udp(
    handler: &Handler,
    cache: &mut AnswerCache,
    bytes: &[u8],
    src: SocketAddr,
    outbox: &Outbox,
) {
    let Some(shape) = Shape::of(bytes) else {
        crate::wire::answer_message(handler, bytes, src, Protocol::Udp, outbox).await;
        return;
    };
    if !handler.admit(src.ip(), Some(shape.qtype)) {
        return;
    }
    cache.follow(&handler.zones());
    shape.key_into(bytes, &mut cache.key);
    let mut rotation = None;
    if let Some(entry) = cache.entries.get(cache.key.as_slice()) {
        let r = entry.rotor.as_ref().map_or(0, Rotor::advance);
        if let Some(Some(hit)) = entry.by_rotation.get(r) {
            handler.count(Some(shape.qtype), hit.rcode);
            outbox.push(shape.patch(&hit.wire, bytes), src);
            return;
        }
        rotation = Some(r);
    }
    let Some(request) = parse_query(handler, bytes, src, Protocol::Udp, outbox) else {
        return;
    };
    let zones = cache.zones.clone();
    let before = outbox.len();
    let responded = handler
        .respond(
            &request,
            collector(outbox, src, Protocol::Udp),
            &zones,
            rotation,
        )
        .await;
    handler.count(Some(shape.qtype), responded.info.response_code);
    if let Some(wire) = outbox.only_since(before)
        && shape.echoed_in(bytes, &wire)
    {
        let cached = Cached {
            wire,
            rcode: responded.info.response_code,
        };
        let key = cache.key.clone();
        cache.insert(key, responded.rotor, responded.rotation, cached);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::Name;

    fn query(id: u16, name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            m.edns = Some(Edns::new());
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn plain_queries_have_a_shape() {
        let q = query(7, "imap.mail.example.com.", RecordType::A, false);
        let shape = Shape::of(&q).unwrap();
        assert_eq!(shape.qtype, RecordType::A);
        assert_eq!(shape.name_end, 12 + 23);
        assert_eq!(shape.question_end, shape.name_end + 4);
        assert!(Shape::of(&query(7, "mail.example.com.", RecordType::MX, true)).is_some());
    }

    #[test]
    fn anything_but_a_plain_query_has_no_shape() {
        let q = query(7, "imap.mail.example.com.", RecordType::A, false);
        let mut response = q.clone();
        response[2] |= 0x80;
        assert_eq!(Shape::of(&response), None);
        let mut notify = q.clone();
        notify[2] |= 4 << 3;
        assert_eq!(Shape::of(&notify), None);
        let mut two_questions = q.clone();
        two_questions[5] = 2;
        assert_eq!(Shape::of(&two_questions), None);
        let mut with_answers = q.clone();
        with_answers[7] = 1;
        assert_eq!(Shape::of(&with_answers), None);
        let mut compressed = q.clone();
        compressed[12] = 0xC0;
        assert_eq!(Shape::of(&compressed), None);
        assert_eq!(Shape::of(&q[..q.len() - 1]), None);
        assert_eq!(Shape::of(&q[..5]), None);
        assert_eq!(Shape::of(&[]), None);
    }

    #[test]
    fn keys_ignore_the_id_and_the_case_of_the_name_but_nothing_else() {
        let key = |id, name, qtype, edns| {
            let q = query(id, name, qtype, edns);
            let mut key = vec![0xAA; 3];
            Shape::of(&q).unwrap().key_into(&q, &mut key);
            key
        };
        let base = key(1, "imap.mail.example.com.", RecordType::A, false);
        assert_eq!(base, key(2, "IMAP.Mail.example.COM.", RecordType::A, false));
        assert_ne!(
            base,
            key(1, "imap.mail.example.com.", RecordType::AAAA, false)
        );
        assert_ne!(base, key(1, "imap.mail.example.com.", RecordType::A, true));
        assert_ne!(base, key(1, "pop3.mail.example.com.", RecordType::A, false));
    }

    #[test]
    fn a_cached_response_gets_the_id_and_case_of_the_query() {
        let first = query(1, "imap.mail.example.com.", RecordType::A, false);
        let shape = Shape::of(&first).unwrap();
        let mut cached = first.clone();
        cached[2] |= 0x84; // a response, authoritative
        cached.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 1]);
        let second = query(0xBEEF, "iMaP.mail.EXAMPLE.com.", RecordType::A, false);
        assert!(shape.echoed_in(&second, &cached));
        let wire = shape.patch(&cached, &second);
        assert_eq!(&wire[..2], &[0xBE, 0xEF]);
        assert_eq!(
            &wire[12..shape.question_end],
            &second[12..shape.question_end]
        );
        assert_eq!(&wire[2..12], &cached[2..12]);
        assert_eq!(&wire[shape.question_end..], &cached[shape.question_end..]);
    }

    #[test]
    fn a_response_without_the_question_is_not_cached() {
        let q = query(1, "imap.mail.example.com.", RecordType::A, false);
        let shape = Shape::of(&q).unwrap();
        assert!(!shape.echoed_in(&q, &q[..20]));
        let other = query(1, "pop3.mail.example.com.", RecordType::A, false);
        assert!(!shape.echoed_in(&q, &other));
    }

    #[test]
    fn the_cache_is_bounded_and_follows_the_snapshot() {
        let zones = Arc::new(Zones::empty());
        let mut cache = AnswerCache::new(zones.clone());
        let cached = || Cached {
            wire: vec![0; 12],
            rcode: ResponseCode::Refused,
        };
        for i in 0..MAX_ENTRIES {
            cache.insert(i.to_be_bytes().to_vec(), None, 0, cached());
        }
        assert_eq!(cache.entries.len(), MAX_ENTRIES);
        // Replacing a known query keeps the rest; a new one when full starts over.
        cache.insert(0usize.to_be_bytes().to_vec(), None, 0, cached());
        assert_eq!(cache.entries.len(), MAX_ENTRIES);
        cache.insert(MAX_ENTRIES.to_be_bytes().to_vec(), None, 0, cached());
        assert_eq!(cache.entries.len(), 1);
        // The same snapshot keeps the entries; another one clears them.
        cache.follow(&zones);
        assert_eq!(cache.entries.len(), 1);
        cache.follow(&Arc::new(Zones::empty()));
        assert_eq!(cache.entries.len(), 0);
    }
}
