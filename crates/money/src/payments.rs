//! An account's own payments (the deposit, arrears paid, the deposit
//! refunded), written down before they go out, as Stripe's idempotency
//! rules and TigerBeetle's "persist the id before sending" ask:
//!
//! 1. [`open_attempt`], in a write transaction: if an attempt of this kind
//!    is still `unknown` (its answer was lost, or a crash came first), that
//!    attempt is returned as it is, to be sent again under the same key
//!    and for the same amount, so the gateway answers with its first
//!    result; otherwise a new attempt `KIND-CARD-N` is written.
//! 2. the request goes out under the attempt's key;
//! 3. [`decide`] records a final answer once: only the call that moves the
//!    attempt out of `unknown` applies its effect (arrears paid, the card
//!    activated, the account closed), so two requests that both saw a
//!    success apply it once.
//!
//! A final answer (succeeded, declined, refused) makes the next attempt a
//! new key: a rider who topped up after a declined deposit can pay it.

use crate::db::{Db, Lock, Row, Value};

use crate::accounts::AccountError;
use crate::codec::{card_from_sql, card_to_sql};
use crate::store::StoreError;
use farestream_core::clock::UnixMillis;
use farestream_core::money::Cents;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentKind {
    /// Taken at activation: covers rides before a decline is known.
    Deposit,
    /// What a card owes, paid by its rider.
    Arrears,
    /// The deposit returned (a credit).
    Refund,
}

impl PaymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Deposit => "deposit",
            PaymentKind::Arrears => "arrears",
            PaymentKind::Refund => "refund",
        }
    }
}

/// How an attempt ended; `Unknown` until the gateway has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    Unknown,
    Succeeded,
    Declined,
    Refused,
}

impl PaymentOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentOutcome::Unknown => "unknown",
            PaymentOutcome::Succeeded => "succeeded",
            PaymentOutcome::Declined => "declined",
            PaymentOutcome::Refused => "refused",
        }
    }

    fn parse(text: &str) -> Option<PaymentOutcome> {
        [PaymentOutcome::Unknown, PaymentOutcome::Succeeded, PaymentOutcome::Declined, PaymentOutcome::Refused]
            .into_iter()
            .find(|o| o.as_str() == text)
    }
}

/// One attempt at one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentAttempt {
    /// The idempotency key: `KIND-CARD-N`.
    pub key: String,
    pub card_id: u64,
    pub kind: PaymentKind,
    pub attempt: u32,
    pub amount_cents: Cents,
    pub agreement_id: String,
    pub outcome: PaymentOutcome,
}

/// The card's undecided attempt of `kind`, or a new one for
/// `amount_cents` under `agreement_id`.
pub fn open_attempt(
    tx: &mut dyn Db,
    card_id: u64,
    kind: PaymentKind,
    amount_cents: Cents,
    agreement_id: &str,
    now: UnixMillis,
) -> Result<PaymentAttempt, AccountError> {
    // Another process opening the card's attempt at the same moment
    // waits, then finds this one undecided.
    tx.lock(Lock::Card(card_id))?;
    if let Some(open) = undecided(tx, card_id, kind)? {
        return Ok(open);
    }
    assert!(amount_cents.is_positive(), "a payment of {amount_cents} for card {card_id}");
    let card = Value::Int(card_to_sql(card_id));
    let last = tx
        .query_opt(
            "SELECT max(attempt) FROM account_payments WHERE card_id = ?1 AND kind = ?2",
            &[card, Value::Text(kind.as_str())],
        )?
        .map(|r| r.opt_int(0))
        .transpose()?
        .flatten();
    let last = last.map(|n| u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("attempt {n}")))).transpose()?;
    let attempt = last.unwrap_or(0).saturating_add(1);
    let key = format!("{}-{card_id}-{attempt}", kind.as_str());
    tx.execute(
        "INSERT INTO account_payments (payment_key, card_id, kind, attempt, amount_cents, agreement_id, outcome, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'unknown', ?7)",
        &[
            Value::Text(&key),
            card,
            Value::Text(kind.as_str()),
            Value::Int(attempt.into()),
            Value::Int(amount_cents.get()),
            Value::Text(agreement_id),
            Value::Int(now),
        ],
    )?;
    Ok(PaymentAttempt {
        key,
        card_id,
        kind,
        attempt,
        amount_cents,
        agreement_id: agreement_id.to_string(),
        outcome: PaymentOutcome::Unknown,
    })
}

