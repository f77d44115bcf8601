//! [`Db`] on PostgreSQL: a client or a transaction, its statements
//! prepared once a connection, placeholders rewritten then
//! ([`postgres_placeholders`]), and kept ([`Statements`]): a statement
//! sent as text is parsed, planned and described on every call, a round
//! trip more each time.

use std::collections::HashMap;
use std::error::Error;

use bytes::BytesMut;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use postgres::{GenericClient, Statement};

use super::{Cell, Db, Row, Value, batch, postgres_placeholders};
use crate::store::StoreError;

type BoxedError = Box<dyn Error + Sync + Send>;

/// A connection's prepared statements, by their text as written. Kept
/// by the store beside its connection (`PgStore`): a statement prepared
/// on one connection does not exist on another.
#[derive(Default)]
pub struct Statements(HashMap<String, Statement>, ConnectionLost);

/// Set when a statement failed in a way that ends the connection (the
/// server shut it or went away): the store connects again before its next
/// step, rather than learning it from one more failure.
#[derive(Default)]
pub(crate) struct ConnectionLost(pub(crate) bool);

impl Statements {
    pub(crate) fn connection_lost(&self) -> bool {
        self.1.0
    }

    /// Notes `error` if it ended the connection; gives it back.
    pub(crate) fn note(&mut self, error: postgres::Error) -> StoreError {
        if ends_connection(&error) {
            self.1.0 = true;
        }
        StoreError::from(error)
    }
}

/// An error after which the connection is gone: closed, an I/O failure, or
/// the server's FATAL or PANIC (shut down, terminated, crashed).
fn ends_connection(error: &postgres::Error) -> bool {
    // The parsed severity: the text one is in the server's language.
    let fatal = error.as_db_error().is_some_and(|db| {
        matches!(db.parsed_severity(), Some(postgres::error::Severity::Fatal | postgres::error::Severity::Panic))
    });
    let io = std::error::Error::source(error).is_some_and(|cause| cause.is::<std::io::Error>());
    error.is_closed() || fatal || io
}

/// A PostgreSQL client, or a transaction on one, as a [`Db`], with the
/// connection's prepared statements; made by `PgStore`.
pub struct Postgres<'a, C: GenericClient> {
    pub(crate) client: &'a mut C,
    pub(crate) statements: &'a mut Statements,
}

impl<C: GenericClient> Postgres<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(&postgres_placeholders(sql)).map_err(|e| self.statements.note(e))?;
        self.statements.0.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

fn is_text(ty: &Type) -> bool {
    matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME)
}

impl ToSql for Value<'_> {
    /// The value as the parameter's type, which the server decided from
    /// the statement: an integer into a text parameter is an error naming
    /// both, not a value the server reads otherwise.
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxedError> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(value) => match *ty {
                Type::INT8 => value.to_sql(ty, out),
                // PostgreSQL types a bare placeholder in arithmetic
                // (`$1 + 1000`, `COALESCE($1, 0)`) as a 32-bit integer,
                // which a time in milliseconds or a card id overflows:
                // refused for every value, so a test with small numbers
                // fails too.
                Type::INT4 | Type::INT2 => {
                    Err(format!("an integer bound to a {ty} parameter: write CAST(?N AS BIGINT)").into())
                }
                _ => Err(format!("an integer bound to a {ty} parameter").into()),
            },
            Value::Text(value) if is_text(ty) => value.to_sql(ty, out),
            Value::Bytes(value) if *ty == Type::BYTEA => value.to_sql(ty, out),
            Value::Text(_) => Err(format!("text bound to a {ty} parameter").into()),
            Value::Bytes(_) => Err(format!("bytes bound to a {ty} parameter").into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BYTEA) || is_text(ty)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Cell, BoxedError> {
        Ok(match *ty {
            Type::INT8 => Cell::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Cell::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Cell::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Cell::Int(bool::from_sql(ty, raw)?.into()),
            Type::BYTEA => Cell::Bytes(Vec::<u8>::from_sql(ty, raw)?),
            _ => Cell::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Cell, BoxedError> {
        Ok(Cell::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL | Type::BYTEA) || is_text(ty)
    }
}

fn row(row: &postgres::Row) -> Result<Row, StoreError> {
    (0..row.len()).map(|i| row.try_get::<_, Cell>(i).map_err(StoreError::from)).collect::<Result<_, _>>().map(Row)
}

impl<C: GenericClient> Db for Postgres<'_, C> {
    fn engine(&self) -> super::Engine {
        super::Engine::Postgres
    }

    fn lock(&mut self, lock: super::Lock) -> Result<(), StoreError> {
        let (space, key) = lock.keys();
        // CAST twice: a bare `$1` here would be typed int4, which Value
        // refuses (a time or a card id does not fit one).
        self.execute(
            "SELECT pg_advisory_xact_lock(CAST(CAST(?1 AS BIGINT) AS INTEGER), CAST(CAST(?2 AS BIGINT) AS INTEGER))",
            &[Value::Int(space), Value::Int(key)],
        )?;
        Ok(())
    }

    /// In runs of many keys a statement ([`batch`]): the `VALUES` list
    /// is scanned in its order, and each row's lock taken as it comes.
    fn lock_all(&mut self, locks: &[super::Lock]) -> Result<(), StoreError> {
        for run in batch::runs(locks) {
            let sql = format!(
                "SELECT pg_advisory_xact_lock(CAST(space AS INTEGER), CAST(thing AS INTEGER))
                 FROM (VALUES {}) AS keys (space, thing)",
                batch::values(run.len(), 2, batch::Typed::Integers)
            );
            let keys: Vec<Value<'_>> = run
                .iter()
                .flat_map(|lock| {
                    let (space, thing) = lock.keys();
                    [Value::Int(space), Value::Int(thing)]
                })
                .collect();
            self.execute(&sql, &keys)?;
        }
        Ok(())
    }

    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.client.execute(&statement, &params).map_err(|e| self.statements.note(e))
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let statement = self.statement(sql)?;
        let mut rows = self.client.query_raw(&statement, params.iter()).map_err(|e| self.statements.note(e))?;
        while let Some(found) = rows.next().map_err(|e| self.statements.note(e))? {
            each(row(&found)?)?;
        }
        Ok(())
    }
}
