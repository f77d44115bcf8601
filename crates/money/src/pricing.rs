//! Pricing inside one money-store transaction: the taps that are rides go
//! into `taps`, every rider-day they touch is priced again by the core
//! (with the neighbouring days' edge taps, so a trip across the day
//! boundary is one fare on its entry's day, and the neighbour is priced
//! again too when a new tap changes its edge), and the charges the core
//! plans go into the outbox. The log position is
//! written in the same transaction (see `pricer`), so a crash either keeps
//! all of it or none, and the replay derives the same charge ids. Its SQL
//! runs on either engine ([`Db`]).

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDate;

use crate::codec::{card_from_sql, card_to_sql, date_from_sql, date_to_sql, id_from_sql, ids_from_sql, ids_to_sql};
use crate::db::{Db, Value, lock_cards};
use crate::store::StoreError;
use farestream_core::charges::{Charge, ChargeKind, ChargeOutcome, RiderDay, plan_charges};
use farestream_core::clock::UnixMillis;
use farestream_core::fares::{DayEdges, FareTable, Tap, ride_of};
use farestream_core::money::Cents;
use farestream_core::scan::ArchivedScan;

/// What one pricing transaction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Priced {
    pub taps: u64,
    pub charges: u64,
    /// Sum of the new charges' amounts (an adjustment may be negative).
    pub amount_cents: Cents,
}

impl Priced {
    fn add(&mut self, charges: &[Charge]) {
        self.charges += charges.len() as u64;
        self.amount_cents += charges.iter().map(|c| c.amount_cents).sum();
    }
}

/// Adds the rides among `rows` and prices every rider-day they touch.
pub fn price_rows(
    tx: &mut dyn Db,
    fares: &FareTable,
    rows: &[ArchivedScan],
    now: UnixMillis,
) -> Result<Priced, StoreError> {
    let mut priced = Priced::default();
    // Each rider's lock before any of their taps is read or written:
    // without it two pricers sharing a store (two servers on one
    // PostgreSQL) would each price a rider-day from its own taps alone,
    // neither seeing the other's uncommitted ones, and a cap would hold
    // for neither.
    lock_cards(tx, rows.iter().filter_map(|row| Some(ride_of(row)?.0)))?;
    let mut added: Vec<(RiderDay, Tap)> = Vec::new();
    for (row, (card_id, tap)) in rows.iter().filter_map(|row| Some((row, ride_of(row)?))) {
        let inserted = tx.execute(
            "INSERT INTO taps (scan_id, card_id, service_date, scanned_at, tap_kind, route_id, stop_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT DO NOTHING",
            &[
                Value::Bytes(&tap.scan_id),
                Value::Int(card_to_sql(card_id)),
                Value::Int(date_to_sql(row.service_date)),
                Value::Int(tap.scanned_at),
                Value::Text(tap.kind.as_str()),
                Value::Text(&tap.route_id),
                Value::Text(&tap.stop_id),
            ],
        )?;
        if inserted > 0 {
            priced.taps += 1;
            added.push((RiderDay { card_id, service_date: row.service_date }, tap));
        }
    }
    let (days, mut read) = days_touched(tx, fares, &added)?;
    for day in days {
        let taps = match read.remove(&day) {
            Some(taps) => taps,
            None => TapsAround::read(tx, day)?,
        };
        priced.add(&reprice(tx, fares, day, taps, now)?);
    }
    Ok(priced)
}

/// The rider-days the new taps change: their own, and a neighbouring day
/// whose edge a new tap moves (an entry late the day before that the tap
/// may end, an exit early the day after that the tap may begin). Also the
/// taps it read, for pricing those days (every tap is in by now).
fn days_touched(
    tx: &mut dyn Db,
    fares: &FareTable,
    added: &[(RiderDay, Tap)],
) -> Result<(BTreeSet<RiderDay>, HashMap<RiderDay, TapsAround>), StoreError> {
    let mut days = BTreeSet::new();
    let mut read: HashMap<RiderDay, TapsAround> = HashMap::new();
    for (day, tap) in added {
        days.insert(*day);
        // A bus tap touches no neighbour: no need to read the edges yet.
        if !tap.kind.is_metro() {
            continue;
        }
        let around = match read.entry(*day) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(TapsAround::read(tx, *day)?),
        };
        let (before, after) = fares.neighbours_touched(tap, &around.edges);
        let neighbour = |date: Option<NaiveDate>| date.map(|service_date| RiderDay { service_date, ..*day });
        days.extend(neighbour(day.service_date.pred_opt()).filter(|_| before));
        days.extend(neighbour(day.service_date.succ_opt()).filter(|_| after));
    }
    Ok((days, read))
}

