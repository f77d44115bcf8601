//! The two duplicate indexes and the verified-credential cache. Every
//! entry carries the moment after which it can no longer matter, and is
//! dropped after that: memory is bounded by time (the code validity plus
//! the accepted lateness), never by a count that could silently forget a
//! key that still matters.
//!
//! Each duplicate index is a [`tiered::TieredMap`]: new keys go into a
//! hot, sharded hash map (dashmap), so concurrent batches contend only
//! when they touch the same shard; once it holds
//! [`DedupLimits::hot_entries_max`] entries, a freeze packs them into
//! sorted runs that cost their 20 or 21 bytes each and nothing more. Over
//! a megacity's 3-day horizon nearly everything is cold.

mod cold;
mod packed;
pub mod snapshot;
mod tiered;

use std::sync::Mutex;

use dashmap::DashMap;

use crate::clock::UnixMillis;
use crate::ridecode::format::CREDENTIAL_LEN;
use crate::scan::TapKind;

use packed::{ExpirySecs, KeyMix, Remembered, RideUse, pack_ride_key};
use tiered::TieredMap;

pub use cold::{COLD_PARTITION_BITS_MAX, COLD_PARTITION_BITS_MIN};

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

/// When the hot tiers are frozen into the cold ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupLimits {
    /// Entries an index's hot tier may reach before a sweep freezes it.
    pub hot_entries_max: usize,
    /// The longest a sweep waits between freezes, which are what drop
    /// expired cold entries.
    pub cold_sweep_interval_ms: i64,
    /// How many bits of a key pick its cold tier's partition: 16 for a
    /// node's whole traffic; a cluster partition's pipeline, which holds
    /// its share of the cards, takes fewer ([`DedupLimits::for_share_of`]).
    pub cold_partition_bits: u32,
}

impl DedupLimits {
    /// A million hot entries an index (tens of MiB), an hourly cold sweep
    /// and the widest cold tier: the embedded configuration's values.
    pub const DEFAULT: DedupLimits = DedupLimits {
        hot_entries_max: 1 << 20,
        cold_sweep_interval_ms: 3_600_000,
        cold_partition_bits: COLD_PARTITION_BITS_MAX,
    };

    /// The limits for a pipeline that holds one of `partitions` shares of
    /// the cards (a cluster partition's owner): a cold tier narrower by
    /// the share's bits, so each run holds about what a node's would,
    /// and an empty index costs 2 x 32 bytes a cold partition (4 MiB at
    /// 16 bits, which 4 096 partitions on one node would make 17 GB of
    /// nothing), never under [`COLD_PARTITION_BITS_MIN`].
    pub fn for_share_of(self, partitions: u16) -> DedupLimits {
        let share_bits = u32::from(partitions.max(1)).ilog2();
        let bits = self.cold_partition_bits.saturating_sub(share_bits).max(COLD_PARTITION_BITS_MIN);
        DedupLimits { cold_partition_bits: bits, ..self }
    }
}

/// The re-delivery index (by fingerprint), the replay index (by ride
/// code) and the verified-credential cache.
pub struct DedupIndex {
    /// Keyed by the whole scan's fingerprint, which covers the validator id
    /// and sequence number: a forged record that reuses a real scan's
    /// sequence number cannot make the real one look like a re-delivery.
    deliveries: TieredMap<ExpirySecs>,
    rides: TieredMap<RideUse>,
    /// What both indexes' keys go through before they are held.
    mix: KeyMix,
    /// A card's credentials a day: few enough to stay hot.
    credentials: DashMap<[u8; CREDENTIAL_LEN], ExpirySecs>,
    limits: DedupLimits,
    /// When the last freeze ran; held through a freeze, so freezes run
    /// one at a time.
    last_freeze: Mutex<Option<UnixMillis>>,
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

impl Default for DedupIndex {
    /// With a seed anyone knows: for benches and tests.
    fn default() -> DedupIndex {
        DedupIndex::new(DedupLimits::DEFAULT, 0)
    }
}

impl DedupIndex {
    /// Empty indexes, frozen as `limits` say, their keys mixed with
    /// `mix_seed`: fill it from the OS (the pipeline takes it from its
    /// entropy), so no peer can aim keys at one place.
    pub fn new(limits: DedupLimits, mix_seed: u128) -> DedupIndex {
        DedupIndex {
            deliveries: TieredMap::new(limits.cold_partition_bits),
            rides: TieredMap::new(limits.cold_partition_bits),
            mix: KeyMix::new(mix_seed),
            credentials: DashMap::new(),
            limits,
            last_freeze: Mutex::new(None),
        }
    }

