//! The archive's Arrow schema and the conversions between rows and record
//! batches. `docs/archive.md` documents each column for analysts.

use std::sync::Arc;

use arrow_array::builder::{Date32Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, TimestampMillisecondType, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::scan::{ArchivedScan, ScanStatus, TapKind};
use crate::service_day::{date_from_days, days_since_epoch};

fn utc_millis() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The archive schema, column by column in file order.
pub fn scan_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("scan_id", DataType::Utf8, false),
        Field::new("gateway_id", DataType::Utf8, false),
        Field::new("validator_id", DataType::Utf8, false),
        Field::new("validator_seq", DataType::UInt64, false),
        Field::new("route_id", DataType::Utf8, false),
        Field::new("stop_id", DataType::Utf8, false),
        Field::new("tap_kind", DataType::Utf8, true),
        Field::new("card_id", DataType::UInt64, true),
        Field::new("issuer_key_id", DataType::UInt32, true),
        Field::new("code_created_at", utc_millis(), true),
        Field::new("code_counter", DataType::UInt32, true),
        Field::new("scanned_at", utc_millis(), false),
        Field::new("received_at", utc_millis(), false),
        Field::new("status", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("service_date", DataType::Date32, false),
    ]))
}

/// Builds one record batch from rows.
pub fn to_record_batch(rows: &[ArchivedScan]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let strings = |f: &dyn Fn(&ArchivedScan) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    };
    let u64s = |f: &dyn Fn(&ArchivedScan) -> Option<u64>| -> ArrayRef {
        let mut b = UInt64Builder::with_capacity(n);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    };
    let u32s = |f: &dyn Fn(&ArchivedScan) -> Option<u32>| -> ArrayRef {
        let mut b = UInt32Builder::with_capacity(n);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    };
    let times = |f: &dyn Fn(&ArchivedScan) -> Option<i64>| -> ArrayRef {
        let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    };
    let scan_ids: Vec<String> = rows.iter().map(|r| hex::encode(r.scan_id)).collect();
    let mut dates = Date32Builder::with_capacity(n);
    rows.iter().for_each(|r| dates.append_value(days_since_epoch(r.service_date)));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(arrow_array::StringArray::from_iter_values(scan_ids.iter())),
        strings(&|r| Some(&*r.gateway_id)),
        strings(&|r| Some(&r.validator_id)),
        u64s(&|r| Some(r.validator_seq)),
        strings(&|r| Some(&r.route_id)),
        strings(&|r| Some(&r.stop_id)),
        strings(&|r| r.tap_kind.map(TapKind::as_str)),
        u64s(&|r| r.card_id),
        u32s(&|r| r.issuer_key_id),
        times(&|r| r.code_created_at),
        u32s(&|r| r.code_counter),
        times(&|r| Some(r.scanned_at)),
        times(&|r| Some(r.received_at)),
        strings(&|r| Some(r.status.as_str())),
        strings(&|r| r.reason.as_deref()),
        Arc::new(dates.finish()),
    ];
    RecordBatch::try_new(scan_schema(), columns)
}

/// Reads rows back from a record batch of the archive schema: the other half
/// of the pair assertion that what reaches disk is what was meant.
pub fn from_record_batch(batch: &RecordBatch) -> Result<Vec<ArchivedScan>, ArrowError> {
    // The typed casts below panic on a different type, and these files come
    // from disk: check every column's type first.
    for field in scan_schema().fields() {
        match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => {}
            Some(column) => {
                return Err(ArrowError::SchemaError(format!(
                    "archive column {} is {}, expected {}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                )));
            }
            None => return Err(ArrowError::SchemaError(format!("archive file lacks column {}", field.name()))),
        }
    }
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| ArrowError::SchemaError(format!("archive file lacks column {name}")))
    };
    let string = |name: &str| column(name).map(|c| c.as_string::<i32>().clone());
    let u64s = |name: &str| column(name).map(|c| c.as_primitive::<UInt64Type>().clone());
    let u32s = |name: &str| column(name).map(|c| c.as_primitive::<UInt32Type>().clone());
    let times = |name: &str| column(name).map(|c| c.as_primitive::<TimestampMillisecondType>().clone());
    let (scan_id, gateway, validator, route, stop) =
        (string("scan_id")?, string("gateway_id")?, string("validator_id")?, string("route_id")?, string("stop_id")?);
    let (tap_kind, status, reason) = (string("tap_kind")?, string("status")?, string("reason")?);
    let (validator_seq, card_id) = (u64s("validator_seq")?, u64s("card_id")?);
    let (issuer_key_id, code_counter) = (u32s("issuer_key_id")?, u32s("code_counter")?);
    let (code_created_at, scanned_at, received_at) =
        (times("code_created_at")?, times("scanned_at")?, times("received_at")?);
    let service_date = column("service_date")?.as_primitive::<Date32Type>().clone();
    let bad = |what: &str, row: usize| ArrowError::ParseError(format!("row {row}: bad {what}"));
    // A file holds few gateways: rows share one copy of each in a run.
    let mut gateway_id: Arc<str> = Arc::from("");
    (0..batch.num_rows())
        .map(|i| {
            if *gateway_id != *gateway.value(i) {
                gateway_id = Arc::from(gateway.value(i));
            }
            let opt_str = |a: &arrow_array::StringArray| a.is_valid(i).then(|| a.value(i).to_string());
            let mut id = [0u8; 16];
            hex::decode_to_slice(scan_id.value(i), &mut id).map_err(|_| bad("scan_id", i))?;
            Ok(ArchivedScan {
                scan_id: id,
                gateway_id: Arc::clone(&gateway_id),
                validator_id: validator.value(i).to_string(),
                validator_seq: validator_seq.value(i),
                route_id: route.value(i).to_string(),
                stop_id: stop.value(i).to_string(),
                tap_kind: opt_str(&tap_kind)
                    .map(|k| parse_tap_kind(&k).ok_or_else(|| bad("tap_kind", i)))
                    .transpose()?,
                card_id: card_id.is_valid(i).then(|| card_id.value(i)),
                issuer_key_id: issuer_key_id.is_valid(i).then(|| issuer_key_id.value(i)),
                code_created_at: code_created_at.is_valid(i).then(|| code_created_at.value(i)),
                code_counter: code_counter.is_valid(i).then(|| code_counter.value(i)),
                scanned_at: scanned_at.value(i),
                received_at: received_at.value(i),
                status: ScanStatus::parse(status.value(i)).ok_or_else(|| bad("status", i))?,
                reason: opt_str(&reason),
                service_date: date_from_days(service_date.value(i)).ok_or_else(|| bad("service_date", i))?,
            })
        })
        .collect()
}

fn parse_tap_kind(name: &str) -> Option<TapKind> {
    [TapKind::Entry, TapKind::Exit, TapKind::Single].into_iter().find(|k| k.as_str() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_another_schema_is_an_error_not_a_panic() {
        let foreign = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("scan_id", DataType::Int64, false)])),
            vec![Arc::new(arrow_array::Int64Array::from(vec![1i64]))],
        )
        .expect("batch");
        let error = from_record_batch(&foreign).expect_err("wrong type");
        assert!(error.to_string().contains("scan_id is Int64"), "{error}");
    }
}