/// Rider-days whose open entry's exit window has closed by `now`.
pub fn entries_closing_by(db: &mut dyn Db, now: UnixMillis) -> Result<u64, StoreError> {
    let row = db.query_opt("SELECT count(*) FROM open_entries WHERE closes_at <= ?1", &[Value::Int(now)])?;
    let count = row.ok_or_else(|| StoreError::Corrupt("count(*) gave no row".into()))?.int(0)?;
    Ok(count.unsigned_abs())
}

/// Prices the rider-days whose open entry's exit window has closed by `now`:
/// that entry is now a maximum fare.
pub fn price_closed_entries(tx: &mut dyn Db, fares: &FareTable, now: UnixMillis) -> Result<Priced, StoreError> {
    let days = tx.query("SELECT card_id, service_date FROM open_entries WHERE closes_at <= ?1", &[Value::Int(now)])?;
    let days = days
        .iter()
        .map(|row| Ok(RiderDay { card_id: card_from_sql(row.int(0)?), service_date: date_from_sql(row.int(1)?)? }))
        .collect::<Result<Vec<_>, StoreError>>()?;
    lock_cards(tx, days.iter().map(|day| day.card_id))?;
    let mut priced = Priced::default();
    for day in days {
        // Read after the lock: another pricer may have priced the day
        // between the query and the lock; repricing plans nothing twice.
        let taps = TapsAround::read(tx, day)?;
        priced.add(&reprice(tx, fares, day, taps, now)?);
    }
    Ok(priced)
}

/// Prices one rider-day from all its taps and its edges and writes what
/// the core plans.
fn reprice(
    tx: &mut dyn Db,
    fares: &FareTable,
    day: RiderDay,
    TapsAround { taps, edges }: TapsAround,
    now: UnixMillis,
) -> Result<Vec<Charge>, StoreError> {
    let priced = fares.price_day_as_of(&taps, &edges, now);
    let planned = plan_charges(day, &priced, &day_charges(tx, day)?);
    for charge in &planned {
        // Due at once (`next_attempt_at` 0: the dispatcher schedules on the
        // wall clock). Nothing to collect (a ride under a reached cap):
        // decided at once, never sent.
        let outcome = ChargeOutcome::when_planned(charge.amount_cents);
        let decided_at = outcome.is_final().then_some(now);
        let scan_ids = ids_to_sql(&charge.scan_ids);
        tx.execute(
            "INSERT INTO charges (charge_id, card_id, service_date, kind, ride_key, amount_cents, currency, scan_ids,
                                  created_at, outcome, next_attempt_at, decided_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)",
            &[
                Value::Bytes(&charge.id),
                Value::Int(card_to_sql(day.card_id)),
                Value::Int(date_to_sql(day.service_date)),
                Value::Text(charge.kind.as_str()),
                charge.ride_key.as_ref().map(|k| &k[..]).into(),
                Value::Int(charge.amount_cents.get()),
                Value::Text(&fares.currency),
                Value::Bytes(&scan_ids),
                Value::Int(now),
                Value::Text(outcome.as_str()),
                decided_at.into(),
            ],
        )?;
    }
    let open_until = priced
        .open_entry
        .and_then(|id| taps.iter().find(|t| t.scan_id == id))
        .map(|entry| fares.entry_closes_at(entry.scanned_at));
    let key = [Value::Int(card_to_sql(day.card_id)), Value::Int(date_to_sql(day.service_date))];
    match open_until {
        Some(closes_at) => tx.execute(
            "INSERT INTO open_entries (card_id, service_date, closes_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (card_id, service_date) DO UPDATE SET closes_at = excluded.closes_at",
            &[key[0], key[1], Value::Int(closes_at)],
        )?,
        // Only a day with a metro tap can have had an open entry.
        None if !taps.iter().any(|t| t.kind.is_metro()) => 0,
        None => tx.execute("DELETE FROM open_entries WHERE card_id = ?1 AND service_date = ?2", &key)?,
    };
    Ok(planned)
}

