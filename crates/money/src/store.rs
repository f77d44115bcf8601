//! The money store's embedded engine: one SQLite file in the data directory, in WAL mode with
//! full synchronous commits, its schema built by the versioned migrations
//! in `crates/money/migrations/`. Each thread or task that writes opens
//! its own connection; SQLite serialises the writers and `busy_timeout`
//! makes a second writer wait instead of failing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use thiserror::Error;

use crate::db::{Db, Sqlite, Value};
use crate::money_metrics;
use farestream_core::clock::UnixMillis;

/// The schema, version by version. A migration is never edited once
/// shipped; a change is a new one.
pub(crate) const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../migrations/0001_money.sql")),
    (2, include_str!("../migrations/0002_api.sql")),
    (3, include_str!("../migrations/0003_charges_archive.sql")),
    (4, include_str!("../migrations/0004_charge_attempts.sql")),
    (5, include_str!("../migrations/0005_account_payments.sql")),
    (6, include_str!("../migrations/0006_otp_limits.sql")),
    (7, include_str!("../migrations/0007_charge_outcomes.sql")),
    (8, include_str!("../migrations/0008_deny_list_by_card.sql")),
    (9, include_str!("../migrations/0009_account_payment_sends.sql")),
    (10, include_str!("../migrations/0010_code_counter_blocks.sql")),
    (11, include_str!("../migrations/0011_code_blocks_key_order.sql")),
    (12, include_str!("../migrations/0012_code_blocks_per_key.sql")),
    (13, include_str!("../migrations/0013_taps_by_rider_day.sql")),
    (14, include_str!("../migrations/0014_charges_in_write_order.sql")),
    (15, include_str!("../migrations/0015_archive_batch_node.sql")),
    (16, include_str!("../migrations/0016_cursor_holder.sql")),
    (17, include_str!("../migrations/0017_archive_claimed_at.sql")),
];

/// How long the store's write-ahead log grows, in 4 KiB pages (64 MiB),
/// before a commit copies it into the database (SQLite's default is
/// 1 000). Pricing dirties pages at random: a longer log lets a page
/// written by many transactions be copied back once, and pricing a tap
/// cost a sixth less in `cargo bench --bench stages -- pricing`. The
/// checkpoint runs on whichever connection's commit crosses it, so now
/// and then a dispatcher or API commit copies up to 64 MiB.
const STORE_WAL_PAGES_BEFORE_CHECKPOINT: u32 = 16_384;

/// A money-store step run off the async threads ended without an answer.
/// A panic there is a broken invariant (an assertion where the money
/// moves): its transaction rolled back, nothing was written, and the step
/// is tried again as any failed step is, failing the same way until the
/// bug or the data is mended; so it is logged as an error and counted
/// (`farestream_money_step_panics_total`) for an operator to alert on.
pub fn step_ended(error: tokio::task::JoinError) -> StoreError {
    if error.is_panic() {
        money_metrics::money_step_panicked();
        tracing::error!(%error, "a money-store step panicked: an invariant is broken, nothing was written");
    }
    StoreError::Task(error.to_string())
}

/// Where the money store lives under a data directory.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("money.sqlite")
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("money store {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("money store {store}: {}", postgres_message(.source))]
    Connect { store: String, source: postgres::Error },
    #[error("money store {store} is at schema version {found}, newer than this build's {known}")]
    TooNew { store: String, found: u32, known: u32 },
    #[error("money store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("money store: {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("money store holds a value it never writes: {0}")]
    Corrupt(String),
    #[error("a money-store task stopped: {0}")]
    Task(String),
    /// Another server took the log cursor this one moves: it stops.
    #[error(
        "the log cursor {0:?} was taken by another server under this data dir's NODE_ID (a copy of this data dir?): \
         this server stops pricing its log"
    )]
    CursorTaken(String),
    /// The cursor is not where its holder last moved it: the store lost a
    /// committed transaction (a failover to a standby that lacked it).
    #[error(
        "the log cursor {reader:?} is at {found}, behind where this server's pricer committed it ({from}): the \
         money store lost committed transactions (a failover to a standby that lacked them?); this server stops, \
         and started again prices from the store's cursor"
    )]
    CursorBehind { reader: String, found: i64, from: u64 },
    /// The cursor moved between a starting server's read and its hold.
    #[error(
        "the log cursor {0:?} moved while this server started (a late commit of its last run, or another server under this data dir's NODE_ID)"
    )]
    CursorMovedAtStart(String),
}

