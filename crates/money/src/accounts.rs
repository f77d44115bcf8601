//! Rider accounts in the money store: the life of an account
//! (`registered` → `active` ⇄ `in_arrears`, `refund_pending` → `closed`,
//! and `closed` → `registered` when its rider signs up again), the arrears
//! and the deny list. Every change appends to `account_history` with its
//! cause, in the transaction that makes it.
//!
//! Invariant: a card is on the deny list exactly while it owes arrears or
//! waits for its refund ([`is_denied`]); [`change`] is the one place state
//! and arrears change, and it moves the card on or off the list in the
//! same transaction.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use thiserror::Error;

use crate::codec::{card_from_sql, card_to_sql};
use crate::store::StoreError;
use farestream_core::account::{self, AccountState, NotYet, WrongState, is_denied};
use farestream_core::charges::UNDECIDED_OUTCOMES_SQL;
use farestream_core::clock::UnixMillis;
use farestream_core::deny_list::DenyChange;
use farestream_core::money::Cents;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub card_id: u64,
    pub phone: String,
    pub payment_user_id: Option<String>,
    pub agreement_id: Option<String>,
    pub deposit_cents: Cents,
    pub state: AccountState,
    pub arrears_cents: Cents,
    pub refund_requested_at: Option<UnixMillis>,
    pub created_at: UnixMillis,
    /// The end of the newest credential issued: the last moment the rider
    /// can ride without new keys.
    pub keys_valid_until: Option<UnixMillis>,
    /// When a pending refund may be paid: no ride can arrive after it.
    pub refund_due_at: Option<UnixMillis>,
}

#[derive(Debug, Error)]
pub enum AccountError {
    #[error("no account for card {0}")]
    NotFound(u64),
    #[error("card {card_id} is {state}, and {action} needs {needs}")]
    WrongState { card_id: u64, state: &'static str, action: &'static str, needs: &'static str },
    #[error("phone {0} already has a card")]
    PhoneTaken(String),
    #[error("card {card_id} cannot close yet: {why:?}")]
    NotYet { card_id: u64, why: NotYet },
    #[error(
        "card {card_id} was handed every block of code counters under terminal key {terminal_key_id}, or that key is older than the newest 128 it keeps counts for: it gets more with the next key"
    )]
    CodeBlocksExhausted { card_id: u64, terminal_key_id: u16 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for AccountError {
    fn from(error: rusqlite::Error) -> AccountError {
        AccountError::Store(StoreError::Sql(error))
    }
}

/// A new account for `phone`, registered but not yet able to ride.
pub fn register(tx: &Transaction<'_>, card_id: u64, phone: &str, now: UnixMillis) -> Result<Account, AccountError> {
    if card_of_phone(tx, phone)?.is_some() {
        return Err(AccountError::PhoneTaken(phone.to_string()));
    }
    tx.execute(
        "INSERT INTO accounts (card_id, phone, state, created_at) VALUES (?1, ?2, 'registered', ?3)",
        params![card_to_sql(card_id), phone, now],
    )?;
    history(tx, card_id, now, "registered", None, AccountState::Registered, Cents::ZERO, "registration")?;
    account(tx, card_id)
}

/// A closed card's rider signs up again: the same card, registered, to
/// sign a new agreement and pay a new deposit. Its old days stay its own.
pub fn reopen(tx: &Transaction<'_>, card_id: u64, now: UnixMillis) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    let state = account::reopen(before.state).map_err(|wrong| wrong_state(&before, wrong))?;
    tx.execute(
        "UPDATE accounts SET agreement_id = NULL, deposit_cents = 0, refund_requested_at = NULL, refund_due_at = NULL
         WHERE card_id = ?1",
        [card_to_sql(card_id)],
    )?;
    change(tx, &before, state, before.arrears_cents, ("reopened", Cents::ZERO, "signed up again"), now)
}

/// The debit agreement is signed and the deposit paid: the card may ride.
pub fn activate(
    tx: &Transaction<'_>,
    card_id: u64,
    payment_user_id: &str,
    agreement_id: &str,
    deposit_cents: Cents,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    let state = account::activate(before.state, before.arrears_cents).map_err(|wrong| wrong_state(&before, wrong))?;
    tx.execute(
        "UPDATE accounts SET payment_user_id = ?2, agreement_id = ?3, deposit_cents = ?4 WHERE card_id = ?1",
        params![card_to_sql(card_id), payment_user_id, agreement_id, deposit_cents.get()],
    )?;
    change(tx, &before, state, before.arrears_cents, ("activated", deposit_cents, "deposit paid"), now)
}

/// Keys were issued until `valid_until`: only to an active card, checked
/// in the transaction that records them, so a refund asked for at the same
/// moment knows the last credential. Takes the card's next block of code
/// counters under `terminal_key_id`.
pub fn keys_issued(
    tx: &Transaction<'_>,
    card_id: u64,
    valid_until: UnixMillis,
    terminal_key_id: u16,
) -> Result<CodeBlock, AccountError> {
    let before = account(tx, card_id)?;
    account::may_issue_keys(before.state).map_err(|wrong| wrong_state(&before, wrong))?;
    let block = next_code_block(tx, card_id, terminal_key_id)?;
    tx.execute(
        "UPDATE accounts SET keys_valid_until = max(coalesce(keys_valid_until, ?2), ?2) WHERE card_id = ?1",
        params![card_to_sql(card_id), valid_until],
    )?;
    Ok(block)
}

/// How many of a card's newest terminal key ids keep their block counts:
/// more than a gateway holds (64), so every key still trusted has its
/// count, and a card's rows stay few.
pub const CODE_BLOCK_KEYS_KEPT: u16 = 128;

/// The block of code counters a credential gets: the card's next under
/// `terminal_key_id` (docs/ride-code.md, "The app's counter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeBlock {
    /// Which block: 0 for the first under the key.
    pub index: u32,
    /// Its counters, `[from, until)`.
    pub counters: (u32, u64),
}

