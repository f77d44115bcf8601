//! Writes archive rows into Hive-style partitions,
//! `ROOT/service_date=YYYY-MM-DD/`, one open file per service date.
//!
//! Files are named after the write-ahead-log range they cover, which the
//! archiver decides when it cuts: `part-FROM-TO.parquet`, where FROM and TO
//! are LSNs (20 digits), or `late-FROM-TO.parquet` in a partition whose day
//! was already closed (`_SUCCESS` present). Until then a file is
//! `ROOT/.tmp/.open-SEQ.parquet.tmp`: outside every partition, so no reader
//! globbing the partitions (`scans/*/*`, `**`) ever opens one. Closing
//! writes the footer, fsyncs, renames into its partition and fsyncs that
//! directory, so a reader sees a file whole or not at all, and the name
//! says exactly which log records are in it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use thiserror::Error;

use super::validator_order::ValidatorOrder;
use crate::faults::Faults;
use arrow_array::UInt32Array;
use arrow_select::take::take_record_batch;
use farestream_core::archive::schema::{ScanColumns, scan_schema};
use farestream_core::scan::ArchivedScan;

/// Marks a service day whose scans are all archived.
pub const SUCCESS_MARKER: &str = "_SUCCESS";

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("archive I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("archive fsync of {path} failed: {source}")]
    Fsync { path: PathBuf, source: std::io::Error },
    #[error("archive rename of {path} failed: {source}")]
    Rename { path: PathBuf, source: std::io::Error },
    #[error("archive Parquet encoding for {path}: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("archive rows do not fit the schema: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

impl ArchiveError {
    /// A failed fsync or rename may have lost data the kernel held: never
    /// retried. Anything else (a full disk) is retried from the checkpoint.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ArchiveError::Fsync { .. } | ArchiveError::Rename { .. })
    }
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
    /// Written into a day already closed.
    pub late: bool,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    tmp_path: PathBuf,
    opened_at: Instant,
    rows: u64,
    late: bool,
    /// Rows not yet in the Parquet writer: less than a row group.
    pending: PendingRows,
}

/// A file's rows waiting for a full row group: in columns as they came,
/// with the order they will be written in.
struct PendingRows {
    columns: ScanColumns,
    order: ValidatorOrder,
    /// Their size before encoding, roughly, for the file size limit.
    bytes: u64,
}

impl PendingRows {
    fn new() -> PendingRows {
        PendingRows { columns: ScanColumns::default(), order: ValidatorOrder::default(), bytes: 0 }
    }

    fn push(&mut self, row: &ArchivedScan) {
        self.columns.push(row);
        self.order.push(row);
        self.bytes += approximate_bytes(row);
    }

    /// The rows as one row group in [`ValidatorOrder`]. Both halves are
    /// emptied before anything can fail: the next group starts clean even
    /// if this one is not written.
    fn take_sorted(&mut self) -> Result<arrow_array::RecordBatch, ArchiveError> {
        let positions = UInt32Array::from(self.order.take_positions());
        let arrival = self.columns.finish()?;
        Ok(take_record_batch(&arrival, &positions)?)
    }
}

/// A whole archive file's bytes, encoded as the archiver encodes: `rows`
/// (of one service date) in row groups of `row_group_rows_max`, each
/// sorted by validator. The same rows give the same bytes, which the
/// cluster's archivers rely on (docs/scale-out.md, "The shared archive").
/// `name` is for errors only.
pub fn encode_scans_file(
    rows: &[ArchivedScan],
    row_group_rows_max: usize,
    name: &str,
) -> Result<Vec<u8>, ArchiveError> {
    let parquet = |source| ArchiveError::Parquet { path: PathBuf::from(name), source };
    let properties = scan_writer_properties(row_group_rows_max);
    let mut writer = ArrowWriter::try_new(Vec::new(), scan_schema(), Some(properties)).map_err(parquet)?;
    for group in rows.chunks(row_group_rows_max.max(1)) {
        let mut pending = PendingRows::new();
        group.iter().for_each(|row| pending.push(row));
        writer.write(&pending.take_sorted()?).map_err(parquet)?;
        writer.flush().map_err(parquet)?;
    }
    writer.into_inner().map_err(parquet)
}

