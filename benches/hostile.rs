//! What a batch costs the server to verify, honest or hostile: the figures
//! behind the denial-of-service review. Each case is a 2 048-scan batch
//! through steps 1 and 2 of the pipeline, in the chunk size the server
//! settles on for a connection sending such batches (its `ChunkSizer`,
//! trained on the same kind of batch first). Throughput is in wire bytes, so criterion's
//! bytes per second converts straight to CPU nanoseconds per wire byte;
//! run on one core for the per-core figure:
//!
//!     RAYON_NUM_THREADS=1 cargo bench --bench hostile
//!
//! - `honest_cached`: riders' later scans, credentials already verified;
//! - `honest_first_scan`: each rider's first scan of the day;
//! - `one_bad_per_64`: first scans (two signatures each), every 32nd with a
//!   wrong user signature: one bad signature in every 64;
//! - `bad_issuer_and_user`: wrong issuer and user signatures on valid points;
//! - `resent`: an honest batch the server has already logged, sent again.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use farestream::config::Config;
use farestream::fleet::GatewayScope;
use farestream::ingest::{ChunkSizer, Pipeline};
use farestream::ridecode::format::CODE_SIGNED_LEN;
use farestream::ridecode::{Credential, IssuerPublicKeys, IssuerSigningKey, UserKey};
use farestream::wire::{ScanBatch, ScanRecord, WireTapKind, encode_frame};

const AT_MS: i64 = 1_763_604_000_000;
const SCANS: usize = 2_048;
/// Where the issuer signature sits in a version-1 code.
const ISSUER_SIGNATURE: std::ops::Range<usize> = 53..117;

struct Rider {
    user: UserKey,
    credential: Credential,
}

struct Fixture {
    keys: IssuerPublicKeys,
    riders: Vec<Rider>,
}

fn fixture() -> Fixture {
    let issuer = IssuerSigningKey::from_seed(1, &[7; 32]).expect("issuer");
    let mut keys = IssuerPublicKeys::new();
    keys.insert(1, issuer.public_key());
    let secs = (AT_MS / 1000) as u32;
    let riders = (0..SCANS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let user = UserKey::from_seed(&seed).expect("user");
            let credential = issuer.issue(i as u64, user.public_key(), secs - 3_600, secs + 90_000);
            Rider { user, credential }
        })
        .collect();
    Fixture { keys, riders }
}

/// One code per rider; `tamper` may change a code's bytes by index.
fn batch(f: &Fixture, counter: u32, tamper: impl Fn(usize, &mut Vec<u8>)) -> ScanBatch {
    let secs = (AT_MS / 1000) as u32;
    let scans = f
        .riders
        .iter()
        .enumerate()
        .map(|(i, rider)| {
            let mut ride_code = rider.user.make_code(&rider.credential, secs - 5, counter).bytes.to_vec();
            tamper(i, &mut ride_code);
            ScanRecord {
                validator_id: format!("bus-{:03}", i % 64),
                validator_seq: u64::from(counter) * SCANS as u64 + i as u64,
                validator_time_ms: AT_MS,
                route_id: "bus-12".into(),
                stop_id: "bus-12-stop-04".into(),
                tap_kind: WireTapKind::Single as i32,
                ride_code,
                ..Default::default()
            }
        })
        .collect();
    ScanBatch { gateway_id: "depot-01".into(), batch_seq: u64::from(counter), scans }
}

/// A signature that is a valid encoding but signs other bytes: the
/// neighbouring rider's signature over their own code.
fn foreign_signature(f: &Fixture, i: usize, range: std::ops::Range<usize>) -> Vec<u8> {
    let other = &f.riders[(i + 1) % SCANS];
    let code = other.user.make_code(&other.credential, (AT_MS / 1000) as u32 - 5, 9);
    code.bytes[range].to_vec()
}

fn hostile(c: &mut Criterion) {
    let config = Config::defaults().pipeline_config().expect("config");
    let f = fixture();
    let warm_up = batch(&f, 1, |_, _| {});
    let honest = batch(&f, 2, |_, _| {});
    let one_bad_per_64 = batch(&f, 2, |i, code| {
        if i % 32 == 0 {
            code[CODE_SIGNED_LEN..].copy_from_slice(&foreign_signature(&f, i, CODE_SIGNED_LEN..189));
        }
    });
    let bad_issuer_and_user = batch(&f, 2, |i, code| {
        code[ISSUER_SIGNATURE].copy_from_slice(&foreign_signature(&f, i, ISSUER_SIGNATURE));
        code[CODE_SIGNED_LEN..].copy_from_slice(&foreign_signature(&f, i, CODE_SIGNED_LEN..189));
    });
    let fresh = || Pipeline::new(config.clone(), f.keys.clone(), [1; 32]);
    let warmed = || {
        let p = fresh();
        p.process(&warm_up, AT_MS + 60_000).expect("warm-up");
        p
    };
    let resent = || {
        let p = warmed();
        p.process(&honest, AT_MS + 60_000).expect("original");
        p
    };
    let cases: [(&str, &ScanBatch, &dyn Fn() -> Pipeline); 5] = [
        ("honest_cached", &honest, &warmed),
        ("honest_first_scan", &honest, &fresh),
        ("one_bad_per_64", &one_bad_per_64, &fresh),
        ("bad_issuer_and_user", &bad_issuer_and_user, &fresh),
        ("resent", &honest, &resent),
    ];
    let scope = GatewayScope::every_validator("depot-01");
    let mut group = c.benchmark_group("verify_2048");
    for (name, batch, setup) in cases {
        let chunk = settled_chunk(setup(), batch, config.verify_chunk_signatures);
        println!("{name}: {chunk} signatures per batch equation");
        group.throughput(Throughput::Bytes(encode_frame(batch).len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), batch, |b, batch| {
            b.iter_batched(setup, |p| p.verify_records(&batch.scans, chunk, &scope), BatchSize::LargeInput)
        });
    }
    group.finish();
}

/// The chunk size a connection's sizer settles on after a few such batches.
fn settled_chunk(pipeline: Pipeline, batch: &ScanBatch, max: usize) -> usize {
    let mut sizer = ChunkSizer::new(max, 0.0);
    let (checked, failed) = pipeline.verify(batch).expect("well-formed").signature_counts();
    for _ in 0..8 {
        sizer.observe(checked, failed);
    }
    sizer.chunk_signatures()
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(8));
    targets = hostile
}
criterion_main!(benches);
