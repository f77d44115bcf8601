//! The server shell: QUIC in, the pipeline, the archive writer out. It owns
//! the sockets, the threads and the clock; every decision is the
//! pipeline's. One bidirectional stream carries one batch and its ack.
//!
//! Limits: `connections_max` (a semaphore; extra connections are refused),
//! `streams_per_connection_max` (QUIC flow control), `frame_bytes_max`
//! (checked before allocating), `frame_read_timeout_ms`, and
//! `pipeline_batches_in_flight_max` (a semaphore in front of the verifier).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::archive::service::{ArchiveHandle, ArchiveService, ArchiveUnavailable};
use crate::archive::{ArchiveError, ArchiveWriter, ArchiveWriterConfig, ClosedFile, scans_root};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::ingest::Pipeline;
use crate::scan::ScanStatus;
use crate::telemetry;
use crate::tls::{ServerIdentity, TlsError};
use crate::wire::{AckStatus, BatchAck, FrameError, ScanBatch, read_message, write_message};

/// How long a gateway is told to wait when the server cannot take a batch.
const BACKOFF_RETRY_AFTER_MS: u32 = 1000;
/// QUIC application error code for "stop sending, the frame is too large".
const STOP_FRAME_TOO_LARGE: u32 = 1;

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen_addr: SocketAddr,
    pub connections_max: usize,
    pub streams_per_connection_max: u32,
    pub idle_timeout: Duration,
    pub pipeline_batches_in_flight_max: usize,
    pub frame_bytes_max: u32,
    pub frame_read_timeout: Duration,
    pub dedup_sweep_interval: Duration,
    pub archive: ArchiveWriterConfig,
    pub archive_queue_batches_max: usize,
}

