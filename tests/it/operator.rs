//! What an operator can get wrong: config values at the ends of their
//! ranges, a task that panics, a disk that cannot be written, a shutdown
//! with half-read batches, and command lines pointed at nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use farestream::config::Config;
use farestream::config::ranges::RANGES;
use farestream::gateway::tls::{SERVER_NAME, client_config};
use farestream::scan::{ScanStatus, TapKind};
use farestream::server::Fatal;
use farestream::wire::{AckStatus, BatchAck, ScanRecord, encode_frame, read_message};

use crate::support::{Harness, T0_MS, batch, record, secs, test_assembly};

/// Every numeric key at its minimum (`at_max` false) or maximum, then the
/// cross-key rules satisfied with the smallest change.
fn config_at_extremes(at_max: bool) -> Config {
    let mut text = String::new();
    let mut section = "";
    let mut keys: Vec<_> = RANGES.iter().collect();
    keys.sort_by_key(|r| r.key);
    for range in keys {
        let (table, name) = range.key.split_once('.').expect("dotted");
        if table != section {
            text.push_str(&format!("[{table}]\n"));
            section = table;
        }
        let value = match (at_max, range.key) {
            // Cross-key rules: the record holds two frames, a segment the
            // record, the frame budget a frame, and the gateway waits as
            // long as the server may.
            (false, "wal.record_bytes_max") => 2 * 1024,
            (true, "wire.frame_bytes_max") => 64 * 1024 * 1024,
            (false, "gateway.ack_timeout_ms") => 100,
            (true, "gateway.retry_backoff_ms_initial") => 600_000,
            // At one scan a second the server answers BACKOFF with the
            // wait: a gateway that gives up at once would never push.
            (false, "gateway.retry_attempts_max") => 5,
            // The service day starts at an hour either way.
            (_, "service_day.start_hour") => 4,
            // A lease term renewed at its longest leaves no room for a
            // margin: one lost renewal must not lose it.
            (true, "cluster.lease_safety_margin_ms") => 0,
            (false, _) => range.min,
            (true, _) => range.max,
        };
        text.push_str(&format!("{name} = {value}\n"));
    }
    Config::from_toml_over_defaults(&text, if at_max { "max.toml" } else { "min.toml" })
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Review: the largest allowed values panicked at start or hung; the
/// smallest accepted nothing. The server runs a short load with each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_with_every_key_at_its_smallest_and_largest() {
    for at_max in [false, true] {
        let config = config_at_extremes(at_max);
        let h = Harness::start_with(config).await;
        let client = h.client_as("d");
        let scanned = T0_MS + 60_000;
        for seq in 0..3u64 {
            let rider = h.rider(500 + seq);
            // A credential as long as the config allows, around the scan.
            let window = h.config.ride_code.credential_validity_secs;
            let valid_from = secs(scanned) - 10;
            let credential = h.issuer.issue(500 + seq, rider.key.public_key(), valid_from, valid_from + window);
            // A code made at the very second it is scanned: at the smallest
            // validity and skew nothing older passes.
            let code = rider.key.make_code(&credential, secs(scanned), 1).bytes.to_vec();
            // One-byte ids: the smallest wire.id_bytes_max.
            let scan = ScanRecord {
                route_id: "r".into(),
                stop_id: "s".into(),
                ..record("v", seq, scanned, TapKind::Single, code)
            };
            let one = batch("d", seq, vec![scan]);
            let ack = client.push(&one).await.unwrap_or_else(|e| panic!("at_max={at_max}: {e}"));
            assert_eq!(ack.accepted, 1, "at_max={at_max}: {ack:?}");
        }
        let rows = h.archive_rows().await;
        assert_eq!(rows.len(), 3, "at_max={at_max}");
        assert!(rows.iter().all(|r| r.status == ScanStatus::Accepted));
        h.server.shutdown().await.expect("shutdown");
    }
}

