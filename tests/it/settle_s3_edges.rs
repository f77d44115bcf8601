//! `settle` and `audit` over a cluster's archive in a bucket, attacked from
//! outside (review of the change that taught them `s3://`): odd objects in
//! a day's folder, a nested "folder", S3's folder markers, the bucket
//! lost in the middle of the run's puts, the cluster's settlement lock
//! whose PostgreSQL connection dies, prefixes at their edges, and the
//! audit's read of the bucket against its read of a folder.
//!
//! Each test starts moto's S3 server (`crate::s3_server`) and, where the
//! settlement needs one, a database of the PostgreSQL test cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use farestream::config::Config;
use farestream::money::db::Db;
use farestream::settle::settle_settings;
use farestream::shared_archive::s3_bucket;
use farestream_analytics::settle::{SettleSettings, Settled, settle_day};
use farestream_analytics::tables::ArchiveSource;
use farestream_money::MoneyStore;
use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::cluster_s3::query_csv;
use crate::money::postgres_database_url;
use crate::s3_server::S3Server;
use crate::support::T0_MS;

const BUCKET: &str = "farestream-settle-edges";
const DAY: &str = "2025-11-20";
const PREFIX: &str = "city-1/archive";

fn day() -> NaiveDate {
    DAY.parse().expect("date")
}

/// A cluster scans segment's name: partition 0, `(0, cut]`.
fn segment_name(cut: u64) -> String {
    format!("part-p0000-{:020}-{cut:020}.parquet", 0)
}

/// Request timeouts: (per request, retries, all tries of one request).
#[derive(Clone, Copy)]
struct Timeouts(u64, usize, u64);

const QUICK: Timeouts = Timeouts(2_000, 1, 3_000);

/// A cluster node's settlement over an archive in moto's bucket, its
/// money store a fresh PostgreSQL database; optionally through a
/// [`Proxy`] that can hold or swallow the bucket's traffic.
struct Rig {
    s3: S3Server,
    proxy: Option<Proxy>,
    dir: tempfile::TempDir,
    prefix: String,
    settings: SettleSettings,
    /// A client straight to moto (never through the proxy).
    bucket: Arc<dyn ObjectStore>,
}

impl Rig {
    async fn start(prefix: &str, proxied: bool, Timeouts(request, retries, retry): Timeouts) -> Option<Rig> {
        let s3 = S3Server::start(BUCKET).await?;
        let money_store = postgres_database_url().await?;
        let proxy = match proxied {
            true => Some(Proxy::start(&s3.endpoint).await),
            false => None,
        };
        let mut config = Config::defaults();
        config.cluster.enabled = true;
        config.payments.money_store = money_store;
        config.cluster.archive_dir = match prefix.is_empty() {
            true => format!("s3://{BUCKET}"),
            false => format!("s3://{BUCKET}/{prefix}"),
        };
        config.cluster.archive_s3_endpoint = proxy.as_ref().map_or(s3.endpoint.clone(), |p| p.endpoint.clone());
        config.cluster.archive_s3_allow_http = true;
        config.cluster.archive_s3_credentials_file = s3.credentials_path().display().to_string();
        config.cluster.archive_request_timeout_ms = request;
        config.cluster.archive_retries_max = retries;
        config.cluster.archive_retry_timeout_ms = retry;
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settle_settings(&config, dir.path()).expect("settle's settings");
        let mut direct = config.cluster.object_store_settings();
        direct.endpoint = s3.endpoint.clone();
        direct.request_timeout = Duration::from_secs(10);
        let bucket = s3_bucket(BUCKET, &direct).expect("the bucket's client");
        let rig = Rig { s3, proxy, dir, prefix: prefix.to_string(), settings, bucket };
        rig.sql(&["SELECT CAST(1 AS BIGINT)"]).await; // the store's schema made
        Some(rig)
    }

