//! Configuration: `config/farestream.toml` is embedded as the defaults; a
//! file given with `--config` is merged over it key by key, so an operator's
//! file lists only what it changes. Unknown keys are errors, not silence;
//! every numeric key has a range ([`ranges`]) and the keys that depend on
//! each other are checked together.

pub mod cluster;
pub mod fare_table;
pub mod ranges;
pub mod secret;

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

pub use farestream_gateway::GatewayConfig;
use farestream_gateway::GatewaySettings;

use farestream_core::ingest::PipelineConfig;
use farestream_core::ingest::dedup::DedupLimits;
use farestream_core::ridecode::FreshnessPolicy;
use farestream_core::service_day::ServiceDayPolicy;

/// The defaults, as shipped in `config/farestream.toml`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../../config/farestream.toml");

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {reason}")]
    Parse { path: String, reason: String },
    /// A key of the wrong type, or one that does not exist.
    #[error("config file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("config file {path}: {range}")]
    OutOfRange { path: String, range: ranges::OutOfRange },
    #[error("config: {0}")]
    Invalid(String),
}

/// The longest `keys.reload_interval_ms` allowed: what a key's trust tail
/// counts for a reread, whatever a node's own interval.
pub const KEYS_RELOAD_INTERVAL_MS_MAX: u64 = 60_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub wire: WireConfig,
    pub ride_code: RideCodeConfig,
    pub ingest: IngestConfig,
    pub wal: WalConfigToml,
    pub archive: ArchiveConfig,
    pub service_day: ServiceDayConfig,
    pub keys: KeysConfig,
    pub fleet: FleetConfig,
    pub metrics: MetricsConfig,
    pub gateway: GatewayConfig,
    pub payments: PaymentsConfig,
    pub api: ApiConfig,
    pub settlement: SettlementConfig,
    pub cluster: cluster::ClusterConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementConfig {
    pub cut_over_enabled: bool,
    pub cut_over_delay_minutes: u32,
    pub cut_over_retry_interval_secs: u64,
    pub memory_bytes_max: usize,
    pub spill_bytes_max: u64,
    pub query_partitions_per_core: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen_addr: SocketAddr,
    pub connections_max: usize,
    pub streams_per_connection_max: u32,
    pub idle_timeout_ms: u64,
    pub connections_per_address_max: usize,
    pub handshake_timeout_ms: u64,
    pub handshakes_in_flight_max: usize,
    pub handshakes_per_address_in_flight_max: usize,
    pub handshakes_per_address_per_sec_max: u64,
    pub connections_per_gateway_max: usize,
    pub batch_idle_timeout_ms: u64,
    pub gateway_scans_per_sec_max: u64,
    pub gateway_batches_in_flight_max: usize,
    pub pipeline_batches_in_flight_max: usize,
    pub verify_slices_in_flight_max: usize,
    pub verify_slice_scans_max: usize,
    pub frames_in_flight_bytes_max: u64,
    pub shutdown_deadline_ms: u64,
    pub deny_list_changes_kept_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireConfig {
    pub frame_bytes_max: u32,
    pub batch_scans_max: usize,
    pub id_bytes_max: usize,
    pub frame_read_timeout_ms: u64,
    pub deny_list_page_cards_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RideCodeConfig {
    pub code_validity_secs: u32,
    pub clock_skew_secs: u32,
    pub credential_validity_secs: u32,
    /// The service date (`YYYY-MM-DD`) from whose start version-1 codes,
    /// which anyone can read, are refused; absent while both are read.
    #[serde(default)]
    pub version_1_refused_from_date: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub accepted_lateness_secs: u32,
    pub verify_chunk_signatures: usize,
    pub dedup_sweep_interval_secs: u64,
    pub dedup_hot_entries_max: usize,
    pub dedup_cold_sweep_interval_secs: u32,
    pub dedup_snapshot_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfigToml {
    pub segment_bytes_max: u64,
    pub record_bytes_max: u32,
    pub ack_wait_ms_max: u64,
    pub disk_full_retry_ms: u64,
    pub fsync_enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    pub poll_interval_ms: u64,
    pub retry_after_error_ms: u64,
    pub file_bytes_max: u64,
    pub file_age_secs_max: u64,
    pub row_group_rows_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDayConfig {
    pub time_zone: String,
    pub start_hour: u32,
}

/// The fleet CA's settings (docs/protocol.md, "Enrolment").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    pub gateway_cert_valid_days: u32,
    pub revocation_check_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    pub lock_wait_ms_max: u64,
    pub signing_lead_secs: u64,
    pub reload_interval_ms: u64,
    pub unknown_key_read_wait_ms_max: u64,
    pub terminal_rotation_lead_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// `"sqlite"` or a PostgreSQL URL (`farestream_money::StoreLocation`).
    pub money_store: String,
    /// A file holding the PostgreSQL store's password (or the environment).
    pub money_store_password_file: String,
    pub fares_file: String,
    /// In cents, the currency's minor unit (`deposit_fen` before).
    pub deposit_cents: u64,
    pub refund_check_interval_ms: u64,
    pub deny_list_sync_interval_ms: u64,
    pub charges_archive_interval_ms: u64,
    pub charges_archive_batch_charges_max: usize,
    /// In a cluster, how old another node's claim on an unfinished
    /// charges batch must be before a node takes the batch over.
    pub charges_archive_claim_stale_ms: u64,
    pub gateway_url: String,
    /// A file holding the payment gateway's shared secret ([`secret`]).
    pub hmac_secret_file: String,
    pub dispatch_concurrency_max: usize,
    pub dispatch_batch_charges_max: usize,
    pub dispatch_lease_ms: u64,
    pub request_timeout_ms: u64,
    pub retry_budget_hours: u32,
    pub retry_backoff_ms_initial: u64,
    pub retry_backoff_ms_max: u64,
    pub failed_retry_after_ms: u64,
    pub breaker_failures_to_open: u32,
    pub breaker_probe_interval_ms_initial: u64,
    pub breaker_probe_interval_ms_max: u64,
    pub pricer_poll_interval_ms: u64,
    pub pricer_thread_nice: u8,
    pub pricer_store_cache_mib: u32,
    pub store_busy_wait_ms: u64,
    /// The PostgreSQL store's connections (`farestream_money::pg_store::PgSessionLimits`).
    pub money_store_connect_timeout_ms: u64,
    pub money_store_unreachable_after_ms: u64,
    pub money_store_lock_wait_ms_max: u64,
    pub money_store_connections_max: usize,
    pub money_store_idle_in_transaction_ms_max: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen_addr: String,
    pub notifications_file: String,
    pub request_bytes_max: usize,
    pub otp_validity_secs: u32,
    pub otp_attempts_max: u32,
    pub otp_resend_secs_min: u32,
    pub otp_sends_per_phone_per_hour_max: u32,
    pub otp_sends_per_client_per_hour_max: u32,
    pub otp_sends_per_minute_max: u32,
    pub otp_wrong_codes_per_phone_per_hour_max: u32,
    pub client_address_header: String,
    pub token_validity_secs: u32,
    pub account_charges_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen_addr: String,
}

impl Config {
    /// The embedded defaults.
    pub fn defaults() -> Config {
        Config::from_toml_over_defaults("", "<defaults>").expect("embedded config/farestream.toml is valid")
    }

    /// Defaults, overridden by `path` when one is given.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::defaults());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::from_toml_over_defaults(&text, &path.display().to_string())
    }

    /// Merges `overrides` (TOML text) over the embedded defaults.
    pub fn from_toml_over_defaults(overrides: &str, origin: &str) -> Result<Config, ConfigError> {
        let parse = |text: &str, path: &str| {
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse { path: path.to_string(), reason: one_line(&e.to_string()) })
        };
        let mut merged = parse(DEFAULT_CONFIG_TOML, "<defaults>")?;
        let mut overrides = parse(overrides, origin)?;
        refuse_removed_keys(&overrides, origin)?;
        rename_older_keys(&mut overrides, origin)?;
        merge(&mut merged, overrides);
        ranges::check(&merged).map_err(|range| ConfigError::OutOfRange { path: origin.to_string(), range })?;
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e| ConfigError::Key { path: origin.to_string(), reason: one_line(&e.to_string()) })?;
        config.validate()?;
        Ok(config)
    }

    /// The rules between keys; each key's own range was checked before.
    fn validate(&self) -> Result<(), ConfigError> {
        self.service_day_policy()?;
        self.cluster.validate()?;
        self.freshness_policy()?;
        let at_least = |key: &str, value: u64, other: &str, floor: u64, why: &str| {
            if value >= floor {
                return Ok(());
            }
            Err(ConfigError::Invalid(format!("{key} = {value} must be at least {other} ({floor}): {why}")))
        };
        let (frame, record) = (u64::from(self.wire.frame_bytes_max), u64::from(self.wal.record_bytes_max));
        at_least(
            "wal.record_bytes_max",
            record,
            "twice wire.frame_bytes_max",
            2 * frame,
            "a batch's decisions must always fit one record, since its scans are claimed before they are logged",
        )?;
        at_least(
            "wal.segment_bytes_max",
            self.wal.segment_bytes_max,
            "wal.record_bytes_max",
            record,
            "a segment must hold the largest record",
        )?;
        at_least(
            "server.frames_in_flight_bytes_max",
            self.server.frames_in_flight_bytes_max,
            "wire.frame_bytes_max",
            frame,
            "a frame at the limit could never be read",
        )?;
        at_least(
            "gateway.retry_backoff_ms_max",
            self.gateway.retry_backoff_ms_max,
            "gateway.retry_backoff_ms_initial",
            self.gateway.retry_backoff_ms_initial,
            "the backoff grows from the first to the largest",
        )?;
        // A card id is at most 10 bytes as a varint, 11 with its tag.
        let page_bytes = (self.wire.deny_list_page_cards_max as u64).saturating_mul(11).saturating_add(64);
        at_least(
            "wire.frame_bytes_max",
            frame,
            "a full deny-list page (wire.deny_list_page_cards_max x 11 bytes + 64)",
            page_bytes,
            "a gateway reads each page as one frame",
        )?;
        at_least(
            "payments.retry_backoff_ms_max",
            self.payments.retry_backoff_ms_max,
            "payments.retry_backoff_ms_initial",
            self.payments.retry_backoff_ms_initial,
            "the backoff grows from the first to the largest",
        )?;
        at_least(
            "payments.breaker_probe_interval_ms_max",
            self.payments.breaker_probe_interval_ms_max,
            "payments.breaker_probe_interval_ms_initial",
            self.payments.breaker_probe_interval_ms_initial,
            "the wait between probes grows from the first to the largest",
        )?;
        at_least(
            "payments.charges_archive_claim_stale_ms",
            self.payments.charges_archive_claim_stale_ms,
            "three times payments.charges_archive_interval_ms",
            self.payments.charges_archive_interval_ms.saturating_mul(3),
            "a node renews its claim on an unfinished batch once a round; a node that missed two rounds has stopped",
        )?;
        at_least(
            "payments.dispatch_lease_ms",
            self.payments.dispatch_lease_ms,
            "payments.request_timeout_ms",
            self.payments.request_timeout_ms,
            "a charge must not be claimed again while its request may still be answered",
        )?;
        let header = &self.api.client_address_header;
        if header.len() > 64 || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ConfigError::Invalid(format!(
                "api.client_address_header = {header:?} must be empty or a header name (letters, digits, '-'; at most 64)"
            )));
        }
        let url = &self.payments.gateway_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::Invalid(format!(
                "payments.gateway_url = {:?} must be empty or an http:// or https:// URL",
                self.payments.gateway_url
            )));
        }
        Ok(())
    }

    /// The gateway client's settings for a server at `server_addr`.
    pub fn gateway_settings(&self, server_addr: std::net::SocketAddr) -> GatewaySettings {
        GatewaySettings::from_config(&self.gateway, self.wire.frame_bytes_max, server_addr)
    }

    /// How long a superseded issuer key stays trusted after it stopped
    /// signing: a running server may sign with it until its next reread
    /// of the key store (the longest `keys.reload_interval_ms` allowed,
    /// not this node's: every node of a cluster must put a key's end at
    /// one moment, whatever its reread interval), then its last
    /// credential's window, the last code made under it (fresh for
    /// `code_validity_secs`, read within the clock skew on either side),
    /// uploaded as late as accepted.
    pub fn issuer_key_trust_tail_secs(&self) -> i64 {
        let ride_code = &self.ride_code;
        let reload_secs = i64::try_from(KEYS_RELOAD_INTERVAL_MS_MAX.div_ceil(1000)).unwrap_or(i64::MAX);
        [
            ride_code.credential_validity_secs,
            ride_code.code_validity_secs,
            ride_code.clock_skew_secs,
            ride_code.clock_skew_secs,
            self.ingest.accepted_lateness_secs,
        ]
        .into_iter()
        .map(i64::from)
        .fold(reload_secs, i64::saturating_add)
    }

    /// The settings that decide a key's end and a scan's verdict, which
    /// every node of a cluster must share (checked at its start).
    pub fn verdict_timing(&self) -> String {
        let (ride_code, lateness) = (&self.ride_code, self.ingest.accepted_lateness_secs);
        format!(
            "trust_tail_secs={} credential_validity_secs={} code_validity_secs={} clock_skew_secs={} accepted_lateness_secs={lateness}",
            self.issuer_key_trust_tail_secs(),
            ride_code.credential_validity_secs,
            ride_code.code_validity_secs,
            ride_code.clock_skew_secs,
        )
    }

    /// The pipeline's tunables.
    pub fn pipeline_config(&self) -> Result<PipelineConfig, ConfigError> {
        Ok(PipelineConfig {
            freshness: self.freshness_policy()?,
            accepted_lateness_secs: self.ingest.accepted_lateness_secs,
            verify_chunk_signatures: self.ingest.verify_chunk_signatures,
            batch_scans_max: self.wire.batch_scans_max,
            id_bytes_max: self.wire.id_bytes_max,
            service_day: self.service_day_policy()?,
            dedup: self.dedup_limits(),
        })
    }

    /// When the dedup indexes' hot tiers are frozen.
    pub fn dedup_limits(&self) -> DedupLimits {
        DedupLimits {
            hot_entries_max: self.ingest.dedup_hot_entries_max,
            cold_sweep_interval_ms: i64::from(self.ingest.dedup_cold_sweep_interval_secs) * 1000,
            ..DedupLimits::DEFAULT
        }
    }

    /// The payment gateway's shared secret: from [`secret::PAYMENTS_SECRET_ENV`]
    /// or `payments.hmac_secret_file`, the demo's when neither is set.
    pub fn payments_secret(&self) -> Result<secret::PaymentsSecret, ConfigError> {
        // Bytes, UTF-8 or not: a secret set but unreadable is never ignored.
        let from_env = std::env::var_os(secret::PAYMENTS_SECRET_ENV).map(std::ffi::OsString::into_encoded_bytes);
        secret::PaymentsSecret::resolve(from_env, &self.payments.hmac_secret_file)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    pub fn freshness_policy(&self) -> Result<FreshnessPolicy, ConfigError> {
        Ok(FreshnessPolicy {
            code_validity_secs: self.ride_code.code_validity_secs,
            clock_skew_secs: self.ride_code.clock_skew_secs,
            credential_validity_secs: self.ride_code.credential_validity_secs,
            unsealed_refused_from_secs: self.unsealed_refused_from_secs()?,
        })
    }

    /// `ride_code.version_1_refused_from_date` as the Unix second its
    /// service day starts.
    fn unsealed_refused_from_secs(&self) -> Result<Option<u32>, ConfigError> {
        let Some(text) = &self.ride_code.version_1_refused_from_date else { return Ok(None) };
        let invalid =
            |why: &str| ConfigError::Invalid(format!("ride_code.version_1_refused_from_date = {text:?} {why}"));
        let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| invalid("is not a date written YYYY-MM-DD"))?;
        let start_ms = self.service_day_policy()?.day_start(date).ok_or_else(|| invalid("is out of range"))?;
        let start = u32::try_from(start_ms.div_euclid(1000))
            .map_err(|_| invalid("is outside the times a ride code holds (1970 to 2106)"))?;
        Ok(Some(start))
    }

    pub fn service_day_policy(&self) -> Result<ServiceDayPolicy, ConfigError> {
        let time_zone = self
            .service_day
            .time_zone
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("unknown time zone {:?}", self.service_day.time_zone)))?;
        Ok(ServiceDayPolicy { time_zone, start_hour: self.service_day.start_hour })
    }
}

