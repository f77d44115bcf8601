//! The shared archive on S3 at its edges, from an outside review: the
//! location rules (scheme typos, prefixes a reader's URL would misread),
//! the client's settings (no key in the endpoint, none mixed with the
//! environment's), its timeouts against a store that never answers, and
//! `query` over an empty bucket. The tests that need moto's S3 server
//! start it as `cluster_s3` does (`crate::s3_server`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use farestream::config::Config;
use farestream::shared_archive::{SharedStore, s3_bucket};
use farestream_analytics::query::{OutputFormat, run_query};
use farestream_analytics::tables::{ArchiveSource, MemoryBudget};
use farestream_core::cluster::archive_location::{ArchiveLocation, ObjectStoreSettings};
use farestream_core::scan::ArchivedScan;

use crate::s3_server::S3Server;

const BUCKET: &str = "farestream-edges";
const SECRET: &str = "wJalrXUtnFEMI-edges-SECRET";

fn settings(endpoint: &str, credentials_file: &str) -> ObjectStoreSettings {
    ObjectStoreSettings {
        region: "us-east-1".into(),
        endpoint: endpoint.into(),
        allow_http: true,
        credentials_file: credentials_file.into(),
        request_timeout: Duration::from_millis(500),
        retries_max: 2,
        retry_timeout: Duration::from_millis(1_000),
    }
}

/// The client of the test's moto server, with its access key and room
/// for a real request (10 s).
fn on_moto(s3: &S3Server) -> ObjectStoreSettings {
    let client = settings(&s3.endpoint, &s3.credentials_path().display().to_string());
    ObjectStoreSettings { request_timeout: Duration::from_secs(10), ..client }
}

fn credentials_file(dir: &std::path::Path) -> String {
    let path = dir.join("credentials.toml");
    std::fs::write(&path, format!("access_key_id = \"AKIDREVIEW\"\nsecret_access_key = \"{SECRET}\"\n"))
        .expect("write");
    path.display().to_string()
}

/// A typo in the scheme (`s3:/`, `s3:`) is not `s3://`, and is not a
/// folder an operator meant either: taken for a relative local path, each
/// node silently archives into its own working directory's `s3:` folder
/// and the cluster's archive is split across machines.
#[test]
fn scheme_typos_are_not_taken_for_a_local_folder() {
    let mut taken = Vec::new();
    for typo in ["s3:/farestream-it/city-1", "s3:farestream-it/city-1", "s3//farestream-it/city-1"] {
        if let Ok(location) = ArchiveLocation::parse(typo) {
            taken.push(format!("{typo:?} -> {location:?}"));
        }
    }
    assert!(taken.is_empty(), "scheme typos accepted as local folders: {taken:?}");
}

/// "The access key is never in the config file": an endpoint's userinfo
/// is a place to put one, and the endpoint is echoed in error messages
/// and in `ClusterSettings`' Debug.
#[test]
fn an_endpoint_carrying_a_secret_is_refused() {
    let with_userinfo = settings(&format!("https://AKIDREVIEW:{SECRET}@minio.internal:9000"), "");
    let result = with_userinfo.check();
    assert!(result.is_err(), "an endpoint with user:secret@ accepted; Debug shows it: {with_userinfo:?}");
}

/// The bucket's client, formatted with `{:?}`, shows no secret.
#[test]
fn the_clients_debug_shows_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = s3_bucket(BUCKET, &settings("http://127.0.0.1:9", &credentials_file(dir.path()))).expect("client");
    let debug = format!("{store:?} {store}");
    assert!(!debug.contains(SECRET), "the secret in the client's Debug: {debug}");
}

/// A TCP server that accepts and never answers: an S3 endpoint hung.
fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("http://{address}")
}

