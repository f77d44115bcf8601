//! Fares: what a rider's service day costs, from the taps the gates let
//! through. Pure: the same taps give the same rides and the same money,
//! whatever order they arrived in, because everything here follows
//! `scanned_at` (ties broken by `scan_id`), never arrival.
//!
//! - A bus tap (`single`) is one ride at its route's flat fare.
//! - A metro entry pairs with the rider's next exit within
//!   `metro_exit_window_ms`; the trip costs the base fare plus a fare per
//!   zone crossed. An entry with no such exit, and an exit with no entry,
//!   each cost the maximum fare: the rider rode, and the gate cannot say how
//!   far.
//! - A trip belongs to the service day of its entry. An entry late in the
//!   day whose exit comes after the boundary (04:00 by default) is priced
//!   on the entry's day; on the exit's day that exit is a continuation,
//!   with nothing due. Each day is priced from its own taps plus its
//!   [`DayEdges`], so every tap stays in the day (and the partition) of
//!   its `scanned_at`, and one trip costs one fare.
//! - A tap at a route or station the table does not know costs the maximum
//!   fare, flagged, so an incomplete table is visible in the rides rather
//!   than free.
//! - Capping, as London does it: each ride in the order it began (a metro
//!   trip at its entry, not its exit) is charged what is left of the daily
//!   cap at most. A maximum fare for an
//!   incomplete trip is outside the cap: charged in full and not counted
//!   toward it, so tapping out always pays. A day therefore costs exactly
//!   `min(capped fares, cap) + incomplete-trip fares`.
//!
//! `docs/fares.md` describes the table (`config/fares.toml`) for operators.

use std::collections::BTreeMap;

use crate::clock::UnixMillis;
use crate::money::Cents;
use crate::scan::{ArchivedScan, ScanStatus, TapKind};

/// The operator's fare table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FareTable {
    /// ISO 4217 code, e.g. "CNY".
    pub currency: String,
    /// A bus route's flat fare, by `route_id`.
    pub bus_route_fares: BTreeMap<String, Cents>,
    /// The fare of a bus route not listed above, if bus routes share one.
    pub bus_default_fare: Option<Cents>,
    /// A metro station's zone, by `stop_id`.
    pub metro_station_zones: BTreeMap<String, u32>,
    /// What a metro trip costs before any zone is crossed.
    pub metro_base_fare: Cents,
    /// Added for each zone between the entry and exit stations.
    pub metro_fare_per_zone: Cents,
    /// What an incomplete trip costs: an entry with no exit, an exit with
    /// no entry, a tap the table cannot price.
    pub max_fare: Cents,
    /// How long after an entry its exit may come.
    pub metro_exit_window_ms: i64,
    /// Most a rider pays in one service day.
    pub daily_cap: Cents,
}

/// A tap the gate let through, of one rider on one service day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// The scan's id (`scans.scan_id` in the archive); breaks ties in `scanned_at`.
    pub scan_id: [u8; 16],
    /// When the validator scanned it, by its own clock (Unix ms): taps are priced in this order,
    /// never in the order they arrived.
    pub scanned_at: UnixMillis,
    /// A bus tap, a metro entry or a metro exit.
    pub kind: TapKind,
    /// The validator's route: a bus ride's fare is looked up by it.
    pub route_id: String,
    /// The validator's stop or station: a metro station's zone is looked up by it.
    pub stop_id: String,
}

impl Tap {
    /// Where the tap falls among a rider's: by scan time, then scan id.
    /// Every pricing, edge and settlement order is this one.
    pub fn price_order(&self) -> (UnixMillis, [u8; 16]) {
        (self.scanned_at, self.scan_id)
    }

    /// A tap from a stored row (the money store's `taps`, the archive read
    /// by the settlement), its kind by name; `None` for a kind no tap has.
    pub fn from_stored(
        scan_id: [u8; 16],
        scanned_at: UnixMillis,
        kind: &str,
        route_id: String,
        stop_id: String,
    ) -> Option<Tap> {
        Some(Tap { scan_id, scanned_at, kind: TapKind::parse(kind)?, route_id, stop_id })
    }
}

