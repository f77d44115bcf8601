//! The Parquet archive of every scan: schema, writer, reader, checkpoint,
//! and the archiver thread that fills it from the write-ahead log.

pub mod ack_audit;
pub mod archiver;
pub mod checkpoint;
pub mod parquet_writer;
pub mod read;
mod validator_order;

pub use archiver::{Archiver, ArchiverSettings, ArchiverStatus, ArrivalMark, Arrivals};
pub use parquet_writer::{ArchiveError, ArchiveWriter, ArchiveWriterConfig, ClosedFile};

/// Where scans are archived under a data directory.
pub fn scans_root(data_dir: &std::path::Path) -> std::path::PathBuf {
    scans_root_in(&data_dir.join("archive"))
}

/// Where scans are archived in an archive directory: a data dir's
/// `archive`, or a cluster's shared archive, laid out alike.
pub fn scans_root_in(archive_dir: &std::path::Path) -> std::path::PathBuf {
    archive_dir.join("scans")
}
