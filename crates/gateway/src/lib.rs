//! The gateway client: what a fleet gateway embeds to push scan batches.
//! `push` returns only once the server has answered the batch; until then it
//! reconnects and resends with exponential backoff, so a batch is either
//! acknowledged or reported as an error, never dropped silently. Resending
//! is safe: the server drops exact re-deliveries.
//!
//! The client is cheap to clone; clones share one QUIC connection, and
//! concurrent pushes run on parallel streams.
//!
//! This crate is what a gateway vendor embeds: the client, the wire
//! protocol's reads and writes, TLS pinning. It has no Parquet, SQLite or
//! server code in its tree.

pub mod tls;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use thiserror::Error;
use tokio::sync::Mutex;

use crate::tls::{ClientTlsError, GatewayCredentials, SERVER_NAME, client_config};
use crate::wire::{AckStatus, BatchAck, FrameError, ScanBatch, ServerPush, read_message, server_push, write_message};
use farestream_core::deny_list::DenyListReplica;
use farestream_core::ridecode::terminal_schedule::TERMINAL_KEYS_HELD_MAX;
use farestream_core::ridecode::{HeldTerminalKey, IssuerPublicKeys, PublishedKey, TerminalKeys};
use farestream_core::sync::lock;

/// The `[gateway]` section of the configuration: what a gateway tunes.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub connect_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    pub retry_attempts_max: u32,
    pub retry_backoff_ms_initial: u64,
    pub retry_backoff_ms_max: u64,
    pub deny_list_cards_max: usize,
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The server the client connects to first.
    pub server_addr: SocketAddr,
    /// The other nodes of a cluster (docs/scale-out.md), any of which
    /// takes any batch: after a connection or an exchange fails, the
    /// client moves on to the next address, round the ring. Empty for a
    /// single server.
    pub other_server_addrs: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub ack_timeout: Duration,
    pub retry_attempts_max: u32,
    pub retry_backoff_initial: Duration,
    pub retry_backoff_max: Duration,
    /// The largest frame (ack, deny-list page) accepted from the server.
    pub frame_bytes_max: u32,
    pub deny_list_cards_max: usize,
}

impl GatewaySettings {
    /// Settings from the `[gateway]` section; `frame_bytes_max` bounds the
    /// ack frames it reads.
    pub fn from_config(g: &GatewayConfig, frame_bytes_max: u32, server_addr: SocketAddr) -> GatewaySettings {
        GatewaySettings {
            server_addr,
            other_server_addrs: Vec::new(),
            connect_timeout: Duration::from_millis(g.connect_timeout_ms),
            ack_timeout: Duration::from_millis(g.ack_timeout_ms),
            retry_attempts_max: g.retry_attempts_max.max(1),
            retry_backoff_initial: Duration::from_millis(g.retry_backoff_ms_initial),
            retry_backoff_max: Duration::from_millis(g.retry_backoff_ms_max),
            frame_bytes_max,
            deny_list_cards_max: g.deny_list_cards_max,
        }
    }
}

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
    #[error("cannot open a local UDP socket: {0}")]
    Socket(std::io::Error),
    #[error("server refused batch {batch_seq} as malformed: {error}")]
    Malformed { batch_seq: u64, error: String },
    #[error("batch {batch_seq} not acknowledged after {attempts} attempts: {last_error}")]
    GaveUp {
        batch_seq: u64,
        attempts: u32,
        last_error: String,
        /// What the last attempt ran into, as [`GatewayError::kind`] names it.
        last_kind: &'static str,
    },
    #[error("no farestream server answered at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
}

impl GatewayError {
    /// A short name for what went wrong, for counting errors by kind (the
    /// load generator's report): `malformed`, `backoff`, `ack_timeout`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Tls(_) => "tls",
            GatewayError::Socket(_) => "socket",
            GatewayError::Malformed { .. } => "malformed",
            GatewayError::GaveUp { last_kind, .. } => last_kind,
            GatewayError::Unreachable { .. } => "unreachable",
        }
    }
}

