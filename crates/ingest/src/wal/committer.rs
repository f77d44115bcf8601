//! Group commit: one thread owns the [`WalWriter`]. Callers queue records
//! and learn their LSN at once; the thread writes whatever has queued since
//! its last round and makes it durable with one fsync, then publishes the
//! durable LSN. While one fsync runs the next group gathers, so durability
//! costs one fsync per round, not one per batch.
//!
//! A full disk parks the thread: it keeps what it could not write and tries
//! again every `disk_full_retry`, and the state says `DiskFull` so the server
//! can tell gateways to back off. A failed fsync ends the thread for good:
//! state `Failed`, and the server stops.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::{WalError, WalWriter};
use crate::telemetry;
use farestream_core::sync::lock;
use farestream_core::wal::framing::{encode_record, record_bytes};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalState {
    Running,
    /// Writes fail with ENOSPC; retrying.
    DiskFull,
    /// Stopped for good; the reason.
    Failed(String),
}

/// What the commit thread has made durable, and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub durable_lsn: u64,
    pub state: WalState,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("write-ahead log stopped: {0}")]
    Failed(String),
    #[error("not durable within {0:?}")]
    Timeout(Duration),
}

struct Queue {
    frames: Vec<Vec<u8>>,
    /// LSN after the last queued frame.
    tail_lsn: u64,
    stopping: bool,
    /// Ends the thread without writing what is queued: a process death.
    halted: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wakeup: Condvar,
    progress: watch::Sender<Progress>,
    record_bytes_max: u32,
}

/// The callers' side. Cheap to clone.
#[derive(Clone)]
pub struct CommitHandle {
    shared: Arc<Shared>,
}

/// Owns the commit thread.
pub struct Committer {
    handle: CommitHandle,
    thread: JoinHandle<()>,
}

impl Committer {
    /// `fsync: false` publishes written bytes as durable without syncing:
    /// only for measuring what durability costs.
    pub fn spawn(writer: WalWriter, record_bytes_max: u32, disk_full_retry: Duration, fsync: bool) -> Committer {
        let end = writer.synced_lsn();
        let (progress, _) = watch::channel(Progress { durable_lsn: end, state: WalState::Running });
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { frames: Vec::new(), tail_lsn: end, stopping: false, halted: false }),
            wakeup: Condvar::new(),
            progress,
            record_bytes_max,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("wal-commit".into())
            .spawn(move || run(writer, thread_shared, disk_full_retry, fsync))
            .expect("spawning the WAL commit thread");
        Committer { handle: CommitHandle { shared }, thread }
    }

    pub fn handle(&self) -> CommitHandle {
        self.handle.clone()
    }

    /// Writes and syncs everything queued, then ends the thread.
    pub fn close(self) -> Progress {
        lock(&self.handle.shared.queue).stopping = true;
        self.handle.shared.wakeup.notify_all();
        let _ = self.thread.join();
        self.handle.progress()
    }

    /// Ends the thread without writing what is queued, as a process death
    /// does (those records were never acknowledged); a group being written
    /// when it is called is finished first. For tests that kill a server
    /// inside one process: once this returns, nothing more is written to
    /// the log a new server recovers.
    pub fn halt(self) {
        lock(&self.handle.shared.queue).halted = true;
        self.handle.shared.wakeup.notify_all();
        let _ = self.thread.join();
    }
}

impl CommitHandle {
    /// Queues one record; returns the LSN just past it. Records are logged
    /// in the order of these calls, so a caller that needs an order across
    /// threads (the server's commit sequencer) calls this under its lock.
    pub fn enqueue(&self, payload: &[u8]) -> Result<u64, WalError> {
        if payload.len() > self.shared.record_bytes_max as usize {
            return Err(WalError::RecordTooLarge { len: payload.len(), max: self.shared.record_bytes_max });
        }
        let mut frame = Vec::with_capacity(payload.len() + 8);
        encode_record(payload, &mut frame);
        let mut queue = lock(&self.shared.queue);
        queue.tail_lsn += record_bytes(payload.len());
        queue.frames.push(frame);
        let tail = queue.tail_lsn;
        drop(queue);
        self.shared.wakeup.notify_one();
        Ok(tail)
    }

    /// LSN after everything queued so far.
    pub fn tail_lsn(&self) -> u64 {
        lock(&self.shared.queue).tail_lsn
    }

