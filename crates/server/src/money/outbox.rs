//! Reading the outbox: a card's charges with their outcomes (the account
//! view, the demo's summary, the tests), and how many are not decided yet.

use rusqlite::{Connection, params};

use super::codec::{card_from_sql, card_to_sql, date_from_sql, id_from_sql, ids_from_sql};
use super::store::StoreError;
use crate::charges::ChargeKind;
use crate::clock::UnixMillis;

/// One charge as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRow {
    pub charge_id: [u8; 16],
    pub card_id: u64,
    pub service_date: chrono::NaiveDate,
    pub kind: ChargeKind,
    pub amount_cents: i64,
    pub currency: String,
    pub scan_ids: Vec<[u8; 16]>,
    pub created_at: UnixMillis,
    /// `pending`, `succeeded`, `declined`, `failed` or `nothing_due`.
    pub outcome: String,
    pub attempts: u32,
    pub decided_at: Option<UnixMillis>,
}

const COLUMNS: &str = "charge_id, card_id, service_date, kind, amount_cents, currency, scan_ids, created_at,
                       outcome, attempts, decided_at";

/// A card's charges (`None`: every card's), oldest first.
pub fn charges(conn: &Connection, card_id: Option<u64>) -> Result<Vec<ChargeRow>, StoreError> {
    select(conn, card_id, i64::MAX)
}

/// A card's newest `count` charges, newest first.
pub fn newest_charges(conn: &Connection, card_id: u64, count: usize) -> Result<Vec<ChargeRow>, StoreError> {
    let mut rows = select(conn, Some(card_id), i64::try_from(count).unwrap_or(i64::MAX))?;
    rows.reverse();
    Ok(rows)
}

/// Oldest first; with a `limit`, the newest that many.
fn select(conn: &Connection, card_id: Option<u64>, limit: i64) -> Result<Vec<ChargeRow>, StoreError> {
    let sql = format!(
        "SELECT * FROM (SELECT {COLUMNS} FROM charges WHERE ?1 IS NULL OR card_id = ?1
                        ORDER BY created_at DESC, service_date DESC, charge_id DESC LIMIT ?2)
         ORDER BY created_at, service_date, charge_id"
    );
    let mut query = conn.prepare_cached(&sql)?;
    let rows = query.query_map(params![card_id.map(card_to_sql), limit], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get::<_, Vec<u8>>(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, card, date, kind, amount_cents, currency, scan_ids, created_at, outcome, attempts, decided_at) = row?;
        out.push(ChargeRow {
            charge_id: id_from_sql(&id)?,
            card_id: card_from_sql(card),
            service_date: date_from_sql(date)?,
            kind: ChargeKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("charge kind {kind:?}")))?,
            amount_cents,
            currency,
            scan_ids: ids_from_sql(&scan_ids)?,
            created_at,
            outcome,
            attempts,
            decided_at,
        });
    }
    Ok(out)
}

/// Charges not yet decided: `pending` or `failed` (still retried).
pub fn undecided(conn: &Connection) -> Result<u64, StoreError> {
    let count: i64 =
        conn.query_row("SELECT count(*) FROM charges WHERE outcome IN ('pending', 'failed')", [], |r| r.get(0))?;
    Ok(count.unsigned_abs())
}
