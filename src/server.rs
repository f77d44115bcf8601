//! The server shell: QUIC in, the pipeline, the write-ahead log, the
//! archiver. It owns the sockets, the threads and the clock; every decision
//! is the pipeline's. One bidirectional stream carries one batch and its ack.
//!
//! The write path of one batch, in order:
//! 1. read the frame (limits: `frame_bytes_max` before allocating,
//!    `frame_read_timeout`), wait for a `pipeline_batches_in_flight_max` slot;
//! 2. verify on rayon (no shared state touched);
//! 3. under the commit lock: claim the batch's scans in the dedup indexes
//!    and queue its record in the log, so log order is claim order;
//! 4. wait until the log is durable up to that record (or, for a batch of
//!    nothing but re-deliveries, up to everything queued before it: the
//!    originals it refers to);
//! 5. ack. The archiver writes Parquet from the log later.
//!
//! A full disk makes the server answer `BACKOFF` until space returns. A
//! failed fsync or rename stops it: [`Server::failed`] resolves, `serve`
//! exits non-zero, and recovery takes over on the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use prost::Message;
use thiserror::Error;
use tokio::sync::{Notify, Semaphore, SemaphorePermit, oneshot};
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::archive::checkpoint::{Cleanup, checkpoint_path, clean_after_crash, read_checkpoint};
use crate::archive::writer::partition_date;
use crate::archive::{
    ArchiveError, ArchiveWriter, ArchiveWriterConfig, Archiver, ArchiverSettings, ArchiverStatus, ArrivalMark,
    Arrivals, scans_root,
};
use crate::clock::{Clock, UnixMillis};
use crate::config::{Config, ConfigError};
use crate::fair::{FairTurns, Party};
use crate::faults::Faults;
use crate::ingest::{BatchError, ChunkSizer, Pipeline, VerifiedBatch};
use crate::journal;
use crate::scan::{ArchivedScan, ScanStatus};
use crate::telemetry;
use crate::tls::{ServerIdentity, TlsError};
use crate::wal::committer::{CommitHandle, Committer, Progress, WaitError, WalState};
use crate::wal::{WalConfig, WalCursor, WalError};
use crate::wire::{
    AckStatus, BatchAck, FrameError, ScanBatch, count_field, read_frame_body, read_frame_len, write_message,
};

/// How long a gateway is told to wait when the server cannot take a batch.
const BACKOFF_RETRY_AFTER_MS: u32 = 1000;
/// QUIC application error code for "stop sending, the frame is too large".
const STOP_FRAME_TOO_LARGE: u32 = 1;
/// `ScanBatch.scans` in `proto/farestream.proto`.
const SCAN_BATCH_SCANS_FIELD: u32 = 3;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen_addr: SocketAddr,
    pub connections_max: usize,
    pub streams_per_connection_max: u32,
    pub idle_timeout: Duration,
    pub pipeline_batches_in_flight_max: usize,
    pub verify_slices_in_flight_max: usize,
    pub verify_slice_scans_max: usize,
    pub frames_in_flight_bytes_max: usize,
    /// How long in-flight batches may take to finish on shutdown.
    pub shutdown_deadline: Duration,
    pub frame_bytes_max: u32,
    pub frame_read_timeout: Duration,
    pub dedup_sweep_interval: Duration,
    pub data_dir: PathBuf,
    pub wal: WalConfig,
    pub wal_ack_wait: Duration,
    pub wal_disk_full_retry: Duration,
    pub wal_fsync_enabled: bool,
    pub archive: ArchiveWriterConfig,
    pub archiver: ArchiverSettings,
    pub faults: Arc<Faults>,
}

