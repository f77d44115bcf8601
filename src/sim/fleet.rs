//! The simulated fleet at run time: one task per gateway. Every upload
//! interval a gateway collects the scans its validators read since the last
//! upload (each checked at the gate with the same offline check the server
//! uses), pushes them as one batch over QUIC, and tallies the ack. A few
//! batches are sent twice, as when an ack is lost, to exercise re-delivery.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use super::plan::PlannedScan;
use super::world::World;
use crate::clock_source::Clock;
use crate::gateway::{GatewayClient, GatewayError};
use crate::ingest::pipeline::fingerprint;
use crate::ridecode::{DenyList, FreshnessPolicy, check_offline};
use crate::scan::ScanStatus;
use crate::wire::batching::batch_runs;
use crate::wire::{BatchAck, GateDecision, ScanBatch, ScanRecord};
use farestream_core::clock::unix_secs_u32;

#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Wall time between a gateway's uploads.
    pub upload_tick: Duration,
    /// Share of batches sent a second time.
    pub redelivery_percent: f64,
    pub batch_scans_max: usize,
    /// The server's frame limit: batches are cut to fit it as well.
    pub frame_bytes_max: u32,
    pub freshness: FreshnessPolicy,
    pub seed: u64,
    /// Build every batch before sending any, then send them back to back:
    /// a fleet reconnecting with a backlog. The push phase then measures the
    /// server, not the simulator's signing.
    pub backlog: bool,
}

/// What the fleet planned, saw at the gates, and was told by the server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetReport {
    pub planned: BTreeMap<ScanStatus, u64>,
    pub acked: BTreeMap<ScanStatus, u64>,
    /// Scans in batches sent twice: all must come back as re-delivered.
    pub redelivered_planned: u64,
    pub redelivered_acked: u64,
    pub batches_sent: u64,
    pub gates_opened: u64,
    pub gates_refused: u64,
    pub connects: u64,
    pub retries: u64,
    pub errors: Vec<String>,
    /// `scan_id` of every scan in a batch the server acknowledged (what
    /// must be in the archive, exactly once), with the status planned for
    /// it (what the archive must say, counted per status).
    pub acked_scans: Vec<([u8; 16], ScanStatus)>,
    /// Time from sending a batch to holding its OK ack, per push, in µs.
    pub ack_latencies_us: Vec<u64>,
    /// In backlog mode: the longest any gateway took to push its backlog.
    pub drain_secs: f64,
}

impl FleetReport {
    fn merge(&mut self, other: FleetReport) {
        for (status, n) in other.planned {
            *self.planned.entry(status).or_default() += n;
        }
        for (status, n) in other.acked {
            *self.acked.entry(status).or_default() += n;
        }
        self.redelivered_planned += other.redelivered_planned;
        self.redelivered_acked += other.redelivered_acked;
        self.batches_sent += other.batches_sent;
        self.gates_opened += other.gates_opened;
        self.gates_refused += other.gates_refused;
        self.connects += other.connects;
        self.retries += other.retries;
        self.errors.extend(other.errors);
        self.acked_scans.extend(other.acked_scans);
        self.ack_latencies_us.extend(other.ack_latencies_us);
        self.drain_secs = self.drain_secs.max(other.drain_secs);
    }

    /// The `q` quantile (0..=1) of ack latency in milliseconds.
    pub fn ack_latency_ms(&self, q: f64) -> f64 {
        let mut sorted = self.ack_latencies_us.clone();
        sorted.sort_unstable();
        match sorted.len() {
            0 => 0.0,
            n => sorted[((n - 1) as f64 * q).round() as usize] as f64 / 1000.0,
        }
    }

    fn tally_ack(&mut self, ack: &BatchAck) {
        *self.acked.entry(ScanStatus::Accepted).or_default() += u64::from(ack.accepted);
        for rejection in &ack.rejections {
            let status = rejection.scan_status().unwrap_or(ScanStatus::Malformed);
            *self.acked.entry(status).or_default() += 1;
        }
    }

    pub fn planned_total(&self) -> u64 {
        self.planned.values().sum()
    }
}

