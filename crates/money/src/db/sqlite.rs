//! [`Db`] on SQLite: a connection or a transaction (which is one), its
//! statements as written, cached by rusqlite's statement cache.

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::{Cell, Db, Row, Value};
use crate::store::StoreError;

/// A SQLite connection, or a transaction on one, as a [`Db`].
pub struct Sqlite<'a>(pub &'a rusqlite::Connection);

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Int(value) => ValueRef::Integer(value),
            Value::Text(value) => ValueRef::Text(value.as_bytes()),
            Value::Bytes(value) => ValueRef::Blob(value),
            Value::Null => ValueRef::Null,
        }))
    }
}

fn cell(value: ValueRef<'_>) -> Result<Cell, StoreError> {
    Ok(match value {
        ValueRef::Integer(value) => Cell::Int(value),
        ValueRef::Text(bytes) => Cell::Text(
            std::str::from_utf8(bytes)
                .map_err(|e| StoreError::Corrupt(format!("text that is not UTF-8: {e}")))?
                .to_string(),
        ),
        ValueRef::Blob(bytes) => Cell::Bytes(bytes.to_vec()),
        ValueRef::Null => Cell::Null,
        ValueRef::Real(value) => return Err(StoreError::Corrupt(format!("a real number ({value}) in the store"))),
    })
}

impl Db for Sqlite<'_> {
    fn engine(&self) -> super::Engine {
        super::Engine::Sqlite
    }

    /// Nothing to take: the write transaction holds the whole store.
    fn lock(&mut self, _: super::Lock) -> Result<(), StoreError> {
        Ok(())
    }

    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        let mut statement = self.0.prepare_cached(sql)?;
        let changed = statement.execute(rusqlite::params_from_iter(params))?;
        Ok(changed as u64)
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut statement = self.0.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            let cells = (0..columns).map(|i| cell(row.get_ref(i)?)).collect::<Result<Vec<_>, StoreError>>()?;
            each(Row(cells))?;
        }
        Ok(())
    }
}
