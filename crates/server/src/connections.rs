//! Connections and streams: the accept loop (a source address proven by a
//! QUIC retry, then its limits, then `connections_max`), one task per
//! connection (its gateway's limit, closed when no batch comes for
//! `batch_idle_timeout`) and per stream, and the frame read with its limits
//! (`frame_bytes_max` before allocating, room in
//! `frames_in_flight_bytes_max`, the scan count before decoding, all within
//! `frame_read_timeout`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use tokio::time::timeout_at;

use crate::batch::{Peer, process};
use crate::peer_limits::AddressSlot;
use crate::server_push::push_to_gateway;
use crate::{BACKOFF_RETRY_AFTER_MS, Shared, spawn_supervised};
use farestream_core::ingest::BatchError;
use farestream_gateway::wire::{
    AckStatus, BatchAck, FrameError, ScanBatch, close_code, count_field, read_frame_body, read_frame_len, write_message,
};
use farestream_ingest::clock_source::{Clock, SystemClock};
use farestream_ingest::telemetry;

/// QUIC application error code for "stop sending, the frame is too large".
const STOP_FRAME_TOO_LARGE: u32 = 1;
/// `ScanBatch.scans` in `proto/farestream.proto`.
const SCAN_BATCH_SCANS_FIELD: u32 = 3;

pub(super) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.settings.connections_max));
    // Apart from the connections: a peer with no certificate that stalls
    // its handshakes holds these at most, never a proven gateway's slot.
    let handshakes = Arc::new(Semaphore::new(shared.settings.handshakes_in_flight_max));
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        // A spoofed source address cannot answer a retry, so the limits
        // per address below count addresses that exist. The retry is
        // stateless: an unanswered one costs the server nothing.
        if !incoming.remote_address_validated() {
            if let Err(unretried) = incoming.retry() {
                unretried.into_incoming().refuse();
            }
            continue;
        }
        let address = match shared.limits.admit_address(incoming.remote_address().ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                telemetry::connection_refused(reason);
                incoming.refuse();
                continue;
            }
        };
        let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
            telemetry::connection_refused("handshakes_in_flight");
            incoming.refuse();
            continue;
        };
        let admission = Admission { address, handshake, connections: Arc::clone(&connections) };
        let shared_for_task = Arc::clone(&shared);
        spawn_supervised(&shared, "a connection task", handle_connection(incoming, admission, shared_for_task));
    }
}

/// What a new connection holds while its handshake runs: its address's
/// count and a handshake slot; then a connection slot, if one is free.
struct Admission {
    address: AddressSlot,
    handshake: OwnedSemaphorePermit,
    connections: Arc<Semaphore>,
}

