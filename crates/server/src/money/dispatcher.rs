//! The dispatcher: sends the outbox's due charges to the payment gateway,
//! at most `concurrency_max` at once, each under its charge id as the
//! idempotency key, and writes what came back.
//!
//! Claiming is a lease: a claimed charge's `attempts` goes up by one and it
//! is not due again until `lease_until`; only the claim that holds that
//! attempt number may write the outcome, so a lease that expired (a slow
//! answer, a crash) and was claimed again cannot be decided twice. The
//! gateway's idempotency key, not the lease, is what makes a charge apply
//! once: a resend gets the first result.
//!
//! Outcomes: `succeeded`; `declined` (final: the amount becomes arrears and
//! the card is denied, in the same transaction); a retryable answer waits
//! out an exponential backoff or the gateway's `Retry-After`; after
//! `attempts_max` the charge is `failed`, reported, and still retried every
//! `failed_retry_after`. A charge is never dropped.
//!
//! Leases and retries run on the wall clock, whatever clock the server runs
//! on (the demo compresses a day into a minute): they are about how the
//! gateway behaves in real time. Outcomes are dated by the server's clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::params;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::accounts::{self, Account};
use super::codec::{card_from_sql, id_from_sql};
use super::deny_list::DenyListHub;
use super::paygw::{Answer, Direction, PaymentGateway, PaymentRequest};
use super::store::{MoneyStore, StoreError};
use crate::clock::{Clock, SystemClock, UnixMillis};
use crate::sync::lock;
use crate::telemetry;

#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub concurrency_max: usize,
    pub batch_charges_max: usize,
    pub lease: Duration,
    pub attempts_max: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub failed_retry_after: Duration,
    /// How often the outbox is looked at when nobody says it changed.
    pub poll_interval: Duration,
}

/// A charge claimed for one attempt.
#[derive(Debug, Clone)]
struct Claimed {
    charge_id: [u8; 16],
    card_id: u64,
    amount_cents: i64,
    currency: String,
    kind: String,
    attempt: u32,
    agreement_id: Option<String>,
}

pub struct Dispatcher {
    pub settings: DispatcherSettings,
    pub store: Arc<Mutex<MoneyStore>>,
    pub gateway: PaymentGateway,
    /// Dates outcomes (`decided_at`, arrears).
    pub clock: Arc<dyn Clock>,
    /// Rung by the pricer when it wrote charges.
    pub wake: Arc<Notify>,
    /// Told after a decline put a card on the list.
    pub deny_list: Arc<DenyListHub>,
}

