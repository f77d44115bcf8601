//! Cluster mode's archive (docs/scale-out.md, "The shared archive"): a
//! partition's owner reads its claimed stream from where the archive
//! stands and writes each segment (the rows between two cuts) into the
//! shared archive, one Parquet file per service date, named after the
//! partition and the two cuts (`farestream_core::cluster::segments`).
//!
//! Every file is a function of the claimed stream: the same rows under
//! the same name whoever writes it, an old owner still running
//! included. So writing never needs a fence: a second write of a file
//! replaces it with the same rows, and a position set back by an old
//! owner only has the segments written again. A file appears whole or
//! not at all (`object_store` puts by temporary file and rename on local
//! disk, by one request on object storage).
//!
//! A service day is closed (`_SUCCESS` in its folder) once every
//! partition is archived through a cut that closed it (the owner's
//! `closed_through`, [`close_days`]): every row of it that comes later is
//! in a segment after such a cut, so in a `late-` file.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::NaiveDate;
use object_store::ObjectStoreExt;
use object_store::path::Path as StorePath;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use farestream_cluster::{ArchiveProgress, ArchivedThrough, StreamLog, StreamLogError};
use farestream_core::cluster::segments::segment_file_name;
use farestream_core::cluster::{ClaimedEntry, Partition};
use farestream_core::scan::ArchivedScan;
use farestream_ingest::archive::ArchiveError;
use farestream_ingest::archive::parquet_writer::{
    SUCCESS_MARKER, encode_scans_file, partition_date, partition_dir_name,
};
use farestream_shared_archive::{SharedStore, SharedStoreError};

/// Where and how segments are written.
#[derive(Clone)]
pub struct SegmentArchive {
    /// The shared archive, laid out as a node's `DATA_DIR/archive`.
    pub shared: SharedStore,
    pub row_group_rows_max: usize,
    /// The most rows a segment may hold before the archiver refuses it
    /// rather than hold more in memory: the largest `segment_rows_max`
    /// any owner may have and one scans record's rows (it cuts after the
    /// record that reached the limit), whatever this node's own is.
    pub segment_rows_limit: u64,
    /// How long one read waits before the archiver looks at its term and
    /// its stop again.
    pub read_wait: Duration,
}

/// Why an archiver stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveStop {
    Stopped,
    NotHeld,
}

#[derive(Debug, Error)]
pub enum ClusterArchiveError {
    #[error(transparent)]
    Stream(#[from] StreamLogError),
    #[error(transparent)]
    Progress(#[from] farestream_cluster::bucket::BucketError),
    #[error("partition {partition}: the claimed record at sequence {sequence} is damaged: {why}")]
    Damaged { partition: Partition, sequence: u64, why: String },
    #[error(
        "partition {partition}: the segment after cut {after_cut} holds over {limit} rows, more than any owner cuts at (the largest cluster.segment_rows_max and one record's rows)"
    )]
    SegmentTooLarge { partition: Partition, after_cut: u64, limit: u64 },
    #[error("encoding {0}")]
    Encode(#[from] ArchiveError),
    #[error("writing {path} into the shared archive: {source}")]
    Store { path: String, source: object_store::Error },
    #[error(transparent)]
    Put(#[from] SharedStoreError),
}

/// Archives `partition`'s claimed stream from where the archive stands
/// until stopped or no longer held (`holds`, asked before each read).
pub async fn archive_partition(
    claimed: &StreamLog,
    progress: &ArchiveProgress,
    partition: Partition,
    archive: &SegmentArchive,
    holds: impl Fn() -> bool,
    stop: &CancellationToken,
) -> Result<ArchiveStop, ClusterArchiveError> {
    let mut through = progress.get(partition).await?;
    // A position whose cut the stream no longer holds was set back by an
    // old owner after the stream gave up records below a later one: every
    // segment up to the first cut still held is archived (the streams
    // give up nothing the archive has not passed). Rows before that cut
    // are passed over, and the first segment written starts at it.
    let mut passing_over = through.cut > 0 && claimed.record_at(partition, through.cut).await?.is_none();
    if passing_over {
        tracing::warn!(%partition, cut = through.cut, "the archive's position is below what the claimed stream holds; going on from its first cut");
    }
    let mut reader = claimed.reader(partition, through.cut.saturating_add(1)).await?;
    let mut segment = Segment::default();
    loop {
        if stop.is_cancelled() {
            return Ok(ArchiveStop::Stopped);
        }
        if !holds() {
            return Ok(ArchiveStop::NotHeld);
        }
        let Some(stored) = reader.next(archive.read_wait).await? else { continue };
        let entry = ClaimedEntry::decode(&stored.payload).map_err(|e| ClusterArchiveError::Damaged {
            partition,
            sequence: stored.sequence,
            why: e.to_string(),
        })?;
        match entry {
            ClaimedEntry::Rows(_) if passing_over => {}
            ClaimedEntry::Cut(cut) if passing_over => {
                passing_over = false;
                through = ArchivedThrough { cut: stored.sequence, closed_through: cut.closed_through };
            }
            ClaimedEntry::Rows(record) => {
                segment.add(record.rows);
                if segment.rows > archive.segment_rows_limit {
                    let limit = archive.segment_rows_limit;
                    return Err(ClusterArchiveError::SegmentTooLarge { partition, after_cut: through.cut, limit });
                }
            }
            ClaimedEntry::Cut(cut) => {
                let written = std::mem::take(&mut segment);
                let files = write_segment(archive, partition, through, stored.sequence, written).await?;
                through = ArchivedThrough { cut: stored.sequence, closed_through: cut.closed_through };
                progress.set(partition, through).await?;
                farestream_ingest::telemetry::archive_files_closed(files);
            }
        }
    }
}

/// The rows since the last cut, by service date.
#[derive(Default)]
struct Segment {
    by_date: BTreeMap<NaiveDate, Vec<ArchivedScan>>,
    rows: u64,
}

impl Segment {
    fn add(&mut self, rows: Vec<ArchivedScan>) {
        self.rows += rows.len() as u64;
        for row in rows {
            self.by_date.entry(row.service_date).or_default().push(row);
        }
    }
}

/// Writes the segment after `from` up to the cut at `cut`: a file for
/// each service date it holds, `late-` for a day `from`'s cut had
/// already closed. The number of files.
async fn write_segment(
    archive: &SegmentArchive,
    partition: Partition,
    from: ArchivedThrough,
    cut: u64,
    segment: Segment,
) -> Result<usize, ClusterArchiveError> {
    let mut files = 0;
    for (date, rows) in segment.by_date {
        let late = from.closed_through.is_some_and(|closed| date <= closed);
        let name = segment_file_name(partition, from.cut, cut, late);
        let path = format!("scans/{}/{name}", partition_dir_name(date));
        let row_group_rows_max = archive.row_group_rows_max;
        let encode_name = path.clone();
        let bytes = tokio::task::spawn_blocking(move || encode_scans_file(&rows, row_group_rows_max, &encode_name))
            .await
            .unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()))?;
        archive.shared.put_durable(&path, bytes.into()).await?;
        files += 1;
    }
    Ok(files)
}

