//! One way to run the money store's SQL on either engine: a statement is
//! written once, with numbered placeholders in SQLite's style (`?1`, `?2`,
//! in any order, any number of times), with the values both engines
//! hold: 64-bit integers, text, bytes and null (every column of the
//! schema is one of those, `migrations/postgres/0014_money.sql` says
//! why). [`Db`] runs it on a SQLite transaction or connection
//! (`sqlite.rs`, as written) or on PostgreSQL's (`postgres.rs`, the
//! placeholders rewritten to `$N` once, when the connection prepares the
//! statement). Rewriting for SQLite instead cost the pricer 6.6 % of its
//! time, on every statement run.
//!
//! Rows come back owned, as [`Row`]s of [`Cell`]s, read by column with a
//! named expectation (`int`, `text`, `bytes`, or their `opt_` forms); a
//! cell of another kind is [`StoreError::Corrupt`], never a panic.

pub mod batch;
mod postgres;
mod sqlite;

pub use postgres::{Postgres, Statements};
pub use sqlite::Sqlite;

use std::collections::BTreeMap;

use crate::store::StoreError;

/// A value bound to a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
    Null,
}

impl From<i64> for Value<'_> {
    fn from(value: i64) -> Self {
        Value::Int(value)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Value::Text(value)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(value: &'a [u8]) -> Self {
        Value::Bytes(value)
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Null,
}

impl Cell {
    /// The cell as a value to bind (a row copied from one store to another).
    pub fn as_value(&self) -> Value<'_> {
        match self {
            Cell::Int(value) => Value::Int(*value),
            Cell::Text(value) => Value::Text(value),
            Cell::Bytes(value) => Value::Bytes(value),
            Cell::Null => Value::Null,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Cell::Int(_) => "an integer",
            Cell::Text(_) => "text",
            Cell::Bytes(_) => "bytes",
            Cell::Null => "null",
        }
    }
}

/// One row of a query's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, column: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(column)
            .ok_or_else(|| StoreError::Corrupt(format!("a row of {} columns has no {column}", self.0.len())))
    }

    fn unexpected<T>(&self, column: usize, expected: &str) -> Result<T, StoreError> {
        let found = self.cell(column)?.kind();
        Err(StoreError::Corrupt(format!("column {column} holds {found} where {expected} was expected")))
    }

    pub fn int(&self, column: usize) -> Result<i64, StoreError> {
        match self.cell(column)? {
            Cell::Int(value) => Ok(*value),
            _ => self.unexpected(column, "an integer"),
        }
    }

    pub fn opt_int(&self, column: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            _ => self.int(column).map(Some),
        }
    }

    pub fn text(&self, column: usize) -> Result<&str, StoreError> {
        match self.cell(column)? {
            Cell::Text(value) => Ok(value),
            _ => self.unexpected(column, "text"),
        }
    }

    pub fn opt_text(&self, column: usize) -> Result<Option<&str>, StoreError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            _ => self.text(column).map(Some),
        }
    }

    pub fn bytes(&self, column: usize) -> Result<&[u8], StoreError> {
        match self.cell(column)? {
            Cell::Bytes(value) => Ok(value),
            _ => self.unexpected(column, "bytes"),
        }
    }

    pub fn opt_bytes(&self, column: usize) -> Result<Option<&[u8]>, StoreError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            _ => self.bytes(column).map(Some),
        }
    }
}

/// What a transaction holds until it ends, so that another process's
/// transaction on the same thing waits for it. On SQLite a write
/// transaction holds the whole store from its start (`BEGIN IMMEDIATE`),
/// so there is nothing more to take; on PostgreSQL (read committed)
/// each is a transaction-scoped advisory lock, taken before the rows it
/// guards are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// A card's account: state, arrears and deposit are read, decided
    /// on, then written.
    Card(u64),
    /// The deny list's next version: one writer at a time keeps the
    /// versions gapless and in commit order.
    DenyList,
    /// One-time codes: each check-and-send and each code check reads
    /// the limits, then counts against them. Rare by design (sends are
    /// limited per minute), so one lock for all of them.
    Otp,
    /// The charges archive's claims: batch numbers are given in order,
    /// and a charge goes to one node's batch.
    ChargesArchive,
    /// A copy of an embedded store into this one (`money migrate`): a
    /// second copy at the same moment waits, then finds it not empty.
    StoreCopy,
}

impl Lock {
    /// PostgreSQL's two-key advisory lock for it: a namespace, then the
    /// thing (a card's 64 bits folded into 32; two cards sharing a key
    /// only wait for each other).
    pub(crate) fn keys(self) -> (i64, i64) {
        match self {
            Lock::Card(card_id) => (1, i64::from((card_id ^ (card_id >> 32)) as u32 as i32)),
            Lock::DenyList => (2, 0),
            Lock::Otp => (3, 0),
            Lock::ChargesArchive => (4, 0),
            Lock::StoreCopy => (5, 0),
        }
    }
}

/// Takes the lock of each card in `cards`, in the order of the lock keys,
/// which every transaction that locks more than one card follows (the
/// pricer, a dispatcher's claim): in any other order two transactions may
/// each hold a card the other waits for, and PostgreSQL aborts one. Keys,
/// not cards, are sorted: two cards may share a key (64 bits folded into
/// 32). A no-op on SQLite, whose write transaction holds the whole store.
pub fn lock_cards(tx: &mut dyn Db, cards: impl Iterator<Item = u64>) -> Result<(), StoreError> {
    if tx.engine() == Engine::Sqlite {
        // Nothing to take; skip the sort on the hot path.
        return Ok(());
    }
    // One card for each key: a key is taken once.
    let locks: BTreeMap<(i64, i64), Lock> = cards.map(|card| (Lock::Card(card).keys(), Lock::Card(card))).collect();
    tx.lock_all(&locks.into_values().collect::<Vec<_>>())
}

/// Which engine a [`Db`] runs on, for the few statements whose SQL
/// differs (row locks that SQLite has no syntax for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Runs the money store's statements on one engine, inside whatever
/// transaction the implementor is.
pub trait Db {
    fn engine(&self) -> Engine;

    /// Takes `lock` until the transaction ends (see [`Lock`]).
    fn lock(&mut self, lock: Lock) -> Result<(), StoreError>;

    /// Takes each of `locks` in the order given (see [`lock_cards`]).
    fn lock_all(&mut self, locks: &[Lock]) -> Result<(), StoreError> {
        locks.iter().try_for_each(|lock| self.lock(*lock))
    }

    /// Runs a statement that returns no rows; the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError>;

    /// Runs a query and hands each row to `each`, in the order the query
    /// gives; `each` may stop it with an error.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Every row of a query.
    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut rows = Vec::new();
        self.query_each(sql, params, &mut |row| {
            rows.push(row);
            Ok(())
        })?;
        Ok(rows)
    }

    /// The one row a query gives, or none; more than one is an error.
    fn query_opt(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Option<Row>, StoreError> {
        let mut rows = self.query(sql, params)?;
        match rows.len() {
            0 | 1 => Ok(rows.pop()),
            n => Err(StoreError::Corrupt(format!("{n} rows where at most one was expected: {sql}"))),
        }
    }

    /// The one row a query always gives (an aggregate's).
    fn query_one(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?.ok_or_else(|| StoreError::Corrupt(format!("no row where one was expected: {sql}")))
    }
}

/// A statement in SQLite's numbered placeholders (`?1`) as PostgreSQL's
/// (`$1`). The money store's SQL holds no `?` in a string literal and
/// uses none of PostgreSQL's `?` operators.
pub(crate) fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
