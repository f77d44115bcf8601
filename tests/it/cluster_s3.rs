//! The shared archive on object storage (docs/scale-out.md, "Object
//! storage"): two nodes archive into `s3://BUCKET/PREFIX` on an
//! S3-compatible server on loopback (`crate::s3_server`). Their scans
//! segments, their charges and the partitions' checkpoints are objects
//! there, and `farestream query` and an outside reader (pyarrow's S3
//! file system) read each scan once, across a node's death.

use std::time::Duration;

use farestream::clock_source::Clock;
use farestream::config::Config;
use farestream::scan::TapKind;
use farestream::shared_archive::SharedStore;
use farestream_analytics::query::{OutputFormat, run_query};
use farestream_analytics::tables::{ArchiveSource, MemoryBudget};
use farestream_cluster::test_nats::NatsCluster;
use futures_util::TryStreamExt;
use object_store::ObjectStore;

use crate::cluster::{cluster_config, looked_at_until, quick_leases};
use crate::cluster_money::charged_once_it_holds;
use crate::money::{Money, own_validator_tap};
use crate::s3_server::S3Server;
use crate::support::{Harness, batch};
use farestream::money::money_audit::audit_money;
use farestream_analytics::settle::settle_day;

const BUCKET: &str = "farestream-it";
const PREFIX: &str = "city-1/archive";

/// A node's config archiving into the test server's bucket.
fn on_s3(mut config: Config, s3: &S3Server) -> Config {
    config.cluster.archive_dir = format!("s3://{BUCKET}/{PREFIX}");
    config.cluster.archive_s3_endpoint = s3.endpoint.clone();
    config.cluster.archive_s3_allow_http = true;
    config.cluster.archive_s3_credentials_file = s3.credentials_path().display().to_string();
    config.cluster.claim_checkpoint_interval_ms = 1_000;
    config
}

/// `sql`'s answer over the bucket, as CSV, as `farestream query` reads it.
async fn query(config: &Config, scratch: &std::path::Path, sql: &str) -> String {
    let location = config.cluster.archive_location().expect("an s3 archive");
    let archive = ArchiveSource::open(&location, &config.cluster.object_store_settings()).expect("the bucket");
    query_csv(&archive, scratch, sql).await.expect("the query")
}

