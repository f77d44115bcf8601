//! Small readers over DataFusion results: run a statement, and read a
//! column as plain values whatever Arrow type the engine chose for it
//! (a string may come back as `Utf8View`, a count as `Int64`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray, RecordBatch, StringArray, StringViewArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, UInt64Type};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::prelude::SessionContext;
use futures_util::StreamExt;

use super::settle_types::SettleError;

pub async fn collect_rows(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, SettleError> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

pub async fn stream_rows(ctx: &SessionContext, sql: &str) -> Result<SendableRecordBatchStream, SettleError> {
    Ok(ctx.sql(sql).await?.execute_stream().await?)
}

/// Batches a stream may run ahead of its reader.
pub const BATCHES_AHEAD_MAX: usize = 2;

/// `stream_rows`, polled on a task of its own, at most
/// [`BATCHES_AHEAD_MAX`] batches ahead: the final merge of a sort runs in
/// whichever task polls it, and the walk's own thread has the riders to
/// settle meanwhile.
pub async fn stream_rows_ahead(ctx: &SessionContext, sql: &str) -> Result<SendableRecordBatchStream, SettleError> {
    let mut stream = stream_rows(ctx, sql).await?;
    let mut ahead = RecordBatchReceiverStreamBuilder::new(stream.schema(), BATCHES_AHEAD_MAX);
    let tx = ahead.tx();
    ahead.spawn(async move {
        while let Some(batch) = stream.next().await {
            if tx.send(batch).await.is_err() {
                break; // the reader stopped
            }
        }
        Ok(())
    });
    Ok(ahead.build())
}

fn column(batch: &RecordBatch, index: usize) -> Result<&ArrayRef, SettleError> {
    batch.columns().get(index).ok_or_else(|| SettleError::Input(format!("result has no column {index}")))
}

fn as_type(batch: &RecordBatch, index: usize, to: &DataType) -> Result<ArrayRef, SettleError> {
    let column = column(batch, index)?;
    if column.data_type() == to { Ok(Arc::clone(column)) } else { Ok(cast(column, to)?) }
}

/// A column of ids or counts as `u64`. A card id is archived as the
/// `int64` with its bits (negative for an old card past 2^63): an `Int64`
/// column is read back bit for bit, where Arrow's cast would turn a
/// negative value into null and drop that rider from the settlement.
pub fn column_u64(batch: &RecordBatch, index: usize) -> Result<Vec<Option<u64>>, SettleError> {
    let column = column(batch, index)?;
    if column.data_type() == &DataType::Int64 {
        return Ok(column
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(farestream_core::scan::id_from_archive))
            .collect());
    }
    let array = as_type(batch, index, &DataType::UInt64)?;
    Ok(array.as_primitive::<UInt64Type>().iter().collect())
}

pub fn column_i64(batch: &RecordBatch, index: usize) -> Result<Vec<Option<i64>>, SettleError> {
    let array = as_type(batch, index, &DataType::Int64)?;
    Ok(array.as_primitive::<Int64Type>().iter().collect())
}

pub fn column_str(batch: &RecordBatch, index: usize) -> Result<Vec<Option<String>>, SettleError> {
    let array = as_type(batch, index, &DataType::Utf8)?;
    Ok(array.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect())
}

/// A string column read in place, with no `String` a row: the settlement
/// reads tens of millions. Parquet's strings come as `Utf8View`, and a
/// sort may hand them back as `Utf8`; both are read as they are, any
/// other string type is cast.
pub enum Texts {
    Utf8(StringArray),
    View(StringViewArray),
}

impl Texts {
    fn of(array: &ArrayRef) -> Result<Texts, SettleError> {
        Ok(match array.data_type() {
            DataType::Utf8View => Texts::View(array.as_string_view().clone()),
            DataType::Utf8 => Texts::Utf8(array.as_string::<i32>().clone()),
            _ => Texts::Utf8(cast(array, &DataType::Utf8)?.as_string::<i32>().clone()),
        })
    }

    /// Row `i`, `None` when null.
    pub fn get(&self, i: usize) -> Option<&str> {
        match self {
            Texts::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Texts::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

pub fn column_texts(batch: &RecordBatch, index: usize) -> Result<Texts, SettleError> {
    Texts::of(column(batch, index)?)
}

/// A list-of-strings column (the charges' `scan_ids`), read in place:
/// the lists, and their items as one column.
pub fn column_text_lists(batch: &RecordBatch, index: usize) -> Result<(ListArray, Texts), SettleError> {
    let lists = column(batch, index)?;
    let Some(lists) = lists.as_list_opt::<i32>() else {
        return Err(SettleError::Input(format!("column {index} is {}, not a list", lists.data_type())));
    };
    let items = Texts::of(lists.values())?;
    Ok((lists.clone(), items))
}

/// A 16-byte id from its hex form.
pub fn id_from_hex(hex_id: &str) -> Result<[u8; 16], SettleError> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut id).map_err(|e| SettleError::Input(format!("id {hex_id:?}: {e}")))?;
    Ok(id)
}
