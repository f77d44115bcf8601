//! The day's scans, planned up front so that the expected outcome of every
//! scan is known before anything is sent: the demo's summary compares the
//! server's acks and the archive with this ground truth.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::world::World;
use crate::scan::{ScanStatus, TapKind};
use farestream_core::clock::UnixMillis;

/// What, if anything, is wrong with a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    None,
    /// The code of scan `of`, shown again at another validator (a screenshot).
    Replay {
        of: usize,
    },
    /// The user signature was tampered with.
    Forged,
    /// A code made long before it was shown.
    Stale,
    /// A credential signed by an issuer key the server does not trust.
    UnknownIssuer,
    /// Yesterday's credential.
    ExpiredCredential,
    /// Bytes that are not a ride code.
    Malformed,
}

/// One scan a validator will read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedScan {
    /// The validator's clock when it reads the code.
    pub at_ms: UnixMillis,
    pub validator: usize,
    pub validator_seq: u64,
    pub rider: usize,
    pub tap_kind: TapKind,
    pub anomaly: Anomaly,
    /// When the phone made the code.
    pub code_created_at_ms: UnixMillis,
    pub code_counter: u32,
    /// What the server must decide.
    pub expected: ScanStatus,
}

/// How many of each anomaly, in percent of scans.
#[derive(Debug, Clone, Copy)]
pub struct AnomalyRates {
    pub replay_percent: f64,
    pub forged_percent: f64,
    pub stale_percent: f64,
    pub unknown_issuer_percent: f64,
    pub expired_credential_percent: f64,
    pub malformed_percent: f64,
}

impl AnomalyRates {
    /// "A few percent" of trouble, as the demo runs it.
    pub const DEMO: AnomalyRates = AnomalyRates {
        replay_percent: 2.0,
        forged_percent: 0.5,
        stale_percent: 0.5,
        unknown_issuer_percent: 0.2,
        expired_credential_percent: 0.2,
        malformed_percent: 0.1,
    };

    pub const NONE: AnomalyRates = AnomalyRates {
        replay_percent: 0.0,
        forged_percent: 0.0,
        stale_percent: 0.0,
        unknown_issuer_percent: 0.0,
        expired_credential_percent: 0.0,
        malformed_percent: 0.0,
    };
}

/// When the day's trips happen.
#[derive(Debug, Clone, Copy)]
pub enum Timetable {
    /// A service day from `first_ms` to `last_ms` with morning and evening peaks.
    ServiceDay { first_ms: UnixMillis, last_ms: UnixMillis },
    /// Evenly spread between `first_ms` and `last_ms`: a steady load.
    Steady { first_ms: UnixMillis, last_ms: UnixMillis },
}

/// Plans every rider's trips. Sorted by validator time, with validator
/// sequence numbers assigned in that order.
pub fn plan_day(
    world: &World,
    timetable: Timetable,
    trips_per_rider: f64,
    rates: AnomalyRates,
    seed: u64,
) -> Vec<PlannedScan> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0fda);
    let bus = world.validators_for(TapKind::Single);
    let metro = world.validators_for(TapKind::Entry);
    let mut scans = Vec::new();
    for rider in 0..world.riders.len() {
        let trips = poisson_at_least_one(&mut rng, trips_per_rider);
        for _ in 0..trips {
            let at_ms = trip_time(&mut rng, timetable);
            let take_metro = !metro.is_empty() && (bus.is_empty() || rng.random_bool(0.55));
            if take_metro {
                let ride_ms = ride_duration(&mut rng, timetable);
                let (entry, exit) = (pick(&mut rng, &metro), pick(&mut rng, &metro));
                scans.push(tap(&mut rng, rider, entry, TapKind::Entry, at_ms));
                scans.push(tap(&mut rng, rider, exit, TapKind::Exit, at_ms + ride_ms));
            } else if !bus.is_empty() {
                let validator = pick(&mut rng, &bus);
                scans.push(tap(&mut rng, rider, validator, TapKind::Single, at_ms));
            }
        }
    }
    let originals = scans.len();
    for index in 0..originals {
        add_anomaly(&mut rng, world, &mut scans, index, rates, timetable);
    }
    for scan in &mut scans {
        scan.expected = expected_status(world, scan);
    }
    finish(scans)
}

