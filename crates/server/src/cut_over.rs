//! The daily cut-over: once a service day has ended (plus the configured
//! delay), the settlement runs for it and for every earlier day still
//! inside the rebill window. The server schedules and supervises it like
//! every other job (its clock, its shutdown, a panic stops the server);
//! what a settlement is comes from outside ([`DailySettlement`]: the
//! binary's, over the Parquet archives), so this crate needs no SQL engine.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use tokio_util::sync::CancellationToken;

use crate::CutOverSettings;
use farestream_core::clock::UnixMillis;
use farestream_core::service_day::{days_to_settle, last_cut_over, next_cut_over};
use farestream_ingest::clock_source::{Clock, duration_ms};

/// The settlement the cut-over runs for one service date.
pub trait DailySettlement: Send + Sync + std::fmt::Debug + 'static {
    /// Settles `date` as of `now`, blocking (it runs on a blocking thread,
    /// off the QUIC tasks); a one-line headline for the log, or why not.
    /// It gives up at its next step once `stop` is cancelled (the server
    /// is stopping, and will not let go of the data dir before it ends),
    /// leaving what a crash at that step would: the next run mends it.
    fn settle(&self, date: NaiveDate, now: UnixMillis, stop: &CancellationToken) -> Result<String, String>;
}

/// However far away the next cut-over is, the clock is read again after
/// this long: a wall clock may be stepped, and the demo's and the tests'
/// clocks do not run at wall speed.
const CLOCK_RECHECK: Duration = Duration::from_secs(1);

/// Runs each cut-over as it comes due until `stop`: the days it settles
/// join the dates still owed a settlement, and every owed date is tried,
/// newest first. One that fails stays owed and is tried again after
/// `retry_interval`, while later cut-overs go on coming due (a day that
/// keeps failing holds up no other). One that panics takes the server
/// down with it (see `spawn_supervised`), as any job's panic does.
pub(super) async fn cut_over_job(
    settlement: Arc<dyn DailySettlement>,
    settings: CutOverSettings,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let delay_ms = duration_ms(settings.delay);
    let lateness_ms = duration_ms(settings.accepted_lateness);
    let mut owed: BTreeSet<NaiveDate> = BTreeSet::new();
    loop {
        let Some((next_at, _)) = next_cut_over(&settings.service_day, delay_ms, clock.now_ms()) else {
            tracing::error!("no next cut-over time; the daily settlement stops");
            return;
        };
        let retry_after = (!owed.is_empty()).then_some(settings.retry_interval);
        match wait_until(clock.as_ref(), next_at, retry_after, &stop).await {
            Woke::Stopped => return,
            Woke::RetryDue => {}
            Woke::CutOverDue => {
                // The cut-over that is due by the clock now, not the one
                // planned: a clock stepped forward settles today's days.
                let now = clock.now_ms();
                if let Some((_, just_ended)) = last_cut_over(&settings.service_day, delay_ms, now) {
                    owed.extend(days_to_settle(just_ended, lateness_ms));
                }
            }
        }
        for date in owed.clone().into_iter().rev() {
            match settle_one(&settlement, date, clock.now_ms(), &stop).await {
                Some(Ok(headline)) => {
                    tracing::info!(%date, "{headline}");
                    owed.remove(&date);
                }
                Some(Err(error)) => tracing::error!(%date, %error, "cut-over failed; will try again"),
                None => return,
            }
        }
    }
}

/// One settlement on a blocking thread; `None` once stopped (after the
/// settlement has ended: the data dir stays locked until it has). A panic
/// in it goes on up, to the supervisor.
async fn settle_one(
    settlement: &Arc<dyn DailySettlement>,
    date: NaiveDate,
    now: UnixMillis,
    stop: &CancellationToken,
) -> Option<Result<String, String>> {
    let (settlement, stop_settling) = (Arc::clone(settlement), stop.clone());
    let joined = tokio::task::spawn_blocking(move || settlement.settle(date, now, &stop_settling)).await;
    let outcome = match joined {
        Ok(outcome) => outcome,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => return None,
        },
    };
    (!stop.is_cancelled()).then_some(outcome)
}

/// Why a wait ended.
enum Woke {
    /// The clock reached the cut-over.
    CutOverDue,
    /// The retry interval passed first.
    RetryDue,
    /// The server is stopping.
    Stopped,
}

/// Waits until `clock` reads `at`, or `retry_after` (wall time) passes.
async fn wait_until(
    clock: &dyn Clock,
    at: UnixMillis,
    retry_after: Option<Duration>,
    stop: &CancellationToken,
) -> Woke {
    let retry_at = retry_after.map(|wait| tokio::time::Instant::now() + wait);
    loop {
        let now = clock.now_ms();
        if now >= at {
            return Woke::CutOverDue;
        }
        let left = Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(u64::MAX));
        let mut nap = left.min(CLOCK_RECHECK);
        if let Some(retry_at) = retry_at {
            let until_retry = retry_at.saturating_duration_since(tokio::time::Instant::now());
            if until_retry.is_zero() {
                return Woke::RetryDue;
            }
            nap = nap.min(until_retry);
        }
        if !sleep_unless_stopped(nap, stop).await {
            return Woke::Stopped;
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
