//! `farestream gateway …` and `farestream keys ca`: the fleet CA from the
//! command line. They work beside a running server (they take no data-dir
//! lock): a revocation reaches it within `fleet.revocation_check_interval_ms`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use farestream::clock_source::{Clock, SystemClock};
use farestream::config::Config;
use farestream::faults::Faults;
use farestream::fleet::GatewayScope;
use farestream::fleet_ca::{FleetCa, FleetPaths, RevocationList};

#[derive(Subcommand)]
pub(crate) enum GatewayAction {
    /// Issue a gateway its certificate and key from the fleet CA.
    Enroll {
        /// The gateway's id: what its batches say in `gateway_id`
        /// (letters, digits, `.`, `_`, `-`; at most 128 bytes).
        name: String,
        /// A prefix of the validator ids behind this gateway; repeat it for
        /// several. A scan from any other validator is refused
        /// (`foreign_validator`). Defaults to `NAME/`; `""` speaks for every
        /// validator (a warning says so).
        #[arg(long = "validators", value_name = "PREFIX")]
        validator_prefixes: Vec<String>,
        /// Where to write `cert.der` and `key.der` (defaults to
        /// DATA_DIR/fleet/gateways/NAME). Give the gateway this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke every certificate issued to a gateway: a running server
    /// refuses it and closes its connections.
    Revoke { name: String },
    /// List the certificates issued, and which are revoked.
    List,
}

pub(crate) fn gateway(data_dir: &Path, config: &Config, action: GatewayAction) -> Result<()> {
    let now_secs = SystemClock.now_ms() / 1000;
    let faults = Faults::default();
    let ca = FleetCa::open(data_dir)?;
    match action {
        GatewayAction::Enroll { name, validator_prefixes, out } => {
            let scope = if validator_prefixes.is_empty() {
                GatewayScope::default_for(&name)?
            } else {
                GatewayScope::new(&name, validator_prefixes)?
            };
            if scope.speaks_for("") {
                eprintln!("warning: gateway {name} speaks for every validator (an empty --validators prefix)");
            }
            let out = out.unwrap_or_else(|| FleetPaths::new(data_dir).gateway(&name));
            let valid_days = config.fleet.gateway_cert_valid_days;
            let enrolled = ca.enroll(&scope, valid_days, now_secs, &out, &faults)?;
            println!(
                "gateway {name} enrolled: certificate {} (serial {}, good for {valid_days} days), validators {:?}",
                enrolled.dir.join("cert.der").display(),
                enrolled.serial,
                scope.validator_prefixes()
            );
            let server_cert = farestream::tls_identity::cert_path(data_dir);
            println!(
                "give the gateway {} and the server certificate {}",
                enrolled.dir.display(),
                server_cert.display()
            );
        }
        GatewayAction::Revoke { name } => {
            let revoked = ca.revoke(&name, now_secs, &faults)?;
            println!("gateway {name}: {} certificate(s) revoked {revoked:?}", revoked.len());
        }
        GatewayAction::List => list(data_dir, &ca)?,
    }
    Ok(())
}

/// `keys ca`: the fleet CA, made on first use.
pub(crate) fn show_ca(data_dir: &Path) -> Result<()> {
    let made = FleetCa::create_if_absent(data_dir, SystemClock.now_ms() / 1000, &Faults::default())?;
    let paths = FleetPaths::new(data_dir);
    let list = RevocationList::read(data_dir).context("the fleet CA")?;
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, list.ca_cert());
    println!(
        "fleet CA {}{}\n  certificate {} (SHA-256 {})\n  key {}\n  revocation list {} ({} revoked)",
        paths.dir().display(),
        if made { " (made now)" } else { "" },
        paths.ca_cert().display(),
        hex::encode(fingerprint.as_ref()),
        paths.ca_key().display(),
        paths.crl().display(),
        list.revoked()
    );
    Ok(())
}

fn list(data_dir: &Path, ca: &FleetCa) -> Result<()> {
    let revocations = RevocationList::read(data_dir)?;
    println!("{:<34}  {:<24}  {:<8}  validators", "serial", "gateway", "status");
    for (serial, gateway) in ca.issued()? {
        let status = if revocations.is_revoked(&gateway.serial) { "revoked" } else { "valid" };
        println!(
            "{serial:<34}  {:<24}  {status:<8}  {:?}",
            gateway.scope.gateway_id(),
            gateway.scope.validator_prefixes()
        );
    }
    Ok(())
}
