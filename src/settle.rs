//! The settlement's glue: its settings from the config, and the daily
//! cut-over `serve` runs on a thread of its own (DataFusion's work must
//! not hold up the QUIC tasks).

use std::path::Path;
use std::time::Duration;

use chrono::NaiveDate;
use farestream_analytics::settle::{SettleSettings, settle_day};
use farestream_server::clock::{Clock, SystemClock};
use farestream_server::config::fares::load_fares;
use farestream_server::config::{Config, ConfigError};
use farestream_server::service_day::ServiceDayPolicy;

/// The settlement's settings for `data_dir`.
pub fn settle_settings(config: &Config, data_dir: &Path) -> Result<SettleSettings, ConfigError> {
    let fares_file = Some(Path::new(&config.payments.fares_file)).filter(|p| !p.as_os_str().is_empty());
    Ok(SettleSettings {
        data_dir: data_dir.to_path_buf(),
        fares: load_fares(fares_file)?,
        service_day: config.service_day_policy()?,
        store_busy_wait: Duration::from_millis(config.payments.store_busy_wait_ms),
        charges_batch_max: config.payments.charges_archive_batch_charges_max,
    })
}

/// The days a cut-over settles: the one that just ended, and each earlier
/// day still inside the rebill window (the accepted lateness), plus the
/// day after it closed, whose run marks it final.
pub fn days_to_settle(just_ended: NaiveDate, accepted_lateness: Duration) -> Vec<NaiveDate> {
    let window_days = accepted_lateness.as_secs().div_ceil(86_400) + 1;
    (0..=window_days).filter_map(|back| just_ended.checked_sub_days(chrono::Days::new(back))).collect()
}

/// When the next cut-over is due after `now`, and the day it settles first.
pub fn next_cut_over(policy: &ServiceDayPolicy, delay: Duration, now: i64) -> Option<(i64, NaiveDate)> {
    let delay_ms = i64::try_from(delay.as_millis()).ok()?;
    let today = policy.service_date(now)?;
    for day in [today, today.succ_opt()?] {
        let at = policy.day_start(day)?.checked_add(delay_ms)?;
        if at > now {
            return Some((at, day.pred_opt()?));
        }
    }
    None
}

/// The cut-over thread's stack: DataFusion's planner recurses over the
/// statement, in frames an unoptimized build makes large.
const CUT_OVER_STACK_BYTES: usize = 16 * 1024 * 1024;

/// Starts the daily cut-over thread when the config asks for it.
pub fn start_cut_overs(config: &Config, data_dir: &Path) -> Result<Option<std::thread::JoinHandle<()>>, ConfigError> {
    if !config.settlement.cut_over_enabled {
        return Ok(None);
    }
    let settings = settle_settings(config, data_dir)?;
    let delay = Duration::from_secs(u64::from(config.settlement.cut_over_delay_minutes) * 60);
    let retry = Duration::from_secs(config.settlement.cut_over_retry_interval_secs);
    let lateness = Duration::from_secs(u64::from(config.ingest.accepted_lateness_secs));
    let thread = std::thread::Builder::new()
        .name("cut-over".into())
        // SQL planning recurses, and is built unoptimized (Cargo.toml).
        .stack_size(CUT_OVER_STACK_BYTES)
        .spawn(move || match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => cut_over_loop(&runtime, &settings, delay, retry, lateness),
            Err(error) => tracing::error!(%error, "no runtime for the cut-over; the daily settlement stops"),
        })
        .map_err(|e| ConfigError::Invalid(format!("starting the cut-over thread: {e}")))?;
    Ok(Some(thread))
}

/// Sleeps until each cut-over and settles its days, on `runtime` (the
/// thread's own, apart from the server's).
fn cut_over_loop(
    runtime: &tokio::runtime::Runtime,
    settings: &SettleSettings,
    delay: Duration,
    retry: Duration,
    lateness: Duration,
) {
    loop {
        let now = SystemClock.now_ms();
        let Some((at, just_ended)) = next_cut_over(&settings.service_day, delay, now) else {
            tracing::error!("no next cut-over time; the daily settlement stops");
            return;
        };
        std::thread::sleep(Duration::from_millis(u64::try_from(at - now).unwrap_or(0)));
        let mut pending = days_to_settle(just_ended, lateness);
        while !pending.is_empty() {
            pending.retain(|date| match runtime.block_on(settle_day(settings, *date, SystemClock.now_ms())) {
                Ok(settled) => {
                    tracing::info!(report = %settled.report_path.display(), breaks = settled.breaks.len(), "{}", settled.headline);
                    false
                }
                Err(error) => {
                    tracing::error!(%date, %error, "cut-over failed; will try again");
                    true
                }
            });
            if !pending.is_empty() {
                std::thread::sleep(retry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("date")
    }

    #[test]
    fn the_cut_over_settles_the_day_that_ended_and_the_rebill_window() {
        let days = days_to_settle(date("2026-11-26"), Duration::from_secs(259_200));
        let expected: Vec<NaiveDate> =
            ["2026-11-26", "2026-11-25", "2026-11-24", "2026-11-23", "2026-11-22"].into_iter().map(date).collect();
        assert_eq!(days, expected);
        assert_eq!(days_to_settle(date("2026-11-26"), Duration::ZERO), vec![date("2026-11-26"), date("2026-11-25")]);
    }

    #[test]
    fn the_next_cut_over_is_the_delay_after_the_next_day_start() {
        let policy = ServiceDayPolicy { time_zone: chrono_tz::Asia::Shanghai, start_hour: 4 };
        let start = policy.day_start(date("2026-11-26")).expect("start");
        let delay = Duration::from_secs(1_800);
        assert_eq!(next_cut_over(&policy, delay, start), Some((start + 1_800_000, date("2026-11-25"))));
        let after = next_cut_over(&policy, delay, start + 1_800_000).expect("next");
        assert_eq!(after.1, date("2026-11-26"));
        assert_eq!(after.0, policy.day_start(date("2026-11-27")).expect("start") + 1_800_000);
    }
}
