//! The cluster key and request signatures.
//!
//! Every peer RPC and admin request carries an HMAC-SHA256 signature made with the cluster key
//! over the method, path, a timestamp, a random nonce, the name of the node it is meant for and
//! the body's hash. The hash travels in its own header ([`HEADER_BODY`]), so that a node checks
//! the signature on the headers alone and reads no body of a request it has not authenticated;
//! the body is then checked against the signed hash ([`body_matches`]). The key itself never
//! crosses the network and never reaches a log line (its `Debug` is redacted). A request whose timestamp is further than [`MAX_SKEW_MS`] from the
//! receiver's clock is refused, a request meant for another node is refused, and every node
//! remembers the nonces it accepted within that window ([`ReplayGuard`]) and refuses a second
//! use: a captured request can be neither replayed nor sent to another node.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Header carrying the signing time (unix ms).
pub const HEADER_TIME: &str = "x-clusterd-time";
/// Header carrying the hex HMAC.
pub const HEADER_SIGNATURE: &str = "x-clusterd-signature";
/// Header carrying the request's nonce (32 hex digits, random per request).
pub const HEADER_NONCE: &str = "x-clusterd-nonce";
/// Header naming the node the request is meant for.
pub const HEADER_TARGET: &str = "x-clusterd-target";
/// Header carrying the SHA-256 of the body (64 hex digits), covered by the signature.
pub const HEADER_BODY: &str = "x-clusterd-body-sha256";
/// Header of a 401 answer naming the node that answered, so that a client that did not know
/// whom it reached can sign for it and try once more.
pub const HEADER_NODE: &str = "x-clusterd-node";
/// Target to name when the client does not know the node it reaches: always refused, with the
/// node's name in [`HEADER_NODE`].
pub const UNKNOWN_TARGET: &str = "?";
/// Most nonces a node remembers. Past it the oldest is forgotten and every request no newer
/// than it is refused as stale, so a forgotten nonce can never be replayed.
pub const REPLAY_MEMORY: usize = 100_000;
/// Largest accepted distance between the signer's and the verifier's clocks.
pub const MAX_SKEW_MS: u64 = 300_000;
/// Key length in bytes.
pub const KEY_LEN: usize = 32;

/// Errors reading or writing the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}; create one with `clusterctl keygen {path}`")]
    Io {
        /// The key file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file exists but this user may not read it.
    #[error(
        "key file {path}: permission denied; it must be owned by the user clusterd runs as \
         (the Debian package runs it as `clusterd`: `chown clusterd:clusterd {path}`)"
    )]
    NotOwner {
        /// The key file.
        path: String,
    },
    /// Group or others may read the file.
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen {
        /// The key file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a key.
    #[error(
        "key file {path} does not hold a cluster key ({KEY_LEN} bytes as {} hex digits); \
         create one with `clusterctl keygen` and copy the same file to every node",
        KEY_LEN * 2
    )]
    Malformed {
        /// The key file.
        path: String,
    },
    /// Refused to overwrite an existing key.
    #[error(
        "key file {path} already exists; pass --force to replace it (every node needs the new key)"
    )]
    Exists {
        /// The key file.
        path: String,
    },
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No signature headers.
    #[error("missing signature")]
    Missing,
    /// The time header is malformed or too far off.
    #[error("timestamp outside the accepted window (check the clocks: NTP)")]
    Stale,
    /// The signature does not match.
    #[error("bad signature (wrong cluster key?)")]
    BadSignature,
    /// Signed for another node (or for none).
    #[error("the request is meant for node {named:?}, not for {me}")]
    WrongTarget {
        /// The node the request names.
        named: String,
        /// The node that received it.
        me: String,
    },
    /// This nonce was accepted before: a replay.
    #[error("replayed request (its nonce was already used)")]
    Replayed,
    /// The body is not the one the signature covers.
    #[error("the body does not match its signed hash")]
    BodyMismatch,
}

/// The parts of a request a signature covers besides its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Signing time, unix ms.
    pub time_ms: u64,
    /// The request's nonce.
    pub nonce: u128,
    /// The node it is meant for.
    pub target: &'a str,
}

/// The signature headers of a request as received (`None`: header absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// [`HEADER_TIME`].
    pub time: Option<&'a str>,
    /// [`HEADER_NONCE`].
    pub nonce: Option<&'a str>,
    /// [`HEADER_TARGET`].
    pub target: Option<&'a str>,
    /// [`HEADER_SIGNATURE`].
    pub signature: Option<&'a str>,
    /// [`HEADER_BODY`].
    pub body: Option<&'a str>,
}

/// A fresh random nonce.
pub fn nonce() -> u128 {
    rand::random()
}

