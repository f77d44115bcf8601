//! Walks the day rider by rider: the rides (from the settled scan files),
//! the charges (the charges archive, plus what the store holds that the
//! archive does not yet) and what the day's earlier runs settled, each
//! sorted by card, merged as they stream, so memory follows one rider, not
//! the day.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, ListArray, RecordBatch};
use datafusion::arrow::datatypes::ArrowNativeType;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures_util::StreamExt;

use super::settle_types::SettleError;
use super::settlement_tables::{FIGURES, RIDER_FIGURES, figures_from};
use super::sql::{Texts, column_i64, column_text_lists, column_texts, column_u64, id_from_hex, stream_rows_ahead};
use farestream_core::fares::RIDE_SQL;
use farestream_core::fares::Tap;
use farestream_core::money::Cents;
use farestream_core::settlement::{DayCharge, OutcomeAsRead, RiderFigures};

/// One batch of a by-card query, its columns ready to read row by row.
trait CardRows: Sized {
    type Row;
    fn of(batch: &RecordBatch) -> Result<Self, SettleError>;
    /// Each row's card; `None` (a null card) skips the row.
    fn cards(&self) -> &[Option<u64>];
    fn len(&self) -> usize {
        self.cards().len()
    }
    fn card(&self, i: usize) -> Option<u64> {
        self.cards()[i]
    }
    /// Row `i`; `None` skips a row with a null id.
    fn row(&self, i: usize) -> Result<Option<Self::Row>, SettleError>;
}

/// A stream of rows sorted by card, read one card's group at a time,
/// each row decoded straight from the batch when its card comes up.
struct ByCard<R> {
    stream: Option<SendableRecordBatchStream>,
    batch: Option<R>,
    next: usize,
}

impl<R: CardRows> ByCard<R> {
    async fn of(ctx: &SessionContext, sql: &str) -> Result<ByCard<R>, SettleError> {
        Ok(ByCard { stream: Some(stream_rows_ahead(ctx, sql).await?), batch: None, next: 0 })
    }

