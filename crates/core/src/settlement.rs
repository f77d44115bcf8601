//! The daily settlement's arithmetic: what one rider's service day comes to
//! (rides, fares, caps, charges by outcome, arrears), what changed since
//! the day's earlier runs, and what counts as a break in the
//! reconciliation. Pure: the shell reads the archives and the account
//! store, and writes what comes back.
//!
//! Every figure is a flow that adds up over a day's runs: run 1 (the
//! cut-over) writes the day as it stood; each later run writes only the
//! change (late rides, outcomes decided since, arrears paid). Summing a
//! rider's rows over all runs gives the day as it stands now, so a plain
//! `SUM(...) GROUP BY card_id` is always right.

use std::borrow::Cow;
use std::fmt;

use crate::charges::{ChargeId, ChargeOutcome, ChargeRecord};
use crate::clock::UnixMillis;
use crate::fares::{DayEdges, FareTable, PricedDay, Tap};
use crate::money::Cents;
use crate::scan::TapKind;

/// One rider's service day in money, as of a settlement run. All amounts
/// in the currency's smallest unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RiderFigures {
    /// Rides priced: a bus ride, a metro trip, an incomplete trip.
    pub rides: i64,
    /// What the rides cost before the daily cap.
    pub fares_cents: Cents,
    /// What the daily cap took off.
    pub caps_cents: Cents,
    /// What the day costs: fares less caps.
    pub due_cents: Cents,
    /// Every charge of the day, whatever came of it.
    pub charged_cents: Cents,
    /// Charges the gateway took or paid out (`succeeded`).
    pub succeeded_cents: Cents,
    /// Charges the gateway refused for good (`declined`): a debit's amount is arrears, a credit's is
    /// still owed to the rider.
    pub declined_cents: Cents,
    /// Not decided yet (pending, or failed and retried).
    pub pending_cents: Cents,
    /// Declined debits: what this day added to the rider's arrears.
    pub arrears_opened_cents: Cents,
    /// Arrears the rider paid during the service day (negative).
    pub arrears_paid_cents: Cents,
    /// What the rider owes in all, as the account store says at the run.
    pub arrears_outstanding_cents: Cents,
    /// Rides first settled in a run after the cut-over.
    pub late_rides: i64,
    /// Credits set against the rider's arrears instead of paid out
    /// (negative): the arrears they paid are in `arrears_paid_cents` too.
    pub netted_cents: Cents,
    /// Charges of a card with no account: nobody to collect from; a person
    /// looks at them.
    pub no_account_cents: Cents,
}

impl RiderFigures {
    /// The change from `before` (the sum of the earlier runs) to `self`.
    pub fn minus(&self, before: &RiderFigures) -> RiderFigures {
        self.zip(before, i64::saturating_sub, |a, b| a - b)
    }

    /// `self` and `other` added figure by figure, to total riders or runs.
    pub fn plus(&self, other: &RiderFigures) -> RiderFigures {
        self.zip(other, i64::saturating_add, |a, b| a + b)
    }

    /// `count` applied to the counts and `money` to the amounts, figure by figure.
    fn zip(&self, other: &RiderFigures, count: fn(i64, i64) -> i64, money: fn(Cents, Cents) -> Cents) -> RiderFigures {
        RiderFigures {
            rides: count(self.rides, other.rides),
            fares_cents: money(self.fares_cents, other.fares_cents),
            caps_cents: money(self.caps_cents, other.caps_cents),
            due_cents: money(self.due_cents, other.due_cents),
            charged_cents: money(self.charged_cents, other.charged_cents),
            succeeded_cents: money(self.succeeded_cents, other.succeeded_cents),
            declined_cents: money(self.declined_cents, other.declined_cents),
            pending_cents: money(self.pending_cents, other.pending_cents),
            arrears_opened_cents: money(self.arrears_opened_cents, other.arrears_opened_cents),
            arrears_paid_cents: money(self.arrears_paid_cents, other.arrears_paid_cents),
            arrears_outstanding_cents: money(self.arrears_outstanding_cents, other.arrears_outstanding_cents),
            late_rides: count(self.late_rides, other.late_rides),
            netted_cents: money(self.netted_cents, other.netted_cents),
            no_account_cents: money(self.no_account_cents, other.no_account_cents),
        }
    }

