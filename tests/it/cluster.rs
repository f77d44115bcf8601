//! `serve` in cluster mode (docs/scale-out.md) against a real three-server
//! NATS JetStream cluster on loopback: a batch is acked only once the
//! scans stream holds every row of it, a resend to another node adds
//! nothing, and without a quorum nothing is acked.

use std::time::Duration;

use farestream::archive::read;
use farestream::config::Config;
use farestream::gateway::GatewayClient;
use farestream::journal;
use farestream::scan::TapKind;
use farestream::scan::{ArchivedScan, ScanStatus};
use farestream::server::cluster_ingest::ClusterSettings;
use farestream_cluster::StreamLog;
use farestream_cluster::test_nats::NatsCluster;
use farestream_core::cluster::segments::segment_file_range;
use farestream_core::cluster::{ClaimedEntry, ClaimedRecord, Partition, partition_of_row};

use crate::support::{Harness, T0_MS, batch, quick_failures, record, scans};

const PARTITIONS: u16 = 8;

/// How long a test waits for JetStream to take writes again once a
/// quorum of its servers is back.
const QUORUM_BACK_WAIT_MAX: Duration = Duration::from_secs(120);

/// A node's config in the test's cluster, its money in a new database
/// of the test's PostgreSQL; `None` (the test says so and passes) where
/// PostgreSQL is not installed and not required.
pub(crate) async fn cluster_config(nats: &NatsCluster) -> Option<Config> {
    let mut config = quick_failures(Config::defaults());
    config.payments.money_store = crate::money::postgres_database_url().await?;
    config.cluster.enabled = true;
    config.cluster.nats_urls = nats.urls();
    config.cluster.partitions = PARTITIONS;
    config.cluster.append_ack_timeout_ms = 1_000;
    config.cluster.segment_age_max_ms = 1_000;
    config.cluster.archive_dir = shared_archive(nats).display().to_string();
    config.cluster.keys_dir = nats.dir().join("keys").display().to_string();
    Some(config)
}

/// Node `name`'s `config` in a two-node cluster whose dead node's
/// partitions move within seconds (a lease lives 3 s).
pub(crate) fn quick_leases(mut config: Config, name: &str) -> Config {
    config.cluster.node_name = name.into();
    config.cluster.lease_ttl_ms = 3_000;
    config.cluster.lease_renew_interval_ms = 1_000;
    config.cluster.lease_safety_margin_ms = 500;
    config
}

/// The archive every node of the test's cluster shares.
fn shared_archive(nats: &NatsCluster) -> std::path::PathBuf {
    nats.dir().join("archive")
}

/// Every row of one of the cluster's streams (`claimed`: the claimed
/// stream, else the scans stream), sorted by scan id, each checked to be
/// in its partition, with the re-deliveries the claimed records count.
async fn rows_of(nats: &NatsCluster, config: &Config, claimed: bool) -> (Vec<ArchivedScan>, u32) {
    let settings = ClusterSettings::from_config(config).expect("settings").expect("enabled");
    let stream = if claimed { settings.claimed } else { settings.stream };
    let log = StreamLog::open(nats.client().await, stream).await.expect("the stream");
    let (mut rows, mut redelivered) = (Vec::new(), 0);
    for p in 0..PARTITIONS {
        let partition = Partition::new(p, PARTITIONS).expect("a partition");
        let mut reader = log.reader(partition, 1).await.expect("a reader");
        while let Some(stored) = reader.next(Duration::from_millis(300)).await.expect("read") {
            let record = match claimed {
                true => match ClaimedEntry::decode(&stored.payload).expect("a claimed record or a cut") {
                    ClaimedEntry::Rows(record) => record,
                    ClaimedEntry::Cut(_) => continue,
                },
                false => ClaimedRecord {
                    scans_sequence: stored.sequence,
                    redelivered: 0,
                    more_follow: false,
                    rows: journal::decode(&stored.payload).expect("a journal record"),
                },
            };
            assert!(record.rows.iter().all(|r| partition_of_row(r, PARTITIONS) == partition));
            redelivered += record.redelivered;
            rows.extend(record.rows);
        }
    }
    rows.sort_by_key(|r| r.scan_id);
    (rows, redelivered)
}

