//! The ingest pipeline without the network: a gateway batch in, archive
//! rows and an ack out, on rayon over all cores.
//!
//!     cargo bench --bench pipeline
//!
//! `cold` is each rider's first scan of the day (issuer and user signature);
//! `warm` is a later scan, when the credential is cached (user signature only).

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use farestream::config::Config;
use farestream::ingest::Pipeline;
use farestream::ridecode::{IssuerPublicKeys, IssuerSigningKey, UserKey};
use farestream::wire::{ScanBatch, ScanRecord, WireTapKind};

const AT_MS: i64 = 1_763_604_000_000;

struct Fixture {
    keys: IssuerPublicKeys,
    /// The same riders' earlier scans: processing it warms the credential cache.
    warm_up: ScanBatch,
    batch: ScanBatch,
}

fn fixture(scans: usize) -> Fixture {
    let issuer = IssuerSigningKey::from_seed(1, &[7; 32]).expect("issuer");
    let mut keys = IssuerPublicKeys::new();
    keys.insert(1, issuer.public_key());
    let secs = (AT_MS / 1000) as u32;
    let riders: Vec<_> = (0..scans)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let user = UserKey::from_seed(&seed).expect("user");
            let credential = issuer.issue(i as u64, user.public_key(), secs - 3_600, secs + 90_000);
            (user, credential)
        })
        .collect();
    let batch = |counter: u32, seq_base: u64| ScanBatch {
        gateway_id: "depot-01".into(),
        batch_seq: seq_base,
        scans: riders
            .iter()
            .enumerate()
            .map(|(i, (user, credential))| ScanRecord {
                validator_id: format!("bus-{:03}", i % 64),
                validator_seq: seq_base + i as u64,
                validator_time_ms: AT_MS,
                route_id: "bus-12".into(),
                stop_id: "bus-12-stop-04".into(),
                tap_kind: WireTapKind::Single as i32,
                ride_code: user.make_code(credential, secs - 5, counter).bytes.to_vec(),
                ..Default::default()
            })
            .collect(),
    };
    Fixture { keys, warm_up: batch(1, 1_000_000), batch: batch(2, 0) }
}

fn pipeline(c: &mut Criterion) {
    let config = Config::defaults().pipeline_config().expect("config");
    let mut group = c.benchmark_group("pipeline_batch");
    let scans = 1_000usize;
    {
        let f = fixture(scans);
        group.throughput(Throughput::Elements(scans as u64));
        group.bench_with_input(BenchmarkId::new("cold", scans), &f, |b, f| {
            b.iter_batched(
                || Pipeline::new(config.clone(), f.keys.clone(), [1; 32]),
                |p| assert_eq!(p.process(&f.batch, AT_MS + 60_000).expect("batch").ack.accepted as usize, scans),
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("warm", scans), &f, |b, f| {
            b.iter_batched(
                || {
                    let p = Pipeline::new(config.clone(), f.keys.clone(), [1; 32]);
                    p.process(&f.warm_up, AT_MS + 60_000).expect("warm-up");
                    p
                },
                |p| assert_eq!(p.process(&f.batch, AT_MS + 60_000).expect("batch").ack.accepted as usize, scans),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(6));
    targets = pipeline
}
criterion_main!(benches);