    /// `rest` under the prefix.
    fn key_str(&self, rest: &str) -> String {
        match self.prefix.is_empty() {
            true => rest.to_string(),
            false => format!("{}/{rest}", self.prefix),
        }
    }

    /// Puts `bytes` as the raw key `PREFIX/rest` (a key `object_store`'s
    /// paths cannot spell too: a trailing `/`), as any S3 tool would.
    async fn put_raw(&self, rest: &str, bytes: &[u8]) {
        let url = format!("{}/{BUCKET}/{}", self.s3.endpoint, self.key_str(rest));
        let answer = reqwest::Client::new().put(&url).body(bytes.to_vec()).send().await.expect("moto answers");
        assert!(answer.status().is_success(), "PUT {url}: {}", answer.status());
    }

    async fn delete(&self, rest: &str) {
        self.bucket.delete(&Key::parse(self.key_str(rest)).expect("a key")).await.expect("deleted");
    }

    /// Runs statements on the money store (off the async threads).
    async fn sql(&self, statements: &[&str]) -> Vec<i64> {
        let (location, statements) = (self.settings.store.clone(), statements.iter().map(|s| s.to_string()).collect());
        tokio::task::spawn_blocking(move || run_sql(&location, statements)).await.expect("the store's thread")
    }

    /// The pricer of partition 0 past `lsn`: a segment cut below it is
    /// ready to settle.
    async fn priced_below(&self, lsn: u64) {
        self.sql(&[&format!(
            "INSERT INTO log_cursors (reader, lsn) VALUES ('pricer@partition-0000', {lsn})
             ON CONFLICT (reader) DO UPDATE SET lsn = excluded.lsn"
        )])
        .await;
    }

    fn archive(&self) -> ArchiveSource {
        self.settings.archive().expect("the bucket")
    }

    async fn query(&self, sql: &str) -> String {
        query_csv(&self.archive(), self.dir.path(), sql).await.expect("the query")
    }

    /// The same cluster's settlement on another node: its own data dir
    /// (`other`), the same bucket and money store.
    fn other_node(&self, other: &Path) -> SettleSettings {
        let memory = farestream_analytics::tables::MemoryBudget::of(other, &Config::defaults().settlement);
        SettleSettings { data_dir: other.to_path_buf(), memory, ..self.settings.clone() }
    }

    /// This node's settlement, started with the bucket's answers held,
    /// once it holds the cluster's lock: its task, and the lock's pid.
    async fn first_settlement_held_at_the_bucket(&self) -> (JoinHandle<Outcome>, i64) {
        self.proxy.as_ref().expect("proxied").pause(true);
        let first = settle_in_background(self.settings.clone());
        (first, lock_holder(self, 0).await.expect("the first settlement takes the lock"))
    }

