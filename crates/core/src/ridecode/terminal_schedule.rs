//! When each terminal key is handed out and until when it is trusted. The
//! key store makes one key per service day, handed out from the day's
//! start; an emergency rotation (a leaked key) adds one for the same day,
//! handed out from a moment it names. The rule is the issuer keys' own
//! ([`IssuerKeySchedule`]), with "handed out to riders' apps" in place of
//! "signs credentials": a key is held (trusted, pushed to gateways) from
//! the moment the key store has it, handed out from its
//! `handed_out_from`, and trusted until the next key's `handed_out_from`
//! plus the trust tail (the longest credential an app fetched with it,
//! the skew and the accepted lateness of uploads).

use chrono::NaiveDate;
use zeroize::Zeroizing;

use super::schedule::{IssuerKeySchedule, ScheduledKey, trusted_until_allows};
use super::terminal::{TERMINAL_KEY_SECRET_LEN, TerminalKey, TerminalKeys};
use crate::clock::UnixMillis;
use crate::service_day::ServiceDayPolicy;

/// The most terminal keys held at once: what a gateway holds. A week of
/// days and their emergency rotations is far below it.
pub const TERMINAL_KEYS_HELD_MAX: usize = 64;

/// The most terminal keys a server keeps past their end at once. Keys are
/// kept `2L + 2S`: with the largest accepted lateness (30 days) that is
/// 61 days' keys, which leaves room for three emergency rotations a day.
/// Past it the keys that ended first are let go. A few kilobytes each.
pub const TERMINAL_KEYS_KEPT_MAX: usize = 256;

/// One terminal key with its times. Not `Copy`: each copy of a secret is
/// one more to wipe, and each is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct HeldTerminalKey {
    /// The id sealed codes name it by.
    pub key_id: u16,
    /// The secret its subkeys are derived from.
    pub secret: Zeroizing<[u8; TERMINAL_KEY_SECRET_LEN]>,
    /// The service day it was made for.
    pub service_date: NaiveDate,
    /// Unix seconds from which the account API hands it to riders' apps.
    pub handed_out_from_secs: i64,
    /// Unix seconds from which it is no longer trusted; `None` while no
    /// newer key is scheduled to be handed out after it.
    pub trusted_until_secs: Option<i64>,
}

impl HeldTerminalKey {
    /// Whether it is trusted at `now_secs`: the server, a gateway and an
    /// offline validator all follow this.
    pub fn trusted_at(&self, now_secs: i64) -> bool {
        trusted_until_allows(self.trusted_until_secs, now_secs)
    }

    /// The key, ready to seal and open.
    pub fn key(&self) -> TerminalKey {
        TerminalKey::from_secret(self.key_id, &self.secret)
    }
}

impl std::fmt::Debug for HeldTerminalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldTerminalKey")
            .field("key_id", &self.key_id)
            .field("service_date", &self.service_date)
            .field("handed_out_from_secs", &self.handed_out_from_secs)
            .field("trusted_until_secs", &self.trusted_until_secs)
            .finish_non_exhaustive()
    }
}

/// Which of `held` the account API hands out at `now_secs`: the last in
/// hand-out order (`handed_out_from`, then id, never id alone: an
/// emergency rotation takes a higher id than the next day's key made
/// before it) whose `handed_out_from` has come and that is still trusted.
/// The one statement of the rule, for the schedule and for the keys a
/// running server holds.
pub fn handed_out_among(held: &[HeldTerminalKey], now_secs: i64) -> Option<&HeldTerminalKey> {
    held.iter()
        .filter(|k| k.handed_out_from_secs <= now_secs && k.trusted_at(now_secs))
        .max_by_key(|k| (k.handed_out_from_secs, k.key_id))
}

/// Every terminal key and the rule above.
#[derive(Debug, Clone)]
pub struct TerminalKeySchedule {
    keys: Vec<HeldTerminalKey>,
    timing: IssuerKeySchedule,
}

impl TerminalKeySchedule {
    /// The schedule of `keys` (their `trusted_until_secs` is ignored: the
    /// schedule says it); a key stays trusted for `trust_tail_secs` after
    /// the next one is handed out.
    pub fn new(keys: impl IntoIterator<Item = HeldTerminalKey>, trust_tail_secs: i64) -> TerminalKeySchedule {
        let keys: Vec<HeldTerminalKey> = keys.into_iter().collect();
        let timing = IssuerKeySchedule::new(
            keys.iter().map(|k| ScheduledKey {
                key_id: u32::from(k.key_id),
                public_key: [0; 32],
                signs_from_secs: k.handed_out_from_secs,
                retired_at_secs: None,
            }),
            trust_tail_secs,
        );
        TerminalKeySchedule { keys, timing }
    }