impl AttemptError {
    fn kind(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "connect",
            AttemptError::Stream(_) => "stream",
            AttemptError::AckTimeout(_) => "ack_timeout",
            AttemptError::Ack(_) => "ack_unreadable",
            AttemptError::Backoff { .. } => "backoff",
        }
    }
}

/// Why one attempt failed; every kind is retried.
#[derive(Debug, Error)]
enum AttemptError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("no ack within {0:?}")]
    AckTimeout(Duration),
    #[error("ack unreadable: {0}")]
    Ack(#[from] FrameError),
    #[error("server asked to back off: {error}")]
    Backoff { error: String, retry_after: Duration },
}

#[derive(Clone)]
pub struct GatewayClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    settings: GatewaySettings,
    connection: Mutex<Option<quinn::Connection>>,
    /// Which of the server addresses the next connection goes to,
    /// counted round the ring.
    server_turn: AtomicU64,
    connects: AtomicU64,
    retries: AtomicU64,
    /// The server's deny list, as last pushed; what the validators check offline.
    deny_list: std::sync::Mutex<DenyListReplica>,
    /// The issuer keys, as last pushed; what the validators check codes with.
    issuer_keys: std::sync::Mutex<Vec<PublishedKey>>,
    /// The terminal keys and the version-1 cut-off, as last pushed: what
    /// the validators open sealed codes with, and from when they refuse
    /// codes that are not sealed.
    gate_rules: std::sync::Mutex<GateRules>,
}

/// What the validators read ride codes by, pushed together.
#[derive(Default)]
struct GateRules {
    terminal_keys: Vec<HeldTerminalKey>,
    version_1_refused_from_secs: Option<u32>,
}

/// The most issuer keys a gateway holds: a rotation a day for a week
/// leaves a handful; anything near this is a server gone wrong.
pub const ISSUER_KEYS_HELD_MAX: usize = 64;

impl GatewayClient {
    /// A client that trusts exactly `server_cert` and proves who it is
    /// with `credentials`. Connects on first push.
    pub fn new(
        settings: GatewaySettings,
        server_cert: &CertificateDer<'static>,
        credentials: &GatewayCredentials,
    ) -> Result<GatewayClient, GatewayError> {
        let bind: SocketAddr = if settings.server_addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .expect("literal socket address");
        let mut endpoint = quinn::Endpoint::client(bind).map_err(GatewayError::Socket)?;
        endpoint.set_default_client_config(client_config(server_cert, credentials)?);
        let inner = Inner {
            endpoint,
            settings: settings.clone(),
            connection: Mutex::new(None),
            server_turn: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            deny_list: std::sync::Mutex::new(DenyListReplica::new(settings.deny_list_cards_max)),
            issuer_keys: std::sync::Mutex::new(Vec::new()),
            gate_rules: std::sync::Mutex::new(GateRules::default()),
        };
        Ok(GatewayClient { inner: Arc::new(inner) })
    }

    /// Sends one batch and returns the server's OK ack, retrying through
    /// lost connections and back-off answers.
    pub async fn push(&self, batch: &ScanBatch) -> Result<BatchAck, GatewayError> {
        let settings = &self.inner.settings;
        let mut backoff = settings.retry_backoff_initial;
        let (mut last_error, mut last_kind) = (String::new(), "none");
        for attempt in 1..=settings.retry_attempts_max {
            if attempt > 1 {
                self.inner.retries.fetch_add(1, Ordering::Relaxed);
            }
            match self.attempt(batch).await {
                Ok(ack) if ack.ack_status() == AckStatus::Malformed => {
                    return Err(GatewayError::Malformed { batch_seq: batch.batch_seq, error: ack.error });
                }
                Ok(ack) => return Ok(ack),
                Err(AttemptError::Backoff { error, retry_after }) => {
                    (last_error, last_kind) = (error, "backoff");
                    tokio::time::sleep(retry_after.max(backoff)).await;
                }
                Err(error) => {
                    (last_error, last_kind) = (error.to_string(), error.kind());
                    self.forget_connection().await;
                    tokio::time::sleep(backoff).await;
                }
            }
            backoff = (backoff * 2).min(settings.retry_backoff_max);
        }
        let (batch_seq, attempts) = (batch.batch_seq, settings.retry_attempts_max);
        Err(GatewayError::GaveUp { batch_seq, attempts, last_error, last_kind })
    }

