//! The money store on PostgreSQL: the schema of `migrations/postgres/`,
//! versioned as the SQLite store's is (a version names the same tables on
//! both engines), in a database an operator already runs.
//!
//! Through the `postgres` crate, the blocking client over `tokio-postgres`:
//! the money store's steps run on blocking threads (the pricer's own,
//! `spawn_blocking` for the dispatcher and the API), so one synchronous
//! interface can serve both engines, and the protocol, types and TLS
//! hooks are a maintained crate's, not ours. Its calls (connecting,
//! dropping a client or a transaction included) block on a runtime of
//! their own and panic on a tokio worker thread: the places that open
//! stores on an async task today (the server's start, the demo's
//! summary) must move to a blocking thread before they take a PostgreSQL
//! store. sqlx was the other candidate: async only, every call site
//! would change, and its checked queries want a database at build time.

use std::time::Duration;

use postgres::config::Host;
use postgres::{Client, Config, IsolationLevel, NoTls};

use crate::db::{Db, Postgres, Statements};
use crate::store::{MIGRATIONS, StoreError};

/// The PostgreSQL schema, version by version. A store starts at the
/// version of the binary that made it (version 14 holds every table up
/// to it); each later version is one migration here and one in
/// [`MIGRATIONS`], under the same number.
const PG_MIGRATIONS: &[(u32, &str)] = &[
    (14, include_str!("../migrations/postgres/0014_money.sql")),
    (15, include_str!("../migrations/postgres/0015_archive_batch_node.sql")),
    (16, include_str!("../migrations/postgres/0016_cursor_holder.sql")),
    (17, include_str!("../migrations/postgres/0017_archive_claimed_at.sql")),
];

/// How long the store's connections wait, so that a lost server or a
/// stuck peer costs a step a bounded time and then fails (to be tried
/// again as any failed step is), never minutes to hours
/// (`payments.money_store_*_ms`). Applied to a [`Config`] by
/// [`PgSessionLimits::apply`]; the URL may not set them too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgSessionLimits {
    /// Connecting: TCP, TLS-less startup and authentication together.
    pub connect_timeout: Duration,
    /// A server that stops answering (a cut network, a machine gone) is
    /// given up after about this long: TCP keepalives while the connection
    /// is idle, `tcp_user_timeout` while sent data goes unacknowledged.
    pub unreachable_after: Duration,
    /// The longest wait for a lock another connection holds (a card,
    /// the deny list): PostgreSQL's `lock_timeout`.
    pub lock_wait_max: Duration,
    /// A transaction left idle this long (its process paused or stuck)
    /// is ended by the server and its locks freed:
    /// `idle_in_transaction_session_timeout`. Zero: never (the store
    /// migration's one long transaction).
    pub idle_in_transaction_max: Duration,
}

/// Keepalive probes before a silent server is given up.
const KEEPALIVE_PROBES: u32 = 4;

/// The URL's parameters that [`PgSessionLimits`] sets: one place to set
/// each, so a URL naming one is refused.
pub const PARAMETERS_SET_BY_LIMITS: [&str; 6] = [
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "tcp_user_timeout",
];

/// The server settings [`PgSessionLimits`] passes in `options`.
pub const OPTIONS_SET_BY_LIMITS: [&str; 2] = ["lock_timeout", "idle_in_transaction_session_timeout"];

impl PgSessionLimits {
    /// Sets the limits on `config`, after whatever `options` it has.
    pub fn apply(&self, config: &mut Config) {
        // Idle a third of the time, then four probes over the other two
        // thirds: a silent server is given up after about the whole.
        config
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(self.unreachable_after / 3)
            .keepalives_interval(self.unreachable_after / (KEEPALIVE_PROBES * 3 / 2))
            .keepalives_retries(KEEPALIVE_PROBES)
            .tcp_user_timeout(self.unreachable_after);
        let ours = format!(
            "-c lock_timeout={} -c idle_in_transaction_session_timeout={}",
            self.lock_wait_max.as_millis(),
            self.idle_in_transaction_max.as_millis()
        );
        let options = match config.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
            _ => ours,
        };
        config.options(&options);
    }
}

/// The advisory lock a migration holds, so two servers starting at once
/// on one store do not both build it ("farestre" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6661_7265_7374_7265;

/// One connection to the money store on PostgreSQL, with the statements
/// it has prepared: they belong to the connection, and go with it.
pub struct PgStore {
    /// `None` only while it is dropped ([`Drop`] below).
    client: Option<Client>,
    statements: Statements,
    /// How to connect again after the connection ended.
    config: Config,
    /// Where it is, without the password, for messages.
    store: String,
}