impl ServerSettings {
    pub fn from_config(config: &Config, data_dir: &Path) -> Result<ServerSettings, ConfigError> {
        let wal = WalConfig {
            dir: data_dir.join("wal"),
            segment_bytes_max: config.wal.segment_bytes_max,
            record_bytes_max: config.wal.record_bytes_max,
        };
        let lateness = Duration::from_secs(u64::from(config.ingest.accepted_lateness_secs));
        Ok(ServerSettings {
            listen_addr: config.server.listen_addr,
            connections_max: config.server.connections_max,
            streams_per_connection_max: config.server.streams_per_connection_max,
            idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
            pipeline_batches_in_flight_max: config.server.pipeline_batches_in_flight_max,
            verify_slices_in_flight_max: config.server.verify_slices_in_flight_max,
            verify_slice_scans_max: config.server.verify_slice_scans_max,
            frames_in_flight_bytes_max: usize::try_from(config.server.frames_in_flight_bytes_max)
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS),
            shutdown_deadline: Duration::from_millis(config.server.shutdown_deadline_ms),
            frame_bytes_max: config.wire.frame_bytes_max,
            frame_read_timeout: Duration::from_millis(config.wire.frame_read_timeout_ms),
            dedup_sweep_interval: Duration::from_secs(config.ingest.dedup_sweep_interval_secs.max(1)),
            data_dir: data_dir.to_path_buf(),
            archiver: ArchiverSettings {
                wal_dir: wal.dir.clone(),
                record_bytes_max: wal.record_bytes_max,
                checkpoint_path: checkpoint_path(data_dir),
                poll_interval: Duration::from_millis(config.archive.poll_interval_ms),
                retry_after_error: Duration::from_millis(config.archive.retry_after_error_ms),
                service_day: config.service_day_policy()?,
                accepted_lateness: lateness,
            },
            wal,
            wal_ack_wait: Duration::from_millis(config.wal.ack_wait_ms_max),
            wal_disk_full_retry: Duration::from_millis(config.wal.disk_full_retry_ms),
            wal_fsync_enabled: config.wal.fsync_enabled,
            archive: ArchiveWriterConfig {
                root: scans_root(data_dir),
                file_bytes_max: config.archive.file_bytes_max,
                file_age_max: Duration::from_secs(config.archive.file_age_secs_max),
                row_group_rows_max: config.archive.row_group_rows_max,
            },
            faults: Arc::new(Faults::default()),
        })
    }
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("recovery: {0}")]
    Recovery(String),
    #[error("{path} is not writable: {source}")]
    NotWritable { path: PathBuf, source: std::io::Error },
}

/// Claims and log records in one order, and the moment each batch is
/// received read in that same order: so "every batch received before `at`
/// is in the log before `lsn`" can be read off at any moment (the
/// archiver closes a service day on it).
struct CommitGate {
    order: Mutex<()>,
    clock: Arc<dyn Clock>,
    wal: CommitHandle,
}

impl Arrivals for CommitGate {
    fn mark(&self) -> ArrivalMark {
        let _order = crate::sync::lock(&self.order);
        ArrivalMark { at: self.clock.now_ms(), lsn: self.wal.tail_lsn() }
    }
}

/// What start-up found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub checkpoint_lsn: u64,
    pub wal_end_lsn: u64,
    pub torn_bytes_cut: u64,
    pub archive_cleanup: Cleanup,
    /// Rows replayed into the dedup indexes (archive and log).
    pub restored_rows: usize,
}

/// What a graceful shutdown left behind.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    pub archiver: ArchiverStatus,
    pub wal: Progress,
}

/// What stream handlers share.
struct Shared {
    pipeline: Arc<Pipeline>,
    wal: CommitHandle,
    /// Held while a batch reads its `received_at`, claims its scans and
    /// queues its log record.
    gate: Arc<CommitGate>,
    settings: ServerSettings,
    batches_in_flight: Semaphore,
    /// Bytes of frames read or being read, across all streams.
    frame_bytes: Semaphore,
    /// Turns at the verifier, taken fairly between connections.
    verify_turns: FairTurns,
    /// The failure rate over all connections, from which a new one starts
    /// (so reconnecting does not reset a hostile peer's rate).
    all_peers: Mutex<ChunkSizer>,
    next_peer: std::sync::atomic::AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    failure: OnceLock<String>,
    failed: Notify,
}