/// The signature headers for a request to `target`, signed now with a fresh nonce.
pub fn sign_headers(
    key: &ClusterKey,
    method: &str,
    path: &str,
    target: &str,
    body: &[u8],
) -> [(&'static str, String); 5] {
    let digest: [u8; 32] = Sha256::digest(body).into();
    let signed = Signed {
        method,
        path,
        time_ms: crate::clock::unix_ms(),
        nonce: nonce(),
        target,
    };
    [
        (HEADER_TIME, signed.time_ms.to_string()),
        (HEADER_NONCE, format!("{:032x}", signed.nonce)),
        (HEADER_TARGET, target.to_string()),
        (HEADER_SIGNATURE, key.sign(&signed, &digest)),
        (HEADER_BODY, hex::encode(digest)),
    ]
}

/// Whether `body` is the one whose hash a verified request presented (the hex of
/// [`HEADER_BODY`], as [`ClusterKey::verify`] accepted it).
pub fn body_matches(presented_hex: &str, body: &[u8]) -> bool {
    let digest = Sha256::digest(body);
    hex::decode(presented_hex).is_ok_and(|given| bool::from(digest.as_slice().ct_eq(&given)))
}

/// Throttle for the log line about unauthenticated requests, and the nonces accepted within
/// the skew window (a request is admitted once). Kept by the node handle, used by the API's
/// authentication.
#[derive(Debug, Default)]
pub struct UnauthorizedLog {
    /// When the last line was logged.
    pub last: Option<std::time::Instant>,
    /// Rejections not logged since.
    pub suppressed: u64,
    /// Nonces accepted.
    pub replays: ReplayGuard,
}

/// The nonces a node accepted within the skew window, to refuse their second use. Bounded by
/// [`REPLAY_MEMORY`]: when full, the oldest is forgotten and requests signed no later than it
/// are refused from then on (as stale), so forgetting never opens a replay. Pure: the time is
/// passed in.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashSet<u128>,
    /// Nonces in the order they were accepted, with their signing times.
    order: VecDeque<(u64, u128)>,
    /// Requests signed at or before this time are refused (raised when memory runs out).
    floor_ms: u64,
}

impl ReplayGuard {
    /// Accept `nonce` of a request signed at `time_ms` (already checked against the skew
    /// window) once; refuse it ever after.
    pub fn admit(&mut self, time_ms: u64, nonce: u128, now_ms: u64) -> Result<(), AuthError> {
        while let Some(&(t, n)) = self.order.front() {
            if t.saturating_add(MAX_SKEW_MS) >= now_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&n);
        }
        if time_ms <= self.floor_ms {
            return Err(AuthError::Stale);
        }
        if !self.seen.insert(nonce) {
            return Err(AuthError::Replayed);
        }
        self.order.push_back((time_ms, nonce));
        while self.order.len() > REPLAY_MEMORY {
            if let Some((t, n)) = self.order.pop_front() {
                self.seen.remove(&n);
                self.floor_ms = self.floor_ms.max(t);
            }
        }
        Ok(())
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The shared secret of a cluster.
#[derive(Clone)]
pub struct ClusterKey([u8; KEY_LEN]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl ClusterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        ClusterKey(rand::random())
    }

