//! A gateway's identity, read from the certificate it presented: its id
//! (the common name), the validators it speaks for (URI names) and the
//! serial number a revocation names.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::FleetError;
use farestream_core::fleet::GatewayScope;

/// The URI name that carries one validator-id prefix.
pub const VALIDATORS_URI_PREFIX: &str = "urn:farestream:validators:";

/// Who a verified certificate says the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerGateway {
    pub scope: GatewayScope,
    /// The certificate's serial number, as its DER integer's bytes.
    pub serial: Vec<u8>,
    /// When the certificate runs out, Unix seconds: a connection is closed
    /// then.
    pub not_after_secs: i64,
}

impl PeerGateway {
    /// Reads a gateway certificate (one the TLS layer verified against the
    /// fleet CA: this parses, it does not verify).
    pub fn from_cert(der: &CertificateDer<'_>) -> Result<PeerGateway, FleetError> {
        let bad = |reason: String| FleetError::Certificate { what: "of the gateway".into(), reason };
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        let mut names = cert.subject().iter_common_name();
        let gateway_id = match (names.next(), names.next()) {
            (Some(name), None) => name.as_str().map_err(|e| bad(format!("its common name: {e}")))?,
            _ => return Err(bad("it must have exactly one common name, the gateway's id".into())),
        };
        let alt_names = cert.subject_alternative_name().map_err(|e| bad(format!("its alternative names: {e}")))?;
        let validator_prefixes = alt_names
            .into_iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => uri.strip_prefix(VALIDATORS_URI_PREFIX).map(str::to_string),
                _ => None,
            })
            .collect();
        let scope = GatewayScope::new(gateway_id, validator_prefixes)?;
        let not_after_secs = cert.validity().not_after.timestamp();
        Ok(PeerGateway { scope, serial: cert.raw_serial().to_vec(), not_after_secs })
    }

    /// The gateway a QUIC connection's verified certificate names.
    pub fn of_connection(connection: &quinn::Connection) -> Result<PeerGateway, FleetError> {
        let missing = |reason: &str| FleetError::Certificate { what: "of the peer".into(), reason: reason.into() };
        let identity = connection.peer_identity().ok_or_else(|| missing("none was presented"))?;
        let chain = identity
            .downcast::<Vec<CertificateDer<'static>>>()
            .map_err(|_| missing("the TLS layer gave no certificate chain"))?;
        PeerGateway::from_cert(chain.first().ok_or_else(|| missing("the chain is empty"))?)
    }
}
