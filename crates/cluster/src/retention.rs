//! How long the streams keep a partition's records (docs/scale-out.md,
//! "Retention"): until everything that may read them again has passed.
//! Not an age limit, which would let JetStream drop a record a lagging
//! archiver or pricer has not read, but a purge driven by the readers:
//!
//! - the claimed log below the oldest checkpoint kept (a new owner reads
//!   on from a checkpoint's cut), the archive's position and the pricing
//!   cursor, whichever is lowest;
//! - the scans stream below the oldest checkpoint's scans position (only
//!   owners read it, from there).
//!
//! Only checkpoints the claimed log vouches for count (a checkpoint of a
//! stream made again says nothing about this one), and with none the
//! partition keeps everything.

use farestream_core::cluster::Partition;
use farestream_core::cluster::checkpoint::ClaimCheckpoint;

use crate::claim::{ClaimError, ClaimLogs, vouches_for};

/// Where a partition's streams were given up below, and how many records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub claimed_below: u64,
    pub claimed_records: u64,
    pub scans_below: u64,
    pub scans_records: u64,
}

/// Gives up partition `p`'s records that neither its readers nor a new
/// owner can need again. `readers_from`: the lowest claimed-log sequence
/// the archive and the pricing still read from (their positions, which
/// they keep). `None` when nothing may go yet.
pub async fn purge_consumed(
    logs: ClaimLogs<'_>,
    partition: Partition,
    readers_from: u64,
) -> Result<Option<Purged>, ClaimError> {
    let Some(oldest) = oldest_vouched_checkpoint(logs, partition).await? else { return Ok(None) };
    let claimed_below = oldest.cut_sequence.min(readers_from);
    let scans_below = oldest.scans_from;
    let claimed_records = logs.claimed.purge_below(partition, claimed_below).await?;
    let scans_records = logs.scans.purge_below(partition, scans_below).await?;
    Ok(Some(Purged { claimed_below, claimed_records, scans_below, scans_records }))
}

/// The oldest of the partition's kept checkpoints whose cut the claimed
/// log holds at its place; a checkpoint whose header does not read is
/// not counted (nor would a new owner load it).
async fn oldest_vouched_checkpoint(
    logs: ClaimLogs<'_>,
    partition: Partition,
) -> Result<Option<ClaimCheckpoint>, ClaimError> {
    let unreadable = |why: String| ClaimError::NoCheckpoint { partition, why };
    let kept = logs.checkpoints.kept(partition).await.map_err(|e| unreadable(e.to_string()))?;
    for candidate in kept.iter().rev() {
        let Ok(header) = logs.checkpoints.read_header(candidate).await else { continue };
        let Ok((checkpoint, _)) = ClaimCheckpoint::decode_header(&header) else { continue };
        let named = (checkpoint.partition, checkpoint.cut_sequence, checkpoint.scans_from);
        if named == (partition, candidate.cut_sequence, candidate.scans_from)
            && vouches_for(logs.claimed, &checkpoint).await?
        {
            return Ok(Some(checkpoint));
        }
    }
    Ok(None)
}
