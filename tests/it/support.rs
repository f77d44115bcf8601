//! A server in-process on 127.0.0.1:0 with a manual clock, and riders whose
//! codes the tests make by hand.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use farestream::archive::{read, scans_root};
use farestream::clock_source::ManualClock;
use farestream::config::Config;
use farestream::faults::Faults;
use farestream::fleet::GatewayScope;
use farestream::fleet_ca::FleetCa;
use farestream::gateway::tls::GatewayCredentials;
use farestream::gateway::{GatewayClient, GatewayError};
use farestream::money::notify::InboxNotifier;
use farestream::ridecode::{Credential, IssuerPublicKeys, IssuerSigningKey, UserKey};
use farestream::scan::{ArchivedScan, ScanStatus, TapKind};
use farestream::server::{Assembly, Server, ServerError};
use farestream::tls_identity::{NewIdentity, ServerIdentity};
use farestream::wire::{BatchAck, ScanBatch, ScanRecord, WireTapKind};
use farestream_core::clock::UnixMillis;

/// 2025-11-20 10:00:00 in Shanghai, a Thursday morning.
pub(crate) const T0_MS: UnixMillis = 1_763_604_000_000;
pub(crate) const ISSUER_KEY_ID: u32 = 1;
/// The gateway [`Harness::client`] pushes as.
pub(crate) const GATEWAY: &str = "depot-1";

pub(crate) struct Harness {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub identity: ServerIdentity,
    pub clock: Arc<ManualClock>,
    pub issuer: IssuerSigningKey,
    pub config: Config,
    pub faults: Arc<Faults>,
    /// What the server told riders (one-time codes, refunds held back).
    pub inbox: Arc<InboxNotifier>,
}

pub(crate) struct TestRider {
    pub key: UserKey,
    pub credential: Credential,
}

impl TestRider {
    /// A code made five seconds before `at_ms`.
    pub(crate) fn code_at(&self, at_ms: UnixMillis, counter: u32) -> Vec<u8> {
        self.key.make_code(&self.credential, secs(at_ms - 5_000), counter).bytes.to_vec()
    }
}

/// `n` fresh entries at station-01's gate-1 by riders `first..first + n`,
/// batch `seq`.
pub(crate) fn scans(h: &Harness, seq: u64, first: u64, n: u64) -> ScanBatch {
    let records = (first..first + n)
        .map(|card| record("gate-1", card, T0_MS + card as i64, TapKind::Entry, h.rider(card).code_at(T0_MS, 1)))
        .collect();
    batch("station-01", seq, records)
}

/// After a restart: `original` (already acked) comes back as all
/// re-deliveries, and a copy of card `first_card`'s code shown on another
/// validator is a replay.
pub(crate) async fn assert_still_caught(h: &Harness, original: &ScanBatch, first_card: u64) {
    let again = h.client_as("station-01").push(original).await.expect("ack");
    assert_eq!((again.accepted, again.redelivered), (0, original.scans.len() as u32));
    let copy = record("gate-9", first_card, T0_MS + 5_000, TapKind::Entry, h.rider(first_card).code_at(T0_MS, 1));
    let replay = h.client_as("station-02").push(&batch("station-02", first_card, vec![copy])).await.expect("ack");
    assert_eq!(replay.rejections[0].scan_status(), Some(ScanStatus::Replay));
}

/// A push in flight from station-01 when this returns.
pub(crate) type PushInFlight = tokio::task::JoinHandle<Result<BatchAck, GatewayError>>;

