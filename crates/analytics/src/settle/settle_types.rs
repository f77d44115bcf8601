//! What a settlement is given and gives back, and how it fails: the types
//! the settlement's steps share, apart from the steps themselves.

use std::path::PathBuf;
use std::time::Duration;

use chrono::NaiveDate;
use farestream_core::cluster::archive_location::{ArchiveLocation, ObjectStoreSettings};
use farestream_core::fares::FareTable;
use farestream_core::service_day::ServiceDayPolicy;
use farestream_core::settlement::Break;

use super::write::RunRow;
use crate::archive_files::ArchiveFilesError;
use crate::tables::ArchiveSource;

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("settlement query: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("settlement data: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("settlement Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("account store: {0}")]
    Store(#[from] farestream_money::store::StoreError),
    #[error("archive: {0}")]
    Archive(#[from] farestream_ingest::archive::ArchiveError),
    #[error("charges archive: {0}")]
    ChargesArchive(#[from] farestream_money::charges_archive::ChargesArchiveError),
    #[error("archive: {0}")]
    Files(#[from] ArchiveFilesError),
    #[error("settlement input: {0}")]
    Input(String),
    #[error("settlement output: {0}")]
    Output(String),
}

/// What a settlement needs to know.
#[derive(Debug, Clone)]
pub struct SettleSettings {
    pub data_dir: PathBuf,
    /// The money store the server of `data_dir` keeps money in.
    pub store: farestream_money::StoreLocation,
    pub fares: FareTable,
    pub service_day: ServiceDayPolicy,
    pub store_busy_wait: Duration,
    /// The charges archive's batches, for the flush before reading: in a
    /// cluster it also finishes a batch whose node stopped claiming it.
    pub charges_batches: farestream_money::charges_archive::BatchLimits,
    /// What its SQL may hold in memory before spilling to disk.
    pub memory: crate::tables::MemoryBudget,
    /// In cluster mode, the archive every node shares, which the
    /// settlement reads and writes in place of the data dir's.
    pub shared_archive: Option<SharedArchive>,
}

/// A cluster's shared archive (`cluster.archive_dir`): a mounted folder,
/// or a bucket and its client's settings.
#[derive(Debug, Clone)]
pub struct SharedArchive {
    pub location: ArchiveLocation,
    pub client: ObjectStoreSettings,
}

impl SettleSettings {
    /// The archive the settlement reads and writes: the data dir's
    /// `archive`, or the cluster's shared one (no request is made yet).
    pub fn archive(&self) -> Result<ArchiveSource, SettleError> {
        match &self.shared_archive {
            Some(shared) => Ok(ArchiveSource::open(&shared.location, &shared.client)?),
            None => Ok(ArchiveSource::Dir(self.data_dir.join("archive"))),
        }
    }

    /// Where a file bound for a bucket is built before it is put.
    pub fn scratch_dir(&self) -> PathBuf {
        self.data_dir.join("tmp").join("settlement")
    }

    /// `DATA_DIR/reports/settlement-YYYY-MM-DD.html`.
    pub fn report_path(&self, date: NaiveDate) -> PathBuf {
        self.data_dir.join("reports").join(format!("settlement-{date}.html"))
    }
}

/// What one `settle` did.
#[derive(Debug, Clone)]
pub struct Settled {
    pub date: NaiveDate,
    /// The run this call wrote; `None` when nothing had changed, or when a
    /// break stopped it (a run with breaks writes nothing).
    pub new_run: Option<RunRow>,
    /// Every run of the day, the new one included.
    pub runs: Vec<RunRow>,
    pub breaks: Vec<Break>,
    pub report_path: PathBuf,
    pub headline: String,
}