    /// Connects once, without retrying: a load generator's check that a
    /// server is there before it builds its load, so a wrong address is
    /// reported within `connect_timeout`, not after every retry.
    pub async fn connect(&self) -> Result<(), GatewayError> {
        let addr = self.server_now();
        self.connection().await.map(|_| ()).map_err(|e| GatewayError::Unreachable { addr, reason: e.to_string() })
    }

    /// Connections made so far (1 unless the link dropped).
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// Attempts beyond the first, over all pushes.
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Runs `read` over the deny list as the server last pushed it (empty at
    /// version 0 until the first connection): validators check it offline.
    pub fn with_deny_list<T>(&self, read: impl FnOnce(&DenyListReplica) -> T) -> T {
        read(&lock(&self.inner.deny_list))
    }

    pub fn deny_list_version(&self) -> u64 {
        self.with_deny_list(DenyListReplica::version)
    }

    /// The issuer keys as the server last pushed them (none until the
    /// first connection), with when each signs and stops being trusted.
    pub fn issuer_keys(&self) -> Vec<PublishedKey> {
        lock(&self.inner.issuer_keys).clone()
    }

    /// The issuer keys a validator trusts at `now_secs`: those pushed,
    /// less any whose `trusted_until` has passed (the gateway may be
    /// offline when it does).
    pub fn trusted_issuer_keys(&self, now_secs: i64) -> IssuerPublicKeys {
        let mut trusted = IssuerPublicKeys::new();
        for key in lock(&self.inner.issuer_keys).iter() {
            if key.trusted_at(now_secs) {
                trusted.insert(key.key_id, key.public_key);
            }
        }
        trusted
    }

    /// The terminal keys as the server last pushed them (none until the
    /// first connection), with their service days and times.
    pub fn terminal_keys(&self) -> Vec<HeldTerminalKey> {
        lock(&self.inner.gate_rules).terminal_keys.clone()
    }

    /// From when (Unix seconds, validator clock) validators refuse a
    /// version-1 code, as the server last pushed it: the
    /// `FreshnessPolicy::unsealed_refused_from_secs` of their offline
    /// check. `None` while both versions are read.
    pub fn version_1_refused_from_secs(&self) -> Option<u32> {
        lock(&self.inner.gate_rules).version_1_refused_from_secs
    }

    /// The terminal keys a validator opens sealed codes with at `now_secs`:
    /// those pushed, less any whose `trusted_until` has passed.
    pub fn trusted_terminal_keys(&self, now_secs: i64) -> TerminalKeys {
        let rules = lock(&self.inner.gate_rules);
        rules.terminal_keys.iter().filter(|k| k.trusted_at(now_secs)).map(HeldTerminalKey::key).collect()
    }

    /// Closes the connection politely and waits for the server to see it.
    pub async fn close(&self) {
        if let Some(connection) = self.inner.connection.lock().await.take() {
            connection.close(0u32.into(), b"gateway done");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }

    async fn attempt(&self, batch: &ScanBatch) -> Result<BatchAck, AttemptError> {
        let connection = self.connection().await?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| AttemptError::Stream(e.to_string()))?;
        // A write can fail because the server stopped reading a frame it
        // refuses; its ack still explains why, so read it regardless.
        let wrote = write_message(&mut send, batch).await;
        let _ = send.finish();
        let settings = &self.inner.settings;
        let ack = tokio::time::timeout(
            settings.ack_timeout,
            read_message::<BatchAck, _>(&mut recv, settings.frame_bytes_max, "BatchAck"),
        )
        .await
        .map_err(|_| AttemptError::AckTimeout(settings.ack_timeout))?;
        let ack = match (ack, wrote) {
            (Ok(ack), _) => ack,
            (Err(_), Err(write_error)) => {
                return Err(AttemptError::Stream(write_error.to_string()));
            }
            (Err(read_error), Ok(())) => return Err(read_error.into()),
        };
        if ack.ack_status() == AckStatus::Backoff {
            let retry_after = Duration::from_millis(u64::from(ack.retry_after_ms));
            return Err(AttemptError::Backoff { error: ack.error, retry_after });
        }
        Ok(ack)
    }

    async fn connection(&self) -> Result<quinn::Connection, AttemptError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(connection.clone());
        }
        let settings = &self.inner.settings;
        let connecting = self
            .inner
            .endpoint
            .connect(self.server_now(), SERVER_NAME)
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        let connection = tokio::time::timeout(settings.connect_timeout, connecting)
            .await
            .map_err(|_| AttemptError::Connect(format!("no handshake within {:?}", settings.connect_timeout)))?
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        self.inner.connects.fetch_add(1, Ordering::Relaxed);
        *slot = Some(connection.clone());
        tokio::spawn(read_server_push(connection.clone(), Arc::clone(&self.inner)));
        Ok(connection)
    }

    /// Drops the connection after a failure; the next one goes to the
    /// next server address, if there are others.
    async fn forget_connection(&self) {
        let mut slot = self.inner.connection.lock().await;
        slot.take();
        self.inner.server_turn.fetch_add(1, Ordering::Relaxed);
    }

    /// The server address whose turn it is.
    pub fn server_now(&self) -> SocketAddr {
        let settings = &self.inner.settings;
        let count = 1 + settings.other_server_addrs.len() as u64;
        match self.inner.server_turn.load(Ordering::Relaxed) % count {
            0 => settings.server_addr,
            n => settings.other_server_addrs[(n - 1) as usize],
        }
    }
}

