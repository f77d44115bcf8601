//! Writes one run's rows: `ROOT/service_date=D/run-NNNN.parquet` in each
//! of the four settlement tables, each built in `ROOT/.tmp`, fsynced and
//! renamed in. The runs table is written last: a run exists once its
//! `settlement_runs` row does, and a run cut short by a crash is written
//! again under the same names.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;

use super::SettleError;
use super::schema::figures_to;
use super::schema::{SettlementTable, settlement_schema};
use farestream_core::clock::UnixMillis;
use farestream_core::scan::ScanStatus;
use farestream_core::settlement::RiderFigures;
use farestream_server::archive::checkpoint::replace_durably;
use farestream_server::archive::writer::{archive_writer_properties, open_files_dir, partition_dir};
use farestream_server::faults::Faults;

pub type StatusCounts = [i64; ScanStatus::ALL.len()];

pub struct RiderRow {
    pub card_id: u64,
    pub figures: RiderFigures,
}

pub struct RouteRow {
    pub route_id: String,
    pub scans: StatusCounts,
    pub rides: i64,
    pub revenue_cents: i64,
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

/// One run's rows, all four tables.
pub struct RunRows {
    pub riders: Vec<RiderRow>,
    pub routes: Vec<RouteRow>,
    pub run: RunRow,
    pub files: Vec<FileRow>,
}

fn ints(values: impl Iterator<Item = i64>) -> ArrayRef {
    let mut b = Int64Builder::new();
    values.for_each(|v| b.append_value(v));
    Arc::new(b.finish())
}

fn runs(run: u32, n: usize) -> ArrayRef {
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

fn riders_batch(run: u32, rows: &[RiderRow]) -> Result<RecordBatch, SettleError> {
    let mut cards = UInt64Builder::new();
    rows.iter().for_each(|r| cards.append_value(r.card_id));
    let mut columns: Vec<ArrayRef> = vec![runs(run, rows.len()), Arc::new(cards.finish())];
    let figures: Vec<[i64; 12]> = rows.iter().map(|r| figures_to(&r.figures)).collect();
    columns.extend((0..12).map(|i| ints(figures.iter().map(|f| f[i]))));
    Ok(RecordBatch::try_new(settlement_schema(SettlementTable::Riders), columns)?)
}

fn routes_batch(run: u32, rows: &[RouteRow]) -> Result<RecordBatch, SettleError> {
    let mut columns: Vec<ArrayRef> = vec![
        runs(run, rows.len()),
        strings(rows.iter().map(|r| r.route_id.as_str())),
        ints(rows.iter().map(|r| r.scans.iter().sum())),
    ];
    columns.extend(status_columns(rows.iter().map(|r| &r.scans)));
    columns.extend([ints(rows.iter().map(|r| r.rides)), ints(rows.iter().map(|r| r.revenue_cents))]);
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
    columns.extend((0..12).filter(|i| *i != 10).map(|i| ints(std::iter::once(totals[i]))));
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

/// Writes the run: files, riders and routes first, the runs row last.
pub fn write_run(archive_dir: &Path, date: NaiveDate, rows: &RunRows) -> Result<(), SettleError> {
    let run = rows.run.run;
    let batches = [
        (SettlementTable::Files, files_batch(run, &rows.files)?),
        (SettlementTable::Riders, riders_batch(run, &rows.riders)?),
        (SettlementTable::Routes, routes_batch(run, &rows.routes)?),
        (SettlementTable::Runs, run_batch(&rows.run)?),
    ];
    for (table, batch) in batches {
        let root = archive_dir.join(table.name());
        let partition = partition_dir(&root, date);
        std::fs::create_dir_all(&partition)
            .map_err(|e| SettleError::Output(format!("{}: {e}", partition.display())))?;
        let bytes = parquet_bytes(&batch)?;
        let path = partition.join(format!("run-{run:04}.parquet"));
        replace_durably(&path, &open_files_dir(&root), &bytes, &Faults::default())?;
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
