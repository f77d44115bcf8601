//! The Parquet archive of every scan: schema, writer, reader, and the
//! writer thread the server feeds.

pub mod read;
pub mod schema;
pub mod service;
pub mod writer;

pub use writer::{ArchiveError, ArchiveWriter, ArchiveWriterConfig, ClosedFile};

/// Where scans are archived under a data directory.
pub fn scans_root(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("archive").join("scans")
}
