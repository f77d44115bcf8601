//! Cluster mode's partition owners (docs/scale-out.md, "Partition
//! owners"): this node's share of the partitions, kept by `Ownership`
//! (a lease a partition), and one claim task for each partition while
//! the node holds it. A task claims its partition's scans into the
//! claimed stream (`farestream_cluster::claim_partition`) with a pipeline
//! of its own, dropped when the task ends, so a claim that never reached
//! the claimed stream dies with it and the next owner makes it again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Shared;
use crate::cluster_ingest::ClusterSettings;
use farestream_cluster::{ClaimLogs, ClaimStop, Owned, Ownership, StreamLog, claim_partition, lease_clock_ms};
use farestream_core::cluster::Partition;
use farestream_core::ingest::Pipeline;
use farestream_core::ridecode::IssuerPublicKeys;

/// How long a partition whose claim task failed waits before the next
/// one starts (while the node still holds it).
const CLAIM_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The scans stream and the claimed stream, shared by every claim task.
pub(crate) struct ClusterLogs {
    pub(crate) scans: Arc<StreamLog>,
    pub(crate) claimed: StreamLog,
}

/// Starts the lease loop and the claim tasks, supervised: both stop at
/// the server's shutdown, which gives the leases back. The lease loop's
/// task, which a process death ([`crate::Server::abandon`]) aborts so its
/// leases age out as a dead node's do.
pub(crate) async fn start_owners(
    shared: &Arc<Shared>,
    settings: &ClusterSettings,
    (client, logs): (async_nats::Client, ClusterLogs),
    node: &str,
) -> Result<JoinHandle<()>, crate::ServerError> {
    let partitions = settings.stream.partitions;
    let (ownership, watching) =
        Ownership::open(client, settings.leases.clone(), &settings.members_bucket, node, partitions)
            .await
            .map_err(|e| crate::ServerError::Cluster(e.to_string()))?;
    let leases = crate::spawn_supervised(shared, "the partition leases", ownership.run(shared.shutdown.clone()));
    let owners = keep_claim_tasks(Arc::clone(shared), Arc::new(logs), watching, settings.claim);
    crate::spawn_supervised(shared, "the partition owners", owners);
    Ok(leases)
}

/// A claim task for each partition the node holds, started when it is
/// taken and again after a task ends while it is still held.
async fn keep_claim_tasks(
    shared: Arc<Shared>,
    logs: Arc<ClusterLogs>,
    mut watching: watch::Receiver<Owned>,
    claim: farestream_cluster::ClaimSettings,
) {
    let mut running: BTreeMap<Partition, JoinHandle<()>> = BTreeMap::new();
    loop {
        running.retain(|_, task| !task.is_finished());
        let held: Vec<Partition> = watching.borrow_and_update().keys().copied().collect();
        for partition in held {
            running.entry(partition).or_insert_with(|| {
                let task = claim_while_held(Arc::clone(&shared), Arc::clone(&logs), partition, watching.clone(), claim);
                tokio::spawn(task)
            });
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

/// One run of a partition's claiming, from the claimed stream's end,
/// while the partition is on the node's watch and its term holds.
async fn claim_while_held(
    shared: Arc<Shared>,
    logs: Arc<ClusterLogs>,
    partition: Partition,
    watching: watch::Receiver<Owned>,
    claim: farestream_cluster::ClaimSettings,
) {
    let holds = || watching.borrow().get(&partition).is_some_and(|term| term.holds(lease_clock_ms()));
    let pipeline = match partition_pipeline(&shared) {
        Ok(pipeline) => pipeline,
        Err(error) => {
            tracing::error!(%partition, %error, "no randomness for a partition's dedup indexes");
            tokio::time::sleep(CLAIM_RETRY_AFTER).await;
            return;
        }
    };
    let logs_now = ClaimLogs { scans: &logs.scans, claimed: &logs.claimed };
    match claim_partition(logs_now, partition, pipeline, claim, holds, &shared.shutdown).await {
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
/// dedup limits, no keys (claims check none), its own secret mix.
fn partition_pipeline(shared: &Shared) -> Result<Pipeline, farestream_ingest::keystore::KeystoreError> {
    let seed = farestream_ingest::keystore::random_seed()?;
    Ok(Pipeline::new(shared.pipeline.config().clone(), IssuerPublicKeys::new(), seed))
}