/// `sql`'s answer over `archive` as CSV, its spills under `scratch`.
pub(crate) async fn query_csv(archive: &ArchiveSource, scratch: &std::path::Path, sql: &str) -> Result<String, String> {
    let budget = MemoryBudget::of(scratch, &Config::defaults().settlement);
    let mut out = Vec::new();
    run_query(archive, &budget, 1, sql, OutputFormat::Csv, &mut out).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).expect("UTF-8"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_archive_into_a_bucket_and_every_reader_finds_each_scan_and_charge_once() {
    let Some(nats) = NatsCluster::start().await else { return };
    let Some(s3) = S3Server::start(BUCKET).await else { return };
    let Some(config) = cluster_config(&nats).await else { return };
    let config = on_s3(config, &s3);
    let m = Money::start_with(quick_leases(config.clone(), "node-a")).await;
    let b = m.h.start_a_copy_with(quick_leases(m.h.config.clone(), "node-b")).await;
    let riders: Vec<_> = futures_util::future::join_all((0..8u64).map(|n| m.rider(900 + n, 10_000))).await;
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (n, rider) in riders.iter().enumerate() {
        let bus = own_validator_tap((n, rider), 1, 1, TapKind::Single, "bus-7");
        first.push(bus.clone());
        second.push(bus); // resent at the other node after the first died
        second.push(own_validator_tap((n, rider), 2, 40, TapKind::Single, "bus-7"));
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let count_scans = "SELECT count(*) AS n, count(DISTINCT scan_id) AS d FROM scans";
    assert_eq!(m.h.client().push(&batch("depot-1", 1, first)).await.expect("a acks").accepted, 8);
    let look = async || {
        m.h.clock.set(m.h.clock.now_ms() + 2_000);
        query(&config, scratch.path(), count_scans).await
    };
    let seen = looked_at_until(look, |csv| csv.ends_with("8,8\n")).await;
    assert_eq!(seen, "n,d\n8,8\n", "a's segments in the bucket");

    let Money { h: a, paygw: _paygw, control: _control, _paygw_dir } = m;
    a.server.abandon().await;
    assert_eq!(b.client().push(&batch("depot-1", 2, second)).await.expect("b acks").accepted, 16);
    let charges = charged_once_it_holds(&b, 16).await;
    assert_eq!(charges.iter().map(|c| c.scan_ids.len()).sum::<usize>(), 16, "every ride priced once: {charges:?}");
    let look = async || {
        b.clock.set(b.clock.now_ms() + 2_000);
        let scans = query(&config, scratch.path(), count_scans).await;
        let charges = query(&config, scratch.path(), "SELECT count(*) AS n FROM charges").await;
        (scans, charges)
    };
    let expected = ("n,d\n16,16\n".to_string(), format!("n\n{}\n", charges.len()));
    let (scans, archived_charges) = looked_at_until(look, |seen| *seen == expected).await;
    assert_eq!((scans, archived_charges), expected, "each scan once, the resends dropped; each charge once");

    let store =
        SharedStore::open(&config.cluster.archive_location().expect("s3"), &config.cluster.object_store_settings())
            .expect("the bucket");
    let checkpoints: Vec<_> =
        store.store.list(Some(&"checkpoints".into())).try_collect().await.expect("the checkpoints' listing");
    assert!(!checkpoints.is_empty(), "the partitions' checkpoints are objects in the bucket");
    let leftovers: Vec<_> = store.store.list(None).try_collect().await.expect("a listing");
    assert!(leftovers.iter().all(|o| !o.location.as_ref().contains('#')), "no unfinished write: puts are whole");
    settles_and_audits_from_the_bucket(&b, scratch.path(), 16).await;
    drop(b);

    outside_reader_counts(&s3, (16, charges.len())).await;
}

/// `settle` and `audit` read the bucket as they read a folder. Two
/// settlements of the day at once (two nodes' cut-overs) take turns on
/// the cluster's lock: one writes run 1 into the bucket, the other finds
/// nothing new. The run settles every ride with no break, `query` reads
/// it back, and no staged file is left. The audit reads each scan once
/// from the bucket and finds every ride priced once.
async fn settles_and_audits_from_the_bucket(node: &Harness, scratch: &std::path::Path, rides: i64) {
    let config = &node.config;
    let day = query(config, scratch, "SELECT DISTINCT CAST(service_date AS VARCHAR) AS d FROM scans").await;
    let day: chrono::NaiveDate = day.lines().nth(1).expect("one service day").parse().expect("a date");
    let settings = farestream::settle::settle_settings(config, node.dir.path()).expect("settle's settings");
    let now = node.clock.now_ms();
    let (one, other) = tokio::join!(settle_day(&settings, day, now), settle_day(&settings, day, now));
    let (one, other) = (one.expect("a settlement"), other.expect("the other settlement"));
    let runs: Vec<_> = [&one, &other].iter().filter_map(|s| s.new_run.clone()).collect();
    assert_eq!(runs.len(), 1, "one run written, the other waited and found nothing new: {runs:?}");
    assert!(one.breaks.is_empty() && other.breaks.is_empty(), "{:?} {:?}", one.breaks, other.breaks);
    assert_eq!((runs[0].run, runs[0].totals.rides, runs[0].riders_awaiting_archive), (1, rides, 0));
    let written = query(config, scratch, "SELECT count(*) AS runs, max(files_settled) AS f FROM settlement_runs").await;
    assert_eq!(written, format!("runs,f\n1,{}\n", runs[0].files_settled), "the run is in the bucket");
    let riders = query(config, scratch, "SELECT CAST(sum(rides) AS BIGINT) AS r FROM settlements").await;
    assert_eq!(riders, format!("r\n{rides}\n"), "the riders' file was put whole");
    let again = settle_day(&settings, day, node.clock.now_ms()).await.expect("settled again");
    assert!(again.new_run.is_none() && again.breaks.is_empty(), "nothing new: {:?}", again.breaks);
    let staged = std::fs::read_dir(settings.scratch_dir().join("settlements")).expect("the staging folder");
    assert_eq!(staged.count(), 0, "the riders' file moved from staging into the bucket");

    let archive = settings.archive().expect("the bucket");
    let scans = archive.all_scans().await.expect("the audit reads the bucket");
    assert_eq!(scans.len(), 16, "each scan once");
    let audited = node.server.with_money_store(move |store| audit_money(&mut store.db(), &scans, None));
    let audited = audited.await.expect("the money audit");
    assert!(audited.is_clean() && audited.undecided == 0, "{audited}");
}

/// pyarrow's S3 file system reads the bucket as an analyst's notebook
/// would (Hive partitions by service date): each scan once, every charge.
async fn outside_reader_counts(s3: &S3Server, (scans, charges): (usize, usize)) {
    if !crate::outside_readers::python_has_readers() {
        eprintln!("outside reader skipped: python3 with pyarrow not found");
        return;
    }
    let script = format!(
        r#"
import pyarrow.dataset as ds, pyarrow.fs as fs, pyarrow.compute as pc
s3 = fs.S3FileSystem(access_key="farestream-test", secret_key="farestream-test-secret",
                     endpoint_override="{endpoint}", scheme="http", region="us-east-1")
def table(name):
    return ds.dataset("{BUCKET}/{PREFIX}/" + name, filesystem=s3, format="parquet", partitioning="hive").to_table()
scans = table("scans")
print(scans.num_rows, len(pc.unique(scans["scan_id"])), table("charges").num_rows)
"#,
        endpoint = s3.endpoint
    );
    let run = tokio::task::spawn_blocking(move || std::process::Command::new("python3").args(["-c", &script]).output());
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("pyarrow answers")
        .expect("the reader's thread")
        .expect("python3 runs");
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(said.trim(), format!("{scans} {scans} {charges}"), "{}", String::from_utf8_lossy(&output.stderr));
}