fn pick(rng: &mut StdRng, from: &[usize]) -> usize {
    from[rng.random_range(0..from.len())]
}

fn tap(rng: &mut StdRng, rider: usize, validator: usize, tap_kind: TapKind, at_ms: UnixMillis) -> PlannedScan {
    PlannedScan {
        at_ms,
        validator,
        validator_seq: 0,
        rider,
        tap_kind,
        anomaly: Anomaly::None,
        // The phone refreshes its code about every minute.
        code_created_at_ms: at_ms - rng.random_range(0..40_000),
        code_counter: 0,
        expected: ScanStatus::Accepted,
    }
}

fn add_anomaly(
    rng: &mut StdRng,
    world: &World,
    scans: &mut Vec<PlannedScan>,
    index: usize,
    rates: AnomalyRates,
    timetable: Timetable,
) {
    let roll = rng.random_range(0.0..100.0);
    let mut threshold = 0.0;
    let mut next = |percent: f64| {
        threshold += percent;
        roll < threshold
    };
    let scan = &mut scans[index];
    if next(rates.replay_percent) {
        let mut copy = scan.clone();
        let peers = world.validators_for(scan.tap_kind);
        let others: Vec<usize> = peers.iter().copied().filter(|&v| v != scan.validator).collect();
        copy.validator = if others.is_empty() { scan.validator } else { pick(rng, &others) };
        copy.at_ms = scan.at_ms + replay_delay(rng, timetable);
        copy.anomaly = Anomaly::Replay { of: index };
        scans.push(copy);
    } else if next(rates.forged_percent) {
        scan.anomaly = Anomaly::Forged;
    } else if next(rates.stale_percent) {
        scan.anomaly = Anomaly::Stale;
        scan.code_created_at_ms = scan.at_ms - rng.random_range(5..30) * 60_000;
    } else if next(rates.unknown_issuer_percent) {
        scan.anomaly = Anomaly::UnknownIssuer;
    } else if next(rates.expired_credential_percent) {
        scan.anomaly = Anomaly::ExpiredCredential;
    } else if next(rates.malformed_percent) {
        scan.anomaly = Anomaly::Malformed;
    }
}

/// The server checks in this order: decode, issuer key, signatures,
/// credential window, freshness, deny list, replay.
fn expected_status(world: &World, scan: &PlannedScan) -> ScanStatus {
    let denied = world.denied_cards.contains(&world.riders[scan.rider].card_id);
    match scan.anomaly {
        Anomaly::Malformed => ScanStatus::Malformed,
        Anomaly::UnknownIssuer => ScanStatus::UnknownIssuerKey,
        Anomaly::Forged => ScanStatus::BadSignature,
        Anomaly::ExpiredCredential => ScanStatus::ExpiredCredential,
        Anomaly::Stale => ScanStatus::StaleCode,
        _ if denied => ScanStatus::Denied,
        Anomaly::Replay { .. } => ScanStatus::Replay,
        Anomaly::None => ScanStatus::Accepted,
    }
}

/// Sorts by validator time, numbers each validator's scans, and gives each
/// code a counter unique to its rider. A replay keeps its original's code.
fn finish(mut scans: Vec<PlannedScan>) -> Vec<PlannedScan> {
    for (index, scan) in scans.iter_mut().enumerate() {
        scan.code_counter = index as u32;
    }
    let counters: Vec<u32> = scans.iter().map(|s| s.code_counter).collect();
    let created: Vec<UnixMillis> = scans.iter().map(|s| s.code_created_at_ms).collect();
    for scan in &mut scans {
        if let Anomaly::Replay { of } = scan.anomaly {
            scan.code_counter = counters[of];
            scan.code_created_at_ms = created[of];
        }
    }
    scans.sort_by_key(|s| (s.at_ms, s.validator));
    let mut next_seq = std::collections::HashMap::new();
    for scan in &mut scans {
        let seq = next_seq.entry(scan.validator).or_insert(0u64);
        *seq += 1;
        scan.validator_seq = *seq;
    }
    scans
}