/// A running server. Stop it with [`Server::shutdown`].
pub struct Server {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    recovery: RecoveryReport,
    shared: Arc<Shared>,
    committer: Committer,
    archiver: Arc<Archiver>,
}

impl Server {
    /// Recovers the log and the archive, then binds and starts accepting.
    pub async fn start(
        settings: ServerSettings,
        identity: &ServerIdentity,
        pipeline: Arc<Pipeline>,
        clock: Arc<dyn Clock>,
    ) -> Result<Server, ServerError> {
        let recovering = {
            let (settings, pipeline, clock) = (settings.clone(), Arc::clone(&pipeline), Arc::clone(&clock));
            tokio::task::spawn_blocking(move || recover(&settings, &pipeline, clock.now_ms()))
        };
        let (writer, recovery) =
            recovering.await.map_err(|e| ServerError::Recovery(format!("recovery panicked: {e}")))??;
        tracing::info!(?recovery, "recovered");
        for dir in [&settings.wal.dir, &settings.archive.root] {
            probe_writable(dir, &settings.faults)?;
        }
        let committer = Committer::spawn(
            writer,
            settings.wal.record_bytes_max,
            settings.wal_disk_full_retry,
            settings.wal_fsync_enabled,
        );
        let archive_writer = ArchiveWriter::new(settings.archive.clone(), Arc::clone(&settings.faults))?;
        let gate = Arc::new(CommitGate { order: Mutex::new(()), clock: Arc::clone(&clock), wal: committer.handle() });
        let archiver = Arc::new(Archiver::spawn(
            settings.archiver.clone(),
            archive_writer,
            recovery.checkpoint_lsn,
            committer.handle().subscribe(),
            Arc::clone(&gate) as Arc<dyn Arrivals>,
            Arc::clone(&settings.faults),
        ));
        let quic = identity.server_config(settings.streams_per_connection_max, settings.idle_timeout)?;
        let endpoint = quinn::Endpoint::server(quic, settings.listen_addr)
            .map_err(|source| ServerError::Bind { addr: settings.listen_addr, source })?;
        let local_addr =
            endpoint.local_addr().map_err(|source| ServerError::Bind { addr: settings.listen_addr, source })?;
        let pipeline_chunk_max = pipeline.config().verify_chunk_signatures;
        let shared = Arc::new(Shared {
            pipeline,
            wal: committer.handle(),
            gate,
            batches_in_flight: Semaphore::new(settings.pipeline_batches_in_flight_max),
            frame_bytes: Semaphore::new(settings.frames_in_flight_bytes_max),
            verify_turns: FairTurns::new(settings.verify_slices_in_flight_max),
            all_peers: Mutex::new(ChunkSizer::new(pipeline_chunk_max, 0.0)),
            next_peer: std::sync::atomic::AtomicU64::new(0),
            settings,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            failure: OnceLock::new(),
            failed: Notify::new(),
        });
        // Tracked, so shutdown waits for them to drop what they hold.
        spawn_supervised(&shared, "the accept loop", accept_loop(endpoint.clone(), Arc::clone(&shared)));
        spawn_supervised(&shared, "housekeeping", housekeeping(Arc::clone(&shared), Arc::clone(&archiver)));
        tracing::info!(%local_addr, "farestream listening");
        Ok(Server { endpoint, local_addr, recovery, shared, committer, archiver })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.shared.pipeline
    }

    /// The write-ahead log's durable position and state.
    pub fn wal_progress(&self) -> Progress {
        self.shared.wal.progress()
    }

    /// Archives everything acknowledged so far into closed files; returns
    /// the archived LSN.
    pub async fn flush_archive(&self) -> Result<u64, ServerError> {
        self.archiver.flush().await.map_err(ServerError::Recovery)
    }

