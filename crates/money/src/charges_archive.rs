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
//! put whole), each node's batches numbered apart.

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
    pub batch_charges_max: usize,
    pub faults: std::sync::Arc<Faults>,
    pub clock: std::sync::Arc<dyn farestream_ingest::clock_source::Clock>,
}

impl ChargesArchive {
    /// Archives every decided charge not yet archived (blocking).
    pub fn run_once(&self) -> Result<u64, ChargesArchiveError> {
        let mut store = farestream_core::sync::lock(&self.store);
        let place = ArchivePlace { root: &self.root, node: &self.node };
        archive_decided_charges(&mut store, place, self.batch_charges_max, self.clock.now_ms(), &self.faults)
    }
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
    batch_charges_max: usize,
    now: UnixMillis,
    faults: &Faults,
) -> Result<u64, ChargesArchiveError> {
    let mut archived = 0;
    loop {
        let claimed = store.in_transaction(|tx| claim_batch(tx, place.node, batch_charges_max))?;
        let Some(batch) = claimed else { return Ok(archived) };
        let rows = archive_batch(&mut store.db(), batch)?;
        write_charges_batch(place.root, batch, &rows, faults)?;
        store.in_transaction(|tx| {
            tx.execute("UPDATE charges SET archived_at = ?2 WHERE archive_batch = ?1", &[batch.into(), now.into()])
        })?;
        archived += rows.len() as u64;
    }
}

/// This node's batch left unfinished by a crash, or a new one of decided
/// charges, the oldest written first: `charges_by_archive_batch` holds the
/// unarchived ones in write order (migration 14), so the claim reads them
/// in index order rather than sorting them all. Claims are taken one at a
/// time ([`Lock::ChargesArchive`]): batch numbers are unique across the
/// nodes of one store, and a charge is in one node's batch.
fn claim_batch(tx: &mut dyn Db, node: &NodeId, batch_charges_max: usize) -> Result<Option<i64>, StoreError> {
    tx.lock(Lock::ChargesArchive)?;
    let node = Value::Text(node.as_str());
    let unfinished = tx
        .query_one(
            "SELECT min(archive_batch) FROM charges
             WHERE archive_batch IS NOT NULL AND archived_at IS NULL
               AND (archive_node = ?1 OR archive_node IS NULL)",
            &[node],
        )?
        .opt_int(0)?;
    if unfinished.is_some() {
        return Ok(unfinished);
    }
    let next = tx.query_one("SELECT coalesce(max(archive_batch), 0) + 1 FROM charges", &[])?.int(0)?;
    let claimed = tx.execute(
        &format!(
            "UPDATE charges SET archive_batch = ?1, archive_node = ?2 WHERE charge_seq IN (
                 SELECT charge_seq FROM charges
                 WHERE archive_batch IS NULL AND outcome NOT IN {UNDECIDED_OUTCOMES_SQL}
                 ORDER BY charge_seq LIMIT ?3)"
        ),
        &[next.into(), node, Value::Int(i64::try_from(batch_charges_max).unwrap_or(i64::MAX))],
    )?;
    Ok((claimed > 0).then_some(next))
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
mod tests {
    use super::*;
    use crate::test_cluster::on_each_engine;
    use farestream_ingest::archive::read::{archive_files, read_all_charges};

