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
use farestream_cluster::{ClaimSettings, LeaseSettings, NatsUser, StreamLog, StreamLogSettings, append_batch};
use farestream_core::cluster::archive_location::{ArchiveLocation, ObjectStoreSettings};
use farestream_core::ingest::{BatchOutcome, VerifiedBatch};
use farestream_gateway::wire::{BatchAck, ScanBatch};
use farestream_ingest::config::cluster::ClusterConfig;
use farestream_ingest::config::{Config, ConfigError};
use farestream_ingest::telemetry;
use farestream_shared_archive::SharedStore;

/// The `[cluster]` section as the server uses it.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub nats_urls: Vec<String>,
    pub connect_timeout: Duration,
    /// How long a start tries the streams while JetStream cannot answer.
    pub start_wait: Duration,
    /// `cluster.node_name`; empty: the data dir's NODE_ID.
    pub node_name: String,
    /// Who the node connects to NATS as, when `cluster.nats_user` is set.
    pub nats_user: Option<NatsUser>,
    pub stream: StreamLogSettings,
    /// The claimed stream: the scans stream's shape under its own names.
    pub claimed: StreamLogSettings,
    pub claim: ClaimSettings,
    /// The shared archive (`cluster.archive_dir`) and its object store
    /// client's settings.
    pub archive: ArchiveLocation,
    pub object_store: ObjectStoreSettings,
    /// Where each partition's archive position is kept.
    pub progress_bucket: String,
    pub leases: LeaseSettings,
    pub members_bucket: String,
    /// Where the fingerprints every node must share are kept.
    pub identity_bucket: String,
    /// The settings that decide a key's end and a scan's verdict
    /// ([`Config::verdict_timing`]), which every node must share.
    pub verdict_timing: String,
}

impl ClusterSettings {
    /// The shared archive's store, opened (a client; no request is made).
    pub fn shared_store(&self) -> Result<SharedStore, object_store::Error> {
        SharedStore::open(&self.archive, &self.object_store)
    }

    /// `None` when the cluster is off. The `[cluster]` section, and the
    /// service day and accepted lateness an owner's cuts close days by.
    pub fn from_config(whole: &Config) -> Result<Option<ClusterSettings>, ConfigError> {
        let config = &whole.cluster;
        if !config.enabled {
            return Ok(None);
        }
        if !farestream_money::StoreLocation::names_postgres(&whole.payments.money_store) {
            return Err(ConfigError::Invalid(
                "cluster.enabled needs payments.money_store on PostgreSQL (a postgres:// URL): every node prices \
                 the partitions it owns into one store, and a partition moves between nodes"
                    .into(),
            ));
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
            start_wait: ms(config.start_wait_ms),
            node_name: config.node_name.clone(),
            nats_user: nats_user(config, std::env::var(NATS_PASSWORD_ENV).ok())?,
            stream,
            claimed,
            claim: ClaimSettings {
                read_wait: ms(config.claim_read_wait_ms),
                segment_rows_max: config.segment_rows_max,
                segment_age_max: ms(config.segment_age_max_ms),
                arrival_allowance_ms: i64::try_from(config.append_ack_timeout_ms)
                    .unwrap_or(i64::MAX)
                    .saturating_add(CLOCK_SKEW_ALLOWANCE_MS),
                service_day: whole.service_day_policy()?,
                accepted_lateness_ms: i64::from(whole.ingest.accepted_lateness_secs).saturating_mul(1_000),
                checkpoint_interval: ms(config.claim_checkpoint_interval_ms),
            },
            archive: config.archive_location()?,
            object_store: config.object_store_settings(),
            progress_bucket: config.progress_bucket.clone(),
            leases: LeaseSettings {
                bucket: config.lease_bucket.clone(),
                replicas: config.replicas,
                timing: config.lease_timing()?,
            },
            members_bucket: config.members_bucket.clone(),
            identity_bucket: config.identity_bucket.clone(),
            verdict_timing: whole.verdict_timing(),
        }))
    }
}