impl PgStore {
    /// Connects to the store `config` names and brings its schema to this
    /// build's version; refuses a store a newer build migrated.
    pub fn open(config: &Config) -> Result<PgStore, StoreError> {
        let store = describe(config);
        let mut client =
            config.connect(NoTls).map_err(|source| StoreError::Connect { store: store.clone(), source })?;
        migrate(&mut client, &store)?;
        Ok(PgStore { client: Some(client), statements: Statements::default(), config: config.clone(), store })
    }

    /// A connection that ended (PostgreSQL restarted, a failover, a cut
    /// network) is replaced by a new one before the next statement, its
    /// prepared statements with it. When connecting fails too, the ended
    /// connection stays and the statement fails with why, to be tried
    /// again as any failed store step is: the pricer from its cursor, the
    /// dispatcher's claims after their lease, an API call by the app.
    fn reconnect_if_closed(&mut self) {
        if !self.client.as_ref().is_some_and(Client::is_closed) && !self.statements.connection_lost() {
            return;
        }
        match self.config.connect(NoTls) {
            Ok(client) => {
                self.client = Some(client);
                self.statements = Statements::default();
                crate::money_metrics::money_store_reconnected();
                tracing::info!(store = %self.store, "money store connection lost; connected again");
            }
            Err(error) => {
                tracing::warn!(store = %self.store, %error, "money store unreachable; the step is tried again later");
            }
        }
    }

    /// The raw client, for what the schema's own statements do not cover
    /// (tests, administration).
    pub fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("a PgStore holds its client until it is dropped")
    }

    /// The store as a [`Db`], each statement its own transaction.
    pub fn db(&mut self) -> Postgres<'_, Client> {
        self.reconnect_if_closed();
        let client = self.client.as_mut().expect("a PgStore holds its client until it is dropped");
        Postgres { client, statements: &mut self.statements }
    }

    /// Runs `work` in one transaction (read committed), committed when it
    /// returns `Ok`, rolled back otherwise.
    pub fn in_transaction<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&mut dyn Db) -> Result<T, E>,
    ) -> Result<T, E> {
        self.run(IsolationLevel::ReadCommitted, false, work)
    }

    /// Runs `work` on one snapshot of the store (repeatable read, read
    /// only): every statement sees what was committed before the first.
    pub fn in_snapshot<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&mut dyn Db) -> Result<T, E>,
    ) -> Result<T, E> {
        self.run(IsolationLevel::RepeatableRead, true, work)
    }

    fn run<T, E: From<StoreError>>(
        &mut self,
        isolation: IsolationLevel,
        read_only: bool,
        work: impl FnOnce(&mut dyn Db) -> Result<T, E>,
    ) -> Result<T, E> {
        self.reconnect_if_closed();
        let client = self.client.as_mut().expect("a PgStore holds its client until it is dropped");
        let statements = &mut self.statements;
        let mut tx = client
            .build_transaction()
            .isolation_level(isolation)
            .read_only(read_only)
            .start()
            .map_err(|e| statements.note(e))?;
        let value = work(&mut Postgres { client: &mut tx, statements })?;
        tx.commit().map_err(|e| statements.note(e))?;
        Ok(value)
    }

    /// The store's location, without the password.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The schema version the store is at.
    pub fn schema_version(&mut self) -> Result<u32, StoreError> {
        let version: i32 = self.client().query_one("SELECT version FROM farestream_schema", &[])?.get(0);
        version_from_sql(version)
    }
}

impl Drop for PgStore {
    /// The client says goodbye to the server on a runtime of its own,
    /// which panics on an async thread: a store that ends there (a server
    /// stopped from a task) is closed on a thread of its own instead.
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            let closing = std::thread::Builder::new().name("pg-close".into()).spawn(move || drop(client));
            if let Err(error) = closing {
                tracing::warn!(%error, "a money-store connection is left to the server to close");
            }
        }
    }
}

/// `postgres://USER@HOST:PORT/DATABASE` (a socket directory as the host),
/// never the password.
pub fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let database = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{database}")
}