    /// Whether every figure is zero: a run that changed nothing for the rider writes no row.
    pub fn is_zero(&self) -> bool {
        *self == RiderFigures::default()
    }

    /// Adds one charge's amount under its outcome: a declined debit opens
    /// arrears; an undecided charge (pending, failed) is still pending;
    /// nothing due has no bucket of its own (it is zero).
    pub(crate) fn add_charge(&mut self, amount_cents: Cents, outcome: ChargeOutcome) {
        self.add_unknown_charge(amount_cents);
        let bucket = match outcome {
            ChargeOutcome::Succeeded => &mut self.succeeded_cents,
            ChargeOutcome::Declined => {
                if amount_cents.is_positive() {
                    self.arrears_opened_cents += amount_cents;
                }
                &mut self.declined_cents
            }
            ChargeOutcome::Pending | ChargeOutcome::Failed => &mut self.pending_cents,
            ChargeOutcome::Netted => &mut self.netted_cents,
            ChargeOutcome::NoAccount => &mut self.no_account_cents,
            ChargeOutcome::NothingDue => return,
        };
        *bucket += amount_cents;
    }

    /// Adds a charge whose outcome the archive names but no charge has:
    /// counted as charged, in no bucket (the break reports it apart).
    pub(crate) fn add_unknown_charge(&mut self, amount_cents: Cents) {
        self.charged_cents += amount_cents;
    }
}

/// A ride's revenue, for the per-route totals: the route of its first tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRevenue {
    /// The route of the rides' first taps (a metro trip's entry).
    pub route_id: String,
    /// Rides that began on it.
    pub rides: i64,
    /// What those rides are charged after the daily cap, in cents.
    pub revenue_cents: Cents,
}

/// When the pricer last priced a day whose open entry closes at
/// `open_entry_closes_at` ([`FareTable::entry_closes_at`]): just before
/// that, so the entry is still open.
fn priced_as_of(open_entry_closes_at: Option<UnixMillis>) -> UnixMillis {
    open_entry_closes_at.map_or(UnixMillis::MAX, |closes| closes.saturating_sub(1))
}

/// One rider's day priced from the archive's taps, the way the pricer
/// priced it: an entry the pricer still holds open (its exit window had
/// not closed) is priced as open here too. (`settle_rider` does this with
/// the rest of a rider's figures; the tests price one day alone.)
#[cfg(test)]
fn price_rider(
    fares: &FareTable,
    taps: &[Tap],
    edges: &DayEdges,
    open_entry_closes_at: Option<UnixMillis>,
) -> (RiderFigures, Vec<RouteRevenue>) {
    let priced = fares.price_day_as_of(taps, edges, priced_as_of(open_entry_closes_at));
    (priced_figures(&priced), route_revenue(&priced, taps))
}

fn priced_figures(priced: &PricedDay) -> RiderFigures {
    RiderFigures {
        rides: priced.rides.iter().filter(|r| r.kind.counts_as_ride()).count() as i64,
        fares_cents: priced.fares,
        caps_cents: priced.fares - priced.charged,
        due_cents: priced.charged,
        ..RiderFigures::default()
    }
}

