//! TLS on the gateway's side: trust exactly the certificate the server
//! made (gateways pin it), present the gateway's own certificate from the
//! fleet CA (mutual TLS: the server takes the gateway's id from it), TLS
//! 1.3 only, ALPN `farestream/1`, no 0-RTT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::wire::ALPN;

/// The name in the server's self-signed certificate; clients connect with it.
pub const SERVER_NAME: &str = "localhost";
/// The gateway's certificate in its credentials directory (DER).
pub const GATEWAY_CERT_FILE: &str = "cert.der";
/// The gateway's private key in its credentials directory (PKCS#8 DER).
pub const GATEWAY_KEY_FILE: &str = "key.der";

#[derive(Debug, Error)]
pub enum ClientTlsError {
    #[error("certificate file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// A gateway's enrolment: the certificate the fleet CA issued to it and
/// its private key. The server reads the gateway's id, and the validators
/// it speaks for, from the certificate.
pub struct GatewayCredentials {
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for GatewayCredentials {
    fn clone(&self) -> GatewayCredentials {
        GatewayCredentials { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

impl std::fmt::Debug for GatewayCredentials {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCredentials").field("cert_bytes", &self.cert.len()).finish_non_exhaustive()
    }
}

impl GatewayCredentials {
    /// Reads `DIR/cert.der` and `DIR/key.der` (what `farestream gateway
    /// enroll` writes).
    pub fn read(dir: &Path) -> Result<GatewayCredentials, ClientTlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| ClientTlsError::Io { path, source })
        };
        Ok(GatewayCredentials {
            cert: CertificateDer::from(read(GATEWAY_CERT_FILE)?),
            key: PrivatePkcs8KeyDer::from(read(GATEWAY_KEY_FILE)?),
        })
    }
}

/// A QUIC client configuration that trusts exactly `server_cert` and
/// presents `credentials`.
pub fn client_config(
    server_cert: &CertificateDer<'static>,
    credentials: &GatewayCredentials,
) -> Result<quinn::ClientConfig, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_cert.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![credentials.cert.clone()], PrivateKeyDer::Pkcs8(credentials.key.clone_key()))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    // A batch sent as 0-RTT data could be replayed by anyone who recorded
    // it; the server refuses it anyway, and the client never offers it.
    crypto.enable_early_data = false;
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
