//! `farestream keys …`: the issuer and terminal keys from the command line.
//! They work beside a running server (the key store has its own lock): a
//! rotation or a retirement reaches it within `keys.reload_interval_ms`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;

use farestream::clock_source::{Clock, SystemClock};
use farestream::config::Config;
use farestream::keystore::{KeyInfo, Keystore, KeystoreError, KeystoreOptions};
use farestream::ridecode::PublishedKey;

#[derive(Subcommand)]
pub(crate) enum KeysAction {
    /// List issuer keys: when each signs, and until when it is trusted.
    List,
    /// Make a new issuer key. It is published (trusted, and pushed to every
    /// connected gateway) at once, and signs new credentials from
    /// `--signs-in-secs` on; the key before it stays trusted until its last
    /// credential and the scans made under it have run out.
    Rotate {
        /// Seconds until the new key signs (default: `keys.signing_lead_secs`).
        /// 0 signs at once: validators that have not synced yet see codes
        /// under a key they do not hold.
        #[arg(long)]
        signs_in_secs: Option<u32>,
    },
    /// Stop trusting an issuer key at once (a leaked key): codes under it
    /// become `unknown_issuer_key`.
    Retire { key_id: u32 },
    /// Emergency rotation of a terminal key (a leaked one): a new key for
    /// the rest of the service day, handed to riders' apps from
    /// `--hands-out-in-secs` on. The leaked key stays trusted until its
    /// riders' codes run out: it exposes what codes say, and lets no one
    /// forge one (docs/security.md).
    RotateTerminal {
        /// Seconds until the account API hands the new key out (default:
        /// `keys.terminal_rotation_lead_secs`). A lead that crosses the
        /// day's end makes the key for the next day.
        #[arg(long)]
        hands_out_in_secs: Option<u32>,
        /// Rotate the next service day's key instead, which gateways hold
        /// a day ahead: the new one is handed out from that day's start
        /// (or the lead, if later), so the leaked one never is.
        #[arg(long, conflicts_with = "hands_out_in_secs")]
        tomorrow: bool,
    },
    /// Print the terminal keys held now, secrets included, one
    /// `ID SERVICE_DATE HANDED_OUT_FROM TRUSTED_UNTIL SECRET_HEX` line each,
    /// for validators loaded by hand, after a `#` line with the version-1
    /// cut-off (`ride_code.version_1_refused_from_date`). Keep the output as
    /// secret as the keys.
    ExportTerminal,
    /// Show the fleet CA that enrols gateways (made on first use).
    Ca,
    /// Print the trusted issuer public keys for validators: PEM
    /// SubjectPublicKeyInfo (what openssl and Python's cryptography read) or
    /// raw hex, one `ID HEX` line each.
    Export {
        #[arg(long, value_enum, default_value = "pem")]
        format: KeyFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum KeyFormat {
    Pem,
    Hex,
}

pub(crate) fn keys(data_dir: &Path, config: &Config, action: KeysAction) -> Result<()> {
    let options = KeystoreOptions::from_config(config);
    let now_ms = SystemClock.now_ms();
    let now_secs = now_ms.div_euclid(1000);
    let policy = config.service_day_policy()?;
    let store = match (Keystore::open(data_dir, options.clone()), action) {
        (_, KeysAction::Ca) => return crate::fleet_cmd::show_ca(data_dir),
        (Ok(store), KeysAction::List) => store,
        (Ok(store), KeysAction::Export { format }) => {
            for key in store.export_public_keys(now_secs)? {
                let status = if key.active { "active" } else { "trusted" };
                match format {
                    KeyFormat::Pem => print!("issuer key {} ({status})\n{}", key.key.key_id, key.pem),
                    KeyFormat::Hex => println!("{} {}", key.key.key_id, hex::encode(key.key.public_key)),
                }
            }
            return Ok(());
        }
        (Ok(mut store), KeysAction::Rotate { signs_in_secs }) => {
            let lead = signs_in_secs.map_or(config.keys.signing_lead_secs, u64::from);
            let signs_from = now_secs.saturating_add(i64::try_from(lead).unwrap_or(i64::MAX));
            let id = store.rotate(now_secs, signs_from)?;
            println!("issuer key {id} published; it signs new credentials from {}", rfc3339(signs_from));
            store
        }
        (Ok(store), KeysAction::ExportTerminal) => {
            // Validators loaded by hand get no push: the cut-off comes with the keys.
            match config.freshness_policy()?.unsealed_refused_from_secs {
                Some(secs) => println!("# version-1 codes refused from {}", rfc3339(i64::from(secs))),
                None => println!("# version-1 codes still read"),
            }
            for key in store.terminal_schedule_at(now_secs)?.held_at(now_secs) {
                let until = key.trusted_until_secs.map_or_else(|| "-".to_string(), rfc3339);
                let (date, from) = (key.service_date, rfc3339(key.handed_out_from_secs));
                println!("{} {date} {from} {until} {}", key.key_id, hex::encode(key.secret));
            }
            return Ok(());
        }
        (Ok(mut store), KeysAction::RotateTerminal { hands_out_in_secs, tomorrow }) => {
            let lead = hands_out_in_secs.map_or(config.keys.terminal_rotation_lead_secs, u64::from);
            let mut from = now_secs.saturating_add(i64::try_from(lead).unwrap_or(i64::MAX));
            if tomorrow {
                let tomorrow = policy.next_day_start(now_ms).context("no service day after now")?;
                from = from.max(tomorrow.div_euclid(1000));
            }
            store.make_day_terminal_keys(&policy, now_ms)?;
            let id = store.rotate_terminal(&policy, now_ms, from)?;
            println!("terminal key {id} made; riders' apps get it from {}", rfc3339(from));
            store
        }
        (Ok(mut store), KeysAction::Retire { key_id }) => {
            store.retire(key_id, now_secs)?;
            println!("issuer key {key_id} retired");
            store
        }
        // On a fresh data dir, the first key is the rotation.
        (Err(KeystoreError::Empty(_)), KeysAction::Rotate { .. }) => {
            let store = Keystore::open_or_create(data_dir, options)?;
            println!("issuer key 1 made; it signs new credentials now");
            store
        }
        (Err(error), _) => return Err(error.into()),
    };
    print_keys(&store, now_secs)?;
    print_terminal_keys(&store, now_secs)
}

fn print_terminal_keys(store: &Keystore, now_secs: i64) -> Result<()> {
    let schedule = store.terminal_schedule_at(now_secs)?;
    let (held, handed_out) = (schedule.held_at(now_secs), schedule.handed_out_at(now_secs).map(|k| k.key_id));
    println!();
    println!(
        "{:>8}  {:<11}  {:<12}  {:<25}  {:<25}",
        "terminal", "state", "service day", "handed out from", "trusted until"
    );
    for key in store.terminal_keys() {
        let listed = held.iter().find(|k| k.key_id == key.id);
        let until = listed.and_then(|k| k.trusted_until_secs).map_or_else(|| "-".to_string(), rfc3339);
        let state = match listed {
            None => "expired",
            Some(k) if handed_out == Some(k.key_id) => "handed out",
            Some(k) if k.handed_out_from_secs > now_secs => "held",
            Some(_) => "superseded",
        };
        println!("{:>8}  {state:<11}  {:<12}  {:<25}  {until:<25}", key.id, key.service_date, key.handed_out_from);
    }
    Ok(())
}

fn print_keys(store: &Keystore, now_secs: i64) -> Result<()> {
    let schedule = store.schedule_at(now_secs)?;
    let (published, signer) = (schedule.published_at(now_secs), schedule.signer_at(now_secs));
    println!("{:>6}  {:<10}  {:<25}  {:<25}  created", "key id", "state", "signs from", "trusted until");
    for key in store.list() {
        let listed = published.iter().find(|p| p.key_id == key.id);
        let signs_from = key.signs_from_secs().map(rfc3339).unwrap_or_else(|e| e);
        let until = listed.and_then(|p| p.trusted_until_secs).map_or_else(|| "-".to_string(), rfc3339);
        let state = state(key, listed, signer, now_secs);
        println!("{:>6}  {state:<10}  {signs_from:<25}  {until:<25}  {}", key.id, key.created_at);
    }
    Ok(())
}

/// Where a key is in its life at `now_secs` (docs/ride-code.md, "Keys"),
/// from its entry among the keys published now, if it has one.
fn state(key: &KeyInfo, published: Option<&PublishedKey>, signer: Option<u32>, now_secs: i64) -> &'static str {
    match published {
        _ if key.retired => "retired",
        _ if signer == Some(key.id) => "signing",
        None => "expired",
        Some(p) if p.signs_from_secs > now_secs => "published",
        Some(_) => "superseded",
    }
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(|| secs.to_string(), |t| t.to_rfc3339())
}
