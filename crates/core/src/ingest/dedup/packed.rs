//! Entries as both tiers hold them: packed to bytes with no alignment (a
//! key's 16 bytes, an expiry to the second in 4, a ride's uses in 1). A
//! megacity's horizon holds tens of millions of them (`farestream loadgen
//! horizon` measures the bytes each costs).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::UnixMillis;
use crate::scan::TapKind;

use super::RideKey;

/// A key as the indexes hold it: a scan's fingerprint, or a ride code's
/// claims packed (see [`pack_ride_key`]), put through the index's
/// [`KeyMix`] and stored big-endian, so byte order is number order.
pub(super) type Key = [u8; 16];

/// A secret, invertible shuffle of 128-bit keys. Keys come out spread
/// evenly whatever went in (ride keys are a card id and small counters,
/// which a rider with a card can pick at will), so a key's leading bits
/// pick its cold partition, its next bits guess its place in the run, and
/// they hash it in the hot tier; and with the seed secret, no peer can
/// aim many keys at one partition or one hash bucket. Invertible, so two
/// keys never become one.
///
/// The seed is replaced once, at start, by a snapshot's (whose keys were
/// mixed with it); it is read on every claim, so it sits in two atomics
/// rather than behind a lock.
#[derive(Debug)]
pub(super) struct KeyMix {
    seed: [AtomicU64; 2],
}

impl KeyMix {
    pub(super) fn new(seed: u128) -> KeyMix {
        KeyMix { seed: [AtomicU64::new(seed as u64), AtomicU64::new((seed >> 64) as u64)] }
    }

    pub(super) fn seed(&self) -> u128 {
        let [low, high] = &self.seed;
        u128::from(low.load(Ordering::Relaxed)) | (u128::from(high.load(Ordering::Relaxed)) << 64)
    }

    /// Only before the index is shared: the threads that claim later see
    /// it through whatever hands them the index.
    pub(super) fn set_seed(&self, seed: u128) {
        let [low, high] = &self.seed;
        low.store(seed as u64, Ordering::Relaxed);
        high.store((seed >> 64) as u64, Ordering::Relaxed);
    }

    /// Each step is a bijection of `u128`: xor with a constant,
    /// multiplication by an odd number, and xor with a right shift.
    pub(super) fn key(&self, raw: [u8; 16]) -> Key {
        const ODD_1: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
        const ODD_2: u128 = 0xc2b2_ae3d_27d4_eb4f_1656_67b1_9e37_79f9;
        let mut x = u128::from_le_bytes(raw) ^ self.seed();
        x = x.wrapping_mul(ODD_1);
        x ^= x >> 64;
        x = x.wrapping_mul(ODD_2);
        x ^= x >> 61;
        x.to_be_bytes()
    }
}

/// Hashes a mixed [`Key`] by its own bits: they are evenly spread and
/// secret already, so the hot tier need not pay for SipHash.
#[derive(Default)]
pub(super) struct MixedKeyHasher(u64);

impl std::hash::Hasher for MixedKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |hash, byte| hash.rotate_left(8) ^ u64::from(*byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What an index remembers about a key, in either tier.
pub(super) trait Remembered: Copy + PartialEq + Send + Sync {
    /// Bytes [`Remembered::encode`] writes, in a snapshot.
    const ENCODED_BYTES: usize;
    /// Whether the entry can be forgotten at `now`.
    fn expired_by(&self, now: UnixMillis) -> bool;
    /// Appends the entry's bytes, as packed.
    fn encode(&self, out: &mut Vec<u8>);
    /// The entry from [`Remembered::ENCODED_BYTES`] bytes; `None` when
    /// they cannot be one.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// When an entry may be forgotten, to the second and rounded up (never
/// early), in four unaligned bytes. Times before 1970 read as 1970 and
/// times past 2106 (what the ride codes' seconds can say) as 2106.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ExpirySecs([u8; 4]);

impl ExpirySecs {
    pub(super) fn at_or_after(expires_at: UnixMillis) -> ExpirySecs {
        let secs = expires_at.saturating_add(999).div_euclid(1000).clamp(0, i64::from(u32::MAX));
        ExpirySecs(u32::try_from(secs).unwrap_or(u32::MAX).to_le_bytes())
    }

    /// Whether `now` is at or past the expiry.
    pub(super) fn passed_by(self, now: UnixMillis) -> bool {
        i64::from(u32::from_le_bytes(self.0)) * 1000 <= now
    }
}

impl Remembered for ExpirySecs {
    const ENCODED_BYTES: usize = 4;

    fn expired_by(&self, now: UnixMillis) -> bool {
        self.passed_by(now)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }

    fn decode(bytes: &[u8]) -> Option<ExpirySecs> {
        Some(ExpirySecs(bytes.try_into().ok()?))
    }
}

/// A [`RideKey`] in 16 bytes, every field kept.
pub(super) fn pack_ride_key(key: RideKey) -> Key {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&key.card_id.to_le_bytes());
    out[8..12].copy_from_slice(&key.created_at.to_le_bytes());
    out[12..].copy_from_slice(&key.counter.to_le_bytes());
    out
}

/// The tap kinds a ride code has paid for (a bit each), and when its
/// entry expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RideUse {
    expires: ExpirySecs,
    kinds: u8,
}

impl RideUse {
    pub(super) fn new(kind: TapKind, expires_at: UnixMillis) -> RideUse {
        RideUse { expires: ExpirySecs::at_or_after(expires_at), kinds: RideUse::bit(kind) }
    }

