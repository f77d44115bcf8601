//! `farestream demo`: a server on loopback and a simulated city in one
//! process, running one service day compressed into about a minute. It
//! ends by reading the Parquet files back and setting them beside what the
//! fleet planned and what the server acknowledged, and the charges beside
//! the rides and the simulated payment gateway's ledger (`money`).

mod money_summary;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use indicatif::{ProgressBar, ProgressStyle};
use thiserror::Error;

use crate::api::{ApiSettings, ApiState, HttpHandle};
use crate::archive::{self, ArchiveError};
use crate::clock_source::{Clock, ScaledClock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::keystore::KeystoreError;
use crate::money::notify::{InboxNotifier, Notifier};
use crate::ridecode::KeyError;
use crate::scan::ScanStatus;
use crate::server::{Assembly, Server, ServerError};
use crate::sim::{City, CitySpec, FleetReport, RiderApp, Target, Timetable, Uploads, sign_up_riders};
use crate::tls_identity::{NewIdentity, TlsError};
use farestream_core::clock::unix_secs_u32;

/// Simulated minutes between a gateway's uploads ("about once a minute").
const UPLOAD_INTERVAL_SIM_MS: f64 = 60_000.0;
/// The most one-time codes the demo's city may ask for, from one address
/// and in one minute (the highest `api.otp_sends_*` allow).
const OTP_SENDS_MAX: u32 = 10_000_000;
/// Service runs from 05:00 to 01:00 local time: hours after the day starts.
const FIRST_TRIP_AFTER_DAY_START_MS: i64 = 3_600_000;
const LAST_TRIP_AFTER_DAY_START_MS: i64 = 20 * 3_600_000;
/// The last metro exit comes up to 40 minutes after the last entry.
const LAST_EXIT_MARGIN_MS: i64 = 45 * 60_000;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub config: Config,
    pub city: CitySpec,
    /// Wall seconds the service day is compressed into.
    pub day_secs: f64,
    pub show_progress: bool,
}

