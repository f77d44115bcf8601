//! Fuzzing on stable Rust: a proptest harness per decoder that reads bytes
//! from outside (issue 19). Each starts from its seed corpus in
//! `tests/fuzz_corpus/TARGET/` and mutates it (bit flips, byte writes,
//! cuts, inserted and repeated runs, splices of two seeds), with wholly
//! random inputs mixed in, and asserts round trips and invariants, not
//! only "no panic".
//!
//! CI runs each for `FARESTREAM_FUZZ_CASES` cases (default 600) from a
//! fixed seed, so a run is repeatable; `FARESTREAM_FUZZ_SEED=N` explores
//! elsewhere. `FARESTREAM_FUZZ_WRITE_SEEDS=1` rewrites the corpus from the
//! encoders (run it after a format change, and commit the files).

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use prost::Message;

use farestream::config::Config;
use farestream::ingest::Pipeline;
use farestream::ridecode::{
    IssuerPublicKeys, IssuerSigningKey, NobodyDenied, RideCode, TerminalKey, TerminalKeys, UserKey, check_offline, seal,
};
use farestream::scan::{ArchivedScan, TapKind};
use farestream::wire::{
    DenyListUpdate, DenyListUpdateKind, IssuerKeySet, IssuerPublicKey, ScanBatch, ServerPush, count_field,
    decode_message, encode_frame, frame_len, server_push,
};
use farestream_core::deny_list::{DenyChange, DenyListLog, DenyListReplica};
use farestream_core::journal;
use farestream_core::wal::framing::{Frame, decode_record, encode_record, record_bytes};

use crate::support::{T0_MS, batch, record, secs};

/// The field of `ScanBatch` holding its scans.
const SCANS_FIELD: u32 = 3;
/// The most keys a gateway holds (`farestream_gateway::ISSUER_KEYS_HELD_MAX`).
const KEYS_MAX: usize = farestream::gateway::ISSUER_KEYS_HELD_MAX;

fn cases(default: u32) -> u32 {
    std::env::var("FARESTREAM_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runner(cases: u32) -> TestRunner {
    let seed: u64 = std::env::var("FARESTREAM_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(19);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus").join(target)
}

/// The target's seeds: written from `seeds` when asked, else read back.
fn corpus(target: &str, seeds: impl FnOnce() -> Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    if std::env::var_os("FARESTREAM_FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (i, seed) in seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}.bin")), seed).expect("seed");
        }
    }
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("the seed corpus is in the repo").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).expect("seed")).collect();
    assert!(!seeds.is_empty(), "{} holds no seeds", dir.display());
    seeds
}

/// One mutation: what it does, where, and with what byte.
#[derive(Debug, Clone, Copy)]
struct Mutation {
    kind: u8,
    at: u32,
    byte: u8,
    len: u8,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (any::<u8>(), any::<u32>(), any::<u8>(), any::<u8>()).prop_map(|(kind, at, byte, len)| Mutation {
        kind,
        at,
        byte,
        len,
    })
}

fn mutate(mut input: Vec<u8>, other: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = if input.is_empty() { 0 } else { m.at as usize % (input.len() + 1) };
        let len = usize::from(m.len % 32) + 1;
        match m.kind % 6 {
            0 if at < input.len() => input[at] ^= 1 << (m.byte % 8),
            1 if at < input.len() => input[at] = m.byte,
            2 => input.truncate(at),
            3 => input.splice(at..at, std::iter::repeat_n(m.byte, len)).for_each(drop),
            4 => {
                let run: Vec<u8> = input.iter().skip(at).take(len).copied().collect();
                input.splice(at..at, run).for_each(drop);
            }
            5 => {
                let from = if other.is_empty() { 0 } else { m.at as usize % other.len() };
                input.splice(at..at, other.iter().skip(from).take(len).copied()).for_each(drop);
            }
            _ => {}
        }
    }
    input
}

/// A seed mutated, or (one case in eight) bytes from nowhere.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        proptest::sample::select(seeds.clone()),
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(), 0..6),
    )
        .prop_map(|(seed, other, mutations)| mutate(seed, &other, &mutations));
    prop_oneof![7 => mutated, 1 => proptest::collection::vec(any::<u8>(), 0..300)]
}

