//! Writes archive rows into Hive-style partitions,
//! `ROOT/service_date=YYYY-MM-DD/part-RUN-SEQ.parquet`, one open file per
//! service date. A file is written as `.part-RUN-SEQ.parquet.tmp` (hidden
//! from `*.parquet` globs), then on close: Parquet footer, fsync, rename
//! into place, fsync the directory. A reader therefore sees a file whole or
//! not at all. Files roll at `file_bytes_max` or `file_age_secs_max`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use thiserror::Error;

use super::schema::{scan_schema, to_record_batch};
use crate::scan::ArchivedScan;

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("archive I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("archive Parquet encoding for {path}: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("archive rows do not fit the schema: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

#[derive(Debug, Clone)]
pub struct ArchiveWriterConfig {
    /// `DATA_DIR/archive/scans`.
    pub root: PathBuf,
    pub file_bytes_max: u64,
    pub file_age_max: Duration,
    pub row_group_rows_max: usize,
}

/// A file renamed into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedFile {
    pub path: PathBuf,
    pub rows: u64,
    pub service_date: NaiveDate,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    opened_at: Instant,
    rows: u64,
}

pub struct ArchiveWriter {
    config: ArchiveWriterConfig,
    /// Distinguishes this process's files from every earlier run's.
    run_id: String,
    next_file_seq: u64,
    open: BTreeMap<NaiveDate, OpenFile>,
}

impl ArchiveWriter {
    /// `run_id` must differ between runs that share a root (the server uses
    /// its start time).
    pub fn new(config: ArchiveWriterConfig, run_id: String) -> Result<ArchiveWriter, ArchiveError> {
        fs::create_dir_all(&config.root).map_err(|source| ArchiveError::Io { path: config.root.clone(), source })?;
        Ok(ArchiveWriter { config, run_id, next_file_seq: 0, open: BTreeMap::new() })
    }

    /// Appends rows, each to its service date's open file. Returns the files
    /// that reached their size limit and were closed.
    pub fn append(&mut self, rows: &[ArchivedScan], now: Instant) -> Result<Vec<ClosedFile>, ArchiveError> {
        let mut by_date: BTreeMap<NaiveDate, Vec<ArchivedScan>> = BTreeMap::new();
        for row in rows {
            by_date.entry(row.service_date).or_default().push(row.clone());
        }
        let mut closed = Vec::new();
        for (date, rows) in by_date {
            let file = self.open_file(date, now)?;
            let batch = to_record_batch(&rows)?;
            file.writer
                .write(&batch)
                .map_err(|source| ArchiveError::Parquet { path: file.tmp_path.clone(), source })?;
            file.rows += rows.len() as u64;
            let size = (file.writer.bytes_written() + file.writer.in_progress_size()) as u64;
            if size >= self.config.file_bytes_max {
                closed.push(self.close(date)?);
            }
        }
        Ok(closed)
    }

    /// Closes files open longer than `file_age_max`.
    pub fn roll_aged(&mut self, now: Instant) -> Result<Vec<ClosedFile>, ArchiveError> {
        let aged: Vec<NaiveDate> = self
            .open
            .iter()
            .filter(|(_, f)| now.duration_since(f.opened_at) >= self.config.file_age_max)
            .map(|(date, _)| *date)
            .collect();
        aged.into_iter().map(|date| self.close(date)).collect()
    }

    /// Closes every open file.
    pub fn close_all(&mut self) -> Result<Vec<ClosedFile>, ArchiveError> {
        let dates: Vec<NaiveDate> = self.open.keys().copied().collect();
        dates.into_iter().map(|date| self.close(date)).collect()
    }

    pub fn open_rows(&self) -> u64 {
        self.open.values().map(|f| f.rows).sum()
    }

    fn open_file(&mut self, date: NaiveDate, now: Instant) -> Result<&mut OpenFile, ArchiveError> {
        if !self.open.contains_key(&date) {
            let file = self.create(date, now)?;
            self.open.insert(date, file);
        }
        Ok(self.open.get_mut(&date).expect("inserted above"))
    }

    fn create(&mut self, date: NaiveDate, now: Instant) -> Result<OpenFile, ArchiveError> {
        let dir = partition_dir(&self.config.root, date);
        fs::create_dir_all(&dir).map_err(|source| ArchiveError::Io { path: dir.clone(), source })?;
        let name = format!("part-{}-{:06}.parquet", self.run_id, self.next_file_seq);
        self.next_file_seq += 1;
        let tmp_path = dir.join(format!(".{name}.tmp"));
        let final_path = dir.join(name);
        let file = File::create(&tmp_path).map_err(|source| ArchiveError::Io { path: tmp_path.clone(), source })?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(self.config.row_group_rows_max))
            .build();
        let writer = ArrowWriter::try_new(file, scan_schema(), Some(properties))
            .map_err(|source| ArchiveError::Parquet { path: tmp_path.clone(), source })?;
        Ok(OpenFile { writer, tmp_path, final_path, opened_at: now, rows: 0 })
    }

    fn close(&mut self, date: NaiveDate) -> Result<ClosedFile, ArchiveError> {
        let file = self.open.remove(&date).expect("close is called for open dates");
        let tmp = file.tmp_path;
        let inner = file.writer.into_inner().map_err(|source| ArchiveError::Parquet { path: tmp.clone(), source })?;
        inner.sync_all().map_err(|source| ArchiveError::Io { path: tmp.clone(), source })?;
        fs::rename(&tmp, &file.final_path).map_err(|source| ArchiveError::Io { path: tmp.clone(), source })?;
        sync_dir(file.final_path.parent().unwrap_or(Path::new(".")))?;
        Ok(ClosedFile { path: file.final_path, rows: file.rows, service_date: date })
    }
}

