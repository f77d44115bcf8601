//! One settlement at a time: the lock a run holds from its first read to
//! its last write, on a file for a node's archive, in PostgreSQL for a
//! cluster's.

use std::fs::{File, OpenOptions};
use std::path::Path;

use farestream_money::StoreLocation;
use farestream_money::session_lock::SessionLock;

use super::settle_types::{SettleError, SettleSettings};
use crate::tables::ArchiveSource;

/// One settlement at a time, held until dropped: two runs of one day at
/// once (the cut-over and an operator's `settle`, or two nodes' cut-overs)
/// would both be run N, and any two share the tables' `.tmp` folders.
pub enum SettlementLock {
    /// A node's archive: the kernel's lock on a file in it, which only
    /// the process's end lets go.
    File { _held: File },
    /// A cluster's shared archive, which nodes on other machines settle
    /// too: an advisory lock in the PostgreSQL money store they share (a
    /// bucket has no lock, and a mount's `flock` may not reach across
    /// machines).
    Postgres { held: SessionLock },
}

impl SettlementLock {
    /// Whether the lock is still this run's: asked before each file the
    /// run puts, so a run whose lock went with its connection stops
    /// rather than write beside the next holder (it may still finish the
    /// one put under way when the connection went).
    pub async fn confirm(&self) -> Result<(), SettleError> {
        match self {
            SettlementLock::File { .. } => Ok(()),
            SettlementLock::Postgres { held } => {
                held.confirm().await.map_err(|lost| SettleError::Output(format!("the settlement lock: {lost}")))
            }
        }
    }
}

/// The settlement's lock, once it is free. Either kind goes with the
/// process, so a crashed run holds nothing.
pub async fn settlement_lock(
    settings: &SettleSettings,
    archive: &ArchiveSource,
) -> Result<SettlementLock, SettleError> {
    match (&settings.shared_archive, &settings.store, archive) {
        (None, _, ArchiveSource::Dir(dir)) => Ok(SettlementLock::File { _held: archive_lock_file(dir).await? }),
        (Some(_), StoreLocation::Postgres(config), _) => {
            let config = (**config).clone();
            // Waited for on a blocking thread, as the file's lock is.
            let held = tokio::task::spawn_blocking(move || SessionLock::acquire(&config, SETTLEMENT_LOCK_KEY))
                .await
                .map_err(|e| SettleError::Output(format!("waiting for the settlement lock: {e}")))??;
            Ok(SettlementLock::Postgres { held })
        }
        _ => Err(SettleError::Input(
            "a cluster's settlement needs payments.money_store on PostgreSQL, as cluster.enabled does".into(),
        )),
    }
}

/// The advisory lock a cluster's settlement holds ("settle!!" in ASCII).
pub const SETTLEMENT_LOCK_KEY: i64 = 0x7365_7474_6c65_2121;

/// The lock on `SETTLEMENT_LOCK_FILE` in a node's archive.
async fn archive_lock_file(archive_dir: &Path) -> Result<File, SettleError> {
    let path = archive_dir.join(SETTLEMENT_LOCK_FILE);
    let io = |e: &dyn std::fmt::Display| SettleError::Output(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(archive_dir).map_err(|e| io(&e))?;
    let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path).map_err(|e| io(&e))?;
    // Waited for on a blocking thread: the run that holds it may be a
    // future polled by this very thread (two settlements in one task).
    let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file)).await.map_err(|e| io(&e))?;
    locked.map_err(|e| io(&e))
}

/// The settlement lock's file in `DATA_DIR/archive`.
pub const SETTLEMENT_LOCK_FILE: &str = ".settlement.lock";
