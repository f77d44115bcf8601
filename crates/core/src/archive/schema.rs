//! The archive row's columns, defined once: [`COLUMNS`] gives each column's
//! name, Arrow type, nullability, and how it is read from and written to an
//! [`ArchivedScan`]. The Arrow schema, the writer's record batches and the
//! reader all follow that table, so a new column is one entry in it (plus
//! its field in the journal, which is a format of its own).
//! `docs/archive.md` documents each column for analysts.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use chrono::NaiveDate;

use crate::scan::{ArchivedScan, ScanStatus, TapKind, id_from_archive, id_to_archive};

type Row = ArchivedScan;

/// How a column's values live in a row: a reader and a writer of one
/// Arrow type. `None` is a null; a writer refuses a value it cannot take.
enum Values {
    Text(fn(&Row) -> Option<Cow<'_, str>>, fn(&mut Row, Option<&str>) -> Result<(), String>),
    /// A 16-byte id as 32 lowercase hex characters, never null: written
    /// without a string allocated per row.
    Hex(fn(&Row) -> &[u8; 16], fn(&mut Row, Option<&str>) -> Result<(), String>),
    /// A `u64` id as `Int64` (Spark, Trino, BigQuery and Java have no
    /// unsigned 64-bit integer), bit for bit ([`id_to_archive`]). Files
    /// from before hold `UInt64`, read as well.
    Id(fn(&Row) -> Option<u64>, fn(&mut Row, Option<u64>) -> Result<(), String>),
    U32(fn(&Row) -> Option<u32>, fn(&mut Row, Option<u32>) -> Result<(), String>),
    /// Milliseconds since the epoch, UTC.
    Time(fn(&Row) -> Option<i64>, fn(&mut Row, Option<i64>) -> Result<(), String>),
    Bool(fn(&Row) -> Option<bool>, fn(&mut Row, Option<bool>) -> Result<(), String>),
}

struct Column {
    name: &'static str,
    nullable: bool,
    values: Values,
}

const fn column(name: &'static str, nullable: bool, values: Values) -> Column {
    Column { name, nullable, values }
}

fn required<T>(value: Option<T>) -> Result<T, String> {
    value.ok_or_else(|| "null in a column that has none".to_string())
}

/// The archive row, column by column in file order.
const COLUMNS: &[Column] = &[
    column(
        "scan_id",
        false,
        Values::Hex(
            |r| &r.scan_id,
            |r, v| hex::decode_to_slice(required(v)?, &mut r.scan_id).map_err(|e| e.to_string()),
        ),
    ),
    column(
        "gateway_id",
        false,
        Values::Text(
            |r| Some(Cow::Borrowed(&*r.gateway_id)),
            |r, v| {
                r.gateway_id = Arc::from(required(v)?);
                Ok(())
            },
        ),
    ),
    column(
        "validator_id",
        false,
        Values::Text(
            |r| Some(Cow::Borrowed(&r.validator_id)),
            |r, v| {
                r.validator_id = required(v)?.into();
                Ok(())
            },
        ),
    ),
    column(
        "validator_seq",
        false,
        Values::Id(
            |r| Some(r.validator_seq),
            |r, v| {
                r.validator_seq = required(v)?;
                Ok(())
            },
        ),
    ),
    column(
        "route_id",
        false,
        Values::Text(
            |r| Some(Cow::Borrowed(&r.route_id)),
            |r, v| {
                r.route_id = required(v)?.into();
                Ok(())
            },
        ),
    ),
    column(
        "stop_id",
        false,
        Values::Text(
            |r| Some(Cow::Borrowed(&r.stop_id)),
            |r, v| {
                r.stop_id = required(v)?.into();
                Ok(())
            },
        ),
    ),
    column(
        "tap_kind",
        true,
        Values::Text(
            |r| r.tap_kind.map(|k| Cow::Borrowed(k.as_str())),
            |r, v| {
                r.tap_kind =
                    v.map(|name| TapKind::parse(name).ok_or(format!("unknown tap kind {name:?}"))).transpose()?;
                Ok(())
            },
        ),
    ),
    column(
        "card_id",
        true,
        Values::Id(
            |r| r.card_id,
            |r, v| {
                r.card_id = v;
                Ok(())
            },
        ),
    ),
    column(
        "issuer_key_id",
        true,
        Values::U32(
            |r| r.issuer_key_id,
            |r, v| {
                r.issuer_key_id = v;
                Ok(())
            },
        ),
    ),
    column(
        "code_created_at",
        true,
        Values::Time(
            |r| r.code_created_at,
            |r, v| {
                r.code_created_at = v;
                Ok(())
            },
        ),
    ),
    column(
        "code_counter",
        true,
        Values::U32(
            |r| r.code_counter,
            |r, v| {
                r.code_counter = v;
                Ok(())
            },
        ),
    ),
    column(
        "scanned_at",
        false,
        Values::Time(
            |r| Some(r.scanned_at),
            |r, v| {
                r.scanned_at = required(v)?;
                Ok(())
            },
        ),
    ),
    column(
        "received_at",
        false,
        Values::Time(
            |r| Some(r.received_at),
            |r, v| {
                r.received_at = required(v)?;
                Ok(())
            },
        ),
    ),
    column(
        "status",
        false,
        Values::Text(
            |r| Some(Cow::Borrowed(r.status.as_str())),
            |r, v| {
                let name = required(v)?;
                r.status = ScanStatus::parse(name).ok_or(format!("unknown status {name:?}"))?;
                Ok(())
            },
        ),
    ),
    column(
        "reason",
        true,
        Values::Text(
            |r| r.reason.as_deref().map(Cow::Borrowed),
            |r, v| {
                r.reason = v.map(str::to_string);
                Ok(())
            },
        ),
    ),
    column(
        "gate_opened",
        true,
        Values::Bool(
            |r| r.gate_opened,
            |r, v| {
                r.gate_opened = v;
                Ok(())
            },
        ),
    ),
    column(
        "deny_list_version",
        true,
        Values::Id(
            |r| r.deny_list_version,
            |r, v| {
                r.deny_list_version = v;
                Ok(())
            },
        ),
    ),
];

/// Row `i` of an id column: `Int64` as written ([`id_from_archive`]), or
/// `UInt64` in a file from before ids were signed. The caller has checked
/// the column is one of the two and the row is not null.
pub(crate) fn id_at(array: &dyn Array, i: usize) -> u64 {
    match array.data_type() {
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i),
        _ => id_from_archive(array.as_primitive::<Int64Type>().value(i)),
    }
}

