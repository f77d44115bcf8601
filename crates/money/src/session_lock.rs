//! A PostgreSQL session advisory lock, for what must run once at a time
//! across machines (a cluster's settlement of a day): held on a
//! connection of its own, it goes when its holder drops it, and with the
//! connection when the holder's process dies, so a crash holds nothing.
//!
//! The connection lives on a thread of its own: the blocking client runs
//! a runtime of its own inside, which may not be dropped on an async
//! thread, and the guard may be dropped anywhere.
//!
//! A session lock can be lost while its holder runs on: the connection
//! ended (a failover, a cut network, an administrator). So the server's
//! idle timeouts are lifted for the session, and a holder about to act on
//! the lock asks [`SessionLock::confirm`] first: the connection answering
//! is the lock still held (a session lock goes only with its session).

use std::sync::mpsc;
use std::thread::JoinHandle;

use postgres::{Config, NoTls};
use tokio::sync::oneshot;

use crate::pg_store::describe;
use crate::store::StoreError;

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct SessionLock {
    /// Each request asks the holder whether the session still answers;
    /// dropped, it tells the holder to let go.
    requests: Option<mpsc::Sender<oneshot::Sender<Result<(), String>>>>,
    holder: Option<JoinHandle<()>>,
    key: i64,
}

/// Why a holder may no longer act on its lock.
#[derive(Debug, thiserror::Error)]
#[error("the advisory lock {key:#x} is no longer held (its session ended: {why}); another may hold it now")]
pub struct LockLost {
    pub key: i64,
    pub why: String,
}

impl SessionLock {
    /// Waits until the lock `key` is this caller's, however long another
    /// holds it (the session's `lock_timeout` is lifted for it). Blocks:
    /// call it off the async threads.
    pub fn acquire(config: &Config, key: i64) -> Result<SessionLock, StoreError> {
        let store = describe(config);
        let mut client = config.connect(NoTls).map_err(|source| StoreError::Connect { store, source })?;
        // No timeout ends this session while it waits or holds: the
        // store's `lock_timeout` would fail the wait, and an idle session
        // (PostgreSQL 14's `idle_session_timeout`, which a database may
        // set) would be closed, its lock with it.
        client.batch_execute("SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0")?;
        if let Err(error) = client.batch_execute("SET idle_session_timeout = 0") {
            tracing::debug!(%error, "no idle_session_timeout before PostgreSQL 14: nothing to lift");
        }
        client.execute("SELECT pg_advisory_lock($1)", &[&key])?;
        let (requests, asked) = mpsc::channel::<oneshot::Sender<Result<(), String>>>();
        let holder = std::thread::Builder::new()
            .name(format!("session lock {key:#x}"))
            .spawn(move || {
                // Ends when the guard's sender is dropped.
                for reply in asked {
                    let _ = reply.send(client.simple_query("SELECT 1").map(drop).map_err(|e| e.to_string()));
                }
                drop(client);
            })
            .map_err(|e| StoreError::Task(format!("no thread to hold the lock on: {e}")))?;
        Ok(SessionLock { requests: Some(requests), holder: Some(holder), key })
    }

    /// Whether the lock is still this holder's: its session answers. Ask
    /// before each act the lock guards; a lock lost after the answer is
    /// lost for at most that act.
    pub async fn confirm(&self) -> Result<(), LockLost> {
        let lost = |why: String| LockLost { key: self.key, why };
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or_else(|| lost("released".into()))?;
        requests.send(reply).map_err(|_| lost("its holder thread ended".into()))?;
        answer.await.map_err(|_| lost("its holder thread ended".into()))?.map_err(lost)
    }
}

impl Drop for SessionLock {
    /// Closes the lock's connection, and waits for it (a moment): the
    /// next `acquire` in this process then finds the lock free.
    fn drop(&mut self) {
        drop(self.requests.take());
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
    /// it; a holder whose connection the server ends holds nothing more,
    /// and `confirm` says so. An idle session is never timed out.
    #[test]
    fn a_second_holder_waits_for_the_first_and_a_lost_connection_frees_it() {
        let Some(cluster) = TestCluster::shared() else { return };
        let mut config = cluster.new_database();
        config.options("-c lock_timeout=100 -c idle_session_timeout=200");
        let confirm = |lock: &SessionLock| {
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
            runtime.block_on(lock.confirm())
        };
        let first = SessionLock::acquire(&config, 7).expect("the first holds it");
        std::thread::sleep(Duration::from_millis(400));
        confirm(&first).expect("idle past idle_session_timeout, still held");
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
        let lost = confirm(&second).expect_err("the ended session's holder is told");
        assert!(lost.to_string().contains("no longer held"), "{lost}");
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
