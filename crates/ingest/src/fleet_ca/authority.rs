//! The CA itself: made once per fleet, then enrolling and revoking
//! gateways. Dates come in as arguments, so tests can age a certificate.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::identity::VALIDATORS_URI_PREFIX;
use super::{FleetError, FleetPaths, io};
use crate::faults::Faults;
use crate::files::{fsync_dir, write_private, write_public};
use farestream_core::fleet::GatewayScope;
use farestream_gateway::tls::{GATEWAY_CERT_FILE, GATEWAY_KEY_FILE, GatewayCredentials};

/// The CA's common name.
const CA_NAME: &str = "farestream fleet CA";
/// How long the CA's own certificate is good for.
const CA_VALID_DAYS: i64 = 20 * 365;
/// How long each revocation list says it is good for. The server reloads
/// the file whenever it changes, so this only bounds a stale copy.
const CRL_VALID_DAYS: i64 = 10 * 365;
/// A certificate is good from a day before it was issued: a gateway whose
/// clock is behind must not be refused its fresh certificate.
const CLOCK_SKEW_DAYS: i64 = 1;
const SECS_PER_DAY: i64 = 86_400;

/// The fleet CA with its key: what enrols and revokes gateways.
pub struct FleetCa {
    paths: FleetPaths,
    cert: CertificateDer<'static>,
    key: KeyPair,
}

/// A gateway just enrolled.
#[derive(Debug)]
pub struct Enrolled {
    pub scope: GatewayScope,
    /// The certificate's serial number, in hex (its file under `issued/`).
    pub serial: String,
    pub credentials: GatewayCredentials,
    /// Where its certificate and key were written.
    pub dir: PathBuf,
}

impl FleetCa {
    /// Makes the fleet CA and its empty revocation list under `data_dir`
    /// unless it has one; whether it made one. A CA with its key gone and
    /// its certificate kept is fine (the key lives elsewhere); a key with
    /// no certificate is an error.
    pub fn create_if_absent(data_dir: &Path, now_secs: i64, faults: &Faults) -> Result<bool, FleetError> {
        let paths = FleetPaths::new(data_dir);
        match (paths.ca_cert().exists(), paths.ca_key().exists()) {
            (true, _) => return Ok(false),
            (false, true) => {
                return Err(FleetError::Incomplete { dir: paths.dir().to_path_buf(), missing: paths.ca_cert() });
            }
            (false, false) => {}
        }
        fs::create_dir_all(paths.dir()).map_err(io(paths.dir()))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, CA_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = date(now_secs - CLOCK_SKEW_DAYS * SECS_PER_DAY)?;
        params.not_after = date(now_secs + CA_VALID_DAYS * SECS_PER_DAY)?;
        let cert = params.self_signed(&key)?;
        // The key first: a crash between the two leaves a key with no
        // certificate, which refuses to start rather than making a second CA.
        write_private(&paths.ca_key(), &key.serialize_der()).map_err(io(&paths.ca_key()))?;
        write_public(&paths.ca_cert(), cert.der()).map_err(io(&paths.ca_cert()))?;
        fsync_dir(paths.dir(), faults).map_err(io(paths.dir()))?;
        let ca = FleetCa { paths, cert: cert.der().clone(), key };
        ca.write_crl(now_secs, faults)?;
        Ok(true)
    }

    /// The CA under `data_dir`, with its key.
    pub fn open(data_dir: &Path) -> Result<FleetCa, FleetError> {
        let paths = FleetPaths::new(data_dir);
        if !paths.ca_cert().exists() && !paths.ca_key().exists() {
            return Err(FleetError::NoCa(paths.dir().to_path_buf()));
        }
        let read = |path: PathBuf| fs::read(&path).map_err(|source| FleetError::Io { path, source });
        let cert = CertificateDer::from(read(paths.ca_cert())?);
        let key_der = PrivatePkcs8KeyDer::from(read(paths.ca_key())?);
        let key = KeyPair::try_from(&key_der)?;
        Ok(FleetCa { paths, cert, key })
    }

