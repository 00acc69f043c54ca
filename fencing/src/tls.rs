//! How the HTTP agents (Redfish, webhook) trust the endpoint they talk to.
//!
//! BMCs usually present self-signed certificates, and "accept any certificate" is how fencing
//! setups end up powering off whatever answers on the address. So the choice is explicit: the
//! system's trust store, a CA file, or a pinned certificate fingerprint; accepting invalid
//! certificates happens only when the operator wrote exactly that in the config.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::agent::FenceError;

/// Which certificates an HTTPS endpoint may present.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// The system's trust store (public CAs).
    #[default]
    System,
    /// Only certificates issued by the CA(s) in this PEM file (host name still checked).
    CaFile(PathBuf),
    /// Only the certificate whose DER encoding has this SHA-256 (no chain or name check).
    PinSha256([u8; 32]),
    /// Any certificate at all. Only when the operator asked for it in the config.
    AcceptInvalid,
}

/// Parse a pinned SHA-256 fingerprint: 64 hex digits, with or without colons, as
/// `openssl x509 -noout -fingerprint -sha256` prints it.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex).map_err(|_| {
        format!(
            "{text:?} is not a SHA-256 fingerprint; write 64 hex digits (colons allowed), as \
             `openssl x509 -noout -fingerprint -sha256 -in cert.pem` prints them"
        )
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "{text:?} has {} bytes, a SHA-256 fingerprint has 32; write the -sha256 fingerprint",
            bytes.len()
        )
    })
}

/// The SHA-256 fingerprint of a DER certificate, as 32 bytes.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// An HTTP client for one endpoint with `trust` and a per-request `timeout`.
pub fn client(trust: &Trust, timeout: Duration) -> Result<reqwest::Client, FenceError> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A BMC or API on the management network is reached directly.
        .no_proxy()
        // Fences are rare: a fresh connection each time, never a stale one to a BMC that
        // rebooted or an endpoint that changed.
        .pool_max_idle_per_host(0);
    let builder = match trust {
        Trust::System => builder,
        Trust::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                FenceError::Tls(format!(
                    "cannot read the CA file {}: {e}; point ca_file at the PEM file of the CA \
                     that issued the endpoint's certificate",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                FenceError::Tls(format!(
                    "{} holds no usable PEM certificate: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(FenceError::Tls(format!(
                    "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                )));
            }
            builder.tls_certs_only(certs)
        }
        Trust::PinSha256(pin) => {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| FenceError::Tls(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(pinned(*pin, provider)))
                .with_no_client_auth();
            builder.tls_backend_preconfigured(config)
        }
        Trust::AcceptInvalid => builder.tls_danger_accept_invalid_certs(true),
    };
    builder
        .build()
        .map_err(|e| FenceError::Tls(format!("cannot build the HTTP client: {e}")))
}

/// Accepts exactly one certificate, by fingerprint; still verifies the handshake signatures,
/// so the peer must hold that certificate's private key.
fn pinned(pin: [u8; 32], provider: Arc<CryptoProvider>) -> LeafVerifier {
    LeafVerifier::new(provider, move |leaf| {
        let seen = fingerprint(leaf.as_ref());
        if seen == pin {
            Ok(())
        } else {
            Err(format!(
                "the certificate's SHA-256 fingerprint {} is not the pinned {}",
                hex::encode(seen),
                hex::encode(pin)
            ))
        }
    })
}

/// What a [`LeafVerifier`] asks of the leaf certificate.
type LeafCheck = dyn Fn(&CertificateDer<'_>) -> Result<(), String> + Send + Sync;

/// A certificate verifier that judges only the leaf certificate (no chain, no name), with a
/// given check, and still verifies the handshake signatures with the provider's algorithms: the
/// peer must hold the leaf's private key. For pinned BMC certificates, and for health probes
/// that only prove a service completes a TLS handshake.
pub struct LeafVerifier {
    check: Box<LeafCheck>,
    provider: Arc<CryptoProvider>,
}

impl LeafVerifier {
    /// Accept a leaf certificate when `check` says so.
    pub fn new(
        provider: Arc<CryptoProvider>,
        check: impl Fn(&CertificateDer<'_>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        LeafVerifier {
            check: Box::new(check),
            provider,
        }
    }
}

impl std::fmt::Debug for LeafVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafVerifier").finish_non_exhaustive()
    }
}

impl ServerCertVerifier for LeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        (self.check)(end_entity)
            .map(|()| ServerCertVerified::assertion())
            .map_err(rustls::Error::General)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The text of a reqwest error with its causes (the TLS reason is in a source).
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abcd").unwrap_err().contains("32"));
        assert!(parse_pin("zz").unwrap_err().contains("openssl x509"));
    }

    #[test]
    fn missing_ca_file_is_named_in_the_error() {
        let e = client(
            &Trust::CaFile("/nonexistent/ca.pem".into()),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
