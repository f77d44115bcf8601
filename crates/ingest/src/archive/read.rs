//! Reads the archive back: the demo's summary and the tests count what is
//! really on disk, not what the server believes it wrote.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::ChunkReader;

use super::parquet_writer::{ArchiveError, partition_date};
use farestream_core::archive::charge_rows::charges_from_record_batch;
use farestream_core::archive::schema::from_record_batch;
use farestream_core::charges::ChargeRecord;
use farestream_core::scan::{ArchivedScan, ScanStatus};

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + use<> {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { path, source }
}

/// Every complete archive file under `root`, sorted: `*.parquet` in
/// `service_date=*` partitions. Temporary files start with a dot and are skipped.
pub fn archive_files(root: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut files = Vec::new();
    if !root.exists() {
        return Ok(files);
    }
    for partition in fs::read_dir(root).map_err(io_error(root))? {
        let partition = partition.map_err(io_error(root))?.path();
        if !partition.is_dir() || partition_date(&partition).is_none() {
            continue;
        }
        for entry in fs::read_dir(&partition).map_err(io_error(&partition))? {
            let path = entry.map_err(io_error(&partition))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".parquet") && !name.starts_with('.') {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// All rows of one archive file.
pub fn read_file(path: &Path) -> Result<Vec<ArchivedScan>, ArchiveError> {
    read_rows(path, from_record_batch)
}

/// All rows of one charges archive file.
pub fn read_charges_file(path: &Path) -> Result<Vec<ChargeRecord>, ArchiveError> {
    read_rows(path, charges_from_record_batch)
}

/// All charges under the charges archive's `root`.
pub fn read_all_charges(root: &Path) -> Result<Vec<ChargeRecord>, ArchiveError> {
    let mut rows = Vec::new();
    for path in archive_files(root)? {
        rows.extend(read_charges_file(&path)?);
    }
    Ok(rows)
}

/// Rows of one file, in the service date its partition names (the files
/// do not repeat it, as in every Hive layout).
fn read_rows<T>(
    path: &Path,
    decode: fn(&arrow_array::RecordBatch, NaiveDate) -> Result<Vec<T>, arrow_schema::ArrowError>,
) -> Result<Vec<T>, ArchiveError> {
    let service_date = path.parent().and_then(partition_date).ok_or_else(|| ArchiveError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not in a service_date=YYYY-MM-DD partition"),
    })?;
    let file = File::open(path).map_err(|source| ArchiveError::Io { path: path.to_path_buf(), source })?;
    decode_rows(file, path, service_date, decode)
}

/// All scans of one file's contents (a bucket's object, read whole by
/// its caller), `place` naming it in errors, its rows of `service_date`.
pub fn scans_in(
    file: impl ChunkReader + 'static,
    place: &Path,
    service_date: NaiveDate,
) -> Result<Vec<ArchivedScan>, ArchiveError> {
    decode_rows(file, place, service_date, from_record_batch)
}

/// The rows `decode` makes of a Parquet file's record batches.
fn decode_rows<T>(
    file: impl ChunkReader + 'static,
    place: &Path,
    service_date: NaiveDate,
    decode: fn(&arrow_array::RecordBatch, NaiveDate) -> Result<Vec<T>, arrow_schema::ArrowError>,
) -> Result<Vec<T>, ArchiveError> {
    let parquet = |source| ArchiveError::Parquet { path: place.to_path_buf(), source };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?.build().map_err(parquet)?;
    let mut rows = Vec::new();
    for batch in reader {
        rows.extend(decode(&batch?, service_date)?);
    }
    Ok(rows)
}

/// All rows under `root`.
pub fn read_all(root: &Path) -> Result<Vec<ArchivedScan>, ArchiveError> {
    let mut rows = Vec::new();
    for path in archive_files(root)? {
        rows.extend(read_file(&path)?);
    }
    Ok(rows)
}

/// Rows per status.
pub fn count_by_status(rows: &[ArchivedScan]) -> BTreeMap<ScanStatus, u64> {
    let mut counts = BTreeMap::new();
    for row in rows {
        *counts.entry(row.status).or_insert(0) += 1;
    }
    counts
}
