//! `farestream query "SQL"`: one statement over the archive's tables,
//! printed as an aligned table or written as CSV, JSON lines or Parquet.

use std::io::Write;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use datafusion::error::DataFusionError;

use crate::tables::{ArchiveSource, MemoryBudget, archive_session};
use farestream_ingest::archive::parquet_writer::archive_writer_properties;
use farestream_ingest::archive::read::archive_files;
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
    /// The tables the statement reads have no files yet, so not even
    /// their columns are known.
    #[error(
        "nothing is archived yet in the tables this statement reads: a file appears once the archiver closes it \
         (archive.file_age_secs_max after its first row, or at shutdown)"
    )]
    NothingArchived,
}

impl QueryError {
    /// A statement's own fault (exit code 2), not the machine's.
    pub fn is_bad_query(&self) -> bool {
        matches!(self, QueryError::Sql(_))
    }
}

/// Runs `sql` over the archive under `archive_dir`; returns the row count.
/// CSV, JSON and Parquet stream batch by batch, so a large result costs a
/// batch of memory, not the result; the aligned table needs every row it
/// prints before it can size its columns, so it prints at most
/// [`TABLE_ROWS_MAX`] (it is for a terminal).
pub async fn run_query(
    archive: &ArchiveSource,
    budget: &MemoryBudget,
    partitions_per_core: usize,
    sql: &str,
    format: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<u64, QueryError> {
    let ctx = archive_session(archive, budget, partitions_per_core)?;
    let frame = ctx.sql(sql).await?;
    let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
    if schema.fields().is_empty() {
        return Err(QueryError::NothingArchived);
    }
    let mut stream = frame.execute_stream().await?;
    if format == OutputFormat::Table {
        let rows = write_table(&mut stream, schema, out).await?;
        if rows == 0 && archive.local_dir().is_some_and(|dir| !has_archive_files(dir)) {
            writeln!(out, "(no rows: nothing is archived yet; a file appears once the archiver closes it, archive.file_age_secs_max after its first row, or at shutdown)")
                .map_err(|e| output(&e))?;
        }
        return Ok(rows);
    }
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

/// The most rows the aligned table prints: it must see every row it
/// prints before it can size its columns, so its memory is bounded here;
/// the streaming formats have no such limit.
pub const TABLE_ROWS_MAX: usize = 10_000;

/// The aligned table of at most [`TABLE_ROWS_MAX`] rows, and a line that
/// says so when there were more; returns the rows printed.
async fn write_table(
    stream: &mut datafusion::physical_plan::SendableRecordBatchStream,
    schema: SchemaRef,
    out: &mut (dyn Write + Send),
) -> Result<u64, QueryError> {
    let (mut batches, mut rows, mut more) = (Vec::new(), 0usize, false);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let room = TABLE_ROWS_MAX - rows;
        if batch.num_rows() > room {
            batches.push(batch.slice(0, room));
            rows += room;
            more = true;
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    // With the schema, so an empty result still shows its columns.
    let table = pretty_format_batches_with_schema(schema, &batches).map_err(|e| output(&e))?;
    writeln!(out, "{table}").map_err(|e| output(&e))?;
    if more {
        writeln!(
            out,
            "(the first {TABLE_ROWS_MAX} rows of more: add a LIMIT, or --format csv, json or parquet for all)"
        )
        .map_err(|e| output(&e))?;
    }
    Ok(rows as u64)
}

/// Whether any table under the archive has a closed file.
fn has_archive_files(archive_dir: &Path) -> bool {
    let Ok(tables) = std::fs::read_dir(archive_dir) else { return false };
    tables.flatten().any(|table| archive_files(&table.path()).is_ok_and(|files| !files.is_empty()))
}

fn output(e: &dyn std::fmt::Display) -> QueryError {
    QueryError::Output(e.to_string())
}

/// JSON numbers lose digits above 2^53 in most readers (JavaScript,
/// `jq`), and card ids go up to 2^63 − 1: a 64-bit integer column named
/// `*_id` is written as a string, as the account API writes `card_id`.
fn ids_as_strings(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    let schema = batch.schema();
    let is_id = |f: &Field| f.name().ends_with("_id") && matches!(f.data_type(), DataType::Int64 | DataType::UInt64);
    if !schema.fields().iter().any(|f| is_id(f)) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if is_id(field) {
            fields.push(Field::new(field.name(), DataType::Utf8, field.is_nullable()));
            columns.push(cast(column, &DataType::Utf8).map_err(|e| output(&e))?);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns).map_err(|e| output(&e))
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
            BatchWriter::Json(w) => w.write(&ids_as_strings(batch)?).map_err(|e| output(&e)),
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