/// QUIC application error code: the deny list arrived with a gap or over
/// the gateway's limit, or an issuer key set was not well formed; the next
/// connection gets both whole.
const PUSH_REFUSED: u32 = 2;

/// Reads the push stream the server opens on every connection (issuer
/// keys, the deny list), until the connection ends.
async fn read_server_push(connection: quinn::Connection, inner: Arc<Inner>) {
    let Ok(mut stream) = connection.accept_uni().await else { return };
    let frame_bytes_max = inner.settings.frame_bytes_max;
    while let Ok(push) = read_message::<ServerPush, _>(&mut stream, frame_bytes_max, "ServerPush").await {
        let applied = match push.update {
            Some(server_push::Update::DenyList(update)) => {
                lock(&inner.deny_list).apply(&update).map_err(|e| e.to_string())
            }
            Some(server_push::Update::IssuerKeys(set)) => set
                .to_published(ISSUER_KEYS_HELD_MAX)
                .map(|keys| *lock(&inner.issuer_keys) = keys)
                .map_err(|e| e.to_string()),
            Some(server_push::Update::TerminalKeys(set)) => set
                .to_held(TERMINAL_KEYS_HELD_MAX)
                .and_then(|terminal_keys| {
                    let version_1_refused_from_secs = set.version_1_refused_from_secs()?;
                    *lock(&inner.gate_rules) = GateRules { terminal_keys, version_1_refused_from_secs };
                    Ok(())
                })
                .map_err(|e| e.to_string()),
            // A kind of update newer than this client: skipped.
            None => Ok(()),
        };
        if let Err(error) = applied {
            connection.close(PUSH_REFUSED.into(), error.as_bytes());
            return;
        }
    }
}
