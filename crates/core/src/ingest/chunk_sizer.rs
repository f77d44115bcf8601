//! How many signatures one batch equation should hold. A batch equation
//! over `n` signatures costs less per signature than `n` single checks,
//! but when any of them is bad the equation fails and every one is checked
//! alone. So the best `n` falls as signatures fail more often: a gateway
//! sending one forgery per 64 signatures, verified in equations of 64,
//! costs more than one sending nothing but forgeries verified singly.
//!
//! The sizer keeps a moving failure rate per signature and picks the
//! power of two (up to `ingest.verify_chunk_signatures`) with the lowest
//! expected cost per signature:
//!
//! ```text
//! cost(1) = 1
//! cost(n) = BATCH_FIXED + BATCH_PER_EQUATION / n + (1 - (1 - p)^n)
//! ```
//!
//! in units of one single verification: the batch equation's share, plus
//! the chance that the equation fails and every signature is checked
//! alone. `BATCH_*` were fitted to `cargo bench --bench ride_code` on the
//! 2-core development machine (ed25519-zebra: a batch of 2 costs 0.75 of a
//! single check per signature, of 4 0.59, of 8 0.52, of 16 to 64 0.46 to
//! 0.47; the model gives 0.73, 0.59, 0.52, 0.48 to 0.46).

/// Per-signature cost of a batch equation that does not depend on its size.
const BATCH_FIXED: f64 = 0.45;
/// The part of a batch equation's cost shared by its signatures.
const BATCH_PER_EQUATION: f64 = 0.55;
/// How many signatures the moving failure rate remembers, about.
const MEMORY_SIGNATURES: f64 = 1024.0;

/// Chooses how many signatures each batch equation holds, from a moving failure rate (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkSizer {
    max: usize,
    failure_rate: f64,
}

impl ChunkSizer {
    /// A sizer allowing up to `max` signatures per equation, starting from
    /// `failure_rate` (a fraction of signatures, 0 to 1).
    pub fn new(max: usize, failure_rate: f64) -> ChunkSizer {
        ChunkSizer { max: max.max(1), failure_rate: clamp_rate(failure_rate) }
    }

    #[cfg(test)]
    fn failure_rate(&self) -> f64 {
        self.failure_rate
    }

    /// Learns from a batch: `checked` signatures verified, `failed` bad.
    pub fn observe(&mut self, checked: usize, failed: usize) {
        if checked == 0 {
            return;
        }
        let observed = failed.min(checked) as f64 / checked as f64;
        let weight = checked as f64 / (checked as f64 + MEMORY_SIGNATURES);
        self.failure_rate = clamp_rate(self.failure_rate + weight * (observed - self.failure_rate));
    }

    /// The chunk size with the lowest expected cost per signature.
    pub fn chunk_signatures(&self) -> usize {
        let mut best = (1, 1.0);
        let mut n = 2;
        while n <= self.max {
            let cost = expected_cost(n, self.failure_rate);
            if cost < best.1 {
                best = (n, cost);
            }
            n *= 2;
        }
        best.0
    }
}

/// Expected cost per signature, in single verifications, of equations of
/// `n` signatures when a fraction `p` of signatures is bad.
fn expected_cost(n: usize, p: f64) -> f64 {
    let equation_fails = 1.0 - (1.0 - p).powi(i32::try_from(n).unwrap_or(i32::MAX));
    BATCH_FIXED + BATCH_PER_EQUATION / n as f64 + equation_fails
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honest_traffic_gets_the_largest_chunks_and_forgeries_smaller_ones() {
        assert_eq!(ChunkSizer::new(64, 0.0).chunk_signatures(), 64);
        assert_eq!(ChunkSizer::new(64, 0.0001).chunk_signatures(), 64);
        let one_in_64 = ChunkSizer::new(64, 1.0 / 64.0).chunk_signatures();
        assert!((4..=16).contains(&one_in_64), "{one_in_64}");
        assert_eq!(ChunkSizer::new(64, 1.0).chunk_signatures(), 1, "all forged: check singly");
        assert_eq!(ChunkSizer::new(1, 0.0).chunk_signatures(), 1);
        assert_eq!(ChunkSizer::new(0, 0.0).chunk_signatures(), 1);
    }

    #[test]
    fn the_rate_follows_what_is_observed_and_stays_in_range() {
        let mut sizer = ChunkSizer::new(64, 0.0);
        for _ in 0..20 {
            sizer.observe(2_048, 2_048);
        }
        assert!(sizer.failure_rate() > 0.99, "{}", sizer.failure_rate());
        assert_eq!(sizer.chunk_signatures(), 1);
        for _ in 0..20 {
            sizer.observe(2_048, 0);
        }
        assert!(sizer.failure_rate() < 0.01, "{}", sizer.failure_rate());
        assert_eq!(sizer.chunk_signatures(), 64);
        sizer.observe(0, 5);
        sizer.observe(1, usize::MAX);
        assert!((0.0..=1.0).contains(&sizer.failure_rate()));
        assert_eq!(ChunkSizer::new(64, f64::NAN).failure_rate(), 0.0);
    }
}
