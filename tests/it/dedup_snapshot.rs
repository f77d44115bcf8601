//! The dedup indexes' snapshot (issue 21): a restart loads it and replays
//! the log's tail, catching every re-delivery and replay it would have
//! caught from the archive; a snapshot it cannot use sends it back to the
//! archive; and a snapshot holding a claim that never reached the log is
//! never put in place.

use farestream::archive::read::read_all;
use farestream::archive::scans_root;
use farestream::config::Config;
use farestream::server::dedup_snapshot::{SnapshotWriteError, snapshot_path};
use farestream::wire::ScanBatch;

use crate::support::{Harness, assert_still_caught, push_into_a_panicking_commit, scans};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_loads_the_snapshot_written_at_shutdown() {
    let h = Harness::start().await;
    let first = scans(&h, 1, 1, 3);
    assert_eq!(h.client_as("station-01").push(&first).await.expect("ack").accepted, 3);
    let h = h.restart().await;
    let recovery = h.server.recovery();
    let loaded = recovery.dedup_snapshot.expect("restored from the snapshot");
    assert_eq!((loaded.counts.deliveries, loaded.counts.rides), (3, 3), "{recovery:?}");
    assert_eq!(loaded.replay_from_lsn, recovery.wal_end_lsn, "nothing after it to replay");
    assert_eq!(recovery.restored_rows, 0, "no archive read: {recovery:?}");
    assert_still_caught(&h, &first, 1).await;
    h.server.flush_archive().await.expect("flush");
    assert_eq!(read_all(&scans_root(h.dir.path())).expect("rows").len(), 4, "3 entries and the replay");
}

/// A crash after a periodic snapshot: the snapshot plus the log's tail
/// catch what came before and after it, and the log kept the segments
/// the snapshot replays from although the archive and pricer passed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_snapshot_replays_the_log_tail_onto_it() {
    let mut config = Config::defaults();
    config.wal.segment_bytes_max = 700;
    let h = Harness::start_with(config).await;
    let before = scans(&h, 1, 1, 3);
    h.client_as("station-01").push(&before).await.expect("ack");
    let written = h.server.write_dedup_snapshot().await.expect("snapshot");
    assert_eq!((written.counts.deliveries, written.counts.rides), (3, 3));
    // Small segments: each batch rolls one, so the archive and the pricer
    // pass several after the snapshot's.
    let after: Vec<ScanBatch> = (0..3).map(|i| scans(&h, 2 + i, 10 + 10 * i, 2)).collect();
    for batch in &after {
        h.client_as("station-01").push(batch).await.expect("ack");
    }
    h.server.flush_pricing().await.expect("price");
    h.server.flush_archive().await.expect("archive");
    let h = h.crash_and_recover(|_| {}).await;
    let recovery = h.server.recovery();
    let loaded = recovery.dedup_snapshot.expect("the log still holds the snapshot's tail");
    assert_eq!(loaded.replay_from_lsn, written.replay_from_lsn);
    assert_eq!(recovery.restored_rows, 6, "the tail: {recovery:?}");
    assert_still_caught(&h, &before, 1).await;
    for (i, batch) in after.iter().enumerate() {
        assert_still_caught(&h, batch, 10 + 10 * i as u64).await;
    }
}

/// Two snapshots at once (the periodic one and shutdown's, say) take
/// turns: both are put in place whole, and the later one stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_snapshots_at_once_take_turns() {
    let h = Harness::start().await;
    for seq in 0..4 {
        h.client_as("station-01").push(&scans(&h, seq, 100 * seq + 1, 50)).await.expect("ack");
    }
    for _ in 0..5 {
        let (first, second) = tokio::join!(h.server.write_dedup_snapshot(), h.server.write_dedup_snapshot());
        let (first, second) = (first.expect("first"), second.expect("second"));
        assert_eq!((first.counts.deliveries, second.counts.deliveries), (200, 200));
    }
    let h = h.crash_and_recover(|_| {}).await;
    let loaded = h.server.recovery().dedup_snapshot.expect("a whole snapshot");
    assert_eq!((loaded.counts.deliveries, loaded.counts.rides), (200, 200));
}

/// A damaged, cut or foreign snapshot is not used: the restart restores
/// from the archive and catches the same scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_it_cannot_use_sends_the_restart_to_the_archive() {
    type Damage = fn(&std::path::Path);
    let damages: [(&str, Damage); 3] = [
        ("a byte changed", |path| {
            let mut bytes = std::fs::read(path).expect("snapshot");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            std::fs::write(path, bytes).expect("damaged");
        }),
        ("cut short", |path| {
            let bytes = std::fs::read(path).expect("snapshot");
            std::fs::write(path, &bytes[..bytes.len() - 1]).expect("cut");
        }),
        ("not a snapshot", |path| std::fs::write(path, b"").expect("emptied")),
    ];
    for (what, damage) in damages {
        let h = Harness::start().await;
        let first = scans(&h, 1, 1, 3);
        h.client_as("station-01").push(&first).await.expect("ack");
        let h = h.restart().await;
        assert!(h.server.recovery().dedup_snapshot.is_some(), "{what}: written at shutdown");
        let h = h.crash_and_recover(|dir| damage(&snapshot_path(dir))).await;
        let recovery = h.server.recovery();
        assert_eq!(recovery.dedup_snapshot, None, "{what}");
        assert_eq!(recovery.restored_rows, 3, "{what}: from the archive: {recovery:?}");
        assert_still_caught(&h, &first, 1).await;
    }
}

/// A commit claims its scans, then fails before its record is logged
/// (the server stops). A snapshot written meanwhile holds those claims,
/// so it must not be put in place: after the crash the batch, never
/// acked, is accepted when it is sent again, not dropped as a
/// re-delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_holding_an_unlogged_claim_is_never_put_in_place() {
    let (h, original, pushed) = push_into_a_panicking_commit().await;
    let written = h.server.write_dedup_snapshot().await;
    assert!(matches!(written, Err(SnapshotWriteError::Stopping(_))), "{written:?}");
    assert!(!snapshot_path(h.dir.path()).exists(), "not put in place");
    assert!(pushed.await.expect("task").is_err(), "never acked");
    let h = h.crash_and_recover(|_| {}).await;
    assert_eq!(h.server.recovery().dedup_snapshot, None);
    assert_eq!(h.client_as("station-01").push(&original).await.expect("ack").accepted, 2);
}