/// `ROOT/service_date=YYYY-MM-DD`.
pub fn partition_dir(root: &Path, date: NaiveDate) -> PathBuf {
    root.join(format!("service_date={}", date.format("%Y-%m-%d")))
}

/// Makes a rename durable: the directory entry is data too.
fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| ArchiveError::Io { path: dir.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::read::{archive_files, read_all};
    use crate::scan::{ScanStatus, TapKind};

    fn row(seq: u64, date: NaiveDate) -> ArchivedScan {
        ArchivedScan {
            scan_id: [seq as u8; 16],
            gateway_id: "depot-01".into(),
            validator_id: "bus-1".into(),
            validator_seq: seq,
            route_id: "bus-12".into(),
            stop_id: "bus-12-stop-01".into(),
            tap_kind: Some(TapKind::Single),
            card_id: Some(seq),
            issuer_key_id: Some(1),
            code_created_at: Some(1_000),
            code_counter: Some(3),
            scanned_at: 2_000,
            received_at: 3_000,
            status: if seq % 2 == 0 { ScanStatus::Accepted } else { ScanStatus::Replay },
            reason: (seq % 2 == 1).then(|| "replayed".to_string()),
            service_date: date,
        }
    }

    fn writer(root: &Path, file_bytes_max: u64, file_age_max: Duration) -> ArchiveWriter {
        let config =
            ArchiveWriterConfig { root: root.to_path_buf(), file_bytes_max, file_age_max, row_group_rows_max: 1000 };
        ArchiveWriter::new(config, "run".into()).expect("writer")
    }

    #[test]
    fn open_files_are_hidden_until_closed_and_rows_read_back_equal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (d1, d2) =
            (NaiveDate::from_ymd_opt(2026, 11, 25).expect("d"), NaiveDate::from_ymd_opt(2026, 11, 26).expect("d"));
        let mut w = writer(dir.path(), u64::MAX, Duration::from_secs(3600));
        let rows: Vec<_> = (0..10).map(|i| row(i, if i < 6 { d1 } else { d2 })).collect();
        assert!(w.append(&rows, Instant::now()).expect("append").is_empty());
        assert!(archive_files(dir.path()).expect("list").is_empty(), "nothing visible while files are open");
        let closed = w.close_all().expect("close");
        assert_eq!(closed.iter().map(|c| (c.service_date, c.rows)).collect::<Vec<_>>(), vec![(d1, 6), (d2, 4)]);
        let mut back = read_all(dir.path()).expect("read");
        back.sort_by_key(|r| r.validator_seq);
        assert_eq!(back, rows);
        let leftovers: Vec<_> = fs::read_dir(partition_dir(dir.path(), d1)).expect("dir").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn files_roll_at_their_size_and_age_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let date = NaiveDate::from_ymd_opt(2026, 11, 25).expect("d");
        let mut by_size = writer(dir.path(), 1, Duration::from_secs(3600));
        let start = Instant::now();
        assert_eq!(by_size.append(&[row(1, date)], start).expect("append").len(), 1, "one byte is over the limit");
        assert_eq!(by_size.append(&[row(2, date)], start).expect("append").len(), 1);
        assert_eq!(archive_files(dir.path()).expect("list").len(), 2);

        let aged_dir = tempfile::tempdir().expect("tempdir");
        let mut by_age = writer(aged_dir.path(), u64::MAX, Duration::from_secs(300));
        by_age.append(&[row(1, date)], start).expect("append");
        assert!(by_age.roll_aged(start + Duration::from_secs(299)).expect("roll").is_empty());
        assert_eq!(by_age.roll_aged(start + Duration::from_secs(300)).expect("roll").len(), 1);
        assert_eq!(by_age.open_rows(), 0);
    }
}
