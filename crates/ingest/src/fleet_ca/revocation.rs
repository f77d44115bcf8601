//! The revocation list as the server holds it, and the TLS verifier built
//! from the CA and that list: rustls refuses a revoked certificate during
//! the handshake; the server closes connections made before a revocation.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

use super::{FleetError, FleetPaths, io};

/// The CA's certificate and its revocation list, as read at one moment.
#[derive(Clone)]
pub struct RevocationList {
    ca_cert: CertificateDer<'static>,
    crl: CertificateRevocationListDer<'static>,
    revoked_serials: HashSet<Vec<u8>>,
}

impl RevocationList {
    /// Reads `fleet/ca.cert.der` and `fleet/crl.der` under `data_dir`.
    pub fn read(data_dir: &Path) -> Result<RevocationList, FleetError> {
        let paths = FleetPaths::new(data_dir);
        if !paths.ca_cert().exists() {
            return Err(FleetError::NoCa(paths.dir().to_path_buf()));
        }
        let ca_cert = CertificateDer::from(std::fs::read(paths.ca_cert()).map_err(io(&paths.ca_cert()))?);
        let crl_bytes = std::fs::read(paths.crl()).map_err(io(&paths.crl()))?;
        let bad = |reason: String| FleetError::Certificate { what: paths.crl().display().to_string(), reason };
        let revoked_serials = {
            let (_, crl) = x509_parser::parse_x509_crl(&crl_bytes).map_err(|e| bad(e.to_string()))?;
            crl.iter_revoked_certificates().map(|revoked| revoked.raw_serial().to_vec()).collect()
        };
        Ok(RevocationList { ca_cert, crl: CertificateRevocationListDer::from(crl_bytes), revoked_serials })
    }

    /// Whether the certificate with this serial is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked_serials.contains(serial)
    }

    /// How many certificates it revokes.
    pub fn revoked(&self) -> usize {
        self.revoked_serials.len()
    }

    /// Whether it says the same as `other` (the reload's "did it change").
    pub fn same_as(&self, other: &RevocationList) -> bool {
        self.ca_cert == other.ca_cert && self.crl == other.crl
    }

    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }
}

/// A verifier that accepts only certificates from the fleet CA that this
/// list does not revoke. A client with no certificate fails the handshake.
pub fn client_verifier(list: &RevocationList) -> Result<Arc<dyn ClientCertVerifier>, FleetError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(list.ca_cert.clone()).map_err(|e| FleetError::Verifier(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(vec![list.crl.clone()])
        .build()
        .map_err(|e| FleetError::Verifier(e.to_string()))
}
