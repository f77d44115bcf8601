//! `farestream gen-archive`: a service day written straight into a data
//! directory in the archive's own formats, for the settlement benchmark
//! (`scripts/settle-bench.sh`): scans through the production
//! `ArchiveWriter`, each rider's charges planned by the core and written
//! as the charges archive, the declines as arrears in the account store,
//! and the pricer's and archiver's positions past every file, as a
//! server that had priced and archived the day would leave them.
//!
//! Deterministic for a seed. The day is built in memory (about 600 bytes
//! a scan), then written in arrival order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use farestream_core::charges::{ChargeOutcome, ChargeRecord, RiderDay, plan_charges};
use farestream_core::fares::{DayEdges, FareTable, Tap, ride_of};
use farestream_core::money::Cents;
use farestream_core::scan::{ArchivedScan, ScanStatus, TapKind};
use farestream_core::service_day::ServiceDayPolicy;
use farestream_ingest::archive::checkpoint::{checkpoint_path, write_checkpoint};
use farestream_ingest::archive::parquet_writer::scan_writer_properties;
use farestream_ingest::archive::parquet_writer::{ArchiveWriter, ArchiveWriterConfig};
use farestream_ingest::archive::scans_root;
use farestream_ingest::faults::Faults;
use farestream_money::accounts::{AccountError, activate, add_arrears, register};
use farestream_money::charges_archive::{ChargesRoot, charges_root, write_charges_batch};
use farestream_money::store::{fresh_cursor_holder, hold_log_cursor, store_path};
use farestream_money::{MoneyStore, StoreLocation};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use city::{City, Place, PlannedScan, number_scans};

mod city;

#[derive(Debug, Clone)]
pub struct ArchiveDaySpec {
    pub scans: u64,
    pub date: NaiveDate,
    pub seed: u64,
    /// Riders whose debits are declined, in percent.
    pub declined_percent: f64,
    pub row_group_rows_max: usize,
    pub file_bytes_max: u64,
    /// Also write the same rows in other encodings (the previous one:
    /// Snappy, a dictionary on every column; the chosen one without bloom
    /// filters) into `DIR/encodings/`, for the figures.
    pub compare_baseline: bool,
}

/// What was written, and how long it took.
#[derive(Debug, Clone, Default)]
pub struct ArchiveDayReport {
    pub scans: u64,
    pub riders: u64,
    pub charges: u64,
    pub scan_files: Vec<PathBuf>,
    pub scan_bytes: u64,
    pub write: Duration,
    /// The same rows in other encodings (`compare_baseline`).
    pub others: Vec<EncodingFigures>,
}

#[derive(Debug, Clone)]
pub struct EncodingFigures {
    pub label: &'static str,
    pub bytes: u64,
    pub write: Duration,
}