/// PostgreSQL's own words for an error: the server's message, detail and
/// hint where it sent them (the error's own text is only "db error"), or
/// the client's with its cause ("error serializing parameter 0: text
/// bound to a int8 parameter").
fn postgres_message(error: &postgres::Error) -> String {
    match (error.as_db_error(), std::error::Error::source(error)) {
        (Some(db), _) => db.to_string(),
        (None, Some(cause)) => format!("{error}: {cause}"),
        (None, None) => error.to_string(),
    }
}

/// Statements a SQLite connection keeps prepared: the pricer alone runs
/// about 30 (each of its many-row statements in four sizes, `db::batch`);
/// rusqlite's default of 16 would prepare most of them again each time.
const STATEMENTS_CACHED_MAX: usize = 64;

/// One connection to the money store's SQLite file (the embedded engine
/// of [`crate::MoneyStore`]).
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if need be) the store at `path` and migrates it.
    pub fn open(path: &Path, busy_wait: Duration) -> Result<SqliteStore, StoreError> {
        let open = |source| StoreError::Open { path: path.to_path_buf(), source };
        let mut conn = Connection::open(path).map_err(open)?;
        conn.busy_timeout(busy_wait).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open)?;
        // FULL: a committed transaction (a charge in the outbox, an outcome)
        // survives a power cut, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL").map_err(open)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(open)?;
        conn.pragma_update(None, "wal_autocheckpoint", STORE_WAL_PAGES_BEFORE_CHECKPOINT).map_err(open)?;
        // A cached statement keeps its plan: without this SQLite parsed the
        // pricer's tap queries again at every step, for plans that never
        // changes (a quarter of pricing's CPU in `benches/stages.rs`).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(open)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED_MAX);
        migrate(&mut conn, path)?;
        Ok(SqliteStore { conn })
    }

    /// A write transaction that takes the write lock at its start
    /// (`BEGIN IMMEDIATE`): what it reads cannot change under it before it
    /// writes, so two writers never plan charges from the same stale view.
    pub fn transaction(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Gives this connection a page cache of `mib` MiB (SQLite's default
    /// is 2): the pricer's, whose rides touch index pages at random.
    pub fn set_page_cache_mib(&self, mib: u32) -> Result<(), StoreError> {
        // A negative cache_size is in KiB rather than pages.
        self.conn.pragma_update(None, "cache_size", -(i64::from(mib) * 1024))?;
        Ok(())
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The store as a [`Db`], each statement its own transaction, as
    /// `PgStore::db` is on PostgreSQL.
    pub fn db(&self) -> Sqlite<'_> {
        Sqlite(&self.conn)
    }

    /// Runs `work` in one write transaction ([`Self::transaction`]),
    /// committed when it returns `Ok`, rolled back otherwise, as
    /// `PgStore::in_transaction` is on PostgreSQL.
    pub fn in_transaction<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&mut dyn Db) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = self.transaction()?;
        let value = work(&mut Sqlite(&tx))?;
        tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0);
    if current > known {
        return Err(StoreError::TooNew { store: path.display().to_string(), found: current, known });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "money store migrated");
    }
    Ok(())
}

/// How far a reader of the write-ahead log has gone, if it has started.
pub fn log_cursor(db: &mut dyn Db, reader: &str) -> Result<Option<u64>, StoreError> {
    let row = db.query_opt("SELECT lsn FROM log_cursors WHERE reader = ?1", &[Value::Text(reader)])?;
    let lsn = row.map(|row| row.int(0)).transpose()?;
    lsn.map(|lsn| u64::try_from(lsn).map_err(|_| StoreError::Corrupt(format!("log cursor {lsn}")))).transpose()
}

/// Reads of a cursor a starting reader makes while another holder (a
/// commit of the last run that landed late, an old owner still pricing)
/// keeps moving it.
pub const CURSOR_HOLD_TRIES: u32 = 3;

/// Random bits a reader takes its cursor with when its server starts
/// ([`hold_log_cursor`]): only the holder moves it.
pub type CursorHolder = [u8; 16];

/// Fresh random bits for a start's hold on a cursor.
pub fn fresh_cursor_holder() -> Result<CursorHolder, StoreError> {
    crate::api::random_bytes()
}

/// The record a cursor was last moved past: where it starts in the log,
/// and the first 16 bytes of its payload's SHA-256. A starting server
/// finds the same record in its own log, or the cursor is another log's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastRecord {
    pub lsn: u64,
    pub digest: [u8; 16],
}

