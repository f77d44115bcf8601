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

use rusqlite::{Connection, OptionalExtension, Transaction, params};

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
    tx: &Transaction<'_>,
    card_id: u64,
    kind: PaymentKind,
    amount_cents: Cents,
    agreement_id: &str,
    now: UnixMillis,
) -> Result<PaymentAttempt, AccountError> {
    if let Some(open) = undecided(tx, card_id, kind)? {
        return Ok(open);
    }
    assert!(amount_cents.is_positive(), "a payment of {amount_cents} for card {card_id}");
    let last: Option<u32> = tx.query_row(
        "SELECT max(attempt) FROM account_payments WHERE card_id = ?1 AND kind = ?2",
        params![card_to_sql(card_id), kind.as_str()],
        |r| r.get(0),
    )?;
    let attempt = last.unwrap_or(0).saturating_add(1);
    let key = format!("{}-{card_id}-{attempt}", kind.as_str());
    tx.execute(
        "INSERT INTO account_payments (payment_key, card_id, kind, attempt, amount_cents, agreement_id, outcome, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'unknown', ?7)",
        params![key, card_to_sql(card_id), kind.as_str(), attempt, amount_cents.get(), agreement_id, now],
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
pub fn undecided(conn: &Connection, card_id: u64, kind: PaymentKind) -> Result<Option<PaymentAttempt>, AccountError> {
    let found = conn
        .query_row(
            &format!("{SELECT_ATTEMPT} WHERE card_id = ?1 AND kind = ?2 AND outcome = 'unknown'"),
            params![card_to_sql(card_id), kind.as_str()],
            read_attempt,
        )
        .optional()?;
    found.transpose()
}

/// Counts a send of the undecided attempt `key`, before it goes out;
/// returns how many sends it has had, this one included (0: it was decided
/// meanwhile, and is not to be sent).
pub fn count_send(tx: &Transaction<'_>, key: &str) -> Result<u32, AccountError> {
    let sends: Option<u32> = tx
        .query_row(
            "UPDATE account_payments SET sends = sends + 1 WHERE payment_key = ?1 AND outcome = 'unknown' RETURNING sends",
            params![key],
            |r| r.get(0),
        )
        .optional()?;
    Ok(sends.unwrap_or(0))
}

/// Notes why an undecided attempt is still undecided (a refusal of a
/// resend): it stays `unknown`, to be sent again under its key.
pub fn note_undecided(tx: &Transaction<'_>, key: &str, error: &str) -> Result<(), AccountError> {
    tx.execute(
        "UPDATE account_payments SET last_error = ?2 WHERE payment_key = ?1 AND outcome = 'unknown'",
        params![key, error],
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
    tx: &Transaction<'_>,
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
        params![key, outcome.as_str(), now, gateway_txn_id, error],
    )?;
    Ok(written == 1)
}

/// Every attempt of every account, oldest first (the audit's view).
pub fn all_attempts(conn: &Connection) -> Result<Vec<PaymentAttempt>, StoreError> {
    let mut statement = conn.prepare_cached(&format!("{SELECT_ATTEMPT} ORDER BY created_at, payment_key"))?;
    let rows = statement.query_map([], read_attempt)?;
    let mut attempts = Vec::new();
    for row in rows {
        attempts.push(row?.map_err(|e| match e {
            AccountError::Store(e) => e,
            other => StoreError::Corrupt(other.to_string()),
        })?);
    }
    Ok(attempts)
}

const SELECT_ATTEMPT: &str =
    "SELECT payment_key, card_id, kind, attempt, amount_cents, agreement_id, outcome FROM account_payments";

fn read_attempt(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<PaymentAttempt, AccountError>> {
    let (kind, outcome): (String, String) = (r.get(2)?, r.get(6)?);
    let kind = match kind.as_str() {
        "deposit" => PaymentKind::Deposit,
        "arrears" => PaymentKind::Arrears,
        "refund" => PaymentKind::Refund,
        _ => return Ok(Err(AccountError::Store(StoreError::Corrupt(format!("payment kind {kind:?}"))))),
    };
    let Some(outcome) = PaymentOutcome::parse(&outcome) else {
        return Ok(Err(AccountError::Store(StoreError::Corrupt(format!("payment outcome {outcome:?}")))));
    };
    Ok(Ok(PaymentAttempt {
        key: r.get(0)?,
        card_id: card_from_sql(r.get(1)?),
        kind,
        attempt: r.get(3)?,
        amount_cents: Cents::new(r.get(4)?),
        agreement_id: r.get(5)?,
        outcome,
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::accounts;
    use crate::store::MoneyStore;

    #[test]
    fn an_undecided_attempt_is_sent_again_and_a_decided_one_makes_a_new_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = MoneyStore::open(&dir.path().join("m.sqlite"), Duration::from_secs(1)).expect("store");
        let tx = store.transaction().expect("tx");
        accounts::register(&tx, u64::MAX, "+8613800000000", 1).expect("register");
        let first = open_attempt(&tx, u64::MAX, PaymentKind::Arrears, Cents::new(800), "agr", 2).expect("first");
        assert_eq!((first.key.as_str(), first.attempt), ("arrears-18446744073709551615-1", 1));
        let again = open_attempt(&tx, u64::MAX, PaymentKind::Arrears, Cents::new(1_300), "agr", 3).expect("again");
        assert_eq!(again, first, "a lost answer: the same key and the same amount, whatever is owed now");
        let deposit = open_attempt(&tx, u64::MAX, PaymentKind::Deposit, Cents::new(2_000), "agr", 3).expect("deposit");
        assert_eq!(deposit.key, "deposit-18446744073709551615-1", "kinds count apart");
        assert!(decide(&tx, &first.key, PaymentOutcome::Declined, None, Some("insufficient_funds"), 4).expect("d"));
        assert!(!decide(&tx, &first.key, PaymentOutcome::Succeeded, Some("t"), None, 5).expect("d"), "decided once");
        let next = open_attempt(&tx, u64::MAX, PaymentKind::Arrears, Cents::new(1_300), "agr", 6).expect("next");
        assert_eq!((next.key.as_str(), next.amount_cents.get()), ("arrears-18446744073709551615-2", 1_300));
        let all = all_attempts(&tx).expect("all");
        assert_eq!(
            all.iter().map(|a| a.outcome).collect::<Vec<_>>(),
            [PaymentOutcome::Declined, PaymentOutcome::Unknown, PaymentOutcome::Unknown]
        );
    }

    /// Second review of issue 19: two calls sent one attempt; the first
    /// counted was refused after the second (applied, its answer lost)
    /// reached the gateway, and the refusal was taken as final. A refusal
    /// decides only while its send is the only one counted.
    #[test]
    fn a_refusal_decides_only_the_attempts_one_send() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = MoneyStore::open(&dir.path().join("m.sqlite"), Duration::from_secs(1)).expect("store");
        let tx = store.transaction().expect("tx");
        accounts::register(&tx, 7, "+8613800000007", 1).expect("register");
        let attempt = open_attempt(&tx, 7, PaymentKind::Arrears, Cents::new(800), "agr", 2).expect("attempt");
        assert_eq!(count_send(&tx, &attempt.key).expect("a"), 1);
        assert_eq!(count_send(&tx, &attempt.key).expect("b"), 2, "a concurrent call's send");
        assert!(
            !decide(&tx, &attempt.key, PaymentOutcome::Refused, None, Some("422"), 3).expect("refused"),
            "either send may have been applied"
        );
        let other = open_attempt(&tx, 7, PaymentKind::Deposit, Cents::new(2_000), "agr", 2).expect("deposit");
        assert_eq!(count_send(&tx, &other.key).expect("one send"), 1);
        assert!(
            decide(&tx, &other.key, PaymentOutcome::Refused, None, Some("422"), 3).expect("refused"),
            "its one send"
        );
        assert_eq!(count_send(&tx, &other.key).expect("decided"), 0, "a decided attempt is not sent");
    }
}
