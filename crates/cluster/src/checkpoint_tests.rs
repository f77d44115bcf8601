//! Checkpoints and retention against a real three-server JetStream
//! cluster: a new owner decides from a checkpoint as one that read the
//! whole claimed log would, after the streams gave up what the
//! checkpoint passed; a checkpoint of another stream is passed over, and
//! damaged ones stop the partition rather than forget claims.

use std::time::Duration;

use bytes::Bytes;
use farestream_core::cluster::{ClaimedEntry, CutRecord, Partition, partition_of_card};
use farestream_core::scan::{ArchivedScan, ScanStatus};
use farestream_core::wire::{ScanBatch, ScanRecord};
use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

use crate::claim::{ClaimError, ClaimLogs, ClaimSettings, ClaimStop, claim_partition};
use crate::claim_tests::{
    AT_MS, Fleet, PARTITIONS, claimed_entries, open_logs, run_for, scan, settings, wall_clock_ms,
};
use crate::test_nats::NatsCluster;
use crate::{CHECKPOINTS_KEPT, ClaimCheckpoints, StreamLog, append_batch, purge_consumed};
use farestream_shared_archive::SharedStore;

/// Cuts every 300 ms and a checkpoint at each.
fn checkpointing() -> ClaimSettings {
    ClaimSettings {
        segment_age_max: Duration::from_millis(300),
        checkpoint_interval: Duration::from_millis(1),
        ..settings().0
    }
}

fn shared_memory() -> SharedStore {
    SharedStore { store: std::sync::Arc::new(object_store::memory::InMemory::new()), local_root: None }
}

/// Three NATS servers, the scans and claimed streams named after the
/// test, checkpoints kept in memory.
struct Rig {
    _cluster: NatsCluster,
    scans: StreamLog,
    claimed: StreamLog,
    checkpoints: ClaimCheckpoints,
}

impl Rig {
    async fn start(name: &str) -> Option<Rig> {
        let cluster = NatsCluster::start().await?;
        let (scans, claimed) = open_logs(&cluster, name, 1 << 20).await;
        Some(Rig { _cluster: cluster, scans, claimed, checkpoints: ClaimCheckpoints::new(shared_memory()) })
    }

    fn logs(&self) -> ClaimLogs<'_> {
        ClaimLogs { scans: &self.scans, claimed: &self.claimed, checkpoints: &self.checkpoints }
    }
}

/// Claims `partition` with a fresh pipeline for `how_long`; how it stopped.
async fn owner_for(
    fleet: &Fleet,
    logs: ClaimLogs<'_>,
    partition: Partition,
    claim: ClaimSettings,
    how_long: Duration,
) -> Result<ClaimStop, ClaimError> {
    let stop = CancellationToken::new();
    let owner = claim_partition(logs, partition, fleet.pipeline(), (claim, &wall_clock_ms), || true, &stop);
    run_for(&stop, how_long, owner).await
}

/// What an ingest node appends for `batch`, received at `at_ms`.
async fn ingest(fleet: &Fleet, scans: &StreamLog, batch: &ScanBatch, at_ms: i64) {
    let node = fleet.pipeline();
    let rows = node.commit_unclaimed(batch, node.verify(batch).expect("a batch"), at_ms).rows;
    append_batch(scans, rows, batch.batch_seq).await.expect("appended");
}

/// The rows and re-deliveries of the claimed records the stream still holds.
async fn held_rows(claimed: &StreamLog, partition: Partition) -> (Vec<ArchivedScan>, u32) {
    let (mut rows, mut redelivered) = (Vec::new(), 0);
    for entry in claimed_entries(claimed, partition).await {
        if let ClaimedEntry::Rows(record) = entry {
            redelivered += record.redelivered;
            rows.extend(record.rows);
        }
    }
    (rows, redelivered)
}

fn batch(seq: u64, scans: Vec<ScanRecord>) -> ScanBatch {
    ScanBatch { gateway_id: "depot-1".into(), batch_seq: seq, scans }
}