/// Each ride's due amount, on the route of its first tap.
fn route_revenue(priced: &PricedDay, taps: &[Tap]) -> Vec<RouteRevenue> {
    // Sorted, not hashed: a rider has a few taps, and settle looks at
    // millions of riders.
    let mut route_of: Vec<([u8; 16], &str)> = taps.iter().map(|t| (t.scan_id, t.route_id.as_str())).collect();
    route_of.sort_unstable();
    let route_of =
        |id: &[u8; 16]| route_of.binary_search_by_key(id, |(scan_id, _)| *scan_id).ok().map(|i| route_of[i].1);
    let mut routes: Vec<RouteRevenue> = Vec::new();
    for ride in priced.rides.iter().filter(|r| r.kind.counts_as_ride()) {
        let route = ride.scan_ids.first().and_then(route_of).unwrap_or("");
        match routes.iter_mut().find(|r| r.route_id == route) {
            Some(r) => {
                r.rides += 1;
                r.revenue_cents += ride.charged;
            }
            None => routes.push(RouteRevenue { route_id: route.to_string(), rides: 1, revenue_cents: ride.charged }),
        }
    }
    routes
}

/// One thing the reconciliation found wrong, row by row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Break {
    /// A ride (an accepted, gate-opened scan) that no charge prices.
    RideNotCharged {
        /// The ride's scan.
        scan_id: [u8; 16],
        /// The rider's card.
        card_id: u64,
    },
    /// A ride priced by more than one charge.
    RideChargedTwice {
        /// The ride's scan.
        scan_id: [u8; 16],
        /// How many charges price it (two or more).
        charges: u64,
    },
    /// A charge pricing a scan that is not a ride of the day's archive.
    ChargeWithoutRide {
        /// The charge that prices it.
        charge_id: ChargeId,
        /// The scan the day's archive does not hold as a ride.
        scan_id: [u8; 16],
    },
    /// The same scan archived more than once (a file copied in twice).
    ScanArchivedTwice {
        /// The scan archived more than once.
        scan_id: [u8; 16],
        /// How many times it is archived (two or more).
        copies: u64,
    },
    /// The same charge more than once (a charges file copied in twice, or
    /// a charge both archived and still in the store).
    ChargeListedTwice {
        /// The charge listed more than once.
        charge_id: ChargeId,
        /// How many times it appears (two or more).
        copies: u64,
    },
    /// An outcome that is none of the known ones.
    UnknownOutcome {
        /// The charge with that outcome.
        charge_id: ChargeId,
        /// The outcome as it was read.
        outcome: String,
    },
    /// A rider's charges do not add up to what the day costs.
    MoneyMismatch {
        /// The rider's card.
        card_id: u64,
        /// What the day's charges add up to, whatever their outcome, in cents.
        charged_cents: Cents,
        /// What the day costs (its fares after caps), in cents.
        due_cents: Cents,
    },
    /// Declines less payments differ from the account store's arrears.
    ArrearsMismatch {
        /// The rider's card.
        card_id: u64,
        /// What the arrears should be: declines (all days) less arrears payments (all time), in cents.
        from_charges_cents: Cents,
        /// What the account store says the card owes, in cents.
        store_cents: Cents,
    },
    /// A file an earlier run settled is gone from the archive.
    SettledFileMissing {
        /// The file's name, as the earlier run recorded it.
        file: String,
    },
}

impl Break {
    /// The break's name, for counting and the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Break::RideNotCharged { .. } => "ride_not_charged",
            Break::RideChargedTwice { .. } => "ride_charged_twice",
            Break::ChargeWithoutRide { .. } => "charge_without_ride",
            Break::ScanArchivedTwice { .. } => "scan_archived_twice",
            Break::ChargeListedTwice { .. } => "charge_listed_twice",
            Break::UnknownOutcome { .. } => "unknown_outcome",
            Break::MoneyMismatch { .. } => "money_mismatch",
            Break::ArrearsMismatch { .. } => "arrears_mismatch",
            Break::SettledFileMissing { .. } => "settled_file_missing",
        }
    }
}

