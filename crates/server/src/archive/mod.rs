//! The Parquet archive of every scan: schema, writer, reader, checkpoint,
//! and the archiver thread that fills it from the write-ahead log.

pub mod archiver;
pub mod audit;
pub mod charges;
pub mod checkpoint;
pub mod read;
pub use farestream_core::archive::schema;
pub mod writer;

pub use archiver::{Archiver, ArchiverSettings, ArchiverStatus, ArrivalMark, Arrivals};
pub use writer::{ArchiveError, ArchiveWriter, ArchiveWriterConfig, ClosedFile};

/// Where scans are archived under a data directory.
pub fn scans_root(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("archive").join("scans")
}