impl ServerSettings {
    pub fn from_config(config: &Config, data_dir: &Path) -> ServerSettings {
        ServerSettings {
            listen_addr: config.server.listen_addr,
            connections_max: config.server.connections_max,
            streams_per_connection_max: config.server.streams_per_connection_max,
            idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
            pipeline_batches_in_flight_max: config.server.pipeline_batches_in_flight_max,
            frame_bytes_max: config.wire.frame_bytes_max,
            frame_read_timeout: Duration::from_millis(config.wire.frame_read_timeout_ms),
            dedup_sweep_interval: Duration::from_secs(config.ingest.dedup_sweep_interval_secs.max(1)),
            archive: ArchiveWriterConfig {
                root: scans_root(data_dir),
                file_bytes_max: config.archive.file_bytes_max,
                file_age_max: Duration::from_secs(config.archive.file_age_secs_max),
                row_group_rows_max: config.archive.row_group_rows_max,
            },
            archive_queue_batches_max: config.archive.queue_batches_max,
        }
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
    ArchiveStopped(#[from] ArchiveUnavailable),
}

/// What stream handlers share.
struct Shared {
    pipeline: Arc<Pipeline>,
    archive: ArchiveHandle,
    clock: Arc<dyn Clock>,
    settings: ServerSettings,
    batches_in_flight: Semaphore,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A running server. Dropping it without [`Server::shutdown`] aborts.
pub struct Server {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    /// Names this run's archive files: `part-RUN_ID-SEQ.parquet`.
    run_id: String,
    shared: Arc<Shared>,
    archive: ArchiveService,
}

impl Server {
    /// Binds the endpoint and starts accepting gateways.
    pub async fn start(
        settings: ServerSettings,
        identity: &ServerIdentity,
        pipeline: Arc<Pipeline>,
        clock: Arc<dyn Clock>,
    ) -> Result<Server, ServerError> {
        let quic = identity.server_config(settings.streams_per_connection_max, settings.idle_timeout)?;
        let endpoint = quinn::Endpoint::server(quic, settings.listen_addr)
            .map_err(|source| ServerError::Bind { addr: settings.listen_addr, source })?;
        let local_addr =
            endpoint.local_addr().map_err(|source| ServerError::Bind { addr: settings.listen_addr, source })?;
        // Wall time, not `clock`: a demo's scaled clock restarts at the same
        // simulated moment every run, and file names must not repeat.
        let run_id = format!("{:013}", SystemClock.now_ms().max(0));
        let writer = ArchiveWriter::new(settings.archive.clone(), run_id.clone())?;
        let archive = ArchiveService::spawn(writer, settings.archive_queue_batches_max);
        let shared = Arc::new(Shared {
            pipeline,
            archive: archive.handle(),
            clock,
            batches_in_flight: Semaphore::new(settings.pipeline_batches_in_flight_max),
            settings,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        tokio::spawn(accept_loop(endpoint.clone(), Arc::clone(&shared)));
        tokio::spawn(housekeeping(Arc::clone(&shared)));
        tracing::info!(%local_addr, "farestream listening");
        Ok(Server { endpoint, local_addr, run_id, shared, archive })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.shared.pipeline
    }

    /// Closes every open archive file so everything archived so far is readable.
    pub async fn flush_archive(&self) -> Result<Vec<ClosedFile>, ServerError> {
        Ok(self.shared.archive.flush().await?)
    }

    /// Graceful stop: no new batches, in-flight batches finish and are
    /// acked, archive files are closed, then the endpoint closes.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let Server { endpoint, shared, archive, .. } = self;
        shared.shutdown.cancel();
        shared.tasks.close();
        shared.tasks.wait().await;
        endpoint.close(0u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        drop(shared);
        tokio::task::spawn_blocking(move || archive.close())
            .await
            .map_err(|e| ArchiveUnavailable(format!("archive thread panicked: {e}")))??;
        Ok(())
    }
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
        shared.tasks.spawn(async move {
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
        shared.tasks.spawn(handle_stream(send, recv, shared_for_task));
    }
}

/// One batch: read its frame, process it, write the ack.
async fn handle_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, shared: Arc<Shared>) {
    let started = Instant::now();
    let settings = &shared.settings;
    let read = tokio::time::timeout(
        settings.frame_read_timeout,
        read_message::<ScanBatch, _>(&mut recv, settings.frame_bytes_max, "ScanBatch"),
    )
    .await;
    let ack = match read {
        Err(_) => {
            telemetry::batch_malformed("frame_read_timeout");
            let limit_ms = settings.frame_read_timeout.as_millis();
            BatchAck::malformed("", 0, format!("batch frame not received within {limit_ms} ms"))
        }
        Ok(Err(error)) => {
            telemetry::batch_malformed(frame_error_reason(&error));
            if matches!(error, FrameError::TooLarge { .. }) {
                let _ = recv.stop(STOP_FRAME_TOO_LARGE.into());
            }
            BatchAck::malformed("", 0, error.to_string())
        }
        Ok(Ok(batch)) => shared.process(batch).await,
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
}

fn frame_error_reason(error: &FrameError) -> &'static str {
    match error {
        FrameError::TooLarge { .. } => "frame_too_large",
        FrameError::Truncated(_) => "frame_truncated",
        FrameError::Decode { .. } => "frame_not_protobuf",
    }
}

impl Shared {
    async fn process(&self, batch: ScanBatch) -> BatchAck {
        let (gateway_id, batch_seq) = (batch.gateway_id.clone(), batch.batch_seq);
        let backoff = |error: String| BatchAck {
            gateway_id: gateway_id.clone(),
            batch_seq,
            status: AckStatus::Backoff as i32,
            error,
            retry_after_ms: BACKOFF_RETRY_AFTER_MS,
            ..BatchAck::default()
        };
        // Refuse before the dedup indexes see the batch, so a resend later
        // is processed rather than taken for a re-delivery.
        if let Some(reason) = self.archive.failure() {
            return backoff(format!("archive unavailable: {reason}"));
        }
        let Ok(_permit) = self.batches_in_flight.acquire().await else {
            return backoff("server is shutting down".into());
        };
        let received_at = self.clock.now_ms();
        let pipeline = Arc::clone(&self.pipeline);
        let (reply, result) = oneshot::channel();
        rayon::spawn(move || {
            // A panic here is a bug, but one batch must not take the server
            // down with it (rayon aborts on an uncaught panic in `spawn`).
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pipeline.process(&batch, received_at)));
            if let Ok(result) = result {
                let _ = reply.send(result);
            }
        });
        let outcome = match result.await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => {
                telemetry::batch_malformed("batch_shape");
                return BatchAck::malformed(&gateway_id, batch_seq, error.to_string());
            }
            Err(_) => return backoff("internal error while verifying the batch".into()),
        };
        count_statuses(&outcome.rows, outcome.ack.redelivered);
        if let Err(error) = self.archive.append(outcome.rows).await {
            return backoff(error.to_string());
        }
        outcome.ack
    }
}

fn count_statuses(rows: &[crate::scan::ArchivedScan], redelivered: u32) {
    for status in ScanStatus::ALL {
        let count = rows.iter().filter(|r| r.status == status).count() as u64;
        if count > 0 {
            telemetry::scans_archived(status, count);
        }
    }
    telemetry::scans_redelivered(u64::from(redelivered));
}

/// Periodic work: sweep the dedup indexes, roll aged archive files.
async fn housekeeping(shared: Arc<Shared>) {
    let mut sweep = tokio::time::interval(shared.settings.dedup_sweep_interval);
    let mut roll = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = sweep.tick() => {
                let pipeline = Arc::clone(&shared.pipeline);
                let now = shared.clock.now_ms();
                let sizes = tokio::task::spawn_blocking(move || {
                    pipeline.sweep(now);
                    pipeline.dedup_sizes()
                }).await;
                if let Ok(sizes) = sizes {
                    telemetry::dedup_sizes(sizes);
                }
            }
            _ = roll.tick() => shared.archive.roll_aged(),
        }
    }
}