/// A server that fails fast ([`quick_failures`]), and two scans pushed
/// into a commit that claims them, then panics 500 ms later before
/// logging them: returned while the claims are held.
pub(crate) async fn push_into_a_panicking_commit() -> (Harness, ScanBatch, PushInFlight) {
    let h = Harness::start_with(quick_failures(Config::defaults())).await;
    let original = scans(&h, 1, 1, 2);
    h.faults.panic_in_next_commit(Duration::from_millis(500));
    let pushed = tokio::spawn({
        let (client, original) = (h.client_as("station-01"), original.clone());
        async move { client.push(&original).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    (h, original, pushed)
}

/// Failures noticed fast: few gateway retries, short waits on the log
/// and the archiver.
pub(crate) fn quick_failures(mut config: Config) -> Config {
    config.gateway.retry_attempts_max = 2;
    config.gateway.retry_backoff_ms_initial = 10;
    config.wal.ack_wait_ms_max = 300;
    config.wal.disk_full_retry_ms = 50;
    config.archive.retry_after_error_ms = 50;
    config
}

/// What a started `serve` (stdout piped) printed until it said it serves,
/// stopped, or a minute passed; the process runs on, its output drained.
pub(crate) fn printed_until_serving(child: &mut std::process::Child) -> Vec<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut said = Vec::new();
    while let Ok(line) = seen.recv_timeout(std::time::Duration::from_secs(60)) {
        let serving = line.contains("farestream serving on");
        said.push(line);
        if serving {
            break;
        }
    }
    said
}

pub(crate) fn secs(at_ms: UnixMillis) -> u32 {
    farestream_core::clock::unix_secs_u32(at_ms)
}

impl Harness {
    pub(crate) async fn start() -> Harness {
        Harness::start_with(Config::defaults()).await
    }

    pub(crate) async fn start_with(config: Config) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = ServerIdentity::generate().expect("identity");
        let clock = Arc::new(ManualClock::new(T0_MS + 60_000));
        let faults = Arc::new(Faults::default());
        let inbox = Arc::new(InboxNotifier::default());
        let server = start_server(&config, dir.path(), &identity, &clock, (&faults, &inbox)).await;
        let issuer = IssuerSigningKey::from_seed(ISSUER_KEY_ID, &[11; 32]).expect("issuer");
        Harness { dir, server, identity, clock, issuer, config, faults, inbox }
    }

    /// Graceful stop, then a new server on the same data directory.
    pub(crate) async fn restart(mut self) -> Harness {
        self.server.shutdown().await.expect("shutdown");
        let injected = (&self.faults, &self.inbox);
        self.server = start_server(&self.config, self.dir.path(), &self.identity, &self.clock, injected).await;
        self
    }

    /// Graceful stop, `between` on the stopped data directory (a command an
    /// operator runs), then a new server on it with `config`.
    pub(crate) async fn restart_after(mut self, config: Config, between: impl FnOnce(&std::path::Path)) -> Harness {
        self.server.shutdown().await.expect("shutdown");
        between(self.dir.path());
        self.config = config;
        let injected = (&self.faults, &self.inbox);
        self.server = start_server(&self.config, self.dir.path(), &self.identity, &self.clock, injected).await;
        self
    }

    /// The process "dies": the server is abandoned without a shutdown (its
    /// threads idle on, its files stay as they are), `damage` runs, and a
    /// new server recovers the same data directory.
    pub(crate) async fn crash_and_recover(self, damage: impl FnOnce(&std::path::Path)) -> Harness {
        let Harness { dir, server, identity, clock, issuer, config, faults, inbox } = self;
        server.abandon().await;
        damage(dir.path());
        let server = start_server(&config, dir.path(), &identity, &clock, (&faults, &inbox)).await;
        Harness { dir, server, identity, clock, issuer, config, faults, inbox }
    }

    /// A copy of this server's data dir, made while it runs (its archive
    /// flushed first), started as a second server: the same identity,
    /// clock and NODE_ID, a copied data dir as an operator might make one.
    pub(crate) async fn start_a_copy(&self) -> Harness {
        self.start_a_copy_with(self.config.clone()).await
    }

    /// [`Harness::start_a_copy`], started with `config`.
    pub(crate) async fn start_a_copy_with(&self, config: Config) -> Harness {
        self.server.flush_archive().await.expect("flush");
        let dir = copy_of(self.dir.path());
        let (faults, inbox) = (Arc::new(Faults::default()), Arc::new(InboxNotifier::default()));
        let server = start_server(&config, dir.path(), &self.identity, &self.clock, (&faults, &inbox)).await;
        let issuer = IssuerSigningKey::from_seed(ISSUER_KEY_ID, &[11; 32]).expect("issuer");
        let (identity, clock) = (self.identity.clone(), Arc::clone(&self.clock));
        Harness { dir, server, identity, clock, issuer, config, faults, inbox }
    }

    /// The process "dies" (abandoned, as [`Harness::crash_and_recover`]),
    /// `damage` runs, and a new server is tried on the same data dir: the
    /// harness back with it, or why it would not start (and the harness
    /// without a server, for another try).
    pub(crate) async fn crash_and_try(
        self,
        damage: impl FnOnce(&std::path::Path),
    ) -> Result<Harness, (ServerError, Stopped)> {
        let Harness { dir, server, identity, clock, issuer, config, faults, inbox } = self;
        server.abandon().await;
        damage(dir.path());
        match try_start_server(&config, dir.path(), &identity, &clock, (&faults, &inbox)).await {
            Ok(server) => Ok(Harness { dir, server, identity, clock, issuer, config, faults, inbox }),
            Err(error) => Err((error, Stopped { dir, identity, clock, issuer, config, faults, inbox })),
        }
    }

    /// A client for gateway [`GATEWAY`].
    pub(crate) fn client(&self) -> GatewayClient {
        self.client_as(GATEWAY)
    }

    /// A client for `gateway_id`, enrolled on first use, speaking for
    /// every validator: tests name their validators freely.
    pub(crate) fn client_as(&self, gateway_id: &str) -> GatewayClient {
        self.client_for(&every_validator(gateway_id))
    }

    /// A client for `scope`'s gateway, enrolled on first use.
    pub(crate) fn client_for(&self, scope: &GatewayScope) -> GatewayClient {
        let settings = self.config.gateway_settings(self.server.local_addr());
        GatewayClient::new(settings, &self.identity.cert, &self.credentials_for(scope)).expect("client")
    }

    /// The credentials of `gateway_id`, speaking for every validator.
    pub(crate) fn credentials(&self, gateway_id: &str) -> GatewayCredentials {
        self.credentials_for(&every_validator(gateway_id))
    }

    /// The credentials of `scope`'s gateway, enrolled with the data dir's
    /// fleet CA on first use. Dated by the wall clock, as TLS checks
    /// certificates against it, not the test's clock.
    pub(crate) fn credentials_for(&self, scope: &GatewayScope) -> GatewayCredentials {
        FleetCa::enrolled_here(self.dir.path(), scope, 30, chrono::Utc::now().timestamp()).expect("enrolled")
    }

    pub(crate) fn rider(&self, card_id: u64) -> TestRider {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&card_id.to_be_bytes());
        let key = UserKey::from_seed(&seed).expect("user key");
        let valid_from = secs(T0_MS - 3_600_000);
        let credential = self.issuer.issue(card_id, key.public_key(), valid_from, valid_from + 93_600);
        TestRider { key, credential }
    }

    /// Closes the open archive files and reads every row back from disk.
    pub(crate) async fn archive_rows(&self) -> Vec<ArchivedScan> {
        self.server.flush_archive().await.expect("flush");
        read::read_all(&scans_root(self.dir.path())).expect("read archive")
    }
}