impl LastRecord {
    pub fn of(lsn: u64, payload: &[u8]) -> LastRecord {
        let sha = ring::digest::digest(&ring::digest::SHA256, payload);
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&sha.as_ref()[..16]);
        LastRecord { lsn, digest }
    }
}

/// The record `reader`'s cursor was last moved past; `None` when it has
/// not moved since it was made (or was moved before version 16).
pub fn last_record(db: &mut dyn Db, reader: &str) -> Result<Option<LastRecord>, StoreError> {
    let row = db.query_opt(
        "SELECT last_record_lsn, last_record_digest FROM log_cursors WHERE reader = ?1",
        &[Value::Text(reader)],
    )?;
    let Some(row) = row else { return Ok(None) };
    let (Some(lsn), Some(digest)) = (row.opt_int(0)?, row.opt_bytes(1)?) else { return Ok(None) };
    let lsn = u64::try_from(lsn).map_err(|_| StoreError::Corrupt(format!("last record at {lsn}")))?;
    let digest =
        digest.try_into().map_err(|_| StoreError::Corrupt(format!("a record digest of {} bytes", digest.len())))?;
    Ok(Some(LastRecord { lsn, digest }))
}

fn sql_lsn(lsn: u64) -> Result<i64, StoreError> {
    i64::try_from(lsn).map_err(|_| StoreError::Corrupt(format!("log position {lsn} beyond i64")))
}

/// Moves a reader's cursor from `from` (where its holder last committed
/// it) to `lsn`, past `last`, in the transaction that wrote what it read;
/// only its `holder` may. A retried move whose first answer was lost (it
/// committed) finds the cursor between `from` and `lsn`, and goes on; a
/// cursor another server took is [`StoreError::CursorTaken`], one behind
/// `from` [`StoreError::CursorBehind`] (pricing on would skip what the
/// store lost).
pub fn set_log_cursor(
    tx: &mut dyn Db,
    reader: &str,
    holder: &CursorHolder,
    (from, lsn): (u64, u64),
    last: LastRecord,
) -> Result<(), StoreError> {
    let moved = tx.execute(
        "UPDATE log_cursors SET lsn = ?3, last_record_lsn = ?4, last_record_digest = ?5
         WHERE reader = ?1 AND holder = ?2 AND lsn BETWEEN ?6 AND ?3",
        &[
            Value::Text(reader),
            Value::Bytes(holder),
            Value::Int(sql_lsn(lsn)?),
            Value::Int(sql_lsn(last.lsn)?),
            Value::Bytes(&last.digest),
            Value::Int(sql_lsn(from)?),
        ],
    )?;
    if moved == 1 {
        return Ok(());
    }
    // A cursor deleted under a running server (retired by hand) is
    // taken from it as much as one another holder took.
    Err(cursor_refusal(tx, (reader, holder), from)?.unwrap_or_else(|| StoreError::CursorTaken(reader.to_string())))
}

/// Why `holder` may not act on `reader`'s cursor, which it left at `from`
/// or past: another holder took it, or it stands behind `from` (the store
/// lost commits); `None` when there is no such cursor.
fn cursor_refusal(
    tx: &mut dyn Db,
    (reader, holder): (&str, &CursorHolder),
    from: u64,
) -> Result<Option<StoreError>, StoreError> {
    let row = tx.query_opt("SELECT holder, lsn FROM log_cursors WHERE reader = ?1", &[Value::Text(reader)])?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(match row.opt_bytes(0)? == Some(&holder[..]) {
        true => StoreError::CursorBehind { reader: reader.to_string(), found: row.int(1)?, from },
        false => StoreError::CursorTaken(reader.to_string()),
    }))
}

/// Takes `reader`'s cursor for `holder` as its server starts: makes it at
/// `lsn` if there is none; one that exists must still be at `lsn`, where
/// the server read it and found this log vouching for it (the cursor is
/// never moved back, and one moved since by a server under the same
/// `NODE_ID` is [`StoreError::CursorTaken`]). A server still pricing
/// with it under another holder stops at its next move.
pub fn hold_log_cursor(tx: &mut dyn Db, reader: &str, holder: &CursorHolder, lsn: u64) -> Result<(), StoreError> {
    let held = tx.execute(
        "INSERT INTO log_cursors (reader, lsn, holder) VALUES (?1, ?2, ?3)
         ON CONFLICT (reader) DO UPDATE SET holder = excluded.holder WHERE log_cursors.lsn = excluded.lsn",
        &[Value::Text(reader), Value::Int(sql_lsn(lsn)?), Value::Bytes(holder)],
    )?;
    match held {
        1 => Ok(()),
        _ => Err(StoreError::CursorMovedAtStart(reader.to_string())),
    }
}