impl Break {
    /// The break for finance: as its `Display`, amounts in `currency`.
    pub fn describe(&self, currency: &str) -> String {
        let money = |cents: Cents| format!("{currency} {cents}");
        match self {
            Break::MoneyMismatch { card_id, charged_cents, due_cents } => format!(
                "card {card_id}: charges add up to {}, the day's fares after caps to {}",
                money(*charged_cents),
                money(*due_cents)
            ),
            Break::ArrearsMismatch { card_id, from_charges_cents, store_cents } => format!(
                "card {card_id}: declines less payments come to {}, the account store says {}",
                money(*from_charges_cents),
                money(*store_cents)
            ),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = hex::encode;
        match self {
            Break::RideNotCharged { scan_id, card_id } => {
                write!(f, "ride {} of card {card_id} is in no charge", hex(scan_id))
            }
            Break::RideChargedTwice { scan_id, charges } => write!(f, "ride {} is in {charges} charges", hex(scan_id)),
            Break::ChargeWithoutRide { charge_id, scan_id } => {
                write!(f, "charge {} prices scan {}, which is not a ride of the day", hex(charge_id), hex(scan_id))
            }
            Break::ScanArchivedTwice { scan_id, copies } => {
                write!(f, "scan {} is archived {copies} times", hex(scan_id))
            }
            Break::ChargeListedTwice { charge_id, copies } => {
                write!(f, "charge {} appears {copies} times", hex(charge_id))
            }
            Break::UnknownOutcome { charge_id, outcome } => {
                write!(f, "charge {} has an unknown outcome {outcome:?}", hex(charge_id))
            }
            Break::MoneyMismatch { card_id, charged_cents, due_cents } => write!(
                f,
                "card {card_id}: charges add up to {}, the day's fares after caps to {}",
                charged_cents.get(),
                due_cents.get()
            ),
            Break::ArrearsMismatch { card_id, from_charges_cents, store_cents } => write!(
                f,
                "card {card_id}: declines less payments come to {}, the account store says {}",
                from_charges_cents.get(),
                store_cents.get()
            ),
            Break::SettledFileMissing { file } => write!(f, "{file}, settled by an earlier run, is gone"),
        }
    }
}

/// A charge as the settlement reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCharge {
    /// Its id: the same id twice is a break.
    pub charge_id: ChargeId,
    /// In cents; negative for a credit.
    pub amount_cents: Cents,
    /// Its outcome as read: an unknown one is a break.
    pub outcome: OutcomeAsRead,
    /// The scans it prices.
    pub scan_ids: Vec<[u8; 16]>,
}

/// A charge's outcome as the settlement read it from an archive: one this
/// build knows, or a name it does not (a file written by another build or
/// by hand), which the settlement reports as a break rather than failing
/// the day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeAsRead {
    /// One of the outcomes this build writes.
    Known(ChargeOutcome),
    /// A name no [`ChargeOutcome`] has, as it was read.
    Unknown(String),
}

impl OutcomeAsRead {
    /// The outcome named `name`, known or not.
    pub fn parse(name: &str) -> OutcomeAsRead {
        ChargeOutcome::parse(name).map_or_else(|| OutcomeAsRead::Unknown(name.to_string()), OutcomeAsRead::Known)
    }
}

impl From<&ChargeRecord> for DayCharge {
    fn from(c: &ChargeRecord) -> DayCharge {
        DayCharge {
            charge_id: c.charge_id,
            amount_cents: c.amount_cents,
            outcome: OutcomeAsRead::Known(c.outcome),
            scan_ids: c.scan_ids.clone(),
        }
    }
}

/// One rider's day, settled: the figures, the revenue by route, and what
/// did not reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RiderSettlement {
    /// Rides, fares, caps and charges by outcome as the day stands; the arrears figures are the
    /// shell's to fill from the account store.
    pub figures: RiderFigures,
    /// Rides and revenue by the route each ride began on.
    pub routes: Vec<RouteRevenue>,
    /// What did not reconcile; a scan or charge found in copies is one break, however many copies.
    pub breaks: Vec<Break>,
    /// Scans a charge prices that the settled files do not hold: a break,
    /// unless the archive is still behind the pricer (then the rider waits
    /// for the next run).
    pub unarchived_scans: Vec<(ChargeId, [u8; 16])>,
}