impl Values {
    fn data_type(&self) -> DataType {
        match self {
            Values::Text(..) | Values::Hex(..) => DataType::Utf8,
            Values::Id(..) => DataType::Int64,
            Values::U32(..) => DataType::UInt32,
            Values::Time(..) => DataType::Timestamp(TimeUnit::Millisecond, Some(TIME_ZONE.into())),
            Values::Bool(..) => DataType::Boolean,
        }
    }

    /// An empty builder of this column's array, room for `rows`.
    fn builder(&self, rows: usize) -> ColumnBuilder {
        match self {
            Values::Text(..) => ColumnBuilder::Text(StringBuilder::with_capacity(rows, rows * 16)),
            Values::Hex(..) => ColumnBuilder::Text(StringBuilder::with_capacity(rows, rows * 32)),
            Values::Id(..) => ColumnBuilder::Id(Int64Builder::with_capacity(rows)),
            Values::U32(..) => ColumnBuilder::U32(UInt32Builder::with_capacity(rows)),
            Values::Time(..) => {
                ColumnBuilder::Time(TimestampMillisecondBuilder::with_capacity(rows).with_timezone(TIME_ZONE))
            }
            Values::Bool(..) => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
        }
    }

    /// Appends `row`'s value to `builder`, which [`Values::builder`] made.
    fn push(&self, row: &Row, builder: &mut ColumnBuilder) {
        match (self, builder) {
            (Values::Text(get, _), ColumnBuilder::Text(b)) => b.append_option(get(row)),
            (Values::Hex(get, _), ColumnBuilder::Text(b)) => {
                let mut hex = [0u8; 32];
                // Hex digits are ASCII: the error arm is never taken, and
                // a null there would fail the batch, not pass unseen.
                match hex::encode_to_slice(get(row), &mut hex).map(|()| std::str::from_utf8(&hex)) {
                    Ok(Ok(text)) => b.append_value(text),
                    _ => b.append_null(),
                }
            }
            (Values::Id(get, _), ColumnBuilder::Id(b)) => b.append_option(get(row).map(id_to_archive)),
            (Values::U32(get, _), ColumnBuilder::U32(b)) => b.append_option(get(row)),
            (Values::Time(get, _), ColumnBuilder::Time(b)) => b.append_option(get(row)),
            (Values::Bool(get, _), ColumnBuilder::Bool(b)) => b.append_option(get(row)),
            _ => unreachable!("a column's builder is made by its own Values::builder"),
        }
    }

