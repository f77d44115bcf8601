//! A record of a partition's claimed log (docs/scale-out.md, "Partition
//! owners"): the rows its owner claimed from one record of the scans
//! stream, in the verdicts the owner gave them, and that record's
//! sequence in the scans stream, where the next owner resumes. The
//! claimed log is to a partition what the node's own log is to a single
//! node: the archiver and the pricer read it, and a new owner rebuilds
//! the partition's dedup indexes from it.
//!
//! The rows claimed from one scans record may need several claimed
//! records (a replay's reason makes a row longer than it came in); every
//! part but the last says more follow, so a new owner knows whether the
//! scans record it names was claimed whole.
//!
//! ```text
//! offset size field
//!      0    1 kind            = 0xC1
//!      1    8 scans_sequence  u64, big-endian, at least 1
//!      9    4 redelivered     u32, big-endian
//!     13    1 more_follow     0 (the last part) or 1
//!     14      the rows: a journal record (`journal::encode`)
//! ```
//!
//! Between them the owner writes cuts ([`CutRecord`]): the rows from one
//! cut to the next are one segment, archived as one file per service
//! date named after the two cuts (`super::segments`). The owner decides
//! where segments end (by size and age, its clock's business); writing
//! the decision into the fenced log makes the archive a function of the
//! log alone, so any number of archivers, a paused old one included,
//! write the same files under the same names.
//!
//! ```text
//! offset size field
//!      0    1 kind                = 0xC2
//!      1    8 arrivals_before_ms  i64, big-endian: every scan of the
//!                                 partition received before it is in a
//!                                 record before this cut
//!      9    4 closed_through      i32, big-endian: the last service day
//!                                 closed in the partition as of this cut,
//!                                 in days from 0001-01-01 (chrono's
//!                                 `num_days_from_ce`); i32::MIN: none
//! ```
//!
//! Which days a cut closes is the owner's decision, made with its
//! service day and accepted lateness and written here, so an archiver's
//! own settings never change a file's name or when a day closes.

use chrono::{Datelike, NaiveDate};
use thiserror::Error;

use crate::journal::{self, JournalError};
use crate::scan::ArchivedScan;

/// The first byte of every claimed record.
const KIND_CLAIMED: u8 = 0xC1;
const HEADER_LEN: usize = 14;
/// The first byte of a cut.
const KIND_CUT: u8 = 0xC2;
const CUT_LEN: usize = 13;
/// `closed_through` when no day is closed.
const NO_DAY: i32 = i32::MIN;

/// The end of a segment of a partition's claimed log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutRecord {
    /// Every scan of the partition received before this moment is in a
    /// claimed record before this cut: the service days whose deadline it
    /// has passed are closed in this partition.
    pub arrivals_before_ms: i64,
    /// The last service day closed in the partition as of this cut: its
    /// rows in later segments are late.
    pub closed_through: Option<NaiveDate>,
}

impl CutRecord {
    /// The cut's 13 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CUT_LEN);
        out.push(KIND_CUT);
        out.extend_from_slice(&self.arrivals_before_ms.to_be_bytes());
        let days = self.closed_through.map_or(NO_DAY, |d| d.num_days_from_ce());
        out.extend_from_slice(&days.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<CutRecord, ClaimedRecordError> {
        let fields: [u8; CUT_LEN - 1] =
            bytes[1..].try_into().map_err(|_| ClaimedRecordError::CutLength(bytes.len()))?;
        let (at, days) = fields.split_at(8);
        let arrivals_before_ms = i64::from_be_bytes(at.try_into().expect("8 bytes"));
        let days = i32::from_be_bytes(days.try_into().expect("4 bytes"));
        let closed_through = match days {
            NO_DAY => None,
            days => Some(NaiveDate::from_num_days_from_ce_opt(days).ok_or(ClaimedRecordError::CutDay(days))?),
        };
        Ok(CutRecord { arrivals_before_ms, closed_through })
    }
}

/// Either kind of record in a partition's claimed log.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimedEntry {
    /// Rows the owner claimed.
    Rows(ClaimedRecord),
    /// The end of a segment.
    Cut(CutRecord),
}

impl ClaimedEntry {
    /// An entry back from its bytes, by its first byte; every field checked.
    pub fn decode(bytes: &[u8]) -> Result<ClaimedEntry, ClaimedRecordError> {
        match bytes.first() {
            Some(&KIND_CUT) => CutRecord::decode(bytes).map(ClaimedEntry::Cut),
            _ => ClaimedRecord::decode(bytes).map(ClaimedEntry::Rows),
        }
    }
}

/// One record of a partition's claimed log.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRecord {
    /// The scans stream's sequence of the record these rows came from.
    pub scans_sequence: u64,
    /// Scans of that record dropped as re-deliveries (counted on its
    /// first part).
    pub redelivered: u32,
    /// More claimed records follow with rows of the same scans record.
    pub more_follow: bool,
    /// The claimed rows, in stream order, with the owner's verdicts.
    pub rows: Vec<ArchivedScan>,
}