/// A rider-day's taps and its edges: what pricing the day needs.
struct TapsAround {
    taps: Vec<Tap>,
    edges: DayEdges,
}

impl TapsAround {
    /// Reads the day and both its neighbours in one range of the taps'
    /// key (card, then date): one seek where the day and its two edges
    /// were three. A day of buses only reads its neighbours too; their
    /// edges price nothing there.
    fn read(tx: &mut dyn Db, day: RiderDay) -> Result<TapsAround, StoreError> {
        let date = day.service_date;
        let (first, last) = (date.pred_opt().unwrap_or(date), date.succ_opt().unwrap_or(date));
        let (mut before, mut taps, mut after) = (Vec::new(), Vec::new(), Vec::new());
        tx.query_each(
            "SELECT service_date, scan_id, scanned_at, tap_kind, route_id, stop_id FROM taps
             WHERE card_id = ?1 AND service_date BETWEEN ?2 AND ?3",
            &[Value::Int(card_to_sql(day.card_id)), Value::Int(date_to_sql(first)), Value::Int(date_to_sql(last))],
            &mut |row| {
                let kind = row.text(3)?;
                let tap = Tap::from_stored(
                    id_from_sql(row.bytes(1)?)?,
                    row.int(2)?,
                    kind,
                    row.text(4)?.to_string(),
                    row.text(5)?.to_string(),
                )
                .ok_or_else(|| StoreError::Corrupt(format!("tap kind {kind:?}")))?;
                match date_from_sql(row.int(0)?)?.cmp(&date) {
                    Ordering::Less => before.push(tap),
                    Ordering::Equal => taps.push(tap),
                    Ordering::Greater => after.push(tap),
                }
                Ok(())
            },
        )?;
        Ok(TapsAround { taps, edges: DayEdges::between(&before, &after) })
    }
}