/// Review: a panic in the accept task left a process that said it served,
/// accepted nothing, and exited 0. A panic in any task stops the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_background_task_stops_the_server() {
    let h = Harness::start().await;
    h.faults.panic_at("housekeeping");
    let reason = tokio::time::timeout(Duration::from_secs(10), h.server.failed()).await.expect("the server stops");
    let expected = Fatal::TaskPanicked { task: "housekeeping", message: "injected panic at housekeeping".into() };
    assert_eq!(reason, expected);
}

/// Review: a data dir that could not be written still printed "serving
/// on" and died at the first batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_that_cannot_be_written_is_refused_before_serving() {
    let h = Harness::start().await;
    h.faults.set_disk_full(true);
    let (dir, identity, faults) = (h.dir.path().to_path_buf(), h.identity, h.faults.clone());
    h.server.shutdown().await.expect("shutdown");
    let clock = std::sync::Arc::new(farestream::clock_source::ManualClock::new(T0_MS));
    let assembly = test_assembly(&Config::defaults(), &dir, &identity, &clock).expect("assembly");
    let refused = assembly.with_faults(faults).start().await;
    let error = refused.err().expect("not started").to_string();
    assert!(error.contains("not writable") && error.contains("wal"), "{error}");
}

/// Review: with a half-read batch, SIGTERM took up to the QUIC idle
/// timeout. A half-read batch is answered BACKOFF and shutdown goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_half_read_batches_and_does_not_wait_for_them() {
    let mut config = Config::defaults();
    config.wire.frame_read_timeout_ms = 600_000;
    config.server.shutdown_deadline_ms = 200;
    let h = Harness::start_with(config).await;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let credentials = h.credentials("depot");
    endpoint.set_default_client_config(client_config(&h.identity.cert, &credentials).expect("client config"));
    let connection = endpoint.connect(h.server.local_addr(), SERVER_NAME).expect("connect").await.expect("handshake");
    let rider = h.rider(600);
    let frame = encode_frame(&batch("depot", 1, vec![record("g", 1, T0_MS, TapKind::Single, rider.code_at(T0_MS, 1))]));
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    send.write_all(&frame[..frame.len() / 2]).await.expect("half a frame");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    h.server.shutdown().await.expect("shutdown");
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown waited {:?}", started.elapsed());
    let ack = read_message::<BatchAck, _>(&mut recv, 1 << 20, "BatchAck").await.expect("an answer");
    assert_eq!(ack.ack_status(), AckStatus::Backoff, "{ack:?}");
    assert!(ack.error.contains("shutting down"), "{ack:?}");
}

fn farestream(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_farestream")).args(args).output().expect("running farestream")
}

/// Review: validators loaded by hand by `keys export-terminal` never
/// learned the version-1 cut-off that pushed ones get.
#[test]
fn export_terminal_gives_hand_loaded_validators_the_keys_and_the_version_1_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    let config = dir.path().join("cut-off.toml");
    std::fs::write(&config, "[ride_code]\nversion_1_refused_from_date = \"2099-01-01\"\n").expect("config");
    let config = config.to_str().expect("utf-8 path");
    farestream::keystore::Keystore::open_or_create(
        dir.path(),
        farestream::keystore::KeystoreOptions::from_config(&Config::defaults()),
    )
    .expect("keys");
    let rotate = farestream(&["--data-dir", data, "--config", config, "keys", "rotate-terminal", "--tomorrow"]);
    assert!(rotate.status.success(), "{rotate:?}");
    let export = farestream(&["--data-dir", data, "--config", config, "keys", "export-terminal"]);
    assert!(export.status.success(), "{export:?}");
    let out = String::from_utf8_lossy(&export.stdout);
    let mut lines = out.lines();
    let first = lines.next().expect("a first line");
    let mut cut_off = Config::defaults();
    cut_off.ride_code.version_1_refused_from_date = Some("2099-01-01".into());
    let secs = cut_off.freshness_policy().expect("policy").unsealed_refused_from_secs.expect("a cut-off");
    let at = chrono::DateTime::from_timestamp(i64::from(secs), 0).expect("time").to_rfc3339();
    assert_eq!(first, format!("# version-1 codes refused from {at}"), "{out}");
    let keys: Vec<Vec<&str>> = lines.map(|l| l.split(' ').collect()).collect();
    assert_eq!(keys.iter().map(|k| k[0]).collect::<Vec<_>>(), vec!["1", "2", "3"], "today, tomorrow, its rotation");
    assert!(keys.iter().all(|k| k.len() == 5 && k[4].len() == 64), "{out}");
    assert_eq!(keys[1][1], keys[2][1], "the rotation is tomorrow's key: {out}");
    let plain = farestream(&["--data-dir", data, "keys", "export-terminal"]);
    assert!(String::from_utf8_lossy(&plain.stdout).starts_with("# version-1 codes still read\n"), "{plain:?}");
}

