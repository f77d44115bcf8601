//! The money store on whichever engine the config names: the embedded
//! SQLite file in the data directory (the default) or a PostgreSQL
//! database (`payments.money_store = "postgres://…"`). Every money
//! operation takes a [`Db`] and runs the same on both; this is where a
//! connection is opened and a transaction begun.
//!
//! Each thread that writes opens its own store. PostgreSQL's client
//! blocks on a runtime of its own, so a store is opened, used and
//! dropped on a blocking thread, never on a tokio worker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::db::{Db, Engine, Lock, Postgres, Sqlite, Value};
use crate::pg_store::{OPTIONS_SET_BY_LIMITS, PARAMETERS_SET_BY_LIMITS, PgSessionLimits, PgStore, describe};
use crate::store::{SqliteStore, StoreError};
use farestream_ingest::config::secret::{read_secret_file, strip_one_line_end};

/// What `payments.money_store` says for the embedded store.
pub const EMBEDDED_STORE: &str = "sqlite";

/// The environment variable holding the PostgreSQL store's password
/// (or `payments.money_store_password_file`; never both, never in the URL).
pub const STORE_PASSWORD_ENV: &str = "FARESTREAM_MONEY_STORE_PASSWORD";

/// The longest password read from a file or the environment, in bytes.
const STORE_PASSWORD_BYTES_MAX: usize = 1024;

/// Where the money store is.
#[derive(Clone)]
pub enum StoreLocation {
    /// The SQLite file (`DATA_DIR/money.sqlite`).
    Sqlite(PathBuf),
    /// A PostgreSQL database, the password already read in.
    Postgres(Box<postgres::Config>),
}

impl std::fmt::Debug for StoreLocation {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("payments.money_store = {0:?} is neither \"sqlite\" nor a postgres:// URL")]
    Unknown(String),
    #[error("payments.money_store is not a PostgreSQL URL: {0}")]
    Url(String),
    #[error(
        "payments.money_store holds a password: put it in payments.money_store_password_file or {STORE_PASSWORD_ENV}, \
         where it is not shown with the config"
    )]
    PasswordInUrl,
    #[error("the money store's password is set both in {STORE_PASSWORD_ENV} and in a file: set one")]
    PasswordTwice,
    #[error("the money store's password file {path}: {reason}")]
    PasswordFile { path: String, reason: String },
    #[error("the money store's password is empty, longer than {STORE_PASSWORD_BYTES_MAX} bytes or not UTF-8")]
    BadPassword,
    #[error("a money-store password is set, but payments.money_store is the embedded SQLite store")]
    PasswordWithoutServer,
    #[error(
        "payments.money_store sets {0}, which farestream sets from payments.money_store_*_ms \
         (docs/operations.md): take it out of the URL"
    )]
    SetByLimits(String),
}

impl StoreLocation {
    /// Reads `payments.money_store`: `"sqlite"` is the file under
    /// `data_dir`, a `postgres://` or `postgresql://` URL a PostgreSQL
    /// database, whose password comes from `password_file` (a path; empty:
    /// none) or `password_env` (the variable's value, if set).
    pub fn parse(
        text: &str,
        data_dir: &Path,
        password_file: &str,
        password_env: Option<Vec<u8>>,
    ) -> Result<StoreLocation, LocationError> {
        let password = read_password(password_file, password_env)?;
        if text == EMBEDDED_STORE {
            return match password {
                None => Ok(StoreLocation::Sqlite(crate::store::store_path(data_dir))),
                Some(_) => Err(LocationError::PasswordWithoutServer),
            };
        }
        if !StoreLocation::names_postgres(text) {
            return Err(LocationError::Unknown(text.to_string()));
        }
        refuse_limits_in_url(text)?;
        let mut config: postgres::Config =
            text.parse().map_err(|e: postgres::Error| LocationError::Url(e.to_string()))?;
        if config.get_password().is_some() {
            return Err(LocationError::PasswordInUrl);
        }
        if let Some(password) = password {
            config.password(password);
        }
        Ok(StoreLocation::Postgres(Box::new(config)))
    }

    /// Whether `payments.money_store` names a PostgreSQL database (a
    /// `postgres://` or `postgresql://` URL; `parse` checks the rest).
    pub fn names_postgres(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// The store as a person reads it, never the password.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => path.display().to_string(),
            StoreLocation::Postgres(config) => describe(config),
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            StoreLocation::Sqlite(_) => Engine::Sqlite,
            StoreLocation::Postgres(_) => Engine::Postgres,
        }
    }

    /// The same store, its connections bounded by `limits` (PostgreSQL;
    /// the SQLite file has its own busy wait).
    pub fn with_session_limits(mut self, limits: &PgSessionLimits) -> StoreLocation {
        if let StoreLocation::Postgres(config) = &mut self {
            limits.apply(config);
        }
        self
    }
}

