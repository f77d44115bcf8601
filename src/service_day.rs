//! The service day: transit days run past midnight, so a ride at 01:30 on
//! Saturday belongs to Friday's service. A day starts at a configured local
//! hour in a configured time zone.

use chrono::{DateTime, Duration, NaiveDate, TimeZone};
use chrono_tz::Tz;

use crate::clock::UnixMillis;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceDayPolicy {
    pub time_zone: Tz,
    /// Local hour (0-23) at which a service day begins.
    pub start_hour: u32,
}

impl ServiceDayPolicy {
    /// The service date a moment belongs to.
    pub fn service_date(&self, at: UnixMillis) -> NaiveDate {
        let utc = DateTime::from_timestamp_millis(at).unwrap_or_default();
        let local = utc.with_timezone(&self.time_zone).naive_local();
        (local - Duration::hours(i64::from(self.start_hour))).date()
    }

    /// The first moment of a service date, in UTC milliseconds. On a day
    /// when the start hour falls in a DST gap, the first valid moment after it.
    pub fn day_start(&self, date: NaiveDate) -> UnixMillis {
        let mut local = date.and_hms_opt(0, 0, 0).unwrap_or_default() + Duration::hours(i64::from(self.start_hour));
        for _ in 0..4 {
            if let Some(start) = self.time_zone.from_local_datetime(&local).earliest() {
                return start.timestamp_millis();
            }
            local += Duration::minutes(30);
        }
        local.and_utc().timestamp_millis()
    }
}

/// Days since 1970-01-01, the Arrow `Date32` value of a date.
pub fn days_since_epoch(date: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    i32::try_from((date - epoch).num_days()).unwrap_or(i32::MAX)
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
        assert_eq!(p.service_date(ms("2026-11-28T01:30:00+01:00")), friday);
        assert_eq!(p.service_date(ms("2026-11-28T03:59:59+01:00")), friday);
        assert_eq!(p.service_date(ms("2026-11-28T04:00:00+01:00")), friday.succ_opt().expect("next"));
        assert_eq!(p.day_start(friday), ms("2026-11-27T04:00:00+01:00"));
    }

    #[test]
    fn date32_counts_from_the_epoch() {
        assert_eq!(days_since_epoch(NaiveDate::from_ymd_opt(1970, 1, 2).expect("date")), 1);
    }
}