/// Writes the file's pending rows as one row group, in
/// [`ValidatorOrder`] (see [`scan_writer_properties`] for why), and leaves
/// them empty for the next group.
fn write_row_group(file: &mut OpenFile) -> Result<(), ArchiveError> {
    let pending = &mut file.pending;
    if pending.columns.is_empty() {
        return Ok(());
    }
    let batch = pending.take_sorted()?;
    let parquet = |source| ArchiveError::Parquet { path: file.tmp_path.clone(), source };
    file.writer.write(&batch).map_err(parquet)?;
    file.writer.flush().map_err(parquet)?;
    // Every pending row is in the writer now.
    pending.bytes = 0;
    Ok(())
}

/// A row's size in memory before encoding, near enough for a size limit.
fn approximate_bytes(row: &ArchivedScan) -> u64 {
    (96 + row.validator_id.len() + row.route_id.len() + row.stop_id.len() + row.reason.as_ref().map_or(0, String::len))
        as u64
}

/// How the scans archive is encoded, each column's choice measured on a
/// generated city's day (figures in docs/archive.md): ZSTD everywhere;
/// dictionaries only on the columns with few distinct values; no
/// dictionary on the many-valued ones, where its page costs more than it
/// saves: the numbers and times delta-encoded (rows sorted by validator
/// make their steps small), but `code_created_at`, whole seconds, plain
/// (ZSTD finds its zero milliseconds, which delta packing hides), as are
/// `validator_id` and `stop_id` (ZSTD takes a validator's run of equal
/// ids for less than a dictionary's page), and `scan_id`'s 32 characters
/// without a length before each. A bloom filter on `card_id`, the column
/// looked up by value.
pub fn scan_writer_properties(row_group_rows_max: usize) -> WriterProperties {
    let delta = Encoding::DELTA_BINARY_PACKED;
    let unique = [
        ("scan_id", Encoding::DELTA_LENGTH_BYTE_ARRAY),
        ("validator_id", Encoding::PLAIN),
        ("validator_seq", delta),
        ("stop_id", Encoding::PLAIN),
        ("card_id", delta),
        ("code_created_at", Encoding::PLAIN),
        ("code_counter", delta),
        ("scanned_at", delta),
        ("received_at", delta),
    ];
    archive_writer_properties(&unique, &["card_id"], Some(row_group_rows_max))
}

/// False positives of the archives' bloom filters. parquet rounds a
/// filter up to a power of two bytes, so 1 % (9.7 bits a value) would take
/// 16 bits a value, 2 bytes a row per filtered column at a full row group;
/// this rate comes to just under 8 bits a value, 64 KiB for 65 536 rows.
pub const BLOOM_FILTER_FALSE_POSITIVES: f64 = 0.03;

/// The archives' one encoding recipe: ZSTD level 3; the `unique` columns
/// without a dictionary and in the encoding given (a dotted path names a
/// nested one, `scan_ids.list.item`); bloom filters on the `bloom` columns
/// ([`BLOOM_FILTER_FALSE_POSITIVES`]), sized for a row group of
/// `row_group_rows_max` rows when one is set.
pub fn archive_writer_properties(
    unique: &[(&str, Encoding)],
    bloom: &[&str],
    row_group_rows_max: Option<usize>,
) -> WriterProperties {
    let path = |column: &str| ColumnPath::new(column.split('.').map(String::from).collect());
    let mut builder =
        WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()));
    if let Some(rows) = row_group_rows_max {
        builder = builder.set_max_row_group_row_count(Some(rows));
    }
    for (column, encoding) in unique {
        builder =
            builder.set_column_dictionary_enabled(path(column), false).set_column_encoding(path(column), *encoding);
    }
    for column in bloom {
        builder = builder
            .set_column_bloom_filter_enabled(path(column), true)
            .set_column_bloom_filter_fpp(path(column), BLOOM_FILTER_FALSE_POSITIVES);
        if let Some(rows) = row_group_rows_max {
            builder = builder.set_column_bloom_filter_max_ndv(path(column), u64::try_from(rows).unwrap_or(u64::MAX));
        }
    }
    builder.build()
}

pub struct ArchiveWriter {
    config: ArchiveWriterConfig,
    properties: WriterProperties,
    faults: Arc<Faults>,
    next_file_seq: u64,
    open: BTreeMap<NaiveDate, OpenFile>,
    /// The last service day known closed (its lateness has passed): a file
    /// for it is a `late-` file even when its folder does not exist yet.
    closed_through: Option<NaiveDate>,
}

