use super::*;
use crate::ingest::dedup::{DedupLimits, RideKey};
use crate::ridecode::FreshnessPolicy;
use crate::scan::TapKind;

const WINDOWS: FreshnessPolicy = FreshnessPolicy {
    code_validity_secs: 60,
    clock_skew_secs: 30,
    credential_validity_secs: 93_600,
    unsealed_refused_from_secs: None,
};
const HEADER: SnapshotHeader = SnapshotHeader { replay_from_lsn: 4_096, written_at: 1_000 };

fn horizons() -> Horizons {
    Horizons::new(WINDOWS, 259_200)
}

fn ride(counter: u32) -> RideKey {
    RideKey { card_id: 9, created_at: 1_800_000_000, counter }
}

fn fingerprint(i: u32) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&i.to_le_bytes());
    key
}

/// 1 000 deliveries and rides, half frozen before the snapshot froze the
/// rest; ride 0 entered and exited, the others entered; key 999 expired.
fn filled() -> DedupIndex {
    let index = DedupIndex::new(
        DedupLimits { hot_entries_max: 1 << 20, cold_sweep_interval_ms: 0, ..DedupLimits::DEFAULT },
        0xfeed,
    );
    for i in 0..1_000u32 {
        let expires = if i == 999 { 2_000 } else { 10_000_000 };
        assert!(index.claim_delivery(fingerprint(i), expires, 0));
        assert!(index.claim_ride(ride(i), TapKind::Entry, expires, 0));
        if i == 499 {
            index.sweep(0);
        }
    }
    assert!(index.claim_ride(ride(0), TapKind::Exit, 10_000_000, 0));
    index
}

/// `n` deliveries and single rides, all live.
fn singles(n: u32) -> DedupIndex {
    let index = DedupIndex::new(DedupLimits::DEFAULT, 7);
    for i in 0..n {
        index.claim_delivery(fingerprint(i), 10_000_000, 0);
        index.claim_ride(ride(i), TapKind::Single, 10_000_000, 0);
    }
    index
}

fn snapshot_of(index: &DedupIndex) -> Vec<u8> {
    let mut bytes = Vec::new();
    index.write_snapshot(HEADER, horizons(), &mut bytes).expect("written");
    bytes
}

fn load(bytes: &[u8], now: UnixMillis) -> Result<(DedupIndex, SnapshotHeader, SnapshotCounts), SnapshotError> {
    let index = DedupIndex::new(DedupLimits::DEFAULT, 0x0dd);
    let (header, counts) = index.load_snapshot(horizons(), now, bytes, |_| Ok(()))?;
    Ok((index, header, counts))
}

/// A loaded snapshot decides every claim as the written indexes did,
/// with another seed to start from, and without the expired keys.
#[test]
fn a_snapshot_loads_back_the_same_decisions() {
    let index = filled();
    let bytes = snapshot_of(&index);
    assert_eq!(bytes.len(), 8 + 4 + 8 + 8 + 24 + 16 + (8 + 20 * 1_000) + (8 + 21 * 1_000) + 4);
    let (loaded, header, counts) = load(&bytes, 3_000).expect("loaded");
    assert_eq!(header, HEADER);
    assert_eq!(counts, SnapshotCounts { deliveries: 999, rides: 999 }, "key 999 expired");
    assert_eq!((loaded.sizes().deliveries, loaded.sizes().rides), (999, 999));
    assert!(
        !loaded.claim_delivery(fingerprint(0), 10_000_000, 0)
            && !loaded.claim_delivery(fingerprint(998), 10_000_000, 0)
    );
    assert!(loaded.claim_delivery(fingerprint(999), 10_000_000, 0), "an expired key is gone");
    assert!(!loaded.claim_ride(ride(0), TapKind::Exit, 10_000_000, 0), "ride 0 exited already");
    assert!(loaded.claim_ride(ride(1), TapKind::Exit, 10_000_000, 0), "ride 1 may still exit");
    assert!(!loaded.claim_ride(ride(2), TapKind::Entry, 10_000_000, 0));
    assert!(loaded.claim_delivery(fingerprint(5_000), 10_000_000, 0), "a new key is new");
}

