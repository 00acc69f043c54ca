//! Value types of the config file: durations written with units (`Millis`), address
//! prefixes (`IpPrefix`), and the defaults of optional fields.

use super::*;

/// Default for `node.data_dir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/clusterd";

/// Default for `node.key_file`.
pub const DEFAULT_KEY_FILE: &str = "/etc/clusterd/cluster.key";

pub(super) fn default_srv_weight() -> u16 {
    1
}

pub(super) fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

pub(super) fn default_key_file() -> PathBuf {
    PathBuf::from(DEFAULT_KEY_FILE)
}

pub(super) fn default_check_interval() -> Millis {
    Millis::from_millis(1000)
}

pub(super) fn default_check_fast_interval() -> Millis {
    Millis::from_millis(100)
}

pub(super) fn default_check_timeout() -> Millis {
    Millis::from_millis(1000)
}

pub(super) fn default_rise_fall() -> u32 {
    2
}

pub(super) fn default_check_host() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

pub(super) fn default_cert_warning() -> Millis {
    Millis::from_millis(14 * 86_400_000)
}

pub(super) fn default_ttl() -> u32 {
    30
}

pub(super) fn default_dns_rate_limit() -> u32 {
    DEFAULT_DNS_RATE_LIMIT
}

/// Default `dns.rate_limit`.
pub const DEFAULT_DNS_RATE_LIMIT: u32 = 100;

/// Largest `dns.rate_limit` accepted.
pub const MAX_DNS_RATE_LIMIT: u32 = 1_000_000;

pub(super) fn default_true() -> bool {
    true
}

/// A duration written as a string with a unit: "50ms", "1s", "1.5s", "2m" or "1h".
/// Whole milliseconds only. Serialises back to the same form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Millis(pub Duration);

impl Millis {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Millis(Duration::from_millis(ms))
    }

    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Whole milliseconds (saturating).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<Duration> for Millis {
    fn from(d: Duration) -> Self {
        Millis(d)
    }
}

pub(super) const DURATION_FORMS: &str = "write a number and a unit as a string, like \"50ms\", \"1s\", \"1.5s\", \"2m\", \"1h\" or \"14d\"";

