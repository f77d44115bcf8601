//! The log a batch is acked from, one node against the cluster, in one
//! run (docs/scale-out.md): a gateway batch of `BATCH_SCANS` scans
//! encoded as the journal's record(s) and made durable,
//!
//! - `log/wal/N`: into the node's own write-ahead log (group commit,
//!   fdatasync), N batches queued together;
//! - `log/jetstream_r3/N`: appended to a JetStream stream of 3 replicas on
//!   three `nats-server` processes on loopback (`cluster::append_batch`,
//!   one record a partition of `PARTITIONS`), N batches side by side, each
//!   done when JetStream acknowledged every record of it.
//!
//! Throughput in scans. Both run on the same 2 cores as everything else
//! here, the three NATS servers included, which a real cluster spreads over
//! three machines. Skips the JetStream half without nats-server 2.10+.
//!
//!   cargo bench --bench cluster

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use farestream::journal;
use farestream::scan::{ArchivedScan, ScanStatus, TapKind};
use farestream_cluster::test_nats::NatsCluster;
use farestream_cluster::{StreamLog, StreamLogSettings, append_batch};

const BATCH_SCANS: u64 = 500;
const PARTITIONS: u16 = 16;
const AT_MS: i64 = 1_763_604_000_000;

/// A gateway batch of a bus depot's scans, numbered from `first`.
fn batch(first: u64) -> Vec<ArchivedScan> {
    (first..first + BATCH_SCANS)
        .map(|n| {
            let mut scan_id = [0u8; 16];
            scan_id[..8].copy_from_slice(&n.to_be_bytes());
            scan_id[8..].copy_from_slice(&(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
            ArchivedScan {
                scan_id,
                gateway_id: Arc::from("depot-01"),
                validator_id: format!("bus-{:03}", n % 200),
                validator_seq: n,
                route_id: format!("route-{}", n % 40),
                stop_id: format!("stop-{:04}", n % 3_000),
                tap_kind: Some(TapKind::Single),
                card_id: Some(n.wrapping_mul(2_654_435_761) % 10_000_000 + 1),
                issuer_key_id: Some(1),
                code_created_at: Some(AT_MS - 20_000),
                code_counter: Some((n % 40) as u32),
                scanned_at: AT_MS + n as i64,
                received_at: AT_MS + 60_000,
                status: ScanStatus::Accepted,
                gate_opened: Some(true),
                deny_list_version: Some(7),
                ..ArchivedScan::blank()
            }
        })
        .collect()
}

fn log(c: &mut Criterion) {
    let record = journal::encode(&batch(0), 1);
    println!(
        "log: a {BATCH_SCANS}-scan batch is {:.1} bytes a scan in the journal",
        record.len() as f64 / BATCH_SCANS as f64
    );
    let mut group = c.benchmark_group("log");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    wal(&mut group);
    jetstream(&mut group);
    group.finish();
}

fn wal(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use farestream::faults::Faults;
    use farestream::wal::{WalConfig, committer::Committer, delete_segments_before};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = WalConfig { dir: dir.path().join("wal"), segment_bytes_max: 64 << 20, record_bytes_max: 16 << 20 };
    let faults = Arc::new(Faults::default());
    let recovered = farestream::wal::open(config.clone(), Arc::clone(&faults), 0).expect("a log");
    let committer = Committer::spawn(recovered.writer, config.record_bytes_max, Duration::from_millis(100), true);
    let handle = committer.handle();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    for batches in [1u64, 16] {
        group.throughput(Throughput::Elements(batches * BATCH_SCANS));
        let records: Vec<Vec<u8>> = (0..batches).map(|b| journal::encode(&batch(b * BATCH_SCANS), b)).collect();
        group.bench_function(BenchmarkId::new("wal", batches), |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                for _ in 0..iterations {
                    let lsn = records.iter().fold(0, |_, r| handle.enqueue(r).expect("queued"));
                    runtime.block_on(handle.wait_durable(lsn, Duration::from_secs(30))).expect("durable");
                }
                let elapsed = started.elapsed();
                delete_segments_before(&config.dir, handle.progress().durable_lsn, &faults).expect("deleted");
                elapsed
            })
        });
    }
    committer.close();
}

fn jetstream(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let Some(cluster) = runtime.block_on(NatsCluster::start()) else {
        println!("log/jetstream_r3: skipped, no nats-server 2.10 or later");
        return;
    };
    let settings = StreamLogSettings {
        stream: "BENCH".into(),
        subject_prefix: "bench.scans".into(),
        partitions: PARTITIONS,
        replicas: 3,
        duplicate_window: Duration::from_secs(120),
        ack_timeout: Duration::from_secs(10),
        record_bytes_max: 1 << 20,
        acks_in_flight_max: 1_024,
    };
    let log = runtime.block_on(async { StreamLog::open(cluster.client().await, settings).await }).expect("the stream");
    let next = std::sync::atomic::AtomicU64::new(0);
    for batches in [1u64, 16] {
        group.throughput(Throughput::Elements(batches * BATCH_SCANS));
        group.bench_function(BenchmarkId::new("jetstream_r3", batches), |b| {
            b.iter_custom(|iterations| {
                // New scans every time: a repeated id would be a duplicate,
                // acknowledged without being stored.
                let rounds: Vec<Vec<Vec<ArchivedScan>>> = (0..iterations)
                    .map(|_| {
                        (0..batches)
                            .map(|_| batch(next.fetch_add(BATCH_SCANS, std::sync::atomic::Ordering::Relaxed)))
                            .collect()
                    })
                    .collect();
                runtime.block_on(async {
                    let started = Instant::now();
                    for round in rounds {
                        let appends = round.into_iter().enumerate().map(|(i, rows)| append_batch(&log, rows, i as u64));
                        for appended in futures_util::future::join_all(appends).await {
                            appended.expect("acknowledged");
                        }
                    }
                    started.elapsed()
                })
            })
        });
    }
    drop(log);
    drop(cluster);
}

criterion_group!(benches, log);
criterion_main!(benches);
