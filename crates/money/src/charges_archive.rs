//! The charges archive: decided charges (succeeded, declined, nothing due)
//! as Parquet under `DATA_DIR/archive/charges/service_date=YYYY-MM-DD/`.
//!
//! One round takes up to `batch_charges_max` decided, unarchived charges,
//! numbers them as a batch in the money store, writes one file per service
//! date (`charges-BATCH.parquet`, built in `archive/charges/.tmp/`, outside
//! every partition, fsynced, renamed in), then marks them archived. A
//! crash before the mark rewrites the same batch under the same names, so
//! a charge is in the archive once. A charge still `failed` waits: the
//! archive holds outcomes, not attempts. In a cluster the files go into
//! the shared archive's store instead (`charges/service_date=…/`, each
//! put whole), each node's batches numbered apart; there a batch whose
//! node stopped claiming it (died, never came back) is taken over by
//! another once its claim is `claim_stale_ms` old: every node
//! puts a batch's files under the same names, so the charges are still
//! in the archive once.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::MoneyStore;
use crate::db::{Db, Lock, Value};
use crate::outbox::archive_batch;
use crate::store::StoreError;
use farestream_core::archive::charge_rows::{charge_schema, charges_to_record_batch};
use farestream_core::charges::{ChargeRecord, UNDECIDED_OUTCOMES_SQL};
use farestream_core::clock::UnixMillis;
use farestream_ingest::archive::parquet_writer::{
    ArchiveError, archive_writer_properties, partition_dir, partition_dir_name, sync_dir,
};
use farestream_ingest::faults::Faults;
use farestream_ingest::node_id::NodeId;
use farestream_shared_archive::SharedStore;
use parquet::arrow::ArrowWriter;
use parquet::basic::Encoding;
use parquet::file::properties::WriterProperties;

/// Where the charges archive lives under a data directory.
pub fn charges_root(data_dir: &Path) -> PathBuf {
    charges_root_in(&data_dir.join("archive"))
}

/// Where the charges archive lives in an archive directory.
pub fn charges_root_in(archive_dir: &Path) -> PathBuf {
    archive_dir.join(CHARGES_TABLE)
}

/// The charges archive's folder in an archive, its table's name.
pub const CHARGES_TABLE: &str = "charges";

/// Where a server's charges archive is written.
#[derive(Clone)]
pub enum ChargesRoot {
    /// A node's own, `DATA_DIR/archive/charges`: each file built in
    /// `.tmp/`, fsynced and renamed in.
    Dir(PathBuf),
    /// A cluster's shared archive (a mount or object storage), which
    /// every node's batches go into, each file put whole. The handle runs
    /// the puts from the blocking thread the archive works on.
    Shared(SharedStore, tokio::runtime::Handle),
}

#[derive(Debug, thiserror::Error)]
pub enum ChargesArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// The charges archive of a running server: its own store connection.
pub struct ChargesArchive {
    pub store: std::sync::Mutex<MoneyStore>,
    pub root: ChargesRoot,
    /// This server's data dir: its batches are its own.
    pub node: NodeId,
    pub batches: BatchLimits,
    pub faults: std::sync::Arc<Faults>,
    pub clock: std::sync::Arc<dyn farestream_ingest::clock_source::Clock>,
}

impl ChargesArchive {
    /// Archives every decided charge not yet archived (blocking).
    pub fn run_once(&self) -> Result<u64, ChargesArchiveError> {
        let mut store = farestream_core::sync::lock(&self.store);
        let place = ArchivePlace { root: &self.root, node: &self.node };
        archive_decided_charges(&mut store, place, self.batches, self.clock.now_ms(), &self.faults)
    }
}

/// How charges are claimed into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// The most charges one batch holds
    /// (`payments.charges_archive_batch_charges_max`).
    pub charges_max: usize,
    /// How old, in ms by the claiming node's clock, another node's claim
    /// on an unfinished batch must be for a node writing into a shared
    /// archive to take it over (`payments.charges_archive_claim_stale_ms`).
    /// A node renews its claim each round it works on the batch, so only
    /// a node that stopped (died, or cannot reach the store) loses it.
    pub claim_stale_ms: i64,
}

/// Where a server's charges archive is: the directory its files go to
/// and the node whose batches they are.
#[derive(Clone, Copy)]
pub struct ArchivePlace<'a> {
    pub root: &'a ChargesRoot,
    pub node: &'a NodeId,
}

