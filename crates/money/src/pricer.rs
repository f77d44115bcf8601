//! The pricer thread: reads the write-ahead log forward from its own cursor
//! in the money store, up to what the commit thread has made durable, and
//! prices each stretch it reads in one store transaction that also moves
//! the cursor. A crash loses at most a transaction that never committed;
//! the replay prices the same rows again and derives the same charge ids.
//! Between reads it prices the rider-days whose entry's exit window closed.
//!
//! The log keeps every segment the pricer still needs: the archiver deletes
//! a segment only once both have passed it ([`LogReaders`], in `log_reader`).
//!
//! Errors: a damaged log stops the pricer for good (the server stops with
//! it), and so does a cursor another server took (a copy of this data
//! dir started under the same `NODE_ID`: [`StoreError::CursorTaken`]). A
//! store error (a full disk, a busy lock past its wait) is retried after
//! `poll_interval` from the cursor, which the failed transaction never
//! moved; a move that committed but whose answer was lost is made again
//! by the same holder, and matches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::db::Engine;
use crate::money_metrics;
use crate::money_store::MoneyStore;
use crate::pricing::{Priced, entries_closing_by, price_closed_entries, price_rows};
use crate::store::{CursorHolder, LastRecord, StoreError, log_cursor, set_log_cursor};
use farestream_core::fares::FareTable;
use farestream_core::journal;
use farestream_core::sync::lock;
use farestream_ingest::clock_source::Clock;
use farestream_ingest::faults::Faults;
use farestream_ingest::log_reader::{LogReaders, LogStep, ReaderHandle, ReaderStatus, StepFailure};
use farestream_ingest::node_id::NodeId;
use farestream_ingest::thread_priority;
use farestream_ingest::wal::committer::Progress;
use farestream_ingest::wal::{WalCursor, WalRecord};

/// The pricer's name in the store's `log_cursors` on the embedded store.
pub const READER: &str = "pricer";

/// The pricer's name in the store's `log_cursors`. Each server prices its
/// own log: on a store that servers share (PostgreSQL) the name carries
/// the data dir's id (`pricer@ID`); the embedded store belongs to one
/// data dir, and its pricer is `pricer`.
pub fn reader_name(engine: Engine, node: &NodeId) -> String {
    match engine {
        Engine::Sqlite => READER.to_string(),
        Engine::Postgres => format!("{READER}@{node}"),
    }
}

/// A cluster node's own log stays empty (its batches go to the scans
/// stream, and the partition pricers price them: docs/scale-out.md). Its
/// pricer still prices the rider-days whose exit window closed, under
/// this name, which the refund pass does not count: a node gone for good
/// has no rides of its own to hold refunds for.
pub fn cluster_node_reader_name(node: &str) -> String {
    format!("node@{node}")
}

/// The name of partition `number`'s pricer in the store's `log_cursors`:
/// whichever node owns the partition prices its claimed stream under it.
pub fn partition_reader_name(number: u16) -> String {
    format!("{READER}@partition-{number}")
}

/// The partition whose pricer `reader` names ([`partition_reader_name`]);
/// `None` for any other reader.
pub fn partition_of_reader(reader: &str) -> Option<u16> {
    let number = reader.strip_prefix(READER)?.strip_prefix("@partition-")?;
    number.bytes().all(|b| b.is_ascii_digit()).then(|| number.parse().ok()).flatten()
}

/// The most log rows priced in one transaction, whose rider-days are each
/// priced once: a lagging pricer joins a few gateway batches (a few
/// hundred scans each in a city), holds the store's write lock for a
/// fraction of a second at its lowered priority (the dispatcher and the
/// API wait for it up to `payments.store_busy_wait_ms`), and keeps a few
/// MiB of decoded rows. A record holding more (a batch up to
/// `wire.batch_scans_max`) is priced whole.
pub const PRICING_ROWS_TOGETHER_MAX: usize = 4_096;

#[derive(Debug, Clone)]
pub struct PricerSettings {
    pub wal_dir: PathBuf,
    pub record_bytes_max: u32,
    pub poll_interval: Duration,
    pub fares: FareTable,
    /// The pricer thread's nice value: above 0 it gives way to ingest
    /// under a burst and catches up after (`thread_priority`).
    pub thread_nice: u8,
    /// The pricer's page cache in the money store (`MoneyStore::set_page_cache_mib`).
    pub store_cache_mib: u32,
    /// Whether it prices the rider-days whose entry's exit window closed.
    /// A cluster node's pricer does not (its log is empty): a partition's
    /// pricer does, for its own cards, once it has priced every ride that
    /// arrived before the moment it closes them (docs/scale-out.md).
    pub closes_exit_windows: bool,
}