/// Refuses a URL whose query sets what [`PgSessionLimits`] sets: the
/// config is the one place for each (a URL's value would be overridden,
/// or would override, unseen).
fn refuse_limits_in_url(text: &str) -> Result<(), LocationError> {
    let Some((_, query)) = text.split_once('?') else { return Ok(()) };
    for (key, value) in query.split('&').map(|pair| pair.split_once('=').unwrap_or((pair, ""))) {
        if PARAMETERS_SET_BY_LIMITS.contains(&key) {
            return Err(LocationError::SetByLimits(key.to_string()));
        }
        if key == "options"
            && let Some(setting) = OPTIONS_SET_BY_LIMITS.iter().find(|setting| value.contains(*setting))
        {
            return Err(LocationError::SetByLimits(format!("options {setting}")));
        }
    }
    Ok(())
}

fn read_password(file: &str, env: Option<Vec<u8>>) -> Result<Option<String>, LocationError> {
    let bytes = match (file.is_empty(), env) {
        (true, None) => return Ok(None),
        (false, Some(_)) => return Err(LocationError::PasswordTwice),
        (true, Some(mut bytes)) => {
            strip_one_line_end(&mut bytes);
            bytes
        }
        (false, None) => read_secret_file(Path::new(file), STORE_PASSWORD_BYTES_MAX)
            .map_err(|e| LocationError::PasswordFile { path: file.to_string(), reason: e.to_string() })?,
    };
    if bytes.is_empty() || bytes.len() > STORE_PASSWORD_BYTES_MAX {
        return Err(LocationError::BadPassword);
    }
    String::from_utf8(bytes).map(Some).map_err(|_| LocationError::BadPassword)
}

/// One connection to the money store, on either engine.
pub enum MoneyStore {
    Sqlite(SqliteStore),
    /// Boxed: its client and prepared statements are thrice a SQLite
    /// connection's handle, and a store is opened once per thread.
    Postgres(Box<PgStore>),
}

impl MoneyStore {
    /// Opens (creating if need be) the store and brings its schema to this
    /// build's version; a store a newer build migrated is refused.
    /// `busy_wait`: how long a SQLite writer waits for another's
    /// transaction (PostgreSQL's writers wait on row and advisory locks).
    /// Blocking: call it off the async threads.
    pub fn open(location: &StoreLocation, busy_wait: Duration) -> Result<MoneyStore, StoreError> {
        Ok(match location {
            StoreLocation::Sqlite(path) => MoneyStore::Sqlite(SqliteStore::open(path, busy_wait)?),
            StoreLocation::Postgres(config) => MoneyStore::Postgres(Box::new(PgStore::open(config)?)),
        })
    }

    pub fn engine(&self) -> Engine {
        match self {
            MoneyStore::Sqlite(_) => Engine::Sqlite,
            MoneyStore::Postgres(_) => Engine::Postgres,
        }
    }

    /// The store as a [`Db`], each statement its own transaction.
    pub fn db(&mut self) -> StoreDb<'_> {
        match self {
            MoneyStore::Sqlite(store) => StoreDb::Sqlite(store.db()),
            MoneyStore::Postgres(store) => StoreDb::Postgres(store.db()),
        }
    }

    /// Runs `work` in one write transaction, committed when it returns
    /// `Ok`, rolled back otherwise. On SQLite it holds the write lock
    /// from its start; on PostgreSQL it is read committed, and what it
    /// reads to decide on is guarded by a [`Lock`] or a row lock.
    pub fn in_transaction<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&mut dyn Db) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            MoneyStore::Sqlite(store) => store.in_transaction(work),
            MoneyStore::Postgres(store) => store.in_transaction(work),
        }
    }

    /// Runs `work` on one consistent view of the store, as of its first
    /// statement, writing nothing: what the settlement reads together.
    pub fn in_snapshot<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&mut dyn Db) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            // A SQLite transaction reads one snapshot of the file.
            MoneyStore::Sqlite(store) => store.in_transaction(work),
            MoneyStore::Postgres(store) => store.in_snapshot(work),
        }
    }

    /// Gives this connection a page cache of `mib` MiB (the pricer's):
    /// SQLite's own; PostgreSQL's cache is the server's.
    pub fn set_page_cache_mib(&self, mib: u32) -> Result<(), StoreError> {
        match self {
            MoneyStore::Sqlite(store) => store.set_page_cache_mib(mib),
            MoneyStore::Postgres(_) => Ok(()),
        }
    }
}