/// Writes the day under `data_dir` (which should be empty).
pub fn write_archive_day(
    spec: &ArchiveDaySpec,
    fares: &FareTable,
    policy: &ServiceDayPolicy,
    data_dir: &Path,
) -> Result<ArchiveDayReport, String> {
    let start = policy.day_start(spec.date).ok_or("the day has no start")?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let progress = bar(spec.scans, "{spinner} generating {bar:40} {pos}/{len} scans ({per_sec})");
    let (mut scans, riders) = plan_scans(spec, City::new(start, fares), &mut rng, &progress);
    progress.finish_and_clear();
    scans.sort_by_key(|s| (s.received_at, s.scan_id));
    let charges = price(spec, fares, &scans, &mut rng);
    let mut report =
        ArchiveDayReport { scans: scans.len() as u64, riders, charges: charges.len() as u64, ..Default::default() };
    let (files, elapsed) = write_scans(spec, &scans_root(data_dir), &scans, None)?;
    report.scan_bytes = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    report.scan_files = files;
    report.write = elapsed;
    if spec.compare_baseline {
        for (label, properties) in other_encodings(spec) {
            let root = data_dir.join("encodings").join(label);
            let (files, elapsed) = write_scans(spec, &root, &scans, Some((label, properties)))?;
            let bytes = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
            report.others.push(EncodingFigures { label, bytes, write: elapsed });
        }
    }
    write_charges(data_dir, &charges)?;
    write_store(data_dir, &charges, scans.len() as u64 + 1)?;
    write_checkpoint(&checkpoint_path(data_dir), scans.len() as u64 + 1, &Faults::default())
        .map_err(|e| e.to_string())?;
    Ok(report)
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

/// Riders' days in [`City`]: one to four rides, bus or metro, a few
/// replays and refusals among them.
fn plan_scans(spec: &ArchiveDaySpec, city: City, rng: &mut StdRng, progress: &ProgressBar) -> (Vec<ArchivedScan>, u64) {
    let mut scans = Vec::with_capacity(usize::try_from(spec.scans).unwrap_or(0));
    let mut card = 1_000_000u64;
    let mut riders = 0;
    while (scans.len() as u64) < spec.scans {
        card += 1 + rng.random_range(0..3);
        riders += 1;
        let mut rider = Rider { card, code_counter: rng.random_range(0..5_000), date: spec.date };
        let mut at = city.day_start_ms() + rng.random_range(5 * 3_600_000..20 * 3_600_000);
        for _ in 0..rng.random_range(1..=4) {
            let left = spec.scans - scans.len() as u64;
            if left == 0 {
                break;
            }
            // A metro trip is two scans: the last free slot takes a bus ride.
            if left < 2 || rng.random_bool(0.5) {
                scans.push(rider.tap(&city, City::bus(rng), TapKind::Single, at, rng));
            } else {
                let (from, to) = (City::station(rng), City::station(rng));
                scans.push(rider.tap(&city, from, TapKind::Entry, at, rng));
                scans.push(rider.tap(&city, to, TapKind::Exit, at + rng.random_range(300_000..3_000_000), rng));
            }
            at += rng.random_range(1_800_000..4 * 3_600_000);
        }
        progress.set_position(scans.len() as u64);
    }
    number_scans(&mut scans, rng);
    (scans.into_iter().map(|s| s.row).collect(), riders)
}

struct Rider {
    card: u64,
    code_counter: u32,
    date: NaiveDate,
}

impl Rider {
    /// One tap with a fresh code: accepted, or now and then a replay or a refusal.
    fn tap(&mut self, city: &City, place: Place, kind: TapKind, at: i64, rng: &mut StdRng) -> PlannedScan {
        self.code_counter += rng.random_range(1..=3);
        let mut scan = city.scan(place, kind, at, self.code_counter, rng);
        let status = match rng.random_range(0..1000) {
            0..=4 => ScanStatus::Replay,
            5..=9 => ScanStatus::Denied,
            10 => ScanStatus::BadSignature,
            _ => ScanStatus::Accepted,
        };
        scan.row.card_id = Some(self.card);
        scan.row.status = status;
        scan.row.reason = (status != ScanStatus::Accepted).then(|| format!("{status} (generated)"));
        scan.row.gate_opened = Some(status != ScanStatus::Denied);
        scan.row.service_date = self.date;
        scan
    }
}

/// Each rider's day priced and planned by the core, as the pricer would
/// once the day is complete; outcomes drawn per rider.
fn price(spec: &ArchiveDaySpec, fares: &FareTable, scans: &[ArchivedScan], rng: &mut StdRng) -> Vec<ChargeRecord> {
    let mut days: BTreeMap<u64, Vec<Tap>> = BTreeMap::new();
    for (card, tap) in scans.iter().filter_map(ride_of) {
        days.entry(card).or_default().push(tap);
    }
    let mut charges = Vec::new();
    for (card_id, taps) in days {
        let day = RiderDay { card_id, service_date: spec.date };
        let declines = rng.random_bool(spec.declined_percent / 100.0);
        for charge in plan_charges(day, &fares.price_day(&taps, &DayEdges::NONE), &[]) {
            let outcome = match (charge.amount_cents, declines) {
                (amount, _) if amount.is_zero() => ChargeOutcome::NothingDue,
                (_, true) => ChargeOutcome::Declined,
                _ => ChargeOutcome::Succeeded,
            };
            charges.push(ChargeRecord {
                charge_id: charge.id,
                card_id,
                service_date: spec.date,
                kind: charge.kind,
                amount_cents: charge.amount_cents,
                currency: fares.currency.clone(),
                scan_ids: charge.scan_ids,
                outcome,
                attempts: u32::from(outcome != ChargeOutcome::NothingDue),
                created_at: 0,
                decided_at: Some(0),
                gateway_txn_id: None,
            });
        }
    }
    charges
}

/// Through the production writer (sorting row groups by validator, cutting
/// files at the size limit), with the chosen encoding or `properties`;
/// returns the files and the time spent encoding and writing.
fn write_scans(
    spec: &ArchiveDaySpec,
    root: &Path,
    scans: &[ArchivedScan],
    properties: Option<(&str, WriterProperties)>,
) -> Result<(Vec<PathBuf>, Duration), String> {
    let label = properties.as_ref().map_or("archive", |(label, _)| *label);
    let progress =
        bar(scans.len() as u64, &format!("{{spinner}} writing {label} {{bar:40}} {{pos}}/{{len}} scans ({{per_sec}})"));
    let config = ArchiveWriterConfig {
        root: root.to_path_buf(),
        file_bytes_max: spec.file_bytes_max,
        file_age_max: Duration::from_secs(86_400),
        row_group_rows_max: spec.row_group_rows_max,
    };
    let faults = Arc::new(Faults::default());
    let mut writer = match properties {
        None => ArchiveWriter::new(config, faults),
        Some((_, properties)) => ArchiveWriter::with_properties(config, faults, properties),
    }
    .map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    let mut from = 1u64;
    let end = scans.len() as u64 + 1;
    // The writer's time, rows in and file out, and freeing the rows: the
    // archiver hands it rows it has just decoded from the log and frees
    // them after, on the same thread. So they are copied here (fresh, as
    // decoding leaves them) before the timing, and freed inside it.
    let mut writing = Duration::ZERO;
    for (i, chunk) in scans.chunks(4_096).enumerate() {
        let rows = chunk.to_vec();
        let started = Instant::now();
        writer.append(&rows, started).map_err(|e| e.to_string())?;
        drop(rows);
        let to = 1 + ((i + 1) * 4_096).min(scans.len()) as u64;
        if writer.cut_due(Instant::now()) || to == end {
            files.extend(writer.close_all(from, to).map_err(|e| e.to_string())?.into_iter().map(|c| c.path));
            from = to;
        }
        writing += started.elapsed();
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    Ok((files, writing))
}

/// Encodings to compare with the chosen one: the previous (Snappy, a
/// dictionary on every column) and the chosen one without its bloom filters.
fn other_encodings(spec: &ArchiveDaySpec) -> Vec<(&'static str, WriterProperties)> {
    let previous = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(spec.row_group_rows_max))
        .build();
    let mut no_bloom = scan_writer_properties(spec.row_group_rows_max).into_builder();
    no_bloom = no_bloom.set_column_bloom_filter_enabled(ColumnPath::from("card_id"), false);
    vec![("snappy_dictionary_everywhere", previous), ("zstd_without_bloom_filters", no_bloom.build())]
}

/// The charges archive's own batch writer, half a million charges a batch.
fn write_charges(data_dir: &Path, charges: &[ChargeRecord]) -> Result<(), String> {
    for (batch, chunk) in (0i64..).zip(charges.chunks(500_000)) {
        write_charges_batch(&ChargesRoot::Dir(charges_root(data_dir)), batch, chunk, &Faults::default())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The account store (the embedded one, in the data dir: a generated day
/// is settled there): an account and its arrears for each declining
/// rider, and the pricer's cursor past the day.
fn write_store(data_dir: &Path, charges: &[ChargeRecord], pricer_lsn: u64) -> Result<(), String> {
    let location = StoreLocation::Sqlite(store_path(data_dir));
    let mut store = MoneyStore::open(&location, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let mut owed: BTreeMap<u64, Vec<&ChargeRecord>> = BTreeMap::new();
    for c in charges.iter().filter(|c| c.outcome == ChargeOutcome::Declined && c.amount_cents.is_positive()) {
        owed.entry(c.card_id).or_default().push(c);
    }
    // The cursor is made past the day; the server starting on it takes it.
    let holder = fresh_cursor_holder().map_err(|e| e.to_string())?;
    store
        .in_transaction(|tx| {
            for (card, declined) in owed {
                register(tx, card, &format!("+86{card:011}"), 0)?;
                activate(tx, card, &format!("payer-{card}"), &format!("agreement-{card}"), Cents::ZERO, 0)?;
                for c in declined {
                    let cause = format!("charge {} declined", hex::encode(c.charge_id));
                    add_arrears(tx, card, c.amount_cents, &cause, 0)?;
                }
            }
            hold_log_cursor(tx, farestream_money::pricer::READER, &holder, pricer_lsn)?;
            Ok::<_, AccountError>(())
        })
        .map_err(|e| e.to_string())
}
