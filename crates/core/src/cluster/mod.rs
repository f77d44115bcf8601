//! The cluster's decisions (docs/scale-out.md): which partition a card's
//! taps belong to, and how long a node may act on a partition lease it
//! took or renewed. The shell (`crates/cluster`) does the talking to NATS
//! JetStream; every rule it follows is here, with `now` passed in.
//!
//! A card's replays, fares, cap and charges need all its taps in one
//! place, so every tap of a card goes to one partition of the scans
//! stream, and each partition has one owner at a time: the node holding
//! its lease, a key in JetStream's key-value store whose revision is the
//! owner's fencing token.

pub mod archive_location;
pub mod checkpoint;
mod claimed;
pub mod segments;

use std::collections::BTreeMap;
use std::fmt;

use ring::digest;

use crate::scan::ArchivedScan;

pub use claimed::{ClaimedEntry, ClaimedRecord, ClaimedRecordError, CutRecord};

/// The most partitions a cluster may have. A partition is a subject of
/// the stream, a lease and a cursor in the money store; 4 096 of them
/// spread a billion scans a day to about 250 000 a partition.
pub const PARTITIONS_MAX: u16 = 4_096;

/// One partition of the scans stream, `0..partitions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(u16);

impl Partition {
    /// The partition numbered `n` of `partitions`; `None` past the end.
    pub fn new(n: u16, partitions: u16) -> Option<Partition> {
        (n < partitions && partitions <= PARTITIONS_MAX).then_some(Partition(n))
    }

    /// Its number, `0..partitions`.
    pub fn number(self) -> u16 {
        self.0
    }

    /// Every partition of a cluster of `partitions`, in order.
    pub fn all(partitions: u16) -> impl Iterator<Item = Partition> {
        (0..partitions.min(PARTITIONS_MAX)).map(Partition)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The partition of a card's taps among `partitions` (1 to
/// [`PARTITIONS_MAX`], or the answer is partition 0). The card id is
/// mixed first (SplitMix64's finaliser), so cards issued in order spread
/// evenly; then mapped by multiply-and-shift, not `%`, so every partition
/// gets the same share. The function is fixed: every node of every
/// version must agree on it, so a cluster's partition count is chosen
/// once, when its stream is made.
pub fn partition_of_card(card_id: u64, partitions: u16) -> Partition {
    let partitions = partitions.clamp(1, PARTITIONS_MAX);
    let mut x = card_id;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let n = ((u128::from(x) * u128::from(partitions)) >> 64) as u16;
    debug_assert!(n < partitions);
    Partition(n)
}

/// The partition a row goes to: its card's (the card its ride code
/// claims, forged or not, so an analyst finds a card's every scan in one
/// place), or, for a row whose code did not decode, one its scan id picks,
/// so it is archived exactly once too.
pub fn partition_of_row(row: &ArchivedScan, partitions: u16) -> Partition {
    match row.card_id {
        Some(card) => partition_of_card(card, partitions),
        None => {
            let mut first = [0u8; 8];
            first.copy_from_slice(&row.scan_id[..8]);
            partition_of_card(u64::from_be_bytes(first), partitions)
        }
    }
}

/// A batch's rows split by partition, each partition's in the batch's
/// order.
pub fn split_by_partition(rows: Vec<ArchivedScan>, partitions: u16) -> BTreeMap<Partition, Vec<ArchivedScan>> {
    let mut split: BTreeMap<Partition, Vec<ArchivedScan>> = BTreeMap::new();
    for row in rows {
        split.entry(partition_of_row(&row, partitions)).or_default().push(row);
    }
    split
}

/// The id a partition's record of a batch goes under in the stream:
/// SHA-256 over the partition and the rows' scan ids, the first 16 bytes.
/// Scan ids are fingerprints of what the gateway sent, so the same scans
/// get the same id whatever verdicts and arrival time a node gave them,
/// and a batch retried at any node is dropped as a duplicate.
pub fn record_id(partition: Partition, rows: &[ArchivedScan]) -> [u8; 16] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"farestream.stream-record.v1");
    ctx.update(&partition.number().to_be_bytes());
    ctx.update(&(rows.len() as u64).to_be_bytes());
    for row in rows {
        ctx.update(&row.scan_id);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&ctx.finish().as_ref()[..16]);
    id
}

