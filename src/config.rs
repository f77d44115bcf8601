//! Configuration: `config/farestream.toml` is embedded as the defaults; a
//! file given with `--config` is merged over it key by key, so an operator's
//! file lists only what it changes. Unknown keys are errors, not silence.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use crate::ridecode::FreshnessPolicy;
use crate::service_day::ServiceDayPolicy;

/// The defaults, as shipped in `config/farestream.toml`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/farestream.toml");

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("config: {0}")]
    Invalid(String),
}

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
    pub metrics: MetricsConfig,
    pub gateway: GatewayConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen_addr: SocketAddr,
    pub connections_max: usize,
    pub streams_per_connection_max: u32,
    pub idle_timeout_ms: u64,
    pub pipeline_batches_in_flight_max: usize,
    pub verify_slices_in_flight_max: usize,
    pub verify_slice_scans_max: usize,
    pub frames_in_flight_bytes_max: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireConfig {
    pub frame_bytes_max: u32,
    pub batch_scans_max: usize,
    pub id_bytes_max: usize,
    pub frame_read_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RideCodeConfig {
    pub code_validity_secs: u32,
    pub clock_skew_secs: u32,
    pub credential_validity_secs: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub accepted_lateness_secs: u32,
    pub verify_chunk_signatures: usize,
    pub dedup_sweep_interval_secs: u64,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    pub lock_wait_ms_max: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen_addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub connect_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    pub retry_attempts_max: u32,
    pub retry_backoff_ms_initial: u64,
    pub retry_backoff_ms_max: u64,
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
                .map_err(|source| ConfigError::Parse { path: path.to_string(), source: Box::new(source) })
        };
        let mut merged = parse(DEFAULT_CONFIG_TOML, "<defaults>")?;
        merge(&mut merged, parse(overrides, origin)?);
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|source| ConfigError::Parse { path: origin.to_string(), source: Box::new(source) })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.service_day_policy()?;
        if self.service_day.start_hour > 23 {
            return Err(ConfigError::Invalid("service_day.start_hour must be 0-23".into()));
        }
        let positive = [
            ("server.connections_max", self.server.connections_max as u64),
            ("server.streams_per_connection_max", u64::from(self.server.streams_per_connection_max)),
            ("server.pipeline_batches_in_flight_max", self.server.pipeline_batches_in_flight_max as u64),
            ("server.verify_slices_in_flight_max", self.server.verify_slices_in_flight_max as u64),
            ("server.verify_slice_scans_max", self.server.verify_slice_scans_max as u64),
            ("wire.batch_scans_max", self.wire.batch_scans_max as u64),
            ("wire.id_bytes_max", self.wire.id_bytes_max as u64),
            ("ingest.verify_chunk_signatures", self.ingest.verify_chunk_signatures as u64),
            ("archive.poll_interval_ms", self.archive.poll_interval_ms),
            ("wal.segment_bytes_max", self.wal.segment_bytes_max),
            ("archive.row_group_rows_max", self.archive.row_group_rows_max as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if self.server.frames_in_flight_bytes_max < u64::from(self.wire.frame_bytes_max) {
            // Otherwise a frame at the limit could never be read.
            return Err(ConfigError::Invalid(
                "server.frames_in_flight_bytes_max must be at least wire.frame_bytes_max".into(),
            ));
        }
        if u64::from(self.wal.record_bytes_max) < 2 * u64::from(self.wire.frame_bytes_max) {
            // A batch's decisions must always fit one record: the server
            // claims a batch's scans before it logs them.
            return Err(ConfigError::Invalid(
                "wal.record_bytes_max must be at least twice wire.frame_bytes_max".into(),
            ));
        }
        Ok(())
    }

    pub fn freshness_policy(&self) -> FreshnessPolicy {
        FreshnessPolicy {
            code_validity_secs: self.ride_code.code_validity_secs,
            clock_skew_secs: self.ride_code.clock_skew_secs,
        }
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

    #[test]
    fn defaults_parse() {
        let config = Config::defaults();
        assert_eq!(config.ride_code.code_validity_secs, 60);
        assert_eq!(config.service_day.start_hour, 4);
    }

    #[test]
    fn an_override_file_changes_only_its_keys() {
        let config = Config::from_toml_over_defaults("[wire]\nbatch_scans_max = 5\n", "test").expect("config");
        assert_eq!(config.wire.batch_scans_max, 5);
        assert_eq!(config.wire.frame_bytes_max, Config::defaults().wire.frame_bytes_max);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(Config::from_toml_over_defaults("[wire]\nbatch_scan_max = 5\n", "test").is_err());
        assert!(Config::from_toml_over_defaults("[service_day]\ntime_zone = \"Mars/Olympus\"\n", "test").is_err());
        assert!(Config::from_toml_over_defaults("[wire]\nbatch_scans_max = 0\n", "test").is_err());
    }
}
