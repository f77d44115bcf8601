//! Walks the day rider by rider: the rides (from the settled scan files)
//! and the charges (the charges archive, plus what the store holds that
//! the archive does not yet), both sorted by card, merged as they stream,
//! so memory follows one rider, not the day.

use std::collections::{BTreeMap, HashSet, VecDeque};

use chrono::NaiveDate;
use datafusion::arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures_util::StreamExt;

use super::settle_types::SettleError;
use super::sql::{column_i64, column_str, column_str_lists, column_u64, id_from_hex, stream_rows};
use farestream_core::fares::RIDE_SQL;
use farestream_core::fares::Tap;
use farestream_core::money::Cents;
use farestream_core::settlement::{DayCharge, OutcomeAsRead};

type Decode<T> = fn(&RecordBatch) -> Result<Vec<(u64, T)>, SettleError>;

/// A stream of rows sorted by card, read one card's group at a time.
struct ByCard<T> {
    stream: Option<SendableRecordBatchStream>,
    rows: VecDeque<(u64, T)>,
    decode: Decode<T>,
}

impl<T> ByCard<T> {
    async fn fill(&mut self) -> Result<(), SettleError> {
        while self.rows.is_empty() {
            let Some(stream) = self.stream.as_mut() else { return Ok(()) };
            match stream.next().await {
                Some(batch) => self.rows.extend((self.decode)(&batch?)?),
                None => self.stream = None,
            }
        }
        Ok(())
    }

    async fn peek(&mut self) -> Result<Option<u64>, SettleError> {
        self.fill().await?;
        Ok(self.rows.front().map(|(card, _)| *card))
    }

    async fn take(&mut self, card: u64) -> Result<Vec<T>, SettleError> {
        let mut group = Vec::new();
        while self.peek().await? == Some(card) {
            if let Some((_, row)) = self.rows.pop_front() {
                group.push(row);
            }
        }
        Ok(group)
    }
}

pub(super) fn decode_taps(batch: &RecordBatch) -> Result<Vec<(u64, Tap)>, SettleError> {
    let (cards, ids, kinds) = (column_u64(batch, 0)?, column_str(batch, 1)?, column_str(batch, 2)?);
    let (at, routes, stops) = (column_i64(batch, 3)?, column_str(batch, 4)?, column_str(batch, 5)?);
    let mut out = Vec::with_capacity(cards.len());
    for i in 0..cards.len() {
        let (Some(card), Some(id), Some(kind)) = (cards[i], ids[i].as_deref(), kinds[i].as_deref()) else { continue };
        let (route, stop) = (routes[i].clone().unwrap_or_default(), stops[i].clone().unwrap_or_default());
        let tap = Tap::from_stored(id_from_hex(id)?, at[i].unwrap_or(0), kind, route, stop)
            .ok_or_else(|| SettleError::Input(format!("tap kind {kind:?}")))?;
        out.push((card, tap));
    }
    Ok(out)
}

fn decode_charges(batch: &RecordBatch) -> Result<Vec<(u64, DayCharge)>, SettleError> {
    let (cards, ids, amounts) = (column_u64(batch, 0)?, column_str(batch, 1)?, column_i64(batch, 2)?);
    let (outcomes, scans) = (column_str(batch, 3)?, column_str_lists(batch, 4)?);
    let mut out = Vec::with_capacity(cards.len());
    for i in 0..cards.len() {
        let (Some(card), Some(id)) = (cards[i], ids[i].as_deref()) else { continue };
        let charge = DayCharge {
            charge_id: id_from_hex(id)?,
            amount_cents: Cents::new(amounts[i].unwrap_or(0)),
            outcome: OutcomeAsRead::parse(outcomes[i].as_deref().unwrap_or_default()),
            scan_ids: scans[i].iter().map(|s| id_from_hex(s)).collect::<Result<_, _>>()?,
        };
        out.push((card, charge));
    }
    Ok(out)
}

/// Calls `visit(card, taps, charges)` for every card with a ride in
/// `day_scans` or a charge of `date`, in card order. `store_charges` are
/// the day's charges the archive does not hold yet; one the archive holds
/// after all (its batch landed meanwhile) is taken from the archive.
pub async fn for_each_rider(
    ctx: &SessionContext,
    date: NaiveDate,
    mut store_charges: BTreeMap<u64, Vec<DayCharge>>,
    mut visit: impl FnMut(u64, Vec<Tap>, Vec<DayCharge>) -> Result<(), SettleError>,
) -> Result<(), SettleError> {
    let rides_sql = format!(
        "SELECT card_id, scan_id, tap_kind, CAST(scanned_at AS BIGINT) AS scanned_ms, route_id, stop_id
         FROM day_scans WHERE {RIDE_SQL} ORDER BY card_id"
    );
    let charges_sql = format!(
        "SELECT card_id, charge_id, amount_cents, outcome, scan_ids
         FROM charges WHERE service_date = DATE '{date}' ORDER BY card_id"
    );
    let mut rides =
        ByCard { stream: Some(stream_rows(ctx, &rides_sql).await?), rows: VecDeque::new(), decode: decode_taps };
    let mut charges =
        ByCard { stream: Some(stream_rows(ctx, &charges_sql).await?), rows: VecDeque::new(), decode: decode_charges };
    loop {
        let next = [rides.peek().await?, charges.peek().await?, store_charges.keys().next().copied()]
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
        visit(card, taps, day_charges)?;
    }
}