    /// Why the server stopped serving, once it has.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.get().cloned()
    }

    /// Resolves when a fatal error (fsync, rename, log damage) has stopped
    /// the server from acknowledging anything.
    pub async fn failed(&self) -> String {
        loop {
            let notified = self.shared.failed.notified();
            if let Some(reason) = self.failure() {
                return reason;
            }
            notified.await;
        }
    }

    /// Graceful stop: no new batches; streams still being read are
    /// answered BACKOFF; batches being processed finish and are acked
    /// within `shutdown_deadline` (then their connections are closed and
    /// their gateways resend); the log is flushed, the archive cut and
    /// checkpointed.
    pub async fn shutdown(self) -> Result<ShutdownReport, ServerError> {
        let Server { endpoint, shared, committer, archiver, .. } = self;
        shared.shutdown.cancel();
        shared.tasks.close();
        let deadline = shared.settings.shutdown_deadline;
        if tokio::time::timeout(deadline, shared.tasks.wait()).await.is_err() {
            tracing::warn!(?deadline, "batches still in flight at the shutdown deadline; closing their connections");
        }
        endpoint.close(0u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        let wal = tokio::task::spawn_blocking(move || committer.close())
            .await
            .map_err(|e| ServerError::Recovery(format!("log thread panicked: {e}")))?;
        let archiver =
            Arc::try_unwrap(archiver).map_err(|_| ServerError::Recovery("archiver still in use at shutdown".into()))?;
        let archiver = tokio::task::spawn_blocking(move || archiver.close())
            .await
            .map_err(|e| ServerError::Recovery(format!("archiver thread panicked: {e}")))?;
        Ok(ShutdownReport { archiver, wal })
    }
}

/// Start-up: the archive checkpoint, a clean archive, the log opened
/// (torn tail cut), and the dedup indexes rebuilt from what was decided.
fn recover(
    settings: &ServerSettings,
    pipeline: &Pipeline,
    now: UnixMillis,
) -> Result<(crate::wal::WalWriter, RecoveryReport), ServerError> {
    let checkpoint_lsn = read_checkpoint(&settings.archiver.checkpoint_path)?;
    let archive_cleanup = clean_after_crash(&settings.archive.root, checkpoint_lsn, &settings.faults)?;
    let recovered = crate::wal::open(settings.wal.clone(), Arc::clone(&settings.faults), checkpoint_lsn)?;
    if recovered.first_lsn > checkpoint_lsn || recovered.end_lsn < checkpoint_lsn {
        return Err(ServerError::Recovery(format!(
            "the log holds [{}, {}) but the archive checkpoint is at {checkpoint_lsn}: records are missing",
            recovered.first_lsn, recovered.end_lsn
        )));
    }
    let mut restored_rows = restore_from_archive(&settings.archive.root, pipeline, now)?;
    let mut cursor = WalCursor::new(settings.wal.dir.clone(), settings.wal.record_bytes_max, checkpoint_lsn);
    while cursor.lsn() < recovered.end_lsn {
        for record in cursor.read_next(recovered.end_lsn)? {
            let rows = journal::decode(&record.payload).map_err(|e| ServerError::Recovery(e.to_string()))?;
            pipeline.restore(&rows, now);
            restored_rows += rows.len();
        }
    }
    let report = RecoveryReport {
        checkpoint_lsn,
        wal_end_lsn: recovered.end_lsn,
        torn_bytes_cut: recovered.torn_bytes_cut,
        archive_cleanup,
        restored_rows,
    };
    Ok((recovered.writer, report))
}

