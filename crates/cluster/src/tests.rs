//! Against a real three-server JetStream cluster on loopback
//! (`test_nats`): what the stream acknowledges is what a reader gets back
//! after servers die, and a lease has one owner at a time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use farestream_core::cluster::{LeaseTiming, Partition};

use crate::test_nats::NatsCluster;
use crate::{LeaseError, LeaseSettings, PartitionLeases, StreamLog, StreamLogError, StreamLogSettings, StreamRecord};

fn settings(stream: &str) -> StreamLogSettings {
    StreamLogSettings {
        stream: stream.to_string(),
        subject_prefix: format!("test.{stream}"),
        partitions: 4,
        replicas: 3,
        duplicate_window: Duration::from_secs(120),
        ack_timeout: Duration::from_secs(2),
        record_bytes_max: 4_096,
    }
}

fn record(n: u32) -> StreamRecord {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    StreamRecord {
        partition: Partition::new((n % 4) as u16, 4).expect("partition"),
        id,
        payload: Bytes::from(format!("record {n}")),
    }
}

/// Every record of partition `p` from `from` on, until none comes for a
/// second.
async fn read_all(log: &StreamLog, p: u16, from: u64) -> Vec<(u64, String)> {
    let mut reader = log.reader(Partition::new(p, 4).expect("partition"), from).await.expect("reader");
    let mut out = Vec::new();
    while let Some(r) = reader.next(Duration::from_secs(1)).await.expect("read") {
        out.push((r.sequence, String::from_utf8(r.payload.to_vec()).expect("utf-8")));
    }
    out
}