/// Every charge already written for the day, in any outcome.
pub fn day_charges(tx: &mut dyn Db, day: RiderDay) -> Result<Vec<Charge>, StoreError> {
    let mut charges = Vec::new();
    tx.query_each(
        "SELECT charge_id, kind, ride_key, amount_cents, scan_ids FROM charges WHERE card_id = ?1 AND service_date = ?2",
        &[Value::Int(card_to_sql(day.card_id)), Value::Int(date_to_sql(day.service_date))],
        &mut |row| {
            let kind = row.text(1)?;
            let kind = ChargeKind::parse(kind).ok_or_else(|| StoreError::Corrupt(format!("charge kind {kind:?}")))?;
            charges.push(Charge {
                id: id_from_sql(row.bytes(0)?)?,
                kind,
                ride_key: row.opt_bytes(2)?.map(id_from_sql).transpose()?,
                amount_cents: Cents::new(row.int(3)?),
                scan_ids: ids_from_sql(row.bytes(4)?)?,
            });
            Ok(())
        },
    )?;
    Ok(charges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_cluster::on_both_stores;
    use farestream_core::scan::{ScanStatus, TapKind};

    /// 2025-12-01T00:00Z.
    const DAY_START_MS: i64 = 1_764_547_200_000;
    const MINUTE_MS: i64 = 60_000;

    fn fares() -> FareTable {
        farestream_ingest::config::fare_table::load_fares(None).expect("the embedded fare table")
    }

    fn ride(fares: &FareTable, n: u8, card: u64, kind: TapKind, minute: i64) -> ArchivedScan {
        let mut stations = fares.metro_station_zones.keys();
        let (first, second) = (stations.next().expect("a station"), stations.next().expect("two stations"));
        let (route, stop) = match kind {
            TapKind::Single => (fares.bus_route_fares.keys().next().expect("a bus route").clone(), "stop-1".into()),
            TapKind::Entry => ("metro".into(), first.clone()),
            TapKind::Exit => ("metro".into(), second.clone()),
        };
        let scanned_at = DAY_START_MS + minute * MINUTE_MS;
        ArchivedScan {
            scan_id: [n; 16],
            card_id: Some(card),
            tap_kind: Some(kind),
            gate_opened: Some(true),
            status: ScanStatus::Accepted,
            route_id: route,
            stop_id: stop,
            scanned_at,
            received_at: scanned_at,
            service_date: chrono::DateTime::from_timestamp_millis(DAY_START_MS).expect("in range").date_naive(),
            ..ArchivedScan::blank()
        }
    }

    /// A day: a rider's bus, metro trip and bus home; a second rider's
    /// entry left open; the largest card id on a bus.
    fn day_of_rides(fares: &FareTable) -> Vec<ArchivedScan> {
        vec![
            ride(fares, 1, 1, TapKind::Single, 8 * 60),
            ride(fares, 2, 1, TapKind::Entry, 8 * 60 + 30),
            ride(fares, 3, 1, TapKind::Exit, 8 * 60 + 50),
            ride(fares, 4, 1, TapKind::Single, 18 * 60),
            ride(fares, 5, 2, TapKind::Entry, 9 * 60),
            ride(fares, 6, u64::MAX, TapKind::Single, 23 * 60 + 59),
        ]
    }

    type ChargeRow = (Vec<u8>, i64, i64, String, i64, String, Vec<u8>, Option<i64>);

    fn charges(db: &mut dyn Db) -> Vec<ChargeRow> {
        db.query(
            "SELECT charge_id, card_id, service_date, kind, amount_cents, outcome, scan_ids, decided_at
             FROM charges ORDER BY charge_id",
            &[],
        )
        .expect("charges")
        .iter()
        .map(|r| {
            let text = |i| r.text(i).expect("text").to_string();
            let bytes = |i| r.bytes(i).expect("bytes").to_vec();
            let int = |i| r.int(i).expect("int");
            (bytes(0), int(1), int(2), text(3), int(4), text(5), bytes(6), r.opt_int(7).expect("int"))
        })
        .collect()
    }

    /// Prices the day, the same rows again (a re-delivery), then closes
    /// the open entry a day later: what each step wrote, the charges, and
    /// the entries open before the close.
    fn price_the_day(db: &mut dyn Db, _engine: &str) -> ([Priced; 3], Vec<ChargeRow>, u64) {
        let fares = fares();
        let rows = day_of_rides(&fares);
        // Five minutes after the second rider's entry: still open.
        let now = DAY_START_MS + (9 * 60 + 5) * MINUTE_MS;
        let first = price_rows(db, &fares, &rows, now).expect("priced");
        let again = price_rows(db, &fares, &rows, now).expect("priced again");
        let open = entries_closing_by(db, i64::MAX).expect("open entries");
        let later = now + 24 * 60 * MINUTE_MS;
        let closed = price_closed_entries(db, &fares, later).expect("closed");
        ([first, again, closed], charges(db), open)
    }

    /// The pricing statements, written once, charge the same on SQLite and
    /// PostgreSQL: every charge's id, rider-day, kind, amount, outcome
    /// and rides.
    #[test]
    fn a_day_of_rides_prices_to_the_same_charges_on_both_engines() {
        let (steps, on_sqlite, open) = on_both_stores(price_the_day);
        let [first, again, closed] = steps;
        assert_eq!(first.taps, 6, "every ride is a new tap");
        assert!(first.charges >= 4, "the rides are charged: {first:?}");
        assert_eq!((again.taps, again.charges), (0, 0), "a re-delivery adds nothing");
        assert_eq!(open, 1, "the second rider's entry is open");
        assert!(closed.charges >= 1, "the open entry closes as a maximum fare: {closed:?}");
        assert!(on_sqlite.iter().any(|c| c.1 == -1), "the largest card id is stored bit for bit");
    }
}