/// What the pricer has done.
#[derive(Debug, Clone, Default)]
pub struct PricerStatus {
    pub priced_lsn: u64,
    pub totals: Priced,
    pub failure: Option<String>,
}

impl ReaderStatus for PricerStatus {
    fn failure(&self) -> Option<String> {
        self.failure.clone()
    }

    fn set_failure(&mut self, reason: String) {
        self.failure = Some(reason);
    }
}

pub struct Pricer {
    handle: ReaderHandle<PricerStatus>,
    /// Its name in the store ([`reader_name`]).
    reader: String,
    /// The bits it holds its cursor with.
    holder: CursorHolder,
}

/// The money store, opened where the pricer left off.
pub struct OpenedStore {
    pub store: MoneyStore,
    /// The pricer's name in the store ([`reader_name`]).
    pub reader: String,
    /// The bits it holds its cursor with (`store::hold_log_cursor`).
    pub holder: CursorHolder,
    /// The log position the pricer starts from.
    pub priced_lsn: u64,
    /// The log's readers other than the archiver, starting with the
    /// pricer: the archiver deletes no segment one of them still needs.
    pub log_readers: Arc<LogReaders>,
}

/// The pricer's place in the log: its cursor in the store, or for a
/// pricer new to it `start_if_new` (the archive checkpoint: what was
/// archived before the store existed is not priced).
pub fn pricer_start(store: &mut MoneyStore, reader: &str, start_if_new: u64) -> Result<u64, StoreError> {
    Ok(log_cursor(&mut store.db(), reader)?.unwrap_or(start_if_new))
}

/// Whether this log holds the record the stored cursor, at `cursor_lsn`,
/// was last moved past (`last`): a cursor that another log moved (a copy
/// of this data dir pricing under the same `NODE_ID`) stands at a place
/// whose records differ in this log, and pricing on from it would skip or
/// misread them. Vouched for: a cursor never moved since it was made, and
/// one whose record lies before `log_first_lsn` (its segment is gone).
pub fn log_vouches_for(
    wal_dir: &Path,
    record_bytes_max: u32,
    (cursor_lsn, last): (u64, Option<LastRecord>),
    log_first_lsn: u64,
) -> Result<(), String> {
    let Some(last) = last else { return Ok(()) };
    if last.lsn < log_first_lsn {
        return Ok(());
    }
    let mut reading = WalCursor::new(wal_dir.to_path_buf(), record_bytes_max, last.lsn);
    let found = match reading.read_next(cursor_lsn) {
        Ok(records) => records.into_iter().next(),
        Err(farestream_ingest::wal::WalError::Read { path, source }) => {
            return Err(format!("cannot read {} to check the pricer's cursor against it: {source}", path.display()));
        }
        Err(_) => None,
    };
    match found {
        Some(record) if record.end_lsn == cursor_lsn && LastRecord::of(record.lsn, &record.payload) == last => Ok(()),
        _ => Err(format!(
            "the money store's cursor for this data dir's pricer is at LSN {cursor_lsn}, past a record at LSN {} \
             that this log does not hold: another data dir with this NODE_ID (a copy) priced its own log under it. \
             Give this data dir a name of its own (stop it, delete its NODE_ID file): it then prices every ride \
             its log still holds, and none twice",
            last.lsn
        )),
    }
}

impl Pricer {
    pub fn spawn(
        settings: PricerSettings,
        opened: OpenedStore,
        progress: watch::Receiver<Progress>,
        charges_written: Arc<Notify>,
        clock: Arc<dyn Clock>,
        faults: Arc<Faults>,
    ) -> Pricer {
        let OpenedStore { store, reader, holder, priced_lsn: start_lsn, log_readers: readers } = opened;
        readers.advance(start_lsn);
        let status = Arc::new(Mutex::new(PricerStatus { priced_lsn: start_lsn, ..PricerStatus::default() }));
        let state = State {
            cursor: WalCursor::new(settings.wal_dir.clone(), settings.record_bytes_max, start_lsn),
            settings,
            store,
            reader: reader.clone(),
            holder,
            progress,
            clock,
            readers,
            charges_written,
            faults,
            status: Arc::clone(&status),
        };
        // A failed round is tried again at the next poll: nothing to wait out.
        let poll = state.settings.poll_interval;
        Pricer { handle: ReaderHandle::spawn(state, status, poll, Duration::ZERO), reader, holder }
    }

    /// Its name in the store's `log_cursors`.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// The bits it holds its cursor with: only with them does its server
    /// speak for what it has priced (`store::set_priced_received_before`).
    pub fn holder(&self) -> &CursorHolder {
        &self.holder
    }

