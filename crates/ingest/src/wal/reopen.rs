//! Opening the log: the recovery rules of the module doc, applied.

use std::fs::{self, OpenOptions};
use std::sync::Arc;

use super::segment_writer::{OpenSegment, WalWriter, sync_dir};
use super::{WalConfig, WalError, list_segments};
use crate::faults::Faults;
use farestream_core::wal::framing::{Frame, SEGMENT_HEADER_BYTES, decode_record, decode_segment_header};

/// The log after recovery, ready to append at `end_lsn`.
pub struct Recovered {
    pub writer: WalWriter,
    /// LSN of the oldest record still on disk.
    pub first_lsn: u64,
    pub end_lsn: u64,
    /// Bytes of a torn final record that were cut off.
    pub torn_bytes_cut: u64,
}

/// Opens (or creates) the log in `config.dir`. With no segment on disk the
/// log starts at `start_lsn_floor`, so LSNs never go back below what the
/// archive checkpoint already names.
pub fn open(config: WalConfig, faults: Arc<Faults>, start_lsn_floor: u64) -> Result<Recovered, WalError> {
    fs::create_dir_all(&config.dir).map_err(|source| WalError::Write { path: config.dir.clone(), source })?;
    let mut segments = list_segments(&config.dir)?;
    let mut torn_bytes_cut = 0;
    // A last segment whose header never made it to disk is a creation cut short.
    if let Some((_, path)) = segments.last() {
        let bytes = fs::read(path).map_err(|source| WalError::Read { path: path.clone(), source })?;
        if bytes.len() < SEGMENT_HEADER_BYTES {
            fs::remove_file(path).map_err(|source| WalError::Write { path: path.clone(), source })?;
            torn_bytes_cut += bytes.len() as u64;
            segments.pop();
        }
    }
    let first_lsn = segments.first().map(|(start, _)| *start).unwrap_or(start_lsn_floor);
    let mut expected_start = first_lsn;
    let mut open_segment = None;
    for (index, (start, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let bytes = fs::read(path).map_err(|source| WalError::Read { path: path.clone(), source })?;
        let corrupt = |offset: u64, what: String| WalError::Corrupt { path: path.clone(), offset, what };
        let header_start = decode_segment_header(&bytes).map_err(|e| corrupt(0, e.to_string()))?;
        if header_start != *start || *start != expected_start {
            return Err(corrupt(0, format!("segment starts at LSN {header_start}, the log expected {expected_start}")));
        }
        let valid_end = scan_records(&bytes, config.record_bytes_max);
        if valid_end < bytes.len() {
            if !is_last || valid_record_after(&bytes, valid_end, config.record_bytes_max) {
                return Err(corrupt(valid_end as u64, "record fails its length or CRC32C check".into()));
            }
            cut(path, valid_end as u64, &faults)?;
            torn_bytes_cut += (bytes.len() - valid_end) as u64;
        }
        expected_start = start + (valid_end - SEGMENT_HEADER_BYTES) as u64;
        if is_last {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|source| WalError::Write { path: path.clone(), source })?;
            open_segment = Some(OpenSegment { file, path: path.clone(), start_lsn: *start, len: valid_end as u64 });
        }
    }
    let end_lsn = expected_start;
    let writer = WalWriter { config, faults, segment: open_segment, written_lsn: end_lsn, synced_lsn: end_lsn };
    Ok(Recovered { writer, first_lsn, end_lsn, torn_bytes_cut })
}

/// Offset just past the last valid record of a segment's bytes.
fn scan_records(bytes: &[u8], record_bytes_max: u32) -> usize {
    let mut offset = SEGMENT_HEADER_BYTES;
    while let Frame::Valid { payload } = decode_record(&bytes[offset..], record_bytes_max) {
        offset += farestream_core::wal::framing::RECORD_HEADER_BYTES + payload.len();
    }
    offset
}

/// Whether any valid record starts after `from`: then the damage at `from`
/// is not a torn tail but corruption of data that was once complete.
fn valid_record_after(bytes: &[u8], from: usize, record_bytes_max: u32) -> bool {
    ((from + 1)..bytes.len()).any(|offset| {
        matches!(decode_record(&bytes[offset..], record_bytes_max), Frame::Valid { payload } if !payload.is_empty())
    })
}

fn cut(path: &std::path::Path, len: u64, faults: &Faults) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| WalError::Write { path: path.to_path_buf(), source })?;
    file.set_len(len).map_err(|source| WalError::Write { path: path.to_path_buf(), source })?;
    crate::files::fsync(&file, faults).map_err(|source| WalError::Fsync { path: path.to_path_buf(), source })?;
    sync_dir(path.parent().unwrap_or(std::path::Path::new(".")), faults)
}
