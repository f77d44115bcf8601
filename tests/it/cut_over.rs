//! The daily cut-over runs under the server: on its clock, stopped by its
//! shutdown, and a panic in the settlement stops the server as any job's
//! panic does (it used to run on a thread of its own that nobody watched).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDate;
use farestream::clock_source::ManualClock;
use farestream::config::Config;
use farestream::server::{DailySettlement, Fatal, Server};
use farestream::service_day::ServiceDayPolicy;
use farestream::tls_identity::{NewIdentity, ServerIdentity};
use farestream_core::clock::UnixMillis;
use tokio_util::sync::CancellationToken;

use crate::support::{T0_MS, test_assembly};

/// Records each date it is asked to settle; panics on the first when told,
/// fails `fails_on` every time, or holds each settlement until stopped and
/// then writes `marker` (a settlement still writing into the data dir).
#[derive(Debug, Default)]
struct RecordingSettlement {
    settled: Mutex<Vec<NaiveDate>>,
    attempts: Mutex<Vec<NaiveDate>>,
    panics: bool,
    fails_on: Option<NaiveDate>,
    hold_then_write: Option<std::path::PathBuf>,
    entered: std::sync::atomic::AtomicBool,
}

impl DailySettlement for RecordingSettlement {
    fn settle(&self, date: NaiveDate, _now: UnixMillis, stop: &CancellationToken) -> Result<String, String> {
        self.attempts.lock().expect("lock").push(date);
        if self.panics {
            panic!("injected: the settlement of {date} panicked");
        }
        if self.fails_on == Some(date) {
            return Err(format!("injected: {date} cannot be settled"));
        }
        if let Some(marker) = &self.hold_then_write {
            self.entered.store(true, std::sync::atomic::Ordering::SeqCst);
            while !stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(10));
            }
            // What a settlement does between noticing the stop and ending.
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(marker, b"written").expect("marker");
            return Err("stopped".into());
        }
        self.settled.lock().expect("lock").push(date);
        Ok(format!("settled {date}"))
    }
}

/// The cut-over at 04:30 Shanghai on `day`, settling the day before.
fn cut_over_on(day: &str) -> UnixMillis {
    let policy = ServiceDayPolicy { time_zone: chrono_tz::Asia::Shanghai, start_hour: 4 };
    policy.day_start(date(day)).expect("start") + 30 * 60_000
}

async fn start(
    config: Config,
    clock: &Arc<ManualClock>,
    settlement: Arc<RecordingSettlement>,
) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = ServerIdentity::generate().expect("identity");
    let server = test_assembly(&config, dir.path(), &identity, clock)
        .expect("assembly")
        .with_daily_settlement(settlement as Arc<dyn DailySettlement>)
        .start()
        .await
        .expect("server");
    (dir, server)
}

fn date(text: &str) -> NaiveDate {
    text.parse().expect("date")
}

