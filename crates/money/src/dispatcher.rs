//! The dispatcher: sends the outbox's due charges to the payment gateway,
//! at most `concurrency_max` at once, each under its charge id as the
//! idempotency key, and writes what came back.
//!
//! Claiming is a lease: a claimed charge takes the next `claims` number
//! and is not due again until `lease_until`; only the claim that holds the
//! latest number may write the outcome, so a lease that expired (a slow
//! answer, a crash) and was claimed again cannot be decided twice. The
//! gateway's idempotency key, not the lease, is what makes a charge apply
//! once: a resend gets the first result. `attempts` counts requests that
//! went out and were answered (or not) — it goes up with the outcome, so a
//! crash between a claim and its send costs nothing.
//!
//! Outcomes: `succeeded`; `declined` (final: the amount becomes arrears and
//! the card is denied, in the same transaction); a retryable answer waits
//! out a backoff with full jitter or the gateway's `Retry-After`; once the
//! retry budget (hours, from the first attempt) is spent the charge is
//! `failed`, reported, and still retried every `failed_retry_after`. A
//! charge is never dropped. The core's `retry` module decides all of it.
//!
//! One circuit breaker guards the gateway: after a run of retryable
//! failures it opens, and charges wait in the outbox while one probe at a
//! time finds out whether the gateway is back; the probe that is answered
//! closes it and brings every waiting charge due at once.
//!
//! Leases and retries run on the wall clock, whatever clock the server runs
//! on (the demo compresses a day into a minute): they are about how the
//! gateway behaves in real time. Outcomes are dated by the server's clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDate;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::accounts::{self, Account};
use crate::codec::{card_from_sql, card_to_sql, date_from_sql, date_to_sql, id_from_sql, ids_to_sql};
use crate::db::{Db, Engine, Row, Value, lock_cards};
use crate::deny_list_hub::DenyListHub;
use crate::money_metrics;
use crate::paygw::{Answer, Direction, PaymentGateway, PaymentRequest};
use crate::store::{StoreError, step_ended};
use crate::store_connections::StoreConnections;
use farestream_core::charges::{
    ChargeKind, ChargeOutcome, FirstSend, Payer, RiderDay, UNDECIDED_OUTCOMES_SQL, first_send, rest_of,
};
use farestream_core::clock::UnixMillis;
use farestream_core::gateway_answer::{AfterAnswer, Attempts, DeclineEffect, decide_answer};
use farestream_core::money::Cents;
use farestream_core::retry::{BreakerSettings, CircuitBreaker, GatewayHealth, Permit, RetryPolicy};
use farestream_core::sync::lock;
use farestream_ingest::clock_source::{Clock, SystemClock, duration_ms};

#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub concurrency_max: usize,
    pub batch_charges_max: usize,
    pub lease: Duration,
    /// Backoff, jitter and the retry budget (milliseconds).
    pub retry: RetryPolicy,
    pub breaker: BreakerSettings,
    /// How often the outbox is looked at when nobody says it changed.
    pub poll_interval: Duration,
}

/// What one claim did.
#[derive(Debug, Default)]
struct ClaimRound {
    /// Charges to send now.
    claimed: Vec<Claimed>,
    /// Outcomes of charges decided without a request
    /// ([`decide_before_sending`]), counted once the claim commits.
    not_sent: Vec<ChargeOutcome>,
    /// A netted credit cleared a card's arrears: the deny list changed.
    undenied: bool,
}

/// A charge claimed for one attempt.
#[derive(Debug, Clone)]
struct Claimed {
    charge_id: [u8; 16],
    card_id: u64,
    service_date: NaiveDate,
    amount_cents: Cents,
    currency: String,
    kind: String,
    /// The claim's fencing number: its outcome is written only if no later
    /// claim took the charge.
    claim: u32,
    /// Requests sent before this one.
    attempts_before: u32,
    /// Wall-clock time of the first request, if one went out.
    first_attempt_at: Option<UnixMillis>,
    agreement_id: Option<String>,
}

