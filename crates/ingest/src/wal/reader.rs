//! Reading the log forward from an LSN, up to a limit the caller knows is
//! durable: the archiver tails the log with this, and recovery replays it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::{WalError, list_segments};
use farestream_core::wal::framing::{Frame, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, decode_record};

/// One record and where it sits in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub lsn: u64,
    pub end_lsn: u64,
    pub payload: Vec<u8>,
}

pub struct WalCursor {
    dir: PathBuf,
    record_bytes_max: u32,
    /// The next record to read starts here.
    lsn: u64,
    segment: Option<(File, PathBuf, u64)>,
}

impl WalCursor {
    /// A cursor at `lsn`, which must be a record boundary.
    pub fn new(dir: PathBuf, record_bytes_max: u32, lsn: u64) -> WalCursor {
        WalCursor { dir, record_bytes_max, lsn, segment: None }
    }

    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Every record from the cursor up to `to_lsn` (a record boundary).
    pub fn read_until(&mut self, to_lsn: u64) -> Result<Vec<WalRecord>, WalError> {
        let mut records = Vec::new();
        while self.lsn < to_lsn {
            records.extend(self.read_next(to_lsn)?);
        }
        Ok(records)
    }

    /// The records from the cursor up to `to_lsn` or the end of the cursor's
    /// segment, whichever comes first: at most one segment in memory.
    pub fn read_next(&mut self, to_lsn: u64) -> Result<Vec<WalRecord>, WalError> {
        let mut records = Vec::new();
        while self.lsn < to_lsn && records.is_empty() {
            let (segment_end, is_last) = self.open_segment_at_cursor()?;
            if self.lsn >= segment_end {
                if is_last {
                    // Only a caller asking past the written log gets here.
                    let what = format!("the log ends at LSN {segment_end}, before LSN {to_lsn}");
                    return Err(WalError::Corrupt { path: self.dir.clone(), offset: 0, what });
                }
                self.segment = None;
                continue;
            }
            let (file, path, start) = self.segment.as_ref().expect("opened above");
            let want = (to_lsn.min(segment_end) - self.lsn) as usize;
            let offset = SEGMENT_HEADER_BYTES as u64 + (self.lsn - start);
            let mut bytes = vec![0u8; want];
            file.read_exact_at(&mut bytes, offset).map_err(|source| WalError::Read { path: path.clone(), source })?;
            let mut at = 0;
            while at < bytes.len() {
                let Frame::Valid { payload } = decode_record(&bytes[at..], self.record_bytes_max) else {
                    let what = "record fails its length or CRC32C check while reading back".to_string();
                    return Err(WalError::Corrupt { path: path.clone(), offset: offset + at as u64, what });
                };
                let lsn = self.lsn + at as u64;
                at += RECORD_HEADER_BYTES + payload.len();
                records.push(WalRecord { lsn, end_lsn: self.lsn + at as u64, payload: payload.to_vec() });
            }
            self.lsn += want as u64;
        }
        Ok(records)
    }

    /// Opens the segment holding the cursor; returns that segment's end LSN
    /// (the next segment's start, or the file's current end) and whether it
    /// is the last segment.
    fn open_segment_at_cursor(&mut self) -> Result<(u64, bool), WalError> {
        let segments = list_segments(&self.dir)?;
        let index = segments.iter().rposition(|(start, _)| *start <= self.lsn).ok_or_else(|| WalError::Corrupt {
            path: self.dir.clone(),
            offset: 0,
            what: format!("no segment holds LSN {}", self.lsn),
        })?;
        let (start, path) = &segments[index];
        let reopen = !matches!(&self.segment, Some((_, open, _)) if open == path);
        if reopen {
            let file = File::open(path).map_err(|source| WalError::Read { path: path.clone(), source })?;
            self.segment = Some((file, path.clone(), *start));
        }
        match segments.get(index + 1) {
            Some((next_start, _)) => Ok((*next_start, false)),
            None => {
                let (file, path, _) = self.segment.as_ref().expect("opened above");
                let len = file.metadata().map_err(|source| WalError::Read { path: path.clone(), source })?.len();
                Ok((start + len.saturating_sub(SEGMENT_HEADER_BYTES as u64), true))
            }
        }
    }
}