/// Appends, trying again under the same ids while the cluster elects a
/// leader, up to `within`.
async fn append_until_acked(log: &StreamLog, records: &[StreamRecord], within: Duration) -> Vec<crate::Appended> {
    let deadline = Instant::now() + within;
    loop {
        match log.append(records).await {
            Ok(appended) => return appended,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet acknowledged, again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("not acknowledged within {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_read_back_per_partition_in_order() {
    let Some(cluster) = NatsCluster::start().await else { return };
    let log = StreamLog::open(cluster.client().await, settings("ORDER")).await.expect("open");
    let records: Vec<StreamRecord> = (0..40).map(record).collect();
    let appended = log.append(&records).await.expect("append");
    let sequences: Vec<u64> = appended.iter().map(|a| a.sequence).collect();
    assert_eq!(sequences, (1..=40).collect::<Vec<u64>>(), "one sequence a record, in order");
    assert!(appended.iter().all(|a| !a.duplicate));

    let partition_2 = read_all(&log, 2, 1).await;
    let expected: Vec<(u64, String)> =
        (0..40u32).filter(|n| n % 4 == 2).map(|n| (u64::from(n) + 1, format!("record {n}"))).collect();
    assert_eq!(partition_2, expected, "partition 2's records only, in order");
    let from_20 = read_all(&log, 2, 20).await;
    assert_eq!(from_20, expected.iter().filter(|(s, _)| *s >= 20).cloned().collect::<Vec<_>>(), "from a sequence on");
    assert!(read_all(&log, 2, 41).await.is_empty(), "nothing past the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_published_again_under_its_id_is_stored_once() {
    let Some(cluster) = NatsCluster::start().await else { return };
    let log = StreamLog::open(cluster.client().await, settings("AGAIN")).await.expect("open");
    let first = log.append(&[record(1)]).await.expect("append");
    // A batch retried after its acknowledgement was lost, with one record more.
    let again = log.append(&[record(1), record(5)]).await.expect("append again");
    assert_eq!(again[0].sequence, first[0].sequence);
    assert!(again[0].duplicate, "the same id within the window is a duplicate");
    assert!(!again[1].duplicate);
    let read = read_all(&log, 1, 1).await;
    assert_eq!(read.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>(), vec!["record 1", "record 5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_a_killed_server_and_appends_go_on() {
    let Some(mut cluster) = NatsCluster::start().await else { return };
    let client = cluster.client().await;
    let log = StreamLog::open(client.clone(), settings("SURVIVE")).await.expect("open");
    let before: Vec<StreamRecord> = (0..20).map(record).collect();
    log.append(&before).await.expect("append");
    // Kill the stream's leader, the server the acknowledgements came from.
    let context = async_nats::jetstream::new(client);
    let mut stream = context.get_stream("SURVIVE").await.expect("stream");
    let leader = stream.info().await.expect("info").cluster.as_ref().and_then(|c| c.leader.clone()).expect("a leader");
    let index = leader.trim_start_matches('n').parse::<usize>().expect("n1 to n3") - 1;
    cluster.kill(index);

    let after: Vec<StreamRecord> = (20..40).map(record).collect();
    let appended = append_until_acked(&log, &after, Duration::from_secs(30)).await;
    assert_eq!(appended.len(), 20);
    for p in 0..4u16 {
        let read = read_all(&log, p, 1).await;
        let expected: Vec<String> =
            (0..40u32).filter(|n| n % 4 == u32::from(p)).map(|n| format!("record {n}")).collect();
        assert_eq!(
            read.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            expected,
            "partition {p}: each once, in order"
        );
    }
    cluster.restart(index).await;
    let read = read_all(&log, 0, 1).await;
    assert_eq!(read.len(), 10, "the restarted server changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_nothing_is_acknowledged_and_the_retry_is_stored_once() {
    let Some(mut cluster) = NatsCluster::start().await else { return };
    let log = StreamLog::open(cluster.client().await, settings("QUORUM")).await.expect("open");
    log.append(&[record(0)]).await.expect("append");
    // Which two die does not matter: one of three is no majority.
    cluster.kill(0);
    cluster.kill(1);
    let refused = log.append(&[record(4)]).await;
    assert!(
        matches!(refused, Err(StreamLogError::NotAcknowledged { .. })),
        "one server of three acknowledged: {refused:?}"
    );
    cluster.restart(0).await;
    // The batch is sent again under the same id, as a gateway retries.
    append_until_acked(&log, &[record(4)], Duration::from_secs(30)).await;
    let read = read_all(&log, 0, 1).await;
    assert_eq!(read.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(), vec!["record 0", "record 4"], "once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_records_out_of_bounds_are_refused() {
    let Some(cluster) = NatsCluster::start().await else { return };
    let client = cluster.client().await;
    for (bad, why) in [
        (StreamLogSettings { partitions: 0, ..settings("BAD") }, "partitions"),
        (StreamLogSettings { partitions: 4_097, ..settings("BAD") }, "partitions"),
        (StreamLogSettings { replicas: 2, ..settings("BAD") }, "replicas"),
        (StreamLogSettings { replicas: 0, ..settings("BAD") }, "replicas"),
        (StreamLogSettings { stream: String::new(), ..settings("BAD") }, "stream name"),
        (StreamLogSettings { stream: "A.B".into(), ..settings("BAD") }, "stream name"),
        (StreamLogSettings { subject_prefix: "a.*".into(), ..settings("BAD") }, "subject prefix"),
        (StreamLogSettings { subject_prefix: "a..b".into(), ..settings("BAD") }, "subject prefix"),
        (StreamLogSettings { record_bytes_max: 0, ..settings("BAD") }, "record_bytes_max"),
    ] {
        match StreamLog::open(client.clone(), bad).await {
            Err(StreamLogError::Settings(message)) => assert!(message.contains(why), "{message}"),
            other => panic!("{why}: {:?}", other.map(|_| ())),
        }
    }
    StreamLog::open(client.clone(), settings("SHAPE")).await.expect("made with 3 replicas");
    let other = StreamLog::open(client.clone(), StreamLogSettings { replicas: 1, ..settings("SHAPE") }).await;
    assert!(matches!(other, Err(StreamLogError::Mismatch { .. })), "{:?}", other.map(|_| ()));

    let log = StreamLog::open(client, settings("SIZE")).await.expect("open");
    let at_max = StreamRecord { payload: Bytes::from(vec![7u8; 4_096]), ..record(0) };
    log.append(&[at_max]).await.expect("a record of exactly the most bytes");
    let over = StreamRecord { payload: Bytes::from(vec![7u8; 4_097]), ..record(1) };
    let refused = log.append(&[record(2), over]).await;
    assert!(matches!(refused, Err(StreamLogError::RecordTooLarge { bytes: 4_097, max: 4_096 })));
    let empty = StreamRecord { payload: Bytes::new(), ..record(3) };
    log.append(&[empty]).await.expect("an empty record");
    assert_eq!(read_all(&log, 2, 1).await.len(), 0, "nothing of the refused batch was published");
    assert_eq!(read_all(&log, 3, 1).await, vec![(2, String::new())]);
}

#[test]
fn the_servers_version_is_read_from_its_banner() {
    use crate::test_nats::parse_version;
    assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15)));
    assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
    assert_eq!(parse_version(""), None);
    assert_eq!(parse_version("nats-server: vX.Y"), None);
}

fn lease_settings() -> LeaseSettings {
    LeaseSettings {
        bucket: "test_leases".to_string(),
        replicas: 3,
        timing: LeaseTiming { ttl_ms: 3_000, renew_every_ms: 1_000, safety_margin_ms: 500 },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_has_one_owner_and_a_lost_lease_is_never_renewed() {
    let Some(cluster) = NatsCluster::start().await else { return };
    let a = PartitionLeases::open(cluster.client().await, lease_settings(), "node-a").await.expect("a");
    let b = PartitionLeases::open(cluster.client().await, lease_settings(), "node-b").await.expect("b");
    let p0 = Partition::new(0, 4).expect("p0");
    let p1 = Partition::new(1, 4).expect("p1");

    let first = a.acquire(p0).await.expect("a takes p0");
    match b.acquire(p0).await {
        Err(LeaseError::Held { owner, revision, .. }) => {
            assert_eq!((owner.as_str(), revision), ("node-a", first.revision))
        }
        other => panic!("b took a held lease: {other:?}"),
    }
    let renewed = a.renew(p0, &first).await.expect("a renews");
    assert!(renewed.revision > first.revision, "the fencing token only grows");
    assert!(matches!(a.renew(p0, &first).await, Err(LeaseError::Lost { .. })), "an older term cannot renew");
    b.acquire(p1).await.expect("another partition is free");

    // a stops renewing (a paused node); b gets p0 once it ages out, and
    // by then a's own clock has told it to stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    let taken = loop {
        match b.acquire(p0).await {
            Ok(term) => break term,
            Err(LeaseError::Held { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("b never took p0: {e}"),
        }
    };
    assert!(!renewed.holds(a.now_ms()), "a acted past the moment the store could give its lease away");
    assert!(taken.revision > renewed.revision);
    assert!(matches!(a.renew(p0, &renewed).await, Err(LeaseError::Lost { .. })), "the paused owner is fenced out");
    assert_eq!(a.holder(p0).await.expect("holder"), Some(("node-b".to_string(), taken.revision)));

    // Released, it is free at once.
    b.release(p0, &taken).await.expect("release");
    let back = a.acquire(p0).await.expect("a takes it back");
    assert!(back.revision > taken.revision);
    assert!(b.release(p0, &taken).await.is_err(), "b cannot release a's lease");
    assert_eq!(a.holder(p0).await.expect("holder"), Some(("node-a".to_string(), back.revision)));
}
