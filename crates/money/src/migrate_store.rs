//! `farestream money migrate --to postgres://…`: a city that started on
//! the embedded store moves its money to PostgreSQL. The server is stopped
//! (the caller holds the data dir's lock); every table of the SQLite store
//! is copied row for row into an empty PostgreSQL store at the same
//! schema version and read back and checked, table by table, as a
//! multiset of rows (count and an order-free digest sum: collations
//! differ, so neither side's order is trusted), in one transaction that
//! commits only if every table matches.
//!
//! Two things change on the way, because PostgreSQL is a store several
//! servers may share: the pricer's cursor `pricer` becomes
//! `pricer@NODE_ID` of the data dir it came from, and each identity
//! column's sequence is set past the largest value copied.

use std::collections::BTreeSet;

use crate::db::{Cell, Db, Engine, Lock, Row, Value};
use crate::pg_store::PgStore;
use crate::pricer::{READER, reader_name};
use crate::store::{SqliteStore, StoreError};
use farestream_ingest::node_id::NodeId;

/// The table every other one refers to: copied first.
const PARENT_TABLE: &str = "accounts";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the PostgreSQL store is not empty ({table} holds {rows} rows): migrate into a new database")]
    NotEmpty { table: String, rows: i64 },
    #[error("the two stores hold different tables: SQLite {sqlite:?}, PostgreSQL {postgres:?}")]
    Tables { sqlite: Vec<String>, postgres: Vec<String> },
    #[error("{table} read back from PostgreSQL differs: {sqlite_rows} rows in SQLite, {postgres_rows} there")]
    Differs { table: String, sqlite_rows: u64, postgres_rows: u64 },
}

/// What was copied: each table and its rows, in the order copied.
pub type Copied = Vec<(String, u64)>;

/// Copies `from` into the empty `to`, then checks every table; `node`:
/// the data dir the SQLite store belongs to. `progress` is told each
/// table as it is copied.
pub fn copy_store(
    from: &mut SqliteStore,
    to: &mut PgStore,
    node: &NodeId,
    progress: &mut dyn FnMut(&str),
) -> Result<Copied, MigrateError> {
    let tables = same_tables(from, to)?;
    let pricer = reader_name(Engine::Postgres, node);
    to.in_transaction(|tx| copy_into(from, tx, &tables, &pricer, progress))
}

/// [`copy_store`]'s transaction on the PostgreSQL store: copies `tables`,
/// renames the pricer's cursor to `pricer`, and checks every table.
fn copy_into(
    from: &mut SqliteStore,
    tx: &mut dyn Db,
    tables: &[String],
    pricer: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Copied, MigrateError> {
    // Before any table is found empty: two copies at once would each find
    // every table empty.
    tx.lock(Lock::StoreCopy)?;
    let mut copied = Vec::new();
    for table in tables {
        progress(table);
        let rows = copy_table(&mut from.db(), tx, table)?;
        copied.push((table.clone(), rows));
    }
    tx.execute("UPDATE log_cursors SET reader = ?2 WHERE reader = ?1", &[Value::Text(READER), Value::Text(pricer)])?;
    restart_identities(tx)?;
    // Checked before it commits: a store that differs is never left for a
    // server to open.
    for table in tables {
        let columns = columns(&mut from.db(), table)?;
        let renamed = |row: &mut Row| {
            if table == "log_cursors" && row.0.first() == Some(&Cell::Text(READER.to_string())) {
                row.0[0] = Cell::Text(pricer.to_string());
            }
        };
        let sqlite = RowsDigest::of(&mut from.db(), table, &columns, renamed)?;
        let postgres = RowsDigest::of(tx, table, &columns, |_| {})?;
        if sqlite != postgres {
            return Err(MigrateError::Differs {
                table: table.clone(),
                sqlite_rows: sqlite.rows,
                postgres_rows: postgres.rows,
            });
        }
    }
    Ok(copied)
}

/// Both stores' tables, `accounts` first; the same on both, or an error.
fn same_tables(from: &mut SqliteStore, to: &mut PgStore) -> Result<Vec<String>, MigrateError> {
    let names = |rows: Vec<Row>| -> Result<BTreeSet<String>, StoreError> {
        rows.iter().map(|r| r.text(0).map(str::to_string)).collect()
    };
    let sqlite = names(
        from.db().query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'", &[])?,
    )?;
    let postgres = names(to.db().query(
        "SELECT table_name FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name <> 'farestream_schema'",
        &[],
    )?)?;
    if sqlite != postgres || !sqlite.contains(PARENT_TABLE) {
        return Err(MigrateError::Tables {
            sqlite: sqlite.into_iter().collect(),
            postgres: postgres.into_iter().collect(),
        });
    }
    let rest = sqlite.into_iter().filter(|t| t != PARENT_TABLE);
    Ok(std::iter::once(PARENT_TABLE.to_string()).chain(rest).collect())
}

/// A table's columns as SQLite has them (PostgreSQL's are the same).
fn columns(from: &mut dyn Db, table: &str) -> Result<Vec<String>, StoreError> {
    // Table names come from the schema, never from input.
    from.query(&format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"), &[])?
        .iter()
        .map(|r| r.text(0).map(str::to_string))
        .collect()
}

fn copy_table(from: &mut dyn Db, to: &mut dyn Db, table: &str) -> Result<u64, MigrateError> {
    let rows = to.query_one(&format!("SELECT count(*) FROM {table}"), &[])?.int(0)?;
    if rows != 0 {
        return Err(MigrateError::NotEmpty { table: table.to_string(), rows });
    }
    let columns = columns(from, table)?;
    let placeholders: Vec<String> = (1..=columns.len()).map(|n| format!("?{n}")).collect();
    let insert = format!("INSERT INTO {table} ({}) VALUES ({})", columns.join(", "), placeholders.join(", "));
    let select = format!("SELECT {} FROM {table}", columns.join(", "));
    let mut copied = 0;
    from.query_each(&select, &[], &mut |row| {
        let values: Vec<Value<'_>> = row.0.iter().map(Cell::as_value).collect();
        to.execute(&insert, &values)?;
        copied += 1;
        Ok(())
    })?;
    Ok(copied)
}

/// Sets each identity column's sequence past the largest value copied:
/// the rows came with their own, and the next one written gets the next.
fn restart_identities(tx: &mut dyn Db) -> Result<(), StoreError> {
    let identities = tx.query(
        "SELECT table_name, column_name FROM information_schema.columns
         WHERE table_schema = current_schema() AND is_identity = 'YES'",
        &[],
    )?;
    for row in identities {
        let (table, column) = (row.text(0)?, row.text(1)?);
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence(?1, ?2), (SELECT coalesce(max({column}), 0) + 1 FROM {table}), false)"
            ),
            &[Value::Text(table), Value::Text(column)],
        )?;
    }
    Ok(())
}

