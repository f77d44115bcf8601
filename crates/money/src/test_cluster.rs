//! A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary
//! directory, the server on a Unix socket only, one database a test. The
//! cluster is made once per test process and stops when the process ends
//! (its wrapper shell waits on a pipe that only this process holds).
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the
//! cluster runs as `nobody` (through `setpriv`), which owns its directory.
//! Without PostgreSQL the PostgreSQL half of a test is skipped, and says
//! so, unless `FARESTREAM_POSTGRES=required` (as `.ci/run` sets), which
//! makes a missing server a failure.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::pg_store::PgStore;
#[cfg(test)]
use crate::{
    db::{Db, Sqlite},
    store::SqliteStore,
};

/// Set to `required` and a test that needs PostgreSQL fails without it.
pub const POSTGRES_REQUIRED_VAR: &str = "FARESTREAM_POSTGRES";

/// Where the server binaries are, when not found by themselves.
pub const POSTGRES_BIN_VAR: &str = "FARESTREAM_POSTGRES_BIN";

/// The role the cluster is made with, trusted on its socket.
const SUPERUSER: &str = "farestream";

/// How long the server has to accept connections after it starts.
const STARTUP_WAIT_MAX: Duration = Duration::from_secs(60);

/// One running cluster.
pub struct TestCluster {
    /// The directory holding the socket (and the data, under `data/`).
    socket_dir: PathBuf,
    /// The wrapper shell: holding its stdin keeps the server running.
    _wrapper: Mutex<Child>,
    next_database: AtomicU32,
}

impl TestCluster {
    /// The process's cluster, started on first use; `None` when PostgreSQL
    /// is not installed and not required (the caller skips its PostgreSQL
    /// half). Panics when it is required and missing or does not start.
    pub fn shared() -> Option<&'static TestCluster> {
        static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
        match CLUSTER.get_or_init(TestCluster::start) {
            Ok(cluster) => Some(cluster),
            Err(why) if required() => panic!("PostgreSQL is required ({POSTGRES_REQUIRED_VAR}=required): {why}"),
            Err(why) => {
                eprintln!("skipping the PostgreSQL half of this test: {why}");
                None
            }
        }
    }

    /// A new, empty database for one test; how to connect to it.
    pub fn new_database(&self) -> postgres::Config {
        let name = self.create_database();
        self.connection_string(&name).parse().unwrap_or_else(|e| panic!("the test cluster's connection string: {e}"))
    }

    /// A new, empty database for one test, as `payments.money_store`
    /// names it: `postgresql://USER@/NAME?host=SOCKET_DIR`.
    pub fn new_database_url(&self) -> String {
        let name = self.create_database();
        format!("postgresql://{SUPERUSER}@/{name}?host={}", self.socket_dir.display())
    }

    fn create_database(&self) -> String {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{n}", std::process::id());
        let mut admin = postgres::Client::connect(&self.connection_string("postgres"), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to the test cluster: {e}"));
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
        name
    }

    /// A new, empty database as the place of a money store.
    pub fn new_location(&self) -> crate::StoreLocation {
        crate::StoreLocation::Postgres(Box::new(self.new_database()))
    }

    /// A money store in a new database.
    pub fn new_store(&self) -> PgStore {
        PgStore::open(&self.new_database()).unwrap_or_else(|e| panic!("a new store on the test cluster: {e}"))
    }

    fn connection_string(&self, database: &str) -> String {
        format!("host={} user={SUPERUSER} dbname={database}", self.socket_dir.display())
    }

    fn start() -> Result<TestCluster, String> {
        let bin = server_bin_dir().ok_or("no PostgreSQL server binaries (initdb, postgres) found")?;
        if running_as_root() && Command::new("setpriv").arg("--version").output().is_err() {
            return Err("running as root, PostgreSQL runs as nobody through setpriv (util-linux), not found".into());
        }
        // Not under a TempDir guard: the cluster lives as long as the
        // process, and the wrapper removes the directory when it stops.
        // Named by process and time, made new: never another run's.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let socket_dir = std::env::temp_dir().join(format!("farestream-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&socket_dir).map_err(|e| format!("{}: {e}", socket_dir.display()))?;
        // Others may pass through to the socket (a root without
        // CAP_DAC_OVERRIDE too), not list or read it.
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("{}: {e}", socket_dir.display()))?;
        if running_as_root() {
            std::os::unix::fs::chown(&socket_dir, Some(NOBODY_UID), Some(NOBODY_GID))
                .map_err(|e| format!("chown {}: {e}", socket_dir.display()))?;
        }
        let initdb = init(&bin, &socket_dir);
        if initdb.is_err() {
            let _ = std::fs::remove_dir_all(&socket_dir);
        }
        initdb?;
        let wrapper = spawn_server(&bin, &socket_dir)?;
        let cluster = TestCluster { socket_dir, _wrapper: Mutex::new(wrapper), next_database: AtomicU32::new(0) };
        wait_until_ready(&cluster.connection_string("postgres"))?;
        Ok(cluster)
    }
}