    /// A key from raw bytes (tests).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        ClusterKey(bytes)
    }

    /// Read a key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let meta = fs::metadata(path).map_err(|source| KeyError::Io {
            path: shown.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen { path: shown, mode });
        }
        let text = fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => KeyError::NotOwner {
                path: shown.clone(),
            },
            _ => KeyError::Io {
                path: shown.clone(),
                source,
            },
        })?;
        Self::parse(text.trim()).ok_or(KeyError::Malformed { path: shown })
    }

    fn parse(hex_text: &str) -> Option<Self> {
        let bytes = hex::decode(hex_text).ok()?;
        let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(ClusterKey(arr))
    }

    /// Write this key to `path` with mode 0600; refuses to overwrite unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), KeyError> {
        let shown = path.display().to_string();
        if path.exists() && !force {
            return Err(KeyError::Exists { path: shown });
        }
        let io = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        // An existing file keeps its mode on open: tighten it explicitly.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        writeln!(file, "{}", hex::encode(self.0)).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// The signature of a request whose body hashes (SHA-256) to `body_digest`.
    pub fn sign(&self, signed: &Signed<'_>, body_digest: &[u8; 32]) -> String {
        hex::encode(self.mac(signed, body_digest).finalize().into_bytes())
    }

    /// Check a request's time, target and signature against this key, for the node `me`, from
    /// its headers alone; returns what was signed. The caller checks the nonce against its
    /// [`ReplayGuard`] and, once it has read the body, the body with [`body_matches`].
    pub fn verify<'a>(
        &self,
        method: &'a str,
        path: &'a str,
        presented: Presented<'a>,
        now_ms: u64,
        me: &str,
    ) -> Result<Signed<'a>, AuthError> {
        let (Some(time), Some(nonce), Some(target), Some(signature), Some(body)) = (
            presented.time,
            presented.nonce,
            presented.target,
            presented.signature,
            presented.body,
        ) else {
            return Err(AuthError::Missing);
        };
        let body_digest: [u8; 32] = hex::decode(body)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or(AuthError::BadSignature)?;
        let time_ms: u64 = time.parse().map_err(|_| AuthError::Stale)?;
        if time_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(AuthError::Stale);
        }
        let nonce = (nonce.len() == 32)
            .then(|| u128::from_str_radix(nonce, 16).ok())
            .flatten()
            .ok_or(AuthError::BadSignature)?;
        let signed = Signed {
            method,
            path,
            time_ms,
            nonce,
            target,
        };
        let given = hex::decode(signature).map_err(|_| AuthError::BadSignature)?;
        let expected = self.mac(&signed, &body_digest).finalize().into_bytes();
        if !bool::from(expected.as_slice().ct_eq(&given)) {
            return Err(AuthError::BadSignature);
        }
        if target != me {
            return Err(AuthError::WrongTarget {
                named: target.to_string(),
                me: me.to_string(),
            });
        }
        Ok(signed)
    }

    fn mac(&self, signed: &Signed<'_>, body_digest: &[u8; 32]) -> Hmac<Sha256> {
        // new_from_slice only fails for key lengths HMAC cannot take; 32 bytes always works.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("32-byte HMAC key");
        mac.update(b"clusterd-v2\n");
        for part in [signed.method, signed.path] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac.update(signed.time_ms.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(format!("{:032x}", signed.nonce).as_bytes());
        mac.update(b"\n");
        mac.update(signed.target.as_bytes());
        mac.update(b"\n");
        mac.update(body_digest);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; KEY_LEN])
    }

    fn signed<'a>(path: &'a str, time_ms: u64, target: &'a str) -> Signed<'a> {
        Signed {
            method: "POST",
            path,
            time_ms,
            nonce: 0x1234,
            target,
        }
    }

    /// The headers of `s` signed with `k` (time, nonce, signature, body hash), as a receiver
    /// sees them.
    fn presented(k: &ClusterKey, s: &Signed<'_>, body: &[u8]) -> (String, String, String, String) {
        let digest: [u8; 32] = Sha256::digest(body).into();
        (
            s.time_ms.to_string(),
            format!("{:032x}", s.nonce),
            k.sign(s, &digest),
            hex::encode(digest),
        )
    }

    /// What a node does with a request: the headers first, then the body it read.
    fn check(
        k: &ClusterKey,
        s: &Signed<'_>,
        headers: &(String, String, String, String),
        body: &[u8],
        now: u64,
        me: &str,
    ) -> Result<(), AuthError> {
        k.verify(
            s.method,
            s.path,
            Presented {
                time: Some(&headers.0),
                nonce: Some(&headers.1),
                target: Some(s.target),
                signature: Some(&headers.2),
                body: Some(&headers.3),
            },
            now,
            me,
        )?;
        if body_matches(&headers.3, body) {
            Ok(())
        } else {
            Err(AuthError::BodyMismatch)
        }
    }

    #[test]
    fn signature_verifies_with_the_same_key_on_the_named_node() {
        let k = key(1);
        let s = signed("/raft/vote", 1000, "mx1");
        let h = presented(&k, &s, b"{}");
        assert_eq!(check(&k, &s, &h, b"{}", 1500, "mx1"), Ok(()));
    }

    #[test]
    fn other_key_is_refused() {
        let s = signed("/raft/vote", 1000, "mx1");
        let h = presented(&key(1), &s, b"{}");
        assert_eq!(
            check(&key(2), &s, &h, b"{}", 1000, "mx1"),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampered_body_path_method_nonce_or_target_is_refused() {
        let k = key(1);
        let s = signed("/v1/note", 1000, "mx1");
        let h = presented(&k, &s, b"a");
        assert_eq!(
            check(&k, &s, &h, b"b", 1000, "mx1"),
            Err(AuthError::BodyMismatch)
        );
        // A hash header rewritten to match another body breaks the signature.
        let mut rehashed = h.clone();
        rehashed.3 = hex::encode(Sha256::digest(b"b"));
        assert_eq!(
            check(&k, &s, &rehashed, b"b", 1000, "mx1"),
            Err(AuthError::BadSignature)
        );
        rehashed.3 = "00".into();
        assert_eq!(
            check(&k, &s, &rehashed, b"b", 1000, "mx1"),
            Err(AuthError::BadSignature)
        );
        let path = Signed {
            path: "/v1/members",
            ..s
        };
        let method = Signed { method: "GET", ..s };
        let target = Signed { target: "mx2", ..s };
        for other in [path, method, target] {
            assert_eq!(
                check(&k, &other, &h, b"a", 1000, other.target),
                Err(AuthError::BadSignature),
                "{other:?}"
            );
        }
        let mut renonced = h.clone();
        renonced.1 = format!("{:032x}", 0x1235);
        assert_eq!(
            check(&k, &s, &renonced, b"a", 1000, "mx1"),
            Err(AuthError::BadSignature)
        );
        renonced.1 = "1234".into();
        assert_eq!(
            check(&k, &s, &renonced, b"a", 1000, "mx1"),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn a_request_signed_for_another_node_is_refused_there() {
        let k = key(1);
        let s = signed("/v1/fence", 1000, "mx2");
        let h = presented(&k, &s, b"{}");
        assert_eq!(
            check(&k, &s, &h, b"{}", 1000, "mx3"),
            Err(AuthError::WrongTarget {
                named: "mx2".into(),
                me: "mx3".into()
            })
        );
        let unknown = signed("/v1/status", 1000, UNKNOWN_TARGET);
        let h = presented(&k, &unknown, b"");
        assert!(matches!(
            check(&k, &unknown, &h, b"", 1000, "mx3"),
            Err(AuthError::WrongTarget { .. })
        ));
    }

    #[test]
    fn old_or_future_timestamps_are_refused() {
        let k = key(1);
        let s = signed("/v1/status", 1000, "mx1");
        let h = presented(&k, &s, b"");
        let late = 1000 + MAX_SKEW_MS + 1;
        assert_eq!(check(&k, &s, &h, b"", late, "mx1"), Err(AuthError::Stale));
        let mut bad = h.clone();
        bad.0 = "x".into();
        assert_eq!(check(&k, &s, &bad, b"", 1000, "mx1"), Err(AuthError::Stale));
    }

    #[test]
    fn missing_headers_are_refused() {
        assert_eq!(
            key(1)
                .verify("GET", "/", Presented::default(), 0, "mx1")
                .map(|_| ()),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn a_nonce_is_accepted_once_within_the_window() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.admit(1000, 7, 1000), Ok(()));
        assert_eq!(g.admit(1000, 7, 2000), Err(AuthError::Replayed));
        assert_eq!(g.admit(1000, 8, 2000), Ok(()));
        // Until its signing time left the window (it is refused as stale from then on).
        assert_eq!(
            g.admit(1000, 7, 1000 + MAX_SKEW_MS),
            Err(AuthError::Replayed)
        );
        assert_eq!(g.admit(5000, 9, 1000 + MAX_SKEW_MS + 1), Ok(()));
        assert_eq!(g.len(), 1, "nonces of expired requests are forgotten");
    }

    #[test]
    fn a_full_replay_memory_refuses_what_it_can_no_longer_check() {
        let mut g = ReplayGuard::default();
        let now = 1_000_000;
        for n in 0..REPLAY_MEMORY as u128 {
            g.admit(now - 1000 + (n as u64 % 1000), n, now).unwrap();
        }
        assert_eq!(g.len(), REPLAY_MEMORY);
        // One past the limit: the oldest (signed at now - 1000) is forgotten...
        assert_eq!(g.admit(now, u128::MAX, now), Ok(()));
        assert_eq!(g.len(), REPLAY_MEMORY);
        // ...so a replay of it is refused as stale, as is anything signed no later.
        assert_eq!(g.admit(now - 1000, 0, now), Err(AuthError::Stale));
        assert_eq!(
            g.admit(now - 1000, u128::MAX - 1, now),
            Err(AuthError::Stale)
        );
        // Newer requests pass, and remembered ones are still replays.
        assert_eq!(g.admit(now - 999, u128::MAX - 2, now), Ok(()));
        assert_eq!(g.admit(now - 500, 500, now), Err(AuthError::Replayed));
    }

    #[test]
    fn debug_output_hides_the_key() {
        assert_eq!(format!("{:?}", key(0xab)), "ClusterKey(<redacted>)");
    }

    #[test]
    fn key_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let k = ClusterKey::generate();
        k.write(&path, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = ClusterKey::load(&path).unwrap();
        assert_eq!(back.0, k.0);
    }

    #[test]
    fn existing_key_is_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        key(1).write(&path, false).unwrap();
        assert!(matches!(
            key(2).write(&path, false),
            Err(KeyError::Exists { .. })
        ));
        key(2).write(&path, true).unwrap();
        assert_eq!(ClusterKey::load(&path).unwrap().0, [2; KEY_LEN]);
    }

    #[test]
    fn group_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        key(1).write(&path, false).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = ClusterKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::TooOpen { mode: 0o640, .. }));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        fs::write(&path, "not hex\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            ClusterKey::load(&path),
            Err(KeyError::Malformed { .. })
        ));
    }
}
