//! `loadgen horizon`: what the dedup indexes cost per remembered scan.
//! It fills a fresh [`DedupIndex`] with `scans` scans, as the server
//! remembers them over its horizon (one delivery fingerprint and one ride
//! code each), one index after the other, sweeping between rounds as the
//! server's housekeeping does (so hot tiers are frozen into cold runs at
//! the configured size), and reads the process's resident memory after
//! each: bytes per scan, index by index, and the peak (a hash table
//! growing, or a freeze, holds old and new at once).

use rayon::prelude::*;

use crate::ingest::dedup::{DedupIndex, DedupLimits, RideKey};
use crate::scan::TapKind;

/// Keys filled between progress updates, one rayon task each.
const FILL_CHUNK_SCANS: u64 = 1 << 14;
/// Keys filled between sweeps: a few seconds of a burst.
const FILL_ROUND_SCANS: u64 = 1 << 17;

/// What a horizon of `scans` costs.
#[derive(Debug, Clone, Copy)]
pub struct HorizonFigures {
    pub scans: u64,
    /// Resident bytes the delivery index (re-deliveries, by fingerprint) added.
    pub deliveries_bytes: u64,
    /// Resident bytes the ride index (replays, by ride code) added.
    pub rides_bytes: u64,
    /// The process's resident memory at the end and its high-water mark.
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub elapsed: std::time::Duration,
}

impl HorizonFigures {
    pub fn per_scan(&self, bytes: u64) -> f64 {
        bytes as f64 / self.scans.max(1) as f64
    }

    /// The summary a person reads, then one `horizon key=value` line for scripts.
    pub fn render(&self) -> String {
        let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
        let together = self.deliveries_bytes + self.rides_bytes;
        format!(
            "loadgen horizon: {} scans remembered in {:.1} s: deliveries {:.1} B/scan, rides {:.1} B/scan, \
             {:.1} B/scan together; RSS {:.0} MiB, peak {:.0} MiB\n\
             horizon scans={} deliveries_bytes_per_scan={:.1} rides_bytes_per_scan={:.1} bytes_per_scan={:.1} \
             rss_mib={:.0} peak_rss_mib={:.0}\n",
            self.scans,
            self.elapsed.as_secs_f64(),
            self.per_scan(self.deliveries_bytes),
            self.per_scan(self.rides_bytes),
            self.per_scan(together),
            mib(self.rss_bytes),
            mib(self.peak_rss_bytes),
            self.scans,
            self.per_scan(self.deliveries_bytes),
            self.per_scan(self.rides_bytes),
            self.per_scan(together),
            mib(self.rss_bytes),
            mib(self.peak_rss_bytes),
        )
    }
}

/// Scan `i`'s fingerprint, spread as the server's SHA-256 ones are (also
/// the stage benches' keys).
pub fn fingerprint(i: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    out[8..].copy_from_slice(&i.to_le_bytes());
    out
}

/// Scan `i`'s ride code: a city's riders each making a few codes a day.
fn ride_key(i: u64) -> RideKey {
    RideKey { card_id: i.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 20, created_at: (i % 86_400) as u32, counter: i as u32 }
}

/// Fills a fresh index frozen as `limits` say with `scans` scans;
/// `progress` counts them twice (once per index).
pub fn measure_horizon(
    scans: u64,
    limits: DedupLimits,
    progress: &indicatif::ProgressBar,
) -> Result<(HorizonFigures, DedupIndex), String> {
    let started = std::time::Instant::now();
    progress.set_length(scans.saturating_mul(2));
    let index = DedupIndex::new(limits, rand::random());
    let fill = |claim: &(dyn Fn(u64) -> bool + Sync)| -> Result<(), String> {
        for round in (0..scans).step_by(FILL_ROUND_SCANS as usize) {
            let round_end = round.saturating_add(FILL_ROUND_SCANS).min(scans);
            let chunks = (round_end - round).div_ceil(FILL_CHUNK_SCANS);
            (0..chunks).into_par_iter().try_for_each(|chunk| {
                let start = round + chunk * FILL_CHUNK_SCANS;
                let keys = start..start.saturating_add(FILL_CHUNK_SCANS).min(round_end);
                let count = keys.end - keys.start;
                match keys.filter(|i| !claim(*i)).count() {
                    0 => {
                        progress.inc(count);
                        Ok(())
                    }
                    refused => Err(format!("{refused} distinct keys refused as seen before")),
                }
            })?;
            // Nothing expires: every key was claimed to be kept for ever.
            index.sweep(0);
        }
        Ok(())
    };
    let resident_bytes = || crate::telemetry::resident_memory().map(|memory| (memory.bytes, memory.peak_bytes));
    let (before, _) = resident_bytes()?;
    fill(&|i| index.claim_delivery(fingerprint(i), i64::MAX, 0))?;
    let (with_deliveries, _) = resident_bytes()?;
    fill(&|i| index.claim_ride(ride_key(i), TapKind::Single, i64::MAX, 0))?;
    let (rss_bytes, peak_rss_bytes) = resident_bytes()?;
    let figures = HorizonFigures {
        scans,
        deliveries_bytes: with_deliveries.saturating_sub(before),
        rides_bytes: rss_bytes.saturating_sub(with_deliveries),
        rss_bytes,
        peak_rss_bytes,
        elapsed: started.elapsed(),
    };
    Ok((figures, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scan is remembered once in each index, and a second claim of
    /// any of them is refused: the figures are of real entries.
    #[test]
    fn a_horizon_holds_each_scan_once_in_each_index() {
        let scans = 2 * FILL_ROUND_SCANS + 17;
        let limits = DedupLimits { hot_entries_max: FILL_ROUND_SCANS as usize / 2, ..DedupLimits::DEFAULT };
        let (figures, index) = measure_horizon(scans, limits, &indicatif::ProgressBar::hidden()).expect("filled");
        let sizes = index.sizes();
        assert_eq!((sizes.deliveries, sizes.rides), (scans as usize, scans as usize));
        assert!(!index.claim_delivery(fingerprint(scans - 1), i64::MAX, 0), "the last delivery is remembered");
        assert!(!index.claim_ride(ride_key(0), TapKind::Single, i64::MAX, 0), "the first ride is remembered");
        assert!(figures.rss_bytes > 0 && figures.peak_rss_bytes >= figures.rss_bytes, "{figures:?}");
        assert!(figures.render().contains(&format!("horizon scans={scans} ")), "{}", figures.render());
    }
}
