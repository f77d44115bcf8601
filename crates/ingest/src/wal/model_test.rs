//! Model-based test of the log: random appends, syncs and crashes, where a
//! crash keeps a random part of the unsynced bytes (possibly followed by
//! garbage, as a torn sector would leave). After every recovery the log must
//! hold every synced record, and only a prefix of what was appended.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;

use proptest::prelude::*;

use super::{WalConfig, WalCursor, WalError, WalWriter, delete_segments_before, list_segments, open};
use crate::faults::Faults;
use farestream_core::wal::framing::{SEGMENT_HEADER_BYTES, encode_record};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Sync,
    Crash { keep_per_mille: u16, garbage: Vec<u8> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(1usize..120, 1..4).prop_map(Op::Append),
        2 => Just(Op::Sync),
        1 => (0u16..=1000, proptest::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(keep_per_mille, garbage)| Op::Crash { keep_per_mille, garbage }),
    ]
}

fn config(dir: &std::path::Path) -> WalConfig {
    WalConfig { dir: dir.to_path_buf(), segment_bytes_max: 256, record_bytes_max: 1024 }
}

fn payload(index: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (index * 31 + i) as u8).collect()
}

fn frames(payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    payloads
        .iter()
        .map(|p| {
            let mut frame = Vec::new();
            encode_record(p, &mut frame);
            frame
        })
        .collect()
}

fn read_all(dir: &std::path::Path, first: u64, end: u64) -> Vec<Vec<u8>> {
    let mut cursor = WalCursor::new(dir.to_path_buf(), 1024, first);
    cursor.read_until(end).expect("read back").into_iter().map(|r| r.payload).collect()
}

/// What a crash leaves of the last segment: everything synced, a prefix of
/// the rest, and maybe some garbage after it.
fn crash(writer: WalWriter, dir: &std::path::Path, keep_per_mille: u16, garbage: &[u8]) {
    let synced = writer.synced_lsn();
    drop(writer);
    let Some((start, path)) = list_segments(dir).expect("list").pop() else {
        return;
    };
    let len = std::fs::metadata(&path).expect("meta").len();
    let synced_len = (SEGMENT_HEADER_BYTES as u64 + synced.saturating_sub(start)).min(len);
    let keep = synced_len + (len - synced_len) * u64::from(keep_per_mille) / 1000;
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(keep).expect("truncate");
    if keep < len {
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&garbage[..garbage.len().min((len - keep) as usize)]).expect("garbage");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn recovery_keeps_every_synced_record_and_only_a_prefix(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = open(config(dir.path()), Arc::new(Faults::default()), 0).expect("open").writer;
        let mut appended: Vec<Vec<u8>> = Vec::new();
        let mut synced = 0usize;
        for op in ops {
            match op {
                Op::Append(lens) => {
                    let new: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &len)| payload(appended.len() + i, len)).collect();
                    writer.append(&frames(&new)).expect("append");
                    appended.extend(new);
                }
                Op::Sync => {
                    writer.sync().expect("sync");
                    synced = appended.len();
                }
                Op::Crash { keep_per_mille, garbage } => {
                    crash(writer, dir.path(), keep_per_mille, &garbage);
                    let recovered = open(config(dir.path()), Arc::new(Faults::default()), 0).expect("recovery");
                    let got = read_all(dir.path(), recovered.first_lsn, recovered.end_lsn);
                    prop_assert!(got.len() >= synced, "lost synced records: {} < {synced}", got.len());
                    prop_assert_eq!(&got[..], &appended[..got.len()]);
                    appended.truncate(got.len());
                    synced = got.len();
                    writer = recovered.writer;
                }
            }
        }
    }
}

#[test]
fn corruption_before_a_good_record_is_an_error_with_its_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = open(config(dir.path()), Arc::new(Faults::default()), 0).expect("open").writer;
    writer.append(&frames(&[payload(0, 20), payload(1, 20), payload(2, 20)])).expect("append");
    writer.sync().expect("sync");
    drop(writer);
    let (_, path) = list_segments(dir.path()).expect("list").pop().expect("segment");
    let mut bytes = std::fs::read(&path).expect("read");
    let second_record = SEGMENT_HEADER_BYTES + 8 + 20;
    bytes[second_record + 10] ^= 0xff;
    std::fs::write(&path, bytes).expect("write");
    match open(config(dir.path()), Arc::new(Faults::default()), 0) {
        Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, second_record as u64),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("corruption in the middle was accepted"),
    }
}

#[test]
fn lsns_continue_across_reopen_and_segment_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = open(config(dir.path()), Arc::new(Faults::default()), 0).expect("open").writer;
    let many: Vec<Vec<u8>> = (0..20).map(|i| payload(i, 50)).collect();
    let end = writer.append(&frames(&many)).expect("append");
    writer.sync().expect("sync");
    assert!(list_segments(dir.path()).expect("list").len() > 3, "small segments rolled");
    delete_segments_before(dir.path(), end, &Faults::default()).expect("delete");
    assert_eq!(list_segments(dir.path()).expect("list").len(), 1, "only the open segment is kept");
    drop(writer);
    let recovered = open(config(dir.path()), Arc::new(Faults::default()), 0).expect("reopen");
    assert_eq!(recovered.end_lsn, end);
    let mut writer = recovered.writer;
    let next = writer.append(&frames(&[payload(99, 10)])).expect("append");
    assert_eq!(next, end + 18);
}
