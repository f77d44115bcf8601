//! Checks the archive against the scans gateways saw acknowledged: every
//! acked scan archived, none twice, and, where the sender said what it
//! planned, with the statuses it planned. The crash and disk-full tests end
//! with it.
//!
//! The acked file (`simulate --acked-file`) has one scan per line: its
//! `scan_id` in hex, then optionally the status the simulator planned for
//! it. Statuses are compared as counts per status, not scan by scan: when a
//! replay reaches the server before its original (two gateways, two upload
//! times), the two swap labels and the day is still right; a recovery that
//! relabels an accepted scan as a replay changes the counts. One more
//! case is no fault: a planned replay archived `accepted`, because its
//! original was refused at a gate that held a newer deny list (a refused
//! scan claims no ride), so the copy was the first ride of that code. At
//! most one such replay is forgiven per scan planned `denied`: an accepted
//! replay beyond that is a double ride. An accepted scan archived as a
//! replay always is a fault.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use thiserror::Error;

use farestream_core::scan::{ArchivedScan, ScanStatus};

/// What the archive holds of the acknowledged scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditReport {
    pub acked: usize,
    pub archived: usize,
    /// Acked scans not in the archive.
    pub lost: usize,
    /// Rows beyond the first of each scan id.
    pub duplicated: u64,
    /// Archived scans whose status no planned status accounts for: over
    /// the statuses, what the archive holds less than the plan said.
    pub off_plan: u64,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.off_plan == 0
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acked={} archived={} lost={} duplicated={} off_plan={}",
            self.acked, self.archived, self.lost, self.duplicated, self.off_plan
        )
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AckedFileError {
    #[error("acked file line {line}: {what}")]
    Line { line: usize, what: String },
}

/// The scans a sender saw acknowledged, with the status it planned for
/// each where it said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedScans {
    pub ids: HashSet<[u8; 16]>,
    pub planned: HashMap<[u8; 16], ScanStatus>,
}

impl AckedScans {
    /// Reads `scan_id_hex [status]` lines; blank lines are skipped.
    pub fn parse(text: &str) -> Result<AckedScans, AckedFileError> {
        let mut acked = AckedScans::default();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = |what: String| AckedFileError::Line { line: n + 1, what };
            let mut fields = line.split_whitespace();
            let hex_id = fields.next().unwrap_or_default();
            let mut id = [0u8; 16];
            hex::decode_to_slice(hex_id, &mut id).map_err(|e| bad(format!("scan id {hex_id:?}: {e}")))?;
            acked.ids.insert(id);
            if let Some(name) = fields.next() {
                let status = ScanStatus::parse(name).ok_or_else(|| bad(format!("unknown status {name:?}")))?;
                acked.planned.insert(id, status);
            }
            if let Some(extra) = fields.next() {
                return Err(bad(format!("unexpected {extra:?} after the status")));
            }
        }
        Ok(acked)
    }

    /// The file `parse` reads.
    pub fn render(scans: &[([u8; 16], ScanStatus)]) -> String {
        scans.iter().map(|(id, status)| format!("{} {}\n", hex::encode(id), status.as_str())).collect()
    }
}