/// Every row in the scans stream.
pub(crate) async fn stream_rows(nats: &NatsCluster, config: &Config) -> Vec<ArchivedScan> {
    rows_of(nats, config, false).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_acked_once_the_stream_holds_it_and_its_resend_to_another_node_adds_nothing() {
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
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
    let Some(config) = cluster_config(&nats).await else { return };
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
    // How soon the stream has a leader again is JetStream's Raft election
    // (randomised timeouts of several seconds, longer on a loaded
    // machine), so the gateway resends as it would, until a deadline.
    let deadline = std::time::Instant::now() + QUORUM_BACK_WAIT_MAX;
    let acked = loop {
        match h.client_as("station-01").push(&second).await {
            Ok(ack) => break ack,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!(
                    "not acked {QUORUM_BACK_WAIT_MAX:?} after two of three servers were back: {e}\n{}",
                    nats.log_tails(4_000)
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    assert_eq!(acked.accepted, 10);
    // The scans' validator sequence numbers are their cards, 1 to 20.
    let mut seqs: Vec<u64> = stream_rows(&nats, &config).await.iter().map(|r| r.validator_seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>(), "each acked scan once");
}

/// Every row in the claimed stream, sorted by scan id, with the count of
/// re-deliveries the owners dropped.
async fn claimed_rows(nats: &NatsCluster, config: &Config) -> (Vec<ArchivedScan>, u32) {
    rows_of(nats, config, true).await
}

/// The claimed stream once it holds `rows` rows (or after a minute).
async fn claimed_once_it_holds(nats: &NatsCluster, config: &Config, rows: usize) -> (Vec<ArchivedScan>, u32) {
    looked_at_until(async || claimed_rows(nats, config).await, |claimed| claimed.0.len() >= rows).await
}

/// What `look` sees once `enough` holds of it, or after a minute (the
/// caller's assertions then say what is missing); a look every 200 ms.
pub(crate) async fn looked_at_until<T>(mut look: impl AsyncFnMut() -> T, enough: impl Fn(&T) -> bool) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = look().await;
        if enough(&seen) || std::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn replays(rows: &[ArchivedScan]) -> Vec<(String, u64)> {
    rows.iter().filter(|r| r.status == ScanStatus::Replay).map(|r| (r.validator_id.clone(), r.validator_seq)).collect()
}

/// Two nodes share the partitions and claim every acked scan once: a code
/// shown at both nodes is one ride and one replay, a batch resent to the
/// other node adds nothing. Then one node dies (its leases age out) and
/// the other claims everything after, its partitions included: a code
/// of the dead node's time replayed now is caught, a scan it claimed
/// re-delivered now is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_claim_each_acked_scan_once_and_a_dead_nodes_partitions_move_to_the_other() {
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let named = |name: &str| quick_leases(config.clone(), name);
    let a = Harness::start_with(named("node-a")).await;
    let b = a.start_a_copy_with(named("node-b")).await;

    let first = scans(&a, 1, 1, 20);
    a.client_as("station-01").push(&first).await.expect("ack");
    let copy = record("gate-9", 1, T0_MS + 5_000, TapKind::Entry, a.rider(1).code_at(T0_MS, 1));
    b.client_as("station-02").push(&batch("station-02", 1, vec![copy])).await.expect("ack");
    b.client_as("station-01").push(&first).await.expect("the lost ack's resend");
    let (rows, redelivered) = claimed_once_it_holds(&nats, &config, 21).await;
    assert_eq!((rows.len(), redelivered), (21, 0), "each scan once; JetStream dropped the resend");
    assert_eq!(replays(&rows), vec![("gate-9".to_string(), 1)], "one ride, one replay");

    let died = std::time::Instant::now();
    a.server.abandon().await;
    let mut later = scans(&b, 2, 21, 10).scans;
    later.push(first.scans[5].clone()); // card 6's tap, re-delivered in another batch
    later.push(record("gate-8", 5, T0_MS + 6_000, TapKind::Entry, b.rider(5).code_at(T0_MS, 1)));
    b.client_as("station-01").push(&batch("station-01", 2, later)).await.expect("ack");
    let (rows, redelivered) = claimed_once_it_holds(&nats, &config, 32).await;
    let moved_after = died.elapsed();
    assert_eq!((rows.len(), redelivered), (32, 1), "the ten new taps and the replay; the re-delivery dropped");
    assert_eq!(replays(&rows), vec![("gate-9".to_string(), 1), ("gate-8".to_string(), 5)]);
    let mut ids: Vec<[u8; 16]> = rows.iter().map(|r| r.scan_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 32, "no scan claimed twice");
    println!("every partition claimed {moved_after:?} after a node died (lease time to live 3 s)");

    // The segments end a second of the nodes' clock after their last cut:
    // the shared archive then holds the claimed rows, each once, the dead
    // node's partitions' included.
    let archived = archived_once_it_holds(&nats, &b, 32).await;
    assert_eq!(archived, rows, "the claimed rows, verdicts and all, each once");
}

/// Retention (docs/scale-out.md): once every partition's archive, pricing
/// and two checkpoints have passed the first batch, the streams give it
/// up. A dead node's partitions are then rebuilt from their checkpoints
/// alone, and still drop a tap of that batch re-delivered and catch its
/// code replayed; the shared archive holds each scan once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_streams_gave_up_what_every_reader_passed_a_failover_still_catches_resends_and_replays() {
    use farestream::clock_source::Clock;
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(mut config) = cluster_config(&nats).await else { return };
    config.cluster.claim_checkpoint_interval_ms = 1_000;
    let named = |name: &str| quick_leases(config.clone(), name);
    let a = Harness::start_with(named("node-a")).await;
    let b = a.start_a_copy_with(named("node-b")).await;
    let first = scans(&a, 1, 1, 20);
    a.client_as("station-01").push(&first).await.expect("ack");
    assert_eq!(archived_once_it_holds(&nats, &a, 20).await.len(), 20);
    let held = async || {
        a.clock.set(a.clock.now_ms() + 2_000);
        (stream_rows(&nats, &config).await.len(), claimed_rows(&nats, &config).await.0.len())
    };
    let held = looked_at_until(held, |held| *held == (0, 0)).await;
    assert_eq!(held, (0, 0), "both streams gave up the first batch's rows (scans, claimed)");

    a.server.abandon().await;
    let mut later = scans(&b, 2, 21, 10).scans;
    later.push(first.scans[5].clone()); // card 6's tap, re-delivered in another batch
    later.push(record("gate-8", 5, T0_MS + 6_000, TapKind::Entry, b.rider(5).code_at(T0_MS, 1)));
    b.client_as("station-01").push(&batch("station-01", 2, later)).await.expect("ack");
    let archived = archived_once_it_holds(&nats, &b, 31).await;
    // Every partition cuts a few more times: a re-delivery taken for a
    // new scan would show up as a 32nd row.
    for _ in 0..3 {
        b.clock.set(b.clock.now_ms() + 2_000);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    let archived_later = shared_archive_rows(&nats);
    assert_eq!(archived_later, archived);
    let mut ids: Vec<[u8; 16]> = archived.iter().map(|r| r.scan_id).collect();
    ids.dedup();
    assert_eq!((archived.len(), ids.len()), (31, 31), "card 6's re-delivery dropped, each scan once");
    assert_eq!(replays(&archived), vec![("gate-8".to_string(), 5)], "card 5's code caught at gate-8");
}

/// Every row of the shared archive, sorted by scan id, each file checked
/// to be a segment file of the partition its rows are in.
fn shared_archive_rows(nats: &NatsCluster) -> Vec<ArchivedScan> {
    let root = shared_archive(nats).join("scans");
    let mut rows = Vec::new();
    for path in read::archive_files(&root).expect("the shared archive") {
        let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
        let (partition, after, cut) = segment_file_range(name).unwrap_or_else(|| panic!("{name} is a segment file"));
        assert!(after < cut, "{name}");
        let in_file = read::read_file(&path).expect("a segment file");
        assert!(in_file.iter().all(|r| partition_of_row(r, PARTITIONS).number() == partition), "{name}");
        rows.extend(in_file);
    }
    rows.sort_by_key(|r| r.scan_id);
    rows
}

/// The shared archive once it holds `rows` rows (or after a minute),
/// the nodes' clock moved on 2 s each look (segments end by their age).
async fn archived_once_it_holds(nats: &NatsCluster, h: &Harness, rows: usize) -> Vec<ArchivedScan> {
    use farestream::clock_source::Clock;
    let look = async || {
        h.clock.set(h.clock.now_ms() + 2_000);
        shared_archive_rows(nats)
    };
    looked_at_until(look, |archived| archived.len() >= rows).await
}

/// The names of the files in the shared archive's folder of `day`.
fn day_files(nats: &NatsCluster, day: chrono::NaiveDate) -> Vec<String> {
    let folder = shared_archive(nats).join("scans").join(format!("service_date={day}"));
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .expect("the day's folder")
        .map(|entry| entry.expect("an entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// A service day closes in the shared archive once every partition is
/// archived through a cut whose arrivals passed its end and the accepted
/// lateness (`_SUCCESS` beside its files), not while the cuts stop short
/// of that; a scan of that day uploaded after is filed under the day it
/// arrived, as the single node files it, and the closed day's files stay
/// as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_closes_in_the_shared_archive_once_every_partition_passed_it_and_not_before() {
    use farestream::clock_source::Clock;
    use farestream_cluster::ArchiveProgress;
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let h = Harness::start_with(config.clone()).await;
    h.client_as("station-01").push(&scans(&h, 1, 1, 20)).await.expect("ack");
    let day = archived_once_it_holds(&nats, &h, 20).await[0].service_date;
    let parts = day_files(&nats, day);
    assert!(parts.iter().all(|name| name.starts_with("part-")), "{parts:?}");

    let policy = config.service_day_policy().expect("policy");
    let day_end = policy.day_start(day.succ_opt().expect("next")).expect("its end");
    let closes_at = day_end + i64::from(config.ingest.accepted_lateness_secs) * 1_000;
    let settings = ClusterSettings::from_config(&config).expect("settings").expect("enabled");
    let progress = ArchiveProgress::open(nats.client().await, &settings.progress_bucket, 3).await.expect("bucket");
    // Every partition archived through a cut made after `set`, the clock
    // stepped on `step_ms` each look; their positions.
    let all_cut_after = async |set: i64, step_ms: i64| {
        let before: Vec<u64> = futures_util::future::join_all(Partition::all(PARTITIONS).map(|p| progress.get(p)))
            .await
            .into_iter()
            .map(|p| p.expect("position").cut)
            .collect();
        h.clock.set(set);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        'waiting: loop {
            assert!(std::time::Instant::now() < deadline, "the partitions never cut after {set}");
            h.clock.set(h.clock.now_ms() + step_ms);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut positions = Vec::new();
            for (p, before) in Partition::all(PARTITIONS).zip(&before) {
                let position = progress.get(p).await.expect("position");
                if position.cut <= *before {
                    continue 'waiting;
                }
                positions.push(position);
            }
            return positions;
        }
    };
    // Every partition archived through cuts taken 30 s of the clock short
    // of the deadline (the arrival allowance before it): the day is open.
    let short = all_cut_after(closes_at + settings.claim.arrival_allowance_ms - 30_000, 100).await;
    assert!(short.iter().all(|p| p.closed_through < Some(day)), "{short:?}");
    tokio::time::sleep(settings.claim.segment_age_max * 2).await;
    assert!(!day_files(&nats, day).contains(&"_SUCCESS".to_string()), "closed before its deadline");

    let past = all_cut_after(closes_at + settings.claim.arrival_allowance_ms, 1_000).await;
    assert!(past.iter().all(|p| p.closed_through >= Some(day)), "{past:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !day_files(&nats, day).contains(&"_SUCCESS".to_string()) {
        assert!(std::time::Instant::now() < deadline, "the day never closed: {:?}", day_files(&nats, day));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A validator that was offline uploads a scan of that day.
    let late = record("gate-7", 1, T0_MS + 600_000, TapKind::Entry, h.rider(30).code_at(T0_MS, 1));
    h.client_as("station-01").push(&batch("station-01", 2, vec![late])).await.expect("ack");
    let archived = archived_once_it_holds(&nats, &h, 21).await;
    assert_eq!(archived.len(), 21, "each scan once");
    let uploaded = archived.iter().find(|r| r.validator_id == "gate-7").expect("the late upload");
    assert!(uploaded.service_date > day, "filed under the day it arrived");
    let mut closed = parts;
    closed.push("_SUCCESS".to_string());
    closed.sort();
    assert_eq!(day_files(&nats, day), closed, "the closed day's files as they were");

    // `query` with the cluster's config reads the shared archive.
    let config_file = h.dir.path().join("cluster.toml");
    let (archive, keys) = (shared_archive(&nats), nats.dir().join("keys"));
    let toml = format!("[cluster]\nenabled = true\narchive_dir = {archive:?}\nkeys_dir = {keys:?}\n");
    std::fs::write(&config_file, toml).expect("config");
    let sql = "SELECT count(*) AS scans, count(DISTINCT scan_id) AS once FROM scans";
    let queried = std::process::Command::new(env!("CARGO_BIN_EXE_farestream"))
        .args(["--data-dir", h.dir.path().to_str().expect("utf-8")])
        .args(["--config", config_file.to_str().expect("utf-8"), "query", "--format", "csv", sql])
        .output()
        .expect("running farestream");
    assert_eq!(String::from_utf8_lossy(&queried.stdout), "scans,once\n21,21\n", "{queried:?}");
}

/// Every file of the shared archive with its bytes.
fn shared_archive_files(nats: &NatsCluster) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let files = read::archive_files(&shared_archive(nats).join("scans")).expect("the shared archive");
    files.into_iter().map(|path| (path.clone(), std::fs::read(&path).expect("a file"))).collect()
}

/// An owner that lost its partitions but still archives (a paused
/// process, or one that had fallen behind) writes the very files the
/// owner wrote, under the same names: the archive holds each row once
/// whichever of them wrote last, with no fence between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_owner_still_archiving_writes_the_same_files_and_no_row_twice() {
    use farestream::server::cluster_archive::{SegmentArchive, archive_partition};
    use farestream_cluster::ArchiveProgress;
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let h = Harness::start_with(config.clone()).await;
    h.client_as("station-01").push(&scans(&h, 1, 1, 20)).await.expect("ack");
    let archived = archived_once_it_holds(&nats, &h, 20).await;
    assert_eq!(archived.len(), 20);
    let before = shared_archive_files(&nats);

    // The old owner reads from the start (its position is behind: a
    // bucket of its own) while the owner goes on.
    let settings = ClusterSettings::from_config(&config).expect("settings").expect("enabled");
    let claimed = StreamLog::open(nats.client().await, settings.claimed).await.expect("the claimed stream");
    let behind = ArchiveProgress::open(nats.client().await, "old_owner_progress", 3).await.expect("bucket");
    let archive = SegmentArchive {
        shared: farestream::shared_archive::SharedStore::local(&shared_archive(&nats)).expect("the shared archive"),
        row_group_rows_max: config.archive.row_group_rows_max,
        segment_rows_limit: 1_000_000,
        read_wait: Duration::from_millis(100),
    };
    let owners = ArchiveProgress::open(nats.client().await, &settings.progress_bucket, 3).await.expect("bucket");
    let stop = tokio_util::sync::CancellationToken::new();
    let old_owners =
        Partition::all(PARTITIONS).map(|p| archive_partition(&claimed, &behind, p, &archive, || true, &stop));
    let caught_up = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        'waiting: while std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for p in Partition::all(PARTITIONS) {
                if behind.get(p).await.expect("position") != owners.get(p).await.expect("position") {
                    continue 'waiting;
                }
            }
            break;
        }
        stop.cancel();
    };
    let (stops, ()) = tokio::join!(futures_util::future::join_all(old_owners), caught_up);
    assert!(stops.iter().all(Result::is_ok), "{stops:?}");
    for p in Partition::all(PARTITIONS) {
        let (old, owner) = (behind.get(p).await.expect("position"), owners.get(p).await.expect("position"));
        assert!(
            owner.cut > 0 && old == owner,
            "the old owner went through partition {p}'s segments: {old:?} {owner:?}"
        );
    }
    assert_eq!(shared_archive_files(&nats), before, "the same files, byte for byte");
    assert_eq!(shared_archive_rows(&nats), archived, "each row once");
}