    /// The key the account API hands out at `now_secs`: the last one whose
    /// `handed_out_from` has come. `None` before the first.
    pub fn handed_out_at(&self, now_secs: i64) -> Option<HeldTerminalKey> {
        let held = self.held_at(now_secs);
        let key = handed_out_among(&held, now_secs).cloned();
        debug_assert_eq!(key.as_ref().map(|k| u32::from(k.key_id)), self.timing.signer_at(now_secs));
        key
    }

    /// Every key held at `now_secs` (the coming day's too), with the moment
    /// it stops being trusted: what gateways pass on to their validators.
    /// At most [`TERMINAL_KEYS_HELD_MAX`], always the key handed out, and
    /// those handed out after it before those before it: a clock set back
    /// by months would otherwise trust every key made since, and a
    /// gateway refuses a set over its limit whole.
    pub fn held_at(&self, now_secs: i64) -> Vec<HeldTerminalKey> {
        let mut held: Vec<HeldTerminalKey> = self
            .timing
            .published_at(now_secs)
            .iter()
            .filter_map(|timed| {
                let key = self.keys.iter().find(|k| u32::from(k.key_id) == timed.key_id)?;
                Some(HeldTerminalKey { trusted_until_secs: timed.trusted_until_secs, ..key.clone() })
            })
            .collect();
        if let Some(over) = held.len().checked_sub(TERMINAL_KEYS_HELD_MAX).filter(|over| *over > 0) {
            let handed_out = self.timing.signer_at(now_secs);
            let at = held.iter().position(|k| Some(u32::from(k.key_id)) == handed_out).unwrap_or(0);
            held.drain(..over.min(at));
            held.truncate(TERMINAL_KEYS_HELD_MAX);
        }
        held
    }

    /// The keys sealed codes open with at `now_secs`.
    pub fn trusted_at(&self, now_secs: i64) -> TerminalKeys {
        self.held_at(now_secs).iter().map(HeldTerminalKey::key).collect()
    }

    /// The keys that ran out less than `kept_secs` before `now_secs`, with
    /// the moment each did, the latest last: what a server keeps to open
    /// codes read before a key's end and read the card of those read
    /// after ([`TerminalKeys::with_ran_out`]). At most
    /// [`TERMINAL_KEYS_KEPT_MAX`], those that ended last.
    pub fn ran_out_within(&self, now_secs: i64, kept_secs: i64) -> Vec<HeldTerminalKey> {
        let mut ran_out: Vec<HeldTerminalKey> = self
            .timing
            .timed()
            .filter_map(|timed| {
                let until = timed.trusted_until_secs?;
                let key = self.keys.iter().find(|k| u32::from(k.key_id) == timed.key_id)?;
                let kept = until <= now_secs && now_secs < until.saturating_add(kept_secs.max(0));
                kept.then(|| HeldTerminalKey { trusted_until_secs: Some(until), ..key.clone() })
            })
            .collect();
        ran_out.sort_by_key(|k| (k.trusted_until_secs, k.key_id));
        let over = ran_out.len().saturating_sub(TERMINAL_KEYS_KEPT_MAX);
        ran_out.drain(..over);
        ran_out
    }

