//! Issue 21: `loadgen` against a real server on the system clock: a
//! prepared city is pushed open loop and every scan is acked once; pushed
//! again, every scan is a re-delivery.

use std::time::Duration;

use farestream::config::Config;
use farestream::server::Assembly;
use farestream::sim::CitySpec;
use farestream::sim::loadgen::{self, Pace, PrepareSpec, RunSpec};
use farestream::tls_identity::NewIdentity;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_city_is_pushed_open_loop_every_scan_acked_once_and_again_as_re_deliveries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::defaults();
    (config.metrics.listen_addr, config.api.listen_addr) = (String::new(), String::new());
    let assembly = Assembly::open(&config, dir.path(), NewIdentity::OnFirstStart).expect("assembly");
    let server = assembly.listen_on("127.0.0.1:0".parse().expect("addr")).start().await.expect("server");
    let city = CitySpec {
        riders: 300,
        gateways: 3,
        validators_per_gateway: 2,
        trips_per_rider: 2.0,
        denied_riders_percent: 0.0,
        redelivery_percent: 0.0,
        seed: 21,
    };
    let spec = PrepareSpec { city, batch_scans: 40, unsealed: false };
    let hidden = indicatif::ProgressBar::hidden();
    let batches = loadgen::prepare_batches(dir.path(), &config, &spec, &hidden).expect("prepare");
    let file = dir.path().join("load.bin");
    loadgen::write_scans_file(&file, &batches).expect("write");
    let batches = loadgen::read_scans_file(&file, config.wire.frame_bytes_max).expect("read back");
    let scans: u64 = batches.iter().map(|b| b.scans.len() as u64).sum();
    assert!(batches.iter().all(|b| !b.scans.is_empty() && b.scans.len() <= 40));
    let gateways: std::collections::BTreeSet<&str> = batches.iter().map(|b| b.gateway_id.as_str()).collect();
    assert_eq!(gateways.len(), 3);
    assert!(batches.iter().all(|b| b.scans.iter().all(|s| s.ride_code.first() == Some(&2))), "sealed codes");

    // The ceiling: the core alone over the same batches, each rider's
    // credential checked once (3 scans on average a rider, 2 signatures
    // at the first, 1 after).
    let ceiling = loadgen::measure_ceiling(dir.path(), &config, &batches, &hidden).expect("ceiling");
    assert_eq!(ceiling.scans, scans);
    assert!(ceiling.signatures > scans && ceiling.signatures < 2 * scans, "{ceiling:?} for {scans} scans");

    let rate = 4_000.0;
    let open = RunSpec {
        pace: Pace::Rate { scans_per_sec: rate },
        in_flight: 4,
        metrics_url: None,
        other_servers: Vec::new(),
    };
    let addr = server.local_addr();
    let report = loadgen::run(dir.path(), &config, addr, batches.clone(), open, hidden.clone()).await.expect("run");
    let t = &report.tally;
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_eq!((t.scans_acked, t.redelivered), (scans, 0), "every scan acked once");
    assert_eq!(t.accepted + t.rejected, scans);
    assert!(t.rejected > 0 && t.accepted > t.rejected * 10, "a city's few percent of trouble: {t:?}");
    assert_eq!(t.latency_us.len(), batches.len() as u64, "one latency per batch");
    let last_due = Duration::from_secs_f64((scans - batches.last().expect("some").scans.len() as u64) as f64 / rate);
    assert!(report.elapsed >= last_due, "open loop: nothing sent before it was due");
    assert!(report.render().contains(&format!("acked    {scans} scans")), "{}", report.render());

    let closed = RunSpec { pace: Pace::AsFastAsAcks, in_flight: 8, metrics_url: None, other_servers: Vec::new() };
    let again = loadgen::run(dir.path(), &config, addr, batches, closed, hidden).await.expect("again");
    assert_eq!((again.tally.redelivered, again.tally.accepted), (scans, 0), "the server drops what it has");
    server.shutdown().await.expect("shutdown");
}