/// A gateway given every node's address moves to the next when the one
/// it pushes to dies, and the batch it was sending is acked there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_moves_to_the_next_node_when_its_node_dies() {
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let a = Harness::start_with(config.clone()).await;
    let b = a.start_a_copy().await;
    let mut settings = a.config.gateway_settings(a.server.local_addr());
    settings.other_server_addrs = vec![b.server.local_addr()];
    let client = GatewayClient::new(settings, &a.identity.cert, &a.credentials("station-01")).expect("client");

    client.push(&scans(&a, 1, 1, 5)).await.expect("acked by the first node");
    assert_eq!(client.server_now(), a.server.local_addr());
    a.server.abandon().await;
    let ack = client.push(&scans(&b, 2, 6, 5)).await.expect("acked by the second node");
    assert_eq!(ack.accepted, 5);
    assert_eq!(client.server_now(), b.server.local_addr());
    let mut seqs: Vec<u64> = stream_rows(&nats, &config).await.iter().map(|r| r.validator_seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>(), "both batches in the stream, once");
}

/// Review of 6b1ca3b: whoever may publish on the streams' subjects can
/// forge scans or stop a partition, so the subjects are the trust
/// boundary. On servers that require a user, a node with the password
/// (from its file) serves; one without it does not start; and a client
/// not allowed to publish on `farestream.>` cannot put a record there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_node_with_the_clusters_password_serves_and_others_cannot_publish_on_its_subjects() {
    use farestream_cluster::test_nats::{NODE_PASSWORD, NODE_USER};

    let Some(nats) = NatsCluster::start_guarded().await else { return };
    let secrets = tempfile::tempdir().expect("tempdir");
    let password_file = secrets.path().join("nats-password");
    std::fs::write(&password_file, format!("{NODE_PASSWORD}\n")).expect("write the password");
    let Some(mut config) = cluster_config(&nats).await else { return };
    config.cluster.nats_user = NODE_USER.into();
    config.cluster.nats_password_file = password_file.display().to_string();
    let h = Harness::start_with(config.clone()).await;
    let ack = h.client_as("station-01").push(&scans(&h, 1, 1, 5)).await.expect("acked");
    assert_eq!(ack.accepted, 5);

    let mut no_password = config.clone();
    no_password.cluster.nats_password_file = secrets.path().join("missing").display().to_string();
    let error = ClusterSettings::from_config(&no_password).expect_err("no password file");
    assert!(error.to_string().contains("nats_password_file"), "{error}");
    let mut wrong = config.clone();
    let wrong_file = secrets.path().join("wrong");
    std::fs::write(&wrong_file, "not-it").expect("write");
    wrong.cluster.nats_password_file = wrong_file.display().to_string();
    let copy = crate::support::copy_of(h.dir.path());
    let refused =
        crate::support::try_start_server(&wrong, copy.path(), &h.identity, &h.clock, (&h.faults, &h.inbox)).await;
    let refused = refused.err().expect("a node with the wrong password does not start");
    assert!(refused.to_string().contains("NATS"), "{refused}");

    assert!(!nats.stored(true, "farestream.scans.0", b"forged").await, "the guest's record was stored");
    let mut seqs: Vec<u64> = stream_rows(&nats, &config).await.iter().map(|r| r.validator_seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=5).collect::<Vec<u64>>(), "only the node's rows in the stream");
    // The control: the same record from the nodes' user is stored.
    assert!(nats.stored(false, "farestream.scans.0", b"forged").await, "the subject takes records");
}