pub struct Dispatcher {
    pub settings: DispatcherSettings,
    /// Claims, releases and outcomes, written side by side on PostgreSQL.
    pub store: Arc<StoreConnections>,
    pub gateway: PaymentGateway,
    /// Dates outcomes (`decided_at`, arrears).
    pub clock: Arc<dyn Clock>,
    /// Rung by the pricer when it wrote charges, and by the breaker when
    /// it closes or a probe is answered.
    pub wake: Arc<Notify>,
    /// Told after a decline put a card on the list.
    pub deny_list: Arc<DenyListHub>,
    /// The gateway's circuit breaker, on the wall clock.
    pub breaker: Mutex<CircuitBreaker>,
}

impl Dispatcher {
    pub fn new(
        settings: DispatcherSettings,
        store: Arc<StoreConnections>,
        gateway: PaymentGateway,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
        deny_list: Arc<DenyListHub>,
    ) -> Dispatcher {
        let breaker = Mutex::new(CircuitBreaker::new(settings.breaker));
        Dispatcher { settings, store, gateway, clock, wake, deny_list, breaker }
    }

    /// Sends due charges until `stop` is cancelled; a store error is logged
    /// and the round tried again after `poll_interval`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let sends = Arc::new(Semaphore::new(self.settings.concurrency_max));
        loop {
            let permit = lock(&self.breaker).permit(SystemClock.now_ms());
            money_metrics::payment_gateway_breaker(!matches!(permit, Permit::Send));
            let limit = match permit {
                Permit::Send => self.settings.batch_charges_max,
                Permit::Probe => 1,
                Permit::WaitUntil(until) => {
                    let wait = until.map_or(self.settings.poll_interval, |at| {
                        Duration::from_millis(at.saturating_sub(SystemClock.now_ms()).max(1).unsigned_abs())
                    });
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait.min(self.settings.poll_interval)) => {}
                    }
                    continue;
                }
            };
            let ClaimRound { claimed, not_sent, undenied } = match self.claim(limit).await {
                Ok(round) => round,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim charges; trying again");
                    ClaimRound::default()
                }
            };
            not_sent.iter().for_each(|outcome| money_metrics::charge_not_sent(outcome.as_str()));
            if undenied {
                self.deny_list.sync_soon().await;
            }
            if permit == Permit::Probe && claimed.is_empty() {
                lock(&self.breaker).probe_unused(SystemClock.now_ms());
            }
            // A round that decided charges without sending them may have
            // left a credit's rest due at once: look again straight away.
            let full_round =
                (claimed.len() == self.settings.batch_charges_max || !not_sent.is_empty()) && permit == Permit::Send;
            let probe = permit == Permit::Probe;
            for charge in claimed {
                let Ok(send) = Arc::clone(&sends).acquire_owned().await else { return };
                let this = Arc::clone(&self);
                tokio::spawn(async move {
                    this.attempt(charge, probe).await;
                    drop(send);
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

    /// Claims up to `limit` due charges: each takes its next claim number
    /// and a lease; nothing counts as an attempt until it is sent. A
    /// charge never claimed before is first looked at ([`first_send`]): a
    /// card with no account, or a credit while the card owes, is decided
    /// here and never sent.
    async fn claim(&self, limit: usize) -> Result<ClaimRound, StoreError> {
        let (store, now, decided_at) = (Arc::clone(&self.store), SystemClock.now_ms(), self.clock.now_ms());
        let lease_until = now.saturating_add(duration_ms(self.settings.lease));
        blocking(move || {
            store.with(|store| store.in_transaction(|tx| claim_due(tx, (now, lease_until), limit, decided_at)))
        })
        .await
    }

    /// One attempt at one charge, and its outcome written. A charge whose
    /// turn comes after the breaker opened goes back to the outbox unsent
    /// (only the probe goes out while it is open).
    async fn attempt(&self, charge: Claimed, probe: bool) {
        if !probe && !lock(&self.breaker).is_closed() {
            if let Err(error) = self.release(&charge).await {
                tracing::warn!(%error, charge = %hex::encode(charge.charge_id), "cannot give a charge back; it is due again after its lease");
            }
            return;
        }
        let answer = match &charge.agreement_id {
            None => {
                // Nothing went to the gateway: a probe learnt nothing.
                lock(&self.breaker).probe_unused(SystemClock.now_ms());
                Answer::Refused { reason: format!("card {} has no debit agreement", charge.card_id) }
            }
            Some(agreement_id) => {
                let (direction, amount) = if charge.amount_cents.is_negative() {
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
                let answer = self.gateway.pay(direction, &hex::encode(charge.charge_id), &request).await;
                self.gateway_answered(answer.gateway_health());
                answer
            }
        };
        money_metrics::charge_attempted(answer_label(&answer));
        let sent = charge.agreement_id.is_some();
        match self.record(&charge, answer, sent).await {
            Ok(Some(_declined)) => self.deny_list.sync_soon().await,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, charge = %hex::encode(charge.charge_id), "cannot record a charge's outcome; it is sent again after its lease")
            }
        }
    }

    /// Gives a claimed charge back unsent: due again as it was, no attempt
    /// counted.
    async fn release(&self, charge: &Claimed) -> Result<(), StoreError> {
        let (store, id, claim) = (Arc::clone(&self.store), charge.charge_id, charge.claim);
        blocking(move || {
            let sql = format!(
                "UPDATE charges SET lease_until = 0 WHERE charge_id = ?1 AND claims = ?2 AND outcome IN {UNDECIDED_OUTCOMES_SQL}"
            );
            store.with(|store| store.db().execute(&sql, &[Value::Bytes(&id), Value::Int(claim.into())]))?;
            Ok(())
        })
        .await
    }

    /// Tells the breaker; when that closes it, every charge waiting out a
    /// backoff is due now: the failures were the gateway's, not theirs.
    fn gateway_answered(&self, health: GatewayHealth) {
        let now = SystemClock.now_ms();
        let closed = lock(&self.breaker).record(health, now, random_u64());
        if !closed {
            self.wake.notify_one();
            return;
        }
        tracing::info!("the payment gateway answers again; sending the charges that waited");
        let (store, wake) = (Arc::clone(&self.store), Arc::clone(&self.wake));
        tokio::spawn(async move {
            let due_now = blocking(move || {
                store.with(|store| {
                    store.db().execute(
                        "UPDATE charges SET next_attempt_at = ?1
                         WHERE outcome = ?2 AND next_attempt_at > ?1 AND lease_until <= ?1",
                        &[Value::Int(now), Value::Text(ChargeOutcome::Pending.as_str())],
                    )
                })
            })
            .await;
            if let Err(error) = due_now {
                tracing::warn!(%error, "cannot bring waiting charges forward; they go out on their own schedule");
            }
            wake.notify_one();
        });
    }

    /// Writes an answer, if this claim still holds the charge. A decline
    /// returns the account it put in arrears. `sent`: a request went out,
    /// so it counts as an attempt.
    async fn record(&self, charge: &Claimed, answer: Answer, sent: bool) -> Result<Option<Account>, StoreError> {
        let (store, policy) = (Arc::clone(&self.store), self.settings.retry);
        let (now, wall, random) = (self.clock.now_ms(), SystemClock.now_ms(), random_u64());
        let charge = charge.clone();
        blocking(move || {
            store.with(|store| {
                store.in_transaction(|tx| record_answer(tx, &charge, answer, sent, (&policy, now, wall, random)))
            })
        })
        .await
    }
}

/// Writes an answer in `tx`, if this claim still holds the charge; see
/// [`Dispatcher::record`].
fn record_answer(
    tx: &mut dyn Db,
    charge: &Claimed,
    answer: Answer,
    sent: bool,
    (policy, now, wall, random): (&RetryPolicy, UnixMillis, UnixMillis, u64),
) -> Result<Option<Account>, StoreError> {
    let id = Value::Bytes(&charge.charge_id);
    let before = Attempts { count: charge.attempts_before, first_at: charge.first_attempt_at };
    let decision = decide_answer(answer.as_decided(), before, sent, charge.amount_cents, policy, wall, random);
    let Attempts { count: attempts, first_at: first_attempt_at } = decision.attempts;
    let outcome = decision.after.outcome();
    let mut declined_account = None;
    let detail = answer.detail();
    // A decided outcome, written only while this claim holds the charge;
    // `?4`, the gateway's detail, goes to the column the outcome names.
    let decided = [
        id,
        Value::Int(charge.claim.into()),
        Value::Int(now),
        Value::Text(detail),
        Value::Int(attempts.into()),
        first_attempt_at.into(),
        Value::Text(outcome.as_str()),
    ];
    let written = match decision.after {
        AfterAnswer::Succeeded => tx.execute(
            &format!(
                "UPDATE charges SET outcome = ?7, decided_at = ?3, gateway_txn_id = ?4, last_error = NULL,
                                    attempts = ?5, first_attempt_at = ?6
                 WHERE charge_id = ?1 AND claims = ?2 AND outcome IN {UNDECIDED_OUTCOMES_SQL}"
            ),
            &decided,
        )?,
        AfterAnswer::Declined(effect) => {
            let written = tx.execute(
                &format!(
                    "UPDATE charges SET outcome = ?7, decided_at = ?3, last_error = ?4,
                                        attempts = ?5, first_attempt_at = ?6
                     WHERE charge_id = ?1 AND claims = ?2 AND outcome IN {UNDECIDED_OUTCOMES_SQL}"
                ),
                &decided,
            )?;
            if written > 0 {
                declined_account = record_decline(tx, charge, effect, detail, now)?;
            }
            written
        }
        AfterAnswer::TryAgain { at, .. } => retry_later(tx, charge, (attempts, first_attempt_at), outcome, detail, at)?,
    };
    if written == 0 {
        tracing::debug!(charge = %hex::encode(charge.charge_id), "an outcome for a lease since taken over");
    }
    Ok(declined_account)
}

/// What a written decline does to the rider's money
/// ([`DeclineEffect`]); returns the account a debit put in arrears.
fn record_decline(
    tx: &mut dyn Db,
    charge: &Claimed,
    effect: DeclineEffect,
    decline_code: &str,
    now: UnixMillis,
) -> Result<Option<Account>, StoreError> {
    let cause = format!("charge {} declined: {decline_code}", hex::encode(charge.charge_id));
    match effect {
        DeclineEffect::Arrears(amount_cents) => {
            match accounts::add_arrears(tx, charge.card_id, amount_cents, &cause, now) {
                Ok(account) => return Ok(Some(account)),
                Err(accounts::AccountError::Store(error)) => return Err(error),
                Err(error) => tracing::error!(%error, "a declined charge's card has no account"),
            }
        }
        DeclineEffect::CreditOwed(amount_cents) => {
            // The rider is still owed it: the history says so, for a
            // person to pay out (docs/payment-gateway.md).
            money_metrics::credit_declined();
            tracing::error!(charge = %hex::encode(charge.charge_id), card = charge.card_id, %decline_code,
                "a credit was declined; the rider is owed it");
            match accounts::note(tx, charge.card_id, "credit_declined", amount_cents, &cause, now) {
                Ok(()) => {}
                Err(accounts::AccountError::Store(error)) => return Err(error),
                Err(error) => tracing::error!(%error, "a declined credit's card has no account"),
            }
        }
        DeclineEffect::Nothing => {}
    }
    Ok(None)
}

/// [`Dispatcher::claim`]'s transaction: due at `now` (system time), leased
/// until `lease_until`; decisions dated `decided_at` (the clock's).
fn claim_due(
    tx: &mut dyn Db,
    (now, lease_until): (UnixMillis, UnixMillis),
    limit: usize,
    decided_at: UnixMillis,
) -> Result<ClaimRound, StoreError> {
    let due = due_charges(tx, now, limit)?;
    // Every card the claim may read and change is locked before any is, in
    // key order: taken in due order, a claim and a pricer (or a second
    // claim) could each hold a card the other waits for, and a netted
    // credit takes the deny list's lock, for which a decline on a card
    // this claim would lock next may already wait.
    lock_cards(
        tx,
        due.iter().filter(|(charge, has_account)| may_be_netted(charge, *has_account)).map(|(c, _)| c.card_id),
    )?;
    let mut round = ClaimRound { claimed: Vec::with_capacity(due.len()), ..ClaimRound::default() };
    for (charge, has_account) in due {
        match decide_before_sending(tx, &charge, has_account, decided_at)? {
            Decided::Send => round.claimed.push(charge),
            Decided::NotSent { outcome, undenied } => {
                round.not_sent.push(outcome);
                round.undenied |= undenied;
            }
        }
    }
    for charge in &round.claimed {
        tx.execute(
            "UPDATE charges SET claims = ?2, lease_until = ?3 WHERE charge_id = ?1",
            &[Value::Bytes(&charge.charge_id), Value::Int(charge.claim.into()), Value::Int(lease_until)],
        )?;
    }
    Ok(round)
}

/// A credit never claimed before, of a card with an account: it may be set
/// against what the card owes, so the claim reads (and may change) the
/// account.
fn may_be_netted(charge: &Claimed, has_account: bool) -> bool {
    has_account && charge.claim == 1 && charge.amount_cents.is_negative()
}

/// Due charges, oldest schedule first, and whether an account has the card.
fn due_charges(tx: &mut dyn Db, now: UnixMillis, limit: usize) -> Result<Vec<(Claimed, bool)>, StoreError> {
    // Another server claiming at the same moment skips the rows this
    // one locked, rather than claiming them too (PostgreSQL); SQLite's
    // write transaction already holds the whole store.
    let skip_claimed = match tx.engine() {
        Engine::Sqlite => "",
        Engine::Postgres => "FOR UPDATE OF c SKIP LOCKED",
    };
    let sql = format!(
        "SELECT c.charge_id, c.card_id, c.service_date, c.amount_cents, c.currency, c.kind, c.claims, c.attempts,
                c.first_attempt_at, a.agreement_id, CASE WHEN a.card_id IS NULL THEN 0 ELSE 1 END
         FROM charges c LEFT JOIN accounts a ON a.card_id = c.card_id
         WHERE c.outcome IN {UNDECIDED_OUTCOMES_SQL} AND c.next_attempt_at <= ?1 AND c.lease_until <= ?1
         ORDER BY c.next_attempt_at LIMIT ?2 {skip_claimed}"
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    tx.query(&sql, &[Value::Int(now), Value::Int(limit)])?.iter().map(claimed_from_row).collect()
}

fn claimed_from_row(r: &Row) -> Result<(Claimed, bool), StoreError> {
    let count = |column| {
        let n = r.int(column)?;
        u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("a charge's count {n}")))
    };
    let charge = Claimed {
        charge_id: id_from_sql(r.bytes(0)?)?,
        card_id: card_from_sql(r.int(1)?),
        service_date: date_from_sql(r.int(2)?)?,
        amount_cents: Cents::new(r.int(3)?),
        currency: r.text(4)?.to_string(),
        kind: r.text(5)?.to_string(),
        claim: count(6)?.saturating_add(1),
        attempts_before: count(7)?,
        first_attempt_at: r.opt_int(8)?,
        agreement_id: r.opt_text(9)?.map(str::to_string),
    };
    Ok((charge, r.int(10)? == 1))
}