/// Any damage is found: every byte changed, every truncation, a byte
/// added. None loads.
#[test]
fn a_damaged_snapshot_never_loads() {
    let bytes = snapshot_of(&singles(20));
    assert!(load(&bytes, 0).is_ok());
    let fresh = DedupIndex::new(DedupLimits::DEFAULT, 1);
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        assert!(fresh.load_snapshot(horizons(), 0, &damaged[..], |_| Ok(())).is_err(), "byte {at} changed");
        assert!(fresh.load_snapshot(horizons(), 0, &bytes[..at], |_| Ok(())).is_err(), "cut at {at}");
        assert_eq!((fresh.sizes().deliveries, fresh.sizes().rides), (0, 0), "left empty after {at}");
        assert_eq!(fresh.mix.seed(), 1, "its own seed kept after {at}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(load(&longer, 0), Err(SnapshotError::TrailingBytes)));
}

/// The header's refusals, each with its own error.
#[test]
fn a_snapshot_from_other_windows_or_versions_is_refused() {
    let bytes = snapshot_of(&filled());
    let other = Horizons::new(WINDOWS, 3_600);
    let index = DedupIndex::new(DedupLimits::DEFAULT, 1);
    assert!(matches!(index.load_snapshot(other, 0, &bytes[..], |_| Ok(())), Err(SnapshotError::OtherWindows)));
    let mut version = bytes.clone();
    version[8] = 2;
    assert!(matches!(load(&version, 0), Err(SnapshotError::UnknownVersion(2))));
    assert!(matches!(load(b"not a snapshot", 0), Err(SnapshotError::NotASnapshot)));
    assert!(matches!(load(&[], 0), Err(SnapshotError::Io(_))));
    let used = DedupIndex::new(DedupLimits::DEFAULT, 1);
    used.claim_delivery([1; 16], 10_000_000, 0);
    assert!(matches!(used.load_snapshot(horizons(), 0, &bytes[..], |_| Ok(())), Err(SnapshotError::NotEmpty)));
    let refused = index.load_snapshot(horizons(), 0, &bytes[..], |header| Err(format!("{}", header.replay_from_lsn)));
    assert!(matches!(refused, Err(SnapshotError::Refused(reason)) if reason == "4096"));
    assert_eq!(index.sizes().deliveries, 0, "nothing loaded after a refusal");
}

/// Entries out of order, or with uses no claim makes, are refused even
/// under a correct checksum (a snapshot from a buggy writer).
#[test]
fn entries_out_of_order_or_impossible_are_refused() {
    let bytes = snapshot_of(&singles(2));
    let deliveries_at = 8 + 4 + 8 + 8 + 24 + 16 + 8;
    let rides_at = deliveries_at + 2 * 20 + 8;
    let with_crc = |mut body: Vec<u8>| {
        body.truncate(body.len() - 4);
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    };
    let mut swapped = bytes.clone();
    let (first, second) = swapped[deliveries_at..deliveries_at + 40].split_at_mut(20);
    first.swap_with_slice(second);
    assert!(matches!(load(&with_crc(swapped), 0), Err(SnapshotError::OutOfOrder)));
    let mut impossible = bytes.clone();
    impossible[rides_at + 20] = 7;
    assert!(matches!(load(&with_crc(impossible), 0), Err(SnapshotError::BadEntry)));
}

/// Claims go on while a snapshot is written: every key claimed before
/// it started is in it, and none is lost from the live indexes.
#[test]
fn claims_during_a_snapshot_lose_nothing() {
    let index = filled();
    let bytes = std::thread::scope(|s| {
        let claims =
            s.spawn(|| (1_000..20_000u32).filter(|i| index.claim_delivery(fingerprint(*i), 10_000_000, 0)).count());
        let bytes = snapshot_of(&index);
        assert_eq!(claims.join().expect("claims"), 19_000);
        bytes
    });
    let (loaded, _, _) = load(&bytes, 0).expect("loaded");
    assert!((0..1_000).all(|i| !loaded.claim_delivery(fingerprint(i), 10_000_000, 0)));
    index.sweep(0);
    assert_eq!(index.sizes().deliveries, 20_000);
}

/// A snapshot loads into indexes whose cold tiers have another width (a
/// node's 16 bits into a cluster partition's 8, and back) and decides
/// every claim as the written ones did: runs in partition order are all
/// keys in order, whatever the width.
#[test]
fn a_snapshot_loads_into_cold_tiers_of_another_width() {
    let limits = |bits| DedupLimits { hot_entries_max: 1 << 20, cold_sweep_interval_ms: 0, cold_partition_bits: bits };
    for (written_bits, loaded_bits) in [(16, 8), (8, 16), (10, 10)] {
        let index = DedupIndex::new(limits(written_bits), 0xfeed);
        for i in 0..2_000u32 {
            assert!(index.claim_delivery(fingerprint(i), 10_000_000, 0));
            assert!(index.claim_ride(ride(i), TapKind::Entry, 10_000_000, 0));
            if i == 999 {
                index.sweep(0);
            }
        }
        let bytes = snapshot_of(&index);
        let loaded = DedupIndex::new(limits(loaded_bits), 0x0dd);
        let (_, counts) = loaded.load_snapshot(horizons(), 0, bytes.as_slice(), |_| Ok(())).expect("loaded");
        let widths = format!("{written_bits} bits into {loaded_bits}");
        assert_eq!(counts, SnapshotCounts { deliveries: 2_000, rides: 2_000 }, "{widths}");
        for i in 0..2_000u32 {
            assert!(!loaded.claim_delivery(fingerprint(i), 10_000_000, 1), "{widths}: delivery {i} again");
            assert!(!loaded.claim_ride(ride(i), TapKind::Entry, 10_000_000, 1), "{widths}: ride {i} replayed");
        }
        loaded.sweep(1);
        assert!(!loaded.claim_delivery(fingerprint(1_500), 10_000_000, 2), "{widths}: after a freeze too");
        assert!(loaded.claim_delivery(fingerprint(2_000), 10_000_000, 2), "{widths}: a new one is new");
    }
}
