//! Bad input on the wire: each gets an error ack naming what is wrong, and
//! the connection carries the next batch as if nothing happened.

use std::time::Duration;

use farestream::config::Config;
use farestream::gateway::tls::{SERVER_NAME, client_config};
use farestream::scan::{ScanStatus, TapKind};
use farestream::wire::{AckStatus, BatchAck, ScanBatch, encode_frame, read_message};

use crate::support::{Harness, T0_MS, batch, copy_fleet_ca, record, test_assembly};

/// A raw QUIC connection, so the test can send what no client would.
async fn connect(h: &Harness) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let credentials = h.credentials("station-01");
    endpoint.set_default_client_config(client_config(&h.identity.cert, &credentials).expect("client config"));
    endpoint.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await.expect("handshake")
}

/// Sends `bytes` on a new stream and reads the ack.
pub(crate) async fn exchange(connection: &quinn::Connection, bytes: &[u8]) -> BatchAck {
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
    let config = h.config.clone();
    let batch = valid_batch(&h, 1);
    let client = h.client_as("station-01");
    h.server.shutdown().await.expect("shutdown");

    let push = tokio::spawn({
        let client = client.clone();
        async move { client.push(&batch).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // A server restarted on the same port (same identity) takes the batch.
    let dir = tempfile::tempdir().expect("tempdir");
    copy_fleet_ca(h.dir.path(), dir.path());
    let assembly = test_assembly(&config, dir.path(), &h.identity, &h.clock).expect("assembly");
    let server = assembly.listen_on(addr).start().await.expect("restart");
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
    let first = h.client_as("station-01");
    assert_eq!(first.push(&valid_batch(&h, 1)).await.expect("first gateway").accepted, 1);
    let second = h.client_as("station-01");
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

/// Review fault 1, from outside: a one-scan batch whose time was chrono's
/// last millisecond stopped the server, and again on every resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_time_at_the_edge_of_time_is_malformed_and_the_server_carries_on() {
    let h = Harness::start().await;
    let client = h.client_as("station-01");
    let rider = h.rider(7);
    for (seq, at) in [(1u64, 8_210_266_876_799_999i64), (2, i64::MIN), (3, i64::MAX)] {
        let code = rider.code_at(T0_MS, seq as u32);
        let edge = batch("station-01", seq, vec![record("gate-1", seq, at, TapKind::Single, code)]);
        for _ in 0..2 {
            let ack = client.push(&edge).await.expect("answered, and again when resent");
            assert_eq!(ack.accepted + ack.rejected + ack.redelivered, 1);
        }
    }
    assert_eq!(client.push(&valid_batch(&h, 4)).await.expect("still serving").accepted, 1);
    assert!(h.server.failure().is_none());
    let rows = h.archive_rows().await;
    let malformed: Vec<_> = rows.iter().filter(|r| r.status == ScanStatus::Malformed).collect();
    assert_eq!((rows.len(), malformed.len()), (4, 3), "{rows:?}");
    assert!(malformed.iter().all(|r| r.reason.as_deref().is_some_and(|why| why.contains("validator_time_ms"))));
}

/// Review fault 5, from outside: a 256 KiB gateway_id in a batch of 8 000
/// one-byte codes took the server from 11 MB to 2.2 GB. Ids are bounded
/// (`wire.id_bytes_max`) and a batch-wide value is never copied per row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_ids_are_refused_by_name_and_limit() {
    let h = Harness::start().await;
    let connection = connect(&h).await;
    let max = h.config.wire.id_bytes_max;
    let mut hostile = batch("station-01", 1, vec![record("gate-1", 1, T0_MS, TapKind::Single, vec![1]); 8_000]);
    hostile.gateway_id = "g".repeat(256 * 1024);
    let ack = exchange(&connection, &encode_frame(&hostile)).await;
    assert_eq!(ack.ack_status(), AckStatus::Malformed);
    assert_eq!(ack.error, format!("gateway_id is 262144 bytes, the limit is {max}"));
    let mut long_stop = valid_batch(&h, 2);
    long_stop.scans[0].stop_id = "s".repeat(max + 1);
    let ack = exchange(&connection, &encode_frame(&long_stop)).await;
    assert_eq!((ack.ack_status(), ack.rejected), (AckStatus::Ok, 1));
    assert_eq!(ack.rejections[0].reason, format!("stop_id is {} bytes, the limit is {max}", max + 1));
    let rows = h.archive_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].stop_id.len(), max, "the archived copy is cut to the limit");
}