impl ArchiveWriter {
    pub fn new(config: ArchiveWriterConfig, faults: Arc<Faults>) -> Result<ArchiveWriter, ArchiveError> {
        let properties = scan_writer_properties(config.row_group_rows_max);
        ArchiveWriter::with_properties(config, faults, properties)
    }

    /// A writer with another encoding: for measuring encodings against
    /// each other (`farestream gen-archive --compare-baseline`) only.
    pub fn with_properties(
        config: ArchiveWriterConfig,
        faults: Arc<Faults>,
        properties: WriterProperties,
    ) -> Result<ArchiveWriter, ArchiveError> {
        fs::create_dir_all(&config.root).map_err(|source| ArchiveError::Io { path: config.root.clone(), source })?;
        Ok(ArchiveWriter { config, faults, properties, next_file_seq: 0, open: BTreeMap::new(), closed_through: None })
    }

    /// Appends rows, each to its service date's open file. Rows wait in
    /// memory until a row group's worth is there, then go in sorted by
    /// validator and its count (see [`write_row_group`]). After an error
    /// the writer is abandoned ([`ArchiveWriter::abandon`]) and the rows
    /// read again from the log, as the archiver does.
    pub fn append(&mut self, rows: &[ArchivedScan], now: Instant) -> Result<(), ArchiveError> {
        let row_group_rows = self.config.row_group_rows_max.max(1);
        let mut rows = rows.iter().peekable();
        // A batch is nearly always one day: each run of one date goes to
        // its file as it comes, without regrouping the rows first.
        while let Some(date) = rows.peek().map(|row| row.service_date) {
            let faults = Arc::clone(&self.faults);
            let file = self.open_file(date, now)?;
            faults.before_write().map_err(|source| ArchiveError::Io { path: file.tmp_path.clone(), source })?;
            // Counted as they go in, so that after an error the count is
            // still what the file holds (the caller abandons the writer then).
            while let Some(row) = rows.next_if(|row| row.service_date == date) {
                file.rows += 1;
                file.pending.push(row);
                if file.pending.columns.len() >= row_group_rows {
                    write_row_group(file)?;
                }
            }
        }
        Ok(())
    }

    /// True when a file reached its size or age limit.
    pub fn cut_due(&self, now: Instant) -> bool {
        self.open.values().any(|f| {
            let size = (f.writer.bytes_written() + f.writer.in_progress_size()) as u64 + f.pending.bytes;
            size >= self.config.file_bytes_max || now.duration_since(f.opened_at) >= self.config.file_age_max
        })
    }

    /// Days up to `date` are closed: files opened for them are late files.
    pub fn set_closed_through(&mut self, date: NaiveDate) {
        self.closed_through = self.closed_through.max(Some(date));
    }

    /// `DATA_DIR/archive/scans`.
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// Closes every open file, naming each after the log range
    /// `[from_lsn, to_lsn)` that its rows came from.
    pub fn close_all(&mut self, from_lsn: u64, to_lsn: u64) -> Result<Vec<ClosedFile>, ArchiveError> {
        let mut closed = Vec::new();
        while let Some((date, file)) = self.open.pop_first() {
            closed.push(self.close(date, file, from_lsn, to_lsn)?);
        }
        Ok(closed)
    }

    /// Drops every open file unfinished (after a failed write): the rows
    /// are still in the log and will be written again.
    pub fn abandon(&mut self) {
        while let Some((_, file)) = self.open.pop_first() {
            drop(file.writer);
            let _ = fs::remove_file(&file.tmp_path);
        }
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
        let open_dir = open_files_dir(&self.config.root);
        for dir in [&dir, &open_dir] {
            fs::create_dir_all(dir).map_err(|source| ArchiveError::Io { path: dir.clone(), source })?;
        }
        let tmp_path = open_dir.join(format!(".open-{:06}.parquet.tmp", self.next_file_seq));
        self.next_file_seq += 1;
        let io = |source| ArchiveError::Io { path: tmp_path.clone(), source };
        self.faults.before_write().map_err(io)?;
        let file = File::create(&tmp_path).map_err(io)?;
        let writer = ArrowWriter::try_new(file, scan_schema(), Some(self.properties.clone()))
            .map_err(|source| ArchiveError::Parquet { path: tmp_path.clone(), source })?;
        let late = dir.join(SUCCESS_MARKER).exists() || self.closed_through.is_some_and(|closed| date <= closed);
        let pending = PendingRows::new();
        Ok(OpenFile { writer, tmp_path, opened_at: now, rows: 0, late, pending })
    }