    fn bit(kind: TapKind) -> u8 {
        match kind {
            TapKind::Entry => 1,
            TapKind::Exit => 2,
            TapKind::Single => 4,
        }
    }

    pub(super) fn add(&mut self, kind: TapKind) {
        self.kinds |= RideUse::bit(kind);
    }

    /// Only the other half of an entry-and-exit pair may join a used code.
    pub(super) fn admits(&self, kind: TapKind) -> bool {
        let other_half = match kind {
            TapKind::Entry => RideUse::bit(TapKind::Exit),
            TapKind::Exit => RideUse::bit(TapKind::Entry),
            TapKind::Single => return false,
        };
        self.kinds == other_half
    }
}

impl Remembered for RideUse {
    const ENCODED_BYTES: usize = 5;

    fn expired_by(&self, now: UnixMillis) -> bool {
        self.expires.passed_by(now)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.expires.encode(out);
        out.push(self.kinds);
    }

    /// Uses no claim could make are refused: none, a bit no kind has,
    /// or a single tap with anything else.
    fn decode(bytes: &[u8]) -> Option<RideUse> {
        let (expires, kinds) = bytes.split_at_checked(4)?;
        let kinds = match kinds {
            [kinds @ 1..=4] => *kinds,
            _ => return None,
        };
        Some(RideUse { expires: ExpirySecs::decode(expires)?, kinds })
    }
}

// What an entry costs before a tier's own overhead: packed, no padding.
const _: () = assert!(std::mem::size_of::<(Key, ExpirySecs)>() == 20);
const _: () = assert!(std::mem::size_of::<(Key, RideUse)>() == 21);

#[cfg(test)]
mod tests {
    use super::*;

    /// An expiry is kept to the second, rounded up: an entry lives at
    /// most a second longer, never shorter; any time, however far out,
    /// is held without overflow.
    #[test]
    fn an_expiry_is_rounded_up_to_the_second_and_saturates() {
        let e = ExpirySecs::at_or_after(1_001);
        assert!(!e.passed_by(1_999) && e.passed_by(2_000));
        let whole = ExpirySecs::at_or_after(2_000);
        assert!(!whole.passed_by(1_999) && whole.passed_by(2_000));
        for early in [i64::MIN, -1, 0] {
            assert!(ExpirySecs::at_or_after(early).passed_by(0), "{early}");
        }
        let last = i64::from(u32::MAX) * 1000;
        for late in [last, i64::MAX] {
            let e = ExpirySecs::at_or_after(late);
            assert!(!e.passed_by(last - 1) && e.passed_by(last) && e.passed_by(i64::MAX), "{late}");
        }
    }

    /// Distinct ride keys stay distinct packed, whatever their extremes.
    #[test]
    fn ride_keys_pack_without_losing_a_field() {
        let keys = [
            RideKey { card_id: 0, created_at: 0, counter: 0 },
            RideKey { card_id: u64::MAX, created_at: 0, counter: 0 },
            RideKey { card_id: 0, created_at: u32::MAX, counter: 0 },
            RideKey { card_id: 0, created_at: 0, counter: u32::MAX },
            RideKey { card_id: 1, created_at: 0, counter: 0 },
        ];
        let packed: std::collections::HashSet<Key> = keys.iter().map(|k| pack_ride_key(*k)).collect();
        assert_eq!(packed.len(), keys.len());
    }

    /// The mix keeps keys apart (it is invertible) and spreads even a
    /// card's consecutive counters over the partitions' leading bits.
    #[test]
    fn mixed_keys_stay_distinct_and_spread() {
        let mix = KeyMix::new(0x0123_4567_89ab_cdef);
        let raw = |counter: u32| pack_ride_key(RideKey { card_id: 42, created_at: 1_800_000_000, counter });
        let mixed: std::collections::HashSet<Key> = (0..65_536).map(|c| mix.key(raw(c))).collect();
        assert_eq!(mixed.len(), 65_536);
        let leading: std::collections::HashSet<u8> = mixed.iter().map(|key| key[0]).collect();
        assert_eq!(leading.len(), 256, "every leading byte is used");
        assert_ne!(KeyMix::new(1).key(raw(0)), KeyMix::new(2).key(raw(0)), "the seed matters");
        let reseeded = KeyMix::new(1);
        reseeded.set_seed(0x0123_4567_89ab_cdef);
        assert_eq!(reseeded.key(raw(7)), mix.key(raw(7)));
        assert_eq!(reseeded.seed(), 0x0123_4567_89ab_cdef);
    }

    /// An entry reads back as written; bytes no claim could make do not
    /// read at all.
    #[test]
    fn entries_encode_and_decode_and_refuse_impossible_uses() {
        let mut ride = RideUse::new(TapKind::Entry, 5_000);
        ride.add(TapKind::Exit);
        let mut bytes = Vec::new();
        ride.encode(&mut bytes);
        assert_eq!(bytes.len(), RideUse::ENCODED_BYTES);
        assert_eq!(RideUse::decode(&bytes), Some(ride));
        for kinds in [0u8, 5, 6, 7, 8, 255] {
            bytes[4] = kinds;
            assert_eq!(RideUse::decode(&bytes), None, "{kinds}");
        }
        assert_eq!(RideUse::decode(&bytes[..4]), None);
        let expiry = ExpirySecs::at_or_after(i64::MAX);
        let mut bytes = Vec::new();
        expiry.encode(&mut bytes);
        assert_eq!(ExpirySecs::decode(&bytes), Some(expiry));
        assert_eq!(ExpirySecs::decode(&bytes[..3]), None);
    }
}
