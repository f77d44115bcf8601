//! Stages of the server measured alone, each with its throughput unit
//! (issue 21): pricing one rider's day from its taps, as the pricer does
//! for every rider-day a batch touches.
//!
//!     cargo bench --bench stages
//!
//! `fare/rider_day/N` prices a day of N taps (bus rides and metro trips
//! under the embedded fare table, capped daily); throughput is in taps.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use farestream::config::fare_table::load_fares;
use farestream::fares::{DayEdges, Tap};
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

criterion_group!(benches, fare);
criterion_main!(benches);
