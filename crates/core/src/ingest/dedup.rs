//! The two duplicate indexes and the verified-credential cache, all sharded
//! (dashmap) so concurrent batches contend only when they touch the same
//! shard. Every entry carries the moment after which it can no longer
//! matter; [`DedupIndex::sweep`] drops those. Memory is bounded by time (the
//! code validity plus the accepted lateness), never by a count that could
//! silently forget a key that still matters.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::clock::UnixMillis;
use crate::ridecode::format::CREDENTIAL_LEN;
use crate::scan::TapKind;

/// A scan's content fingerprint: SHA-256 of its fields, first 16 bytes.
/// It is also the archive's `scan_id`.
pub type Fingerprint = [u8; 16];

/// Identifies one ride code presented at one kind of gate. The tap kind is
/// part of the key because a metro rider may show the same on-screen code at
/// entry and at exit within a minute; a second entry is the replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RideKey {
    pub card_id: u64,
    pub created_at: u32,
    pub counter: u32,
    pub tap_kind: TapKind,
}

#[derive(Default)]
pub struct DedupIndex {
    /// Keyed by the whole scan's fingerprint, which covers the validator id
    /// and sequence number: a forged record that reuses a real scan's
    /// sequence number cannot make the real one look like a re-delivery.
    deliveries: DashMap<Fingerprint, UnixMillis>,
    rides: DashMap<RideKey, UnixMillis>,
    credentials: DashMap<[u8; CREDENTIAL_LEN], UnixMillis>,
}

/// Entry counts, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupSizes {
    pub deliveries: usize,
    pub rides: usize,
    pub credentials: usize,
}

impl DedupIndex {
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

    /// Records the first use of a ride code; false when it was used before.
    pub fn claim_ride(&self, key: RideKey, expires_at: UnixMillis) -> bool {
        claim(&self.rides, key, expires_at)
    }

    /// True when this exact credential's issuer signature was verified before.
    pub fn credential_is_verified(&self, credential: &[u8; CREDENTIAL_LEN]) -> bool {
        self.credentials.contains_key(credential)
    }

    /// Remembers a credential whose issuer signature verified, until it expires.
    pub fn remember_verified_credential(&self, credential: [u8; CREDENTIAL_LEN], expires_at: UnixMillis) {
        self.credentials.insert(credential, expires_at);
    }

    /// Drops every entry whose expiry is at or before `now`.
    pub fn sweep(&self, now: UnixMillis) {
        self.deliveries.retain(|_, expires_at| *expires_at > now);
        self.rides.retain(|_, expires_at| *expires_at > now);
        self.credentials.retain(|_, expires_at| *expires_at > now);
    }

    pub fn sizes(&self) -> DedupSizes {
        DedupSizes { deliveries: self.deliveries.len(), rides: self.rides.len(), credentials: self.credentials.len() }
    }
}

/// Inserts `key` if absent; true when this call inserted it.
fn claim<K: std::hash::Hash + Eq>(map: &DashMap<K, UnixMillis>, key: K, expires_at: UnixMillis) -> bool {
    match map.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert(expires_at);
            true
        }
        Entry::Occupied(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RIDE: RideKey = RideKey { card_id: 1, created_at: 100, counter: 2, tap_kind: TapKind::Entry };

    #[test]
    fn a_delivery_is_claimed_once() {
        let index = DedupIndex::new();
        assert!(index.claim_delivery([1; 16], 1_000));
        assert!(!index.claim_delivery([1; 16], 1_000));
        assert!(index.claim_delivery([2; 16], 1_000));
    }

    #[test]
    fn a_ride_is_claimed_once_and_exit_is_a_different_ride() {
        let index = DedupIndex::new();
        assert!(index.claim_ride(RIDE, 1_000));
        assert!(!index.claim_ride(RIDE, 1_000));
        assert!(index.claim_ride(RideKey { tap_kind: TapKind::Exit, ..RIDE }, 1_000));
    }

    #[test]
    fn sweep_forgets_only_expired_entries() {
        let index = DedupIndex::new();
        index.claim_delivery([1; 16], 500);
        index.claim_delivery([2; 16], 1_500);
        index.claim_ride(RIDE, 500);
        index.remember_verified_credential([3; CREDENTIAL_LEN], 1_500);
        index.sweep(1_000);
        assert_eq!(index.sizes(), DedupSizes { deliveries: 1, rides: 0, credentials: 1 });
        assert!(index.claim_ride(RIDE, 2_000), "an expired ride key no longer blocks");
        assert!(!index.claim_delivery([2; 16], 1_500), "a live delivery key still blocks");
    }
}
