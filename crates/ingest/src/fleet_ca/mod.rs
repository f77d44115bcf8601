//! The fleet's certificate authority: who may push scans. `farestream
//! gateway enroll NAME` issues a gateway a certificate naming it (its
//! common name) and the validators behind it (URI names
//! `urn:farestream:validators:PREFIX`); the server accepts only
//! connections with a certificate from this CA that is not on its
//! revocation list, and takes the gateway's id and scope from it.
//!
//! Under `DATA_DIR/fleet/`:
//! - `ca.cert.der`, `ca.key.der`: the CA. The server needs the certificate
//!   only; the key signs enrolments and revocations, and can live on
//!   another machine (docs/security.md).
//! - `crl.der`: the revocation list, signed by the CA. The server reloads
//!   it while it runs and closes the connections of revoked gateways.
//! - `issued/SERIAL.der`: every certificate issued, for revoking by name.
//! - `revoked/SERIAL`: the revocations the list is made from.
//! - `gateways/NAME/{cert,key}.der`: credentials enrolled with no `--out`.

mod authority;
mod identity;
mod revocation;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use authority::{Enrolled, FleetCa};
pub use identity::{PeerGateway, VALIDATORS_URI_PREFIX};
pub use revocation::{RevocationList, client_verifier};

use farestream_core::fleet::FleetNameError;

#[derive(Debug, Error)]
pub enum FleetError {
    #[error("fleet file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("making a fleet certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(transparent)]
    Name(#[from] FleetNameError),
    #[error(
        "no fleet CA under {0}. A data dir's first start makes one; later ones do not, since gateways enrolled \
         with a lost CA would all be refused. Restore it from a backup, or make a new one with `farestream keys ca` \
         and enrol every gateway again"
    )]
    NoCa(PathBuf),
    #[error("the fleet CA under {dir} is incomplete: {missing} is missing. Restore it from a backup")]
    Incomplete { dir: PathBuf, missing: PathBuf },
    #[error("certificate {what}: {reason}")]
    Certificate { what: String, reason: String },
    #[error("no gateway named {0:?} was enrolled here")]
    NotEnrolled(String),
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("TLS verifier: {0}")]
    Verifier(String),
}

/// Where the fleet's files live under a data dir.
#[derive(Debug, Clone)]
pub struct FleetPaths {
    dir: PathBuf,
}

