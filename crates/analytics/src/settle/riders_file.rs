//! A run's `settlements` file, written while the walk finds its rows: a
//! day has millions of riders, and holding their rows until the run is
//! decided cost more memory than the rest of `settle` together (1.3 GB of
//! heap on a 10-million-scan day). The file grows where the archive
//! stages files (`ROOT/.tmp` in a folder, the data dir for a bucket) and is
//! moved in by [`super::write::write_run`] with the run's other files, or
//! removed when the run writes nothing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;

use arrow_array::builder::Int64Builder;
use arrow_array::{ArrayRef, RecordBatch};
use parquet::arrow::ArrowWriter;

use super::settle_types::SettleError;
use super::settlement_tables::{FIGURES, SettlementTable, figures_to, settlement_schema};
use super::write::{RiderRow, ints, runs};
use farestream_core::settlement::RiderFigures;
use farestream_ingest::archive::parquet_writer::archive_writer_properties;
use farestream_ingest::faults::Faults;

/// Rider rows gathered before they are encoded: what the file holds in
/// memory besides the row group being built.
pub const SETTLEMENT_RIDERS_PER_BATCH: usize = 8192;

/// Rows per row group of a `settlements` file: Parquet's usual size, a
/// bounded buffer of encoded pages for the writer.
pub const SETTLEMENT_RIDERS_PER_ROW_GROUP_MAX: usize = 1 << 20;

/// The riders table of one run, being written. Dropped before
/// [`RidersFile::finish`] (the run writes nothing, or failed), it removes
/// its file.
pub struct RidersFile {
    run: u32,
    tmp: PathBuf,
    /// `None` once finished.
    writer: Option<ArrowWriter<File>>,
    pending: Vec<RiderRow>,
    rows: i64,
    totals: RiderFigures,
}

/// A riders file closed and fsynced, ready to be renamed in.
pub struct FinishedRiders {
    pub tmp: PathBuf,
}

impl RidersFile {
    /// Starts `date`'s run `run` file in `dir` (where the archive stages
    /// a riders file: `ArchiveSource::staging_dir`). A file left there by
    /// a run a crash cut short is overwritten.
    pub fn create(dir: &Path, date: NaiveDate, run: u32) -> Result<RidersFile, SettleError> {
        std::fs::create_dir_all(dir).map_err(|e| SettleError::Output(format!("{}: {e}", dir.display())))?;
        let tmp = dir.join(format!(".{date}-{}.tmp", run_file_name(run)));
        let file = File::create(&tmp).map_err(|e| SettleError::Output(format!("{}: {e}", tmp.display())))?;
        let properties = archive_writer_properties(&[], &[], Some(SETTLEMENT_RIDERS_PER_ROW_GROUP_MAX));
        let writer = ArrowWriter::try_new(file, settlement_schema(SettlementTable::Riders), Some(properties))?;
        Ok(RidersFile {
            run,
            tmp,
            writer: Some(writer),
            pending: Vec::with_capacity(SETTLEMENT_RIDERS_PER_BATCH),
            rows: 0,
            totals: RiderFigures::default(),
        })
    }

    pub fn push(&mut self, row: RiderRow) -> Result<(), SettleError> {
        self.totals = self.totals.plus(&row.figures);
        self.rows += 1;
        self.pending.push(row);
        if self.pending.len() >= SETTLEMENT_RIDERS_PER_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Where the file grows until it is renamed in.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> i64 {
        self.rows
    }

    /// The sum of every row's figures.
    pub fn totals(&self) -> RiderFigures {
        self.totals
    }

    fn flush(&mut self) -> Result<(), SettleError> {
        if !self.pending.is_empty() {
            let batch = riders_batch(self.run, &self.pending)?;
            let writer = self.writer.as_mut().ok_or_else(|| SettleError::Output("riders file finished".into()))?;
            writer.write(&batch)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Writes the footer and fsyncs the file.
    pub fn finish(mut self) -> Result<FinishedRiders, SettleError> {
        self.flush()?;
        let writer = self.writer.take().ok_or_else(|| SettleError::Output("riders file finished".into()))?;
        let file = writer.into_inner()?;
        farestream_ingest::files::fsync(&file, &Faults::default())
            .map_err(|e| SettleError::Output(format!("{}: {e}", self.tmp.display())))?;
        Ok(FinishedRiders { tmp: self.tmp.clone() })
    }
}

impl Drop for RidersFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            // Best effort: a file left behind is overwritten by the day's
            // next run of the same number.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `run-NNNN.parquet`: a run's file in each run table.
pub fn run_file_name(run: u32) -> String {
    format!("run-{run:04}.parquet")
}

fn riders_batch(run: u32, rows: &[RiderRow]) -> Result<RecordBatch, SettleError> {
    let cards = ints(rows.iter().map(|row| farestream_core::scan::id_to_archive(row.card_id)));
    // The figures in one pass over the rows, a builder a column.
    let mut figures: Vec<Int64Builder> = (0..FIGURES).map(|_| Int64Builder::with_capacity(rows.len())).collect();
    for row in rows {
        for (column, value) in figures.iter_mut().zip(figures_to(&row.figures)) {
            column.append_value(value);
        }
    }
    let mut columns: Vec<ArrayRef> = vec![runs(run, rows.len()), cards];
    columns.extend(figures.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    Ok(RecordBatch::try_new(settlement_schema(SettlementTable::Riders), columns)?)
}