    /// Records a delivery of the scan with this fingerprint, received
    /// `at`; false when it was delivered before and that entry has not
    /// expired by `at`. Atomic: of two concurrent deliveries of one scan
    /// exactly one sees true. Whether an entry counts is decided by the
    /// claim's own time, never by when a sweep ran, so a partition's
    /// owner that claims late decides as one that claims at once.
    pub fn claim_delivery(&self, fingerprint: Fingerprint, expires_at: UnixMillis, at: UnixMillis) -> bool {
        let fresh = ExpirySecs::at_or_after(expires_at);
        let renewed_when_expired = |held: &mut ExpirySecs| {
            let expired = held.expired_by(at);
            if expired {
                *held = fresh;
            }
            expired
        };
        self.deliveries.claim(self.mix.key(fingerprint), fresh, renewed_when_expired)
    }

    /// True when a scan with this fingerprint was delivered before (a
    /// look, not a claim: [`DedupIndex::claim_delivery`] decides).
    pub fn delivery_seen(&self, fingerprint: &Fingerprint) -> bool {
        self.deliveries.contains(&self.mix.key(*fingerprint))
    }

    /// Records a use of a ride code at a `kind` of gate; false when that
    /// is a replay (see [`RideKey`]). Atomic: of two concurrent uses that
    /// cannot both pay, exactly one sees true, whatever their order.
    /// An entry expired by `at` counts as none, as for deliveries.
    pub fn claim_ride(&self, key: RideKey, kind: TapKind, expires_at: UnixMillis, at: UnixMillis) -> bool {
        let pays = |used: &mut RideUse| {
            if used.expired_by(at) {
                *used = RideUse::new(kind, expires_at);
                return true;
            }
            let admitted = used.admits(kind);
            if admitted {
                used.add(kind);
            }
            admitted
        };
        self.rides.claim(self.mix.key(pack_ride_key(key)), RideUse::new(kind, expires_at), pays)
    }

    /// Re-records a use decided before a restart (an accepted row), in any
    /// order: the uses of a code end up the same as when they were claimed.
    pub(crate) fn restore_ride(&self, key: RideKey, kind: TapKind, expires_at: UnixMillis) {
        let joins = |used: &mut RideUse| {
            used.add(kind);
            true
        };
        self.rides.claim(self.mix.key(pack_ride_key(key)), RideUse::new(kind, expires_at), joins);
    }

    /// True when this exact credential's issuer signature was verified before.
    pub(crate) fn credential_is_verified(&self, credential: &[u8; CREDENTIAL_LEN]) -> bool {
        self.credentials.contains_key(credential)
    }

    /// Remembers a credential whose issuer signature verified, until it expires.
    pub(crate) fn remember_verified_credential(&self, credential: [u8; CREDENTIAL_LEN], expires_at: UnixMillis) {
        self.credentials.insert(credential, ExpirySecs::at_or_after(expires_at));
    }

    /// Drops every hot entry whose expiry is at or before `now`, then
    /// freezes when [`DedupIndex::freeze_when_due`] says so.
    pub fn sweep(&self, now: UnixMillis) {
        self.deliveries.sweep_hot(now);
        self.rides.sweep_hot(now);
        self.credentials.retain(|_, expires| !expires.passed_by(now));
        self.freeze_when_due(now);
    }

    /// Moves both indexes' hot entries into their cold tiers, dropping
    /// the cold entries expired at `now`, when a hot tier has reached
    /// [`DedupLimits::hot_entries_max`] or the last freeze is
    /// [`DedupLimits::cold_sweep_interval_ms`] old. Cheap when neither.
    /// Skipped while a snapshot is being written (it freezes first).
    pub(crate) fn freeze_when_due(&self, now: UnixMillis) {
        let mut last_freeze = match self.last_freeze.try_lock() {
            Ok(held) => held,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let full = self.deliveries.hot_len().max(self.rides.hot_len()) >= self.limits.hot_entries_max;
        let cold_sweep_due = last_freeze.is_none_or(|at| now.saturating_sub(at) >= self.limits.cold_sweep_interval_ms);
        if full || cold_sweep_due {
            self.freeze(&mut last_freeze, now);
        }
    }

    /// Moves both indexes' hot entries into their cold tiers, dropping
    /// what expired at `now`; the caller holds the freeze lock, whose
    /// guard is `last_freeze`.
    fn freeze(&self, last_freeze: &mut Option<UnixMillis>, now: UnixMillis) {
        self.deliveries.freeze(now);
        self.rides.freeze(now);
        *last_freeze = Some(now);
    }

    /// How many entries each index holds.
    pub fn sizes(&self) -> DedupSizes {
        DedupSizes { deliveries: self.deliveries.len(), rides: self.rides.len(), credentials: self.credentials.len() }
    }
}

#[cfg(test)]
mod tests;
