//! Writes one run's rows: `ROOT/service_date=D/run-NNNN.parquet` in each
//! of the four settlement tables, each put whole (in a folder: built in
//! `ROOT/.tmp`, fsynced and renamed in). The runs table is written last: a run exists once its
//! `settlement_runs` row does, and a run cut short by a crash is written
//! again under the same names.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;

use super::lock::SettlementLock;
use super::riders_file::{FinishedRiders, run_file_name};
use super::settle_types::SettleError;
use super::settlement_tables::{ARREARS_OUTSTANDING, FIGURES, figures_to};
use super::settlement_tables::{SettlementTable, settlement_schema};
use crate::tables::ArchiveSource;
use farestream_core::clock::UnixMillis;
use farestream_core::money::Cents;
use farestream_core::scan::ScanStatus;
use farestream_core::settlement::{Break, RiderFigures};
use farestream_ingest::archive::parquet_writer::archive_writer_properties;

pub type StatusCounts = [i64; ScanStatus::ALL.len()];

pub struct RiderRow {
    pub card_id: u64,
    pub figures: RiderFigures,
}

pub struct RouteRow {
    pub route_id: String,
    pub scans: StatusCounts,
    pub rides: i64,
    pub revenue_cents: Cents,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub run: u32,
    pub kind: &'static str,
    pub settled_at: UnixMillis,
    pub final_day: bool,
    pub pricer_lsn: u64,
    pub files_settled: i64,
    pub scans: StatusCounts,
    pub riders: i64,
    pub totals: RiderFigures,
    pub manual_review: i64,
    pub riders_awaiting_archive: i64,
    pub breaks: i64,
}

pub struct FileRow {
    pub table: &'static str,
    pub file: String,
    pub rows: i64,
}

/// One run's rows, all four tables; the riders' already in their file.
pub struct RunRows {
    pub riders: FinishedRiders,
    pub routes: Vec<RouteRow>,
    pub run: RunRow,
    pub files: Vec<FileRow>,
}

pub(super) fn ints(values: impl Iterator<Item = i64>) -> ArrayRef {
    let mut b = Int64Builder::new();
    values.for_each(|v| b.append_value(v));
    Arc::new(b.finish())
}

pub(super) fn runs(run: u32, n: usize) -> ArrayRef {
    let mut b = UInt32Builder::new();
    (0..n).for_each(|_| b.append_value(run));
    Arc::new(b.finish())
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    let mut b = StringBuilder::new();
    values.for_each(|v| b.append_value(v));
    Arc::new(b.finish())
}

fn status_columns<'a>(counts: impl Iterator<Item = &'a StatusCounts> + Clone) -> Vec<ArrayRef> {
    (0..ScanStatus::ALL.len()).map(|s| ints(counts.clone().map(|c| c[s]))).collect()
}

fn routes_batch(run: u32, rows: &[RouteRow]) -> Result<RecordBatch, SettleError> {
    let mut columns: Vec<ArrayRef> = vec![
        runs(run, rows.len()),
        strings(rows.iter().map(|r| r.route_id.as_str())),
        ints(rows.iter().map(|r| r.scans.iter().sum())),
    ];
    columns.extend(status_columns(rows.iter().map(|r| &r.scans)));
    columns.extend([ints(rows.iter().map(|r| r.rides)), ints(rows.iter().map(|r| r.revenue_cents.get()))]);
    Ok(RecordBatch::try_new(settlement_schema(SettlementTable::Routes), columns)?)
}

fn run_batch(row: &RunRow) -> Result<RecordBatch, SettleError> {
    let mut settled_at = TimestampMillisecondBuilder::new().with_timezone("UTC");
    settled_at.append_value(row.settled_at);
    let mut final_day = BooleanBuilder::new();
    final_day.append_value(row.final_day);
    let mut lsn = UInt64Builder::new();
    lsn.append_value(row.pricer_lsn);
    let mut columns: Vec<ArrayRef> = vec![
        runs(row.run, 1),
        strings(std::iter::once(row.kind)),
        Arc::new(settled_at.finish()),
        Arc::new(final_day.finish()),
        Arc::new(lsn.finish()),
        ints(std::iter::once(row.files_settled)),
        ints(std::iter::once(row.scans.iter().sum())),
    ];
    columns.extend(status_columns(std::iter::once(&row.scans)));
    columns.push(ints(std::iter::once(row.riders)));
    let totals = figures_to(&row.totals);
    // Every figure but the outstanding arrears (a level, per rider only).
    columns.extend((0..FIGURES).filter(|i| *i != ARREARS_OUTSTANDING).map(|i| ints(std::iter::once(totals[i]))));
    columns.extend([row.manual_review, row.riders_awaiting_archive, row.breaks].map(|v| ints(std::iter::once(v))));
    Ok(RecordBatch::try_new(settlement_schema(SettlementTable::Runs), columns)?)
}

fn files_batch(run: u32, rows: &[FileRow]) -> Result<RecordBatch, SettleError> {
    let columns: Vec<ArrayRef> = vec![
        runs(run, rows.len()),
        strings(rows.iter().map(|r| r.table)),
        strings(rows.iter().map(|r| r.file.as_str())),
        ints(rows.iter().map(|r| r.rows)),
    ];
    Ok(RecordBatch::try_new(settlement_schema(SettlementTable::Files), columns)?)
}

/// A break's columns: `(card_id, scan_id, charge_id, amount_cents,
/// expected_cents, copies, detail)`.
type BreakColumns =
    (Option<u64>, Option<String>, Option<String>, Option<i64>, Option<i64>, Option<i64>, Option<String>);