    fn close(
        &self,
        date: NaiveDate,
        mut file: OpenFile,
        from_lsn: u64,
        to_lsn: u64,
    ) -> Result<ClosedFile, ArchiveError> {
        write_row_group(&mut file)?;
        // Paired with `append`'s count: the rows read from the log for this
        // file are the rows its row groups hold, before it is named.
        let in_row_groups: i64 = file.writer.flushed_row_groups().iter().map(|group| group.num_rows()).sum();
        assert_eq!(u64::try_from(in_row_groups).ok(), Some(file.rows), "rows appended to {}", file.tmp_path.display());
        let tmp = file.tmp_path;
        let kind = if file.late { "late" } else { "part" };
        let final_path =
            partition_dir(&self.config.root, date).join(format!("{kind}-{from_lsn:020}-{to_lsn:020}.parquet"));
        let inner = file.writer.into_inner().map_err(|source| ArchiveError::Parquet { path: tmp.clone(), source })?;
        let fsync = |source| ArchiveError::Fsync { path: tmp.clone(), source };
        crate::files::fsync(&inner, &self.faults).map_err(fsync)?;
        let rename = |source| ArchiveError::Rename { path: tmp.clone(), source };
        self.faults.before_rename().map_err(rename)?;
        fs::rename(&tmp, &final_path).map_err(rename)?;
        sync_dir(final_path.parent().unwrap_or(Path::new(".")), &self.faults)?;
        Ok(ClosedFile { path: final_path, rows: file.rows, service_date: date, late: file.late })
    }
}

/// Where files being written wait, outside every partition: `ROOT/.tmp`.
pub fn open_files_dir(root: &Path) -> PathBuf {
    root.join(".tmp")
}

/// `ROOT/service_date=YYYY-MM-DD`.
pub fn partition_dir(root: &Path, date: NaiveDate) -> PathBuf {
    root.join(partition_dir_name(date))
}

/// A service date's partition folder's name, `service_date=YYYY-MM-DD`.
pub fn partition_dir_name(date: NaiveDate) -> String {
    format!("service_date={}", date.format("%Y-%m-%d"))
}

/// The service date a partition directory (`service_date=YYYY-MM-DD`) names.
pub fn partition_date(dir: &Path) -> Option<NaiveDate> {
    dir.file_name()?.to_str()?.strip_prefix("service_date=")?.parse().ok()
}

/// The log range `[from, to)` an archive file's name gives, if it is one.
pub fn file_lsn_range(path: &Path) -> Option<(u64, u64)> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("part-").or_else(|| name.strip_prefix("late-"))?.strip_suffix(".parquet")?;
    let (from, to) = rest.split_once('-')?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

