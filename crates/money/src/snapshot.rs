//! What the daily settlement reads from the money store, in one
//! snapshot of it (`MoneyStore::in_snapshot`): the pricer's log position
//! (a cluster's partitions' positions in their claimed stream), the
//! charges the charges archive does not hold yet, the entries still open,
//! each card's arrears and every arrears payment. Read together, these agree with each other; a
//! charge archived after this read is found in both the snapshot and the
//! archive, and the settlement takes it once (by its id).

use crate::codec::{card_from_sql, date_to_sql};
use crate::db::Db;
use crate::money_store::MoneyStore;
use crate::outbox::unarchived_charges;
use crate::pricer::partition_of_reader;
use crate::store::{StoreError, log_cursor};
use chrono::NaiveDate;
use farestream_core::charges::ChargeRecord;
use farestream_core::clock::UnixMillis;
use farestream_core::money::Cents;
use std::collections::BTreeMap;

/// One arrears payment: `amount_cents` is negative (what the debt went down by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrearsPayment {
    pub card_id: u64,
    pub at: UnixMillis,
    pub amount_cents: Cents,
}

#[derive(Debug, Clone, Default)]
pub struct MoneySnapshot {
    /// Every log record below this LSN has been priced.
    pub pricer_lsn: u64,
    /// In a cluster: for each partition, every record of its claimed
    /// stream below this sequence has been priced (docs/scale-out.md).
    pub partition_cursors: BTreeMap<u16, u64>,
    /// Charges not in the charges archive (yet): undecided ones, and
    /// decided ones whose batch is not marked archived.
    pub unarchived_charges: Vec<ChargeRecord>,
    /// Cards of the day whose last entry's exit window is still open, with
    /// when it closes.
    pub open_entries: Vec<(u64, UnixMillis)>,
    /// The arrears of every card that owes any (the rest owe nothing).
    pub arrears: Vec<(u64, Cents)>,
    pub arrears_payments: Vec<ArrearsPayment>,
}

/// Reads the snapshot for `date`; `pricer` is the settled server's
/// pricer's name in the store (`pricer::reader_name`).
pub fn money_snapshot(store: &mut MoneyStore, date: NaiveDate, pricer: &str) -> Result<MoneySnapshot, StoreError> {
    store.in_snapshot(|db| read_snapshot(db, date, pricer))
}

fn read_snapshot(db: &mut dyn Db, date: NaiveDate, pricer: &str) -> Result<MoneySnapshot, StoreError> {
    let pricer_lsn = log_cursor(db, pricer)?.unwrap_or(0);
    let partition_cursors = partition_cursors(db)?;
    let unarchived = unarchived_charges(db)?;
    let open_entries = db
        .query("SELECT card_id, closes_at FROM open_entries WHERE service_date = ?1", &[date_to_sql(date).into()])?
        .iter()
        .map(|r| Ok((card_from_sql(r.int(0)?), r.int(1)?)))
        .collect::<Result<_, StoreError>>()?;
    let arrears = db
        .query("SELECT card_id, arrears_cents FROM accounts WHERE arrears_cents <> 0", &[])?
        .iter()
        .map(|r| Ok((card_from_sql(r.int(0)?), Cents::new(r.int(1)?))))
        .collect::<Result<_, StoreError>>()?;
    let arrears_payments = db
        .query(
            "SELECT card_id, at, amount_cents FROM account_history
             WHERE event IN ('arrears_paid', 'arrears_paid_from_deposit', 'arrears_netted')",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(ArrearsPayment { card_id: card_from_sql(r.int(0)?), at: r.int(1)?, amount_cents: Cents::new(r.int(2)?) })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(MoneySnapshot {
        pricer_lsn,
        partition_cursors,
        unarchived_charges: unarchived,
        open_entries,
        arrears,
        arrears_payments,
    })
}

/// Every cluster partition's pricer position, by partition.
fn partition_cursors(db: &mut dyn Db) -> Result<BTreeMap<u16, u64>, StoreError> {
    let rows = db.query("SELECT reader, lsn FROM log_cursors WHERE reader LIKE 'pricer@partition-%'", &[])?;
    let mut cursors = BTreeMap::new();
    for row in rows {
        let reader = row.text(0)?;
        let partition = partition_of_reader(reader).ok_or_else(|| StoreError::Corrupt(format!("cursor {reader:?}")))?;
        let at = u64::try_from(row.int(1)?).map_err(|_| StoreError::Corrupt(format!("cursor {reader:?} below 0")))?;
        cursors.insert(partition, at);
    }
    Ok(cursors)
}