/// A node whose TLS certificate or fleet CA is not the cluster's would
/// turn gateways away one by one; it refuses to start instead, naming
/// which (the first node's fingerprints are the cluster's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_share_the_clusters_identity_refuses_to_start() {
    use farestream::tls_identity::ServerIdentity;

    let Some(nats) = NatsCluster::start().await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let a = Harness::start_with(config.clone()).await;
    let _b = a.start_a_copy().await; // a copy shares both: it starts
    let injected = (&a.faults, &a.inbox);

    let stranger = tempfile::tempdir().expect("tempdir");
    let other_cert = ServerIdentity::generate().expect("identity");
    let refused = crate::support::try_start_server(&config, stranger.path(), &other_cert, &a.clock, injected).await;
    let refused = refused.err().expect("another TLS certificate").to_string();
    assert!(refused.contains("tls_certificate") && refused.contains("not the cluster's"), "{refused}");

    let other_ca = tempfile::tempdir().expect("tempdir");
    let refused = crate::support::try_start_server(&config, other_ca.path(), &a.identity, &a.clock, injected).await;
    let refused = refused.err().expect("another fleet CA").to_string();
    assert!(refused.contains("fleet_ca") && refused.contains("not the cluster's"), "{refused}");

    // The settings that put a key's end and judge a scan's arrival: two
    // nodes apart on them would give one scan two verdicts.
    let mut later = config.clone();
    later.ingest.accepted_lateness_secs += 1;
    let copy = crate::support::copy_of(a.dir.path());
    let refused = crate::support::try_start_server(&later, copy.path(), &a.identity, &a.clock, injected).await;
    let refused = refused.err().expect("another accepted lateness").to_string();
    assert!(refused.contains("verdict_timing") && refused.contains("not the cluster's"), "{refused}");
    let mut rereads_apart = config.clone();
    rereads_apart.keys.reload_interval_ms = 60_000;
    let copy = crate::support::copy_of(a.dir.path());
    let started = crate::support::try_start_server(&rereads_apart, copy.path(), &a.identity, &a.clock, injected).await;
    assert!(started.is_ok(), "a reread interval of its own puts no key's end elsewhere");
}
