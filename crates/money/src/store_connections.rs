//! A few connections to the money store for work that runs side by side:
//! the dispatcher's attempts, up to `payments.dispatch_concurrency_max`
//! at once, each writing its outcome in a transaction of its own. Behind
//! one connection they wrote one after another, a round trip per
//! statement and a commit each; on PostgreSQL each now takes a free
//! connection, so outcomes are written side by side and the server flushes
//! their commits together. SQLite's write transaction holds the whole file,
//! so a second connection would only wait for the first: it gets one.
//!
//! The first connection is made at once (a store that cannot be reached
//! stops the start); the others when work first finds every open one
//! busy, so a server that dispatches little holds one. A connection that
//! cannot be made is not a failure: the work waits for an open one, and
//! no other is tried for [`OPEN_AGAIN_AFTER`] (a store out of reach would
//! otherwise cost every call a connect timeout for each unopened slot).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crate::db::Engine;
use crate::money_store::MoneyStore;
use crate::store::StoreError;
use farestream_core::sync::lock;

type Open = Box<dyn Fn() -> Result<MoneyStore, StoreError> + Send + Sync>;

/// After a connection could not be made, how long before another is tried.
pub const OPEN_AGAIN_AFTER: Duration = Duration::from_secs(5);

pub struct StoreConnections {
    /// The first is always open; the others once needed.
    slots: Vec<Mutex<Option<MoneyStore>>>,
    open: Open,
    /// Whose turn it is to be waited for when every connection is busy.
    next: AtomicUsize,
    /// When a connection last could not be made.
    open_failed_at: Mutex<Option<Instant>>,
}

impl StoreConnections {
    /// Up to `connections_max` connections made by `open` (blocking: off
    /// the async threads), one where the store is SQLite; the first made
    /// now.
    pub fn open(
        connections_max: usize,
        open: impl Fn() -> Result<MoneyStore, StoreError> + Send + Sync + 'static,
    ) -> Result<StoreConnections, StoreError> {
        let first = open()?;
        let count = match first.engine() {
            Engine::Sqlite => 1,
            Engine::Postgres => connections_max.max(1),
        };
        let mut slots = vec![Mutex::new(Some(first))];
        slots.extend((1..count).map(|_| Mutex::new(None)));
        Ok(StoreConnections {
            slots,
            open: Box::new(open),
            next: AtomicUsize::new(0),
            open_failed_at: Mutex::new(None),
        })
    }

    /// How many connections there may be.
    pub fn connections_max(&self) -> usize {
        self.slots.len()
    }

    /// How many are open now.
    pub fn opened(&self) -> usize {
        self.slots.iter().filter(|slot| lock(slot).is_some()).count()
    }

    /// Runs `work` on a free connection (opening one if every open one is
    /// busy), or, with all of them busy, on the next in turn once it is
    /// free (blocking: off the async threads). `work` must not call `with`
    /// on the same connections: with every one busy it would wait for its
    /// own.
    pub fn with<T>(&self, work: impl FnOnce(&mut MoneyStore) -> T) -> T {
        for slot in &self.slots {
            let free = match slot.try_lock() {
                Ok(free) => free,
                // A panic mid-step left it: its transaction ended unfinished.
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            if let Some(mut store) = self.opened_in(free) {
                return work(&mut store);
            }
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        match self.opened_in(lock(&self.slots[turn])) {
            Some(mut store) => work(&mut store),
            None => work(&mut StoreGuard(lock(&self.slots[0]))),
        }
    }

    /// The connection in `slot`, made now if it has none yet; `None` when
    /// it cannot be made.
    fn opened_in<'s>(&self, mut slot: MutexGuard<'s, Option<MoneyStore>>) -> Option<StoreGuard<'s>> {
        if slot.is_none() {
            let mut failed_at = lock(&self.open_failed_at);
            if failed_at.is_some_and(|at| at.elapsed() < OPEN_AGAIN_AFTER) {
                return None;
            }
            match (self.open)() {
                Ok(store) => *slot = Some(store),
                Err(error) => {
                    *failed_at = Some(Instant::now());
                    tracing::warn!(%error, "cannot open one more money-store connection; waiting for an open one");
                    return None;
                }
            }
        }
        Some(StoreGuard(slot))
    }
}

