//! Appending to the log: frames are written at explicit offsets
//! (`write_all_at`), so a write that failed half way (a full disk) is simply
//! written again at the same place.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{WalConfig, WalError, segment_path};
use crate::faults::Faults;
use farestream_core::wal::framing::{SEGMENT_HEADER_BYTES, encode_segment_header};

pub(super) struct OpenSegment {
    pub file: File,
    pub path: PathBuf,
    pub start_lsn: u64,
    /// File length: where the next frame goes.
    pub len: u64,
}

impl OpenSegment {
    pub(super) fn end_lsn(&self) -> u64 {
        self.start_lsn + self.len - SEGMENT_HEADER_BYTES as u64
    }
}

/// The writing end of the log. One owner; not shared between threads.
pub struct WalWriter {
    pub(super) config: WalConfig,
    pub(super) faults: Arc<Faults>,
    pub(super) segment: Option<OpenSegment>,
    /// LSN after the last byte written (not necessarily synced).
    pub(super) written_lsn: u64,
    /// LSN after the last byte known durable.
    pub(super) synced_lsn: u64,
}

impl WalWriter {
    /// Appends whole frames (each from [`farestream_core::wal::framing::encode_record`]).
    /// A frame never spans segments: a segment rolls before the frame that
    /// would overflow it, and a frame larger than a segment gets one of its
    /// own. On error, `written_lsn` tells how far the frames got: frames
    /// ending at or before it are on disk (not yet synced) and must not be
    /// written again.
    pub fn append(&mut self, frames: &[Vec<u8>]) -> Result<u64, WalError> {
        let mut next = 0;
        while next < frames.len() {
            if self.segment.is_none() {
                self.create_segment()?;
            }
            let room = self.room_in_segment();
            let segment_is_empty = self.segment.as_ref().is_some_and(|s| s.len == SEGMENT_HEADER_BYTES as u64);
            let mut take = 0;
            let mut bytes = 0u64;
            while let Some(frame) = frames.get(next + take) {
                let fits = bytes + frame.len() as u64 <= room;
                // An oversized frame still goes first into an empty segment.
                let oversized_alone = segment_is_empty && take == 0;
                if !(fits || oversized_alone) {
                    break;
                }
                bytes += frame.len() as u64;
                take += 1;
            }
            if take == 0 {
                self.roll()?;
                continue;
            }
            self.write_to_segment(&frames[next..next + take].concat())?;
            next += take;
        }
        Ok(self.written_lsn)
    }

    /// Makes everything written so far durable.
    pub fn sync(&mut self) -> Result<u64, WalError> {
        if let Some(segment) = &self.segment
            && self.synced_lsn < self.written_lsn
        {
            self.faults.before_fsync().map_err(|source| WalError::Fsync { path: segment.path.clone(), source })?;
            segment.file.sync_data().map_err(|source| WalError::Fsync { path: segment.path.clone(), source })?;
        }
        self.synced_lsn = self.written_lsn;
        Ok(self.synced_lsn)
    }

    /// Counts what is written as durable without an fsync. Benchmarks only:
    /// it is what `wal.fsync_enabled = false` does.
    pub fn skip_sync(&mut self) -> u64 {
        self.synced_lsn = self.written_lsn;
        self.synced_lsn
    }

    pub fn written_lsn(&self) -> u64 {
        self.written_lsn
    }

    pub fn synced_lsn(&self) -> u64 {
        self.synced_lsn
    }

    fn room_in_segment(&self) -> u64 {
        match &self.segment {
            Some(s) => self.config.segment_bytes_max.saturating_sub(s.len),
            None => 0,
        }
    }

    fn write_to_segment(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        if self.segment.is_none() {
            self.create_segment()?;
        }
        let segment = self.segment.as_mut().expect("created above");
        let write = |segment: &OpenSegment| -> std::io::Result<()> {
            self.faults.before_write()?;
            segment.file.write_all_at(bytes, segment.len)
        };
        write(segment).map_err(|source| WalError::Write { path: segment.path.clone(), source })?;
        segment.len += bytes.len() as u64;
        self.written_lsn = segment.end_lsn();
        Ok(())
    }

    /// Seals the current segment (fsync) and starts the next.
    fn roll(&mut self) -> Result<(), WalError> {
        self.sync()?;
        self.segment = None;
        self.create_segment()
    }

    fn create_segment(&mut self) -> Result<(), WalError> {
        let start_lsn = self.written_lsn;
        let path = segment_path(&self.config.dir, start_lsn);
        let io = |source| WalError::Write { path: path.clone(), source };
        self.faults.before_write().map_err(io)?;
        let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).map_err(io)?;
        let header = encode_segment_header(start_lsn);
        if let Err(source) = file.write_all_at(&header, 0) {
            let _ = fs::remove_file(&path);
            return Err(WalError::Write { path, source });
        }
        // The header and the directory entry are made durable at once, so
        // recovery never meets a segment without a valid header but for a
        // crash in these few lines (handled there).
        let fsync = |source| WalError::Fsync { path: path.clone(), source };
        crate::files::fsync(&file, &self.faults).map_err(fsync)?;
        sync_dir(&self.config.dir, &self.faults)?;
        self.segment = Some(OpenSegment { file, path, start_lsn, len: SEGMENT_HEADER_BYTES as u64 });
        Ok(())
    }
}

pub(super) fn sync_dir(dir: &Path, faults: &Faults) -> Result<(), WalError> {
    crate::files::fsync_dir(dir, faults).map_err(|source| WalError::Fsync { path: dir.to_path_buf(), source })
}