fn trip_time(rng: &mut StdRng, timetable: Timetable) -> UnixMillis {
    match timetable {
        Timetable::Steady { first_ms, last_ms } => rng.random_range(first_ms..=last_ms.max(first_ms)),
        Timetable::ServiceDay { first_ms, last_ms } => {
            let span = (last_ms - first_ms).max(1) as f64;
            // Peaks at 15% and 70% of the service span (about 08:00 and
            // 18:00 for a 05:00-24:00 day), a tenth of trips off-peak.
            let fraction = match rng.random_range(0..10) {
                0 => rng.random_range(0.0..1.0),
                1..=5 => normal(rng, 0.15, 0.05),
                _ => normal(rng, 0.70, 0.07),
            };
            first_ms + (fraction.clamp(0.0, 0.97) * span) as UnixMillis
        }
    }
}

/// Metro rides take 8-40 minutes in a service day; a steady load squeezes
/// them into a tenth of its span so every exit is sent before it ends.
fn ride_duration(rng: &mut StdRng, timetable: Timetable) -> UnixMillis {
    match timetable {
        Timetable::ServiceDay { .. } => rng.random_range(8..40) * 60_000,
        Timetable::Steady { first_ms, last_ms } => rng.random_range(0..=((last_ms - first_ms) / 10).max(1)),
    }
}

/// How long after the original a copy of a code is shown: seconds in a
/// service day; within the load's last tenth for a steady load, so a short
/// run is not stretched by its last replays.
fn replay_delay(rng: &mut StdRng, timetable: Timetable) -> UnixMillis {
    match timetable {
        Timetable::ServiceDay { .. } => rng.random_range(2_000..20_000),
        Timetable::Steady { first_ms, last_ms } => rng.random_range(0..=((last_ms - first_ms) / 10).clamp(1, 20_000)),
    }
}

fn normal(rng: &mut StdRng, mean: f64, deviation: f64) -> f64 {
    // Box-Muller; one draw is enough here.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    mean + deviation * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn poisson_at_least_one(rng: &mut StdRng, mean: f64) -> usize {
    // Knuth's method; small means only.
    let limit = (-(mean - 1.0).max(0.0)).exp();
    let mut product: f64 = rng.random_range(0.0..1.0);
    let mut count = 0;
    while product > limit && count < 16 {
        count += 1;
        product *= rng.random_range(0.0..1.0);
    }
    1 + count
}

impl PlannedScan {
    /// The bytes the validator reads: what the rider's phone showed, with
    /// the planned anomaly applied.
    pub fn ride_code(&self, world: &World) -> Vec<u8> {
        let rider = &world.riders[self.rider];
        let credential = match self.anomaly {
            Anomaly::UnknownIssuer => world.rogue_credential(rider),
            Anomaly::ExpiredCredential => world.expired_credential(rider),
            _ => rider.credential,
        };
        let created_at = farestream_core::clock::unix_secs_u32(self.code_created_at_ms);
        let mut code = rider.key.make_code(&credential, created_at, self.code_counter);
        if self.anomaly == Anomaly::Forged {
            // The user signature's last byte: forged inside the seal, as a
            // forger who holds the day's terminal key (every app does) would.
            let last = code.bytes.len() - 1;
            code.bytes[last] ^= 0x01;
        }
        let mut bytes = match &world.sealing_key {
            Some(key) => crate::ridecode::seal(&code, key).to_vec(),
            None => code.bytes.to_vec(),
        };
        if self.anomaly == Anomaly::Malformed {
            bytes.truncate(100);
        }
        bytes
    }

    /// The record the validator uploads.
    pub fn record(&self, world: &World, ride_code: Vec<u8>) -> crate::wire::ScanRecord {
        let validator = &world.validators[self.validator];
        crate::wire::ScanRecord {
            validator_id: validator.id.clone(),
            validator_seq: self.validator_seq,
            validator_time_ms: self.at_ms,
            route_id: validator.route_id.clone(),
            stop_id: validator.stop_id(self.code_counter as usize),
            tap_kind: crate::wire::WireTapKind::from(self.tap_kind) as i32,
            ride_code,
            ..Default::default()
        }
    }
}