impl FleetPaths {
    pub fn new(data_dir: &Path) -> FleetPaths {
        FleetPaths { dir: data_dir.join("fleet") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.cert.der")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key.der")
    }

    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.der")
    }

    pub fn issued(&self) -> PathBuf {
        self.dir.join("issued")
    }

    pub fn revoked(&self) -> PathBuf {
        self.dir.join("revoked")
    }

    /// Where `gateway enroll NAME` writes NAME's credentials by default.
    pub fn gateway(&self, gateway_id: &str) -> PathBuf {
        self.dir.join("gateways").join(gateway_id)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FleetError + '_ {
    move |source| FleetError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Faults;
    use farestream_core::fleet::GatewayScope;

    /// 2026-12-01.
    const NOW_SECS: i64 = 1_796_083_200;

    fn scope(name: &str, prefixes: &[&str]) -> GatewayScope {
        GatewayScope::new(name, prefixes.iter().map(|p| p.to_string()).collect()).expect("scope")
    }

    fn ca(dir: &Path) -> FleetCa {
        assert!(FleetCa::create_if_absent(dir, NOW_SECS, &Faults::default()).expect("create"));
        FleetCa::open(dir).expect("open")
    }

    #[test]
    fn an_enrolled_certificate_names_its_gateway_validators_and_serial() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ca(dir.path());
        let wanted = scope("depot-7", &["depot-7-", "bus-4"]);
        let out = dir.path().join("out");
        let enrolled = ca.enroll(&wanted, 30, NOW_SECS, &out, &Faults::default()).expect("enrol");
        let read = PeerGateway::from_cert(&enrolled.credentials.cert).expect("read back");
        assert_eq!(read.scope, wanted);
        assert_eq!(hex::encode(&read.serial), enrolled.serial);
        let from_disk = farestream_gateway::tls::GatewayCredentials::read(&out).expect("files");
        assert_eq!(from_disk.cert, enrolled.credentials.cert);
        assert_eq!(ca.issued().expect("issued"), vec![(enrolled.serial.clone(), read)]);
        let again = ca.enroll(&wanted, 30, NOW_SECS, &out, &Faults::default()).expect_err("refused");
        assert!(again.to_string().contains("already holds"), "{again}");
    }

    #[test]
    fn a_revocation_names_every_certificate_of_the_gateway_and_only_those() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ca(dir.path());
        let faults = Faults::default();
        let enrol = |name: &str, out: &str| {
            let out = dir.path().join(out);
            ca.enroll(&scope(name, &[""]), 30, NOW_SECS, &out, &faults).expect("enrol")
        };
        let (first, second, other) = (enrol("depot-1", "a"), enrol("depot-1", "b"), enrol("depot-2", "c"));
        assert_eq!(RevocationList::read(dir.path()).expect("list").revoked(), 0);
        let mut revoked = ca.revoke("depot-1", NOW_SECS + 60, &faults).expect("revoke");
        revoked.sort();
        let mut expected = vec![first.serial.clone(), second.serial.clone()];
        expected.sort();
        assert_eq!(revoked, expected);
        let list = RevocationList::read(dir.path()).expect("list");
        let serial = |e: &Enrolled| hex::decode(&e.serial).expect("hex");
        assert!(list.is_revoked(&serial(&first)) && list.is_revoked(&serial(&second)));
        assert!(!list.is_revoked(&serial(&other)));
        assert_eq!(ca.revoke("depot-1", NOW_SECS + 120, &faults).expect("again"), Vec::<String>::new());
        assert!(matches!(ca.revoke("depot-9", NOW_SECS, &faults), Err(FleetError::NotEnrolled(_))));
    }

    /// A certificate that names no gateway, or one enrolment would refuse,
    /// is an error, never a gateway with a guessed id. (Two common names
    /// are refused too; rcgen cannot write such a certificate to test it.)
    #[test]
    fn a_certificate_that_does_not_name_one_gateway_is_refused() {
        let key = rcgen::KeyPair::generate().expect("key");
        let certificate = |names: &[&str]| {
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            for name in names {
                params.distinguished_name.push(rcgen::DnType::CommonName, *name);
            }
            params.self_signed(&key).expect("cert").der().clone()
        };
        for names in [&[][..], &[""], &["depot 1"], &[&"g".repeat(129)[..]]] {
            assert!(PeerGateway::from_cert(&certificate(names)).is_err(), "{names:?}");
        }
        let longest = "g".repeat(128);
        let read = PeerGateway::from_cert(&certificate(&[&longest])).expect("the longest name");
        assert_eq!(read.scope.gateway_id(), longest);
        assert!(read.scope.validator_prefixes().is_empty(), "no URI names: no validators");
        let garbage = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(PeerGateway::from_cert(&garbage).is_err());
    }

    /// A revocation list that cannot be read (half copied, not a CRL) is
    /// an error: the server keeps the list in force, or refuses to start.
    #[test]
    fn an_unreadable_revocation_list_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        ca(dir.path());
        let crl = FleetPaths::new(dir.path()).crl();
        let whole = std::fs::read(&crl).expect("crl");
        for broken in [Vec::new(), whole[..whole.len() / 2].to_vec(), b"not a CRL".to_vec()] {
            std::fs::write(&crl, &broken).expect("write");
            assert!(matches!(RevocationList::read(dir.path()), Err(FleetError::Certificate { .. })));
        }
        std::fs::remove_file(&crl).expect("remove");
        assert!(matches!(RevocationList::read(dir.path()), Err(FleetError::Io { .. })));
    }

    /// Review: two revocations at once each rewrote the list from what they
    /// had read, and one was lost.
    #[test]
    fn revocations_at_the_same_moment_are_both_on_the_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ca(dir.path());
        let names: Vec<String> = (0..8).map(|n| format!("depot-{n}")).collect();
        for name in &names {
            let out = dir.path().join(name);
            ca.enroll(&scope(name, &[""]), 30, NOW_SECS, &out, &Faults::default()).expect("enrol");
        }
        std::thread::scope(|threads| {
            for name in &names {
                let dir = dir.path();
                threads.spawn(move || {
                    let ca = FleetCa::open(dir).expect("open");
                    ca.revoke(name, NOW_SECS, &Faults::default()).expect("revoke");
                });
            }
        });
        assert_eq!(RevocationList::read(dir.path()).expect("list").revoked(), names.len());
    }

    #[test]
    fn a_ca_is_made_once_and_a_lost_certificate_is_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = ca(dir.path());
        assert!(!FleetCa::create_if_absent(dir.path(), NOW_SECS, &Faults::default()).expect("again"));
        assert_eq!(FleetCa::open(dir.path()).expect("open").cert(), made.cert());
        let paths = FleetPaths::new(dir.path());
        std::fs::remove_file(paths.ca_cert()).expect("lose it");
        let error = FleetCa::create_if_absent(dir.path(), NOW_SECS, &Faults::default()).expect_err("refused");
        assert!(matches!(error, FleetError::Incomplete { .. }), "{error}");
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(FleetCa::open(empty.path()), Err(FleetError::NoCa(_))));
        assert!(matches!(RevocationList::read(empty.path()), Err(FleetError::NoCa(_))));
    }
}
