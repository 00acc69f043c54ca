//! The cluster key and request signatures.
//!
//! Every peer RPC and admin request carries an HMAC-SHA256 signature made with the cluster key
//! over the method, path, a timestamp and the body's hash. The key itself never crosses the
//! network and never reaches a log line (its `Debug` is redacted). A request whose timestamp is
//! further than [`MAX_SKEW_MS`] from the receiver's clock is refused, which bounds how long a
//! captured request could be replayed.

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

    /// The signature of a request made at `time_ms`.
    pub fn sign(&self, method: &str, path: &str, time_ms: u64, body: &[u8]) -> String {
        hex::encode(
            self.mac(method, path, time_ms, body)
                .finalize()
                .into_bytes(),
        )
    }

    /// Check a request's time and signature against this key.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        time: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), AuthError> {
        let (Some(time), Some(signature)) = (time, signature) else {
            return Err(AuthError::Missing);
        };
        let time_ms: u64 = time.parse().map_err(|_| AuthError::Stale)?;
        if time_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(AuthError::Stale);
        }
        let given = hex::decode(signature).map_err(|_| AuthError::BadSignature)?;
        let expected = self
            .mac(method, path, time_ms, body)
            .finalize()
            .into_bytes();
        if expected.as_slice().ct_eq(&given).into() {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }

    fn mac(&self, method: &str, path: &str, time_ms: u64, body: &[u8]) -> Hmac<Sha256> {
        // new_from_slice only fails for key lengths HMAC cannot take; 32 bytes always works.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("32-byte HMAC key");
        let body_hash = Sha256::digest(body);
        mac.update(b"clusterd-v1\n");
        mac.update(method.as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(time_ms.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(&body_hash);
        mac
    }
}

/// Milliseconds since the unix epoch, the clock signatures use.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn signature_verifies_with_the_same_key() {
        let k = key(1);
        let sig = k.sign("POST", "/raft/vote", 1000, b"{}");
        assert_eq!(
            k.verify("POST", "/raft/vote", Some("1000"), Some(&sig), b"{}", 1500),
            Ok(())
        );
    }

    #[test]
    fn other_key_is_refused() {
        let sig = key(1).sign("POST", "/raft/vote", 1000, b"{}");
        assert_eq!(
            key(2).verify("POST", "/raft/vote", Some("1000"), Some(&sig), b"{}", 1000),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampered_body_path_or_method_is_refused() {
        let k = key(1);
        let sig = k.sign("POST", "/v1/note", 1000, b"a");
        for (m, p, b) in [
            ("POST", "/v1/note", &b"b"[..]),
            ("POST", "/v1/members", &b"a"[..]),
            ("GET", "/v1/note", &b"a"[..]),
        ] {
            assert_eq!(
                k.verify(m, p, Some("1000"), Some(&sig), b, 1000),
                Err(AuthError::BadSignature)
            );
        }
    }

    #[test]
    fn old_or_future_timestamps_are_refused() {
        let k = key(1);
        let sig = k.sign("GET", "/v1/status", 1000, b"");
        let late = 1000 + MAX_SKEW_MS + 1;
        assert_eq!(
            k.verify("GET", "/v1/status", Some("1000"), Some(&sig), b"", late),
            Err(AuthError::Stale)
        );
        assert_eq!(
            k.verify("GET", "/v1/status", Some("x"), Some(&sig), b"", 1000),
            Err(AuthError::Stale)
        );
    }

    #[test]
    fn missing_headers_are_refused() {
        assert_eq!(
            key(1).verify("GET", "/", None, None, b"", 0),
            Err(AuthError::Missing)
        );
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