    fn staged(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.settings.scratch_dir().join("settlements")) {
            Ok(entries) => entries.map(|e| e.expect("entry").path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

type Outcome = Result<Settled, farestream_analytics::settle::SettleError>;

/// A settlement of the day, on a task of its own.
fn settle_in_background(settings: SettleSettings) -> JoinHandle<Outcome> {
    tokio::spawn(async move { settle_day(&settings, day(), T0_MS).await })
}

/// The run a settlement wrote, if it settled and wrote one.
fn run_written(outcome: &Outcome) -> Option<u32> {
    outcome.as_ref().ok().and_then(|s| s.new_run.as_ref().map(|r| r.run))
}

/// What a settlement's task ended with, within 120 s.
async fn outcome_of(task: JoinHandle<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(120), task).await.expect("the settlement ends").expect("its task")
}

/// Each statement's first row's first column (`-1` for a statement with
/// no row).
fn run_sql(location: &farestream_money::StoreLocation, statements: Vec<String>) -> Vec<i64> {
    let mut store = MoneyStore::open(location, Duration::from_secs(5)).expect("the money store");
    let mut db = store.db();
    let mut out = Vec::new();
    for statement in statements {
        if statement.trim_start().to_ascii_uppercase().starts_with("SELECT") {
            let rows = db.query(&statement, &[]).expect(&statement);
            out.push(rows.first().map_or(-1, |r| r.int(0).expect("an integer")));
        } else {
            db.execute(&statement, &[]).expect(&statement);
            out.push(-1);
        }
    }
    out
}

/// A few valid scans Parquet files of `DAY` (the benchmark's generator),
/// by their local paths, under a data dir kept in the returned tempdir.
fn generated_scans(settings: &SettleSettings, scans: u64) -> (tempfile::TempDir, Vec<PathBuf>) {
    use farestream::sim::archive_day::{ArchiveDaySpec, write_archive_day};
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ArchiveDaySpec {
        scans,
        date: day(),
        seed: 11,
        declined_percent: 0.0,
        row_group_rows_max: 4096,
        file_bytes_max: 1 << 20,
        compare_baseline: false,
    };
    let report = write_archive_day(&spec, &settings.fares, &settings.service_day, dir.path()).expect("generated");
    assert!(!report.scan_files.is_empty());
    (dir, report.scan_files)
}

/// A local, single-node settlement (`Config::defaults()`) of a data dir
/// whose day's scans folder gets `setup` done to it: what a folder does
/// with the same odd entry.
async fn settle_locally(setup: impl FnOnce(&Path)) -> Result<Settled, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let partition = dir.path().join("archive").join("scans").join(format!("service_date={DAY}"));
    std::fs::create_dir_all(&partition).expect("mkdir");
    setup(&partition);
    let settings = settle_settings(&Config::defaults(), dir.path()).expect("settings");
    settle_day(&settings, day(), T0_MS).await.map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------
// Odd objects in a day's folder
// ---------------------------------------------------------------------

/// Objects in the day's folder that are not scans files, or are named as
/// one but are no Parquet: each is an error that names it, as in a folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_objects_in_a_days_folder_are_named_in_the_error() {
    let Some(rig) = Rig::start(PREFIX, false, QUICK).await else { return };
    rig.priced_below(1_000).await;
    let ready = segment_name(10);
    let cases: [(&str, &[u8]); 5] = [
        ("notes.txt", b"call Bob about the 7 bus"),
        ("empty", b""),
        ("part-p0000-1-2.parquet", b"PAR1"),
        (&ready, b"not parquet at all"),
        (&ready, b""),
    ];
    let mut wrong = Vec::new();
    for (name, bytes) in cases {
        let key = format!("scans/service_date={DAY}/{name}");
        rig.put_raw(&key, bytes).await;
        let settled = tokio::time::timeout(Duration::from_secs(60), settle_day(&rig.settings, day(), T0_MS))
            .await
            .expect("settle answers");
        match settled {
            Ok(s) => wrong.push(format!("{name} ({} bytes): settled, {:?}", bytes.len(), s.new_run.map(|r| r.run))),
            Err(e) if !e.to_string().contains(name) => wrong.push(format!("{name}: error does not name it: {e}")),
            Err(e) => eprintln!("{name}: {e}"),
        }
        rig.delete(&key).await;
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A "folder" inside the day's folder (`service_date=D/sub/x.parquet`,
/// e.g. a copy an operator set aside): a folder's settlement names the
/// entry `sub` and refuses, and so does a bucket's (its listing puts
/// `sub/` among the common prefixes; they were once dropped, and the
/// day settled without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_inside_the_days_folder_is_named_not_silently_skipped() {
    let local = settle_locally(|partition| {
        std::fs::create_dir_all(partition.join("sub")).expect("mkdir");
        std::fs::write(partition.join("sub").join("x.parquet"), b"junk").expect("write");
    })
    .await;
    assert!(local.as_ref().is_err_and(|e| e.contains("sub")), "a folder names `sub`: {:?}", local.map(|s| s.headline));

    let Some(rig) = Rig::start(PREFIX, false, QUICK).await else { return };
    rig.priced_below(1_000).await;
    rig.put_raw(&format!("scans/service_date={DAY}/sub/{}", segment_name(10)), b"junk, or a copy of a day's file")
        .await;
    let settled = settle_day(&rig.settings, day(), T0_MS).await;
    assert!(
        settled.as_ref().is_err_and(|e| e.to_string().contains("sub")),
        "the bucket's settlement must name service_date={DAY}/sub/ as a folder does; it returned {:?}",
        settled.map(|s| (s.new_run.map(|r| (r.run, r.files_settled)), s.breaks))
    );
}

/// S3 consoles and many tools make a "folder" as a zero-byte object whose
/// key ends in `/`. The marker of the day's own folder is the folder, not
/// a stranger in it: a folder that exists settles, so should a bucket
/// with the marker (object_store strips the `/`, and its `filename()` is
/// then `service_date=D`, which the settlement once called "not named as
/// a scans file ... move it out of the day's folder").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_days_own_folder_marker_is_not_a_stranger() {
    let local = settle_locally(|_| ()).await;
    assert!(local.is_ok(), "an empty day's folder settles: {local:?}");

    let Some(rig) = Rig::start(PREFIX, false, QUICK).await else { return };
    rig.put_raw("scans/", b"").await;
    rig.put_raw(&format!("scans/service_date={DAY}/"), b"").await;
    let settled = settle_day(&rig.settings, day(), T0_MS).await;
    assert!(settled.is_ok(), "the day's folder marker stops the settlement: {}", settled.err().unwrap());
}

/// `NAME.parquet#N` is a *local* file system's unfinished write (object
/// store's LocalFileSystem), skipped as such; a bucket's puts are whole,
/// so in a bucket no crash leaves one and an object of that name is a
/// stranger, named like any other (it was once skipped without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_named_like_a_local_unfinished_write_is_not_silently_skipped_in_a_bucket() {
    let Some(rig) = Rig::start(PREFIX, false, QUICK).await else { return };
    rig.priced_below(1_000).await;
    let name = format!("{}#1", segment_name(10));
    rig.put_raw(&format!("scans/service_date={DAY}/{}", name.replace('#', "%23")), b"junk").await;
    let listed = rig.archive().day_files("scans", day()).await.expect("listed");
    assert!(listed.iter().any(|f| f.name == name), "the object is in the day: {listed:?}");
    let settled = settle_day(&rig.settings, day(), T0_MS).await;
    assert!(
        settled.is_err(),
        "{name} in a bucket is no unfinished write, yet the settlement settled past it: {:?}",
        settled.map(|s| s.headline)
    );
}

