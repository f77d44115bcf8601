//! The charges archive's row and its Arrow form: one row per charge with
//! its final outcome (`docs/archive.md`, "The charges archive"). Ids are
//! hex, as in the scans archive, so `scan_ids` joins `scans.scan_id`. The
//! service date is the partition's, not a column (as in the scans archive).

use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType, UInt32Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::NaiveDate;

use crate::charges::{ChargeKind, ChargeOutcome, ChargeRecord};
use crate::money::Cents;
use crate::scan::id_to_archive;

fn time() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The charges archive's Arrow schema: a column per [`ChargeRecord`] field but `service_date` (the
/// partition). Times are UTC ms; `decided_at` and `gateway_txn_id` may be null.
pub fn charge_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("charge_id", DataType::Utf8, false),
        // Signed, as every engine reads it: the card id's 64 bits
        // (`scan::id_to_archive`), so ids issued before 2^63 read negative.
        Field::new("card_id", DataType::Int64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("amount_cents", DataType::Int64, false),
        Field::new("currency", DataType::Utf8, false),
        Field::new("scan_ids", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("attempts", DataType::UInt32, false),
        Field::new("created_at", time(), false),
        Field::new("decided_at", time(), true),
        Field::new("gateway_txn_id", DataType::Utf8, true),
    ]))
}

/// Writes rows as one batch of [`charge_schema`]: ids as hex, card ids signed (`scan::id_to_archive`).
pub fn charges_to_record_batch(rows: &[ChargeRecord]) -> Result<RecordBatch, ArrowError> {
    let strings = |get: fn(&ChargeRecord) -> Option<String>| -> ArrayRef {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_option(get(r)));
        Arc::new(b.finish())
    };
    let times = |get: fn(&ChargeRecord) -> Option<i64>| -> ArrayRef {
        let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
        rows.iter().for_each(|r| b.append_option(get(r)));
        Arc::new(b.finish())
    };
    let mut cards = Int64Builder::new();
    let mut amounts = Int64Builder::new();
    let mut attempts = UInt32Builder::new();
    let mut scans = ListBuilder::new(StringBuilder::new());
    for row in rows {
        cards.append_value(id_to_archive(row.card_id));
        amounts.append_value(row.amount_cents.get());
        attempts.append_value(row.attempts);
        row.scan_ids.iter().for_each(|id| scans.values().append_value(hex::encode(id)));
        scans.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        strings(|r| Some(hex::encode(r.charge_id))),
        Arc::new(cards.finish()),
        strings(|r| Some(r.kind.as_str().to_string())),
        Arc::new(amounts.finish()),
        strings(|r| Some(r.currency.clone())),
        Arc::new(scans.finish()),
        strings(|r| Some(r.outcome.as_str().to_string())),
        Arc::new(attempts.finish()),
        times(|r| Some(r.created_at)),
        times(|r| r.decided_at),
        strings(|r| r.gateway_txn_id.clone()),
    ];
    RecordBatch::try_new(charge_schema(), columns)
}