/// Replays into the dedup indexes the archived rows that may still hold a
/// live entry: those in partitions within the restore window
/// ([`crate::ingest::Horizons`] says why that window suffices). One file at
/// a time, so memory holds one file's rows, not days of them.
fn restore_from_archive(root: &Path, pipeline: &Pipeline, now: UnixMillis) -> Result<usize, ServerError> {
    let config = pipeline.config();
    let oldest_ms = now.saturating_sub(config.horizons().restore_window_ms());
    let oldest = config.service_day.service_date(oldest_ms).unwrap_or_default();
    let mut restored = 0;
    for path in crate::archive::read::archive_files(root)? {
        if path.parent().and_then(partition_date).is_some_and(|date| date >= oldest) {
            let rows = crate::archive::read::read_file(&path)?;
            pipeline.restore(&rows, now);
            restored += rows.len();
        }
    }
    Ok(restored)
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.settings.connections_max));
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            telemetry::connection_refused();
            incoming.refuse();
            continue;
        };
        let shared_for_task = Arc::clone(&shared);
        spawn_supervised(&shared, "a connection task", async move {
            handle_connection(incoming, shared_for_task).await;
            drop(permit);
        });
    }
}

async fn handle_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "handshake failed");
            return;
        }
    };
    telemetry::connection_opened();
    let peer = Arc::new(Peer {
        party: shared.next_peer.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        sizer: Mutex::new(*crate::sync::lock(&shared.all_peers)),
    });
    loop {
        let (send, recv) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            stream = connection.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, remote = %connection.remote_address(), "connection ended");
                    return;
                }
            },
        };
        let shared_for_task = Arc::clone(&shared);
        spawn_supervised(&shared, "a stream task", handle_stream(send, recv, shared_for_task, Arc::clone(&peer)));
    }
}

/// One batch: read its frame, process it, write the ack.
async fn handle_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, shared: Arc<Shared>, peer: Arc<Peer>) {
    let started = Instant::now();
    let read = tokio::select! {
        read = read_batch(&mut recv, &shared) => read,
        // A half-read batch does not hold up a shutdown: its gateway resends.
        _ = shared.shutdown.cancelled() => Err(backoff_ack("", 0, "server is shutting down; resend the batch".into())),
    };
    let ack = match read {
        // The frame's bytes stay counted until the batch is answered.
        Ok((batch, _frame_bytes)) => process(&shared, &peer, batch).await,
        Err(ack) => ack,
    };
    let outcome = match ack.ack_status() {
        AckStatus::Ok => "ok",
        AckStatus::Backoff => "backoff",
        _ => "malformed",
    };
    telemetry::batch_answered(outcome, started.elapsed().as_secs_f64());
    if let Err(error) = write_message(&mut send, &ack).await {
        tracing::debug!(%error, "could not deliver an ack; the gateway will resend");
    }
    let _ = send.finish();
    // Until the gateway has the ack, closing the connection (a shutdown)
    // would discard it; a gateway that stays silent costs one idle task
    // for at most the frame read timeout.
    let _ = tokio::time::timeout(shared.settings.frame_read_timeout, send.stopped()).await;
}