/// The first owner claims card 1's tap and checkpoints at its cuts; the
/// streams give up everything below the oldest checkpoint kept (card
/// 1's claimed record among it). A new owner still drops card 1's tap
/// re-delivered and finds its code replayed at another bus: it knows
/// them from the checkpoint alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_decides_from_a_checkpoint_after_the_streams_gave_up_what_it_passed() {
    let Some(rig) = Rig::start("CHECKPOINT").await else { return };
    let (scans, claimed, logs) = (&rig.scans, &rig.claimed, rig.logs());
    let fleet = Fleet::new();
    let p = partition_of_card(1, PARTITIONS);
    let other = (2..100u64).find(|c| partition_of_card(*c, PARTITIONS) == p).expect("a card beside card 1");
    let first = batch(1, vec![scan("bus-1", 1, fleet.code(1, 1))]);
    ingest(&fleet, scans, &first, AT_MS + 10_000).await;
    owner_for(&fleet, logs, p, checkpointing(), Duration::from_millis(1_500)).await.expect("claimed");
    let kept = rig.checkpoints.kept(p).await.expect("listed");
    assert_eq!(kept.len(), CHECKPOINTS_KEPT, "the newest two kept of the several written: {kept:?}");
    // An owner that wrote more cuts since (the oldest kept checkpoint is
    // past card 1's record), then the streams give up below it.
    owner_for(&fleet, logs, p, checkpointing(), Duration::from_millis(1_000)).await.expect("claimed");
    let purged = purge_consumed(logs, p, u64::MAX).await.expect("purged").expect("a checkpoint to purge below");
    assert!(purged.claimed_records > 0 && purged.scans_records == 1, "{purged:?}");
    assert!(held_rows(claimed, p).await.0.is_empty(), "card 1's claimed record given up");

    let resend = batch(2, vec![scan("bus-1", 1, fleet.code(1, 1)), scan("bus-1", 2, fleet.code(other, 1))]);
    ingest(&fleet, scans, &resend, AT_MS + 20_000).await;
    ingest(&fleet, scans, &batch(3, vec![scan("bus-2", 1, fleet.code(1, 1))]), AT_MS + 21_000).await;
    owner_for(&fleet, logs, p, settings().0, Duration::from_millis(1_500)).await.expect("claimed");

    let (rows, redelivered) = held_rows(claimed, p).await;
    let seen: Vec<(String, Option<u64>, ScanStatus)> =
        rows.iter().map(|r| (r.validator_id.clone(), r.card_id, r.status)).collect();
    let wanted = vec![
        ("bus-1".to_string(), Some(other), ScanStatus::Accepted),
        ("bus-2".to_string(), Some(1), ScanStatus::Replay),
    ];
    assert_eq!((seen, redelivered), (wanted, 1), "card 1's tap dropped as a re-delivery, its code a replay");
}

