//! The dedup indexes' snapshot on disk (issue 21): written every
//! `ingest.dedup_snapshot_interval_secs` and at a graceful shutdown, and
//! read at start, so a restart loads one file and replays the log's tail
//! instead of reading days of Parquet. The format and its checks are the
//! core's (`farestream_core::ingest::dedup::snapshot`).
//!
//! A snapshot holds claims whose log records may not be durable yet, and a
//! claim whose record never lands must not survive a restart: its batch
//! was never acked, and after the restart its resend would be taken for a
//! re-delivery and dropped. So a snapshot is written to a temporary file
//! and renamed into place only once everything queued by the time it was
//! written is durable, and the server has not failed meanwhile (a batch
//! that claimed but could not queue its record fails the server under the
//! commit gate, which is taken after the write).

use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use farestream_core::clock::UnixMillis;
use farestream_core::ingest::Pipeline;
use farestream_core::ingest::dedup::snapshot::{SnapshotCounts, SnapshotHeader};
use farestream_ingest::archive::Arrivals;
use farestream_ingest::faults::Faults;
use farestream_ingest::files::{fsync, fsync_dir};
use farestream_ingest::telemetry;

use crate::Shared;

/// Where the snapshot lives in a data dir.
pub fn snapshot_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dedup").join("snapshot")
}

/// Buffer between the indexes and the file, writing or reading.
const SNAPSHOT_IO_BUFFER_BYTES: usize = 1 << 20;

/// What a start took from a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedSnapshot {
    /// The log was replayed from here onto it.
    pub replay_from_lsn: u64,
    pub counts: SnapshotCounts,
}

/// Why a snapshot was not written or not put in place. The next interval
/// tries again; meanwhile the log is not held for the one in place, which
/// a restart may then find stale and refuse.
#[derive(Debug, Error)]
pub enum SnapshotWriteError {
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the log did not make the snapshot's claims durable: {0}")]
    NotDurable(String),
    #[error("the server is stopping: {0}")]
    Stopping(String),
    #[error("the snapshot task stopped: {0}")]
    Task(String),
}

/// A snapshot put in place.
#[derive(Debug, Clone, Copy)]
pub struct WrittenSnapshot {
    pub replay_from_lsn: u64,
    pub counts: SnapshotCounts,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Loads the snapshot at `path` into `pipeline`'s empty indexes if there
/// is one it can use: one the log still holds the tail of (`wal_lsns`,
/// the log's first and end positions). Anything else is logged and
/// counted, and leaves the indexes empty, for the restore from the
/// archive.
pub(super) fn load(path: &Path, pipeline: &Pipeline, now: UnixMillis, wal_lsns: (u64, u64)) -> Option<LoadedSnapshot> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            refused(path, &error.to_string());
            return None;
        }
    };
    let reader = std::io::BufReader::with_capacity(SNAPSHOT_IO_BUFFER_BYTES, file);
    let in_log = |header: &SnapshotHeader| replay_from_in_log(header.replay_from_lsn, wal_lsns);
    match pipeline.load_dedup_snapshot(now, reader, in_log) {
        Ok((header, counts)) => Some(LoadedSnapshot { replay_from_lsn: header.replay_from_lsn, counts }),
        Err(error) => {
            refused(path, &error.to_string());
            None
        }
    }
}

/// A snapshot can stand only if the log holds every record from its
/// position on: `from` within `[first, end]` (at `end`, nothing to replay).
fn replay_from_in_log(from: u64, (first, end): (u64, u64)) -> Result<(), String> {
    if (first..=end).contains(&from) {
        Ok(())
    } else {
        Err(format!("it replays from log position {from}, but the log holds [{first}, {end}]"))
    }
}

fn refused(path: &Path, reason: &str) {
    tracing::warn!(path = %path.display(), %reason, "dedup snapshot not used; restoring from the archive");
    telemetry::dedup_snapshot_refused();
}

/// Writes a snapshot every `interval` until shutdown.
pub(super) async fn snapshot_job(shared: Arc<Shared>, interval: Duration) {
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            _ = every.tick() => match write(&shared).await {
                Ok(written) => tracing::info!(?written, "dedup snapshot written"),
                Err(error) => tracing::warn!(%error, "dedup snapshot not written; the one in place may go stale"),
            },
        }
    }
}

