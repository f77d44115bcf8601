//! The ingest pipeline's core: a batch of scan records and the time it
//! arrived go in; archive rows and the gateway's ack come out. No I/O and
//! no clock. Three steps:
//!
//! 1. prepare (parallel): fingerprint each record, check its fields, open
//!    (version 2) or decode (version 1) its ride code, find the issuer key,
//!    look up the credential cache;
//! 2. verify (parallel): every signature still to check, in chunks of
//!    `verify_chunk_signatures`, each chunk one batch equation;
//! 3. commit (in record order): drop re-deliveries, check lateness, windows,
//!    freshness and the deny list, then claim the ride in the replay index.
//!
//! Nothing is inserted into the dedup indexes before step 3, so a forged
//! record can never shadow a genuine one.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rayon::prelude::*;
use ring::digest;
use thiserror::Error;

use super::dedup::snapshot::{SnapshotCounts, SnapshotError, SnapshotHeader};
use super::dedup::{DedupIndex, DedupLimits, DedupSizes, Fingerprint, RideKey};
use super::horizon::{Horizons, SCAN_TIME_MS_MAX, SCAN_TIME_MS_MIN};
use crate::clock::{UnixMillis, unix_secs_u32};
use crate::fleet::GatewayScope;
use crate::ridecode::check::{
    check_claims, check_credential_signature, issuer_key_for, issuer_signature_check, user_signature_check,
};
use crate::ridecode::verify::{BatchEntropy, SignatureCheck, verify_batch, verify_single};
use crate::ridecode::{
    FreshnessPolicy, IssuerPublicKeys, NobodyDenied, Rejection, RideCode, SignatureFault, TerminalKeys,
    check_format_in_force, open_code,
};
use crate::scan::{ArchivedScan, ID_MAX, ScanStatus, TapKind};
use crate::service_day::ServiceDayPolicy;
use crate::wire::{AckStatus, BatchAck, RejectedScan, ScanBatch, ScanRecord, WireScanStatus};

/// The pipeline's tunables (the shell builds them from its config).
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The ride-code freshness rules, the same as the validators'.
    pub freshness: FreshnessPolicy,
    /// How long after it was read a scan may arrive and still count (else `late_upload`).
    pub accepted_lateness_secs: u32,
    /// Signatures per batch equation in [`Pipeline::verify`]; the shell's chunk sizers pick up to this.
    pub verify_chunk_signatures: usize,
    /// The most scans one batch may carry; a larger batch is refused whole.
    pub batch_scans_max: usize,
    /// Longest `gateway_id`, `validator_id`, `route_id` or `stop_id`.
    pub id_bytes_max: usize,
    /// Which service day each archive row is filed under.
    pub service_day: ServiceDayPolicy,
    /// When the dedup indexes' hot tiers are frozen into compact runs.
    pub dedup: DedupLimits,
}

impl PipelineConfig {
    /// The time windows these settings give.
    pub fn horizons(&self) -> Horizons {
        Horizons::new(self.freshness, self.accepted_lateness_secs)
    }
}

/// A batch that cannot be processed at all; the gateway gets an error ack.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// The batch names no gateway.
    #[error("gateway_id is empty")]
    MissingGatewayId,
    /// The gateway id is longer than `id_bytes_max`.
    #[error("gateway_id is {len} bytes, the limit is {max}")]
    GatewayIdTooLong {
        /// The gateway id's length, in bytes.
        len: usize,
        /// The limit, `id_bytes_max`, in bytes.
        max: usize,
    },
    /// The batch holds more scans than `batch_scans_max`.
    #[error("batch has {count} scans, the limit is {max}")]
    TooManyScans {
        /// Scans in the batch.
        count: usize,
        /// The limit, `batch_scans_max`.
        max: usize,
    },
}

/// Where a scan's claims in the dedup indexes are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claiming {
    /// In the commit: one node.
    Here,
    /// Later, by the partition's owner ([`Pipeline::claim_rows`]).
    ByOwner,
}

/// What a partition's owner makes of rows committed unclaimed.
#[derive(Debug, Default)]
pub struct ClaimedRows {
    /// The rows that were not re-deliveries, in the order given, with
    /// their final verdicts.
    pub rows: Vec<ArchivedScan>,
    /// Scans dropped as re-deliveries.
    pub redelivered: u32,
}

/// What one batch produced.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    /// One row per scan that was not a re-delivery, in record order.
    pub rows: Vec<ArchivedScan>,
    /// The answer for the gateway: counts, and one entry per rejected scan.
    pub ack: BatchAck,
}

/// The pipeline's state shared by every batch: trusted issuer keys, the server's deny list and the dedup
/// indexes.
pub struct Pipeline {
    config: PipelineConfig,
    horizons: Horizons,
    /// Swapped whole by [`Pipeline::set_issuer_keys`] when the key
    /// schedule moves; each slice of a batch checks against one set.
    issuer_keys: RwLock<Arc<IssuerPublicKeys>>,
    /// Swapped whole by [`Pipeline::set_terminal_keys`]: what sealed codes open with.
    terminal_keys: RwLock<Arc<TerminalKeys>>,
    deny_list: RwLock<HashSet<u64>>,
    dedup: DedupIndex,
    entropy: BatchEntropy,
}

/// A batch after steps 1 and 2: ready for [`Pipeline::commit`].
#[derive(Default)]
pub struct VerifiedBatch {
    prepared: Vec<Prepared>,
    signatures: Vec<SignatureResults>,
    signatures_checked: usize,
    signatures_failed: usize,
}

impl VerifiedBatch {
    /// Adds the next slice of the same batch's records, verified after
    /// this one: slices appended in record order commit as the whole.
    pub fn append(&mut self, next: VerifiedBatch) {
        self.prepared.extend(next.prepared);
        self.signatures.extend(next.signatures);
        self.signatures_checked += next.signatures_checked;
        self.signatures_failed += next.signatures_failed;
    }

    /// Whether a record's code named a terminal key the pipeline does not
    /// hold. A cluster node reads the shared key store again before it
    /// decides such a batch: whether the code opens decides its row's
    /// partition, so it must not depend on how lately a node read.
    pub fn met_unknown_terminal_key(&self) -> bool {
        self.prepared.iter().any(|p| matches!(&p.early, Err(v) if v.status == ScanStatus::UnknownTerminalKey))
    }

    /// Signatures verified, and how many of them were bad: what a
    /// [`super::ChunkSizer`] learns from.
    pub fn signature_counts(&self) -> (usize, usize) {
        (self.signatures_checked, self.signatures_failed)
    }
}

/// A scan's verdict before it is archived.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    status: ScanStatus,
    reason: Option<String>,
}

impl From<Rejection> for Verdict {
    fn from(rejection: Rejection) -> Verdict {
        Verdict { status: rejection.status(), reason: Some(rejection.to_string()) }
    }
}

impl Verdict {
    fn malformed(reason: String) -> Verdict {
        Verdict { status: ScanStatus::Malformed, reason: Some(reason) }
    }
}

/// A record after step 1.
struct Prepared {
    fingerprint: Fingerprint,
    /// What the validator's gate did, when the gateway said.
    gate_opened: Option<bool>,
    /// Its fingerprint was in the re-delivery index when step 1 looked:
    /// a re-delivery, whose signatures step 2 need not check (they were
    /// checked before its entry was made).
    seen_before: bool,
    tap_kind: Option<TapKind>,
    code: Option<RideCode>,
    /// Step 1's verdict when it already failed the record.
    early: Result<SignatureWork, Verdict>,
}

impl Prepared {
    /// The signatures step 2 must check for this record, if any.
    fn signature_work(&self) -> Option<(&SignatureWork, &RideCode)> {
        match (&self.early, &self.code) {
            (Ok(work), Some(code)) if !self.seen_before => Some((work, code)),
            _ => None,
        }
    }
}

/// Which signatures step 2 must check for one record.
struct SignatureWork {
    issuer_key: [u8; 32],
    credential_cached: bool,
}

#[derive(Debug, Clone, Copy)]
struct SignatureResults {
    issuer_valid: bool,
    user_valid: bool,
}

impl Pipeline {
    /// `entropy` seeds batch verification's random coefficients: fill it
    /// from the OS (the shell does), never from anything a peer can see.
    pub fn new(config: PipelineConfig, issuer_keys: IssuerPublicKeys, entropy: [u8; 32]) -> Pipeline {
        let horizons = config.horizons();
        let deny_list = RwLock::new(HashSet::new());
        let entropy = BatchEntropy::new(entropy);
        let issuer_keys = RwLock::new(Arc::new(issuer_keys));
        let terminal_keys = RwLock::new(Arc::new(TerminalKeys::new()));
        let dedup = DedupIndex::new(config.dedup, entropy.secret_u128());
        Pipeline { config, horizons, issuer_keys, terminal_keys, deny_list, dedup, entropy }
    }

    /// Opens sealed codes with exactly `keys` from now on (a new day's key,
    /// an emergency rotation, a day that ran out). Until the first call no
    /// sealed code opens.
    pub fn set_terminal_keys(&self, keys: TerminalKeys) {
        *crate::sync::write(&self.terminal_keys) = Arc::new(keys);
    }

