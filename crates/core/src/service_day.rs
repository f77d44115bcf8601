//! The service day: transit days run past midnight, so a ride at 01:30 on
//! Saturday belongs to Friday's service. A day starts at a configured local
//! hour in a configured time zone.
//!
//! Every function here is total: a time or a date that chrono cannot
//! represent gives `None`, never a panic, because times reach this module
//! from the wire and dates from files on disk.

use chrono::{DateTime, Duration, NaiveDate, Offset, TimeZone};
use chrono_tz::Tz;

use crate::clock::UnixMillis;

/// When a service day begins: a local hour in a time zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceDayPolicy {
    /// The operator's IANA time zone, e.g. Asia/Shanghai.
    pub time_zone: Tz,
    /// Local hour (0-23) at which a service day begins.
    pub start_hour: u32,
}

impl ServiceDayPolicy {
    /// The service date a moment belongs to; `None` for a moment outside
    /// chrono's range (after the offset and the start hour are applied).
    pub fn service_date(&self, at: UnixMillis) -> Option<NaiveDate> {
        let utc = DateTime::from_timestamp_millis(at)?.naive_utc();
        // Not `naive_local()`, which panics when the offset leaves chrono's range.
        let offset = self.time_zone.offset_from_utc_datetime(&utc).fix();
        let local = utc.checked_add_offset(offset)?;
        Some(local.checked_sub_signed(Duration::hours(i64::from(self.start_hour)))?.date())
    }

    /// The first moment of a service date, in UTC milliseconds. On a day
    /// when the start hour falls in a DST gap, the first valid moment after
    /// it. `None` for a date at the edge of chrono's range.
    pub fn day_start(&self, date: NaiveDate) -> Option<UnixMillis> {
        let midnight = date.and_hms_opt(0, 0, 0)?;
        let mut local = midnight.checked_add_signed(Duration::hours(i64::from(self.start_hour)))?;
        for _ in 0..4 {
            if let Some(start) = self.time_zone.from_local_datetime(&local).earliest() {
                return Some(start.timestamp_millis());
            }
            local = local.checked_add_signed(Duration::minutes(30))?;
        }
        Some(local.and_utc().timestamp_millis())
    }

    /// The first moment of the service day after the one `at` falls in;
    /// `None` at the edge of chrono's range.
    pub fn next_day_start(&self, at: UnixMillis) -> Option<UnixMillis> {
        self.day_start(self.service_date(at)?.succ_opt()?)
    }
}

/// Milliseconds in a day of 24 hours.
const DAY_MS: u64 = 86_400_000;

/// The most days a cut-over looks back, whatever lateness it is given
/// (the config allows 30): a bound on its work, not a policy.
pub const REBILL_WINDOW_DAYS_MAX: u64 = 366;

/// The days a cut-over settles: the one that just ended, each earlier day
/// still inside the rebill window (`accepted_lateness_ms`, in whole days
/// rounded up), and the day after the window closed, whose run marks it
/// final. Newest first; at most `REBILL_WINDOW_DAYS_MAX + 2` days.
pub fn days_to_settle(just_ended: NaiveDate, accepted_lateness_ms: i64) -> Vec<NaiveDate> {
    let lateness_days = u64::try_from(accepted_lateness_ms).unwrap_or(0).div_ceil(DAY_MS);
    let window_days = lateness_days.min(REBILL_WINDOW_DAYS_MAX) + 1;
    (0..=window_days).map_while(|back| just_ended.checked_sub_days(chrono::Days::new(back))).collect()
}

/// The latest cut-over at or before `now`, and the day it settles first:
/// what a cut-over that finds the clock past it (stepped forward, or a
/// retry that waited) settles, rather than a day long gone.
pub fn last_cut_over(policy: &ServiceDayPolicy, delay_ms: i64, now: UnixMillis) -> Option<(UnixMillis, NaiveDate)> {
    let (_, next_settles) = next_cut_over(policy, delay_ms, now)?;
    let at = policy.day_start(next_settles)?.checked_add(delay_ms)?;
    Some((at, next_settles.pred_opt()?))
}