/// Archives decided charges until none are left; returns how many.
pub fn archive_decided_charges(
    store: &mut MoneyStore,
    place: ArchivePlace<'_>,
    limits: BatchLimits,
    now: UnixMillis,
    faults: &Faults,
) -> Result<u64, ChargesArchiveError> {
    // Only where every node puts a batch under the same names: in a
    // node's own archive dir the batch's files may already be in the
    // other node's dir, and a second copy would count its charges twice.
    let takeover = match place.root {
        ChargesRoot::Shared(..) => Takeover::ClaimedBy(now.saturating_sub(limits.claim_stale_ms)),
        ChargesRoot::Dir(_) => Takeover::Never,
    };
    let mut archived = 0;
    loop {
        let claimed = store.in_transaction(|tx| claim_batch(tx, place.node, limits.charges_max, now, takeover))?;
        let Some(batch) = claimed else { return Ok(archived) };
        let rows = archive_batch(&mut store.db(), batch)?;
        write_charges_batch(place.root, batch, &rows, faults)?;
        store.in_transaction(|tx| {
            tx.execute("UPDATE charges SET archived_at = ?2 WHERE archive_batch = ?1", &[batch.into(), now.into()])
        })?;
        archived += rows.len() as u64;
    }
}

/// Which other nodes' unfinished batches a node may take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takeover {
    Never,
    /// Those last claimed at or before this moment (Unix ms), or before
    /// migration 17 recorded claim times.
    ClaimedBy(UnixMillis),
}

/// This node's batch left unfinished by a crash, another node's whose
/// claim went stale (`takeover`), or a new one of decided charges, the
/// oldest written first: `charges_by_archive_batch` holds the unarchived
/// ones in write order (migration 14), so the claim reads them in index
/// order rather than sorting them all. Claims are taken one at a time
/// ([`Lock::ChargesArchive`]): batch numbers are unique across the nodes
/// of one store, and a charge is in one batch. Each claim, a renewal
/// included, records `now`, so a node working on its batch keeps it.
fn claim_batch(
    tx: &mut dyn Db,
    node: &NodeId,
    batch_charges_max: usize,
    now: UnixMillis,
    takeover: Takeover,
) -> Result<Option<i64>, StoreError> {
    tx.lock(Lock::ChargesArchive)?;
    let node = Value::Text(node.as_str());
    let own = tx
        .query_one(
            "SELECT min(archive_batch) FROM charges
             WHERE archive_batch IS NOT NULL AND archived_at IS NULL
               AND (archive_node = ?1 OR archive_node IS NULL)",
            &[node],
        )?
        .opt_int(0)?;
    let unfinished = match own {
        Some(batch) => Some(batch),
        None => stale_batch(tx, takeover)?,
    };
    if let Some(batch) = unfinished {
        tx.execute(
            "UPDATE charges SET archive_node = ?2, archive_claimed_at = ?3 WHERE archive_batch = ?1",
            &[batch.into(), node, now.into()],
        )?;
        return Ok(Some(batch));
    }
    let next = tx.query_one("SELECT coalesce(max(archive_batch), 0) + 1 FROM charges", &[])?.int(0)?;
    let claimed = tx.execute(
        &format!(
            "UPDATE charges SET archive_batch = ?1, archive_node = ?2, archive_claimed_at = ?4 WHERE charge_seq IN (
                 SELECT charge_seq FROM charges
                 WHERE archive_batch IS NULL AND outcome NOT IN {UNDECIDED_OUTCOMES_SQL}
                 ORDER BY charge_seq LIMIT ?3)"
        ),
        &[next.into(), node, Value::Int(i64::try_from(batch_charges_max).unwrap_or(i64::MAX)), now.into()],
    )?;
    Ok((claimed > 0).then_some(next))
}

/// Another node's unfinished batch whose claim is as old as `takeover`
/// allows, the oldest first; logged and counted when found.
fn stale_batch(tx: &mut dyn Db, takeover: Takeover) -> Result<Option<i64>, StoreError> {
    let Takeover::ClaimedBy(by) = takeover else { return Ok(None) };
    let Some(row) = tx.query_opt(
        "SELECT archive_batch, archive_node FROM charges
         WHERE archive_batch IS NOT NULL AND archived_at IS NULL
           AND (archive_claimed_at IS NULL OR archive_claimed_at <= ?1)
         ORDER BY archive_batch LIMIT 1",
        &[by.into()],
    )?
    else {
        return Ok(None);
    };
    let (batch, from) = (row.int(0)?, row.opt_text(1)?.unwrap_or_default());
    tracing::warn!(batch, from_node = %from, "taking over a charges-archive batch whose node stopped claiming it");
    crate::money_metrics::charges_archive_batch_taken_over();
    Ok(Some(batch))
}