    /// The terminal keys held now.
    pub fn terminal_keys(&self) -> Arc<TerminalKeys> {
        Arc::clone(&crate::sync::read(&self.terminal_keys))
    }

    /// Trusts exactly `keys` from now on (a rotation, a key that ran out
    /// or was retired): batches verified after this call use them.
    pub fn set_issuer_keys(&self, keys: IssuerPublicKeys) {
        *crate::sync::write(&self.issuer_keys) = Arc::new(keys);
    }

    /// The issuer keys trusted now.
    pub fn issuer_keys(&self) -> Arc<IssuerPublicKeys> {
        Arc::clone(&crate::sync::read(&self.issuer_keys))
    }

    /// The tunables this pipeline was built with.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Puts a card on the deny list or takes it off.
    pub fn set_denied(&self, card_id: u64, denied: bool) {
        let mut list = crate::sync::write(&self.deny_list);
        if denied {
            list.insert(card_id);
        } else {
            list.remove(&card_id);
        }
    }

    /// Forgets dedup entries that can no longer matter at `now`.
    pub fn sweep(&self, now: UnixMillis) {
        self.dedup.sweep(now);
    }

    /// Writes the dedup indexes to `out` (see [`DedupIndex::write_snapshot`]):
    /// every log record before `replay_from_lsn` must have made its claims.
    pub fn write_dedup_snapshot(
        &self,
        replay_from_lsn: u64,
        now: UnixMillis,
        out: impl std::io::Write,
    ) -> std::io::Result<SnapshotCounts> {
        let header = SnapshotHeader { replay_from_lsn, written_at: now };
        self.dedup.write_snapshot(header, self.horizons, out)
    }

    /// Loads a dedup snapshot into this pipeline's empty indexes, under
    /// this pipeline's time windows, if `accept` passes its header (see
    /// [`DedupIndex::load_snapshot`]).
    pub fn load_dedup_snapshot(
        &self,
        now: UnixMillis,
        input: impl std::io::Read,
        accept: impl FnOnce(&SnapshotHeader) -> Result<(), String>,
    ) -> Result<(SnapshotHeader, SnapshotCounts), SnapshotError> {
        self.dedup.load_snapshot(self.horizons, now, input, accept)
    }

    /// How many entries each dedup index holds now, for metrics.
    pub fn dedup_sizes(&self) -> DedupSizes {
        self.dedup.sizes()
    }

    /// Processes one batch that arrived at `received_at`: [`Pipeline::verify`]
    /// then [`Pipeline::commit`], from a gateway that speaks for every
    /// validator (the server reads each connection's scope from its
    /// certificate and calls [`Pipeline::verify_records`]).
    pub fn process(&self, batch: &ScanBatch, received_at: UnixMillis) -> Result<BatchOutcome, BatchError> {
        let verified = self.verify(batch)?;
        Ok(self.commit(batch, verified, received_at))
    }

    /// Steps 1 and 2: everything that needs no ordering between batches.
    /// Claims nothing in the dedup indexes (it only looks).
    pub fn verify(&self, batch: &ScanBatch) -> Result<VerifiedBatch, BatchError> {
        self.check_batch_shape(batch)?;
        let scope = GatewayScope::every_validator(&batch.gateway_id);
        Ok(self.verify_records(&batch.scans, self.config.verify_chunk_signatures, &scope))
    }

    /// Steps 1 and 2 for a slice of a batch whose shape was checked, from
    /// a gateway that speaks for the validators in `scope`, with
    /// `chunk_signatures` signatures per batch equation; see
    /// [`VerifiedBatch::append`].
    pub fn verify_records(
        &self,
        records: &[ScanRecord],
        chunk_signatures: usize,
        scope: &GatewayScope,
    ) -> VerifiedBatch {
        let keys = (self.issuer_keys(), self.terminal_keys());
        let prepared: Vec<Prepared> =
            records.par_iter().map(|record| self.prepare(record, (&keys.0, &keys.1), scope)).collect();
        let (signatures, checked, failed) = self.verify_signatures(&prepared, chunk_signatures.max(1));
        VerifiedBatch { prepared, signatures, signatures_checked: checked, signatures_failed: failed }
    }

    /// Rebuilds the dedup indexes from rows decided before a restart (read
    /// from the archive and the write-ahead log), so a re-delivery or a
    /// replay arriving after the restart is still caught. Entries that have
    /// expired by `now` are skipped. The hot tiers are frozen when due after
    /// each call (a log record, an archive file), so a restore holds about
    /// as much in them as serving does.
    pub fn restore(&self, rows: &[ArchivedScan], now: UnixMillis) {
        for row in rows {
            let delivery_expiry = self.horizons.delivery_expiry(row.scanned_at, row.received_at);
            if delivery_expiry > now {
                self.dedup.claim_delivery(row.scan_id, delivery_expiry, now);
            }
            // Only accepted rows paid for a use; a replay changed nothing.
            let paid = row.status == ScanStatus::Accepted;
            if let (true, Some(card_id), Some(created_ms), Some(counter), Some(tap_kind)) =
                (paid, row.card_id, row.code_created_at, row.code_counter, row.tap_kind)
            {
                let created_at = unix_secs_u32(created_ms);
                let expiry = self.horizons.ride_expiry(created_at);
                if expiry > now {
                    self.dedup.restore_ride(RideKey { card_id, created_at, counter }, tap_kind, expiry);
                }
            }
        }
        self.dedup.freeze_when_due(now);
    }

    /// What makes a batch malformed as a whole.
    pub fn check_batch_shape(&self, batch: &ScanBatch) -> Result<(), BatchError> {
        if batch.gateway_id.is_empty() {
            return Err(BatchError::MissingGatewayId);
        }
        let (len, max) = (batch.gateway_id.len(), self.config.id_bytes_max);
        if len > max {
            return Err(BatchError::GatewayIdTooLong { len, max });
        }
        if batch.scans.len() > self.config.batch_scans_max {
            return Err(BatchError::TooManyScans { count: batch.scans.len(), max: self.config.batch_scans_max });
        }
        Ok(())
    }

    fn prepare(
        &self,
        record: &ScanRecord,
        (keys, terminal_keys): (&IssuerPublicKeys, &TerminalKeys),
        scope: &GatewayScope,
    ) -> Prepared {
        let tap_kind = record.wire_tap_kind();
        let read_at = unix_secs_u32(record.validator_time_ms);
        let code = open_code(&record.ride_code, terminal_keys, i64::from(read_at));
        // What the gate did decides the version-1 cut-off, as it decides
        // the deny list: a gate that opened let a ride happen.
        let format = match record.gate_opened() {
            Some(true) => Ok(()),
            _ => check_format_in_force(&record.ride_code, &self.config.freshness, read_at),
        };
        let in_scope = check_scope(record, scope);
        // A scan from a gateway that does not speak for its validator is
        // not that scan's delivery: under the scan's own id it would make
        // the real delivery, from the right gateway, look like a
        // re-delivery and go uncharged.
        let fingerprint = match in_scope {
            Ok(()) => fingerprint(record),
            Err(_) => foreign_fingerprint(record, scope.gateway_id()),
        };
        let checked = self.check_fields(record).and(in_scope);
        let early = match (checked, &code, tap_kind) {
            (Err(verdict), _, _) => Err(verdict),
            (_, _, None) => {
                Err(Verdict::malformed(format!("tap_kind {} is not entry, exit or single", record.tap_kind)))
            }
            (_, Err(rejection), _) => Err((*rejection).into()),
            (Ok(()), Ok(code), Some(_)) => {
                format.and_then(|()| issuer_key_for(code, keys)).map_err(Verdict::from).map(|issuer_key| {
                    SignatureWork {
                        issuer_key: *issuer_key,
                        credential_cached: self.dedup.credential_is_verified(&code.credential_bytes()),
                    }
                })
            }
        };
        let seen_before = self.dedup.delivery_seen(&fingerprint);
        Prepared { fingerprint, gate_opened: record.gate_opened(), seen_before, tap_kind, code: code.ok(), early }
    }

    /// The record's own fields, before its ride code: ids present and
    /// bounded, a scan time that a ride code can be checked against.
    fn check_fields(&self, record: &ScanRecord) -> Result<(), Verdict> {
        if record.validator_id.is_empty() {
            return Err(Verdict::malformed("validator_id is empty".into()));
        }
        let max = self.config.id_bytes_max;
        let ids =
            [("validator_id", &record.validator_id), ("route_id", &record.route_id), ("stop_id", &record.stop_id)];
        if let Some((name, value)) = ids.into_iter().find(|(_, value)| value.len() > max) {
            return Err(Verdict::malformed(format!("{name} is {} bytes, the limit is {max}", value.len())));
        }
        let numbers = [("validator_seq", record.validator_seq), ("deny_list_version", record.deny_list_version)];
        if let Some((name, value)) = numbers.into_iter().find(|(_, value)| *value > ID_MAX) {
            return Err(Verdict::malformed(format!(
                "{name} {value} is above 2^63 - 1, the largest integer every reader of the archive holds"
            )));
        }
        if !Horizons::scan_time_in_range(record.validator_time_ms) {
            return Err(Verdict::malformed(format!(
                "validator_time_ms {} is outside [{SCAN_TIME_MS_MIN}, {SCAN_TIME_MS_MAX}], the times a ride code can express",
                record.validator_time_ms
            )));
        }
        Ok(())
    }

