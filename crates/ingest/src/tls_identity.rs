//! TLS for QUIC. On first start the server makes a self-signed certificate
//! for `localhost` under `DATA_DIR/tls`; gateways pin that certificate. The
//! gateways' own certificates come from the fleet CA ([`crate::fleet_ca`]):
//! the server asks for one and refuses a connection without it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::fleet_ca::{RevocationList, client_verifier};
use farestream_gateway::wire::{ALPN, ALPN_V1};

pub use farestream_gateway::tls::SERVER_NAME;

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
    #[error(transparent)]
    Fleet(#[from] crate::fleet_ca::FleetError),
    #[error(
        "the server's TLS identity is incomplete: {missing} is missing, and gateways pinned the certificate it \
         belonged to. Restore it from a backup, or start with --new-tls-identity to make a new one (every gateway \
         must then pin the new certificate, {cert})"
    )]
    Missing { missing: String, cert: String },
}

/// The server's certificate and key.
pub struct ServerIdentity {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for ServerIdentity {
    /// A copy in memory (a test moving one identity between data dirs):
    /// rustls makes copying a private key a call of its own.
    fn clone(&self) -> ServerIdentity {
        ServerIdentity { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

/// Where the certificate lives under a data directory; gateways read it.
pub fn cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("cert.der")
}

/// Whether `load_or_create` may replace an identity that gateways pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewIdentity {
    /// Only on a data dir that never served: its first start.
    OnFirstStart,
    /// The operator asked for one (`serve --new-tls-identity`).
    Replace,
}

impl ServerIdentity {
    /// Loads `DATA_DIR/tls/{cert,key}.der`. On a data dir's first start
    /// (no certificate, no key, no write-ahead log yet) makes a new pair.
    /// When only part of an identity is there, or none on a data dir that
    /// has served, gateways pinned a certificate this server can no longer
    /// present: that is an error naming what is missing, unless `new` says
    /// to replace it.
    pub fn load_or_create(data_dir: &Path, new: NewIdentity) -> Result<ServerIdentity, TlsError> {
        let cert_file = cert_path(data_dir);
        let key_file = data_dir.join("tls").join("key.der");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        let (has_cert, has_key) = (cert_file.exists(), key_file.exists());
        if has_cert && has_key && new == NewIdentity::OnFirstStart {
            let cert = fs::read(&cert_file).map_err(io(&cert_file))?;
            let key = fs::read(&key_file).map_err(io(&key_file))?;
            return Ok(ServerIdentity { cert: CertificateDer::from(cert), key: PrivatePkcs8KeyDer::from(key) });
        }
        let first_start = !has_cert && !has_key && !crate::wal::has_served(data_dir);
        if !first_start && new == NewIdentity::OnFirstStart {
            let missing = match (has_cert, has_key) {
                (true, false) => key_file.display().to_string(),
                (false, true) => cert_file.display().to_string(),
                _ => format!("{} (this data dir has served before)", data_dir.join("tls").display()),
            };
            return Err(TlsError::Missing { missing, cert: cert_file.display().to_string() });
        }
        let identity = ServerIdentity::generate()?;
        let dir = data_dir.join("tls");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        for stale in [&key_file, &cert_file] {
            if stale.exists() {
                fs::remove_file(stale).map_err(io(stale))?;
            }
        }
        crate::files::write_private(&key_file, identity.key.secret_pkcs8_der()).map_err(io(&key_file))?;
        crate::files::write_public(&cert_file, identity.cert.as_ref()).map_err(io(&cert_file))?;
        crate::files::fsync_dir(&dir, &crate::faults::Faults::default()).map_err(io(&dir))?;
        Ok(identity)
    }

    /// A fresh in-memory identity (tests).
    pub fn generate() -> Result<ServerIdentity, TlsError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
        Ok(ServerIdentity {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    /// The QUIC server configuration: TLS 1.3 only, ALPN `farestream/1`,
    /// a client certificate from the fleet CA that `fleet` does not revoke,
    /// no 0-RTT, the stream and idle limits.
    pub fn server_config(
        &self,
        fleet: &RevocationList,
        streams_per_connection_max: u32,
        idle_timeout: Duration,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let mut config = quinn::ServerConfig::with_crypto(self.quic_crypto(fleet)?);
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(streams_per_connection_max.into());
        transport.max_concurrent_uni_streams(0u32.into());
        transport.max_idle_timeout(Some(
            idle_timeout.try_into().map_err(|_| TlsError::Quic("idle timeout too large".into()))?,
        ));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }

    /// The TLS half of [`ServerIdentity::server_config`], which a reload of
    /// the revocation list swaps into the running configuration (keeping
    /// its retry-token key, so handshakes in the middle of a retry go on).
    pub fn quic_crypto(&self, fleet: &RevocationList) -> Result<Arc<QuicServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier(fleet)?)
            .with_single_cert(vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        // The server's order decides: the current version, else the first.
        crypto.alpn_protocols = vec![ALPN.to_vec(), ALPN_V1.to_vec()];
        // 0-RTT data can be replayed by anyone who recorded it: a batch
        // must arrive in a handshake the server took part in. (Already
        // rustls's default; written here so nobody turns it on.)
        crypto.max_early_data_size = 0;
        // No resumption: a resumed session is not verified again, so an
        // expired gateway certificate would keep working through tickets.
        crypto.send_tls13_tickets = 0;
        crypto.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let crypto = QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
        Ok(Arc::new(crypto))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, new: NewIdentity) -> Result<ServerIdentity, TlsError> {
        ServerIdentity::load_or_create(dir, new)
    }

    #[test]
    fn the_first_start_makes_an_identity_and_later_starts_load_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load(dir.path(), NewIdentity::OnFirstStart).expect("first start");
        let again = load(dir.path(), NewIdentity::OnFirstStart).expect("second start");
        assert_eq!(first.cert, again.cert);
    }

    /// Review: a lost key file made `serve` silently make a new identity,
    /// locking out every gateway that pinned the old certificate.
    #[test]
    fn a_lost_half_of_the_identity_refuses_to_start_unless_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load(dir.path(), NewIdentity::OnFirstStart).expect("first start");
        let (key, cert) = (dir.path().join("tls/key.der"), cert_path(dir.path()));
        for lost in [&key, &cert] {
            let kept = if lost == &key { &cert } else { &key };
            let kept_bytes = fs::read(kept).expect("kept");
            fs::remove_file(lost).expect("lose it");
            let error = load(dir.path(), NewIdentity::OnFirstStart).err().expect("refused");
            assert!(matches!(&error, TlsError::Missing { missing, .. } if missing == &lost.display().to_string()));
            assert!(error.to_string().contains("--new-tls-identity"), "{error}");
            assert_eq!(fs::read(kept).expect("kept"), kept_bytes, "nothing was replaced");
            let replaced = load(dir.path(), NewIdentity::Replace).expect("told to");
            assert_ne!(replaced.cert, first.cert);
            assert_eq!(load(dir.path(), NewIdentity::OnFirstStart).expect("loads").cert, replaced.cert);
        }
    }

    #[test]
    fn a_data_dir_that_has_served_does_not_get_a_new_identity_silently() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("wal")).expect("wal");
        assert!(matches!(load(dir.path(), NewIdentity::OnFirstStart), Err(TlsError::Missing { .. })));
        assert!(load(dir.path(), NewIdentity::Replace).is_ok());
    }
}