/// The rider and the tap of a ride, or `None` for a scan that is not one.
/// A ride is a scan whose signatures and windows held and whose gate
/// opened (a refusing gate makes the scan `denied`; a replay is `replay`),
/// with its card and its tap kind known. The one definition: pricing, the
/// audit and the demo's summary call this; the settlement reads the same
/// condition as [`RIDE_SQL`].
pub fn ride_of(row: &ArchivedScan) -> Option<(u64, Tap)> {
    let (card_id, kind) = ride_card_and_kind(row)?;
    let (route_id, stop_id) = (row.route_id.clone(), row.stop_id.clone());
    Some((card_id, Tap { scan_id: row.scan_id, scanned_at: row.scanned_at, kind, route_id, stop_id }))
}

/// Whether a scan is a ride: [`ride_of`] without building the tap.
pub fn is_ride(row: &ArchivedScan) -> bool {
    ride_card_and_kind(row).is_some()
}

/// The condition itself, once.
fn ride_card_and_kind(row: &ArchivedScan) -> Option<(u64, TapKind)> {
    (row.status == ScanStatus::Accepted).then_some((row.card_id?, row.tap_kind?))
}

/// [`is_ride`] as an SQL condition on the scans archive's columns, for the
/// settlement (`tests/it/settlement.rs` holds the two together on an archive).
pub const RIDE_SQL: &str = "status = 'accepted' AND card_id IS NOT NULL AND tap_kind IS NOT NULL";

/// What the neighbouring service days say about a rider's day: a trip
/// may begin with the last tap of the day before or end with the first
/// tap of the day after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayEdges {
    /// The rider's last metro tap (entry or exit) of the previous service
    /// day: an entry there may end with this day's first metro tap.
    pub last_before: Option<Tap>,
    /// The rider's first metro tap of the next service day: an exit there
    /// may end this day's last entry.
    pub first_after: Option<Tap>,
}

impl DayEdges {
    /// No neighbouring taps: the day priced on its own.
    pub const NONE: DayEdges = DayEdges { last_before: None, first_after: None };

    /// The edges a rider's neighbouring days give: the last metro tap of
    /// `day_before`'s taps and the first of `day_after`'s, in the order
    /// taps are priced (scan time, then scan id). The taps come in any order.
    pub fn between(day_before: &[Tap], day_after: &[Tap]) -> DayEdges {
        let metro = |tap: &&Tap| tap.kind.is_metro();
        DayEdges {
            last_before: day_before.iter().filter(metro).max_by_key(|t| t.price_order()).cloned(),
            first_after: day_after.iter().filter(metro).min_by_key(|t| t.price_order()).cloned(),
        }
    }
}

/// How a ride was priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RideKind {
    /// A bus tap at its route's flat fare.
    Bus,
    /// An entry and its exit. When the exit came after the day's end, the
    /// ride holds the entry only (the exit is the next day's tap) and is
    /// priced from both stations.
    MetroTrip,
    /// The exit of a trip that began the day before and is priced there:
    /// nothing due, and not a ride of this day.
    ContinuedTrip,
    /// An entry with no exit in the window: the maximum fare.
    MetroEntryWithoutExit,
    /// An exit with no entry: the maximum fare.
    MetroExitWithoutEntry,
    /// A route or station the table does not know: the maximum fare,
    /// under the cap (the gap is the operator's, not the rider's).
    Unpriceable,
}

impl RideKind {
    /// Whether the daily cap applies: not to an incomplete trip's maximum
    /// fare, as London's capping excludes it.
    pub(crate) fn capped(self) -> bool {
        !matches!(self, RideKind::MetroEntryWithoutExit | RideKind::MetroExitWithoutEntry)
    }

    /// Whether it counts as a ride of its day: all but a continuation.
    pub(crate) fn counts_as_ride(self) -> bool {
        self != RideKind::ContinuedTrip
    }
}

/// One ride of the day and what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedRide {
    /// The taps it prices (an entry and its exit, or one tap).
    pub scan_ids: Vec<[u8; 16]>,
    /// When it started: its first tap's `scanned_at`.
    pub started_at: UnixMillis,
    /// How it was priced; says whether the daily cap applies.
    pub kind: RideKind,
    /// The fare before the cap.
    pub fare: Cents,
    /// What is charged for it after the daily cap.
    pub charged: Cents,
}

