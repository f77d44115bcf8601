//! Reading the outbox: a card's charges with their outcomes (the account
//! view, the audit, the charges archive, the tests), and how many there
//! are and how many are not decided yet.

use rusqlite::{Connection, params};

use crate::codec::{card_from_sql, card_to_sql, date_from_sql, id_from_sql, ids_from_sql};
use crate::store::StoreError;
use farestream_core::charges::{ChargeKind, ChargeOutcome, ChargeRecord, UNDECIDED_OUTCOMES_SQL};
use farestream_core::clock::UnixMillis;
use farestream_core::money::Cents;

const COLUMNS: &str = "charge_id, card_id, service_date, kind, amount_cents, currency, scan_ids, created_at,
                       outcome, attempts, decided_at, gateway_txn_id";

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
pub fn charges(conn: &Connection, card_id: Option<u64>) -> Result<Vec<ChargeRecord>, StoreError> {
    select(conn, card_id.map_or(Filter::Every, Filter::Card), i64::MAX)
}

/// A card's newest `count` charges, newest first.
pub fn newest_charges(conn: &Connection, card_id: u64, count: usize) -> Result<Vec<ChargeRecord>, StoreError> {
    let mut rows = select(conn, Filter::Card(card_id), i64::try_from(count).unwrap_or(i64::MAX))?;
    rows.reverse();
    Ok(rows)
}

/// The charges of one charges-archive batch.
pub fn archive_batch(conn: &Connection, batch: i64) -> Result<Vec<ChargeRecord>, StoreError> {
    select(conn, Filter::ArchiveBatch(batch), i64::MAX)
}

/// Oldest first; with a `limit`, the newest that many.
fn select(conn: &Connection, filter: Filter, limit: i64) -> Result<Vec<ChargeRecord>, StoreError> {
    let (condition, value) = match filter {
        Filter::Every => ("?1 IS NULL", None),
        Filter::Card(card_id) => ("card_id = ?1", Some(card_to_sql(card_id))),
        Filter::ArchiveBatch(batch) => ("archive_batch = ?1", Some(batch)),
        Filter::Unarchived => ("archived_at IS NULL AND ?1 IS NULL", None),
    };
    let sql = format!(
        "SELECT * FROM (SELECT {COLUMNS} FROM charges WHERE {condition}
                        ORDER BY created_at DESC, service_date DESC, charge_id DESC LIMIT ?2)
         ORDER BY created_at, service_date, charge_id"
    );
    let mut query = conn.prepare_cached(&sql)?;
    let rows = query.query_map(params![value, limit], |r| {
        Ok((
            (r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?),
            (r.get::<_, i64>(4)?, r.get::<_, String>(5)?, r.get::<_, Vec<u8>>(6)?, r.get::<_, i64>(7)?),
            (
                r.get::<_, String>(8)?,
                r.get::<_, u32>(9)?,
                r.get::<_, Option<i64>>(10)?,
                r.get::<_, Option<String>>(11)?,
            ),
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            (id, card, date, kind),
            (amount_cents, currency, scan_ids, created_at),
            (outcome, attempts, decided_at, txn),
        ) = row?;
        out.push(ChargeRecord {
            charge_id: id_from_sql(&id)?,
            card_id: card_from_sql(card),
            service_date: date_from_sql(date)?,
            kind: ChargeKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("charge kind {kind:?}")))?,
            amount_cents: Cents::new(amount_cents),
            currency,
            scan_ids: ids_from_sql(&scan_ids)?,
            created_at,
            outcome: ChargeOutcome::parse(&outcome).ok_or_else(|| {
                StoreError::Corrupt(format!("charge {} has the outcome {outcome:?}", hex::encode(&id)))
            })?,
            attempts,
            decided_at,
            gateway_txn_id: txn,
        });
    }
    Ok(out)
}

/// Every charge the charges archive does not hold yet, oldest first.
pub fn unarchived_charges(conn: &Connection) -> Result<Vec<ChargeRecord>, StoreError> {
    select(conn, Filter::Unarchived, i64::MAX)
}

/// Every charge, in any outcome.
pub fn count(conn: &Connection) -> Result<u64, StoreError> {
    let count: i64 = conn.query_row("SELECT count(*) FROM charges", [], |r| r.get(0))?;
    Ok(count.unsigned_abs())
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

pub fn undecided_charges(conn: &Connection) -> Result<Undecided, StoreError> {
    let (pending, failed, oldest): (i64, i64, Option<i64>) = conn.query_row(
        &format!(
            "SELECT count(*) FILTER (WHERE outcome = ?1), count(*) FILTER (WHERE outcome = ?2), min(created_at)
             FROM charges WHERE outcome IN {UNDECIDED_OUTCOMES_SQL}"
        ),
        [ChargeOutcome::Pending.as_str(), ChargeOutcome::Failed.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(Undecided { pending: pending.unsigned_abs(), failed: failed.unsigned_abs(), oldest_created_at: oldest })
}

/// How many charges are not decided yet: [`undecided_charges`]' two counts.
pub fn undecided(conn: &Connection) -> Result<u64, StoreError> {
    let Undecided { pending, failed, .. } = undecided_charges(conn)?;
    Ok(pending.saturating_add(failed))
}
