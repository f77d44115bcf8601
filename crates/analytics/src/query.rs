//! `farestream query "SQL"`: one statement over the archive's tables,
//! printed as an aligned table or written as CSV, JSON lines or Parquet.

use std::io::Write;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::error::DataFusionError;

use crate::tables::archive_session;
use farestream_server::archive::writer::archive_writer_properties;
use futures_util::StreamExt;

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
/// CSV, JSON and Parquet stream batch by batch, so a large result costs a
/// batch of memory, not the result; the aligned table needs every row
/// before it can size its columns (it is for a terminal: add a `LIMIT`).
pub async fn run_query(
    archive_dir: &Path,
    sql: &str,
    format: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<u64, QueryError> {
    let ctx = archive_session(archive_dir)?;
    let frame = ctx.sql(sql).await?;
    let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
    if format == OutputFormat::Table {
        let batches = frame.collect().await?;
        let table = pretty_format_batches(&batches).map_err(|e| output(&e))?;
        writeln!(out, "{table}").map_err(|e| output(&e))?;
        return Ok(batches.iter().map(|b| b.num_rows() as u64).sum());
    }
    let mut stream = frame.execute_stream().await?;
    let mut writer = BatchWriter::new(format, schema, out)?;
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
    }
    writer.finish()?;
    Ok(rows)
}

fn output(e: &dyn std::fmt::Display) -> QueryError {
    QueryError::Output(e.to_string())
}

/// A writer of one of the streaming formats.
enum BatchWriter<'a> {
    Csv(datafusion::arrow::csv::Writer<&'a mut (dyn Write + Send)>),
    Json(datafusion::arrow::json::LineDelimitedWriter<&'a mut (dyn Write + Send)>),
    Parquet(parquet::arrow::ArrowWriter<&'a mut (dyn Write + Send)>),
}

impl<'a> BatchWriter<'a> {
    fn new(
        format: OutputFormat,
        schema: SchemaRef,
        out: &'a mut (dyn Write + Send),
    ) -> Result<BatchWriter<'a>, QueryError> {
        Ok(match format {
            OutputFormat::Csv => {
                BatchWriter::Csv(datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(out))
            }
            OutputFormat::Json => BatchWriter::Json(datafusion::arrow::json::LineDelimitedWriter::new(out)),
            OutputFormat::Parquet | OutputFormat::Table => {
                let properties = archive_writer_properties(&[], &[], None);
                BatchWriter::Parquet(
                    parquet::arrow::ArrowWriter::try_new(out, schema, Some(properties)).map_err(|e| output(&e))?,
                )
            }
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        match self {
            BatchWriter::Csv(w) => w.write(batch).map_err(|e| output(&e)),
            BatchWriter::Json(w) => w.write(batch).map_err(|e| output(&e)),
            BatchWriter::Parquet(w) => w.write(batch).map_err(|e| output(&e)),
        }
    }

    fn finish(self) -> Result<(), QueryError> {
        match self {
            BatchWriter::Csv(_) => Ok(()),
            BatchWriter::Json(mut w) => w.finish().map_err(|e| output(&e)),
            BatchWriter::Parquet(w) => w.close().map(|_| ()).map_err(|e| output(&e)),
        }
    }
}