/// Builds or upgrades the schema in one transaction under the migration
/// lock: a second server waits, then finds it done. Read committed
/// whatever the database's default: under repeatable read the snapshot
/// is taken before the lock is granted, and the waiter would not see the
/// first one's tables. A store already at this build's version is only
/// read, so a role without CREATE on the schema can open it.
fn migrate(client: &mut Client, store: &str) -> Result<(), StoreError> {
    let mut tx = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start()?;
    // Another server's migration may take longer than a card is ever
    // held: this one waits for it however long (`lock_timeout` is for
    // the money's own steps).
    tx.batch_execute("SET LOCAL lock_timeout = 0")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])?;
    let versioned: bool = tx.query_one("SELECT to_regclass('farestream_schema') IS NOT NULL", &[])?.get(0);
    if !versioned {
        tx.batch_execute(
            "CREATE TABLE farestream_schema (
                 one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
                 version INTEGER NOT NULL CHECK (version >= 0)
             )",
        )?;
    }
    let current = match tx.query_opt("SELECT version FROM farestream_schema", &[])? {
        Some(row) => version_from_sql(row.get(0))?,
        None => 0,
    };
    let known = known_version();
    if current > known {
        return Err(StoreError::TooNew { store: store.to_string(), found: current, known });
    }
    let mut migrated = current;
    for (version, sql) in PG_MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql)?;
        migrated = *version;
    }
    if migrated != current {
        let version = i32::try_from(migrated).map_err(|_| StoreError::Corrupt(format!("version {migrated}")))?;
        tx.execute(
            "INSERT INTO farestream_schema (version) VALUES ($1)
             ON CONFLICT (one) DO UPDATE SET version = excluded.version",
            &[&version],
        )?;
        tracing::info!(store, version = migrated, "money store migrated");
    }
    tx.commit()?;
    Ok(())
}

/// The version this build writes, the same on both engines.
fn known_version() -> u32 {
    let known = PG_MIGRATIONS.last().map_or(0, |(v, _)| *v);
    debug_assert_eq!(Some(known), MIGRATIONS.last().map(|(v, _)| *v), "both engines at one version");
    known
}

