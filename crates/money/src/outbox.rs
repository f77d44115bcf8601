//! Reading the outbox: a card's charges with their outcomes (the account
//! view, the audit, the charges archive, the tests), and how many there
//! are and how many are not decided yet.

use crate::codec::{card_from_sql, card_to_sql, date_from_sql, id_from_sql, ids_from_sql};
use crate::db::{Db, Row, Value};
use crate::store::StoreError;
use farestream_core::charges::{ChargeKind, ChargeOutcome, ChargeRecord, UNDECIDED_OUTCOMES_SQL};
use farestream_core::clock::UnixMillis;
use farestream_core::money::Cents;

/// The newest charges that pass `$condition`, oldest first: the
/// statement of one [`Filter`], its limit the last placeholder.
macro_rules! newest_charges_sql {
    ($condition:literal, $limit:literal) => {
        concat!(
            "SELECT * FROM (SELECT charge_id, card_id, service_date, kind, amount_cents, currency, scan_ids,
                                   created_at, outcome, attempts, decided_at, gateway_txn_id
                            FROM charges WHERE ",
            $condition,
            " ORDER BY created_at DESC, service_date DESC, charge_id DESC LIMIT ",
            $limit,
            ") AS newest ORDER BY created_at, service_date, charge_id"
        )
    };
}

/// Which charges to read.
enum Filter {
    Every,
    Card(u64),
    /// The charges numbered as one batch of the charges archive.
    ArchiveBatch(i64),
    /// Charges the charges archive does not hold yet (undecided, or
    /// decided and waiting for their batch's files).
    Unarchived,
}

/// A card's charges (`None`: every card's), oldest first.
pub fn charges(db: &mut dyn Db, card_id: Option<u64>) -> Result<Vec<ChargeRecord>, StoreError> {
    select(db, card_id.map_or(Filter::Every, Filter::Card), i64::MAX)
}

/// A card's newest `count` charges, newest first.
pub fn newest_charges(db: &mut dyn Db, card_id: u64, count: usize) -> Result<Vec<ChargeRecord>, StoreError> {
    let mut rows = select(db, Filter::Card(card_id), i64::try_from(count).unwrap_or(i64::MAX))?;
    rows.reverse();
    Ok(rows)
}

/// The charges of one charges-archive batch.
pub fn archive_batch(db: &mut dyn Db, batch: i64) -> Result<Vec<ChargeRecord>, StoreError> {
    select(db, Filter::ArchiveBatch(batch), i64::MAX)
}

/// Oldest first; with a `limit`, the newest that many. Each filter is a
/// statement of its own: a placeholder PostgreSQL cannot type (`?1 IS
/// NULL`) is an error there.
fn select(db: &mut dyn Db, filter: Filter, limit: i64) -> Result<Vec<ChargeRecord>, StoreError> {
    let limit = Value::Int(limit);
    let rows = match filter {
        Filter::Every => db.query(newest_charges_sql!("TRUE", "?1"), &[limit])?,
        Filter::Card(card_id) => {
            db.query(newest_charges_sql!("card_id = ?1", "?2"), &[Value::Int(card_to_sql(card_id)), limit])?
        }
        Filter::ArchiveBatch(batch) => {
            db.query(newest_charges_sql!("archive_batch = ?1", "?2"), &[batch.into(), limit])?
        }
        Filter::Unarchived => db.query(newest_charges_sql!("archived_at IS NULL", "?1"), &[limit])?,
    };
    rows.iter().map(charge_record).collect()
}

fn charge_record(row: &Row) -> Result<ChargeRecord, StoreError> {
    let id = row.bytes(0)?;
    let kind = row.text(3)?;
    let outcome = row.text(8)?;
    let attempts = row.int(9)?;
    Ok(ChargeRecord {
        charge_id: id_from_sql(id)?,
        card_id: card_from_sql(row.int(1)?),
        service_date: date_from_sql(row.int(2)?)?,
        kind: ChargeKind::parse(kind).ok_or_else(|| StoreError::Corrupt(format!("charge kind {kind:?}")))?,
        amount_cents: Cents::new(row.int(4)?),
        currency: row.text(5)?.to_string(),
        scan_ids: ids_from_sql(row.bytes(6)?)?,
        created_at: row.int(7)?,
        outcome: ChargeOutcome::parse(outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("charge {} has the outcome {outcome:?}", hex::encode(id))))?,
        attempts: u32::try_from(attempts).map_err(|_| StoreError::Corrupt(format!("{attempts} attempts")))?,
        decided_at: row.opt_int(10)?,
        gateway_txn_id: row.opt_text(11)?.map(str::to_string),
    })
}

/// Every charge the charges archive does not hold yet, oldest first.
pub fn unarchived_charges(db: &mut dyn Db) -> Result<Vec<ChargeRecord>, StoreError> {
    select(db, Filter::Unarchived, i64::MAX)
}

/// Every charge, in any outcome.
pub fn count(db: &mut dyn Db) -> Result<u64, StoreError> {
    let row = db.query_opt("SELECT count(*) FROM charges", &[])?;
    Ok(row.ok_or_else(|| StoreError::Corrupt("count(*) gave no row".into()))?.int(0)?.unsigned_abs())
}

