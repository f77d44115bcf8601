//! The archive row as Arrow sees it; the Parquet files are the shell's.

pub mod charge_rows;
pub mod schema;
