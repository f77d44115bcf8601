//! `farestream query "SQL"`: one statement over the archive's tables,
//! printed as an aligned table or written as CSV, JSON lines or Parquet.

use std::io::Write;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::error::DataFusionError;

use crate::tables::archive_session;

/// How the result is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned columns for a terminal.
    Table,
    /// RFC 4180 with a header row.
    Csv,
    /// One JSON object per row (JSON lines).
    Json,
    /// A Parquet file (ZSTD), for a file or a pipe.
    Parquet,
}

impl OutputFormat {
    pub const NAMES: [&'static str; 4] = ["table", "csv", "json", "parquet"];

    pub fn parse(name: &str) -> Option<OutputFormat> {
        match name {
            "table" => Some(OutputFormat::Table),
            "csv" => Some(OutputFormat::Csv),
            "json" => Some(OutputFormat::Json),
            "parquet" => Some(OutputFormat::Parquet),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement did not parse, plan or run: DataFusion's message.
    #[error("{0}")]
    Sql(#[from] DataFusionError),
    #[error("writing the result: {0}")]
    Output(String),
}

impl QueryError {
    /// A statement's own fault (exit code 2), not the machine's.
    pub fn is_bad_query(&self) -> bool {
        matches!(self, QueryError::Sql(_))
    }
}

/// Runs `sql` over the archive under `archive_dir`; returns the row count.
pub async fn run_query(
    archive_dir: &Path,
    sql: &str,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<u64, QueryError> {
    let ctx = archive_session(archive_dir)?;
    let frame = ctx.sql(sql).await?;
    let schema = frame.schema().as_arrow().clone();
    let batches = frame.collect().await?;
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    write_batches(&batches, std::sync::Arc::new(schema), format, out)?;
    Ok(rows)
}

fn write_batches(
    batches: &[RecordBatch],
    schema: datafusion::arrow::datatypes::SchemaRef,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), QueryError> {
    let output = |e: &dyn std::fmt::Display| QueryError::Output(e.to_string());
    match format {
        OutputFormat::Table => {
            let table = pretty_format_batches(batches).map_err(|e| output(&e))?;
            writeln!(out, "{table}").map_err(|e| output(&e))?;
        }
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(out);
            for batch in batches {
                writer.write(batch).map_err(|e| output(&e))?;
            }
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(out);
            for batch in batches {
                writer.write(batch).map_err(|e| output(&e))?;
            }
            writer.finish().map_err(|e| output(&e))?;
        }
        OutputFormat::Parquet => {
            let properties = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let mut buffer = Vec::new();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(&mut buffer, schema, Some(properties)).map_err(|e| output(&e))?;
            for batch in batches {
                writer.write(batch).map_err(|e| output(&e))?;
            }
            writer.close().map_err(|e| output(&e))?;
            out.write_all(&buffer).map_err(|e| output(&e))?;
        }
    }
    Ok(())
}