/// Marks `_SUCCESS` in each service date's folder of the shared archive
/// that every one of the `partitions` has closed: archived through a cut
/// that closed it (the owners' decision, in their cuts). Any node may run
/// it, as often as it likes: a marker written again is the same. The days
/// marked now.
pub async fn close_days(
    archive: &SegmentArchive,
    progress: &ArchiveProgress,
    partitions: u16,
) -> Result<Vec<NaiveDate>, ClusterArchiveError> {
    let mut closed_by = NaiveDate::MAX;
    for partition in Partition::all(partitions) {
        let Some(closed) = progress.get(partition).await?.closed_through else { return Ok(Vec::new()) };
        closed_by = closed_by.min(closed);
    }
    let store_error = |path: &str| {
        let path = path.to_string();
        move |source| ClusterArchiveError::Store { path, source }
    };
    let scans = StorePath::from("scans");
    let folders = match archive.shared.store.list_with_delimiter(Some(&scans)).await {
        Ok(listed) => listed.common_prefixes,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(store_error("scans/")(e)),
    };
    let mut marked = Vec::new();
    for folder in folders {
        let Some(date) = folder.filename().and_then(|name| partition_date(std::path::Path::new(name))) else {
            continue;
        };
        if date > closed_by {
            continue;
        }
        let marker = folder.clone().join(SUCCESS_MARKER);
        match archive.shared.store.head(&marker).await {
            Ok(_) => continue,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error(marker.as_ref())(e)),
        }
        let text = format!("closed_through = {closed_by}\n");
        archive.shared.store.put(&marker, text.into_bytes().into()).await.map_err(store_error(marker.as_ref()))?;
        tracing::info!(%date, "service day closed in the shared archive: every partition's cuts passed it");
        marked.push(date);
    }
    Ok(marked)
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;
    use object_store::memory::InMemory;

    use super::*;

    /// A segment's files: one a service date it holds, each `part-`
    /// unless the cut before the segment had closed its day, then `late-`;
    /// named by the partition and the two cuts. The day closed is the
    /// cut's, written by the owner: the archiver has no settings of its
    /// own that could name a file otherwise (the review of 4b23844 found
    /// two archivers with two latenesses naming one segment twice).
    #[tokio::test]
    async fn a_segments_day_closed_by_the_cut_before_it_goes_in_a_late_file() {
        let archive = SegmentArchive {
            shared: SharedStore { store: std::sync::Arc::new(InMemory::new()), local_root: None },
            row_group_rows_max: 100,
            segment_rows_limit: 10,
            read_wait: Duration::from_millis(10),
        };
        let (closed, open) =
            (NaiveDate::from_ymd_opt(2026, 12, 4).expect("d"), NaiveDate::from_ymd_opt(2026, 12, 5).expect("d"));
        let row = |n: u8, date| ArchivedScan { scan_id: [n; 16], service_date: date, ..ArchivedScan::blank() };
        let mut segment = Segment::default();
        segment.add(vec![row(1, closed), row(2, open), row(3, closed)]);
        let from = ArchivedThrough { cut: 5, closed_through: Some(closed) };
        let partition = Partition::new(3, 8).expect("partition");
        assert_eq!(write_segment(&archive, partition, from, 9, segment).await.expect("written"), 2);
        let mut names: Vec<String> = archive
            .shared
            .store
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .expect("listed");
        names.sort();
        assert_eq!(
            names,
            [
                "scans/service_date=2026-12-04/late-p0003-00000000000000000005-00000000000000000009.parquet",
                "scans/service_date=2026-12-05/part-p0003-00000000000000000005-00000000000000000009.parquet",
            ]
        );
    }
}
