//! `farestream simulate`: a simulated fleet pushing real QUIC traffic at a
//! running server, steadily or as a backlog, and what it saw: planned
//! against acknowledged, ack latency, the drain rate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::city::{City, CitySpec, Target, Uploads};
use super::{Balances, FileInbox, FleetReport, RiderApp, Timetable, sign_up_riders};
use crate::clock_source::{Clock, SystemClock};
use crate::config::Config;
use crate::gateway::GatewayError;
use crate::gateway::tls::{ClientTlsError, read_cert};
use crate::keystore::{Keystore, KeystoreError, KeystoreOptions};
use crate::paygw::SimControl;
use crate::ridecode::KeyError;
use crate::scan::ScanStatus;
use crate::tls_identity::cert_path;
use farestream_core::clock::unix_secs_u32;

/// How `simulate` spreads its scans.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Seconds over which the scans are spread (steady load).
    pub duration_secs: f64,
    /// Everything at once, as a fleet back from hours offline.
    pub backlog: bool,
    /// Scans per batch; at most `wire.batch_scans_max`.
    pub batch_scans: usize,
    /// Version-1 codes, as apps showed before they sealed them: the
    /// baseline for what sealing costs.
    pub unsealed: bool,
}

#[derive(Debug, Error)]
pub enum SimulateError {
    #[error("the key store shared with the server: {0}")]
    Keys(#[from] KeystoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the server certificate (start `serve` with the same --data-dir first): {0}")]
    Cert(#[from] ClientTlsError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Target(#[from] super::city::TargetError),
    #[error("{batch_scans} scans per batch is over wire.batch_scans_max ({max})")]
    BatchTooLarge { batch_scans: usize, max: usize },
    #[error("riders with accounts: {0}")]
    Accounts(#[from] super::AppError),
    #[error("--accounts needs {0}")]
    AccountsRig(&'static str),
    #[error("the simulated payment gateway's control token: {0}")]
    PaygwToken(std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("the core pipeline refused a batch: {0}")]
    Pipeline(String),
}

/// Where riders with accounts sign up: the server's account API, the
/// file its notifier writes codes to, and the simulated payment gateway
/// that plays their banks.
#[derive(Debug, Clone)]
pub struct AccountsRig {
    pub api_url: String,
    pub notifications: std::path::PathBuf,
    pub paygw_url: String,
    /// The simulated gateway's data dir: its control token is there.
    pub paygw_dir: std::path::PathBuf,
}

impl AccountsRig {
    /// The rig a server with this config offers.
    pub fn from_config(config: &Config, paygw_dir: &Path) -> Result<AccountsRig, SimulateError> {
        let need = |value: &str, what| if value.is_empty() { Err(SimulateError::AccountsRig(what)) } else { Ok(()) };
        need(&config.api.listen_addr, "api.listen_addr")?;
        need(&config.api.notifications_file, "api.notifications_file (where riders read their codes)")?;
        need(&config.payments.gateway_url, "payments.gateway_url (a farestream paygw playing the riders' banks)")?;
        Ok(AccountsRig {
            api_url: format!("http://{}", config.api.listen_addr),
            notifications: config.api.notifications_file.clone().into(),
            paygw_url: config.payments.gateway_url.clone(),
            paygw_dir: paygw_dir.to_path_buf(),
        })
    }
}

/// What a run saw.
pub struct SimulateReport {
    pub scans_planned: usize,
    pub load: Load,
    pub fleet: FleetReport,
}

/// Runs the city against the server at `server`, with the keys and the
/// certificate of the server's data dir. Says at once when no server
/// answers, rather than after every retry.
pub async fn simulate(
    data_dir: &Path,
    config: &Config,
    (server, also): (SocketAddr, &[SocketAddr]),
    spec: &CitySpec,
    load: Load,
    accounts: Option<&AccountsRig>,
    progress: indicatif::ProgressBar,
) -> Result<SimulateReport, SimulateError> {
    let max = config.wire.batch_scans_max;
    if load.batch_scans > max {
        return Err(SimulateError::BatchTooLarge { batch_scans: load.batch_scans, max });
    }
    if accounts.is_some() && load.backlog {
        // A backlog is scans read before now; keys from the API are valid from now.
        return Err(SimulateError::AccountsRig("a steady load: keys issued now cannot sign scans read earlier"));
    }
    let (keystore, mut target) = reach_server(data_dir, config, server).await?;
    target.other_servers = also.to_vec();
    let now = SystemClock.now_ms();
    let timetable = if load.backlog {
        // Read at the gates over the last ten minutes, all due at once.
        Timetable::Steady { first_ms: now - 600_000, last_ms: now - 60_000 }
    } else {
        Timetable::Steady { first_ms: now + 1_000, last_ms: now + (load.duration_secs * 1000.0) as i64 }
    };
    let mut world = world_for_load(&keystore, spec, config, load.unsealed, now)?;
    if let Some(rig) = accounts {
        let app = RiderApp::new(&rig.api_url, Arc::new(FileInbox::new(rig.notifications.clone())));
        let bank = SimControl::from_data_dir(&rig.paygw_url, &rig.paygw_dir).map_err(SimulateError::PaygwToken)?;
        let balances = Balances {
            deposit_cents: config.payments.deposit_cents,
            ample_cents: 1_000_000,
            short_cents: 0,
            short_every: 0,
        };
        let members = sign_up_riders(&mut world, &app, &bank, balances, &indicatif::ProgressBar::hidden()).await?;
        println!("  {} riders signed up through the account API", members.len());
    }
    let city = City::plan_day(spec, world, timetable);
    let scans_planned = city.plan.len();
    progress.set_length(scans_planned as u64);
    let uploads =
        Uploads { tick: Duration::from_millis(250), batch_scans_max: load.batch_scans, backlog: load.backlog };
    let fleet = city.run(config, &target, Arc::new(SystemClock), uploads, progress).await?;
    Ok(SimulateReport { scans_planned, load, fleet })
}

/// The city's riders with credentials signed by the data dir's issuer key
/// (valid from an hour before `now`), sealing their codes under the
/// terminal key the server hands out now: version 1 when `unsealed`, or
/// if this server has made no terminal key.
pub fn world_for_load(
    keystore: &Keystore,
    spec: &CitySpec,
    config: &Config,
    unsealed: bool,
    now: farestream_core::clock::UnixMillis,
) -> Result<super::World, SimulateError> {
    let valid_from = unix_secs_u32(now - 3_600_000);
    let now_secs = now.div_euclid(1000);
    let (signer, trusted) = (keystore.signer_at(now_secs)?, keystore.schedule_at(now_secs)?.trusted_at(now_secs));
    let mut world = City::world(spec, config, signer, trusted, valid_from)?;
    let terminal = keystore.terminal_schedule_at(now_secs)?;
    if let Some(key) = terminal.handed_out_at(now_secs).filter(|_| !unsealed) {
        world.seal_codes(key.key(), terminal.trusted_at(now_secs));
    }
    Ok(world)
}

/// What a load generator needs from the server's data dir (its issuer keys
/// and the certificate its gateways pin), once a connection to `server`
/// has shown that it answers: a wrong address is reported within
/// `gateway.connect_timeout_ms`, not after every retry of the load.
/// The gateway that checks a server answers before a load starts; it
/// pushes nothing.
const PROBE_GATEWAY: &str = "load-probe";

pub async fn reach_server(
    data_dir: &Path,
    config: &Config,
    server: SocketAddr,
) -> Result<(Keystore, Target), SimulateError> {
    let keystore = Keystore::open(data_dir, KeystoreOptions::from_config(config))?;
    let cert = read_cert(&cert_path(data_dir))?;
    let target = Target { server, other_servers: Vec::new(), cert, data_dir: data_dir.to_path_buf() };
    let probe = target.client(config, config.gateway_settings(server), PROBE_GATEWAY)?;
    probe.connect().await?;
    // Closed, not dropped: a dropped connection holds one of the server's
    // `server.connections_max` slots until its idle timeout, the only one
    // when the limit is 1, and the load's own gateways are then refused.
    probe.close().await;
    Ok((keystore, target))
}

impl SimulateReport {
    /// Planned against acknowledged, status by status, and the timings.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let fleet = &self.fleet;
        out.push_str(&format!("  {:<22}{:>10}{:>10}\n", "status", "planned", "acked"));
        for status in ScanStatus::ALL {
            let get = |m: &std::collections::BTreeMap<_, u64>| m.get(&status).copied().unwrap_or(0);
            out.push_str(&format!("  {:<22}{:>10}{:>10}\n", status.as_str(), get(&fleet.planned), get(&fleet.acked)));
        }
        out.push_str(&format!(
            "  {:<22}{:>10}{:>10}\n",
            "re-delivered", fleet.redelivered_planned, fleet.redelivered_acked
        ));
        out.push_str(&format!(
            "  ack latency: p50 {:.1} ms, p99 {:.1} ms over {} pushes\n",
            fleet.ack_latency_ms(0.5),
            fleet.ack_latency_ms(0.99),
            fleet.ack_latencies_us.len()
        ));
        if self.load.backlog {
            let acked: u64 = fleet.acked.values().sum();
            out.push_str(&format!(
                "  backlog drained: {acked} scans in {:.2} s = {:.0} scans/s\n",
                fleet.drain_secs,
                acked as f64 / fleet.drain_secs.max(1e-9)
            ));
        }
        for error in &fleet.errors {
            out.push_str(&format!("  gateway error: {error}\n"));
        }
        out
    }
}