fn version_from_sql(version: i32) -> Result<u32, StoreError> {
    u32::try_from(version).map_err(|_| StoreError::Corrupt(format!("schema version {version}")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::db::Lock;
    use crate::store::{SqliteStore, store_path};
    use crate::test_cluster::TestCluster;

    /// PostgreSQL ends the store's connection (a restart, a failover): at
    /// most the step that learns of it fails, and the next runs on a new
    /// connection, its statements prepared again.
    #[test]
    fn a_connection_the_server_ended_is_made_again_before_the_next_step() {
        let Some(cluster) = TestCluster::shared() else { return };
        let config = cluster.new_database();
        let mut store = PgStore::open(&config).expect("open");
        let backend = |store: &mut PgStore| -> Result<i64, StoreError> {
            store.in_transaction(|db| db.query_one("SELECT CAST(pg_backend_pid() AS BIGINT)", &[])?.int(0))
        };
        let first = backend(&mut store).expect("the first connection");
        let mut admin = config.connect(NoTls).expect("an admin connection");
        admin.execute("SELECT pg_terminate_backend(CAST(CAST($1 AS BIGINT) AS INTEGER))", &[&first]).expect("ended");
        let after: Vec<Result<i64, StoreError>> = (0..2).map(|_| backend(&mut store)).collect();
        let second = match &after[..] {
            [Ok(second), Ok(again)] => (second == again).then_some(*second),
            [Err(_), Ok(second)] => Some(*second),
            _ => None,
        };
        let second = second.unwrap_or_else(|| panic!("at most the first step after fails: {after:?}"));
        assert_ne!(second, first, "a new connection");
    }

    fn limited(config: &Config, lock_wait_max: Duration, idle_in_transaction_max: Duration) -> PgStore {
        let mut config = config.clone();
        let limits = PgSessionLimits {
            connect_timeout: Duration::from_secs(10),
            unreachable_after: Duration::from_secs(30),
            lock_wait_max,
            idle_in_transaction_max,
        };
        limits.apply(&mut config);
        PgStore::open(&config).expect("a store with limits")
    }

    /// The limits at the ends of their config ranges
    /// (`payments.money_store_*_ms`) make a connection PostgreSQL accepts,
    /// with the server settings as given.
    #[test]
    fn limits_at_their_smallest_and_largest_connect() {
        let Some(cluster) = TestCluster::shared() else { return };
        let config = cluster.new_database();
        let ms = Duration::from_millis;
        let smallest = PgSessionLimits {
            connect_timeout: ms(100),
            unreachable_after: ms(6_000),
            lock_wait_max: ms(100),
            idle_in_transaction_max: ms(1_000),
        };
        let largest = PgSessionLimits {
            connect_timeout: ms(600_000),
            unreachable_after: ms(3_600_000),
            lock_wait_max: ms(3_600_000),
            idle_in_transaction_max: ms(3_600_000),
        };
        for (limits, shown) in [(smallest, ("100ms", "1s")), (largest, ("1h", "1h"))] {
            let mut config = config.clone();
            limits.apply(&mut config);
            let mut store = PgStore::open(&config).unwrap_or_else(|e| panic!("{limits:?}: {e}"));
            let settings =
                "SELECT current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout')";
            let row = store.in_transaction(|db| db.query_one(settings, &[])).expect("settings");
            assert_eq!((row.text(0).expect("lock"), row.text(1).expect("idle")), shown, "{limits:?}");
        }
    }

    /// A card held by a stuck peer costs a step `lock_wait_max`, then the
    /// step fails (lock_not_available) and the connection is still good.
    #[test]
    fn a_wait_for_a_card_another_connection_holds_ends_at_the_lock_wait_limit() {
        let Some(cluster) = TestCluster::shared() else { return };
        let config = cluster.new_database();
        let mut holder = PgStore::open(&config).expect("holder");
        let mut holding = holder.client().transaction().expect("a transaction");
        let mut statements = Statements::default();
        Postgres { client: &mut holding, statements: &mut statements }.lock(Lock::Card(7)).expect("held");

        let mut waiter = limited(&config, Duration::from_millis(200), Duration::from_secs(60));
        let started = std::time::Instant::now();
        let waited = waiter.in_transaction(|db| db.lock(Lock::Card(7)));
        let Err(StoreError::Postgres(error)) = waited else { panic!("the wait ended in an error: {waited:?}") };
        assert_eq!(error.code(), Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());
        assert!(waiter.in_transaction(|db| db.query_one("SELECT 1", &[])).is_ok(), "the connection goes on");
        holding.rollback().expect("released");
    }

    /// A transaction left idle past `idle_in_transaction_max` (its thread
    /// stuck) is ended by the server: its card is free for others, and its
    /// own store connects again at its next step.
    #[test]
    fn a_transaction_left_idle_is_ended_and_frees_its_card() {
        let Some(cluster) = TestCluster::shared() else { return };
        let config = cluster.new_database();
        let mut stuck = limited(&config, Duration::from_secs(30), Duration::from_millis(200));
        let ended = stuck.in_transaction(|db| {
            db.lock(Lock::Card(7))?;
            std::thread::sleep(Duration::from_millis(1_500));
            db.query_one("SELECT 1", &[]).map(drop)
        });
        assert!(ended.is_err(), "the idle transaction was ended: {ended:?}");
        let mut other = limited(&config, Duration::from_millis(500), Duration::from_secs(60));
        other.in_transaction(|db| db.lock(Lock::Card(7))).expect("the card is free");
        stuck.in_transaction(|db| db.query_one("SELECT 1", &[]).map(drop)).expect("connected again");
    }

    #[test]
    fn both_engines_are_at_one_version() {
        assert_eq!(PG_MIGRATIONS.last().map(|(v, _)| *v), MIGRATIONS.last().map(|(v, _)| *v));
        assert!(PG_MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0), "versions rise");
    }

    #[test]
    fn a_new_store_is_built_at_this_builds_version_and_opened_again_unchanged() {
        let Some(cluster) = TestCluster::shared() else { return };
        let config = cluster.new_database();
        let mut store = PgStore::open(&config).expect("a new store");
        assert_eq!(store.schema_version().expect("version"), known_version());
        store.client().execute("INSERT INTO log_cursors (reader, lsn) VALUES ('pricer', 7)", &[]).expect("a row");
        drop(store);
        let mut again = PgStore::open(&config).expect("reopened");
        let lsn: i64 = again.client().query_one("SELECT lsn FROM log_cursors", &[]).expect("kept").get(0);
        assert_eq!(lsn, 7, "opening again migrates nothing and keeps the rows");
    }

    #[test]
    fn a_store_a_newer_build_migrated_is_refused() {
        let Some(cluster) = TestCluster::shared() else { return };
        let config = cluster.new_database();
        let mut store = PgStore::open(&config).expect("a new store");
        store.client().execute("UPDATE farestream_schema SET version = 99", &[]).expect("a newer version");
        drop(store);
        match PgStore::open(&config) {
            Err(StoreError::TooNew { found: 99, known, store }) => {
                assert_eq!(known, known_version());
                assert!(store.starts_with("postgres://farestream@"), "{store}");
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("a store from a newer build was opened"),
        }
    }

    /// Two servers starting at once on one empty store: one builds it, the
    /// others wait on the migration lock and find it built, also where the
    /// database's transactions default to repeatable read.
    #[test]
    fn servers_opening_one_empty_store_at_once_build_it_once() {
        let Some(cluster) = TestCluster::shared() else { return };
        let config = cluster.new_database();
        let mut admin = config.connect(NoTls).expect("connect");
        admin
            .batch_execute("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = ''repeatable read''', current_database()); END $$")
            .expect("repeatable read by default");
        drop(admin);
        let barrier = std::sync::Barrier::new(4);
        let opened: Vec<Result<u32, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let mut store = PgStore::open(&config).map_err(|e| e.to_string())?;
                        store.schema_version().map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        assert_eq!(opened, vec![Ok(known_version()); 4]);
    }

    /// An operator's application role may read and write the tables but
    /// not create any: it opens a store already built.
    #[test]
    fn a_role_without_create_opens_a_built_store() {
        let Some(cluster) = TestCluster::shared() else { return };
        let database = cluster.new_database();
        drop(PgStore::open(&database).expect("built by the owner"));
        let mut admin = database.connect(NoTls).expect("connect");
        admin
            .batch_execute(
                "DO $$ BEGIN
                     IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'farestream_app') THEN
                         CREATE ROLE farestream_app LOGIN;
                     END IF;
                 END $$;
                 REVOKE CREATE ON SCHEMA public FROM PUBLIC;
                 GRANT USAGE ON SCHEMA public TO farestream_app;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO farestream_app;",
            )
            .expect("an application role");
        let mut app = database;
        app.user("farestream_app");
        let mut store = PgStore::open(&app).expect("opened without CREATE");
        assert_eq!(store.schema_version().expect("version"), known_version());
        assert!(store.client().batch_execute("CREATE TABLE t (i BIGINT)").is_err(), "the role cannot create");
    }

    /// Every table has the same columns on both engines, each with the
    /// same type family, nullability and place in the primary key.
    #[test]
    fn both_engines_have_the_same_tables_and_columns() {
        let Some(cluster) = TestCluster::shared() else { return };
        let mut pg = cluster.new_store();
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = SqliteStore::open(&store_path(dir.path()), std::time::Duration::from_secs(1)).expect("sqlite");

        type Columns = BTreeMap<String, BTreeMap<String, (String, bool, bool)>>;
        let mut on_sqlite = Columns::new();
        let conn = sqlite.connection();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .expect("tables")
            .query_map([], |r| r.get(0))
            .expect("tables")
            .collect::<Result<_, _>>()
            .expect("tables");
        for table in tables {
            let mut query = conn.prepare(&format!("PRAGMA table_info(\"{table}\")")).expect("columns");
            let columns = query
                .query_map([], |r| {
                    let (name, kind, not_null, key): (String, String, bool, i64) =
                        (r.get(1)?, r.get(2)?, r.get(3)?, r.get(5)?);
                    let family = match kind.as_str() {
                        "INTEGER" => "integer",
                        "TEXT" => "text",
                        "BLOB" => "bytes",
                        other => panic!("a SQLite type this test does not know: {other}"),
                    };
                    // SQLite's INTEGER PRIMARY KEY is NOT NULL without saying so.
                    Ok((name, (family.to_string(), not_null || key > 0, key > 0)))
                })
                .expect("columns")
                .collect::<Result<_, _>>()
                .expect("columns");
            on_sqlite.insert(table, columns);
        }

        let mut on_pg = Columns::new();
        let rows = pg
            .client()
            .query(
                "SELECT c.table_name::text, c.column_name::text, c.data_type::text, c.is_nullable = 'NO',
                        EXISTS (SELECT 1 FROM information_schema.table_constraints t
                                JOIN information_schema.key_column_usage k
                                  ON k.constraint_name = t.constraint_name AND k.table_name = t.table_name
                                WHERE t.table_name = c.table_name AND t.constraint_type = 'PRIMARY KEY'
                                  AND k.column_name = c.column_name)
                 FROM information_schema.columns c
                 WHERE c.table_schema = current_schema() AND c.table_name <> 'farestream_schema'",
                &[],
            )
            .expect("columns");
        for row in rows {
            let (table, column, kind, not_null, key): (String, String, String, bool, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let family = match kind.as_str() {
                "bigint" => "integer",
                "text" => "text",
                "bytea" => "bytes",
                other => panic!("{table}.{column} is {other}: every column is bigint, text or bytea"),
            };
            on_pg.entry(table).or_default().insert(column, (family.to_string(), not_null, key));
        }
        assert_eq!(on_pg, on_sqlite);
    }
}