/// Reads rows back from a batch of the charges schema (files from disk:
/// every column's type is checked, a bad value names its row), in the
/// partition of `service_date`.
pub fn charges_from_record_batch(
    batch: &RecordBatch,
    service_date: NaiveDate,
) -> Result<Vec<ChargeRecord>, ArrowError> {
    let schema = charge_schema();
    for field in schema.fields() {
        let found = batch.column_by_name(field.name()).map(|c| c.data_type().clone());
        // Files from before card ids were signed hold `UInt64`.
        let legacy_card = field.name() == "card_id" && found == Some(DataType::UInt64);
        if found.as_ref() != Some(field.data_type()) && !legacy_card {
            return Err(ArrowError::SchemaError(format!(
                "column {} is {found:?}, not {}",
                field.name(),
                field.data_type()
            )));
        }
    }
    let column = |name: &str| batch.column_by_name(name).expect("checked above");
    let text = |name: &str, i: usize| {
        let array = column(name).as_string::<i32>();
        (!array.is_null(i)).then(|| array.value(i).to_string())
    };
    let id = |text: &str, i: usize| -> Result<[u8; 16], ArrowError> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(text, &mut id)
            .map_err(|e| ArrowError::ParseError(format!("row {i}: id {text:?}: {e}")))?;
        Ok(id)
    };
    let bad = |i: usize, what: &str| ArrowError::ParseError(format!("row {i}: {what}"));
    let scans = column("scan_ids").as_list::<i32>();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let kind = text("kind", i).and_then(|k| ChargeKind::parse(&k)).ok_or_else(|| bad(i, "unknown kind"))?;
        let listed = scans.value(i);
        let listed = listed.as_string::<i32>();
        let scan_ids = (0..listed.len()).map(|j| id(listed.value(j), i)).collect::<Result<_, _>>()?;
        let decided = column("decided_at").as_primitive::<TimestampMillisecondType>();
        rows.push(ChargeRecord {
            charge_id: id(&text("charge_id", i).ok_or_else(|| bad(i, "null charge_id"))?, i)?,
            card_id: super::schema::id_at(column("card_id").as_ref(), i),
            service_date,
            kind,
            amount_cents: Cents::new(column("amount_cents").as_primitive::<Int64Type>().value(i)),
            currency: text("currency", i).ok_or_else(|| bad(i, "null currency"))?,
            scan_ids,
            outcome: text("outcome", i)
                .and_then(|o| ChargeOutcome::parse(&o))
                .ok_or_else(|| bad(i, "unknown outcome"))?,
            attempts: column("attempts").as_primitive::<UInt32Type>().value(i),
            created_at: column("created_at").as_primitive::<TimestampMillisecondType>().value(i),
            decided_at: (!decided.is_null(i)).then(|| decided.value(i)),
            gateway_txn_id: text("gateway_txn_id", i),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_another_schema_is_an_error_not_a_panic() {
        let foreign = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("charge_id", DataType::Int64, false)])),
            vec![Arc::new(arrow_array::Int64Array::from(vec![1i64]))],
        )
        .expect("batch");
        let error = charges_from_record_batch(&foreign, NaiveDate::MIN).expect_err("wrong type").to_string();
        assert!(error.contains("column charge_id is Some(Int64)"), "{error}");
    }

    #[test]
    fn an_outcome_or_kind_this_build_does_not_know_is_an_error_naming_the_row() {
        let row = ChargeRecord {
            charge_id: [1; 16],
            card_id: 7,
            service_date: NaiveDate::MIN,
            kind: ChargeKind::Ride,
            amount_cents: Cents::new(300),
            currency: "CNY".into(),
            scan_ids: vec![],
            outcome: ChargeOutcome::Pending,
            attempts: 0,
            created_at: 0,
            decided_at: None,
            gateway_txn_id: None,
        };
        let batch = charges_to_record_batch(&[row.clone(), row]).expect("batch");
        for (column, known, unknown, error) in [
            ("outcome", "pending", "refunded", "row 1: unknown outcome"),
            ("outcome", "pending", "", "row 1: unknown outcome"),
            ("kind", "ride", "", "row 1: unknown kind"),
        ] {
            let mut columns = batch.columns().to_vec();
            let index = batch.schema().index_of(column).expect("column");
            columns[index] = Arc::new(arrow_array::StringArray::from(vec![known, unknown]));
            let changed = RecordBatch::try_new(batch.schema(), columns).expect("same schema");
            let read = charges_from_record_batch(&changed, NaiveDate::MIN).expect_err(unknown).to_string();
            assert!(read.contains(error), "{read}");
        }
    }

    #[test]
    fn charges_round_trip_at_their_extremes() {
        let row = |n: u8, scans: usize| ChargeRecord {
            charge_id: [n; 16],
            card_id: if n == 0 { 0 } else { crate::scan::ID_MAX },
            service_date: NaiveDate::MAX,
            kind: ChargeKind::ALL[usize::from(n) % 3],
            amount_cents: if n == 0 { Cents::MIN } else { Cents::MAX },
            currency: "CNY".into(),
            scan_ids: (0..scans).map(|s| [s as u8; 16]).collect(),
            outcome: ChargeOutcome::Succeeded,
            attempts: u32::MAX,
            created_at: i64::MIN,
            decided_at: (n != 0).then_some(i64::MAX),
            gateway_txn_id: (n != 0).then(|| "txn-1".into()),
        };
        let rows = vec![row(0, 0), row(1, 2), row(2, 1)];
        let batch = charges_to_record_batch(&rows).expect("batch");
        assert_eq!(charges_from_record_batch(&batch, NaiveDate::MAX).expect("read"), rows);
        let empty = charges_to_record_batch(&[]).expect("empty");
        assert_eq!(charges_from_record_batch(&empty, NaiveDate::MIN).expect("read"), vec![]);

        let legacy = vec![ChargeRecord { card_id: u64::MAX, ..rows[1].clone() }];
        let batch_of_legacy = charges_to_record_batch(&legacy).expect("a card issued before 2^63 - 1 was the limit");
        assert_eq!(charges_from_record_batch(&batch_of_legacy, NaiveDate::MAX).expect("read"), legacy);
        let mut columns = batch.columns().to_vec();
        let card = batch.schema().index_of("card_id").expect("card_id");
        let unsigned: arrow_array::UInt64Array = rows.iter().map(|r| Some(r.card_id)).collect();
        columns[card] = Arc::new(unsigned);
        let mut fields: Vec<Field> = charge_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[card] = Field::new("card_id", DataType::UInt64, false);
        let legacy = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("a file from before");
        assert_eq!(charges_from_record_batch(&legacy, NaiveDate::MAX).expect("read"), rows);
    }
}