/// A put to a store that never answers gives up within the settings
/// (request timeout 500 ms, 2 retries within 1 s), and the error holds
/// no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_to_a_hung_store_gives_up_within_its_retry_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = ArchiveLocation::parse(&format!("s3://{BUCKET}/p")).expect("location");
    let store = SharedStore::open(&location, &settings(&silent_server(), &credentials_file(dir.path()))).expect("open");
    let started = Instant::now();
    let put = tokio::time::timeout(Duration::from_secs(20), store.put_durable("scans/x.parquet", "x".into())).await;
    let took = started.elapsed();
    let error = put.expect("the put gives up").expect_err("nothing answered").to_string();
    assert!(took < Duration::from_secs(5), "gave up after {took:?}: {error}");
    assert!(!error.contains(SECRET), "{error}");
}

/// `query` over a hung store fails within the retry settings, rather
/// than hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_over_a_hung_store_fails_rather_than_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let location = ArchiveLocation::parse(&format!("s3://{BUCKET}/p")).expect("location");
    let source =
        ArchiveSource::open(&location, &settings(&silent_server(), &credentials_file(dir.path()))).expect("open");
    let budget = MemoryBudget::of(dir.path(), &Config::defaults().settlement);
    let started = Instant::now();
    let mut out = Vec::new();
    let ran = tokio::time::timeout(
        Duration::from_secs(30),
        run_query(&source, &budget, 1, "SELECT count(*) AS n FROM scans", OutputFormat::Csv, &mut out),
    )
    .await;
    let took = started.elapsed();
    let ran = ran.unwrap_or_else(|_| panic!("query still waiting after {took:?}"));
    assert!(ran.is_err(), "a query over a hung store answered: {}", String::from_utf8_lossy(&out));
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
}

/// The request's head as a store on loopback received it.
fn recording_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
            let mut bytes = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                bytes.extend_from_slice(&buf[..n]);
                if bytes.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            seen.lock().expect("lock").push(String::from_utf8_lossy(&bytes).to_lowercase());
            let _ =
                stream.write_all(b"HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (format!("http://{address}"), heads)
}

/// The environment that the child test below runs in.
const CHILD_VAR: &str = "FARESTREAM_SHARED_ARCHIVE_CHILD";

/// "Credentials from the settings' file, else … from the environment":
/// a credentials file without a session token is long-lived keys, and a
/// session token left in the environment (a shell that assumed a role
/// earlier) must not be sent with them. Runs the check below in a child
/// process with `AWS_SESSION_TOKEN` set.
#[test]
fn a_credentials_file_is_not_mixed_with_the_environments_session_token() {
    let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "shared_archive_edges::child_credentials_file_alone", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .env("AWS_SESSION_TOKEN", "ENVIRONMENT-SESSION-TOKEN")
        .output()
        .expect("the child runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.contains("1 passed"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_credentials_file_alone() {
    if std::env::var(CHILD_VAR).is_err() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (endpoint, heads) = recording_server();
    let location = ArchiveLocation::parse(&format!("s3://{BUCKET}/p")).expect("location");
    let store = SharedStore::open(&location, &settings(&endpoint, &credentials_file(dir.path()))).expect("open");
    let _ = store.put_durable("scans/x.parquet", "x".into()).await;
    let heads = heads.lock().expect("lock").clone();
    assert!(!heads.is_empty(), "no request reached the store");
    assert!(heads[0].contains("akidreview"), "signed with the file's key: {}", heads[0]);
    assert!(
        !heads.iter().any(|h| h.contains("x-amz-security-token")),
        "the file's keys were sent with the environment's session token:\n{}",
        heads[0]
    );
}

/// One scan's Parquet file, as a segment is encoded.
fn one_scan_file() -> Vec<u8> {
    farestream::archive::parquet_writer::encode_scans_file(&[ArchivedScan::blank()], 1_000, "review").expect("encode")
}

async fn count(source: &ArchiveSource, scratch: &std::path::Path, table: &str) -> Result<String, String> {
    crate::cluster_s3::query_csv(source, scratch, &format!("SELECT count(*) AS n FROM {table}")).await
}

/// Every prefix `cluster.archive_dir` accepts is where the nodes put
/// their files and where `query` reads them: a scan put under the prefix
/// (as a node's archive task puts a segment) is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_reads_back_under_every_prefix_the_config_accepts() {
    let Some(s3) = S3Server::start(BUCKET).await else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let client = on_moto(&s3);
    let mut wrong = Vec::new();
    for prefix in ["plain/archive", "with space", "ünïcode", "pct%41x", "hash#1", "what?x=1", "star*", "br[1]"] {
        // A prefix the config refuses never reaches a node or a reader.
        let Ok(location) = ArchiveLocation::parse(&format!("s3://{BUCKET}/{prefix}")) else { continue };
        let store = SharedStore::open(&location, &client).expect("open");
        let path = "scans/service_date=1970-01-01/part-p0000-00000000000000000000-00000000000000000001.parquet";
        store.put_durable(path, one_scan_file().into()).await.expect("the put");
        let source = ArchiveSource::open(&location, &client).expect("source");
        match count(&source, scratch.path(), "scans").await {
            Ok(csv) if csv == "n\n1\n" => {}
            seen => wrong.push(format!("prefix {prefix:?}: {seen:?}")),
        }
    }
    assert!(wrong.is_empty(), "query does not read back what the nodes put:\n{}", wrong.join("\n"));
}

