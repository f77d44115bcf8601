//! TLS on the gateway's side: trust exactly the certificate the server
//! made (gateways pin it), TLS 1.3, ALPN `farestream/1`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;
use thiserror::Error;

use crate::wire::ALPN;

/// The name in the server's self-signed certificate; clients connect with it.
pub const SERVER_NAME: &str = "localhost";

#[derive(Debug, Error)]
pub enum ClientTlsError {
    #[error("certificate file {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// A QUIC client configuration that trusts exactly `server_cert`.
pub fn client_config(server_cert: &CertificateDer<'static>) -> Result<quinn::ClientConfig, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_cert.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| ClientTlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
/// Reads the certificate a gateway pins.
pub fn read_cert(path: &Path) -> Result<CertificateDer<'static>, ClientTlsError> {
    let bytes = std::fs::read(path).map_err(|source| ClientTlsError::Io { path: path.to_path_buf(), source })?;
    Ok(CertificateDer::from(bytes))
}
