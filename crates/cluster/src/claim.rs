//! A partition's owner at work (docs/scale-out.md, "Partition owners"):
//! the rows ingest nodes appended to the scans stream, claimed in stream
//! order (`Pipeline::claim_rows`: re-deliveries dropped, replays found)
//! and appended to the partition's claimed log, which is then to the
//! partition what the node's own log is to a single node.
//!
//! The claimed log has one writer: every append expects the end the
//! owner last saw (`StreamLog::append_after`), so an owner that lost its
//! lease and did not notice (a paused process) is refused by the server
//! the moment another owner has written. The claims live in a pipeline
//! of the partition's own, rebuilt from the claimed log when the owner
//! starts and dropped when it stops, so claims that never reached the
//! log die with it: claiming is deterministic in stream order, and the
//! next owner makes the same ones again.
//!
//! Deterministic also in time: whether a remembered scan or code still
//! counts is judged by each row's own arrival time (the dedup index's
//! claims take it), and entries are forgotten by the partition's stream
//! time (its latest arrival, less [`STREAM_TIME_MARGIN_MS`]), never by the
//! owner's clock. An owner that starts an hour late decides as one that
//! never stopped.
//!
//! The owner also ends segments (`CutRecord`): at once when the rows
//! since its last cut reach `segment_rows_max`; and when
//! `segment_age_max` has passed since it (rows or none, so a quiet
//! partition's days close too), it reads where the partition's scans
//! end, claims up to there and appends a cut saying every scan received
//! before that moment, less the arrival allowance, is claimed, and which
//! service days that closes. Cuts go through the same fence, so only the
//! owner decides where the archive's files end and when its days close.
//!
//! At a cut every `checkpoint_interval` the owner writes a checkpoint
//! (`crate::checkpoints`): where its claiming stands and its dedup
//! indexes. A new owner loads the newest that its claimed log still
//! vouches for and reads the log on from its cut, so a failover reads one
//! interval of records, not the stream's life, and the streams can be
//! given up below the oldest checkpoint kept (`crate::retention`).

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::NaiveDate;
use farestream_core::clock::UnixMillis;
use farestream_core::cluster::checkpoint::ClaimCheckpoint;
use farestream_core::cluster::segments::closed_through;
use farestream_core::cluster::{ClaimedEntry, ClaimedRecord, CutRecord, Partition};
use farestream_core::ingest::{ClaimedRows, Pipeline};
use farestream_core::journal;
use farestream_core::scan::ArchivedScan;
use farestream_core::service_day::ServiceDayPolicy;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::checkpoints::{ClaimCheckpoints, KeptCheckpoint};
use crate::stream_log::{StreamLog, StreamLogError};

/// The two logs of the cluster: what ingest nodes append, and what
/// partition owners claimed from it; and the owners' checkpoints.
#[derive(Clone, Copy)]
pub struct ClaimLogs<'a> {
    pub scans: &'a StreamLog,
    pub claimed: &'a StreamLog,
    pub checkpoints: &'a ClaimCheckpoints,
}

/// Why an owner stopped claiming a partition. Whatever the reason, its
/// pipeline is dropped: the next owner (this node or another) starts
/// from the claimed log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimStop {
    /// Asked to stop.
    Stopped,
    /// The owner's term ended or the partition left its watch.
    NotHeld,
    /// Another owner appended to the claimed log since this one read it.
    Fenced,
}