impl FromStr for Millis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("invalid duration {s:?}: {why}; {DURATION_FORMS}");
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("the unit is missing"))?;
        let (number, unit) = t.split_at(split);
        let unit_ms: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad("the unit must be ms, s, m, h or d")),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if whole.is_empty() || (number.contains('.') && frac.is_empty()) {
            return Err(bad("the number is malformed"));
        }
        if frac.len() > 9 {
            return Err(bad("too many decimal places"));
        }
        let whole: u128 = whole.parse().map_err(|_| bad("the number is malformed"))?;
        let frac_value: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad("the number is malformed"))?
        };
        let scale = 10u128.pow(frac.len() as u32);
        // Exact integer arithmetic: total = (whole + frac/scale) * unit_ms.
        let numerator = whole
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac_value))
            .and_then(|v| v.checked_mul(unit_ms))
            .ok_or_else(|| bad("the value is too large"))?;
        if numerator % scale != 0 {
            return Err(bad("it is finer than one millisecond"));
        }
        let ms = u64::try_from(numerator / scale).map_err(|_| bad("the value is too large"))?;
        Ok(Millis::from_millis(ms))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms == 0 {
            write!(f, "0ms")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else if ms > 1_000 {
            let frac = format!("{:03}", ms % 1_000);
            write!(f, "{}.{}s", ms / 1_000, frac.trim_end_matches('0'))
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a duration string like \"50ms\", \"1s\", \"1.5s\", \"2m\" or \"1h\" \
                     (with quotes)"
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Millis, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// An interface address with its prefix length, written "192.0.2.101/24" or "2001:db8::1/64".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    /// The address itself.
    pub addr: IpAddr,
    /// The prefix length: 1 to 32 for IPv4, 1 to 128 for IPv6.
    pub prefix_len: u8,
}

impl IpPrefix {
    /// The largest prefix length for this address family (32 or 128).
    pub fn max_prefix_len(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }
}

impl FromStr for IpPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let forms =
            "write it as \"ADDRESS/PREFIX\", like \"192.0.2.101/24\" or \"2001:db8::101/64\"";
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid address {s:?}: the /prefix is missing; {forms}"))?;
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid address {s:?}: {ip:?} is not an IP address; {forms}"))?;
        let prefix_len: u8 = len.parse().map_err(|_| {
            format!("invalid address {s:?}: {len:?} is not a prefix length; {forms}")
        })?;
        let p = IpPrefix { addr, prefix_len };
        if prefix_len == 0 || prefix_len > p.max_prefix_len() {
            return Err(format!(
                "invalid address {s:?}: the prefix length must be 1 to {}; {forms}",
                p.max_prefix_len()
            ));
        }
        Ok(p)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IpPrefix;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "an address with prefix like \"192.0.2.101/24\" (with quotes)"
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IpPrefix, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{BASE, parse_err};
    use super::*;

    #[test]
    fn durations_accept_documented_forms() {
        for (text, ms) in [
            ("50ms", 50),
            ("1s", 1000),
            ("1.5s", 1500),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("0.25s", 250),
            ("0s", 0),
        ] {
            assert_eq!(
                text.parse::<Millis>(),
                Ok(Millis::from_millis(ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_duration_names_accepted_forms() {
        for text in [
            "50", "1.5", "fast", "1 sec", "-1s", "1.s", ".5s", "0.0001s", "s",
        ] {
            let err = text.parse::<Millis>().expect_err(text);
            assert!(
                err.contains("\"50ms\", \"1s\", \"1.5s\", \"2m\""),
                "{text}: {err}"
            );
        }
        let p =
            parse_err(&BASE.replace("kind = \"imap\"", "kind = \"imap\"\ninterval = \"1 sec\""));
        assert!(p.field.starts_with("checks.imap.interval"), "{p}");
        assert!(p.message.contains("\"1.5s\""), "{p}");
        let p = parse_err(&BASE.replace("kind = \"imap\"", "kind = \"imap\"\ninterval = 1"));
        assert!(p.message.contains("duration string"), "{p}");
    }

    #[test]
    fn durations_serialise_to_the_accepted_form() {
        for (ms, text) in [
            (50, "50ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (1050, "1.05s"),
            (120_000, "2m"),
            (90_000, "1.5m"),
            (7_200_000, "2h"),
            (0, "0ms"),
        ] {
            let shown = Millis::from_millis(ms).to_string();
            if ms == 90_000 {
                // Not a whole number of minutes: shown in seconds.
                assert_eq!(shown, "90s");
            } else {
                assert_eq!(shown, text);
            }
            assert_eq!(shown.parse::<Millis>(), Ok(Millis::from_millis(ms)));
        }
    }

    #[test]
    fn ip_prefix_parses_and_displays_as_ip_slash_prefix() {
        let p: IpPrefix = "192.0.2.101/24".parse().expect("v4");
        assert_eq!(p.addr, IpAddr::from([192, 0, 2, 101]));
        assert_eq!(p.prefix_len, 24);
        assert_eq!(p.to_string(), "192.0.2.101/24");
        let p: IpPrefix = "2001:db8::101/64".parse().expect("v6");
        assert_eq!(p.to_string(), "2001:db8::101/64");
        assert!("2001:db8::1/128".parse::<IpPrefix>().is_ok());
    }

    #[test]
    fn ip_prefix_out_of_range_refused() {
        for bad in [
            "192.0.2.1/33",
            "192.0.2.1/0",
            "2001:db8::1/129",
            "192.0.2.1",
            "mx1/24",
        ] {
            let err = bad.parse::<IpPrefix>().expect_err(bad);
            assert!(err.contains("192.0.2.101/24"), "{bad}: {err}");
        }
        let p = parse_err(&BASE.replace("192.0.2.102/24", "192.0.2.102/40"));
        assert_eq!(p.field, "addresses[1].ip (line 22, column 6)");
        assert!(p.message.contains("1 to 32"), "{p}");
    }
}