/// A name NATS takes as one token of a subject, a stream, a bucket or a
/// key, as the config and the cluster shell both check it: letters,
/// digits, `-` and `_`, at least one.
pub fn is_name_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How many partitions each of `live` nodes should hold: the partitions
/// shared out as evenly as they go, rounded up, so every partition has a
/// taker (at least one node is live: the one asking).
pub fn fair_share(partitions: u16, live: usize) -> u16 {
    let live = u16::try_from(live.max(1)).unwrap_or(u16::MAX);
    partitions.min(PARTITIONS_MAX).div_ceil(live)
}

/// The order node `node` tries free partitions in: all of them, starting
/// at a place its name picks, so nodes starting together mostly ask for
/// different partitions.
pub fn preferred_order(node: &str, partitions: u16) -> impl Iterator<Item = Partition> {
    let partitions = partitions.clamp(1, PARTITIONS_MAX);
    // FNV-1a: any fixed spread will do.
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let start = partition_of_card(hash, partitions).number();
    (0..partitions).map(move |i| Partition((start + i) % partitions))
}

/// The longest lease: a day. A dead owner's partitions wait this long.
pub const LEASE_TTL_MS_MAX: u64 = 86_400_000;

/// A lease's timing, on the node's monotonic clock in milliseconds. The
/// store expires a lease `ttl_ms` after it stored the last write; the node
/// counts its own term from before it sent that write, and stops acting
/// `safety_margin_ms` before the term ends, so it has stopped before the
/// store can give the partition to another node (as long as the two
/// clocks' rates differ by less than the margin over a term).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long the store keeps a lease nobody renews.
    pub ttl_ms: u64,
    /// How often the owner renews it.
    pub renew_every_ms: u64,
    /// How long before the end of its term the owner stops acting.
    pub safety_margin_ms: u64,
}

/// Why a [`LeaseTiming`] cannot keep a lease safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseTimingError {
    /// Nothing would be left of a term.
    #[error("the lease's safety margin ({margin_ms} ms) leaves nothing of its {ttl_ms} ms term")]
    NoTerm {
        /// The lease's time to live.
        ttl_ms: u64,
        /// The margin asked for.
        margin_ms: u64,
    },
    /// Longer than the store can count (it keeps time to live in
    /// nanoseconds in a signed 64-bit number) or an operator would mean.
    #[error("a lease time to live of {ttl_ms} ms is over the most, {LEASE_TTL_MS_MAX} ms")]
    TooLong {
        /// The lease's time to live.
        ttl_ms: u64,
    },
    /// One renewal lost would lose the lease.
    #[error(
        "a lease renewed every {renew_every_ms} ms is lost after one missed renewal in a {usable_ms} ms term: renew at most every half of it"
    )]
    RenewsTooRarely {
        /// How often it would be renewed.
        renew_every_ms: u64,
        /// The term less the margin.
        usable_ms: u64,
    },
}

impl LeaseTiming {
    /// Checks that a term survives one lost renewal: renewing at most
    /// every half of the term less the margin, and at least every
    /// millisecond.
    pub fn checked(self) -> Result<LeaseTiming, LeaseTimingError> {
        if self.ttl_ms > LEASE_TTL_MS_MAX {
            return Err(LeaseTimingError::TooLong { ttl_ms: self.ttl_ms });
        }
        let usable_ms = self.ttl_ms.saturating_sub(self.safety_margin_ms);
        if usable_ms == 0 {
            return Err(LeaseTimingError::NoTerm { ttl_ms: self.ttl_ms, margin_ms: self.safety_margin_ms });
        }
        if self.renew_every_ms == 0 || self.renew_every_ms > usable_ms / 2 {
            return Err(LeaseTimingError::RenewsTooRarely { renew_every_ms: self.renew_every_ms, usable_ms });
        }
        Ok(self)
    }

    /// The term a write sent at `sent_at_ms` gives, once the store
    /// answers it with `revision`.
    pub fn term(&self, revision: u64, sent_at_ms: u64) -> LeaseTerm {
        LeaseTerm {
            revision,
            sent_at_ms,
            acts_until_ms: sent_at_ms.saturating_add(self.ttl_ms.saturating_sub(self.safety_margin_ms)),
        }
    }
}

/// A lease as its owner holds it: the revision the store gave its last
/// write (the fencing token: every write the owner makes for the
/// partition carries it, and a store that has seen a newer one refuses
/// it) and the times it was counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerm {
    /// The revision of the owner's last write of the lease.
    pub revision: u64,
    /// When that write was sent.
    pub sent_at_ms: u64,
    /// The owner acts for the partition only before this.
    pub acts_until_ms: u64,
}