    fn insert(store: &mut MoneyStore, n: u8, date_days: i64, outcome: &str) {
        let id = [n; 16];
        store
            .db()
            .execute(
                "INSERT INTO charges (charge_id, card_id, service_date, kind, amount_cents, currency, scan_ids,
                                      created_at, outcome, next_attempt_at)
                 VALUES (?1, 7, ?2, 'ride', 300, 'CNY', ?3, 1, ?4, 0)",
                &[Value::Bytes(&id), date_days.into(), Value::Bytes(&id), Value::Text(outcome)],
            )
            .expect("insert");
    }

    fn node(n: u8) -> NodeId {
        NodeId::parse(&format!("{n:02x}").repeat(16)).expect("a node id")
    }

    #[test]
    fn a_batch_cut_short_by_a_crash_is_written_again_under_the_same_names_and_undecided_charges_wait() {
        on_each_engine(|store, engine| {
            let dir = tempfile::tempdir().expect("tempdir");
            insert(store, 1, 20_000, "succeeded");
            insert(store, 2, 20_001, "declined");
            insert(store, 3, 20_001, "nothing_due");
            insert(store, 4, 20_001, "failed");
            insert(store, 5, 20_001, "pending");
            let root = dir.path().join("charges");
            let node = node(1);
            let target = ChargesRoot::Dir(root.clone());
            let place = ArchivePlace { root: &target, node: &node };
            // The crash: the batch was numbered, its files never written.
            let claimed = store.in_transaction(|tx| claim_batch(tx, &node, 2)).expect("claim");
            assert_eq!(claimed, Some(1), "{engine}");
            let faults = Faults::default();
            assert_eq!(archive_decided_charges(store, place, 2, 99, &faults).expect("archive"), 3, "{engine}");
            assert_eq!(archive_decided_charges(store, place, 2, 99, &faults).expect("again"), 0, "{engine}");
            let mut ids: Vec<u8> = read_all_charges(&root).expect("read").iter().map(|c| c.charge_id[0]).collect();
            ids.sort_unstable();
            assert_eq!(ids, vec![1, 2, 3], "{engine}: decided charges once each; failed and pending wait");
            let names: Vec<String> = archive_files(&root)
                .expect("files")
                .iter()
                .map(|p| p.strip_prefix(&root).expect("under root").display().to_string())
                .collect();
            assert_eq!(
                names,
                [
                    "service_date=2024-10-04/charges-000000000001.parquet",
                    "service_date=2024-10-05/charges-000000000001.parquet",
                    "service_date=2024-10-05/charges-000000000002.parquet",
                ],
                "{engine}"
            );
            assert_eq!(fs::read_dir(root.join(".tmp")).expect("tmp").count(), 0, "no temporary file left");
        });
    }

    /// Two servers on one store: a batch one of them left unfinished is
    /// its own to finish; the other numbers a new batch after it and
    /// never archives a charge twice.
    #[test]
    fn two_nodes_on_one_store_finish_only_their_own_batches_and_number_them_apart() {
        on_each_engine(|store, engine| {
            let dir = tempfile::tempdir().expect("tempdir");
            for n in 1..=4 {
                insert(store, n, 20_000, "succeeded");
            }
            let (a, b) = (node(0xa), node(0xb));
            let (root_a, root_b) = (dir.path().join("a"), dir.path().join("b"));
            assert_eq!(store.in_transaction(|tx| claim_batch(tx, &a, 2)).expect("a claims"), Some(1), "{engine}");
            let faults = Faults::default();
            let (target_a, target_b) = (ChargesRoot::Dir(root_a.clone()), ChargesRoot::Dir(root_b.clone()));
            let place_b = ArchivePlace { root: &target_b, node: &b };
            assert_eq!(archive_decided_charges(store, place_b, 2, 5, &faults).expect("b"), 2, "{engine}");
            let place_a = ArchivePlace { root: &target_a, node: &a };
            assert_eq!(archive_decided_charges(store, place_a, 2, 6, &faults).expect("a"), 2, "{engine}");
            let ids = |root: &Path| -> Vec<u8> {
                let mut ids: Vec<u8> = read_all_charges(root).expect("read").iter().map(|c| c.charge_id[0]).collect();
                ids.sort_unstable();
                ids
            };
            assert_eq!((ids(&root_a), ids(&root_b)), (vec![1, 2], vec![3, 4]), "{engine}: each charge once");
            let b_file = root_b.join("service_date=2024-10-04/charges-000000000002.parquet");
            assert!(b_file.exists(), "{engine}: b numbered its batch after a's");
        });
    }

    /// A cluster's charges go into the shared store, each file put whole
    /// under the name a node's own archive gives it, and a batch written
    /// again (a crash before its mark) puts the same names.
    #[test]
    fn a_clusters_charges_are_put_into_the_shared_store_under_the_names_a_node_gives_them() {
        use object_store::{ObjectStore, ObjectStoreExt};
        on_each_engine(|store, engine| {
            insert(store, 1, 20_000, "succeeded");
            insert(store, 2, 20_001, "declined");
            insert(store, 3, 20_001, "pending");
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let memory = std::sync::Arc::new(object_store::memory::InMemory::new());
            let shared = SharedStore { store: memory.clone(), local_root: None };
            let target = ChargesRoot::Shared(shared, runtime.handle().clone());
            let node = node(1);
            let place = ArchivePlace { root: &target, node: &node };
            assert_eq!(
                archive_decided_charges(store, place, 10, 5, &Faults::default()).expect("archive"),
                2,
                "{engine}"
            );
            let rows_at = |path: &str| -> usize {
                let path = object_store::path::Path::from(path);
                let bytes = runtime.block_on(async { memory.get(&path).await?.bytes().await }).expect("the file");
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .expect("a Parquet file")
                    .build()
                    .expect("a reader");
                reader.map(|batch| batch.expect("a batch").num_rows()).sum()
            };
            assert_eq!(rows_at("charges/service_date=2024-10-04/charges-000000000001.parquet"), 1, "{engine}");
            assert_eq!(rows_at("charges/service_date=2024-10-05/charges-000000000001.parquet"), 1, "{engine}");
            let listed = runtime.block_on(async {
                use futures_util::TryStreamExt;
                memory.list(None).try_collect::<Vec<_>>().await
            });
            assert_eq!(listed.expect("a listing").len(), 2, "{engine}: the pending charge waits");
        });
    }
}