    /// The CA's certificate: what the server trusts.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Issues `scope` a certificate good for `valid_days` from `now_secs`
    /// and writes it with its new key to `out` (which must not hold one).
    pub fn enroll(
        &self,
        scope: &GatewayScope,
        valid_days: u32,
        now_secs: i64,
        out: &Path,
        faults: &Faults,
    ) -> Result<Enrolled, FleetError> {
        let (cert_file, key_file) = (out.join(GATEWAY_CERT_FILE), out.join(GATEWAY_KEY_FILE));
        if cert_file.exists() || key_file.exists() {
            return Err(FleetError::Write {
                path: out.to_path_buf(),
                reason: "it already holds a gateway's credentials; revoke them and remove the directory, or \
                         enrol into another one"
                    .into(),
            });
        }
        let _one_at_a_time = self.lock()?;
        let serial = random_serial()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, scope.gateway_id());
        params.subject_alt_names = scope
            .validator_prefixes()
            .iter()
            .map(|prefix| Ok(SanType::URI(format!("{VALIDATORS_URI_PREFIX}{prefix}").try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        params.not_before = date(now_secs - CLOCK_SKEW_DAYS * SECS_PER_DAY)?;
        params.not_after = date(now_secs + i64::from(valid_days) * SECS_PER_DAY)?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        let serial = hex::encode(serial);
        let issued = self.paths.issued();
        fs::create_dir_all(&issued).map_err(io(&issued))?;
        let issued_file = issued.join(format!("{serial}.der"));
        write_public(&issued_file, cert.der()).map_err(io(&issued_file))?;
        fsync_dir(&issued, faults).map_err(io(&issued))?;
        fs::create_dir_all(out).map_err(io(out))?;
        write_private(&key_file, &key.serialize_der()).map_err(io(&key_file))?;
        write_public(&cert_file, cert.der()).map_err(io(&cert_file))?;
        fsync_dir(out, faults).map_err(io(out))?;
        let credentials =
            GatewayCredentials { cert: cert.der().clone(), key: PrivatePkcs8KeyDer::from(key.serialize_der()) };
        Ok(Enrolled { scope: scope.clone(), serial, credentials, dir: out.to_path_buf() })
    }

    /// The credentials this data dir's CA enrolled for `scope`'s gateway
    /// under `fleet/gateways/NAME`, enrolling it there first when it has
    /// none: how `demo`, `simulate`, `flood` and the tests get their
    /// gateways, so the embedded default needs no setup. (An operator
    /// enrols with `farestream gateway enroll`, which never reuses.)
    pub fn enrolled_here(
        data_dir: &Path,
        scope: &GatewayScope,
        valid_days: u32,
        now_secs: i64,
    ) -> Result<GatewayCredentials, FleetError> {
        let dir = FleetPaths::new(data_dir).gateway(scope.gateway_id());
        if dir.join(GATEWAY_CERT_FILE).exists() {
            let unusable = |reason: String| FleetError::Certificate { what: dir.display().to_string(), reason };
            let credentials = GatewayCredentials::read(&dir).map_err(|e| unusable(e.to_string()))?;
            let enrolled = super::PeerGateway::from_cert(&credentials.cert)?;
            if &enrolled.scope != scope {
                return Err(unusable(format!(
                    "it was enrolled for validators {:?}, not {:?}; remove the directory to enrol again",
                    enrolled.scope.validator_prefixes(),
                    scope.validator_prefixes()
                )));
            }
            if enrolled.not_after_secs <= now_secs {
                return Err(unusable("its certificate has run out; remove the directory to enrol again".into()));
            }
            return Ok(credentials);
        }
        let ca = FleetCa::open(data_dir)?;
        Ok(ca.enroll(scope, valid_days, now_secs, &dir, &Faults::default())?.credentials)
    }

    /// Revokes every certificate issued to `gateway_id` that is not revoked
    /// yet and rewrites the revocation list; the serials revoked. A running
    /// server closes their connections when it next reads the list.
    pub fn revoke(&self, gateway_id: &str, now_secs: i64, faults: &Faults) -> Result<Vec<String>, FleetError> {
        let _one_at_a_time = self.lock()?;
        let revoked_dir = self.paths.revoked();
        fs::create_dir_all(&revoked_dir).map_err(io(&revoked_dir))?;
        let issued_to_it: Vec<String> = self
            .issued()?
            .into_iter()
            .filter(|(_, issued_to)| issued_to.scope.gateway_id() == gateway_id)
            .map(|(serial, _)| serial)
            .collect();
        if issued_to_it.is_empty() {
            return Err(FleetError::NotEnrolled(gateway_id.to_string()));
        }
        let mut revoked = Vec::new();
        for serial in issued_to_it {
            let marker = revoked_dir.join(&serial);
            if !marker.exists() {
                fs::write(&marker, now_secs.to_string()).map_err(io(&marker))?;
                revoked.push(serial);
            }
        }
        fsync_dir(&revoked_dir, faults).map_err(io(&revoked_dir))?;
        self.write_crl(now_secs, faults)?;
        Ok(revoked)
    }

    /// Every certificate issued here, by serial (hex), oldest serial order.
    pub fn issued(&self) -> Result<Vec<(String, super::PeerGateway)>, FleetError> {
        let dir = self.paths.issued();
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(Vec::new()) };
        let mut issued = Vec::new();
        for entry in entries {
            let path = entry.map_err(io(&dir))?.path();
            let Some(serial) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
            let der = CertificateDer::from(fs::read(&path).map_err(io(&path))?);
            issued.push((serial, super::PeerGateway::from_cert(&der)?));
        }
        issued.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(issued)
    }

    /// Rewrites `crl.der` from `revoked/`, durably (the old list or the
    /// new one, never a part).
    fn write_crl(&self, now_secs: i64, faults: &Faults) -> Result<(), FleetError> {
        let revoked_dir = self.paths.revoked();
        let mut revoked_certs = Vec::new();
        if let Ok(entries) = fs::read_dir(&revoked_dir) {
            for entry in entries {
                let path = entry.map_err(io(&revoked_dir))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let Ok(serial) = hex::decode(name) else { continue };
                let when = fs::read_to_string(&path).map_err(io(&path))?.trim().parse::<i64>().unwrap_or(now_secs);
                revoked_certs.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: date(when)?,
                    reason_code: Some(RevocationReason::CessationOfOperation),
                    invalidity_date: None,
                });
            }
        }
        let params = CertificateRevocationListParams {
            this_update: date(now_secs)?,
            next_update: date(now_secs + CRL_VALID_DAYS * SECS_PER_DAY)?,
            crl_number: SerialNumber::from(u64::try_from(now_secs).unwrap_or(0)),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        let path = self.paths.crl();
        crate::archive::checkpoint::replace_durably(&path, self.paths.dir(), crl.der(), faults)
            .map_err(|e| FleetError::Write { path: path.clone(), reason: e.to_string() })
    }

    /// `fleet/LOCK`, held while an enrolment or a revocation writes: two
    /// revocations at once would each rewrite the list without the other's
    /// entry. Released when the file is dropped (or the process ends).
    fn lock(&self) -> Result<fs::File, FleetError> {
        let path = self.paths.dir().join("LOCK");
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(file)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, FleetError> {
        Ok(Issuer::from_ca_cert_der(&self.cert, &self.key)?)
    }
}

/// 16 random bytes, positive and without a leading zero byte, so the DER
/// integer's bytes are these bytes (the revocation list's too).
fn random_serial() -> Result<[u8; 16], FleetError> {
    let seed = crate::keystore::random_seed()
        .map_err(|e| FleetError::Certificate { what: "serial".into(), reason: e.to_string() })?;
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&seed[..16]);
    serial[0] = (serial[0] & 0x7f).max(1);
    Ok(serial)
}

fn date(unix_secs: i64) -> Result<OffsetDateTime, FleetError> {
    OffsetDateTime::from_unix_timestamp(unix_secs)
        .map_err(|e| FleetError::Certificate { what: "date".into(), reason: e.to_string() })
}