/// `initdb` into `socket_dir/data`, as the cluster's owner.
fn init(bin: &Path, socket_dir: &Path) -> Result<(), String> {
    let initdb = as_cluster_user(&bin.join("initdb"))
        // No locale: text sorts bytewise, as SQLite's does, and a
        // machine's missing locale cannot stop initdb.
        .args(["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync", "-U", SUPERUSER, "-D"])
        .arg(socket_dir.join("data"))
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr)));
    }
    Ok(())
}

/// Runs `work` in one transaction on a new SQLite store and, where
/// PostgreSQL is installed, on a new PostgreSQL one (its name for
/// messages is the second argument); asserts both answer the same and
/// returns SQLite's answer for the test's own checks.
#[cfg(test)]
pub(crate) fn on_both_stores<T: PartialEq + std::fmt::Debug>(work: impl Fn(&mut dyn Db, &str) -> T) -> T {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = crate::store::store_path(dir.path());
    let mut sqlite = SqliteStore::open(&path, Duration::from_secs(1)).expect("a new SQLite store");
    let tx = sqlite.transaction().expect("a transaction");
    let on_sqlite = work(&mut Sqlite(&tx), "sqlite");
    tx.commit().expect("committed");
    if let Some(cluster) = TestCluster::shared() {
        let on_postgres = cluster
            .new_store()
            .in_transaction(|db| Ok::<_, crate::store::StoreError>(work(db, "postgres")))
            .expect("committed");
        assert_eq!(on_postgres, on_sqlite, "PostgreSQL answers as SQLite does");
    }
    on_sqlite
}

/// Runs `work` on a new money store of each engine at hand: SQLite in a
/// new directory, and PostgreSQL where installed ([`TestCluster::shared`]),
/// with the engine's name for messages.
#[cfg(test)]
pub(crate) fn on_each_engine(mut work: impl FnMut(&mut crate::MoneyStore, &str)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = crate::StoreLocation::Sqlite(crate::store::store_path(dir.path()));
    work(&mut crate::MoneyStore::open(&sqlite, Duration::from_secs(1)).expect("a new SQLite store"), "sqlite");
    if let Some(cluster) = TestCluster::shared() {
        let postgres = cluster.new_location();
        work(
            &mut crate::MoneyStore::open(&postgres, Duration::from_secs(1)).expect("a new PostgreSQL store"),
            "postgres",
        );
    }
}

/// A new connection to the store at `location`, for a test.
#[cfg(test)]
pub(crate) fn open_store(location: &crate::StoreLocation) -> crate::MoneyStore {
    crate::MoneyStore::open(location, Duration::from_secs(1)).expect("a store")
}

/// An account for `card_id` (its phone made from it), active with no
/// deposit and owing `arrears` from a declined ride.
#[cfg(test)]
pub(crate) fn an_owing_card(
    tx: &mut dyn Db,
    card_id: u64,
    arrears: farestream_core::money::Cents,
    now: farestream_core::clock::UnixMillis,
) -> Result<(), crate::accounts::AccountError> {
    use crate::accounts;
    accounts::register(tx, card_id, &format!("+1555{card_id:07}"), now)?;
    accounts::activate(
        tx,
        card_id,
        "payer",
        &format!("agreement-{card_id}"),
        farestream_core::money::Cents::ZERO,
        now,
    )?;
    accounts::add_arrears(tx, card_id, arrears, "declined ride", now).map(drop)
}