/// Starts `reader`'s cursor again at `lsn` for `holder`, from `from`
/// where the caller read it, forgetting the record it was last moved past
/// and what its pricer promised refunds: a cluster partition's cursor
/// that its claimed stream does not vouch for (the streams were made
/// again) prices the stream from its start (pricing is by scan id, so
/// none is charged twice). A cursor moved since it was read is
/// [`StoreError::CursorMovedAtStart`].
pub fn restart_log_cursor(
    tx: &mut dyn Db,
    (reader, holder): (&str, &CursorHolder),
    from: u64,
    lsn: u64,
) -> Result<(), StoreError> {
    let restarted = tx.execute(
        "UPDATE log_cursors SET lsn = ?3, holder = ?2, last_record_lsn = NULL, last_record_digest = NULL,
                priced_received_before = NULL
         WHERE reader = ?1 AND lsn = ?4",
        &[Value::Text(reader), Value::Bytes(holder), Value::Int(sql_lsn(lsn)?), Value::Int(sql_lsn(from)?)],
    )?;
    match restarted {
        1 => Ok(()),
        _ => Err(StoreError::CursorMovedAtStart(reader.to_string())),
    }
}

/// Every reader with a cursor, by name.
pub fn log_cursor_readers(db: &mut dyn Db) -> Result<Vec<String>, StoreError> {
    let rows = db.query("SELECT reader FROM log_cursors ORDER BY reader", &[])?;
    rows.iter().map(|row| Ok(row.text(0)?.to_string())).collect()
}

/// Deletes `reader`'s cursor: a reader that will never read again (a
/// cluster partition past the count) no longer holds refunds.
pub fn retire_log_cursor(tx: &mut dyn Db, reader: &str) -> Result<(), StoreError> {
    tx.execute("DELETE FROM log_cursors WHERE reader = ?1", &[Value::Text(reader)])?;
    Ok(())
}

/// Makes `reader`'s cursor at `lsn`, held by nobody, unless it exists:
/// a cluster's partition pricers are counted by the refund pass
/// ([`others_priced_received_before`]) from the moment their node
/// starts, not from their first hold, so a refund waits for a partition
/// whose pricer has not yet run.
pub fn make_log_cursor(tx: &mut dyn Db, reader: &str, lsn: u64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO log_cursors (reader, lsn) VALUES (?1, ?2) ON CONFLICT (reader) DO NOTHING",
        &[Value::Text(reader), Value::Int(sql_lsn(lsn)?)],
    )?;
    Ok(())
}

/// Records that every ride `reader`'s server received before `at` is
/// priced (its refund pass says so after flushing its pricer to `priced`);
/// only the cursor's `holder` may: a server whose cursor another took (a
/// copy under its NODE_ID) has no say over what that one has priced. And
/// only while the cursor stands at `priced` or past it: a store that lost
/// the pricing commits behind it (a failover) holds rides nobody has
/// priced again yet ([`StoreError::CursorBehind`]).
pub fn set_priced_received_before(
    tx: &mut dyn Db,
    (reader, holder): (&str, &CursorHolder),
    priced: u64,
    at: UnixMillis,
) -> Result<(), StoreError> {
    let changed = tx.execute(
        "UPDATE log_cursors SET priced_received_before = ?2 WHERE reader = ?1 AND holder = ?3 AND lsn >= ?4",
        &[Value::Text(reader), Value::Int(at), Value::Bytes(holder), Value::Int(sql_lsn(priced)?)],
    )?;
    if changed == 1 {
        return Ok(());
    }
    let refusal = cursor_refusal(tx, (reader, holder), priced)?;
    Err(refusal.unwrap_or_else(|| StoreError::Corrupt(format!("no log cursor {reader:?} to record its pricing in"))))
}

