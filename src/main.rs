//! The `farestream` command line: glue only; the work lives in the library.

mod fleet_cmd;
mod keys_cmd;
mod money_cmd;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use farestream::api::{ApiSettings, ApiState};
use farestream::clock_source::{Clock, SystemClock};
use farestream::config::Config;
use farestream::demo::{DemoOptions, run_demo};
use farestream::money::outbox;
use farestream::server::Assembly;
use farestream::settle::{ArchiveSettlement, settle_settings};
use farestream::sim::archive_day::{ArchiveDaySpec, write_archive_day};
use farestream::sim::{AccountsRig, CitySpec, Load};
use farestream::tls_identity::{NewIdentity, cert_path};
use farestream_analytics::query::{OutputFormat, run_query};
use farestream_analytics::settle::settle_day;
use farestream_analytics::tables::ArchiveSource;
use farestream_core::cluster::archive_location::ArchiveLocation;

#[derive(Parser)]
#[command(name = "farestream", version, about = "Ingestion back end for pay-later transit ride codes")]
struct Cli {
    /// Where keys, the TLS certificate and the archive live.
    #[arg(long, global = true, default_value = "./data")]
    data_dir: PathBuf,
    /// A TOML file overriding config/farestream.toml, key by key.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingestion server (makes keys, certificate and data dir on first start).
    Serve {
        /// Overrides server.listen_addr.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Make a new TLS certificate and key even though this data dir
        /// had one: every gateway must then pin the new certificate.
        #[arg(long)]
        new_tls_identity: bool,
    },
    /// Manage issuer keys and the fleet CA.
    Keys {
        #[command(subcommand)]
        action: keys_cmd::KeysAction,
    },
    /// Enrol, revoke and list fleet gateways (mutual TLS).
    Gateway {
        #[command(subcommand)]
        action: fleet_cmd::GatewayAction,
    },
    /// Push a simulated fleet's traffic at a running server.
    Simulate {
        /// The server's QUIC address.
        #[arg(long, default_value = "127.0.0.1:4433")]
        server: SocketAddr,
        /// Another node of a cluster (repeat for each): a gateway whose
        /// push to one node failed pushes to the next.
        #[arg(long, value_name = "ADDR")]
        also_server: Vec<SocketAddr>,
        #[command(flatten)]
        city: CityArgs,
        /// Seconds over which the scans are spread.
        #[arg(long, default_value_t = 30.0, value_parser = within(0.1, 86_400.0))]
        duration_secs: f64,
        /// Send everything at once, as a fleet back from hours offline:
        /// batches are built first, then pushed back to back; prints the
        /// drain rate.
        #[arg(long)]
        backlog: bool,
        /// Riders show version-1 codes instead of sealed ones (what the
        /// fleet sent before version 2; to measure what sealing costs).
        #[arg(long)]
        unsealed: bool,
        /// Scans per batch (defaults to wire.batch_scans_max, and at most that).
        #[arg(long, value_parser = within(1usize, 100_000))]
        batch_scans: Option<usize>,
        /// Write the scan_id of every acknowledged scan here, one per line
        /// (for `audit`).
        #[arg(long)]
        acked_file: Option<PathBuf>,
        /// Riders sign up through the server's account API first and ride
        /// on the keys it issues (needs api.listen_addr,
        /// api.notifications_file and payments.gateway_url in the config);
        /// without it they sign their own credentials with the data dir's
        /// issuer key and have no accounts to charge.
        #[arg(long, requires = "paygw_dir")]
        accounts: bool,
        /// With --accounts: the data dir of the `farestream paygw` playing
        /// the riders' banks, whose control token tops their balances up.
        #[arg(long)]
        paygw_dir: Option<PathBuf>,
    },
    /// A hostile gateway: batches built to cost the server the most CPU,
    /// pushed as fast as its streams allow, for a bounded time (run it
    /// beside `simulate` to see what honest gateways suffer).
    Flood {
        /// The server's QUIC address.
        #[arg(long, default_value = "127.0.0.1:4433")]
        server: SocketAddr,
        #[arg(long, value_enum, default_value = "bad-issuer-and-user")]
        kind: farestream::sim::FloodKind,
        /// Scans per batch (at most wire.batch_scans_max).
        #[arg(long, default_value_t = 2_048, value_parser = within(1usize, 100_000))]
        batch_scans: usize,
        /// Pushes in flight at once (defaults to server.streams_per_connection_max).
        #[arg(long, value_parser = within(1usize, 1_024))]
        streams: Option<usize>,
        #[arg(long, default_value_t = 20.0, value_parser = within(0.1, 3_600.0))]
        duration_secs: f64,
    },
    /// An operator's load generator: sign a city's scans ahead
    /// (`prepare`), then push them at a running server open loop at a
    /// fixed rate or as fast as acks allow (`run`).
    Loadgen {
        #[command(subcommand)]
        action: LoadgenAction,
    },
    /// Check the archive against the scans a gateway saw acknowledged:
    /// every acked scan archived, none twice.
    Audit {
        /// A file of scan_ids, one per line, each with the status planned
        /// for it, as `simulate --acked-file` writes.
        #[arg(long)]
        acked_file: PathBuf,
        /// The data dir of the `farestream paygw` the server charged: its
        /// ledger is checked against the charges.
        #[arg(long)]
        paygw_dir: Option<PathBuf>,
        /// The most charges that may still be undecided (pending or
        /// failed): more fails the audit. 0, the default, asks that every
        /// charge was decided.
        #[arg(long, default_value_t = 0)]
        undecided_max: u64,
    },
    /// The charges outbox at a glance: how many charges, how many not yet
    /// decided, how many rides wait for a metro exit.
    Charges,
    /// The money store: move it to PostgreSQL.
    Money {
        #[command(subcommand)]
        action: money_cmd::MoneyAction,
    },
    /// SQL over the Parquet archives (docs/analytics.md): tables scans,
    /// charges, settlements, settlement_routes, settlement_runs and
    /// settlement_files. A statement DataFusion refuses exits with code 2.
    Query {
        /// One SQL statement.
        sql: String,
        /// table (aligned, for a terminal), csv, json (one object per
        /// line) or parquet (for a file or a pipe).
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json", "parquet"])]
        format: String,
    },
    /// The daily settlement of one service day (docs/analytics.md): writes
    /// the settlement tables and an HTML report, prints the headline. Exits
    /// with code 3 when the reconciliation finds a break.
    Settle {
        /// The service day, YYYY-MM-DD (1970-01-01 to 9999-12-31).
        #[arg(long, value_parser = service_date)]
        date: chrono::NaiveDate,
    },
    /// Writes a generated service day straight into the archive formats
    /// (scans, charges, the account store's arrears and positions), for the
    /// settlement benchmark (scripts/settle-bench.sh). The data dir must
    /// have no archive yet.
    GenArchive {
        /// The day is built in memory first, about 600 bytes a scan: the
        /// most, 25 million, needs some 15 GiB.
        #[arg(long, default_value_t = 1_000_000, value_parser = within(1u64, 25_000_000))]
        scans: u64,
        /// The service day, YYYY-MM-DD (1970-01-01 to 9999-12-31).
        #[arg(long, value_parser = service_date)]
        date: chrono::NaiveDate,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Riders whose debits are declined.
        #[arg(long, default_value_t = 1.0, value_parser = within(0.0, 100.0))]
        declined_percent: f64,
        /// Also write the rows in the previous encoding (Snappy, a
        /// dictionary on every column) and without bloom filters, and
        /// print each size and write time against the chosen encoding's.
        #[arg(long)]
        compare_baseline: bool,
    },
    /// A simulated payment gateway (docs/payment-gateway.md) for load runs
    /// and crash tests: balances and its ledger live under --data-dir.
    Paygw {
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: SocketAddr,
    },
    /// Run a server and a simulated city in one process: one service day in about a minute.
    Demo {
        #[command(flatten)]
        city: CityArgs,
        /// Wall seconds the service day is compressed into.
        #[arg(long, default_value_t = 45.0, value_parser = within(1.0, 3_600.0))]
        day_secs: f64,
    },
}

