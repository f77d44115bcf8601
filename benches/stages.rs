//! Stages of the server measured alone, each with its throughput unit
//! (issue 21).
//!
//!     cargo bench --bench stages
//!
//! - `fare/rider_day/N` prices a day of N taps (bus rides and metro trips
//!   under the embedded fare table, capped daily), as the pricer does for
//!   every rider-day a batch touches; throughput in taps.
//! - `dedup/claim_delivery` and `dedup/claim_ride` insert new keys into an
//!   index already holding `DEDUP_HELD` entries, frozen into its cold
//!   tier as a server's are; `dedup/delivery_seen` looks a cold one up;
//!   throughput in keys.
//! - `pricing/batch` prices a batch of a city's taps into the money store
//!   (one SQLite transaction, committed), as the pricer does for each
//!   stretch of the log it reads, with a day of the city already priced;
//!   throughput in taps.
//! - `wal/append_durable/N` queues N records of a gateway batch's size to
//!   the log's commit thread and waits until they are fsynced: group
//!   commit at 1 and 16 writers' worth; throughput in bytes.
//! - `parquet/encode` writes a row group of a city's scans into an
//!   archive file and closes it (ZSTD, bloom filters, fsync, rename), as
//!   the archiver does; throughput in rows.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use farestream::config::Config;
use farestream::config::fare_table::load_fares;
use farestream::fares::FareTable;
use farestream::fares::{DayEdges, Tap};
use farestream::ingest::dedup::{DedupIndex, RideKey};
use farestream::money::pricing::price_rows;
use farestream::money::{MoneyStore, StoreLocation, store_path};
use farestream::scan::{ArchivedScan, ScanStatus, TapKind};
use farestream::sim::loadgen::horizon::fingerprint;

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
    let CityTaps { route, stations: (from, to), .. } = CityTaps::new(&table);
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

/// Entries an index holds while it is measured: a large city's day, a
/// tenth of a megacity's horizon.
const DEDUP_HELD: u64 = 6_000_000;