#[derive(Debug, Error)]
pub enum DemoError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("the system clock ({0} ms) is outside the dates the demo can simulate")]
    Clock(i64),
    #[error("simulated payment gateway: {0}")]
    Paygw(#[from] std::io::Error),
    #[error("accounts: {0}")]
    Accounts(#[from] crate::money::ServiceError),
    #[error("a rider's app: {0}")]
    App(#[from] crate::sim::AppError),
    #[error("charges: {0}")]
    Charges(String),
    #[error("the server hands out no terminal key at the demo day's start")]
    NoTerminalKey,
}

#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub service_date: NaiveDate,
    pub time_zone: String,
    pub riders: usize,
    pub gateways: usize,
    pub validators: usize,
    pub seed: u64,
    pub fleet: FleetReport,
    pub archived: BTreeMap<ScanStatus, u64>,
    pub files: Vec<PathBuf>,
    pub archive_root: PathBuf,
    pub money: money_summary::MoneySummary,
    pub currency: String,
    /// How long every rider took to sign up, activate and fetch keys over HTTP.
    pub sign_up: Duration,
    /// How long the fleet took to upload the compressed day.
    pub day: Duration,
    pub wall: Duration,
}

pub async fn run_demo(options: DemoOptions) -> Result<DemoSummary, DemoError> {
    let started = Instant::now();
    let mut config = options.config.clone();
    let secret = config.payments_secret()?;
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let paygw = crate::paygw::start(&options.data_dir.join("paygw"), loopback, secret.bytes()).await?;
    config.payments.gateway_url = paygw.url();
    config.api.listen_addr = loopback.to_string();
    // The whole city signs up from this one address within a minute.
    config.api.otp_sends_per_client_per_hour_max = OTP_SENDS_MAX;
    config.api.otp_sends_per_minute_max = OTP_SENDS_MAX;
    let bank = paygw.control().clone();
    let config = &config;
    let assembly = Assembly::open(config, &options.data_dir, NewIdentity::OnFirstStart)?;
    let keystore = assembly.keystore();
    let service_day = config.service_day_policy()?;
    let now_ms = SystemClock.now_ms();
    let (service_date, day_start) = service_day
        .service_date(now_ms)
        .and_then(|today| today.pred_opt())
        .and_then(|yesterday| Some((yesterday, service_day.day_start(yesterday)?)))
        .ok_or(DemoError::Clock(now_ms))?;
    let (first_ms, last_ms) = (day_start + FIRST_TRIP_AFTER_DAY_START_MS, day_start + LAST_TRIP_AFTER_DAY_START_MS);
    let sim_span_ms = (last_ms - first_ms + LAST_EXIT_MARGIN_MS) as f64;
    let speedup = sim_span_ms / (options.day_secs.max(1.0) * 1000.0);
    // The riders' phones and the validators hold the keys in force at the
    // day's start, as they would have fetched them that morning.
    let day_start_secs = day_start.div_euclid(1000);
    let trusted_keys = keystore.schedule_at(day_start_secs)?.trusted_at(day_start_secs);
    let signer = keystore.signer_at(day_start_secs)?;
    let mut world = City::world(&options.city, config, signer, trusted_keys, unix_secs_u32(day_start))?;
    let cert = assembly.identity().cert.clone();
    let currency = assembly.settings().money.pricer.fares.currency.clone();
    let inbox = Arc::new(InboxNotifier::default());
    // The day's compressed clock is held at its start while the riders
    // sign up and fetch their keys, and runs once the day begins.
    let day_clock = Arc::new(ScaledClock::held(first_ms - 60_000, speedup));
    let clock: Arc<dyn Clock> = Arc::clone(&day_clock) as Arc<dyn Clock>;
    let server = assembly
        .listen_on(loopback)
        .with_clock(Arc::clone(&clock))
        .with_notifier(Arc::clone(&inbox) as Arc<dyn Notifier>)
        .start()
        .await?;
    let pipeline = Arc::clone(server.pipeline());
    // The phones seal their codes under the day's terminal key, as the
    // server made it at start and pushes it to the validators.
    let keys_now = server.issuer_keys().now();
    let sealing = keys_now.terminal_handed_out(clock.now_ms().div_euclid(1000)).ok_or(DemoError::NoTerminalKey)?;
    world.seal_codes(sealing.key(), keys_now.terminal_trusted());
    let api = start_api(config, &server).await?;
    let app = RiderApp::new(&api.url(), inbox);

    let signing_up = progress_bar(world.riders.len() as u64, options.show_progress, SIGN_UP_TEMPLATE);
    let sign_up_started = Instant::now();
    let members = sign_up_riders(&mut world, &app, &bank, money_summary::BALANCES, &signing_up).await?;
    let sign_up = sign_up_started.elapsed();
    signing_up.finish_and_clear();
    // Cards reported lost: denied from the start, on every validator.
    for card in &world.denied_cards {
        pipeline.set_denied(*card, true);
    }
    let city = City::plan_day(&options.city, world, Timetable::ServiceDay { first_ms, last_ms });
    day_clock.run();

    let progress = progress_bar(city.plan.len() as u64, options.show_progress, DAY_TEMPLATE);
    let uploads = Uploads {
        tick: Duration::from_secs_f64(UPLOAD_INTERVAL_SIM_MS / speedup / 1000.0),
        batch_scans_max: config.wire.batch_scans_max,
        backlog: false,
    };
    let target =
        Target { server: server.local_addr(), other_servers: Vec::new(), cert, data_dir: options.data_dir.clone() };
    let (validators, gateways) = (city.world.validators.len(), city.world.gateways.len());
    let day_started = Instant::now();
    let fleet = city.run(config, &target, clock, uploads, progress.clone()).await?;
    let day = day_started.elapsed();
    progress.finish_and_clear();
    let settling = progress_bar(0, options.show_progress, "{spinner} settling: {msg}");
    money_summary::settle(&server, &settling).await.map_err(DemoError::Charges)?;
    let after_day = money_summary::after_the_day(&server, &app, &bank, &members).await?;
    money_summary::settle(&server, &settling).await.map_err(DemoError::Charges)?;
    settling.finish_and_clear();

    // This run's files are those covering log records written after start:
    // earlier demos in the same data dir are not counted.
    let first_lsn = server.recovery().wal_end_lsn;
    server.flush_archive().await?;
    let archive_root = archive::scans_root(&options.data_dir);
    let files: Vec<PathBuf> = archive::read::archive_files(&archive_root)?
        .into_iter()
        .filter(|path| archive::parquet_writer::file_lsn_range(path).is_some_and(|(from, _)| from >= first_lsn))
        .collect();
    let mut rows = Vec::new();
    for file in &files {
        rows.extend(archive::read::read_file(file)?);
    }
    let cards: Vec<u64> = members.iter().map(|m| m.session.card_id).collect();
    let money = money_summary::summarize(&server, &bank, &cards, &rows, after_day).await.map_err(DemoError::Charges)?;
    api.stop().await;
    server.shutdown().await?;
    paygw.stop().await;
    Ok(DemoSummary {
        service_date,
        time_zone: config.service_day.time_zone.clone(),
        riders: options.city.riders,
        gateways,
        validators,
        seed: options.city.seed,
        fleet,
        archived: archive::read::count_by_status(&rows),
        files,
        archive_root,
        money,
        currency,
        sign_up,
        day,
        wall: started.elapsed(),
    })
}

/// The account API on loopback, over the demo server's accounts.
async fn start_api(config: &Config, server: &Server) -> Result<HttpHandle, DemoError> {
    let settings = ApiSettings::from_config(config)?.ok_or_else(|| DemoError::Charges("no account API".into()))?;
    let state = ApiState { settings, accounts: server.accounts().clone(), issuer: server.issuer_keys().clone() };
    Ok(crate::api::start(state).await?)
}

const SIGN_UP_TEMPLATE: &str = "{spinner} riders signing up in the app {bar:40} {pos}/{len} ({per_sec}, eta {eta})";
const DAY_TEMPLATE: &str = "{spinner} service day {bar:40} {pos}/{len} scans uploaded ({per_sec}, eta {eta})";

fn progress_bar(len: u64, visible: bool, template: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

impl DemoSummary {
    /// Plan, acks and archive agree status by status, every re-delivery was
    /// recognised, and no gateway gave up.
    pub fn is_consistent(&self) -> bool {
        let statuses_agree = ScanStatus::ALL.iter().all(|s| {
            let planned = self.fleet.planned.get(s).copied().unwrap_or(0);
            planned == self.fleet.acked.get(s).copied().unwrap_or(0)
                && planned == self.archived.get(s).copied().unwrap_or(0)
        });
        statuses_agree
            && self.fleet.redelivered_planned == self.fleet.redelivered_acked
            && self.fleet.errors.is_empty()
            && self.money.is_consistent()
    }

    /// The table printed at the end of the demo.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(
            &mut out,
            format!(
                "farestream demo: service day {} ({}), {} riders, {} gateways, {} validators, seed {}, {:.1} s",
                self.service_date,
                self.time_zone,
                self.riders,
                self.gateways,
                self.validators,
                self.seed,
                self.wall.as_secs_f64()
            ),
        );
        line(&mut out, String::new());
        line(&mut out, format!("  {:<22}{:>10}{:>10}{:>10}", "status", "planned", "acked", "archived"));
        let get = |map: &BTreeMap<ScanStatus, u64>, s: &ScanStatus| map.get(s).copied().unwrap_or(0);
        for status in ScanStatus::ALL {
            let (p, a, r) =
                (get(&self.fleet.planned, &status), get(&self.fleet.acked, &status), get(&self.archived, &status));
            let mark = if p == a && a == r { "" } else { "  <- MISMATCH" };
            line(&mut out, format!("  {:<22}{:>10}{:>10}{:>10}{mark}", status.as_str(), p, a, r));
        }
        let total = |map: &BTreeMap<ScanStatus, u64>| map.values().sum::<u64>();
        line(
            &mut out,
            format!(
                "  {:<22}{:>10}{:>10}{:>10}",
                "total",
                total(&self.fleet.planned),
                total(&self.fleet.acked),
                total(&self.archived)
            ),
        );
        line(
            &mut out,
            format!(
                "  {:<22}{:>10}{:>10}{:>10}  (dropped, no rows)",
                "re-delivered", self.fleet.redelivered_planned, self.fleet.redelivered_acked, 0
            ),
        );
        line(&mut out, String::new());
        let scans = total(&self.fleet.planned);
        line(
            &mut out,
            format!(
                "  gates: {} opened, {} refused offline; {} batches acked, {} connections, {} retries",
                self.fleet.gates_opened,
                self.fleet.gates_refused,
                self.fleet.batches_sent,
                self.fleet.connects,
                self.fleet.retries
            ),
        );
        line(
            &mut out,
            format!(
                "  throughput: {} scans in a {:.1} s day ({:.0} scans/s average, paced by the compressed day)",
                scans,
                self.day.as_secs_f64(),
                scans as f64 / self.day.as_secs_f64().max(0.001)
            ),
        );
        for error in &self.fleet.errors {
            line(&mut out, format!("  gateway error: {error}"));
        }
        line(&mut out, format!("  archive: {} file(s) under {}", self.files.len(), self.archive_root.display()));
        for file in &self.files {
            line(&mut out, format!("           {}", file.display()));
        }
        let list = self.files.iter().map(|f| format!("'{}'", f.display())).collect::<Vec<_>>().join(", ");
        line(
            &mut out,
            format!(
                "  query:   duckdb -c \"SELECT status, count(*) FROM read_parquet([{list}]) GROUP BY ALL ORDER BY 2 DESC\""
            ),
        );
        line(
            &mut out,
            format!(
                "  sign-up: {} riders registered, activated and got their keys over HTTP in {:.1} s",
                self.money.accounts,
                self.sign_up.as_secs_f64()
            ),
        );
        money_summary::render(&self.money, &self.currency, &mut out);
        line(&mut out, String::new());
        line(
            &mut out,
            if self.is_consistent() {
                "  result: OK, plan, acks and archive agree for every status; every ride is charged once".to_string()
            } else {
                "  result: MISMATCH, see the rows marked above".to_string()
            },
        );
        out
    }
}