/// Review fault 6: a frame that arrived too slowly was answered MALFORMED,
/// which a gateway treats as final, so a valid batch on a slow link was
/// dropped. It is answered BACKOFF, and the resend is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_too_slow_to_arrive_is_answered_backoff_and_its_resend_is_taken() {
    let mut config = Config::defaults();
    config.wire.frame_read_timeout_ms = 300;
    let h = Harness::start_with(config).await;
    let connection = connect(&h).await;
    let frame = encode_frame(&valid_batch(&h, 1));
    for stalled_at in [2, frame.len() / 2] {
        let (mut send, mut recv) = connection.open_bi().await.expect("stream");
        send.write_all(&frame[..stalled_at]).await.expect("write");
        let ack = read_message::<BatchAck, _>(&mut recv, 1 << 20, "BatchAck").await.expect("ack frame");
        assert_eq!(ack.ack_status(), AckStatus::Backoff, "stalled after {stalled_at} bytes: {ack:?}");
        assert!(ack.error.contains("within 300 ms") && ack.retry_after_ms > 0, "{ack:?}");
    }
    let resent = exchange(&connection, &frame).await;
    assert_eq!((resent.ack_status(), resent.accepted), (AckStatus::Ok, 1));
}

/// Suspected in the review: frames were read and decoded before any
/// limit applied, so 4 096 streams could hold 4 MiB each. A frame now
/// needs room in `server.frames_in_flight_bytes_max` before its body is
/// read; a stream that cannot get room in time is answered BACKOFF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_wait_for_room_in_the_frame_budget() {
    let mut config = Config::defaults();
    config.wire.frame_bytes_max = 64 * 1024;
    config.server.frames_in_flight_bytes_max = 64 * 1024;
    config.wire.frame_read_timeout_ms = 300;
    config.wal.ack_wait_ms_max = 2_000;
    config.wal.disk_full_retry_ms = 50;
    let h = Harness::start_with(config).await;
    let connection = connect(&h).await;
    // About 42 KB: a valid scan and 200 junk codes, all claimed and logged.
    let mut big = valid_batch(&h, 1);
    big.scans.extend((0..200).map(|i| record("gate-9", i, T0_MS, TapKind::Single, vec![9; 189])));
    let big_frame = encode_frame(&big);
    assert!(big_frame.len() > 32 * 1024, "{}", big_frame.len());
    // While the disk is full the first batch holds its room until its ack
    // wait runs out; the second cannot get room within its read timeout.
    h.faults.set_disk_full(true);
    let holder = tokio::spawn({
        let connection = connection.clone();
        let frame = big_frame.clone();
        async move { exchange(&connection, &frame).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = big.clone();
    second.batch_seq = 2;
    second.scans.iter_mut().for_each(|s| s.validator_seq += 1_000);
    let crowded = exchange(&connection, &encode_frame(&second)).await;
    assert_eq!(crowded.ack_status(), AckStatus::Backoff, "{crowded:?}");
    assert!(crowded.error.contains("no room"), "{crowded:?}");
    assert_eq!(holder.await.expect("task").ack_status(), AckStatus::Backoff, "not durable while the disk is full");
    h.faults.set_disk_full(false);
    for _ in 0..100 {
        if h.server.wal_progress().state == farestream::wal::committer::WalState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken = exchange(&connection, &encode_frame(&second)).await;
    assert_eq!(taken.ack_status(), AckStatus::Ok, "room again once the first batch was answered: {taken:?}");
}
