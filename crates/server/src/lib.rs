//! farestream's server: the QUIC endpoint gateways push to, and the one
//! assembly that runs both shells' jobs (the ingest shell's log and
//! archiver, `farestream_ingest`; the money shell's pricer, dispatcher and
//! accounts, `farestream_money`) under one supervision, clock and
//! shutdown. It owns the sockets, the threads and the clock; every
//! decision is the core's. One bidirectional stream carries one batch and
//! its ack.
//!
//! The write path of one batch, in order:
//! 1. read the frame (limits: `frame_bytes_max` before allocating,
//!    `frame_read_timeout`), wait for a `pipeline_batches_in_flight_max` slot;
//! 2. verify on rayon (no shared state touched);
//! 3. under the commit lock: claim the batch's scans in the dedup indexes
//!    and queue its record in the log, so log order is claim order;
//! 4. wait until the log is durable up to that record (or, for a batch of
//!    nothing but re-deliveries, up to everything queued before it: the
//!    originals it refers to);
//! 5. ack. The archiver writes Parquet from the log later.
//!
//! A full disk makes the server answer `BACKOFF` until space returns. A
//! failed fsync or rename, or a panic in any task, stops it:
//! [`Server::failed`] resolves with the [`Fatal`] reason, `serve` exits
//! non-zero, and recovery takes over on the next start.
//!
//! By job: `assembly` (the one way to start a server), `settings` (from
//! the config), `startup` (recovery before serving), `connections`
//! (accept, streams, the frame read), `batch` (one batch from slot to ack),
//! `housekeeping` (sweeps, gauges, health), `money_jobs` (the pay-later
//! half's start-up and periodic jobs), `cut_over` (the daily settlement's
//! schedule), `server_push` (issuer keys and the deny list to each
//! gateway), `issuer_reload` (key rotation without a restart), `fleet_access`
//! (who may connect), `fair` (turns at the verifier), `handles` (the
//! live objects jobs share); this file holds the `Server` itself and its
//! failure latch.

mod assembly;
mod batch;
pub mod cluster_archive;
pub mod cluster_ingest;
mod cluster_owners;
mod cluster_pricer;
mod connections;
mod cut_over;
pub mod dedup_snapshot;
pub mod fair;
mod fleet_access;
pub mod handles;
mod housekeeping;
mod issuer_reload;
mod money_jobs;
mod peer_limits;
mod pricing_rounds;
mod server_push;
mod settings;
mod startup;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use thiserror::Error;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use farestream_ingest::issuer_keys::LiveIssuerKeys;

pub use assembly::Assembly;
use assembly::IssuerKeys;
pub use cut_over::DailySettlement;
pub use settings::{
    CutOverSettings, PeerLimitSettings, ServerSettings, charges_archive_batches, money_store_at, money_store_location,
    money_store_session_limits,
};

use connections::accept_loop;
use fleet_access::{FleetAccess, reload_revocations};
use housekeeping::housekeeping;
use money_jobs::{charges_archive_job, deny_list_sync_job, open_money_store, refund_job, refund_pass, start_money};
use peer_limits::PeerLimits;
use startup::{probe_writable, recover};

