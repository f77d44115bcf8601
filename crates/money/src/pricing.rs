//! Pricing inside one money-store transaction: the taps that are rides go
//! into `taps`, every rider-day they touch is priced again by the core
//! (with the neighbouring days' edge taps, so a trip across the day
//! boundary is one fare on its entry's day, and the neighbour is priced
//! again too when a new tap changes its edge), and the charges the core
//! plans go into the outbox. The log position is
//! written in the same transaction (see `pricer`), so a crash either keeps
//! all of it or none, and the replay derives the same charge ids. Its SQL
//! runs on either engine ([`Db`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::NaiveDate;

use crate::codec::{card_from_sql, card_to_sql, date_from_sql, date_to_sql, id_from_sql, ids_from_sql, ids_to_sql};
use crate::db::batch::{self, Typed};
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

impl std::ops::Add for Priced {
    type Output = Priced;

    fn add(self, other: Priced) -> Priced {
        Priced {
            taps: self.taps + other.taps,
            charges: self.charges + other.charges,
            amount_cents: self.amount_cents + other.amount_cents,
        }
    }
}

impl Priced {
    fn add(&mut self, charges: &[Charge]) {
        self.charges += charges.len() as u64;
        self.amount_cents += charges.iter().map(|c| c.amount_cents).sum();
    }
}

/// Adds the rides among `rows` and prices every rider-day they touch.
/// Each step is a few statements of many rows ([`batch`]), not one a row.
pub fn price_rows(
    tx: &mut dyn Db,
    fares: &FareTable,
    rows: &[ArchivedScan],
    now: UnixMillis,
) -> Result<Priced, StoreError> {
    let rides: Vec<(RiderDay, Tap)> = rows
        .iter()
        .filter_map(|row| {
            let (card_id, tap) = ride_of(row)?;
            Some((RiderDay { card_id, service_date: row.service_date }, tap))
        })
        .collect();
    // Each rider's lock before any of their taps is read or written:
    // without it two pricers sharing a store (two servers on one
    // PostgreSQL) would each price a rider-day from its own taps alone,
    // neither seeing the other's uncommitted ones, and a cap would hold
    // for neither.
    lock_cards(tx, rides.iter().map(|(day, _)| day.card_id))?;
    let added = insert_taps(tx, rides)?;
    let mut read = TapsRead::default();
    read.read(tx, added.iter().map(|(day, _)| *day))?;
    let days = days_touched(fares, &added, &read);
    read.read(tx, days.iter().copied())?;
    let mut priced = Priced { taps: added.len() as u64, ..Priced::default() };
    reprice(tx, fares, &days, &read, now, &mut priced)?;
    Ok(priced)
}

/// Inserts the rides' taps (a tap already in is left as it is); the rides
/// that are new.
fn insert_taps(tx: &mut dyn Db, rides: Vec<(RiderDay, Tap)>) -> Result<Vec<(RiderDay, Tap)>, StoreError> {
    let mut inserted = HashSet::new();
    for run in batch::runs(&rides) {
        let sql = format!(
            "INSERT INTO taps (scan_id, card_id, service_date, scanned_at, tap_kind, route_id, stop_id)
             VALUES {} ON CONFLICT DO NOTHING RETURNING card_id, service_date, scan_id",
            batch::values(run.len(), 7, Typed::ByColumns)
        );
        let mut params = Vec::with_capacity(run.len() * 7);
        for (day, tap) in run {
            params.extend([
                Value::Bytes(&tap.scan_id),
                Value::Int(card_to_sql(day.card_id)),
                Value::Int(date_to_sql(day.service_date)),
                Value::Int(tap.scanned_at),
                Value::Text(tap.kind.as_str()),
                Value::Text(&tap.route_id),
                Value::Text(&tap.stop_id),
            ]);
        }
        tx.query_each(&sql, &params, &mut |row| {
            let day = RiderDay { card_id: card_from_sql(row.int(0)?), service_date: date_from_sql(row.int(1)?)? };
            inserted.insert((day, id_from_sql(row.bytes(2)?)?));
            Ok(())
        })?;
    }
    // A tap is keyed by its rider-day and scan id: twice among the rows,
    // it is one new ride.
    Ok(rides.into_iter().filter(|(day, tap)| inserted.remove(&(*day, tap.scan_id))).collect())
}