    /// Sets this column in each row from `array` (already checked to be of
    /// this column's type); the first bad value's row and reason on error.
    fn read(&self, array: &dyn Array, rows: &mut [Row]) -> Result<(), (usize, String)> {
        let at = |i: usize, result: Result<(), String>| result.map_err(|why| (i, why));
        for (i, row) in rows.iter_mut().enumerate() {
            let null = array.is_null(i);
            match self {
                Values::Text(_, set) | Values::Hex(_, set) => {
                    let strings = array.as_string::<i32>();
                    at(i, set(row, (!null).then(|| strings.value(i))))?
                }
                Values::Id(_, set) => at(i, set(row, (!null).then(|| id_at(array, i))))?,
                Values::U32(_, set) => at(i, set(row, (!null).then(|| array.as_primitive::<UInt32Type>().value(i))))?,
                Values::Time(_, set) => {
                    at(i, set(row, (!null).then(|| array.as_primitive::<TimestampMillisecondType>().value(i))))?
                }
                Values::Bool(_, set) => at(i, set(row, (!null).then(|| array.as_boolean().value(i))))?,
            }
        }
        Ok(())
    }
}

/// The archive schema, column by column in file order.
pub fn scan_schema() -> SchemaRef {
    let fields: Vec<Field> = COLUMNS.iter().map(|c| Field::new(c.name, c.values.data_type(), c.nullable)).collect();
    Arc::new(Schema::new(fields))
}

/// Builds one record batch from rows.
pub fn to_record_batch(rows: &[ArchivedScan]) -> Result<RecordBatch, ArrowError> {
    let mut columns = ScanColumns::with_capacity(rows.len());
    rows.iter().for_each(|row| columns.push(row));
    columns.finish()
}

/// The time zone of every time column: UTC.
const TIME_ZONE: &str = "UTC";

/// One column's array being built.
enum ColumnBuilder {
    Text(StringBuilder),
    Id(Int64Builder),
    U32(UInt32Builder),
    Time(TimestampMillisecondBuilder),
    Bool(BooleanBuilder),
}

