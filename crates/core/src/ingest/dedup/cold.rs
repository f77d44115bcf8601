//! The cold tier: what an index remembers past its hot tier, as sorted
//! runs of packed entries, one per partition of the key space. An entry
//! costs its packed bytes and nothing more (no hash table's empty slots
//! or control bytes). Keys are mixed (see [`super::packed::KeyMix`]), so a
//! key's leading bits pick its partition and its next bits guess its
//! place in the run: a lookup reads about two cache lines, not the ten a
//! binary search would.
//!
//! A freeze merges the hot tier's entries into every partition in one
//! pass and drops the expired ones there; each partition is rewritten
//! under its own lock, so a merge holds up only the claims that fall in
//! the partition being rewritten, for the microseconds that takes.

use std::io::{Read, Write};
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::clock::UnixMillis;
use crate::sync::{read, write};

use super::packed::{Key, Remembered};
use super::snapshot::SnapshotError;

/// The most bits of a key's mix that pick its partition: 65 536
/// partitions, so at a megacity's horizon (60 million entries) each run
/// holds about 900 entries, about 18 KiB. An empty partition costs its
/// lock and an empty run, 32 bytes: 2 MiB a tier at the most.
pub const COLD_PARTITION_BITS_MAX: u32 = 16;
/// The fewest: 256 partitions, 8 KiB a tier while empty.
pub const COLD_PARTITION_BITS_MIN: u32 = 8;

/// Which of `1 << bits` partitions a key lives in: its leading bits. So
/// runs in partition order, each sorted, are all keys sorted, whatever
/// `bits` is (a snapshot loads into a tier of any width).
fn partition_of(key: &Key, bits: u32) -> usize {
    (u128::from_be_bytes(*key) >> (u128::BITS - bits)) as usize
}

/// Where in a run of `len` entries `key` should be, were the keys in its
/// partition spread perfectly: the 64 bits after the partition's, scaled.
fn guessed_place(key: &Key, len: usize, bits: u32) -> usize {
    let within = (u128::from_be_bytes(*key) << bits) >> 64;
    ((within * len as u128) >> 64) as usize
}

/// The place of `key` in the sorted `run`: guessed, then bracketed by
/// steps that double away from the guess, then searched in halves. As
/// fast as the guess is good; never worse than twice a binary search.
fn find<V>(run: &[(Key, V)], key: &Key, bits: u32) -> Option<usize> {
    if run.is_empty() {
        return None;
    }
    let guess = guessed_place(key, run.len(), bits).min(run.len() - 1);
    let (mut low, mut high) = (guess, guess + 1);
    let mut step = 1;
    if run[guess].0 <= *key {
        // The key is at or after the guess: push `high` past it.
        while high < run.len() && run[high].0 <= *key {
            low = high;
            high = high.saturating_add(step).min(run.len());
            step *= 2;
        }
    } else {
        // The key is before the guess: push `low` to it or before.
        high = guess;
        loop {
            low = guess.saturating_sub(step);
            if low == 0 || run[low].0 <= *key {
                break;
            }
            high = low;
            step *= 2;
        }
    }
    run[low..high].binary_search_by(|(held, _)| held.cmp(key)).ok().map(|at| low + at)
}

/// One partition's entries, sorted by key.
type Run<V> = Box<[(Key, V)]>;

/// One sorted run per partition, `1 << bits` partitions.
pub(super) struct ColdTier<V> {
    bits: u32,
    partitions: Box<[RwLock<Run<V>>]>,
    entries: AtomicUsize,
}

impl<V: Remembered> ColdTier<V> {
    /// An empty tier of `1 << bits` partitions, `bits` within
    /// [`COLD_PARTITION_BITS_MIN`]..=[`COLD_PARTITION_BITS_MAX`].
    pub(super) fn new(bits: u32) -> ColdTier<V> {
        assert!((COLD_PARTITION_BITS_MIN..=COLD_PARTITION_BITS_MAX).contains(&bits), "{bits} cold partition bits");
        let partitions = (0..1usize << bits).map(|_| RwLock::new(Box::default())).collect();
        ColdTier { bits, partitions, entries: AtomicUsize::new(0) }
    }

    fn run_of(&self, key: &Key) -> &RwLock<Run<V>> {
        &self.partitions[partition_of(key, self.bits)]
    }