async fn handle_connection(incoming: quinn::Incoming, mut admission: Admission, shared: Arc<Shared>) {
    let connection = match tokio::time::timeout(shared.settings.handshake_timeout, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            // No certificate, one from another CA, a revoked or an expired
            // one: TLS refused it and told the peer why.
            tracing::debug!(%error, "handshake failed");
            telemetry::connection_refused("handshake_failed");
            return;
        }
        Err(_) => {
            telemetry::connection_refused("handshake_timeout");
            return;
        }
    };
    drop(admission.handshake);
    admission.address.handshake_finished();
    let Ok(_connection_slot) = Arc::clone(&admission.connections).try_acquire_owned() else {
        telemetry::connection_refused("connections_max");
        let why = "the server holds server.connections_max connections";
        connection.close(close_code::TOO_MANY_CONNECTIONS.into(), why.as_bytes());
        return;
    };
    let _address = admission.address;
    // The handshake verified the certificate; who it names is read here.
    let Some((gateway, registered)) = shared.fleet.admit(&connection) else { return };
    let (gateway_slot, evicted) = shared.limits.admit_gateway(gateway.scope.gateway_id(), &connection);
    for oldest in evicted {
        telemetry::connection_refused("connections_per_gateway");
        let why = "replaced by a newer connection of this gateway (server.connections_per_gateway_max)";
        oldest.close(close_code::TOO_MANY_CONNECTIONS.into(), why.as_bytes());
    }
    telemetry::connection_opened();
    spawn_supervised(&shared, "a gateway's push stream", push_to_gateway(connection.clone(), Arc::clone(&shared)));
    let peer = Arc::new(Peer {
        party: shared.next_peer.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        sizer: Mutex::new(*farestream_core::sync::lock(&shared.all_peers)),
        scope: gateway.scope,
        serial: gateway.serial,
        last_batch: Mutex::new(Instant::now()),
        gateway_slot,
        _registered: registered,
    });
    let idle_limit = shared.settings.batch_idle_timeout;
    let expires = certificate_expiry(gateway.not_after_secs);
    loop {
        let idle_for = farestream_core::sync::lock(&peer.last_batch).elapsed();
        let Some(idle_left) = idle_limit.checked_sub(idle_for).filter(|left| !left.is_zero()) else {
            telemetry::connection_refused("batch_idle");
            let why = format!("no batch for {} ms (server.batch_idle_timeout_ms)", idle_limit.as_millis());
            connection.close(close_code::IDLE.into(), why.as_bytes());
            return;
        };
        // Checked here as well as in the select: a timer whose deadline
        // has passed may still be pending on its first poll, and a stream
        // already waiting would then be taken.
        if tokio::time::Instant::now() >= expires {
            telemetry::connection_refused("certificate_expired");
            connection.close(close_code::CERTIFICATE_EXPIRED.into(), b"this gateway's certificate ran out");
            return;
        }
        let (send, recv) = tokio::select! {
            // In this order: a connection whose certificate ran out, even
            // in the second it was admitted, has no stream accepted.
            biased;
            _ = shared.shutdown.cancelled() => return,
            // PINGs keep QUIC's own idle timer alive, not this one.
            _ = tokio::time::sleep(idle_left) => continue,
            // TLS checked the certificate at the handshake; one that runs
            // out later must not keep its connection.
            _ = tokio::time::sleep_until(expires) => {
                telemetry::connection_refused("certificate_expired");
                connection.close(close_code::CERTIFICATE_EXPIRED.into(), b"this gateway's certificate ran out");
                return;
            }
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

/// When a certificate good until `not_after_secs` (Unix, the wall clock
/// TLS judged it by) runs out, as a point on the runtime's clock.
fn certificate_expiry(not_after_secs: i64) -> tokio::time::Instant {
    // In milliseconds: TLS takes a certificate up to the end of its
    // `not_after` second, and a connection made in that second must not
    // be given a whole second more.
    let not_after_ms = not_after_secs.saturating_mul(1000);
    let left_ms = u64::try_from(not_after_ms.saturating_sub(SystemClock.now_ms())).unwrap_or(0);
    // Far-off dates (rcgen's default is the year 4096) are capped at a
    // century, which tokio's clock can hold.
    let left = std::time::Duration::from_millis(left_ms.min(100 * 365 * 86_400 * 1000));
    tokio::time::Instant::now() + left
}

/// One batch: read its frame, process it, write the ack.
async fn handle_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, shared: Arc<Shared>, peer: Arc<Peer>) {
    let started = Instant::now();
    let stopping = || Err(backoff_ack("", 0, "server is shutting down; resend the batch".into()));
    // The gateway's own turn before any shared budget (frame bytes, the
    // pipeline's slots): its other streams wait unread, on itself.
    let gateway_turn = tokio::select! {
        permit = peer.gateway_slot.batches.acquire() => permit.ok(),
        _ = shared.shutdown.cancelled() => None,
    };
    let read = match gateway_turn {
        None => stopping(),
        Some(_) => tokio::select! {
            read = read_batch(&mut recv, &shared) => read,
            // A half-read batch does not hold up a shutdown: its gateway resends.
            _ = shared.shutdown.cancelled() => stopping(),
        },
    };
    let ack = match read {
        // The frame's bytes stay counted until the batch is answered.
        Ok((batch, _frame_bytes)) => {
            *farestream_core::sync::lock(&peer.last_batch) = Instant::now();
            process(&shared, &peer, batch).await
        }
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
    BatchAck::backoff(gateway_id, batch_seq, error, BACKOFF_RETRY_AFTER_MS)
}

fn frame_error_reason(error: &FrameError) -> &'static str {
    match error {
        FrameError::TooLarge { .. } => "frame_too_large",
        FrameError::Truncated(_) => "frame_truncated",
        FrameError::Decode { .. } | FrameError::Fields { .. } => "frame_not_protobuf",
    }
}