/// The rider-days the new taps change: their own, and a neighbouring day
/// whose edge a new tap moves (an entry late the day before that the tap
/// may end, an exit early the day after that the tap may begin). `read`
/// holds each new tap's day and neighbours (every tap is in by now).
fn days_touched(fares: &FareTable, added: &[(RiderDay, Tap)], read: &TapsRead) -> BTreeSet<RiderDay> {
    let mut days = BTreeSet::new();
    let mut edges: HashMap<RiderDay, DayEdges> = HashMap::new();
    for (day, tap) in added {
        days.insert(*day);
        // A bus tap touches no neighbour.
        if !tap.kind.is_metro() {
            continue;
        }
        let edges = edges.entry(*day).or_insert_with(|| read.edges(*day));
        let (before, after) = fares.neighbours_touched(tap, edges);
        let neighbour = |date: Option<NaiveDate>| date.map(|service_date| RiderDay { service_date, ..*day });
        days.extend(neighbour(day.service_date.pred_opt()).filter(|_| before));
        days.extend(neighbour(day.service_date.succ_opt()).filter(|_| after));
    }
    days
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
    price_closed_entries_of(tx, fares, now, |_| true)
}

/// [`price_closed_entries`] for the cards `mine` picks: a cluster
/// partition's pricer closes its own cards' windows.
pub fn price_closed_entries_of(
    tx: &mut dyn Db,
    fares: &FareTable,
    now: UnixMillis,
    mine: impl Fn(u64) -> bool,
) -> Result<Priced, StoreError> {
    let days = tx.query("SELECT card_id, service_date FROM open_entries WHERE closes_at <= ?1", &[Value::Int(now)])?;
    let days = days
        .iter()
        .map(|row| Ok(RiderDay { card_id: card_from_sql(row.int(0)?), service_date: date_from_sql(row.int(1)?)? }))
        .filter(|day| day.as_ref().map_or(true, |day| mine(day.card_id)))
        .collect::<Result<BTreeSet<_>, StoreError>>()?;
    lock_cards(tx, days.iter().map(|day| day.card_id))?;
    // Read after the lock: another pricer may have priced the day between
    // the query and the lock; repricing plans nothing twice.
    let mut read = TapsRead::default();
    read.read(tx, days.iter().copied())?;
    let mut priced = Priced::default();
    reprice(tx, fares, &days, &read, now, &mut priced)?;
    Ok(priced)
}

/// Prices each of `days` from all its taps and its edges (in `read`) and
/// writes what the core plans, adding it to `priced`.
fn reprice(
    tx: &mut dyn Db,
    fares: &FareTable,
    days: &BTreeSet<RiderDay>,
    read: &TapsRead,
    now: UnixMillis,
    priced: &mut Priced,
) -> Result<(), StoreError> {
    let mut charged = charges_of(tx, days)?;
    let mut writes = Writes::default();
    for day in days {
        let TapsAround { taps, edges } = read.around(*day);
        let priced_day = fares.price_day_as_of(&taps, &edges, now);
        let planned = plan_charges(*day, &priced_day, &charged.remove(day).unwrap_or_default());
        priced.add(&planned);
        writes.charges.extend(planned.into_iter().map(|charge| (*day, charge)));
        let open_until = priced_day
            .open_entry
            .and_then(|id| taps.iter().find(|t| t.scan_id == id))
            .map(|entry| fares.entry_closes_at(entry.scanned_at));
        match open_until {
            Some(closes_at) => writes.open.push((*day, closes_at)),
            // Only a day with a metro tap can have had an open entry.
            None if !taps.iter().any(|t| t.kind.is_metro()) => {}
            None => writes.closed.push(*day),
        }
    }
    writes.write(tx, &fares.currency, now)
}

/// What pricing days writes, written a run of rows a statement.
#[derive(Default)]
struct Writes {
    /// New charges, in the order planned (their ids order nothing: the
    /// table numbers rows as they are written).
    charges: Vec<(RiderDay, Charge)>,
    /// Days whose last entry is open, until when.
    open: Vec<(RiderDay, UnixMillis)>,
    /// Days with metro taps and no open entry.
    closed: Vec<RiderDay>,
}

