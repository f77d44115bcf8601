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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceDayPolicy {
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
}