/// Makes a rename or a new file durable: the directory entry is data too.
pub fn sync_dir(dir: &Path, faults: &Faults) -> Result<(), ArchiveError> {
    crate::files::fsync_dir(dir, faults).map_err(|source| ArchiveError::Fsync { path: dir.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::read::{archive_files, read_all};
    use farestream_core::scan::{ScanStatus, TapKind};

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
            status: if seq.is_multiple_of(2) { ScanStatus::Accepted } else { ScanStatus::Replay },
            reason: (!seq.is_multiple_of(2)).then(|| "replayed".to_string()),
            service_date: date,
            gate_opened: Some(true),
            deny_list_version: Some(seq),
        }
    }

    fn writer(root: &Path, file_bytes_max: u64, file_age_max: Duration) -> ArchiveWriter {
        let config =
            ArchiveWriterConfig { root: root.to_path_buf(), file_bytes_max, file_age_max, row_group_rows_max: 1000 };
        ArchiveWriter::new(config, Arc::new(Faults::default())).expect("writer")
    }

    #[test]
    fn open_files_are_hidden_until_closed_and_rows_read_back_equal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (d1, d2) =
            (NaiveDate::from_ymd_opt(2026, 11, 25).expect("d"), NaiveDate::from_ymd_opt(2026, 11, 26).expect("d"));
        let mut w = writer(dir.path(), u64::MAX, Duration::from_secs(3600));
        let rows: Vec<_> = (0..10).map(|i| row(i, if i < 6 { d1 } else { d2 })).collect();
        w.append(&rows, Instant::now()).expect("append");
        assert!(archive_files(dir.path()).expect("list").is_empty(), "nothing visible while files are open");
        for date in [d1, d2] {
            let partition = partition_dir(dir.path(), date);
            let inside = fs::read_dir(&partition).map(|d| d.count()).unwrap_or(0);
            assert_eq!(inside, 0, "an open file is never inside a partition, where a glob would open it");
        }
        let closed = w.close_all(100, 250).expect("close");
        assert_eq!(closed.iter().map(|c| (c.service_date, c.rows)).collect::<Vec<_>>(), vec![(d1, 6), (d2, 4)]);
        assert!(closed.iter().all(|c| file_lsn_range(&c.path) == Some((100, 250))), "{closed:?}");
        let mut back = read_all(dir.path()).expect("read");
        back.sort_by_key(|r| r.validator_seq);
        assert_eq!(back, rows);
        let leftovers: Vec<_> = fs::read_dir(partition_dir(dir.path(), d1)).expect("dir").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        assert_eq!(fs::read_dir(open_files_dir(dir.path())).expect("tmp").count(), 0);
    }

    #[test]
    fn cuts_fall_due_at_the_size_and_age_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let date = NaiveDate::from_ymd_opt(2026, 11, 25).expect("d");
        let start = Instant::now();
        let mut by_size = writer(dir.path(), 1, Duration::from_secs(3600));
        assert!(!by_size.cut_due(start), "nothing open, nothing due");
        by_size.append(&[row(1, date)], start).expect("append");
        assert!(by_size.cut_due(start), "one byte is over the limit");

        let mut by_age = writer(dir.path(), u64::MAX, Duration::from_secs(300));
        by_age.append(&[row(1, date)], start).expect("append");
        assert!(!by_age.cut_due(start + Duration::from_secs(299)));
        assert!(by_age.cut_due(start + Duration::from_secs(300)));
    }

    #[test]
    fn a_closed_day_gets_late_files_and_abandoned_files_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let date = NaiveDate::from_ymd_opt(2026, 11, 25).expect("d");
        fs::create_dir_all(partition_dir(dir.path(), date)).expect("dir");
        fs::write(partition_dir(dir.path(), date).join(SUCCESS_MARKER), "").expect("marker");
        let mut w = writer(dir.path(), u64::MAX, Duration::from_secs(300));
        w.append(&[row(1, date)], Instant::now()).expect("append");
        let closed = w.close_all(0, 10).expect("close");
        assert!(closed[0].late && closed[0].path.to_string_lossy().contains("late-"), "{closed:?}");
        w.append(&[row(2, date)], Instant::now()).expect("append");
        w.abandon();
        let names: Vec<_> = fs::read_dir(partition_dir(dir.path(), date))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "the marker and the late file, no temporary file: {names:?}");
    }

    #[test]
    fn a_closed_day_without_a_folder_still_gets_a_late_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let date = NaiveDate::from_ymd_opt(2026, 11, 20).expect("d");
        let mut w = writer(dir.path(), u64::MAX, Duration::from_secs(300));
        w.set_closed_through(date);
        w.set_closed_through(date.pred_opt().expect("d"));
        w.append(&[row(1, date), row(2, date.succ_opt().expect("d"))], Instant::now()).expect("append");
        let closed = w.close_all(0, 10).expect("close");
        let names: Vec<(NaiveDate, bool)> = closed.iter().map(|c| (c.service_date, c.late)).collect();
        assert_eq!(names, vec![(date, true), (date.succ_opt().expect("d"), false)], "closed days never go backwards");
        assert!(closed[0].path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("late-")));
    }

    #[test]
    fn a_whole_file_encoded_at_once_is_the_writers_file_and_the_same_rows_give_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let date = NaiveDate::from_ymd_opt(2026, 11, 20).expect("d");
        let on_two_validators = |i: u64| ArchivedScan { validator_id: format!("bus-{}", 2 - i % 2), ..row(i, date) };
        let rows: Vec<_> = (0..10).rev().map(on_two_validators).collect();
        let bytes = encode_scans_file(&rows, 4, "test").expect("encode");
        assert_eq!(encode_scans_file(&rows, 4, "test").expect("again"), bytes, "deterministic");
        std::fs::create_dir_all(partition_dir(dir.path(), date)).expect("partition");
        let path = partition_dir(dir.path(), date).join("f.parquet");
        std::fs::write(&path, &bytes).expect("write");
        let mut expected = rows.clone();
        expected.chunks_mut(4).for_each(|group| group.sort_by_key(|r| (r.validator_id.clone(), r.validator_seq)));
        assert_eq!(super::super::read::read_file(&path).expect("read"), expected, "sorted in row groups of 4");
        let empty = encode_scans_file(&[], 4, "empty").expect("no rows");
        std::fs::write(&path, &empty).expect("write");
        assert!(super::super::read::read_file(&path).expect("read").is_empty());
        let one_group = encode_scans_file(&rows, usize::MAX, "one").expect("one group");
        std::fs::write(&path, &one_group).expect("write");
        assert_eq!(super::super::read::read_file(&path).expect("read").len(), 10);
    }

    #[test]
    fn row_groups_are_sorted_by_validator_encoded_by_column_and_filter_cards() {
        use parquet::basic::Encoding;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().expect("tempdir");
        let date = NaiveDate::from_ymd_opt(2026, 11, 20).expect("d");
        let config = ArchiveWriterConfig {
            root: dir.path().to_path_buf(),
            file_bytes_max: u64::MAX,
            file_age_max: Duration::from_secs(300),
            row_group_rows_max: 4,
        };
        let mut w = ArchiveWriter::new(config, Arc::new(Faults::default())).expect("writer");
        let on_two_validators = |i: u64| ArchivedScan { validator_id: format!("bus-{}", 2 - i % 2), ..row(i, date) };
        let rows: Vec<_> = (0..10).rev().map(on_two_validators).collect();
        w.append(&rows, Instant::now()).expect("append");
        let closed = w.close_all(0, 1).expect("close");
        let back = read_all(dir.path()).expect("read");
        let seqs: Vec<u64> = back.iter().map(|r| r.validator_seq).collect();
        assert_eq!(
            seqs,
            vec![7, 9, 6, 8, 3, 5, 2, 4, 1, 0],
            "each row group of 4 sorted by validator (bus-1 holds the odd ones), then its count, in arrival order"
        );
        let mut expected = rows.clone();
        expected.chunks_mut(4).for_each(|group| group.sort_by_key(|r| (r.validator_id.clone(), r.validator_seq)));
        assert_eq!(back, expected, "whole rows, every column moved with its row");
        let reader = SerializedFileReader::new(File::open(&closed[0].path).expect("open")).expect("parquet");
        let metadata = reader.metadata();
        assert_eq!(metadata.num_row_groups(), 3);
        let schema = metadata.file_metadata().schema_descr();
        for (i, column) in schema.columns().iter().enumerate() {
            let has_bloom = metadata.row_group(0).column(i).bloom_filter_offset().is_some();
            assert_eq!(has_bloom, column.name() == "card_id", "{}", column.name());
            let encodings = metadata.row_group(0).column(i).encodings().collect::<Vec<_>>();
            let expected = match column.name() {
                "scan_id" => Some(Encoding::DELTA_LENGTH_BYTE_ARRAY),
                "validator_id" | "stop_id" | "code_created_at" => Some(Encoding::PLAIN),
                "validator_seq" | "card_id" | "code_counter" | "scanned_at" | "received_at" => {
                    Some(Encoding::DELTA_BINARY_PACKED)
                }
                _ => None,
            };
            if let Some(expected) = expected {
                assert!(encodings.contains(&expected), "{}: {encodings:?}", column.name());
                let dictionary = encodings.contains(&Encoding::RLE_DICTIONARY);
                assert!(!dictionary, "{}: many values, no dictionary: {encodings:?}", column.name());
            } else if column.name() == "status" {
                assert!(encodings.contains(&Encoding::RLE_DICTIONARY), "status has a dictionary: {encodings:?}");
            }
        }
    }
}