/// A harness whose server would not start: its data dir and the rest,
/// for another try.
pub(crate) struct Stopped {
    pub dir: tempfile::TempDir,
    identity: ServerIdentity,
    clock: Arc<ManualClock>,
    issuer: IssuerSigningKey,
    pub config: Config,
    faults: Arc<Faults>,
    inbox: Arc<InboxNotifier>,
}

impl Stopped {
    /// A server on the stopped data dir with `config`, or why it would
    /// not start; nothing is kept of one that started (it is shut down).
    pub(crate) async fn try_start(&self, config: &Config) -> Result<(), ServerError> {
        let (faults, inbox) = (&self.faults, &self.inbox);
        let server = try_start_server(config, self.dir.path(), &self.identity, &self.clock, (faults, inbox)).await?;
        server.shutdown().await.map(|_| ())
    }

    /// `change` on the stopped data dir, then a new server on it.
    pub(crate) async fn start_after(self, change: impl FnOnce(&std::path::Path)) -> Harness {
        let Stopped { dir, identity, clock, issuer, config, faults, inbox } = self;
        change(dir.path());
        let server = start_server(&config, dir.path(), &identity, &clock, (&faults, &inbox)).await;
        Harness { dir, server, identity, clock, issuer, config, faults, inbox }
    }
}

fn every_validator(gateway_id: &str) -> GatewayScope {
    GatewayScope::new(gateway_id, vec![String::new()]).expect("a gateway id enrolment takes")
}