#[derive(Subcommand)]
enum LoadgenAction {
    /// Sign a city's day of scans with the data dir's keys (read at the
    /// gates over the last ten minutes, a city's mix of replays, forged
    /// and stale codes) and write them, cut into batches, to a file. A run
    /// must follow within ingest.accepted_lateness_secs, against a server
    /// that has not seen them (it drops re-deliveries).
    Prepare {
        /// Where to write the batches.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        city: CityArgs,
        /// Scans per batch, at most wire.batch_scans_max: a gateway's
        /// upload of its validators' last few seconds in a busy city.
        #[arg(long, default_value_t = 500, value_parser = within(1usize, 100_000))]
        batch_scans: usize,
        /// Version-1 codes instead of sealed ones.
        #[arg(long)]
        unsealed: bool,
    },
    /// The ceiling a run is measured against: the core pipeline alone
    /// (codes, signatures in the server's batch equations, the indexes) over
    /// a prepared file, no network, log or archive; run it on the server's
    /// cores (`scripts/bench.sh` does).
    Ceiling {
        /// The file `loadgen prepare` wrote.
        #[arg(long)]
        file: PathBuf,
    },
    /// Fill the dedup indexes with a horizon of scans, as a server
    /// remembers them, and report the resident bytes each costs per scan
    /// (no server, no keys: synthetic fingerprints and ride codes).
    Horizon {
        /// Scans remembered: a city's scans a day times the days of the
        /// horizon (the accepted lateness and the windows, about 3).
        #[arg(long, default_value_t = 10_000_000, value_parser = within(1u64, 1_000_000_000))]
        scans: u64,
    },
    /// Push a prepared file at a running server, one connection per
    /// gateway in it.
    Run {
        /// The server's QUIC address.
        #[arg(long, default_value = "127.0.0.1:4433")]
        server: SocketAddr,
        /// Another node of a cluster (repeat for each): a gateway whose
        /// push to one node failed pushes to the next.
        #[arg(long, value_name = "ADDR")]
        also_server: Vec<SocketAddr>,
        /// The file `loadgen prepare` wrote.
        #[arg(long)]
        file: PathBuf,
        /// Open loop: offer this many scans a second, whatever the acks
        /// do, and measure latency from when each batch was due. Without
        /// it: as fast as acks allow.
        #[arg(long, value_parser = within(1.0, 10_000_000.0))]
        rate: Option<f64>,
        /// Pushes open at once on each connection (defaults to
        /// server.streams_per_connection_max).
        #[arg(long, value_parser = within(1usize, 1_024))]
        in_flight: Option<usize>,
        /// The server's Prometheus page, for its CPU seconds and peak RSS
        /// (http://metrics.listen_addr/metrics).
        #[arg(long)]
        metrics_url: Option<String>,
    },
}

