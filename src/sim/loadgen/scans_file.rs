//! The file `loadgen prepare` writes and `loadgen run` reads: scans signed
//! (and sealed) ahead, already cut into batches, so the timed part of a
//! run spends nothing on signatures.
//!
//! Layout: the 8-byte magic `FSLOAD01`, the batch count (u64, big-endian),
//! then each batch as a frame: its length (u32, big-endian) and the
//! `ScanBatch` message. Reading checks every length against its limit
//! before it allocates.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use prost::Message;
use thiserror::Error;

use crate::wire::ScanBatch;

/// The file's first bytes.
pub const SCANS_FILE_MAGIC: &[u8; 8] = b"FSLOAD01";
/// The most batches one file holds: 2^20 batches of a few hundred scans
/// is far past what this machine signs or pushes in a run.
pub const SCANS_FILE_BATCHES_MAX: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum ScansFileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}: not a loadgen scans file (it does not start with FSLOAD01)")]
    BadMagic(String),
    #[error("{path}: {count} batches, over the limit of {SCANS_FILE_BATCHES_MAX}")]
    TooManyBatches { path: String, count: u64 },
    #[error("{path}: batch {index} is {len} bytes, over wire.frame_bytes_max ({max})")]
    FrameTooLarge { path: String, index: u64, len: u32, max: u32 },
    #[error("{path}: the file ends inside batch {index} of {count}")]
    Truncated { path: String, index: u64, count: u64 },
    #[error("{path}: batch {index} is not a ScanBatch: {error}")]
    Decode { path: String, index: u64, error: prost::DecodeError },
    #[error("{path}: bytes after the last of its {count} batches")]
    TrailingBytes { path: String, count: u64 },
}

/// Writes `batches` to `path`; returns the bytes written.
pub fn write_scans_file(path: &Path, batches: &[ScanBatch]) -> Result<u64, ScansFileError> {
    let io = |source| ScansFileError::Io { path: path.display().to_string(), source };
    let count = batches.len() as u64;
    if count > SCANS_FILE_BATCHES_MAX {
        return Err(ScansFileError::TooManyBatches { path: path.display().to_string(), count });
    }
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    out.write_all(SCANS_FILE_MAGIC).map_err(io)?;
    out.write_all(&count.to_be_bytes()).map_err(io)?;
    let mut bytes = 16u64;
    for batch in batches {
        let body = batch.encode_to_vec();
        let len = u32::try_from(body.len()).map_err(|_| io(std::io::Error::other("a batch over 4 GiB")))?;
        out.write_all(&len.to_be_bytes()).map_err(io)?;
        out.write_all(&body).map_err(io)?;
        bytes += 4 + u64::from(len);
    }
    out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    Ok(bytes)
}

/// Reads the batches of `path`, each at most `frame_bytes_max` bytes.
pub fn read_scans_file(path: &Path, frame_bytes_max: u32) -> Result<Vec<ScanBatch>, ScansFileError> {
    let name = || path.display().to_string();
    let io = |source| ScansFileError::Io { path: name(), source };
    let mut input = BufReader::new(File::open(path).map_err(io)?);
    let mut header = [0u8; 16];
    if !read_full(&mut input, &mut header).map_err(io)? || &header[..8] != SCANS_FILE_MAGIC {
        return Err(ScansFileError::BadMagic(name()));
    }
    let count = u64::from_be_bytes(header[8..].try_into().expect("8 bytes"));
    if count > SCANS_FILE_BATCHES_MAX {
        return Err(ScansFileError::TooManyBatches { path: name(), count });
    }
    let mut batches = Vec::with_capacity(usize::try_from(count.min(4_096)).unwrap_or(4_096));
    let mut body = Vec::new();
    for index in 0..count {
        let truncated = || ScansFileError::Truncated { path: name(), index, count };
        let mut len = [0u8; 4];
        if !read_full(&mut input, &mut len).map_err(io)? {
            return Err(truncated());
        }
        let len = u32::from_be_bytes(len);
        if len > frame_bytes_max {
            return Err(ScansFileError::FrameTooLarge { path: name(), index, len, max: frame_bytes_max });
        }
        body.resize(len as usize, 0);
        if !read_full(&mut input, &mut body).map_err(io)? {
            return Err(truncated());
        }
        let batch = ScanBatch::decode(body.as_slice()).map_err(|error| ScansFileError::Decode {
            path: name(),
            index,
            error,
        })?;
        batches.push(batch);
    }
    if read_full(&mut input, &mut [0u8; 1]).map_err(io)? {
        return Err(ScansFileError::TrailingBytes { path: name(), count });
    }
    Ok(batches)
}

/// Fills `buf`; false if the input ended first (even part way).
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    match input.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ScanRecord;

    fn batch(seq: u64, scans: usize) -> ScanBatch {
        let scan = ScanRecord { validator_id: "g/1".into(), ride_code: vec![1; 207], ..Default::default() };
        ScanBatch { gateway_id: "g".into(), batch_seq: seq, scans: vec![scan; scans] }
    }

    /// Every field at its extremes: no batches, an empty batch, a batch at
    /// the frame limit and one byte over, a file cut anywhere, bytes after
    /// the end, a count over the limit, a wrong magic.
    #[test]
    fn a_scans_file_round_trips_and_every_damage_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scans.bin");
        assert_eq!(write_scans_file(&path, &[]).expect("empty"), 16);
        assert_eq!(read_scans_file(&path, 1 << 20).expect("empty").len(), 0);
        let batches = vec![batch(1, 0), batch(2, 3), batch(u64::MAX, 1)];
        write_scans_file(&path, &batches).expect("write");
        assert_eq!(read_scans_file(&path, 1 << 20).expect("read"), batches);
        let largest = batches.iter().map(|b| b.encoded_len() as u32).max().expect("some");
        assert!(read_scans_file(&path, largest).is_ok(), "a frame exactly at the limit");
        let over = read_scans_file(&path, largest - 1);
        assert!(matches!(over, Err(ScansFileError::FrameTooLarge { index: 1, .. })), "{over:?}");
        let whole = std::fs::read(&path).expect("bytes");
        for cut in [0, 7, 15, 16, 19, whole.len() - 1] {
            std::fs::write(&path, &whole[..cut]).expect("cut");
            let read = read_scans_file(&path, 1 << 20);
            let named = match cut {
                0..16 => matches!(read, Err(ScansFileError::BadMagic(_))),
                _ => matches!(read, Err(ScansFileError::Truncated { count: 3, .. })),
            };
            assert!(named, "cut at {cut}: {read:?}");
        }
        std::fs::write(&path, [whole.as_slice(), &[0]].concat()).expect("trailing");
        assert!(matches!(read_scans_file(&path, 1 << 20), Err(ScansFileError::TrailingBytes { count: 3, .. })));
        let mut huge = whole.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        std::fs::write(&path, &huge).expect("count");
        assert!(matches!(read_scans_file(&path, 1 << 20), Err(ScansFileError::TooManyBatches { .. })));
        let mut garbled = whole.clone();
        garbled[20] = 0xff;
        std::fs::write(&path, &garbled).expect("garbled");
        assert!(matches!(read_scans_file(&path, 1 << 20), Err(ScansFileError::Decode { index: 0, .. })));
        let mut wrong = whole;
        wrong[0] = b'X';
        std::fs::write(&path, &wrong).expect("magic");
        assert!(matches!(read_scans_file(&path, 1 << 20), Err(ScansFileError::BadMagic(_))));
    }
}
