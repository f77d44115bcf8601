//! The charges archive's tests: batches claimed, finished after a crash,
//! numbered apart on one store, and taken over in a shared archive.

use super::*;
use crate::test_cluster::{TestCluster, on_each_engine, open_store};
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

/// Another node's claim goes stale after this long in these tests.
const STALE_MS: i64 = 1_000;

fn limits(charges_max: usize) -> BatchLimits {
    BatchLimits { charges_max, claim_stale_ms: STALE_MS }
}

/// A claim as a node that then dies makes it: numbered, never written.
fn claim_and_die(store: &mut MoneyStore, node: &NodeId, charges_max: usize, now: UnixMillis) -> Option<i64> {
    store.in_transaction(|tx| claim_batch(tx, node, charges_max, now, Takeover::Never)).expect("a claim")
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
        assert_eq!(claim_and_die(store, &node, 2, 1), Some(1), "{engine}");
        let faults = Faults::default();
        assert_eq!(archive_decided_charges(store, place, limits(2), 99, &faults).expect("archive"), 3, "{engine}");
        assert_eq!(archive_decided_charges(store, place, limits(2), 99, &faults).expect("again"), 0, "{engine}");
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

/// Two servers on one store, each with its own archive dir: a batch one
/// of them left unfinished is its own to finish, however long ago it was
/// claimed (its files may already be in its own dir); the other numbers
/// a new batch after it and never archives a charge twice.
#[test]
fn two_nodes_on_one_store_finish_only_their_own_batches_and_number_them_apart() {
    on_each_engine(|store, engine| {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in 1..=4 {
            insert(store, n, 20_000, "succeeded");
        }
        let (a, b) = (node(0xa), node(0xb));
        let (root_a, root_b) = (dir.path().join("a"), dir.path().join("b"));
        assert_eq!(claim_and_die(store, &a, 2, 0), Some(1), "{engine}");
        let faults = Faults::default();
        let (target_a, target_b) = (ChargesRoot::Dir(root_a.clone()), ChargesRoot::Dir(root_b.clone()));
        let place_b = ArchivePlace { root: &target_b, node: &b };
        let long_after = 1_000 * STALE_MS;
        assert_eq!(archive_decided_charges(store, place_b, limits(2), long_after, &faults).expect("b"), 2, "{engine}");
        let place_a = ArchivePlace { root: &target_a, node: &a };
        assert_eq!(archive_decided_charges(store, place_a, limits(2), long_after, &faults).expect("a"), 2, "{engine}");
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
        let (runtime, memory, target) = shared_in_memory();
        let node = node(1);
        let place = ArchivePlace { root: &target, node: &node };
        assert_eq!(
            archive_decided_charges(store, place, limits(10), 5, &Faults::default()).expect("archive"),
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

/// A cluster's shared archive held in memory, as the charges archive
/// writes to it: the runtime its puts run on, the store, and the root.
fn shared_in_memory() -> (tokio::runtime::Runtime, std::sync::Arc<object_store::memory::InMemory>, ChargesRoot) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let memory = std::sync::Arc::new(object_store::memory::InMemory::new());
    let target = ChargesRoot::Shared(SharedStore { store: memory.clone(), local_root: None }, runtime.handle().clone());
    (runtime, memory, target)
}

/// The charge ids in every file of a shared archive held in memory, and
/// the files' names, sorted.
fn shared_contents(
    runtime: &tokio::runtime::Runtime,
    memory: &object_store::memory::InMemory,
) -> (Vec<u8>, Vec<String>) {
    use futures_util::TryStreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};
    runtime.block_on(async {
        let listed: Vec<_> = memory.list(None).try_collect().await.expect("a listing");
        let (mut ids, mut names) = (Vec::new(), Vec::new());
        for object in listed {
            let bytes = memory.get(&object.location).await.expect("the file").bytes().await.expect("its bytes");
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                .expect("a Parquet file")
                .build()
                .expect("a reader");
            for batch in reader {
                let (batch, date) = (batch.expect("a batch"), chrono::NaiveDate::default());
                let rows =
                    farestream_core::archive::charge_rows::charges_from_record_batch(&batch, date).expect("charges");
                ids.extend(rows.iter().map(|c| c.charge_id[0]));
            }
            names.push(object.location.to_string());
        }
        ids.sort_unstable();
        names.sort();
        (ids, names)
    })
}

/// A cluster: a node claims a batch and dies before writing it. Another
/// node leaves it alone while the claim is fresh, takes it over once the
/// claim is `claim_stale_ms` old and puts it under the name the
/// first would have; the first, back, finds nothing left of its own. A
/// node that renews its claim (a round that could not write) keeps it.
#[test]
fn in_a_shared_archive_a_batch_whose_node_stopped_claiming_it_is_taken_over_once_stale() {
    on_each_engine(|store, engine| {
        for n in 1..=6 {
            insert(store, n, 20_000, "succeeded");
        }
        let (runtime, memory, target) = shared_in_memory();
        let (a, b, c) = (node(0xa), node(0xb), node(0xc));
        let faults = Faults::default();
        let run = |store: &mut MoneyStore, node: &NodeId, now: UnixMillis| {
            archive_decided_charges(store, ArchivePlace { root: &target, node }, limits(2), now, &faults)
                .expect("a round")
        };
        assert_eq!(claim_and_die(store, &a, 2, 10_000), Some(1), "{engine}");
        // c claims batch 2 and renews it a moment before it would go stale.
        assert_eq!(claim_and_die(store, &c, 2, 10_000), Some(2), "{engine}");
        assert_eq!(claim_and_die(store, &c, 2, 10_000 + STALE_MS - 1), Some(2), "{engine}: its own, renewed");

        assert_eq!(
            run(store, &b, 10_000 + STALE_MS - 1),
            2,
            "{engine}: a's claim is fresh; b writes a batch of its own"
        );
        let (ids, names) = shared_contents(&runtime, &memory);
        assert_eq!(ids, vec![5, 6], "{engine}");
        assert_eq!(names, ["charges/service_date=2024-10-04/charges-000000000003.parquet"], "{engine}");

        assert_eq!(run(store, &b, 10_000 + STALE_MS), 2, "{engine}: a's claim is stale, c's renewal is not");
        let (ids, names) = shared_contents(&runtime, &memory);
        assert_eq!(ids, vec![1, 2, 5, 6], "{engine}");
        assert_eq!(names[0], "charges/service_date=2024-10-04/charges-000000000001.parquet", "{engine}");

        assert_eq!(run(store, &a, 10_000 + STALE_MS + 1), 0, "{engine}: a, back, has nothing of its own left");
        assert_eq!(run(store, &c, 10_000 + STALE_MS + 1), 2, "{engine}: c finishes its own batch");
        let (ids, names) = shared_contents(&runtime, &memory);
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6], "{engine}: every decided charge once");
        assert_eq!(names.len(), 3, "{engine}: {names:?}");
        let unarchived = store.db().query_one("SELECT count(*) FROM charges WHERE archived_at IS NULL", &[]);
        assert_eq!(unarchived.expect("a count").int(0).expect("an int"), 0, "{engine}");
    });
}

/// The node that was slow, not dead: it writes the batch it claimed
/// after another took it over and wrote it. The same names and rows, so
/// each charge is still in the archive once.
#[test]
fn a_slow_node_finishing_a_batch_taken_over_from_it_puts_the_same_file() {
    on_each_engine(|store, engine| {
        for n in 1..=2 {
            insert(store, n, 20_000, "declined");
        }
        let (runtime, memory, target) = shared_in_memory();
        let (a, b) = (node(0xa), node(0xb));
        let batch = claim_and_die(store, &a, 10, 0).expect("a claims");
        let rows_seen_by_a = archive_batch(&mut store.db(), batch).expect("a reads its batch");
        let place_b = ArchivePlace { root: &target, node: &b };
        assert_eq!(archive_decided_charges(store, place_b, limits(10), STALE_MS, &Faults::default()).expect("b"), 2);
        let after_b = shared_contents(&runtime, &memory);
        write_charges_batch(&target, batch, &rows_seen_by_a, &Faults::default()).expect("a's late write");
        assert_eq!(shared_contents(&runtime, &memory), after_b, "{engine}");
        assert_eq!(after_b.0, vec![1, 2], "{engine}");
    });
}

/// Each engine's store, as a location more than one connection can open.
fn each_location(mut work: impl FnMut(&crate::StoreLocation, &str)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = crate::StoreLocation::Sqlite(crate::store::store_path(dir.path()));
    drop(open_store(&sqlite)); // made and migrated
    work(&sqlite, "sqlite");
    if let Some(cluster) = TestCluster::shared() {
        let postgres = cluster.new_location();
        drop(open_store(&postgres));
        work(&postgres, "postgres");
    }
}

/// From an outside review: two live nodes (b and c), each on its own connection, run
/// their archive rounds at the same moment, both past dead node a's stale
/// claim. The claim lock lets one take the batch over; its renewal makes
/// the claim fresh for the other, which numbers a batch of its own. Every
/// charge is archived once, the counts add up, nothing is left.
#[test]
fn two_nodes_taking_over_one_stale_batch_at_once_archive_each_charge_once() {
    each_location(|location, engine| {
        let mut setup = open_store(location);
        for n in 1..=6 {
            insert(&mut setup, n, 20_000, "succeeded");
        }
        let a = node(0xa);
        let claimed = setup.in_transaction(|tx| claim_batch(tx, &a, 2, 0, Takeover::Never)).expect("a claims, dies");
        assert_eq!(claimed, Some(1), "{engine}");
        let (runtime, memory, target) = shared_in_memory();
        let barrier = std::sync::Barrier::new(2);
        let counts: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = [node(0xb), node(0xc)]
                .into_iter()
                .map(|me| {
                    let (target, barrier) = (&target, &barrier);
                    s.spawn(move || {
                        let mut store = open_store(location);
                        barrier.wait();
                        let place = ArchivePlace { root: target, node: &me };
                        archive_decided_charges(&mut store, place, limits(2), 10 * STALE_MS, &Faults::default())
                            .expect("a round")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        assert_eq!(counts.iter().sum::<u64>(), 6, "{engine}: {counts:?}");
        let (ids, files) = shared_contents(&runtime, &memory);
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6], "{engine}: each charge once");
        assert_eq!(files.len(), 3, "{engine}: {files:?}");
        let left = setup.db().query_one("SELECT count(*) FROM charges WHERE archived_at IS NULL", &[]);
        assert_eq!(left.expect("count").int(0).expect("int"), 0, "{engine}");
    });
}

/// From an outside review: a batch claimed before migration 17 (archive_claimed_at NULL)
/// by another node is never taken over into a node's own archive dir,
/// however late: only a shared archive takes it.
#[test]
fn a_claim_from_before_claim_times_is_never_taken_over_into_a_nodes_own_dir() {
    each_location(|location, engine| {
        let mut store = open_store(location);
        insert(&mut store, 1, 20_000, "declined");
        let a = node(0xa);
        assert_eq!(store.in_transaction(|tx| claim_batch(tx, &a, 2, 0, Takeover::Never)).expect("a"), Some(1));
        store.db().execute("UPDATE charges SET archive_claimed_at = NULL", &[]).expect("as before 17");
        let dir = tempfile::tempdir().expect("tempdir");
        let target = ChargesRoot::Dir(dir.path().join("b"));
        let place = ArchivePlace { root: &target, node: &node(0xb) };
        let archived = archive_decided_charges(&mut store, place, limits(2), i64::MAX / 2, &Faults::default());
        assert_eq!(archived.expect("b's round"), 0, "{engine}: a's batch is a's");
    });
}