pub(crate) fn run(
    target: &str,
    seeds: impl FnOnce() -> Vec<Vec<u8>>,
    default_cases: u32,
    check: impl Fn(&[u8]) -> Result<(), TestCaseError>,
) {
    let corpus = corpus(target, seeds);
    for seed in &corpus {
        check(seed).unwrap_or_else(|e| panic!("{target}: a seed fails: {e}"));
    }
    let ran = std::sync::atomic::AtomicU32::new(0);
    runner(cases(default_cases))
        .run(&inputs(corpus), |input| {
            ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            check(&input)
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    println!("{target}: {} cases", ran.into_inner());
}

fn issuer() -> IssuerSigningKey {
    IssuerSigningKey::from_seed(1, &[11; 32]).expect("issuer")
}

fn code(card: u64, created_at: u32) -> RideCode {
    let key = UserKey::from_seed(&[card as u8; 32]).expect("user key");
    let credential = issuer().issue(card, key.public_key(), created_at - 3_600, created_at + 90_000);
    key.make_code(&credential, created_at, 1)
}

fn seed_batches() -> Vec<ScanBatch> {
    let at = T0_MS;
    vec![
        batch("depot-1", 1, vec![]),
        batch(
            "depot-1",
            2,
            vec![record("depot-1/gate-1", 1, at, TapKind::Single, code(1, secs(T0_MS)).bytes.to_vec())],
        ),
        batch(
            "depot-1",
            3,
            vec![
                record("depot-1/gate-2", 7, at, TapKind::Entry, code(2, secs(T0_MS)).bytes.to_vec()),
                record("depot-1/gate-2", 8, at + 60_000, TapKind::Exit, code(2, secs(T0_MS) + 60).bytes.to_vec()),
                record("depot-1/gate-2", 8, at + 60_000, TapKind::Exit, code(2, secs(T0_MS) + 60).bytes.to_vec()),
                record("", u64::MAX, i64::MAX, TapKind::Single, vec![]),
            ],
        ),
    ]
}

/// The frame decoder: a length announced over the limit is refused before
/// anything is read; one within it is the body's length.
#[test]
fn fuzz_frame_header() {
    let seeds = || seed_batches().iter().map(encode_frame).collect();
    run("frame", seeds, 2_000, |input| {
        let Some(header) = input.get(..4) else { return Ok(()) };
        let header: [u8; 4] = header.try_into().expect("4 bytes");
        let max = 1 << 20;
        match frame_len(header, max) {
            Ok(len) => prop_assert!(len <= max && len == u32::from_be_bytes(header)),
            Err(_) => prop_assert!(u32::from_be_bytes(header) > max),
        }
        Ok(())
    });
}

/// The batch decoder and its field counter: when both read a body they
/// agree on the scans (the scan limit cannot be slipped past), a decoded
/// batch re-encodes to one that decodes the same, and the pipeline gives
/// every scan that is not a re-delivery exactly one row.
#[test]
fn fuzz_scan_batch_and_its_field_counter() {
    let pipeline = Pipeline::new(Config::defaults().pipeline_config().expect("pipeline"), trusted(), [7; 32]);
    let seeds = || seed_batches().iter().map(|b| b.encode_to_vec()).collect();
    run("scan_batch", seeds, 600, |body| {
        let counted = count_field(body, SCANS_FIELD, "ScanBatch");
        let Ok(batch) = decode_message::<ScanBatch>(body, "ScanBatch") else { return Ok(()) };
        if let Ok(count) = counted {
            prop_assert_eq!(count, batch.scans.len(), "the counter and the decoder disagree");
        }
        let again = decode_message::<ScanBatch>(&batch.encode_to_vec(), "ScanBatch").expect("re-encoded");
        prop_assert_eq!(&again, &batch);
        if let Ok(outcome) = pipeline.process(&batch, T0_MS + 120_000) {
            let ack = &outcome.ack;
            prop_assert_eq!((ack.accepted + ack.rejected) as usize, outcome.rows.len());
            prop_assert_eq!(outcome.rows.len() + ack.redelivered as usize, batch.scans.len());
            prop_assert_eq!(ack.rejections.len(), ack.rejected as usize);
        }
        Ok(())
    });
}

fn trusted() -> IssuerPublicKeys {
    let mut keys = IssuerPublicKeys::new();
    keys.insert(1, issuer().public_key());
    keys
}

/// The ride-code parser: only 189 bytes parse, they parse to themselves,
/// and the offline check never accepts a code that was changed.
#[test]
fn fuzz_ride_code() {
    let genuine: Vec<Vec<u8>> = (1..=3).map(|card| code(card, secs(T0_MS)).bytes.to_vec()).collect();
    let seeds = || genuine.clone();
    let policy = Config::defaults().pipeline_config().expect("pipeline").freshness;
    let keys = trusted();
    run("ride_code", seeds, 2_000, |input| {
        match RideCode::decode(input) {
            Ok(code) => {
                prop_assert_eq!(input.len(), farestream::ridecode::RIDE_CODE_LEN);
                prop_assert_eq!(&code.bytes[..], input);
            }
            Err(_) => return Ok(()),
        }
        let checked = check_offline(input, &keys, &TerminalKeys::new(), &NobodyDenied, &policy, secs(T0_MS) + 10);
        if checked.is_ok() {
            prop_assert!(genuine.iter().any(|g| g == input), "a changed code was accepted");
        }
        Ok(())
    });
}

/// The sealed (version 2) reader: nothing it is given panics, only a code
/// sealed whole under a key held opens, and what opens is the code sealed.
#[test]
fn fuzz_sealed_ride_code() {
    let mut terminal = TerminalKeys::new();
    terminal.insert(TerminalKey::from_secret(7, &[7; 32]));
    let originals: Vec<RideCode> = (1..=3).map(|card| code(card, secs(T0_MS))).collect();
    let key = terminal.get(7).expect("key 7");
    let genuine: Vec<Vec<u8>> = originals.iter().map(|c| seal(c, key).to_vec()).collect();
    let seeds = || genuine.clone();
    let policy = Config::defaults().pipeline_config().expect("pipeline").freshness;
    let keys = trusted();
    run("sealed_ride_code", seeds, 2_000, |input| {
        let checked = check_offline(input, &keys, &terminal, &NobodyDenied, &policy, secs(T0_MS) + 10);
        if let Ok(code) = checked {
            let position = genuine.iter().position(|g| g == input);
            prop_assert!(position.is_some(), "a changed sealed code was accepted");
            prop_assert_eq!(Some(code), position.map(|p| originals[p]));
        }
        Ok(())
    });
}

fn seed_rows() -> Vec<Vec<ArchivedScan>> {
    let pipeline = Pipeline::new(Config::defaults().pipeline_config().expect("pipeline"), trusted(), [7; 32]);
    seed_batches().iter().map(|b| pipeline.process(b, T0_MS + 120_000).expect("processed").rows).collect()
}

/// The journal's record decoder: what decodes re-encodes to rows that
/// decode the same.
#[test]
fn fuzz_journal_record() {
    let seeds = || seed_rows().iter().enumerate().map(|(i, rows)| journal::encode(rows, i as u64)).collect();
    run("journal", seeds, 1_000, |payload| {
        let Ok(rows) = journal::decode(payload) else { return Ok(()) };
        let again = journal::decode(&journal::encode(&rows, 9)).expect("re-encoded rows decode");
        prop_assert_eq!(again, rows);
        Ok(())
    });
}

/// The write-ahead log's record decoder: a record it takes is exactly
/// what the encoder writes for its payload, within the limit.
#[test]
fn fuzz_wal_record() {
    let seeds = || {
        seed_rows()
            .iter()
            .map(|rows| {
                let mut out = Vec::new();
                encode_record(&journal::encode(rows, 1), &mut out);
                out
            })
            .collect()
    };
    run("wal_record", seeds, 2_000, |bytes| {
        let max = 1 << 16;
        if let Frame::Valid { payload } = decode_record(bytes, max) {
            prop_assert!(payload.len() <= max as usize);
            let mut encoded = Vec::new();
            encode_record(payload, &mut encoded);
            prop_assert_eq!(encoded.len() as u64, record_bytes(payload.len()));
            prop_assert_eq!(&bytes[..encoded.len()], &encoded[..]);
        }
        Ok(())
    });
}

fn seed_pushes() -> Vec<ServerPush> {
    let mut log = DenyListLog::new(0, [], 16);
    log.apply(DenyChange { version: 1, card_id: 7, denied: true });
    log.apply(DenyChange { version: 2, card_id: 9, denied: true });
    let mut pushes: Vec<ServerPush> = log
        .updates_since(None, 1)
        .into_iter()
        .chain(log.updates_since(Some(1), 1))
        .map(|u| ServerPush { update: Some(server_push::Update::DenyList(u)) })
        .collect();
    let key = |key_id, until| IssuerPublicKey {
        key_id,
        public_key: vec![key_id as u8; 32],
        signs_from_unix_secs: 1_700_000_000,
        trusted_until_unix_secs: until,
    };
    let set = IssuerKeySet { keys: vec![key(1, Some(1_800_000_000)), key(2, None)] };
    pushes.push(ServerPush { update: Some(server_push::Update::IssuerKeys(set)) });
    let terminal = |key_id: u32, until| farestream::wire::WireTerminalKey {
        key_id,
        secret: vec![key_id as u8; 32],
        service_date: "2026-12-03".into(),
        handed_out_from_unix_secs: 1_796_248_800,
        trusted_until_unix_secs: until,
    };
    let set = farestream::wire::TerminalKeySet {
        keys: vec![terminal(4, Some(1_800_000_000)), terminal(5, None)],
        version_1_refused_from_unix_secs: Some(1_811_793_600),
    };
    pushes.push(ServerPush { update: Some(server_push::Update::TerminalKeys(set)) });
    pushes
}

/// The push stream's decoder, as a gateway runs it: a deny-list update
/// never grows the list past its limit and one refused leaves the list
/// in force as it was; a key set taken has 32-byte keys, each id once,
/// and re-encodes to itself.
#[test]
fn fuzz_server_push() {
    let seeds = || seed_pushes().iter().map(|p| p.encode_to_vec()).collect();
    run("server_push", seeds, 2_000, |body| {
        let Ok(push) = decode_message::<ServerPush>(body, "ServerPush") else { return Ok(()) };
        match push.update {
            Some(server_push::Update::DenyList(update)) => check_deny_list_update(&update)?,
            Some(server_push::Update::IssuerKeys(set)) => {
                if let Ok(keys) = set.to_published(KEYS_MAX) {
                    prop_assert!(keys.len() <= KEYS_MAX);
                    let mut ids: Vec<u32> = keys.iter().map(|k| k.key_id).collect();
                    ids.dedup();
                    prop_assert_eq!(ids.len(), keys.len());
                    prop_assert_eq!(IssuerKeySet::from_published(&keys).to_published(KEYS_MAX), Ok(keys));
                }
            }
            Some(server_push::Update::TerminalKeys(set)) => {
                if let (Ok(keys), Ok(cut_off)) = (set.to_held(KEYS_MAX), set.version_1_refused_from_secs()) {
                    let mut ids: Vec<u16> = keys.iter().map(|k| k.key_id).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    prop_assert!(keys.len() <= KEYS_MAX && ids.len() == keys.len() && !ids.contains(&0));
                    let again = farestream::wire::TerminalKeySet::from_held(&keys, cut_off);
                    prop_assert_eq!(again.version_1_refused_from_secs(), Ok(cut_off));
                    prop_assert_eq!(again.to_held(KEYS_MAX), Ok(keys));
                }
            }
            None => {}
        }
        Ok(())
    });
}

fn check_deny_list_update(update: &DenyListUpdate) -> Result<(), TestCaseError> {
    let cards_max = 4;
    let mut replica = DenyListReplica::new(cards_max);
    let full = DenyListUpdate {
        kind: DenyListUpdateKind::Full as i32,
        version: 2,
        denied: vec![7, 9],
        last_page: true,
        ..DenyListUpdate::default()
    };
    replica.apply(&full).expect("a full list");
    let before = (replica.version(), replica.cards().clone());
    match replica.apply(update) {
        Ok(()) => prop_assert!(replica.cards().len() <= cards_max),
        Err(_) => prop_assert_eq!((replica.version(), replica.cards().clone()), before),
    }
    Ok(())
}