impl Dispatcher {
    /// Sends due charges until `stop` is cancelled; a store error is logged
    /// and the round tried again after `poll_interval`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let sends = Arc::new(Semaphore::new(self.settings.concurrency_max));
        loop {
            let claimed = match self.claim().await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim charges; trying again");
                    Vec::new()
                }
            };
            let full_round = claimed.len() == self.settings.batch_charges_max;
            for charge in claimed {
                let Ok(permit) = Arc::clone(&sends).acquire_owned().await else { return };
                let this = Arc::clone(&self);
                tokio::spawn(async move {
                    this.attempt(charge).await;
                    drop(permit);
                });
            }
            if full_round {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// Claims up to `batch_charges_max` due charges.
    async fn claim(&self) -> Result<Vec<Claimed>, StoreError> {
        let (store, now) = (Arc::clone(&self.store), SystemClock.now_ms());
        let (limit, lease) = (self.settings.batch_charges_max, millis(self.settings.lease));
        blocking(move || {
            let mut store = lock(&store);
            let tx = store.transaction()?;
            let claimed = {
                let mut due = tx.prepare_cached(
                    "SELECT c.charge_id, c.card_id, c.amount_cents, c.currency, c.kind, c.attempts, a.agreement_id
                     FROM charges c LEFT JOIN accounts a ON a.card_id = c.card_id
                     WHERE c.outcome IN ('pending', 'failed') AND c.next_attempt_at <= ?1 AND c.lease_until <= ?1
                     ORDER BY c.next_attempt_at LIMIT ?2",
                )?;
                let rows = due.query_map(params![now, limit as i64], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get::<_, u32>(5)?,
                        r.get(6)?,
                    ))
                })?;
                let mut claimed = Vec::new();
                for row in rows {
                    let (id, card, amount_cents, currency, kind, attempts, agreement_id) = row?;
                    claimed.push(Claimed {
                        charge_id: id_from_sql(&id)?,
                        card_id: card_from_sql(card),
                        amount_cents,
                        currency,
                        kind,
                        attempt: attempts.saturating_add(1),
                        agreement_id,
                    });
                }
                claimed
            };
            let mut lease_it =
                tx.prepare_cached("UPDATE charges SET attempts = ?2, lease_until = ?3 WHERE charge_id = ?1")?;
            for charge in &claimed {
                lease_it.execute(params![&charge.charge_id[..], charge.attempt, now.saturating_add(lease)])?;
            }
            drop(lease_it);
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    /// One attempt at one charge, and its outcome written.
    async fn attempt(&self, charge: Claimed) {
        let answer = match &charge.agreement_id {
            None => Answer::Refused { reason: format!("card {} has no debit agreement", charge.card_id) },
            Some(agreement_id) => {
                let (direction, amount) = if charge.amount_cents < 0 {
                    (Direction::Credit, charge.amount_cents.unsigned_abs())
                } else {
                    (Direction::Debit, charge.amount_cents.unsigned_abs())
                };
                let request = PaymentRequest {
                    agreement_id: agreement_id.clone(),
                    amount_cents: amount,
                    currency: charge.currency.clone(),
                    description: format!("farestream {} {}", charge.kind, hex::encode(charge.charge_id)),
                };
                self.gateway.pay(direction, &hex::encode(charge.charge_id), &request).await
            }
        };
        telemetry::charge_attempted(answer_label(&answer));
        match self.record(&charge, answer).await {
            Ok(Some(_declined)) => self.deny_list.sync_soon().await,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, charge = %hex::encode(charge.charge_id), "cannot record a charge's outcome; it is sent again after its lease")
            }
        }
    }

    /// Writes an answer, if this claim still holds the charge. A decline
    /// returns the account it put in arrears.
    async fn record(&self, charge: &Claimed, answer: Answer) -> Result<Option<Account>, StoreError> {
        let (store, settings) = (Arc::clone(&self.store), self.settings.clone());
        let (now, wall) = (self.clock.now_ms(), SystemClock.now_ms());
        let charge = charge.clone();
        blocking(move || {
            let mut store = lock(&store);
            let tx = store.transaction()?;
            let id = &charge.charge_id[..];
            let mut declined_account = None;
            let written = match &answer {
                Answer::Succeeded { transaction_id } => tx.execute(
                    "UPDATE charges SET outcome = 'succeeded', decided_at = ?3, gateway_txn_id = ?4, last_error = NULL
                     WHERE charge_id = ?1 AND attempts = ?2 AND outcome IN ('pending', 'failed')",
                    params![id, charge.attempt, now, transaction_id],
                )?,
                Answer::Declined { decline_code } => {
                    let written = tx.execute(
                        "UPDATE charges SET outcome = 'declined', decided_at = ?3, last_error = ?4
                         WHERE charge_id = ?1 AND attempts = ?2 AND outcome IN ('pending', 'failed')",
                        params![id, charge.attempt, now, decline_code],
                    )?;
                    if written > 0 && charge.amount_cents > 0 {
                        let cause = format!("charge {} declined: {decline_code}", hex::encode(charge.charge_id));
                        match accounts::add_arrears(&tx, charge.card_id, charge.amount_cents, &cause, now) {
                            Ok(account) => declined_account = Some(account),
                            Err(accounts::AccountError::Store(error)) => return Err(error),
                            Err(error) => tracing::error!(%error, "a declined charge's card has no account"),
                        }
                    }
                    written
                }
                Answer::Retry { reason, retry_after } => {
                    let exhausted = charge.attempt >= settings.attempts_max;
                    let wait = if exhausted {
                        settings.failed_retry_after
                    } else {
                        retry_after.unwrap_or_else(|| backoff(&settings, charge.attempt))
                    };
                    retry_later(&tx, &charge, exhausted, reason, wall.saturating_add(millis(wait)))?
                }
                Answer::Refused { reason } => {
                    let next = wall.saturating_add(millis(settings.failed_retry_after));
                    retry_later(&tx, &charge, true, reason, next)?
                }
            };
            tx.commit()?;
            if written == 0 {
                tracing::debug!(charge = %hex::encode(charge.charge_id), "an outcome for a lease since taken over");
            }
            Ok(declined_account)
        })
        .await
    }
}

/// Schedules the charge again; `failed` once its attempts are spent.
fn retry_later(
    tx: &rusqlite::Transaction<'_>,
    charge: &Claimed,
    failed: bool,
    reason: &str,
    next_attempt_at: UnixMillis,
) -> Result<usize, StoreError> {
    if failed {
        telemetry::charge_failed();
        tracing::error!(charge = %hex::encode(charge.charge_id), attempts = charge.attempt, %reason,
            "a charge failed; it is retried every payments.failed_retry_after_ms");
    }
    Ok(tx.execute(
        "UPDATE charges SET outcome = ?3, next_attempt_at = ?4, lease_until = 0, last_error = ?5
         WHERE charge_id = ?1 AND attempts = ?2 AND outcome IN ('pending', 'failed')",
        params![
            &charge.charge_id[..],
            charge.attempt,
            if failed { "failed" } else { "pending" },
            next_attempt_at,
            reason
        ],
    )?)
}

/// Exponential from `backoff_initial`, capped at `backoff_max`.
fn backoff(settings: &DispatcherSettings, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
    settings.backoff_initial.saturating_mul(factor).min(settings.backoff_max)
}

fn answer_label(answer: &Answer) -> &'static str {
    match answer {
        Answer::Succeeded { .. } => "succeeded",
        Answer::Declined { .. } => "declined",
        Answer::Retry { .. } => "retry",
        Answer::Refused { .. } => "refused",
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Runs store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_never_overflows() {
        let settings = DispatcherSettings {
            concurrency_max: 1,
            batch_charges_max: 1,
            lease: Duration::from_secs(1),
            attempts_max: 3,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            failed_retry_after: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
        };
        let waits: Vec<u128> =
            [1, 2, 3, 4, 5, 40, u32::MAX].iter().map(|&a| backoff(&settings, a).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1_000, 1_000, 1_000]);
        assert_eq!(backoff(&settings, 0).as_millis(), 100);
    }
}
