//! Stages of the server measured alone, each with its throughput unit
//! (issue 21).
//!
//!     cargo bench --bench stages
//!
//! - `fare/rider_day/N` prices a day of N taps (bus rides and metro trips
//!   under the embedded fare table, capped daily), as the pricer does for
//!   every rider-day a batch touches; throughput in taps.
//! - `dedup/claim_delivery` and `dedup/claim_ride` insert new keys into an
//!   index already holding `DEDUP_HELD` entries; `dedup/delivery_seen`
//!   looks one up; throughput in keys.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use farestream::config::fare_table::load_fares;
use farestream::fares::{DayEdges, Tap};
use farestream::ingest::dedup::{DedupIndex, RideKey};
use farestream::scan::TapKind;

const DAY_MS: i64 = 1_763_596_800_000;

/// A rider's day: metro trips between the table's first two stations and
/// bus rides on its first route, alternating, ten minutes apart.
fn rider_day(taps: usize, route: &str, stations: (&str, &str)) -> Vec<Tap> {
    (0..taps)
        .map(|i| {
            let (kind, route_id, stop_id) = match i % 3 {
                0 => (TapKind::Entry, "metro", stations.0),
                1 => (TapKind::Exit, "metro", stations.1),
                _ => (TapKind::Single, route, "stop-1"),
            };
            let mut scan_id = [0u8; 16];
            scan_id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Tap {
                scan_id,
                scanned_at: DAY_MS + i as i64 * 600_000,
                kind,
                route_id: route_id.into(),
                stop_id: stop_id.into(),
            }
        })
        .collect()
}

fn fare(c: &mut Criterion) {
    let table = load_fares(None).expect("the embedded fare table");
    let route = table.bus_route_fares.keys().next().cloned().unwrap_or_else(|| "route-1".into());
    let mut stations = table.metro_station_zones.keys().cloned();
    let (from, to) = (stations.next().expect("a station"), stations.next().expect("two stations"));
    let mut group = c.benchmark_group("fare");
    for taps in [3usize, 6, 12] {
        let day = rider_day(taps, &route, (&from, &to));
        let priced = table.price_day_as_of(&day, &DayEdges::NONE, DAY_MS + 86_400_000);
        // Real rides, not a day of unknown taps at the maximum fare.
        assert_eq!(priced.rides.len(), taps - taps / 3, "{priced:?}");
        assert!(priced.fares.get() < table.max_fare.get() * priced.rides.len() as i64, "{priced:?}");
        group.throughput(Throughput::Elements(taps as u64));
        group.bench_with_input(BenchmarkId::new("rider_day", taps), &day, |b, day| {
            b.iter(|| table.price_day_as_of(day, &DayEdges::NONE, DAY_MS + 86_400_000))
        });
    }
    group.finish();
}

/// Entries an index holds while it is measured: about a minute of a
/// megacity's scans.
const DEDUP_HELD: u64 = 1 << 20;

fn fingerprint(i: u64) -> [u8; 16] {
    // Spread like the SHA-256 fingerprints the server makes.
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    out[8..].copy_from_slice(&i.to_le_bytes());
    out
}

fn dedup(c: &mut Criterion) {
    let index = DedupIndex::new();
    for i in 0..DEDUP_HELD {
        index.claim_delivery(fingerprint(i), i64::MAX);
        index.claim_ride(RideKey { card_id: i, created_at: 1, counter: 0 }, TapKind::Single, i64::MAX);
    }
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(1));
    let mut next = DEDUP_HELD;
    group.bench_function("claim_delivery", |b| {
        b.iter(|| {
            next += 1;
            index.claim_delivery(fingerprint(next), i64::MAX)
        })
    });
    let mut ride = DEDUP_HELD;
    group.bench_function("claim_ride", |b| {
        b.iter(|| {
            ride += 1;
            index.claim_ride(RideKey { card_id: ride, created_at: 1, counter: 0 }, TapKind::Entry, i64::MAX)
        })
    });
    let mut look = 0u64;
    group.bench_function("delivery_seen", |b| {
        b.iter(|| {
            look = (look + 7_919) % DEDUP_HELD;
            index.delivery_seen(&fingerprint(look))
        })
    });
    group.finish();
}

criterion_group!(benches, fare, dedup);
criterion_main!(benches);