/// A slot that holds an open connection.
struct StoreGuard<'s>(MutexGuard<'s, Option<MoneyStore>>);

impl std::ops::Deref for StoreGuard<'_> {
    type Target = MoneyStore;

    fn deref(&self) -> &MoneyStore {
        self.0.as_ref().expect("a guard is made for an open slot (the first is opened with the set)")
    }
}

impl std::ops::DerefMut for StoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut MoneyStore {
        self.0.as_mut().expect("a guard is made for an open slot (the first is opened with the set)")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use super::*;
    use crate::db::Db;
    use crate::test_cluster::TestCluster;

    /// One connection at first; steps that each take a while then run side
    /// by side on up to as many PostgreSQL connections as asked for, and
    /// one after another on SQLite's one; every step runs once.
    #[test]
    fn steps_run_side_by_side_on_postgresql_and_one_at_a_time_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = crate::StoreLocation::Sqlite(crate::store::store_path(dir.path()));
        let mut engines = vec![("sqlite", sqlite, 1)];
        if let Some(cluster) = TestCluster::shared() {
            engines.push(("postgres", cluster.new_location(), 4));
        }
        for (engine, location, expected) in engines {
            let open = move || MoneyStore::open(&location, Duration::from_secs(1));
            let connections = Arc::new(StoreConnections::open(4, open).expect("opened"));
            assert_eq!((connections.connections_max(), connections.opened()), (expected, 1), "{engine}");
            let counters = || Arc::new(AtomicU32::new(0));
            let (busy, most, ran) = (counters(), counters(), counters());
            let steps: Vec<_> = (0..8)
                .map(|_| {
                    let (connections, busy, most, ran) =
                        (Arc::clone(&connections), Arc::clone(&busy), Arc::clone(&most), Arc::clone(&ran));
                    std::thread::spawn(move || {
                        connections.with(|store| {
                            let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            store.db().query_one("SELECT 1", &[]).expect("a query");
                            std::thread::sleep(Duration::from_millis(50));
                            busy.fetch_sub(1, Ordering::SeqCst);
                            ran.fetch_add(1, Ordering::SeqCst);
                        })
                    })
                })
                .collect();
            steps.into_iter().for_each(|step| step.join().expect("a step"));
            assert_eq!(ran.load(Ordering::SeqCst), 8, "{engine}");
            let most = most.load(Ordering::SeqCst);
            assert!(most <= expected as u32, "{engine}: {most} at once on {expected} connections");
            assert!(connections.opened() <= expected, "{engine}");
            if engine == "postgres" {
                assert!(most >= 2, "{engine}: steps ran side by side");
            }
        }
    }

    /// A connection that cannot be made leaves the work to the open one,
    /// and no other is tried for a while.
    #[test]
    fn work_waits_for_the_open_connection_when_no_other_can_be_made() {
        let Some(cluster) = TestCluster::shared() else { return };
        let location = cluster.new_location();
        let first = Mutex::new(Some(MoneyStore::open(&location, Duration::from_secs(1)).expect("a store")));
        let failed = Arc::new(AtomicU32::new(0));
        let open = {
            let failed = Arc::clone(&failed);
            move || {
                lock(&first).take().ok_or_else(|| {
                    failed.fetch_add(1, Ordering::SeqCst);
                    StoreError::Task("refused".into())
                })
            }
        };
        let connections = StoreConnections::open(3, open).expect("the first");
        assert_eq!((connections.connections_max(), connections.opened()), (3, 1));
        let query = |store: &mut MoneyStore| store.db().query_one("SELECT 2", &[]).is_ok();
        std::thread::scope(|scope| {
            let waiting = connections.with(|_| {
                let waiting = scope.spawn(|| (0..3).all(|_| connections.with(query)));
                std::thread::sleep(Duration::from_millis(50));
                waiting
            });
            assert!(waiting.join().expect("the steps"), "each ran on the first connection");
        });
        assert_eq!(connections.opened(), 1);
        assert_eq!(failed.load(Ordering::SeqCst), 1, "one connection tried, then none for {OPEN_AGAIN_AFTER:?}");
    }
}
