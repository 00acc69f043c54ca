//! TLS for probes: a real rustls handshake, and the certificate's expiry date.
//!
//! Without a CA file the probe proves that the service completes a TLS handshake with a
//! certificate whose key signs the handshake (signatures are verified), but accepts any issuer:
//! a health probe of the node's own service on 127.0.0.1 has no name to check and its operator
//! may use a private CA. With `tls_ca_file` the chain and name are verified as a client would.

use std::path::Path;
use std::sync::Arc;

use clusterd_fencing::tls::LeafVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// A ready TLS client setup for one check.
#[derive(Clone)]
pub struct TlsClient {
    /// The connector.
    pub connector: tokio_rustls::TlsConnector,
    /// SNI / verified name.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Build the TLS client of a check: verifying against `ca_file` if given, otherwise
/// handshake-only. `server_name` defaults to the probed address.
pub fn client(
    ca_file: Option<&Path>,
    server_name: Option<&str>,
    host: std::net::IpAddr,
) -> Result<TlsClient, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read tls_ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("tls_ca_file {}: bad PEM: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "tls_ca_file {} holds no certificate",
                    path.display()
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LeafVerifier::new(provider, |_| Ok(()))))
            .with_no_client_auth(),
    };
    let server_name = match server_name {
        Some(n) => ServerName::try_from(n.to_string())
            .map_err(|e| format!("tls_server_name {n:?}: {e}"))?,
        None => ServerName::IpAddress(host.into()),
    };
    Ok(TlsClient {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// When the leaf certificate stops being valid (unix seconds), if it can be read.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}