/// An error message on one line: toml's span the key it names on a second.
pub(crate) fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Keys renamed since a release, as (section, older name, name): a file
/// written before still means what it said.
const RENAMED_KEYS: &[(&str, &str, &str)] = &[("payments", "deposit_fen", "deposit_cents")];

/// Keys no longer read, as (section, name, what to do instead): a file
/// that sets one is refused with the reason, not silently ignored.
const REMOVED_KEYS: &[(&str, &str, &str)] = &[(
    "payments",
    "hmac_secret",
    "a secret does not belong in a config file: put it in a file named by payments.hmac_secret_file, or in FARESTREAM_PAYMENTS_SECRET",
)];

fn refuse_removed_keys(overrides: &toml::Table, origin: &str) -> Result<(), ConfigError> {
    for (section, name, instead) in REMOVED_KEYS {
        let Some(toml::Value::Table(table)) = overrides.get(*section) else { continue };
        if table.contains_key(*name) {
            let reason = format!("{section}.{name} is no longer read: {instead}");
            return Err(ConfigError::Key { path: origin.to_string(), reason });
        }
    }
    Ok(())
}

/// Takes an override file's older key names as the new ones; a file that
/// sets both is refused, naming them.
fn rename_older_keys(overrides: &mut toml::Table, origin: &str) -> Result<(), ConfigError> {
    for (section, older, name) in RENAMED_KEYS {
        let Some(toml::Value::Table(table)) = overrides.get_mut(*section) else { continue };
        let Some(value) = table.remove(*older) else { continue };
        if table.contains_key(*name) {
            let reason = format!("{section}.{older} is the older name of {section}.{name}: set one of them");
            return Err(ConfigError::Key { path: origin.to_string(), reason });
        }
        table.insert((*name).to_string(), value);
    }
    Ok(())
}

