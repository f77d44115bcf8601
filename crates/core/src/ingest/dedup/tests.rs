use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

const RIDE: RideKey = RideKey { card_id: 1, created_at: 100, counter: 2 };

/// Freezes at every sweep.
const FREEZE_ALWAYS: DedupLimits =
    DedupLimits { hot_entries_max: 1, cold_sweep_interval_ms: 0, ..DedupLimits::DEFAULT };

#[test]
fn a_delivery_is_claimed_once_hot_or_cold() {
    for limits in [DedupLimits::DEFAULT, FREEZE_ALWAYS] {
        let index = DedupIndex::new(limits, 0x5eed);
        assert!(index.claim_delivery([1; 16], 1_000, 0));
        index.sweep(0);
        assert!(!index.claim_delivery([1; 16], 1_000, 0), "{limits:?}");
        assert!(index.delivery_seen(&[1; 16]), "{limits:?}");
        assert!(index.claim_delivery([2; 16], 1_000, 0));
        assert!(!index.delivery_seen(&[3; 16]));
    }
}

/// Which uses of one code after which first use: one code accepted as
/// entry, exit and single pays once. The same whether the code's entry
/// is hot or was frozen between the uses.
#[test]
fn a_code_pays_for_one_ride_an_entry_and_its_exit_share_it() {
    use TapKind::{Entry, Exit, Single};
    let cases: [(&[TapKind], &[bool]); 7] = [
        (&[Entry, Exit, Single], &[true, true, false]),
        (&[Exit, Entry, Exit], &[true, true, false]),
        (&[Entry, Entry], &[true, false]),
        (&[Exit, Exit], &[true, false]),
        (&[Single, Single], &[true, false]),
        (&[Single, Entry], &[true, false]),
        (&[Entry, Single, Exit], &[true, false, true]),
    ];
    for limits in [DedupLimits::DEFAULT, FREEZE_ALWAYS] {
        for (uses, expected) in cases {
            let index = DedupIndex::new(limits, 0x5eed);
            let got: Vec<bool> = uses
                .iter()
                .map(|kind| {
                    let paid = index.claim_ride(RIDE, *kind, 1_000, 0);
                    index.sweep(0);
                    paid
                })
                .collect();
            assert_eq!(got, expected, "{uses:?} {limits:?}");
        }
    }
}

#[test]
fn restored_uses_leave_the_same_state_in_any_order() {
    use TapKind::{Entry, Exit};
    for limits in [DedupLimits::DEFAULT, FREEZE_ALWAYS] {
        for order in [[Entry, Exit], [Exit, Entry]] {
            let index = DedupIndex::new(limits, 0x5eed);
            order.iter().for_each(|kind| {
                index.restore_ride(RIDE, *kind, 1_000);
                index.sweep(0);
            });
            assert!(!index.claim_ride(RIDE, Entry, 1_000, 0) && !index.claim_ride(RIDE, Exit, 1_000, 0), "{order:?}");
        }
    }
}

/// Expired entries go at a sweep, from the hot tier (the first sweep)
/// or the cold one (frozen at a sweep before).
#[test]
fn sweep_forgets_only_expired_entries_in_either_tier() {
    for frozen_before in [false, true] {
        let index = DedupIndex::new(FREEZE_ALWAYS, 0x5eed);
        index.claim_delivery([1; 16], 500, 0);
        index.claim_delivery([2; 16], 1_500, 0);
        index.claim_ride(RIDE, TapKind::Entry, 500, 0);
        index.remember_verified_credential([3; CREDENTIAL_LEN], 1_500);
        if frozen_before {
            index.sweep(0);
            assert_eq!(index.deliveries.hot_len() + index.rides.hot_len(), 0);
        }
        index.sweep(1_000);
        assert_eq!(index.sizes(), DedupSizes { deliveries: 1, rides: 0, credentials: 1 }, "{frozen_before}");
        assert!(index.claim_ride(RIDE, TapKind::Entry, 2_000, 0), "an expired ride key no longer blocks");
        assert!(!index.claim_delivery([2; 16], 1_500, 0), "a live delivery key still blocks");
    }
}