/// When the next cut-over is due after `now` (`delay_ms` after a service
/// day starts, so after the day before it ended), and the day it settles
/// first; `None` at the edge of chrono's range or for a delay of a day or
/// more, which would settle a day before its successor started.
pub fn next_cut_over(policy: &ServiceDayPolicy, delay_ms: i64, now: UnixMillis) -> Option<(UnixMillis, NaiveDate)> {
    if !(0..i64::try_from(DAY_MS).ok()?).contains(&delay_ms) {
        return None;
    }
    let today = policy.service_date(now)?;
    for day in [today, today.succ_opt()?] {
        let at = policy.day_start(day)?.checked_add(delay_ms)?;
        if at > now {
            return Some((at, day.pred_opt()?));
        }
    }
    None
}

/// 1970-01-01, day 0 of Arrow's `Date32`.
fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

/// Days since 1970-01-01, the Arrow `Date32` value of a date.
pub fn days_since_epoch(date: NaiveDate) -> i32 {
    i32::try_from((date - epoch()).num_days()).unwrap_or(i32::MAX)
}

/// The date `days` after 1970-01-01; `None` outside chrono's range (a
/// `Date32` read from disk can hold any `i32`).
pub fn date_from_days(days: i32) -> Option<NaiveDate> {
    epoch().checked_add_signed(Duration::try_days(i64::from(days))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ServiceDayPolicy {
        ServiceDayPolicy { time_zone: chrono_tz::Europe::Paris, start_hour: 4 }
    }

    fn ms(rfc3339: &str) -> UnixMillis {
        DateTime::parse_from_rfc3339(rfc3339).expect("time").timestamp_millis()
    }

    #[test]
    fn rides_after_midnight_belong_to_the_previous_day() {
        let p = policy();
        let friday = NaiveDate::from_ymd_opt(2026, 11, 27).expect("date");
        assert_eq!(p.service_date(ms("2026-11-28T01:30:00+01:00")), Some(friday));
        assert_eq!(p.service_date(ms("2026-11-28T03:59:59+01:00")), Some(friday));
        assert_eq!(p.service_date(ms("2026-11-28T04:00:00+01:00")), friday.succ_opt());
        assert_eq!(p.day_start(friday), Some(ms("2026-11-27T04:00:00+01:00")));
        assert_eq!(p.next_day_start(ms("2026-11-28T03:59:59+01:00")), Some(ms("2026-11-28T04:00:00+01:00")));
        assert_eq!(p.next_day_start(ms("2026-11-28T04:00:00+01:00")), Some(ms("2026-11-29T04:00:00+01:00")));
        assert_eq!(p.next_day_start(i64::MAX), None, "past chrono's range");
        assert_eq!(p.next_day_start(i64::MIN), None);
    }

    #[test]
    fn date32_counts_from_the_epoch() {
        let jan2 = NaiveDate::from_ymd_opt(1970, 1, 2).expect("date");
        assert_eq!(days_since_epoch(jan2), 1);
        assert_eq!(date_from_days(1), Some(jan2));
        assert_eq!(date_from_days(-1), NaiveDate::from_ymd_opt(1969, 12, 31));
    }

    /// The reviewed code panicked on chrono's last millisecond (east of UTC)
    /// and on its first (west of UTC), and on Date32 values past its range.
    #[test]
    fn the_edges_of_time_give_none_not_a_panic() {
        let zones = [chrono_tz::Asia::Shanghai, chrono_tz::America::Los_Angeles, chrono_tz::Pacific::Kiritimati];
        let last_ms = DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis();
        let first_ms = DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis();
        for time_zone in zones {
            for start_hour in [0, 4, 23] {
                let p = ServiceDayPolicy { time_zone, start_hour };
                for at in [i64::MIN, first_ms, first_ms + 1, -1, 0, last_ms - 1, last_ms, i64::MAX] {
                    let _ = p.service_date(at);
                }
                assert_eq!(p.service_date(i64::MAX), None);
                let _ = p.day_start(NaiveDate::MAX);
                let _ = p.day_start(NaiveDate::MIN);
            }
        }
        for days in [i32::MIN, i32::MAX] {
            assert_eq!(date_from_days(days), None);
        }
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("date")
    }

    #[test]
    fn the_cut_over_settles_the_day_that_ended_and_the_rebill_window() {
        let days = days_to_settle(date("2026-11-26"), 259_200_000);
        let expected: Vec<NaiveDate> =
            ["2026-11-26", "2026-11-25", "2026-11-24", "2026-11-23", "2026-11-22"].into_iter().map(date).collect();
        assert_eq!(days, expected);
        assert_eq!(days_to_settle(date("2026-11-26"), 0), vec![date("2026-11-26"), date("2026-11-25")]);
        assert_eq!(days_to_settle(date("2026-11-26"), -1), days_to_settle(date("2026-11-26"), 0));
        assert_eq!(days_to_settle(NaiveDate::MIN, 0), vec![NaiveDate::MIN], "no day before the first");
        assert_eq!(days_to_settle(NaiveDate::MIN, i64::MAX), vec![NaiveDate::MIN], "and no walk past it");
        let longest = days_to_settle(date("2026-11-26"), i64::MAX);
        assert_eq!(longest.len() as u64, REBILL_WINDOW_DAYS_MAX + 2, "bounded");
    }

    #[test]
    fn the_next_cut_over_is_the_delay_after_the_next_day_start() {
        let policy = ServiceDayPolicy { time_zone: chrono_tz::Asia::Shanghai, start_hour: 4 };
        let start = policy.day_start(date("2026-11-26")).expect("start");
        assert_eq!(next_cut_over(&policy, 1_800_000, start), Some((start + 1_800_000, date("2026-11-25"))));
        let after = next_cut_over(&policy, 1_800_000, start + 1_800_000).expect("next");
        assert_eq!(after.1, date("2026-11-26"));
        assert_eq!(after.0, policy.day_start(date("2026-11-27")).expect("start") + 1_800_000);
    }

    #[test]
    fn a_delay_outside_a_day_or_a_time_at_the_edge_gives_no_cut_over() {
        let policy = policy();
        assert_eq!(next_cut_over(&policy, -1, 0), None);
        assert_eq!(next_cut_over(&policy, 86_400_000, 0), None);
        assert_eq!(next_cut_over(&policy, 0, UnixMillis::MAX), None);
        assert_eq!(next_cut_over(&policy, 0, UnixMillis::MIN), None);
        assert!(next_cut_over(&policy, 86_399_999, 0).is_some());
    }

    proptest::proptest! {
        /// Whatever the moment (DST changes in Paris included), the next
        /// cut-over is after it, falls the delay after the settled day's
        /// successor starts, and none was skipped: the one before it is
        /// not after `now`.
        #[test]
        fn no_cut_over_is_skipped_or_early(
            now in 0..4_102_444_800_000i64, // 1970 to 2100
            delay_ms in 0..86_400_000i64,
        ) {
            let policy = policy();
            let (at, settled) = next_cut_over(&policy, delay_ms, now).expect("a cut-over");
            proptest::prop_assert!(at > now);
            let next_day = settled.succ_opt().expect("date");
            proptest::prop_assert_eq!(policy.day_start(next_day).map(|s| s + delay_ms), Some(at));
            let before = policy.day_start(settled).expect("start") + delay_ms;
            proptest::prop_assert!(before <= now, "a cut-over at {} was skipped (now {})", before, now);
            let last = last_cut_over(&policy, delay_ms, now).expect("the last cut-over");
            proptest::prop_assert_eq!(last, (before, settled.pred_opt().expect("date")));
        }
    }
}
