//! `farestream loadgen`: an operator's load generator. `prepare` signs a
//! city's scans ahead and writes them, cut into batches, to a file; `run`
//! pushes them at a running server from one connection per gateway, open
//! loop at a fixed rate or as fast as acks allow, with many batches in
//! flight per connection, and reports acked scans/s, ack latency
//! percentiles from when each batch was due (hdrhistogram), errors by
//! kind, and the server's CPU seconds and peak RSS from its own metrics.

pub mod ceiling;
pub mod horizon;
pub mod push;
pub mod scans_file;
pub mod schedule;
pub mod server_metrics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rayon::prelude::*;

use super::city::{City, CitySpec};
use super::load::{SimulateError, reach_server, world_for_load};
use super::plan::Timetable;
use crate::clock_source::{Clock, SystemClock};
use crate::config::Config;
use crate::wire::batching::batch_runs;
use crate::wire::{ScanBatch, ScanRecord};
pub use ceiling::{Ceiling, measure_ceiling};
pub use push::{Connection, RunTally, Scheduled, run_connections};
pub use scans_file::{read_scans_file, write_scans_file};
pub use schedule::{Pace, due_offsets};
pub use server_metrics::{ProcessFigures, ServerFigures, ServerWatch};

/// What `prepare` signs.
#[derive(Debug, Clone)]
pub struct PrepareSpec {
    pub city: CitySpec,
    /// Scans per batch; at most `wire.batch_scans_max`.
    pub batch_scans: usize,
    /// Version-1 codes instead of sealed ones.
    pub unsealed: bool,
}

/// A city's day of scans, read at the gates over the last ten minutes
/// (so a run within `ingest.accepted_lateness_secs` of this finds them
/// on time), signed with the data dir's keys on every core, and cut into
/// each gateway's batches. Sent in the order their first scans were read.
/// Gates say nothing: the server's deny list decides.
pub fn prepare_batches(
    data_dir: &Path,
    config: &Config,
    spec: &PrepareSpec,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<ScanBatch>, SimulateError> {
    let max = config.wire.batch_scans_max;
    if spec.batch_scans > max {
        return Err(SimulateError::BatchTooLarge { batch_scans: spec.batch_scans, max });
    }
    let keystore = crate::keystore::Keystore::open(data_dir, crate::keystore::KeystoreOptions::from_config(config))?;
    let now = SystemClock.now_ms();
    let world = world_for_load(&keystore, &spec.city, config, spec.unsealed, now)?;
    let city = City::plan_day(&spec.city, world, Timetable::Steady { first_ms: now - 600_000, last_ms: now - 60_000 });
    progress.set_length(city.plan.len() as u64);
    let records: Vec<(usize, ScanRecord)> = city
        .plan
        .par_iter()
        .map(|scan| {
            let record = scan.record(&city.world, scan.ride_code(&city.world));
            progress.inc(1);
            (city.world.validators[scan.validator].gateway, record)
        })
        .collect();
    let mut by_gateway: Vec<Vec<ScanRecord>> = vec![Vec::new(); city.world.gateways.len()];
    for (gateway, record) in records {
        by_gateway[gateway].push(record);
    }
    let mut batches: Vec<ScanBatch> = Vec::new();
    for (gateway, scans) in by_gateway.into_iter().enumerate() {
        let gateway_id = &city.world.gateways[gateway].id;
        let runs = batch_runs(gateway_id, &scans, config.wire.frame_bytes_max, spec.batch_scans);
        batches.extend(runs.into_iter().zip(1u64..).map(|(run, batch_seq)| ScanBatch {
            gateway_id: gateway_id.clone(),
            batch_seq,
            scans: scans[run].to_vec(),
        }));
    }
    batches.sort_by_key(|b| (b.scans.first().map_or(i64::MAX, |s| s.validator_time_ms), b.batch_seq));
    Ok(batches)
}

/// How `run` offers its batches.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub pace: Pace,
    /// Pushes open at once on each connection.
    pub in_flight: usize,
    /// The server's Prometheus page, for its CPU seconds and peak RSS.
    pub metrics_url: Option<String>,
    /// A cluster's other nodes: a gateway whose push failed moves on to
    /// the next (docs/scale-out.md).
    pub other_servers: Vec<SocketAddr>,
}

/// What a run saw.
pub struct LoadReport {
    pub connections: usize,
    pub batches: usize,
    pub scans: u64,
    pub spec: RunSpec,
    pub tally: RunTally,
    pub elapsed: Duration,
    pub server: Option<ServerFigures>,
    pub server_error: Option<String>,
}