/// Writes a snapshot and puts it in place once its claims are durable,
/// one at a time; the log keeps its segments from the snapshot's position
/// on (and, after a failure, for none). Counted here, whoever asked: the
/// periodic job, the shutdown or [`crate::Server::write_dedup_snapshot`].
pub(super) async fn write(shared: &Arc<Shared>) -> Result<WrittenSnapshot, SnapshotWriteError> {
    let _one_at_a_time = shared.snapshot_writer.lock().await;
    shared.log_readers.snapshot_starting();
    let written = write_and_put_in_place(shared).await;
    match &written {
        Ok(written) => {
            shared.log_readers.snapshot_in_place(written.replay_from_lsn);
            telemetry::dedup_snapshot_written(written.bytes, written.elapsed.as_secs_f64());
        }
        Err(_) => {
            shared.log_readers.snapshot_failed();
            telemetry::dedup_snapshot_failed();
        }
    }
    written
}

async fn write_and_put_in_place(shared: &Arc<Shared>) -> Result<WrittenSnapshot, SnapshotWriteError> {
    let started = Instant::now();
    // Every record queued before this mark made its claims before it.
    let replay_from_lsn = shared.gate.mark().lsn;
    shared.log_readers.snapshot_writing_from(replay_from_lsn);
    let path = snapshot_path(&shared.settings.data_dir);
    let tmp = path.with_extension("tmp");
    let (pipeline, faults, now) =
        (Arc::clone(&shared.pipeline), Arc::clone(&shared.handles.faults), shared.gate.clock.now_ms());
    let written = {
        let tmp = tmp.clone();
        tokio::task::spawn_blocking(move || write_file(&pipeline, &tmp, replay_from_lsn, now, &faults))
    };
    let (counts, bytes) = written.await.map_err(|e| SnapshotWriteError::Task(e.to_string()))??;
    // Every claim the file holds was made before this mark: wait until
    // its record is durable, and make sure no claim went unlogged.
    let claimed_by = shared.gate.mark().lsn;
    shared
        .wal
        .wait_durable(claimed_by, shared.settings.wal_ack_wait)
        .await
        .map_err(|e| SnapshotWriteError::NotDurable(e.to_string()))?;
    if let Some(reason) = shared.failure.get() {
        let _ = std::fs::remove_file(&tmp);
        return Err(SnapshotWriteError::Stopping(reason.to_string()));
    }
    let faults = Arc::clone(&shared.handles.faults);
    let publish = tokio::task::spawn_blocking(move || put_in_place(&tmp, &path, &faults));
    publish.await.map_err(|e| SnapshotWriteError::Task(e.to_string()))??;
    Ok(WrittenSnapshot { replay_from_lsn, counts, bytes, elapsed: started.elapsed() })
}

fn write_file(
    pipeline: &Pipeline,
    tmp: &Path,
    replay_from_lsn: u64,
    now: UnixMillis,
    faults: &Faults,
) -> Result<(SnapshotCounts, u64), SnapshotWriteError> {
    let io = |source| SnapshotWriteError::Io { path: tmp.to_path_buf(), source };
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    faults.before_write().map_err(io)?;
    // It holds the key mix's secret seed: the owner's eyes only.
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(tmp).map_err(io)?;
    let mut out = BufWriter::with_capacity(SNAPSHOT_IO_BUFFER_BYTES, file);
    let counts = pipeline.write_dedup_snapshot(replay_from_lsn, now, &mut out).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    fsync(&file, faults).map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    Ok((counts, bytes))
}

fn put_in_place(tmp: &Path, path: &Path, faults: &Faults) -> Result<(), SnapshotWriteError> {
    let io = |source| SnapshotWriteError::Io { path: path.to_path_buf(), source };
    faults.before_rename().map_err(io)?;
    std::fs::rename(tmp, path).map_err(io)?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")), faults).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's first and end positions both stand; one past either side,
    /// and the extremes of the field, do not.
    #[test]
    fn a_snapshot_stands_only_where_the_log_holds_its_tail() {
        let log = (1_000, 5_000);
        for from in [1_000, 3_000, 5_000] {
            assert_eq!(replay_from_in_log(from, log), Ok(()), "{from}");
        }
        for from in [0, 999, 5_001, u64::MAX] {
            let refused = replay_from_in_log(from, log).expect_err("outside the log");
            assert!(refused.contains(&from.to_string()) && refused.contains("[1000, 5000]"), "{refused}");
        }
        assert_eq!(replay_from_in_log(0, (0, 0)), Ok(()), "an empty log from its start");
    }
}