    /// Checks every signature step 1 left to check; one result per record,
    /// and how many signatures were checked and failed.
    fn verify_signatures(&self, prepared: &[Prepared], chunk: usize) -> (Vec<SignatureResults>, usize, usize) {
        let mut checks: Vec<SignatureCheck> = Vec::with_capacity(prepared.len() * 2);
        for (work, code) in prepared.iter().filter_map(Prepared::signature_work) {
            if !work.credential_cached {
                checks.push(issuer_signature_check(code, &work.issuer_key));
            }
            checks.push(user_signature_check(code));
        }
        let chunks: Vec<Vec<bool>> = checks.par_chunks(chunk).map(|c| verify_batch(c, self.entropy.rng())).collect();
        let failed = chunks.iter().flatten().filter(|valid| !**valid).count();
        let mut valid = chunks.into_iter().flatten();
        let results = prepared
            .iter()
            .map(|p| match p.signature_work() {
                Some((work, _)) => {
                    let issuer_valid = work.credential_cached || valid.next().unwrap_or(false);
                    SignatureResults { issuer_valid, user_valid: valid.next().unwrap_or(false) }
                }
                None => SignatureResults { issuer_valid: false, user_valid: false },
            })
            .collect();
        (results, checks.len(), failed)
    }

    /// One record's signatures, checked alone: for a record step 1 took for
    /// a re-delivery whose entry then expired before step 3 claimed it.
    fn verify_alone(p: &Prepared) -> SignatureResults {
        match (&p.early, &p.code) {
            (Ok(work), Some(code)) => SignatureResults {
                issuer_valid: work.credential_cached || verify_single(&issuer_signature_check(code, &work.issuer_key)),
                user_valid: verify_single(&user_signature_check(code)),
            },
            _ => SignatureResults { issuer_valid: false, user_valid: false },
        }
    }

    /// Step 3: claims in the dedup indexes and the verdicts. Batches that
    /// must be logged in the order they claimed call this under one lock.
    pub fn commit(&self, batch: &ScanBatch, verified: VerifiedBatch, received_at: UnixMillis) -> BatchOutcome {
        self.commit_as(batch, verified, received_at, Claiming::Here)
    }

    /// Step 3 as a cluster's ingest node takes it (docs/scale-out.md):
    /// every check that needs no history (signatures, fields, windows, the
    /// deny list), and no claim in the dedup indexes. Every record gets a
    /// row; one that passes is `accepted` until its partition's owner
    /// claims it ([`Pipeline::claim_rows`]), which is where re-deliveries
    /// are dropped and replays found.
    pub fn commit_unclaimed(
        &self,
        batch: &ScanBatch,
        verified: VerifiedBatch,
        received_at: UnixMillis,
    ) -> BatchOutcome {
        self.commit_as(batch, verified, received_at, Claiming::ByOwner)
    }

    /// The claims [`Pipeline::commit`] makes, made by a partition's owner
    /// on rows an ingest node committed unclaimed, in the order its
    /// partition holds them: a scan whose fingerprint was claimed before
    /// is a re-delivery, dropped and counted; an `accepted` ride whose code
    /// has no use left becomes a `replay`, with the same reason the single
    /// node gives. Rows and counts come out as [`Pipeline::commit`] on the
    /// same scans would have made them.
    pub fn claim_rows(&self, rows: Vec<ArchivedScan>) -> ClaimedRows {
        let mut claimed = ClaimedRows { rows: Vec::with_capacity(rows.len()), redelivered: 0 };
        for mut row in rows {
            let expiry = self.horizons.delivery_expiry(row.scanned_at, row.received_at);
            if !self.dedup.claim_delivery(row.scan_id, expiry, row.received_at) {
                claimed.redelivered += 1;
                continue;
            }
            if let (ScanStatus::Accepted, Some(card_id), Some(created_ms), Some(counter), Some(tap_kind)) =
                (row.status, row.card_id, row.code_created_at, row.code_counter, row.tap_kind)
            {
                let key = RideKey { card_id, created_at: unix_secs_u32(created_ms), counter };
                let verdict = self.claim_ride_key(key, tap_kind, row.received_at);
                row.status = verdict.status;
                row.reason = verdict.reason;
            }
            claimed.rows.push(row);
        }
        claimed
    }

    fn commit_as(
        &self,
        batch: &ScanBatch,
        verified: VerifiedBatch,
        received_at: UnixMillis,
        claiming: Claiming,
    ) -> BatchOutcome {
        let VerifiedBatch { prepared, signatures, .. } = verified;
        let mut ack = BatchAck {
            gateway_id: batch.gateway_id.clone(),
            batch_seq: batch.batch_seq,
            status: AckStatus::Ok as i32,
            ..BatchAck::default()
        };
        let mut rows = Vec::with_capacity(prepared.len());
        // One copy for the whole batch: rows share it.
        let gateway_id: Arc<str> = Arc::from(batch.gateway_id.as_str());
        for (index, ((record, p), sigs)) in batch.scans.iter().zip(prepared).zip(signatures).enumerate() {
            let scanned_at = record.validator_time_ms;
            if claiming == Claiming::Here
                && !self.dedup.claim_delivery(
                    p.fingerprint,
                    self.horizons.delivery_expiry(scanned_at, received_at),
                    received_at,
                )
            {
                ack.redelivered += 1;
                continue;
            }
            let sigs = if p.seen_before { Pipeline::verify_alone(&p) } else { sigs };
            let verdict = match &p.early {
                Err(verdict) => verdict.clone(),
                Ok(work) => self.judge(&p, work, sigs, (scanned_at, received_at), claiming),
            };
            if verdict.status == ScanStatus::Accepted {
                ack.accepted += 1;
            } else {
                ack.rejected += 1;
                ack.rejections.push(RejectedScan {
                    index: index as u32,
                    status: WireScanStatus::from(verdict.status) as i32,
                    reason: verdict.reason.clone().unwrap_or_default(),
                });
            }
            rows.push(self.row(&gateway_id, record, &p, verdict, received_at));
        }
        BatchOutcome { rows, ack }
    }

    /// The verdict for a record whose code decoded and whose issuer key is known.
    fn judge(
        &self,
        p: &Prepared,
        work: &SignatureWork,
        sigs: SignatureResults,
        times: (UnixMillis, UnixMillis),
        claiming: Claiming,
    ) -> Verdict {
        let (Some(code), Some(tap_kind)) = (&p.code, p.tap_kind) else {
            return Verdict::malformed("internal: prepared record lost its code".into());
        };
        match self.check_signed_code(code, work, sigs, p.gate_opened, times) {
            Err(rejection) => rejection.into(),
            Ok(()) if claiming == Claiming::ByOwner => Verdict { status: ScanStatus::Accepted, reason: None },
            Ok(()) => self.claim_ride(code, tap_kind, times.1),
        }
    }

    /// The checks after step 1's, in the documented order. What the gate
    /// did decides the deny list: a gate that opened let a ride happen,
    /// charged even when the server's list is newer (the deposit covers
    /// it); one that refused did not; without a word from the gateway the
    /// server's list decides.
    fn check_signed_code(
        &self,
        code: &RideCode,
        work: &SignatureWork,
        sigs: SignatureResults,
        gate_opened: Option<bool>,
        (scanned_at, received_at): (UnixMillis, UnixMillis),
    ) -> Result<(), Rejection> {
        if !work.credential_cached {
            check_credential_signature(code, &work.issuer_key, |_| sigs.issuer_valid)?;
            let expires_at = self.horizons.credential_expiry(code.credential.claims.valid_until);
            self.dedup.remember_verified_credential(code.credential_bytes(), expires_at);
        }
        if !sigs.user_valid {
            return Err(Rejection::BadSignature(SignatureFault::User));
        }
        // The code's own checks in docs/ride-code.md's order (window,
        // freshness, deny list), then the server's: arrival, the gate.
        let (policy, at) = (&self.config.freshness, unix_secs_u32(scanned_at));
        match gate_opened {
            Some(_) => check_claims(code, &NobodyDenied, policy, at)?,
            None => check_claims(code, &*crate::sync::read(&self.deny_list), policy, at)?,
        }
        self.check_arrival(code, scanned_at, received_at)?;
        if gate_opened == Some(false) {
            return Err(Rejection::GateRefused { card_id: code.credential.claims.card_id });
        }
        Ok(())
    }

    /// A scan must arrive within the accepted lateness (or its replays could
    /// no longer be caught: `late_upload`) and not from a validator clock
    /// running ahead of the server's by more than the skew (`stale_code`,
    /// as a code made in the future is).
    fn check_arrival(&self, code: &RideCode, scanned_at: UnixMillis, received_at: UnixMillis) -> Result<(), Rejection> {
        if self.horizons.on_time(scanned_at, received_at) {
            return Ok(());
        }
        if received_at > scanned_at {
            return Err(Rejection::LateUpload { scanned_at_ms: scanned_at, received_at_ms: received_at });
        }
        Err(Rejection::StaleCode { created_at: code.created_at, at: unix_secs_u32(received_at) })
    }

