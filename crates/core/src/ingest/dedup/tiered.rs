//! One index in two tiers: a hot hash map (dashmap) that takes every new
//! key, and a compact [`ColdTier`] that a freeze moves the hot entries
//! into. Memory then follows the packed entries, not a hash table's
//! growth, and the hot tier stays as small as the freeze threshold.
//!
//! Every claim of a key runs under the lock of the key's hot shard, from
//! its look at the hot tier through its look at (or change to) the cold
//! tier to its insert: two claims of one key are serialized whichever
//! tier holds it. A freeze publishes its entries in the cold tier before
//! it removes them from the hot one, so a key is always in at least one
//! tier, and a change made to a hot entry while it was being frozen is
//! carried to its cold copy under that same shard lock.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::clock::UnixMillis;

use super::cold::ColdTier;
use super::packed::{Key, MixedKeyHasher, Remembered};

type HotMap<V> = DashMap<Key, V, std::hash::BuildHasherDefault<MixedKeyHasher>>;

/// One index's two tiers. Keys are mixed before they come here.
pub(super) struct TieredMap<V> {
    hot: HotMap<V>,
    cold: ColdTier<V>,
}

impl<V: Remembered> TieredMap<V> {
    pub(super) fn new(cold_partition_bits: u32) -> TieredMap<V> {
        TieredMap { hot: HotMap::default(), cold: ColdTier::new(cold_partition_bits) }
    }

    /// Inserts `fresh` for `key` when neither tier holds it (true);
    /// otherwise `seen` decides, and may change the entry held.
    pub(super) fn claim(&self, key: Key, fresh: V, seen: impl FnOnce(&mut V) -> bool) -> bool {
        match self.hot.entry(key) {
            Entry::Occupied(mut held) => seen(held.get_mut()),
            // The shard's lock is held until the insert: no other claim
            // of this key can run in between, in either tier.
            Entry::Vacant(slot) => match self.cold.update(&key, seen) {
                Some(decided) => decided,
                None => {
                    slot.insert(fresh);
                    true
                }
            },
        }
    }

    /// True when either tier holds `key`.
    pub(super) fn contains(&self, key: &Key) -> bool {
        self.hot.contains_key(key) || self.cold.get(key).is_some()
    }

    /// Drops the hot entries expired at `now` (the cold tier drops its
    /// own at each freeze).
    pub(super) fn sweep_hot(&self, now: UnixMillis) {
        self.hot.retain(|_, value| !value.expired_by(now));
    }

    /// Forgets every entry in both tiers.
    pub(super) fn clear(&self) {
        self.hot.clear();
        self.cold.clear();
    }

    /// The cold tier, for snapshots.
    pub(super) fn cold(&self) -> &ColdTier<V> {
        &self.cold
    }

    /// Entries in the hot tier.
    pub(super) fn hot_len(&self) -> usize {
        self.hot.len()
    }

    /// Entries in both tiers.
    pub(super) fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }

    /// Moves every hot entry into the cold tier, dropping the entries of
    /// either tier expired at `now`. Runs one at a time (the caller
    /// holds the freeze lock).
    pub(super) fn freeze(&self, now: UnixMillis) {
        let mut moving: Vec<(Key, V)> = self.hot.iter().map(|held| (*held.key(), *held.value())).collect();
        moving.sort_unstable_by_key(|(key, _)| *key);
        self.cold.merge(&moving, now);
        for (key, frozen) in &moving {
            if let Entry::Occupied(held) = self.hot.entry(*key) {
                let latest = *held.get();
                if latest != *frozen {
                    self.cold.update(key, |value| *value = latest);
                }
                held.remove();
            }
        }
    }
}