/// A rider's service day, priced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PricedDay {
    /// The rides in the order they began (a continuation first), each with what it is charged.
    pub rides: Vec<PricedRide>,
    /// What the rides cost before the daily cap.
    pub fares: Cents,
    /// What the day costs: the capped fares up to the cap, plus the incomplete trips' maximum fares.
    pub charged: Cents,
    /// An entry whose exit may still come (priced as of a time within its
    /// window): not a ride yet, and not charged.
    pub open_entry: Option<[u8; 16]>,
}

impl FareTable {
    /// Whether an entry scanned at `entry_scanned_at` is still open (an
    /// exit may still end its trip) at `now`: the one rule, at most the
    /// exit window after it.
    pub fn entry_open_at(&self, entry_scanned_at: UnixMillis, now: UnixMillis) -> bool {
        now.saturating_sub(entry_scanned_at) <= self.metro_exit_window_ms
    }

    /// When a metro entry's exit window closes: the first moment
    /// [`entry_open_at`](Self::entry_open_at) is false, from which it is
    /// priced as an entry without exit (the money store keeps it).
    pub fn entry_closes_at(&self, entry_scanned_at: UnixMillis) -> UnixMillis {
        entry_scanned_at.saturating_add(self.metro_exit_window_ms).saturating_add(1)
    }

    /// Prices one rider's complete service day, in any order: an entry
    /// with no exit is a maximum fare.
    pub fn price_day(&self, taps: &[Tap], edges: &DayEdges) -> PricedDay {
        self.price_day_as_of(taps, edges, UnixMillis::MAX)
    }

    /// Prices what is known of a day at `now`: the last entry, when its exit
    /// window is still open at `now`, is left open rather than priced.
    pub fn price_day_as_of(&self, taps: &[Tap], edges: &DayEdges, now: UnixMillis) -> PricedDay {
        let mut sorted: Vec<&Tap> = taps.iter().collect();
        sorted.sort_by_key(|t| t.price_order());
        // Bus taps neither begin nor end a trip: the edges are metro taps.
        let first_metro = sorted.iter().position(|t| t.kind.is_metro());
        let continued = match (&edges.last_before, first_metro) {
            (Some(before), Some(i)) if self.continues(before, sorted[i]) => Some(sorted.remove(i)),
            _ => None,
        };
        let last_metro = sorted.iter().rev().find(|t| t.kind.is_metro());
        let ended_after = match (last_metro, &edges.first_after) {
            (Some(last), Some(after)) if self.continues(last, after) => Some(after),
            _ => None,
        };
        if let Some(exit) = ended_after {
            sorted.push(exit);
        }
        let (mut rides, open_entry) = self.pair(&sorted, now);
        if let (Some(exit), Some(trip)) = (ended_after, rides.last_mut()) {
            // The exit is the next day's tap, priced there as a continuation.
            trip.scan_ids.retain(|id| *id != exit.scan_id);
        }
        // Pairing emits a trip at its exit; the cap goes by when each ride
        // began, so a bus ridden between an entry and its exit comes after
        // the trip (finance reads revenue by the route a ride began on).
        rides.sort_by_key(|r| (r.started_at, r.scan_ids.first().copied()));
        if let Some(exit) = continued {
            rides.insert(0, ride(&[exit], RideKind::ContinuedTrip, Cents::ZERO));
        }
        let mut left = self.daily_cap;
        for ride in rides.iter_mut() {
            if ride.kind.capped() {
                ride.charged = ride.fare.min(left);
                left -= ride.charged;
            } else {
                ride.charged = ride.fare;
            }
        }
        let fares = rides.iter().map(|r| r.fare).sum();
        let charged = rides.iter().map(|r| r.charged).sum();
        PricedDay { rides, fares, charged, open_entry }
    }