// ---------------------------------------------------------------------
// The audit's read of the bucket
// ---------------------------------------------------------------------

/// The same objects in a folder and in a bucket read the same: a copy of
/// a day set aside under `scans/backup/service_date=D/` is outside the
/// table for `read_all` (it reads `scans/service_date=*/*.parquet`), and
/// so for `all_scans` on a bucket, which once took any key's last two
/// parts and audited every scan of the copy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_reads_a_bucket_as_it_reads_a_folder() {
    let Some(s3) = S3Server::start(BUCKET).await else { return };
    let defaults = settle_settings(&Config::defaults(), Path::new("/nonexistent")).expect("settings");
    let (generated, files) = generated_scans(&defaults, 300);
    let local_archive = generated.path().join("archive");
    let mut client = Config::defaults().cluster.object_store_settings();
    client.endpoint = s3.endpoint.clone();
    client.allow_http = true;
    client.credentials_file = s3.credentials_path().display().to_string();
    let bucket = s3_bucket(BUCKET, &client).expect("client");
    let odd = ["backup/", "2024-archive/old/"];
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let bytes = std::fs::read(file).expect("read");
        for folder in std::iter::once("").chain(odd) {
            let key = format!("{PREFIX}/scans/{folder}service_date={DAY}/{name}");
            bucket.put(&Key::parse(&key).unwrap(), bytes.clone().into()).await.expect("put");
            let local = local_archive.join("scans").join(folder).join(format!("service_date={DAY}"));
            std::fs::create_dir_all(&local).expect("mkdir");
            std::fs::write(local.join(name), &bytes).expect("write");
        }
    }
    let location =
        farestream_core::cluster::archive_location::ArchiveLocation::parse(&format!("s3://{BUCKET}/{PREFIX}"))
            .expect("location");
    let from_bucket = ArchiveSource::open(&location, &client).expect("bucket").all_scans().await.expect("bucket read");
    let from_folder = ArchiveSource::dir(&local_archive).all_scans().await.expect("folder read");
    assert_eq!(from_folder.len(), 300, "the folder: the table's own partitions only");
    assert_eq!(
        from_bucket.len(),
        from_folder.len(),
        "the bucket's audit reads {} scans where the folder's reads {} (a copy under scans/backup/ counted)",
        from_bucket.len(),
        from_folder.len()
    );
}