/// What [`decide_before_sending`] did with a charge.
enum Decided {
    Send,
    /// Decided without a request; `undenied`: a netted credit cleared the
    /// card's arrears.
    NotSent {
        outcome: ChargeOutcome,
        undenied: bool,
    },
}

/// The core's [`first_send`], written: a charge of a card with no account
/// is `no_account`; a credit while the card owes is `netted` against the
/// arrears (split, when it is larger, into the netted part and a credit of
/// the rest, due at once). The card is read in this transaction, so a
/// second credit of the same card in the same round sees the arrears the
/// first left, and only what a payment of the arrears still out would
/// leave owed is netted. Netting is only for a charge never claimed
/// before, so never sent: one that went out may have been paid.
fn decide_before_sending(
    tx: &mut dyn Db,
    charge: &Claimed,
    has_account: bool,
    now: UnixMillis,
) -> Result<Decided, StoreError> {
    let id = Value::Bytes(&charge.charge_id);
    let payer = if !has_account {
        Payer::NoAccount
    } else if may_be_netted(charge, has_account) {
        payer(tx, charge.card_id)?
    } else {
        return Ok(Decided::Send);
    };
    match first_send(charge.amount_cents, payer) {
        FirstSend::Send => Ok(Decided::Send),
        FirstSend::NoAccount => {
            // Whatever its claims: with no account there was never an
            // agreement, so no request ever went out (stores from before
            // this outcome hold such charges failed, claimed many times).
            tx.execute(
                &format!(
                    "UPDATE charges SET outcome = ?3, decided_at = ?2, lease_until = 0,
                                        last_error = 'the card has no account'
                     WHERE charge_id = ?1 AND outcome IN {UNDECIDED_OUTCOMES_SQL}"
                ),
                &[id, Value::Int(now), Value::Text(ChargeOutcome::NoAccount.as_str())],
            )?;
            tracing::warn!(charge = %hex::encode(charge.charge_id), card = charge.card_id,
                "a ride of a card with no account: decided no_account, not sent");
            Ok(Decided::NotSent { outcome: ChargeOutcome::NoAccount, undenied: false })
        }
        FirstSend::Net { netted, rest } => {
            tx.execute(
                "UPDATE charges SET outcome = ?4, amount_cents = ?2, decided_at = ?3, lease_until = 0
                 WHERE charge_id = ?1 AND claims = 0",
                &[id, Value::Int(netted.get()), Value::Int(now), Value::Text(ChargeOutcome::Netted.as_str())],
            )?;
            let day = RiderDay { card_id: charge.card_id, service_date: charge.service_date };
            if rest.is_negative() {
                tx.execute(
                    "INSERT INTO charges (charge_id, card_id, service_date, kind, ride_key, amount_cents, currency,
                                          scan_ids, created_at, outcome, next_attempt_at)
                     VALUES (?1, ?2, ?3, ?8, NULL, ?4, ?5, ?6, ?7, ?9, 0)",
                    &[
                        Value::Bytes(&rest_of(day, &charge.charge_id)),
                        Value::Int(card_to_sql(charge.card_id)),
                        Value::Int(date_to_sql(charge.service_date)),
                        Value::Int(rest.get()),
                        Value::Text(&charge.currency),
                        Value::Bytes(&ids_to_sql(&[])),
                        Value::Int(now),
                        Value::Text(ChargeKind::Adjustment.as_str()),
                        Value::Text(ChargeOutcome::Pending.as_str()),
                    ],
                )?;
            }
            let cause = format!("credit {} set against the arrears", hex::encode(charge.charge_id));
            let account = match accounts::net_credit(tx, charge.card_id, -netted, &cause, now) {
                Ok(account) => account,
                Err(accounts::AccountError::Store(error)) => return Err(error),
                Err(error) => return Err(StoreError::Corrupt(format!("netting a credit: {error}"))),
            };
            Ok(Decided::NotSent { outcome: ChargeOutcome::Netted, undenied: account.arrears_cents.is_zero() })
        }
    }
}

