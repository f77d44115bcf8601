//! The money side's metrics, named for Prometheus (the exporter and the
//! ingest side's are `farestream_ingest::telemetry`). Each function logs
//! nothing and counts one thing; call sites stay short and the names
//! cannot drift between them.

use metrics::{counter, gauge};

use farestream_core::charges::ChargeOutcome;

pub fn rides_priced(taps: u64, charges: u64) {
    counter!("farestream_ride_taps_priced_total").increment(taps);
    counter!("farestream_charges_written_total").increment(charges);
}

/// In cluster mode, one pricing transaction for `parts` partitions'
/// stretches: the rounds and the parts, whose ratio says how many
/// partitions a commit serves.
pub fn pricing_round_parts(parts: usize) {
    counter!("farestream_pricing_rounds_total").increment(1);
    counter!("farestream_pricing_round_parts_total").increment(parts as u64);
}

/// A charges-archive batch another node claimed and stopped working on,
/// taken over (cluster mode): each is a node that died or lost its store.
pub fn charges_archive_batch_taken_over() {
    counter!("farestream_charges_archive_batches_taken_over_total").increment(1);
}

pub fn pricing_retried() {
    counter!("farestream_pricing_retries_total").increment(1);
}

/// How far pricing lags behind ingest, by design allowed to: the age of the
/// oldest scan not yet priced as of the pricer's last read of the log, 0
/// caught up. A pricer giving way under a burst reads seldom, and the
/// figure is as old as its last read.
pub fn pricer_lag(lag_ms: i64) {
    gauge!("farestream_pricer_lag_seconds").set(lag_ms.max(0) as f64 / 1_000.0);
}

/// Where the pricer is in the log, brought up to date by the server's
/// housekeeping (not the pricer, so it moves while a pricer giving way
/// waits or fails): the position priced (caught up when it reaches
/// `farestream_wal_durable_lsn`; a load generator times the catch-up so)
/// and the bytes of durable log it has yet to price, the log on disk it
/// holds back.
pub fn pricer_position(durable_lsn: u64, priced_lsn: u64) {
    gauge!("farestream_pricer_priced_lsn").set(priced_lsn as f64);
    gauge!("farestream_pricer_lag_bytes").set(durable_lsn.saturating_sub(priced_lsn) as f64);
}

/// One request to the payment gateway: `answer` is `succeeded`,
/// `declined`, `retry` or `refused`.
pub fn charge_attempted(answer: &'static str) {
    counter!("farestream_charge_attempts_total", "answer" => answer).increment(1);
}

/// An answer from the payment gateway that was not believed: `reason` is
/// `unsigned`, `stale` or `signature_invalid`. The request goes again.
pub fn payment_answer_unverified(reason: &'static str) {
    counter!("farestream_payment_answers_unverified_total", "reason" => reason).increment(1);
}

/// Whether the payment gateway's circuit breaker holds charges back (1)
/// or lets them go (0).
pub fn payment_gateway_breaker(open: bool) {
    gauge!("farestream_payment_gateway_breaker_open").set(if open { 1.0 } else { 0.0 });
}

/// Charges still pending and failed (past their retry budget, still
/// retried), and how long the oldest has waited on the server's clock.
pub fn charges_undecided(undecided: crate::outbox::Undecided, now: farestream_core::clock::UnixMillis) {
    gauge!("farestream_charges_undecided", "outcome" => ChargeOutcome::Pending.as_str()).set(undecided.pending as f64);
    gauge!("farestream_charges_undecided", "outcome" => ChargeOutcome::Failed.as_str()).set(undecided.failed as f64);
    let age_ms = undecided.oldest_created_at.map_or(0, |at| now.saturating_sub(at).max(0));
    gauge!("farestream_charges_oldest_undecided_age_seconds").set(age_ms as f64 / 1_000.0);
}

/// A charge whose attempts are spent (or that the gateway refused): an
/// operator must look; it is still retried.
pub fn charge_failed() {
    counter!("farestream_charges_failed_total").increment(1);
}

/// An account payment refused when it was sent again after a lost answer:
/// it stays undecided (the first send may have been applied), and a
/// person looks.
pub fn payment_refused_on_resend() {
    counter!("farestream_account_payments_refused_on_resend_total").increment(1);
}

/// A credit the gateway declined: the rider is owed it, and a person pays
/// it out.
pub fn credit_declined() {
    counter!("farestream_credits_declined_total").increment(1);
}

/// A charge decided before any request: `outcome` is `no_account` (a
/// person looks at the card) or `netted` (a credit set against arrears).
pub fn charge_not_sent(outcome: &'static str) {
    counter!("farestream_charges_not_sent_total", "outcome" => outcome).increment(1);
}

/// A money-store step panicked: an invariant is broken (see
/// `store::step_ended`); the step is tried again and fails the same way
/// until mended.
pub fn money_step_panicked() {
    counter!("farestream_money_step_panics_total").increment(1);
}

/// A PostgreSQL money-store connection ended and a new one was made.
pub fn money_store_reconnected() {
    counter!("farestream_money_store_reconnects_total").increment(1);
}

/// A one-time code not sent, or a phone's codes not checked, and why.
pub fn otp_refused(reason: &'static str) {
    counter!("farestream_otp_refused_total", "reason" => reason).increment(1);
}

/// An account API call answered with an error; `error` is the body's code.
pub fn api_error(error: &'static str) {
    counter!("farestream_api_errors_total", "error" => error).increment(1);
}