async fn start_server(
    config: &Config,
    dir: &std::path::Path,
    identity: &ServerIdentity,
    clock: &Arc<ManualClock>,
    injected: (&Arc<Faults>, &Arc<InboxNotifier>),
) -> Server {
    try_start_server(config, dir, identity, clock, injected).await.expect("server")
}

/// A server over `dir`, or why it would not start.
/// A copy of the directory tree at `dir`, in a new temporary directory.
pub(crate) fn copy_of(dir: &std::path::Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("tempdir");
    copy_tree(dir, copy.path());
    copy
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

pub(crate) async fn try_start_server(
    config: &Config,
    dir: &std::path::Path,
    identity: &ServerIdentity,
    clock: &Arc<ManualClock>,
    (faults, inbox): (&Arc<Faults>, &Arc<InboxNotifier>),
) -> Result<Server, ServerError> {
    test_assembly(config, dir, identity, clock)?
        .with_faults(Arc::clone(faults))
        .with_notifier(Arc::clone(inbox) as Arc<dyn farestream::money::notify::Notifier>)
        .start()
        .await
}

/// How every test puts a server together: `dir` locked and opened as
/// `serve` does, on a free loopback port, serving under `identity`,
/// trusting the test issuer (`ISSUER_KEY_ID`), on `clock`.
pub(crate) fn test_assembly(
    config: &Config,
    dir: &std::path::Path,
    identity: &ServerIdentity,
    clock: &Arc<ManualClock>,
) -> Result<Assembly, ServerError> {
    let issuer = IssuerSigningKey::from_seed(ISSUER_KEY_ID, &[11; 32]).expect("issuer");
    let mut keys = IssuerPublicKeys::new();
    keys.insert(ISSUER_KEY_ID, issuer.public_key());
    Ok(assembly_following_the_key_store(config, dir, identity, clock)?.trusting(keys))
}

/// [`test_assembly`] as `serve` has it: following the data dir's issuer
/// key store (key 1 made on first start) instead of the fixed test key.
pub(crate) fn assembly_following_the_key_store(
    config: &Config,
    dir: &std::path::Path,
    identity: &ServerIdentity,
    clock: &Arc<ManualClock>,
) -> Result<Assembly, ServerError> {
    Ok(Assembly::open(config, dir, NewIdentity::OnFirstStart)?
        .listen_on("127.0.0.1:0".parse().expect("addr"))
        .with_identity(identity.clone())
        .with_clock(Arc::clone(clock) as Arc<dyn farestream::clock_source::Clock>))
}

/// The value of one Prometheus series (`name{label="value"}`) as the
/// server's metrics render it now; 0 before it is first counted. The
/// test binary's recorder is installed on first use.
pub(crate) fn metric(series: &str) -> f64 {
    static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    let handle = METRICS.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().expect("the tests' metrics recorder")
    });
    handle
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn record(
    validator: &str,
    seq: u64,
    at_ms: UnixMillis,
    tap_kind: TapKind,
    ride_code: Vec<u8>,
) -> ScanRecord {
    ScanRecord {
        validator_id: validator.to_string(),
        validator_seq: seq,
        validator_time_ms: at_ms,
        route_id: "metro-1".into(),
        stop_id: "station-01".into(),
        tap_kind: WireTapKind::from(tap_kind) as i32,
        ride_code,
        ..Default::default()
    }
}

pub(crate) fn batch(gateway: &str, seq: u64, scans: Vec<ScanRecord>) -> ScanBatch {
    ScanBatch { gateway_id: gateway.to_string(), batch_seq: seq, scans }
}

/// Gives the data dir `to` the fleet CA of `from`, so gateways enrolled
/// with one are trusted by a server on the other.
pub(crate) fn copy_fleet_ca(from: &std::path::Path, to: &std::path::Path) {
    let (from, to) = (from.join("fleet"), to.join("fleet"));
    std::fs::create_dir_all(&to).expect("fleet dir");
    for file in ["ca.cert.der", "ca.key.der", "crl.der"] {
        std::fs::copy(from.join(file), to.join(file)).expect("copy the fleet CA");
    }
}

/// A file in this checkout, found where cargo runs the test from (not
/// where it was compiled: CI reuses one target directory for every clone,
/// and a test binary built in another clone must not read that clone).
pub(crate) fn repo_file(relative: &str) -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    PathBuf::from(root).join(relative)
}
