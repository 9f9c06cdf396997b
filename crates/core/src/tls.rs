//! TLS from PEM files: certificate chains and keys, the client and server configurations
//! every TLS peer of the gateway uses (MQTT brokers, the field listener, the page), and a
//! constant-time comparison of secrets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// Why a TLS setup failed.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A PEM certificate chain (at least one certificate).
pub fn cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if chain.is_empty() {
        return Err(file_err(path, "no certificate in it"));
    }
    Ok(chain)
}

/// A PEM private key.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// A rustls client config that trusts `ca` and, with `client`, authenticates with that
/// certificate chain and key.
pub fn client_tls(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))?;
    for cert in certs {
        roots
            .add(cert.map_err(|e| file_err(ca, e))?)
            .map_err(|e| file_err(ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_err(ca, "no certificate in it"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder.with_client_auth_cert(cert_chain(cert)?, private_key(key)?)?,
    })
}

/// Makes ring rustls's process-wide provider, once. tonic builds its TLS configs with that
/// provider; with the OpenADR client's reqwest in the build, rustls has two compiled in (ring
/// and aws-lc-rs) and would choose neither, so every tonic TLS config is preceded by this.
/// The gateway's own configs name ring explicitly.
pub fn use_ring_provider() {
    // Err only when a provider is installed already, which is all this asks for.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A rustls client config that trusts nothing: for a client that only speaks plain HTTP on
/// loopback but must still be given a TLS setup (one that can never complete a handshake).
pub fn client_tls_no_roots() -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth())
}

/// A rustls server config with the certificate chain `cert` and its `key`; with
/// `client_ca`, every client must present a certificate that chains to it. `alpn` names the
/// protocol offered (empty: none).
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in cert_chain(ca)? {
                roots.add(c).map_err(|e| file_err(ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(cert_chain(cert)?, private_key(key)?)?;
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(config)
}

/// Compares two secrets without an early exit, so that the time taken does not tell how
/// much of a guess was right.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
