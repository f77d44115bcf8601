//! Small readers over DataFusion results: run a statement, and read a
//! column as plain values whatever Arrow type the engine chose for it
//! (a string may come back as `Utf8View`, a count as `Int64`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, UInt64Type};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;

use super::settle_types::SettleError;

pub async fn collect_rows(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, SettleError> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

pub async fn stream_rows(ctx: &SessionContext, sql: &str) -> Result<SendableRecordBatchStream, SettleError> {
    Ok(ctx.sql(sql).await?.execute_stream().await?)
}

fn as_type(batch: &RecordBatch, index: usize, to: &DataType) -> Result<ArrayRef, SettleError> {
    let column =
        batch.columns().get(index).ok_or_else(|| SettleError::Input(format!("result has no column {index}")))?;
    if column.data_type() == to { Ok(Arc::clone(column)) } else { Ok(cast(column, to)?) }
}

pub fn column_u64(batch: &RecordBatch, index: usize) -> Result<Vec<Option<u64>>, SettleError> {
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

/// A list-of-strings column (the charges' `scan_ids`).
pub fn column_str_lists(batch: &RecordBatch, index: usize) -> Result<Vec<Vec<String>>, SettleError> {
    let list_type = DataType::List(Arc::new(datafusion::arrow::datatypes::Field::new("item", DataType::Utf8, true)));
    let array = as_type(batch, index, &list_type)?;
    let lists = array.as_list::<i32>();
    let mut out = Vec::with_capacity(lists.len());
    for i in 0..lists.len() {
        if lists.is_null(i) {
            out.push(Vec::new());
            continue;
        }
        let values = lists.value(i);
        out.push(values.as_string::<i32>().iter().flatten().map(str::to_string).collect());
    }
    Ok(out)
}

/// A 16-byte id from its hex form.
pub fn id_from_hex(hex_id: &str) -> Result<[u8; 16], SettleError> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut id).map_err(|e| SettleError::Input(format!("id {hex_id:?}: {e}")))?;
    Ok(id)
}
