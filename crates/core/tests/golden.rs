//! The on-disk formats, pinned byte for byte: a write-ahead-log segment
//! header, a record frame, and a journal record. A change to any of them
//! fails here first; a deliberate one bumps the segment version or adds
//! fields compatibly, and keeps decoding the bytes below.
//!
//! The header and frame bytes were computed apart from this code (CRC32C by
//! its bit-by-bit definition); the journal bytes are what this build writes
//! for the rows below, checked field by field against `proto/journal.proto`
//! in the comments.

use std::sync::Arc;

use farestream_core::journal;
use farestream_core::scan::{ArchivedScan, ScanStatus, TapKind};
use farestream_core::wal::framing::{
    Frame, decode_record, decode_segment_header, encode_record, encode_segment_header,
};

#[test]
fn a_segment_header_is_these_24_bytes() {
    // "FARESWAL", version 1, start LSN 0x0102030405060708, CRC32C of the 20 bytes before.
    let golden = "464152455357414c000000010102030405060708caf797bc";
    assert_eq!(hex::encode(encode_segment_header(0x0102_0304_0506_0708)), golden);
    let bytes = hex::decode(golden).expect("hex");
    assert_eq!(decode_segment_header(&bytes), Ok(0x0102_0304_0506_0708));
}

#[test]
fn a_record_frame_is_length_crc_payload() {
    // Length 10, CRC32C of length and payload, then "farestream".
    let golden = "0000000a6025e87c6661726573747265616d";
    let mut frame = Vec::new();
    encode_record(b"farestream", &mut frame);
    assert_eq!(hex::encode(&frame), golden);
    assert_eq!(decode_record(&frame, 1024), Frame::Valid { payload: b"farestream" });
}

fn rows() -> Vec<ArchivedScan> {
    let row = ArchivedScan {
        scan_id: [0xab; 16],
        gateway_id: Arc::from("g"),
        validator_id: "v".into(),
        validator_seq: 7,
        route_id: "r".into(),
        stop_id: "s".into(),
        tap_kind: Some(TapKind::Exit),
        card_id: Some(42),
        issuer_key_id: Some(1),
        code_created_at: Some(1_000),
        code_counter: Some(3),
        scanned_at: 2_000,
        received_at: 3_000,
        status: ScanStatus::Accepted,
        reason: None,
        service_date: chrono::NaiveDate::from_ymd_opt(1970, 1, 2).expect("date"),
        gate_opened: None,
        deny_list_version: None,
    };
    let refused = ArchivedScan {
        tap_kind: None,
        card_id: None,
        issuer_key_id: None,
        code_created_at: None,
        code_counter: None,
        status: ScanStatus::Malformed,
        reason: Some("x".into()),
        ..row.clone()
    };
    vec![row, refused]
}

#[test]
fn a_journal_record_is_these_bytes() {
    // Kind byte 1, then JournalBatch: gateway_id "g" (tag 1), batch_seq 9
    // (tag 2), received_at_ms 3000 (tag 3), and two JournalRows (tag 4):
    // scan_id, validator_id, validator_seq, route_id, stop_id, tap_kind 2
    // (exit), card_id 42, issuer_key_id 1, code_created_at_ms 1000,
    // code_counter 3, scanned_at_ms 2000, status 1 (accepted), service_date 1;
    // then the same scan malformed: no tap kind or claims, status 8, reason "x".
    let golden = concat!(
        "01",
        "0a0167",
        "1009",
        "18b817",
        "222f",
        "0a10abababababababababababababababab",
        "120176",
        "1807",
        "220172",
        "2a0173",
        "3002",
        "382a",
        "4001",
        "48e807",
        "5003",
        "58d00f",
        "6001",
        "7001",
        "2227",
        "0a10abababababababababababababababab",
        "120176",
        "1807",
        "220172",
        "2a0173",
        "58d00f",
        "6008",
        "6a0178",
        "7001",
    );
    assert_eq!(hex::encode(journal::encode(&rows(), 9)), golden);
    assert_eq!(journal::decode(&hex::decode(golden).expect("hex")).expect("decodes"), rows());
}
