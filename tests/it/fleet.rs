//! Only enrolled gateways push: mutual TLS against the fleet CA, the
//! gateway id and its validators taken from the certificate, revocation
//! while connected, no 0-RTT. Each hostile attempt runs beside an enrolled
//! gateway whose acked scans must all be archived, once.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::PrivateKeyDer;

use farestream::config::Config;
use farestream::faults::Faults;
use farestream::fleet::GatewayScope;
use farestream::fleet_ca::FleetCa;
use farestream::gateway::GatewayError;
use farestream::gateway::tls::{GatewayCredentials, SERVER_NAME};
use farestream::scan::{ScanStatus, TapKind};
use farestream::wire::{ALPN, AckStatus, BatchAck, ScanBatch, close_code, encode_frame, read_message};

use crate::support::{GATEWAY, Harness, T0_MS, batch, record};

/// A raw QUIC client presenting `credentials` (or none), trusting the
/// server's certificate; `early_data` offers 0-RTT when it can.
fn raw_endpoint(h: &Harness, credentials: Option<&GatewayCredentials>, early_data: bool) -> quinn::Endpoint {
    raw_endpoint_at(h, credentials, early_data, "127.0.0.1")
}

/// The same from a source address of its own (any 127.x.y.z is loopback),
/// PINGing every 100 ms as a client that holds its connections would.
pub(crate) fn raw_endpoint_at(
    h: &Harness,
    credentials: Option<&GatewayCredentials>,
    early_data: bool,
    source_ip: &str,
) -> quinn::Endpoint {
    raw_endpoint_speaking(h, credentials, (early_data, source_ip), ALPN)
}

/// The same, offering only the ALPN protocol `alpn`.
pub(crate) fn raw_endpoint_speaking(
    h: &Harness,
    credentials: Option<&GatewayCredentials>,
    (early_data, source_ip): (bool, &str),
    alpn: &[u8],
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(h.identity.cert.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut crypto = match credentials {
        Some(c) => builder
            .with_client_auth_cert(vec![c.cert.clone()], PrivateKeyDer::Pkcs8(c.key.clone_key()))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    crypto.alpn_protocols = vec![alpn.to_vec()];
    crypto.enable_early_data = early_data;
    let crypto = QuicClientConfig::try_from(crypto).expect("quic crypto");
    let mut endpoint = quinn::Endpoint::client(format!("{source_ip}:0").parse().expect("addr")).expect("endpoint");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(100)));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    endpoint
}