    /// The service days around `now` that have no key yet: the current one
    /// and the next, so a validator holds the next day's key before its
    /// first code. Each is handed out from its day's start, or, made late
    /// (its day begun while another key is handed out: the key store
    /// could not write it a day ahead), `late_lead_secs` after `now`, so
    /// gateways hold it before apps seal with it and the key handed out
    /// now stays trusted its full tail after. Only the very first key has
    /// no one to wait for.
    pub fn days_without_a_key(
        &self,
        policy: &ServiceDayPolicy,
        now: UnixMillis,
        late_lead_secs: i64,
    ) -> Vec<(NaiveDate, i64)> {
        let Some(today) = policy.service_date(now) else { return Vec::new() };
        let now_secs = now.div_euclid(1000);
        let earliest = match self.timing.signer_at(now_secs) {
            Some(_) => now_secs.saturating_add(late_lead_secs.max(0)),
            None => i64::MIN,
        };
        [Some(today), today.succ_opt()]
            .into_iter()
            .flatten()
            .filter(|date| !self.keys.iter().any(|k| k.service_date == *date))
            .filter_map(|date| Some((date, policy.day_start(date)?.div_euclid(1000).max(earliest))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAIL: i64 = 1_000;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("date")
    }

    fn key(key_id: u16, day: &str, from: i64) -> HeldTerminalKey {
        HeldTerminalKey {
            key_id,
            secret: [key_id as u8; 32].into(),
            service_date: date(day),
            handed_out_from_secs: from,
            trusted_until_secs: None,
        }
    }

    fn ids(keys: &[HeldTerminalKey]) -> Vec<u16> {
        keys.iter().map(|k| k.key_id).collect()
    }

    #[test]
    fn the_next_days_key_is_held_before_it_is_handed_out_and_the_last_runs_out_after_the_tail() {
        let schedule = TerminalKeySchedule::new([key(1, "2026-12-03", 0), key(2, "2026-12-04", 500)], TAIL);
        assert_eq!(schedule.handed_out_at(100).map(|k| k.key_id), Some(1));
        assert_eq!(ids(&schedule.held_at(100)), vec![1, 2], "tomorrow's is held a day ahead");
        assert_eq!(schedule.handed_out_at(500).map(|k| k.key_id), Some(2));
        assert_eq!(schedule.held_at(0)[0].trusted_until_secs, Some(500 + TAIL));
        assert_eq!(ids(&schedule.held_at(500 + TAIL - 1)), vec![1, 2]);
        assert_eq!(ids(&schedule.held_at(500 + TAIL)), vec![2]);
        assert_eq!(schedule.trusted_at(500 + TAIL).key_ids().collect::<Vec<_>>(), vec![2]);
        assert_eq!(schedule.handed_out_at(-1), None);
    }

    /// A key is kept for reading from the moment it stops being trusted
    /// for `kept_secs`, never while trusted, never after; an emergency
    /// rotation's leaked key runs out first. However many ended in the
    /// time, at most the limit are kept, those that ended last.
    #[test]
    fn a_key_that_ran_out_is_kept_for_reading_for_the_time_given_and_no_longer() {
        let keys = [key(1, "2026-12-03", 0), key(2, "2026-12-04", 1_000), key(3, "2026-12-03", 300)];
        let schedule = TerminalKeySchedule::new(keys, TAIL);
        let kept = |now: i64| -> Vec<(u16, Option<i64>)> {
            schedule.ran_out_within(now, 50).iter().map(|k| (k.key_id, k.trusted_until_secs)).collect()
        };
        assert_eq!(kept(300 + TAIL - 1), vec![], "key 1 still trusted");
        assert_eq!(kept(300 + TAIL), vec![(1, Some(300 + TAIL))]);
        assert_eq!(kept(300 + TAIL + 49), vec![(1, Some(300 + TAIL))]);
        assert_eq!(kept(300 + TAIL + 50), vec![]);
        assert_eq!(kept(1_000 + TAIL), vec![(3, Some(1_000 + TAIL))], "2 has no end yet");
        assert_eq!(schedule.ran_out_within(1_000 + TAIL, 0), vec![], "kept for no time: none");
        assert!(schedule.trusted_at(300 + TAIL).get(1).is_none(), "kept is not trusted");
        let count = TERMINAL_KEYS_KEPT_MAX as u16 + 6;
        let many: Vec<HeldTerminalKey> = (1..=count).map(|id| key(id, "2026-12-03", i64::from(id) * 100)).collect();
        let far_ahead = TerminalKeySchedule::new(many, 10).ran_out_within(i64::MAX / 2, i64::MAX);
        assert_eq!(far_ahead.len(), TERMINAL_KEYS_KEPT_MAX);
        assert_eq!(far_ahead.first().map(|k| k.key_id), Some(6), "the five that ended first are let go");
        assert_eq!(
            far_ahead.last().map(|k| k.key_id),
            Some(count - 1),
            "the last has no end; the one before ended last"
        );
    }

    /// An emergency rotation mid-day: the new key is handed out from the
    /// moment named; the leaked one stays trusted for the tail (riders
    /// hold it) and tomorrow's key still takes over at the day's start.
    #[test]
    fn an_emergency_rotation_hands_out_a_new_key_for_the_rest_of_the_day() {
        let keys = [key(1, "2026-12-03", 0), key(2, "2026-12-04", 1_000), key(3, "2026-12-03", 300)];
        let schedule = TerminalKeySchedule::new(keys, TAIL);
        assert_eq!(schedule.handed_out_at(299).map(|k| k.key_id), Some(1));
        assert_eq!(schedule.handed_out_at(300).map(|k| k.key_id), Some(3));
        assert_eq!(schedule.handed_out_at(1_000).map(|k| k.key_id), Some(2));
        let held = schedule.held_at(300);
        assert_eq!(
            held.iter().map(|k| (k.key_id, k.trusted_until_secs)).collect::<Vec<_>>(),
            vec![(1, Some(300 + TAIL)), (3, Some(1_000 + TAIL)), (2, None)]
        );
    }

    /// A clock set back by months trusts every key made since: the set
    /// stays within what a gateway holds, and keeps the key handed out.
    #[test]
    fn a_clock_set_back_holds_at_most_the_limit_and_always_the_key_handed_out() {
        let many: Vec<HeldTerminalKey> = (1..=70).map(|id| key(id, "2026-12-03", i64::from(id) * 100)).collect();
        let long_tail = TerminalKeySchedule::new(many.clone(), 1_000_000);
        let held = long_tail.held_at(1_000);
        assert_eq!(held.len(), TERMINAL_KEYS_HELD_MAX);
        assert_eq!(long_tail.handed_out_at(1_000).map(|k| k.key_id), Some(10));
        assert_eq!(ids(&held), (7..=70).collect::<Vec<u16>>(), "the oldest go first, never the one handed out");
        let early = long_tail.held_at(150);
        assert_eq!(ids(&early), (1..=64).collect::<Vec<u16>>(), "the key handed out and the next ones");
        let short_tail = TerminalKeySchedule::new(many, TAIL);
        assert_eq!(ids(&short_tail.held_at(6_950)), (59..=70).collect::<Vec<u16>>(), "under the limit: untouched");
    }

    #[test]
    fn the_current_and_next_service_days_are_made_when_missing() {
        let policy = ServiceDayPolicy { time_zone: chrono_tz::Asia::Shanghai, start_hour: 4 };
        // 2026-12-03 10:00 in Shanghai.
        let now = 1_796_263_200_000;
        let today = policy.service_date(now).expect("date");
        assert_eq!(today, date("2026-12-03"));
        let none = TerminalKeySchedule::new([], TAIL);
        let start = |d: &str| policy.day_start(date(d)).expect("start") / 1000;
        assert_eq!(
            none.days_without_a_key(&policy, now, 600),
            vec![(date("2026-12-03"), start("2026-12-03")), (date("2026-12-04"), start("2026-12-04"))],
            "the first key of all is handed out from its day's start: no key is out to wait behind"
        );
        let today_only = TerminalKeySchedule::new([key(1, "2026-12-03", 0)], TAIL);
        assert_eq!(today_only.days_without_a_key(&policy, now, 600), vec![(date("2026-12-04"), start("2026-12-04"))]);
        assert_eq!(none.days_without_a_key(&policy, i64::MAX, 600), vec![], "a time past chrono's range makes nothing");
    }

    /// Review: a day's key made late (the key store was full at the day
    /// before) was back-dated to its day's start, so apps got it in the
    /// same push that first gave it to gateways, and the key handed out
    /// until then lost hours of its trust tail.
    #[test]
    fn a_days_key_made_late_is_handed_out_after_the_lead_and_its_predecessor_keeps_its_tail() {
        let policy = ServiceDayPolicy { time_zone: chrono_tz::Asia::Shanghai, start_hour: 4 };
        let start = |d: &str| policy.day_start(date(d)).expect("start") / 1000;
        let stale = TerminalKeySchedule::new([key(1, "2026-12-03", start("2026-12-03"))], TAIL);
        let noon = start("2026-12-04") + 8 * 3_600;
        let missing = stale.days_without_a_key(&policy, noon * 1000, 600);
        assert_eq!(missing, vec![(date("2026-12-04"), noon + 600), (date("2026-12-05"), start("2026-12-05"))]);
        let made = [key(1, "2026-12-03", start("2026-12-03")), key(2, "2026-12-04", noon + 600)];
        let schedule = TerminalKeySchedule::new(made, TAIL);
        assert_eq!(schedule.handed_out_at(noon + 599).map(|k| k.key_id), Some(1), "the old key until the lead is up");
        assert_eq!(schedule.held_at(noon)[0].trusted_until_secs, Some(noon + 600 + TAIL));
    }

    #[test]
    fn a_held_keys_secret_is_never_printed() {
        let printed = format!("{:?}", key(7, "2026-12-03", 0));
        assert!(!printed.contains("secret") && printed.contains("key_id: 7"), "{printed}");
    }
}