/// What the card owes now, and how much a payment of it still waiting for
/// its answer may have paid, read in the claiming transaction.
fn payer(tx: &mut dyn Db, card_id: u64) -> Result<Payer, StoreError> {
    // Under the card's lock, taken by `claim_due` with the claim's others
    // in key order: a payment of its arrears opened by another server at
    // this moment is either seen here or waits for this.
    // sum() is NUMERIC on PostgreSQL: cast back to the 64-bit cents.
    let row = tx.query_opt(
        "SELECT a.arrears_cents,
                CAST((SELECT coalesce(sum(p.amount_cents), 0) FROM account_payments p
                      WHERE p.card_id = a.card_id AND p.kind = 'arrears' AND p.outcome = 'unknown') AS BIGINT)
         FROM accounts a WHERE a.card_id = ?1",
        &[Value::Int(card_to_sql(card_id))],
    )?;
    let row = row.ok_or_else(|| StoreError::Corrupt(format!("card {card_id}'s account went away while claiming")))?;
    Ok(Payer::Account { arrears_cents: Cents::new(row.int(0)?), arrears_payment_out_cents: Cents::new(row.int(1)?) })
}

/// Schedules the charge again; `failed` once its budget is spent.
fn retry_later(
    tx: &mut dyn Db,
    charge: &Claimed,
    (attempts, first_attempt_at): (u32, Option<UnixMillis>),
    outcome: ChargeOutcome,
    reason: &str,
    next_attempt_at: UnixMillis,
) -> Result<u64, StoreError> {
    debug_assert!(!outcome.is_final(), "a charge tried again is undecided");
    if outcome == ChargeOutcome::Failed {
        money_metrics::charge_failed();
        tracing::error!(charge = %hex::encode(charge.charge_id), attempts, %reason,
            "a charge failed; it is retried every payments.failed_retry_after_ms");
    }
    tx.execute(
        &format!(
            "UPDATE charges SET outcome = ?3, next_attempt_at = ?4, lease_until = 0, last_error = ?5,
                                attempts = ?6, first_attempt_at = ?7
             WHERE charge_id = ?1 AND claims = ?2 AND outcome IN {UNDECIDED_OUTCOMES_SQL}"
        ),
        &[
            Value::Bytes(&charge.charge_id),
            Value::Int(charge.claim.into()),
            Value::Text(outcome.as_str()),
            Value::Int(next_attempt_at),
            Value::Text(reason),
            Value::Int(attempts.into()),
            first_attempt_at.into(),
        ],
    )
}

