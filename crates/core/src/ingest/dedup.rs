//! The two duplicate indexes and the verified-credential cache, all sharded
//! (dashmap) so concurrent batches contend only when they touch the same
//! shard. Every entry carries the moment after which it can no longer
//! matter; [`DedupIndex::sweep`] drops those. Memory is bounded by time (the
//! code validity plus the accepted lateness), never by a count that could
//! silently forget a key that still matters.
//!
//! Entries are packed to bytes with no alignment (a key's 16 bytes, an
//! expiry to the second in 4, a ride's uses in 1): a megacity's horizon
//! holds tens of millions of them (`farestream loadgen horizon` measures
//! the bytes each costs).

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::clock::UnixMillis;
use crate::ridecode::format::CREDENTIAL_LEN;
use crate::scan::TapKind;

/// A scan's content fingerprint: SHA-256 of its fields, first 16 bytes.
/// It is also the archive's `scan_id`.
pub type Fingerprint = [u8; 16];

/// Identifies one ride code by its signed claims. One code pays for at
/// most one ride: a metro rider may show the same on-screen code at entry
/// and at exit within a minute, so an entry and an exit may share it;
/// anything else (a second entry, a bus tap after an entry, a third use)
/// is a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RideKey {
    /// The card the code's credential names.
    pub card_id: u64,
    /// When the phone made the code (Unix seconds).
    pub created_at: u32,
    /// The code's counter.
    pub counter: u32,
}

/// When an entry may be forgotten, to the second and rounded up (never
/// early), in four unaligned bytes. Times before 1970 read as 1970 and
/// times past 2106 (what the ride codes' seconds can say) as 2106.
#[derive(Debug, Clone, Copy)]
struct ExpirySecs([u8; 4]);

impl ExpirySecs {
    fn at_or_after(expires_at: UnixMillis) -> ExpirySecs {
        let secs = expires_at.saturating_add(999).div_euclid(1000).clamp(0, i64::from(u32::MAX));
        ExpirySecs(u32::try_from(secs).unwrap_or(u32::MAX).to_le_bytes())
    }

    /// Whether `now` is at or past the expiry.
    fn passed_by(self, now: UnixMillis) -> bool {
        i64::from(u32::from_le_bytes(self.0)) * 1000 <= now
    }
}

/// A [`RideKey`] as the map holds it: 16 bytes, no padding, no alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PackedRideKey([u8; 16]);

impl From<RideKey> for PackedRideKey {
    fn from(key: RideKey) -> PackedRideKey {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&key.card_id.to_le_bytes());
        out[8..12].copy_from_slice(&key.created_at.to_le_bytes());
        out[12..].copy_from_slice(&key.counter.to_le_bytes());
        PackedRideKey(out)
    }
}

/// The tap kinds a ride code has paid for (a bit each), and when its
/// entry expires.
#[derive(Debug, Clone, Copy)]
struct RideUse {
    expires: ExpirySecs,
    kinds: u8,
}

impl RideUse {
    fn new(kind: TapKind, expires_at: UnixMillis) -> RideUse {
        RideUse { expires: ExpirySecs::at_or_after(expires_at), kinds: RideUse::bit(kind) }
    }

    fn bit(kind: TapKind) -> u8 {
        match kind {
            TapKind::Entry => 1,
            TapKind::Exit => 2,
            TapKind::Single => 4,
        }
    }

    fn add(&mut self, kind: TapKind) {
        self.kinds |= RideUse::bit(kind);
    }

    /// Only the other half of an entry-and-exit pair may join a used code.
    fn admits(&self, kind: TapKind) -> bool {
        let other_half = match kind {
            TapKind::Entry => RideUse::bit(TapKind::Exit),
            TapKind::Exit => RideUse::bit(TapKind::Entry),
            TapKind::Single => return false,
        };
        self.kinds == other_half
    }
}

// What an entry costs before the table's own overhead: packed, no padding.
const _: () = assert!(std::mem::size_of::<(Fingerprint, ExpirySecs)>() == 20);
const _: () = assert!(std::mem::size_of::<(PackedRideKey, RideUse)>() == 21);

/// The re-delivery index (by fingerprint), the replay index (by ride
/// code) and the verified-credential cache.
#[derive(Default)]
pub struct DedupIndex {
    /// Keyed by the whole scan's fingerprint, which covers the validator id
    /// and sequence number: a forged record that reuses a real scan's
    /// sequence number cannot make the real one look like a re-delivery.
    deliveries: DashMap<Fingerprint, ExpirySecs>,
    rides: DashMap<PackedRideKey, RideUse>,
    credentials: DashMap<[u8; CREDENTIAL_LEN], ExpirySecs>,
}

/// Entry counts, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupSizes {
    /// Scans remembered by fingerprint, to catch re-deliveries.
    pub deliveries: usize,
    /// Ride codes remembered by their claims, to catch replays.
    pub rides: usize,
    /// Credentials whose issuer signature is cached as verified.
    pub credentials: usize,
}

impl DedupIndex {
    /// Empty indexes.
    pub fn new() -> DedupIndex {
        DedupIndex::default()
    }