impl ColumnBuilder {
    /// The array so far; the builder is left empty.
    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
            ColumnBuilder::Id(b) => Arc::new(b.finish()),
            ColumnBuilder::U32(b) => Arc::new(b.finish()),
            ColumnBuilder::Time(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// Archive rows held as the columns of a record batch being built: each
/// row's values are copied into its columns' buffers as it comes, so the
/// rows a writer holds until a row group is full cost no allocation each
/// and are read back contiguous (a row's strings are each a separate
/// allocation, whose frees were the largest share of the writer's time).
pub struct ScanColumns {
    builders: Vec<ColumnBuilder>,
    rows: usize,
}

impl Default for ScanColumns {
    /// Empty; the buffers grow as rows come, so a file holding one late
    /// scan holds one row's worth.
    fn default() -> ScanColumns {
        ScanColumns::with_capacity(0)
    }
}

impl ScanColumns {
    /// Empty, with room for `rows` rows before any buffer grows.
    pub fn with_capacity(rows: usize) -> ScanColumns {
        ScanColumns { builders: builders(rows), rows: 0 }
    }

    /// Copies `row`'s values into the columns.
    pub fn push(&mut self, row: &ArchivedScan) {
        for (column, builder) in COLUMNS.iter().zip(&mut self.builders) {
            column.values.push(row, builder);
        }
        self.rows += 1;
    }

    /// Rows pushed since the last [`ScanColumns::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// No rows pushed since the last [`ScanColumns::finish`].
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows pushed so far as a record batch of [`scan_schema`];
    /// leaves this empty, its buffers to grow again as rows come.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut full = std::mem::replace(&mut self.builders, builders(0));
        self.rows = 0;
        RecordBatch::try_new(scan_schema(), full.iter_mut().map(ColumnBuilder::finish).collect())
    }
}

fn builders(rows: usize) -> Vec<ColumnBuilder> {
    COLUMNS.iter().map(|c| c.values.builder(rows)).collect()
}

/// Reads rows back from a record batch of the archive schema: the other half
/// of the pair assertion that what reaches disk is what was meant. The
/// files come from disk, so every column's presence and type is checked
/// before its values are read, and a bad value is an error naming its row.
/// The service date is the partition's (`service_date=…` in the path), as
/// every Hive reader takes it: the files do not repeat it.
pub fn from_record_batch(batch: &RecordBatch, service_date: NaiveDate) -> Result<Vec<ArchivedScan>, ArrowError> {
    let mut rows = vec![ArchivedScan { service_date, ..ArchivedScan::blank() }; batch.num_rows()];
    for column in COLUMNS {
        let array = batch
            .column_by_name(column.name)
            .ok_or_else(|| ArrowError::SchemaError(format!("archive file lacks column {}", column.name)))?;
        let expected = column.values.data_type();
        let legacy = matches!(column.values, Values::Id(..)) && array.data_type() == &DataType::UInt64;
        if array.data_type() != &expected && !legacy {
            return Err(ArrowError::SchemaError(format!(
                "archive column {} is {}, expected {expected}",
                column.name,
                array.data_type()
            )));
        }
        column
            .values
            .read(array.as_ref(), &mut rows)
            .map_err(|(row, why)| ArrowError::ParseError(format!("row {row}: bad {}: {why}", column.name)))?;
    }
    Ok(rows)
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
        let error = from_record_batch(&foreign, NaiveDate::MIN).expect_err("wrong type");
        assert!(error.to_string().contains("scan_id is Int64"), "{error}");
    }

    #[test]
    fn every_field_of_a_row_survives_a_record_batch() {
        let full = ArchivedScan {
            scan_id: [7; 16],
            gateway_id: Arc::from("depot-01"),
            validator_id: "gate-3".into(),
            validator_seq: u64::MAX,
            route_id: "metro-1".into(),
            stop_id: "station-09".into(),
            tap_kind: Some(TapKind::Exit),
            card_id: Some(u64::MAX),
            issuer_key_id: Some(u32::MAX),
            code_created_at: Some(i64::MIN),
            code_counter: Some(0),
            scanned_at: i64::MAX,
            received_at: -1,
            status: ScanStatus::Replay,
            reason: Some(String::new()),
            service_date: chrono::NaiveDate::from_ymd_opt(2106, 2, 7).expect("date"),
            gate_opened: Some(false),
            deny_list_version: Some(u64::MAX),
        };
        let date = full.service_date;
        let sparse = ArchivedScan { reason: None, service_date: date, ..ArchivedScan::blank() };
        let rows = vec![full, sparse];
        assert_eq!(from_record_batch(&to_record_batch(&rows).expect("batch"), date).expect("rows"), rows);
        assert!(scan_schema().field_with_name("service_date").is_err(), "the partition carries it, not the file");
        assert_eq!(scan_schema().fields().len(), COLUMNS.len());
    }

