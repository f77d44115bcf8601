//! Checks the archive against the scans gateways saw acknowledged: every
//! acked scan archived, none twice. The crash and disk-full tests end
//! with it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use super::ArchiveError;
use super::read::read_all;

/// What the archive holds of the acknowledged scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditReport {
    pub acked: usize,
    pub archived: usize,
    /// Acked scans not in the archive.
    pub lost: usize,
    /// Rows beyond the first of each scan id.
    pub duplicated: u64,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "acked={} archived={} lost={} duplicated={}", self.acked, self.archived, self.lost, self.duplicated)
    }
}

/// Audits the archive under `root` against `acked` scan ids (hex).
pub fn audit(root: &Path, acked: &HashSet<&str>) -> Result<AuditReport, ArchiveError> {
    Ok(audit_rows(&read_all(root)?, acked))
}

/// Audits archived `rows` against `acked` scan ids (hex).
pub fn audit_rows(rows: &[crate::scan::ArchivedScan], acked: &HashSet<&str>) -> AuditReport {
    let mut seen = HashMap::<String, u64>::new();
    for row in rows {
        *seen.entry(hex::encode(row.scan_id)).or_default() += 1;
    }
    let lost = acked.iter().filter(|id| !seen.contains_key(**id)).count();
    let duplicated = seen.values().map(|n| n - 1).sum();
    AuditReport { acked: acked.len(), archived: rows.len(), lost, duplicated }
}
