//! `serve` in cluster mode (docs/scale-out.md) against a real three-server
//! NATS JetStream cluster on loopback: a batch is acked only once the
//! scans stream holds every row of it, a resend to another node adds
//! nothing, and without a quorum nothing is acked.

use std::time::Duration;

use farestream::config::Config;
use farestream::journal;
use farestream::scan::{ArchivedScan, ScanStatus};
use farestream::server::cluster_ingest::ClusterSettings;
use farestream_cluster::StreamLog;
use farestream_cluster::test_nats::NatsCluster;
use farestream_core::cluster::{Partition, partition_of_row};

use crate::support::{Harness, quick_failures, scans};

const PARTITIONS: u16 = 8;

fn cluster_config(nats: &NatsCluster) -> Config {
    let mut config = quick_failures(Config::defaults());
    config.cluster.enabled = true;
    config.cluster.nats_urls = nats.urls();
    config.cluster.partitions = PARTITIONS;
    config.cluster.append_ack_timeout_ms = 1_000;
    config
}

/// Every row in the scans stream, each checked to be in its partition.
async fn stream_rows(nats: &NatsCluster, config: &Config) -> Vec<ArchivedScan> {
    let settings = ClusterSettings::from_config(&config.cluster).expect("settings").expect("enabled");
    let log = StreamLog::open(nats.client().await, settings.stream).await.expect("the scans stream");
    let mut rows = Vec::new();
    for p in 0..PARTITIONS {
        let partition = Partition::new(p, PARTITIONS).expect("a partition");
        let mut reader = log.reader(partition, 1).await.expect("a reader");
        while let Some(record) = reader.next(Duration::from_millis(300)).await.expect("read") {
            let decoded = journal::decode(&record.payload).expect("a journal record");
            assert!(decoded.iter().all(|r| partition_of_row(r, PARTITIONS) == partition));
            rows.extend(decoded);
        }
    }
    rows.sort_by_key(|r| r.scan_id);
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_acked_once_the_stream_holds_it_and_its_resend_to_another_node_adds_nothing() {
    let Some(nats) = NatsCluster::start().await else { return };
    let config = cluster_config(&nats);
    let a = Harness::start_with(config.clone()).await;
    let b = a.start_a_copy().await;
    let batch = scans(&a, 1, 1, 40);

    let ack = a.client_as("station-01").push(&batch).await.expect("ack");
    assert_eq!((ack.accepted, ack.rejected, ack.redelivered), (40, 0, 0));
    let rows = stream_rows(&nats, &config).await;
    assert_eq!(rows.len(), 40, "every scan of the acked batch, once");
    assert!(rows.iter().all(|r| r.status == ScanStatus::Accepted && r.card_id.is_some()));
    let partitions: std::collections::BTreeSet<_> = rows.iter().map(|r| partition_of_row(r, PARTITIONS)).collect();
    assert!(partitions.len() > 1, "40 cards spread over the partitions: {partitions:?}");

    // The gateway lost the ack and resends to the other node.
    let again = b.client_as("station-01").push(&batch).await.expect("ack");
    assert_eq!(again.accepted, 40, "the ingest node has no history: the owner drops re-deliveries");
    assert_eq!(stream_rows(&nats, &config).await, rows, "JetStream dropped the resent records");

    // Nothing went to either node's own log.
    assert!(a.archive_rows().await.is_empty() && b.archive_rows().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_nothing_is_acked_and_the_resend_after_one_returns_is_stored_once() {
    let Some(mut nats) = NatsCluster::start().await else { return };
    let config = cluster_config(&nats);
    let h = Harness::start_with(config.clone()).await;
    let first = scans(&h, 1, 1, 10);
    h.client_as("station-01").push(&first).await.expect("ack while the cluster is whole");

    nats.kill(1);
    nats.kill(2);
    let second = scans(&h, 2, 11, 10);
    let refused = h.client_as("station-01").push(&second).await.expect_err("no quorum, no ack");
    assert_eq!(refused.kind(), "backoff", "{refused}");
    assert!(refused.to_string().contains("scans stream"), "{refused}");

    nats.restart(1).await;
    let mut acked = None;
    for _ in 0..30 {
        match h.client_as("station-01").push(&second).await {
            Ok(ack) => {
                acked = Some(ack);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let acked = acked.expect("acked once two of three servers are back");
    assert_eq!(acked.accepted, 10);
    // The scans' validator sequence numbers are their cards, 1 to 20.
    let mut seqs: Vec<u64> = stream_rows(&nats, &config).await.iter().map(|r| r.validator_seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>(), "each acked scan once");
}
