//! The server's settings, taken from [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::Semaphore;

use farestream_core::fares::FareTable;
use farestream_core::money::Cents;
use farestream_core::retry::{BreakerSettings, RetryPolicy};
use farestream_core::service_day::ServiceDayPolicy;
use farestream_ingest::archive::checkpoint::checkpoint_path;
use farestream_ingest::archive::{ArchiveWriterConfig, ArchiverSettings, scans_root};
use farestream_ingest::config::fare_table::load_fares;
use farestream_ingest::config::{Config, ConfigError};
use farestream_ingest::wal::WalConfig;
use farestream_money::charges_archive::BatchLimits;
use farestream_money::money_settings::{MoneySettings, PaymentGatewaySettings};
use farestream_money::money_store::STORE_PASSWORD_ENV;
use farestream_money::pg_store::PgSessionLimits;
use farestream_money::{DispatcherSettings, PricerSettings, StoreLocation};

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen_addr: SocketAddr,
    pub connections_max: usize,
    /// Handshakes in progress at once, apart from `connections_max`.
    pub handshakes_in_flight_max: usize,
    pub peer_limits: PeerLimitSettings,
    /// A connection with no batch for this long is closed.
    pub batch_idle_timeout: Duration,
    /// A handshake not finished within this is dropped.
    pub handshake_timeout: Duration,
    pub streams_per_connection_max: u32,
    pub idle_timeout: Duration,
    pub pipeline_batches_in_flight_max: usize,
    pub verify_slices_in_flight_max: usize,
    pub verify_slice_scans_max: usize,
    pub frames_in_flight_bytes_max: usize,
    /// How long in-flight batches may take to finish on shutdown.
    pub shutdown_deadline: Duration,
    pub frame_bytes_max: u32,
    pub frame_read_timeout: Duration,
    /// Cards per deny-list page sent to a gateway that connects.
    pub deny_list_page_cards_max: usize,
    /// Deny-list changes kept for gateways that fall behind; one further
    /// behind gets the full list.
    pub deny_list_changes_kept_max: usize,
    pub dedup_sweep_interval: Duration,
    /// How often the dedup indexes are written to disk for a fast restart.
    pub dedup_snapshot_interval: Duration,
    /// How often the fleet's revocation list is read again.
    pub revocation_check_interval: Duration,
    /// How often the issuer key store is read again (`keys.reload_interval_ms`).
    pub issuer_keys_reload_interval: Duration,
    /// How long a batch waits for a read of the shared key store
    /// (`keys.unknown_key_read_wait_ms_max`).
    pub unknown_key_read_wait: Duration,
    /// How the key store is opened when it is read again.
    pub keystore: farestream_ingest::keystore::KeystoreOptions,
    pub data_dir: PathBuf,
    pub wal: WalConfig,
    pub wal_ack_wait: Duration,
    pub wal_disk_full_retry: Duration,
    pub wal_fsync_enabled: bool,
    pub archive: ArchiveWriterConfig,
    pub archiver: ArchiverSettings,
    pub money: MoneySettings,
    /// When the daily settlement runs; `None` when
    /// `settlement.cut_over_enabled` is off.
    pub cut_over: Option<CutOverSettings>,
    /// Where batches are made durable when `cluster.enabled`: the
    /// JetStream scans stream instead of the node's own log.
    pub cluster: Option<crate::cluster_ingest::ClusterSettings>,
}

/// The limits per source address and per gateway, from `[server]`.
#[derive(Debug, Clone)]
pub struct PeerLimitSettings {
    pub connections_per_address_max: usize,
    pub handshakes_per_address_per_sec_max: u64,
    pub handshakes_per_address_in_flight_max: usize,
    pub connections_per_gateway_max: usize,
    pub gateway_scans_per_sec_max: u64,
    pub gateway_batches_in_flight_max: usize,
    /// The largest batch: a gateway's scan bucket holds at least this
    /// many, so a whole batch always passes once the bucket is full.
    pub batch_scans_max: usize,
}

/// The daily cut-over: the settlement of each service day once it ends,
/// and again for each day still inside the rebill window.
#[derive(Debug, Clone)]
pub struct CutOverSettings {
    /// How long after a service day ends its first settlement runs.
    pub delay: Duration,
    /// How long a failed settlement waits before it is tried again.
    pub retry_interval: Duration,
    /// Where service days start and end.
    pub service_day: ServiceDayPolicy,
    /// A day stays open to late scans this long after it ends: each
    /// cut-over settles again every day still inside it.
    pub accepted_lateness: Duration,
}