/// Why bytes are not a claimed record.
#[derive(Debug, Error)]
pub enum ClaimedRecordError {
    /// Shorter than the header.
    #[error("a claimed record of {0} bytes is shorter than its 14-byte header")]
    Short(usize),
    /// The first byte is not a claimed record's kind.
    #[error("byte 0 is {0:#04x}, not a claimed record's 0xC1 or a cut's 0xC2")]
    Kind(u8),
    /// A cut is not exactly its 13 bytes.
    #[error("a cut of {0} bytes; a cut is 13")]
    CutLength(usize),
    /// A cut's closed day is outside the calendar.
    #[error("a cut's closed day {0} (days from 0001-01-01) is outside the calendar")]
    CutDay(i32),
    /// The scans-stream sequence is 0, which no record has.
    #[error("a claimed record names scans-stream sequence 0; the stream counts from 1")]
    NoSequence,
    /// The more-follow flag is neither 0 nor 1.
    #[error("a claimed record's more-follow byte is {0}, not 0 or 1")]
    Flag(u8),
    /// The rows do not decode.
    #[error("a claimed record's rows: {0}")]
    Rows(#[from] JournalError),
}

impl ClaimedRecord {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.scans_sequence > 0, "a claimed record names the scans record it came from");
        let rows = journal::encode(&self.rows, 0);
        let mut out = Vec::with_capacity(HEADER_LEN + rows.len());
        out.push(KIND_CLAIMED);
        out.extend_from_slice(&self.scans_sequence.to_be_bytes());
        out.extend_from_slice(&self.redelivered.to_be_bytes());
        out.push(u8::from(self.more_follow));
        out.extend_from_slice(&rows);
        out
    }

    /// A record back from its bytes; every field checked.
    pub fn decode(bytes: &[u8]) -> Result<ClaimedRecord, ClaimedRecordError> {
        let Some((header, rows)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(ClaimedRecordError::Short(bytes.len()));
        };
        if header[0] != KIND_CLAIMED {
            return Err(ClaimedRecordError::Kind(header[0]));
        }
        let scans_sequence = u64::from_be_bytes(header[1..9].try_into().expect("8 bytes"));
        if scans_sequence == 0 {
            return Err(ClaimedRecordError::NoSequence);
        }
        let redelivered = u32::from_be_bytes(header[9..13].try_into().expect("4 bytes"));
        let more_follow = match header[13] {
            0 => false,
            1 => true,
            other => return Err(ClaimedRecordError::Flag(other)),
        };
        Ok(ClaimedRecord { scans_sequence, redelivered, more_follow, rows: journal::decode(rows)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::ScanStatus;

    fn record(scans_sequence: u64, redelivered: u32, n: u8) -> ClaimedRecord {
        let row = |i: u8| ArchivedScan { scan_id: [i; 16], status: ScanStatus::Replay, ..ArchivedScan::blank() };
        ClaimedRecord { scans_sequence, redelivered, more_follow: n % 2 == 1, rows: (0..n).map(row).collect() }
    }

    #[test]
    fn records_at_their_extremes_read_back_as_written() {
        for written in [record(1, 0, 0), record(u64::MAX, u32::MAX, 3), record(7, 2, 200)] {
            assert_eq!(ClaimedRecord::decode(&written.encode()).expect("decodes"), written);
        }
    }

    #[test]
    fn cuts_at_their_extremes_read_back_and_a_cut_of_another_length_is_refused() {
        let days = [None, Some(NaiveDate::MIN), Some(NaiveDate::MAX), NaiveDate::from_ymd_opt(2026, 12, 6)];
        for (at, closed_through) in [i64::MIN, -1, 0, 1, i64::MAX].into_iter().zip(days.into_iter().cycle()) {
            let cut = CutRecord { arrivals_before_ms: at, closed_through };
            assert_eq!(ClaimedEntry::decode(&cut.encode()).expect("decodes"), ClaimedEntry::Cut(cut));
        }
        let cut = CutRecord { arrivals_before_ms: 7, closed_through: None }.encode();
        assert!(matches!(ClaimedEntry::decode(&cut[..12]), Err(ClaimedRecordError::CutLength(12))));
        let longer = [cut.as_slice(), &[0]].concat();
        assert!(matches!(ClaimedEntry::decode(&longer), Err(ClaimedRecordError::CutLength(14))));
        let mut beyond = cut.clone();
        beyond[9..].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(ClaimedEntry::decode(&beyond), Err(ClaimedRecordError::CutDay(i32::MAX))));
        assert!(matches!(ClaimedEntry::decode(&[]), Err(ClaimedRecordError::Short(0))));
        let rows = record(3, 0, 2);
        assert_eq!(ClaimedEntry::decode(&rows.encode()).expect("rows"), ClaimedEntry::Rows(rows));
    }

    #[test]
    fn damaged_records_are_refused_by_what_is_wrong() {
        let good = record(9, 1, 2).encode();
        assert!(matches!(ClaimedRecord::decode(&[]), Err(ClaimedRecordError::Short(0))));
        assert!(matches!(ClaimedRecord::decode(&good[..13]), Err(ClaimedRecordError::Short(13))));
        let mut kind = good.clone();
        kind[0] = 1;
        assert!(matches!(ClaimedRecord::decode(&kind), Err(ClaimedRecordError::Kind(1))));
        let mut zero = good.clone();
        zero[1..9].fill(0);
        assert!(matches!(ClaimedRecord::decode(&zero), Err(ClaimedRecordError::NoSequence)));
        let mut flag = good.clone();
        flag[13] = 2;
        assert!(matches!(ClaimedRecord::decode(&flag), Err(ClaimedRecordError::Flag(2))));
        assert!(matches!(ClaimedRecord::decode(&good[..14]), Err(ClaimedRecordError::Rows(JournalError::Empty))));
        assert!(matches!(ClaimedRecord::decode(&good[..good.len() - 1]), Err(ClaimedRecordError::Rows(_))));
    }
}
