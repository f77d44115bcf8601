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
    let open = RunSpec { pace: Pace::Rate { scans_per_sec: rate }, in_flight: 4, metrics_url: None };
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

    let closed = RunSpec { pace: Pace::AsFastAsAcks, in_flight: 8, metrics_url: None };
    let again = loadgen::run(dir.path(), &config, addr, batches, closed, hidden).await.expect("again");
    assert_eq!((again.tally.redelivered, again.tally.accepted), (scans, 0), "the server drops what it has");
    server.shutdown().await.expect("shutdown");
}