    /// Taps in `scanned_at` order into rides, before the cap, and the entry
    /// still open at `now`, if any.
    fn pair(&self, taps: &[&Tap], now: UnixMillis) -> (Vec<PricedRide>, Option<[u8; 16]>) {
        let mut rides = Vec::new();
        let mut open_entry: Option<&Tap> = None;
        for &tap in taps {
            // An entry whose window has passed before this tap stays unpaired.
            if let Some(entry) = open_entry.filter(|e| !self.entry_open_at(e.scanned_at, tap.scanned_at)) {
                rides.push(self.max_fare_ride(&[entry], RideKind::MetroEntryWithoutExit));
                open_entry = None;
            }
            match tap.kind {
                TapKind::Single => rides.push(self.bus_ride(tap)),
                TapKind::Entry => {
                    if let Some(earlier) = open_entry.replace(tap) {
                        rides.push(self.max_fare_ride(&[earlier], RideKind::MetroEntryWithoutExit));
                    }
                }
                TapKind::Exit => match open_entry.take() {
                    Some(entry) => rides.push(self.metro_trip(entry, tap)),
                    None => rides.push(self.max_fare_ride(&[tap], RideKind::MetroExitWithoutEntry)),
                },
            }
        }
        match open_entry {
            Some(entry) if self.entry_open_at(entry.scanned_at, now) => (rides, Some(entry.scan_id)),
            Some(entry) => {
                rides.push(self.max_fare_ride(&[entry], RideKind::MetroEntryWithoutExit));
                (rides, None)
            }
            None => (rides, None),
        }
    }

    /// Whether `exit` ends the trip `entry` began: the rider's next metro
    /// tap after it is this exit, within the exit window (the caller knows
    /// no metro tap comes between).
    pub(crate) fn continues(&self, entry: &Tap, exit: &Tap) -> bool {
        entry.kind == TapKind::Entry
            && exit.kind == TapKind::Exit
            && self.within_exit_window(entry.scanned_at, exit.scanned_at)
    }

    /// Whether `to` is no earlier than `from` and at most the exit window after it.
    fn within_exit_window(&self, from: UnixMillis, to: UnixMillis) -> bool {
        to >= from && self.entry_open_at(from, to)
    }

    /// Whether a tap newly added to a day can change the price of the day
    /// before (`.0`) or the day after (`.1`), given the day's edges with the
    /// tap already in: only a metro tap within the exit window of the entry
    /// that ends the day before, or of the exit that starts the day after.
    pub fn neighbours_touched(&self, tap: &Tap, edges: &DayEdges) -> (bool, bool) {
        if !tap.kind.is_metro() {
            return (false, false);
        }
        let within = |from, to| self.within_exit_window(from, to);
        let before = edges
            .last_before
            .as_ref()
            .is_some_and(|b| b.kind == TapKind::Entry && within(b.scanned_at, tap.scanned_at));
        let after =
            edges.first_after.as_ref().is_some_and(|a| a.kind == TapKind::Exit && within(tap.scanned_at, a.scanned_at));
        (before, after)
    }

    fn bus_ride(&self, tap: &Tap) -> PricedRide {
        match self.bus_route_fares.get(&tap.route_id).copied().or(self.bus_default_fare) {
            Some(fare) => ride(&[tap], RideKind::Bus, fare),
            None => self.max_fare_ride(&[tap], RideKind::Unpriceable),
        }
    }

    fn metro_trip(&self, entry: &Tap, exit: &Tap) -> PricedRide {
        let zones = (self.metro_station_zones.get(&entry.stop_id), self.metro_station_zones.get(&exit.stop_id));
        let (Some(&from), Some(&to)) = zones else {
            return self.max_fare_ride(&[entry, exit], RideKind::Unpriceable);
        };
        let fare = self.metro_base_fare + self.metro_fare_per_zone.times(u64::from(from.abs_diff(to)));
        ride(&[entry, exit], RideKind::MetroTrip, fare)
    }

    fn max_fare_ride(&self, taps: &[&Tap], kind: RideKind) -> PricedRide {
        ride(taps, kind, self.max_fare)
    }
}