/// An empty bucket, and a prefix holding no table yet: each table counts
/// nothing, rather than fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_over_an_empty_bucket_counts_nothing() {
    let Some(s3) = S3Server::start(BUCKET).await else { return };
    let scratch = tempfile::tempdir().expect("tempdir");
    let client = on_moto(&s3);
    for archive_dir in [format!("s3://{BUCKET}"), format!("s3://{BUCKET}/nothing/here/")] {
        let location = ArchiveLocation::parse(&archive_dir).expect("location");
        let source = ArchiveSource::open(&location, &client).expect("source");
        for table in ["scans", "charges"] {
            let seen = count(&source, scratch.path(), table).await;
            assert_eq!(seen, Ok("n\n0\n".to_string()), "{archive_dir} {table}");
        }
    }
}

/// The charges archive in cluster mode: its put runs by `Handle::block_on`
/// on the blocking thread the archive works on. On a current-thread
/// runtime (the handle cannot drive I/O itself) a real HTTP put to the
/// bucket still finishes while the runtime's thread awaits the blocking
/// task, a batch written twice (a crash before its mark) leaves one
/// file, and `query` counts the charge once.
#[test]
fn cluster_charges_put_from_a_blocking_thread_on_a_current_thread_runtime() {
    use farestream_core::charges::{ChargeKind, ChargeOutcome, ChargeRecord};
    use farestream_money::charges_archive::{ChargesRoot, write_charges_batch};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let Some(s3) = S3Server::start(BUCKET).await else { return };
        let scratch = tempfile::tempdir().expect("tempdir");
        let client = on_moto(&s3);
        let location = ArchiveLocation::parse(&format!("s3://{BUCKET}/charges-review")).expect("location");
        let store = SharedStore::open(&location, &client).expect("open");
        let root = ChargesRoot::Shared(store, tokio::runtime::Handle::current());
        let charge = ChargeRecord {
            charge_id: [7; 16],
            card_id: 42,
            service_date: chrono::NaiveDate::from_ymd_opt(2024, 10, 4).expect("date"),
            kind: ChargeKind::Ride,
            amount_cents: farestream_core::money::Cents::new(250),
            currency: "CNY".into(),
            scan_ids: vec![[1; 16]],
            outcome: ChargeOutcome::Succeeded,
            attempts: 1,
            created_at: 1,
            decided_at: Some(2),
            gateway_txn_id: Some("t".into()),
        };
        for _ in 0..2 {
            let (root, charge) = (root.clone(), charge.clone());
            let written = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::task::spawn_blocking(move || {
                    write_charges_batch(&root, 1, &[charge], &farestream::faults::Faults::default())
                }),
            )
            .await
            .expect("the put finishes: no deadlock")
            .expect("no panic");
            written.expect("written");
        }
        let source = ArchiveSource::open(&location, &client).expect("source");
        assert_eq!(count(&source, scratch.path(), "charges").await, Ok("n\n1\n".to_string()));
    });
}
