//! Cluster mode's ingest (docs/scale-out.md): with `cluster.enabled`, a
//! batch is made durable in the JetStream scans stream instead of the
//! node's own log. The node verifies it as always, takes every decision
//! that needs no history (`Pipeline::commit_unclaimed`), appends its rows
//! one record a partition, and acks only once JetStream has acknowledged
//! every record: a quorum of the stream's servers holds the batch.
//! Re-deliveries and replays are found later, by each partition's owner.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::{BACKOFF_RETRY_AFTER_MS, ServerError, Shared};
use farestream_cluster::{ClaimSettings, LeaseSettings, StreamLog, StreamLogSettings, append_batch};
use farestream_core::ingest::{BatchOutcome, VerifiedBatch};
use farestream_gateway::wire::{BatchAck, ScanBatch};
use farestream_ingest::config::ConfigError;
use farestream_ingest::config::cluster::ClusterConfig;
use farestream_ingest::telemetry;

/// The `[cluster]` section as the server uses it.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub nats_urls: Vec<String>,
    pub connect_timeout: Duration,
    /// `cluster.node_name`; empty: the data dir's NODE_ID.
    pub node_name: String,
    pub stream: StreamLogSettings,
    /// The claimed stream: the scans stream's shape under its own names.
    pub claimed: StreamLogSettings,
    pub claim: ClaimSettings,
    pub leases: LeaseSettings,
    pub members_bucket: String,
}

impl ClusterSettings {
    /// `None` when the cluster is off.
    pub fn from_config(config: &ClusterConfig) -> Result<Option<ClusterSettings>, ConfigError> {
        if !config.enabled {
            return Ok(None);
        }
        let ms = Duration::from_millis;
        let stream = StreamLogSettings {
            stream: config.stream.clone(),
            subject_prefix: config.subject_prefix.clone(),
            partitions: config.partitions,
            replicas: config.replicas,
            duplicate_window: ms(config.duplicate_window_ms),
            ack_timeout: ms(config.append_ack_timeout_ms),
            record_bytes_max: config.record_bytes_max,
            acks_in_flight_max: config.acks_in_flight_max,
        };
        let claimed = StreamLogSettings {
            stream: config.claimed_stream.clone(),
            subject_prefix: config.claimed_subject_prefix.clone(),
            ..stream.clone()
        };
        Ok(Some(ClusterSettings {
            nats_urls: config.nats_urls.clone(),
            connect_timeout: ms(config.connect_timeout_ms),
            node_name: config.node_name.clone(),
            stream,
            claimed,
            claim: ClaimSettings { read_wait: ms(config.claim_read_wait_ms) },
            leases: LeaseSettings {
                bucket: config.lease_bucket.clone(),
                replicas: config.replicas,
                timing: config.lease_timing()?,
            },
            members_bucket: config.members_bucket.clone(),
        }))
    }
}

/// Connects to NATS and opens the scans and claimed streams (made on the
/// cluster's first start; refused when they were made otherwise).
pub(crate) async fn open_logs(
    settings: &ClusterSettings,
) -> Result<(async_nats::Client, crate::cluster_owners::ClusterLogs), ServerError> {
    let cluster_error = |e: &dyn std::fmt::Display| ServerError::Cluster(e.to_string());
    let client = farestream_cluster::connect(&settings.nats_urls, settings.connect_timeout)
        .await
        .map_err(|e| cluster_error(&e))?;
    let scans = StreamLog::open(client.clone(), settings.stream.clone()).await.map_err(|e| cluster_error(&e))?;
    let claimed = StreamLog::open(client.clone(), settings.claimed.clone()).await.map_err(|e| cluster_error(&e))?;
    Ok((client, crate::cluster_owners::ClusterLogs { scans: Arc::new(scans), claimed }))
}

/// Step 3 of a batch in cluster mode: the decisions without history, the
/// append, the ack. Nothing is claimed, so a failure anywhere leaves no
/// state behind: the gateway is told to resend, and its resend (to this
/// node or any other) appends the same records, which JetStream drops.
pub(crate) async fn commit_to_stream(
    shared: &Arc<Shared>,
    stream: &StreamLog,
    batch: Arc<ScanBatch>,
    verified: VerifiedBatch,
) -> BatchAck {
    let (gateway_id, batch_seq) = (batch.gateway_id.clone(), batch.batch_seq);
    let (reply, result) = oneshot::channel();
    let task_shared = Arc::clone(shared);
    rayon::spawn(move || {
        let received_at = task_shared.handles.clock.now_ms();
        let outcome =
            catch_unwind(AssertUnwindSafe(|| task_shared.pipeline.commit_unclaimed(&batch, verified, received_at)));
        let _ = reply.send(outcome);
    });
    let Ok(Ok(BatchOutcome { rows, ack })) = result.await else {
        telemetry::batch_refused("commit_panicked");
        return BatchAck::malformed(&gateway_id, batch_seq, "internal error while committing the batch".into());
    };
    let counted = crate::batch::StatusCounts::of(&rows, ack.redelivered);
    match append_batch(stream, rows, batch_seq).await {
        Ok(_) => {
            counted.record();
            ack
        }
        Err(error) => {
            telemetry::batch_refused("stream_not_acknowledged");
            tracing::warn!(%error, gateway = %gateway_id, batch_seq, "batch not acknowledged by the scans stream");
            let error = format!("the scans stream did not acknowledge the batch: {error}");
            BatchAck::backoff(&gateway_id, batch_seq, error, BACKOFF_RETRY_AFTER_MS)
        }
    }
}