/// Whether the other tap of a trip across a boundary of the day `[start,
/// end)` may be one the archive does not hold yet: the day's last metro
/// tap is an entry whose exit window reaches past `end` and no archived
/// tap after ends it, or its first is an exit within the window of
/// `start` that no archived tap before begins. The pricer may have priced
/// that trip with a tap the settlement cannot see yet.
pub fn trip_edge_may_be_unarchived(
    fares: &FareTable,
    taps: &[Tap],
    edges: &DayEdges,
    (start, end): (UnixMillis, UnixMillis),
) -> bool {
    let metro = || taps.iter().filter(|t| t.kind.is_metro());
    let last = metro().max_by_key(|t| t.price_order());
    let first = metro().min_by_key(|t| t.price_order());
    let open_at_end = last.is_some_and(|entry| {
        entry.kind == TapKind::Entry
            && fares.entry_open_at(entry.scanned_at, end)
            && !edges.first_after.as_ref().is_some_and(|after| fares.continues(entry, after))
    });
    let open_at_start = first.is_some_and(|exit| {
        exit.kind == TapKind::Exit
            // An entry at or before `start` could still be open at this exit.
            && fares.entry_open_at(start, exit.scanned_at)
            && !edges.last_before.as_ref().is_some_and(|before| fares.continues(before, exit))
    });
    open_at_end || open_at_start
}

/// Settles one rider's day: prices the taps, adds up the charges, and
/// checks that every ride is in exactly one charge, every charge is
/// counted once with a known outcome, and the charges add up to the fares
/// after caps. `taps` may hold copies (a scans file archived twice) and
/// `charges` too: each copy is a break, counted once.
pub fn settle_rider(
    fares: &FareTable,
    card_id: u64,
    taps: &[Tap],
    edges: &DayEdges,
    charges: &[DayCharge],
    open_entry_closes_at: Option<UnixMillis>,
) -> RiderSettlement {
    let mut breaks = Vec::new();
    let taps =
        distinct_by(taps, |t| t.scan_id, |id, copies| breaks.push(Break::ScanArchivedTwice { scan_id: id, copies }));
    let charges = distinct_by(
        charges,
        |c| c.charge_id,
        |id, copies| breaks.push(Break::ChargeListedTwice { charge_id: id, copies }),
    );
    let priced = fares.price_day_as_of(&taps, edges, priced_as_of(open_entry_closes_at));
    let mut figures = priced_figures(&priced);
    let routes = route_revenue(&priced, &taps);
    let mut known: Vec<[u8; 16]> = taps.iter().map(|t| t.scan_id).collect();
    known.sort_unstable();
    let mut charged_in: Vec<[u8; 16]> = Vec::with_capacity(known.len());
    let mut unarchived_scans = Vec::new();
    for charge in charges.iter() {
        match &charge.outcome {
            OutcomeAsRead::Known(outcome) => figures.add_charge(charge.amount_cents, *outcome),
            OutcomeAsRead::Unknown(name) => {
                breaks.push(Break::UnknownOutcome { charge_id: charge.charge_id, outcome: name.clone() });
                figures.add_unknown_charge(charge.amount_cents);
            }
        }
        for scan_id in &charge.scan_ids {
            charged_in.push(*scan_id);
            if known.binary_search(scan_id).is_err() {
                unarchived_scans.push((charge.charge_id, *scan_id));
            }
        }
    }
    charged_in.sort_unstable();
    for tap in taps.iter() {
        let charges_of_tap =
            charged_in.partition_point(|id| *id <= tap.scan_id) - charged_in.partition_point(|id| *id < tap.scan_id);
        match charges_of_tap as u64 {
            0 if Some(tap.scan_id) == priced.open_entry => {}
            0 => breaks.push(Break::RideNotCharged { scan_id: tap.scan_id, card_id }),
            1 => {}
            n => breaks.push(Break::RideChargedTwice { scan_id: tap.scan_id, charges: n }),
        }
    }
    breaks.extend(money_break(card_id, &figures));
    RiderSettlement { figures, routes, breaks, unarchived_scans }
}