/// A `serve` process the test stops however it ends.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `farestream serve` on `config_file` and returns it with the
/// address it said it serves on.
fn serve(data_dir: &std::path::Path, config_file: &std::path::Path) -> (Served, std::net::SocketAddr) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_farestream"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(config_file)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut served = Served(child);
    let said = crate::support::printed_until_serving(&mut served.0);
    let Some(rest) = said.last().and_then(|line| line.strip_prefix("farestream serving on ")) else {
        panic!("serve did not say it serves within a minute: {said:?}");
    };
    let addr = rest.split_whitespace().next().expect("an address").parse().expect("a socket address");
    (served, addr)
}

/// Issue 21: under load the pricer gives way and catches up after. A
/// served process's pricer thread runs at the configured nice value (the
/// others at the server's), and a run read from its metrics page reports
/// the server's CPU, the pricer's share of it, and when everything acked
/// was priced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_pricer_gives_way_and_the_run_reports_when_it_caught_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr");
    let toml = format!(
        "[metrics]\nlisten_addr = \"{metrics_port}\"\n[api]\nlisten_addr = \"\"\n[payments]\npricer_thread_nice = 7\n"
    );
    let config_file = dir.path().join("config.toml");
    std::fs::write(&config_file, &toml).expect("config");
    let config = Config::from_toml_over_defaults(&toml, "config.toml").expect("config");
    let data_dir = dir.path().join("data");
    let (served, addr) = serve(&data_dir, &config_file);

    let server_threads = || -> Vec<(String, i64)> {
        procfs::process::Process::new(i32::try_from(served.0.id()).expect("a pid"))
            .and_then(|p| p.tasks())
            .expect("the server's threads")
            .flatten()
            .filter_map(|task| task.stat().ok())
            .map(|stat| (stat.comm, stat.nice))
            .collect()
    };
    // The money threads may start a moment after the listener says it
    // serves, and the pricer lowers its priority once it runs.
    let mut threads = server_threads();
    for _ in 0..100 {
        if threads.iter().any(|(comm, nice)| comm == "pricer" && *nice == 7)
            && threads.iter().any(|(comm, _)| comm == "archiver")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        threads = server_threads();
    }
    let nice_of = |name: &str| threads.iter().filter(|(comm, _)| comm == name).map(|(_, n)| *n).collect::<Vec<_>>();
    assert_eq!(nice_of("pricer"), [7], "{threads:?}");
    assert_eq!(nice_of("archiver"), [0], "only the pricer gives way: {threads:?}");

    let city = CitySpec {
        riders: 200,
        gateways: 2,
        validators_per_gateway: 2,
        trips_per_rider: 2.0,
        denied_riders_percent: 0.0,
        redelivery_percent: 0.0,
        seed: 7,
    };
    let hidden = indicatif::ProgressBar::hidden();
    let spec = PrepareSpec { city, batch_scans: 50, unsealed: false };
    let batches = loadgen::prepare_batches(&data_dir, &config, &spec, &hidden).expect("prepare");
    let scans: u64 = batches.iter().map(|b| b.scans.len() as u64).sum();
    // Open loop over about three seconds: the server brings its CPU
    // figures up to date once a second.
    let run = RunSpec {
        pace: Pace::Rate { scans_per_sec: scans as f64 / 3.0 },
        in_flight: 4,
        metrics_url: Some(format!("http://{metrics_port}/metrics")),
        other_servers: Vec::new(),
    };
    let report = loadgen::run(&data_dir, &config, addr, batches, run, hidden).await.expect("run");
    assert_eq!(report.tally.scans_acked, scans);
    let server = report.server.unwrap_or_else(|| panic!("no server figures: {:?}", report.server_error));
    assert!(server.cpu_secs > 0.0 && server.peak_rss_bytes > 1_048_576.0, "{server:?}");
    let pricer_cpu = server.pricer_cpu_secs.expect("the server says what its pricer used");
    assert!((0.0..=server.cpu_secs).contains(&pricer_cpu) && server.catch_up_cpu_secs >= 0.0, "{server:?}");
    let caught_up = server.pricing_caught_up_after.expect("everything acked priced");
    assert!(caught_up < loadgen::server_metrics::CATCH_UP_WAIT_MAX, "{server:?}");
    let rendered = report.render();
    assert!(rendered.contains("everything acked priced") && rendered.contains("pricing_caught_up_secs="), "{rendered}");
    drop(served);
}