    /// Records a delivery of the scan with this fingerprint; false when it
    /// was delivered before. Atomic: of two concurrent deliveries of one
    /// scan exactly one sees true.
    pub fn claim_delivery(&self, fingerprint: Fingerprint, expires_at: UnixMillis) -> bool {
        claim(&self.deliveries, fingerprint, expires_at)
    }

    /// True when a scan with this fingerprint was delivered before (a
    /// look, not a claim: [`DedupIndex::claim_delivery`] decides).
    pub fn delivery_seen(&self, fingerprint: &Fingerprint) -> bool {
        self.deliveries.contains_key(fingerprint)
    }

    /// Records a use of a ride code at a `kind` of gate; false when that
    /// is a replay (see [`RideKey`]). Atomic: of two concurrent uses that
    /// cannot both pay, exactly one sees true, whatever their order.
    pub fn claim_ride(&self, key: RideKey, kind: TapKind, expires_at: UnixMillis) -> bool {
        match self.rides.entry(key.into()) {
            Entry::Vacant(slot) => {
                slot.insert(RideUse::new(kind, expires_at));
                true
            }
            Entry::Occupied(mut used) if used.get().admits(kind) => {
                used.get_mut().add(kind);
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    /// Re-records a use decided before a restart (an accepted row), in any
    /// order: the uses of a code end up the same as when they were claimed.
    pub(crate) fn restore_ride(&self, key: RideKey, kind: TapKind, expires_at: UnixMillis) {
        self.rides
            .entry(key.into())
            .and_modify(|used| used.add(kind))
            .or_insert_with(|| RideUse::new(kind, expires_at));
    }

    /// True when this exact credential's issuer signature was verified before.
    pub(crate) fn credential_is_verified(&self, credential: &[u8; CREDENTIAL_LEN]) -> bool {
        self.credentials.contains_key(credential)
    }

    /// Remembers a credential whose issuer signature verified, until it expires.
    pub(crate) fn remember_verified_credential(&self, credential: [u8; CREDENTIAL_LEN], expires_at: UnixMillis) {
        self.credentials.insert(credential, ExpirySecs::at_or_after(expires_at));
    }

    /// Drops every entry whose expiry is at or before `now`.
    pub(crate) fn sweep(&self, now: UnixMillis) {
        self.deliveries.retain(|_, expires| !expires.passed_by(now));
        self.rides.retain(|_, used| !used.expires.passed_by(now));
        self.credentials.retain(|_, expires| !expires.passed_by(now));
    }

    /// How many entries each index holds.
    pub fn sizes(&self) -> DedupSizes {
        DedupSizes { deliveries: self.deliveries.len(), rides: self.rides.len(), credentials: self.credentials.len() }
    }
}

/// Inserts `key` if absent; true when this call inserted it.
fn claim<K: std::hash::Hash + Eq>(map: &DashMap<K, ExpirySecs>, key: K, expires_at: UnixMillis) -> bool {
    match map.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert(ExpirySecs::at_or_after(expires_at));
            true
        }
        Entry::Occupied(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RIDE: RideKey = RideKey { card_id: 1, created_at: 100, counter: 2 };

    #[test]
    fn a_delivery_is_claimed_once() {
        let index = DedupIndex::new();
        assert!(index.claim_delivery([1; 16], 1_000));
        assert!(!index.claim_delivery([1; 16], 1_000));
        assert!(index.claim_delivery([2; 16], 1_000));
    }

    /// Which uses of one code after which first use: the example,
    /// one code accepted as entry, exit and single, now pays once.
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
        for (uses, expected) in cases {
            let index = DedupIndex::new();
            let got: Vec<bool> = uses.iter().map(|kind| index.claim_ride(RIDE, *kind, 1_000)).collect();
            assert_eq!(got, expected, "{uses:?}");
        }
    }

    #[test]
    fn restored_uses_leave_the_same_state_in_any_order() {
        use TapKind::{Entry, Exit};
        for order in [[Entry, Exit], [Exit, Entry]] {
            let index = DedupIndex::new();
            order.iter().for_each(|kind| index.restore_ride(RIDE, *kind, 1_000));
            assert!(!index.claim_ride(RIDE, Entry, 1_000) && !index.claim_ride(RIDE, Exit, 1_000), "{order:?}");
        }
    }

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
        let packed: std::collections::HashSet<PackedRideKey> = keys.iter().map(|k| PackedRideKey::from(*k)).collect();
        assert_eq!(packed.len(), keys.len());
    }

    #[test]
    fn sweep_forgets_only_expired_entries() {
        let index = DedupIndex::new();
        index.claim_delivery([1; 16], 500);
        index.claim_delivery([2; 16], 1_500);
        index.claim_ride(RIDE, TapKind::Entry, 500);
        index.remember_verified_credential([3; CREDENTIAL_LEN], 1_500);
        index.sweep(1_000);
        assert_eq!(index.sizes(), DedupSizes { deliveries: 1, rides: 0, credentials: 1 });
        assert!(index.claim_ride(RIDE, TapKind::Entry, 2_000), "an expired ride key no longer blocks");
        assert!(!index.claim_delivery([2; 16], 1_500), "a live delivery key still blocks");
    }
}