/// The earliest moment before which every other pricer sharing the store
/// has priced everything its server received (`i64::MIN` when one has not
/// said yet); `None` when `reader` is the only one.
pub fn others_priced_received_before(db: &mut dyn Db, reader: &str) -> Result<Option<UnixMillis>, StoreError> {
    let row = db.query_one(
        "SELECT min(coalesce(priced_received_before, CAST(?2 AS BIGINT))) FROM log_cursors
         WHERE reader LIKE 'pricer%' AND reader <> ?1",
        &[Value::Text(reader), Value::Int(i64::MIN)],
    )?;
    row.opt_int(0)
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::*;
    use crate::test_cluster::on_both_stores;

    /// A reader's cursor on both engines: none before it starts, then
    /// each position it is moved to, up to the largest a log has
    /// (i64::MAX); a position beyond that is refused, not wrapped.
    #[test]
    fn a_log_cursor_holds_every_position_on_both_engines() {
        fn cursors(db: &mut dyn Db, engine: &str) {
            assert_eq!(log_cursor(db, "pricer").expect("read"), None, "{engine}");
            assert_eq!(last_record(db, "pricer").expect("read"), None, "{engine}");
            hold_log_cursor(db, "pricer", &HOLDER_A, 0).expect("made");
            assert_eq!(last_record(db, "pricer").expect("read"), None, "{engine}: made, never moved");
            let mut from = 0;
            for lsn in [0, 1, i64::MAX as u64] {
                let last = LastRecord::of(lsn.saturating_sub(1), &lsn.to_be_bytes());
                set_log_cursor(db, "pricer", &HOLDER_A, (from, lsn), last).expect("moved");
                assert_eq!(log_cursor(db, "pricer").expect("read"), Some(lsn), "{engine}");
                assert_eq!(last_record(db, "pricer").expect("read"), Some(last), "{engine}");
                from = lsn;
            }
            let past = i64::MAX as u64 + 1;
            let top = i64::MAX as u64;
            assert!(set_log_cursor(db, "pricer", &HOLDER_A, (top, past), LastRecord::of(0, b"")).is_err(), "{engine}");
            assert!(
                set_log_cursor(db, "pricer", &HOLDER_A, (top, top), LastRecord::of(past, b"")).is_err(),
                "{engine}"
            );
            assert!(set_log_cursor(db, "pricer", &HOLDER_A, (past, top), LastRecord::of(0, b"")).is_err(), "{engine}");
            assert_eq!(log_cursor(db, "other").expect("read"), None, "{engine}: one cursor a reader");
        }
        on_both_stores(cursors);
    }

    /// A last record the store holds damaged (a digest of another length,
    /// a negative place) is refused as corrupt, not read as a place.
    #[test]
    fn a_damaged_last_record_is_refused_not_read() {
        fn damaged(db: &mut dyn Db, engine: &str) {
            hold_log_cursor(db, "pricer", &HOLDER_A, 0).expect("made");
            for (lsn, digest) in [(1, &[0u8; 15][..]), (1, &[0u8; 17][..]), (1, &[][..]), (-1, &[0u8; 16][..])] {
                db.execute(
                    "UPDATE log_cursors SET last_record_lsn = ?1, last_record_digest = ?2",
                    &[Value::Int(lsn), Value::Bytes(digest)],
                )
                .expect("damaged");
                let read = last_record(db, "pricer");
                assert!(matches!(read, Err(StoreError::Corrupt(_))), "{engine}: {lsn} {}: {read:?}", digest.len());
            }
        }
        on_both_stores(damaged);
    }

    const HOLDER_A: CursorHolder = [0xa; 16];
    const HOLDER_B: CursorHolder = [0xb; 16];

    /// Only the cursor's holder moves it: a move retried after its answer
    /// was lost (it had committed) goes on, also when the retry reaches
    /// further; a server that started under the same NODE_ID takes the
    /// cursor, and the first stops at its next move. A start never moves a
    /// cursor (a copy starting beside its original would move the
    /// original's back), and one moved since the starting server read it
    /// is not taken.
    #[test]
    fn only_its_holder_moves_a_cursor_and_a_start_moves_none() {
        fn holders(db: &mut dyn Db, engine: &str) {
            hold_log_cursor(db, "pricer@a", &HOLDER_A, 7).expect("new");
            let at_9 = LastRecord::of(8, b"record");
            set_log_cursor(db, "pricer@a", &HOLDER_A, (7, 9), at_9).expect("a moves it");
            set_log_cursor(db, "pricer@a", &HOLDER_A, (7, 9), at_9).expect("a's retry after a lost answer goes on");
            let at_10 = LastRecord::of(9, b"more");
            set_log_cursor(db, "pricer@a", &HOLDER_A, (7, 10), at_10).expect("a retry that reaches further");
            let moved_since = hold_log_cursor(db, "pricer@a", &HOLDER_B, 7);
            assert!(matches!(moved_since, Err(StoreError::CursorMovedAtStart(_))), "{engine}: {moved_since:?}");
            assert_eq!(log_cursor(db, "pricer@a").expect("read"), Some(10), "{engine}: never moved back");
            hold_log_cursor(db, "pricer@a", &HOLDER_B, 10).expect("b takes it where it is");
            let taken = set_log_cursor(db, "pricer@a", &HOLDER_A, (10, 12), LastRecord::of(10, b"a's"));
            assert!(matches!(taken, Err(StoreError::CursorTaken(_))), "{engine}: {taken:?}");
            let at_11 = LastRecord::of(10, b"b's");
            set_log_cursor(db, "pricer@a", &HOLDER_B, (10, 11), at_11).expect("b moves it");
            assert_eq!(
                (log_cursor(db, "pricer@a").expect("read"), last_record(db, "pricer@a").expect("read")),
                (Some(11), Some(at_11)),
                "{engine}"
            );
            assert!(hold_log_cursor(db, "pricer@b", &HOLDER_A, i64::MAX as u64 + 1).is_err(), "{engine}");
            hold_log_cursor(db, "pricer@b", &HOLDER_A, i64::MAX as u64).expect("the last position");
        }
        on_both_stores(holders);
    }

    /// A store that lost a committed move (a failover to a standby that
    /// lacked it) has the cursor behind where its holder moved it from:
    /// no promise is made for refunds over the rides lost with it, and the
    /// next move is refused, not made over them.
    #[test]
    fn a_cursor_behind_where_its_holder_left_it_is_not_moved_on() {
        fn lost(db: &mut dyn Db, engine: &str) {
            hold_log_cursor(db, "pricer@a", &HOLDER_A, 0).expect("new");
            set_log_cursor(db, "pricer@a", &HOLDER_A, (0, 10), LastRecord::of(5, b"ten")).expect("moved");
            db.execute("UPDATE log_cursors SET lsn = 0 WHERE reader = 'pricer@a'", &[]).expect("lost");
            let promise = set_priced_received_before(db, ("pricer@a", &HOLDER_A), 10, 5);
            assert!(
                matches!(promise, Err(StoreError::CursorBehind { found: 0, from: 10, .. })),
                "{engine}: {promise:?}"
            );
            let behind = set_log_cursor(db, "pricer@a", &HOLDER_A, (10, 20), LastRecord::of(10, b"twenty"));
            assert!(matches!(behind, Err(StoreError::CursorBehind { found: 0, from: 10, .. })), "{engine}: {behind:?}");
            assert_eq!(log_cursor(db, "pricer@a").expect("read"), Some(0), "{engine}: not moved over the loss");
        }
        on_both_stores(lost);
    }

    /// Each pricer's promise at the extremes of time; the others' earliest,
    /// a pricer that has not said yet holding everyone back; only the
    /// cursor's holder promises (a server whose cursor a copy took speaks
    /// for none of the copy's rides).
    #[test]
    fn the_earliest_promise_of_the_other_pricers_holds_refunds_back() {
        fn promises(db: &mut dyn Db, engine: &str) {
            hold_log_cursor(db, "pricer@a", &HOLDER_A, 1).expect("a");
            assert_eq!(others_priced_received_before(db, "pricer@a").expect("read"), None, "{engine}: alone");
            let no_cursor = set_priced_received_before(db, ("pricer@b", &HOLDER_B), 1, 5);
            assert!(matches!(no_cursor, Err(StoreError::Corrupt(_))), "{engine}: no cursor, no promise");
            hold_log_cursor(db, "pricer@b", &HOLDER_B, 1).expect("b");
            assert_eq!(others_priced_received_before(db, "pricer@a").expect("read"), Some(i64::MIN), "{engine}");
            for at in [i64::MIN, 0, i64::MAX] {
                set_priced_received_before(db, ("pricer@b", &HOLDER_B), 1, at).expect("b promises");
                assert_eq!(others_priced_received_before(db, "pricer@a").expect("read"), Some(at), "{engine}");
            }
            let not_its_own = set_priced_received_before(db, ("pricer@b", &HOLDER_A), 1, 3);
            assert!(matches!(not_its_own, Err(StoreError::CursorTaken(_))), "{engine}: {not_its_own:?}");
            hold_log_cursor(db, "pricer@c", &HOLDER_A, 1).expect("c");
            set_priced_received_before(db, ("pricer@c", &HOLDER_A), 0, 7).expect("c promises, priced past 0");
            assert_eq!(others_priced_received_before(db, "pricer@a").expect("read"), Some(7), "{engine}: earliest");
            set_priced_received_before(db, ("pricer@a", &HOLDER_A), 1, i64::MAX).expect("a promises");
            set_log_cursor(db, "pricer@b", &HOLDER_B, (1, 2), LastRecord::of(1, b"")).expect("b moves on");
            let kept = others_priced_received_before(db, "pricer@c").expect("read");
            assert_eq!(kept, Some(i64::MAX), "{engine}: b's promise kept as its cursor moves");
        }
        on_both_stores(promises);
    }

    /// A store built by the migrations up to `version` only, as an older
    /// build left it, in a new directory (kept while the test holds it).
    fn store_at_version(version: u32) -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(dir.path());
        let conn = Connection::open(&path).expect("open");
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= version) {
            conn.execute_batch(sql).expect("old migration");
            conn.pragma_update(None, "user_version", v).expect("version");
        }
        (dir, path, conn)
    }

    /// Version 7 rebuilds `charges` for two new outcomes: every row and
    /// column of a version-6 store survives it.
    #[test]
    fn the_charges_rebuild_keeps_every_row_and_takes_the_new_outcomes() {
        let (_dir, path, conn) = store_at_version(6);
        let insert = "INSERT INTO charges (charge_id, card_id, service_date, kind, amount_cents, currency, scan_ids,
                       created_at, outcome, next_attempt_at, attempts, claims, archive_batch, gateway_txn_id)
                      VALUES (?1, 7, 20000, 'ride', ?2, 'CNY', x'', 1, ?3, 0, 2, 3, 4, 'txn-1')";
        conn.execute(insert, params![vec![1u8; 16], 300, "succeeded"]).expect("a version-6 charge");
        assert!(conn.execute(insert, params![vec![2u8; 16], -5, "netted"]).is_err(), "version 6 refuses it");
        drop(conn);
        let store = SqliteStore::open(&path, Duration::from_secs(1)).expect("migrate");
        let conn = store.connection();
        let kept: (i64, String, u32, u32, i64, String) = conn
            .query_row(
                "SELECT amount_cents, outcome, attempts, claims, archive_batch, gateway_txn_id FROM charges",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .expect("the row");
        assert_eq!(kept, (300, "succeeded".into(), 2, 3, 4, "txn-1".into()));
        for (n, outcome) in [(2u8, "netted"), (3, "no_account")] {
            conn.execute(insert, params![vec![n; 16], -5, outcome]).expect("a new outcome");
        }
        assert!(conn.execute(insert, params![vec![9u8; 16], 1, "lost"]).is_err(), "an unknown outcome is refused");
        let indexes: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'charges'", [], |r| {
                r.get(0)
            })
            .expect("indexes");
        assert!(indexes >= 3, "the indexes are back: {indexes}");
    }

    /// Version 13 keys taps by rider-day: every tap of a version-12 store
    /// survives it, and a tap logged twice is still held once.
    #[test]
    fn the_taps_rebuild_keeps_every_tap_and_still_holds_a_scan_once() {
        let (_dir, path, conn) = store_at_version(12);
        let insert =
            "INSERT OR IGNORE INTO taps (scan_id, card_id, service_date, scanned_at, tap_kind, route_id, stop_id)
                      VALUES (?1, ?2, 20000, ?3, 'entry', 'metro', 'station-01')";
        for (n, card) in [(1u8, 7i64), (2, 7), (3, 8)] {
            conn.execute(insert, params![vec![n; 16], card, i64::from(n) * 1_000]).expect("a version-12 tap");
        }
        drop(conn);
        let store = SqliteStore::open(&path, Duration::from_secs(1)).expect("migrate");
        let conn = store.connection();
        let taps = |card: i64| -> Vec<(Vec<u8>, i64)> {
            conn.prepare("SELECT scan_id, scanned_at FROM taps WHERE card_id = ?1 AND service_date = 20000")
                .expect("query")
                .query_map([card], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("taps")
        };
        assert_eq!(taps(7), [(vec![1u8; 16], 1_000), (vec![2u8; 16], 2_000)]);
        assert_eq!(taps(8), [(vec![3u8; 16], 3_000)]);
        assert_eq!(conn.execute(insert, params![vec![1u8; 16], 7, 1_000]).expect("again"), 0, "held once");
        let index: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'taps_by_rider_day'", [], |r| r.get(0))
            .expect("indexes");
        assert_eq!(index, 0, "the key is the rider-day: no second b-tree to write");
    }

    /// Version 14 stores charges in write order: every row and column of
    /// a version-13 store survives it, in the order they were written,
    /// new charges come after them, and an id is still held once.
    #[test]
    fn the_charges_in_write_order_keep_every_row_and_their_ids_unique() {
        let (_dir, path, conn) = store_at_version(13);
        let insert = "INSERT INTO charges (charge_id, card_id, service_date, kind, ride_key, amount_cents, currency,
                       scan_ids, created_at, outcome, next_attempt_at, attempts, claims, archive_batch, decided_at,
                       gateway_txn_id, last_error, archived_at, lease_until, first_attempt_at)
                      VALUES (?1, 7, 20000, 'ride', x'0102', ?2, 'CNY', x'0303', ?3, 'succeeded', 5, 2, 3, 4, 6,
                              'txn-1', 'none', 8, 9, 10)";
        // Written at 10, 30, 20: ids and write order disagree.
        for (n, created_at) in [(9u8, 10i64), (1, 30), (5, 20)] {
            conn.execute(insert, params![vec![n; 16], i64::from(n) * 100, created_at]).expect("a version-13 charge");
        }
        drop(conn);
        let store = SqliteStore::open(&path, Duration::from_secs(1)).expect("migrate");
        let conn = store.connection();
        conn.execute(insert, params![vec![0u8; 16], 1, 40]).expect("a new charge");
        type Row =
            (Vec<u8>, i64, i64, Vec<u8>, Vec<u8>, String, i64, i64, i64, i64, i64, String, String, i64, i64, i64);
        let rows: Vec<Row> = conn
            .prepare(
                "SELECT charge_id, amount_cents, created_at, ride_key, scan_ids, outcome, next_attempt_at, attempts,
                        claims, archive_batch, decided_at, gateway_txn_id, last_error, archived_at, lease_until,
                        first_attempt_at
                 FROM charges ORDER BY charge_seq",
            )
            .expect("query")
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                    r.get(13)?,
                    r.get(14)?,
                    r.get(15)?,
                ))
            })
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("charges");
        let order: Vec<(u8, i64, i64)> = rows.iter().map(|r| (r.0[0], r.1, r.2)).collect();
        assert_eq!(order, [(9, 900, 10), (5, 500, 20), (1, 100, 30), (0, 1, 40)], "in write order, the new one last");
        let kept = &rows[0];
        assert_eq!((&kept.3[..], &kept.4[..], kept.5.as_str()), (&[1u8, 2][..], &[3u8, 3][..], "succeeded"));
        assert_eq!((kept.6, kept.7, kept.8, kept.9, kept.10), (5, 2, 3, 4, 6));
        assert_eq!((kept.11.as_str(), kept.12.as_str(), kept.13, kept.14, kept.15), ("txn-1", "none", 8, 9, 10));
        assert!(conn.execute(insert, params![vec![5u8; 16], 7, 50]).is_err(), "an id is held once");
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'charges'
                   AND name IN ('charges_by_rider_day', 'charges_due', 'charges_by_archive_batch')",
                [],
                |r| r.get(0),
            )
            .expect("indexes");
        assert_eq!(indexes, 3, "the indexes are back");
    }

    /// The pricer's page cache is what it is given, in MiB; others keep
    /// SQLite's default.
    #[test]
    fn a_page_cache_is_set_in_mib() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&store_path(dir.path()), Duration::from_secs(1)).expect("open");
        let cache_kib = |store: &SqliteStore| -> i64 {
            store.connection().pragma_query_value(None, "cache_size", |r| r.get(0)).expect("cache_size")
        };
        assert_eq!(cache_kib(&store), -2_000, "SQLite's default, 2 000 KiB");
        for mib in [1, 64, 65_536] {
            store.set_page_cache_mib(mib).expect("set");
            assert_eq!(cache_kib(&store), -i64::from(mib) * 1_024);
        }
    }

    #[test]
    fn a_store_migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(dir.path());
        let mut store = SqliteStore::open(&path, Duration::from_secs(1)).expect("open");
        let tx = store.transaction().expect("tx");
        hold_log_cursor(&mut Sqlite(&tx), "pricer", &HOLDER_A, 42).expect("cursor");
        tx.commit().expect("commit");
        drop(store);
        let store = SqliteStore::open(&path, Duration::from_secs(1)).expect("reopen");
        assert_eq!(log_cursor(&mut store.db(), "pricer").expect("read"), Some(42), "kept across a reopen");
        store.connection().pragma_update(None, "user_version", 99).expect("bump");
        drop(store);
        assert!(matches!(SqliteStore::open(&path, Duration::from_secs(1)), Err(StoreError::TooNew { found: 99, .. })));
    }
}