    pub fn status(&self) -> PricerStatus {
        self.handle.status()
    }

    /// Prices everything durable so far.
    pub async fn flush(&self) -> Result<u64, String> {
        self.handle.flush().await
    }

    /// Prices everything durable and ends the thread. Call after the log's
    /// commit thread has closed.
    pub fn close(self) -> PricerStatus {
        self.handle.close()
    }

    /// Ends the thread without a last round, as a process death does.
    pub async fn halt(&self) {
        self.handle.halt().await;
    }
}

struct State {
    settings: PricerSettings,
    store: MoneyStore,
    reader: String,
    holder: CursorHolder,
    cursor: WalCursor,
    progress: watch::Receiver<Progress>,
    clock: Arc<dyn Clock>,
    readers: Arc<LogReaders>,
    charges_written: Arc<Notify>,
    faults: Arc<Faults>,
    status: Arc<Mutex<PricerStatus>>,
}

/// A step's failure: the log is damaged or the cursor was taken (fatal),
/// or the store failed (retried).
enum StepError {
    Fatal(String),
    Store(StoreError),
}

impl From<StoreError> for StepError {
    fn from(error: StoreError) -> StepError {
        match error {
            StoreError::CursorTaken(_) | StoreError::CursorBehind { .. } => StepError::Fatal(error.to_string()),
            error => StepError::Store(error),
        }
    }
}

impl State {
    fn round(&mut self) -> Result<(), StepError> {
        self.faults.before_pricing().map_err(|e| StoreError::Task(e.to_string()))?;
        let durable = self.progress.borrow().durable_lsn;
        while self.cursor.lsn() < durable {
            let records = self.cursor.read_next(durable).map_err(|e| StepError::Fatal(e.to_string()))?;
            let mut records = records.as_slice();
            while !records.is_empty() {
                records = self.price_some(records)?;
            }
        }
        if self.cursor.lsn() >= self.progress.borrow().durable_lsn {
            money_metrics::pricer_lag(0);
        }
        if !self.settings.closes_exit_windows {
            return Ok(());
        }
        // Most polls close no window: look before taking the write lock.
        let now = self.clock.now_ms();
        if entries_closing_by(&mut self.store.db(), now)? == 0 {
            return Ok(());
        }
        let fares = &self.settings.fares;
        let priced = self.store.in_transaction(|tx| price_closed_entries(tx, fares, now))?;
        let through = self.cursor.lsn();
        self.written(priced, through);
        Ok(())
    }

    /// Prices the records at the front of `records` up to
    /// [`PRICING_ROWS_TOGETHER_MAX`] rows in one transaction that moves the
    /// cursor past them; returns the rest. Rows priced together share
    /// their rider-days (an entry and its exit in two batches: priced once).
    /// `records` is not empty.
    fn price_some<'r>(&mut self, records: &'r [WalRecord]) -> Result<&'r [WalRecord], StepError> {
        let mut rows = Vec::new();
        let mut taken = 0;
        for record in records {
            if taken > 0 && rows.len() >= PRICING_ROWS_TOGETHER_MAX {
                break;
            }
            rows.extend(journal::decode(&record.payload).map_err(|e| StepError::Fatal(e.to_string()))?);
            taken += 1;
        }
        assert!(taken > 0, "price_some is given at least one record");
        let (these, rest) = records.split_at(taken);
        let (from, last) = (these[0].lsn, &these[taken - 1]);
        let (through, last_record) = (last.end_lsn, LastRecord::of(last.lsn, &last.payload));
        let now = self.clock.now_ms();
        // How long ago the server took the oldest scan not yet priced
        // (batches are logged in commit order, not arrival order).
        let oldest = rows.iter().map(|row| row.received_at).min().unwrap_or(now);
        money_metrics::pricer_lag(now.saturating_sub(oldest));
        let (fares, reader, holder) = (&self.settings.fares, self.reader.as_str(), &self.holder);
        let priced = self.store.in_transaction(|tx| {
            let priced = price_rows(tx, fares, &rows, now)?;
            set_log_cursor(tx, reader, holder, (from, through), last_record)?;
            Ok::<_, StoreError>(priced)
        })?;
        self.readers.advance(through);
        self.written(priced, through);
        Ok(rest)
    }

    fn written(&mut self, priced: Priced, through: u64) {
        money_metrics::rides_priced(priced.taps, priced.charges);
        let mut status = lock(&self.status);
        status.priced_lsn = through;
        status.totals = status.totals + priced;
        if priced.charges > 0 {
            self.charges_written.notify_one();
        }
    }
}