/// The first copy of each item by key; `copied(key, copies)` for each key
/// seen more than once, in key order. Items without copies (every day but
/// a broken one) are handed back as they came, not copied.
fn distinct_by<T: Clone, K: Eq + Copy + Ord>(
    items: &[T],
    key: impl Fn(&T) -> K,
    mut copied: impl FnMut(K, u64),
) -> Cow<'_, [T]> {
    let mut keys: Vec<K> = items.iter().map(&key).collect();
    keys.sort_unstable();
    let mut repeated = false;
    for run in keys.chunk_by(|a, b| a == b).filter(|run| run.len() > 1) {
        copied(run[0], run.len() as u64);
        repeated = true;
    }
    if !repeated {
        return Cow::Borrowed(items);
    }
    keys.dedup();
    let mut seen = vec![false; keys.len()];
    let mut out = Vec::with_capacity(keys.len());
    for item in items {
        let Ok(i) = keys.binary_search(&key(item)) else { continue };
        if !std::mem::replace(&mut seen[i], true) {
            out.push(item.clone());
        }
    }
    Cow::Owned(out)
}

/// The money check for one rider: the day's charges add up to what it
/// costs, and every charge is one of the known outcomes' amounts.
pub(crate) fn money_break(card_id: u64, figures: &RiderFigures) -> Option<Break> {
    (figures.charged_cents != figures.due_cents).then_some(Break::MoneyMismatch {
        card_id,
        charged_cents: figures.charged_cents,
        due_cents: figures.due_cents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::TapKind;
    use std::collections::BTreeMap;

    fn table() -> FareTable {
        FareTable {
            currency: "CNY".into(),
            bus_route_fares: BTreeMap::from([("bus-1".to_string(), Cents::new(200))]),
            bus_default_fare: None,
            metro_station_zones: BTreeMap::from([("m-a".to_string(), 1), ("m-b".to_string(), 3)]),
            metro_base_fare: Cents::new(300),
            metro_fare_per_zone: Cents::new(100),
            max_fare: Cents::new(900),
            metro_exit_window_ms: 3_600_000,
            daily_cap: Cents::new(500),
        }
    }

    fn tap(n: u8, at: i64, kind: TapKind, route: &str, stop: &str) -> Tap {
        Tap { scan_id: [n; 16], scanned_at: at, kind, route_id: route.into(), stop_id: stop.into() }
    }

    #[test]
    fn a_trip_across_a_boundary_waits_for_its_other_tap_only_when_that_may_be_unarchived() {
        let (start, end) = (10_000_000, 20_000_000);
        let t = table();
        let entry = tap(1, end - 60_000, TapKind::Entry, "metro-1", "m-a");
        let exit_after = tap(2, end + 60_000, TapKind::Exit, "metro-1", "m-b");
        let bus = tap(3, end - 30_000, TapKind::Single, "bus-1", "s");
        let may_wait = |taps: &[Tap], edges: &DayEdges| trip_edge_may_be_unarchived(&t, taps, edges, (start, end));
        assert!(may_wait(&[entry.clone(), bus.clone()], &DayEdges::NONE), "the exit may be tomorrow's");
        let ended = DayEdges { last_before: None, first_after: Some(exit_after.clone()) };
        assert!(!may_wait(&[entry.clone(), bus.clone()], &ended), "tomorrow's exit is archived");
        let early_entry = tap(4, end - 3_600_001, TapKind::Entry, "metro-1", "m-a");
        assert!(!may_wait(&[early_entry], &DayEdges::NONE), "its window closed inside the day");
        let exit_first = tap(5, start + 60_000, TapKind::Exit, "metro-1", "m-b");
        assert!(may_wait(std::slice::from_ref(&exit_first), &DayEdges::NONE), "the entry may be yesterday's");
        let began =
            DayEdges { last_before: Some(tap(6, start - 60_000, TapKind::Entry, "metro-1", "m-a")), first_after: None };
        assert!(!may_wait(&[exit_first], &began));
        assert!(!may_wait(&[bus], &DayEdges::NONE) && !may_wait(&[], &DayEdges::NONE));
    }

    #[test]
    fn a_continued_trip_is_no_ride_and_no_revenue_of_the_exits_day() {
        let exit = tap(2, 1_000, TapKind::Exit, "metro-1", "m-b");
        let edges = DayEdges { last_before: Some(tap(1, -1_000, TapKind::Entry, "metro-1", "m-a")), first_after: None };
        let (figures, routes) = price_rider(&table(), &[exit], &edges, None);
        assert_eq!((figures.rides, figures.fares_cents.get(), figures.due_cents.get()), (0, 0, 0));
        assert!(routes.is_empty());
    }

    #[test]
    fn a_rider_is_priced_with_caps_and_revenue_goes_to_the_first_taps_route() {
        let taps = [
            tap(1, 1_000, TapKind::Single, "bus-1", "s"),
            tap(2, 2_000, TapKind::Entry, "metro-1", "m-a"),
            tap(3, 3_000, TapKind::Exit, "metro-1", "m-b"),
            tap(4, 4_000, TapKind::Single, "bus-1", "s"),
        ];
        let (figures, routes) = price_rider(&table(), &taps, &DayEdges::NONE, None);
        // 200 + 500 (300 + 2 zones) + 200 = 900 in fares; the cap is 500.
        assert_eq!(
            (figures.rides, figures.fares_cents.get(), figures.caps_cents.get(), figures.due_cents.get()),
            (3, 900, 400, 500)
        );
        let bus = routes.iter().find(|r| r.route_id == "bus-1").expect("bus");
        let metro = routes.iter().find(|r| r.route_id == "metro-1").expect("metro");
        assert_eq!((bus.rides, bus.revenue_cents.get(), metro.rides, metro.revenue_cents.get()), (2, 200, 1, 300));
    }

    #[test]
    fn an_entry_the_pricer_holds_open_is_not_a_ride_yet() {
        let taps = [tap(1, 1_000, TapKind::Entry, "metro-1", "m-a")];
        let (open, _) = price_rider(&table(), &taps, &DayEdges::NONE, Some(1_000 + 3_600_000));
        assert_eq!((open.rides, open.due_cents.get()), (0, 0));
        let (closed, _) = price_rider(&table(), &taps, &DayEdges::NONE, None);
        assert_eq!((closed.rides, closed.due_cents.get()), (1, 900), "an entry with no exit is the maximum fare");
    }

    #[test]
    fn runs_add_up_and_outcomes_land_in_their_buckets() {
        let mut first = RiderFigures { rides: 2, due_cents: Cents::new(400), ..RiderFigures::default() };
        first.add_charge(Cents::new(200), ChargeOutcome::Succeeded);
        first.add_charge(Cents::new(200), ChargeOutcome::Pending);
        let mut now = RiderFigures { rides: 3, due_cents: Cents::new(500), late_rides: 1, ..RiderFigures::default() };
        for (amount, outcome) in [
            (200, ChargeOutcome::Succeeded),
            (200, ChargeOutcome::Declined),
            (100, ChargeOutcome::Failed),
            (0, ChargeOutcome::NothingDue),
        ] {
            now.add_charge(Cents::new(amount), outcome);
        }
        assert_eq!((now.charged_cents.get(), now.pending_cents.get(), now.arrears_opened_cents.get()), (500, 100, 200));
        let delta = now.minus(&first);
        assert_eq!(
            (delta.rides, delta.pending_cents.get(), delta.declined_cents.get(), delta.late_rides),
            (1, -100, 200, 1)
        );
        assert_eq!(first.plus(&delta), now);
        assert!(now.minus(&now).is_zero());
        assert_eq!(money_break(7, &now), None);
        let short = RiderFigures { due_cents: Cents::new(600), ..now };
        assert_eq!(money_break(7, &short).map(|b| b.kind()), Some("money_mismatch"));
    }

    fn charge(n: u8, amount: i64, outcome: &str, scans: &[u8]) -> DayCharge {
        DayCharge {
            charge_id: [n; 16],
            amount_cents: Cents::new(amount),
            outcome: OutcomeAsRead::parse(outcome),
            scan_ids: scans.iter().map(|s| [*s; 16]).collect(),
        }
    }

    #[test]
    fn a_rider_whose_charges_match_settles_clean() {
        let taps = [tap(1, 1_000, TapKind::Single, "bus-1", "s"), tap(2, 2_000, TapKind::Single, "bus-1", "s")];
        let charges = [charge(1, 200, "succeeded", &[1]), charge(2, 200, "declined", &[2])];
        let s = settle_rider(&table(), 9, &taps, &DayEdges::NONE, &charges, None);
        assert!(s.breaks.is_empty() && s.unarchived_scans.is_empty(), "{:?}", s.breaks);
        assert_eq!(
            (
                s.figures.rides,
                s.figures.due_cents.get(),
                s.figures.succeeded_cents.get(),
                s.figures.arrears_opened_cents.get()
            ),
            (2, 400, 200, 200)
        );
    }

    #[test]
    fn every_kind_of_break_is_named() {
        let taps = [
            tap(1, 1_000, TapKind::Single, "bus-1", "s"),
            tap(1, 1_000, TapKind::Single, "bus-1", "s"),
            tap(2, 2_000, TapKind::Single, "bus-1", "s"),
            tap(3, 3_000, TapKind::Single, "bus-1", "s"),
        ];
        let charges = [
            charge(1, 200, "succeeded", &[1, 2]),
            charge(1, 200, "succeeded", &[1, 2]),
            charge(2, 100, "flipped", &[2, 7]),
        ];
        let s = settle_rider(&table(), 9, &taps, &DayEdges::NONE, &charges, None);
        let mut kinds: Vec<&str> = s.breaks.iter().map(Break::kind).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            vec![
                "charge_listed_twice",
                "money_mismatch",
                "ride_charged_twice",
                "ride_not_charged",
                "scan_archived_twice",
                "unknown_outcome"
            ]
        );
        assert_eq!(s.unarchived_scans, vec![([2; 16], [7; 16])], "scan 7 is in no settled file");
        assert!(s.breaks.iter().any(|b| b.to_string().contains(&hex::encode([3u8; 16]))), "a break names its row");
    }

    #[test]
    fn an_open_entry_waits_uncharged_without_a_break() {
        let taps = [tap(1, 1_000, TapKind::Entry, "metro-1", "m-a")];
        let s = settle_rider(&table(), 9, &taps, &DayEdges::NONE, &[], Some(10_000));
        assert!(s.breaks.is_empty(), "{:?}", s.breaks);
        let closed = settle_rider(&table(), 9, &taps, &DayEdges::NONE, &[], None);
        assert_eq!(
            closed.breaks.iter().map(Break::kind).collect::<Vec<_>>(),
            vec!["ride_not_charged", "money_mismatch"]
        );
    }

    #[test]
    fn extreme_amounts_saturate_instead_of_panicking() {
        let max = RiderFigures { charged_cents: Cents::MAX, fares_cents: Cents::MIN, ..RiderFigures::default() };
        let min = RiderFigures { charged_cents: Cents::MIN, fares_cents: Cents::MAX, ..RiderFigures::default() };
        let d = max.minus(&min);
        assert_eq!((d.charged_cents.get(), d.fares_cents.get()), (i64::MAX, i64::MIN));
        let mut f = RiderFigures::default();
        f.add_charge(Cents::MAX, ChargeOutcome::Declined);
        f.add_charge(Cents::MAX, ChargeOutcome::Declined);
        assert_eq!((f.declined_cents.get(), f.arrears_opened_cents.get()), (i64::MAX, i64::MAX));
        f.add_unknown_charge(Cents::new(5));
        assert_eq!(f.charged_cents, Cents::MAX, "an unknown outcome is counted as charged and reported apart");
    }
}
