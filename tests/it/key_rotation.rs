//! Issuer key rotation on a running server (issue 19): `keys rotate` is
//! in force without a restart, the new key reaches connected gateways on
//! their push stream, and the old key stays trusted exactly until its last
//! credential and the scans made under it have run out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use farestream::clock_source::{Clock, ManualClock};
use farestream::config::Config;
use farestream::faults::Faults;
use farestream::gateway::GatewayClient;
use farestream::gateway::tls::SERVER_NAME;
use farestream::keystore::{Keystore, KeystoreOptions};
use farestream::money::notify::InboxNotifier;
use farestream::ridecode::{IssuerSigningKey, UserKey};
use farestream::scan::{ScanStatus, TapKind};
use farestream::tls_identity::ServerIdentity;
use farestream::wire::{ALPN_V1, DenyListUpdate, DenyListUpdateKind, ServerPush, read_message, server_push};
use farestream_core::clock::UnixMillis;

use crate::fleet::raw_endpoint_speaking;
use crate::support::{GATEWAY, Harness, T0_MS, assembly_following_the_key_store, batch, record, secs};

/// A harness whose server follows its data dir's key store (the others
/// trust a fixed test key), rereading it every 20 ms; `h.issuer` is key 1.
/// Not for `restart`, which starts a server on the fixed key.
pub(crate) async fn following_the_key_store(mut config: Config) -> Harness {
    config.keys.reload_interval_ms = 20;
    let clock = Arc::new(ManualClock::new(T0_MS + 60_000));
    let dir = tempfile::tempdir().expect("tempdir");
    start_following(config, dir, ServerIdentity::generate().expect("identity"), clock).await
}

/// A second node following the key store, as `first` does, on a copy of
/// its data dir (its TLS identity and fleet CA, which every node of a
/// cluster shares) and on its clock, started with `config`.
pub(crate) async fn copy_following_the_key_store(first: &Harness, config: Config) -> Harness {
    copy_following_the_key_store_on(first, config, Arc::clone(&first.clock)).await
}

/// The same, on a clock of its own: a node whose clock differs.
pub(crate) async fn copy_following_the_key_store_on(
    first: &Harness,
    config: Config,
    clock: Arc<ManualClock>,
) -> Harness {
    first.server.flush_archive().await.expect("flush");
    let dir = crate::support::copy_of(first.dir.path());
    start_following(config, dir, first.identity.clone(), clock).await
}

/// A server following the key store of `dir`; `issuer` is its key 1.
async fn start_following(
    config: Config,
    dir: tempfile::TempDir,
    identity: ServerIdentity,
    clock: Arc<ManualClock>,
) -> Harness {
    let (faults, inbox) = (Arc::new(Faults::default()), Arc::new(InboxNotifier::default()));
    let server = assembly_following_the_key_store(&config, dir.path(), &identity, &clock)
        .expect("assembly")
        .with_faults(Arc::clone(&faults))
        .with_notifier(Arc::clone(&inbox) as Arc<dyn farestream::money::notify::Notifier>)
        .start()
        .await
        .expect("server");
    let issuer = key_store(&config, dir.path()).signer(1).expect("key 1");
    Harness { dir, server, identity, clock, issuer, config, faults, inbox }
}

pub(crate) fn key_store(config: &Config, dir: &std::path::Path) -> Keystore {
    Keystore::open(dir, KeystoreOptions::from_config(config)).expect("key store")
}

/// One scan read at `read_ms`, its code made a second before, under a
/// credential from `issuer` valid over `[valid_from, valid_until)`.
pub(crate) fn scan_under(
    issuer: &IssuerSigningKey,
    card: u64,
    (valid_from, valid_until): (u32, u32),
    read_ms: UnixMillis,
) -> Vec<u8> {
    let key = UserKey::from_seed(&[card as u8; 32]).expect("user key");
    let credential = issuer.issue(card, key.public_key(), valid_from, valid_until);
    key.make_code(&credential, secs(read_ms - 1_000), 1).bytes.to_vec()
}

/// Pushes one scan and returns the status it was archived with.
async fn status_of(h: &Harness, client: &GatewayClient, seq: u64, code: Vec<u8>, read_ms: UnixMillis) -> ScanStatus {
    let ack = client.push(&batch(GATEWAY, seq, vec![record("gate-1", seq, read_ms, TapKind::Single, code)])).await;
    ack.expect("acked");
    let rows = h.archive_rows().await;
    rows.iter().find(|r| r.validator_seq == seq).expect("archived").status
}