    /// Issue 17 item 14: ids are `Int64`, which every engine reads; a file
    /// written before, with `UInt64` ids, still reads back.
    #[test]
    fn ids_are_signed_64_bit_and_older_unsigned_files_still_read() {
        for name in ["validator_seq", "card_id", "deny_list_version"] {
            let field = scan_schema().field_with_name(name).expect("column").clone();
            assert_eq!(field.data_type(), &DataType::Int64, "{name}");
        }
        let row = ArchivedScan { card_id: Some(crate::scan::ID_MAX), validator_seq: 12, ..ArchivedScan::blank() };
        let batch = to_record_batch(std::slice::from_ref(&row)).expect("batch");
        let legacy_fields: Vec<Field> = scan_schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int64 => Field::new(f.name(), DataType::UInt64, f.is_nullable()),
                _ => f.as_ref().clone(),
            })
            .collect();
        let legacy_columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Int64 => Arc::new(
                    c.as_primitive::<Int64Type>()
                        .iter()
                        .map(|v| v.map(|x| u64::try_from(x).expect("non-negative")))
                        .collect::<arrow_array::UInt64Array>(),
                ),
                _ => Arc::clone(c),
            })
            .collect();
        let legacy = RecordBatch::try_new(Arc::new(Schema::new(legacy_fields)), legacy_columns).expect("legacy");
        assert_eq!(from_record_batch(&legacy, row.service_date).expect("rows"), vec![row]);

        // A card id issued before ids were kept within 2^63 - 1: the same 64
        // bits, negative in the signed column, and back exactly.
        let legacy_card = ArchivedScan { card_id: Some(u64::MAX - 4), ..ArchivedScan::blank() };
        let batch = to_record_batch(std::slice::from_ref(&legacy_card)).expect("batch");
        let card = batch.schema().index_of("card_id").expect("card_id");
        assert_eq!(batch.column(card).as_primitive::<Int64Type>().value(0), -5);
        assert_eq!(from_record_batch(&batch, legacy_card.service_date).expect("rows"), vec![legacy_card]);
    }

    #[test]
    fn a_bad_value_names_its_column_and_row() {
        let mut batch = to_record_batch(&[ArchivedScan::blank(), ArchivedScan::blank()]).expect("batch");
        let mut columns = batch.columns().to_vec();
        let status = COLUMNS.iter().position(|c| c.name == "status").expect("status column");
        columns[status] = Arc::new(arrow_array::StringArray::from(vec!["accepted", "teleported"]));
        batch = RecordBatch::try_new(scan_schema(), columns).expect("batch");
        let error = from_record_batch(&batch, NaiveDate::MIN).expect_err("unknown status").to_string();
        assert!(error.contains("row 1: bad status: unknown status \"teleported\""), "{error}");
    }

    /// A scan id is written as 32 hex digits at both ends of its range, and
    /// only 32 hex digits read back: empty, one short, one over, not hex
    /// and null are each refused by row.
    #[test]
    fn scan_ids_are_32_hex_digits_both_ways() {
        let ends = [[0u8; 16], [0xff; 16]].map(|scan_id| ArchivedScan { scan_id, ..ArchivedScan::blank() });
        let batch = to_record_batch(&ends).expect("batch");
        let written = batch.column(0).as_string::<i32>();
        assert_eq!((written.value(0), written.value(1)), ("0".repeat(32).as_str(), "f".repeat(32).as_str()));
        assert_eq!(from_record_batch(&batch, ArchivedScan::blank().service_date).expect("read"), ends);
        let scan_id = COLUMNS.iter().position(|c| c.name == "scan_id").expect("scan_id column");
        let bad = ["", &"a".repeat(31), &"a".repeat(33), &"z".repeat(32)];
        for text in bad.iter().map(|t| Some(*t)).chain([None]) {
            let mut columns = to_record_batch(&[ArchivedScan::blank()]).expect("batch").columns().to_vec();
            columns[scan_id] = Arc::new(arrow_array::StringArray::from(vec![text]));
            let schema = Arc::new(Schema::new(
                scan_schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
            ));
            let batch = RecordBatch::try_new(schema, columns).expect("batch");
            let error = from_record_batch(&batch, NaiveDate::MIN).expect_err("refused").to_string();
            assert!(error.contains("row 0: bad scan_id"), "{text:?}: {error}");
        }
    }
}
