//! The neighbouring days' edge taps: a metro trip belongs to the day of
//! its entry (see `farestream_core::fares`), so a rider whose day ends
//! with an entry near the boundary is priced with the first metro tap of
//! the day after, and one whose day starts with an exit with the last
//! metro tap of the day before, as the pricer did. Only those riders'
//! taps near the boundaries are read, so the maps hold the night riders,
//! not the neighbouring days.

use std::collections::HashMap;

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;

use super::riders::decode_taps;
use super::settle_types::SettleError;
use super::sql::collect_rows;
use farestream_core::clock::UnixMillis;
use farestream_core::fares::RIDE_SQL;
use farestream_core::fares::{DayEdges, Tap};

/// Per card, the edge taps of the days around the one settled.
#[derive(Debug, Default)]
pub struct Edges {
    last_before: HashMap<u64, Tap>,
    first_after: HashMap<u64, Tap>,
}

impl Edges {
    pub fn of(&self, card: u64) -> DayEdges {
        DayEdges {
            last_before: self.last_before.get(&card).cloned(),
            first_after: self.first_after.get(&card).cloned(),
        }
    }
}

/// Reads the edges for `date`, whose service day is `[start, end)`, from
/// the `scans` table's neighbouring partitions (every archived file:
/// whatever of them has arrived), for the riders of `day_scans` whose trip
/// may cross a boundary within `window_ms`.
pub async fn read_edges(
    ctx: &SessionContext,
    date: NaiveDate,
    (start, end): (UnixMillis, UnixMillis),
    window_ms: i64,
) -> Result<Edges, SettleError> {
    let mut edges = Edges::default();
    if let Some(before) = date.pred_opt() {
        let riders = riders_near(&format!("tap_kind = 'exit' AND {SCANNED_MS} <= {}", start.saturating_add(window_ms)));
        let sql = neighbour_taps(before, &riders, &format!("{SCANNED_MS} >= {}", start.saturating_sub(window_ms)));
        keep_per_card(&mut edges.last_before, collect_taps(ctx, &sql).await?, |new, kept| {
            new.price_order() > kept.price_order()
        });
    }
    if let Some(after) = date.succ_opt() {
        let riders = riders_near(&format!("tap_kind = 'entry' AND {SCANNED_MS} >= {}", end.saturating_sub(window_ms)));
        let sql = neighbour_taps(after, &riders, &format!("{SCANNED_MS} <= {}", end.saturating_add(window_ms)));
        keep_per_card(&mut edges.first_after, collect_taps(ctx, &sql).await?, |new, kept| {
            new.price_order() < kept.price_order()
        });
    }
    Ok(edges)
}

const SCANNED_MS: &str = "CAST(scanned_at AS BIGINT)";

/// The cards of the settled day with a ride matching `condition`.
fn riders_near(condition: &str) -> String {
    format!("SELECT card_id FROM day_scans WHERE {RIDE_SQL} AND {condition}")
}

/// The metro taps of those riders on `date` matching `condition`, in the
/// rides' column order.
fn neighbour_taps(date: NaiveDate, riders: &str, condition: &str) -> String {
    format!(
        "SELECT card_id, scan_id, tap_kind, {SCANNED_MS} AS scanned_ms, route_id, stop_id FROM scans
         WHERE service_date = DATE '{date}' AND {RIDE_SQL} AND tap_kind <> 'single' AND {condition}
           AND card_id IN ({riders})"
    )
}

async fn collect_taps(ctx: &SessionContext, sql: &str) -> Result<Vec<(u64, Tap)>, SettleError> {
    let mut taps = Vec::new();
    for batch in collect_rows(ctx, sql).await? {
        taps.extend(decode_taps(&batch)?);
    }
    Ok(taps)
}

fn keep_per_card(map: &mut HashMap<u64, Tap>, taps: Vec<(u64, Tap)>, better: fn(&Tap, &Tap) -> bool) {
    for (card, tap) in taps {
        match map.get(&card) {
            Some(kept) if !better(&tap, kept) => {}
            _ => {
                map.insert(card, tap);
            }
        }
    }
}