impl LeaseTerm {
    /// Whether the owner may still act for the partition at `now_ms`.
    pub fn holds(&self, now_ms: u64) -> bool {
        now_ms < self.acts_until_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_card_has_one_partition_and_cards_spread_evenly() {
        for partitions in [1u16, 2, 3, 7, 64, PARTITIONS_MAX] {
            let mut counts = vec![0u32; usize::from(partitions)];
            for card in 0..200_000u64 {
                let p = partition_of_card(card, partitions);
                assert!(p.number() < partitions);
                assert_eq!(p, partition_of_card(card, partitions), "the same card, the same partition");
                counts[usize::from(p.number())] += 1;
            }
            let mean = 200_000.0 / f64::from(partitions);
            let worst = counts.iter().map(|&c| (f64::from(c) - mean).abs() / mean).fold(0.0, f64::max);
            // Binomial spread: about 6 standard deviations at 4 096
            // partitions of 49 cards each.
            assert!(worst < 0.9, "{partitions} partitions: a partition {worst:.2} off the mean");
            if partitions <= 64 {
                assert!(worst < 0.05, "{partitions} partitions: a partition {worst:.3} off the mean");
            }
        }
    }

    #[test]
    fn card_ids_at_their_extremes_and_partition_counts_out_of_range() {
        for card in [0, 1, u64::MAX, u64::MAX - 1, 1 << 63] {
            assert!(partition_of_card(card, PARTITIONS_MAX).number() < PARTITIONS_MAX);
            assert_eq!(partition_of_card(card, 1).number(), 0);
            assert_eq!(partition_of_card(card, 0).number(), 0, "no partitions is read as one");
            assert!(partition_of_card(card, u16::MAX).number() < PARTITIONS_MAX, "clamped to the most");
        }
        // Fixed forever: these pin the function every node must share.
        assert_eq!(partition_of_card(0, 64).number(), 0);
        let pinned: Vec<u16> = (1..=8).map(|c| partition_of_card(c, 64).number()).collect();
        assert_eq!(pinned, vec![21, 54, 7, 45, 45, 52, 4, 53]);
    }

    #[test]
    fn partitions_are_numbered_within_the_count() {
        assert_eq!(Partition::new(0, 1), Some(Partition(0)));
        assert_eq!(Partition::new(1, 1), None);
        assert_eq!(Partition::new(0, 0), None);
        assert_eq!(Partition::new(PARTITIONS_MAX - 1, PARTITIONS_MAX), Some(Partition(PARTITIONS_MAX - 1)));
        assert_eq!(Partition::new(0, PARTITIONS_MAX + 1), None);
        assert_eq!(Partition::all(3).map(Partition::number).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(Partition::all(u16::MAX).count(), usize::from(PARTITIONS_MAX));
    }

    #[test]
    fn partitions_are_shared_out_so_every_one_has_a_taker() {
        assert_eq!(fair_share(8, 1), 8);
        assert_eq!(fair_share(8, 2), 4);
        assert_eq!(fair_share(8, 3), 3, "3 + 3 + 2");
        assert_eq!(fair_share(2, 3), 1, "a node more than partitions holds none");
        assert_eq!(fair_share(8, 0), 8, "the asking node is live");
        assert_eq!(fair_share(1, usize::MAX), 1);
        assert_eq!(fair_share(0, 1), 0);
        assert_eq!(fair_share(u16::MAX, 1), PARTITIONS_MAX);
        for partitions in [1u16, 7, 64, PARTITIONS_MAX] {
            for live in 1..=20usize {
                let share = usize::from(fair_share(partitions, live));
                assert!(share * live >= usize::from(partitions), "{partitions} over {live}");
                assert!(share.saturating_sub(1) * live < usize::from(partitions), "no more than one round up");
            }
        }
    }

    #[test]
    fn each_node_tries_every_partition_once_from_its_own_start() {
        for node in ["", "node-a", "node-b", &"x".repeat(10_000)] {
            let order: Vec<u16> = preferred_order(node, 64).map(Partition::number).collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..64).collect::<Vec<u16>>(), "{node:?}: each partition once");
        }
        let starts: std::collections::BTreeSet<u16> =
            (0..16).map(|n| preferred_order(&format!("node-{n}"), 64).next().expect("a start").number()).collect();
        assert!(starts.len() >= 8, "nodes start apart: {starts:?}");
        assert_eq!(preferred_order("a", 0).count(), 1, "no partitions is read as one");
    }

    fn row(card: Option<u64>, scan: u8) -> ArchivedScan {
        ArchivedScan { card_id: card, scan_id: [scan; 16], ..ArchivedScan::blank() }
    }

