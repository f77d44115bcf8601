//! What a settlement run reads besides the money store: the day's scan
//! files it may settle, and what the day's earlier runs recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;

use super::settle_types::SettleError;
use super::sql::{collect_rows, column_i64, column_str, column_u64};
use crate::archive_files::{SCANS_TABLE, parquet_rows};
use crate::tables::ArchiveSource;
use farestream_core::cluster::segments::segment_file_range;
use farestream_core::money::Cents;
use farestream_ingest::archive::parquet_writer::file_lsn_range;

/// A complete scans file of the day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanFile {
    /// What DataFusion reads it by (`archive_files::ArchiveFile::url`).
    pub url: String,
    pub name: String,
    pub rows: i64,
}

/// How far the scans files' rows have been priced and made safe.
#[derive(Debug, Clone)]
pub enum Positions {
    /// A node's own log: everything below `pricer_lsn` is priced, below
    /// `archived_lsn` covered by the archiver's checkpoint.
    Log { pricer_lsn: u64, archived_lsn: u64 },
    /// A cluster's claimed stream: each partition's pricer cursor (the
    /// shared archive writes a file whole, so a file there is safe).
    Partitions(BTreeMap<u16, u64>),
}

impl Positions {
    /// Whether the scans file at `path` may be settled; `None` when its
    /// name is not a scans file's in this kind of archive.
    fn settleable(&self, path: &Path) -> Option<bool> {
        match self {
            Positions::Log { pricer_lsn, archived_lsn } => {
                let (_, to) = file_lsn_range(path)?;
                Some(to <= *pricer_lsn && to <= *archived_lsn)
            }
            Positions::Partitions(cursors) => {
                let (partition, _, cut) = segment_file_range(path.file_name()?.to_str()?)?;
                Some(cursors.get(&partition).is_some_and(|&priced_below| cut < priced_below))
            }
        }
    }

    /// Whether `path` is a write that never finished: `object_store`
    /// writes a shared archive's file as `NAME#N` and renames it, and a
    /// process killed between leaves it. The file is written again whole
    /// under its name; the leftover is no scans file, and no stranger.
    fn is_unfinished_write(&self, path: &Path) -> bool {
        let Positions::Partitions(_) = self else { return false };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        name.rsplit_once(".parquet#").is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The names a scans file has, for the error that names a stranger.
    fn file_names(&self) -> &'static str {
        match self {
            Positions::Log { .. } => "part-FROM-TO.parquet, late-FROM-TO.parquet",
            Positions::Partitions(_) => "part-pPPPP-AFTER-CUT.parquet, late-pPPPP-AFTER-CUT.parquet",
        }
    }
}

/// The day's scan files a run may settle: every record in them has been
/// priced and is safe from a crash ([`Positions`]). The rest wait. Every
/// file of the day's folder but its `_SUCCESS` marker is looked at: one
/// that is not a scans file (notes, a copy with another name) is an
/// error that names it, never silently left out.
pub async fn settleable_scan_files(
    archive: &ArchiveSource,
    date: NaiveDate,
    positions: &Positions,
) -> Result<(Vec<ScanFile>, usize), SettleError> {
    let mut settleable = Vec::new();
    let mut waiting = 0;
    for file in archive.day_files(SCANS_TABLE, date).await? {
        let name = Path::new(&file.name);
        // Only a folder's: a bucket's puts are whole, and an object named
        // so there is a stranger like any other.
        if archive.local_dir().is_some() && positions.is_unfinished_write(name) {
            continue;
        }
        let Some(ready) = positions.settleable(name) else {
            return Err(SettleError::Input(format!(
                "{} is not named as a scans file is ({}), so it is no scans file: move it out of the day's \
                 folder to settle {date}",
                file.url,
                positions.file_names()
            )));
        };
        match ready {
            true => settleable.push(file),
            false => waiting += 1,
        }
    }
    let rows = parquet_rows(&settleable).await?;
    let files = settleable.into_iter().zip(rows).map(|(f, rows)| ScanFile { url: f.url, name: f.name, rows });
    Ok((files.collect(), waiting))
}

/// What the day's earlier runs wrote, summed.
#[derive(Debug, Default)]
pub struct EarlierRuns {
    pub runs: u32,
    /// Whether the last run found the day closed (`_SUCCESS`).
    pub final_day: bool,
    pub files: BTreeSet<String>,
    /// Per route: rides and revenue.
    pub routes: BTreeMap<String, (i64, Cents)>,
}