/// Audits archived `rows` against the `acked` scans.
pub fn audit_rows(rows: &[ArchivedScan], acked: &AckedScans) -> AuditReport {
    let mut seen = HashMap::<[u8; 16], (u64, ScanStatus)>::new();
    for row in rows {
        seen.entry(row.scan_id).or_insert((0, row.status)).0 += 1;
    }
    let lost = acked.ids.iter().filter(|id| !seen.contains_key(*id)).count();
    let duplicated = seen.values().map(|(n, _)| n - 1).sum();
    let mut planned = BTreeMap::<ScanStatus, i64>::new();
    let mut archived = BTreeMap::<ScanStatus, i64>::new();
    for (id, status) in &acked.planned {
        if let Some((_, archived_as)) = seen.get(id) {
            *planned.entry(*status).or_default() += 1;
            *archived.entry(*archived_as).or_default() += 1;
        }
    }
    let count = |counts: &BTreeMap<ScanStatus, i64>, status| counts.get(&status).copied().unwrap_or(0);
    let short = |status| (count(&planned, status) - count(&archived, status)).max(0);
    let deficit: i64 = planned.keys().map(|status| short(*status)).sum();
    let accepted_beyond_plan = (count(&archived, ScanStatus::Accepted) - count(&planned, ScanStatus::Accepted)).max(0);
    let replays_that_rode =
        short(ScanStatus::Replay).min(accepted_beyond_plan).min(count(&planned, ScanStatus::Denied));
    let off_plan = (deficit - replays_that_rode).unsigned_abs();
    AuditReport { acked: acked.ids.len(), archived: rows.len(), lost, duplicated, off_plan }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u8, status: ScanStatus) -> ArchivedScan {
        ArchivedScan { scan_id: [n; 16], status, ..ArchivedScan::blank() }
    }

    fn acked(scans: &[(u8, ScanStatus)]) -> AckedScans {
        let list: Vec<([u8; 16], ScanStatus)> = scans.iter().map(|(n, s)| ([*n; 16], *s)).collect();
        AckedScans::parse(&AckedScans::render(&list)).expect("parse")
    }

    use ScanStatus::{Accepted, Denied, Replay};

    #[test]
    fn a_clean_archive_passes_and_a_replay_pair_may_swap_labels() {
        let plan = acked(&[(1, Accepted), (2, Accepted), (3, Replay)]);
        let clean = audit_rows(&[row(1, Accepted), row(2, Accepted), row(3, Replay)], &plan);
        assert!(clean.is_clean(), "{clean}");
        let swapped = audit_rows(&[row(1, Accepted), row(2, Replay), row(3, Accepted)], &plan);
        assert!(swapped.is_clean(), "the replay arrived first: {swapped}");
        let refused_first = acked(&[(1, Denied), (2, Replay)]);
        let rode = audit_rows(&[row(1, Denied), row(2, Accepted)], &refused_first);
        assert!(rode.is_clean(), "the original was refused by a newer list; its copy rode: {rode}");
    }

    #[test]
    fn each_planted_fault_fails_the_audit() {
        let plan = acked(&[(1, Accepted), (2, Accepted), (3, Replay)]);
        let lost = audit_rows(&[row(1, Accepted), row(3, Replay)], &plan);
        assert_eq!((lost.lost, lost.is_clean()), (1, false), "{lost}");
        let twice = audit_rows(&[row(1, Accepted), row(2, Accepted), row(2, Accepted), row(3, Replay)], &plan);
        assert_eq!((twice.duplicated, twice.is_clean()), (1, false), "{twice}");
        let relabelled = audit_rows(&[row(1, Accepted), row(2, Replay), row(3, Replay)], &plan);
        assert_eq!((relabelled.off_plan, relabelled.is_clean()), (1, false), "{relabelled}");
        let denied = audit_rows(&[row(1, Accepted), row(2, Denied), row(3, Replay)], &plan);
        assert_eq!(denied.off_plan, 1, "a ride archived as denied: {denied}");
        let replay_rode = audit_rows(&[row(1, Accepted), row(2, Accepted), row(3, Accepted)], &plan);
        assert_eq!(replay_rode.off_plan, 1, "a replay accepted with no refused original is a double ride");
    }

    #[test]
    fn the_acked_file_is_read_strictly() {
        let old_form = AckedScans::parse(&format!("{}\n\n", hex::encode([7u8; 16]))).expect("ids alone");
        assert_eq!((old_form.ids.len(), old_form.planned.len()), (1, 0));
        assert!(AckedScans::parse("zz accepted").is_err());
        assert!(AckedScans::parse(&format!("{} lost", hex::encode([7u8; 16]))).is_err());
        assert!(AckedScans::parse(&format!("{} accepted twice", hex::encode([7u8; 16]))).is_err());
        assert!(AckedScans::parse(&hex::encode([7u8; 17])).is_err(), "an id of 17 bytes");
        assert_eq!(AckedScans::parse("").expect("empty"), AckedScans::default());
    }
}
