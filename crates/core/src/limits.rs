//! Rate limits as decisions: a token bucket that is given `now` and
//! answers "go" or "wait this long". The server's per-gateway scan rate
//! and per-address handshake rate are token buckets.

use crate::clock::UnixMillis;

/// A token bucket: `rate_per_sec` tokens a second, at most `burst` held.
/// A request for more tokens than `burst` is served as if for `burst`
/// (one whole batch always passes once the bucket is full).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    at: UnixMillis,
}

impl TokenBucket {
    /// A full bucket at `now`. A rate of 0 is taken as 1 a second: a limit
    /// of nothing would refuse every request forever.
    pub fn full(rate_per_sec: u64, burst: u64, now: UnixMillis) -> TokenBucket {
        let rate_per_sec = rate_per_sec.max(1) as f64;
        let burst = burst.max(1) as f64;
        TokenBucket { rate_per_sec, burst, tokens: burst, at: now }
    }

    /// Takes `n` tokens at `now`, or says how many milliseconds until they
    /// are there (and takes nothing). A clock that went back refills
    /// nothing.
    pub fn take(&mut self, n: u64, now: UnixMillis) -> Result<(), u64> {
        self.refill(now);
        let wanted = (n as f64).min(self.burst);
        if self.tokens >= wanted {
            self.tokens -= wanted;
            return Ok(());
        }
        let wait_ms = ((wanted - self.tokens) / self.rate_per_sec * 1000.0).ceil();
        Err((wait_ms as u64).max(1))
    }

    /// Whether the bucket is full at `now`: it holds nothing worth keeping.
    pub fn is_full(&mut self, now: UnixMillis) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    fn refill(&mut self, now: UnixMillis) {
        if now > self.at {
            let elapsed_secs = now.saturating_sub(self.at) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed_secs * self.rate_per_sec).min(self.burst);
            self.at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_its_burst_then_its_rate() {
        let mut bucket = TokenBucket::full(10, 20, 0);
        assert_eq!(bucket.take(20, 0), Ok(()));
        assert_eq!(bucket.take(1, 0), Err(100), "one token takes 100 ms at 10 a second");
        assert_eq!(bucket.take(5, 500), Ok(()), "half a second refilled five");
        assert_eq!(bucket.take(1, 500), Err(100));
        assert!(bucket.is_full(10_000));
    }

    #[test]
    fn extremes_neither_panic_nor_starve() {
        let mut bucket = TokenBucket::full(0, 0, i64::MIN);
        assert_eq!(bucket.take(u64::MAX, i64::MIN), Ok(()), "more than the burst is served as the burst");
        assert_eq!(bucket.take(1, i64::MIN), Err(1000));
        assert_eq!(bucket.take(1, i64::MAX), Ok(()), "a huge jump refills to the burst only");
        assert_eq!(bucket.take(1, i64::MAX), Err(1000));
        let mut backwards = TokenBucket::full(1, 1, 1_000);
        assert_eq!(backwards.take(1, 1_000), Ok(()));
        assert_eq!(backwards.take(1, 0), Err(1000), "a clock that went back refills nothing");
        let mut fast = TokenBucket::full(u64::MAX, u64::MAX, 0);
        assert_eq!(fast.take(u64::MAX, 0), Ok(()));
        assert_eq!(fast.take(1, 1), Ok(()));
    }
}