    #[test]
    fn a_batch_splits_by_card_and_rows_without_a_card_by_scan_id() {
        let rows = vec![row(Some(1), 1), row(Some(2), 2), row(None, 3), row(Some(1), 4), row(None, 5)];
        let split = split_by_partition(rows.clone(), 64);
        assert_eq!(split.values().map(Vec::len).sum::<usize>(), 5, "every row once");
        let card_1 = partition_of_card(1, 64);
        let ids: Vec<u8> = split[&card_1].iter().map(|r| r.scan_id[0]).collect();
        assert!(ids.starts_with(&[1]) && ids.contains(&4), "card 1's rows together, in order: {ids:?}");
        for (partition, rows) in &split {
            assert!(rows.iter().all(|r| partition_of_row(r, 64) == *partition));
        }
        assert_eq!(partition_of_row(&row(None, 3), 64), partition_of_card(u64::from_be_bytes([3; 8]), 64));
        assert!(split_by_partition(Vec::new(), 64).is_empty(), "an empty batch has no records");
        assert_eq!(split_by_partition(rows, 1).len(), 1, "one partition takes everything");
    }

    #[test]
    fn a_records_id_names_its_partition_and_its_scans_not_their_verdicts() {
        let p = Partition::new(3, 64).expect("p3");
        let rows = vec![row(Some(1), 1), row(Some(1), 2)];
        let mut judged_again = rows.clone();
        judged_again[0].received_at = 99;
        judged_again[0].status = crate::scan::ScanStatus::Replay;
        assert_eq!(record_id(p, &rows), record_id(p, &judged_again), "a retry's id, whatever its verdicts");
        assert_ne!(record_id(p, &rows), record_id(Partition::new(4, 64).expect("p4"), &rows), "per partition");
        assert_ne!(record_id(p, &rows), record_id(p, &rows[..1]), "another set of scans");
        let reversed: Vec<ArchivedScan> = rows.iter().rev().cloned().collect();
        assert_ne!(record_id(p, &rows), record_id(p, &reversed), "another order is another record");
        assert_ne!(record_id(p, &[]), record_id(p, &rows));
    }

    fn timing() -> LeaseTiming {
        LeaseTiming { ttl_ms: 6_000, renew_every_ms: 1_000, safety_margin_ms: 1_000 }
    }

    #[test]
    fn a_term_ends_a_margin_before_the_store_can_expire_it() {
        let term = timing().checked().expect("timing").term(7, 10_000);
        assert_eq!(term.revision, 7);
        assert!(term.holds(10_000));
        assert!(term.holds(14_999));
        assert!(!term.holds(15_000), "the store expires it at 16 000 at the earliest");
        // A term counted from a send at the end of time saturates, never wraps.
        let last = timing().term(1, u64::MAX);
        assert_eq!(last.acts_until_ms, u64::MAX);
        assert!(!last.holds(u64::MAX));
    }

    #[test]
    fn a_timing_that_one_lost_renewal_would_break_is_refused() {
        assert!(matches!(
            LeaseTiming { safety_margin_ms: 6_000, ..timing() }.checked(),
            Err(LeaseTimingError::NoTerm { .. })
        ));
        assert!(matches!(
            LeaseTiming { safety_margin_ms: u64::MAX, ..timing() }.checked(),
            Err(LeaseTimingError::NoTerm { .. })
        ));
        assert!(matches!(
            LeaseTiming { renew_every_ms: 2_501, ..timing() }.checked(),
            Err(LeaseTimingError::RenewsTooRarely { usable_ms: 5_000, .. })
        ));
        assert!(matches!(
            LeaseTiming { renew_every_ms: 0, ..timing() }.checked(),
            Err(LeaseTimingError::RenewsTooRarely { .. })
        ));
        assert!(LeaseTiming { renew_every_ms: 2_500, ..timing() }.checked().is_ok());
        assert!(LeaseTiming { ttl_ms: LEASE_TTL_MS_MAX, renew_every_ms: 1, safety_margin_ms: 0 }.checked().is_ok());
        for ttl_ms in [LEASE_TTL_MS_MAX + 1, (1 << 58) + 2_000, u64::MAX] {
            assert_eq!(
                LeaseTiming { ttl_ms, renew_every_ms: 1, safety_margin_ms: 0 }.checked(),
                Err(LeaseTimingError::TooLong { ttl_ms }),
                "a time to live the store would wrap"
            );
        }
    }
}
