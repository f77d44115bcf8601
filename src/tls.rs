//! TLS for QUIC. On first start the server makes a self-signed certificate
//! for `localhost` under `DATA_DIR/tls`; gateways pin that certificate.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::wire::ALPN;

/// The name in the self-signed certificate; clients connect with it.
pub const SERVER_NAME: &str = "localhost";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("TLS file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("making a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// The server's certificate and key.
pub struct ServerIdentity {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

/// Where the certificate lives under a data directory; gateways read it.
pub fn cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("cert.der")
}

impl ServerIdentity {
    /// Loads `DATA_DIR/tls/{cert,key}.der`, making them on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<ServerIdentity, TlsError> {
        let cert_file = cert_path(data_dir);
        let key_file = data_dir.join("tls").join("key.der");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        if !cert_file.exists() || !key_file.exists() {
            let identity = ServerIdentity::generate()?;
            let dir = data_dir.join("tls");
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            // A key left without its certificate is stale; a new pair replaces it.
            if key_file.exists() {
                fs::remove_file(&key_file).map_err(io(&key_file))?;
            }
            crate::files::write_private(&key_file, identity.key.secret_pkcs8_der()).map_err(io(&key_file))?;
            fs::write(&cert_file, identity.cert.as_ref()).map_err(io(&cert_file))?;
            return Ok(identity);
        }
        let cert = fs::read(&cert_file).map_err(io(&cert_file))?;
        let key = fs::read(&key_file).map_err(io(&key_file))?;
        Ok(ServerIdentity { cert: CertificateDer::from(cert), key: PrivatePkcs8KeyDer::from(key) })
    }

    /// A fresh in-memory identity (tests).
    pub fn generate() -> Result<ServerIdentity, TlsError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
        Ok(ServerIdentity {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    /// The QUIC server configuration: TLS 1.3, ALPN `farestream/1`, the
    /// stream and idle limits.
    pub fn server_config(
        &self,
        streams_per_connection_max: u32,
        idle_timeout: Duration,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(streams_per_connection_max.into());
        transport.max_concurrent_uni_streams(0u32.into());
        transport.max_idle_timeout(Some(
            idle_timeout.try_into().map_err(|_| TlsError::Quic("idle timeout too large".into()))?,
        ));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// A QUIC client configuration that trusts exactly `server_cert`.
pub fn client_config(server_cert: &CertificateDer<'static>) -> Result<quinn::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_cert.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
/// Reads the certificate a gateway pins.
pub fn read_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })?;
    Ok(CertificateDer::from(bytes))
}