/// Runs every gateway until its validators' planned scans are all acked.
/// `client` makes one client per gateway.
pub async fn run_fleet(
    world: Arc<World>,
    plan: Arc<Vec<PlannedScan>>,
    clock: Arc<dyn Clock>,
    settings: FleetSettings,
    client: impl Fn(&str) -> Result<GatewayClient, String>,
    progress: ProgressBar,
) -> FleetReport {
    let mut tasks = JoinSet::new();
    let mut report = FleetReport::default();
    let stop = Arc::new(AtomicBool::new(false));
    for gateway in 0..world.gateways.len() {
        let scans: Vec<usize> =
            (0..plan.len()).filter(|&i| world.validators[plan[i].validator].gateway == gateway).collect();
        match client(&world.gateways[gateway].id) {
            Ok(client) => {
                let gateway_run = GatewayRun {
                    gateway,
                    world: Arc::clone(&world),
                    plan: Arc::clone(&plan),
                    scans,
                    clock: Arc::clone(&clock),
                    settings: settings.clone(),
                    progress: progress.clone(),
                    stop: Arc::clone(&stop),
                };
                tasks.spawn(gateway_run.run(client));
            }
            Err(error) => report.errors.push(format!("gateway {gateway}: {error}")),
        }
    }
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(gateway_report) => report.merge(gateway_report),
            Err(error) => report.errors.push(format!("gateway task failed: {error}")),
        }
    }
    report
}

/// What a validator refuses: the cards the city lost, and the list the
/// server pushed.
struct Denied<'a> {
    lost: &'a std::collections::HashSet<u64>,
    pushed: &'a std::collections::HashSet<u64>,
}

impl DenyList for Denied<'_> {
    fn is_denied(&self, card_id: u64) -> bool {
        self.lost.contains(&card_id) || self.pushed.contains(&card_id)
    }
}

/// What the server will say of a scan: the plan's word, unless the pushed
/// list (which the plan could not foresee: declines happen during the day)
/// made the gate refuse a code that would otherwise have been a ride or a
/// replay; then the server records what the gate did.
fn expected(scan: &PlannedScan, opened: bool, pushed: &std::collections::HashSet<u64>, world: &World) -> ScanStatus {
    let refused_by_push = !opened && pushed.contains(&world.riders[scan.rider].card_id);
    match scan.expected {
        ScanStatus::Accepted | ScanStatus::Replay if refused_by_push => ScanStatus::Denied,
        status => status,
    }
}

/// A batch as the gateway sends it, and the status planned for each scan.
struct GateBatch {
    batch: ScanBatch,
    planned: Vec<ScanStatus>,
}

/// How long a push may go unanswered before the fleet says so (and again
/// each time as long after).
const PUSH_QUIET_NOTICE: Duration = Duration::from_secs(5);

struct GatewayRun {
    gateway: usize,
    world: Arc<World>,
    plan: Arc<Vec<PlannedScan>>,
    /// This gateway's scans, indexes into `plan`, in time order.
    scans: Vec<usize>,
    clock: Arc<dyn Clock>,
    settings: FleetSettings,
    progress: ProgressBar,
    /// Set by the first gateway whose push failed for good.
    stop: Arc<AtomicBool>,
}

