//! Start-up: what the archive checkpoint covers, the log opened, the dedup
//! indexes rebuilt from what was decided (from their snapshot and the
//! log's tail, or from the archive and the log), and the directories
//! proven writable before the server says it serves.

use std::path::Path;
use std::sync::Arc;

use crate::{RecoveryReport, ServerError, ServerSettings, dedup_snapshot};
use farestream_core::clock::UnixMillis;
use farestream_core::ingest::Pipeline;
use farestream_core::journal;
use farestream_ingest::archive::checkpoint::{clean_after_crash, read_checkpoint};
use farestream_ingest::archive::parquet_writer::partition_date;
use farestream_ingest::faults::Faults;
use farestream_ingest::wal::WalCursor;

/// Start-up: the archive checkpoint, a clean archive, the log opened
/// (torn tail cut), and the dedup indexes rebuilt from what was decided.
pub(super) fn recover(
    settings: &ServerSettings,
    faults: &Arc<Faults>,
    pipeline: &Pipeline,
    now: UnixMillis,
) -> Result<(farestream_ingest::wal::WalWriter, RecoveryReport), ServerError> {
    let checkpoint_lsn = read_checkpoint(&settings.archiver.checkpoint_path)?;
    let archive_cleanup = clean_after_crash(&settings.archive.root, checkpoint_lsn, faults)?;
    let recovered = farestream_ingest::wal::open(settings.wal.clone(), Arc::clone(faults), checkpoint_lsn)?;
    if recovered.first_lsn > checkpoint_lsn || recovered.end_lsn < checkpoint_lsn {
        return Err(ServerError::Recovery(format!(
            "the log holds [{}, {}) but the archive checkpoint is at {checkpoint_lsn}: records are missing",
            recovered.first_lsn, recovered.end_lsn
        )));
    }
    let restoring = std::time::Instant::now();
    let snapshot_path = dedup_snapshot::snapshot_path(&settings.data_dir);
    let wal_lsns = (recovered.first_lsn, recovered.end_lsn);
    let dedup_snapshot = dedup_snapshot::load(&snapshot_path, pipeline, now, wal_lsns);
    let (replay_from, mut restored_rows) = match dedup_snapshot {
        // The snapshot holds every claim before its position; the log
        // holds the rest (replaying more than needed would be harmless).
        Some(loaded) => (loaded.replay_from_lsn, 0),
        None => (checkpoint_lsn, restore_from_archive(&settings.archive.root, pipeline, now)?),
    };
    let mut cursor = WalCursor::new(settings.wal.dir.clone(), settings.wal.record_bytes_max, replay_from);
    while cursor.lsn() < recovered.end_lsn {
        for record in cursor.read_next(recovered.end_lsn)? {
            let rows = journal::decode(&record.payload).map_err(|e| ServerError::Recovery(e.to_string()))?;
            pipeline.restore(&rows, now);
            restored_rows += rows.len();
        }
    }
    let report = RecoveryReport {
        checkpoint_lsn,
        wal_first_lsn: recovered.first_lsn,
        wal_end_lsn: recovered.end_lsn,
        torn_bytes_cut: recovered.torn_bytes_cut,
        archive_cleanup,
        restored_rows,
        dedup_snapshot,
        dedup_restore: restoring.elapsed(),
    };
    Ok((recovered.writer, report))
}

/// Replays into the dedup indexes the archived rows that may still hold a
/// live entry: those in partitions within the restore window
/// ([`farestream_core::ingest::Horizons`] says why that window suffices). One file at
/// a time, so memory holds one file's rows, not days of them.
fn restore_from_archive(root: &Path, pipeline: &Pipeline, now: UnixMillis) -> Result<usize, ServerError> {
    let config = pipeline.config();
    let oldest_ms = now.saturating_sub(config.horizons().restore_window_ms());
    let oldest = config.service_day.service_date(oldest_ms).unwrap_or_default();
    let mut restored = 0;
    for path in farestream_ingest::archive::read::archive_files(root)? {
        if path.parent().and_then(partition_date).is_some_and(|date| date >= oldest) {
            let rows = farestream_ingest::archive::read::read_file(&path)?;
            pipeline.restore(&rows, now);
            restored += rows.len();
        }
    }
    Ok(restored)
}

/// Writes, fsyncs and removes a file in `dir`, so a read-only mount or a
/// full disk is found before the server says it serves, not at the first
/// batch.
pub(super) fn probe_writable(dir: &Path, faults: &Faults) -> Result<(), ServerError> {
    let probe = dir.join(".farestream-write-probe");
    let not_writable = |source| ServerError::NotWritable { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(not_writable)?;
    faults.before_write().map_err(not_writable)?;
    let file = std::fs::File::create(&probe).map_err(not_writable)?;
    std::io::Write::write_all(&mut &file, b"farestream").map_err(not_writable)?;
    farestream_ingest::files::fsync(&file, faults).map_err(not_writable)?;
    std::fs::remove_file(&probe).map_err(not_writable)?;
    farestream_ingest::files::fsync_dir(dir, faults).map_err(not_writable)
}