/// The charges archive's encoding, chosen with the scans archive's (see
/// `scan_writer_properties`): ZSTD, no dictionary on the near-unique ids,
/// amounts and times, bloom filters on `card_id` and `charge_id`.
pub fn charges_writer_properties() -> WriterProperties {
    let unique = ["charge_id", "card_id", "scan_ids.list.item", "created_at", "decided_at", "gateway_txn_id"]
        .map(|column| (column, Encoding::PLAIN));
    archive_writer_properties(&unique, &["card_id", "charge_id"], None)
}

/// Writes one batch's charges, a file per service date
/// (`charges-BATCH.parquet`), each durable before the next.
pub fn write_charges_batch(
    root: &ChargesRoot,
    batch: i64,
    rows: &[ChargeRecord],
    faults: &Faults,
) -> Result<(), ArchiveError> {
    let mut by_date: BTreeMap<chrono::NaiveDate, Vec<ChargeRecord>> = BTreeMap::new();
    for row in rows {
        by_date.entry(row.service_date).or_default().push(row.clone());
    }
    let name = format!("charges-{batch:012}.parquet");
    for (date, rows) in by_date {
        match root {
            ChargesRoot::Dir(root) => write_in_dir(root, &partition_dir(root, date), &name, &rows, faults)?,
            ChargesRoot::Shared(shared, runtime) => {
                let path = format!("{CHARGES_TABLE}/{}/{name}", partition_dir_name(date));
                let io = |source| ArchiveError::Io { path: PathBuf::from(&path), source };
                let bytes = encode_charges(&rows, Path::new(&path))?;
                faults.before_write().map_err(io)?;
                runtime.block_on(shared.put_durable(&path, bytes.into())).map_err(|e| io(std::io::Error::other(e)))?;
            }
        }
    }
    Ok(())
}

/// One file of a node's own charges archive, built in `.tmp/`, fsynced
/// and renamed into `dir`.
fn write_in_dir(
    root: &Path,
    dir: &Path,
    name: &str,
    rows: &[ChargeRecord],
    faults: &Faults,
) -> Result<(), ArchiveError> {
    let tmp_dir = farestream_ingest::archive::parquet_writer::open_files_dir(root);
    fs::create_dir_all(&tmp_dir).map_err(|source| ArchiveError::Io { path: tmp_dir.clone(), source })?;
    fs::create_dir_all(dir).map_err(|source| ArchiveError::Io { path: dir.to_path_buf(), source })?;
    let tmp = tmp_dir.join(format!("{name}.tmp"));
    let io = |source| ArchiveError::Io { path: tmp.clone(), source };
    let bytes = encode_charges(rows, &tmp)?;
    faults.before_write().map_err(io)?;
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    farestream_ingest::files::fsync(&file, faults)
        .map_err(|source| ArchiveError::Fsync { path: tmp.clone(), source })?;
    let rename = |source| ArchiveError::Rename { path: tmp.clone(), source };
    faults.before_rename().map_err(rename)?;
    fs::rename(&tmp, dir.join(name)).map_err(rename)?;
    sync_dir(dir, faults)
}

/// One Parquet file of `rows`, in memory (a batch is at most
/// `charges_archive_batch_max` charges).
fn encode_charges(rows: &[ChargeRecord], path: &Path) -> Result<Vec<u8>, ArchiveError> {
    let parquet = |source| ArchiveError::Parquet { path: path.to_path_buf(), source };
    let mut writer =
        ArrowWriter::try_new(Vec::new(), charge_schema(), Some(charges_writer_properties())).map_err(parquet)?;
    let records = charges_to_record_batch(rows).map_err(|e| parquet(e.into()))?;
    writer.write(&records).map_err(parquet)?;
    writer.into_inner().map_err(parquet)
}

#[cfg(test)]
#[path = "charges_archive_tests.rs"]
mod tests;