    pub fn progress(&self) -> Progress {
        self.shared.progress.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// Waits until everything up to `lsn` is durable.
    pub async fn wait_durable(&self, lsn: u64, timeout: Duration) -> Result<(), WaitError> {
        let mut progress = self.subscribe();
        let wait = async {
            loop {
                {
                    let now = progress.borrow_and_update();
                    if let WalState::Failed(reason) = &now.state {
                        return Err(WaitError::Failed(reason.clone()));
                    }
                    if now.durable_lsn >= lsn {
                        return Ok(());
                    }
                }
                if progress.changed().await.is_err() {
                    return Err(WaitError::Failed("commit thread ended".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(Err(WaitError::Timeout(timeout)))
    }
}

fn run(mut writer: WalWriter, shared: Arc<Shared>, disk_full_retry: Duration, fsync: bool) {
    loop {
        let mut frames = {
            let mut queue = lock(&shared.queue);
            while queue.frames.is_empty() && !queue.stopping && !queue.halted {
                queue = shared.wakeup.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            if queue.frames.is_empty() || queue.halted {
                return;
            }
            std::mem::take(&mut queue.frames)
        };
        let group_bytes: usize = frames.iter().map(Vec::len).sum();
        while !frames.is_empty() {
            let before = writer.written_lsn();
            match writer.append(&frames) {
                Ok(_) => frames.clear(),
                Err(error) if error.is_disk_full() => {
                    drop_written_frames(&mut frames, writer.written_lsn() - before);
                    if lock(&shared.queue).halted {
                        return;
                    }
                    if lock(&shared.queue).stopping {
                        // Shutting down on a full disk: these records were
                        // never acknowledged, and their gateways will resend.
                        return fail(&shared, error, writer.synced_lsn());
                    }
                    set_state(&shared, WalState::DiskFull, writer.synced_lsn());
                    telemetry::wal_disk_full();
                    tracing::warn!(%error, "disk full: not acknowledging until space returns");
                    std::thread::sleep(disk_full_retry);
                }
                Err(error) => return fail(&shared, error, writer.synced_lsn()),
            }
        }
        let synced = if fsync { writer.sync() } else { Ok(writer.skip_sync()) };
        match synced {
            Ok(durable) => {
                telemetry::wal_group_committed(group_bytes, durable);
                set_state(&shared, WalState::Running, durable);
            }
            Err(error) => return fail(&shared, error, writer.synced_lsn()),
        }
    }
}

/// Drops the frames at the front that the failed append did write.
fn drop_written_frames(frames: &mut Vec<Vec<u8>>, written: u64) {
    let mut covered = 0u64;
    let done = frames.iter().take_while(|f| {
        covered += f.len() as u64;
        covered <= written
    });
    let count = done.count();
    frames.drain(..count);
}

fn set_state(shared: &Shared, state: WalState, durable_lsn: u64) {
    shared.progress.send_if_modified(|p| {
        let changed = p.state != state || p.durable_lsn != durable_lsn;
        *p = Progress { durable_lsn, state: state.clone() };
        changed
    });
}

fn fail(shared: &Shared, error: WalError, durable_lsn: u64) {
    tracing::error!(%error, "write-ahead log failed; the server stops");
    telemetry::wal_failed();
    set_state(shared, WalState::Failed(error.to_string()), durable_lsn);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Faults;
    use crate::wal::WalConfig;

    fn config(dir: &std::path::Path) -> WalConfig {
        WalConfig { dir: dir.join("wal"), segment_bytes_max: 1 << 20, record_bytes_max: 1024 }
    }

    /// After a halt nothing more reaches the log: what a later caller
    /// queues stays unwritten, and the log reopens where the last durable
    /// group ended.
    #[test]
    fn a_halted_committer_writes_nothing_more() {
        let dir = tempfile::tempdir().expect("dir");
        let faults = Arc::new(Faults::default());
        let recovered = crate::wal::open(config(dir.path()), Arc::clone(&faults), 0).expect("log");
        let committer = Committer::spawn(recovered.writer, 1024, Duration::from_millis(1), true);
        let handle = committer.handle();
        let durable = handle.enqueue(b"acknowledged").expect("queued");
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(handle.wait_durable(durable, Duration::from_secs(10))).expect("durable");

        committer.halt();
        let queued_after = handle.enqueue(b"never acknowledged").expect("queued");
        assert!(queued_after > durable);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(handle.progress().durable_lsn, durable);
        let reopened = crate::wal::open(config(dir.path()), faults, 0).expect("reopened");
        assert_eq!(reopened.end_lsn, durable, "the log ends at the last group written before the halt");
    }
}