/// T0 is 2025-11-20 10:00 in Shanghai; with the shipped config the next
/// cut-over is 2025-11-21 04:30 (30 min after that service day starts).
fn next_cut_over_ms() -> UnixMillis {
    let policy = ServiceDayPolicy { time_zone: chrono_tz::Asia::Shanghai, start_hour: 4 };
    policy.day_start(date("2025-11-21")).expect("start") + 30 * 60_000
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cut_over_settles_the_ended_day_and_the_rebill_window_on_the_servers_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let identity = ServerIdentity::generate().expect("identity");
    let settlement = Arc::new(RecordingSettlement::default());
    let server = test_assembly(&Config::defaults(), dir.path(), &identity, &clock)
        .expect("assembly")
        .with_daily_settlement(Arc::clone(&settlement) as Arc<dyn DailySettlement>)
        .start()
        .await
        .expect("server");
    clock.set(next_cut_over_ms() - 1);
    // The job re-reads the clock at least every second: give it two.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert!(settlement.settled.lock().expect("lock").is_empty(), "nothing is settled before the cut-over");
    clock.set(next_cut_over_ms());
    wait_for("the cut-over", || settlement.settled.lock().expect("lock").len() == 5).await;
    // The day that ended, the three days of the rebill window, and the day
    // after it closed (its run marks it final).
    let expected: Vec<NaiveDate> =
        ["2025-11-20", "2025-11-19", "2025-11-18", "2025-11-17", "2025-11-16"].into_iter().map(date).collect();
    assert_eq!(*settlement.settled.lock().expect("lock"), expected);
    assert_eq!(server.failure(), None);
    server.shutdown().await.expect("a shutdown stops the cut-over job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_settlement_stops_the_server_instead_of_the_settlement_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let identity = ServerIdentity::generate().expect("identity");
    let settlement = Arc::new(RecordingSettlement { panics: true, ..Default::default() });
    let server = test_assembly(&Config::defaults(), dir.path(), &identity, &clock)
        .expect("assembly")
        .with_daily_settlement(settlement)
        .start()
        .await
        .expect("server");
    // The job reads the clock once it runs: before it moves on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.set(next_cut_over_ms());
    let failure = tokio::time::timeout(Duration::from_secs(10), server.failed()).await.expect("the server stops");
    match failure {
        Fatal::TaskPanicked { task, message } => {
            assert_eq!(task, "the daily cut-over");
            assert!(message.contains("injected: the settlement of 2025-11-20 panicked"), "{message}");
        }
        other => panic!("stopped for another reason: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cut_over_off_in_the_config_nothing_is_settled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(next_cut_over_ms() - 1));
    let identity = ServerIdentity::generate().expect("identity");
    let settlement = Arc::new(RecordingSettlement::default());
    let mut config = Config::defaults();
    config.settlement.cut_over_enabled = false;
    let server = test_assembly(&config, dir.path(), &identity, &clock)
        .expect("assembly")
        .with_daily_settlement(Arc::clone(&settlement) as Arc<dyn DailySettlement>)
        .start()
        .await
        .expect("server");
    clock.set(next_cut_over_ms() + 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(settlement.settled.lock().expect("lock").is_empty());
    server.shutdown().await.expect("shutdown");
}

/// Review: a shutdown let go of the data dir while a settlement still ran
/// on a blocking thread, so a new server could open the directory under a
/// settlement still writing into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_the_running_settlement_before_letting_go_of_the_data_dir() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let scratch = tempfile::tempdir().expect("tempdir");
    let marker = scratch.path().join("written-after-stop");
    let settlement = Arc::new(RecordingSettlement { hold_then_write: Some(marker.clone()), ..Default::default() });
    let (dir, server) = start(Config::defaults(), &clock, Arc::clone(&settlement)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.set(next_cut_over_ms());
    wait_for("the settlement to start", || settlement.entered.load(std::sync::atomic::Ordering::SeqCst)).await;
    server.shutdown().await.expect("shutdown");
    assert!(marker.exists(), "the settlement ended before the shutdown returned");
    let reopened = farestream::server::Assembly::open(&Config::defaults(), dir.path(), NewIdentity::OnFirstStart);
    assert!(reopened.is_ok(), "and the data dir is free once it has");
}

/// Review: a day whose settlement kept failing held up every later
/// cut-over until it succeeded, and the cut-overs in between were skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_that_keeps_failing_holds_up_no_later_cut_over() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let mut config = Config::defaults();
    config.settlement.cut_over_retry_interval_secs = 1;
    let settlement = Arc::new(RecordingSettlement { fails_on: Some(date("2025-11-19")), ..Default::default() });
    let (_dir, server) = start(config, &clock, Arc::clone(&settlement)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.set(cut_over_on("2025-11-21"));
    wait_for("2025-11-20", || settlement.settled.lock().expect("lock").contains(&date("2025-11-20"))).await;
    clock.set(cut_over_on("2025-11-22"));
    wait_for("2025-11-21", || settlement.settled.lock().expect("lock").contains(&date("2025-11-21"))).await;
    let tries = settlement.attempts.lock().expect("lock").iter().filter(|d| **d == date("2025-11-19")).count();
    assert!(tries >= 2, "the failing day is still tried again ({tries} tries)");
    assert!(!settlement.settled.lock().expect("lock").contains(&date("2025-11-19")));
    server.shutdown().await.expect("shutdown");
}

/// Review: a clock stepped forward (a host that booted with a wrong clock)
/// settled the days before the step and skipped today's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_forward_settles_the_days_of_the_new_time() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let settlement = Arc::new(RecordingSettlement::default());
    let (_dir, server) = start(Config::defaults(), &clock, Arc::clone(&settlement)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.set(T0_MS + 10 * 24 * 3_600_000); // 2025-11-30 10:00 Shanghai
    wait_for("the cut-over", || settlement.settled.lock().expect("lock").len() == 5).await;
    let expected: Vec<NaiveDate> =
        ["2025-11-29", "2025-11-28", "2025-11-27", "2025-11-26", "2025-11-25"].into_iter().map(date).collect();
    assert_eq!(*settlement.settled.lock().expect("lock"), expected);
    server.shutdown().await.expect("shutdown");
}
