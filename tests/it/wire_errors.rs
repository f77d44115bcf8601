//! Bad input on the wire: each gets an error ack naming what is wrong, and
//! the connection carries the next batch as if nothing happened.

use farestream::config::Config;
use farestream::scan::TapKind;
use farestream::tls::{SERVER_NAME, client_config};
use farestream::wire::{AckStatus, BatchAck, ScanBatch, encode_frame, read_message};

use crate::support::{Harness, T0_MS, batch, record};

/// A raw QUIC connection, so the test can send what no client would.
async fn connect(h: &Harness) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(client_config(&h.identity.cert).expect("client config"));
    endpoint.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await.expect("handshake")
}

/// Sends `bytes` on a new stream and reads the ack.
async fn exchange(connection: &quinn::Connection, bytes: &[u8]) -> BatchAck {
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    read_message::<BatchAck, _>(&mut recv, 1 << 20, "BatchAck").await.expect("ack frame")
}

fn valid_batch(h: &Harness, seq: u64) -> ScanBatch {
    let rider = h.rider(100 + seq);
    batch("station-01", seq, vec![record("gate-1", seq, T0_MS, TapKind::Entry, rider.code_at(T0_MS, 1))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batches_get_an_error_and_the_connection_carries_on() {
    let mut config = Config::defaults();
    config.wire.batch_scans_max = 3;
    config.wire.frame_bytes_max = 64 * 1024;
    let h = Harness::start_with(config).await;
    let connection = connect(&h).await;

    let mut not_protobuf = 4u32.to_be_bytes().to_vec();
    not_protobuf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    let too_large = (1u32 << 30).to_be_bytes();
    let too_many = batch("station-01", 1, vec![valid_batch(&h, 1).scans[0].clone(); 4]);
    let no_gateway = batch("", 1, valid_batch(&h, 1).scans);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", not_protobuf, "not a valid ScanBatch"),
        ("huge length", too_large.to_vec(), "over the limit of 65536 bytes"),
        ("truncated", vec![0, 0, 1], "stream ended inside a frame"),
        ("too many scans", encode_frame(&too_many), "batch has 4 scans, the limit is 3"),
        ("no gateway id", encode_frame(&no_gateway), "gateway_id is empty"),
    ];
    for (seq, (name, bytes, expected_error)) in cases.into_iter().enumerate() {
        let ack = exchange(&connection, &bytes).await;
        assert_eq!(ack.ack_status(), AckStatus::Malformed, "{name}");
        assert!(ack.error.contains(expected_error), "{name}: {:?}", ack.error);
        let good = exchange(&connection, &encode_frame(&valid_batch(&h, seq as u64 + 10))).await;
        assert_eq!((good.ack_status(), good.accepted), (AckStatus::Ok, 1), "after {name}: {good:?}");
    }
    assert!(h.archive_rows().await.len() == 5, "only the good batches were archived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_client_retries_until_a_server_comes_up() {
    let mut config = Config::defaults();
    // Short enough that attempts time out while no server is there.
    config.gateway.connect_timeout_ms = 100;
    let h = Harness::start_with(config).await;
    let addr = h.server.local_addr();
    let cert = h.identity.cert.clone();
    let config = h.config.clone();
    let batch = valid_batch(&h, 1);
    h.server.shutdown().await.expect("shutdown");

    let settings = farestream::gateway::GatewaySettings::from_config(&config, addr);
    let client = farestream::gateway::GatewayClient::new(settings, &cert).expect("client");
    let push = tokio::spawn({
        let client = client.clone();
        async move { client.push(&batch).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // A server restarted on the same port (same identity) takes the batch.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut keys = farestream::ridecode::IssuerPublicKeys::new();
    keys.insert(crate::support::ISSUER_KEY_ID, h.issuer.public_key());
    let pipeline = std::sync::Arc::new(farestream::ingest::Pipeline::new(
        farestream::ingest::PipelineConfig::from_config(&config).expect("pipeline"),
        keys,
    ));
    let mut settings = farestream::server::ServerSettings::from_config(&config, dir.path()).expect("settings");
    settings.listen_addr = addr;
    let server =
        farestream::server::Server::start(settings, &h.identity, pipeline, h.clock.clone()).await.expect("restart");
    let ack = push.await.expect("task").expect("acked after retries");
    assert_eq!(ack.accepted, 1);
    assert!(client.retries() >= 1, "the first attempts failed");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_until_one_closes() {
    let mut config = Config::defaults();
    config.server.connections_max = 1;
    config.gateway.retry_attempts_max = 2;
    config.gateway.retry_backoff_ms_initial = 10;
    config.gateway.connect_timeout_ms = 500;
    let h = Harness::start_with(config).await;
    let first = h.client();
    assert_eq!(first.push(&valid_batch(&h, 1)).await.expect("first gateway").accepted, 1);
    let second = h.client();
    let refused = second.push(&valid_batch(&h, 2)).await.expect_err("over connections_max");
    assert!(refused.to_string().contains("connect"), "{refused}");
    first.close().await;
    // The server notices the close; then the slot is free again.
    let mut accepted = None;
    for _ in 0..20 {
        if let Ok(ack) = second.push(&valid_batch(&h, 2)).await {
            accepted = Some(ack.accepted);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(accepted, Some(1), "the second gateway gets in once the first has left");
}