/// Overlays `overrides` onto `base`, table by table.
fn merge(base: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(override_table)) => {
                merge(base_table, override_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version-1 cut-off date at its extremes: the start of that
    /// service day, and a clear refusal for anything a ride code's 32-bit
    /// time cannot hold or that is not a date.
    #[test]
    fn the_version_1_cut_off_date_is_a_service_day_start_within_a_codes_times() {
        let with = |date: &str| {
            let toml = format!("[ride_code]\nversion_1_refused_from_date = {date:?}\n");
            Config::from_toml_over_defaults(&toml, "cut-off.toml")
        };
        let policy = with("2027-06-01").expect("a date").freshness_policy().expect("policy");
        // 04:00 in Shanghai is 20:00 UTC the day before.
        assert_eq!(policy.unsealed_refused_from_secs, Some(1_811_793_600));
        assert_eq!(Config::defaults().freshness_policy().expect("policy").unsealed_refused_from_secs, None);
        let earliest = with("1970-01-01").map(|c| c.freshness_policy().map(|p| p.unsealed_refused_from_secs));
        assert!(earliest.is_err(), "04:00 in Shanghai on 1970-01-01 is before 1970 in UTC: {earliest:?}");
        assert!(with("2106-02-06").is_ok(), "the last day a ride code's time holds");
        for bad in ["", "2027-02-30", "June 1st", "2106-02-08", "+262143-12-31", "2027-06-01T00:00:00Z"] {
            let error = with(bad).expect_err(bad).to_string();
            assert!(error.contains("version_1_refused_from_date"), "{bad}: {error}");
        }
    }

    #[test]
    fn defaults_parse() {
        let config = Config::defaults();
        assert_eq!(config.ride_code.code_validity_secs, 60);
        assert_eq!(config.service_day.start_hour, 4);
    }

    #[test]
    fn an_older_key_name_in_an_override_file_still_means_what_it_said() {
        let older = Config::from_toml_over_defaults("[payments]\ndeposit_fen = 500\n", "old.toml").expect("older name");
        assert_eq!(older.payments.deposit_cents, 500);
        let error = Config::from_toml_over_defaults("[payments]\ndeposit_fen = 100000001\n", "old.toml")
            .expect_err("its range holds under the older name")
            .to_string();
        assert!(error.contains("payments.deposit_cents"), "{error}");
    }

    #[test]
    fn a_removed_key_is_refused_with_what_to_do_instead() {
        let error = Config::from_toml_over_defaults("[payments]\nhmac_secret = \"x\"\n", "old.toml")
            .expect_err("a secret in the config")
            .to_string();
        assert!(
            error.contains("payments.hmac_secret is no longer read") && error.contains("FARESTREAM_PAYMENTS_SECRET")
        );
    }

    #[test]
    fn an_override_file_changes_only_its_keys() {
        let config = Config::from_toml_over_defaults("[wire]\nbatch_scans_max = 5\n", "test").expect("config");
        assert_eq!(config.wire.batch_scans_max, 5);
        assert_eq!(config.wire.frame_bytes_max, Config::defaults().wire.frame_bytes_max);
    }

    fn set(key: &str, value: &str) -> Result<Config, ConfigError> {
        let (section, name) = key.split_once('.').expect("dotted key");
        Config::from_toml_over_defaults(&format!("[{section}]\n{name} = {value}\n"), "test.toml")
    }

    /// The operator's walk from the review: every numeric key at zero, one
    /// below and above its range, a negative number, the largest integer,
    /// a float and a string is refused with a message naming the key; its
    /// own minimum and maximum are taken (cross-key rules aside).
    #[test]
    fn every_key_is_refused_outside_its_range_by_name() {
        for range in ranges::RANGES {
            let key = range.key;
            let mut refused = vec![i64::MAX.to_string(), (-1).to_string(), "1.5".into(), "\"x\"".into()];
            refused.push((range.max + 1).to_string());
            if range.min > 0 {
                refused.extend([(range.min - 1).to_string(), "0".into()]);
            }
            for value in &refused {
                let error = set(key, value).err().unwrap_or_else(|| panic!("{key} = {value} was accepted"));
                let message = error.to_string();
                assert!(message.contains(key.split('.').nth(1).expect("name")), "{key} = {value}: {message}");
                assert_eq!(message.lines().count(), 1, "{message}");
                if !value.contains(['.', '"']) {
                    let bounds = format!("{} to {} {}", range.min, range.max, range.unit);
                    assert!(message.contains(&bounds), "{key} = {value}: {message}");
                }
            }
            for value in [range.min, range.max] {
                match set(key, &value.to_string()) {
                    Ok(_) | Err(ConfigError::Invalid(_)) => {}
                    Err(error) => panic!("{key} = {value} refused: {error}"),
                }
            }
        }
    }

    #[test]
    fn the_config_file_states_every_range_the_code_checks() {
        let mut section = "";
        let mut comment = String::new();
        let mut numeric_keys = 0;
        for line in DEFAULT_CONFIG_TOML.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
            } else if let Some(text) = line.strip_prefix('#') {
                comment.push_str(text);
            } else if let Some((name, value)) = line.split_once(" = ") {
                if value.parse::<i64>().is_ok() {
                    numeric_keys += 1;
                    let key = format!("{section}.{name}");
                    let range = ranges::of(&key).unwrap_or_else(|| panic!("{key} has no range"));
                    let stated = format!("Range: {} to {} {}.", range.min, range.max, range.unit);
                    assert!(comment.contains(&stated), "{key}: the file does not say {stated:?}");
                }
                comment.clear();
            }
        }
        assert_eq!(numeric_keys, ranges::RANGES.len(), "every range names a key in the file");
    }

    #[test]
    fn the_client_address_header_is_a_header_name_of_at_most_64_bytes() {
        for ok in ["", "x", "X-Forwarded-For", &"a".repeat(64)] {
            let text = format!("[api]\nclient_address_header = \"{ok}\"\n");
            let config = Config::from_toml_over_defaults(&text, "test.toml").unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            assert_eq!(config.api.client_address_header, ok);
        }
        for bad in [&"a".repeat(65) as &str, "x_forwarded", "x:y", "é", "a b", "x\\ny"] {
            let text = format!("[api]\nclient_address_header = \"{bad}\"\n");
            let error = Config::from_toml_over_defaults(&text, "test.toml").err().unwrap_or_else(|| panic!("{bad:?}"));
            assert!(error.to_string().contains("client_address_header"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn misspelt_keys_wrong_types_and_cross_key_mistakes_are_refused_once_each() {
        let cases = [
            ("[wire]\nbatch_scan_max = 5\n", "batch_scan_max"),
            ("[wires]\nbatch_scans_max = 5\n", "wires"),
            ("[service_day]\ntime_zone = \"Mars/Olympus\"\n", "Mars/Olympus"),
            ("[service_day]\ntime_zone = 4\n", "time_zone"),
            ("[server]\nlisten_addr = \"nowhere\"\n", "listen_addr"),
            ("[wal]\nfsync_enabled = \"yes\"\n", "fsync_enabled"),
            ("[wire]\nframe_bytes_max = 67108864\n", "wal.record_bytes_max"),
            ("[wal]\nrecord_bytes_max = 1073741824\n", "wal.segment_bytes_max"),
            ("[server]\nframes_in_flight_bytes_max = 65536\n", "wire.frame_bytes_max"),
            ("[gateway]\nretry_backoff_ms_initial = 600000\n", "retry_backoff_ms_max"),
            ("[payments]\nbreaker_probe_interval_ms_initial = 60000\n", "breaker_probe_interval_ms_max"),
            ("[payments]\ncharges_archive_interval_ms = 100001\n", "charges_archive_claim_stale_ms"),
            ("[payments]\ndeposit_fen = 1\ndeposit_cents = 1\n", "payments.deposit_fen is the older name"),
            ("[api]\nclient_address_header = \"x forwarded\"\n", "client_address_header"),
            ("not toml at all", "not valid TOML"),
        ];
        for (text, named) in cases {
            let error = Config::from_toml_over_defaults(text, "test.toml").err().unwrap_or_else(|| panic!("{text}"));
            let message = error.to_string();
            assert!(message.contains(named), "{text}: {message}");
            assert!(std::error::Error::source(&error).is_none(), "said once, not again as a cause: {message}");
        }
    }
}