use crate::fair::FairTurns;
use crate::handles::Handles;
use farestream_core::clock::UnixMillis;
use farestream_core::ingest::{ChunkSizer, Pipeline};
use farestream_ingest::archive::checkpoint::Cleanup;
use farestream_ingest::archive::{ArchiveError, ArchiveWriter, Archiver, ArchiverStatus, ArrivalMark, Arrivals};
use farestream_ingest::clock_source::Clock;
use farestream_ingest::data_dir_lock::DataDirLock;
use farestream_ingest::fleet_ca::RevocationList;
use farestream_ingest::node_id::{NodeId, NodeIdError};
use farestream_ingest::tls_identity::{ServerIdentity, TlsError};
use farestream_ingest::wal::WalError;
use farestream_ingest::wal::committer::{CommitHandle, Committer, Progress};
use farestream_money::charges_archive::ChargesArchive;
use farestream_money::{AccountService, Pricer, PricerStatus, RefundReport};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("recovery: {0}")]
    Recovery(String),
    #[error("the pricer has not caught up with the log: {0}")]
    PricingBehind(String),
    #[error(transparent)]
    Refunds(#[from] farestream_money::ServiceError),
    #[error("{path} is not writable: {source}")]
    NotWritable { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Money(#[from] farestream_money::StoreError),
    #[error(transparent)]
    DataDirInUse(#[from] farestream_ingest::data_dir_lock::DataDirLockError),
    #[error(transparent)]
    Config(#[from] farestream_ingest::config::ConfigError),
    #[error("the key store: {0}")]
    Keystore(#[from] farestream_ingest::keystore::KeystoreError),
    #[error("the fleet CA: {0}")]
    Fleet(#[from] farestream_ingest::fleet_ca::FleetError),
    #[error("the data dir's node id: {0}")]
    NodeId(#[from] NodeIdError),
    #[error("the cluster: {0}")]
    Cluster(String),
}

/// How long a gateway is told to wait when the server cannot take a batch.
const BACKOFF_RETRY_AFTER_MS: u32 = 1000;

/// Claims and log records in one order, and the moment each batch is
/// received read in that same order: so "every batch received before `at`
/// is in the log before `lsn`" can be read off at any moment (the
/// archiver closes a service day on it).
struct CommitGate {
    /// Held while a batch reads its arrival time, claims its scans and
    /// queues its record, and while a mark is read.
    claims: Mutex<Claims>,
    clock: Arc<dyn Clock>,
    wal: CommitHandle,
}

/// What the commit gate's lock guards: the log position the last batch
/// through it reached. Each batch checks it comes after the one before,
/// so log order is claim order by construction, not by a comment.
#[derive(Debug, Default)]
struct Claims {
    last_lsn: u64,
}

impl Claims {
    /// A batch claimed its scans and its record (or, for re-deliveries
    /// only, the records before it) ends the log at `lsn`.
    fn logged(&mut self, lsn: u64) {
        assert!(
            lsn >= self.last_lsn,
            "a batch logged at {lsn}, before the one claimed ahead of it ({})",
            self.last_lsn
        );
        self.last_lsn = lsn;
    }
}

impl Arrivals for CommitGate {
    fn mark(&self) -> ArrivalMark {
        let _claims = farestream_core::sync::lock(&self.claims);
        ArrivalMark { at: self.clock.now_ms(), lsn: self.wal.tail_lsn() }
    }
}

/// Why the server stopped for good: it acknowledges nothing more, and the
/// next start's recovery takes over from what is durable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Fatal {
    /// The log failed an fsync or a write it cannot retry, or is damaged.
    #[error("write-ahead log: {0}")]
    Wal(String),
    /// The archiver failed an fsync or a rename, or read a damaged log.
    #[error("archiver: {0}")]
    Archiver(String),
    /// The pricer read a damaged log.
    #[error("pricer: {0}")]
    Pricer(String),
    /// A batch claimed its scans but its log record was not queued (a bug).
    #[error("a committed batch could not be logged: {0}")]
    Unlogged(String),
    /// A task panicked (a bug); what it was doing is left undone.
    #[error("{task} panicked: {message}")]
    TaskPanicked { task: &'static str, message: String },
}

/// What start-up found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub checkpoint_lsn: u64,
    /// Where the log's oldest kept segment starts.
    pub wal_first_lsn: u64,
    pub wal_end_lsn: u64,
    pub torn_bytes_cut: u64,
    pub archive_cleanup: Cleanup,
    /// Rows replayed into the dedup indexes (archive and log).
    pub restored_rows: usize,
    /// The dedup snapshot the indexes started from, if one was usable
    /// (else they were rebuilt from the archive).
    pub dedup_snapshot: Option<dedup_snapshot::LoadedSnapshot>,
    /// How long rebuilding the dedup indexes took, snapshot or archive,
    /// and the log's tail.
    pub dedup_restore: Duration,
}

/// What a graceful shutdown left behind.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    pub archiver: ArchiverStatus,
    pub pricer: PricerStatus,
    pub wal: Progress,
    /// The dedup snapshot left for the next start, or why there is none.
    pub dedup_snapshot: Result<dedup_snapshot::WrittenSnapshot, String>,
}

/// What stream handlers share.
struct Shared {
    pipeline: Arc<Pipeline>,
    wal: CommitHandle,
    /// In cluster mode (`cluster.enabled`), where batches are made
    /// durable instead of `wal` (docs/scale-out.md).
    stream: Option<Arc<farestream_cluster::StreamLog>>,
    /// Held while a batch reads its `received_at`, claims its scans and
    /// queues its log record.
    gate: Arc<CommitGate>,
    settings: ServerSettings,
    handles: Handles,
    batches_in_flight: Semaphore,
    /// Bytes of frames read or being read, across all streams.
    frame_bytes: Semaphore,
    /// Turns at the verifier, taken fairly between connections.
    verify_turns: FairTurns,
    /// The deny list, pushed to every connected gateway.
    deny_list: Arc<farestream_money::DenyListHub>,
    /// The issuer keys in force, pushed to every connected gateway.
    issuer_keys: LiveIssuerKeys,
    /// When the key store was last read; `None` for a test's fixed keys
    /// (nothing to read).
    key_store_reads: Option<issuer_reload::KeyStoreReads>,
    /// Which gateways may connect, and the connections to close when one
    /// is revoked.
    fleet: Arc<FleetAccess>,
    /// The log's readers besides the archiver; a dedup snapshot is one.
    log_readers: Arc<farestream_ingest::log_reader::LogReaders>,
    /// Held through a dedup snapshot's write, so two (the periodic one and
    /// shutdown's) never share the temporary file.
    snapshot_writer: tokio::sync::Mutex<()>,
    /// Connections per address and per gateway, and gateways' rates.
    limits: Arc<PeerLimits>,
    /// The failure rate over all connections, from which a new one starts
    /// (so reconnecting does not reset a hostile peer's rate).
    all_peers: Mutex<ChunkSizer>,
    next_peer: std::sync::atomic::AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    failure: OnceLock<Fatal>,
    failed: Notify,
}

/// A running server. Stop it with [`Server::shutdown`].
pub struct Server {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    recovery: RecoveryReport,
    shared: Arc<Shared>,
    committer: Committer,
    archiver: Arc<Archiver>,
    pricer: Arc<Pricer>,
    accounts: AccountService,
    charges_archive: Arc<ChargesArchive>,
    /// The daily cut-over job, when it runs: a settlement writes into the
    /// data dir, so shutdown waits for it before letting go of the lock.
    cut_over: Option<tokio::task::JoinHandle<()>>,
    /// In cluster mode, the loop that keeps this node's partition leases.
    partition_leases: Option<tokio::task::JoinHandle<()>>,
    /// Held until the server is dropped or its process ends (`None` only
    /// inside [`Server::abandon`]).
    data_dir_lock: Option<DataDirLock>,
}

impl Server {
    /// Recovers the log and the archive under the data dir's lock, then
    /// binds and starts every job. [`Assembly::start`] is the way in: it
    /// takes the lock before anything else reads the data dir.
    async fn start_locked(
        data_dir_lock: DataDirLock,
        settings: ServerSettings,
        handles: Handles,
        (identity, fleet): (&ServerIdentity, RevocationList),
        (pipeline, issuer_keys): (Arc<Pipeline>, IssuerKeys),
        settlement: Option<Arc<dyn DailySettlement>>,
    ) -> Result<Server, ServerError> {
        // Before anything of the data dir is touched: a node that cannot
        // reach the cluster, or does not share its identity, serves nothing.
        let cluster_logs = match &settings.cluster {
            Some(cluster) => {
                let opened = cluster_ingest::open_logs(cluster).await?;
                cluster_ingest::check_shared_identity(cluster, opened.0.clone(), identity, &fleet).await?;
                Some(opened)
            }
            None => None,
        };
        let recovering = {
            let (settings, pipeline, handles) = (settings.clone(), Arc::clone(&pipeline), handles.clone());
            tokio::task::spawn_blocking(move || recover(&settings, &handles.faults, &pipeline, handles.clock.now_ms()))
        };
        let (writer, recovery) =
            recovering.await.map_err(|e| ServerError::Recovery(format!("recovery panicked: {e}")))??;
        tracing::info!(?recovery, "recovered");
        let node = NodeId::load_or_create(&settings.data_dir, &handles.faults)?;
        let node_name = node.to_string();
        // A pricer new to the store starts where the archive stands: what
        // was archived before money was kept is not charged. But under a
        // new name (a data dir whose NODE_ID was deleted after a copy under
        // the same name priced in its place) it prices every ride its log
        // still holds, until a start has held the cursor: pricing is by
        // scan id, none twice.
        let new_name = NodeId::is_new(&settings.data_dir)?;
        let start_if_new = if new_name { recovery.wal_first_lsn } else { recovery.checkpoint_lsn };
        let money_store = {
            let (settings, node, checkpoint) = (settings.clone(), node.clone(), recovery.clone());
            tokio::task::spawn_blocking(move || open_money_store(&settings, &checkpoint, (&node, start_if_new)))
                .await
                .map_err(|e| ServerError::Recovery(format!("opening the money store panicked: {e}")))??
        };
        if new_name {
            NodeId::in_use(&settings.data_dir, &handles.faults)?;
        }
        let log_readers = Arc::clone(&money_store.log_readers);
        if let Some(loaded) = recovery.dedup_snapshot {
            log_readers.snapshot_in_place(loaded.replay_from_lsn);
        }
        for dir in [&settings.wal.dir, &settings.archive.root] {
            probe_writable(dir, &handles.faults)?;
        }
        let committer = Committer::spawn(
            writer,
            settings.wal.record_bytes_max,
            settings.wal_disk_full_retry,
            settings.wal_fsync_enabled,
        );
        let archive_writer = ArchiveWriter::new(settings.archive.clone(), Arc::clone(&handles.faults))?;
        let gate = Arc::new(CommitGate {
            claims: Mutex::default(),
            clock: Arc::clone(&handles.clock),
            wal: committer.handle(),
        });
        let archiver = Arc::new(Archiver::spawn(
            settings.archiver.clone(),
            archive_writer,
            recovery.checkpoint_lsn,
            committer.handle().subscribe(),
            Arc::clone(&gate) as Arc<dyn Arrivals>,
            Arc::clone(&money_store.log_readers),
            Arc::clone(&handles.faults),
        ));
        let money = {
            let (settings, handles, pipeline) = (settings.clone(), handles.clone(), Arc::clone(&pipeline));
            let progress = committer.handle().subscribe();
            tokio::task::spawn_blocking(move || {
                start_money(&settings, &handles, (money_store, node), progress, pipeline)
            })
            .await
            .map_err(|e| ServerError::Recovery(format!("starting the money side panicked: {e}")))??
        };
        let quic = identity.server_config(&fleet, settings.streams_per_connection_max, settings.idle_timeout)?;
        let endpoint = quinn::Endpoint::server(quic.clone(), settings.listen_addr)
            .map_err(|source| ServerError::Bind { addr: settings.listen_addr, source })?;
        let local_addr =
            endpoint.local_addr().map_err(|source| ServerError::Bind { addr: settings.listen_addr, source })?;
        let stream = cluster_logs.as_ref().map(|(_, logs)| Arc::clone(&logs.scans));
        let pipeline_chunk_max = pipeline.config().verify_chunk_signatures;
        let shared = Arc::new(Shared {
            pipeline,
            wal: committer.handle(),
            stream,
            gate,
            batches_in_flight: Semaphore::new(settings.pipeline_batches_in_flight_max),
            frame_bytes: Semaphore::new(settings.frames_in_flight_bytes_max),
            verify_turns: FairTurns::new(settings.verify_slices_in_flight_max),
            all_peers: Mutex::new(ChunkSizer::new(pipeline_chunk_max, 0.0)),
            deny_list: Arc::clone(&money.deny_list),
            issuer_keys: issuer_keys.live.clone(),
            key_store_reads: issuer_keys.follow_key_store.then(issuer_reload::KeyStoreReads::default),
            fleet: FleetAccess::new(fleet),
            log_readers,
            snapshot_writer: tokio::sync::Mutex::new(()),
            limits: PeerLimits::new(settings.peer_limits.clone()),
            next_peer: std::sync::atomic::AtomicU64::new(0),
            settings,
            handles,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            failure: OnceLock::new(),
            failed: Notify::new(),
        });
        let partition_leases = match (&shared.settings.cluster, cluster_logs) {
            (Some(cluster), Some(opened)) => {
                let name = if cluster.node_name.is_empty() { &node_name } else { &cluster.node_name };
                let charges_written = Arc::clone(&money.charges_written);
                Some(cluster_owners::start_owners(&shared, cluster, opened, (name, charges_written)).await?)
            }
            _ => None,
        };
        // Tracked, so shutdown waits for them to drop what they hold.
        spawn_supervised(&shared, "the accept loop", accept_loop(endpoint.clone(), Arc::clone(&shared)));
        let reload = reload_revocations(Arc::clone(&shared), endpoint.clone(), (identity.clone(), quic));
        spawn_supervised(&shared, "the revocation reload", reload);
        if shared.key_store_reads.is_some() {
            spawn_supervised(&shared, "the issuer key reload", issuer_reload::reload_issuer_keys(Arc::clone(&shared)));
        }
        let watched = (Arc::clone(&archiver), Arc::clone(&money.pricer));
        spawn_supervised(&shared, "housekeeping", housekeeping(Arc::clone(&shared), watched));
        let snapshots = dedup_snapshot::snapshot_job(Arc::clone(&shared), shared.settings.dedup_snapshot_interval);
        spawn_supervised(&shared, "the dedup snapshots", snapshots);
        if let Some(dispatcher) = money.dispatcher {
            spawn_supervised(&shared, "the charge dispatcher", dispatcher.run(shared.shutdown.clone()));
        }
        let refunds = &shared.settings.money;
        let pricer = Arc::clone(&money.pricer);
        let arrivals = self_logged_arrivals(&shared);
        let (interval, stop) = (refunds.refund_check_interval, shared.shutdown.clone());
        let job = refund_job(money.accounts.clone(), pricer, arrivals, interval, stop);
        spawn_supervised(&shared, "the refund job", job);
        let every = shared.settings.money.deny_list_sync_interval;
        let job = deny_list_sync_job(Arc::clone(&money.deny_list), every, shared.shutdown.clone());
        spawn_supervised(&shared, "the deny list sync", job);
        let every = shared.settings.money.charges_archive_interval;
        let job = charges_archive_job(Arc::clone(&money.charges_archive), every, shared.shutdown.clone());
        spawn_supervised(&shared, "the charges archive", job);
        let cut_over = match (settlement, &shared.settings.cut_over) {
            (Some(settlement), Some(cut_over)) => {
                let clock = Arc::clone(&shared.handles.clock);
                let job = cut_over::cut_over_job(settlement, cut_over.clone(), clock, shared.shutdown.clone());
                Some(spawn_supervised(&shared, "the daily cut-over", job))
            }
            _ => None,
        };
        tracing::info!(%local_addr, "farestream listening");
        let (pricer, accounts, charges_archive) = (money.pricer, money.accounts, money.charges_archive);
        Ok(Server {
            endpoint,
            local_addr,
            recovery,
            shared,
            committer,
            archiver,
            pricer,
            accounts,
            charges_archive,
            cut_over,
            partition_leases,
            data_dir_lock: Some(data_dir_lock),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The issuer keys in force: what the account API signs with.
    pub fn issuer_keys(&self) -> &LiveIssuerKeys {
        &self.shared.issuer_keys
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.shared.pipeline
    }

    /// The write-ahead log's durable position and state.
    pub fn wal_progress(&self) -> Progress {
        self.shared.wal.progress()
    }

    /// Archives everything acknowledged so far into closed files; returns
    /// the archived LSN.
    pub async fn flush_archive(&self) -> Result<u64, ServerError> {
        self.archiver.flush().await.map_err(ServerError::Recovery)
    }

    /// Writes the dedup indexes' snapshot now (the server also does every
    /// `ingest.dedup_snapshot_interval_secs` and at shutdown).
    pub async fn write_dedup_snapshot(
        &self,
    ) -> Result<dedup_snapshot::WrittenSnapshot, dedup_snapshot::SnapshotWriteError> {
        dedup_snapshot::write(&self.shared).await
    }

    /// Prices every ride acknowledged so far; returns the priced LSN.
    pub async fn flush_pricing(&self) -> Result<u64, ServerError> {
        self.pricer.flush().await.map_err(ServerError::Recovery)
    }

    /// Archives every decided charge now; returns how many were archived.
    pub async fn flush_charges_archive(&self) -> Result<u64, ServerError> {
        let archive = Arc::clone(&self.charges_archive);
        tokio::task::spawn_blocking(move || archive.run_once())
            .await
            .map_err(|e| ServerError::Recovery(format!("charges archive panicked: {e}")))?
            .map_err(|e| ServerError::Recovery(e.to_string()))
    }

    /// One pass of the refund job as if run at `now` (the demo's "three
    /// days later"): every ride acknowledged so far is priced first.
    pub async fn refund_pass_as_of(&self, now: UnixMillis) -> Result<RefundReport, ServerError> {
        refund_pass(&self.accounts, &self.pricer, self_logged_arrivals(&self.shared).as_deref(), now).await
    }

    /// Rider accounts: activation, arrears, the account view.
    pub fn accounts(&self) -> &AccountService {
        &self.accounts
    }

    /// The deny list as the server holds it.
    pub fn deny_list(&self) -> &Arc<farestream_money::DenyListHub> {
        &self.shared.deny_list
    }

    /// The data directory the server runs over.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.shared.settings.data_dir
    }

    /// Runs `work` on a new connection to the money store, on a blocking
    /// thread, and returns what it found.
    pub async fn with_money_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut farestream_money::MoneyStore) -> Result<T, farestream_money::StoreError> + Send + 'static,
    ) -> Result<T, ServerError> {
        let money = self.shared.settings.money.clone();
        let reading = tokio::task::spawn_blocking(move || work(&mut money.open_store()?));
        Ok(reading.await.map_err(farestream_money::store::step_ended)??)
    }

    /// Why the server stopped serving, once it has.
    pub fn failure(&self) -> Option<Fatal> {
        self.shared.failure.get().cloned()
    }

    /// Resolves when a fatal error (fsync, rename, log damage) has stopped
    /// the server from acknowledging anything.
    pub async fn failed(&self) -> Fatal {
        loop {
            let notified = self.shared.failed.notified();
            if let Some(reason) = self.failure() {
                return reason;
            }
            notified.await;
        }
    }

    /// Graceful stop: no new batches; streams still being read are
    /// answered BACKOFF; batches being processed finish and are acked
    /// within `shutdown_deadline` (then their connections are closed and
    /// their gateways resend); the log is flushed, the archive cut and
    /// checkpointed.
    /// What a process death does, for tests that crash a server inside
    /// one process: nothing is flushed or closed (files stay as they are,
    /// what was queued for the log is lost), and the data dir's lock goes
    /// with the "process", so a new server may recover the directory. The
    /// threads that write into the data dir (the log's commit thread, the
    /// archiver, the pricer, the charges archive) end between two of their
    /// steps before the lock goes: left running, one would write into the
    /// directory the next server recovers, which a dead process never does.
    pub async fn abandon(mut self) {
        // A dead node gives no lease back: they age out.
        if let Some(leases) = self.partition_leases.take() {
            leases.abort();
        }
        // A dead process runs no task: stop them (nothing is flushed).
        self.shared.shutdown.cancel();
        self.endpoint.close(0u32.into(), b"process died");
        let lock = self.data_dir_lock.take();
        tracing::warn!(data_dir = %self.data_dir().display(), "server abandoned without a shutdown");
        self.archiver.halt().await;
        self.pricer.halt().await;
        let (committer, charges_archive) = (self.committer, Arc::clone(&self.charges_archive));
        let halted = tokio::task::spawn_blocking(move || {
            committer.halt();
            // A pass under way ends first (the job's loop starts no other
            // once the shutdown is cancelled).
            drop(farestream_core::sync::lock(&charges_archive.store));
        });
        halted.await.expect("halting the log and the charges archive");
        // Nothing else is dropped: a dropped handle would run a last round.
        std::mem::forget((self.endpoint, self.shared, self.archiver, self.pricer, self.accounts));
        std::mem::forget((self.charges_archive, self.cut_over, self.recovery));
        drop(lock);
    }

    pub async fn shutdown(self) -> Result<ShutdownReport, ServerError> {
        let Server { endpoint, shared, committer, archiver, pricer, charges_archive, cut_over, data_dir_lock, .. } =
            self;
        shared.shutdown.cancel();
        shared.tasks.close();
        if let Some(cut_over) = cut_over {
            // Told to stop, a settlement gives up at its next step; until
            // it has, it may still write under the data dir.
            let _ = cut_over.await;
        }
        let deadline = shared.settings.shutdown_deadline;
        if tokio::time::timeout(deadline, shared.tasks.wait()).await.is_err() {
            tracing::warn!(?deadline, "batches still in flight at the shutdown deadline; closing their connections");
        }
        endpoint.close(0u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        let wal = tokio::task::spawn_blocking(move || committer.close())
            .await
            .map_err(|e| ServerError::Recovery(format!("log thread panicked: {e}")))?;
        // Everything logged is durable now: the next start loads this
        // instead of reading the archive.
        let dedup_snapshot = dedup_snapshot::write(&shared).await.map_err(|e| e.to_string());
        if let Err(error) = &dedup_snapshot {
            tracing::warn!(%error, "no dedup snapshot at shutdown; the next start restores from the one in place if the log still reaches it, else the archive");
        }
        let archiver =
            Arc::try_unwrap(archiver).map_err(|_| ServerError::Recovery("archiver still in use at shutdown".into()))?;
        let archiver = tokio::task::spawn_blocking(move || archiver.close())
            .await
            .map_err(|e| ServerError::Recovery(format!("archiver thread panicked: {e}")))?;
        let pricer =
            Arc::try_unwrap(pricer).map_err(|_| ServerError::Recovery("pricer still in use at shutdown".into()))?;
        let pricer = tokio::task::spawn_blocking(move || pricer.close())
            .await
            .map_err(|e| ServerError::Recovery(format!("pricer thread panicked: {e}")))?;
        if let Err(error) = tokio::task::spawn_blocking(move || charges_archive.run_once()).await {
            tracing::warn!(%error, "the last round of the charges archive stopped");
        }
        drop(data_dir_lock);
        Ok(ShutdownReport { archiver, pricer, wal, dedup_snapshot })
    }
}

/// The lock that keeps a second server off `data_dir`, naming this
/// process and the moment it started.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<DataDirLock, ServerError> {
    Ok(DataDirLock::acquire(data_dir, &chrono::Utc::now().to_rfc3339())?)
}

/// Where the rides this server logs itself come in, for the refund pass:
/// none in cluster mode, whose batches go to the scans stream.
fn self_logged_arrivals(shared: &Arc<Shared>) -> Option<Arc<dyn Arrivals>> {
    match shared.stream {
        Some(_) => None,
        None => Some(Arc::clone(&shared.gate) as Arc<dyn Arrivals>),
    }
}

/// Spawns a tracked task whose panic stops the server, with the panic's
/// message, instead of vanishing with the task and leaving a server that
/// says it serves but no longer accepts (or sweeps, or watches its log).
fn spawn_supervised(
    shared: &Arc<Shared>,
    what: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let watcher = Arc::clone(shared);
    shared.tasks.spawn(async move {
        if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            fail(&watcher, Fatal::TaskPanicked { task: what, message });
        }
    })
}

/// Stops the server for good: no more batches are accepted or acked.
fn fail(shared: &Shared, reason: Fatal) {
    if shared.failure.set(reason.clone()).is_ok() {
        tracing::error!(%reason, "stopping: recovery takes over on the next start");
        shared.shutdown.cancel();
        shared.failed.notify_waiters();
    }
}
