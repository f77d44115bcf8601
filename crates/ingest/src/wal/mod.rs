//! The write-ahead log: the product's own, so its rules are written here.
//!
//! # Why
//!
//! A gateway deletes what the server acknowledges, so an ack must mean "on
//! disk, and will be archived exactly once". Every processed batch (its
//! archive rows and their verdicts) is appended here and fsynced before its
//! ack is sent; many batches share one fsync (group commit, see
//! [`committer`]). The archiver reads the log back and writes Parquet.
//!
//! # On-disk format
//!
//! The log is a directory of segment files, `wal-<START_LSN>.seg`, where an
//! LSN (log sequence number) is a position in the logical stream of record
//! bytes: segment headers do not count, so LSNs run on across segments.
//!
//! ```text
//! segment  = header record*
//! header   = magic "FARESWAL" (8) | version u32 = 1 | start_lsn u64 | crc32c(previous 20 bytes) u32
//! record   = payload_len u32 | crc32c(payload_len bytes ++ payload) u32 | payload
//! ```
//!
//! Integers are big-endian; CRC32C is the Castagnoli polynomial, hardware
//! accelerated by the `crc32c` crate. A record never spans two segments.
//! The log does not interpret payloads; [`farestream_core::journal`] does.
//!
//! # Limits
//!
//! - `wal.segment_bytes_max`: a segment rolls before the record that would
//!   take it past this size (a record larger than that gets a segment alone);
//! - `wal.record_bytes_max`: a longer record is refused when written and
//!   treated as damage when read.
//!
//! # Writing
//!
//! Frames are written with `pwrite` at the offset the writer tracks, then
//! `fdatasync`. A new segment's header is fsynced with its directory entry
//! before any record goes in; the previous segment is fsynced before the
//! new one is created, so only the last segment can hold unsynced bytes.
//! A failed fsync is fatal: the kernel may have dropped the dirty pages, so
//! retrying could report durable what is not. A full disk is not fatal: the
//! frames are written again at the same offset once space returns.
//!
//! # Recovery
//!
//! On open, segments are read in LSN order:
//!
//! 1. Segment starts must chain (each starts where the previous ended) and
//!    each header must be valid, or the log is corrupt. The one exception is
//!    a last segment whose header is incomplete: the crash came while it was
//!    being created, and it is removed.
//! 2. Records are read until the first that is short or fails its CRC. In
//!    the last segment, if no valid record follows it anywhere in the file,
//!    it is the torn tail of an unsynced write: the file is cut there (those
//!    bytes were never acknowledged). Anything else, a bad record followed by
//!    a good one or a bad record in an earlier segment, is corruption of
//!    acknowledged data: [`WalError::Corrupt`] names the file and offset and
//!    the server refuses to start.
//!
//! Segments are deleted only when everything in them is archived (the
//! archive checkpoint has passed their end); the segment being written is
//! never deleted, so LSNs keep counting up across restarts.

pub mod committer;
mod reader;
mod reopen;
mod segment_writer;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use reader::{WalCursor, WalRecord};
pub use reopen::{Recovered, open};
pub use segment_writer::WalWriter;

#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub segment_bytes_max: u64,
    pub record_bytes_max: u32,
}

#[derive(Debug, Error)]
pub enum WalError {
    #[error("write-ahead log write to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("write-ahead log fsync of {path} failed: {source}; stopping, recovery takes over on restart")]
    Fsync { path: PathBuf, source: std::io::Error },
    #[error("write-ahead log read of {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("write-ahead log is corrupt: {path} at byte {offset}: {what}")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("record of {len} bytes is over wal.record_bytes_max ({max})")]
    RecordTooLarge { len: usize, max: u32 },
}

impl WalError {
    /// A full disk: wait and write again. Everything else is not retried.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Write { source, .. } if crate::faults::is_disk_full(source))
    }
}

/// Deletes sealed segments that end at or before `lsn` (everything in them
/// is archived). The last segment, the one being written, is never deleted.
pub fn delete_segments_before(dir: &Path, lsn: u64, faults: &crate::faults::Faults) -> Result<usize, WalError> {
    let segments = list_segments(dir)?;
    let mut deleted = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next_start, _)) = (&pair[0], &pair[1]);
        if *next_start <= lsn {
            std::fs::remove_file(path).map_err(|source| WalError::Write { path: path.clone(), source })?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        segment_writer::sync_dir(dir, faults)?;
    }
    Ok(deleted)
}

/// Where a data dir's write-ahead log lives.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// Whether a server has started on `data_dir` before (its log exists):
/// what it made on a first start (TLS identity, fleet CA) is then never
/// made again silently.
pub fn has_served(data_dir: &Path) -> bool {
    wal_dir(data_dir).exists()
}

pub fn segment_path(dir: &Path, start_lsn: u64) -> PathBuf {
    dir.join(format!("wal-{start_lsn:020}.seg"))
}

/// Segments in the directory, by start LSN (from their names).
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let read = |source| WalError::Read { path: dir.to_path_buf(), source };
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let start = name.strip_prefix("wal-").and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse::<u64>().ok());
        if let Some(start) = start {
            segments.push((start, path));
        }
    }
    segments.sort();
    Ok(segments)
}
#[cfg(test)]
mod model_test;
