//! One batch through the pipeline: a slot, verification in fair turns,
//! the commit under the gate, the wait for durability, the ack.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use tokio::sync::{SemaphorePermit, oneshot};

use crate::fair::Party;
use crate::fleet_access::Registered;
use crate::peer_limits::GatewaySlot;
use crate::{BACKOFF_RETRY_AFTER_MS, Fatal, Shared, fail};
use farestream_core::fleet::GatewayScope;
use farestream_core::ingest::{ChunkSizer, VerifiedBatch};
use farestream_core::journal;
use farestream_core::scan::{ArchivedScan, ScanStatus};
use farestream_gateway::wire::{BatchAck, ScanBatch};
use farestream_ingest::telemetry;
use farestream_ingest::wal::committer::{WaitError, WalState};

/// One connection: the gateway its certificate names and the validators
/// it speaks for, its place in the rotation of turns at the verifier, and
/// the chunk size its own failure rate calls for.
pub(super) struct Peer {
    pub(super) party: Party,
    pub(super) sizer: Mutex<ChunkSizer>,
    pub(super) scope: GatewayScope,
    /// Its certificate's serial number, which a revocation names.
    pub(super) serial: Vec<u8>,
    /// When it last sent a whole batch: a connection that sends none for
    /// `batch_idle_timeout` is closed.
    pub(super) last_batch: Mutex<std::time::Instant>,
    /// Its place among its gateway's connections, and the gateway's
    /// batches in flight (taken before the frame is read).
    pub(super) gateway_slot: GatewaySlot,
    /// Its entry among the live connections, while it lives.
    pub(super) _registered: Registered,
}

/// What the commit hands back.
enum Committed {
    /// Claimed and queued; durable once the log reaches `lsn`.
    Queued { outcome: farestream_core::ingest::BatchOutcome, lsn: u64 },
    /// Not committed: the server has stopped.
    Refused(String),
    /// Claimed but could not be logged: a bug; the server has stopped.
    Unlogged(String),
}

pub(super) async fn process(shared: &Arc<Shared>, peer: &Peer, batch: ScanBatch) -> BatchAck {
    let (gateway_id, batch_seq) = (batch.gateway_id.clone(), batch.batch_seq);
    let backoff = |error: String| BatchAck::backoff(&gateway_id, batch_seq, error, BACKOFF_RETRY_AFTER_MS);
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
    if let Err(error) = shared.pipeline.check_batch_shape(&batch) {
        telemetry::batch_refused("batch_shape");
        return BatchAck::malformed(&gateway_id, batch_seq, error.to_string());
    }
    if batch.gateway_id != peer.scope.gateway_id() {
        telemetry::batch_refused("gateway_id_not_the_certificates");
        let error = format!(
            "the batch's gateway_id is not {:?}, the gateway this connection's certificate names",
            peer.scope.gateway_id()
        );
        return BatchAck::malformed(&gateway_id, batch_seq, error);
    }
    if let Err(wait_ms) = shared.limits.take_scans(peer.scope.gateway_id(), batch.scans.len()) {
        telemetry::batch_refused("gateway_scans_per_sec");
        let error = format!("gateway over server.gateway_scans_per_sec_max; resend in {wait_ms} ms");
        let retry_after_ms = u32::try_from(wait_ms).unwrap_or(u32::MAX);
        return BatchAck::backoff(&gateway_id, batch_seq, error, retry_after_ms);
    }
    let Ok(permit) = shared.batches_in_flight.acquire().await else {
        return backoff("server is shutting down".into());
    };
    let batch = Arc::new(batch);
    let (verified, _permit) = match verify_with_keys_read_since(shared, peer, &batch, permit).await {
        Verified::Batch(verified, permit) => (verified, permit),
        Verified::Panicked => {
            telemetry::batch_refused("verify_panicked");
            return BatchAck::malformed(&gateway_id, batch_seq, "internal error while verifying the batch".into());
        }
        Verified::KeysUnread(error) => {
            telemetry::batch_refused("key_store_unread");
            return backoff(format!("a code names a terminal key this node does not hold, and {error}"));
        }
        Verified::ShuttingDown => return backoff("server is shutting down".into()),
    };
    // A revocation that arrived while the batch was read or verified
    // stops it here, before anything is claimed.
    if shared.fleet.is_revoked(&peer.serial) {
        telemetry::batch_refused("revoked");
        return BatchAck::malformed(&gateway_id, batch_seq, "this gateway's certificate was revoked".into());
    }
    if let Some(stream) = &shared.stream {
        return crate::cluster_ingest::commit_to_stream(shared, stream, batch, verified).await;
    }
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
            StatusCounts::of(&outcome.rows, outcome.ack.redelivered).record();
            outcome.ack
        }
        Err(WaitError::Timeout(limit)) => backoff(format!("batch not durable within {limit:?} (disk full?)")),
        Err(WaitError::Failed(reason)) => {
            fail(shared, Fatal::Wal(reason.clone()));
            backoff(format!("write-ahead log stopped: {reason}"))
        }
    }
}

