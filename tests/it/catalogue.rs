//! The bad-input catalogue (issue 19): every hostile input the issue
//! names, over real loopback QUIC, one after another on one server, while
//! an enrolled gateway pushes all the time. For each: the answer the
//! attacker gets and the Prometheus counter that grows. At the end every
//! scan the enrolled gateway was acked is in the Parquet archive exactly
//! once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use farestream::config::Config;
use farestream::faults::Faults;
use farestream::fleet::GatewayScope;
use farestream::fleet_ca::FleetCa;
use farestream::gateway::tls::SERVER_NAME;
use farestream::keystore::{Keystore, KeystoreOptions};
use farestream::scan::{ScanStatus, TapKind};
use farestream::wire::{AckStatus, BatchAck, ScanBatch, close_code, encode_frame, read_message};

use crate::fair_limits::close_code_of;
use crate::fleet::{push_raw, raw_endpoint_at};
use crate::key_rotation::following_the_key_store;
use crate::support::{GATEWAY, Harness, T0_MS, batch, metric, record};
use crate::wire_errors::exchange;

/// A counter's value before an attack, to check it grew after.
struct Grows(&'static str, f64);

impl Grows {
    fn from(name: &'static str) -> Grows {
        Grows(name, metric(name))
    }

    /// Waits up to 10 s for the counter to grow: the server counts a
    /// refused handshake on its own task, which may run after the
    /// attacker has already seen the refusal.
    async fn by_at_least(self, attack: &str, delta: f64) {
        let grew = self.grew_by(delta, Duration::from_secs(10)).await;
        assert!(grew, "{attack}: {} went from {} to {}, not up by {delta}", self.0, self.1, metric(self.0));
    }

    /// Whether the counter grows by `delta` within `wait`.
    async fn grew_by(&self, delta: f64, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while metric(self.0) < self.1 + delta {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// The enrolled gateway, pushing one scan every 20 ms until told to stop.
fn honest_pusher(h: &Harness, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let client = h.client();
    let batches: Vec<ScanBatch> = (1..=2_000u64)
        .map(|seq| {
            let rider = h.rider(10_000 + seq);
            batch(GATEWAY, seq, vec![record("gate-1", seq, T0_MS, TapKind::Single, rider.code_at(T0_MS, 1))])
        })
        .collect();
    let acked = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        for batch in batches {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let ack = client.push(&batch).await.expect("the enrolled gateway is never refused");
            assert_eq!((ack.ack_status(), ack.accepted), (AckStatus::Ok, 1), "{ack:?}");
            acked.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked.load(Ordering::Relaxed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_answer_and_counter_and_the_enrolled_gateway_loses_nothing() {
    let mut config = Config::defaults();
    config.server.connections_per_address_max = 3;
    config.server.batch_idle_timeout_ms = 1_500;
    config.server.streams_per_connection_max = 2;
    config.wire.frame_read_timeout_ms = 500;
    config.fleet.revocation_check_interval_ms = 50;
    let mut h = following_the_key_store(config).await;
    // Key 1 rotated out (a leaked key): key 2 signs, key 1 is retired.
    let now_secs = T0_MS / 1000 + 60;
    let mut keys = Keystore::open(h.dir.path(), KeystoreOptions::from_config(&h.config)).expect("keys");
    keys.rotate(now_secs, now_secs).expect("rotate");
    keys.retire(1, now_secs).expect("retire");
    let rotated_out = std::mem::replace(&mut h.issuer, keys.signer(2).expect("key 2"));
    while h.server.pipeline().issuer_keys().key_ids().collect::<Vec<_>>() != vec![2] {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let h = Arc::new(h);
    let stop = Arc::new(AtomicBool::new(false));
    let honest = honest_pusher(&h, Arc::clone(&stop));
    let any_scan = |gateway: &str, validator: &str, seq: u64| {
        let rider = h.rider(20_000 + seq);
        batch(gateway, seq, vec![record(validator, seq, T0_MS, TapKind::Single, rider.code_at(T0_MS, 1))])
    };
    let handshake_failed = "farestream_connections_refused_total{reason=\"handshake_failed\"}";

    // 1. No client certificate: the handshake fails.
    let counter = Grows::from(handshake_failed);
    let anonymous = raw_endpoint_at(&h, None, false, "127.0.0.2");
    assert!(push_raw(&anonymous, &h, &any_scan(GATEWAY, "gate-1", 1)).await.is_err(), "no certificate");
    counter.by_at_least("no certificate", 1.0).await;

    // 2. A revoked certificate: the handshake fails.
    let revoked = h.credentials("revoked-depot");
    let ca = FleetCa::open(h.dir.path()).expect("fleet CA");
    ca.revoke("revoked-depot", chrono::Utc::now().timestamp(), &Faults::default()).expect("revoke");
    let endpoint = raw_endpoint_at(&h, Some(&revoked), false, "127.0.0.3");
    // The server reloads revocations every 50 ms; under load a reload
    // may come later, so the push is tried until its handshake is refused
    // (at most 10 s). A reload landing mid-push closes the connection
    // after the handshake instead: that try fails but is not counted as a
    // refused handshake, and does not count here either.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let counter = loop {
        let counter = Grows::from(handshake_failed);
        match push_raw(&endpoint, &h, &any_scan("revoked-depot", "gate-1", 2)).await {
            Err(_) if counter.grew_by(1.0, Duration::from_secs(2)).await => break counter,
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "the revoked certificate still connects after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    counter.by_at_least("revoked", 1.0).await;

    // 3. A certificate from another CA, naming the enrolled gateway.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    FleetCa::create_if_absent(elsewhere.path(), chrono::Utc::now().timestamp(), &Faults::default()).expect("CA");
    let scope = GatewayScope::new(GATEWAY, vec![String::new()]).expect("scope");
    let foreign = FleetCa::enrolled_here(elsewhere.path(), &scope, 30, chrono::Utc::now().timestamp()).expect("cert");
    let counter = Grows::from(handshake_failed);
    let endpoint = raw_endpoint_at(&h, Some(&foreign), false, "127.0.0.4");
    assert!(push_raw(&endpoint, &h, &any_scan(GATEWAY, "gate-1", 3)).await.is_err(), "another CA");
    counter.by_at_least("another CA", 1.0).await;

    // 4. A forged gateway id: an enrolled gateway claiming the honest one.
    let mallory = h.credentials_for(&GatewayScope::new("mallory", vec!["mallory/".into()]).expect("scope"));
    let endpoint = raw_endpoint_at(&h, Some(&mallory), false, "127.0.0.5");
    let counter = Grows::from("farestream_batch_errors_total{reason=\"gateway_id_not_the_certificates\"}");
    let ack = push_raw(&endpoint, &h, &any_scan(GATEWAY, "gate-1", 4)).await.expect("an answer");
    assert_eq!(ack.ack_status(), AckStatus::Malformed, "{ack:?}");
    assert!(ack.error.contains("certificate"), "{}", ack.error);
    counter.by_at_least("forged gateway id", 1.0).await;

    // 5. A validator of another gateway: archived as foreign, not a ride.
    let counter = Grows::from("farestream_scans_total{status=\"foreign_validator\"}");
    let ack = push_raw(&endpoint, &h, &any_scan("mallory", "depot-1/gate-1", 5)).await.expect("an answer");
    assert_eq!((ack.ack_status(), ack.accepted, ack.rejected), (AckStatus::Ok, 0, 1), "{ack:?}");
    counter.by_at_least("foreign validator", 1.0).await;

    // 6. Too many connections from one address: refused before the handshake.
    let counter = Grows::from("farestream_connections_refused_total{reason=\"connections_per_address\"}");
    let crowd_credentials = h.credentials("crowd");
    let crowd = raw_endpoint_at(&h, Some(&crowd_credentials), false, "127.0.0.6");
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        match crowd.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await {
            Ok(connection) => held.push(connection),
            Err(_) => refused += 1,
        }
    }
    assert_eq!((held.len(), refused), (3, 2), "connections_per_address_max");
    counter.by_at_least("connections per address", 2.0).await;

    // 7. PING-only connections (the client PINGs every 100 ms): closed
    // for sending no batch, PINGs or not.
    let counter = Grows::from("farestream_connections_refused_total{reason=\"batch_idle\"}");
    for connection in &held {
        let ended = tokio::time::timeout(Duration::from_secs(10), connection.closed()).await.expect("closed");
        assert_eq!(close_code_of(&ended), Some(close_code::IDLE), "{ended:?}");
    }
    counter.by_at_least("PING-only", 3.0).await;

    // 8 and 9. Too many streams, each silent: the third waits for stream
    // credit while two are open; each silent one is answered BACKOFF
    // after the frame read timeout, and then the third gets its turn.
    let connection = endpoint.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await.expect("handshake");
    let counter = Grows::from("farestream_batch_errors_total{reason=\"frame_read_timeout\"}");
    let mut silent = Vec::new();
    for _ in 0..2 {
        let (send, recv) = connection.open_bi().await.expect("stream");
        silent.push((send, recv));
    }
    // A stream is only seen by the server once it carries a byte.
    for (send, _) in &mut silent {
        send.write_all(&[0]).await.expect("one byte");
    }
    let third = tokio::time::timeout(Duration::from_millis(200), connection.open_bi()).await;
    assert!(third.is_err(), "a third stream opened past streams_per_connection_max");
    for (_, recv) in &mut silent {
        let ack: BatchAck = read_message(recv, 1 << 20, "BatchAck").await.expect("an ack");
        assert_eq!(ack.ack_status(), AckStatus::Backoff, "{ack:?}");
    }
    counter.by_at_least("silent streams", 2.0).await;
    drop(silent);
    let third = tokio::time::timeout(Duration::from_secs(5), connection.open_bi()).await;
    assert!(matches!(third, Ok(Ok(_))), "the third stream opens once the others end");

    // 10. A length prefix of 0xFFFFFFFF: refused before anything is read.
    let counter = Grows::from("farestream_batch_errors_total{reason=\"frame_too_large\"}");
    let ack = exchange(&connection, &u32::MAX.to_be_bytes()).await;
    assert_eq!(ack.ack_status(), AckStatus::Malformed, "{ack:?}");
    assert!(ack.error.contains("over the limit"), "{}", ack.error);
    counter.by_at_least("0xFFFFFFFF", 1.0).await;

    // 11. Bytes that are not protobuf.
    let counter = Grows::from("farestream_batch_errors_total{reason=\"frame_not_protobuf\"}");
    let mut garbage = 4u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 4]);
    let ack = exchange(&connection, &garbage).await;
    assert_eq!(ack.ack_status(), AckStatus::Malformed, "{ack:?}");
    counter.by_at_least("not protobuf", 1.0).await;

    // 12. A batch over the scan limit: counted before it is decoded.
    let counter = Grows::from("farestream_batch_errors_total{reason=\"batch_shape\"}");
    let scans_max = h.config.wire.batch_scans_max as usize;
    let one = any_scan("mallory", "mallory/gate-1", 12).scans.remove(0);
    let oversized = batch("mallory", 12, vec![one; scans_max + 1]);
    let ack = exchange(&connection, &encode_frame(&oversized)).await;
    assert_eq!(ack.ack_status(), AckStatus::Malformed, "{ack:?}");
    assert!(ack.error.contains(&format!("the limit is {scans_max}")), "{}", ack.error);
    counter.by_at_least("over the scan limit", 1.0).await;

    // 13. A replay storm: one code 5 000 times (a screenshot passed
    // around), from 5 000 reads. One ride; the rest archived as replays.
    let counter = Grows::from("farestream_scans_total{status=\"replay\"}");
    let code = h.rider(30_000).code_at(T0_MS, 1);
    let storm: Vec<_> =
        (1..=5_000u64).map(|seq| record("mallory/gate-2", seq, T0_MS, TapKind::Single, code.clone())).collect();
    let ack = exchange(&connection, &encode_frame(&batch("mallory", 13, storm))).await;
    assert_eq!((ack.ack_status(), ack.accepted, ack.rejected), (AckStatus::Ok, 1, 4_999), "{:?}", ack.error);
    counter.by_at_least("replay storm", 4_999.0).await;

    // 14. A code under the rotated-out key.
    let counter = Grows::from("farestream_scans_total{status=\"unknown_issuer_key\"}");
    let rider_key = farestream::ridecode::UserKey::from_seed(&[14; 32]).expect("key");
    let stale_key = T0_MS / 1000;
    let credential =
        rotated_out.issue(40_000, rider_key.public_key(), stale_key as u32 - 60, stale_key as u32 + 90_000);
    let code = rider_key.make_code(&credential, stale_key as u32 - 5, 1).bytes.to_vec();
    let scan = batch("mallory", 14, vec![record("mallory/gate-3", 1, T0_MS, TapKind::Single, code)]);
    let ack = exchange(&connection, &encode_frame(&scan)).await;
    assert_eq!((ack.ack_status(), ack.accepted, ack.rejected), (AckStatus::Ok, 0, 1), "{ack:?}");
    counter.by_at_least("rotated-out key", 1.0).await;

    stop.store(true, Ordering::Relaxed);
    let acked = honest.await.expect("the honest gateway");
    assert!(acked > 10, "the enrolled gateway pushed all along: {acked}");
    let rows = h.archive_rows().await;
    let honest_rows: Vec<_> = rows.iter().filter(|r| &*r.gateway_id == GATEWAY).collect();
    assert_eq!(honest_rows.len() as u64, acked, "every acked scan archived");
    assert!(honest_rows.iter().all(|r| r.status == ScanStatus::Accepted));
    let mut ids: Vec<_> = honest_rows.iter().map(|r| r.scan_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, acked, "an acked scan archived twice");
    let storm_rows: Vec<_> = rows.iter().filter(|r| r.validator_id == "mallory/gate-2").collect();
    let rides = storm_rows.iter().filter(|r| r.status == ScanStatus::Accepted).count();
    assert_eq!((storm_rows.len(), rides), (5_000, 1), "the storm is one ride");
}
