//! Pricing inside one money-store transaction: the taps that are rides go
//! into `taps`, every rider-day they touch is priced again by the core
//! (with the neighbouring days' edge taps, so a trip across the day
//! boundary is one fare on its entry's day, and the neighbour is priced
//! again too when a new tap changes its edge), and the charges the core
//! plans go into the outbox. The log position is
//! written in the same transaction (see `pricer`), so a crash either keeps
//! all of it or none, and the replay derives the same charge ids.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDate;
use rusqlite::{Transaction, params};

use crate::codec::{card_from_sql, card_to_sql, date_from_sql, date_to_sql, id_from_sql, ids_from_sql, ids_to_sql};
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
    tx: &Transaction<'_>,
    fares: &FareTable,
    rows: &[ArchivedScan],
    now: UnixMillis,
) -> Result<Priced, StoreError> {
    let mut priced = Priced::default();
    let mut added: Vec<(RiderDay, Tap)> = Vec::new();
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO taps (scan_id, card_id, service_date, scanned_at, tap_kind, route_id, stop_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (row, (card_id, tap)) in rows.iter().filter_map(|row| Some((row, ride_of(row)?))) {
        let inserted = insert.execute(params![
            &tap.scan_id[..],
            card_to_sql(card_id),
            date_to_sql(row.service_date),
            tap.scanned_at,
            tap.kind.as_str(),
            tap.route_id,
            tap.stop_id,
        ])?;
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
    tx: &Transaction<'_>,
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
pub fn entries_closing_by(conn: &rusqlite::Connection, now: UnixMillis) -> Result<u64, StoreError> {
    let count: i64 = conn
        .prepare_cached("SELECT count(*) FROM open_entries WHERE closes_at <= ?1")?
        .query_row([now], |r| r.get(0))?;
    Ok(count.unsigned_abs())
}

/// Prices the rider-days whose open entry's exit window has closed by `now`:
/// that entry is now a maximum fare.
pub fn price_closed_entries(tx: &Transaction<'_>, fares: &FareTable, now: UnixMillis) -> Result<Priced, StoreError> {
    let days: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT card_id, service_date FROM open_entries WHERE closes_at <= ?1")?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut priced = Priced::default();
    for (card_id, date) in days {
        let day = RiderDay { card_id: card_from_sql(card_id), service_date: date_from_sql(date)? };
        priced.add(&reprice(tx, fares, day, TapsAround::read(tx, day)?, now)?);
    }
    Ok(priced)
}

/// Prices one rider-day from all its taps and its edges and writes what
/// the core plans.
fn reprice(
    tx: &Transaction<'_>,
    fares: &FareTable,
    day: RiderDay,
    TapsAround { taps, edges }: TapsAround,
    now: UnixMillis,
) -> Result<Vec<Charge>, StoreError> {
    let priced = fares.price_day_as_of(&taps, &edges, now);
    let planned = plan_charges(day, &priced, &day_charges(tx, day)?);
    let mut insert = tx.prepare_cached(
        "INSERT INTO charges (charge_id, card_id, service_date, kind, ride_key, amount_cents, currency, scan_ids,
                              created_at, outcome, next_attempt_at, decided_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)",
    )?;
    for charge in &planned {
        // Due at once (`next_attempt_at` 0: the dispatcher schedules on the
        // wall clock). Nothing to collect (a ride under a reached cap):
        // decided at once, never sent.
        let outcome = ChargeOutcome::when_planned(charge.amount_cents);
        let decided_at = outcome.is_final().then_some(now);
        insert.execute(params![
            &charge.id[..],
            card_to_sql(day.card_id),
            date_to_sql(day.service_date),
            charge.kind.as_str(),
            charge.ride_key.as_ref().map(|k| &k[..]),
            charge.amount_cents.get(),
            fares.currency,
            ids_to_sql(&charge.scan_ids),
            now,
            outcome.as_str(),
            decided_at,
        ])?;
    }
    let open_until = priced
        .open_entry
        .and_then(|id| taps.iter().find(|t| t.scan_id == id))
        .map(|entry| fares.entry_closes_at(entry.scanned_at));
    let key = params![card_to_sql(day.card_id), date_to_sql(day.service_date)];
    // Cached: once per rider-day priced, and parsing showed in the profile.
    match open_until {
        Some(closes_at) => tx
            .prepare_cached(
                "INSERT INTO open_entries (card_id, service_date, closes_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (card_id, service_date) DO UPDATE SET closes_at = excluded.closes_at",
            )?
            .execute(params![card_to_sql(day.card_id), date_to_sql(day.service_date), closes_at])?,
        // Only a day with a metro tap can have had an open entry.
        None if !taps.iter().any(|t| t.kind.is_metro()) => 0,
        None => tx.prepare_cached("DELETE FROM open_entries WHERE card_id = ?1 AND service_date = ?2")?.execute(key)?,
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
    fn read(tx: &Transaction<'_>, day: RiderDay) -> Result<TapsAround, StoreError> {
        let date = day.service_date;
        let (first, last) = (date.pred_opt().unwrap_or(date), date.succ_opt().unwrap_or(date));
        let mut query = tx.prepare_cached(
            "SELECT service_date, scan_id, scanned_at, tap_kind, route_id, stop_id FROM taps
             WHERE card_id = ?1 AND service_date BETWEEN ?2 AND ?3",
        )?;
        let rows = query.query_map(params![card_to_sql(day.card_id), date_to_sql(first), date_to_sql(last)], |r| {
            Ok((r.get(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?, r.get::<_, String>(3)?, r.get(4)?, r.get(5)?))
        })?;
        let (mut before, mut taps, mut after) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let (tap_date, scan_id, scanned_at, kind, route_id, stop_id) = row?;
            let tap = Tap::from_stored(id_from_sql(&scan_id)?, scanned_at, &kind, route_id, stop_id)
                .ok_or_else(|| StoreError::Corrupt(format!("tap kind {kind:?}")))?;
            match date_from_sql(tap_date)?.cmp(&date) {
                Ordering::Less => before.push(tap),
                Ordering::Equal => taps.push(tap),
                Ordering::Greater => after.push(tap),
            }
        }
        Ok(TapsAround { taps, edges: DayEdges::between(&before, &after) })
    }
}

/// Every charge already written for the day, in any outcome.
pub fn day_charges(tx: &Transaction<'_>, day: RiderDay) -> Result<Vec<Charge>, StoreError> {
    let mut query = tx.prepare_cached(
        "SELECT charge_id, kind, ride_key, amount_cents, scan_ids FROM charges WHERE card_id = ?1 AND service_date = ?2",
    )?;
    let rows = query.query_map(params![card_to_sql(day.card_id), date_to_sql(day.service_date)], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<Vec<u8>>>(2)?, r.get(3)?, r.get(4)?))
    })?;
    let mut charges = Vec::new();
    for row in rows {
        let (id, kind, ride_key, amount_cents, scan_ids): (_, _, _, i64, Vec<u8>) = row?;
        let kind = ChargeKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("charge kind {kind:?}")))?;
        charges.push(Charge {
            id: id_from_sql(&id)?,
            kind,
            ride_key: ride_key.as_deref().map(id_from_sql).transpose()?,
            amount_cents: Cents::new(amount_cents),
            scan_ids: ids_from_sql(&scan_ids)?,
        });
    }
    Ok(charges)
}
