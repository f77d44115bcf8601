//! The daily cut-over: once a service day has ended (plus the configured
//! delay), the settlement runs for it and for every earlier day still
//! inside the rebill window. The server schedules and supervises it like
//! every other job (its clock, its shutdown, a panic stops the server);
//! what a settlement is comes from outside ([`DailySettlement`]: the
//! binary's, over the Parquet archives), so this crate needs no SQL engine.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use tokio_util::sync::CancellationToken;

use super::CutOverSettings;
use crate::clock::{Clock, UnixMillis};
use crate::service_day::{days_to_settle, next_cut_over};

/// The settlement the cut-over runs for one service date.
pub trait DailySettlement: Send + Sync + std::fmt::Debug + 'static {
    /// Settles `date` as of `now`, blocking (it runs on a blocking thread,
    /// off the QUIC tasks); a one-line headline for the log, or why not.
    fn settle(&self, date: NaiveDate, now: UnixMillis) -> Result<String, String>;
}

/// However far away the next cut-over is, the clock is read again after
/// this long: a wall clock may be stepped, and the demo's and the tests'
/// clocks do not run at wall speed.
const CLOCK_RECHECK: Duration = Duration::from_secs(1);

/// Runs each cut-over as it comes due until `stop`. A settlement that
/// fails is tried again after `retry_interval`; one that panics takes the
/// server down with it (see `spawn_supervised`), as any job's panic does.
pub(super) async fn cut_over_job(
    settlement: Arc<dyn DailySettlement>,
    settings: CutOverSettings,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let delay_ms = duration_ms(settings.delay);
    let lateness_ms = duration_ms(settings.accepted_lateness);
    loop {
        let Some((at, just_ended)) = next_cut_over(&settings.service_day, delay_ms, clock.now_ms()) else {
            tracing::error!("no next cut-over time; the daily settlement stops");
            return;
        };
        if !wait_until(clock.as_ref(), at, &stop).await {
            return;
        }
        let mut pending = days_to_settle(just_ended, lateness_ms);
        while !pending.is_empty() {
            let mut failed = Vec::new();
            for date in pending {
                match settle_one(&settlement, date, clock.now_ms(), &stop).await {
                    Some(Ok(headline)) => tracing::info!(%date, "{headline}"),
                    Some(Err(error)) => {
                        tracing::error!(%date, %error, "cut-over failed; will try again");
                        failed.push(date);
                    }
                    None => return,
                }
            }
            pending = failed;
            if !pending.is_empty() && !sleep_unless_stopped(settings.retry_interval, &stop).await {
                return;
            }
        }
    }
}

/// One settlement on a blocking thread; `None` once stopped. A panic in it
/// goes on up, to the supervisor.
async fn settle_one(
    settlement: &Arc<dyn DailySettlement>,
    date: NaiveDate,
    now: UnixMillis,
    stop: &CancellationToken,
) -> Option<Result<String, String>> {
    let settlement = Arc::clone(settlement);
    let running = tokio::task::spawn_blocking(move || settlement.settle(date, now));
    tokio::select! {
        _ = stop.cancelled() => None,
        joined = running => match joined {
            Ok(outcome) => Some(outcome),
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => None,
            },
        },
    }
}

/// Waits until `clock` reads `at` or later; false when stopped first.
async fn wait_until(clock: &dyn Clock, at: UnixMillis, stop: &CancellationToken) -> bool {
    loop {
        let now = clock.now_ms();
        if now >= at {
            return true;
        }
        let left = Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(u64::MAX));
        if !sleep_unless_stopped(left.min(CLOCK_RECHECK), stop).await {
            return false;
        }
    }
}

/// Sleeps for `period`; false when stopped first.
async fn sleep_unless_stopped(period: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(period) => true,
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