/// Reads one batch within `frame_read_timeout`: the length prefix (checked
/// against `frame_bytes_max`), room for the body among
/// `frames_in_flight_bytes_max`, the body, its scan count (checked before
/// decoding), then the decode. The error is the ack to send: a slow or
/// crowded read is `BACKOFF` (the gateway resends), a bad frame `MALFORMED`.
async fn read_batch<'a>(
    recv: &mut quinn::RecvStream,
    shared: &'a Shared,
) -> Result<(ScanBatch, SemaphorePermit<'a>), BatchAck> {
    let settings = &shared.settings;
    let deadline = tokio::time::Instant::now() + settings.frame_read_timeout;
    let limit_ms = settings.frame_read_timeout.as_millis();
    let too_slow = |reason: &'static str, what: String| {
        telemetry::batch_refused(reason);
        backoff_ack("", 0, format!("{what} within {limit_ms} ms; resend the batch"))
    };
    let malformed = |error: FrameError| {
        telemetry::batch_refused(frame_error_reason(&error));
        BatchAck::malformed("", 0, error.to_string())
    };
    let len = match timeout_at(deadline, read_frame_len(recv, settings.frame_bytes_max)).await {
        Err(_) => return Err(too_slow("frame_read_timeout", "batch frame length not received".into())),
        Ok(Err(error)) => {
            if matches!(error, FrameError::TooLarge { .. }) {
                let _ = recv.stop(STOP_FRAME_TOO_LARGE.into());
            }
            return Err(malformed(error));
        }
        Ok(Ok(len)) => len,
    };
    let permit = match timeout_at(deadline, shared.frame_bytes.acquire_many(len)).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return Err(backoff_ack("", 0, "server is shutting down".into())),
        Err(_) => return Err(too_slow("frames_in_flight_full", format!("no room for a {len}-byte frame"))),
    };
    let body = match timeout_at(deadline, read_frame_body(recv, len)).await {
        Err(_) => return Err(too_slow("frame_read_timeout", format!("{len}-byte batch frame not received"))),
        Ok(Err(error)) => return Err(malformed(error)),
        Ok(Ok(body)) => body,
    };
    let count = count_field(&body, SCAN_BATCH_SCANS_FIELD, "ScanBatch").map_err(malformed)?;
    let max = shared.pipeline.config().batch_scans_max;
    if count > max {
        telemetry::batch_refused("batch_shape");
        return Err(BatchAck::malformed("", 0, BatchError::TooManyScans { count, max }.to_string()));
    }
    let batch = ScanBatch::decode(body.as_slice())
        .map_err(|source| malformed(FrameError::Decode { message: "ScanBatch", source }))?;
    Ok((batch, permit))
}

/// An ack that tells the gateway to resend after a pause.
fn backoff_ack(gateway_id: &str, batch_seq: u64, error: String) -> BatchAck {
    BatchAck {
        gateway_id: gateway_id.to_string(),
        batch_seq,
        status: AckStatus::Backoff as i32,
        error,
        retry_after_ms: BACKOFF_RETRY_AFTER_MS,
        ..BatchAck::default()
    }
}

fn frame_error_reason(error: &FrameError) -> &'static str {
    match error {
        FrameError::TooLarge { .. } => "frame_too_large",
        FrameError::Truncated(_) => "frame_truncated",
        FrameError::Decode { .. } | FrameError::Fields { .. } => "frame_not_protobuf",
    }
}

/// One connection's share of the verifier: its place in the rotation of
/// turns, and the chunk size its own failure rate calls for.
struct Peer {
    party: Party,
    sizer: Mutex<ChunkSizer>,
}

/// What the commit hands back.
enum Committed {
    /// Claimed and queued; durable once the log reaches `lsn`.
    Queued { outcome: crate::ingest::BatchOutcome, lsn: u64 },
    /// Not committed: the server has stopped.
    Refused(String),
    /// Claimed but could not be logged: a bug; the server has stopped.
    Unlogged(String),
}

