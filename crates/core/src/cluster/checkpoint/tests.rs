use chrono::NaiveDate;

use super::*;

fn checkpoint(partition: u16, cut_sequence: u64, scans_from: u64, stream_ms: i64) -> ClaimCheckpoint {
    ClaimCheckpoint {
        partition: Partition::new(partition, PARTITIONS_MAX).expect("a partition"),
        cut_sequence,
        cut: CutRecord { arrivals_before_ms: stream_ms, closed_through: NaiveDate::from_ymd_opt(2026, 12, 6) },
        scans_from,
        stream_ms,
    }
}

#[test]
fn a_header_reads_back_as_written_at_every_fields_extremes() {
    let extremes = [
        checkpoint(0, 0, 1, i64::MIN),
        checkpoint(PARTITIONS_MAX - 1, u64::MAX, u64::MAX, i64::MAX),
        checkpoint(7, 1, 2, 0),
        ClaimCheckpoint {
            cut: CutRecord { arrivals_before_ms: i64::MIN, closed_through: None },
            ..checkpoint(1, 5, 9, -1)
        },
        ClaimCheckpoint {
            cut: CutRecord { arrivals_before_ms: 0, closed_through: Some(NaiveDate::MAX) },
            ..checkpoint(1, 5, 9, -1)
        },
    ];
    for written in extremes {
        let mut bytes = written.encode_header();
        assert_eq!(bytes.len(), CHECKPOINT_HEADER_LEN);
        bytes.extend_from_slice(b"snapshot");
        let (read, snapshot) = ClaimCheckpoint::decode_header(&bytes).expect("reads back");
        assert_eq!((read, snapshot), (written, &b"snapshot"[..]));
    }
}

#[test]
fn a_damaged_short_or_foreign_header_is_refused_by_name() {
    let good = checkpoint(3, 40, 41, 1_800_000_000_000).encode_header();
    assert_eq!(ClaimCheckpoint::decode_header(&[]), Err(CheckpointError::Short(0)));
    assert_eq!(ClaimCheckpoint::decode_header(&good[..54]), Err(CheckpointError::Short(54)));
    for at in [0, 8, 12, 14, 22, 30, 38, 50, 51, 54] {
        let mut damaged = good.clone();
        damaged[at] ^= 0x20;
        let refused = ClaimCheckpoint::decode_header(&damaged).expect_err("damaged");
        let wanted = if at < 8 { CheckpointError::NotACheckpoint } else { CheckpointError::Checksum };
        assert_eq!(refused, wanted, "byte {at}");
    }
    let resealed = |mut fields: Vec<u8>| {
        fields.truncate(CHECKPOINT_HEADER_LEN - 4);
        let crc = crc32c::crc32c(&fields);
        fields.extend_from_slice(&crc.to_le_bytes());
        fields
    };
    let mut version = good.clone();
    version[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(ClaimCheckpoint::decode_header(&resealed(version)), Err(CheckpointError::UnknownVersion(2)));
    let mut partition = good.clone();
    partition[12..14].copy_from_slice(&PARTITIONS_MAX.to_le_bytes());
    assert_eq!(ClaimCheckpoint::decode_header(&resealed(partition)), Err(CheckpointError::Partition(PARTITIONS_MAX)));
    let mut scans = good.clone();
    scans[22..30].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(ClaimCheckpoint::decode_header(&resealed(scans)), Err(CheckpointError::ScansFrom));
    let mut not_a_cut = good.clone();
    not_a_cut[CUT_AT] = 0xC1;
    assert!(matches!(ClaimCheckpoint::decode_header(&resealed(not_a_cut)), Err(CheckpointError::Cut(_))));
    let mut bad_day = good;
    bad_day[CUT_AT + 9..CUT_AT + 13].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(ClaimCheckpoint::decode_header(&resealed(bad_day)), Err(CheckpointError::Cut(_))));
}

#[test]
fn a_checkpoints_name_says_its_cut_and_scans_position_and_nothing_else_parses() {
    let newest = checkpoint(4_095, u64::MAX, u64::MAX, 0);
    assert_eq!(newest.path(), "checkpoints/partition-4095/cut-18446744073709551615-scans-18446744073709551615.claims");
    let file = |c: &ClaimCheckpoint| c.path().rsplit('/').next().expect("a name").to_string();
    assert_eq!(parse_checkpoint_name(&file(&newest)), Some((u64::MAX, u64::MAX)));
    assert_eq!(parse_checkpoint_name(&file(&checkpoint(0, 0, 1, 0))), Some((0, 1)));
    for other in [
        "",
        "cut--scans-.claims",
        "cut-00000000000000000001-scans-00000000000000000000.claims",
        "cut-18446744073709551616-scans-00000000000000000001.claims",
        "cut-0000000000000000001-scans-00000000000000000001.claims",
        "cut-00000000000000000001-scans-00000000000000000001.claims.tmp",
        "cut-+0000000000000000001-scans-00000000000000000001.claims",
        " cut-00000000000000000001-scans-00000000000000000001.claims",
        "cut-00000000000000000001.claims",
    ] {
        assert_eq!(parse_checkpoint_name(other), None, "{other:?}");
    }
}
