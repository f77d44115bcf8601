//! Ride-code verification: one signature at a time against batch
//! verification, per signature; opening a sealed (version 2) code; and the
//! validator's whole offline check of either version.
//!
//!     cargo bench --bench ride_code

use std::collections::HashSet;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use farestream::ridecode::check::user_signature_check;
use farestream::ridecode::sealed::open;
use farestream::ridecode::verify::{BatchEntropy, SignatureCheck, verify_batch, verify_single};
use farestream::ridecode::{
    FreshnessPolicy, IssuerPublicKeys, IssuerSigningKey, RideCode, TerminalKey, TerminalKeys, UserKey, check_offline,
    seal,
};

const CREATED_AT: u32 = 1_763_604_000;

/// `n` codes from `n` different riders, as a batch from one gateway holds.
fn codes(n: usize) -> (IssuerPublicKeys, Vec<RideCode>) {
    let issuer = IssuerSigningKey::from_seed(1, &[7; 32]).expect("issuer");
    let mut keys = IssuerPublicKeys::new();
    keys.insert(1, issuer.public_key());
    let codes = (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let user = UserKey::from_seed(&seed).expect("user");
            let credential = issuer.issue(i as u64, user.public_key(), CREATED_AT - 3_600, CREATED_AT + 90_000);
            user.make_code(&credential, CREATED_AT, 1)
        })
        .collect();
    (keys, codes)
}

fn signature_verification(c: &mut Criterion) {
    let (_, codes) = codes(256);
    let checks: Vec<SignatureCheck> = codes.iter().map(user_signature_check).collect();
    let entropy = BatchEntropy::new([1; 32]);
    let mut group = c.benchmark_group("ed25519_per_signature");
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % checks.len();
            assert!(verify_single(&checks[i]));
        })
    });
    for n in [2usize, 4, 8, 16, 32, 64, 256] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("batch", n), &n, |b, &n| {
            b.iter(|| assert!(verify_batch(&checks[..n], entropy.rng()).iter().all(|ok| *ok)))
        });
    }
    // One bad signature in 64: the batch fails and each is checked alone.
    let mut with_one_bad = checks[..64].to_vec();
    with_one_bad[17].signature[40] ^= 1;
    group.throughput(Throughput::Elements(64));
    group.bench_function("batch_64_with_one_bad", |b| b.iter(|| verify_batch(&with_one_bad, entropy.rng())));
    group.finish();
}

/// The day's terminal key, and the codes sealed under it.
fn sealed(codes: &[RideCode]) -> (TerminalKeys, Vec<Vec<u8>>) {
    let mut keys = TerminalKeys::new();
    keys.insert(TerminalKey::from_secret(1, &[9; 32]));
    let key = keys.get(1).expect("key 1");
    let sealed = codes.iter().map(|code| seal(code, key).to_vec()).collect();
    (keys, sealed)
}

fn offline_check(c: &mut Criterion) {
    let (keys, codes) = codes(64);
    let (terminal, sealed) = sealed(&codes);
    let policy = FreshnessPolicy {
        code_validity_secs: 60,
        clock_skew_secs: 30,
        credential_validity_secs: 93_600,
        unsealed_refused_from_secs: None,
    };
    let deny = HashSet::new();
    let mut group = c.benchmark_group("validator");
    group.throughput(Throughput::Elements(1));
    group.bench_function("check_offline", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % codes.len();
            assert!(check_offline(&codes[i].bytes, &keys, &terminal, &deny, &policy, CREATED_AT + 10).is_ok());
        })
    });
    group.bench_function("check_offline_sealed", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % sealed.len();
            assert!(check_offline(&sealed[i], &keys, &terminal, &deny, &policy, CREATED_AT + 10).is_ok());
        })
    });
    group.bench_function("decode", |b| b.iter(|| RideCode::decode(&codes[0].bytes)));
    // What sealing adds to reading a code: issue 20's budget is 1 µs.
    group.bench_function("open_sealed", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % sealed.len();
            assert!(open(&sealed[i], &terminal).is_ok());
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = signature_verification, offline_check
}
criterion_main!(benches);
