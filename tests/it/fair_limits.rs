//! Fair limits per peer and per gateway: a hostile peer holding every
//! connection it can get, PING-only connections, a gateway over its scan
//! rate. The offender is refused, slowed or closed; an enrolled gateway
//! pushing at the same time connects and loses nothing.

use std::time::{Duration, Instant};

use farestream::config::Config;
use farestream::gateway::GatewayError;
use farestream::gateway::tls::SERVER_NAME;
use farestream::wire::close_code;

use crate::fleet::{one_scan, only_the_honest_scans_are_archived, raw_endpoint_at};
use crate::support::{GATEWAY, Harness};

/// Why a connection ended: the server's application close code.
pub(crate) fn close_code_of(error: &quinn::ConnectionError) -> Option<u32> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => u32::try_from(close.error_code.into_inner()).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_every_connection_it_can_does_not_lock_out_an_enrolled_gateway() {
    let mut config = Config::defaults();
    config.server.connections_max = 8;
    config.server.connections_per_address_max = 4;
    config.server.connections_per_gateway_max = 2;
    config.server.batch_idle_timeout_ms = 2_000;
    let h = Harness::start_with(config).await;

    // A stolen certificate, from an address of its own: every connection
    // it can hold, kept alive with PINGs and no batch.
    let rogue_credentials = h.credentials("rogue");
    let rogue = raw_endpoint_at(&h, Some(&rogue_credentials), false, "127.0.0.2");
    let mut held = Vec::new();
    for _ in 0..8 {
        if let Ok(connecting) = rogue.connect(h.server.local_addr(), SERVER_NAME)
            && let Ok(connection) = connecting.await
        {
            held.push(connection);
        }
    }
    // Handshakes finish before the server reads who connected; the
    // connections over the gateway's limit are then closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open: Vec<_> = held.iter().filter(|c| c.close_reason().is_none()).collect();
    assert_eq!(open.len(), 2, "connections_per_gateway_max holds");
    let refused = held.iter().filter_map(|c| c.close_reason()).filter_map(|e| close_code_of(&e)).collect::<Vec<_>>();
    assert!(refused.iter().all(|&code| code == close_code::TOO_MANY_CONNECTIONS), "{refused:?}");

    // No certificate at all, from a third address, as fast as it can.
    let anonymous = raw_endpoint_at(&h, None, false, "127.0.0.3");
    let mut anonymous_pushed = 0;
    for seq in 0..20 {
        if crate::fleet::push_raw(&anonymous, &h, &one_scan(&h, GATEWAY, "gate-1", 500 + seq)).await.is_ok() {
            anonymous_pushed += 1;
        }
    }
    assert_eq!(anonymous_pushed, 0);

    // Meanwhile the enrolled gateway connects within its connect timeout
    // and every batch it pushes is acked.
    let honest = h.client();
    let started = Instant::now();
    let mut acked = 0;
    for seq in 1..=5 {
        acked += u64::from(honest.push(&one_scan(&h, GATEWAY, "gate-1", seq)).await.expect("acked").accepted);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(honest.connects(), 1);
    assert_eq!(acked, 5);

    // PINGs do not keep a connection that sends no batch.
    for connection in open {
        let ended = tokio::time::timeout(Duration::from_secs(10), connection.closed()).await.expect("closed");
        assert_eq!(close_code_of(&ended), Some(close_code::IDLE), "{ended:?}");
    }
    only_the_honest_scans_are_archived(&h, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_over_its_connection_limit_is_refused_and_others_connect() {
    let mut config = Config::defaults();
    config.server.connections_per_address_max = 2;
    let h = Harness::start_with(config).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for n in 0..4 {
        let credentials = h.credentials(&format!("depot-{}", 20 + n));
        let endpoint = raw_endpoint_at(&h, Some(&credentials), false, "127.0.0.4");
        match endpoint.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await {
            Ok(connection) => held.push((endpoint, connection)),
            Err(_) => refused += 1,
        }
    }
    assert_eq!((held.len(), refused), (2, 2), "connections_per_address_max holds");
    let ack = h.client().push(&one_scan(&h, GATEWAY, "gate-1", 1)).await.expect("another address connects");
    assert_eq!(ack.accepted, 1);
    only_the_honest_scans_are_archived(&h, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_over_its_scan_rate_is_told_to_back_off() {
    let mut config = Config::defaults();
    config.server.gateway_scans_per_sec_max = 1;
    config.wire.batch_scans_max = 2;
    config.gateway.retry_attempts_max = 1;
    let h = Harness::start_with(config).await;
    let client = h.client();
    let two = |gateway: &str, seq: u64| {
        let mut batch = one_scan(&h, gateway, "gate-1", seq);
        batch.scans.push(one_scan(&h, gateway, "gate-1", 100 + seq).scans.remove(0));
        batch
    };
    assert_eq!(client.push(&two(GATEWAY, 1)).await.expect("a full bucket takes a whole batch").accepted, 2);
    match client.push(&two(GATEWAY, 2)).await {
        Err(GatewayError::GaveUp { last_error, .. }) => {
            assert!(last_error.contains("gateway_scans_per_sec_max"), "{last_error}");
        }
        other => panic!("not slowed: {other:?}"),
    }
    // Another gateway's rate is its own.
    let other = h.client_as("depot-2");
    assert_eq!(other.push(&two("depot-2", 3)).await.expect("its own bucket").accepted, 2);
    let rows = h.archive_rows().await;
    assert_eq!(rows.len(), 4, "the refused batch archived nothing");
}

/// Review: the frame-bytes budget was taken before the gateway's own
/// limit, so one gateway announcing large frames and trickling them held
/// all of it, and every other gateway was answered BACKOFF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_announcing_large_frames_holds_only_its_own_share_of_the_frame_budget() {
    let mut config = Config::defaults();
    config.server.frames_in_flight_bytes_max = 2 * u64::from(config.wire.frame_bytes_max);
    config.server.gateway_batches_in_flight_max = 1;
    let h = Harness::start_with(config).await;
    let rogue_credentials = h.credentials("rogue");
    let rogue = raw_endpoint_at(&h, Some(&rogue_credentials), false, "127.0.0.2");
    let connection = rogue.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await.expect("enrolled");
    let mut streams = Vec::new();
    for _ in 0..8 {
        let (mut send, recv) = connection.open_bi().await.expect("stream");
        // A frame as large as allowed, announced and never sent.
        send.write_all(&h.config.wire.frame_bytes_max.to_be_bytes()).await.expect("header");
        streams.push((send, recv));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let honest = h.client();
    let started = Instant::now();
    let ack = honest.push(&one_scan(&h, GATEWAY, "gate-1", 1)).await.expect("acked");
    assert_eq!(ack.accepted, 1);
    assert_eq!(honest.retries(), 0, "answered at once, not told to back off");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    only_the_honest_scans_are_archived(&h, 1).await;
}

/// Review: TLS checks a certificate's dates at the handshake only, and
/// resumed sessions not even then; a gateway whose certificate ran out
/// kept pushing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_certificate_runs_out_is_closed_and_refused() {
    let h = Harness::start().await;
    let ca = farestream::fleet_ca::FleetCa::open(h.dir.path()).expect("CA");
    let scope = farestream::fleet::GatewayScope::new("depot-7", vec![String::new()]).expect("scope");
    // One day's certificate issued a day ago, less three seconds.
    let issued_at = chrono::Utc::now().timestamp() - 86_400 + 3;
    let out = h.dir.path().join("short-lived");
    let enrolled = ca.enroll(&scope, 1, issued_at, &out, &Default::default()).expect("enrol");
    let endpoint = raw_endpoint_at(&h, Some(&enrolled.credentials), false, "127.0.0.1");
    let ack = crate::fleet::push_raw(&endpoint, &h, &one_scan(&h, "depot-7", "gate-1", 1)).await.expect("in time");
    assert_eq!(ack.accepted, 1);
    let connection = endpoint.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await.expect("in time");
    let ended = tokio::time::timeout(Duration::from_secs(10), connection.closed()).await.expect("closed");
    assert_eq!(close_code_of(&ended), Some(close_code::CERTIFICATE_EXPIRED), "{ended:?}");
    let late = crate::fleet::push_raw(&endpoint, &h, &one_scan(&h, "depot-7", "gate-1", 2)).await;
    assert!(late.is_err(), "pushed after its certificate ran out: {late:?}");
    assert_eq!(h.archive_rows().await.len(), 1);
}

/// A UDP relay at `bind` to `server` that passes the first
/// `from_client_max` datagrams of its client and the first
/// `from_server_max` of the server, then drops everything: a handshake
/// that starts and stalls, as a hostile peer would leave one.
async fn stalling_relay(
    bind: &str,
    server: std::net::SocketAddr,
    from_client_max: usize,
    from_server_max: usize,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::UdpSocket::bind(format!("{bind}:0")).await.expect("relay socket");
    let relay = socket.local_addr().expect("relay address");
    let task = tokio::spawn(async move {
        let (mut client, mut passed) = (None, (0, 0));
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            if from == server {
                passed.1 += 1;
                if let (Some(client), true) = (client, passed.1 <= from_server_max) {
                    let _ = socket.send_to(&buf[..len], client).await;
                }
            } else {
                client = Some(from);
                passed.0 += 1;
                if passed.0 <= from_client_max {
                    let _ = socket.send_to(&buf[..len], server).await;
                }
            }
        }
    });
    (relay, task)
}

/// A handshake a peer at `staller_ip` starts through a stalling relay at
/// `relay_ip` (the address the server sees) and leaves unfinished; both
/// tasks end when it is dropped.
struct StalledHandshake {
    relay: tokio::task::JoinHandle<()>,
    connecting: tokio::task::JoinHandle<()>,
}

impl StalledHandshake {
    async fn start(
        h: &Harness,
        relay_ip: &str,
        staller_ip: &str,
        credentials: Option<&farestream::gateway::tls::GatewayCredentials>,
    ) -> StalledHandshake {
        let (relay_addr, relay) = stalling_relay(relay_ip, h.server.local_addr(), 2, 1).await;
        let staller = raw_endpoint_at(h, credentials, false, staller_ip);
        let connecting = staller.connect(relay_addr, SERVER_NAME).expect("connect");
        let connecting = tokio::spawn(async move {
            let _ = connecting.await;
            drop(staller);
        });
        StalledHandshake { relay, connecting }
    }
}

impl Drop for StalledHandshake {
    fn drop(&mut self) {
        self.relay.abort();
        self.connecting.abort();
    }
}

/// Review: that a stalled handshake holds its address's slot only for
/// `server.handshake_timeout_ms` was claimed and never shown. A peer
/// starts a handshake (its Initial, the server's retry, its Initial again)
/// and goes silent: its address is full until the deadline, then free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_holds_its_address_only_until_the_handshake_deadline() {
    let mut config = Config::defaults();
    config.server.connections_per_address_max = 1;
    config.server.handshake_timeout_ms = 1_500;
    let h = Harness::start_with(config).await;
    let timed_out = || crate::support::metric("farestream_connections_refused_total{reason=\"handshake_timeout\"}");
    let before = timed_out();
    let credentials = h.credentials("depot-stall");
    let _stalled = StalledHandshake::start(&h, "127.0.0.5", "127.0.0.6", Some(&credentials)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let credentials = h.credentials("depot-same-address");
    let neighbour = raw_endpoint_at(&h, Some(&credentials), false, "127.0.0.5");
    let started = Instant::now();
    let refused = neighbour.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await;
    assert!(refused.is_err(), "the stalled handshake holds the address's one slot");
    assert!(started.elapsed() < Duration::from_millis(1_000), "refused at once, not after the deadline");

    let deadline = Instant::now() + Duration::from_secs(20);
    while timed_out() <= before {
        assert!(Instant::now() < deadline, "the stalled handshake was never dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connection = neighbour.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await;
    assert!(connection.is_ok(), "the slot is free after the deadline: {:?}", connection.err());
    let ack = h.client().push(&one_scan(&h, GATEWAY, "gate-1", 1)).await.expect("an enrolled gateway pushes");
    assert_eq!(ack.accepted, 1);
    only_the_honest_scans_are_archived(&h, 1).await;
}

/// Review of issue 19: an unfinished handshake held a slot of
/// `server.connections_max`, so peers with no certificate at a few
/// addresses, stalling their handshakes, held every slot and no gateway
/// could reconnect. Handshakes have a pool of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_take_no_slot_of_a_gateway_that_proved_who_it_is() {
    let mut config = Config::defaults();
    config.server.connections_max = 2;
    config.server.handshake_timeout_ms = 20_000;
    let h = Harness::start_with(config).await;
    let stalls = [
        StalledHandshake::start(&h, "127.0.0.5", "127.0.0.6", None).await,
        StalledHandshake::start(&h, "127.0.0.7", "127.0.0.8", None).await,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let ack = h.client().push(&one_scan(&h, GATEWAY, "gate-1", 1)).await.expect("an enrolled gateway connects");
    assert_eq!(ack.accepted, 1);
    assert!(started.elapsed() < Duration::from_secs(5), "within its connect timeout: {:?}", started.elapsed());
    for stall in &stalls {
        assert!(!stall.connecting.is_finished(), "the stalled handshakes were still held");
    }
    only_the_honest_scans_are_archived(&h, 1).await;
}
