//! A partition's archive (docs/scale-out.md, "The shared archive"): the
//! rows between two cuts of its claimed log are one segment, archived as
//! one file per service date. Every rule here reads the log alone, so
//! every archiver of a partition, an old owner still running included,
//! names and fills its files alike: writing one again replaces it with
//! the same rows, and no row is ever in two files.

use chrono::NaiveDate;

use super::Partition;
use crate::clock::UnixMillis;
use crate::service_day::ServiceDayPolicy;

/// The file of one service date's rows in the segment after the cut at
/// claimed-log sequence `after_cut` (0: the log's start) up to the cut at
/// `cut`: `part-pPPPP-AFTER-CUT.parquet`, or `late-…` when the day was
/// closed in this partition before the segment began. Zero-padded, so
/// the names sort in log order.
pub fn segment_file_name(partition: Partition, after_cut: u64, cut: u64, late: bool) -> String {
    assert!(after_cut < cut, "a segment ends after it begins: {after_cut} then {cut}");
    let kind = if late { "late" } else { "part" };
    format!("{kind}-p{:04}-{after_cut:020}-{cut:020}.parquet", partition.number())
}

/// The partition and the two cuts a segment file's name carries; `None`
/// for any other name.
pub fn segment_file_range(name: &str) -> Option<(u16, u64, u64)> {
    let rest = name.strip_prefix("part-p").or_else(|| name.strip_prefix("late-p"))?;
    let rest = rest.strip_suffix(".parquet")?;
    let mut fields = rest.split('-');
    let (partition, after, cut) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() || partition.len() != 4 || after.len() != 20 || cut.len() != 20 {
        return None;
    }
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !(all_digits(partition) && all_digits(after) && all_digits(cut)) {
        return None;
    }
    Some((partition.parse().ok()?, after.parse().ok()?, cut.parse().ok()?))
}

/// The last service day closed as of a cut whose arrivals reach
/// `arrivals_before_ms`: a day ended `lateness_ms` or more before it is
/// closed. `None` when none is (or the moment is outside the calendar).
/// The owner decides it when it cuts, and writes it into the cut.
pub fn closed_through(
    policy: &ServiceDayPolicy,
    lateness_ms: i64,
    arrivals_before_ms: UnixMillis,
) -> Option<NaiveDate> {
    policy.service_date(arrivals_before_ms.checked_sub(lateness_ms)?)?.pred_opt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(n: u16) -> Partition {
        Partition::new(n, super::super::PARTITIONS_MAX).expect("partition")
    }

    #[test]
    fn names_at_their_extremes_read_back_and_others_are_not_segments() {
        for (p, after, cut, late) in [(0, 0, 1, false), (4_095, u64::MAX - 1, u64::MAX, true), (17, 300, 301, false)] {
            let name = segment_file_name(partition(p), after, cut, late);
            assert_eq!(segment_file_range(&name), Some((p, after, cut)), "{name}");
        }
        assert_eq!(
            segment_file_name(partition(3), 5, 9, true),
            "late-p0003-00000000000000000005-00000000000000000009.parquet"
        );
        for other in [
            "",
            "part-00000000000000000000-00000000000000000001.parquet",
            "part-p003-00000000000000000005-00000000000000000009.parquet",
            "part-p0003-0000000000000000005-00000000000000000009.parquet",
            "part-p0003-00000000000000000005-00000000000000000009.parquet.tmp",
            "part-p0003-00000000000000000005-00000000000000000009-1.parquet",
            "part-p0003-0000000000000000000a-00000000000000000009.parquet",
            "part-p0003-99999999999999999999-99999999999999999999.parquet",
        ] {
            assert_eq!(segment_file_range(other), None, "{other}");
        }
    }

    #[test]
    #[should_panic(expected = "a segment ends after it begins")]
    fn an_empty_range_has_no_name() {
        segment_file_name(partition(0), 5, 5, false);
    }

    #[test]
    fn a_day_closes_once_the_arrivals_pass_its_end_and_the_lateness() {
        let policy = ServiceDayPolicy { time_zone: chrono_tz::Asia::Shanghai, start_hour: 4 };
        let date = NaiveDate::from_ymd_opt(2026, 12, 5).expect("date");
        let end = policy.day_start(date.succ_opt().expect("next")).expect("end");
        assert_eq!(closed_through(&policy, 3_600_000, end + 3_599_999), date.pred_opt());
        assert_eq!(closed_through(&policy, 3_600_000, end + 3_600_000), Some(date));
        assert_eq!(closed_through(&policy, i64::MAX, 0), None, "a lateness past the calendar");
        assert_eq!(closed_through(&policy, 1, i64::MIN), None, "a moment before the calendar");
        assert_eq!(closed_through(&policy, 0, i64::MAX), None, "a moment after it");
    }
}