/// Waits until the gateway holds keys `ids` (pushed, not reconnected for).
async fn gateway_holds(client: &GatewayClient, ids: &[u32]) -> Duration {
    let started = Instant::now();
    loop {
        let held: Vec<u32> = client.issuer_keys().iter().map(|k| k.key_id).collect();
        if held == ids {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the gateway holds {held:?}, not {ids:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_a_running_server_is_pushed_signed_and_the_old_key_runs_out_on_time() {
    let h = following_the_key_store(Config::defaults()).await;
    let client = h.client();
    let now = h.clock.now_ms();
    let day = (secs(now) - 60, secs(now) - 60 + 93_600);
    assert_eq!(status_of(&h, &client, 1, scan_under(&h.issuer, 1, day, now), now).await, ScanStatus::Accepted);
    gateway_holds(&client, &[1]).await;

    // `keys rotate --signs-in-secs 0`, from another process's key store.
    let rotated_at = secs(now);
    key_store(&h.config, h.dir.path()).rotate(i64::from(rotated_at), i64::from(rotated_at)).expect("rotate");
    let took = gateway_holds(&client, &[1, 2]).await;
    println!("the rotation reached the connected gateway in {took:?}");
    assert_eq!(client.connects(), 1, "pushed on the open connection");
    let key_2 = key_store(&h.config, h.dir.path()).signer(2).expect("key 2");
    let signer = h.server.issuer_keys().now().signer.as_ref().map(|s| s.key_id());
    assert_eq!(signer, Some(2), "the account API signs with the new key");
    let published = client.issuer_keys();
    let tail = h.config.issuer_key_trust_tail_secs();
    assert_eq!(published[0].trusted_until_secs, Some(i64::from(rotated_at) + tail), "validators learn when key 1 ends");
    assert_eq!(status_of(&h, &client, 2, scan_under(&key_2, 2, day, now), now).await, ScanStatus::Accepted);

    // Key 1's last credential, issued the second before the rotation; its
    // last code read at the end of that credential and uploaded as late
    // as accepted: still trusted.
    let last = (rotated_at - 1, rotated_at - 1 + 93_600);
    let read_ms = i64::from(last.1 - 1) * 1000;
    let lateness_ms = i64::from(h.config.ingest.accepted_lateness_secs) * 1000;
    h.clock.set(read_ms + lateness_ms - 1_000);
    tokio::time::sleep(Duration::from_millis(100)).await; // a few reloads at the new time
    gateway_holds(&client, &[1, 2]).await;
    assert_eq!(status_of(&h, &client, 3, scan_under(&h.issuer, 3, last, read_ms), read_ms).await, ScanStatus::Accepted);

    // Past the tail, key 1 is trusted by no one: the gateway drops it and
    // the server refuses codes under it.
    h.clock.set((i64::from(rotated_at) + tail) * 1000);
    gateway_holds(&client, &[2]).await;
    let now = h.clock.now_ms();
    let fresh = (secs(now) - 60, secs(now) - 60 + 93_600);
    let refused = status_of(&h, &client, 4, scan_under(&h.issuer, 4, fresh, now), now).await;
    assert_eq!(refused, ScanStatus::UnknownIssuerKey);
    assert_eq!(status_of(&h, &client, 5, scan_under(&key_2, 5, fresh, now), now).await, ScanStatus::Accepted);
    assert_eq!(client.trusted_issuer_keys(secs(now).into()).key_ids().collect::<Vec<_>>(), vec![2]);
}

/// A leaked key is retired at once: no credential can be signed with it
/// and its codes are refused within the reload interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_is_refused_without_a_restart() {
    let h = following_the_key_store(Config::defaults()).await;
    let client = h.client();
    client.connect().await.expect("connect");
    let now = h.clock.now_ms();
    let mut store = key_store(&h.config, h.dir.path());
    store.rotate(secs(now).into(), secs(now).into()).expect("rotate");
    gateway_holds(&client, &[1, 2]).await;
    store.retire(1, secs(now).into()).expect("retire the leaked key");
    gateway_holds(&client, &[2]).await;
    let day = (secs(now) - 60, secs(now) - 60 + 93_600);
    assert_eq!(status_of(&h, &client, 1, scan_under(&h.issuer, 1, day, now), now).await, ScanStatus::UnknownIssuerKey);
}

/// A gateway that speaks only the first protocol version still connects
/// and gets the deny list as bare updates, with no keys on its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_version_gateway_gets_the_deny_list_as_before() {
    let h = following_the_key_store(Config::defaults()).await;
    let credentials = h.credentials(GATEWAY);
    for (alpn, is_v1) in [(ALPN_V1, true), (farestream::wire::ALPN, false)] {
        let endpoint = raw_endpoint_speaking(&h, Some(&credentials), (false, "127.0.0.1"), alpn);
        let connection =
            endpoint.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await.expect("handshake");
        let mut stream = connection.accept_uni().await.expect("push stream");
        if is_v1 {
            let update: DenyListUpdate = read_message(&mut stream, 1 << 20, "DenyListUpdate").await.expect("v1 frame");
            assert_eq!((update.kind(), update.last_page), (DenyListUpdateKind::Full, true));
        } else {
            let push: ServerPush = read_message(&mut stream, 1 << 20, "ServerPush").await.expect("v2 frame");
            let Some(server_push::Update::IssuerKeys(set)) = push.update else { panic!("keys first: {push:?}") };
            assert_eq!(set.keys.len(), 1);
        }
        connection.close(0u32.into(), b"done");
    }
}

/// Issue 20: a server that follows its key store makes today's and
/// tomorrow's terminal keys, pushes both to a connected gateway, opens
/// codes sealed under today's, and pushes an emergency rotation without
/// a restart. A code sealed under a key never made is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_keys_are_made_a_day_ahead_pushed_and_open_sealed_codes() {
    let mut config = Config::defaults();
    config.ride_code.version_1_refused_from_date = Some("2099-01-01".into());
    let h = following_the_key_store(config).await;
    let client = h.client();
    client.connect().await.expect("connect");
    let now_ms = h.clock.now_ms();
    let policy = h.config.service_day_policy().expect("policy");
    let today = policy.service_date(now_ms).expect("today");
    let started = Instant::now();
    let held = loop {
        let held = client.terminal_keys();
        if held.len() == 2 {
            break held;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the gateway holds {held:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let days: Vec<_> = held.iter().map(|k| (k.key_id, k.service_date)).collect();
    assert_eq!(days, vec![(1, today), (2, today.succ_opt().expect("tomorrow"))], "tomorrow's key a day ahead");
    let cut_off = h.config.freshness_policy().expect("policy").unsealed_refused_from_secs;
    assert!(cut_off.is_some());
    assert_eq!(client.version_1_refused_from_secs(), cut_off, "validators refuse what the server refuses");
    let opened_at_the_gate = client.trusted_terminal_keys(now_ms / 1000);
    assert_eq!(opened_at_the_gate.key_ids().collect::<Vec<_>>(), vec![1, 2]);

    let read_ms = now_ms - 1_000;
    let window = (secs(read_ms) - 3_600, secs(read_ms) + 3_600);
    let code = farestream::ridecode::RideCode::decode(&scan_under(&h.issuer, 31, window, read_ms)).expect("code");
    let sealed = farestream::ridecode::seal(&code, &held[0].key()).to_vec();
    assert_eq!(status_of(&h, &client, 1, sealed, read_ms).await, ScanStatus::Accepted);
    let never_made = farestream::ridecode::TerminalKey::from_secret(9, &[9; 32]);
    let code = farestream::ridecode::RideCode::decode(&scan_under(&h.issuer, 32, window, read_ms)).expect("code");
    let sealed = farestream::ridecode::seal(&code, &never_made).to_vec();
    assert_eq!(status_of(&h, &client, 2, sealed, read_ms).await, ScanStatus::UnknownTerminalKey);

    let mut store = key_store(&h.config, h.dir.path());
    let rotated = store.rotate_terminal(&policy, now_ms, now_ms / 1000 + 600).expect("rotate");
    assert_eq!(rotated, 3);
    let started = Instant::now();
    while client.terminal_keys().len() != 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "the rotation was not pushed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let handed_out = h.server.issuer_keys().now().terminal_handed_out(now_ms / 1000 + 600).expect("handed out");
    assert_eq!(handed_out.key_id, 3, "the rotated key is handed out from its moment");
    client.close().await;
}