#[derive(clap::Args)]
struct CityArgs {
    #[arg(long, default_value_t = 20_000, value_parser = within(1usize, 10_000_000))]
    riders: usize,
    #[arg(long, default_value_t = 4, value_parser = within(1usize, 1_024))]
    gateways: usize,
    #[arg(long, default_value_t = 16, value_parser = within(1usize, 1_024))]
    validators_per_gateway: usize,
    /// Mean trips per rider per day (a metro trip is two scans).
    #[arg(long, default_value_t = 2.2, value_parser = within(0.1, 20.0))]
    trips_per_rider: f64,
    /// Riders in arrears, on the deny list (demo only: the server must know them).
    #[arg(long, default_value_t = 1.0, value_parser = within(0.0, 100.0))]
    denied_riders_percent: f64,
    /// Batches sent twice, as when an ack is lost.
    #[arg(long, default_value_t = 2.0, value_parser = within(0.0, 100.0))]
    redelivery_percent: f64,
    /// Seed of the simulated city. By default a new one each run, so a
    /// rerun in the same data dir is a new city, not a re-delivery of the
    /// last one (which the server would rightly drop).
    #[arg(long)]
    seed: Option<u64>,
}

/// A command-line number within `[min, max]`: a value outside is refused,
/// naming the range, as config values are; nothing is clamped.
fn within<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |text| match text.parse::<T>() {
        Ok(value) if min <= value && value <= max => Ok(value),
        _ => Err(format!("must be a number from {min} to {max}")),
    }
}

/// A service day on the command line: `YYYY-MM-DD`, years 1970 to 9999
/// (what every reader of the partitions' names can take).
fn service_date(text: &str) -> Result<chrono::NaiveDate, String> {
    let date =
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|e| format!("not a YYYY-MM-DD date: {e}"))?;
    let first = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).ok_or("no 1970")?;
    let last = chrono::NaiveDate::from_ymd_opt(9999, 12, 31).ok_or("no 9999")?;
    if date < first || date > last || text.len() != 10 {
        return Err(format!("must be a date from {first} to {last}, as YYYY-MM-DD"));
    }
    Ok(date)
}