// ---------------------------------------------------------------------
// The cluster's lock, and the bucket lost mid-run
// ---------------------------------------------------------------------

/// The settlement lock's key in pg_locks (`SETTLEMENT_LOCK_KEY`, a
/// bigint key: high half in classid, low half in objid).
const LOCK_ROW: &str = "FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
     AND classid = 1936028788 AND objid = 1818566945
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The pid holding the settlement lock, within 20 s, other than `not`.
async fn lock_holder(rig: &Rig, not: i64) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let holder = rig.sql(&[&format!("SELECT CAST(pid AS BIGINT) {LOCK_ROW}")]).await[0];
        if holder > 0 && holder != not {
            return Some(holder);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A settlement whose lock's PostgreSQL connection dies (a failover, a
/// restart, an operator's `pg_terminate_backend`, a network cut) holds
/// nothing any more: another node's settlement takes the lock. The first
/// must not go on writing the day beside it: it confirms its lock before
/// each put and stops (it once never looked again, and both wrote run 1
/// into the same names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_whose_lock_connection_died_does_not_write_beside_the_next_holder() {
    let Some(rig) = Rig::start(PREFIX, true, Timeouts(30_000, 1, 60_000)).await else { return };
    let (first, a) = rig.first_settlement_held_at_the_bucket().await;
    tokio::time::sleep(Duration::from_millis(500)).await; // on to the bucket, which holds its answer
    assert!(!first.is_finished(), "the first settlement waits on the bucket");
    let ended = rig.sql(&[&format!("SELECT count(pg_terminate_backend(pid)) {LOCK_ROW}")]).await[0];
    assert_eq!(ended, 1, "the lock's connection ended");
    let node_b = tempfile::tempdir().expect("node b's data dir");
    let second = settle_in_background(rig.other_node(node_b.path()));
    let b = lock_holder(&rig, a).await.expect("the second settlement takes the free lock");
    assert!(!first.is_finished(), "the first is still in the middle of its run (lock holder now {b})");
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.proxy.as_ref().expect("proxied").pause(false);
    let (first, second) = (outcome_of(first).await, outcome_of(second).await);
    assert!(second.is_ok(), "the lock's holder settles: {second:?}");
    let (first_wrote, second_wrote) = (run_written(&first), run_written(&second));
    assert!(
        first_wrote.is_none() || second_wrote.is_none(),
        "two settlements wrote the day at once: the one whose lock had gone wrote run {first_wrote:?}, the lock's \
         holder run {second_wrote:?}"
    );
}