/// Whether an entry counts is the claim's own time's to say, swept or
/// not: a partition's owner that claims a day late decides as one that
/// claimed at once (review of 6b1ca3b).
#[test]
fn an_entry_expired_by_the_claims_own_time_counts_as_none() {
    let index = DedupIndex::new(
        DedupLimits { hot_entries_max: 1 << 20, cold_sweep_interval_ms: 10_000, ..DedupLimits::DEFAULT },
        0x5eed,
    );
    assert!(index.claim_delivery([1; 16], 10_000, 0));
    assert!(!index.claim_delivery([1; 16], 50_000, 9_000), "live at 9 s");
    assert!(index.claim_delivery([1; 16], 50_000, 10_000), "expired at 10 s, never swept: a new delivery");
    assert!(!index.claim_delivery([1; 16], 50_000, 20_000), "the renewed entry holds");
    assert!(index.claim_ride(RIDE, TapKind::Single, 10_000, 0));
    assert!(!index.claim_ride(RIDE, TapKind::Single, 50_000, 9_000), "a replay at 9 s");
    assert!(
        index.claim_ride(RIDE, TapKind::Single, 50_000, 10_000),
        "the code's window is over: its key counts as none"
    );
    assert!(!index.claim_ride(RIDE, TapKind::Single, 50_000, 20_000), "and the renewed one holds");
}

/// Between cold sweeps an expired cold key stays: harmless, as its expiry
/// is past the last moment any copy of its scan or code could pass the
/// other checks, and bounded by the interval.
#[test]
fn an_expired_cold_key_stays_until_the_cold_sweep() {
    let index = DedupIndex::new(
        DedupLimits { hot_entries_max: 1 << 20, cold_sweep_interval_ms: 10_000, ..DedupLimits::DEFAULT },
        0x5eed,
    );
    index.claim_delivery([1; 16], 500, 0);
    index.sweep(0);
    index.sweep(9_999);
    assert_eq!(index.sizes().deliveries, 1);
    index.sweep(10_000);
    assert_eq!(index.sizes().deliveries, 0);
}

/// A freeze runs when a hot tier is full or the cold sweep is due, and
/// empties the hot tiers into the cold ones without losing an entry.
#[test]
fn a_sweep_freezes_a_full_hot_tier_or_after_the_cold_interval() {
    let limits = DedupLimits { hot_entries_max: 3, cold_sweep_interval_ms: 10_000, ..DedupLimits::DEFAULT };
    let index = DedupIndex::new(limits, 0x5eed);
    index.sweep(0);
    let hot = |index: &DedupIndex| (index.deliveries.hot_len(), index.rides.hot_len());
    for i in 0..2u8 {
        index.claim_delivery([i; 16], i64::MAX, 0);
    }
    index.sweep(1);
    assert_eq!(hot(&index), (2, 0), "below the limit and the interval");
    index.claim_delivery([9; 16], i64::MAX, 0);
    index.sweep(2);
    assert_eq!(hot(&index), (0, 0), "full");
    index.claim_ride(RIDE, TapKind::Single, i64::MAX, 0);
    index.sweep(9_999);
    assert_eq!(hot(&index), (0, 1));
    index.sweep(10_002);
    assert_eq!(hot(&index), (0, 0), "the cold sweep was due");
    assert_eq!((index.sizes().deliveries, index.sizes().rides), (3, 1));
    assert!(!index.claim_delivery([0; 16], i64::MAX, 0) && !index.claim_ride(RIDE, TapKind::Single, i64::MAX, 0));
}

