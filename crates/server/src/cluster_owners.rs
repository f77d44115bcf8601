//! Cluster mode's partition owners (docs/scale-out.md, "Partition
//! owners"): this node's share of the partitions, kept by `Ownership`
//! (a lease a partition), and two tasks for each partition while the
//! node holds it. The claim task claims its partition's scans into the
//! claimed stream (`farestream_cluster::claim_partition`) with a pipeline
//! of its own, dropped when the task ends, so a claim that never reached
//! the claimed stream dies with it and the next owner makes it again.
//! The archive task writes the claimed stream's segments into the shared
//! archive (`crate::cluster_archive`). The pricing task prices the
//! claimed stream into the PostgreSQL money store (`crate::cluster_pricer`).
//! Each is started again on its own after it ends while the partition is
//! still held. Once a checkpoint interval, the node gives up the records
//! of the partitions it holds that no reader needs again
//! (`farestream_cluster::retention`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Shared;
use crate::cluster_archive::{ArchiveStop, SegmentArchive, archive_partition, close_days};
use crate::cluster_ingest::ClusterSettings;
use crate::cluster_pricer::{PartitionPricing, PriceStop, make_partition_cursors, price_partition, pricing_position};
use crate::pricing_rounds::PricingRounds;
use farestream_cluster::{
    ArchiveProgress, ClaimCheckpoints, ClaimLogs, ClaimStop, Owned, Ownership, StreamLog, claim_partition,
    lease_clock_ms, purge_consumed,
};
use farestream_core::cluster::Partition;
use farestream_core::ingest::Pipeline;
use farestream_core::ridecode::IssuerPublicKeys;
use farestream_ingest::config::cluster::SEGMENT_ROWS_MAX_LIMIT;

/// How long a partition whose claim, archive or pricing task failed waits before
/// the next one starts (while the node still holds it).
const CLAIM_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The scans stream and the claimed stream, shared by every claim task.
pub(crate) struct ClusterLogs {
    pub(crate) scans: Arc<StreamLog>,
    pub(crate) claimed: StreamLog,
}

/// What every partition task of the node shares.
struct Owners {
    shared: Arc<Shared>,
    logs: ClusterLogs,
    claim: farestream_cluster::ClaimSettings,
    progress: ArchiveProgress,
    archive: SegmentArchive,
    checkpoints: ClaimCheckpoints,
    pricing: PartitionPricing,
}

impl Owners {
    fn claim_logs(&self) -> ClaimLogs<'_> {
        ClaimLogs { scans: &self.logs.scans, claimed: &self.logs.claimed, checkpoints: &self.checkpoints }
    }
}

/// The tasks of a held partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Work {
    Claim,
    Archive,
    Price,
}

/// Starts the lease loop and the claim tasks, supervised: both stop at
/// the server's shutdown, which gives the leases back. The lease loop's
/// task, which a process death ([`crate::Server::abandon`]) aborts so its
/// leases age out as a dead node's do.
pub(crate) async fn start_owners(
    shared: &Arc<Shared>,
    settings: &ClusterSettings,
    (client, logs): (async_nats::Client, ClusterLogs),
    (node, charges_written): (&str, Arc<tokio::sync::Notify>),
) -> Result<JoinHandle<()>, crate::ServerError> {
    let partitions = settings.stream.partitions;
    let (ownership, watching) =
        Ownership::open(client.clone(), settings.leases.clone(), &settings.members_bucket, node, partitions)
            .await
            .map_err(|e| crate::ServerError::Cluster(e.to_string()))?;
    let cluster_error = |e: &dyn std::fmt::Display| crate::ServerError::Cluster(e.to_string());
    let progress = ArchiveProgress::open(client, &settings.progress_bucket, settings.leases.replicas)
        .await
        .map_err(|e| cluster_error(&e))?;
    let archive = segment_archive(shared, settings).map_err(|e| cluster_error(&e))?;
    let checkpoints = ClaimCheckpoints::new(archive.shared.clone());
    let pricing = partition_pricing(shared, (partitions, settings.claim.read_wait), charges_written).await?;
    let leases = crate::spawn_supervised(shared, "the partition leases", ownership.run(shared.shutdown.clone()));
    let claim = settings.claim;
    let owners = Arc::new(Owners { shared: Arc::clone(shared), logs, claim, progress, archive, checkpoints, pricing });
    let (retaining, every) = ((Arc::clone(&owners), watching.clone()), claim.checkpoint_interval);
    crate::spawn_supervised(shared, "the partition owners", keep_partition_tasks(Arc::clone(&owners), watching));
    crate::spawn_supervised(shared, "the streams' retention", purge_consumed_every(retaining, every));
    let every = claim.segment_age_max;
    crate::spawn_supervised(shared, "the shared archive's day closer", close_days_every(owners, partitions, every));
    Ok(leases)
}

