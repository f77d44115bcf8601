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

use thiserror::Error;

use crate::codec::{card_from_sql, card_to_sql};
use crate::db::{Db, Lock, Row, Value};
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

fn card(card_id: u64) -> Value<'static> {
    Value::Int(card_to_sql(card_id))
}

/// A new account for `phone`, registered but not yet able to ride.
pub fn register(tx: &mut dyn Db, card_id: u64, phone: &str, now: UnixMillis) -> Result<Account, AccountError> {
    if card_of_phone(tx, phone)?.is_some() {
        return Err(AccountError::PhoneTaken(phone.to_string()));
    }
    tx.execute(
        "INSERT INTO accounts (card_id, phone, state, created_at) VALUES (?1, ?2, 'registered', ?3)",
        &[card(card_id), Value::Text(phone), Value::Int(now)],
    )?;
    history(tx, card_id, now, "registered", None, AccountState::Registered, Cents::ZERO, "registration")?;
    account(tx, card_id)
}

/// A closed card's rider signs up again: the same card, registered, to
/// sign a new agreement and pay a new deposit. Its old days stay its own.
pub fn reopen(tx: &mut dyn Db, card_id: u64, now: UnixMillis) -> Result<Account, AccountError> {
    let before = locked_account(tx, card_id)?;
    let state = account::reopen(before.state).map_err(|wrong| wrong_state(&before, wrong))?;
    tx.execute(
        "UPDATE accounts SET agreement_id = NULL, deposit_cents = 0, refund_requested_at = NULL, refund_due_at = NULL
         WHERE card_id = ?1",
        &[card(card_id)],
    )?;
    change(tx, &before, state, before.arrears_cents, ("reopened", Cents::ZERO, "signed up again"), now)
}

/// The debit agreement is signed and the deposit paid: the card may ride.
pub fn activate(
    tx: &mut dyn Db,
    card_id: u64,
    payment_user_id: &str,
    agreement_id: &str,
    deposit_cents: Cents,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = locked_account(tx, card_id)?;
    let state = account::activate(before.state, before.arrears_cents).map_err(|wrong| wrong_state(&before, wrong))?;
    tx.execute(
        "UPDATE accounts SET payment_user_id = ?2, agreement_id = ?3, deposit_cents = ?4 WHERE card_id = ?1",
        &[card(card_id), Value::Text(payment_user_id), Value::Text(agreement_id), Value::Int(deposit_cents.get())],
    )?;
    change(tx, &before, state, before.arrears_cents, ("activated", deposit_cents, "deposit paid"), now)
}