/// The card's next block under `terminal_key_id`, counted per key, so a
/// key handed out again after a clock jump goes on from its own count.
/// Counts are kept for the card's newest [`CODE_BLOCK_KEYS_KEPT`] key ids
/// (ids grow as keys are made); a key older than those gets none, as a
/// key whose blocks ran out: no counter is ever handed out twice under
/// one key.
fn next_code_block(tx: &Transaction<'_>, card_id: u64, terminal_key_id: u16) -> Result<CodeBlock, AccountError> {
    let card = card_to_sql(card_id);
    let exhausted = || AccountError::CodeBlocksExhausted { card_id, terminal_key_id };
    let newest: Option<u16> =
        tx.query_row("SELECT max(terminal_key_id) FROM code_blocks WHERE card_id = ?1", [card], |row| row.get(0))?;
    let kept_from = newest.unwrap_or(0).max(terminal_key_id).saturating_sub(CODE_BLOCK_KEYS_KEPT);
    if terminal_key_id < kept_from {
        return Err(exhausted());
    }
    let issued: i64 = tx
        .query_row(
            "SELECT issued FROM code_blocks WHERE card_id = ?1 AND terminal_key_id = ?2",
            params![card, terminal_key_id],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let index = u32::try_from(issued).map_err(|_| exhausted())?;
    let counters = farestream_core::ridecode::sealed::code_counter_block(index).ok_or_else(exhausted)?;
    tx.execute(
        "INSERT INTO code_blocks (card_id, terminal_key_id, issued) VALUES (?1, ?2, ?3)
         ON CONFLICT (card_id, terminal_key_id) DO UPDATE SET issued = excluded.issued",
        params![card, terminal_key_id, i64::from(index) + 1],
    )?;
    tx.execute("DELETE FROM code_blocks WHERE card_id = ?1 AND terminal_key_id < ?2", params![card, kept_from])?;
    Ok(CodeBlock { index, counters })
}

/// The rider asked for the deposit back: the card is denied at once and
/// gets no new keys; the refund is due once no ride of it can still
/// arrive: the end of its newest credential (or now, if later) plus
/// `rides_arrive_within_ms` (the accepted lateness of uploads and the
/// validators' clock skew).
pub fn request_refund(
    tx: &Transaction<'_>,
    card_id: u64,
    rides_arrive_within_ms: i64,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    let state = account::request_refund(before.state).map_err(|wrong| wrong_state(&before, wrong))?;
    let due_at = account::refund_due_at(before.keys_valid_until, now, rides_arrive_within_ms);
    tx.execute(
        "UPDATE accounts SET refund_requested_at = ?2, refund_due_at = ?3 WHERE card_id = ?1",
        params![card_to_sql(card_id), now, due_at],
    )?;
    change(tx, &before, state, before.arrears_cents, ("refund_requested", Cents::ZERO, "rider's request"), now)
}

/// Sets what the card owes against its deposit (the deposit exists to
/// cover rides a decline found late): returns how much was set off.
pub fn set_off_arrears_against_deposit(
    tx: &Transaction<'_>,
    card_id: u64,
    now: UnixMillis,
) -> Result<Cents, AccountError> {
    let before = account(tx, card_id)?;
    let set_off = before.arrears_cents.min(before.deposit_cents).max(Cents::ZERO);
    if set_off.is_zero() {
        return Ok(Cents::ZERO);
    }
    tx.execute(
        "UPDATE accounts SET deposit_cents = deposit_cents - ?2 WHERE card_id = ?1",
        params![card_to_sql(card_id), set_off.get()],
    )?;
    let cause = format!("{} of the deposit set against the arrears", set_off.get());
    let left = before.arrears_cents - set_off;
    change(
        tx,
        &before,
        account::after_paying_down(before.state, left),
        left,
        ("arrears_paid_from_deposit", -set_off, &cause),
        now,
    )?;
    Ok(set_off)
}

/// The deposit (what is left of it) went back to the rider.
pub fn deposit_returned(
    tx: &Transaction<'_>,
    card_id: u64,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    if before.state != AccountState::RefundPending {
        return Err(wrong_state(&before, WrongState { action: "returning the deposit", needs: "refund_pending" }));
    }
    tx.execute("UPDATE accounts SET deposit_cents = 0 WHERE card_id = ?1", [card_to_sql(card_id)])?;
    history(tx, card_id, now, "deposit_returned", Some(before.state), before.state, -before.deposit_cents, cause)?;
    account(tx, card_id)
}

/// Whether the refund-pending card may close now, and why not.
pub fn may_close(
    conn: &Connection,
    card_id: u64,
    rides_arrive_within_ms: i64,
    now: UnixMillis,
) -> Result<Result<Account, NotYet>, AccountError> {
    let account = account(conn, card_id)?;
    if account.state != AccountState::RefundPending {
        return Err(wrong_state(&account, WrongState { action: "closing", needs: "refund_pending" }));
    }
    let due_at = account::recorded_refund_due_at(
        account.refund_due_at,
        account.refund_requested_at.unwrap_or(now),
        rides_arrive_within_ms,
    );
    let closing = account::Closing {
        due_at,
        // Asked only once no ride can arrive: it is a query.
        money_in_flight: now >= due_at && money_in_flight(conn, card_id)?,
        arrears_cents: account.arrears_cents,
        deposit_cents: account.deposit_cents,
    };
    Ok(account::may_close(closing, now).map(|()| account))
}

/// Nothing is owed, held or in flight, and no ride can arrive: closed, and
/// off the deny list (no credential of it is valid any more).
pub fn close(
    tx: &Transaction<'_>,
    card_id: u64,
    cause: &str,
    rides_arrive_within_ms: i64,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = match may_close(tx, card_id, rides_arrive_within_ms, now)? {
        Ok(account) => account,
        Err(not_yet) => {
            let before = account(tx, card_id)?;
            return Err(AccountError::NotYet { card_id: before.card_id, why: not_yet });
        }
    };
    change(tx, &before, AccountState::Closed, Cents::ZERO, ("closed", Cents::ZERO, cause), now)
}

/// Refund-pending cards whose refund is due at `now` (requests from before
/// due times were recorded: see `account::recorded_refund_due_at`).
pub fn refunds_due(conn: &Connection, now: UnixMillis, rides_arrive_within_ms: i64) -> Result<Vec<u64>, StoreError> {
    let pending = conn
        .prepare_cached(
            "SELECT card_id, refund_due_at, refund_requested_at FROM accounts WHERE state = ?1 ORDER BY card_id",
        )?
        .query_map([AccountState::RefundPending.as_str()], |r| {
            Ok((card_from_sql(r.get(0)?), r.get::<_, Option<i64>>(1)?, r.get::<_, Option<i64>>(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let due = |(recorded, requested): (Option<i64>, Option<i64>)| {
        account::recorded_refund_due_at(recorded, requested.unwrap_or(now), rides_arrive_within_ms) <= now
    };
    Ok(pending
        .into_iter()
        .filter(|(_, recorded, requested)| due((*recorded, *requested)))
        .map(|(card, ..)| card)
        .collect())
}

/// Whether any of the card's charges is still undecided, any of its days
/// still waits for an exit, or a deposit or arrears payment still waits
/// for its answer: a refund (and setting arrears against the deposit)
/// waits for them.
pub fn money_in_flight(conn: &Connection, card_id: u64) -> Result<bool, StoreError> {
    let busy: i64 = conn.query_row(
        &format!(
            "SELECT (SELECT count(*) FROM charges WHERE card_id = ?1 AND outcome IN {UNDECIDED_OUTCOMES_SQL})
                  + (SELECT count(*) FROM open_entries WHERE card_id = ?1)
                  + (SELECT count(*) FROM account_payments
                     WHERE card_id = ?1 AND outcome = 'unknown' AND kind <> 'refund')"
        ),
        [card_to_sql(card_id)],
        |r| r.get(0),
    )?;
    Ok(busy > 0)
}

/// A debit was declined: the amount is owed, and the card is denied.
pub fn add_arrears(
    tx: &Transaction<'_>,
    card_id: u64,
    amount_cents: Cents,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    let arrears = before.arrears_cents + amount_cents;
    change(tx, &before, account::after_decline(before.state), arrears, ("arrears_added", amount_cents, cause), now)
}

/// The rider paid `paid_cents` of what is owed; once nothing is, an
/// in-arrears card rides again (a refund-pending one stays pending). A
/// decline that came in while the payment was out stays owed; a payment
/// larger than what is owed (arrears lowered meanwhile) is never clamped
/// away: the excess is recorded as `arrears_overpaid` for a person to
/// return.
pub fn pay_arrears(
    tx: &Transaction<'_>,
    card_id: u64,
    paid_cents: Cents,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    let left = before.arrears_cents - paid_cents;
    let state = account::after_paying_down(before.state, left);
    let after = change(
        tx,
        &before,
        state,
        left.max(Cents::ZERO),
        ("arrears_paid", -paid_cents.min(before.arrears_cents), cause),
        now,
    )?;
    if left.is_negative() {
        tracing::error!(card_id, overpaid = %-left, "a payment of arrears exceeded what was owed");
        history(tx, card_id, now, "arrears_overpaid", Some(after.state), after.state, -left, cause)?;
    }
    Ok(after)
}

/// A credit of `credit_cents` (positive, at most what is owed) set against
/// the card's arrears instead of paid out; once nothing is owed an
/// in-arrears card rides again, as after a payment.
pub fn net_credit(
    tx: &Transaction<'_>,
    card_id: u64,
    credit_cents: Cents,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    assert!(
        credit_cents.is_positive() && credit_cents <= before.arrears_cents,
        "card {card_id}: netting {credit_cents} against arrears {}",
        before.arrears_cents
    );
    let left = before.arrears_cents - credit_cents;
    change(
        tx,
        &before,
        account::after_paying_down(before.state, left),
        left,
        ("arrears_netted", -credit_cents, cause),
        now,
    )
}

/// The one place state and arrears change: the deny list follows them
/// ([`is_denied`]), and the history records `event` with its amount.
fn change(
    tx: &Transaction<'_>,
    before: &Account,
    state: AccountState,
    arrears_cents: Cents,
    (event, amount_cents, cause): (&str, Cents, &str),
    now: UnixMillis,
) -> Result<Account, AccountError> {
    account::assert_consistent(before.card_id, state, arrears_cents);
    assert_deny_list_agrees(tx, before.card_id, is_denied(before.state, before.arrears_cents), "before", event)?;
    tx.execute(
        "UPDATE accounts SET arrears_cents = ?2, state = ?3 WHERE card_id = ?1",
        params![card_to_sql(before.card_id), arrears_cents.get(), state.as_str()],
    )?;
    history(tx, before.card_id, now, event, Some(before.state), state, amount_cents, cause)?;
    let denied = is_denied(state, arrears_cents);
    if denied != is_denied(before.state, before.arrears_cents) {
        tx.execute(
            "INSERT INTO deny_list_changes (card_id, denied, at) VALUES (?1, ?2, ?3)",
            params![card_to_sql(before.card_id), denied, now],
        )?;
    }
    assert_deny_list_agrees(tx, before.card_id, denied, "after", event)?;
    account(tx, before.card_id)
}

/// A card owes (or waits for its deposit back) if and only if the store's
/// deny list has it: the card's newest change says so. Checked before and
/// after every change of state and arrears, so a change that skipped the
/// list, or a list edited by hand, stops the step that would build on it.
fn assert_deny_list_agrees(
    tx: &Transaction<'_>,
    card_id: u64,
    denied: bool,
    when: &str,
    event: &str,
) -> Result<(), StoreError> {
    let listed: Option<bool> = tx
        .prepare_cached("SELECT denied FROM deny_list_changes WHERE card_id = ?1 ORDER BY version DESC LIMIT 1")?
        .query_row([card_to_sql(card_id)], |r| r.get(0))
        .optional()?;
    assert_eq!(
        listed.unwrap_or(false),
        denied,
        "card {card_id}: {when} {event}, the account says denied = {denied} but the deny list disagrees"
    );
    Ok(())
}

/// The card registered to `phone`, if any.
pub fn card_of_phone(conn: &Connection, phone: &str) -> Result<Option<u64>, AccountError> {
    let card: Option<i64> =
        conn.query_row("SELECT card_id FROM accounts WHERE phone = ?1", [phone], |r| r.get(0)).optional()?;
    Ok(card.map(card_from_sql))
}

pub fn account(conn: &Connection, card_id: u64) -> Result<Account, AccountError> {
    conn.query_row(
        "SELECT card_id, phone, payment_user_id, agreement_id, deposit_cents, state, arrears_cents,
                refund_requested_at, created_at, keys_valid_until, refund_due_at
         FROM accounts WHERE card_id = ?1",
        [card_to_sql(card_id)],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                Cents::new(r.get(4)?),
                r.get::<_, String>(5)?,
                Cents::new(r.get(6)?),
                r.get(7)?,
                r.get(8)?,
                (r.get(9)?, r.get(10)?),
            ))
        },
    )
    .optional()?
    .ok_or(AccountError::NotFound(card_id))
    .and_then(
        |(card, phone, payment_user_id, agreement_id, deposit_cents, state, arrears_cents, refund, created, due)| {
            let (keys_valid_until, refund_due_at) = due;
            let state = AccountState::parse(&state)
                .ok_or_else(|| AccountError::Store(StoreError::Corrupt(format!("account state {state:?}"))))?;
            Ok(Account {
                card_id: card_from_sql(card),
                phone,
                payment_user_id,
                agreement_id,
                deposit_cents,
                state,
                arrears_cents,
                refund_requested_at: refund,
                created_at: created,
                keys_valid_until,
                refund_due_at,
            })
        },
    )
}

/// The deny list as of its latest version: the cards on it (each card's
/// newest change says denied; the list itself, not the rule again:
/// `change` keeps the two in step and asserts it), and that version.
pub fn deny_list(conn: &Connection) -> Result<(u64, Vec<u64>), StoreError> {
    let version: i64 = conn.query_row("SELECT coalesce(max(version), 0) FROM deny_list_changes", [], |r| r.get(0))?;
    let cards = conn
        .prepare_cached(
            "SELECT card_id FROM deny_list_changes AS d
             WHERE denied = 1 AND version = (SELECT max(version) FROM deny_list_changes WHERE card_id = d.card_id)
             ORDER BY card_id",
        )?
        .query_map([], |r| r.get::<_, i64>(0).map(card_from_sql))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((u64::try_from(version).unwrap_or(0), cards))
}

/// An event that changes neither state nor arrears (a payment declined,
/// a rider told to pay first), in the history with its amount.
pub fn note(
    tx: &Transaction<'_>,
    card_id: u64,
    event: &str,
    amount_cents: Cents,
    cause: &str,
    now: UnixMillis,
) -> Result<(), AccountError> {
    let state = account(tx, card_id)?.state;
    history(tx, card_id, now, event, Some(state), state, amount_cents, cause)?;
    Ok(())
}

/// The amount of the card's latest `event` in its history, if any.
pub fn last_note_amount(conn: &Connection, card_id: u64, event: &str) -> Result<Option<Cents>, AccountError> {
    Ok(conn
        .query_row(
            "SELECT amount_cents FROM account_history WHERE card_id = ?1 AND event = ?2 ORDER BY seq DESC LIMIT 1",
            params![card_to_sql(card_id), event],
            |r| r.get(0).map(Cents::new),
        )
        .optional()?)
}

/// Every deny-list change after `version`, in order.
pub fn deny_changes_since(conn: &Connection, version: u64) -> Result<Vec<DenyChange>, StoreError> {
    let after = i64::try_from(version).unwrap_or(i64::MAX);
    Ok(conn
        .prepare_cached("SELECT version, card_id, denied FROM deny_list_changes WHERE version > ?1 ORDER BY version")?
        .query_map([after], |r| {
            Ok(DenyChange {
                version: r.get::<_, i64>(0)?.unsigned_abs(),
                card_id: card_from_sql(r.get(1)?),
                denied: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

/// One entry in an account's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: UnixMillis,
    pub event: String,
    pub to_state: String,
    pub amount_cents: Cents,
    pub cause: String,
}

pub fn account_history(conn: &Connection, card_id: u64) -> Result<Vec<HistoryEntry>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT at, event, to_state, amount_cents, cause FROM account_history WHERE card_id = ?1 ORDER BY seq",
        )?
        .query_map([card_to_sql(card_id)], |r| {
            Ok(HistoryEntry {
                at: r.get(0)?,
                event: r.get(1)?,
                to_state: r.get(2)?,
                amount_cents: Cents::new(r.get(3)?),
                cause: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

#[allow(clippy::too_many_arguments)]
fn history(
    tx: &Transaction<'_>,
    card_id: u64,
    at: UnixMillis,
    event: &str,
    from: Option<AccountState>,
    to: AccountState,
    amount_cents: Cents,
    cause: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO account_history (card_id, at, event, from_state, to_state, amount_cents, cause)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            card_to_sql(card_id),
            at,
            event,
            from.map(AccountState::as_str),
            to.as_str(),
            amount_cents.get(),
            cause
        ],
    )?;
    Ok(())
}

fn wrong_state(account: &Account, WrongState { action, needs }: WrongState) -> AccountError {
    AccountError::WrongState { card_id: account.card_id, state: account.state.as_str(), action, needs }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::MoneyStore;

    /// Issue 20: a sealed code's nonce is its card id and counter, so no
    /// counter may be handed to a card twice under one terminal key.
    #[test]
    fn each_credential_gets_its_own_block_of_code_counters_under_a_terminal_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = MoneyStore::open(&dir.path().join("m.sqlite"), Duration::from_secs(1)).expect("store");
        let tx = store.transaction().expect("tx");
        register(&tx, 7, "+8613800000000", 1).expect("register");
        assert!(matches!(keys_issued(&tx, 7, 10, 3), Err(AccountError::WrongState { .. })), "not active yet");
        activate(&tx, 7, "payer-1", "agr-1", Cents::new(2_000), 2).expect("activate");
        let block = |key_id| keys_issued(&tx, 7, 10, key_id).map(|b| b.counters);
        assert_eq!(block(3).expect("first"), (0, 1 << 16));
        assert_eq!(block(3).expect("second"), (1 << 16, 2 << 16), "the next block, never the same");
        assert_eq!(block(4).expect("a newer key"), (0, 1 << 16), "a newer key starts again");
        // Review: a clock that jumped ahead handed out a later key (4);
        // set back, key 3 is handed out again. With one count per card it
        // got no block until the jumped-to day; it goes on from its own.
        assert_eq!(block(3).expect("key 3 again"), (2 << 16, 3 << 16), "its own count, never a block twice");
        // An emergency rotation (9) before the next day's key (5), made
        // a day ahead with a lower id: each has its own count.
        assert_eq!(block(9).expect("the rotation"), (0, 1 << 16));
        assert_eq!(block(5).expect("the next day's key, a lower id"), (0, 1 << 16));
        tx.execute("UPDATE code_blocks SET issued = 65535 WHERE card_id = 7 AND terminal_key_id = 4", [])
            .expect("nearly all");
        assert_eq!(block(4).expect("the last"), (u32::MAX - (1 << 16) + 1, 1 << 32));
        assert!(matches!(block(4), Err(AccountError::CodeBlocksExhausted { terminal_key_id: 4, .. })));
        // Counts are kept for the newest 128 ids: one further back has
        // lost its count and gets no block, rather than block 0 again.
        assert_eq!(block(9 + CODE_BLOCK_KEYS_KEPT).expect("far newer"), (0, 1 << 16));
        assert!(matches!(block(3), Err(AccountError::CodeBlocksExhausted { terminal_key_id: 3, .. })));
        assert_eq!(block(9).expect("still kept"), (1 << 16, 2 << 16));
        let rows: i64 =
            tx.query_row("SELECT count(*) FROM code_blocks WHERE card_id = 7", [], |r| r.get(0)).expect("rows");
        assert_eq!(rows, 2, "keys 9 and 137: the rest were pruned");
        assert_eq!(block(u16::MAX).expect("the last id"), (0, 1 << 16));
    }

    /// Migration 12 carries each card's count under its last key over, so
    /// an upgrade never hands a block out again.
    #[test]
    fn a_count_from_before_per_key_counts_carries_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.sqlite");
        let mut store = MoneyStore::open(&path, Duration::from_secs(1)).expect("store");
        let tx = store.transaction().expect("tx");
        register(&tx, 7, "+8613800000000", 1).expect("register");
        activate(&tx, 7, "payer-1", "agr-1", Cents::new(2_000), 2).expect("activate");
        tx.execute("UPDATE accounts SET code_blocks_terminal_key_id = 3, code_blocks_issued = 5 WHERE card_id = 7", [])
            .expect("a count as migration 11 kept it");
        tx.execute("DROP TABLE code_blocks", []).expect("back to version 11");
        tx.commit().expect("commit");
        store.connection().pragma_update(None, "user_version", 11).expect("version 11");
        drop(store);
        let mut store = MoneyStore::open(&path, Duration::from_secs(1)).expect("upgraded");
        let tx = store.transaction().expect("tx");
        assert_eq!(keys_issued(&tx, 7, 10, 3).map(|b| b.counters).expect("key 3"), (5 << 16, 6 << 16));
        assert_eq!(keys_issued(&tx, 7, 10, 4).map(|b| b.counters).expect("key 4"), (0, 1 << 16));
    }

    #[test]
    fn arrears_deny_the_card_until_paid_and_every_change_is_in_the_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = MoneyStore::open(&dir.path().join("m.sqlite"), Duration::from_secs(1)).expect("store");
        let tx = store.transaction().expect("tx");
        register(&tx, u64::MAX, "+8613800000000", 1).expect("register");
        assert!(matches!(register(&tx, 2, "+8613800000000", 1), Err(AccountError::PhoneTaken(_))));
        assert!(matches!(add_arrears(&tx, 3, Cents::new(1), "x", 1), Err(AccountError::NotFound(3))));
        activate(&tx, u64::MAX, "payer-1", "agr-1", Cents::new(2_000), 2).expect("activate");
        assert!(matches!(activate(&tx, u64::MAX, "p", "a", Cents::new(1), 2), Err(AccountError::WrongState { .. })));
        let owing = add_arrears(&tx, u64::MAX, Cents::new(300), "charge 01 declined", 3).expect("arrears");
        assert_eq!((owing.state, owing.arrears_cents.get()), (AccountState::InArrears, 300));
        add_arrears(&tx, u64::MAX, Cents::new(200), "charge 02 declined", 4).expect("more arrears");
        assert_eq!(deny_list(&tx).expect("list"), (1, vec![u64::MAX]), "denied once, however many declines");
        let part = pay_arrears(&tx, u64::MAX, Cents::new(100), "payment p-1", 5).expect("pay part");
        assert_eq!((part.state, part.arrears_cents.get()), (AccountState::InArrears, 400), "still owes, still denied");
        let paid = pay_arrears(&tx, u64::MAX, Cents::new(400), "payment p-2", 5).expect("pay");
        assert_eq!((paid.state, paid.arrears_cents.get()), (AccountState::Active, 0));
        assert_eq!(deny_list(&tx).expect("list"), (2, vec![]));
        let overpaid =
            pay_arrears(&tx, u64::MAX, Cents::new(70), "payment p-3", 6).expect("a payment nothing was owed for");
        assert_eq!((overpaid.state, overpaid.arrears_cents.get()), (AccountState::Active, 0));
        let events: Vec<(String, i64)> = account_history(&tx, u64::MAX)
            .expect("history")
            .into_iter()
            .map(|h| (h.event, h.amount_cents.get()))
            .collect();
        let expected = [
            ("registered", 0),
            ("activated", 2_000),
            ("arrears_added", 300),
            ("arrears_added", 200),
            ("arrears_paid", -100),
            ("arrears_paid", -400),
            ("arrears_paid", 0),
            ("arrears_overpaid", 70),
        ];
        assert_eq!(events, expected.map(|(e, a)| (e.to_string(), a)));
    }

    #[test]
    fn a_change_to_a_card_the_deny_list_disagrees_with_stops_before_it_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = MoneyStore::open(&dir.path().join("m.sqlite"), Duration::from_secs(1)).expect("store");
        let tx = store.transaction().expect("tx");
        register(&tx, 5, "+8613800000005", 1).expect("register");
        activate(&tx, 5, "payer-5", "agr-5", Cents::new(2_000), 2).expect("activate");
        add_arrears(&tx, 5, Cents::new(300), "charge 01 declined", 3).expect("arrears");
        // The list loses the card (a hand edit, or a write that skipped it).
        tx.execute("DELETE FROM deny_list_changes WHERE card_id = 5", []).expect("tamper");
        let paying = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pay_arrears(&tx, 5, Cents::new(300), "payment p-1", 4).map(|_| ())
        }));
        let message = paying.expect_err("the disagreement is caught");
        let message = message.downcast_ref::<String>().expect("a formatted message");
        assert!(message.contains("card 5: before arrears_paid"), "{message}");
        assert_eq!(account(&tx, 5).expect("account").arrears_cents.get(), 300, "nothing written");
    }
}
