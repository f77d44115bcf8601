//! The city a generated day happens in, shaped like a real one where the
//! archive's columns depend on it: validators stay where they are
//! installed (gates at a metro station, two doors on a bus that runs one
//! route stop by stop), each counts its own scans, uploads its queue about
//! once a minute (a few hours late now and then) through its depot's or
//! station's gateway, and holds the deny list the city published a few
//! minutes ago; a rider's phone counts the codes it makes.

use std::sync::Arc;

use rand::Rng;
use rand::rngs::StdRng;

use farestream_core::fares::FareTable;
use farestream_core::scan::{ArchivedScan, TapKind};

const BUS_ROUTES: u32 = 400;
const BUSES_PER_ROUTE: u32 = 12;
const DOORS_PER_BUS: u32 = 2;
const STOPS_PER_ROUTE: u32 = 30;
/// A bus reaches its next stop every this many milliseconds.
const STOP_INTERVAL_MS: i64 = 120_000;
const METRO_LINES: u32 = 20;
const STATIONS: u32 = 300;
const GATES_PER_STATION: u32 = 8;
const BUS_DEPOTS: u32 = 12;
const STATION_GATEWAYS: u32 = 4;
/// Validators upload their queue this often.
const UPLOAD_INTERVAL_MS: i64 = 60_000;
/// The city publishes a deny list this often.
const DENY_LIST_INTERVAL_MS: i64 = 1_200_000;
/// One upload in this many waits hours for its validator to come back online.
const LATE_UPLOAD_ONE_IN: u32 = 500;

/// A scan being planned: its row, and the validator that will number it.
pub(super) struct PlannedScan {
    pub(super) row: ArchivedScan,
    pub(super) validator: u32,
}

pub(super) struct City {
    gateways: Vec<Arc<str>>,
    /// The `stop_id` of each of the [`STATIONS`] stations.
    station_names: Vec<String>,
    day_start_ms: i64,
}

/// Where a rider taps.
#[derive(Clone, Copy)]
pub(super) enum Place {
    /// A bus of this route, a door chosen at random.
    Bus {
        route: u32,
        bus: u32,
    },
    Station(u32),
}

impl City {
    /// The city, its stations named as `fares` names them, so its metro
    /// trips are priced by zone as the table says (a table's few stations
    /// each stand for several of the city's); a table without stations
    /// leaves every metro trip unpriceable, at the maximum fare.
    pub(super) fn new(day_start_ms: i64, fares: &FareTable) -> City {
        let depots = (0..BUS_DEPOTS).map(|d| format!("depot-{d:02}"));
        let stations = (0..STATION_GATEWAYS).map(|s| format!("stations-{s:02}"));
        let listed: Vec<&String> = fares.metro_station_zones.keys().collect();
        let station_names = (0..STATIONS as usize)
            .map(|s| match listed.len() {
                0 => format!("station-{s:03}"),
                n => listed[s % n].clone(),
            })
            .collect();
        City { gateways: depots.chain(stations).map(Arc::from).collect(), station_names, day_start_ms }
    }

    pub(super) fn day_start_ms(&self) -> i64 {
        self.day_start_ms
    }

    pub(super) fn bus(rng: &mut StdRng) -> Place {
        Place::Bus { route: rng.random_range(0..BUS_ROUTES), bus: rng.random_range(0..BUSES_PER_ROUTE) }
    }

    pub(super) fn station(rng: &mut StdRng) -> Place {
        Place::Station(rng.random_range(0..STATIONS))
    }

    /// The metro line a station is on, for its scans' `route_id`.
    fn line_of(station: u32) -> String {
        format!("metro-{:02}", station % METRO_LINES)
    }

    /// A scan at `place`, `at` (validator clock); `validator_seq` is left
    /// for [`number_scans`]. The caller sets status, card and tap kind.
    pub(super) fn scan(
        &self,
        place: Place,
        kind: TapKind,
        at: i64,
        code_counter: u32,
        rng: &mut StdRng,
    ) -> PlannedScan {
        let (validator, gateway, route_id, stop_id) = match place {
            Place::Bus { route, bus } => {
                let validator = (route * BUSES_PER_ROUTE + bus) * DOORS_PER_BUS + rng.random_range(0..DOORS_PER_BUS);
                let stops_passed = (at - self.day_start_ms) / STOP_INTERVAL_MS + i64::from(bus * 5);
                let stop = u32::try_from(stops_passed.rem_euclid(i64::from(STOPS_PER_ROUTE))).unwrap_or(0);
                (validator, route % BUS_DEPOTS, format!("bus-{route}"), format!("bus-{route}-stop-{stop:02}"))
            }
            Place::Station(station) => {
                let buses = BUS_ROUTES * BUSES_PER_ROUTE * DOORS_PER_BUS;
                let validator = buses + station * GATES_PER_STATION + rng.random_range(0..GATES_PER_STATION);
                (
                    validator,
                    BUS_DEPOTS + station % STATION_GATEWAYS,
                    Self::line_of(station),
                    self.station_names[station as usize].clone(),
                )
            }
        };
        let mut row = ArchivedScan::blank();
        row.scan_id = rng.random();
        row.gateway_id = Arc::clone(&self.gateways[gateway as usize]);
        row.validator_id = format!("validator-{validator:05}");
        row.route_id = route_id;
        row.stop_id = stop_id;
        row.tap_kind = Some(kind);
        row.issuer_key_id = Some(1);
        // A ride code carries its time in whole seconds.
        row.code_created_at = Some((at / 1_000 - rng.random_range(0..60)) * 1_000);
        row.code_counter = Some(code_counter);
        row.scanned_at = at;
        row.received_at = self.received_at(validator, at);
        row.deny_list_version = Some(self.deny_list_version(at - rng.random_range(0..300_000)));
        PlannedScan { row, validator }
    }

    /// The validator's next upload after `at`, committed a moment later;
    /// now and then hours later, when it was offline. Every scan of one
    /// upload is committed in one batch, at one time.
    fn received_at(&self, validator: u32, at: i64) -> i64 {
        let phase = i64::from(validator) * 7_919 % UPLOAD_INTERVAL_MS;
        let upload = (at - self.day_start_ms - phase).div_euclid(UPLOAD_INTERVAL_MS) + 1;
        let upload_at = self.day_start_ms + phase + upload * UPLOAD_INTERVAL_MS;
        let draw = (u64::from(validator) << 32 | upload.unsigned_abs()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let offline_hours = if draw.is_multiple_of(u64::from(LATE_UPLOAD_ONE_IN)) { 1 + draw % 5 } else { 0 };
        upload_at + i64::try_from(offline_hours * 3_600_000 + 20 + draw % 380).unwrap_or(0)
    }

    /// The deny list's version the city had published at `at`.
    fn deny_list_version(&self, at: i64) -> u64 {
        1_000 + u64::try_from((at - self.day_start_ms).div_euclid(DENY_LIST_INTERVAL_MS)).unwrap_or(0)
    }
}

/// Numbers each validator's scans in the order it read them, from a count
/// it had reached before the day. Leaves the scans in validator order.
pub(super) fn number_scans(scans: &mut [PlannedScan], rng: &mut StdRng) {
    scans.sort_unstable_by_key(|scan| (scan.validator, scan.row.scanned_at));
    for validators_scans in scans.chunk_by_mut(|a, b| a.validator == b.validator) {
        let count_before_the_day = rng.random_range(0..5_000_000u64);
        for (seq, scan) in (count_before_the_day..).zip(validators_scans) {
            scan.row.validator_seq = seq;
        }
    }
}