#[derive(Debug, Error)]
pub enum ClaimError {
    #[error(transparent)]
    Stream(#[from] StreamLogError),
    /// A record that does not decode: the partition stops rather than
    /// skip an acknowledged scan.
    #[error("partition {partition}: the {log} record at sequence {sequence} is damaged: {why}")]
    Damaged { partition: Partition, log: &'static str, sequence: u64, why: String },
    /// Checkpoints of this claimed log are kept but none can be read:
    /// the streams may have been given up below them, so reading the
    /// claimed log from its start could forget claims. The partition
    /// stops rather than accept a re-delivery twice.
    #[error("partition {partition}: no checkpoint of its claimed log can be read ({why}); claiming waits for one")]
    NoCheckpoint { partition: Partition, why: String },
}

/// How an owner reads and cuts.
#[derive(Debug, Clone, Copy)]
pub struct ClaimSettings {
    /// How long one read waits for the next record before the owner looks
    /// at its term and its stop again.
    pub read_wait: Duration,
    /// A segment is cut once it holds this many rows.
    pub segment_rows_max: u64,
    /// A segment is cut this long after the last cut, rows or none.
    pub segment_age_max: Duration,
    /// How long after its receipt a scan may still reach the scans
    /// stream: the append timeout and the nodes' clock skew. A cut taken
    /// at `t` covers the arrivals before `t` less this.
    pub arrival_allowance_ms: i64,
    /// Where service days start and end, and how long after its end a
    /// day stays open: which days a cut closes.
    pub service_day: ServiceDayPolicy,
    pub accepted_lateness_ms: i64,
    /// A checkpoint is written at the first cut this long after the last
    /// (and at the first cut after the owner starts).
    pub checkpoint_interval: Duration,
}

/// The clock an owner reads, in Unix milliseconds: when a cut is taken,
/// how old a segment is. The server passes its own (a test's is manual).
pub type WallClock<'a> = &'a (dyn Fn() -> UnixMillis + Send + Sync);

/// How far behind the latest arrival claimed so far a scan still to be
/// claimed may have been received: an append is acknowledged, or the
/// batch refused, within `cluster.append_ack_timeout_ms` (10 minutes at
/// most) of its receipt, and nodes' clocks agree within minutes. Entries
/// expired by the stream time less this are forgotten, for no scan still
/// to come can need them.
pub const STREAM_TIME_MARGIN_MS: i64 = 3_600_000;

/// How much stream time passes between two sweeps of a partition's
/// dedup indexes.
const SWEEP_EVERY_STREAM_MS: i64 = 60_000;

/// Where a partition's claiming resumes.
#[derive(Debug, Default)]
struct Resume {
    /// The claimed log's last sequence (0: empty): every append expects it.
    claimed_through: u64,
    /// The scans stream's first record still to claim.
    scans_from: u64,
    /// Scans of the record at `scans_from` already claimed, when the last
    /// owner stopped between the parts of its claimed rows.
    claimed_part: HashSet<[u8; 16]>,
    /// The latest arrival among the rows claimed so far.
    stream_ms: UnixMillis,
    /// The segment being filled.
    segment: Segment,
}

/// The rows since the last cut, and the cut falling due.
#[derive(Debug)]
struct Segment {
    rows: u64,
    /// When it began, by the owner's clock (its start, or its last cut).
    opened_ms: UnixMillis,
    /// The last cut's `arrivals_before_ms` (`i64::MIN` before the first)
    /// and the last day it closed: cuts never move either back.
    arrivals_before_ms: i64,
    closed_through: Option<NaiveDate>,
    /// A cut decided at `at_ms`, to be appended once every scans record up
    /// to `scans_through` (the partition's end then) is claimed.
    due: Option<(u64, UnixMillis)>,
}

impl Default for Segment {
    fn default() -> Segment {
        Segment { rows: 0, opened_ms: 0, arrivals_before_ms: i64::MIN, closed_through: None, due: None }
    }
}

impl Resume {
    /// Notes rows claimed: the stream time moves to their latest arrival.
    fn note(&mut self, rows: &[ArchivedScan]) {
        self.stream_ms = rows.iter().map(|r| r.received_at).fold(self.stream_ms, i64::max);
    }

    /// Whether the stream time has moved on enough since the last sweep.
    fn sweep_due(&self, last_sweep_ms: UnixMillis) -> bool {
        self.stream_ms.saturating_sub(last_sweep_ms) >= SWEEP_EVERY_STREAM_MS
    }

    /// Entries expired by this moment matter to no scan still to come.
    fn forget_before(&self) -> UnixMillis {
        self.stream_ms.saturating_sub(STREAM_TIME_MARGIN_MS)
    }
}

/// Claims partition `partition` until stopped, no longer held (`holds`,
/// asked before each read and each append), fenced out, or failed. Takes
/// the pipeline (fresh, with no claims) and drops it on return.
pub async fn claim_partition(
    logs: ClaimLogs<'_>,
    partition: Partition,
    pipeline: Pipeline,
    (settings, now): (ClaimSettings, WallClock<'_>),
    holds: impl Fn() -> bool,
    stop: &CancellationToken,
) -> Result<ClaimStop, ClaimError> {
    let Some(mut resume) = rebuild(logs, partition, &pipeline, settings, stop).await? else {
        return Ok(ClaimStop::Stopped);
    };
    resume.segment.opened_ms = now();
    let mut last_sweep_ms = resume.stream_ms;
    let mut last_checkpoint_ms: Option<UnixMillis> = None;
    let mut reader = logs.scans.reader(partition, resume.scans_from).await?;
    loop {
        if stop.is_cancelled() {
            return Ok(ClaimStop::Stopped);
        }
        if !holds() {
            return Ok(ClaimStop::NotHeld);
        }
        let at_ms = now();
        match cut_when_due(logs, partition, settings, at_ms, &mut resume).await? {
            CutDue::NotDue => {}
            CutDue::Fenced => return Ok(ClaimStop::Fenced),
            CutDue::Appended => {
                let interval_ms = i64::try_from(settings.checkpoint_interval.as_millis()).unwrap_or(i64::MAX);
                if last_checkpoint_ms.is_none_or(|last| at_ms.saturating_sub(last) >= interval_ms)
                    && resume.claimed_part.is_empty()
                {
                    write_checkpoint(logs.checkpoints, partition, &pipeline, &resume).await;
                    last_checkpoint_ms = Some(at_ms);
                }
            }
        }
        let Some(record) = reader.next(settings.read_wait).await? else { continue };
        let mut rows = journal::decode(&record.payload).map_err(|e| ClaimError::Damaged {
            partition,
            log: "scans",
            sequence: record.sequence,
            why: e.to_string(),
        })?;
        // The rest of a record the last owner claimed in part: its first
        // part counted the whole record's re-deliveries.
        let resumed_inside = record.sequence == resume.scans_from && !resume.claimed_part.is_empty();
        if resumed_inside {
            rows.retain(|row| !resume.claimed_part.contains(&row.scan_id));
        }
        // Written even with no rows left (all re-deliveries): every scans
        // record has its claimed record, so the count is kept and the
        // next owner resumes after it.
        let ClaimedRows { rows, redelivered } = pipeline.claim_rows(rows);
        let redelivered = if resumed_inside { 0 } else { redelivered };
        resume.note(&rows);
        if resume.sweep_due(last_sweep_ms) {
            pipeline.sweep(resume.forget_before());
            last_sweep_ms = resume.stream_ms;
        }
        let whole = ClaimedRecord { scans_sequence: record.sequence, redelivered, more_follow: false, rows };
        for part in parts(whole, logs.claimed.record_bytes_max()) {
            if !holds() {
                return Ok(ClaimStop::NotHeld);
            }
            let appended =
                logs.claimed.append_after(partition, Bytes::from(part.encode()), resume.claimed_through).await;
            match appended {
                Ok(sequence) => {
                    resume.claimed_through = sequence;
                    resume.segment.rows += part.rows.len() as u64;
                }
                Err(StreamLogError::Fenced { .. }) => return Ok(ClaimStop::Fenced),
                Err(e) => return Err(e.into()),
            }
        }
        // Claimed whole: a cut waiting for this record may go.
        resume.scans_from = record.sequence.saturating_add(1);
        resume.claimed_part.clear();
    }
}

/// Whether a cut went into the claimed log.
enum CutDue {
    NotDue,
    Appended,
    Fenced,
}

/// Cuts a full segment at once, its arrivals where the last cut left
/// them (a backlog is cut as it is claimed, so no segment outgrows the
/// limit by more than a record). Decides a cut that moves the arrivals
/// on when the segment is old, and appends it once everything the
/// partition held at that moment is claimed.
async fn cut_when_due(
    logs: ClaimLogs<'_>,
    partition: Partition,
    settings: ClaimSettings,
    now: UnixMillis,
    resume: &mut Resume,
) -> Result<CutDue, ClaimError> {
    let segment = &mut resume.segment;
    let age_max_ms = i64::try_from(settings.segment_age_max.as_millis()).unwrap_or(i64::MAX);
    if segment.due.is_none() && now.saturating_sub(segment.opened_ms) >= age_max_ms {
        let scans_through = logs.scans.last_in(partition).await?.map_or(0, |record| record.sequence);
        segment.due = Some((scans_through, now));
    }
    let caught_up = segment.due.filter(|(scans_through, _)| resume.scans_from > *scans_through);
    let arrivals_before_ms = match caught_up {
        Some((_, at_ms)) => at_ms.saturating_sub(settings.arrival_allowance_ms).max(segment.arrivals_before_ms),
        None if segment.rows >= settings.segment_rows_max => segment.arrivals_before_ms,
        None => return Ok(CutDue::NotDue),
    };
    let closes = closed_through(&settings.service_day, settings.accepted_lateness_ms, arrivals_before_ms);
    let cut = CutRecord { arrivals_before_ms, closed_through: closes.max(segment.closed_through) };
    match logs.claimed.append_after(partition, Bytes::from(cut.encode()), resume.claimed_through).await {
        Ok(sequence) => {
            resume.claimed_through = sequence;
            // A full segment's cut leaves a decided one still to come.
            let due = if caught_up.is_some() { None } else { resume.segment.due };
            let closed_through = cut.closed_through;
            resume.segment = Segment { rows: 0, opened_ms: now, arrivals_before_ms, closed_through, due };
            Ok(CutDue::Appended)
        }
        Err(StreamLogError::Fenced { .. }) => Ok(CutDue::Fenced),
        Err(e) => Err(e.into()),
    }
}

/// Writes where claiming stands at the cut just appended, and the dedup
/// indexes then. A failure only costs the next owner a longer read (the
/// streams are given up below the checkpoints kept, never below one that
/// was not written), so it is logged and claiming goes on.
async fn write_checkpoint(checkpoints: &ClaimCheckpoints, partition: Partition, pipeline: &Pipeline, resume: &Resume) {
    let checkpoint = ClaimCheckpoint {
        partition,
        cut_sequence: resume.claimed_through,
        cut: CutRecord {
            arrivals_before_ms: resume.segment.arrivals_before_ms,
            closed_through: resume.segment.closed_through,
        },
        scans_from: resume.scans_from,
        stream_ms: resume.stream_ms,
    };
    debug_assert!(resume.claimed_part.is_empty(), "a checkpoint only between whole scans records");
    if checkpoint.scans_from == 0 {
        return;
    }
    let mut bytes = checkpoint.encode_header();
    let replay_from = checkpoint.cut_sequence.saturating_add(1);
    if let Err(error) = pipeline.write_dedup_snapshot(replay_from, resume.forget_before(), &mut bytes) {
        tracing::warn!(%partition, %error, "a partition's checkpoint could not be encoded");
        return;
    }
    let size = bytes.len();
    match checkpoints.write(partition, &checkpoint.path(), bytes).await {
        Ok(()) => {
            tracing::debug!(%partition, cut = checkpoint.cut_sequence, bytes = size, "partition checkpoint written")
        }
        Err(error) => tracing::warn!(%partition, %error, "a partition's checkpoint was not written; claiming goes on"),
    }
}

/// Loads the partition's newest usable checkpoint into `pipeline`'s dedup
/// indexes and reads the claimed log on from its cut to the end (from
/// the start with none); where claiming resumes, or `None` when stopped
/// first.
async fn rebuild(
    logs: ClaimLogs<'_>,
    partition: Partition,
    pipeline: &Pipeline,
    settings: ClaimSettings,
    stop: &CancellationToken,
) -> Result<Option<Resume>, ClaimError> {
    let claimed = logs.claimed;
    let Some(last) = claimed.last_in(partition).await? else {
        return Ok(Some(Resume { scans_from: 1, ..Resume::default() }));
    };
    let mut resume = match from_checkpoint(logs, partition, pipeline, last.sequence).await? {
        Some(resume) => resume,
        None => Resume { scans_from: 1, ..Resume::default() },
    };
    let read_from = resume.claimed_through.saturating_add(1);
    tracing::info!(%partition, read_from, through = last.sequence, "rebuilding a partition's claims");
    let mut reader = claimed.reader(partition, read_from).await?;
    while resume.claimed_through < last.sequence {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let Some(stored) = reader.next(settings.read_wait).await? else { continue };
        let entry = ClaimedEntry::decode(&stored.payload).map_err(|e| ClaimError::Damaged {
            partition,
            log: "claimed",
            sequence: stored.sequence,
            why: e.to_string(),
        })?;
        let record = match entry {
            ClaimedEntry::Rows(record) => record,
            ClaimedEntry::Cut(cut) => {
                resume.claimed_through = stored.sequence;
                let (arrivals_before_ms, closed_through) = (cut.arrivals_before_ms, cut.closed_through);
                resume.segment = Segment { arrivals_before_ms, closed_through, ..Segment::default() };
                continue;
            }
        };
        resume.segment.rows += record.rows.len() as u64;
        resume.note(&record.rows);
        pipeline.restore(&record.rows, resume.forget_before());
        if resume.scans_from != record.scans_sequence {
            resume.claimed_part.clear();
        }
        resume.claimed_through = stored.sequence;
        resume.scans_from = record.scans_sequence;
        if record.more_follow {
            resume.claimed_part.extend(record.rows.iter().map(|r| r.scan_id));
        } else {
            resume.claimed_part.clear();
            resume.scans_from = record.scans_sequence.saturating_add(1);
        }
    }
    Ok(Some(resume))
}

/// Where the newest checkpoint the claimed log vouches for leaves
/// claiming, its dedup indexes loaded into `pipeline`; `None` when the
/// partition has none that is this log's (none written, or all of a
/// stream made again), so the log is read from its start. A checkpoint
/// that is this log's but does not load is passed over for an older one;
/// when none loads, [`ClaimError::NoCheckpoint`].
async fn from_checkpoint(
    logs: ClaimLogs<'_>,
    partition: Partition,
    pipeline: &Pipeline,
    last: u64,
) -> Result<Option<Resume>, ClaimError> {
    let no_checkpoint = |why: String| ClaimError::NoCheckpoint { partition, why };
    let kept = logs.checkpoints.kept(partition).await.map_err(|e| no_checkpoint(e.to_string()))?;
    let mut unusable = Vec::new();
    for candidate in kept.iter().filter(|k| k.cut_sequence <= last) {
        match load_checkpoint(logs, partition, pipeline, candidate).await? {
            Loaded::Resume(resume) => return Ok(Some(resume)),
            Loaded::NotThisLogs => {}
            Loaded::Unusable(why) => {
                tracing::warn!(%partition, cut = candidate.cut_sequence, why, "a partition checkpoint passed over");
                unusable.push(format!("cut {}: {why}", candidate.cut_sequence));
            }
        }
    }
    match unusable.is_empty() {
        true => Ok(None),
        false => Err(no_checkpoint(unusable.join("; "))),
    }
}

enum Loaded {
    Resume(Resume),
    /// The claimed log holds another record at its cut's place.
    NotThisLogs,
    Unusable(String),
}

async fn load_checkpoint(
    logs: ClaimLogs<'_>,
    partition: Partition,
    pipeline: &Pipeline,
    kept: &KeptCheckpoint,
) -> Result<Loaded, ClaimError> {
    let bytes = match logs.checkpoints.read(kept).await {
        Ok(bytes) => bytes,
        Err(e) => return Ok(Loaded::Unusable(e.to_string())),
    };
    let (checkpoint, snapshot) = match ClaimCheckpoint::decode_header(&bytes) {
        Ok(decoded) => decoded,
        Err(e) => return Ok(Loaded::Unusable(e.to_string())),
    };
    let named = (checkpoint.partition, checkpoint.cut_sequence, checkpoint.scans_from);
    if named != (partition, kept.cut_sequence, kept.scans_from) {
        return Ok(Loaded::Unusable(format!(
            "its header says partition {}, cut {}, scans {}",
            named.0, named.1, named.2
        )));
    }
    if !vouches_for(logs.claimed, &checkpoint).await? {
        return Ok(Loaded::NotThisLogs);
    }
    let forget_before = checkpoint.stream_ms.saturating_sub(STREAM_TIME_MARGIN_MS);
    let replay_from = checkpoint.cut_sequence.saturating_add(1);
    let accept = |header: &farestream_core::ingest::dedup::snapshot::SnapshotHeader| match header.replay_from_lsn
        == replay_from
    {
        true => Ok(()),
        false => Err(format!("its snapshot replays from {}, not {replay_from}", header.replay_from_lsn)),
    };
    if let Err(e) = pipeline.load_dedup_snapshot(forget_before, snapshot, accept) {
        return Ok(Loaded::Unusable(e.to_string()));
    }
    let cut = checkpoint.cut;
    let segment = Segment {
        arrivals_before_ms: cut.arrivals_before_ms,
        closed_through: cut.closed_through,
        ..Segment::default()
    };
    Ok(Loaded::Resume(Resume {
        claimed_through: checkpoint.cut_sequence,
        scans_from: checkpoint.scans_from,
        claimed_part: HashSet::new(),
        stream_ms: checkpoint.stream_ms,
        segment,
    }))
}

/// Whether the claimed log holds the checkpoint's cut at its place: the
/// checkpoint is this log's, not one of a stream made again.
pub(crate) async fn vouches_for(claimed: &StreamLog, checkpoint: &ClaimCheckpoint) -> Result<bool, ClaimError> {
    let held = claimed.record_at(checkpoint.partition, checkpoint.cut_sequence).await?;
    let held = held.map(|record| ClaimedEntry::decode(&record.payload));
    Ok(matches!(held, Some(Ok(ClaimedEntry::Cut(cut))) if cut == checkpoint.cut))
}

/// `whole` as claimed records of at most `bytes_max` bytes each, in
/// order: itself when it fits, else its rows halved until each part
/// does. Every part but the last says more follow; the re-deliveries
/// are counted on the first.
pub(crate) fn parts(whole: ClaimedRecord, bytes_max: usize) -> Vec<ClaimedRecord> {
    let mut out = Vec::new();
    split_into(whole, bytes_max, &mut out);
    let last = out.len() - 1;
    for (i, part) in out.iter_mut().enumerate() {
        part.more_follow = i < last;
        if i > 0 {
            part.redelivered = 0;
        }
    }
    out
}

fn split_into(record: ClaimedRecord, bytes_max: usize, out: &mut Vec<ClaimedRecord>) {
    if record.rows.len() <= 1 || record.encode().len() <= bytes_max {
        out.push(record);
        return;
    }
    let ClaimedRecord { scans_sequence, redelivered, more_follow, mut rows } = record;
    let second = rows.split_off(rows.len() / 2);
    split_into(ClaimedRecord { scans_sequence, redelivered, more_follow, rows }, bytes_max, out);
    split_into(ClaimedRecord { scans_sequence, redelivered, more_follow, rows: second }, bytes_max, out);
}