/// Eight bytes from the OS, for jitter; a failed read is no jitter.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => 0,
    }
}

fn answer_label(answer: &Answer) -> &'static str {
    match answer {
        Answer::Succeeded { .. } => "succeeded",
        Answer::Declined { .. } => "declined",
        Answer::Retry { .. } => "retry",
        Answer::InFlight { .. } => "in_flight",
        Answer::Refused { .. } => "refused",
    }
}

/// Runs store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(step_ended)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::AccountError;
    use crate::db::Lock;
    use crate::test_cluster::{TestCluster, an_owing_card, open_store, second_waits_for_first};

    const NOW: UnixMillis = 1_800_000_000_000;
    /// Two cards whose lock keys sort as their numbers do.
    const LOW_CARD: u64 = 7;
    const HIGH_CARD: u64 = 8;

    /// Each card active and owing 300; a first credit of 100 for each, the
    /// higher card's due first.
    fn two_owing_cards_with_credits(location: &crate::StoreLocation) {
        open_store(location)
            .in_transaction(|tx| {
                for (card_id, due_at) in [(HIGH_CARD, 1), (LOW_CARD, 2)] {
                    an_owing_card(tx, card_id, Cents::new(300), NOW)?;
                    tx.execute(
                        "INSERT INTO charges (charge_id, card_id, service_date, kind, amount_cents, currency, scan_ids,
                                              created_at, outcome, next_attempt_at)
                         VALUES (?1, ?2, 20000, 'adjustment', -100, 'CNY', ?3, ?4, 'pending', ?5)",
                        &[
                            Value::Bytes(&[card_id as u8; 16]),
                            Value::Int(card_to_sql(card_id)),
                            Value::Bytes(&ids_to_sql(&[])),
                            Value::Int(NOW),
                            Value::Int(due_at),
                        ],
                    )?;
                }
                Ok::<_, AccountError>(())
            })
            .expect("two cards");
    }

    /// A pricer locks its riders in key order: the lower card, then (a
    /// moment later) the higher. A claim at that moment whose credits are
    /// due the other way round must lock in the same order, or each holds
    /// a card the other waits for and PostgreSQL aborts one.
    #[test]
    fn a_claim_and_a_pricer_on_two_servers_lock_cards_in_one_order() {
        let Some(cluster) = TestCluster::shared() else { return };
        let location = cluster.new_location();
        two_owing_cards_with_credits(&location);
        let (pricer, claim) = second_waits_for_first(
            &location,
            |tx| tx.lock(Lock::Card(LOW_CARD)),
            |tx| tx.lock(Lock::Card(HIGH_CARD)),
            |tx| claim_due(tx, (NOW, NOW + 60_000), 10, NOW),
        );
        pricer.expect("the pricer commits");
        let round = claim.expect("the claim commits");
        assert_eq!(round.not_sent, [ChargeOutcome::Netted, ChargeOutcome::Netted], "both credits set against arrears");
        assert!(round.claimed.is_empty());
    }
}
