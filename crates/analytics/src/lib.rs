//! farestream's heavy engine, kept apart so the ingest path never compiles
//! or links it: SQL over the Parquet archives (DataFusion) for
//! `farestream query`, and the daily settlement (`farestream settle`, and
//! `serve` at the cut-over). The settlement's arithmetic is the core's
//! (`farestream_core::settlement`); this crate reads, joins and writes.

pub mod archive_files;
pub mod query;
pub mod settle;
pub mod tables;

pub use datafusion;