/// A batch's verification, and the pipeline slot it holds.
enum Verified<'a> {
    Batch(VerifiedBatch, SemaphorePermit<'a>),
    /// Verification panicked: a bug some input triggers.
    Panicked,
    /// A code named a terminal key this node does not hold and the key
    /// store could not be read again in time: not decidable as every node
    /// would decide it.
    KeysUnread(String),
    ShuttingDown,
}

/// [`verify_fairly`], and in a cluster once more when a code named a
/// terminal key this node does not hold, after reading the shared key
/// store (`issuer_reload::read_keys_begun_after`): every node decides
/// whether a code opens, and so its row's partition, alike. The batch
/// gives its pipeline slot back while it waits for the read, so batches
/// naming keys never made, with a store that hangs, hold up no one else.
async fn verify_with_keys_read_since<'a>(
    shared: &'a Arc<Shared>,
    peer: &Peer,
    batch: &Arc<ScanBatch>,
    permit: SemaphorePermit<'a>,
) -> Verified<'a> {
    let verified_from = std::time::Instant::now();
    let Some(verified) = verify_fairly(shared, peer, batch).await else { return Verified::Panicked };
    if shared.stream.is_none() || !verified.met_unknown_terminal_key() {
        return Verified::Batch(verified, permit);
    }
    drop(permit);
    if let Err(error) = crate::issuer_reload::read_keys_begun_after(shared, verified_from).await {
        return Verified::KeysUnread(error);
    }
    let Ok(permit) = shared.batches_in_flight.acquire().await else { return Verified::ShuttingDown };
    match verify_fairly(shared, peer, batch).await {
        Some(verified) => Verified::Batch(verified, permit),
        None => Verified::Panicked,
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
        let chunk_signatures = farestream_core::sync::lock(&peer.sizer).chunk_signatures();
        let (reply, result) = oneshot::channel();
        let (pipeline, batch, scope) = (Arc::clone(&shared.pipeline), Arc::clone(batch), peer.scope.clone());
        rayon::spawn(move || {
            let part = catch_unwind(AssertUnwindSafe(|| {
                pipeline.verify_records(&batch.scans[start..end], chunk_signatures, &scope)
            }));
            let _ = reply.send(part);
        });
        let part = result.await.ok()?.ok()?;
        let (checked, failed) = part.signature_counts();
        farestream_core::sync::lock(&peer.sizer).observe(checked, failed);
        farestream_core::sync::lock(&shared.all_peers).observe(checked, failed);
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
    let mut claims = farestream_core::sync::lock(&shared.gate.claims);
    if let Some(reason) = shared.failure.get() {
        return Committed::Refused(format!("server stopping: {reason}"));
    }
    let received_at = shared.gate.clock.now_ms();
    let committed = catch_unwind(AssertUnwindSafe(|| {
        let outcome = shared.pipeline.commit(batch, verified, received_at);
        shared.handles.faults.during_commit();
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
    match &committed {
        Committed::Queued { lsn, .. } => claims.logged(*lsn),
        Committed::Unlogged(error) => fail(shared, Fatal::Unlogged(error.clone())),
        Committed::Refused(_) => {}
    }
    committed
}

/// A batch's rows counted by status, recorded once the batch is durable.
pub(super) struct StatusCounts {
    per_status: [u64; ScanStatus::ALL.len()],
    redelivered: u32,
}

impl StatusCounts {
    pub(super) fn of(rows: &[ArchivedScan], redelivered: u32) -> StatusCounts {
        let per_status = ScanStatus::ALL.map(|status| rows.iter().filter(|r| r.status == status).count() as u64);
        StatusCounts { per_status, redelivered }
    }

    pub(super) fn record(&self) {
        for (status, count) in ScanStatus::ALL.into_iter().zip(self.per_status) {
            if count > 0 {
                telemetry::scans_archived(status, count);
            }
        }
        telemetry::scans_redelivered(u64::from(self.redelivered));
    }
}
