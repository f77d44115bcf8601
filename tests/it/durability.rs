//! Nothing acknowledged is lost, nothing is archived twice: restarts,
//! unclean stops, a torn log tail, and injected fsync, rename and
//! disk-full failures, each checked against the rows read back from disk.

use std::collections::HashSet;
use std::time::Duration;

use farestream::archive::read::{archive_files, read_all};
use farestream::archive::scans_root;
use farestream::config::Config;
use farestream::scan::{ArchivedScan, ScanStatus, TapKind};
use farestream::server::Fatal;
use farestream::wal::committer::WalState;

use crate::support::{
    Harness, T0_MS, assert_still_caught, batch, push_into_a_panicking_commit, quick_failures, record, scans,
};

/// Every row once, by scan id.
fn assert_each_once(rows: &[ArchivedScan], expected: usize) {
    let ids: HashSet<[u8; 16]> = rows.iter().map(|r| r.scan_id).collect();
    assert_eq!(ids.len(), rows.len(), "a scan is archived twice");
    assert_eq!(rows.len(), expected, "rows archived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_redeliveries_and_replays_are_still_caught() {
    let h = Harness::start().await;
    let first = scans(&h, 1, 1, 3);
    assert_eq!(h.client_as("station-01").push(&first).await.expect("ack").accepted, 3);
    // A crash leaves no snapshot: the indexes come from the archive.
    let h = h.crash_and_recover(|_| {}).await;
    assert_eq!(h.server.recovery().restored_rows, 3, "{:?}", h.server.recovery());
    assert_eq!(h.server.recovery().dedup_snapshot, None);
    assert_still_caught(&h, &first, 1).await;
    h.server.flush_archive().await.expect("flush");
    let rows = read_all(&scans_root(h.dir.path())).expect("rows");
    assert_each_once(&rows, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclean_stop_with_a_torn_log_tail_loses_nothing_acknowledged() {
    let mut config = Config::defaults();
    // No cut happens on its own: everything acked is only in the log.
    config.archive.file_age_secs_max = 3_600;
    let h = Harness::start_with(config).await;
    for seq in 0..4 {
        assert_eq!(h.client_as("station-01").push(&scans(&h, seq, 10 * seq + 1, 5)).await.expect("ack").accepted, 5);
    }
    let h = h
        .crash_and_recover(|dir| {
            // A write that was cut short: half a record at the end of the log.
            let (_, segment) = farestream::wal::list_segments(&dir.join("wal")).expect("segments").pop().expect("one");
            let mut bytes = std::fs::read(&segment).expect("read");
            bytes.extend_from_slice(&[0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
            std::fs::write(&segment, bytes).expect("write");
        })
        .await;
    let recovery = h.server.recovery().clone();
    assert_eq!(recovery.torn_bytes_cut, 11, "{recovery:?}");
    assert_eq!(recovery.checkpoint_lsn, 0, "nothing was archived before the crash");
    h.server.flush_archive().await.expect("flush");
    let rows = read_all(&scans_root(h.dir.path())).expect("rows");
    assert_each_once(&rows, 20);
    assert!(rows.iter().all(|r| r.status == ScanStatus::Accepted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_renamed_but_not_checkpointed_are_archived_again_once() {
    let h = Harness::start().await;
    h.client_as("station-01").push(&scans(&h, 1, 1, 4)).await.expect("ack");
    h.server.flush_archive().await.expect("flush");
    h.client_as("station-01").push(&scans(&h, 2, 5, 4)).await.expect("ack");
    h.server.flush_archive().await.expect("flush");
    let h = h
        .crash_and_recover(|dir| {
            // The crash came after the second cut's rename, before its
            // checkpoint: roll the checkpoint back to the first cut.
            let first_cut = archive_files(&scans_root(dir)).expect("files")[0].clone();
            let (_, to) = farestream::archive::parquet_writer::file_lsn_range(&first_cut).expect("range");
            std::fs::write(dir.join("archive/checkpoint"), format!("archived_lsn = {to}\n")).expect("checkpoint");
        })
        .await;
    assert_eq!(h.server.recovery().archive_cleanup.uncheckpointed, 1);
    h.server.flush_archive().await.expect("flush");
    assert_each_once(&read_all(&scans_root(h.dir.path())).expect("rows"), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_server_and_recovery_keeps_every_ack() {
    let h = Harness::start_with(quick_failures(Config::defaults())).await;
    assert_eq!(h.client_as("station-01").push(&scans(&h, 1, 1, 3)).await.expect("ack").accepted, 3);
    h.faults.set_fsync_fails(true);
    let refused = h.client_as("station-01").push(&scans(&h, 2, 4, 3)).await;
    assert!(refused.is_err(), "no ack without a durable log: {refused:?}");
    let reason = tokio::time::timeout(Duration::from_secs(5), h.server.failed()).await.expect("server stops");
    assert!(matches!(&reason, Fatal::Wal(why) if why.contains("fsync")), "{reason}");
    assert!(h.client_as("station-01").push(&scans(&h, 3, 7, 1)).await.is_err(), "a stopped server acks nothing");
    h.faults.set_fsync_fails(false);
    let h = h.crash_and_recover(|_| {}).await;
    // The unacked batch is sent again, as its gateway would.
    let resent = h.client_as("station-01").push(&scans(&h, 2, 4, 3)).await.expect("ack after recovery");
    assert_eq!(resent.accepted + resent.redelivered, 3);
    h.server.flush_archive().await.expect("flush");
    assert_each_once(&read_all(&scans_root(h.dir.path())).expect("rows"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rename_stops_the_server_and_recovery_archives_once() {
    let h = Harness::start_with(quick_failures(Config::defaults())).await;
    assert_eq!(h.client_as("station-01").push(&scans(&h, 1, 1, 3)).await.expect("ack").accepted, 3);
    h.faults.set_rename_fails(true);
    assert!(h.server.flush_archive().await.is_err(), "the cut cannot rename its file");
    let reason = tokio::time::timeout(Duration::from_secs(5), h.server.failed()).await.expect("server stops");
    assert!(matches!(&reason, Fatal::Archiver(why) if why.contains("rename")), "{reason}");
    assert!(h.client_as("station-01").push(&scans(&h, 2, 4, 1)).await.is_err(), "a stopped server acks nothing");
    h.faults.set_rename_fails(false);
    let h = h.crash_and_recover(|_| {}).await;
    h.server.flush_archive().await.expect("flush");
    assert_each_once(&read_all(&scans_root(h.dir.path())).expect("rows"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_backoff_and_work_resumes_when_space_returns() {
    let h = Harness::start_with(quick_failures(Config::defaults())).await;
    assert_eq!(h.client_as("station-01").push(&scans(&h, 1, 1, 3)).await.expect("ack").accepted, 3);
    h.faults.set_disk_full(true);
    let refused = h.client_as("station-01").push(&scans(&h, 2, 4, 3)).await.expect_err("no ack while the disk is full");
    assert!(refused.to_string().contains("disk full") || refused.to_string().contains("durable"), "{refused}");
    assert_eq!(h.server.wal_progress().state, WalState::DiskFull);
    assert!(h.server.failure().is_none(), "a full disk is not fatal");
    h.faults.set_disk_full(false);
    let resent = h.client_as("station-01").push(&scans(&h, 2, 4, 3)).await.expect("ack once space returns");
    assert_eq!(resent.accepted + resent.redelivered, 3);
    assert_eq!(h.server.wal_progress().state, WalState::Running);
    h.server.flush_archive().await.expect("flush");
    assert_each_once(&read_all(&scans_root(h.dir.path())).expect("rows"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_day_gets_its_marker_and_a_scan_too_late_for_it_is_filed_under_its_arrival() {
    let mut config = Config::defaults();
    config.ingest.accepted_lateness_secs = 3_600;
    let h = Harness::start_with(config).await;
    h.client_as("station-01").push(&scans(&h, 1, 1, 2)).await.expect("ack");
    h.server.flush_archive().await.expect("flush");
    let root = scans_root(h.dir.path());
    let partition = root.join("service_date=2025-11-20");
    assert!(!partition.join("_SUCCESS").exists(), "the day is still open");
    // 2025-11-21 04:00 Shanghai ends the day; an hour of lateness after that.
    let day_end = T0_MS + 18 * 3_600_000;
    h.clock.set(day_end + 3_600_000 + 1);
    h.server.flush_archive().await.expect("flush");
    assert!(partition.join("_SUCCESS").exists(), "closed once its lateness has passed");
    let closed_files = archive_files(&root).expect("files");
    let late = record("gate-2", 1, day_end - 60_000, TapKind::Entry, h.rider(50).code_at(day_end - 60_000, 1));
    let ack = h.client_as("station-01").push(&batch("station-01", 9, vec![late])).await.expect("ack");
    assert_eq!(ack.rejections[0].scan_status(), Some(ScanStatus::LateUpload), "too late to be charged");
    h.server.flush_archive().await.expect("flush");
    let files = archive_files(&root).expect("files");
    let new_files: Vec<_> = files.iter().filter(|f| !closed_files.contains(f)).collect();
    assert_eq!(new_files.len(), 1, "{files:?}");
    assert!(new_files[0].starts_with(root.join("service_date=2025-11-21")), "filed under its arrival: {new_files:?}");
    let rows = farestream::archive::read::read_file(new_files[0]).expect("rows");
    assert_eq!(rows[0].scanned_at, day_end - 60_000, "the scan keeps its own time");
    assert!(files.iter().all(|f| !f.to_string_lossy().contains("late-")), "a closed day gains no rows");
}

/// Review fault 2: the disk filled after a cut renamed its file and before
/// its checkpoint landed; the archiver rewound and wrote the same records
/// again beside the renamed file, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_between_a_cut_and_its_checkpoint_archives_each_row_once() {
    let h = Harness::start_with(quick_failures(Config::defaults())).await;
    assert_eq!(h.client_as("station-01").push(&scans(&h, 1, 1, 3)).await.expect("ack").accepted, 3);
    // Let the archiver append the rows to an open file (it polls every 50 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.faults.set_disk_full(true);
    let refused = h.server.flush_archive().await.expect_err("the checkpoint cannot be written");
    assert!(refused.to_string().contains("checkpoint"), "{refused}");
    assert_eq!(archive_files(&scans_root(h.dir.path())).expect("files"), Vec::<std::path::PathBuf>::new());
    h.faults.set_disk_full(false);
    h.server.flush_archive().await.expect("flush once space returns");
    assert_each_once(&read_all(&scans_root(h.dir.path())).expect("rows"), 3);
    let h = h.restart().await;
    assert_eq!(h.server.recovery().archive_cleanup, Default::default(), "nothing left for recovery to clean");
    assert_each_once(&h.archive_rows().await, 3);
}

/// Suspected in the review: a commit that panicked after claiming its
/// scans released the commit lock before the server was marked failed, so
/// a batch waiting on the lock that re-delivered those scans was acked OK
/// although they were never logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_waiting_behind_a_panicked_commit_is_not_acked() {
    let (h, original, first) = push_into_a_panicking_commit().await;
    let resent = h.client_as("station-01").push(&original).await;
    assert!(resent.is_err(), "claimed but never logged, so never acked: {resent:?}");
    assert!(first.await.expect("task").is_err());
    let reason = tokio::time::timeout(Duration::from_secs(5), h.server.failed()).await.expect("server stops");
    assert!(matches!(&reason, Fatal::Unlogged(why) if why.contains("committing")), "{reason}");
    let h = h.crash_and_recover(|_| {}).await;
    assert_eq!(h.client_as("station-01").push(&original).await.expect("ack after recovery").accepted, 2);
    assert_each_once(&h.archive_rows().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_segments_are_deleted_and_the_log_carries_on_across_restarts() {
    let mut config = Config::defaults();
    config.wal.segment_bytes_max = 700;
    let h = Harness::start_with(config).await;
    for seq in 0..8 {
        h.client_as("station-01").push(&scans(&h, seq, 10 * seq + 1, 5)).await.expect("ack");
    }
    let wal_dir = h.dir.path().join("wal");
    let before = farestream::wal::list_segments(&wal_dir).expect("segments").len();
    assert!(before > 2, "small segments rolled: {before}");
    // A segment goes once both of its readers, archiver and pricer, are past it.
    h.server.flush_pricing().await.expect("price");
    let archived = h.server.flush_archive().await.expect("flush");
    assert_eq!(archived, h.server.wal_progress().durable_lsn);
    let after = farestream::wal::list_segments(&wal_dir).expect("segments");
    assert_eq!(after.len(), 1, "only the segment being written is kept: {after:?}");
    let h = h.crash_and_recover(|_| {}).await;
    assert_eq!(h.server.recovery().checkpoint_lsn, archived);
    assert_eq!(h.server.recovery().wal_end_lsn, archived, "LSNs carry on from where they were");
    h.client_as("station-01").push(&scans(&h, 9, 100, 5)).await.expect("ack");
    h.server.flush_archive().await.expect("flush");
    assert_each_once(&read_all(&scans_root(h.dir.path())).expect("rows"), 45);
}