/// Refuses a node whose TLS certificate, fleet CA or verdict timing (the
/// settings that put a key's end and judge a scan's arrival) is not the
/// cluster's (the first node's, kept in `cluster.identity_bucket`): two
/// nodes that judged one scan apart would archive a copy of a ride as
/// refused while the other was acked accepted.
pub(crate) async fn check_shared_identity(
    settings: &ClusterSettings,
    client: async_nats::Client,
    identity: &farestream_ingest::tls_identity::ServerIdentity,
    fleet: &farestream_ingest::fleet_ca::RevocationList,
) -> Result<(), ServerError> {
    let facts: [(&str, &[u8]); 3] = [
        ("tls_certificate", identity.cert.as_ref()),
        ("fleet_ca", fleet.ca_cert().as_ref()),
        ("verdict_timing", settings.verdict_timing.as_bytes()),
    ];
    farestream_cluster::check_shared_identity(client, &settings.identity_bucket, settings.leases.replicas, &facts)
        .await
        .map_err(|e| ServerError::Cluster(e.to_string()))
}

/// How far apart the nodes' clocks may be (docs/scale-out.md, "Clocks"):
/// a cut counts the arrivals before its moment less this and the append
/// timeout, since a scan received that long ago on another node may
/// still be on its way into the stream.
pub const CLOCK_SKEW_ALLOWANCE_MS: i64 = 60_000;

/// The environment variable that may hold the NATS user's password.
pub const NATS_PASSWORD_ENV: &str = "FARESTREAM_NATS_PASSWORD";
/// The longest password read from a file.
const NATS_PASSWORD_BYTES_MAX: u64 = 1_024;

/// The NATS user from `cluster.nats_user`, its password from `from_env`
/// (the environment's [`NATS_PASSWORD_ENV`]) or `cluster.nats_password_file`,
/// exactly one of them; none when no user is set (then no password may be).
fn nats_user(config: &ClusterConfig, from_env: Option<String>) -> Result<Option<NatsUser>, ConfigError> {
    let invalid = |why: String| ConfigError::Invalid(why);
    let file = &config.nats_password_file;
    let password = match (from_env, file.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(format!(
                "set the NATS password once: {NATS_PASSWORD_ENV} and cluster.nats_password_file are both set"
            )));
        }
        (Some(password), true) => Some(password),
        (None, false) => Some(read_password_file(file)?),
        (None, true) => None,
    };
    match (config.nats_user.is_empty(), password) {
        (true, None) => Ok(None),
        (true, Some(_)) => Err(invalid("a NATS password is set but cluster.nats_user is empty".into())),
        (false, None) => Err(invalid(format!(
            "cluster.nats_user = {:?} needs its password in {NATS_PASSWORD_ENV} or cluster.nats_password_file",
            config.nats_user
        ))),
        (false, Some(password)) if password.is_empty() => Err(invalid("the NATS password is empty".into())),
        (false, Some(password)) => Ok(Some(NatsUser { name: config.nats_user.clone(), password })),
    }
}