fn ride(taps: &[&Tap], kind: RideKind, fare: Cents) -> PricedRide {
    PricedRide {
        scan_ids: taps.iter().map(|t| t.scan_id).collect(),
        started_at: taps.first().map(|t| t.scanned_at).unwrap_or_default(),
        kind,
        fare,
        charged: Cents::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A scan is a ride exactly when it was accepted with its card and
        /// tap kind known, and the ride's tap is the scan's, field by field.
        #[test]
        fn a_ride_is_an_accepted_scan_with_a_card_and_a_tap_kind(
            status in 0..ScanStatus::ALL.len(),
            card_id in proptest::option::of(proptest::num::u64::ANY),
            kind in proptest::option::of(0..3usize),
            scanned_at in proptest::num::i64::ANY,
            route in ".{0,40}",
        ) {
            let row = ArchivedScan {
                status: ScanStatus::ALL[status],
                card_id,
                tap_kind: kind.map(|k| [TapKind::Single, TapKind::Entry, TapKind::Exit][k]),
                scanned_at,
                route_id: route.clone(),
                stop_id: route,
                scan_id: [7; 16],
                ..ArchivedScan::blank()
            };
            let ride = ride_of(&row);
            proptest::prop_assert_eq!(ride.is_some(), is_ride(&row));
            let expected = row.status == ScanStatus::Accepted && card_id.is_some() && kind.is_some();
            proptest::prop_assert_eq!(ride.is_some(), expected);
            if let Some((card, tap)) = ride {
                proptest::prop_assert_eq!(Some(card), row.card_id);
                proptest::prop_assert_eq!(Some(tap.kind), row.tap_kind);
                proptest::prop_assert_eq!((tap.scan_id, tap.scanned_at), (row.scan_id, row.scanned_at));
                proptest::prop_assert_eq!((&tap.route_id, &tap.stop_id), (&row.route_id, &row.stop_id));
            }
        }
    }

    proptest::proptest! {
        /// One rule for when an entry closes: open while at most the exit
        /// window has passed, closed from `entry_closes_at` on.
        #[test]
        fn an_entry_is_open_until_its_window_has_passed(
            entry in 0..4_102_444_800_000i64,
            now in 0..4_102_444_800_000i64,
            window_ms in 0..86_400_000i64,
        ) {
            let fares = FareTable { metro_exit_window_ms: window_ms, ..table() };
            proptest::prop_assert_eq!(fares.entry_open_at(entry, now), now - entry <= window_ms);
            let closes = fares.entry_closes_at(entry);
            proptest::prop_assert!(!fares.entry_open_at(entry, closes) && fares.entry_open_at(entry, closes - 1));
        }
    }

    #[test]
    fn a_stored_tap_kind_is_read_by_name_or_refused() {
        let tap = |kind: &str| Tap::from_stored([1; 16], 0, kind, "r".into(), "s".into());
        assert_eq!(tap("entry").map(|t| t.kind), Some(TapKind::Entry));
        for refused in ["", "Entry", "entry ", "single\0", &"x".repeat(10_000)] {
            assert_eq!(tap(refused), None, "{refused:?}");
        }
    }

    const MINUTE: i64 = 60_000;

    fn table() -> FareTable {
        FareTable {
            currency: "CNY".into(),
            bus_route_fares: [("bus-12".to_string(), Cents::new(250))].into(),
            bus_default_fare: Some(Cents::new(200)),
            metro_station_zones: [("a".to_string(), 1), ("b".to_string(), 1), ("c".to_string(), 3)].into(),
            metro_base_fare: Cents::new(300),
            metro_fare_per_zone: Cents::new(100),
            max_fare: Cents::new(900),
            metro_exit_window_ms: 180 * MINUTE,
            daily_cap: Cents::new(1_500),
        }
    }

    fn tap(n: u8, minute: i64, kind: TapKind, stop: &str) -> Tap {
        let route = if kind == TapKind::Single { stop } else { "metro-1" };
        Tap { scan_id: [n; 16], scanned_at: minute * MINUTE, kind, route_id: route.into(), stop_id: stop.into() }
    }

    /// The edges are metro taps only, ordered by scan time and then scan
    /// id whatever order the taps come in; no taps, no edge.
    #[test]
    fn a_days_edges_are_its_neighbours_outermost_metro_taps() {
        assert_eq!(DayEdges::between(&[], &[]), DayEdges::NONE);
        let buses = [tap(1, 10, TapKind::Single, "bus-12"), tap(2, 20, TapKind::Single, "bus-12")];
        assert_eq!(DayEdges::between(&buses, &buses), DayEdges::NONE);
        // Two metro taps at the same minute: the larger id is the later.
        let before = [tap(3, 30, TapKind::Entry, "a"), tap(9, 40, TapKind::Exit, "b"), tap(4, 40, TapKind::Entry, "c")];
        let after =
            [tap(8, 5, TapKind::Exit, "a"), tap(5, 5, TapKind::Entry, "b"), tap(1, 1, TapKind::Single, "bus-12")];
        let edges = DayEdges::between(&[&buses[..], &before].concat(), &after);
        assert_eq!(edges.last_before.map(|t| t.scan_id), Some([9; 16]));
        assert_eq!(edges.first_after.map(|t| t.scan_id), Some([5; 16]));
        assert_eq!(DayEdges::between(&[], &after).last_before, None);
        assert_eq!(DayEdges::between(&before, &[]).first_after, None);
    }

    /// Each ride's kind, fare and charge, in cents.
    fn kinds_and_fares(day: &PricedDay) -> Vec<(RideKind, i64, i64)> {
        day.rides.iter().map(|r| (r.kind, r.fare.get(), r.charged.get())).collect()
    }

    #[test]
    fn each_kind_of_ride_has_its_fare() {
        let taps = [
            tap(1, 0, TapKind::Single, "bus-12"),
            tap(2, 10, TapKind::Single, "bus-99"),
            tap(3, 20, TapKind::Entry, "a"),
            tap(4, 50, TapKind::Exit, "c"),
        ];
        let day = table().price_day(&taps, &DayEdges::NONE);
        use RideKind::*;
        assert_eq!(kinds_and_fares(&day), vec![(Bus, 250, 250), (Bus, 200, 200), (MetroTrip, 500, 500)]);
        assert_eq!(day.rides[2].scan_ids, vec![[3; 16], [4; 16]]);
        assert_eq!((day.fares.get(), day.charged.get()), (950, 950));
    }

    #[test]
    fn incomplete_trips_cost_the_maximum_fare() {
        use RideKind::*;
        // An entry whose exit comes after the window, an exit alone, and two
        // entries in a row.
        let taps = [
            tap(1, 0, TapKind::Entry, "a"),
            tap(2, 181, TapKind::Exit, "b"),
            tap(3, 300, TapKind::Entry, "a"),
            tap(4, 310, TapKind::Entry, "b"),
            tap(5, 320, TapKind::Exit, "b"),
        ];
        let mut no_cap = table();
        no_cap.daily_cap = Cents::MAX;
        let day = no_cap.price_day(&taps, &DayEdges::NONE);
        assert_eq!(
            kinds_and_fares(&day),
            vec![
                (MetroEntryWithoutExit, 900, 900),
                (MetroExitWithoutEntry, 900, 900),
                (MetroEntryWithoutExit, 900, 900),
                (MetroTrip, 300, 300),
            ]
        );
        let window_edge = [tap(1, 0, TapKind::Entry, "a"), tap(2, 180, TapKind::Exit, "c")];
        assert_eq!(kinds_and_fares(&no_cap.price_day(&window_edge, &DayEdges::NONE)), vec![(MetroTrip, 500, 500)]);
    }

    #[test]
    fn a_trip_across_the_day_boundary_is_one_fare_on_the_entrys_day() {
        use RideKind::*;
        // The boundary at minute 1 440: in at 23:50 (of the service day), out at 00:10.
        let (entry, exit) = (tap(2, 1_430, TapKind::Entry, "a"), tap(3, 1_450, TapKind::Exit, "c"));
        let today = [tap(1, 1_400, TapKind::Single, "bus-12"), entry.clone()];
        let tomorrow = [exit.clone(), tap(4, 1_500, TapKind::Single, "bus-12")];
        let t = table();
        let edges_today = DayEdges { last_before: None, first_after: Some(exit.clone()) };
        let priced_today = t.price_day_as_of(&today, &edges_today, 0);
        assert_eq!(kinds_and_fares(&priced_today), vec![(Bus, 250, 250), (MetroTrip, 500, 500)]);
        assert_eq!(priced_today.rides[1].scan_ids, vec![[2; 16]], "the exit is tomorrow's tap");
        assert_eq!(priced_today.open_entry, None);
        let edges_tomorrow = DayEdges { last_before: Some(entry.clone()), first_after: None };
        let priced_tomorrow = t.price_day(&tomorrow, &edges_tomorrow);
        assert_eq!(kinds_and_fares(&priced_tomorrow), vec![(ContinuedTrip, 0, 0), (Bus, 250, 250)]);
        assert_eq!(priced_tomorrow.rides[0].scan_ids, vec![[3; 16]]);
        assert!(!priced_tomorrow.rides[0].kind.counts_as_ride());
        // Without the other day's edge each half is an incomplete trip.
        assert_eq!(t.price_day(&today, &DayEdges::NONE).charged.get(), 250 + 900);
        assert_eq!(t.price_day(&tomorrow, &DayEdges::NONE).charged.get(), 900 + 250);
        // A bus tap between does not end the trip, as within a day.
        let bus_then_exit = [tap(5, 1_440, TapKind::Single, "bus-12"), exit.clone()];
        let priced = t.price_day(&bus_then_exit, &edges_tomorrow);
        assert_eq!(kinds_and_fares(&priced), vec![(ContinuedTrip, 0, 0), (Bus, 250, 250)]);
        // An exit after the window, or another entry first, ends nothing.
        let late_exit = tap(3, 1_430 + 181, TapKind::Exit, "c");
        assert!(!t.continues(&entry, &late_exit));
        let far = DayEdges { last_before: None, first_after: Some(late_exit) };
        assert_eq!(t.price_day(&today, &far).charged.get(), 250 + 900);
        let entry_first = DayEdges { last_before: None, first_after: Some(tap(5, 1_445, TapKind::Entry, "a")) };
        assert_eq!(t.price_day(&today, &entry_first).charged.get(), 250 + 900);
    }

    #[test]
    fn edges_at_the_ends_of_time_price_without_overflow() {
        let t = table();
        let at = |n: u8, ms: i64, kind: TapKind| Tap { scanned_at: ms, ..tap(n, 0, kind, "a") };
        let (min, max) = (UnixMillis::MIN, UnixMillis::MAX);
        assert!(!t.continues(&at(1, min, TapKind::Entry), &at(2, max, TapKind::Exit)), "far past the window");
        assert!(!t.continues(&at(1, max, TapKind::Entry), &at(2, min, TapKind::Exit)), "an exit before its entry");
        assert!(t.continues(&at(1, max - 1, TapKind::Entry), &at(2, max, TapKind::Exit)));
        let edges =
            DayEdges { last_before: Some(at(1, min, TapKind::Entry)), first_after: Some(at(2, max, TapKind::Exit)) };
        for ms in [min, 0, max] {
            let taps = [at(3, ms, TapKind::Exit), at(4, ms, TapKind::Entry)];
            assert_eq!(t.neighbours_touched(&taps[0], &edges), (ms == min, ms == max));
            let priced = t.price_day(&taps, &edges);
            assert_eq!(priced.rides.iter().map(|r| r.scan_ids.len()).sum::<usize>(), 2, "each tap priced once");
        }
    }

    #[test]
    fn a_tap_the_table_cannot_price_is_flagged_at_the_maximum_fare() {
        let mut strict = table();
        strict.bus_default_fare = None;
        let taps =
            [tap(1, 0, TapKind::Single, "bus-77"), tap(2, 5, TapKind::Entry, "a"), tap(3, 9, TapKind::Exit, "zz")];
        let day = strict.price_day(&taps, &DayEdges::NONE);
        assert_eq!(
            day.rides.iter().map(|r| (r.kind, r.fare.get())).collect::<Vec<_>>(),
            vec![(RideKind::Unpriceable, 900), (RideKind::Unpriceable, 900)]
        );
    }

    #[test]
    fn an_incomplete_trip_is_charged_in_full_outside_the_cap() {
        let mut taps: Vec<Tap> = (0..7).map(|n| tap(n, i64::from(n) * 30, TapKind::Single, "bus-12")).collect();
        taps.push(tap(9, 400, TapKind::Entry, "a"));
        let day = table().price_day(&taps, &DayEdges::NONE);
        let last = day.rides.last().expect("the entry");
        assert_eq!((last.kind, last.charged.get()), (RideKind::MetroEntryWithoutExit, 900));
        assert_eq!(day.charged.get(), 1_500 + 900, "the bus rides are capped, the maximum fare is not");
    }

    #[test]
    fn the_cap_charges_each_ride_what_is_left_in_scan_order() {
        let taps: Vec<Tap> = (0..8).map(|n| tap(n, i64::from(n) * 30, TapKind::Single, "bus-12")).collect();
        let day = table().price_day(&taps, &DayEdges::NONE);
        let charged: Vec<i64> = day.rides.iter().map(|r| r.charged.get()).collect();
        assert_eq!(charged, vec![250, 250, 250, 250, 250, 250, 0, 0]);
        assert_eq!((day.fares.get(), day.charged.get()), (2_000, 1_500));
        assert_eq!(table().price_day(&[], &DayEdges::NONE), PricedDay::default());
    }

    /// Issue 17 item 15: the trip was capped at its exit, so the bus ridden
    /// during it took the cap's room first and revenue moved between routes.
    #[test]
    fn the_cap_goes_by_when_a_ride_began_not_when_it_ended() {
        let mut taps: Vec<Tap> = (0..5).map(|n| tap(n, i64::from(n) * 10, TapKind::Single, "bus-12")).collect();
        taps.extend([tap(10, 60, TapKind::Entry, "a"), tap(11, 62, TapKind::Single, "bus-12")]);
        taps.push(tap(12, 90, TapKind::Exit, "c"));
        let day = table().price_day(&taps, &DayEdges::NONE);
        let charged: Vec<(RideKind, i64)> = day.rides.iter().map(|r| (r.kind, r.charged.get())).collect();
        let bus = (RideKind::Bus, 250);
        assert_eq!(charged, [bus, bus, bus, bus, bus, (RideKind::MetroTrip, 250), (RideKind::Bus, 0)]);
        assert_eq!(day.rides[5].scan_ids, [[10; 16], [12; 16]], "the trip, with its entry first");
    }

    #[test]
    fn an_entry_stays_open_until_its_exit_window_has_passed() {
        let taps = [tap(1, 0, TapKind::Single, "bus-12"), tap(2, 10, TapKind::Entry, "a")];
        let window_end = 10 * MINUTE + table().metro_exit_window_ms;
        let open = table().price_day_as_of(&taps, &DayEdges::NONE, window_end);
        assert_eq!((open.rides.len(), open.open_entry, open.charged.get()), (1, Some([2; 16]), 250));
        let closed = table().price_day_as_of(&taps, &DayEdges::NONE, window_end + 1);
        assert_eq!(closed, table().price_day(&taps, &DayEdges::NONE));
        assert_eq!(closed.charged.get(), 250 + 900);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// The issue's property: however a rider's day arrives, it prices
        /// the same; what the cap covers never exceeds it, and the day costs
        /// exactly min(capped fares, cap) plus the incomplete trips.
        #[test]
        fn any_arrival_order_prices_the_same_day_within_the_cap(
            taps in proptest::collection::vec((0i64..1_440, 0u8..3, 0usize..4), 0..24),
            shuffle_seed in proptest::prelude::any::<u64>(),
        ) {
            let stops = ["a", "b", "c", "bus-12"];
            let kinds = [TapKind::Entry, TapKind::Exit, TapKind::Single];
            let taps: Vec<Tap> = taps
                .iter()
                .enumerate()
                .map(|(i, &(minute, kind, stop))| tap(i as u8, minute, kinds[usize::from(kind)], stops[stop]))
                .collect();
            let mut shuffled = taps.clone();
            let mut state = shuffle_seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let t = table();
            let (day, again) = (t.price_day(&taps, &DayEdges::NONE), t.price_day(&shuffled, &DayEdges::NONE));
            proptest::prop_assert_eq!(&day, &again);
            let fares_of = |capped: bool| -> Cents {
                day.rides.iter().filter(|r| r.kind.capped() == capped).map(|r| r.fare).sum()
            };
            let (under_cap, outside_cap) = (fares_of(true), fares_of(false));
            proptest::prop_assert_eq!(day.charged, under_cap.min(t.daily_cap) + outside_cap);
            let charged_under_cap: Cents = day.rides.iter().filter(|r| r.kind.capped()).map(|r| r.charged).sum();
            proptest::prop_assert!(charged_under_cap <= t.daily_cap);
            let priced: usize = day.rides.iter().map(|r| r.scan_ids.len()).sum();
            proptest::prop_assert_eq!(priced, taps.len(), "every tap is in exactly one ride");
            // The cap goes in the order rides began: once a capped ride is
            // cut short, no capped ride that began later is charged.
            let mut starts: Vec<&PricedRide> = day.rides.iter().filter(|r| r.kind.capped()).collect();
            starts.sort_by_key(|r| (r.started_at, r.scan_ids.first().copied()));
            let cut = starts.iter().position(|r| r.charged < r.fare);
            if let Some(cut) = cut {
                proptest::prop_assert!(starts[cut + 1..].iter().all(|r| r.charged.is_zero()), "{:?}", starts);
            }
        }
    }
}