pub async fn earlier_runs(ctx: &SessionContext, date: NaiveDate) -> Result<EarlierRuns, SettleError> {
    let day = format!("service_date = DATE '{date}'");
    let mut earlier = EarlierRuns::default();
    for batch in collect_rows(ctx, &format!("SELECT max(run) FROM settlement_runs WHERE {day}")).await? {
        earlier.runs = column_u64(&batch, 0)?.first().copied().flatten().unwrap_or(0) as u32;
    }
    let last = format!(
        "SELECT CAST(final AS BIGINT) AS final_day FROM settlement_runs WHERE {day} AND run = {}",
        earlier.runs
    );
    for batch in collect_rows(ctx, &last).await? {
        earlier.final_day = column_i64(&batch, 0)?.first().copied().flatten() == Some(1);
    }
    for batch in
        collect_rows(ctx, &format!("SELECT file FROM settlement_files WHERE {day} AND run <= {}", earlier.runs)).await?
    {
        earlier.files.extend(column_str(&batch, 0)?.into_iter().flatten());
    }
    let sql = format!(
        "SELECT route_id, CAST(sum(rides) AS BIGINT), CAST(sum(revenue_cents) AS BIGINT) FROM settlement_routes
         WHERE {day} AND run <= {} GROUP BY route_id",
        earlier.runs
    );
    for batch in collect_rows(ctx, &sql).await? {
        let (routes, rides, revenue) = (column_str(&batch, 0)?, column_i64(&batch, 1)?, column_i64(&batch, 2)?);
        for (i, route) in routes.into_iter().enumerate() {
            earlier
                .routes
                .insert(route.unwrap_or_default(), (rides[i].unwrap_or(0), Cents::new(revenue[i].unwrap_or(0))));
        }
    }
    Ok(earlier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A cluster's segment file is settled once its partition's pricer
    /// cursor is past the segment's cut (the cursor is the next sequence
    /// to price); a partition with no cursor has priced nothing. A node's
    /// log-range names are not a cluster's scans files, nor the reverse.
    #[test]
    fn a_segment_file_is_settleable_once_its_partitions_cursor_passed_its_cut() {
        let cursors = Positions::Partitions(BTreeMap::from([(3, 11), (4, 10), (4_095, u64::MAX)]));
        let segment =
            |p: u16, after: u64, cut: u64| PathBuf::from(format!("part-p{p:04}-{after:020}-{cut:020}.parquet"));
        assert_eq!(cursors.settleable(&segment(3, 0, 10)), Some(true), "priced through the cut");
        assert_eq!(cursors.settleable(&segment(4, 0, 10)), Some(false), "the cut itself not yet priced");
        assert_eq!(cursors.settleable(&segment(5, 0, 1)), Some(false), "no cursor: nothing priced");
        assert_eq!(cursors.settleable(&segment(4_095, 0, u64::MAX - 1)), Some(true));
        assert_eq!(cursors.settleable(&segment(4_095, 0, u64::MAX)), Some(false), "the last sequence");
        let late = PathBuf::from(format!("late-p0003-{:020}-{:020}.parquet", 5, 10));
        assert_eq!(cursors.settleable(&late), Some(true), "late files alike");
        let log_name = PathBuf::from(format!("part-{:020}-{:020}.parquet", 0, 10));
        assert_eq!(cursors.settleable(&log_name), None);
        assert_eq!(cursors.settleable(Path::new("notes.txt")), None);
        let log = Positions::Log { pricer_lsn: 10, archived_lsn: 10 };
        assert_eq!(log.settleable(&log_name), Some(true));
        assert_eq!(log.settleable(&segment(3, 0, 10)), None);
        // A write a kill cut short, in the shared archive only.
        let unfinished = PathBuf::from(format!("part-p0003-{:020}-{:020}.parquet#17", 0, 10));
        assert!(cursors.is_unfinished_write(&unfinished) && !log.is_unfinished_write(&unfinished));
        for finished in ["x.parquet#", "x.parquet#1a", "x.parquet"] {
            assert!(!cursors.is_unfinished_write(Path::new(finished)), "{finished}");
        }
    }
}