/// How long [`second_waits_for_first`] looks for the second transaction
/// waiting on a lock.
#[cfg(test)]
const LOCK_WAIT_SEEN_MAX: Duration = Duration::from_secs(20);

/// Two servers on one PostgreSQL store at the same moment: runs `first` in
/// a transaction on one connection and holds it open until `second`, in a
/// transaction on another, is seen waiting on an advisory lock; then runs
/// `first_then` in the first transaction and commits it. What each
/// transaction returned (an error where PostgreSQL aborted it, a deadlock
/// among them).
#[cfg(test)]
pub(crate) fn second_waits_for_first<T, E>(
    location: &crate::StoreLocation,
    first: impl FnOnce(&mut dyn Db) -> Result<(), E> + Send,
    first_then: impl FnOnce(&mut dyn Db) -> Result<(), E> + Send,
    second: impl FnOnce(&mut dyn Db) -> Result<T, E> + Send,
) -> (Result<(), E>, Result<T, E>)
where
    T: Send,
    E: From<crate::store::StoreError> + Send,
{
    use std::sync::mpsc;
    let (mut a, mut b, mut watcher) = (open_store(location), open_store(location), open_store(location));
    let (holding, held) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        // Owned here: a failed assertion below drops it on the way out,
        // and the first thread's wait ends instead of hanging the test.
        let release = release;
        let first = s.spawn(move || {
            a.in_transaction(|tx| {
                first(tx)?;
                holding.send(()).expect("signal");
                released.recv().expect("release");
                first_then(tx)
            })
        });
        held.recv().expect("the first transaction holds its locks");
        let second = s.spawn(move || b.in_transaction(second));
        let deadline = Instant::now() + LOCK_WAIT_SEEN_MAX;
        // This test's database only: tests beside it wait on locks too.
        let waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
        while watcher.db().query(waiting, &[]).expect("pg_locks")[0].int(0).expect("count") == 0 {
            assert!(Instant::now() < deadline, "the second transaction never waited on a lock");
            std::thread::sleep(Duration::from_millis(5));
        }
        release.send(()).expect("release");
        (first.join().expect("first thread"), second.join().expect("second thread"))
    })
}

const NOBODY_UID: u32 = 65_534;
const NOBODY_GID: u32 = 65_534;

fn required() -> bool {
    std::env::var(POSTGRES_REQUIRED_VAR).is_ok_and(|v| v == "required")
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command run as the cluster's owner: this user, or `nobody` as root.
fn as_cluster_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid", &NOBODY_UID.to_string(), "--regid", &NOBODY_GID.to_string(), "--clear-groups"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// `FARESTREAM_POSTGRES_BIN`, else the newest of Debian's
/// `/usr/lib/postgresql/N/bin`, else wherever `initdb` is on the PATH.
fn server_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(POSTGRES_BIN_VAR) {
        return Some(PathBuf::from(dir));
    }
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| has_server(bin))
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| has_server(dir))
}

/// The server under a shell that stops it (SIGQUIT, immediate mode) once
/// its stdin ends, which is when this process exits, then removes the
/// cluster's directory if this process is gone. fsync is off: a
/// throwaway cluster, and a stop of the server alone, not the machine,
/// still keeps every commit.
fn spawn_server(bin: &Path, socket_dir: &Path) -> Result<Child, String> {
    let script = r#"
        owner=$PPID
        "$1/postgres" -D "$2/data" -k "$2" -c listen_addresses= -c fsync=off -c full_page_writes=off \
            -c max_connections=200 >>"$2/server.log" 2>&1 &
        server=$!
        cat >/dev/null
        kill -QUIT "$server" 2>/dev/null
        wait "$server"
        [ -d "/proc/$owner" ] || rm -rf "$2"
    "#;
    let mut child = as_cluster_user(Path::new("/bin/sh"))
        .args(["-c", script, "sh"])
        .arg(bin)
        .arg(socket_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
    // Nothing is ever written: the pipe only has to stay open.
    if let Some(stdin) = child.stdin.as_mut() {
        let _ = stdin.flush();
    }
    Ok(child)
}

fn wait_until_ready(connection_string: &str) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match postgres::Client::connect(connection_string, postgres::NoTls) {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > STARTUP_WAIT_MAX => {
                return Err(format!("the test cluster did not accept connections in {STARTUP_WAIT_MAX:?}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