    /// The entry for `key`, if this tier holds one.
    pub(super) fn get(&self, key: &Key) -> Option<V> {
        let run = read(self.run_of(key));
        find(&run, key, self.bits).map(|at| run[at].1)
    }

    /// Applies `change` to the entry for `key` under its partition's
    /// lock; `None` when this tier holds no entry for it.
    pub(super) fn update<R>(&self, key: &Key, change: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut run = write(self.run_of(key));
        let at = find(&run, key, self.bits)?;
        Some(change(&mut run[at].1))
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Writes the entry count, then every entry (its key's bytes, then its
    /// value's) in key order. The caller holds the freeze lock, so no
    /// merge changes the count meanwhile.
    pub(super) fn write_entries(&self, out: &mut impl Write) -> std::io::Result<u64> {
        let count = self.len() as u64;
        out.write_all(&count.to_le_bytes())?;
        let mut bytes = Vec::new();
        let mut written = 0u64;
        for lock in &self.partitions {
            bytes.clear();
            let run = read(lock);
            for (key, value) in run.iter() {
                bytes.extend_from_slice(key);
                value.encode(&mut bytes);
            }
            written += run.len() as u64;
            drop(run);
            out.write_all(&bytes)?;
        }
        if written != count {
            return Err(std::io::Error::other(format!("{written} entries written, {count} counted: a merge ran")));
        }
        Ok(count)
    }

    /// Fills this empty tier (the caller checked) with what
    /// [`ColdTier::write_entries`] wrote, checking it is in strict key
    /// order and each entry is one a claim could make, and dropping the
    /// entries expired at `now`; the entries kept. Memory grows with the
    /// entries read, never with a count the input states.
    pub(super) fn load_entries(&self, input: &mut impl Read, now: UnixMillis) -> Result<u64, SnapshotError> {
        debug_assert_eq!(self.len(), 0);
        let mut count = [0u8; 8];
        input.read_exact(&mut count)?;
        let count = u64::from_le_bytes(count);
        let (mut key, mut value_bytes) = ([0u8; 16], vec![0u8; V::ENCODED_BYTES]);
        let (mut partition, mut run, mut previous) = (0, Vec::new(), None::<Key>);
        for _ in 0..count {
            input.read_exact(&mut key)?;
            input.read_exact(&mut value_bytes)?;
            if previous.is_some_and(|before| before >= key) {
                return Err(SnapshotError::OutOfOrder);
            }
            previous = Some(key);
            let value = V::decode(&value_bytes).ok_or(SnapshotError::BadEntry)?;
            let key_partition = partition_of(&key, self.bits);
            if key_partition != partition {
                self.install(partition, std::mem::take(&mut run));
                partition = key_partition;
            }
            if !value.expired_by(now) {
                run.push((key, value));
            }
        }
        self.install(partition, run);
        Ok(self.len() as u64)
    }

    /// Forgets every entry (a snapshot that failed half-way loaded).
    pub(super) fn clear(&self) {
        for lock in &self.partitions {
            *write(lock) = Box::default();
        }
        self.entries.store(0, Ordering::Relaxed);
    }

    fn install(&self, partition: usize, run: Vec<(Key, V)>) {
        self.entries.fetch_add(run.len(), Ordering::Relaxed);
        *write(&self.partitions[partition]) = run.into_boxed_slice();
    }

    /// Merges `fresh` into the tier and drops every entry, old or fresh,
    /// expired at `now`. `fresh` is sorted and holds no key this tier
    /// holds (the hot and cold tiers never hold the same key but during
    /// a freeze, and freezes run one at a time).
    pub(super) fn merge(&self, fresh: &[(Key, V)], now: UnixMillis) {
        assert!(fresh.windows(2).all(|pair| pair[0].0 < pair[1].0), "entries to freeze must come sorted, once each");
        let mut rest = fresh;
        for (partition, lock) in self.partitions.iter().enumerate() {
            let (mine, later) =
                rest.split_at(rest.partition_point(|(key, _)| partition_of(key, self.bits) == partition));
            rest = later;
            let mut run = write(lock);
            let before = run.len();
            let merged = merged_run(std::mem::take(&mut *run), mine, now);
            let after = merged.len();
            *run = merged;
            drop(run);
            if after >= before {
                self.entries.fetch_add(after - before, Ordering::Relaxed);
            } else {
                self.entries.fetch_sub(before - after, Ordering::Relaxed);
            }
        }
        debug_assert!(rest.is_empty());
    }
}

/// `run` and `fresh` as one sorted run, without the entries expired at
/// `now`. The run grows in place and is merged from the back, so a
/// partition costs one reallocation, not a copy of both.
fn merged_run<V: Remembered>(run: Run<V>, fresh: &[(Key, V)], now: UnixMillis) -> Run<V> {
    let mut run = run.into_vec();
    let old_len = run.len();
    run.reserve_exact(fresh.len());
    run.extend_from_slice(fresh);
    let (mut old, mut new, mut to) = (old_len, fresh.len(), run.len());
    while new > 0 {
        to -= 1;
        if old > 0 && run[old - 1].0 > fresh[new - 1].0 {
            old -= 1;
            run[to] = run[old];
        } else {
            assert!(old == 0 || run[old - 1].0 != fresh[new - 1].0, "a key in both tiers");
            new -= 1;
            run[to] = fresh[new];
        }
    }
    run.retain(|(_, value)| !value.expired_by(now));
    run.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::packed::ExpirySecs;
    use super::*;

    fn entry(first: u8, expires_at: UnixMillis) -> (Key, ExpirySecs) {
        let mut key = [0u8; 16];
        key[0] = first;
        (key, ExpirySecs::at_or_after(expires_at))
    }

    #[test]
    fn a_merge_keeps_the_run_sorted_and_drops_what_expired() {
        let old: Box<[_]> = vec![entry(1, 5_000), entry(3, 1_000), entry(5, 5_000)].into();
        let fresh = [entry(0, 5_000), entry(2, 5_000), entry(4, 1_000), entry(6, 5_000)];
        let merged = merged_run(old, &fresh, 1_000);
        let firsts: Vec<u8> = merged.iter().map(|(key, _)| key[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 5, 6]);
    }

    #[test]
    fn a_tier_finds_what_was_merged_into_any_partition() {
        let tier = ColdTier::<ExpirySecs>::new(COLD_PARTITION_BITS_MAX);
        let mut fresh: Vec<(Key, ExpirySecs)> = (0..5_000u64)
            .map(|i| {
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
                key[15] = (i % 2) as u8;
                (key, ExpirySecs::at_or_after(if i % 2 == 0 { 10_000 } else { 20_000 }))
            })
            .collect();
        fresh.sort_unstable_by_key(|(key, _)| *key);
        tier.merge(&fresh, 0);
        assert_eq!(tier.len(), 5_000);
        assert!(fresh.iter().all(|(key, _)| tier.get(key).is_some()));
        tier.merge(&[], 10_000);
        assert_eq!(tier.len(), 2_500, "the even keys expired");
        assert!(fresh.iter().all(|(key, _)| tier.get(key).is_some() == (key[15] == 1)));
        let odd = fresh.iter().find(|(key, _)| key[15] == 1).expect("an odd key").0;
        assert_eq!(tier.update(&odd, |_| 7), Some(7));
        assert_eq!(tier.update(&fresh[0].0, |_| 7), None);
    }

    #[test]
    #[should_panic(expected = "must come sorted")]
    fn entries_out_of_order_are_refused() {
        let tier = ColdTier::<ExpirySecs>::new(COLD_PARTITION_BITS_MAX);
        let fresh = [entry(2, 5_000), entry(1, 5_000)];
        tier.merge(&fresh, 0);
    }

    proptest! {
        /// The guessing search finds exactly what a binary search finds,
        /// however badly the keys are spread (all in a corner, or not).
        #[test]
        fn the_guessing_search_agrees_with_a_binary_search(
            mut held in proptest::collection::vec(any::<u128>(), 0..300),
            probes in proptest::collection::vec(any::<u128>(), 1..50),
            squeeze in 0u32..120,
            bits in COLD_PARTITION_BITS_MIN..=COLD_PARTITION_BITS_MAX,
        ) {
            let to_key = |k: u128| (k >> squeeze).to_be_bytes();
            let mut run: Vec<(Key, ())> = held.drain(..).map(|k| (to_key(k), ())).collect();
            run.sort_unstable();
            run.dedup();
            for probe in probes.iter().map(|k| to_key(*k)).chain(run.iter().map(|(key, _)| *key)) {
                let expected = run.binary_search_by(|(held, _)| held.cmp(&probe)).ok();
                prop_assert_eq!(find(&run, &probe, bits), expected);
            }
        }
    }
}
