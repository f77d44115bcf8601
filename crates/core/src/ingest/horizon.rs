//! How long the server must remember what it has seen, stated once. Every
//! rule about time windows in the pipeline, the dedup indexes, the restore
//! after a restart and the archive partitions comes from here.
//!
//! With `L` the accepted lateness, `S` the clock skew and `V` the code
//! validity:
//!
//! - **Arrival window.** A scan read at `scanned_at` and received at
//!   `received_at` is on time when `received_at - L <= scanned_at <=
//!   received_at + S`. A scan received later is a `late_upload`; one
//!   read further ahead of the server's clock is `stale_code`.
//! - **Partition time.** A scan on time is filed under the service day of
//!   `scanned_at`; one outside the window under the day of `received_at`.
//!   So a closed day never gains rows, no input makes a partition for a
//!   date far from the server's clock, and every row's partition is within
//!   `L + S` of its arrival.
//! - **Delivery expiry.** A re-delivery is caught for `L + S` after the
//!   later of arrival and scan time, the scan time counted at most `S` ahead
//!   of arrival (a clock further ahead was refused). Resends come after the
//!   first arrival, so this follows the server's clock, and no scan time
//!   can keep an entry alive for longer than `L + 2S` after arrival.
//! - **Terminal keys kept.** A sealed code is judged by when it was read
//!   against its key's end, so a server keeps a key `2L + 2S` after its
//!   trust ended: every copy of a scan read before the end still opens
//!   for as long as its re-deliveries are caught.
//! - **Ride expiry.** A code made at second `C` passes the freshness check
//!   up to scan time `(C + V + S) s + 999 ms` and then arrives up to `L`
//!   later: its replay key lives until `(C + V + S + 1) s + L`, strictly
//!   after the last moment a copy could pass every other check.
//! - **Restore window.** After a restart, rows whose partition time is
//!   within `2L + V + 2S + 1 s` of now can still hold a live entry of either
//!   kind: see [`Horizons::restore_window_ms`].
//!
//! All arithmetic is in `i64` milliseconds from `u32` seconds and saturates,
//! so no configured value or input time can overflow it.

use crate::clock::UnixMillis;
use crate::ridecode::FreshnessPolicy;

/// The lowest scan time a record may carry: ride codes count seconds from
/// 1970 in a `u32`, so nothing earlier can match a code.
pub(crate) const SCAN_TIME_MS_MIN: UnixMillis = 0;
/// The highest scan time a record may carry: the last millisecond of the
/// `u32` seconds a ride code can express (2106-02-07 06:28:15.999 UTC).
pub(crate) const SCAN_TIME_MS_MAX: UnixMillis = (u32::MAX as i64 + 1) * 1000 - 1;

/// The time windows, from the freshness policy and the accepted lateness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizons {
    lateness_ms: i64,
    skew_ms: i64,
    code_validity_ms: i64,
}

impl Horizons {
    /// The windows for `freshness` and an accepted lateness of `accepted_lateness_secs`.
    pub fn new(freshness: FreshnessPolicy, accepted_lateness_secs: u32) -> Horizons {
        Horizons {
            lateness_ms: secs_to_ms(accepted_lateness_secs),
            skew_ms: secs_to_ms(freshness.clock_skew_secs),
            code_validity_ms: secs_to_ms(freshness.code_validity_secs),
        }
    }

    /// True when a scan time is one a ride code can be checked against.
    pub(crate) fn scan_time_in_range(scanned_at: UnixMillis) -> bool {
        (SCAN_TIME_MS_MIN..=SCAN_TIME_MS_MAX).contains(&scanned_at)
    }

    /// True when the scan arrived within the accepted lateness and not from
    /// a validator clock further ahead than the skew.
    pub(crate) fn on_time(&self, scanned_at: UnixMillis, received_at: UnixMillis) -> bool {
        let late_by = received_at.saturating_sub(scanned_at);
        let ahead_by = scanned_at.saturating_sub(received_at);
        late_by <= self.lateness_ms && ahead_by <= self.skew_ms
    }

    /// The moment whose service day a row is filed under.
    pub(crate) fn partition_time(&self, scanned_at: UnixMillis, received_at: UnixMillis) -> UnixMillis {
        if self.on_time(scanned_at, received_at) { scanned_at } else { received_at }
    }

    /// How long a server keeps a terminal key after its trust ended,
    /// `2L + 2S`, in whole seconds (both are): a code read just before the
    /// end may arrive `L` later, and its re-deliveries are caught for
    /// `L + 2S` after that; until then every node must still open it, so
    /// that every copy gets the same verdict and partition.
    pub fn terminal_key_kept_secs(&self) -> i64 {
        self.lateness_ms.saturating_add(self.skew_ms).saturating_mul(2).div_euclid(1000)
    }