async fn process(shared: &Arc<Shared>, peer: &Peer, batch: ScanBatch) -> BatchAck {
    let (gateway_id, batch_seq) = (batch.gateway_id.clone(), batch.batch_seq);
    let backoff = |error: String| backoff_ack(&gateway_id, batch_seq, error);
    // Refuse before the dedup indexes see the batch, so its resend is
    // processed rather than taken for a re-delivery.
    if let Some(reason) = shared.failure.get() {
        return backoff(format!("server stopping: {reason}"));
    }
    match shared.wal.progress().state {
        WalState::DiskFull => return backoff("disk full: the write-ahead log cannot take the batch".into()),
        WalState::Failed(reason) => return backoff(format!("write-ahead log stopped: {reason}")),
        WalState::Running => {}
    }
    let Ok(_permit) = shared.batches_in_flight.acquire().await else {
        return backoff("server is shutting down".into());
    };
    if let Err(error) = shared.pipeline.check_batch_shape(&batch) {
        telemetry::batch_refused("batch_shape");
        return BatchAck::malformed(&gateway_id, batch_seq, error.to_string());
    }
    let batch = Arc::new(batch);
    let Some(verified) = verify_fairly(shared, peer, &batch).await else {
        telemetry::batch_refused("verify_panicked");
        return BatchAck::malformed(&gateway_id, batch_seq, "internal error while verifying the batch".into());
    };
    let (reply, result) = oneshot::channel();
    let task_shared = Arc::clone(shared);
    rayon::spawn(move || {
        let _ = reply.send(commit(&task_shared, &batch, verified));
    });
    let (outcome, lsn) = match result.await {
        Ok(Committed::Queued { outcome, lsn }) => (outcome, lsn),
        Ok(Committed::Refused(error) | Committed::Unlogged(error)) => return backoff(error),
        Err(_) => return backoff("internal error: the batch was dropped unanswered".into()),
    };
    match shared.wal.wait_durable(lsn, shared.settings.wal_ack_wait).await {
        Ok(()) => {
            count_statuses(&outcome.rows, outcome.ack.redelivered);
            outcome.ack
        }
        Err(WaitError::Timeout(limit)) => backoff(format!("batch not durable within {limit:?} (disk full?)")),
        Err(WaitError::Failed(reason)) => {
            fail(shared, reason.clone());
            backoff(format!("write-ahead log stopped: {reason}"))
        }
    }
}

/// Steps 1 and 2 of the pipeline, a slice of `verify_slice_scans_max`
/// scans at a time, each slice on rayon in a turn taken fairly between
/// connections, in chunks sized by this connection's failure rate (which
/// each slice updates). `None` when verification panicked: a bug some
/// input triggers; nothing is claimed yet, so the batch is refused and
/// the server carries on. (Rayon would abort the process on an uncaught
/// panic.)
async fn verify_fairly(shared: &Shared, peer: &Peer, batch: &Arc<ScanBatch>) -> Option<VerifiedBatch> {
    let mut verified = VerifiedBatch::default();
    let slice_scans = shared.settings.verify_slice_scans_max.max(1);
    for start in (0..batch.scans.len()).step_by(slice_scans) {
        let end = (start + slice_scans).min(batch.scans.len());
        let _turn = shared.verify_turns.take(peer.party).await;
        let chunk_signatures = crate::sync::lock(&peer.sizer).chunk_signatures();
        let (reply, result) = oneshot::channel();
        let (pipeline, batch) = (Arc::clone(&shared.pipeline), Arc::clone(batch));
        rayon::spawn(move || {
            let part =
                catch_unwind(AssertUnwindSafe(|| pipeline.verify_records(&batch.scans[start..end], chunk_signatures)));
            let _ = reply.send(part);
        });
        let part = result.await.ok()?.ok()?;
        let (checked, failed) = part.signature_counts();
        crate::sync::lock(&peer.sizer).observe(checked, failed);
        crate::sync::lock(&shared.all_peers).observe(checked, failed);
        verified.append(part);
    }
    Some(verified)
}

/// Step 3 under the commit gate: the arrival time, the claims and the log
/// record in one order.
///
/// A panic here is a bug, and the dedup indexes may hold claims the log
/// never got, so the server stops and recovery rebuilds them from what is
/// durable. The stop is recorded before the gate opens again, so no batch
/// waiting on the gate can take such a claim for a re-delivery and be
/// acked.
fn commit(shared: &Shared, batch: &ScanBatch, verified: VerifiedBatch) -> Committed {
    let _order = crate::sync::lock(&shared.gate.order);
    if let Some(reason) = shared.failure.get() {
        return Committed::Refused(format!("server stopping: {reason}"));
    }
    let received_at = shared.gate.clock.now_ms();
    let committed = catch_unwind(AssertUnwindSafe(|| {
        let outcome = shared.pipeline.commit(batch, verified, received_at);
        shared.settings.faults.during_commit();
        if outcome.rows.is_empty() {
            // Nothing new; the re-delivered originals were queued before now.
            return Committed::Queued { lsn: shared.wal.tail_lsn(), outcome };
        }
        match shared.wal.enqueue(&journal::encode(&outcome.rows, batch.batch_seq)) {
            Ok(lsn) => Committed::Queued { outcome, lsn },
            Err(error) => Committed::Unlogged(error.to_string()),
        }
    }));
    let committed =
        committed.unwrap_or_else(|_| Committed::Unlogged("internal error while committing the batch".into()));
    if let Committed::Unlogged(error) = &committed {
        fail(shared, format!("a committed batch could not be logged: {error}"));
    }
    committed
}