    fn claim_ride(&self, code: &RideCode, tap_kind: TapKind, received_at: UnixMillis) -> Verdict {
        let key =
            RideKey { card_id: code.credential.claims.card_id, created_at: code.created_at, counter: code.counter };
        self.claim_ride_key(key, tap_kind, received_at)
    }

    /// A use of `key` claimed for a scan received at `received_at`.
    fn claim_ride_key(&self, key: RideKey, tap_kind: TapKind, received_at: UnixMillis) -> Verdict {
        if self.dedup.claim_ride(key, tap_kind, self.horizons.ride_expiry(key.created_at), received_at) {
            Verdict { status: ScanStatus::Accepted, reason: None }
        } else {
            Verdict {
                status: ScanStatus::Replay,
                reason: Some(format!(
                    "ride code of card {} made at {} (counter {}) was already used; shown again at a {} gate \
                     (one code pays for one ride: an entry and its exit may share it)",
                    key.card_id,
                    key.created_at,
                    key.counter,
                    tap_kind.as_str()
                )),
            }
        }
    }

    fn row(
        &self,
        gateway_id: &Arc<str>,
        record: &ScanRecord,
        p: &Prepared,
        verdict: Verdict,
        received_at: UnixMillis,
    ) -> ArchivedScan {
        let claims = p.code.as_ref().map(|code| (code.credential.claims, code.created_at, code.counter));
        let max = self.config.id_bytes_max;
        let partition_time = self.horizons.partition_time(record.validator_time_ms, received_at);
        ArchivedScan {
            scan_id: p.fingerprint,
            gateway_id: Arc::clone(gateway_id),
            validator_id: truncated(&record.validator_id, max),
            // As sent: a number above `ID_MAX` is malformed, and archived as
            // its 64 bits (`scan::id_to_archive`), so nothing is lost.
            validator_seq: record.validator_seq,
            route_id: truncated(&record.route_id, max),
            stop_id: truncated(&record.stop_id, max),
            tap_kind: p.tap_kind,
            card_id: claims.map(|(c, _, _)| c.card_id),
            issuer_key_id: claims.map(|(c, _, _)| c.issuer_key_id),
            code_created_at: claims.map(|(_, created_at, _)| i64::from(created_at) * 1000),
            code_counter: claims.map(|(_, _, counter)| counter),
            // Within what every reader converts (DuckDB, Spark and Arrow's
            // own casts fail on ±2^63 ms): a time outside it is malformed,
            // and its raw value is in `reason`, not here.
            scanned_at: record.validator_time_ms.clamp(SCAN_TIME_MS_MIN, SCAN_TIME_MS_MAX),
            received_at,
            status: verdict.status,
            reason: verdict.reason,
            // The server's clock is always a representable time; the
            // default (1970-01-01) is only for a clock set beyond chrono.
            service_date: self.config.service_day.service_date(partition_time).unwrap_or_default(),
            gate_opened: record.gate_opened(),
            deny_list_version: record.deny_list_version(),
        }
    }
}

/// A scan from a validator its gateway does not speak for is refused
/// whatever its code says: a gateway's key must not upload rides in
/// another depot's name.
fn check_scope(record: &ScanRecord, scope: &GatewayScope) -> Result<(), Verdict> {
    if scope.speaks_for(&record.validator_id) {
        return Ok(());
    }
    let reason = format!(
        "validator {:?} is not behind gateway {:?}: its certificate speaks for validators starting with {:?}",
        record.validator_id,
        scope.gateway_id(),
        scope.validator_prefixes()
    );
    Err(Verdict { status: ScanStatus::ForeignValidator, reason: Some(reason) })
}

