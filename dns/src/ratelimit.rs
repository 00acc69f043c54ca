//! Per-source query rate limit (token buckets), for servers exposed on public networks.
//!
//! Owns the arithmetic of "may this source ask again now". Pure with respect to time: the caller
//! passes `now`, so tests need no clock. It must not decide what to answer or do any IO; the
//! server drops a UDP query it refuses. Off unless configured.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A per-source limit: `queries_per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained queries per second allowed from one source (an IPv4 address or an IPv6 /64).
    pub queries_per_second: u32,
    /// How many queries a source that has been quiet may send at once.
    pub burst: u32,
}

/// Above this many tracked sources, sources whose bucket has refilled are forgotten, so a flood
/// of spoofed sources cannot grow the table without bound.
const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The token buckets of every recently seen source.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The key a source is limited under: IPv6 hosts usually own a whole /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

impl Limiter {
    /// A limiter enforcing `limit` for every source.
    pub fn new(limit: RateLimit) -> Self {
        Limiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `source` may have a query answered at `now`; takes a token if so.
    pub fn allow(&self, source: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.limit.queries_per_second);
        let burst = f64::from(self.limit.burst.max(1));
        // A poisoned lock only means another query panicked mid-update; the table is still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_SOURCES {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(source_key(source)).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let l = Limiter::new(RateLimit {
            queries_per_second: 10,
            burst: 3,
        });
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..3).all(|_| l.allow(ip, t0)));
        assert!(!l.allow(ip, t0));
        assert!(l.allow(ip, t0 + Duration::from_millis(100)));
        assert!(!l.allow(ip, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn sources_are_limited_separately_and_ipv6_by_64() {
        let l = Limiter::new(RateLimit {
            queries_per_second: 1,
            burst: 1,
        });
        let t0 = Instant::now();
        assert!(l.allow("192.0.2.1".parse().unwrap(), t0));
        assert!(l.allow("192.0.2.2".parse().unwrap(), t0));
        assert!(l.allow("2001:db8::1".parse().unwrap(), t0));
        assert!(!l.allow("2001:db8::2".parse().unwrap(), t0));
        assert!(l.allow("2001:db8:0:1::1".parse().unwrap(), t0));
    }
}