impl ServerSettings {
    /// Settings for a server over `data_dir`; reads the fare table that
    /// `payments.fares_file` names (the shipped one when empty).
    pub fn from_config(config: &Config, data_dir: &Path) -> Result<ServerSettings, ConfigError> {
        let fares_file = Some(Path::new(&config.payments.fares_file)).filter(|p| !p.as_os_str().is_empty());
        let fares = load_fares(fares_file)?;
        let wal = WalConfig {
            dir: farestream_ingest::wal::wal_dir(data_dir),
            segment_bytes_max: config.wal.segment_bytes_max,
            record_bytes_max: config.wal.record_bytes_max,
        };
        let lateness = Duration::from_secs(u64::from(config.ingest.accepted_lateness_secs));
        let service_day = config.service_day_policy()?;
        Ok(ServerSettings {
            listen_addr: config.server.listen_addr,
            connections_max: config.server.connections_max,
            handshakes_in_flight_max: config.server.handshakes_in_flight_max,
            peer_limits: PeerLimitSettings {
                connections_per_address_max: config.server.connections_per_address_max,
                handshakes_per_address_per_sec_max: config.server.handshakes_per_address_per_sec_max,
                handshakes_per_address_in_flight_max: config.server.handshakes_per_address_in_flight_max,
                connections_per_gateway_max: config.server.connections_per_gateway_max,
                gateway_scans_per_sec_max: config.server.gateway_scans_per_sec_max,
                gateway_batches_in_flight_max: config.server.gateway_batches_in_flight_max,
                batch_scans_max: config.wire.batch_scans_max,
            },
            batch_idle_timeout: Duration::from_millis(config.server.batch_idle_timeout_ms),
            handshake_timeout: Duration::from_millis(config.server.handshake_timeout_ms),
            streams_per_connection_max: config.server.streams_per_connection_max,
            idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
            pipeline_batches_in_flight_max: config.server.pipeline_batches_in_flight_max,
            verify_slices_in_flight_max: config.server.verify_slices_in_flight_max,
            verify_slice_scans_max: config.server.verify_slice_scans_max,
            frames_in_flight_bytes_max: usize::try_from(config.server.frames_in_flight_bytes_max)
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS),
            shutdown_deadline: Duration::from_millis(config.server.shutdown_deadline_ms),
            frame_bytes_max: config.wire.frame_bytes_max,
            frame_read_timeout: Duration::from_millis(config.wire.frame_read_timeout_ms),
            deny_list_page_cards_max: config.wire.deny_list_page_cards_max,
            deny_list_changes_kept_max: config.server.deny_list_changes_kept_max,
            dedup_sweep_interval: Duration::from_secs(config.ingest.dedup_sweep_interval_secs.max(1)),
            dedup_snapshot_interval: Duration::from_secs(config.ingest.dedup_snapshot_interval_secs.max(1)),
            revocation_check_interval: Duration::from_millis(config.fleet.revocation_check_interval_ms),
            issuer_keys_reload_interval: Duration::from_millis(config.keys.reload_interval_ms),
            unknown_key_read_wait: Duration::from_millis(config.keys.unknown_key_read_wait_ms_max),
            keystore: farestream_ingest::keystore::KeystoreOptions::from_config(config),
            data_dir: data_dir.to_path_buf(),
            archiver: ArchiverSettings {
                wal_dir: wal.dir.clone(),
                record_bytes_max: wal.record_bytes_max,
                checkpoint_path: checkpoint_path(data_dir),
                poll_interval: Duration::from_millis(config.archive.poll_interval_ms),
                retry_after_error: Duration::from_millis(config.archive.retry_after_error_ms),
                service_day,
                accepted_lateness: lateness,
            },
            money: money_settings(config, data_dir, fares)?,
            cluster: crate::cluster_ingest::ClusterSettings::from_config(config)?,
            cut_over: config.settlement.cut_over_enabled.then(|| CutOverSettings {
                delay: Duration::from_secs(u64::from(config.settlement.cut_over_delay_minutes) * 60),
                retry_interval: Duration::from_secs(config.settlement.cut_over_retry_interval_secs),
                service_day,
                accepted_lateness: lateness,
            }),
            wal,
            wal_ack_wait: Duration::from_millis(config.wal.ack_wait_ms_max),
            wal_disk_full_retry: Duration::from_millis(config.wal.disk_full_retry_ms),
            wal_fsync_enabled: config.wal.fsync_enabled,
            archive: ArchiveWriterConfig {
                root: scans_root(data_dir),
                file_bytes_max: config.archive.file_bytes_max,
                file_age_max: Duration::from_secs(config.archive.file_age_secs_max),
                row_group_rows_max: config.archive.row_group_rows_max,
            },
        })
    }
}

/// How decided charges are claimed into the charges archive's batches:
/// by `serve`'s archive job and by the settlement's flush alike.
pub fn charges_archive_batches(config: &Config) -> BatchLimits {
    BatchLimits {
        charges_max: config.payments.charges_archive_batch_charges_max,
        claim_stale_ms: saturating_ms(config.payments.charges_archive_claim_stale_ms),
    }
}

/// Where the money store is (`payments.money_store`), its password read
/// from `payments.money_store_password_file` or the environment, its
/// connections bounded by [`money_store_session_limits`].
pub fn money_store_location(config: &Config, data_dir: &Path) -> Result<StoreLocation, ConfigError> {
    money_store_at(&config.payments.money_store, config, data_dir, &money_store_session_limits(config))
}

