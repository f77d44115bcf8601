//! The daily cut-over runs under the server: on its clock, stopped by its
//! shutdown, and a panic in the settlement stops the server as any job's
//! panic does (it used to run on a thread of its own that nobody watched).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDate;
use farestream::clock::{ManualClock, UnixMillis};
use farestream::config::Config;
use farestream::server::{DailySettlement, Fatal};
use farestream::service_day::ServiceDayPolicy;
use farestream::tls::ServerIdentity;

use crate::support::{T0_MS, test_assembly};

/// Records each date it is asked to settle; panics on the first when told.
#[derive(Debug, Default)]
struct RecordingSettlement {
    settled: Mutex<Vec<NaiveDate>>,
    panics: bool,
}

impl DailySettlement for RecordingSettlement {
    fn settle(&self, date: NaiveDate, _now: UnixMillis) -> Result<String, String> {
        if self.panics {
            panic!("injected: the settlement of {date} panicked");
        }
        self.settled.lock().expect("lock").push(date);
        Ok(format!("settled {date}"))
    }
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
