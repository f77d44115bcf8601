//! Rider accounts in the money store: the life of an account
//! (`registered` → `active` ⇄ `in_arrears`, `refund_pending` → `closed`),
//! the arrears and the deny list. Every change appends to
//! `account_history` with its cause, in the transaction that makes it.
//!
//! Invariant: a card is on the deny list exactly while its arrears are
//! above zero; [`set_arrears`] is the one place arrears change, and it
//! moves the card on or off the list in the same transaction.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use thiserror::Error;

use super::codec::{card_from_sql, card_to_sql};
use super::store::StoreError;
use crate::clock::UnixMillis;
use crate::deny_list::DenyChange;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountState {
    Registered,
    Active,
    InArrears,
    RefundPending,
    Closed,
}

impl AccountState {
    pub const ALL: [AccountState; 5] = [
        AccountState::Registered,
        AccountState::Active,
        AccountState::InArrears,
        AccountState::RefundPending,
        AccountState::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Registered => "registered",
            AccountState::Active => "active",
            AccountState::InArrears => "in_arrears",
            AccountState::RefundPending => "refund_pending",
            AccountState::Closed => "closed",
        }
    }

    pub fn parse(name: &str) -> Option<AccountState> {
        AccountState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub card_id: u64,
    pub phone: String,
    pub payment_user_id: Option<String>,
    pub agreement_id: Option<String>,
    pub deposit_cents: i64,
    pub state: AccountState,
    pub arrears_cents: i64,
    pub refund_requested_at: Option<UnixMillis>,
    pub created_at: UnixMillis,
}

#[derive(Debug, Error)]
pub enum AccountError {
    #[error("no account for card {0}")]
    NotFound(u64),
    #[error("card {card_id} is {state}, and {action} needs {needs}")]
    WrongState { card_id: u64, state: &'static str, action: &'static str, needs: &'static str },
    #[error("phone {0} already has a card")]
    PhoneTaken(String),
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
    history(tx, card_id, now, "registered", None, AccountState::Registered, 0, "registration")?;
    account(tx, card_id)
}

/// The debit agreement is signed and the deposit paid: the card may ride.
pub fn activate(
    tx: &Transaction<'_>,
    card_id: u64,
    payment_user_id: &str,
    agreement_id: &str,
    deposit_cents: i64,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    if before.state != AccountState::Registered {
        return Err(wrong_state(&before, "activation", "registered"));
    }
    tx.execute(
        "UPDATE accounts SET payment_user_id = ?2, agreement_id = ?3, deposit_cents = ?4, state = 'active'
         WHERE card_id = ?1",
        params![card_to_sql(card_id), payment_user_id, agreement_id, deposit_cents],
    )?;
    history(tx, card_id, now, "activated", Some(before.state), AccountState::Active, deposit_cents, "deposit paid")?;
    account(tx, card_id)
}

/// The rider asked for the deposit back: no new keys from now on; the
/// refund waits until late uploads are in and the days are settled.
pub fn request_refund(tx: &Transaction<'_>, card_id: u64, now: UnixMillis) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    if !matches!(before.state, AccountState::Active | AccountState::InArrears) {
        return Err(wrong_state(&before, "a refund", "active or in_arrears"));
    }
    tx.execute(
        "UPDATE accounts SET state = 'refund_pending', refund_requested_at = ?2 WHERE card_id = ?1",
        params![card_to_sql(card_id), now],
    )?;
    let to = AccountState::RefundPending;
    history(tx, card_id, now, "refund_requested", Some(before.state), to, 0, "rider's request")?;
    account(tx, card_id)
}

/// The deposit went back and the agreement ends: the account is closed.
pub fn close(tx: &Transaction<'_>, card_id: u64, cause: &str, now: UnixMillis) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    if before.state != AccountState::RefundPending || before.arrears_cents > 0 {
        return Err(wrong_state(&before, "closing", "refund_pending with nothing owed"));
    }
    tx.execute("UPDATE accounts SET state = 'closed', deposit_cents = 0 WHERE card_id = ?1", [card_to_sql(card_id)])?;
    history(tx, card_id, now, "closed", Some(before.state), AccountState::Closed, -before.deposit_cents, cause)?;
    account(tx, card_id)
}