    /// The next row's card, past rows without one; `None` at the end.
    async fn peek(&mut self) -> Result<Option<u64>, SettleError> {
        loop {
            if let Some(batch) = &self.batch {
                while self.next < batch.len() {
                    match batch.card(self.next) {
                        Some(card) => return Ok(Some(card)),
                        None => self.next += 1,
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else { return Ok(None) };
            match stream.next().await {
                Some(batch) => (self.batch, self.next) = (Some(R::of(&batch?)?), 0),
                None => (self.stream, self.batch) = (None, None),
            }
        }
    }

    async fn take(&mut self, card: u64) -> Result<Vec<R::Row>, SettleError> {
        let mut group = Vec::new();
        while self.peek().await? == Some(card) {
            if let Some(row) = self.batch.as_ref().map(|b| b.row(self.next)).transpose()?.flatten() {
                group.push(row);
            }
            self.next += 1;
        }
        Ok(group)
    }
}

/// Rides: `card_id, scan_id, tap_kind, scanned_ms, route_id, stop_id`.
pub(super) struct TapRows {
    cards: Vec<Option<u64>>,
    ids: Texts,
    kinds: Texts,
    at: Vec<Option<i64>>,
    routes: Texts,
    stops: Texts,
}

impl CardRows for TapRows {
    type Row = Tap;

    fn of(batch: &RecordBatch) -> Result<TapRows, SettleError> {
        Ok(TapRows {
            cards: column_u64(batch, 0)?,
            ids: column_texts(batch, 1)?,
            kinds: column_texts(batch, 2)?,
            at: column_i64(batch, 3)?,
            routes: column_texts(batch, 4)?,
            stops: column_texts(batch, 5)?,
        })
    }

    fn cards(&self) -> &[Option<u64>] {
        &self.cards
    }

    fn row(&self, i: usize) -> Result<Option<Tap>, SettleError> {
        let (Some(id), Some(kind)) = (self.ids.get(i), self.kinds.get(i)) else { return Ok(None) };
        let (route, stop) = (self.routes.get(i).unwrap_or_default(), self.stops.get(i).unwrap_or_default());
        let tap =
            Tap::from_stored(id_from_hex(id)?, self.at[i].unwrap_or(0), kind, route.to_string(), stop.to_string())
                .ok_or_else(|| SettleError::Input(format!("tap kind {kind:?}")))?;
        Ok(Some(tap))
    }
}

/// Every ride of a batch with its card.
pub(super) fn decode_taps(batch: &RecordBatch) -> Result<Vec<(u64, Tap)>, SettleError> {
    let rows = TapRows::of(batch)?;
    let mut taps = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        if let (Some(card), Some(tap)) = (rows.card(i), rows.row(i)?) {
            taps.push((card, tap));
        }
    }
    Ok(taps)
}

/// A rider's figures in one of the day's earlier runs: `card_id` and the
/// figures in `RIDER_FIGURES` order.
struct EarlierRows {
    cards: Vec<Option<u64>>,
    figures: Vec<Vec<Option<i64>>>,
}

impl CardRows for EarlierRows {
    type Row = RiderFigures;

    fn of(batch: &RecordBatch) -> Result<EarlierRows, SettleError> {
        let figures = (1..=FIGURES).map(|i| column_i64(batch, i)).collect::<Result<Vec<_>, _>>()?;
        Ok(EarlierRows { cards: column_u64(batch, 0)?, figures })
    }

    fn cards(&self) -> &[Option<u64>] {
        &self.cards
    }

    fn row(&self, i: usize) -> Result<Option<RiderFigures>, SettleError> {
        Ok(Some(figures_from(&|f| self.figures[f][i].unwrap_or(0))))
    }
}

/// Charges: `card_id, charge_id, amount_cents, outcome, scan_ids`.
struct ChargeRows {
    cards: Vec<Option<u64>>,
    ids: Texts,
    amounts: Vec<Option<i64>>,
    outcomes: Texts,
    lists: ListArray,
    scan_ids: Texts,
}

impl CardRows for ChargeRows {
    type Row = DayCharge;

    fn of(batch: &RecordBatch) -> Result<ChargeRows, SettleError> {
        let (lists, scan_ids) = column_text_lists(batch, 4)?;
        Ok(ChargeRows {
            cards: column_u64(batch, 0)?,
            ids: column_texts(batch, 1)?,
            amounts: column_i64(batch, 2)?,
            outcomes: column_texts(batch, 3)?,
            lists,
            scan_ids,
        })
    }

    fn cards(&self) -> &[Option<u64>] {
        &self.cards
    }

    fn row(&self, i: usize) -> Result<Option<DayCharge>, SettleError> {
        let Some(id) = self.ids.get(i) else { return Ok(None) };
        let offsets = self.lists.value_offsets();
        // A null list has no items, whatever its offsets say.
        let items = if self.lists.is_null(i) { 0..0 } else { offsets[i].as_usize()..offsets[i + 1].as_usize() };
        Ok(Some(DayCharge {
            charge_id: id_from_hex(id)?,
            amount_cents: Cents::new(self.amounts[i].unwrap_or(0)),
            outcome: OutcomeAsRead::parse(self.outcomes.get(i).unwrap_or_default()),
            scan_ids: items.filter_map(|j| self.scan_ids.get(j)).map(id_from_hex).collect::<Result<_, _>>()?,
        }))
    }
}

/// One card's part of the day.
pub struct RiderDay {
    pub card: u64,
    pub taps: Vec<Tap>,
    pub charges: Vec<DayCharge>,
    /// What the day's earlier runs settled for the card, summed; `None`
    /// when they never settled it.
    pub before: Option<RiderFigures>,
}

/// Calls `visit` for every card with a ride in `day_scans`, a charge of
/// `date` or figures from one of the day's first `earlier_runs` runs, in
/// card order. `store_charges` are the day's charges the archive does not
/// hold yet; one the archive holds after all (its batch landed meanwhile)
/// is taken from the archive.
pub async fn for_each_rider(
    ctx: &SessionContext,
    date: NaiveDate,
    earlier_runs: u32,
    mut store_charges: BTreeMap<u64, Vec<DayCharge>>,
    mut visit: impl FnMut(RiderDay) -> Result<(), SettleError>,
) -> Result<(), SettleError> {
    let rides_sql = format!(
        "SELECT card_id, scan_id, tap_kind, CAST(scanned_at AS BIGINT) AS scanned_ms, route_id, stop_id
         FROM day_scans WHERE {RIDE_SQL} ORDER BY card_id"
    );
    let charges_sql = format!(
        "SELECT card_id, charge_id, amount_cents, outcome, scan_ids
         FROM charges WHERE service_date = DATE '{date}' ORDER BY card_id"
    );
    // Summed here, one card at a time: a GROUP BY over millions of cards
    // held a hash table of them all (about 170 MB more at 2.7 million).
    let earlier_sql = format!(
        "SELECT card_id, {} FROM settlements WHERE service_date = DATE '{date}' AND run <= {earlier_runs}
         ORDER BY card_id",
        RIDER_FIGURES.join(", ")
    );
    let mut rides = ByCard::<TapRows>::of(ctx, &rides_sql).await?;
    let mut charges = ByCard::<ChargeRows>::of(ctx, &charges_sql).await?;
    let mut earlier = ByCard::<EarlierRows>::of(ctx, &earlier_sql).await?;
    loop {
        let next =
            [rides.peek().await?, charges.peek().await?, earlier.peek().await?, store_charges.keys().next().copied()]
                .into_iter()
                .flatten()
                .min();
        let Some(card) = next else { return Ok(()) };
        let taps = rides.take(card).await?;
        let mut day_charges = charges.take(card).await?;
        if let Some(pending) = store_charges.remove(&card) {
            let archived: HashSet<[u8; 16]> = day_charges.iter().map(|c| c.charge_id).collect();
            day_charges.extend(pending.into_iter().filter(|c| !archived.contains(&c.charge_id)));
        }
        let before = earlier.take(card).await?.into_iter().reduce(|sum, run| sum.plus(&run));
        visit(RiderDay { card, taps, charges: day_charges, before })?;
    }
}