fn dedup(c: &mut Criterion) {
    let index = DedupIndex::default();
    for i in 0..DEDUP_HELD {
        index.claim_delivery(fingerprint(i), i64::MAX, 0);
        index.claim_ride(RideKey { card_id: i, created_at: 1, counter: 0 }, TapKind::Single, i64::MAX, 0);
    }
    index.sweep(0);
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(1));
    let mut next = DEDUP_HELD;
    group.bench_function("claim_delivery", |b| {
        b.iter(|| {
            next += 1;
            index.claim_delivery(fingerprint(next), i64::MAX, 0)
        })
    });
    let mut ride = DEDUP_HELD;
    group.bench_function("claim_ride", |b| {
        b.iter(|| {
            ride += 1;
            index.claim_ride(RideKey { card_id: ride, created_at: 1, counter: 0 }, TapKind::Entry, i64::MAX, 0)
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

/// Riders in the pricing bench's city; each makes a bus ride and a metro
/// trip a day.
const CITY_RIDERS: u64 = 100_000;
/// Taps in one pricing transaction: a gateway's batch.
const PRICING_BATCH_TAPS: u64 = 500;
/// A day of the city is 18 hours of service.
const CITY_DAY_SERVICE_MS: i64 = 18 * 3_600_000;
/// Metro riders enter in blocks of this many and exit after the block:
/// about half an hour later.
const METRO_BLOCK_RIDERS: u64 = 10_000;
/// Riders tap in an order unrelated to their card numbers, as in a city:
/// the n-th tap of a stretch is rider n times this (prime to both counts
/// above), so a batch's taps land all over the store's card-ordered keys.
const RIDER_ORDER_STRIDE: u64 = 7_919;

/// The `i`-th of `riders` to tap, each once.
fn rider_in_tap_order(i: u64, riders: u64) -> u64 {
    i * RIDER_ORDER_STRIDE % riders
}

/// A city's taps in time order, batch after batch: each day every rider
/// makes a bus ride, then the metro riders enter and exit in blocks.
struct CityTaps {
    next_tap: u64,
    /// The fare table's first bus route and first two metro stations,
    /// which every tap uses.
    route: String,
    stations: (String, String),
}

impl CityTaps {
    fn new(fares: &FareTable) -> CityTaps {
        let route = fares.bus_route_fares.keys().next().cloned().unwrap_or_else(|| "route-1".into());
        let mut stations = fares.metro_station_zones.keys().cloned();
        let stations = (stations.next().expect("a station"), stations.next().expect("two stations"));
        CityTaps { next_tap: 0, route, stations }
    }

    fn batch(&mut self, taps: u64) -> Vec<ArchivedScan> {
        let taps = self.next_tap..self.next_tap + taps;
        self.next_tap = taps.end;
        taps.map(|tap| self.tap(tap)).collect()
    }

    fn tap(&self, tap: u64) -> ArchivedScan {
        let taps_a_day = 3 * CITY_RIDERS;
        let (day, slot) = (tap / taps_a_day, tap % taps_a_day);
        let (rider, kind, route, stop) = if slot < CITY_RIDERS {
            (rider_in_tap_order(slot, CITY_RIDERS), TapKind::Single, &self.route, "stop-1")
        } else {
            let (block, within) =
                ((slot - CITY_RIDERS) / METRO_BLOCK_RIDERS, (slot - CITY_RIDERS) % METRO_BLOCK_RIDERS);
            let rider = block / 2 * METRO_BLOCK_RIDERS + rider_in_tap_order(within, METRO_BLOCK_RIDERS);
            match block % 2 {
                0 => (rider, TapKind::Entry, &"metro".to_string(), self.stations.0.as_str()),
                _ => (rider, TapKind::Exit, &"metro".to_string(), self.stations.1.as_str()),
            }
        };
        let day_start = DAY_MS + day as i64 * 86_400_000;
        let scanned_at = day_start + slot as i64 * CITY_DAY_SERVICE_MS / taps_a_day as i64;
        ArchivedScan {
            scan_id: fingerprint(tap),
            gateway_id: std::sync::Arc::from("gw-01"),
            validator_id: format!("validator-{:03}", rider % 500),
            validator_seq: tap,
            issuer_key_id: Some(1),
            code_created_at: Some(scanned_at - 30_000),
            code_counter: Some((tap % 40) as u32),
            gate_opened: Some(true),
            deny_list_version: Some(7),
            card_id: Some(rider + 1),
            tap_kind: Some(kind),
            route_id: route.clone(),
            stop_id: stop.into(),
            scanned_at,
            received_at: scanned_at,
            status: ScanStatus::Accepted,
            service_date: chrono::DateTime::from_timestamp_millis(day_start).expect("in range").date_naive(),
            ..ArchivedScan::blank()
        }
    }
}

fn price_batch(store: &mut MoneyStore, fares: &FareTable, rows: &[ArchivedScan]) {
    let now = rows.last().map_or(0, |row| row.received_at);
    let priced = store.in_transaction(|tx| price_rows(tx, fares, rows, now)).expect("priced");
    assert_eq!(priced.taps, rows.len() as u64, "every tap is new");
}

/// The pricer on the embedded store (`pricing`) and, where PostgreSQL is
/// installed, on a new database of a throwaway cluster on a Unix socket
/// (`pricing_postgres`; fsync off there, as the test cluster runs, so it
/// measures the SQL and the round trips, not the disk).
fn pricing(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    price_on(c, "pricing", &StoreLocation::Sqlite(store_path(dir.path())));
    let postgres = farestream::money::test_cluster::TestCluster::shared().map(|cluster| cluster.new_location());
    match postgres {
        Some(location) => price_on(c, "pricing_postgres", &location),
        None => eprintln!("pricing_postgres skipped: no PostgreSQL installed"),
    }
}

fn price_on(c: &mut Criterion, group: &str, location: &StoreLocation) {
    let fares = load_fares(None).expect("the embedded fare table");
    let mut store = MoneyStore::open(location, std::time::Duration::from_secs(5)).expect("a store");
    // The pricer's store as `serve` opens it.
    store.set_page_cache_mib(Config::defaults().payments.pricer_store_cache_mib).expect("a page cache");
    let mut city = CityTaps::new(&fares);
    for _ in 0..3 * CITY_RIDERS / 10_000 {
        price_batch(&mut store, &fares, &city.batch(10_000));
    }
    let mut group = c.benchmark_group(group);
    for taps in [PRICING_BATCH_TAPS, 10 * PRICING_BATCH_TAPS, 100 * PRICING_BATCH_TAPS] {
        group.throughput(Throughput::Elements(taps));
        group.bench_function(BenchmarkId::new("batch", taps), |b| {
            b.iter_batched(|| city.batch(taps), |rows| price_batch(&mut store, &fares, &rows), BatchSize::PerIteration)
        });
    }
    group.finish();
}

/// Bytes of one logged record: about a gateway batch of 500 scans.
const WAL_RECORD_BYTES: usize = 64 * 1024;

fn wal(c: &mut Criterion) {
    use farestream::faults::Faults;
    use farestream::wal::{WalConfig, committer::Committer, delete_segments_before};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = WalConfig { dir: dir.path().join("wal"), segment_bytes_max: 64 << 20, record_bytes_max: 16 << 20 };
    let faults = std::sync::Arc::new(Faults::default());
    let recovered = farestream::wal::open(config.clone(), std::sync::Arc::clone(&faults), 0).expect("a log");
    let committer =
        Committer::spawn(recovered.writer, config.record_bytes_max, std::time::Duration::from_millis(100), true);
    let handle = committer.handle();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    let payload = vec![0x5a_u8; WAL_RECORD_BYTES];
    let mut group = c.benchmark_group("wal");
    group.sample_size(20);
    for records in [1usize, 16] {
        group.throughput(Throughput::Bytes((records * WAL_RECORD_BYTES) as u64));
        group.bench_function(BenchmarkId::new("append_durable", records), |b| {
            b.iter_custom(|iterations| {
                let started = std::time::Instant::now();
                for _ in 0..iterations {
                    let lsn = (0..records).fold(0, |_, _| handle.enqueue(&payload).expect("queued"));
                    runtime.block_on(handle.wait_durable(lsn, std::time::Duration::from_secs(30))).expect("durable");
                }
                let elapsed = started.elapsed();
                // Untimed: the log kept to its last segment, as the archiver keeps it.
                delete_segments_before(&config.dir, handle.progress().durable_lsn, &faults).expect("deleted");
                elapsed
            })
        });
    }
    group.finish();
    committer.close();
}

fn parquet(c: &mut Criterion) {
    use farestream::archive::{ArchiveWriter, ArchiveWriterConfig};
    let fares = load_fares(None).expect("the embedded fare table");
    let rows_per_file = 65_536u64;
    let rows = CityTaps::new(&fares).batch(rows_per_file);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = ArchiveWriterConfig {
        root: dir.path().join("scans"),
        file_bytes_max: 128 << 20,
        file_age_max: std::time::Duration::from_secs(300),
        row_group_rows_max: rows_per_file as usize,
    };
    let mut writer = ArchiveWriter::new(config, std::sync::Arc::default()).expect("a writer");
    let write_file = |writer: &mut ArchiveWriter, rows: &[_]| {
        writer.append(rows, std::time::Instant::now()).expect("appended");
        let closed = writer.close_all(0, 0).expect("closed");
        let path = &closed.first().expect("one file").path;
        let bytes = std::fs::metadata(path).expect("the file").len();
        std::fs::remove_file(path).expect("removed");
        bytes
    };
    let bytes = write_file(&mut writer, &rows);
    println!("parquet/encode: {:.1} bytes a row on disk", bytes as f64 / rows_per_file as f64);
    let mut group = c.benchmark_group("parquet");
    group.sample_size(20);
    group.throughput(Throughput::Elements(rows_per_file));
    // Freeing the rows is timed too: the archiver frees the rows it
    // decoded once the writer has them, on the same thread.
    group.bench_function("encode", |b| {
        b.iter_batched(
            || rows.clone(),
            |rows| {
                let bytes = write_file(&mut writer, &rows);
                drop(rows);
                bytes
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, fare, dedup, pricing, wal, parquet);
criterion_main!(benches);