fn break_columns(b: &Break) -> BreakColumns {
    let hex = |id: &[u8; 16]| Some(hex::encode(id));
    let copies = |n: u64| Some(i64::try_from(n).unwrap_or(i64::MAX));
    match b {
        Break::RideNotCharged { scan_id, card_id } => (Some(*card_id), hex(scan_id), None, None, None, None, None),
        Break::RideChargedTwice { scan_id, charges } => (None, hex(scan_id), None, None, None, copies(*charges), None),
        Break::ChargeWithoutRide { charge_id, scan_id } => (None, hex(scan_id), hex(charge_id), None, None, None, None),
        Break::ScanArchivedTwice { scan_id, copies: n } => (None, hex(scan_id), None, None, None, copies(*n), None),
        Break::ChargeListedTwice { charge_id, copies: n } => (None, None, hex(charge_id), None, None, copies(*n), None),
        Break::UnknownOutcome { charge_id, outcome } => {
            (None, None, hex(charge_id), None, None, None, Some(outcome.clone()))
        }
        Break::MoneyMismatch { card_id, charged_cents, due_cents } => {
            (Some(*card_id), None, None, Some(charged_cents.get()), Some(due_cents.get()), None, None)
        }
        // What the store holds, against what the charges say it should.
        Break::ArrearsMismatch { card_id, from_charges_cents, store_cents } => {
            (Some(*card_id), None, None, Some(store_cents.get()), Some(from_charges_cents.get()), None, None)
        }
        Break::SettledFileMissing { file } => (None, None, None, None, None, None, Some(file.clone())),
    }
}

fn breaks_batch(run: u32, found_at: UnixMillis, breaks: &[Break], currency: &str) -> Result<RecordBatch, SettleError> {
    let rows: Vec<BreakColumns> = breaks.iter().map(break_columns).collect();
    let mut found = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let mut cards = Int64Builder::new();
    let (mut amounts, mut expected, mut copies) = (Int64Builder::new(), Int64Builder::new(), Int64Builder::new());
    let (mut scans, mut charges, mut details) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    for (card, scan, charge, amount, expect, n, detail) in &rows {
        found.append_value(found_at);
        cards.append_option(card.map(farestream_core::scan::id_to_archive));
        scans.append_option(scan.as_deref());
        charges.append_option(charge.as_deref());
        amounts.append_option(*amount);
        expected.append_option(*expect);
        copies.append_option(*n);
        details.append_option(detail.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        runs(run, breaks.len()),
        Arc::new(found.finish()),
        strings(breaks.iter().map(Break::kind)),
        Arc::new(cards.finish()),
        Arc::new(scans.finish()),
        Arc::new(charges.finish()),
        Arc::new(amounts.finish()),
        Arc::new(expected.finish()),
        Arc::new(copies.finish()),
        Arc::new(details.finish()),
        strings(breaks.iter().map(|b| b.describe(currency)).collect::<Vec<_>>().iter().map(String::as_str)),
    ];
    Ok(RecordBatch::try_new(settlement_schema(SettlementTable::Breaks), columns)?)
}

/// The breaks table's one file a day.
const BREAKS_FILE: &str = "breaks.parquet";

/// Writes what this `settle` found wrong with the day as
/// `settlement_breaks/service_date=D/breaks.parquet`, replacing what an
/// earlier `settle` found; with no breaks, an earlier file is replaced by
/// an empty one (the day is mended) and none is made otherwise.
pub async fn write_breaks(
    (archive, lock): (&ArchiveSource, &SettlementLock),
    date: NaiveDate,
    (run, found_at): (u32, UnixMillis),
    breaks: &[Break],
    currency: &str,
) -> Result<(), SettleError> {
    let table = SettlementTable::Breaks.name();
    if breaks.is_empty() && !archive.has_file(table, date, BREAKS_FILE).await? {
        return Ok(());
    }
    let bytes = parquet_bytes(&breaks_batch(run, found_at, breaks, currency)?)?;
    lock.confirm().await?;
    Ok(archive.put(table, date, BREAKS_FILE, bytes).await?)
}

/// Writes the run: files, riders and routes first, the runs row last,
/// each only while `lock` is still held.
pub async fn write_run(
    (archive, lock): (&ArchiveSource, &SettlementLock),
    date: NaiveDate,
    rows: RunRows,
) -> Result<(), SettleError> {
    let run = rows.run.run;
    let name = run_file_name(run);
    let files = parquet_bytes(&files_batch(run, &rows.files)?)?;
    lock.confirm().await?;
    archive.put(SettlementTable::Files.name(), date, &name, files).await?;
    lock.confirm().await?;
    archive.put_staged(SettlementTable::Riders.name(), date, &name, &rows.riders.tmp).await?;
    for (table, batch) in
        [(SettlementTable::Routes, routes_batch(run, &rows.routes)?), (SettlementTable::Runs, run_batch(&rows.run)?)]
    {
        let bytes = parquet_bytes(&batch)?;
        lock.confirm().await?;
        archive.put(table.name(), date, &name, bytes).await?;
    }
    Ok(())
}

/// A small table as Parquet bytes, encoded as the archives are.
pub fn parquet_bytes(batch: &RecordBatch) -> Result<Vec<u8>, SettleError> {
    let properties = archive_writer_properties(&[], &[], None);
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(bytes)
}

/// Sums of figures read back from files (which anyone may have edited)
/// saturate rather than wrap.
pub(crate) fn add_to(sum: &mut i64, n: i64) {
    *sum = sum.saturating_add(n);
}

/// Where a status's count sits in [`StatusCounts`].
pub(crate) fn status_index(status: farestream_core::scan::ScanStatus) -> usize {
    farestream_core::scan::ScanStatus::ALL.iter().position(|s| *s == status).unwrap_or(0)
}