/// Review: `simulate --server` where nothing listens printed nothing for
/// minutes; `keys retire 99` on a fresh data dir made a key first; `demo
/// --day-secs 0` was clamped and then failed its own check.
#[test]
fn the_command_line_refuses_what_cannot_work_at_once_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    let retire = farestream(&["--data-dir", data, "keys", "retire", "99"]);
    assert!(!retire.status.success());
    assert!(String::from_utf8_lossy(&retire.stderr).contains("no issuer keys"), "{retire:?}");
    assert!(!dir.path().join("keys/keyring.toml").exists(), "no key was made");

    let demo = farestream(&["--data-dir", data, "demo", "--day-secs", "0"]);
    assert!(!demo.status.success());
    assert!(String::from_utf8_lossy(&demo.stderr).contains("must be a number from 1 to 3600"), "{demo:?}");

    farestream::keystore::Keystore::open_or_create(
        dir.path(),
        farestream::keystore::KeystoreOptions::from_config(&Config::defaults()),
    )
    .expect("keys");
    farestream::tls_identity::ServerIdentity::load_or_create(
        dir.path(),
        farestream::tls_identity::NewIdentity::OnFirstStart,
    )
    .expect("tls");
    let now_secs = chrono::Utc::now().timestamp();
    farestream::fleet_ca::FleetCa::create_if_absent(dir.path(), now_secs, &Default::default()).expect("fleet CA");
    let config = dir.path().join("quick.toml");
    std::fs::write(&config, "[gateway]\nconnect_timeout_ms = 300\n").expect("config");
    let nowhere = std::net::UdpSocket::bind("127.0.0.1:0").expect("a port nobody serves QUIC on");
    let addr = nowhere.local_addr().expect("addr").to_string();
    let started = Instant::now();
    let config = config.to_str().expect("utf-8 path");
    let simulate =
        farestream(&["--data-dir", data, "--config", config, "simulate", "--server", &addr, "--riders", "10"]);
    assert!(!simulate.status.success());
    assert!(String::from_utf8_lossy(&simulate.stderr).contains("no farestream server answered"), "{simulate:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

/// `query` answers in each format, refuses bad SQL with exit code 2 and
/// DataFusion's message; `settle` of a day with nothing archived writes an
/// empty, reconciled run; a bad date is refused before anything runs.
#[test]
fn query_and_settle_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    // Issue 17 item 16: `query` on a data dir that does not exist answered
    // with exit 0; before anything was archived it printed `++`; and the
    // table format held the whole result in memory.
    let nowhere = dir.path().join("no-such-dir");
    let missing = farestream(&["--data-dir", nowhere.to_str().expect("utf-8"), "query", "SELECT 1"]);
    assert!(
        !missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no data dir"),
        "{missing:?}"
    );
    let empty = farestream(&["--data-dir", data, "query", "SELECT scan_id, card_id FROM scans"]);
    let shown = String::from_utf8_lossy(&empty.stdout);
    assert!(
        empty.status.success() && shown.contains("| scan_id | card_id |"),
        "the columns, even with no rows: {shown}"
    );
    assert!(shown.contains("nothing is archived yet") && shown.contains("archive.file_age_secs_max"), "{shown}");
    let many = farestream(&["--data-dir", data, "query", "SELECT * FROM generate_series(1, 20000)"]);
    let shown = String::from_utf8_lossy(&many.stdout);
    assert!(
        shown.contains("the first 10000 rows of more") && !shown.contains("| 10001 "),
        "{}",
        &shown[shown.len() - 300..]
    );
    let settle = farestream(&["--data-dir", data, "settle", "--date", "2026-11-25"]);
    assert!(settle.status.success(), "{settle:?}");
    let out = String::from_utf8_lossy(&settle.stdout);
    assert!(out.contains("settlement run 1 (cut_over)") && out.contains("reconciled: no breaks"), "{out}");
    assert!(dir.path().join("reports/settlement-2026-11-25.html").exists());

    let sql = "SELECT run, kind, scans FROM settlement_runs WHERE service_date = DATE '2026-11-25'";
    let csv = farestream(&["--data-dir", data, "query", "--format", "csv", sql]);
    assert_eq!(String::from_utf8_lossy(&csv.stdout), "run,kind,scans\n1,cut_over,0\n", "{csv:?}");
    let json = farestream(&["--data-dir", data, "query", "--format", "json", sql]);
    assert_eq!(String::from_utf8_lossy(&json.stdout).trim(), r#"{"run":1,"kind":"cut_over","scans":0}"#);
    // Ids as strings: a JSON number above 2^53 loses digits in most readers.
    let ids = "SELECT CAST(9223372036854775807 AS BIGINT) AS card_id, CAST(-9223372036854775808 AS BIGINT) AS route_id, \
               CAST(18446744073709551615 AS BIGINT UNSIGNED) AS scan_id, CAST(NULL AS BIGINT) AS charge_id, \
               CAST(9007199254740993 AS BIGINT) AS amount_cents";
    let json = farestream(&["--data-dir", data, "query", "--format", "json", ids]);
    assert_eq!(
        String::from_utf8_lossy(&json.stdout).trim(),
        r#"{"card_id":"9223372036854775807","route_id":"-9223372036854775808","scan_id":"18446744073709551615","amount_cents":9007199254740993}"#,
        "{json:?}"
    );
    let table = farestream(&["--data-dir", data, "query", sql]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("| 1   | cut_over | 0     |"), "{table:?}");
    let parquet = farestream(&["--data-dir", data, "query", "--format", "parquet", sql]);
    assert!(parquet.status.success() && parquet.stdout.starts_with(b"PAR1") && parquet.stdout.ends_with(b"PAR1"));

    let bad = farestream(&["--data-dir", data, "query", "SELECT nope FROM scans"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"), "DataFusion's message names the column: {bad:?}");
    for date in ["2026-13-01", "", "20261125", "+262143-01-01", "1969-12-31", "10000-01-01", "2026-1-5"] {
        let refused = farestream(&["--data-dir", data, "settle", "--date", date]);
        assert!(!refused.status.success() && refused.status.code() != Some(3), "{date}: {refused:?}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--date"), "{date}: {refused:?}");
    }
    for date in ["1970-01-01", "9999-12-31"] {
        let edge = farestream(&["--data-dir", data, "settle", "--date", date]);
        assert!(edge.status.success(), "{date}: {edge:?}");
    }
}

/// Issue 17 item 12: two servers on one data dir both started, corrupted
/// the log, and the data dir never started again. The second is refused,
/// naming the first; the first keeps serving; the next start after it
/// stops (or dies) takes the directory over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_data_dir_is_refused_and_names_the_first() {
    let h = Harness::start().await;
    let config = h.dir.path().join("ports.toml");
    std::fs::write(&config, "[metrics]\nlisten_addr = \"\"\n[api]\nlisten_addr = \"\"\n").expect("config");
    let second = Command::new(env!("CARGO_BIN_EXE_farestream"))
        .args(["--data-dir", h.dir.path().to_str().expect("utf-8")])
        .args(["--config", config.to_str().expect("utf-8"), "serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let output =
        tokio::task::spawn_blocking(move || wait_at_most(second, Duration::from_secs(60))).await.expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a second serve ran over a data dir in use: {output:?}");
    let holder = format!("pid {}", std::process::id());
    assert!(stderr.contains("in use by another farestream server") && stderr.contains(&holder), "{stderr}");

    let (injected, identity) = ((&h.faults, &h.inbox), &h.identity);
    let in_process = crate::support::try_start_server(&h.config, h.dir.path(), identity, &h.clock, injected).await;
    let refused = in_process.err().expect("a second server in this process is refused too").to_string();
    assert!(refused.contains(&holder), "{refused}");

    let rider = h.rider(7);
    let scan = record("gate-1", 1, T0_MS, TapKind::Single, rider.code_at(T0_MS, 1));
    assert_eq!(
        h.client_as("depot").push(&batch("depot", 1, vec![scan])).await.expect("ack").accepted,
        1,
        "the first serves on"
    );
    let h = h.crash_and_recover(|_| {}).await;
    let h = h.restart().await;
    assert_eq!(h.archive_rows().await.len(), 1, "the data dir is whole after both");
}

/// The child's output once it exits, or a failure (and the child killed)
/// once `limit` has passed.
fn wait_at_most(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            child.kill().expect("kill");
            let output = child.wait_with_output().expect("output");
            panic!("still running after {limit:?}: {output:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// A data dir for the simulator beside the harness's server: keys of its
/// own, and the server's certificate where `simulate` looks for it.
fn simulator_data_dir(h: &Harness, config: &Config) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    farestream::keystore::Keystore::open_or_create(
        dir.path(),
        farestream::keystore::KeystoreOptions::from_config(config),
    )
    .expect("keys");
    std::fs::create_dir_all(dir.path().join("tls")).expect("tls dir");
    std::fs::write(dir.path().join("tls").join("cert.der"), &h.identity.cert).expect("the server's certificate");
    crate::support::copy_fleet_ca(h.dir.path(), dir.path());
    dir
}

/// Issue 17 item 16: with `server.connections_max = 1` the simulator's
/// reachability probe held the only connection, and its gateways were
/// refused until the probe's idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_probe_gives_its_connection_back() {
    let mut config = Config::defaults();
    config.server.connections_max = 1;
    config.server.idle_timeout_ms = 60_000;
    // A gateway that gives up within a second, long before an idle timeout
    // could free a slot held by the probe.
    config.gateway.retry_attempts_max = 4;
    config.gateway.retry_backoff_ms_max = 200;
    let h = Harness::start_with(config.clone()).await;
    let dir = simulator_data_dir(&h, &config);
    farestream::sim::load::reach_server(dir.path(), &config, h.server.local_addr()).await.expect("reachable");
    let rider = h.rider(44);
    let scan = record("gate-1", 1, T0_MS, TapKind::Single, rider.code_at(T0_MS, 1));
    let ack =
        h.client_as("depot").push(&batch("depot", 1, vec![scan])).await.expect("the load's gateway gets the slot");
    assert_eq!(ack.accepted, 1);
}

/// Issue 17 item 16: when its server died, `simulate` spent the client's
/// whole retry budget on every remaining batch, in silence (134 s). The
/// first push that fails for good now stops the fleet and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulation_whose_server_dies_stops_and_says_so() {
    let mut config = Config::defaults();
    config.gateway.connect_timeout_ms = 300;
    config.gateway.ack_timeout_ms = 1_000;
    config.gateway.retry_attempts_max = 3;
    config.gateway.retry_backoff_ms_max = 200;
    let h = Harness::start_with(config.clone()).await;
    let dir = simulator_data_dir(&h, &config);
    let spec = farestream::sim::CitySpec {
        riders: 400,
        gateways: 3,
        validators_per_gateway: 2,
        trips_per_rider: 2.0,
        denied_riders_percent: 0.0,
        redelivery_percent: 0.0,
        seed: 9,
    };
    let load = farestream::sim::load::Load { duration_secs: 30.0, backlog: false, batch_scans: 500, unsealed: false };
    let (data_dir, server_addr, sim_config) = (dir.path().to_path_buf(), h.server.local_addr(), config.clone());
    let simulation = tokio::spawn(async move {
        let bar = indicatif::ProgressBar::hidden();
        farestream::sim::simulate(&data_dir, &sim_config, (server_addr, &[]), &spec, load, None, bar).await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.server.shutdown().await.expect("the server stops");
    let stopped = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(60), simulation)
        .await
        .expect("the simulation ends")
        .expect("task")
        .expect("simulate");
    assert!(report.fleet.batches_sent > 0, "some batches went before the server stopped");
    assert!(!report.fleet.errors.is_empty(), "the lost server is reported");
    // Liveness, not speed: the 28 s of planned load left would take each
    // of the three gateways ~1 s per remaining batch before the change.
    assert!(stopped.elapsed() < Duration::from_secs(20), "took {:?} after the server stopped", stopped.elapsed());
}

/// Issue 19: `serve` signed real payments with the secret shipped in the
/// config, which anyone can read. With a gateway to charge it refuses the
/// demo's secret (however given), one in the config, and one too short,
/// saying why; a secret from a file it takes, naming the file.
#[test]
fn serve_refuses_the_demo_payments_secret_when_it_charges_a_gateway() {
    use farestream::config::secret::{DEMO_PAYMENTS_SECRET, PAYMENTS_SECRET_ENV};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("gateway.toml");
    let ports = "[metrics]\nlisten_addr = \"\"\n[api]\nlisten_addr = \"\"\n";
    let with_gateway = |extra: &str| format!("{ports}[payments]\ngateway_url = \"http://127.0.0.1:9\"\n{extra}");
    let serve = |toml: &str, env: Option<&str>| {
        std::fs::write(&config, toml).expect("config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_farestream"));
        command.args(["--data-dir", data.to_str().expect("utf-8"), "--config", config.to_str().expect("utf-8")]);
        command.args(["serve", "--listen", "127.0.0.1:0"]).env_remove(PAYMENTS_SECRET_ENV);
        if let Some(value) = env {
            command.env(PAYMENTS_SECRET_ENV, value);
        }
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        command.spawn().expect("spawn serve")
    };
    let refused = |toml: &str, env: Option<&str>, says: &str| {
        let output = wait_at_most(serve(toml, env), Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(says), "{env:?}: {stderr}");
    };
    refused(&with_gateway(""), None, "the payments secret is the demo's");
    refused(&with_gateway(""), Some(DEMO_PAYMENTS_SECRET), "the payments secret is the demo's");
    refused(&with_gateway(""), Some(&"s".repeat(31)), "32 to 1024 are required");
    refused(&with_gateway("hmac_secret = \"a-secret-in-the-config-file-00000\"\n"), None, "no longer read");
    let secret_file = dir.path().join("paygw-secret");
    std::fs::write(&secret_file, "a-secret-of-the-operators-own-choosing\n").expect("secret");
    let from_file = format!("hmac_secret_file = \"{}\"\n", secret_file.display());
    refused(&with_gateway(&from_file), Some(&"e".repeat(40)), "both set");

    let said = lines_until_serving(serve(&with_gateway(&from_file), None));
    assert!(said.iter().any(|l| l.contains("farestream serving on")), "{said:?}");
    assert!(said.iter().any(|l| l.contains(&format!("payments secret from {}", secret_file.display()))), "{said:?}");
    // Without a gateway to charge, the zero-config default still serves.
    let said = lines_until_serving(serve(ports, None));
    assert!(said.iter().any(|l| l.contains("farestream serving on")), "{said:?}");
}

/// What a started `serve` printed until it said it serves (or stopped, or
/// a minute passed); then it is killed.
fn lines_until_serving(mut child: std::process::Child) -> Vec<String> {
    let said = crate::support::printed_until_serving(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    said
}
