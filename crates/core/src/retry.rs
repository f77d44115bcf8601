//! How payment-gateway calls are retried, decided here with the time and
//! the randomness passed in:
//!
//! - [`RetryPolicy::next_attempt`]: after a retryable answer (a timeout, a
//!   5xx, a 409, a 429), when a charge is tried again: exponential backoff
//!   with full jitter (a uniformly random wait up to the exponential
//!   bound, so a thousand charges that failed together do not come back
//!   together), or the gateway's `Retry-After`; and whether its retry
//!   budget, counted in time from its first attempt, is spent (card
//!   networks allow resubmission over days, so the budget is hours, not a
//!   count that a burst of failures spends in seconds). A charge past its
//!   budget is `failed`: shown to a person, and still tried every
//!   `failed_retry_after`.
//! - [`CircuitBreaker`]: one per payment gateway. After
//!   `failures_to_open` retryable answers in a row it opens, and charges
//!   stay where they are instead of spending their attempts on a dead
//!   gateway: one probe goes out at a time, its wait doubling (jittered)
//!   up to `probe_interval_max`, so a dead gateway sees about one request
//!   per `probe_interval_max` however large the backlog. The first probe
//!   that is answered closes it, and the backlog drains at once.
//!
//! Any answer from the gateway that is not a retryable failure (a
//! success, a decline, a refusal) shows it is alive.

use crate::clock::UnixMillis;

/// When a charge is tried again after a retryable answer from the payment gateway, and when it
/// becomes `failed`. All durations in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff's upper bound.
    pub backoff_initial_ms: i64,
    /// The most any one backoff may be.
    pub backoff_max_ms: i64,
    /// How long after its first attempt a charge may still be retried on
    /// the normal schedule.
    pub budget_ms: i64,
    /// How often a charge past its budget is still tried.
    pub failed_retry_after_ms: i64,
}

/// When to try a charge again, and whether it has become `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextAttempt {
    /// When to send it next (Unix ms).
    pub at: UnixMillis,
    /// Its retry budget is spent: it is `failed` (reported to a person) and tried every
    /// `failed_retry_after_ms`.
    pub failed: bool,
}

impl RetryPolicy {
    /// The upper bound of the backoff after the `attempt`-th retryable
    /// answer (1-based): `backoff_initial_ms · 2^(attempt − 1)`, capped.
    pub(crate) fn backoff_bound_ms(&self, attempt: u32) -> i64 {
        let doublings = attempt.saturating_sub(1).min(62);
        let factor = 1i64 << doublings;
        self.backoff_initial_ms.max(0).saturating_mul(factor).min(self.backoff_max_ms.max(0))
    }

    /// Full jitter: a wait drawn uniformly from `0..=bound` by `random`.
    pub(crate) fn jittered_backoff_ms(&self, attempt: u32, random: u64) -> i64 {
        jitter(self.backoff_bound_ms(attempt), random)
    }

    /// The next attempt after a retryable answer to attempt number
    /// `attempt`, the charge first tried at `first_attempt_at`.
    pub fn next_attempt(
        &self,
        attempt: u32,
        first_attempt_at: UnixMillis,
        now: UnixMillis,
        retry_after_ms: Option<i64>,
        random: u64,
    ) -> NextAttempt {
        let failed = now.saturating_sub(first_attempt_at) >= self.budget_ms;
        let wait = if failed {
            self.failed_retry_after_ms
        } else {
            retry_after_ms
                .map(|ms| ms.clamp(0, self.backoff_max_ms.max(0)))
                .unwrap_or_else(|| self.jittered_backoff_ms(attempt, random))
        };
        NextAttempt { at: now.saturating_add(wait.max(0)), failed }
    }
}

/// A value drawn uniformly from `0..=bound` by `random` (bound ≥ 0).
fn jitter(bound: i64, random: u64) -> i64 {
    if bound <= 0 {
        return 0;
    }
    let span = bound.unsigned_abs() + 1;
    i64::try_from(random % span).unwrap_or(bound)
}

/// How a [`CircuitBreaker`] opens and probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Retryable answers in a row that open the breaker.
    pub failures_to_open: u32,
    /// The first wait before a probe once open.
    pub probe_interval_initial_ms: i64,
    /// The longest wait between probes.
    pub probe_interval_max_ms: i64,
}

/// Where a [`CircuitBreaker`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Charges go out as they fall due; counts retryable answers in a row.
    Closed {
        /// Retryable answers since the last other answer; `failures_to_open` of them open it.
        failures_in_row: u32,
    },
    /// Nothing goes out before `probe_at`; then one probe.
    Open {
        /// When the next probe may go out (Unix ms).
        probe_at: UnixMillis,
        /// Probes failed since it opened: each doubles the wait before the next, up to the maximum.
        probes_failed: u32,
    },
    /// One probe is out; nothing else goes until it is answered.
    Probing {
        /// Probes failed before this one.
        probes_failed: u32,
    },
}