/// Keys were issued until `valid_until`: only to an active card, checked
/// in the transaction that records them, so a refund asked for at the same
/// moment knows the last credential. Takes the card's next block of code
/// counters under `terminal_key_id`.
pub fn keys_issued(
    tx: &mut dyn Db,
    card_id: u64,
    valid_until: UnixMillis,
    terminal_key_id: u16,
) -> Result<CodeBlock, AccountError> {
    let before = locked_account(tx, card_id)?;
    account::may_issue_keys(before.state).map_err(|wrong| wrong_state(&before, wrong))?;
    let block = next_code_block(tx, card_id, terminal_key_id)?;
    // CASE, not max(a, b): SQLite's two-argument max is GREATEST on
    // PostgreSQL.
    tx.execute(
        "UPDATE accounts SET keys_valid_until =
           CASE WHEN keys_valid_until IS NULL OR keys_valid_until < ?2 THEN ?2 ELSE keys_valid_until END
         WHERE card_id = ?1",
        &[card(card_id), Value::Int(valid_until)],
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
fn next_code_block(tx: &mut dyn Db, card_id: u64, terminal_key_id: u16) -> Result<CodeBlock, AccountError> {
    let exhausted = || AccountError::CodeBlocksExhausted { card_id, terminal_key_id };
    let newest = tx
        .query_opt("SELECT max(terminal_key_id) FROM code_blocks WHERE card_id = ?1", &[card(card_id)])?
        .map(|row| row.opt_int(0))
        .transpose()?
        .flatten();
    let newest = newest
        .map(|id| u16::try_from(id).map_err(|_| StoreError::Corrupt(format!("terminal key id {id}"))))
        .transpose()?;
    let kept_from = newest.unwrap_or(0).max(terminal_key_id).saturating_sub(CODE_BLOCK_KEYS_KEPT);
    if terminal_key_id < kept_from {
        return Err(exhausted());
    }
    let key = Value::Int(terminal_key_id.into());
    let issued = tx
        .query_opt("SELECT issued FROM code_blocks WHERE card_id = ?1 AND terminal_key_id = ?2", &[card(card_id), key])?
        .map(|row| row.int(0))
        .transpose()?
        .unwrap_or(0);
    let index = u32::try_from(issued).map_err(|_| exhausted())?;
    let counters = farestream_core::ridecode::sealed::code_counter_block(index).ok_or_else(exhausted)?;
    tx.execute(
        "INSERT INTO code_blocks (card_id, terminal_key_id, issued) VALUES (?1, ?2, ?3)
         ON CONFLICT (card_id, terminal_key_id) DO UPDATE SET issued = excluded.issued",
        &[card(card_id), key, Value::Int(i64::from(index) + 1)],
    )?;
    tx.execute(
        "DELETE FROM code_blocks WHERE card_id = ?1 AND terminal_key_id < ?2",
        &[card(card_id), Value::Int(kept_from.into())],
    )?;
    Ok(CodeBlock { index, counters })
}

/// The rider asked for the deposit back: the card is denied at once and
/// gets no new keys; the refund is due once no ride of it can still
/// arrive: the end of its newest credential (or now, if later) plus
/// `rides_arrive_within_ms` (the accepted lateness of uploads and the
/// validators' clock skew).
pub fn request_refund(
    tx: &mut dyn Db,
    card_id: u64,
    rides_arrive_within_ms: i64,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = locked_account(tx, card_id)?;
    let state = account::request_refund(before.state).map_err(|wrong| wrong_state(&before, wrong))?;
    let due_at = account::refund_due_at(before.keys_valid_until, now, rides_arrive_within_ms);
    tx.execute(
        "UPDATE accounts SET refund_requested_at = ?2, refund_due_at = ?3 WHERE card_id = ?1",
        &[card(card_id), Value::Int(now), Value::Int(due_at)],
    )?;
    change(tx, &before, state, before.arrears_cents, ("refund_requested", Cents::ZERO, "rider's request"), now)
}

/// Sets what the card owes against its deposit (the deposit exists to
/// cover rides a decline found late): returns how much was set off.
pub fn set_off_arrears_against_deposit(tx: &mut dyn Db, card_id: u64, now: UnixMillis) -> Result<Cents, AccountError> {
    let before = locked_account(tx, card_id)?;
    let set_off = before.arrears_cents.min(before.deposit_cents).max(Cents::ZERO);
    if set_off.is_zero() {
        return Ok(Cents::ZERO);
    }
    tx.execute(
        "UPDATE accounts SET deposit_cents = deposit_cents - CAST(?2 AS BIGINT) WHERE card_id = ?1",
        &[card(card_id), Value::Int(set_off.get())],
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
pub fn deposit_returned(tx: &mut dyn Db, card_id: u64, cause: &str, now: UnixMillis) -> Result<Account, AccountError> {
    let before = locked_account(tx, card_id)?;
    if before.state != AccountState::RefundPending {
        return Err(wrong_state(&before, WrongState { action: "returning the deposit", needs: "refund_pending" }));
    }
    tx.execute("UPDATE accounts SET deposit_cents = 0 WHERE card_id = ?1", &[card(card_id)])?;
    history(tx, card_id, now, "deposit_returned", Some(before.state), before.state, -before.deposit_cents, cause)?;
    account(tx, card_id)
}

/// Whether the refund-pending card may close now, and why not.
pub fn may_close(
    db: &mut dyn Db,
    card_id: u64,
    rides_arrive_within_ms: i64,
    now: UnixMillis,
) -> Result<Result<Account, NotYet>, AccountError> {
    let account = account(db, card_id)?;
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
        money_in_flight: now >= due_at && money_in_flight(db, card_id)?,
        arrears_cents: account.arrears_cents,
        deposit_cents: account.deposit_cents,
    };
    Ok(account::may_close(closing, now).map(|()| account))
}

/// Nothing is owed, held or in flight, and no ride can arrive: closed, and
/// off the deny list (no credential of it is valid any more).
pub fn close(
    tx: &mut dyn Db,
    card_id: u64,
    cause: &str,
    rides_arrive_within_ms: i64,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    tx.lock(Lock::Card(card_id))?;
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
pub fn refunds_due(db: &mut dyn Db, now: UnixMillis, rides_arrive_within_ms: i64) -> Result<Vec<u64>, StoreError> {
    let pending = db
        .query(
            "SELECT card_id, refund_due_at, refund_requested_at FROM accounts WHERE state = ?1 ORDER BY card_id",
            &[Value::Text(AccountState::RefundPending.as_str())],
        )?
        .iter()
        .map(|r| Ok((card_from_sql(r.int(0)?), r.opt_int(1)?, r.opt_int(2)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
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
fn money_in_flight_sql() -> String {
    format!(
        "SELECT (SELECT count(*) FROM charges WHERE card_id = ?1 AND outcome IN {UNDECIDED_OUTCOMES_SQL})
              + (SELECT count(*) FROM open_entries WHERE card_id = ?1)
              + (SELECT count(*) FROM account_payments
                 WHERE card_id = ?1 AND outcome = 'unknown' AND kind <> 'refund')"
    )
}

pub fn money_in_flight(db: &mut dyn Db, card_id: u64) -> Result<bool, StoreError> {
    let row = db.query_opt(&money_in_flight_sql(), &[card(card_id)])?;
    let busy = row.map(|row| row.int(0)).transpose()?.unwrap_or(0);
    Ok(busy > 0)
}

/// A debit was declined: the amount is owed, and the card is denied.
pub fn add_arrears(
    tx: &mut dyn Db,
    card_id: u64,
    amount_cents: Cents,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = locked_account(tx, card_id)?;
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
    tx: &mut dyn Db,
    card_id: u64,
    paid_cents: Cents,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = locked_account(tx, card_id)?;
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
    tx: &mut dyn Db,
    card_id: u64,
    credit_cents: Cents,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = locked_account(tx, card_id)?;
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
    tx: &mut dyn Db,
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
        &[card(before.card_id), Value::Int(arrears_cents.get()), Value::Text(state.as_str())],
    )?;
    history(tx, before.card_id, now, event, Some(before.state), state, amount_cents, cause)?;
    let denied = is_denied(state, arrears_cents);
    if denied != is_denied(before.state, before.arrears_cents) {
        append_deny_change(tx, before.card_id, denied, now)?;
    }
    assert_deny_list_agrees(tx, before.card_id, denied, "after", event)?;
    account(tx, before.card_id)
}

/// A card owes (or waits for its deposit back) if and only if the store's
/// deny list has it: the card's newest change says so. Checked before and
/// after every change of state and arrears, so a change that skipped the
/// list, or a list edited by hand, stops the step that would build on it.
fn assert_deny_list_agrees(
    tx: &mut dyn Db,
    card_id: u64,
    denied: bool,
    when: &str,
    event: &str,
) -> Result<(), StoreError> {
    let listed = tx
        .query_opt(
            "SELECT denied FROM deny_list_changes WHERE card_id = ?1 ORDER BY version DESC LIMIT 1",
            &[card(card_id)],
        )?
        .map(|r| r.int(0))
        .transpose()?;
    assert_eq!(
        listed.unwrap_or(0) == 1,
        denied,
        "card {card_id}: {when} {event}, the account says denied = {denied} but the deny list disagrees"
    );
    Ok(())
}

/// The card registered to `phone`, if any.
pub fn card_of_phone(db: &mut dyn Db, phone: &str) -> Result<Option<u64>, AccountError> {
    let row = db.query_opt("SELECT card_id FROM accounts WHERE phone = ?1", &[Value::Text(phone)])?;
    Ok(row.map(|r| r.int(0)).transpose()?.map(card_from_sql))
}

pub fn account(db: &mut dyn Db, card_id: u64) -> Result<Account, AccountError> {
    let row = db.query_opt(
        "SELECT card_id, phone, payment_user_id, agreement_id, deposit_cents, state, arrears_cents,
                refund_requested_at, created_at, keys_valid_until, refund_due_at
         FROM accounts WHERE card_id = ?1",
        &[card(card_id)],
    )?;
    Ok(account_from_row(&row.ok_or(AccountError::NotFound(card_id))?)?)
}

/// The account, with its card locked until the transaction ends: what
/// every change reads before it decides (see [`Lock`]).
pub fn locked_account(tx: &mut dyn Db, card_id: u64) -> Result<Account, AccountError> {
    tx.lock(Lock::Card(card_id))?;
    account(tx, card_id)
}

fn account_from_row(r: &Row) -> Result<Account, StoreError> {
    let state = r.text(5)?;
    let state = AccountState::parse(state).ok_or_else(|| StoreError::Corrupt(format!("account state {state:?}")))?;
    Ok(Account {
        card_id: card_from_sql(r.int(0)?),
        phone: r.text(1)?.to_string(),
        payment_user_id: r.opt_text(2)?.map(str::to_string),
        agreement_id: r.opt_text(3)?.map(str::to_string),
        deposit_cents: Cents::new(r.int(4)?),
        state,
        arrears_cents: Cents::new(r.int(6)?),
        refund_requested_at: r.opt_int(7)?,
        created_at: r.int(8)?,
        keys_valid_until: r.opt_int(9)?,
        refund_due_at: r.opt_int(10)?,
    })
}

/// The deny list as of its latest version: the cards on it (each card's
/// newest change says denied; the list itself, not the rule again:
/// `change` keeps the two in step and asserts it), and that version.
pub fn deny_list(db: &mut dyn Db) -> Result<(u64, Vec<u64>), StoreError> {
    let version = deny_list_version(db)?;
    let cards = db
        .query(
            "SELECT card_id FROM deny_list_changes AS d
             WHERE denied = 1 AND version = (SELECT max(version) FROM deny_list_changes WHERE card_id = d.card_id)
             ORDER BY card_id",
            &[],
        )?
        .iter()
        .map(|r| r.int(0).map(card_from_sql))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((version, cards))
}

/// The deny list's latest version: 0 before its first change.
fn deny_list_version(db: &mut dyn Db) -> Result<u64, StoreError> {
    let row = db.query_opt("SELECT coalesce(max(version), 0) FROM deny_list_changes", &[])?;
    let version = row.map(|r| r.int(0)).transpose()?.unwrap_or(0);
    u64::try_from(version).map_err(|_| StoreError::Corrupt(format!("deny list version {version}")))
}

/// Appends the card's change to the deny list under the next version,
/// assigned here under [`Lock::DenyList`] (not by the engine: a
/// PostgreSQL sequence skips the numbers of rolled-back transactions),
/// so a gateway following the list by version never sees a gap.
fn append_deny_change(tx: &mut dyn Db, card_id: u64, denied: bool, now: UnixMillis) -> Result<(), StoreError> {
    tx.lock(Lock::DenyList)?;
    let next = deny_list_version(tx)? + 1;
    let next = i64::try_from(next).map_err(|_| StoreError::Corrupt(format!("deny list version {next}")))?;
    tx.execute(
        "INSERT INTO deny_list_changes (version, card_id, denied, at) VALUES (?1, ?2, ?3, ?4)",
        &[Value::Int(next), card(card_id), Value::Int(denied.into()), Value::Int(now)],
    )?;
    Ok(())
}

/// An event that changes neither state nor arrears (a payment declined,
/// a rider told to pay first), in the history with its amount.
pub fn note(
    tx: &mut dyn Db,
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
pub fn last_note_amount(db: &mut dyn Db, card_id: u64, event: &str) -> Result<Option<Cents>, AccountError> {
    let row = db.query_opt(
        "SELECT amount_cents FROM account_history WHERE card_id = ?1 AND event = ?2 ORDER BY seq DESC LIMIT 1",
        &[card(card_id), Value::Text(event)],
    )?;
    Ok(row.map(|r| r.int(0).map(Cents::new)).transpose()?)
}

/// Every deny-list change after `version`, in order.
pub fn deny_changes_since(db: &mut dyn Db, version: u64) -> Result<Vec<DenyChange>, StoreError> {
    let after = i64::try_from(version).unwrap_or(i64::MAX);
    db.query(
        "SELECT version, card_id, denied FROM deny_list_changes WHERE version > ?1 ORDER BY version",
        &[Value::Int(after)],
    )?
    .iter()
    .map(|r| {
        Ok(DenyChange { version: r.int(0)?.unsigned_abs(), card_id: card_from_sql(r.int(1)?), denied: r.int(2)? == 1 })
    })
    .collect()
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

pub fn account_history(db: &mut dyn Db, card_id: u64) -> Result<Vec<HistoryEntry>, StoreError> {
    db.query(
        "SELECT at, event, to_state, amount_cents, cause FROM account_history WHERE card_id = ?1 ORDER BY seq",
        &[card(card_id)],
    )?
    .iter()
    .map(|r| {
        Ok(HistoryEntry {
            at: r.int(0)?,
            event: r.text(1)?.to_string(),
            to_state: r.text(2)?.to_string(),
            amount_cents: Cents::new(r.int(3)?),
            cause: r.text(4)?.to_string(),
        })
    })
    .collect()
}

#[allow(clippy::too_many_arguments)]
fn history(
    tx: &mut dyn Db,
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
        &[
            card(card_id),
            Value::Int(at),
            Value::Text(event),
            from.map(AccountState::as_str).into(),
            Value::Text(to.as_str()),
            Value::Int(amount_cents.get()),
            Value::Text(cause),
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
    use crate::db::Sqlite;
    use crate::store::SqliteStore;
    use crate::test_cluster::on_both_stores;

    /// Issue 20: a sealed code's nonce is its card id and counter, so no
    /// counter may be handed to a card twice under one terminal key.
    #[test]
    fn each_credential_gets_its_own_block_of_code_counters_under_a_terminal_key() {
        on_both_stores(|tx, engine| {
            register(tx, 7, "+8613800000000", 1).expect("register");
            assert!(matches!(keys_issued(tx, 7, 10, 3), Err(AccountError::WrongState { .. })), "{engine}: not active");
            activate(tx, 7, "payer-1", "agr-1", Cents::new(2_000), 2).expect("activate");
            let mut block = |key_id| keys_issued(tx, 7, 10, key_id).map(|b| b.counters);
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
            tx.execute("UPDATE code_blocks SET issued = 65535 WHERE card_id = 7 AND terminal_key_id = 4", &[])
                .expect("nearly all");
            let mut block = |key_id| keys_issued(tx, 7, 10, key_id).map(|b| b.counters);
            assert_eq!(block(4).expect("the last"), (u32::MAX - (1 << 16) + 1, 1 << 32));
            assert!(matches!(block(4), Err(AccountError::CodeBlocksExhausted { terminal_key_id: 4, .. })));
            // Counts are kept for the newest 128 ids: one further back has
            // lost its count and gets no block, rather than block 0 again.
            assert_eq!(block(9 + CODE_BLOCK_KEYS_KEPT).expect("far newer"), (0, 1 << 16));
            assert!(matches!(block(3), Err(AccountError::CodeBlocksExhausted { terminal_key_id: 3, .. })));
            assert_eq!(block(9).expect("still kept"), (1 << 16, 2 << 16));
            let rows = tx.query_opt("SELECT count(*) FROM code_blocks WHERE card_id = 7", &[]).expect("rows");
            assert_eq!(rows.expect("a count").int(0).expect("int"), 2, "keys 9 and 137: the rest were pruned");
            let valid_until = |tx: &mut dyn Db| account(tx, 7).expect("account").keys_valid_until;
            assert_eq!(valid_until(tx), Some(10), "{engine}");
            keys_issued(tx, 7, 5, 9).expect("an older credential");
            assert_eq!(valid_until(tx), Some(10), "{engine}: never moved back");
            keys_issued(tx, 7, i64::MAX, 9).expect("the latest time");
            assert_eq!(valid_until(tx), Some(i64::MAX), "{engine}");
            assert_eq!(keys_issued(tx, 7, 10, u16::MAX).map(|b| b.counters).expect("the last id"), (0, 1 << 16));
            valid_until(tx)
        });
    }

    /// Migration 12 carries each card's count under its last key over, so
    /// an upgrade never hands a block out again (SQLite only: PostgreSQL
    /// stores start at version 14).
    #[test]
    fn a_count_from_before_per_key_counts_carries_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.sqlite");
        let mut store = SqliteStore::open(&path, Duration::from_secs(1)).expect("store");
        let tx = store.transaction().expect("tx");
        register(&mut Sqlite(&tx), 7, "+8613800000000", 1).expect("register");
        activate(&mut Sqlite(&tx), 7, "payer-1", "agr-1", Cents::new(2_000), 2).expect("activate");
        tx.execute("UPDATE accounts SET code_blocks_terminal_key_id = 3, code_blocks_issued = 5 WHERE card_id = 7", [])
            .expect("a count as migration 11 kept it");
        tx.execute("DROP TABLE code_blocks", []).expect("back to version 11");
        tx.execute("ALTER TABLE log_cursors DROP COLUMN priced_received_before", []).expect("and before 15");
        for column in ["holder", "last_record_lsn", "last_record_digest"] {
            tx.execute(&format!("ALTER TABLE log_cursors DROP COLUMN {column}"), []).expect("and before 16");
        }
        tx.commit().expect("commit");
        store.connection().pragma_update(None, "user_version", 11).expect("version 11");
        drop(store);
        let mut store = SqliteStore::open(&path, Duration::from_secs(1)).expect("upgraded");
        let tx = store.transaction().expect("tx");
        let block = |key| keys_issued(&mut Sqlite(&tx), 7, 10, key).map(|b| b.counters);
        assert_eq!(block(3).expect("key 3"), (5 << 16, 6 << 16));
        assert_eq!(block(4).expect("key 4"), (0, 1 << 16));
    }

    #[test]
    fn arrears_deny_the_card_until_paid_and_every_change_is_in_the_history() {
        on_both_stores(|tx, _| {
            register(tx, u64::MAX, "+8613800000000", 1).expect("register");
            assert!(matches!(register(tx, 2, "+8613800000000", 1), Err(AccountError::PhoneTaken(_))));
            assert!(matches!(add_arrears(tx, 3, Cents::new(1), "x", 1), Err(AccountError::NotFound(3))));
            activate(tx, u64::MAX, "payer-1", "agr-1", Cents::new(2_000), 2).expect("activate");
            assert!(matches!(activate(tx, u64::MAX, "p", "a", Cents::new(1), 2), Err(AccountError::WrongState { .. })));
            let owing = add_arrears(tx, u64::MAX, Cents::new(300), "charge 01 declined", 3).expect("arrears");
            assert_eq!((owing.state, owing.arrears_cents.get()), (AccountState::InArrears, 300));
            add_arrears(tx, u64::MAX, Cents::new(200), "charge 02 declined", 4).expect("more arrears");
            assert_eq!(deny_list(tx).expect("list"), (1, vec![u64::MAX]), "denied once, however many declines");
            let part = pay_arrears(tx, u64::MAX, Cents::new(100), "payment p-1", 5).expect("pay part");
            assert_eq!((part.state, part.arrears_cents.get()), (AccountState::InArrears, 400), "still denied");
            let paid = pay_arrears(tx, u64::MAX, Cents::new(400), "payment p-2", 5).expect("pay");
            assert_eq!((paid.state, paid.arrears_cents.get()), (AccountState::Active, 0));
            assert_eq!(deny_list(tx).expect("list"), (2, vec![]));
            let overpaid =
                pay_arrears(tx, u64::MAX, Cents::new(70), "payment p-3", 6).expect("a payment nothing was owed for");
            assert_eq!((overpaid.state, overpaid.arrears_cents.get()), (AccountState::Active, 0));
            let events: Vec<(String, i64)> = account_history(tx, u64::MAX)
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
            assert_eq!(last_note_amount(tx, u64::MAX, "arrears_paid").expect("note"), Some(Cents::ZERO));
            assert_eq!(last_note_amount(tx, u64::MAX, "never").expect("note"), None);
            let changes = deny_changes_since(tx, 0).expect("changes");
            let since_1 = deny_changes_since(tx, 1).expect("changes");
            assert_eq!(deny_changes_since(tx, u64::MAX).expect("none after the last"), vec![]);
            (events, changes, since_1, account(tx, u64::MAX).expect("account"))
        });
    }

    /// A refund on both engines: requested (denied at once), due only
    /// after the newest credential and the lateness allowed, arrears set
    /// off against the deposit, the rest returned, then closed and off
    /// the list; then the rider signs up again on the same card.
    #[test]
    fn a_refund_sets_off_returns_and_closes_and_the_rider_may_come_back() {
        let life = on_both_stores(|tx, engine| {
            register(tx, 9, "", 1).expect("the shortest phone");
            activate(tx, 9, "payer-9", "agr-9", Cents::new(2_000), 2).expect("activate");
            keys_issued(tx, 9, 1_000, 1).expect("keys");
            add_arrears(tx, 9, Cents::new(500), "charge declined", 3).expect("arrears");
            let pending = request_refund(tx, 9, 100, 10).expect("refund asked for");
            assert_eq!((pending.state, pending.refund_due_at), (AccountState::RefundPending, Some(1_100)), "{engine}");
            assert_eq!(refunds_due(tx, 1_099, 100).expect("due"), Vec::<u64>::new(), "{engine}: not before");
            assert_eq!(refunds_due(tx, 1_100, 100).expect("due"), vec![9], "{engine}");
            assert!(!money_in_flight(tx, 9).expect("in flight"), "{engine}");
            assert_eq!(set_off_arrears_against_deposit(tx, 9, 1_100).expect("set off"), Cents::new(500));
            assert_eq!(set_off_arrears_against_deposit(tx, 9, 1_100).expect("again"), Cents::ZERO, "once");
            let returned = deposit_returned(tx, 9, "refund r-1", 1_101).expect("returned");
            assert_eq!(returned.deposit_cents, Cents::ZERO);
            assert!(matches!(close(tx, 9, "closed", 100, 1_099), Err(AccountError::NotYet { .. })), "{engine}");
            let closed = close(tx, 9, "refund paid", 100, 1_102).expect("closed");
            assert_eq!(closed.state, AccountState::Closed);
            assert_eq!(deny_list(tx).expect("list").1, Vec::<u64>::new(), "{engine}: off the list once closed");
            let again = reopen(tx, 9, 2_000).expect("signed up again");
            assert_eq!(card_of_phone(tx, "").expect("phone"), Some(9));
            (again, deny_list(tx).expect("list"), account_history(tx, 9).expect("history"))
        });
        assert_eq!(life.0.state, AccountState::Registered);
        assert_eq!(life.1.0, 2, "denied at the decline, stayed through the refund, off at the close: gapless");
    }

    #[test]
    fn a_change_to_a_card_the_deny_list_disagrees_with_stops_before_it_is_written() {
        on_both_stores(|tx, _| {
            register(tx, 5, "+8613800000005", 1).expect("register");
            activate(tx, 5, "payer-5", "agr-5", Cents::new(2_000), 2).expect("activate");
            add_arrears(tx, 5, Cents::new(300), "charge 01 declined", 3).expect("arrears");
            // The list loses the card (a hand edit, or a write that skipped it).
            tx.execute("DELETE FROM deny_list_changes WHERE card_id = 5", &[]).expect("tamper");
            let paying = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pay_arrears(tx, 5, Cents::new(300), "payment p-1", 4).map(|_| ())
            }));
            let message = paying.expect_err("the disagreement is caught");
            let message = message.downcast_ref::<String>().expect("a formatted message").clone();
            assert!(message.contains("card 5: before arrears_paid"), "{message}");
            assert_eq!(account(tx, 5).expect("account").arrears_cents.get(), 300, "nothing written");
            message
        });
    }
}