/// The store `url` names (`"sqlite"` or a PostgreSQL URL), with the
/// config's password, its connections bounded by `limits`: `money migrate
/// --to` reads its target so.
pub fn money_store_at(
    url: &str,
    config: &Config,
    data_dir: &Path,
    limits: &PgSessionLimits,
) -> Result<StoreLocation, ConfigError> {
    let password_env = std::env::var_os(STORE_PASSWORD_ENV).map(std::ffi::OsString::into_encoded_bytes);
    let location = StoreLocation::parse(url, data_dir, &config.payments.money_store_password_file, password_env)
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    Ok(location.with_session_limits(limits))
}

/// `payments.money_store_*_ms`: how long a PostgreSQL store's connections
/// wait.
pub fn money_store_session_limits(config: &Config) -> PgSessionLimits {
    let (p, ms) = (&config.payments, Duration::from_millis);
    PgSessionLimits {
        connect_timeout: ms(p.money_store_connect_timeout_ms),
        unreachable_after: ms(p.money_store_unreachable_after_ms),
        lock_wait_max: ms(p.money_store_lock_wait_ms_max),
        idle_in_transaction_max: ms(p.money_store_idle_in_transaction_ms_max),
    }
}

/// The money shell's settings from the config's `payments` section.
fn money_settings(config: &Config, data_dir: &Path, fares: FareTable) -> Result<MoneySettings, ConfigError> {
    let p = &config.payments;
    let ms = Duration::from_millis;
    let store = money_store_location(config, data_dir)?;
    let store_busy_wait = ms(p.store_busy_wait_ms);
    let pricer_poll = ms(p.pricer_poll_interval_ms);
    // The secret is read only when there is a gateway to sign for.
    let secret = if p.gateway_url.is_empty() { None } else { Some(config.payments_secret()?) };
    let gateway = secret.map(|secret| PaymentGatewaySettings {
        url: p.gateway_url.clone(),
        hmac_secret: secret.bytes().to_vec(),
        request_timeout: ms(p.request_timeout_ms),
        dispatch: DispatcherSettings {
            concurrency_max: p.dispatch_concurrency_max,
            batch_charges_max: p.dispatch_batch_charges_max,
            lease: ms(p.dispatch_lease_ms),
            retry: RetryPolicy {
                backoff_initial_ms: saturating_ms(p.retry_backoff_ms_initial),
                backoff_max_ms: saturating_ms(p.retry_backoff_ms_max),
                budget_ms: i64::from(p.retry_budget_hours).saturating_mul(3_600_000),
                failed_retry_after_ms: saturating_ms(p.failed_retry_after_ms),
            },
            breaker: BreakerSettings {
                failures_to_open: p.breaker_failures_to_open,
                probe_interval_initial_ms: saturating_ms(p.breaker_probe_interval_ms_initial),
                probe_interval_max_ms: saturating_ms(p.breaker_probe_interval_ms_max),
            },
            poll_interval: pricer_poll,
        },
    });
    Ok(MoneySettings {
        pricer: PricerSettings {
            wal_dir: farestream_ingest::wal::wal_dir(data_dir),
            record_bytes_max: config.wal.record_bytes_max,
            poll_interval: pricer_poll,
            fares,
            thread_nice: p.pricer_thread_nice,
            store_cache_mib: p.pricer_store_cache_mib,
            // In a cluster each partition's pricer closes its own cards'
            // windows, once it has priced what arrived before them.
            closes_exit_windows: !config.cluster.enabled,
        },
        store,
        deposit_cents: Cents::from_unsigned(p.deposit_cents),
        store_busy_wait,
        store_connections_max: p.money_store_connections_max,
        gateway,
        rides_arrive_within: Duration::from_secs(
            u64::from(config.ingest.accepted_lateness_secs) + u64::from(config.ride_code.clock_skew_secs),
        ),
        refund_check_interval: ms(p.refund_check_interval_ms),
        deny_list_sync_interval: ms(p.deny_list_sync_interval_ms),
        charges_archive_interval: ms(p.charges_archive_interval_ms),
        charges_archive_batches: charges_archive_batches(config),
    })
}

/// Milliseconds from the config as the core counts them.
fn saturating_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fares_file_that_is_missing_or_empty_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::defaults();
        config.payments.fares_file = dir.path().join("nowhere.toml").display().to_string();
        let missing = ServerSettings::from_config(&config, dir.path()).expect_err("missing").to_string();
        assert!(missing.contains("nowhere.toml"), "{missing}");
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").expect("write");
        config.payments.fares_file = empty.display().to_string();
        assert!(ServerSettings::from_config(&config, dir.path()).is_err(), "an empty table prices nothing");
        config.payments.fares_file = String::new();
        let shipped = ServerSettings::from_config(&config, dir.path()).expect("the shipped table");
        assert_eq!(shipped.money.pricer.fares.currency, "CNY");
    }
}