/// What the dispatcher may send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// As many charges as are due.
    Send,
    /// Exactly one charge, the probe; report its answer.
    Probe,
    /// Nothing before this moment (or before a probe is answered: `None`).
    WaitUntil(Option<UnixMillis>),
}

/// How an answer from the gateway counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayHealth {
    /// It answered (success, decline, refusal): it is alive.
    Answered,
    /// A timeout, a 5xx, a 429, a connection refused.
    RetryableFailure,
}

/// One payment gateway's circuit breaker: while the gateway is down, charges wait instead of
/// spending their attempts, and one probe at a time finds out when it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: BreakerState,
    /// Times it opened, for the telemetry.
    pub(crate) opened_count: u64,
}

impl CircuitBreaker {
    /// A closed breaker: charges go out.
    pub fn new(settings: BreakerSettings) -> CircuitBreaker {
        CircuitBreaker { settings, state: BreakerState::Closed { failures_in_row: 0 }, opened_count: 0 }
    }

    /// Where it stands now.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether charges go out as they fall due (neither open nor probing).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, BreakerState::Closed { .. })
    }

    /// What may go out at `now`; a `Probe` moves it to probing, so it is
    /// granted once until answered.
    pub fn permit(&mut self, now: UnixMillis) -> Permit {
        match self.state {
            BreakerState::Closed { .. } => Permit::Send,
            BreakerState::Open { probe_at, probes_failed } if now >= probe_at => {
                self.state = BreakerState::Probing { probes_failed };
                Permit::Probe
            }
            BreakerState::Open { probe_at, .. } => Permit::WaitUntil(Some(probe_at)),
            BreakerState::Probing { .. } => Permit::WaitUntil(None),
        }
    }

    /// A probe was granted but nothing was due to send: open again, with
    /// the probe due at once when something is.
    pub fn probe_unused(&mut self, now: UnixMillis) {
        if let BreakerState::Probing { probes_failed } = self.state {
            self.state = BreakerState::Open { probe_at: now, probes_failed };
        }
    }

    /// Records an answer (a probe's, or any request's while closed).
    /// Returns true when this answer closed an open breaker: the backlog
    /// may go out now.
    pub fn record(&mut self, health: GatewayHealth, now: UnixMillis, random: u64) -> bool {
        match (self.state, health) {
            (BreakerState::Closed { .. }, GatewayHealth::Answered) => {
                self.state = BreakerState::Closed { failures_in_row: 0 };
                false
            }
            (BreakerState::Closed { failures_in_row }, GatewayHealth::RetryableFailure) => {
                let failures_in_row = failures_in_row.saturating_add(1);
                self.state = if failures_in_row >= self.settings.failures_to_open.max(1) {
                    self.opened_count = self.opened_count.saturating_add(1);
                    self.open(now, 0, random)
                } else {
                    BreakerState::Closed { failures_in_row }
                };
                false
            }
            (BreakerState::Open { .. } | BreakerState::Probing { .. }, GatewayHealth::Answered) => {
                self.state = BreakerState::Closed { failures_in_row: 0 };
                true
            }
            (BreakerState::Probing { probes_failed }, GatewayHealth::RetryableFailure) => {
                self.state = self.open(now, probes_failed.saturating_add(1), random);
                false
            }
            // A request sent before it opened failed late: already open.
            (BreakerState::Open { .. }, GatewayHealth::RetryableFailure) => false,
        }
    }

    /// Open, the next probe after a jittered wait that doubles with each
    /// failed probe: drawn from the upper half of the bound, so probes
    /// neither stampede nor come back at once.
    fn open(&self, now: UnixMillis, probes_failed: u32, random: u64) -> BreakerState {
        let doublings = probes_failed.min(62);
        let bound = self
            .settings
            .probe_interval_initial_ms
            .max(1)
            .saturating_mul(1i64 << doublings)
            .min(self.settings.probe_interval_max_ms.max(1));
        let wait = bound / 2 + jitter(bound - bound / 2, random);
        BreakerState::Open { probe_at: now.saturating_add(wait), probes_failed }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        backoff_initial_ms: 200,
        backoff_max_ms: 60_000,
        budget_ms: 3_600_000,
        failed_retry_after_ms: 600_000,
    };
    const BREAKER: BreakerSettings =
        BreakerSettings { failures_to_open: 5, probe_interval_initial_ms: 250, probe_interval_max_ms: 2_000 };

    #[test]
    fn the_bound_doubles_to_its_cap_and_never_overflows() {
        let bounds: Vec<i64> =
            [0, 1, 2, 3, 9, 10, 63, 64, u32::MAX].iter().map(|&a| POLICY.backoff_bound_ms(a)).collect();
        assert_eq!(bounds, vec![200, 200, 400, 800, 51_200, 60_000, 60_000, 60_000, 60_000]);
        let extreme = RetryPolicy { backoff_initial_ms: i64::MAX, backoff_max_ms: i64::MAX, ..POLICY };
        assert_eq!(extreme.backoff_bound_ms(u32::MAX), i64::MAX);
        assert_eq!(extreme.jittered_backoff_ms(u32::MAX, u64::MAX), i64::MAX);
    }

    /// Issue 17 item 9: the gaps were exactly 200·2^(n−1) ms, so every
    /// charge that failed together came back together.
    #[test]
    fn full_jitter_spreads_a_burst_over_the_whole_bound() {
        let waits: Vec<i64> =
            (0..1_000u64).map(|r| POLICY.jittered_backoff_ms(4, r.wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect();
        assert!(waits.iter().all(|w| (0..=1_600).contains(w)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 400, "only {} distinct waits", distinct.len());
        assert!(waits.iter().any(|&w| w < 400) && waits.iter().any(|&w| w > 1_200), "not spread: {waits:?}");
    }

    /// Issue 17 item 9: eight attempts were spent in the first 26-28 s of
    /// an outage. A budget in time keeps a charge on its normal schedule
    /// for the whole budget, however many attempts that is.
    #[test]
    fn a_charge_fails_only_once_its_budget_in_time_is_spent() {
        let first = 1_000_000;
        let early = POLICY.next_attempt(1_000, first, first + 3_599_999, None, 7);
        assert!(!early.failed && early.at <= first + 3_599_999 + 60_000);
        let late = POLICY.next_attempt(2, first, first + 3_600_000, None, 7);
        assert_eq!(late, NextAttempt { at: first + 3_600_000 + 600_000, failed: true });
        let told = POLICY.next_attempt(1, first, first + 10, Some(5_000), 7);
        assert_eq!(told, NextAttempt { at: first + 5_010, failed: false }, "Retry-After is obeyed");
        let absurd = POLICY.next_attempt(1, first, first + 10, Some(i64::MAX), 7);
        assert_eq!(absurd.at, first + 10 + 60_000, "a Retry-After past backoff_max is capped");
        let edge = POLICY.next_attempt(u32::MAX, i64::MIN, i64::MAX, Some(i64::MIN), u64::MAX);
        assert_eq!(edge, NextAttempt { at: i64::MAX, failed: true }, "no overflow at the extremes");
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_probes_once_and_closes_on_an_answer() {
        let mut breaker = CircuitBreaker::new(BREAKER);
        for _ in 0..4 {
            assert_eq!(breaker.permit(0), Permit::Send);
            breaker.record(GatewayHealth::RetryableFailure, 0, 0);
        }
        breaker.record(GatewayHealth::Answered, 0, 0);
        for _ in 0..4 {
            breaker.record(GatewayHealth::RetryableFailure, 0, 0);
        }
        assert_eq!(breaker.permit(0), Permit::Send, "an answer in between resets the count");
        breaker.record(GatewayHealth::RetryableFailure, 1_000, 0);
        let BreakerState::Open { probe_at, .. } = breaker.state() else { panic!("{:?}", breaker.state()) };
        assert!((1_125..=1_250).contains(&probe_at), "{probe_at}");
        assert_eq!(breaker.permit(1_100), Permit::WaitUntil(Some(probe_at)));
        assert!(!breaker.record(GatewayHealth::RetryableFailure, 1_100, 0), "a late failure changes nothing");
        assert_eq!(breaker.permit(probe_at), Permit::Probe);
        assert_eq!(breaker.permit(probe_at), Permit::WaitUntil(None), "one probe at a time");
        breaker.record(GatewayHealth::RetryableFailure, 2_000, u64::MAX);
        let BreakerState::Open { probe_at, probes_failed: 1 } = breaker.state() else { panic!() };
        assert!((2_250..=2_500).contains(&probe_at), "the wait doubles: {probe_at}");
        assert_eq!(breaker.permit(probe_at), Permit::Probe);
        breaker.probe_unused(probe_at);
        assert_eq!(breaker.permit(probe_at), Permit::Probe, "an unused probe is granted again");
        assert!(breaker.record(GatewayHealth::Answered, 3_000, 0), "the probe's answer closes it");
        assert_eq!((breaker.permit(3_000), breaker.opened_count), (Permit::Send, 1));
    }

    proptest! {
        /// However long a gateway stays dead, an open breaker lets out at
        /// most one probe per half `probe_interval_max` once the wait has
        /// grown, and never two at once.
        #[test]
        fn a_dead_gateway_sees_at_most_one_probe_per_interval(randoms in proptest::collection::vec(any::<u64>(), 1..200)) {
            let mut breaker = CircuitBreaker::new(BREAKER);
            for _ in 0..5 { breaker.record(GatewayHealth::RetryableFailure, 0, 0); }
            let (mut now, mut probes, mut last_probe) = (0i64, 0u32, i64::MIN);
            for random in randoms {
                match breaker.permit(now) {
                    Permit::Probe => {
                        prop_assert!(probes < 3 || now - last_probe >= BREAKER.probe_interval_max_ms / 2);
                        probes += 1;
                        last_probe = now;
                        prop_assert_eq!(breaker.permit(now), Permit::WaitUntil(None));
                        breaker.record(GatewayHealth::RetryableFailure, now, random);
                    }
                    Permit::WaitUntil(Some(at)) => { prop_assert!(at > now); now = at; }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }
}