/// Checkpoints of a stream made again (the same partition, sequences
/// from 1 once more) are passed over, so the new stream's scans are all
/// claimed; checkpoints of this stream that do not load stop the
/// partition rather than have it read a log given up below them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_streams_checkpoints_are_passed_over_and_damaged_ones_stop_the_partition() {
    let Some(cluster) = NatsCluster::start().await else { return };
    let shared = shared_memory();
    let checkpoints = ClaimCheckpoints::new(shared.clone());
    let fleet = Fleet::new();
    let p = partition_of_card(1, PARTITIONS);
    let taps = batch(1, vec![scan("bus-1", 1, fleet.code(1, 1))]);
    let (old_scans, old_claimed) = open_logs(&cluster, "OLDSTREAM", 1 << 20).await;
    let old = ClaimLogs { scans: &old_scans, claimed: &old_claimed, checkpoints: &checkpoints };
    ingest(&fleet, &old_scans, &taps, AT_MS + 10_000).await;
    owner_for(&fleet, old, p, checkpointing(), Duration::from_millis(1_500)).await.expect("claimed");
    assert!(!checkpoints.kept(p).await.expect("listed").is_empty());

    // The same scans in new streams, whose sequences the old
    // checkpoints' cuts fall among.
    let (new_scans, new_claimed) = open_logs(&cluster, "NEWSTREAM", 1 << 20).await;
    let new = ClaimLogs { scans: &new_scans, claimed: &new_claimed, checkpoints: &checkpoints };
    let other_cut = CutRecord { arrivals_before_ms: 0, closed_through: None };
    for n in 0..8 {
        new_claimed.append_after(p, Bytes::from(other_cut.encode()), n).await.expect("a cut of the new stream");
    }
    ingest(&fleet, &new_scans, &taps, AT_MS + 10_000).await;
    let stopped = owner_for(&fleet, new, p, settings().0, Duration::from_millis(1_500)).await;
    assert_eq!(stopped.expect("claimed"), ClaimStop::Stopped);
    let (rows, redelivered) = held_rows(&new_claimed, p).await;
    assert_eq!((rows.len(), redelivered), (1, 0), "card 1's tap claimed in the new stream, not taken for a resend");

    for kept in checkpoints.kept(p).await.expect("listed") {
        let path = kept.path();
        let mut damaged = shared.store.get(path).await.expect("got").bytes().await.expect("bytes").to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        shared.store.put(path, damaged.into()).await.expect("damaged");
    }
    let stopped = owner_for(&fleet, old, p, settings().0, Duration::from_millis(1_000)).await;
    assert!(matches!(stopped, Err(ClaimError::NoCheckpoint { .. })), "{stopped:?}");
}

/// A partition checkpointed before it had any scans (`scans_from` 1)
/// then gets a tap acknowledged while no owner runs; the retention that
/// follows must leave it on the scans stream for the next owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partitions_checkpoint_leaves_scans_acked_after_it_to_the_next_owner() {
    let Some(rig) = Rig::start("QUIETSCANS").await else { return };
    let (scans, claimed, logs) = (&rig.scans, &rig.claimed, rig.logs());
    let fleet = Fleet::new();
    let p = partition_of_card(1, PARTITIONS);
    owner_for(&fleet, logs, p, checkpointing(), Duration::from_millis(1_200)).await.expect("cut, nothing to claim");
    let kept = rig.checkpoints.kept(p).await.expect("listed");
    assert!(!kept.is_empty() && kept.iter().all(|k| k.scans_from == 1), "{kept:?}");

    ingest(&fleet, scans, &batch(1, vec![scan("bus-1", 1, fleet.code(1, 1))]), AT_MS + 10_000).await;
    let purged = purge_consumed(logs, p, u64::MAX).await.expect("purged");
    owner_for(&fleet, logs, p, settings().0, Duration::from_millis(1_500)).await.expect("claimed");
    let cards: Vec<Option<u64>> = held_rows(claimed, p).await.0.iter().map(|r| r.card_id).collect();
    assert_eq!(cards, vec![Some(1)], "the acknowledged tap claimed after {purged:?}");
}

/// A reader at 0 (the archive or the pricing has read nothing of the
/// partition yet) keeps the whole claimed log: JetStream would take a
/// purge "below 0" for the whole subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_claimed_records_no_reader_has_passed() {
    let Some(rig) = Rig::start("NOREADER").await else { return };
    let (scans, claimed, logs) = (&rig.scans, &rig.claimed, rig.logs());
    let fleet = Fleet::new();
    let p = partition_of_card(1, PARTITIONS);
    ingest(&fleet, scans, &batch(1, vec![scan("bus-1", 1, fleet.code(1, 1))]), AT_MS + 10_000).await;
    owner_for(&fleet, logs, p, checkpointing(), Duration::from_millis(1_200)).await.expect("claimed");
    assert_eq!(held_rows(claimed, p).await.0.len(), 1, "card 1's tap claimed");

    let purged = purge_consumed(logs, p, 0).await.expect("purged");
    assert_eq!(held_rows(claimed, p).await.0.len(), 1, "no reader passed card 1's claimed record: {purged:?}");
}
