//! The settlement's glue: its settings from the config, and the daily
//! settlement `serve` hands the server's cut-over job (which schedules and
//! supervises it: crates/server/src/cut_over.rs).

use std::path::Path;
use std::time::Duration;

use chrono::NaiveDate;
use farestream_analytics::settle::{SettleSettings, SharedArchive, settle_day};
use farestream_core::clock::UnixMillis;
use farestream_ingest::config::fare_table::load_fares;
use farestream_ingest::config::{Config, ConfigError};
use farestream_server::DailySettlement;
use tokio_util::sync::CancellationToken;

/// The settlement's settings for `data_dir`.
pub fn settle_settings(config: &Config, data_dir: &Path) -> Result<SettleSettings, ConfigError> {
    let fares_file = Some(Path::new(&config.payments.fares_file)).filter(|p| !p.as_os_str().is_empty());
    Ok(SettleSettings {
        data_dir: data_dir.to_path_buf(),
        store: farestream_server::money_store_location(config, data_dir)?,
        fares: load_fares(fares_file)?,
        service_day: config.service_day_policy()?,
        store_busy_wait: Duration::from_millis(config.payments.store_busy_wait_ms),
        charges_batches: farestream_server::charges_archive_batches(config),
        memory: farestream_analytics::tables::MemoryBudget::of(data_dir, &config.settlement),
        shared_archive: match config.cluster.enabled {
            true => Some(SharedArchive {
                location: config.cluster.archive_location()?,
                client: config.cluster.object_store_settings(),
            }),
            false => None,
        },
    })
}

/// The settlement's thread stack: DataFusion's planner recurses over the
/// statement, in frames an unoptimized build makes large (Cargo.toml).
const SETTLEMENT_STACK_BYTES: usize = 16 * 1024 * 1024;

/// The daily settlement over the archives, as the cut-over runs it.
#[derive(Debug)]
pub struct ArchiveSettlement {
    settings: SettleSettings,
}

impl ArchiveSettlement {
    /// The settlement of the archives under `data_dir`.
    pub fn new(config: &Config, data_dir: &Path) -> Result<ArchiveSettlement, ConfigError> {
        Ok(ArchiveSettlement { settings: settle_settings(config, data_dir)? })
    }
}

impl DailySettlement for ArchiveSettlement {
    /// Settles on a thread of its own, with the stack SQL planning needs
    /// and a runtime apart from the server's; a panic there goes on up.
    /// Stopped, it drops the settlement at its next await, as a crash
    /// there would (every file it writes is replaced whole, so the next
    /// run finds the day as it was or as settled).
    fn settle(&self, date: NaiveDate, now: UnixMillis, stop: &CancellationToken) -> Result<String, String> {
        let (settings, stop) = (self.settings.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("settle {date}"))
            .stack_size(SETTLEMENT_STACK_BYTES)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("no runtime for the settlement: {e}"))?;
                let settled = runtime.block_on(async {
                    tokio::select! {
                        settled = settle_day(&settings, date, now) => settled.map_err(|e| e.to_string()),
                        _ = stop.cancelled() => Err("stopped: the server is shutting down".to_string()),
                    }
                })?;
                Ok(format!(
                    "{} (report {}, {} breaks)",
                    settled.headline,
                    settled.report_path.display(),
                    settled.breaks.len()
                ))
            })
            .map_err(|e| format!("cannot start the settlement thread: {e}"))?;
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}
