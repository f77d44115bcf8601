//! A partition owner's checkpoint (docs/scale-out.md, "Checkpoints"):
//! where its claiming stood at one of its cuts, and its dedup indexes
//! then, so the next owner loads one file and reads the claimed log from
//! that cut on instead of from the stream's first record. A failover then
//! costs one checkpoint interval of claimed records, not the stream's age,
//! and the streams can give up what every reader and every checkpoint
//! kept has passed.
//!
//! Layout: this header, then the dedup snapshot
//! (`crate::ingest::dedup::snapshot`, replaying from the record after the
//! cut) with its own checksum.
//!
//! ```text
//! offset size field
//!      0    8 magic `FSCLAIM\0`
//!      8    4 version, 1 (little-endian, as the snapshot)
//!     12    2 partition     u16
//!     14    8 cut_sequence  u64: the claimed log's sequence of the cut
//!     22    8 scans_from    u64: the scans stream's first record still
//!                           to claim then (at least 1)
//!     30    8 stream_ms     i64: the latest arrival claimed then
//!     38   13 the cut, as the claimed log holds it
//!     51    4 CRC-32C of every byte before it
//! ```
//!
//! A checkpoint is made only at a cut appended while no scans record was
//! claimed in part, so nothing else needs keeping. It stands only where
//! the claimed log still holds the same cut at `cut_sequence`: a
//! checkpoint of a stream made again (sequences start from 1 once more)
//! is passed over. Any owner's checkpoint will do, a fenced one's too:
//! claiming is a function of the logs, so the state at a cut is the same
//! whoever reached it.

use thiserror::Error;

use super::{ClaimedEntry, CutRecord, PARTITIONS_MAX, Partition};
use crate::clock::UnixMillis;

const MAGIC: [u8; 8] = *b"FSCLAIM\0";
/// The layout this build writes and reads.
pub const CHECKPOINT_VERSION: u32 = 1;
/// The header's length, checksum included; the snapshot follows it.
pub const CHECKPOINT_HEADER_LEN: usize = 55;
const CUT_AT: usize = 38;
const CUT_LEN: usize = 13;

/// Where a partition's claiming stood at one of its cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimCheckpoint {
    /// The partition whose claiming it is.
    pub partition: Partition,
    /// The claimed log's sequence of the cut.
    pub cut_sequence: u64,
    /// The cut, as the claimed log holds it there.
    pub cut: CutRecord,
    /// The scans stream's first record still to claim.
    pub scans_from: u64,
    /// The latest arrival among the rows claimed up to the cut.
    pub stream_ms: UnixMillis,
}

/// Why a checkpoint's header cannot be used; the owner then passes it
/// over for an older one, or reads the claimed log from its start.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// It ends inside its header.
    #[error("a checkpoint of {0} bytes is shorter than its {CHECKPOINT_HEADER_LEN}-byte header")]
    Short(usize),
    /// It does not start with the magic.
    #[error("not a claim checkpoint (no magic)")]
    NotACheckpoint,
    /// A layout this build does not read.
    #[error("checkpoint version {0}, this build reads {CHECKPOINT_VERSION}")]
    UnknownVersion(u32),
    /// The header's bytes are not the ones written.
    #[error("the checkpoint header's checksum does not match: it is damaged")]
    Checksum,
    /// A partition number no cluster has.
    #[error("the checkpoint names partition {0}, past the most a cluster has")]
    Partition(u16),
    /// The cut it was taken at is not one.
    #[error("the checkpoint's cut does not decode: {0}")]
    Cut(String),
    /// A scans position no stream has.
    #[error("the checkpoint's scans position is 0 (the first record is 1)")]
    ScansFrom,
}

impl ClaimCheckpoint {
    /// The header's bytes; the caller writes the dedup snapshot after
    /// them, replaying from `cut_sequence + 1`.
    pub fn encode_header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_HEADER_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.partition.number().to_le_bytes());
        out.extend_from_slice(&self.cut_sequence.to_le_bytes());
        out.extend_from_slice(&self.scans_from.to_le_bytes());
        out.extend_from_slice(&self.stream_ms.to_le_bytes());
        out.extend_from_slice(&self.cut.encode());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), CHECKPOINT_HEADER_LEN);
        out
    }

    /// The header at the start of `bytes`, and the snapshot after it.
    pub fn decode_header(bytes: &[u8]) -> Result<(ClaimCheckpoint, &[u8]), CheckpointError> {
        if bytes.len() < CHECKPOINT_HEADER_LEN {
            return Err(CheckpointError::Short(bytes.len()));
        }
        let (header, snapshot) = bytes.split_at(CHECKPOINT_HEADER_LEN);
        if header[..8] != MAGIC {
            return Err(CheckpointError::NotACheckpoint);
        }
        let (fields, crc) = header.split_at(CHECKPOINT_HEADER_LEN - 4);
        if crc32c::crc32c(fields) != u32::from_le_bytes(array(crc)) {
            return Err(CheckpointError::Checksum);
        }
        let version = u32::from_le_bytes(array(&fields[8..12]));
        if version != CHECKPOINT_VERSION {
            return Err(CheckpointError::UnknownVersion(version));
        }
        let number = u16::from_le_bytes(array(&fields[12..14]));
        let partition = Partition::new(number, PARTITIONS_MAX).ok_or(CheckpointError::Partition(number))?;
        let scans_from = u64::from_le_bytes(array(&fields[22..30]));
        if scans_from == 0 {
            return Err(CheckpointError::ScansFrom);
        }
        let cut = match ClaimedEntry::decode(&fields[CUT_AT..CUT_AT + CUT_LEN]) {
            Ok(ClaimedEntry::Cut(cut)) => cut,
            Ok(ClaimedEntry::Rows(_)) => return Err(CheckpointError::Cut("claimed rows, not a cut".to_string())),
            Err(e) => return Err(CheckpointError::Cut(e.to_string())),
        };
        let checkpoint = ClaimCheckpoint {
            partition,
            cut_sequence: u64::from_le_bytes(array(&fields[14..22])),
            cut,
            scans_from,
            stream_ms: i64::from_le_bytes(array(&fields[30..38])),
        };
        Ok((checkpoint, snapshot))
    }

    /// Where it is kept under the shared archive: its cut and scans
    /// position in its name, so a listing says how far every reader of
    /// the partition's streams may need to go back.
    pub fn path(&self) -> String {
        format!("{}/cut-{:020}-scans-{:020}.claims", checkpoint_dir(self.partition), self.cut_sequence, self.scans_from)
    }
}

/// The folder, under the shared archive, of partition `p`'s checkpoints.
pub fn checkpoint_dir(partition: Partition) -> String {
    format!("checkpoints/partition-{:04}", partition.number())
}

/// A checkpoint's file name as [`ClaimCheckpoint::path`] ends it: its cut
/// sequence and scans position; `None` for any other name (a file being
/// written, an operator's copy).
pub fn parse_checkpoint_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("cut-")?.strip_suffix(".claims")?;
    let (cut, scans) = rest.split_once("-scans-")?;
    let is_number = |digits: &str| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit());
    if !is_number(cut) || !is_number(scans) {
        return None;
    }
    let (cut, scans_from): (u64, u64) = (cut.parse().ok()?, scans.parse().ok()?);
    (scans_from > 0).then_some((cut, scans_from))
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests;