impl GatewayRun {
    async fn run(self, client: GatewayClient) -> FleetReport {
        let mut report = FleetReport::default();
        let mut rng = StdRng::seed_from_u64(self.settings.seed.wrapping_add(self.gateway as u64));
        let mut batch_seq = 0u64;
        if self.settings.backlog {
            let mut batches = Vec::new();
            for chunk in self.scans.chunks(self.settings.batch_scans_max) {
                let read = self.read_at_gates(chunk, &client, &mut report).await;
                batches.extend(self.cut(read, &mut batch_seq));
            }
            let started = std::time::Instant::now();
            for batch in &batches {
                self.upload(&client, batch, &mut rng, &mut report).await;
            }
            report.drain_secs = started.elapsed().as_secs_f64();
        }
        let mut cursor = 0;
        while !self.settings.backlog && cursor < self.scans.len() && !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(self.settings.upload_tick).await;
            let now = self.clock.now_ms();
            let due = self.scans[cursor..].iter().take_while(|&&i| self.plan[i].at_ms <= now).count();
            for chunk in self.scans[cursor..cursor + due].chunks(self.settings.batch_scans_max) {
                let read = self.read_at_gates(chunk, &client, &mut report).await;
                for batch in self.cut(read, &mut batch_seq) {
                    self.upload(&client, &batch, &mut rng, &mut report).await;
                }
            }
            cursor += due;
        }
        report.connects = client.connects();
        report.retries = client.retries();
        client.close().await;
        report
    }

    /// Cuts what the gates read into batches within the server's frame
    /// and count limits, numbered from `batch_seq` on.
    fn cut(&self, read: GateBatch, batch_seq: &mut u64) -> Vec<GateBatch> {
        let GateBatch { batch, planned } = read;
        let runs =
            batch_runs(&batch.gateway_id, &batch.scans, self.settings.frame_bytes_max, self.settings.batch_scans_max);
        runs.into_iter()
            .map(|run| {
                *batch_seq += 1;
                GateBatch {
                    batch: ScanBatch {
                        gateway_id: batch.gateway_id.clone(),
                        batch_seq: *batch_seq,
                        scans: batch.scans[run.clone()].to_vec(),
                    },
                    planned: planned[run].to_vec(),
                }
            })
            .collect()
    }

    /// The validators read the codes (offline check at the gate, against
    /// the cards the city knows are lost and the deny list the server
    /// pushed) and the gateway wraps their records into one batch.
    async fn read_at_gates(&self, chunk: &[usize], client: &GatewayClient, report: &mut FleetReport) -> GateBatch {
        let world = Arc::clone(&self.world);
        let plan = Arc::clone(&self.plan);
        let chunk = chunk.to_vec();
        let freshness = self.settings.freshness;
        let gateway_id = self.world.gateways[self.gateway].id.clone();
        let (pushed_version, pushed) = client.with_deny_list(|list| (list.version(), list.cards().clone()));
        let (batch, opened, planned) = tokio::task::spawn_blocking(move || {
            let mut opened = 0u64;
            let mut planned = Vec::with_capacity(chunk.len());
            let mut scans = Vec::with_capacity(chunk.len());
            let denied = Denied { lost: &world.denied_cards, pushed: &pushed };
            for &i in &chunk {
                let scan = &plan[i];
                let code = scan.ride_code(&world);
                let gate = check_offline(
                    &code,
                    &world.trusted_keys,
                    &world.terminal_keys,
                    &denied,
                    &freshness,
                    unix_secs_u32(scan.at_ms),
                );
                opened += u64::from(gate.is_ok());
                planned.push(expected(scan, gate.is_ok(), &pushed, &world));
                let decision = if gate.is_ok() { GateDecision::Opened } else { GateDecision::Refused };
                let record = ScanRecord {
                    gate: decision as i32,
                    deny_list_version: pushed_version,
                    ..scan.record(&world, code)
                };
                scans.push(record);
            }
            (ScanBatch { gateway_id, batch_seq: 0, scans }, opened, planned)
        })
        .await
        .expect("gate simulation does not panic");
        report.gates_opened += opened;
        report.gates_refused += batch.scans.len() as u64 - opened;
        for status in &planned {
            *report.planned.entry(*status).or_default() += 1;
        }
        GateBatch { batch, planned }
    }

    /// Pushes a batch, and sometimes pushes it again as if its ack was lost.
    /// A push that failed for good (the server gone, or refusing) stops
    /// the whole fleet, said at once: each later batch would otherwise
    /// spend the client's whole retry budget in silence.
    async fn upload(&self, client: &GatewayClient, batch: &GateBatch, rng: &mut StdRng, report: &mut FleetReport) {
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        let mut outcome = self.push(client, batch, report).await;
        if outcome.is_ok() && rng.random_bool((self.settings.redelivery_percent / 100.0).clamp(0.0, 1.0)) {
            report.redelivered_planned += batch.batch.scans.len() as u64;
            outcome = self.push(client, batch, report).await;
        }
        match outcome {
            Ok(()) => self.progress.inc(batch.batch.scans.len() as u64),
            Err(error) => {
                let gateway = &self.world.gateways[self.gateway].id;
                self.progress.println(format!("gateway {gateway}: {error}; stopping the fleet"));
                report.errors.push(error.to_string());
                self.stop.store(true, Ordering::Relaxed);
            }
        }
    }

    async fn push(
        &self,
        client: &GatewayClient,
        GateBatch { batch, planned }: &GateBatch,
        report: &mut FleetReport,
    ) -> Result<(), GatewayError> {
        let sent = std::time::Instant::now();
        let push = client.push(batch);
        tokio::pin!(push);
        let ack = loop {
            tokio::select! {
                ack = &mut push => break ack?,
                _ = tokio::time::sleep(PUSH_QUIET_NOTICE) => self.progress.println(format!(
                    "gateway {}: batch {} not acked after {} s ({} retries so far); still trying",
                    self.world.gateways[self.gateway].id,
                    batch.batch_seq,
                    sent.elapsed().as_secs(),
                    client.retries()
                )),
            }
        };
        report.ack_latencies_us.push(sent.elapsed().as_micros() as u64);
        report.batches_sent += 1;
        report.redelivered_acked += u64::from(ack.redelivered);
        report.tally_ack(&ack);
        report.acked_scans.extend(batch.scans.iter().map(fingerprint).zip(planned.iter().copied()));
        Ok(())
    }
}
