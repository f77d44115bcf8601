//! What the write-ahead log records: one [`JournalBatch`] per processed
//! batch, holding its archive rows with their verdicts. Schema in
//! `proto/journal.proto`; encoded with prost. The first payload byte is a
//! record kind, so later record kinds (charges) can share the log.

use std::sync::Arc;

use prost::Message;
use thiserror::Error;

use crate::scan::{ArchivedScan, TapKind};
use crate::service_day::{date_from_days, days_since_epoch};
use crate::wire::{WireScanStatus, WireTapKind};

/// Record kind byte: a batch of archive rows.
pub(crate) const KIND_SCAN_ROWS: u8 = 1;

/// Generated from `proto/journal.proto` at build time (see `build.rs`). The
/// `.proto` file is their documentation.
#[allow(missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/farestream.journal.v1.rs"));
}

pub use generated::{JournalBatch, JournalRow};

/// Why a log record does not decode into archive rows. Its checksum passed, so this is a record from
/// another build or a bug, not disk damage; every reader of the log stops on it rather than skipping rows.
#[derive(Debug, Error)]
pub enum JournalError {
    /// The record has no payload, not even its kind byte.
    #[error("journal record is empty")]
    Empty,
    /// The kind byte names no record kind this build knows, e.g. one a newer build wrote.
    #[error("journal record kind {0} is unknown")]
    UnknownKind(u8),
    /// The body is not a valid `JournalBatch`.
    #[error("journal record does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A row decoded but one of its fields is out of range.
    #[error("journal row {index}: {what}")]
    BadRow {
        /// Position of the row in the record.
        index: usize,
        /// Which field is wrong, and how.
        what: &'static str,
    },
}

/// Encodes the rows of one batch (all from one gateway, received together).
pub fn encode(rows: &[ArchivedScan], batch_seq: u64) -> Vec<u8> {
    let first = rows.first();
    let batch = JournalBatch {
        gateway_id: first.map(|r| r.gateway_id.to_string()).unwrap_or_default(),
        batch_seq,
        received_at_ms: first.map(|r| r.received_at).unwrap_or_default(),
        rows: rows.iter().map(to_journal_row).collect(),
    };
    let mut out = Vec::with_capacity(1 + batch.encoded_len());
    out.push(KIND_SCAN_ROWS);
    batch.encode(&mut out).expect("a Vec grows to fit");
    out
}

/// Decodes a record back into archive rows.
pub fn decode(payload: &[u8]) -> Result<Vec<ArchivedScan>, JournalError> {
    let (&kind, body) = payload.split_first().ok_or(JournalError::Empty)?;
    if kind != KIND_SCAN_ROWS {
        return Err(JournalError::UnknownKind(kind));
    }
    let batch = JournalBatch::decode(body)?;
    let gateway_id: Arc<str> = Arc::from(batch.gateway_id.as_str());
    let received_at = batch.received_at_ms;
    batch
        .rows
        .into_iter()
        .enumerate()
        .map(|(index, row)| from_journal_row(received_at, &gateway_id, row, index))
        .collect()
}

fn to_journal_row(row: &ArchivedScan) -> JournalRow {
    JournalRow {
        scan_id: row.scan_id.to_vec(),
        validator_id: row.validator_id.clone(),
        validator_seq: row.validator_seq,
        route_id: row.route_id.clone(),
        stop_id: row.stop_id.clone(),
        tap_kind: row.tap_kind.map(|k| WireTapKind::from(k) as i32).unwrap_or(0),
        card_id: row.card_id,
        issuer_key_id: row.issuer_key_id,
        code_created_at_ms: row.code_created_at,
        code_counter: row.code_counter,
        scanned_at_ms: row.scanned_at,
        status: WireScanStatus::from(row.status) as i32,
        reason: row.reason.clone(),
        service_date: days_since_epoch(row.service_date),
        gate_opened: row.gate_opened,
        deny_list_version: row.deny_list_version,
    }
}

/// Moves the decoded row's strings into the archive row: decoding a
/// record allocates each string once.
fn from_journal_row(
    received_at: i64,
    gateway_id: &Arc<str>,
    row: JournalRow,
    index: usize,
) -> Result<ArchivedScan, JournalError> {
    let bad = |what| JournalError::BadRow { index, what };
    let scan_id: [u8; 16] = row.scan_id.as_slice().try_into().map_err(|_| bad("scan_id is not 16 bytes"))?;
    let tap_kind: Option<TapKind> = match row.tap_kind {
        0 => None,
        n => Some(
            WireTapKind::try_from(n).ok().and_then(WireTapKind::to_tap_kind).ok_or_else(|| bad("unknown tap kind"))?,
        ),
    };
    let status = WireScanStatus::try_from(row.status)
        .ok()
        .and_then(WireScanStatus::to_scan_status)
        .ok_or_else(|| bad("unknown status"))?;
    let service_date = date_from_days(row.service_date).ok_or_else(|| bad("service_date out of range"))?;
    Ok(ArchivedScan {
        scan_id,
        gateway_id: Arc::clone(gateway_id),
        validator_id: row.validator_id,
        validator_seq: row.validator_seq,
        route_id: row.route_id,
        stop_id: row.stop_id,
        tap_kind,
        card_id: row.card_id,
        issuer_key_id: row.issuer_key_id,
        code_created_at: row.code_created_at_ms,
        code_counter: row.code_counter,
        scanned_at: row.scanned_at_ms,
        received_at,
        status,
        reason: row.reason,
        service_date,
        gate_opened: row.gate_opened,
        deny_list_version: row.deny_list_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::ScanStatus;

    #[test]
    fn rows_round_trip_through_a_record() {
        let row = |seq: u64, status: ScanStatus, tap_kind: Option<TapKind>| ArchivedScan {
            scan_id: [seq as u8; 16],
            gateway_id: "station-01".into(),
            validator_id: "gate-3".into(),
            validator_seq: seq,
            route_id: "metro-1".into(),
            stop_id: "station-01".into(),
            tap_kind,
            card_id: (status != ScanStatus::Malformed).then_some(42),
            issuer_key_id: Some(1),
            code_created_at: Some(1_763_604_000_000),
            code_counter: Some(7),
            scanned_at: 1_763_604_010_000,
            received_at: 1_763_604_070_000,
            status,
            reason: (status != ScanStatus::Accepted).then(|| "why".to_string()),
            service_date: chrono::NaiveDate::from_ymd_opt(2025, 11, 20).expect("date"),
            gate_opened: (seq == 1).then_some(true),
            deny_list_version: (seq == 1).then_some(u64::MAX),
        };
        let rows = vec![
            row(1, ScanStatus::Accepted, Some(TapKind::Entry)),
            row(2, ScanStatus::Malformed, None),
            row(3, ScanStatus::Replay, Some(TapKind::Exit)),
        ];
        assert_eq!(decode(&encode(&rows, 9)).expect("decode"), rows);
        assert!(matches!(decode(&[9, 1, 2]), Err(JournalError::UnknownKind(9))));
    }
}