/// The card's attempt of `kind` still waiting for an answer, if any.
pub fn undecided(db: &mut dyn Db, card_id: u64, kind: PaymentKind) -> Result<Option<PaymentAttempt>, AccountError> {
    let found = db.query_opt(
        &format!("{SELECT_ATTEMPT} WHERE card_id = ?1 AND kind = ?2 AND outcome = 'unknown'"),
        &[Value::Int(card_to_sql(card_id)), Value::Text(kind.as_str())],
    )?;
    Ok(found.map(|r| read_attempt(&r)).transpose()?)
}

/// Counts a send of the undecided attempt `key`, before it goes out;
/// returns how many sends it has had, this one included (0: it was decided
/// meanwhile, and is not to be sent).
pub fn count_send(tx: &mut dyn Db, key: &str) -> Result<u32, AccountError> {
    let sends = tx
        .query_opt(
            "UPDATE account_payments SET sends = sends + 1 WHERE payment_key = ?1 AND outcome = 'unknown' RETURNING sends",
            &[Value::Text(key)],
        )?
        .map(|r| r.int(0))
        .transpose()?;
    let sends = sends.map(|n| u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{n} sends")))).transpose()?;
    Ok(sends.unwrap_or(0))
}

/// Notes why an undecided attempt is still undecided (a refusal of a
/// resend): it stays `unknown`, to be sent again under its key.
pub fn note_undecided(tx: &mut dyn Db, key: &str, error: &str) -> Result<(), AccountError> {
    tx.execute(
        "UPDATE account_payments SET last_error = ?2 WHERE payment_key = ?1 AND outcome = 'unknown'",
        &[Value::Text(key), Value::Text(error)],
    )?;
    Ok(())
}

/// Records a final answer. True only for the call that decided it: the
/// caller applies the payment's effect then, and only then. A refusal
/// decides only an attempt sent at most once: another send (a resend
/// after a lost answer, or a concurrent call's) may have reached the
/// gateway and been applied, and deciding would open a new key that
/// takes the money twice.
pub fn decide(
    tx: &mut dyn Db,
    key: &str,
    outcome: PaymentOutcome,
    gateway_txn_id: Option<&str>,
    error: Option<&str>,
    now: UnixMillis,
) -> Result<bool, AccountError> {
    assert!(outcome != PaymentOutcome::Unknown, "deciding {key} as unknown");
    let written = tx.execute(
        "UPDATE account_payments SET outcome = ?2, decided_at = ?3, gateway_txn_id = ?4, last_error = ?5
         WHERE payment_key = ?1 AND outcome = 'unknown' AND (?2 != 'refused' OR sends <= 1)",
        &[Value::Text(key), Value::Text(outcome.as_str()), Value::Int(now), gateway_txn_id.into(), error.into()],
    )?;
    Ok(written == 1)
}

/// Every attempt of every account, oldest first (the audit's view).
pub fn all_attempts(db: &mut dyn Db) -> Result<Vec<PaymentAttempt>, StoreError> {
    db.query(&format!("{SELECT_ATTEMPT} ORDER BY created_at, payment_key"), &[])?.iter().map(read_attempt).collect()
}

const SELECT_ATTEMPT: &str =
    "SELECT payment_key, card_id, kind, attempt, amount_cents, agreement_id, outcome FROM account_payments";

fn read_attempt(r: &Row) -> Result<PaymentAttempt, StoreError> {
    let kind = match r.text(2)? {
        "deposit" => PaymentKind::Deposit,
        "arrears" => PaymentKind::Arrears,
        "refund" => PaymentKind::Refund,
        kind => return Err(StoreError::Corrupt(format!("payment kind {kind:?}"))),
    };
    let outcome = r.text(6)?;
    let outcome =
        PaymentOutcome::parse(outcome).ok_or_else(|| StoreError::Corrupt(format!("payment outcome {outcome:?}")))?;
    let attempt = r.int(3)?;
    Ok(PaymentAttempt {
        key: r.text(0)?.to_string(),
        card_id: card_from_sql(r.int(1)?),
        kind,
        attempt: u32::try_from(attempt).map_err(|_| StoreError::Corrupt(format!("attempt {attempt}")))?,
        amount_cents: Cents::new(r.int(4)?),
        agreement_id: r.text(5)?.to_string(),
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts;
    use crate::test_cluster::on_both_stores;

    #[test]
    fn an_undecided_attempt_is_sent_again_and_a_decided_one_makes_a_new_key() {
        on_both_stores(|tx, _| {
            accounts::register(tx, u64::MAX, "+8613800000000", 1).expect("register");
            let first = open_attempt(tx, u64::MAX, PaymentKind::Arrears, Cents::new(800), "agr", 2).expect("first");
            assert_eq!((first.key.as_str(), first.attempt), ("arrears-18446744073709551615-1", 1));
            let again = open_attempt(tx, u64::MAX, PaymentKind::Arrears, Cents::new(1_300), "agr", 3).expect("again");
            assert_eq!(again, first, "a lost answer: the same key and the same amount, whatever is owed now");
            let deposit = open_attempt(tx, u64::MAX, PaymentKind::Deposit, Cents::new(2_000), "agr", 3).expect("d");
            assert_eq!(deposit.key, "deposit-18446744073709551615-1", "kinds count apart");
            assert!(decide(tx, &first.key, PaymentOutcome::Declined, None, Some("insufficient_funds"), 4).expect("d"));
            assert!(!decide(tx, &first.key, PaymentOutcome::Succeeded, Some("t"), None, 5).expect("d"), "once");
            let next = open_attempt(tx, u64::MAX, PaymentKind::Arrears, Cents::new(1_300), "agr", 6).expect("next");
            assert_eq!((next.key.as_str(), next.amount_cents.get()), ("arrears-18446744073709551615-2", 1_300));
            let all = all_attempts(tx).expect("all");
            assert_eq!(
                all.iter().map(|a| a.outcome).collect::<Vec<_>>(),
                [PaymentOutcome::Declined, PaymentOutcome::Unknown, PaymentOutcome::Unknown]
            );
            all
        });
    }

    /// Second review of issue 19: two calls sent one attempt; the first
    /// counted was refused after the second (applied, its answer lost)
    /// reached the gateway, and the refusal was taken as final. A refusal
    /// decides only while its send is the only one counted.
    #[test]
    fn a_refusal_decides_only_the_attempts_one_send() {
        on_both_stores(|tx, _| {
            accounts::register(tx, 7, "+8613800000007", 1).expect("register");
            let attempt = open_attempt(tx, 7, PaymentKind::Arrears, Cents::new(800), "agr", 2).expect("attempt");
            assert_eq!(count_send(tx, &attempt.key).expect("a"), 1);
            assert_eq!(count_send(tx, &attempt.key).expect("b"), 2, "a concurrent call's send");
            assert!(
                !decide(tx, &attempt.key, PaymentOutcome::Refused, None, Some("422"), 3).expect("refused"),
                "either send may have been applied"
            );
            note_undecided(tx, &attempt.key, "").expect("the shortest note");
            let other = open_attempt(tx, 7, PaymentKind::Deposit, Cents::new(2_000), "agr", 2).expect("deposit");
            assert_eq!(count_send(tx, &other.key).expect("one send"), 1);
            assert!(
                decide(tx, &other.key, PaymentOutcome::Refused, None, Some("422"), 3).expect("refused"),
                "its one send"
            );
            assert_eq!(count_send(tx, &other.key).expect("decided"), 0, "a decided attempt is not sent");
            assert_eq!(count_send(tx, "no-such-key").expect("unknown key"), 0);
            all_attempts(tx).expect("all")
        });
    }
}