impl CityArgs {
    fn spec(&self) -> CitySpec {
        CitySpec {
            riders: self.riders,
            gateways: self.gateways,
            validators_per_gateway: self.validators_per_gateway,
            trips_per_rider: self.trips_per_rider,
            denied_riders_percent: self.denied_riders_percent,
            redelivery_percent: self.redelivery_percent,
            seed: self.seed.unwrap_or_else(|| SystemClock.now_ms().unsigned_abs()),
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let quiet = matches!(
        cli.command,
        Command::Demo { .. } | Command::Simulate { .. } | Command::Flood { .. } | Command::Loadgen { .. }
    );
    init_logging(if quiet { "warn" } else { "info" });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve { listen, new_tls_identity } => {
            let new = if new_tls_identity { NewIdentity::Replace } else { NewIdentity::OnFirstStart };
            runtime.block_on(serve(&cli.data_dir, config, listen, new))
        }
        Command::Keys { action } => keys_cmd::keys(&cli.data_dir, &config, action),
        Command::Gateway { action } => fleet_cmd::gateway(&cli.data_dir, &config, action),
        Command::Simulate {
            server,
            also_server,
            city,
            duration_secs,
            backlog,
            unsealed,
            batch_scans,
            acked_file,
            accounts,
            paygw_dir,
        } => {
            let batch_scans = batch_scans.unwrap_or(config.wire.batch_scans_max);
            let load = Load { duration_secs, backlog, batch_scans, unsealed };
            let paygw_dir = paygw_dir.as_deref().filter(|_| accounts);
            let rig = paygw_dir.map(|dir| AccountsRig::from_config(&config, dir)).transpose()?;
            let servers = (server, also_server.as_slice());
            runtime.block_on(simulate(&cli.data_dir, config, servers, city, load, rig, acked_file.as_deref()))
        }
        Command::Flood { server, kind, batch_scans, streams, duration_secs } => {
            if batch_scans > config.wire.batch_scans_max {
                bail!("--batch-scans {batch_scans} is over wire.batch_scans_max ({})", config.wire.batch_scans_max);
            }
            let settings = farestream::sim::FloodSettings {
                kind,
                batch_scans,
                streams: streams.unwrap_or(config.server.streams_per_connection_max as usize),
                duration: Duration::try_from_secs_f64(duration_secs).context("--duration-secs")?,
            };
            runtime.block_on(flood(&cli.data_dir, config, server, settings))
        }
        Command::Loadgen { action } => runtime.block_on(loadgen(&cli.data_dir, config, action)),
        Command::Audit { acked_file, paygw_dir, undecided_max } => {
            let archive = ArchiveSource::open(
                &archive_location(&cli.data_dir, &config)?,
                &config.cluster.object_store_settings(),
            )?;
            let rows = runtime.block_on(archive.all_scans()).context("reading the archive's scans")?;
            audit(&cli.data_dir, &config, (&rows, &acked_file), (paygw_dir.as_deref(), undecided_max))
        }
        Command::Charges => charges(&cli.data_dir, &config),
        Command::Money { action } => money_cmd::money(&cli.data_dir, &config, action),
        Command::GenArchive { scans, date, seed, declined_percent, compare_baseline } => {
            let spec = ArchiveDaySpec {
                scans,
                date,
                seed,
                declined_percent,
                row_group_rows_max: config.archive.row_group_rows_max,
                file_bytes_max: config.archive.file_bytes_max,
                compare_baseline,
            };
            gen_archive(&cli.data_dir, &config, &spec)
        }
        Command::Query { sql, format } => runtime.block_on(query(&cli.data_dir, &config, &sql, &format)),
        Command::Settle { date } => runtime.block_on(settle(&cli.data_dir, &config, date)),
        Command::Paygw { listen } => runtime.block_on(paygw(&cli.data_dir, &config, listen)),
        Command::Demo { city, day_secs } => runtime.block_on(demo(cli.data_dir, config, city, day_secs)),
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn serve(data_dir: &Path, config: Config, listen: Option<SocketAddr>, new: NewIdentity) -> Result<()> {
    refuse_demo_payments_secret(&config)?;
    let mut assembly = Assembly::open(&config, data_dir, new)?;
    if let Some(listen) = listen {
        assembly = assembly.listen_on(listen);
    }
    if config.settlement.cut_over_enabled {
        assembly = assembly.with_daily_settlement(Arc::new(ArchiveSettlement::new(&config, data_dir)?));
        println!(
            "daily cut-over: {} min after each service day ends (settlement.cut_over_delay_minutes)",
            config.settlement.cut_over_delay_minutes
        );
    }
    if !config.metrics.listen_addr.is_empty() {
        let addr: SocketAddr = config.metrics.listen_addr.parse().context("metrics.listen_addr")?;
        farestream::telemetry::install_prometheus(addr)
            .map_err(anyhow::Error::msg)
            .context("starting the metrics endpoint")?;
        tracing::info!(%addr, "Prometheus metrics at /metrics");
    }
    let server = assembly.start().await?;
    let api = match ApiSettings::from_config(&config)? {
        Some(settings) => {
            let state =
                ApiState { settings, accounts: server.accounts().clone(), issuer: server.issuer_keys().clone() };
            let api = farestream::api::start(state).await.context("starting the account API")?;
            println!("account API on {}", api.url());
            Some(api)
        }
        None => None,
    };
    let recovery = server.recovery();
    let dedup_from = match recovery.dedup_snapshot {
        Some(loaded) => format!(
            "their snapshot ({} keys) and {} rows of the log's tail",
            loaded.counts.deliveries + loaded.counts.rides,
            recovery.restored_rows
        ),
        None => format!("{} rows of the archive and the log", recovery.restored_rows),
    };
    println!(
        "farestream serving on {} (certificate: {}); recovered log to LSN {}, archive checkpoint {}; dedup indexes from {} in {:.2} s",
        server.local_addr(),
        cert_path(data_dir).display(),
        recovery.wal_end_lsn,
        recovery.checkpoint_lsn,
        dedup_from,
        recovery.dedup_restore.as_secs_f64(),
    );
    let failure = tokio::select! {
        _ = shutdown_signal() => None,
        reason = server.failed() => Some(reason),
    };
    if let Some(reason) = failure {
        // Nothing more is acknowledged; what was acknowledged is in the log,
        // and the next start recovers it.
        bail!("stopped: {reason}");
    }
    println!("shutting down: finishing in-flight batches, flushing the log, closing archive files");
    if let Some(api) = api {
        api.stop().await;
    }
    let report = server.shutdown().await?;
    println!(
        "stopped cleanly: log durable to LSN {}, archived to LSN {}",
        report.wal.durable_lsn, report.archiver.archived_lsn
    );
    Ok(())
}

/// Where the archives are: the data dir's, or in cluster mode the
/// archive every node shares, laid out as a node's own
/// (docs/scale-out.md, "The shared archive"): a folder or a bucket.
fn archive_location(data_dir: &Path, config: &Config) -> Result<ArchiveLocation> {
    Ok(match config.cluster.enabled {
        true => config.cluster.archive_location()?,
        false => ArchiveLocation::Local(data_dir.join("archive")),
    })
}

async fn query(data_dir: &Path, config: &Config, sql: &str, format: &str) -> Result<()> {
    let format = OutputFormat::parse(format).context("--format")?;
    if !data_dir.is_dir() {
        bail!("no data dir at {}: give the --data-dir that serve, demo or settle wrote", data_dir.display());
    }
    let archive = ArchiveSource::open(&archive_location(data_dir, config)?, &config.cluster.object_store_settings())?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let budget = farestream_analytics::tables::MemoryBudget::of(data_dir, &config.settlement);
    let per_core = config.settlement.query_partitions_per_core;
    match run_query(&archive, &budget, per_core, sql, format, &mut out).await {
        Ok(_) => Ok(out.flush()?),
        Err(error) if error.is_bad_query() => {
            eprintln!("query refused: {error}");
            std::process::exit(2);
        }
        Err(error) => Err(error.into()),
    }
}

fn gen_archive(data_dir: &Path, config: &Config, spec: &ArchiveDaySpec) -> Result<()> {
    if data_dir.join("archive").exists() {
        bail!("{} already has an archive; generate into an empty data dir", data_dir.display());
    }
    let settings = settle_settings(config, data_dir)?;
    let report =
        write_archive_day(spec, &settings.fares, &settings.service_day, data_dir).map_err(anyhow::Error::msg)?;
    let mb = |bytes: u64| bytes as f64 / 1_048_576.0;
    let rate = |d: Duration| report.scans as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "generated {}: {} scans of {} riders, {} charges; scans archive {:.1} MiB in {} files, written in {:.1} s ({:.0} scans/s)",
        spec.date,
        report.scans,
        report.riders,
        report.charges,
        mb(report.scan_bytes),
        report.scan_files.len(),
        report.write.as_secs_f64(),
        rate(report.write)
    );
    for other in &report.others {
        println!(
            "encoding {}: {:.1} MiB, written in {:.1} s ({:.0} scans/s); the chosen encoding is {:.2}x its size at {:.2}x its write time",
            other.label,
            mb(other.bytes),
            other.write.as_secs_f64(),
            rate(other.write),
            report.scan_bytes as f64 / other.bytes.max(1) as f64,
            report.write.as_secs_f64() / other.write.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

/// Exit code of `settle` (and `demo`) when the reconciliation finds a break.
const EXIT_RECONCILIATION_BREAK: i32 = 3;

async fn settle(data_dir: &Path, config: &Config, date: chrono::NaiveDate) -> Result<()> {
    let settings = settle_settings(config, data_dir)?;
    let settled =
        settle_day(&settings, date, SystemClock.now_ms()).await.with_context(|| format!("settling {date}"))?;
    print_settled(&settled);
    Ok(())
}

/// The headline, the breaks (the first few) and where the report is; a
/// break ends the process with `EXIT_RECONCILIATION_BREAK`.
fn print_settled(settled: &farestream_analytics::settle::Settled) {
    match &settled.new_run {
        Some(run) => println!("settlement run {} ({}) written for {}", run.run, run.kind, settled.date),
        None => println!("settlement for {}: nothing new since run {}", settled.date, settled.runs.len()),
    }
    println!("{}", settled.headline);
    for b in settled.breaks.iter().take(20) {
        println!("  break: {b}");
    }
    if settled.breaks.len() > 20 {
        println!("  ... and {} more breaks in the report", settled.breaks.len() - 20);
    }
    println!("report: {}", settled.report_path.display());
    if !settled.breaks.is_empty() {
        std::process::exit(EXIT_RECONCILIATION_BREAK);
    }
}

/// A server charging riders through a real gateway must not sign with the
/// demo's secret, which anyone can read in the shipped config: whoever
/// holds it can forge the gateway's answers. The demo runs on it by design.
fn refuse_demo_payments_secret(config: &Config) -> Result<()> {
    if config.payments.gateway_url.is_empty() {
        return Ok(());
    }
    let secret = config.payments_secret()?;
    if secret.is_demo() {
        anyhow::bail!(
            "payments.gateway_url is set and the payments secret is the demo's, which anyone can read: put your \
             gateway's secret in the file named by payments.hmac_secret_file or in {}",
            farestream::config::secret::PAYMENTS_SECRET_ENV
        );
    }
    println!("payments secret from {}", secret.source().describe());
    warn_if_others_can_read(secret.source());
    Ok(())
}

/// A secret file others can read is said at start (not refused: some
/// secret stores mount files 0644 in a private directory).
fn warn_if_others_can_read(source: &farestream::config::secret::SecretSource) {
    #[cfg(unix)]
    if let farestream::config::secret::SecretSource::File(path) = source {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o077 != 0 {
            eprintln!("warning: {} is readable by others (mode {:o}): chmod 600 it", path.display(), mode & 0o777);
        }
    }
}

async fn paygw(data_dir: &Path, config: &Config, listen: SocketAddr) -> Result<()> {
    let secret = config.payments_secret()?;
    let paygw = farestream::paygw::start(data_dir, listen, secret.bytes())
        .await
        .with_context(|| format!("starting the simulated payment gateway on {listen}"))?;
    println!(
        "simulated payment gateway on {} (ledger: {}; payments secret from {}; control token in {})",
        paygw.url(),
        data_dir.join("ledger.jsonl").display(),
        secret.source().describe(),
        data_dir.join(farestream::paygw::CONTROL_TOKEN_FILE).display()
    );
    shutdown_signal().await;
    paygw.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}

async fn simulate(
    data_dir: &Path,
    config: Config,
    (server, also): (SocketAddr, &[SocketAddr]),
    city: CityArgs,
    load: Load,
    accounts: Option<AccountsRig>,
    acked_file: Option<&Path>,
) -> Result<()> {
    // The server's deny list is its own; the simulator cannot predict it.
    let spec = CitySpec { denied_riders_percent: 0.0, ..city.spec() };
    println!("simulating {} gateways, {} riders over {} s at {server}", spec.gateways, spec.riders, load.duration_secs);
    let bar = indicatif::ProgressBar::new(0);
    let report =
        farestream::sim::simulate(data_dir, &config, (server, also), &spec, load, accounts.as_ref(), bar.clone())
            .await?;
    bar.finish_and_clear();
    println!("  {} scans planned", report.scans_planned);
    print!("{}", report.render());
    if let Some(path) = acked_file {
        let acked = farestream::archive::ack_audit::AckedScans::render(&report.fleet.acked_scans);
        std::fs::write(path, acked).with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.fleet.errors.is_empty() {
        bail!("{} gateway error(s)", report.fleet.errors.len());
    }
    Ok(())
}

async fn loadgen(data_dir: &Path, config: Config, action: LoadgenAction) -> Result<()> {
    use farestream::sim::loadgen;
    match action {
        LoadgenAction::Prepare { out, city, batch_scans, unsealed } => {
            let spec = loadgen::PrepareSpec { city: city.spec(), batch_scans, unsealed };
            let bar = progress_bar("signing");
            let started = std::time::Instant::now();
            let batches = loadgen::prepare_batches(data_dir, &config, &spec, &bar)?;
            bar.finish_and_clear();
            let bytes = loadgen::write_scans_file(&out, &batches)?;
            let scans: usize = batches.iter().map(|b| b.scans.len()).sum();
            println!(
                "loadgen prepare: {scans} scans in {} batches, {:.1} MiB, signed in {:.1} s -> {}",
                batches.len(),
                bytes as f64 / 1_048_576.0,
                started.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
        LoadgenAction::Ceiling { file } => {
            let batches = loadgen::read_scans_file(&file, config.wire.frame_bytes_max)?;
            let bar = progress_bar("verified");
            let ceiling = loadgen::measure_ceiling(data_dir, &config, &batches, &bar)?;
            bar.finish_and_clear();
            println!(
                "loadgen ceiling: {} scans, {} signatures checked in {:.2} s on {} rayon threads",
                ceiling.scans,
                ceiling.signatures,
                ceiling.elapsed.as_secs_f64(),
                rayon::current_num_threads()
            );
            println!("ceiling scans_per_sec={:.0}", ceiling.scans_per_sec());
            Ok(())
        }
        LoadgenAction::Horizon { scans } => {
            let bar = progress_bar("remembered");
            let limits = config.dedup_limits();
            let (figures, _index) =
                loadgen::horizon::measure_horizon(scans, limits, &bar).map_err(anyhow::Error::msg)?;
            bar.finish_and_clear();
            print!("{}", figures.render());
            Ok(())
        }
        LoadgenAction::Run { server, also_server, file, rate, in_flight, metrics_url } => {
            let batches = loadgen::read_scans_file(&file, config.wire.frame_bytes_max)?;
            let pace = rate.map_or(loadgen::Pace::AsFastAsAcks, |scans_per_sec| loadgen::Pace::Rate { scans_per_sec });
            let in_flight = in_flight.unwrap_or(config.server.streams_per_connection_max as usize);
            let spec = loadgen::RunSpec { pace, in_flight, metrics_url, other_servers: also_server };
            let bar = progress_bar("acked");
            let report = loadgen::run(data_dir, &config, server, batches, spec, bar.clone()).await?;
            bar.finish_and_clear();
            print!("{}", report.render());
            Ok(())
        }
    }
}

async fn flood(
    data_dir: &Path,
    config: Config,
    server: SocketAddr,
    settings: farestream::sim::FloodSettings,
) -> Result<()> {
    let (keystore, target) = farestream::sim::reach_server(data_dir, &config, server).await?;
    let codes = farestream::sim::hostile_codes(
        settings.kind,
        &keystore.signer_at(SystemClock.now_ms().div_euclid(1000))?,
        settings.batch_scans,
        SystemClock.now_ms(),
    )?;
    let mut gateway_settings = config.gateway_settings(server);
    // A flood does not resend: each push is one attempt.
    gateway_settings.retry_attempts_max = 1;
    let client = target.client(&config, gateway_settings, farestream::sim::FLOOD_GATEWAY)?;
    let started = std::time::Instant::now();
    let report = farestream::sim::run_flood(client, Arc::new(codes), settings.clone()).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "flood {:?}: {} batches ({} scans) acked, {} refused or failed, {:.1} MiB sent in {secs:.1} s ({:.0} scans/s acked)",
        settings.kind,
        report.batches_acked,
        report.scans_acked,
        report.errors,
        report.wire_bytes as f64 / 1_048_576.0,
        report.scans_acked as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Audits the archive's scans `rows` against the acknowledged scans in
/// `acked_file`, and the money store against them and the gateway's ledger.
fn audit(
    data_dir: &Path,
    config: &Config,
    (rows, acked_file): (&[farestream::scan::ArchivedScan], &Path),
    (paygw_dir, undecided_max): (Option<&Path>, u64),
) -> Result<()> {
    let text = std::fs::read_to_string(acked_file).with_context(|| format!("reading {}", acked_file.display()))?;
    let acked = farestream::archive::ack_audit::AckedScans::parse(&text)
        .with_context(|| format!("reading {}", acked_file.display()))?;
    let report = farestream::archive::ack_audit::audit_rows(rows, &acked);
    let location = farestream_server::money_store_location(config, data_dir)?;
    let has_money = match &location {
        farestream::money::StoreLocation::Sqlite(path) => path.exists(),
        farestream::money::StoreLocation::Postgres(_) => true,
    };
    let money = if has_money {
        let mut store = open_money_store(data_dir, config)?;
        let ledger = paygw_dir.map(paygw_ledger).transpose()?;
        Some(farestream::money::money_audit::audit_money(&mut store.db(), rows, ledger.as_deref())?)
    } else {
        None
    };
    match &money {
        Some(money) => println!("{report} {money}"),
        None => println!("{report}"),
    }
    if !report.is_clean() {
        bail!("the archive does not hold every acknowledged scan exactly once, with the statuses planned");
    }
    if money.is_some_and(|m| !m.is_clean()) {
        bail!("a ride was charged twice, left unpriced, or charged otherwise than the gateway's ledger says");
    }
    if let Some(undecided) = money.map(|m| m.undecided).filter(|&n| n > undecided_max) {
        bail!("{undecided} charges are still undecided, more than --undecided-max {undecided_max}");
    }
    Ok(())
}

/// The simulated gateway's ledger, as the audit compares it.
fn paygw_ledger(dir: &Path) -> Result<Vec<farestream::money::money_audit::AppliedPayment>> {
    let entries = farestream::paygw::Ledger::read_entries(dir)
        .with_context(|| format!("reading the ledger in {}", dir.display()))?;
    Ok(entries.iter().filter_map(farestream::paygw::Entry::applied_payment).collect())
}

fn charges(data_dir: &Path, config: &Config) -> Result<()> {
    let mut store = open_money_store(data_dir, config)?;
    let (all, undecided) = (outbox::count(&mut store.db())?, outbox::undecided(&mut store.db())?);
    println!("charges={all} undecided={undecided}");
    Ok(())
}

/// The money store `config` names for `data_dir` (blocking).
fn open_money_store(data_dir: &Path, config: &Config) -> Result<farestream::money::MoneyStore> {
    let wait = Duration::from_millis(config.payments.store_busy_wait_ms);
    let location = farestream_server::money_store_location(config, data_dir)?;
    Ok(farestream::money::MoneyStore::open(&location, wait)?)
}

async fn demo(data_dir: PathBuf, config: Config, city: CityArgs, day_secs: f64) -> Result<()> {
    let options = DemoOptions { data_dir, config, city: city.spec(), day_secs, show_progress: true };
    let settings = settle_settings(&options.config, &options.data_dir)?;
    let earlier = holds_an_archive(&options.data_dir);
    if earlier {
        println!(
            "note: {} already holds an earlier run's archive and accounts; this run adds to them, and the \
             settlement below covers every run's scans of the day (remove it, or pass --data-dir, for a fresh day)\n",
            options.data_dir.display()
        );
    }
    let summary = run_demo(options).await?;
    print!("{}", summary.render());
    if !summary.is_consistent() {
        bail!("the archive does not match the acks; see the table above");
    }
    println!();
    let settled = settle_day(&settings, summary.service_date, SystemClock.now_ms()).await?;
    print_settled(&settled);
    if earlier {
        println!("(the settlement includes the earlier runs' data in {})", settings.data_dir.display());
    }
    Ok(())
}

/// Whether an earlier run left scan files in `data_dir`.
fn holds_an_archive(data_dir: &Path) -> bool {
    farestream::archive::read::archive_files(&farestream::archive::scans_root(data_dir))
        .is_ok_and(|files| !files.is_empty())
}

/// A live progress line: `what`, the count against the total, the rate and
/// what the work last said (loadgen: its p99 so far).
fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let template = format!("{what} {{pos}}/{{len}} scans [{{elapsed_precise}}] {{per_sec}} {{msg}}");
    bar.set_style(
        indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