/// [`MoneyStore::db`]: the store's connection as a [`Db`].
pub enum StoreDb<'a> {
    Sqlite(Sqlite<'a>),
    Postgres(Postgres<'a, postgres::Client>),
}

impl Db for StoreDb<'_> {
    fn engine(&self) -> Engine {
        match self {
            StoreDb::Sqlite(db) => db.engine(),
            StoreDb::Postgres(db) => db.engine(),
        }
    }

    fn lock(&mut self, lock: Lock) -> Result<(), StoreError> {
        match self {
            StoreDb::Sqlite(db) => db.lock(lock),
            StoreDb::Postgres(db) => db.lock(lock),
        }
    }

    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        match self {
            StoreDb::Sqlite(db) => db.execute(sql, params),
            StoreDb::Postgres(db) => db.execute(sql, params),
        }
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(crate::db::Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match self {
            StoreDb::Sqlite(db) => db.query_each(sql, params, each),
            StoreDb::Postgres(db) => db.query_each(sql, params, each),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, file: &str, env: Option<&str>) -> Result<StoreLocation, LocationError> {
        StoreLocation::parse(text, Path::new("/data"), file, env.map(|e| e.as_bytes().to_vec()))
    }

    #[test]
    fn sqlite_is_the_file_in_the_data_dir() {
        let location = parse("sqlite", "", None).expect("sqlite");
        assert_eq!(location.describe(), "/data/money.sqlite");
        assert!(matches!(parse("sqlite", "", Some("pw")), Err(LocationError::PasswordWithoutServer)));
    }

    #[test]
    fn a_postgres_url_takes_its_password_from_the_environment_or_a_file_never_itself() {
        let location = parse("postgres://money@db.example:6543/fares", "", Some("s3cret")).expect("url");
        assert_eq!(location.describe(), "postgres://money@db.example:6543/fares");
        assert!(!format!("{location:?}").contains("s3cret"), "the password is never shown");
        let StoreLocation::Postgres(config) = &location else { panic!("postgres") };
        assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
        assert!(matches!(parse("postgres://money:pw@db/fares", "", None), Err(LocationError::PasswordInUrl)));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-a-file\n").expect("write");
        let file = file.to_str().expect("utf-8");
        let location = parse("postgresql://money@db/fares", file, None).expect("file");
        let StoreLocation::Postgres(config) = &location else { panic!("postgres") };
        assert_eq!(config.get_password(), Some(&b"from-a-file"[..]), "one line end is not the password's");
        assert!(matches!(parse("postgres://money@db/fares", file, Some("x")), Err(LocationError::PasswordTwice)));
        assert!(matches!(
            parse("postgres://money@db/fares", "/nonexistent/pw", None),
            Err(LocationError::PasswordFile { .. })
        ));
    }

    #[test]
    fn a_store_setting_at_its_extremes_is_refused_with_why() {
        for text in ["", "SQLITE", "mysql://db/x", "sqlite:///data/money.sqlite", "postgres", &"x".repeat(100_000)] {
            assert!(matches!(parse(text, "", None), Err(LocationError::Unknown(_))), "{text:.40}");
        }
        assert!(matches!(parse("postgres://db:notaport/x", "", None), Err(LocationError::Url(_))));
        assert!(parse(&format!("postgres://u@{}/x", "h".repeat(10_000)), "", None).is_ok(), "long host: parsed");
        for password in ["", "\n", &"p".repeat(STORE_PASSWORD_BYTES_MAX + 1)] {
            assert!(
                matches!(parse("postgres://u@db/x", "", Some(password)), Err(LocationError::BadPassword)),
                "{} bytes",
                password.len()
            );
        }
        let longest = "p".repeat(STORE_PASSWORD_BYTES_MAX);
        assert!(parse("postgres://u@db/x", "", Some(&longest)).is_ok());
        let not_utf8 = StoreLocation::parse("postgres://u@db/x", Path::new("/d"), "", Some(vec![0xff, 0xfe]));
        assert!(matches!(not_utf8, Err(LocationError::BadPassword)));
    }

    const LIMITS: PgSessionLimits = PgSessionLimits {
        connect_timeout: Duration::from_secs(10),
        unreachable_after: Duration::from_secs(30),
        lock_wait_max: Duration::from_secs(30),
        idle_in_transaction_max: Duration::from_secs(60),
    };

    /// The limits reach the connection's config: timeouts, keepalives,
    /// and the server settings after the URL's own options.
    #[test]
    fn session_limits_bound_connecting_a_silent_server_and_waits_on_locks() {
        let location = parse("postgres://u@db/x?options=-c%20search_path%3Dmoney", "", None).expect("url");
        let StoreLocation::Postgres(config) = location.with_session_limits(&LIMITS) else { panic!("postgres") };
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(config.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(
            config.get_options(),
            Some("-c search_path=money -c lock_timeout=30000 -c idle_in_transaction_session_timeout=60000")
        );
        let sqlite = parse("sqlite", "", None).expect("sqlite").with_session_limits(&LIMITS);
        assert_eq!(sqlite.describe(), "/data/money.sqlite", "the embedded store is as it was");
    }

    /// What the config sets may not be set in the URL as well.
    #[test]
    fn a_url_setting_what_the_limits_set_is_refused() {
        for parameter in PARAMETERS_SET_BY_LIMITS {
            let refused = parse(&format!("postgres://u@db/x?sslmode=disable&{parameter}=5"), "", None);
            assert!(matches!(&refused, Err(LocationError::SetByLimits(p)) if p == parameter), "{parameter}");
        }
        let refused = parse("postgres://u@db/x?options=-c%20lock_timeout%3D0", "", None);
        assert!(matches!(refused, Err(LocationError::SetByLimits(_))), "{refused:?}");
        assert!(parse("postgres://u@db/x?application_name=fs&", "", None).is_ok(), "others pass");
    }
}