impl Writes {
    fn write(&self, tx: &mut dyn Db, currency: &str, now: UnixMillis) -> Result<(), StoreError> {
        for run in batch::runs(&self.charges) {
            let sql = format!(
                "INSERT INTO charges (charge_id, card_id, service_date, kind, ride_key, amount_cents, currency, scan_ids,
                                      created_at, outcome, next_attempt_at, decided_at)
                 VALUES {}",
                batch::values(run.len(), 12, Typed::ByColumns)
            );
            let scan_ids: Vec<Vec<u8>> = run.iter().map(|(_, charge)| ids_to_sql(&charge.scan_ids)).collect();
            let mut params = Vec::with_capacity(run.len() * 12);
            for ((day, charge), scan_ids) in run.iter().zip(&scan_ids) {
                // Due at once (`next_attempt_at` 0: the dispatcher
                // schedules on the wall clock). Nothing to collect (a ride
                // under a reached cap): decided at once, never sent.
                let outcome = ChargeOutcome::when_planned(charge.amount_cents);
                params.extend([
                    Value::Bytes(&charge.id),
                    Value::Int(card_to_sql(day.card_id)),
                    Value::Int(date_to_sql(day.service_date)),
                    Value::Text(charge.kind.as_str()),
                    charge.ride_key.as_ref().map(|k| &k[..]).into(),
                    Value::Int(charge.amount_cents.get()),
                    Value::Text(currency),
                    Value::Bytes(scan_ids),
                    Value::Int(now),
                    Value::Text(outcome.as_str()),
                    Value::Int(0),
                    outcome.is_final().then_some(now).into(),
                ]);
            }
            tx.execute(&sql, &params)?;
        }
        for run in batch::runs(&self.open) {
            let sql = format!(
                "INSERT INTO open_entries (card_id, service_date, closes_at) VALUES {}
                 ON CONFLICT (card_id, service_date) DO UPDATE SET closes_at = excluded.closes_at",
                batch::values(run.len(), 3, Typed::ByColumns)
            );
            let params: Vec<Value<'_>> = run
                .iter()
                .flat_map(|(day, closes_at)| {
                    let [card, date] = day_key(*day);
                    [card, date, Value::Int(*closes_at)]
                })
                .collect();
            tx.execute(&sql, &params)?;
        }
        for run in batch::runs(&self.closed) {
            let sql = format!(
                "DELETE FROM open_entries WHERE (card_id, service_date) IN (VALUES {})",
                batch::values(run.len(), 2, Typed::Integers)
            );
            let params: Vec<Value<'_>> = run.iter().flat_map(|day| day_key(*day)).collect();
            tx.execute(&sql, &params)?;
        }
        Ok(())
    }
}

/// A rider-day as the store keys it: card, then service date.
fn day_key(day: RiderDay) -> [Value<'static>; 2] {
    [Value::Int(card_to_sql(day.card_id)), Value::Int(date_to_sql(day.service_date))]
}

/// A rider-day's taps and its edges: what pricing the day needs.
struct TapsAround {
    taps: Vec<Tap>,
    edges: DayEdges,
}

/// Taps read from the store, by rider and service date.
#[derive(Default)]
struct TapsRead {
    taps: HashMap<(u64, NaiveDate), Vec<Tap>>,
    /// The rider-dates read, with taps or none.
    dates: HashSet<(u64, NaiveDate)>,
}

impl TapsRead {
    /// Reads each of `days` and both its neighbours, those not read yet:
    /// a range of the taps' key (card, then date) for each run of a
    /// rider's consecutive dates, many ranges a statement.
    fn read(&mut self, tx: &mut dyn Db, days: impl Iterator<Item = RiderDay>) -> Result<(), StoreError> {
        let mut wanted = BTreeSet::new();
        for day in days {
            let date = day.service_date;
            for date in [date.pred_opt(), Some(date), date.succ_opt()].into_iter().flatten() {
                if !self.dates.contains(&(day.card_id, date)) {
                    wanted.insert((day.card_id, date));
                }
            }
        }
        let mut ranges: Vec<(u64, NaiveDate, NaiveDate)> = Vec::new();
        for &(card, date) in &wanted {
            match ranges.last_mut() {
                Some((last_card, _, to)) if *last_card == card && to.succ_opt() == Some(date) => *to = date,
                _ => ranges.push((card, date, date)),
            }
        }
        for run in batch::runs(&ranges) {
            let sql = format!(
                "WITH wanted (card_id, from_date, to_date) AS (VALUES {})
                 SELECT t.card_id, t.service_date, t.scan_id, t.scanned_at, t.tap_kind, t.route_id, t.stop_id
                 FROM wanted JOIN taps t
                   ON t.card_id = wanted.card_id AND t.service_date BETWEEN wanted.from_date AND wanted.to_date",
                batch::values(run.len(), 3, Typed::Integers)
            );
            let params: Vec<Value<'_>> = run
                .iter()
                .flat_map(|&(card, from, to)| {
                    [Value::Int(card_to_sql(card)), Value::Int(date_to_sql(from)), Value::Int(date_to_sql(to))]
                })
                .collect();
            tx.query_each(&sql, &params, &mut |row| {
                let kind = row.text(4)?;
                let tap = Tap::from_stored(
                    id_from_sql(row.bytes(2)?)?,
                    row.int(3)?,
                    kind,
                    row.text(5)?.to_string(),
                    row.text(6)?.to_string(),
                )
                .ok_or_else(|| StoreError::Corrupt(format!("tap kind {kind:?}")))?;
                let key = (card_from_sql(row.int(0)?), date_from_sql(row.int(1)?)?);
                self.taps.entry(key).or_default().push(tap);
                Ok(())
            })?;
        }
        self.dates.extend(wanted);
        Ok(())
    }

