//! Query counters by question type and response code, cheap enough for the hot path.
//!
//! Each UDP loop counts into a shard of its own and TCP into one shared shard, so a query costs
//! one uncontended relaxed atomic add and no lock. [`QueryStats`] is the handle the caller
//! keeps: it hands out shards to the server and sums them when read (for the daemon's
//! `/metrics`). Counts only go up while the server runs; nothing is reset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// Question types counted by name; anything else counts as "other".
const QTYPES: [(RecordType, &str); 11] = [
    (RecordType::A, "A"),
    (RecordType::AAAA, "AAAA"),
    (RecordType::MX, "MX"),
    (RecordType::NS, "NS"),
    (RecordType::SOA, "SOA"),
    (RecordType::SRV, "SRV"),
    (RecordType::TXT, "TXT"),
    (RecordType::CNAME, "CNAME"),
    (RecordType::PTR, "PTR"),
    (RecordType::CAA, "CAA"),
    (RecordType::ANY, "ANY"),
];
const QTYPE_OTHER: usize = QTYPES.len();
const QTYPE_NAMES: usize = QTYPES.len() + 1;

/// Response codes counted by name, then "OTHER" and "DROPPED" (over the rate limit: no answer).
const RCODES: [(ResponseCode, &str); 7] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::BADVERS, "BADVERS"),
];
const RCODE_OTHER: usize = RCODES.len();
const RCODE_DROPPED: usize = RCODES.len() + 1;
const RCODE_NAMES: usize = RCODES.len() + 2;

/// What a query came to, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counted {
    /// A response with this code was produced.
    Answered(ResponseCode),
    /// Dropped by the rate limit; nothing was sent.
    Dropped,
}

/// One counter per (question type, result). Aligned to a cache line so that two loops' shards
/// never share one.
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Shard {
    counts: [[AtomicU64; RCODE_NAMES]; QTYPE_NAMES],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl Shard {
    /// Count one query of type `qtype` (`None`: no single question) that came to `result`.
    pub(crate) fn count(&self, qtype: Option<RecordType>, result: Counted) {
        let t = qtype
            .and_then(|q| QTYPES.iter().position(|(t, _)| *t == q))
            .unwrap_or(QTYPE_OTHER);
        let r = match result {
            Counted::Dropped => RCODE_DROPPED,
            Counted::Answered(code) => RCODES
                .iter()
                .position(|(c, _)| *c == code)
                .unwrap_or(RCODE_OTHER),
        };
        self.counts[t][r].fetch_add(1, Ordering::Relaxed);
    }
}

/// The number of queries of one type that came to one result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryCount {
    /// Question type: "A", "AAAA", "MX", "NS", "SOA", "SRV", "TXT", "CNAME", "PTR", "CAA",
    /// "ANY" or "other" (any other type, or a message without exactly one question).
    pub qtype: &'static str,
    /// Response code ("NOERROR", "NXDOMAIN", "REFUSED", "FORMERR", "SERVFAIL", "NOTIMP",
    /// "BADVERS", "OTHER") or "DROPPED" (over the rate limit, not answered).
    pub rcode: &'static str,
    /// Queries since the server started.
    pub count: u64,
}

/// Counters of one server, shared between the server (which counts) and its owner (which
/// reads). Cloning gives another handle to the same counters.
#[derive(Clone, Debug, Default)]
pub struct QueryStats {
    shards: Arc<Mutex<Vec<Arc<Shard>>>>,
}

impl QueryStats {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new shard counted into these stats (one per UDP loop, one for TCP).
    pub(crate) fn shard(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard::default());
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(shard.clone());
        shard
    }

    /// Every non-zero count, summed over the shards, in a fixed order (type, then result).
    pub fn snapshot(&self) -> Vec<QueryCount> {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let qtype_name = |t: usize| QTYPES.get(t).map_or("other", |(_, n)| *n);
        let rcode_name = |r: usize| match r {
            RCODE_OTHER => "OTHER",
            RCODE_DROPPED => "DROPPED",
            _ => RCODES[r].1,
        };
        let mut out = Vec::new();
        for t in 0..QTYPE_NAMES {
            for r in 0..RCODE_NAMES {
                let count: u64 = shards
                    .iter()
                    .map(|s| s.counts[t][r].load(Ordering::Relaxed))
                    .sum();
                if count > 0 {
                    out.push(QueryCount {
                        qtype: qtype_name(t),
                        rcode: rcode_name(r),
                        count,
                    });
                }
            }
        }
        out
    }

    /// Total queries counted (answered or dropped).
    pub fn total(&self) -> u64 {
        self.snapshot().iter().map(|c| c.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_summed_over_shards_by_type_and_code() {
        let stats = QueryStats::new();
        let (a, b) = (stats.shard(), stats.shard());
        a.count(
            Some(RecordType::A),
            Counted::Answered(ResponseCode::NoError),
        );
        b.count(
            Some(RecordType::A),
            Counted::Answered(ResponseCode::NoError),
        );
        b.count(
            Some(RecordType::MX),
            Counted::Answered(ResponseCode::NXDomain),
        );
        a.count(
            Some(RecordType::HINFO),
            Counted::Answered(ResponseCode::Refused),
        );
        a.count(None, Counted::Answered(ResponseCode::FormErr));
        b.count(Some(RecordType::AAAA), Counted::Dropped);
        b.count(
            Some(RecordType::A),
            Counted::Answered(ResponseCode::YXDomain),
        );
        let counts: Vec<(&str, &str, u64)> = stats
            .snapshot()
            .iter()
            .map(|c| (c.qtype, c.rcode, c.count))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("A", "NOERROR", 2),
                ("A", "OTHER", 1),
                ("AAAA", "DROPPED", 1),
                ("MX", "NXDOMAIN", 1),
                ("other", "FORMERR", 1),
                ("other", "REFUSED", 1),
            ]
        );
        assert_eq!(stats.total(), 7);
    }

    #[test]
    fn clones_share_the_counters() {
        let stats = QueryStats::new();
        let reader = stats.clone();
        stats.shard().count(
            Some(RecordType::SOA),
            Counted::Answered(ResponseCode::NoError),
        );
        assert_eq!(reader.total(), 1);
    }
}