/// Pushes `batches` at `server` from one connection per gateway.
pub async fn run(
    data_dir: &Path,
    config: &Config,
    server: SocketAddr,
    batches: Vec<ScanBatch>,
    spec: RunSpec,
    progress: indicatif::ProgressBar,
) -> Result<LoadReport, SimulateError> {
    let (_, target) = reach_server(data_dir, config, server).await?;
    let scans: u64 = batches.iter().map(|b| b.scans.len() as u64).sum();
    let sizes: Vec<usize> = batches.iter().map(|b| b.scans.len()).collect();
    let due = due_offsets(&sizes, spec.pace);
    let mut settings = config.gateway_settings(server);
    // Each push is one attempt: a failure is counted by kind, not hidden
    // behind a retry.
    settings.retry_attempts_max = 1;
    settings.other_server_addrs = spec.other_servers.clone();
    let mut connections: BTreeMap<String, Connection> = BTreeMap::new();
    let batch_count = batches.len();
    for (i, batch) in batches.into_iter().enumerate() {
        if !connections.contains_key(&batch.gateway_id) {
            let client = target.client(config, settings.clone(), &batch.gateway_id)?;
            connections.insert(batch.gateway_id.clone(), Connection { client, batches: Vec::new() });
        }
        let connection = connections.get_mut(&batch.gateway_id).expect("inserted above");
        connection.batches.push(Scheduled { due: due.as_ref().map(|d| d[i]), batch });
    }
    let connection_count = connections.len();
    progress.set_length(scans);
    let watch = match spec.metrics_url.clone() {
        Some(url) => Some(ServerWatch::start(url).await),
        None => None,
    };
    let (tally, elapsed) = run_connections(connections.into_values().collect(), spec.in_flight, progress).await;
    let (server, server_error) = match watch {
        Some(Ok(watch)) => match watch.finish().await {
            Ok(figures) => (Some(figures), None),
            Err(error) => (None, Some(error)),
        },
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    Ok(LoadReport {
        connections: connection_count,
        batches: batch_count,
        scans,
        spec,
        tally,
        elapsed,
        server,
        server_error,
    })
}

impl LoadReport {
    /// Acked scans per second, over the run.
    pub fn scans_per_sec(&self) -> f64 {
        self.tally.scans_acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary a person reads, then one `loadgen key=value` line for scripts.
    pub fn render(&self) -> String {
        let t = &self.tally;
        let pace = match self.spec.pace {
            Pace::Rate { scans_per_sec } => format!("open loop at {scans_per_sec:.0} scans/s"),
            Pace::AsFastAsAcks => "as fast as acks allow".to_string(),
        };
        let mut out = format!(
            "loadgen: {} scans in {} batches over {} connections, {pace}, {} in flight each\n",
            self.scans, self.batches, self.connections, self.spec.in_flight
        );
        out.push_str(&format!(
            "  acked    {} scans ({} accepted, {} refused, {} re-deliveries) in {:.2} s = {:.0} scans/s\n",
            t.scans_acked,
            t.accepted,
            t.rejected,
            t.redelivered,
            self.elapsed.as_secs_f64(),
            self.scans_per_sec()
        ));
        out.push_str(&format!(
            "  latency  p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms over {} acks{}\n",
            t.latency_ms(0.5),
            t.latency_ms(0.99),
            t.latency_ms(0.999),
            t.latency_us.max() as f64 / 1_000.0,
            t.latency_us.len(),
            if matches!(self.spec.pace, Pace::Rate { .. }) { " (from when each batch was due)" } else { "" }
        ));
        let errors: u64 = t.errors.values().sum();
        let kinds: Vec<String> = t.errors.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        out.push_str(&format!("  errors   {}\n", if kinds.is_empty() { "none".into() } else { kinds.join(", ") }));
        let s = self.server.unwrap_or(ServerFigures::UNKNOWN);
        let (cpu, lag, pricer_share) = (s.cpu_secs, s.pricer_lag_max_secs, s.pricer_share());
        let caught_up = s.pricing_caught_up_after.map_or(f64::NAN, |d| d.as_secs_f64());
        match (&self.server, &self.server_error) {
            (Some(_), _) => {
                let pricing = match s.pricer_cpu_secs {
                    Some(_) => format!("{:.0} % of it pricing", pricer_share * 100.0),
                    None => "the pricer's share unknown".to_string(),
                };
                out.push_str(&format!(
                    "  server   {cpu:.1} CPU-seconds ({:.2} cores, {pricing}), peak RSS {:.0} MiB\n",
                    cpu / self.elapsed.as_secs_f64().max(1e-9),
                    s.peak_rss_bytes / 1_048_576.0
                ));
                out.push_str(&match s.pricing_caught_up_after {
                    Some(after) => format!(
                        "  pricing  lagged up to {lag:.2} s, everything acked priced {:.2} s after the last ack \
                         ({:.1} CPU-seconds more)\n",
                        after.as_secs_f64(),
                        s.catch_up_cpu_secs
                    ),
                    None => format!("  pricing  lagged up to {lag:.2} s, not seen caught up\n"),
                });
            }
            (None, Some(error)) => out.push_str(&format!("  server   figures unavailable: {error}\n")),
            (None, None) => out.push_str("  server   figures not asked for (--metrics-url)\n"),
        }
        out.push_str(&format!(
            "loadgen scans_per_sec={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} errors={errors} server_cpu_secs={cpu:.2} server_peak_rss_mib={:.1} pricer_cpu_share={pricer_share:.2} pricer_lag_max_secs={lag:.2} pricing_caught_up_secs={caught_up:.2} catch_up_cpu_secs={:.2}\n",
            self.scans_per_sec(),
            t.latency_ms(0.5),
            t.latency_ms(0.99),
            t.latency_ms(0.999),
            s.peak_rss_bytes / 1_048_576.0,
            s.catch_up_cpu_secs
        ));
        out
    }
}