/// The file's first line, at most [`NATS_PASSWORD_BYTES_MAX`] bytes read.
fn read_password_file(path: &str) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_error = |why: String| ConfigError::Invalid(format!("cluster.nats_password_file {path:?}: {why}"));
    let file = std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(NATS_PASSWORD_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|e| read_error(e.to_string()))?;
    if bytes.len() as u64 > NATS_PASSWORD_BYTES_MAX {
        return Err(read_error(format!("longer than {NATS_PASSWORD_BYTES_MAX} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| read_error("not UTF-8".into()))?;
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
}

/// Connects to NATS and opens the scans and claimed streams (made on the
/// cluster's first start; refused when they were made otherwise).
pub(crate) async fn open_logs(
    settings: &ClusterSettings,
) -> Result<(async_nats::Client, crate::cluster_owners::ClusterLogs), ServerError> {
    let cluster_error = |e: &dyn std::fmt::Display| ServerError::Cluster(e.to_string());
    let client =
        farestream_cluster::connect(&settings.nats_urls, settings.connect_timeout, settings.nats_user.as_ref())
            .await
            .map_err(|e| cluster_error(&e))?;
    let wait = settings.start_wait;
    let scans = open_stream(&client, &settings.stream, wait).await.map_err(|e| cluster_error(&e))?;
    let claimed = open_stream(&client, &settings.claimed, wait).await.map_err(|e| cluster_error(&e))?;
    Ok((client, crate::cluster_owners::ClusterLogs { scans: Arc::new(scans), claimed }))
}

/// How long a starting node waits between two tries at a stream.
const STREAM_OPEN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Opens a stream, trying again while JetStream cannot answer for it (a
/// server just lost, its leader not yet elected: the kill loop saw 2
/// starts in 20 fail so), for at most `wait`. A stream made otherwise
/// than the settings say is refused at once.
async fn open_stream(
    client: &async_nats::Client,
    settings: &farestream_cluster::StreamLogSettings,
    wait: Duration,
) -> Result<StreamLog, farestream_cluster::StreamLogError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match StreamLog::open(client.clone(), settings.clone()).await {
            Err(error @ farestream_cluster::StreamLogError::Stream { .. })
                if tokio::time::Instant::now() + STREAM_OPEN_RETRY_AFTER < deadline =>
            {
                tracing::warn!(%error, "the stream cannot answer yet; trying again");
                tokio::time::sleep(STREAM_OPEN_RETRY_AFTER).await;
            }
            opened => return opened,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(user: &str, file: &str) -> ClusterConfig {
        let mut config = farestream_ingest::config::Config::defaults().cluster;
        config.nats_user = user.into();
        config.nats_password_file = file.into();
        config
    }

    /// Cluster mode keeps money in PostgreSQL: the embedded store, an
    /// empty one and another scheme are refused by name; both URL schemes
    /// pass. Off, any store goes.
    #[test]
    fn a_cluster_node_needs_its_money_store_on_postgresql() {
        let on = |store: &str| {
            let mut whole = farestream_ingest::config::Config::defaults();
            whole.cluster.enabled = true;
            whole.cluster.archive_dir = "/shared/archive".into();
            whole.cluster.keys_dir = "/shared/keys".into();
            whole.payments.money_store = store.into();
            ClusterSettings::from_config(&whole)
        };
        for refused in ["sqlite", "", "mysql://db/farestream", "POSTGRES://db/farestream", " postgres://db"] {
            let error = on(refused).expect_err(refused).to_string();
            assert!(error.contains("needs payments.money_store on PostgreSQL"), "{refused:?}: {error}");
        }
        for accepted in ["postgres://farestream@db/farestream", "postgresql://farestream@/farestream?host=/run"] {
            assert!(on(accepted).expect(accepted).is_some(), "{accepted}");
        }
        let off = farestream_ingest::config::Config::defaults();
        assert!(ClusterSettings::from_config(&off).expect("off").is_none(), "off, the embedded store goes");
    }

    #[test]
    fn the_nats_password_comes_from_one_place_and_only_with_a_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, text: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        };
        let good = file("good", b"secret\n");
        let user = nats_user(&config("node", &good), None).expect("from the file").expect("a user");
        assert_eq!((user.name.as_str(), user.password.as_str()), ("node", "secret"));
        assert!(!format!("{user:?}").contains("secret"), "Debug shows no password");
        let from_env = nats_user(&config("node", ""), Some("env-secret".into())).expect("env").expect("a user");
        assert_eq!(from_env.password, "env-secret");
        assert_eq!(nats_user(&config("", ""), None).expect("none"), None);
        let longest = file("longest", &[b'x'; 1_024]);
        assert_eq!(nats_user(&config("node", &longest), None).expect("1 KiB").expect("a user").password.len(), 1_024);

        let too_long = file("too_long", &[b'x'; 1_025]);
        let empty = file("empty", b"\n");
        let not_utf8 = file("not_utf8", &[0xFF, 0xFE]);
        for (config, env, named) in [
            (config("node", &good), Some("x".to_string()), "both set"),
            (config("node", ""), None, "needs its password"),
            (config("", &good), None, "cluster.nats_user is empty"),
            (config("", ""), Some("x".to_string()), "cluster.nats_user is empty"),
            (config("node", &too_long), None, "longer than 1024 bytes"),
            (config("node", &empty), None, "empty"),
            (config("node", &not_utf8), None, "not UTF-8"),
            (config("node", "/nonexistent/nats-password"), None, "cluster.nats_password_file"),
        ] {
            let error = nats_user(&config, env).expect_err(named).to_string();
            assert!(error.contains(named), "{named}: {error}");
        }
    }
}