/// Cards whose refund was asked for at or before `asked_by`.
pub fn refunds_due(conn: &Connection, asked_by: UnixMillis) -> Result<Vec<u64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT card_id FROM accounts WHERE state = 'refund_pending' AND refund_requested_at <= ?1 ORDER BY card_id",
        )?
        .query_map([asked_by], |r| r.get::<_, i64>(0).map(card_from_sql))?
        .collect::<Result<Vec<_>, _>>()?)
}

/// Whether any of the card's charges is still undecided or any of its
/// days still waits for an exit: a refund waits for them.
pub fn money_in_flight(conn: &Connection, card_id: u64) -> Result<bool, StoreError> {
    let busy: i64 = conn.query_row(
        "SELECT (SELECT count(*) FROM charges WHERE card_id = ?1 AND outcome IN ('pending', 'failed'))
              + (SELECT count(*) FROM open_entries WHERE card_id = ?1)",
        [card_to_sql(card_id)],
        |r| r.get(0),
    )?;
    Ok(busy > 0)
}

/// A debit was declined: the amount is owed, and the card is denied.
pub fn add_arrears(
    tx: &Transaction<'_>,
    card_id: u64,
    amount_cents: i64,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    set_arrears(tx, &before, before.arrears_cents.saturating_add(amount_cents), "arrears_added", cause, now)
}

/// The rider paid `paid_cents` of what is owed; once nothing is, the card
/// rides again. (A decline that came in while the payment was out stays
/// owed.)
pub fn pay_arrears(
    tx: &Transaction<'_>,
    card_id: u64,
    paid_cents: i64,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let before = account(tx, card_id)?;
    if before.arrears_cents == 0 {
        return Err(wrong_state(&before, "paying arrears", "arrears owed"));
    }
    let left = before.arrears_cents.saturating_sub(paid_cents).max(0);
    set_arrears(tx, &before, left, "arrears_paid", cause, now)
}

/// The one place arrears change: the state and the deny list follow them.
fn set_arrears(
    tx: &Transaction<'_>,
    before: &Account,
    arrears_cents: i64,
    event: &str,
    cause: &str,
    now: UnixMillis,
) -> Result<Account, AccountError> {
    let owes = arrears_cents > 0;
    let state = match before.state {
        AccountState::Active | AccountState::InArrears if owes => AccountState::InArrears,
        AccountState::InArrears => AccountState::Active,
        other => other,
    };
    tx.execute(
        "UPDATE accounts SET arrears_cents = ?2, state = ?3 WHERE card_id = ?1",
        params![card_to_sql(before.card_id), arrears_cents, state.as_str()],
    )?;
    let change = arrears_cents.saturating_sub(before.arrears_cents);
    history(tx, before.card_id, now, event, Some(before.state), state, change, cause)?;
    if owes != (before.arrears_cents > 0) {
        tx.execute(
            "INSERT INTO deny_list_changes (card_id, denied, at) VALUES (?1, ?2, ?3)",
            params![card_to_sql(before.card_id), owes, now],
        )?;
    }
    account(tx, before.card_id)
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
                refund_requested_at, created_at
         FROM accounts WHERE card_id = ?1",
        [card_to_sql(card_id)],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get::<_, String>(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        },
    )
    .optional()?
    .ok_or(AccountError::NotFound(card_id))
    .and_then(
        |(card, phone, payment_user_id, agreement_id, deposit_cents, state, arrears_cents, refund, created)| {
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
            })
        },
    )
}

/// The deny list as of its latest version: the cards on it, and that version.
pub fn deny_list(conn: &Connection) -> Result<(u64, Vec<u64>), StoreError> {
    let version: i64 = conn.query_row("SELECT coalesce(max(version), 0) FROM deny_list_changes", [], |r| r.get(0))?;
    let cards = conn
        .prepare_cached("SELECT card_id FROM accounts WHERE arrears_cents > 0 ORDER BY card_id")?
        .query_map([], |r| r.get::<_, i64>(0).map(card_from_sql))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((u64::try_from(version).unwrap_or(0), cards))
}