/// At most `max` bytes of `value`, cut at a character boundary: an overlong
/// id is archived (as `malformed`) in a bounded row, never whole.
fn truncated(value: &str, max: usize) -> String {
    let mut end = value.len().min(max);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

/// SHA-256 over every field of the record, each length-prefixed so no two
/// records share an encoding; the first 16 bytes. The gateway id is left
/// out: a scan re-sent through another gateway is still the same scan.
pub fn fingerprint(record: &ScanRecord) -> Fingerprint {
    fingerprint_with(record, None)
}

/// The id of a `foreign_validator` row: the record's fields and then the
/// gateway that sent it, as an eighth field. Its re-deliveries through the
/// same gateway are caught; the scan from its own gateway is not one.
pub fn foreign_fingerprint(record: &ScanRecord, gateway_id: &str) -> Fingerprint {
    fingerprint_with(record, Some(gateway_id))
}

fn fingerprint_with(record: &ScanRecord, gateway_id: Option<&str>) -> Fingerprint {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(record.validator_id.as_bytes());
    field(&record.validator_seq.to_be_bytes());
    field(&record.validator_time_ms.to_be_bytes());
    field(record.route_id.as_bytes());
    field(record.stop_id.as_bytes());
    field(&record.tap_kind.to_be_bytes());
    field(&record.ride_code);
    if let Some(gateway_id) = gateway_id {
        field(gateway_id.as_bytes());
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

#[cfg(test)]
#[path = "pipeline_key_end_tests.rs"]
mod key_end_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ridecode::{IssuerSigningKey, UserKey};
    use crate::wire::{GateDecision, WireTapKind};

    pub(super) const AT_MS: UnixMillis = 1_763_604_000_000;

    /// A pipeline and the issuer key it trusts (key 1); the terminal-key
    /// tests (`pipeline_key_end_tests.rs`) share it.
    pub(super) struct Fixture {
        pub(super) pipeline: Pipeline,
        pub(super) issuer: IssuerSigningKey,
    }

    /// The shipped defaults of config/farestream.toml, in the service day's
    /// `time_zone`.
    pub(super) fn config_in(time_zone: chrono_tz::Tz) -> PipelineConfig {
        PipelineConfig {
            freshness: FreshnessPolicy {
                code_validity_secs: 60,
                clock_skew_secs: 30,
                credential_validity_secs: 93_600,
                unsealed_refused_from_secs: None,
            },
            accepted_lateness_secs: 259_200,
            verify_chunk_signatures: 64,
            batch_scans_max: 10_000,
            id_bytes_max: 128,
            service_day: ServiceDayPolicy { time_zone, start_hour: 4 },
            dedup: DedupLimits::DEFAULT,
        }
    }

    pub(super) fn fixture() -> Fixture {
        fixture_in(chrono_tz::Asia::Shanghai)
    }

    pub(super) fn code(f: &Fixture, card: u64, counter: u32) -> Vec<u8> {
        let user = UserKey::from_seed(&[card as u8; 32]).expect("user");
        let at = unix_secs_u32(AT_MS);
        let credential = f.issuer.issue(card, user.public_key(), at - 3_600, at + 90_000);
        user.make_code(&credential, at - 5, counter).bytes.to_vec()
    }

    pub(super) fn scan(seq: u64, at_ms: UnixMillis, code: Vec<u8>) -> ScanRecord {
        ScanRecord {
            validator_id: "gate-1".into(),
            validator_seq: seq,
            validator_time_ms: at_ms,
            route_id: "metro-1".into(),
            stop_id: "station-01".into(),
            tap_kind: WireTapKind::Entry as i32,
            ride_code: code,
            ..Default::default()
        }
    }

    fn statuses(outcome: &BatchOutcome) -> Vec<ScanStatus> {
        outcome.rows.iter().map(|r| r.status).collect()
    }

    pub(super) fn batch(scans: Vec<ScanRecord>) -> ScanBatch {
        ScanBatch { gateway_id: "g".into(), batch_seq: 1, scans }
    }

    #[test]
    fn a_second_scan_of_the_day_reuses_the_verified_credential_but_not_a_tampered_one() {
        let f = fixture();
        let first = f.pipeline.process(&batch(vec![scan(1, AT_MS, code(&f, 7, 1))]), AT_MS).expect("batch");
        assert_eq!(statuses(&first), vec![ScanStatus::Accepted]);
        assert_eq!(f.pipeline.dedup_sizes().credentials, 1);
        let mut tampered = code(&f, 7, 2);
        tampered[60] ^= 1; // inside the issuer signature: a different credential
        let second = f.pipeline.process(&batch(vec![scan(2, AT_MS, code(&f, 7, 3)), scan(3, AT_MS, tampered)]), AT_MS);
        assert_eq!(statuses(&second.expect("batch")), vec![ScanStatus::Accepted, ScanStatus::BadSignature]);
        assert_eq!(f.pipeline.dedup_sizes().credentials, 1, "only verified credentials are cached");
    }

    /// Issue 20: sealed codes open and ride; each hostile one gets its own
    /// status and reason, and none costs a signature check.
    #[test]
    fn sealed_codes_ride_and_hostile_ones_are_refused_by_name_before_any_signature_check() {
        use crate::ridecode::{TerminalKey, TerminalKeys, seal};
        let f = fixture();
        let mut held = TerminalKeys::new();
        for id in [10u16, 11] {
            held.insert(TerminalKey::from_secret(id, &[id as u8; 32]));
        }
        f.pipeline.set_terminal_keys(held.clone());
        let sealed = |card, counter, key: &TerminalKey| {
            let decoded = RideCode::decode(&code(&f, card, counter)).expect("code");
            seal(&decoded, key).to_vec()
        };
        let today = held.get(11).expect("key 11");
        let genuine = f.pipeline.process(&batch(vec![scan(1, AT_MS, sealed(20, 1, today))]), AT_MS).expect("batch");
        assert_eq!(statuses(&genuine), vec![ScanStatus::Accepted]);
        assert_eq!(genuine.rows[0].card_id, Some(20), "the archive row reads what the seal hid");
        let flipped = |at: usize| {
            let mut bytes = sealed(21, 1, today);
            bytes[at] ^= 0x10;
            bytes
        };
        let hostile = vec![
            (flipped(2), ScanStatus::UnknownTerminalKey, "terminal key 27"),
            (flipped(5), ScanStatus::Undecryptable, "does not open under terminal key 11"),
            (flipped(100), ScanStatus::Undecryptable, "altered"),
            (flipped(206), ScanStatus::Undecryptable, "altered"),
            (sealed(21, 2, &TerminalKey::from_secret(12, &[12; 32])), ScanStatus::UnknownTerminalKey, "not held"),
            (sealed(21, 3, &TerminalKey::from_secret(3, &[3; 32])), ScanStatus::ExpiredTerminalKey, "ran out"),
            (sealed(21, 4, today)[..150].to_vec(), ScanStatus::Malformed, "150 bytes"),
        ];
        let (records, expected): (Vec<_>, Vec<_>) = hostile
            .iter()
            .enumerate()
            .map(|(i, (code, status, _))| (scan(10 + i as u64, AT_MS, code.clone()), *status))
            .unzip();
        let verified = f.pipeline.verify(&batch(records.clone())).expect("shape");
        assert_eq!(verified.signature_counts(), (0, 0), "no hostile code reached a signature check");
        assert!(verified.met_unknown_terminal_key(), "a cluster node reads its key store again for these");
        let known_keys_only: Vec<_> = [1usize, 5].iter().map(|&i| records[i].clone()).collect();
        let verified_known = f.pipeline.verify(&batch(known_keys_only)).expect("shape");
        assert!(!verified_known.met_unknown_terminal_key(), "undecryptable and expired name keys it knows");
        let outcome = f.pipeline.commit(&batch(records), verified, AT_MS);
        assert_eq!(statuses(&outcome), expected);
        for (row, (_, _, reason)) in outcome.rows.iter().zip(&hostile) {
            assert!(row.reason.as_deref().is_some_and(|r| r.contains(reason)), "{:?} lacks {reason:?}", row.reason);
            assert_eq!(row.card_id, None, "nothing is read from a code that did not open");
        }
        let cut_off = FreshnessPolicy {
            unsealed_refused_from_secs: Some(unix_secs_u32(AT_MS)),
            ..config_in(chrono_tz::Asia::Shanghai).freshness
        };
        let strict = Pipeline::new(
            PipelineConfig { freshness: cut_off, ..config_in(chrono_tz::Asia::Shanghai) },
            f.pipeline.issuer_keys().as_ref().clone(),
            [3; 32],
        );
        strict.set_terminal_keys(held.clone());
        // What the gate did decides the cut-off, as it decides the deny
        // list: a gate that opened for a version-1 code let a ride happen
        // (its validator had not heard of the cut-off), and it is charged.
        let gated =
            |seq, card, gate: GateDecision| ScanRecord { gate: gate as i32, ..scan(seq, AT_MS, code(&f, card, 1)) };
        let scans = vec![
            scan(30, AT_MS, code(&f, 22, 1)),
            scan(31, AT_MS, sealed(22, 2, today)),
            gated(32, 23, GateDecision::Refused),
            gated(33, 24, GateDecision::Opened),
        ];
        let verified = strict.verify(&batch(scans.clone())).expect("shape");
        assert_eq!(verified.signature_counts().0, 4, "no retired code's signatures are checked unless its gate opened");
        let outcome = strict.commit(&batch(scans), verified, AT_MS);
        use ScanStatus::{Accepted, FormatRetired};
        assert_eq!(statuses(&outcome), vec![FormatRetired, Accepted, FormatRetired, Accepted]);
        let cards: Vec<Option<u64>> = outcome.rows.iter().map(|r| r.card_id).collect();
        assert_eq!(cards, vec![Some(22), Some(22), Some(23), Some(24)], "a retired code's card is kept on its row");
    }

    #[test]
    fn duplicates_inside_one_batch_are_caught_in_record_order() {
        let f = fixture();
        let c = code(&f, 8, 1);
        let mut copy = scan(2, AT_MS + 1_000, c.clone());
        copy.validator_id = "gate-2".into();
        let outcome =
            f.pipeline.process(&batch(vec![scan(1, AT_MS, c.clone()), scan(1, AT_MS, c), copy]), AT_MS + 2_000);
        let outcome = outcome.expect("batch");
        assert_eq!(statuses(&outcome), vec![ScanStatus::Accepted, ScanStatus::Replay]);
        assert_eq!((outcome.ack.accepted, outcome.ack.redelivered, outcome.ack.rejected), (1, 1, 1));
    }

    #[test]
    fn a_scan_uploaded_too_late_is_a_late_upload_and_one_from_a_clock_ahead_is_stale() {
        let f = fixture();
        let lateness_ms = i64::from(f.pipeline.config().accepted_lateness_secs) * 1000;
        let in_time = f.pipeline.process(&batch(vec![scan(3, AT_MS, code(&f, 9, 3))]), AT_MS + lateness_ms);
        assert_eq!(statuses(&in_time.expect("batch")), vec![ScanStatus::Accepted], "at the lateness exactly");
        let too_late = f.pipeline.process(&batch(vec![scan(1, AT_MS, code(&f, 9, 1))]), AT_MS + lateness_ms + 1);
        let too_late = too_late.expect("batch");
        assert_eq!(statuses(&too_late), vec![ScanStatus::LateUpload]);
        assert!(too_late.rows[0].reason.as_deref().is_some_and(|r| r.contains("later than the accepted lateness")));
        let ahead = f.pipeline.process(&batch(vec![scan(2, AT_MS, code(&f, 9, 2))]), AT_MS - 31_000);
        assert_eq!(statuses(&ahead.expect("batch")), vec![ScanStatus::StaleCode]);
    }

    /// Issue 23: a cluster's ingest node commits unclaimed and the
    /// partition's owner claims after; the archive must be the one node's.
    #[test]
    fn claims_made_by_the_partitions_owner_give_the_rows_one_node_gives() {
        let f = fixture();
        let (c30, c31, c32) = (code(&f, 30, 1), code(&f, 31, 1), code(&f, 32, 1));
        let at_gate = |seq: u64, ms: i64, c: &[u8], validator: &str, kind: WireTapKind| ScanRecord {
            validator_id: validator.into(),
            tap_kind: kind as i32,
            ..scan(seq, AT_MS + ms, c.to_vec())
        };
        let mut forged = c32.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let lateness_ms = i64::from(f.pipeline.config().accepted_lateness_secs) * 1000;
        let first = vec![
            at_gate(1, 0, &c30, "gate-1", WireTapKind::Entry),
            at_gate(1, 0, &c30, "gate-1", WireTapKind::Entry), // the same scan twice
            at_gate(2, 1_000, &c30, "gate-2", WireTapKind::Entry), // the code again: a replay
            at_gate(3, 0, &c31, "gate-1", WireTapKind::Entry),
            at_gate(4, 1_000, &c31, "gate-3", WireTapKind::Exit), // its exit shares the code
            at_gate(5, 0, &forged, "gate-1", WireTapKind::Entry),
            at_gate(6, -lateness_ms - 10_000, &c32, "gate-1", WireTapKind::Entry), // before its credential
        ];
        let mut second = first.clone(); // the whole batch again (its ack was lost)
        second.push(at_gate(7, 2_000, &c32, "gate-4", WireTapKind::Entry));
        let third = vec![at_gate(8, 3_000, &c31, "bus-1", WireTapKind::Single)]; // a third use
        let batches = [(batch(first), 2_000), (batch(second), 3_000), (batch(third), 4_000)];

        let one_node = fixture();
        let (ingest, owner) = (fixture(), fixture());
        let (mut single_rows, mut single_redelivered) = (Vec::new(), 0);
        let (mut cluster_rows, mut cluster_redelivered) = (Vec::new(), 0);
        for (batch, after_ms) in &batches {
            let outcome = one_node.pipeline.process(batch, AT_MS + after_ms).expect("batch");
            single_redelivered += outcome.ack.redelivered;
            single_rows.extend(outcome.rows);

            let verified = ingest.pipeline.verify(batch).expect("batch");
            let unclaimed = ingest.pipeline.commit_unclaimed(batch, verified, AT_MS + after_ms);
            assert_eq!(unclaimed.rows.len(), batch.scans.len(), "a row for every scan, none dropped yet");
            assert_eq!(unclaimed.ack.redelivered, 0);
            let claimed = owner.pipeline.claim_rows(unclaimed.rows);
            cluster_redelivered += claimed.redelivered;
            cluster_rows.extend(claimed.rows);
        }
        let statuses: Vec<ScanStatus> = single_rows.iter().map(|r| r.status).collect();
        use ScanStatus::*;
        assert_eq!(
            statuses,
            vec![Accepted, Replay, Accepted, Accepted, BadSignature, ExpiredCredential, Accepted, Replay],
            "the scenario covers each verdict"
        );
        assert_eq!(single_redelivered, 8, "one inside the first batch, the whole of it again");
        assert_eq!(cluster_rows, single_rows, "row for row, verdicts and reasons included");
        assert_eq!(cluster_redelivered, single_redelivered);
        assert!(owner.pipeline.claim_rows(Vec::new()).rows.is_empty());
    }

    /// Issue 23: a terminal key's trust has ended by one node's clock
    /// (it keeps the key since) and not by another's (it holds it, its end
    /// known). A code read before the end is accepted at both, its card
    /// read; one read after is refused at both, and at a node that no
    /// longer keeps the key, with no card read: every copy of a scan gets
    /// one verdict and one partition, whichever node it reaches and in
    /// whichever order, and the owner keeps one.
    #[test]
    fn a_code_under_a_key_whose_trust_ended_gets_one_verdict_and_one_partition_at_every_node() {
        use crate::cluster::partition_of_row;
        use crate::ridecode::{TerminalKey, TerminalKeys, seal};
        let key = |id: u16| TerminalKey::from_secret(id, &[id as u8; 32]);
        let read_at = AT_MS / 1000;
        for (end, verdict) in [(read_at + 1, ScanStatus::Accepted), (read_at, ScanStatus::ExpiredTerminalKey)] {
            let (not_yet, ran_out, forgot) = (fixture(), fixture(), fixture());
            let mut held = TerminalKeys::from_iter([key(10)]);
            held.insert_ending(key(9), Some(end));
            not_yet.pipeline.set_terminal_keys(held);
            ran_out.pipeline.set_terminal_keys(TerminalKeys::from_iter([key(10)]).with_ran_out([(key(9), end)]));
            forgot.pipeline.set_terminal_keys(TerminalKeys::from_iter([key(10)]));
            let decoded = RideCode::decode(&code(&not_yet, 40, 1)).expect("code");
            let sent = batch(vec![scan(1, AT_MS, seal(&decoded, &key(9)).to_vec())]);
            let row_at = |f: &Fixture| {
                let verified = f.pipeline.verify(&sent).expect("batch");
                f.pipeline.commit_unclaimed(&sent, verified, AT_MS + 5_000).rows.remove(0)
            };
            let (first, second, unread) = (row_at(&not_yet), row_at(&ran_out), row_at(&forgot));
            let accepted = verdict == ScanStatus::Accepted;
            assert_eq!((first.status, first.card_id), (verdict, accepted.then_some(40)), "end {end}");
            assert_eq!(second, first, "end {end}: the same row at either node");
            assert_eq!(partition_of_row(&second, 64), partition_of_row(&first, 64));
            match accepted {
                true => assert_eq!((unread.status, unread.card_id), (ScanStatus::ExpiredTerminalKey, None)),
                false => assert_eq!(unread, first, "a node that no longer keeps the key: the same row"),
            }
            let owner = fixture();
            let kept = owner.pipeline.claim_rows(vec![second.clone()]);
            let dropped = owner.pipeline.claim_rows(vec![first.clone()]);
            assert_eq!((kept.rows.len(), kept.redelivered, dropped.rows.len(), dropped.redelivered), (1, 0, 0, 1));
            let priced = crate::fares::is_ride(&kept.rows[0]);
            assert_eq!(priced, verdict == ScanStatus::Accepted, "end {end}: a ride exactly when accepted");
        }
    }

    #[test]
    fn restored_rows_catch_redeliveries_and_replays_in_a_fresh_pipeline() {
        let f = fixture();
        let c = code(&f, 10, 1);
        let first = f.pipeline.process(&batch(vec![scan(1, AT_MS, c.clone())]), AT_MS).expect("batch");
        let restarted = fixture();
        restarted.pipeline.restore(&first.rows, AT_MS);
        let mut copy = scan(5, AT_MS + 1_000, c.clone());
        copy.validator_id = "gate-2".into();
        let again = restarted.pipeline.process(&batch(vec![scan(1, AT_MS, c), copy]), AT_MS + 2_000).expect("batch");
        assert_eq!(again.ack.redelivered, 1);
        assert_eq!(statuses(&again), vec![ScanStatus::Replay]);
    }

    #[test]
    fn a_batch_over_the_limit_or_without_a_gateway_is_refused_whole() {
        let f = fixture();
        let max = f.pipeline.config().batch_scans_max;
        let records = vec![scan(1, AT_MS, vec![]); max + 1];
        assert_eq!(f.pipeline.verify(&batch(records)).err(), Some(BatchError::TooManyScans { count: max + 1, max }));
        let nameless = ScanBatch { gateway_id: String::new(), batch_seq: 1, scans: vec![] };
        assert_eq!(f.pipeline.verify(&nameless).err(), Some(BatchError::MissingGatewayId));
    }

    fn fixture_in(time_zone: chrono_tz::Tz) -> Fixture {
        fixture_with(config_in(time_zone))
    }

    pub(super) fn fixture_with(config: PipelineConfig) -> Fixture {
        let issuer = IssuerSigningKey::from_seed(1, &[3; 32]).expect("issuer");
        let mut keys = IssuerPublicKeys::new();
        keys.insert(1, issuer.public_key());
        Fixture { pipeline: Pipeline::new(config, keys, [5; 32]), issuer }
    }

    /// Issue 10: what is charged is what the gate let through. A gate that
    /// opened for a card the server has since denied let a ride happen; a
    /// gate that refused did not, whatever the server's list says; without
    /// a word from the gateway the server's list decides.
    #[test]
    fn the_gate_decides_what_was_a_ride() {
        let f = fixture();
        f.pipeline.set_denied(30, true);
        let with_gate = |seq: u64, card: u64, gate: GateDecision| ScanRecord {
            gate: gate as i32,
            deny_list_version: 7,
            ..scan(seq, AT_MS, code(&f, card, 1))
        };
        let scans = vec![
            with_gate(1, 30, GateDecision::Opened),
            with_gate(2, 31, GateDecision::Refused),
            with_gate(3, 32, GateDecision::Unspecified),
            ScanRecord { gate: 99, ..with_gate(4, 30, GateDecision::Unspecified) },
        ];
        let outcome = f.pipeline.process(&batch(scans), AT_MS).expect("batch");
        use ScanStatus::{Accepted, Denied};
        assert_eq!(statuses(&outcome), vec![Accepted, Denied, Accepted, Denied]);
        assert!(outcome.rows[1].reason.as_deref().is_some_and(|r| r.contains("the gate refused")));
        assert!(
            outcome.rows[3].reason.as_deref().is_some_and(|r| r.contains("is denied")),
            "an unknown value says nothing"
        );
        let gates: Vec<Option<bool>> = outcome.rows.iter().map(|r| r.gate_opened).collect();
        assert_eq!(gates, vec![Some(true), Some(false), None, None]);
        assert!(outcome.rows.iter().all(|r| r.deny_list_version == Some(7)));
    }

    /// Issue 10: a client written from the docs had one code accepted three
    /// times, as entry, exit and single. One code pays for one ride.
    #[test]
    fn one_code_is_accepted_for_an_entry_and_its_exit_and_nothing_more() {
        let f = fixture();
        let c = code(&f, 21, 1);
        let taps = [(WireTapKind::Exit, "gate-2"), (WireTapKind::Entry, "gate-1"), (WireTapKind::Single, "bus-1")];
        let scans: Vec<ScanRecord> = taps
            .iter()
            .enumerate()
            .map(|(i, (kind, validator))| ScanRecord {
                validator_id: validator.to_string(),
                tap_kind: *kind as i32,
                ..scan(i as u64, AT_MS + i as i64 * 1_000, c.clone())
            })
            .collect();
        let outcome = f.pipeline.process(&batch(scans.clone()), AT_MS + 5_000).expect("batch");
        assert_eq!(statuses(&outcome), vec![ScanStatus::Accepted, ScanStatus::Accepted, ScanStatus::Replay]);
        let restarted = fixture();
        restarted.pipeline.restore(&outcome.rows, AT_MS + 5_000);
        let mut again = scans[1].clone();
        again.validator_id = "gate-9".into();
        let replayed = restarted.pipeline.process(&batch(vec![again]), AT_MS + 6_000).expect("batch");
        assert_eq!(statuses(&replayed), vec![ScanStatus::Replay], "restored uses still count");
    }

    /// Issue 17 item 14: numbers above 2^63 - 1 were archived as UInt64,
    /// which Spark, Trino, BigQuery and Java read as decimals or refuse.
    #[test]
    fn numbers_beyond_a_signed_64_bit_integer_are_malformed_and_archived_within_it() {
        let f = fixture();
        let at = AT_MS;
        let scans = vec![
            ScanRecord { validator_seq: ID_MAX, deny_list_version: ID_MAX, ..scan(0, at, code(&f, 21, 0)) },
            ScanRecord { validator_seq: ID_MAX + 1, ..scan(0, at, code(&f, 22, 1)) },
            ScanRecord { validator_seq: u64::MAX, ..scan(0, at, code(&f, 23, 2)) },
            ScanRecord { deny_list_version: u64::MAX, ..scan(1, at, code(&f, 24, 3)) },
            ScanRecord { validator_seq: 0, ..scan(0, at, code(&f, 25, 4)) },
        ];
        let outcome = f.pipeline.process(&batch(scans), AT_MS).expect("batch");
        use ScanStatus::{Accepted, Malformed};
        assert_eq!(statuses(&outcome), vec![Accepted, Malformed, Malformed, Malformed, Accepted]);
        for (row, raw) in outcome.rows[1..4].iter().zip([ID_MAX + 1, u64::MAX, u64::MAX]) {
            assert!(row.reason.as_deref().is_some_and(|r| r.contains(&format!(" {raw} is above 2^63 - 1"))), "{row:?}");
        }
        assert_eq!(outcome.rows[2].validator_seq, u64::MAX, "archived as sent, never clamped");
    }

    /// Review fault 1: a scan time at the top of chrono's range stopped the
    /// server from inside commit. Every time outside what a ride code can
    /// express is now malformed, filed under the day it arrived.
    #[test]
    fn scan_times_a_ride_code_cannot_express_are_malformed_not_a_panic() {
        for zone in [chrono_tz::Asia::Shanghai, chrono_tz::America::Los_Angeles, chrono_tz::Pacific::Kiritimati] {
            let f = fixture_in(zone);
            let times = [8_210_266_876_799_999, i64::MAX, i64::MIN, -1, SCAN_TIME_MS_MAX + 1];
            let scans = times.iter().enumerate().map(|(i, &at)| scan(i as u64, at, code(&f, 11, i as u32))).collect();
            let outcome = f.pipeline.process(&batch(scans), AT_MS).expect("batch");
            assert_eq!(statuses(&outcome), vec![ScanStatus::Malformed; times.len()], "{zone}");
            let arrival_day = f.pipeline.config().service_day.service_date(AT_MS);
            for (row, raw) in outcome.rows.iter().zip(times) {
                assert!(
                    row.reason.as_deref().is_some_and(|r| r.contains(&format!("validator_time_ms {raw} "))),
                    "{row:?}"
                );
                assert_eq!(Some(row.service_date), arrival_day, "{zone}");
                // Issue 17 item 13: archived as sent, ±2^63 ms broke every
                // analyst's query on scanned_at.
                assert!(Horizons::scan_time_in_range(row.scanned_at), "{row:?}");
            }
        }
        let f = fixture();
        let edges = [SCAN_TIME_MS_MIN, SCAN_TIME_MS_MAX];
        let scans = edges.iter().enumerate().map(|(i, &at)| scan(i as u64, at, code(&f, 12, i as u32))).collect();
        let outcome = f.pipeline.process(&batch(scans), AT_MS).expect("batch");
        // In range, so not malformed; both outside the credential's window,
        // which is checked before the arrival (docs/ride-code.md's order).
        assert_eq!(statuses(&outcome), vec![ScanStatus::ExpiredCredential; 2], "in range, not in the window");
    }

    /// Review fault 3: a copy scanned in the last millisecond of freshness
    /// and received at the end of the accepted lateness was accepted twice,
    /// after a sweep or a restore had dropped the replay key.
    #[test]
    fn a_replay_in_the_last_millisecond_of_freshness_is_caught_after_a_sweep_and_a_restore() {
        let f = fixture();
        let policy = f.pipeline.config().freshness;
        let created = unix_secs_u32(AT_MS) - 5;
        let last_ms = (i64::from(created + policy.code_validity_secs + policy.clock_skew_secs)) * 1000 + 999;
        let received = last_ms + i64::from(f.pipeline.config().accepted_lateness_secs) * 1000;
        let original = f.pipeline.process(&batch(vec![scan(1, last_ms, code(&f, 13, 1))]), received).expect("batch");
        assert_eq!(statuses(&original), vec![ScanStatus::Accepted]);
        let mut copy = scan(1, last_ms, code(&f, 13, 1));
        copy.validator_id = "gate-2".into();
        f.pipeline.sweep(received);
        let again = f.pipeline.process(&batch(vec![copy.clone()]), received).expect("batch");
        assert_eq!(statuses(&again), vec![ScanStatus::Replay], "after a sweep");
        let restarted = fixture();
        restarted.pipeline.restore(&original.rows, received);
        let again = restarted.pipeline.process(&batch(vec![copy]), received).expect("batch");
        assert_eq!(statuses(&again), vec![ScanStatus::Replay], "after a restore");
    }

    /// Review fault 4: the re-delivery entry followed the validator's clock,
    /// so a stale scan resent 30 s later, or an accepted one resent after
    /// lateness + skew, was archived again.
    #[test]
    fn a_resend_is_a_redelivery_for_lateness_plus_skew_after_it_arrived() {
        let f = fixture();
        let lateness_ms = i64::from(f.pipeline.config().accepted_lateness_secs) * 1000;
        let skew_ms = i64::from(f.pipeline.config().freshness.clock_skew_secs) * 1000;
        let old = scan(1, AT_MS - lateness_ms - 10_000, code(&f, 14, 1));
        let at_the_edge = scan(2, AT_MS - lateness_ms, code(&f, 14, 2));
        let refused = f.pipeline.process(&batch(vec![old, at_the_edge]), AT_MS).expect("batch");
        // Issue 17 item 16: the credential window is checked before the
        // arrival, as docs/ride-code.md orders them: a scan both late and
        // outside its credential's window is `expired_credential`.
        assert_eq!(statuses(&refused), vec![ScanStatus::ExpiredCredential, ScanStatus::ExpiredCredential]);
        let fresh = scan(3, AT_MS - 1_000, code(&f, 14, 3));
        let accepted = f.pipeline.process(&batch(vec![fresh.clone()]), AT_MS).expect("batch");
        assert_eq!(statuses(&accepted), vec![ScanStatus::Accepted]);
        let later = AT_MS + lateness_ms + skew_ms - 1;
        f.pipeline.sweep(later);
        let resend = batch(vec![
            scan(1, AT_MS - lateness_ms - 10_000, code(&f, 14, 1)),
            scan(2, AT_MS - lateness_ms, code(&f, 14, 2)),
            fresh,
        ]);
        let again = f.pipeline.process(&resend, later).expect("batch");
        assert_eq!((again.rows.len(), again.ack.redelivered), (0, 3), "{:?}", statuses(&again));
        let restarted = fixture();
        restarted.pipeline.restore(&[refused.rows, accepted.rows].concat(), later);
        assert_eq!(restarted.pipeline.process(&resend, later).expect("batch").ack.redelivered, 3);
    }

    /// Review fault 5: a long gateway_id was copied into every row. Every
    /// id is bounded, rows share the gateway id, overlong ids are cut.
    #[test]
    fn ids_are_bounded_and_rows_share_one_gateway_id() {
        let f = fixture();
        let max = f.pipeline.config().id_bytes_max;
        let long_gateway = ScanBatch { gateway_id: "g".repeat(max + 1), batch_seq: 1, scans: vec![] };
        assert_eq!(f.pipeline.verify(&long_gateway).err(), Some(BatchError::GatewayIdTooLong { len: max + 1, max }));
        let mut long_ids = scan(1, AT_MS, code(&f, 15, 1));
        long_ids.route_id = format!("{}é", "r".repeat(max - 1));
        let mut longest = scan(2, AT_MS, code(&f, 15, 2));
        longest.stop_id = "s".repeat(max);
        let batch = ScanBatch { gateway_id: "g".repeat(max), batch_seq: 1, scans: vec![long_ids, longest] };
        let outcome = f.pipeline.process(&batch, AT_MS).expect("batch");
        assert_eq!(statuses(&outcome), vec![ScanStatus::Malformed, ScanStatus::Accepted]);
        assert_eq!(
            outcome.rows[0].reason.as_deref(),
            Some(format!("route_id is {} bytes, the limit is {max}", max + 1).as_str())
        );
        assert_eq!(outcome.rows[0].route_id, "r".repeat(max - 1), "cut at a character boundary");
        assert_eq!(outcome.rows[1].stop_id.len(), max);
        assert!(Arc::ptr_eq(&outcome.rows[0].gateway_id, &outcome.rows[1].gateway_id));
    }

    /// Review (denial of service): a resent frame was verified again in
    /// full. A fingerprint already in the re-delivery index costs a lookup.
    #[test]
    fn a_redelivered_batch_checks_no_signature() {
        let f = fixture();
        let scans = vec![scan(1, AT_MS, code(&f, 16, 1)), scan(2, AT_MS, code(&f, 17, 1))];
        let first = f.pipeline.verify(&batch(scans.clone())).expect("batch");
        assert_eq!(first.signature_counts(), (4, 0), "two riders' first scans: issuer and user each");
        f.pipeline.commit(&batch(scans.clone()), first, AT_MS);
        let again = f.pipeline.verify(&batch(scans.clone())).expect("batch");
        assert_eq!(again.signature_counts(), (0, 0));
        assert_eq!(f.pipeline.commit(&batch(scans), again, AT_MS).ack.redelivered, 2);
    }

    /// If a re-delivery's entry expires between the look in step 1 and the
    /// claim in step 3, its signatures are checked then, alone: a decision
    /// never rests on a check that was skipped.
    #[test]
    fn a_redelivery_whose_entry_expires_before_commit_is_verified_then() {
        let f = fixture();
        let mut forged = code(&f, 18, 2);
        forged[188] ^= 1;
        let scans = vec![scan(1, AT_MS, code(&f, 18, 1)), scan(2, AT_MS, forged)];
        f.pipeline.process(&batch(scans.clone()), AT_MS).expect("first delivery");
        let again = f.pipeline.verify(&batch(scans.clone())).expect("batch");
        assert_eq!(again.signature_counts(), (0, 0), "taken for re-deliveries");
        f.pipeline.sweep(i64::MAX);
        let outcome = f.pipeline.commit(&batch(scans), again, AT_MS);
        assert_eq!(statuses(&outcome), vec![ScanStatus::Accepted, ScanStatus::BadSignature]);
    }

    /// A gateway's certificate speaks for its own validators only: a scan
    /// from another depot's validator is archived, refused and never a
    /// ride, even with a good code and an open gate.
    #[test]
    fn a_scan_from_a_validator_of_another_gateway_is_refused() {
        let f = fixture();
        let scope = GatewayScope::new("g", vec!["g/".into()]).expect("scope");
        let (ours, theirs) = (scan(1, AT_MS, code(&f, 21, 1)), scan(2, AT_MS, code(&f, 22, 1)));
        let ours = ScanRecord { validator_id: "g/gate-1".into(), ..ours };
        let theirs =
            ScanRecord { validator_id: "h/gate-1".into(), gate: crate::wire::GateDecision::Opened as i32, ..theirs };
        let scans = vec![ours, theirs];
        let verified = f.pipeline.verify_records(&scans, 8, &scope);
        let outcome = f.pipeline.commit(&batch(scans), verified, AT_MS);
        assert_eq!(statuses(&outcome), vec![ScanStatus::Accepted, ScanStatus::ForeignValidator]);
        let reason = outcome.rows[1].reason.as_deref().unwrap_or_default();
        assert!(reason.contains("\"h/gate-1\" is not behind gateway \"g\""), "{reason}");
        assert_eq!(outcome.ack.accepted, 1);
        assert_eq!(outcome.ack.rejections[0].scan_status(), Some(ScanStatus::ForeignValidator));
    }

    /// Review: a scan pushed first by a gateway that does not speak for
    /// its validator took the scan's id, and the real delivery from its own
    /// gateway was then acked as a re-delivery and never charged.
    #[test]
    fn a_foreign_copy_does_not_make_the_real_delivery_a_redelivery() {
        let f = fixture();
        let record = ScanRecord { validator_id: "g/gate-1".into(), ..scan(1, AT_MS, code(&f, 23, 1)) };
        let thief = GatewayScope::new("h", vec!["h/".into()]).expect("scope");
        let owner = GatewayScope::new("g", vec!["g/".into()]).expect("scope");
        let push = |scope: &GatewayScope| {
            let batch = ScanBatch { gateway_id: scope.gateway_id().into(), batch_seq: 1, scans: vec![record.clone()] };
            let verified = f.pipeline.verify_records(&batch.scans, 8, scope);
            f.pipeline.commit(&batch, verified, AT_MS)
        };
        let foreign = push(&thief);
        assert_eq!(statuses(&foreign), vec![ScanStatus::ForeignValidator]);
        assert_eq!(push(&thief).ack.redelivered, 1, "the foreign copy's own re-delivery is caught");
        let real = push(&owner);
        assert_eq!(statuses(&real), vec![ScanStatus::Accepted]);
        assert_ne!(real.rows[0].scan_id, foreign.rows[0].scan_id);
        assert_eq!(real.rows[0].scan_id, fingerprint(&record));
    }

    /// docs/protocol.md's test vector for `scan_id`, which gateways use to
    /// audit the archive against their acks (computed there in Python).
    #[test]
    fn scan_id_test_vector() {
        let record = ScanRecord {
            validator_id: "depot-1-gate-01".into(),
            validator_seq: 42,
            validator_time_ms: 1_763_604_000_000,
            route_id: "metro-1".into(),
            stop_id: "station-01".into(),
            tap_kind: WireTapKind::Entry as i32,
            ride_code: vec![1, 2, 3],
            gate: crate::wire::GateDecision::Opened as i32,
            deny_list_version: 9,
        };
        assert_eq!(hex::encode(fingerprint(&record)), "1cf78eea396582a20e2e41ccc87af98b");
        let other_gate = ScanRecord { gate: 0, deny_list_version: 0, ..record };
        assert_eq!(hex::encode(fingerprint(&other_gate)), "1cf78eea396582a20e2e41ccc87af98b", "gate is left out");
    }

    /// Slices of a batch verified apart and appended commit as the whole.
    #[test]
    fn slices_appended_in_order_commit_as_the_whole_batch() {
        let (whole, sliced) = (fixture(), fixture());
        let mut forged = code(&whole, 19, 3);
        forged[60] ^= 1;
        let scans: Vec<ScanRecord> =
            (0..5).map(|i| scan(i, AT_MS, if i == 3 { forged.clone() } else { code(&whole, 19 + i, 1) })).collect();
        let expected = whole.pipeline.process(&batch(scans.clone()), AT_MS).expect("batch");
        let scope = GatewayScope::every_validator("g");
        let mut verified = sliced.pipeline.verify_records(&scans[..2], 1, &scope);
        verified.append(sliced.pipeline.verify_records(&scans[2..], 4, &scope));
        assert_eq!(verified.signature_counts(), (10, 2), "the user signature covers the issuer's too");
        assert_eq!(sliced.pipeline.commit(&batch(scans), verified, AT_MS), expected);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Arbitrary times, id lengths, codes and arrival times: nothing
        /// panics, every record is answered once (a row or a re-delivery),
        /// and a row's size is bounded whatever the input's.
        #[test]
        fn arbitrary_times_and_lengths_are_answered_with_bounded_rows(
            records in proptest::collection::vec(
                (proptest::prelude::any::<i64>(), 0usize..300, 0usize..300, proptest::prelude::any::<bool>(), 0u64..4),
                1..12,
            ),
            received_offset_ms in -400_000_000_000i64..400_000_000_000,
        ) {
            let f = fixture();
            let max = f.pipeline.config().id_bytes_max;
            let scans: Vec<ScanRecord> = records
                .iter()
                .enumerate()
                .map(|(i, &(at, route_len, stop_len, valid_code, seq))| {
                    let ride_code = if valid_code { code(&f, 20 + i as u64, 1) } else { vec![7; i] };
                    let near_now = if at % 2 == 0 { AT_MS + at % 1_000_000_000 } else { at };
                    ScanRecord {
                        route_id: "é".repeat(route_len / 2),
                        stop_id: "s".repeat(stop_len),
                        ..scan(seq, near_now, ride_code)
                    }
                })
                .collect();
            let received = AT_MS + received_offset_ms;
            let outcome = f.pipeline.process(&batch(scans.clone()), received).expect("a well-formed batch");
            let ack = &outcome.ack;
            proptest::prop_assert_eq!(outcome.rows.len() + ack.redelivered as usize, scans.len());
            proptest::prop_assert_eq!((ack.accepted + ack.rejected) as usize, outcome.rows.len());
            for row in &outcome.rows {
                proptest::prop_assert!(row.validator_id.len() <= max && row.route_id.len() <= max);
                proptest::prop_assert!(row.stop_id.len() <= max && row.gateway_id.len() <= max);
                proptest::prop_assert!(row.reason.as_ref().is_none_or(|r| r.len() <= 256), "{:?}", row.reason);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Whatever bytes arrive as ride codes or tap kinds, the pipeline
        /// answers every record, archives each once, and accepts none.
        #[test]
        fn arbitrary_records_are_answered_and_never_accepted(
            codes in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..260), 1..8),
            tap_kind in -2i32..6,
        ) {
            let f = fixture();
            let scans: Vec<ScanRecord> = codes
                .into_iter()
                .enumerate()
                .map(|(i, code)| ScanRecord { tap_kind, ..scan(i as u64, AT_MS, code) })
                .collect();
            let count = scans.len();
            let outcome = f.pipeline.process(&batch(scans), AT_MS).expect("a well-formed batch");
            proptest::prop_assert_eq!(outcome.rows.len(), count);
            proptest::prop_assert_eq!(outcome.ack.accepted, 0);
            proptest::prop_assert_eq!(outcome.ack.rejections.len(), count);
        }
    }
}