    /// When the re-delivery entry of a scan can be forgotten.
    pub(crate) fn delivery_expiry(&self, scanned_at: UnixMillis, received_at: UnixMillis) -> UnixMillis {
        let ahead_by = scanned_at.saturating_sub(received_at).clamp(0, self.skew_ms);
        received_at.saturating_add(ahead_by).saturating_add(self.lateness_ms).saturating_add(self.skew_ms)
    }

    /// When the replay key of a code made at `created_at` (Unix seconds)
    /// can be forgotten.
    pub(crate) fn ride_expiry(&self, created_at: u32) -> UnixMillis {
        let last_passing_scan_ms = secs_to_ms(created_at)
            .saturating_add(self.code_validity_ms)
            .saturating_add(self.skew_ms)
            .saturating_add(999);
        last_passing_scan_ms.saturating_add(1).saturating_add(self.lateness_ms)
    }

    /// When a verified credential valid until `valid_until` (Unix seconds)
    /// can be forgotten: no scan can pass its window after that.
    pub(crate) fn credential_expiry(&self, valid_until: u32) -> UnixMillis {
        secs_to_ms(valid_until).saturating_add(self.skew_ms)
    }

    /// The accepted lateness, the clock skew and the code validity, in
    /// ms: what a dedup snapshot records its expiries were computed under.
    pub(crate) fn parts(&self) -> [i64; 3] {
        [self.lateness_ms, self.skew_ms, self.code_validity_ms]
    }

    /// How far before now a row's partition time can be while one of its
    /// dedup entries is still live: a delivery entry lives `L + 2S` after
    /// arrival and the row is filed up to `L` before arrival; a ride entry
    /// lives `V + 2S + 1 s + L` after its scan time at most.
    pub fn restore_window_ms(&self) -> i64 {
        let delivery = self.lateness_ms.saturating_mul(2).saturating_add(self.skew_ms.saturating_mul(2));
        let ride = self
            .lateness_ms
            .saturating_add(self.code_validity_ms)
            .saturating_add(self.skew_ms.saturating_mul(2))
            .saturating_add(1000);
        delivery.max(ride)
    }
}

fn secs_to_ms(secs: u32) -> i64 {
    i64::from(secs) * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Horizons = Horizons { lateness_ms: 3_600_000, skew_ms: 30_000, code_validity_ms: 60_000 };

    #[test]
    fn the_arrival_window_is_inclusive_at_both_ends() {
        let at = 1_800_000_000_000;
        assert!(H.on_time(at, at + 3_600_000));
        assert!(!H.on_time(at, at + 3_600_001));
        assert!(H.on_time(at + 30_000, at));
        assert!(!H.on_time(at + 30_001, at));
        assert_eq!(H.partition_time(at, at + 3_600_001), at + 3_600_001);
        assert_eq!(H.partition_time(at, at + 1), at);
    }

    #[test]
    fn a_ride_key_outlives_the_last_copy_that_could_pass() {
        let created = 1_800_000_000u32;
        let last_scan_ms = (i64::from(created) + 60 + 30) * 1000 + 999;
        let last_arrival_ms = last_scan_ms + 3_600_000;
        assert!(H.ride_expiry(created) > last_arrival_ms);
    }

    #[test]
    fn a_delivery_entry_follows_the_server_clock() {
        let received = 1_800_000_000_000;
        // A scan from long ago: remembered L + S after it arrived.
        assert_eq!(H.delivery_expiry(0, received), received + 3_630_000);
        // A validator clock far ahead cannot keep the entry alive longer.
        assert_eq!(H.delivery_expiry(SCAN_TIME_MS_MAX, received), received + 3_660_000);
        assert_eq!(H.delivery_expiry(i64::MAX, i64::MAX), i64::MAX);
    }

    #[test]
    fn the_largest_settings_do_not_overflow() {
        let policy = FreshnessPolicy {
            code_validity_secs: u32::MAX,
            clock_skew_secs: u32::MAX,
            credential_validity_secs: u32::MAX,
            unsealed_refused_from_secs: Some(u32::MAX),
        };
        let h = Horizons::new(policy, u32::MAX);
        assert!(h.restore_window_ms() > 0);
        assert!(h.ride_expiry(u32::MAX) > 0);
        assert!(!h.on_time(i64::MIN, i64::MAX) && h.on_time(0, 0));
    }
}
