//! A PostgreSQL session advisory lock, for what must run once at a time
//! across machines (a cluster's settlement of a day): held on a
//! connection of its own, it goes when its holder drops it, and with the
//! connection when the holder's process dies, so a crash holds nothing.
//!
//! The connection lives on a thread of its own: the blocking client runs
//! a runtime of its own inside, which may not be dropped on an async
//! thread, and the guard may be dropped anywhere.

use std::sync::mpsc;
use std::thread::JoinHandle;

use postgres::{Config, NoTls};

use crate::pg_store::describe;
use crate::store::StoreError;

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct SessionLock {
    /// Dropped to tell the holder to let go.
    release: Option<mpsc::Sender<()>>,
    holder: Option<JoinHandle<()>>,
}

impl SessionLock {
    /// Waits until the lock `key` is this caller's, however long another
    /// holds it (the session's `lock_timeout` is lifted for it). Blocks:
    /// call it off the async threads.
    pub fn acquire(config: &Config, key: i64) -> Result<SessionLock, StoreError> {
        let store = describe(config);
        let mut client = config.connect(NoTls).map_err(|source| StoreError::Connect { store, source })?;
        client.batch_execute("SET lock_timeout = 0")?;
        client.execute("SELECT pg_advisory_lock($1)", &[&key])?;
        let (release, released) = mpsc::channel::<()>();
        let holder = std::thread::Builder::new()
            .name(format!("session lock {key:#x}"))
            .spawn(move || {
                // Returns when the guard's sender is dropped.
                let _ = released.recv();
                drop(client);
            })
            .map_err(|e| StoreError::Task(format!("no thread to hold the lock on: {e}")))?;
        Ok(SessionLock { release: Some(release), holder: Some(holder) })
    }
}

impl Drop for SessionLock {
    /// Closes the lock's connection, and waits for it (a moment): the
    /// next `acquire` in this process then finds the lock free.
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(holder) = self.holder.take() {
            let _ = holder.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_cluster::TestCluster;

    /// A second holder waits while the first holds the lock, however long
    /// (past the store's `lock_timeout`), and gets it once the first drops
    /// it; a holder whose connection the server ends holds nothing more.
    #[test]
    fn a_second_holder_waits_for_the_first_and_a_lost_connection_frees_it() {
        let Some(cluster) = TestCluster::shared() else { return };
        let mut config = cluster.new_database();
        config.options("-c lock_timeout=100");
        let first = SessionLock::acquire(&config, 7).expect("the first holds it");
        let (got, taken) = mpsc::channel();
        let waiter = {
            let config = config.clone();
            std::thread::spawn(move || {
                let second = SessionLock::acquire(&config, 7).expect("the second, once free");
                got.send(()).expect("told");
                second
            })
        };
        assert!(taken.recv_timeout(Duration::from_millis(600)).is_err(), "held: the second waits past lock_timeout");
        drop(first);
        taken.recv_timeout(Duration::from_secs(10)).expect("the second has it once the first let go");
        let second = waiter.join().expect("the waiter");
        let mut admin = config.connect(NoTls).expect("admin");
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .expect("the holder's connection ended");
        let third = std::thread::spawn(move || SessionLock::acquire(&config, 7).map(drop));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !third.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(third.is_finished(), "a holder whose connection ended holds nothing");
        third.join().expect("the third").expect("acquired");
        drop(second);
    }
}