/// Charges not yet decided (`pending`, or `failed` and still retried),
/// for the gauges and `audit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Undecided {
    pub pending: u64,
    /// Past their retry budget (still retried).
    pub failed: u64,
    /// When the oldest undecided charge was written (server clock).
    pub oldest_created_at: Option<UnixMillis>,
}

pub fn undecided_charges(db: &mut dyn Db) -> Result<Undecided, StoreError> {
    let row = db.query_opt(
        &format!(
            "SELECT count(*) FILTER (WHERE outcome = ?1), count(*) FILTER (WHERE outcome = ?2), min(created_at)
             FROM charges WHERE outcome IN {UNDECIDED_OUTCOMES_SQL}"
        ),
        &[ChargeOutcome::Pending.as_str().into(), ChargeOutcome::Failed.as_str().into()],
    )?;
    let row = row.ok_or_else(|| StoreError::Corrupt("an aggregate gave no row".into()))?;
    Ok(Undecided {
        pending: row.int(0)?.unsigned_abs(),
        failed: row.int(1)?.unsigned_abs(),
        oldest_created_at: row.opt_int(2)?,
    })
}

/// How many charges are not decided yet: [`undecided_charges`]' two counts.
pub fn undecided(db: &mut dyn Db) -> Result<u64, StoreError> {
    let Undecided { pending, failed, .. } = undecided_charges(db)?;
    Ok(pending.saturating_add(failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_cluster::on_both_stores;

    /// Charges of two cards (one at the largest card id) in every state
    /// the readers tell apart: pending, failed, decided in an archive
    /// batch (archived or not), decided with a gateway's id; written in
    /// an order their times do not follow.
    fn write_charges(db: &mut dyn Db) {
        // (id byte, card, created_at, outcome, archive batch, archived_at, gateway id)
        type Charge<'a> = (u8, i64, i64, &'a str, Option<i64>, Option<i64>, Option<&'a str>);
        let rows: [Charge<'_>; 5] = [
            (1, 7, 300, "pending", None, None, None),
            (2, -1, 100, "failed", None, None, None),
            (3, 7, 200, "succeeded", Some(4), Some(9), Some("txn-3")),
            (4, 7, 400, "declined", Some(4), None, None),
            (5, -1, 500, "nothing_due", Some(5), Some(9), None),
        ];
        for (n, card, created_at, outcome, batch, archived_at, txn) in rows {
            db.execute(
                "INSERT INTO charges (charge_id, card_id, service_date, kind, amount_cents, currency, scan_ids,
                                      created_at, outcome, next_attempt_at, attempts, archive_batch, archived_at,
                                      gateway_txn_id, decided_at)
                 VALUES (?1, ?2, 20000, 'ride', ?3, 'CNY', ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11)",
                &[
                    Value::Bytes(&[n; 16]),
                    card.into(),
                    i64::from(n).into(),
                    Value::Bytes(&[n; 32]),
                    created_at.into(),
                    outcome.into(),
                    i64::from(n % 3).into(),
                    batch.into(),
                    archived_at.into(),
                    txn.into(),
                    archived_at.map(|_| created_at + 1).into(),
                ],
            )
            .expect("a charge");
        }
    }

    type Read = (Vec<[u8; 16]>, Vec<[u8; 16]>, Vec<[u8; 16]>, Vec<[u8; 16]>, Vec<ChargeRecord>, u64, Undecided);

    fn read(db: &mut dyn Db) -> Read {
        let ids = |charges: Vec<ChargeRecord>| charges.iter().map(|c| c.charge_id).collect::<Vec<_>>();
        (
            ids(charges(db, Some(7)).expect("a card's")),
            ids(newest_charges(db, 7, 2).expect("newest")),
            ids(archive_batch(db, 4).expect("a batch")),
            ids(unarchived_charges(db).expect("unarchived")),
            charges(db, None).expect("every charge"),
            count(db).expect("count"),
            undecided_charges(db).expect("undecided"),
        )
    }

    /// Every reader of the outbox answers the same on both engines, in
    /// the same order: oldest first by when a charge was written, newest
    /// first where asked.
    #[test]
    fn the_outbox_reads_the_same_on_both_engines() {
        let (card, newest, batch, unarchived, every, all, undecided) = on_both_stores(|db, _| {
            write_charges(db);
            read(db)
        });
        assert_eq!(card, [[3; 16], [1; 16], [4; 16]], "card 7's, oldest first");
        assert_eq!(newest, [[4; 16], [1; 16]], "its newest two, newest first");
        assert_eq!(batch, [[3; 16], [4; 16]]);
        assert_eq!(unarchived, [[2; 16], [1; 16], [4; 16]], "undecided, and decided but not archived");
        assert_eq!(every.len(), 5);
        let largest = every.iter().find(|c| c.charge_id == [2; 16]).expect("charge 2");
        assert_eq!(largest.card_id, u64::MAX, "the largest card id, bit for bit");
        let decided = every.iter().find(|c| c.charge_id == [3; 16]).expect("charge 3");
        assert_eq!(
            (decided.gateway_txn_id.as_deref(), decided.decided_at, decided.attempts),
            (Some("txn-3"), Some(201), 0)
        );
        assert_eq!(all, 5);
        assert_eq!(undecided, Undecided { pending: 1, failed: 1, oldest_created_at: Some(100) });
    }
}