/// A payment of arrears the payer's bank declined: nothing changes but the
/// history, which numbers the next attempt (a declined key is final).
pub fn arrears_payment_declined(
    tx: &Transaction<'_>,
    card_id: u64,
    cause: &str,
    now: UnixMillis,
) -> Result<(), AccountError> {
    let state = account(tx, card_id)?.state;
    history(tx, card_id, now, "arrears_payment_declined", Some(state), state, 0, cause)?;
    Ok(())
}

/// How many payments of the card's arrears were decided (paid or
/// declined): numbers the next one, so a retry after a lost answer reuses
/// its key and a new attempt after a decline does not.
pub fn arrears_payments(conn: &Connection, card_id: u64) -> Result<u64, AccountError> {
    let count: i64 = conn.query_row(
        "SELECT count(*) FROM account_history
         WHERE card_id = ?1 AND event IN ('arrears_paid', 'arrears_payment_declined')",
        [card_to_sql(card_id)],
        |r| r.get(0),
    )?;
    Ok(count.unsigned_abs())
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
    pub amount_cents: i64,
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
                amount_cents: r.get(3)?,
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
    amount_cents: i64,
    cause: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO account_history (card_id, at, event, from_state, to_state, amount_cents, cause)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![card_to_sql(card_id), at, event, from.map(AccountState::as_str), to.as_str(), amount_cents, cause],
    )?;
    Ok(())
}

fn wrong_state(account: &Account, action: &'static str, needs: &'static str) -> AccountError {
    AccountError::WrongState { card_id: account.card_id, state: account.state.as_str(), action, needs }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::money::store::MoneyStore;

    #[test]
    fn arrears_deny_the_card_until_paid_and_every_change_is_in_the_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = MoneyStore::open(&dir.path().join("m.sqlite"), Duration::from_secs(1)).expect("store");
        let tx = store.transaction().expect("tx");
        register(&tx, u64::MAX, "+8613800000000", 1).expect("register");
        assert!(matches!(register(&tx, 2, "+8613800000000", 1), Err(AccountError::PhoneTaken(_))));
        assert!(matches!(add_arrears(&tx, 3, 1, "x", 1), Err(AccountError::NotFound(3))));
        activate(&tx, u64::MAX, "payer-1", "agr-1", 2_000, 2).expect("activate");
        assert!(matches!(activate(&tx, u64::MAX, "p", "a", 1, 2), Err(AccountError::WrongState { .. })));
        let owing = add_arrears(&tx, u64::MAX, 300, "charge 01 declined", 3).expect("arrears");
        assert_eq!((owing.state, owing.arrears_cents), (AccountState::InArrears, 300));
        add_arrears(&tx, u64::MAX, 200, "charge 02 declined", 4).expect("more arrears");
        assert_eq!(deny_list(&tx).expect("list"), (1, vec![u64::MAX]), "denied once, however many declines");
        let part = pay_arrears(&tx, u64::MAX, 100, "payment p-1", 5).expect("pay part");
        assert_eq!((part.state, part.arrears_cents), (AccountState::InArrears, 400), "still owes, still denied");
        let paid = pay_arrears(&tx, u64::MAX, 400, "payment p-2", 5).expect("pay");
        assert_eq!((paid.state, paid.arrears_cents), (AccountState::Active, 0));
        assert_eq!(deny_list(&tx).expect("list"), (2, vec![]));
        assert!(matches!(pay_arrears(&tx, u64::MAX, 1, "again", 6), Err(AccountError::WrongState { .. })));
        let events: Vec<(String, i64)> =
            account_history(&tx, u64::MAX).expect("history").into_iter().map(|h| (h.event, h.amount_cents)).collect();
        let expected = [
            ("registered", 0),
            ("activated", 2_000),
            ("arrears_added", 300),
            ("arrears_added", 200),
            ("arrears_paid", -100),
            ("arrears_paid", -400),
        ];
        assert_eq!(events, expected.map(|(e, a)| (e.to_string(), a)));
    }
}