impl LogStep for State {
    const NAME: &'static str = "pricer";

    fn step(&mut self, _asked: bool) -> Result<u64, StepFailure> {
        match self.round() {
            Ok(()) => Ok(self.cursor.lsn()),
            Err(StepError::Store(error)) => Err(StepFailure::Retry(error.to_string())),
            Err(StepError::Fatal(reason)) => Err(StepFailure::Fatal(reason)),
        }
    }

    /// Back to the store's cursor after a failed transaction.
    fn rewind(&mut self) -> Result<(), String> {
        let lsn = lock(&self.status).priced_lsn;
        self.cursor = WalCursor::new(self.settings.wal_dir.clone(), self.settings.record_bytes_max, lsn);
        Ok(())
    }

    fn count_retry(&self) {
        money_metrics::pricing_retried();
    }

    fn started(&mut self) {
        if let Err(error) = thread_priority::give_way(self.settings.thread_nice) {
            tracing::warn!(%error, "the pricer runs at the server's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use farestream_core::wal::framing::encode_record;
    use farestream_ingest::wal::{WalConfig, open};

    const RECORD_BYTES_MAX: u32 = 1 << 16;

    /// A log of three records ("one", "two", "three") in segments of 64
    /// bytes (a segment each): where each record starts and ends.
    fn a_log(dir: &Path) -> Vec<(u64, u64)> {
        let config = WalConfig { dir: dir.to_path_buf(), segment_bytes_max: 64, record_bytes_max: RECORD_BYTES_MAX };
        let mut writer = open(config, Arc::new(Faults::default()), 0).expect("a new log").writer;
        let mut places = Vec::new();
        for payload in [&b"one"[..], b"two", b"three"] {
            let mut frame = Vec::new();
            encode_record(payload, &mut frame);
            let before = writer.written_lsn();
            places.push((before, writer.append(&[frame]).expect("appended")));
        }
        writer.sync().expect("synced");
        places
    }

    /// A partition pricer's name reads back to its partition, at both
    /// ends of a `u16`; no other name does.
    #[test]
    fn a_partition_pricers_name_reads_back_and_no_other_does() {
        for number in [0, 1, 4_095, u16::MAX] {
            assert_eq!(partition_of_reader(&partition_reader_name(number)), Some(number));
        }
        for other in [
            "pricer",
            "pricer@partition-",
            "pricer@partition-65536",
            "pricer@partition-+1",
            "pricer@partition--1",
            "pricer@partition-1 ",
            "pricer@node-a",
            "node@a",
            "",
        ] {
            assert_eq!(partition_of_reader(other), None, "{other:?}");
        }
    }

    /// A cursor is vouched for by the record it was last moved past,
    /// found at its place with its digest; a cursor never moved and one
    /// whose record's segment is gone, by position. A record of the same
    /// size but other bytes, a place that is not a record's start, and a
    /// cursor past the end of the log are another log's.
    #[test]
    fn a_log_vouches_only_for_a_cursor_moved_past_its_own_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let places = a_log(dir.path());
        let [(one, one_end), (two, two_end), (three, three_end)] = places[..] else { panic!("{places:?}") };
        let vouch = |cursor, last| log_vouches_for(dir.path(), RECORD_BYTES_MAX, (cursor, last), one);
        assert_eq!(vouch(0, None), Ok(()), "never moved");
        assert_eq!(vouch(two_end, Some(LastRecord::of(two, b"two"))), Ok(()));
        assert_eq!(vouch(three_end, Some(LastRecord::of(three, b"three"))), Ok(()), "the last record");
        assert_eq!(vouch(one_end, Some(LastRecord::of(one, b"one"))), Ok(()), "the first record");
        let other_bytes = vouch(two_end, Some(LastRecord::of(two, b"TWO")));
        assert!(other_bytes.as_ref().is_err_and(|why| why.contains("NODE_ID")), "{other_bytes:?}");
        assert!(vouch(two_end, Some(LastRecord::of(two + 1, b"two"))).is_err(), "not a record's start");
        assert!(vouch(two_end, Some(LastRecord::of(one, b"one"))).is_err(), "a record that ends elsewhere");
        assert!(vouch(three_end + 10, Some(LastRecord::of(three_end, b"four"))).is_err(), "past the log's end");
        assert!(vouch(u64::MAX, Some(LastRecord::of(u64::MAX - 1, b""))).is_err(), "the last position");
        let gone = log_vouches_for(dir.path(), RECORD_BYTES_MAX, (two_end, Some(LastRecord::of(one, b"?"))), two);
        assert_eq!(gone, Ok(()), "its segment is gone: vouched for by position");
    }
}