/// Spawns a tracked task whose panic stops the server, with the panic's
/// message, instead of vanishing with the task and leaving a server that
/// says it serves but no longer accepts (or sweeps, or watches its log).
fn spawn_supervised(shared: &Arc<Shared>, what: &'static str, task: impl Future<Output = ()> + Send + 'static) {
    let watcher = Arc::clone(shared);
    shared.tasks.spawn(async move {
        if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            fail(&watcher, format!("{what} panicked: {message}"));
        }
    });
}

/// Writes, fsyncs and removes a file in `dir`, so a read-only mount or a
/// full disk is found before the server says it serves, not at the first
/// batch.
fn probe_writable(dir: &Path, faults: &Faults) -> Result<(), ServerError> {
    let probe = dir.join(".farestream-write-probe");
    let not_writable = |source| ServerError::NotWritable { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(not_writable)?;
    faults.before_write().map_err(not_writable)?;
    let file = std::fs::File::create(&probe).map_err(not_writable)?;
    std::io::Write::write_all(&mut &file, b"farestream").map_err(not_writable)?;
    crate::files::fsync(&file, faults).map_err(not_writable)?;
    std::fs::remove_file(&probe).map_err(not_writable)?;
    crate::files::fsync_dir(dir, faults).map_err(not_writable)
}

/// Stops the server for good: no more batches are accepted or acked.
fn fail(shared: &Shared, reason: String) {
    if shared.failure.set(reason.clone()).is_ok() {
        tracing::error!(%reason, "stopping: recovery takes over on the next start");
        shared.shutdown.cancel();
        shared.failed.notify_waiters();
    }
}

fn count_statuses(rows: &[ArchivedScan], redelivered: u32) {
    for status in ScanStatus::ALL {
        let count = rows.iter().filter(|r| r.status == status).count() as u64;
        if count > 0 {
            telemetry::scans_archived(status, count);
        }
    }
    telemetry::scans_redelivered(u64::from(redelivered));
}

/// Periodic work: sweep the dedup indexes; notice a failed log or archiver.
async fn housekeeping(shared: Arc<Shared>, archiver: Arc<Archiver>) {
    let mut sweep = tokio::time::interval(shared.settings.dedup_sweep_interval);
    let mut health = tokio::time::interval(Duration::from_millis(100));
    let mut wal = shared.wal.subscribe();
    loop {
        shared.settings.faults.panic_point("housekeeping");
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = sweep.tick() => {
                let pipeline = Arc::clone(&shared.pipeline);
                let now = shared.gate.clock.now_ms();
                let sizes = tokio::task::spawn_blocking(move || {
                    pipeline.sweep(now);
                    pipeline.dedup_sizes()
                }).await;
                if let Ok(sizes) = sizes {
                    telemetry::dedup_sizes(sizes);
                }
            }
            _ = wal.changed() => {
                let state = wal.borrow_and_update().state.clone();
                if let WalState::Failed(reason) = state {
                    fail(&shared, format!("write-ahead log: {reason}"));
                }
            }
            _ = health.tick() => {
                if let Some(reason) = archiver.failure() {
                    fail(&shared, format!("archiver: {reason}"));
                }
                telemetry::archive_lag(shared.wal.progress().durable_lsn, archiver.archived_lsn());
            }
        }
    }
}