/// Connects and sends `batch` on one stream: the ack, or why there was none.
pub(crate) async fn push_raw(endpoint: &quinn::Endpoint, h: &Harness, batch: &ScanBatch) -> Result<BatchAck, String> {
    let attempt = async {
        let connecting = endpoint.connect(h.server.local_addr(), SERVER_NAME).map_err(|e| e.to_string())?;
        let connection = connecting.await.map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| format!("stream: {e}"))?;
        send.write_all(&encode_frame(batch)).await.map_err(|e| format!("write: {e}"))?;
        let _ = send.finish();
        read_message::<BatchAck, _>(&mut recv, 1 << 20, "BatchAck").await.map_err(|e| format!("ack: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt).await.map_err(|_| "no answer in 10 s".to_string())?
}

pub(crate) fn one_scan(h: &Harness, gateway: &str, validator: &str, seq: u64) -> ScanBatch {
    let rider = h.rider(700 + seq);
    batch(gateway, seq, vec![record(validator, seq, T0_MS, TapKind::Single, rider.code_at(T0_MS, 1))])
}

/// Every scan the enrolled gateway was acked is archived exactly once, and
/// nothing any other peer sent is.
pub(crate) async fn only_the_honest_scans_are_archived(h: &Harness, honest_acked: u64) {
    let rows = h.archive_rows().await;
    assert_eq!(rows.len() as u64, honest_acked, "{rows:?}");
    assert!(rows.iter().all(|r| &*r.gateway_id == GATEWAY), "{rows:?}");
    let mut ids: Vec<_> = rows.iter().map(|r| r.scan_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "a scan archived twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_an_enrolled_certificate_cannot_push() {
    let h = Harness::start().await;
    let honest = h.client();
    let mut acked = 0;
    // Another fleet's CA, enrolling a gateway with the same name.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    FleetCa::create_if_absent(elsewhere.path(), chrono::Utc::now().timestamp(), &Faults::default()).expect("CA");
    let scope = GatewayScope::new(GATEWAY, vec![String::new()]).expect("scope");
    let foreign =
        FleetCa::enrolled_here(elsewhere.path(), &scope, 30, chrono::Utc::now().timestamp()).expect("foreign");
    let attempts = [("no client certificate", None), ("a certificate from another CA", Some(&foreign))];
    for (seq, (what, credentials)) in (1u64..).zip(attempts) {
        let endpoint = raw_endpoint(&h, credentials, false);
        let refused = push_raw(&endpoint, &h, &one_scan(&h, GATEWAY, "gate-1", seq)).await;
        assert!(refused.is_err(), "{what}: pushed {refused:?}");
        let ack = honest.push(&one_scan(&h, GATEWAY, "gate-1", 100 + seq)).await.expect("the enrolled gateway");
        acked += u64::from(ack.accepted);
    }
    assert_eq!(acked, 2);
    only_the_honest_scans_are_archived(&h, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claiming_another_gateway_and_a_scan_of_another_gateways_validator_are_refused() {
    let h = Harness::start().await;
    // depot-1 speaks for every validator; depot-2 only for its own.
    let honest = h.client();
    let depot_2 = h.client_for(&GatewayScope::new("depot-2", vec!["depot-2-".into()]).expect("scope"));

    let forged = depot_2.push(&one_scan(&h, GATEWAY, "depot-2-gate", 1)).await;
    match forged {
        Err(GatewayError::Malformed { error, .. }) => {
            assert!(error.contains("gateway_id is not \"depot-2\""), "{error}");
        }
        other => panic!("a forged gateway id was not refused: {other:?}"),
    }
    let foreign = depot_2.push(&one_scan(&h, "depot-2", "depot-1-gate", 2)).await.expect("an ack");
    assert_eq!(foreign.accepted, 0);
    assert_eq!(foreign.rejections[0].scan_status(), Some(ScanStatus::ForeignValidator));
    let own = depot_2.push(&one_scan(&h, "depot-2", "depot-2-gate", 3)).await.expect("an ack");
    assert_eq!(own.accepted, 1);
    let honest_ack = honest.push(&one_scan(&h, GATEWAY, "depot-2-gate", 4)).await.expect("ack");
    assert_eq!(honest_ack.accepted, 1);

    let rows = h.archive_rows().await;
    let statuses: Vec<_> = rows.iter().map(|r| (&*r.gateway_id, r.validator_id.as_str(), r.status)).collect();
    assert_eq!(rows.len(), 3, "the forged batch archived nothing: {statuses:?}");
    assert!(statuses.contains(&("depot-2", "depot-1-gate", ScanStatus::ForeignValidator)), "{statuses:?}");
    assert!(statuses.contains(&("depot-2", "depot-2-gate", ScanStatus::Accepted)), "{statuses:?}");
    assert!(statuses.contains(&(GATEWAY, "depot-2-gate", ScanStatus::Accepted)), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_revoked_while_connected_is_closed_and_refused_and_others_push_on() {
    let mut config = Config::defaults();
    config.fleet.revocation_check_interval_ms = 100;
    let h = Harness::start_with(config).await;
    let honest = h.client();
    let doomed_credentials = h.credentials("depot-9");
    let endpoint = raw_endpoint(&h, Some(&doomed_credentials), false);
    let ack = push_raw(&endpoint, &h, &one_scan(&h, "depot-9", "gate-1", 1)).await.expect("pushes before");
    assert_eq!(ack.ack_status(), AckStatus::Ok);
    let connection =
        endpoint.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await.expect("still enrolled");

    let ca = FleetCa::open(h.dir.path()).expect("CA");
    assert_eq!(ca.revoke("depot-9", chrono::Utc::now().timestamp(), &Faults::default()).expect("revoke").len(), 1);
    let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await.expect("closed within 5 s");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, close_code::REVOKED.into(), "{close:?}");
        }
        other => panic!("closed for another reason: {other:?}"),
    }
    let refused = push_raw(&endpoint, &h, &one_scan(&h, "depot-9", "gate-1", 2)).await;
    assert!(refused.is_err(), "a revoked gateway pushed: {refused:?}");
    let ack = honest.push(&one_scan(&h, GATEWAY, "gate-1", 3)).await.expect("the others push on");
    assert_eq!(ack.accepted, 1);
    let rows = h.archive_rows().await;
    assert_eq!(rows.iter().filter(|r| &*r.gateway_id == "depot-9").count(), 1, "only the batch from before");
    assert_eq!(rows.len(), 2);
}

/// 0-RTT data can be replayed by whoever recorded it: the server never
/// offers it, so even a client that asks for it sends its batch in a
/// full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_accepts_0_rtt() {
    let h = Harness::start().await;
    let credentials = h.credentials(GATEWAY);
    let endpoint = raw_endpoint(&h, Some(&credentials), true);
    let first = push_raw(&endpoint, &h, &one_scan(&h, GATEWAY, "gate-1", 1)).await.expect("a full handshake");
    assert_eq!(first.accepted, 1);
    // The session ticket from the first connection would allow 0-RTT had
    // the server offered early data.
    let connecting = endpoint.connect(h.server.local_addr(), SERVER_NAME).expect("connect");
    assert!(connecting.into_0rtt().is_err(), "the server offered 0-RTT");
    only_the_honest_scans_are_archived(&h, 1).await;
}

/// Review: on a data dir that has served, a lost `fleet/` made a new CA
/// silently, and every enrolled gateway was refused with no explanation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_that_served_does_not_get_a_new_fleet_ca_silently() {
    let h = Harness::start().await;
    h.server.shutdown().await.expect("shutdown");
    std::fs::rename(h.dir.path().join("fleet"), h.dir.path().join("fleet.lost")).expect("lose it");
    let refused = crate::support::test_assembly(&h.config, h.dir.path(), &h.identity, &h.clock)
        .err()
        .expect("refused to start")
        .to_string();
    assert!(refused.contains("no fleet CA") && refused.contains("keys ca"), "{refused}");
    assert!(!h.dir.path().join("fleet").exists(), "no CA was made");
}