/// Runs `first` and `second` on threads of their own, started together,
/// while a third sweeps the index (and so freezes it) over and over until
/// both are done; what each counted.
fn racing_freezes(
    index: &DedupIndex,
    first: impl FnOnce() -> usize + Send,
    second: impl FnOnce() -> usize + Send,
) -> (usize, usize) {
    let start = Barrier::new(3);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (start, done) = (&start, &done);
        let first = s.spawn(move || {
            start.wait();
            first()
        });
        let second = s.spawn(move || {
            start.wait();
            second()
        });
        s.spawn(move || {
            start.wait();
            while !done.load(Ordering::Relaxed) {
                index.sweep(0);
            }
        });
        let counted = (first.join().expect("first"), second.join().expect("second"));
        done.store(true, Ordering::Relaxed);
        counted
    })
}

/// Claims racing freezes: every code is entered and exited by two
/// threads while a third freezes over and over. Each use pays exactly
/// once, and an exit made while its entry was being frozen is not lost
/// (a lost one would let a second exit pay).
#[test]
fn claims_racing_freezes_pay_each_use_once() {
    const CODES: u32 = 100_000;
    let index = DedupIndex::new(FREEZE_ALWAYS, 0x5eed);
    let key = |counter| RideKey { card_id: 7, created_at: 1, counter };
    let uses = |kind| {
        let index = &index;
        move || (0..CODES).filter(|c| index.claim_ride(key(*c), kind, i64::MAX, 0)).count()
    };
    let paid = racing_freezes(&index, uses(TapKind::Entry), uses(TapKind::Exit));
    assert_eq!(paid, (CODES as usize, CODES as usize));
    index.sweep(0);
    for counter in 0..CODES {
        for kind in [TapKind::Entry, TapKind::Exit, TapKind::Single] {
            assert!(!index.claim_ride(key(counter), kind, i64::MAX, 0), "code {counter} paid again at {kind:?}");
        }
    }
    assert_eq!(index.sizes().rides, CODES as usize);
}

/// Two deliveries of each scan racing freezes: exactly one is new.
#[test]
fn deliveries_racing_freezes_are_claimed_once() {
    const SCANS: u64 = 100_000;
    let index = DedupIndex::new(FREEZE_ALWAYS, 0x5eed);
    let fingerprint = |i: u64| {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&i.to_le_bytes());
        key
    };
    let deliver = || (0..SCANS).filter(|i| index.claim_delivery(fingerprint(*i), i64::MAX, 0)).count();
    let (first, second) = racing_freezes(&index, deliver, deliver);
    assert_eq!(first + second, SCANS as usize);
    index.sweep(0);
    assert_eq!(index.sizes().deliveries, SCANS as usize);
}

/// A cluster partition's indexes hold one of `partitions` shares of the
/// cards: their cold tiers narrow by the share's bits, never under the
/// fewest, and a node's (one share) keeps the widest.
#[test]
fn a_partitions_cold_tiers_narrow_by_its_share_of_the_cards() {
    let bits = |partitions| DedupLimits::DEFAULT.for_share_of(partitions).cold_partition_bits;
    assert_eq!(DedupLimits::DEFAULT.cold_partition_bits, COLD_PARTITION_BITS_MAX);
    assert_eq!([bits(0), bits(1), bits(2), bits(3), bits(64), bits(100)], [16, 16, 15, 15, 10, 10]);
    assert_eq!([bits(256), bits(4_096), bits(u16::MAX)], [COLD_PARTITION_BITS_MIN; 3]);
    let narrowed = DedupLimits::DEFAULT.for_share_of(64);
    assert_eq!((narrowed.hot_entries_max, narrowed.cold_sweep_interval_ms), (1 << 20, 3_600_000), "only the width");
    // The narrowest indexes decide as the widest do.
    let index = DedupIndex::new(FREEZE_ALWAYS.for_share_of(4_096), 3);
    for i in 0..300u32 {
        let key = fingerprint_of(i);
        assert!(index.claim_delivery(key, 10_000_000, 0));
    }
    index.sweep(0);
    assert!((0..300u32).all(|i| !index.claim_delivery(fingerprint_of(i), 10_000_000, 1)), "each held once frozen");
}

fn fingerprint_of(i: u32) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[12..].copy_from_slice(&i.to_be_bytes());
    key
}