/// The bucket stops answering after the run's first put (the files
/// table): the settlement fails within its retry settings rather than
/// hang, and once the bucket is back the next settlement writes run 1
/// whole, leaving no staged riders file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_lost_between_the_runs_puts_fails_in_time_and_the_next_run_mends_the_day() {
    let Some(rig) = Rig::start(PREFIX, true, QUICK).await else { return };
    let proxy = rig.proxy.as_ref().expect("proxied");
    proxy.swallow_after_puts(1);
    let started = Instant::now();
    let cut = tokio::time::timeout(Duration::from_secs(120), settle_day(&rig.settings, day(), T0_MS)).await;
    let took = started.elapsed();
    let error = cut.expect("the settlement gives up rather than hang").expect_err("the bucket went");
    eprintln!("cut short after {took:?}: {error}; staged: {:?}", rig.staged());
    assert!(took < Duration::from_secs(30), "gave up after {took:?}: {error}");
    let keys: Vec<String> =
        rig.bucket.list(None).map_ok(|o| o.location.to_string()).try_collect().await.expect("listed");
    assert!(keys.iter().any(|k| k.contains("settlement_files")), "the first put went in: {keys:?}");
    assert!(!keys.iter().any(|k| k.contains("settlement_runs")), "no run row: {keys:?}");

    proxy.mend();
    let mended = settle_day(&rig.settings, day(), T0_MS).await.expect("settled once the bucket is back");
    assert_eq!(mended.new_run.map(|r| r.run), Some(1), "the cut-short run is run 1 again");
    assert_eq!(rig.query("SELECT count(*) AS n FROM settlement_runs").await, "n\n1\n");
    assert!(rig.staged().is_empty(), "a staged riders file left: {:?}", rig.staged());
}

// ---------------------------------------------------------------------
// Prefixes at their edges
// ---------------------------------------------------------------------