/// A table's rows as a multiset: how many, and the wrapping sum of each
/// row's SHA-256 (of its cells, each tagged and length-prefixed).
#[derive(Debug, PartialEq, Eq)]
struct RowsDigest {
    rows: u64,
    sum: u128,
}

impl RowsDigest {
    fn of(
        db: &mut dyn Db,
        table: &str,
        columns: &[String],
        mut adjust: impl FnMut(&mut Row),
    ) -> Result<RowsDigest, StoreError> {
        let mut digest = RowsDigest { rows: 0, sum: 0 };
        db.query_each(&format!("SELECT {} FROM {table}", columns.join(", ")), &[], &mut |mut row| {
            adjust(&mut row);
            let mut context = ring::digest::Context::new(&ring::digest::SHA256);
            for cell in &row.0 {
                let int;
                let (tag, bytes): (u8, &[u8]) = match cell {
                    Cell::Int(value) => {
                        int = value.to_be_bytes();
                        (1, &int)
                    }
                    Cell::Text(text) => (2, text.as_bytes()),
                    Cell::Bytes(bytes) => (3, bytes),
                    Cell::Null => (4, &[][..]),
                };
                context.update(&[tag]);
                context.update(&(bytes.len() as u64).to_be_bytes());
                context.update(bytes);
            }
            let hash = context.finish();
            let mut first = [0u8; 16];
            first.copy_from_slice(&hash.as_ref()[..16]);
            digest.rows += 1;
            digest.sum = digest.sum.wrapping_add(u128::from_be_bytes(first));
            Ok(())
        })?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::store_path;
    use crate::test_cluster::{TestCluster, second_waits_for_first};

    /// Two copies into one empty store at the same moment: the second
    /// waits for the first, then finds the store not empty and copies
    /// nothing (without the lock both found every table empty).
    #[test]
    fn a_second_copy_at_the_same_moment_waits_then_is_refused() {
        let Some(cluster) = TestCluster::shared() else { return };
        let config = cluster.new_database();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut from = SqliteStore::open(&store_path(dir.path()), Duration::from_secs(1)).expect("sqlite");
        crate::accounts::register(&mut from.db(), 7, "+15550000007", 1_800_000_000_000).expect("an account");
        let tables = same_tables(&mut from, &mut PgStore::open(&config).expect("postgres")).expect("tables");
        let location = crate::StoreLocation::Postgres(Box::new(config));
        let (first, second) = second_waits_for_first(
            &location,
            |tx| {
                tx.lock(Lock::StoreCopy)?;
                tx.execute(
                    "INSERT INTO accounts (card_id, phone, state, created_at) VALUES (9, '+1', 'registered', 1)",
                    &[],
                )
                .map(drop)
                .map_err(MigrateError::from)
            },
            |_| Ok(()),
            |tx| copy_into(&mut from, tx, &tables, "pricer@second", &mut |_| {}),
        );
        first.expect("the first copy commits");
        assert!(
            matches!(second, Err(MigrateError::NotEmpty { ref table, rows: 1 }) if table == "accounts"),
            "{second:?}"
        );
    }
}