/// Gives up, once `every`, the records of each partition the node holds
/// that neither its archive, its pricing nor a new owner can need again.
async fn purge_consumed_every((owners, watching): (Arc<Owners>, watch::Receiver<Owned>), every: Duration) {
    loop {
        tokio::select! {
            _ = owners.shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let held: Vec<Partition> = watching.borrow().keys().copied().collect();
        for partition in held.into_iter().filter(|p| holds(&watching, *p)) {
            if let Err(error) = purge_partition(&owners, partition).await {
                tracing::warn!(%partition, %error, "giving up a partition's consumed records failed; trying again later");
            }
        }
    }
}

/// One partition's retention: below the lowest of its archive position,
/// its pricing cursor and its oldest checkpoint kept.
async fn purge_partition(owners: &Owners, partition: Partition) -> Result<(), String> {
    let archived = owners.progress.get(partition).await.map_err(|e| e.to_string())?.cut;
    let priced = pricing_position(&owners.pricing, partition).await.map_err(|e| e.to_string())?;
    let purged = purge_consumed(owners.claim_logs(), partition, archived.min(priced));
    if let Some(purged) = purged.await.map_err(|e| e.to_string())? {
        let records = purged.claimed_records.saturating_add(purged.scans_records);
        farestream_ingest::telemetry::stream_records_given_up(records);
        if records > 0 {
            tracing::info!(%partition, ?purged, "a partition's consumed records given up");
        }
    }
    Ok(())
}

/// Closes the shared archive's service days that every partition has
/// passed, once a segment's age: on every node (a marker written twice
/// is the same), so a day closes while any node lives.
async fn close_days_every(owners: Arc<Owners>, partitions: u16, every: Duration) {
    loop {
        tokio::select! {
            _ = owners.shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(error) = close_days(&owners.archive, &owners.progress, partitions).await {
            tracing::warn!(%error, "closing the shared archive's days failed; trying again later");
        }
    }
}

/// The shared archive as `cluster.archive_dir` names it, written as the
/// node's own archive is encoded.
fn segment_archive(shared: &Shared, settings: &ClusterSettings) -> Result<SegmentArchive, object_store::Error> {
    let store = settings.shared_store()?;
    let record_rows_max = settings.claimed.record_bytes_max as u64 / ROW_BYTES_MIN;
    Ok(SegmentArchive {
        shared: store,
        row_group_rows_max: shared.settings.archive.row_group_rows_max,
        // Another owner may cut at a larger limit than this node's (a
        // rolling change): the largest any may have, so no segment an
        // owner cut is ever refused.
        segment_rows_limit: SEGMENT_ROWS_MAX_LIMIT.saturating_add(record_rows_max),
        read_wait: settings.claim.read_wait,
    })
}

/// The node's pricing connections to the money store, with every
/// partition's cursor made (blocking work, off the async threads).
async fn partition_pricing(
    shared: &Arc<Shared>,
    (partitions, read_wait): (u16, Duration),
    charges_written: Arc<tokio::sync::Notify>,
) -> Result<PartitionPricing, crate::ServerError> {
    let money = shared.settings.money.clone();
    let opening = tokio::task::spawn_blocking(move || {
        let connections = money.open_connections()?;
        connections.with(|store| make_partition_cursors(store, partitions))?;
        Ok::<_, farestream_money::StoreError>(connections)
    });
    let connections =
        opening.await.map_err(|e| crate::ServerError::Recovery(format!("opening pricing panicked: {e}")))??;
    let pricer = &shared.settings.money.pricer;
    let (fares, gather) = (Arc::new(pricer.fares.clone()), pricer.poll_interval);
    let connections = Arc::new(connections);
    let stop = shared.shutdown.clone();
    let (rounds, pricing_rounds) = PricingRounds::start(Arc::clone(&connections), fares, charges_written, stop);
    crate::spawn_supervised(shared, "the pricing rounds", pricing_rounds);
    let faults = Arc::clone(&shared.handles.faults);
    Ok(PartitionPricing { connections, read_wait, gather, rounds, faults })
}

/// Fewer bytes than any claimed row takes in a record (its scan id alone
/// is 16): a record holds at most its size over this many rows.
const ROW_BYTES_MIN: u64 = 16;

/// A claim task and an archive task for each partition the node holds,
/// started when it is taken and again after one ends while it is still
/// held.
async fn keep_partition_tasks(owners: Arc<Owners>, mut watching: watch::Receiver<Owned>) {
    let shared = Arc::clone(&owners.shared);
    let mut running: BTreeMap<(Partition, Work), JoinHandle<()>> = BTreeMap::new();
    loop {
        running.retain(|_, task| !task.is_finished());
        let held: Vec<Partition> = watching.borrow_and_update().keys().copied().collect();
        for partition in held {
            for work in [Work::Claim, Work::Archive, Work::Price] {
                running.entry((partition, work)).or_insert_with(|| {
                    let (owners, watching) = (Arc::clone(&owners), watching.clone());
                    match work {
                        Work::Claim => tokio::spawn(claim_while_held(owners, partition, watching)),
                        Work::Archive => tokio::spawn(archive_while_held(owners, partition, watching)),
                        Work::Price => tokio::spawn(price_while_held(owners, partition, watching)),
                    }
                });
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            changed = watching.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(CLAIM_RETRY_AFTER) => {}
        }
    }
    for (_, task) in running {
        let _ = task.await;
    }
}

/// Whether the node holds `partition` on its watch with a live term.
fn holds(watching: &watch::Receiver<Owned>, partition: Partition) -> bool {
    watching.borrow().get(&partition).is_some_and(|term| term.holds(lease_clock_ms()))
}

/// One run of a partition's archiving, from where the shared archive
/// stands, while the partition is held.
async fn archive_while_held(owners: Arc<Owners>, partition: Partition, watching: watch::Receiver<Owned>) {
    let (claimed, stop) = (&owners.logs.claimed, &owners.shared.shutdown);
    let archived =
        archive_partition(claimed, &owners.progress, partition, &owners.archive, || holds(&watching, partition), stop);
    match archived.await {
        Ok(ArchiveStop::Stopped) => {}
        Ok(ArchiveStop::NotHeld) => tracing::info!(%partition, "stopped archiving a partition"),
        Err(error) => {
            farestream_ingest::telemetry::archive_retried();
            tracing::warn!(%partition, %error, "archiving a partition failed; it starts again from its position");
            tokio::time::sleep(CLAIM_RETRY_AFTER).await;
        }
    }
}

/// One run of a partition's pricing, from its cursor in the money store,
/// while the partition is held.
async fn price_while_held(owners: Arc<Owners>, partition: Partition, watching: watch::Receiver<Owned>) {
    let (claimed, stop) = (&owners.logs.claimed, &owners.shared.shutdown);
    let clock = Arc::clone(&owners.shared.handles.clock);
    let now = move || clock.now_ms();
    let held = || holds(&watching, partition);
    match price_partition(claimed, &owners.pricing, partition, (&now, held), stop).await {
        Ok(PriceStop::Stopped) => {}
        Ok(stop @ (PriceStop::NotHeld | PriceStop::CursorTaken)) => {
            tracing::info!(%partition, ?stop, "stopped pricing a partition");
        }
        Err(error) => {
            farestream_money::money_metrics::pricing_retried();
            tracing::warn!(%partition, %error, "pricing a partition failed; it starts again from its cursor");
            tokio::time::sleep(CLAIM_RETRY_AFTER).await;
        }
    }
}

/// One run of a partition's claiming, from the claimed stream's end,
/// while the partition is on the node's watch and its term holds.
async fn claim_while_held(owners: Arc<Owners>, partition: Partition, watching: watch::Receiver<Owned>) {
    let shared = &owners.shared;
    let pipeline = match partition_pipeline(shared, owners.logs.scans.partitions()) {
        Ok(pipeline) => pipeline,
        Err(error) => {
            tracing::error!(%partition, %error, "no randomness for a partition's dedup indexes");
            tokio::time::sleep(CLAIM_RETRY_AFTER).await;
            return;
        }
    };
    let logs = owners.claim_logs();
    let clock = Arc::clone(&shared.handles.clock);
    let now = move || clock.now_ms();
    let claiming = (owners.claim, &now as farestream_cluster::WallClock<'_>);
    match claim_partition(logs, partition, pipeline, claiming, || holds(&watching, partition), &shared.shutdown).await {
        Ok(ClaimStop::Stopped) => {}
        Ok(stop @ (ClaimStop::NotHeld | ClaimStop::Fenced)) => {
            tracing::info!(%partition, ?stop, "stopped claiming a partition");
        }
        Err(error) => {
            farestream_ingest::telemetry::partition_claim_failed();
            tracing::warn!(%partition, %error, "claiming a partition failed; it starts again from the claimed stream");
            tokio::time::sleep(CLAIM_RETRY_AFTER).await;
        }
    }
}

/// A pipeline for one partition's claims: the server's time windows and
/// dedup limits (its cold tiers narrowed to one of `partitions` shares of
/// the cards), no keys (claims check none), its own secret mix.
fn partition_pipeline(
    shared: &Shared,
    partitions: u16,
) -> Result<Pipeline, farestream_ingest::keystore::KeystoreError> {
    let seed = farestream_ingest::keystore::random_seed()?;
    let mut config = shared.pipeline.config().clone();
    config.dedup = config.dedup.for_share_of(partitions);
    Ok(Pipeline::new(config, IssuerPublicKeys::new(), seed))
}