/// A ready scans segment in the bucket under `prefix`: settled (its
/// object read by DataFusion by the URL `day_files` made), the run put,
/// and `query` and the audit find the scans and the run.
async fn settles_under(prefix: &str) -> Result<(), String> {
    let Some(rig) = Rig::start(prefix, false, QUICK).await else { return Ok(()) };
    let (_generated, files) = generated_scans(&rig.settings, 40);
    let bytes = std::fs::read(&files[0]).expect("read");
    let segment = Key::parse(rig.key_str(&format!("scans/service_date={DAY}/{}", segment_name(10)))).expect("key");
    rig.bucket.put(&segment, bytes.into()).await.map_err(|e| format!("putting the segment: {e}"))?;
    rig.priced_below(1_000).await;
    let settled = settle_day(&rig.settings, day(), T0_MS).await.map_err(|e| format!("settle: {e}"))?;
    let scans = query_csv(&rig.archive(), rig.dir.path(), "SELECT count(*) AS n FROM scans")
        .await
        .map_err(|e| format!("query: {e}"))?;
    let audited = rig.archive().all_scans().await.map_err(|e| format!("audit: {e}"))?;
    let breaks = query_csv(&rig.archive(), rig.dir.path(), "SELECT count(*) AS n FROM settlement_breaks")
        .await
        .map_err(|e| format!("query: {e}"))?;
    let runs = rig.query("SELECT count(*) AS n FROM settlement_runs").await;
    let n: usize = scans.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or(0);
    let written = settled.new_run.is_some() || breaks != "n\n0\n";
    if n == 0 || audited.len() != n || !written {
        return Err(format!(
            "scans {scans:?}, audited {}, run {:?} breaks {} ({breaks:?}), runs {runs:?}",
            audited.len(),
            settled.new_run.map(|r| r.files_settled),
            settled.breaks.len()
        ));
    }
    match settled.new_run {
        Some(run) if run.files_settled != 1 => Err(format!("files settled {}", run.files_settled)),
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_at_the_buckets_root_under_odd_names_and_under_the_longest_prefix() {
    let longest = {
        let part = "p".repeat(99);
        let mut prefix = [part.as_str(); 8].join("/");
        prefix.push('/');
        prefix
            .push_str(&"q".repeat(farestream_core::cluster::archive_location::ARCHIVE_PREFIX_BYTES_MAX - prefix.len()));
        prefix
    };
    assert_eq!(longest.len(), farestream_core::cluster::archive_location::ARCHIVE_PREFIX_BYTES_MAX);
    let mut failed = Vec::new();
    for prefix in ["", "city 1/year=2026/arch ive", "städte/zürich+bern/[a]{b}", &longest] {
        if let Err(why) = settles_under(prefix).await {
            failed.push(format!("{:?}: {why}", prefix.chars().take(40).collect::<String>()));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

// ---------------------------------------------------------------------
// A TCP proxy in front of moto
// ---------------------------------------------------------------------

/// Forwards to moto; holds every byte while paused; once `puts_left` PUT
/// requests went through, swallows everything (accepts, never answers)
/// until mended: a bucket lost mid-run.
struct Proxy {
    endpoint: String,
    state: Arc<ProxyState>,
}

struct ProxyState {
    paused: tokio::sync::watch::Sender<bool>,
    puts_left: AtomicI64,
    swallowing: AtomicBool,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let state = Arc::new(ProxyState {
            paused: tokio::sync::watch::channel(false).0,
            puts_left: AtomicI64::new(i64::MAX),
            swallowing: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = Arc::clone(&accepting);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let poisoned = Arc::new(AtomicBool::new(false));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(
                        pipe(cr, sw, Arc::clone(&state), true, Arc::clone(&poisoned)),
                        pipe(sr, cw, state, false, poisoned)
                    );
                });
            }
        });
        Proxy { endpoint, state }
    }

    fn pause(&self, paused: bool) {
        self.state.paused.send_replace(paused);
    }

    fn swallow_after_puts(&self, puts: i64) {
        self.state.puts_left.store(puts, Ordering::SeqCst);
    }

    fn mend(&self) {
        self.state.puts_left.store(i64::MAX, Ordering::SeqCst);
        self.state.swallowing.store(false, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<ProxyState>,
    to_server: bool,
    poisoned: Arc<AtomicBool>,
) {
    let mut paused = state.paused.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to_server && buf[..n].starts_with(b"PUT ") && state.puts_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            state.swallowing.store(true, Ordering::SeqCst);
        }
        if state.swallowing.load(Ordering::SeqCst) {
            poisoned.store(true, Ordering::SeqCst);
        }
        if poisoned.load(Ordering::SeqCst) {
            continue;
        }
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The same loss with no one killing anything: the lock's connection
/// sends nothing while it is held, so a database with
/// `idle_session_timeout` (PostgreSQL 14+, often set on managed servers)
/// once ended it while the run waited on the bucket, and the next
/// settlement took the lock beside it. The lock's session lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_timeout_frees_the_lock_of_a_settlement_still_running() {
    let Some(rig) = Rig::start(PREFIX, true, Timeouts(30_000, 1, 60_000)).await else { return };
    rig.sql(&[
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET idle_session_timeout = ''1s''', current_database()); END $$",
    ])
    .await;
    let (first, a) = rig.first_settlement_held_at_the_bucket().await;
    tokio::time::sleep(Duration::from_millis(2_500)).await; // the run waits on the bucket; its lock sits idle
    assert!(!first.is_finished(), "the first settlement waits on the bucket");
    let node_b = tempfile::tempdir().expect("node b's data dir");
    let second = settle_in_background(rig.other_node(node_b.path()));
    let b = lock_holder(&rig, a).await;
    rig.proxy.as_ref().expect("proxied").pause(false);
    let (first, second) = (outcome_of(first).await, outcome_of(second).await);
    let (first_wrote, second_wrote) = (run_written(&first), run_written(&second));
    assert!(
        b.is_none() && (first_wrote.is_none() || second_wrote.is_none()),
        "the first run's lock went idle and was ended; a second took it (pid {b:?}) while the first still ran; \
         runs written: first {first_wrote:?}, second {second_wrote:?} ({:?} / {:?})",
        first.as_ref().err().map(ToString::to_string),
        second.as_ref().err().map(ToString::to_string)
    );
}