    /// The day's taps and its edges, from what was read.
    fn around(&self, day: RiderDay) -> TapsAround {
        TapsAround { taps: self.on(day.card_id, Some(day.service_date)).to_vec(), edges: self.edges(day) }
    }

    /// The day's edges alone (no copy of its taps).
    fn edges(&self, day: RiderDay) -> DayEdges {
        let date = day.service_date;
        DayEdges::between(self.on(day.card_id, date.pred_opt()), self.on(day.card_id, date.succ_opt()))
    }

    /// A rider's taps on `date`, as read.
    fn on(&self, card_id: u64, date: Option<NaiveDate>) -> &[Tap] {
        date.and_then(|date| self.taps.get(&(card_id, date))).map(Vec::as_slice).unwrap_or_default()
    }
}

/// Every charge already written for each of `days`, in any outcome.
fn charges_of(tx: &mut dyn Db, days: &BTreeSet<RiderDay>) -> Result<HashMap<RiderDay, Vec<Charge>>, StoreError> {
    let days: Vec<RiderDay> = days.iter().copied().collect();
    let mut charges: HashMap<RiderDay, Vec<Charge>> = HashMap::new();
    for run in batch::runs(&days) {
        let sql = format!(
            "WITH wanted (card_id, service_date) AS (VALUES {})
             SELECT c.card_id, c.service_date, c.charge_id, c.kind, c.ride_key, c.amount_cents, c.scan_ids
             FROM wanted JOIN charges c ON c.card_id = wanted.card_id AND c.service_date = wanted.service_date",
            batch::values(run.len(), 2, Typed::Integers)
        );
        let params: Vec<Value<'_>> = run.iter().flat_map(|day| day_key(*day)).collect();
        tx.query_each(&sql, &params, &mut |row| {
            let kind = row.text(3)?;
            let kind = ChargeKind::parse(kind).ok_or_else(|| StoreError::Corrupt(format!("charge kind {kind:?}")))?;
            let day = RiderDay { card_id: card_from_sql(row.int(0)?), service_date: date_from_sql(row.int(1)?)? };
            charges.entry(day).or_default().push(Charge {
                id: id_from_sql(row.bytes(2)?)?,
                kind,
                ride_key: row.opt_bytes(4)?.map(id_from_sql).transpose()?,
                amount_cents: Cents::new(row.int(5)?),
                scan_ids: ids_from_sql(row.bytes(6)?)?,
            });
            Ok(())
        })?;
    }
    Ok(charges)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_cluster::on_both_stores;
    use farestream_core::scan::{ScanStatus, TapKind};

    /// 2025-12-01T00:00Z.
    pub(crate) const DAY_START_MS: i64 = 1_764_547_200_000;
    pub(crate) const MINUTE_MS: i64 = 60_000;

    pub(crate) fn fares() -> FareTable {
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

    pub(crate) type ChargeRow = (Vec<u8>, i64, i64, String, i64, String, Vec<u8>, Option<i64>);

    pub(crate) fn charges(db: &mut dyn Db) -> Vec<ChargeRow> {
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

    /// A rider's tap `minute`s into day `day` after DAY_START_MS (its
    /// service date), with an id of its own.
    fn tap_on(fares: &FareTable, id: u64, card: u64, kind: TapKind, (day, minute): (i64, i64)) -> ArchivedScan {
        let mut scan = ride(fares, 0, card, kind, minute);
        scan.scan_id[..8].copy_from_slice(&id.to_be_bytes());
        scan.scanned_at += day * 24 * 60 * MINUTE_MS;
        scan.received_at = scan.scanned_at;
        scan.service_date = scan.service_date + chrono::Days::new(day as u64);
        scan
    }

    /// 70 riders over three days, card ids from `first_card`: a bus each
    /// morning, most days a metro trip, every fifth rider a trip from
    /// late one night into the next day, every fourth an entry late on
    /// the third day (still open at the pricing's `now`).
    pub(crate) fn a_city(fares: &FareTable, first_card: u64) -> Vec<ArchivedScan> {
        let mut scans = Vec::new();
        let mut id = first_card << 32;
        let mut tap = |card, kind, at| {
            id += 1;
            scans.push(tap_on(fares, id, card, kind, at));
        };
        for rider in 0..70 {
            let card = first_card + rider as u64;
            for day in 0..3 {
                tap(card, TapKind::Single, (day, 8 * 60 + rider));
                if (rider + day) % 3 != 0 {
                    tap(card, TapKind::Entry, (day, 17 * 60));
                    tap(card, TapKind::Exit, (day, 17 * 60 + 20));
                }
            }
            if rider % 5 == 0 {
                tap(card, TapKind::Entry, (0, 23 * 60 + 50));
                tap(card, TapKind::Exit, (1, 5));
            }
            if rider % 4 == 0 {
                tap(card, TapKind::Entry, (2, 23 * 60));
            }
        }
        scans
    }

    /// Each rider-day's net charge (card from 0, date, cents, 0) and its
    /// open entry (card, date, -1, closing time),
    /// of the cards from `first_card` (numbered from 0).
    pub(crate) fn outcome(db: &mut dyn Db, first_card: u64) -> Vec<(i64, i64, i64, i64)> {
        let rows = db
            .query(
                "SELECT card_id, service_date, CAST(sum(amount_cents) AS BIGINT) FROM charges
                 WHERE card_id >= ?1 AND card_id < ?2 GROUP BY card_id, service_date ORDER BY card_id, service_date",
                &[Value::Int(first_card as i64), Value::Int(first_card as i64 + 1_000)],
            )
            .expect("charges");
        let mut days: Vec<_> = rows
            .iter()
            .map(|r| (r.int(0).expect("card") - first_card as i64, r.int(1).expect("date"), r.int(2).expect("net"), 0))
            .collect();
        let open = db
            .query(
                "SELECT card_id, service_date, closes_at FROM open_entries WHERE card_id >= ?1 AND card_id < ?2",
                &[Value::Int(first_card as i64), Value::Int(first_card as i64 + 1_000)],
            )
            .expect("open entries");
        days.extend(open.iter().map(|r| {
            (r.int(0).expect("card") - first_card as i64, r.int(1).expect("date"), -1, r.int(2).expect("closes"))
        }));
        days.sort();
        days
    }

    /// A city's rides priced in one call (more than a run of 64 rows a
    /// statement, rider-days read in ranges across three days) charge
    /// each rider-day what the same rides priced one at a time do, and
    /// leave the same entries open, on both engines.
    #[test]
    fn rides_priced_together_charge_as_rides_priced_one_at_a_time() {
        fn both_ways(db: &mut dyn Db, engine: &str) -> Vec<(i64, i64, i64, i64)> {
            let fares = fares();
            let now = DAY_START_MS + (2 * 24 * 60 + 23 * 60 + 30) * MINUTE_MS;
            let (together, one_at_a_time) = (a_city(&fares, 1_000), a_city(&fares, 2_000));
            let priced = price_rows(db, &fares, &together, now).expect("priced together");
            assert_eq!(priced.taps, together.len() as u64, "{engine}");
            let mut taps = 0;
            for row in &one_at_a_time {
                taps += price_rows(db, &fares, std::slice::from_ref(row), now).expect("priced alone").taps;
            }
            assert_eq!(taps, one_at_a_time.len() as u64, "{engine}");
            let (a, b) = (outcome(db, 1_000), outcome(db, 2_000));
            assert_eq!(a, b, "{engine}: priced together as one at a time");
            assert!(a.iter().filter(|day| day.2 > 0).count() >= 210, "{engine}: every rider-day charged: {a:?}");
            assert!(a.iter().any(|day| day.2 == -1), "{engine}: entries left open");
            a
        }
        on_both_stores(both_ways);
    }

    /// A tap is keyed by its rider-day and scan id: one scan id under two
    /// riders is two rides, each charged; the same row twice is one.
    #[test]
    fn a_scan_id_under_two_riders_is_two_rides_and_a_row_twice_is_one() {
        fn twice(db: &mut dyn Db, engine: &str) -> (u64, u64) {
            let fares = fares();
            let first = ride(&fares, 9, 1, TapKind::Single, 8 * 60);
            let second = ArchivedScan { card_id: Some(2), ..first.clone() };
            let now = DAY_START_MS + 9 * 60 * MINUTE_MS;
            let priced = price_rows(db, &fares, &[first.clone(), second, first], now).expect("priced");
            let cards: BTreeSet<i64> = charges(db).iter().map(|c| c.1).collect();
            assert_eq!(cards, BTreeSet::from([1, 2]), "{engine}: both riders charged");
            (priced.taps, priced.charges)
        }
        assert_eq!(on_both_stores(twice), (2, 2));
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
