//! Cluster mode's pricing (docs/scale-out.md, "Pricing"): a partition's
//! owner reads its claimed stream from the partition's cursor in the
//! PostgreSQL money store (`pricer@partition-N`) and prices each stretch
//! it reads in the store transaction that also moves the cursor, as the
//! node pricer does over its own log: the node's pricing round
//! (`crate::pricing_rounds`), one transaction for the stretches every
//! partition of the node gathered meanwhile.
//!
//! The cursor is the fence. A pricer takes it with fresh holder bits when
//! it starts (`store::hold_log_cursor`, only at the place it read), and
//! moves it only while it still holds it: an old owner still pricing
//! after its partition moved finds the cursor taken at its next move and
//! stops, its uncommitted transaction rolled back. Each rider-day is
//! priced from what the store holds, and the claimed stream hands every
//! pricer the same records in the same order, so the rows a transaction
//! prices are priced once whoever prices them.
//!
//! A cut in the claimed stream says every scan of the partition received
//! before its `arrivals_before_ms` is in a record before it: the
//! transaction that moves the cursor past it records that moment as the
//! partition's promise (`priced_received_before`), which the refund pass
//! waits for, and closes the exit windows of the partition's cards that
//! closed by then (an exit that arrived in time is priced by then, so an
//! entry is never charged the longest fare while its exit waits in a
//! lagging partition; the node's own pricer closes none).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use farestream_cluster::{StreamLog, StreamLogError};
use farestream_core::clock::UnixMillis;
use farestream_core::cluster::{ClaimedEntry, Partition};
use farestream_core::scan::ArchivedScan;
use farestream_ingest::faults::Faults;
use farestream_money::MoneyStore;
use farestream_money::pricer::{PRICING_ROWS_TOGETHER_MAX, partition_of_reader, partition_reader_name};
use farestream_money::pricing_round::{PartCut, RoundPart};
use farestream_money::store::{
    CURSOR_HOLD_TRIES, CursorHolder, LastRecord, StoreError, fresh_cursor_holder, hold_log_cursor, last_record,
    log_cursor, log_cursor_readers, make_log_cursor, restart_log_cursor, retire_log_cursor,
};
use farestream_money::store_connections::StoreConnections;

use crate::pricing_rounds::PricingRounds;

/// The claimed stream's first sequence: where a partition's cursor
/// starts.
const FIRST_SEQUENCE: u64 = 1;

/// What every partition pricer of a node shares.
pub(crate) struct PartitionPricing {
    /// The node's connections for pricing, shared by its partitions.
    pub(crate) connections: Arc<StoreConnections>,
    /// How long one read waits before the pricer looks at its term and
    /// its stop again.
    pub(crate) read_wait: Duration,
    /// How long a pricer gathers records after the first before it prices
    /// them together (`payments.pricer_poll_interval_ms`, the node
    /// pricer's round): a gateway batch spreads over every partition, a
    /// few dozen rows each, and a transaction a record would cost the
    /// store a commit for each.
    pub(crate) gather: Duration,
    /// The node's rounds: one transaction for what every partition
    /// pricer gathered meanwhile.
    pub(crate) rounds: PricingRounds,
    pub(crate) faults: Arc<Faults>,
}

/// Why a partition's pricer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PriceStop {
    Stopped,
    NotHeld,
    /// Another pricer took the partition's cursor: a new owner.
    CursorTaken,
}

#[derive(Debug, Error)]
pub(crate) enum ClusterPricerError {
    #[error(transparent)]
    Stream(#[from] StreamLogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("partition {partition}: the claimed record at sequence {sequence} is damaged: {why}")]
    Damaged { partition: Partition, sequence: u64, why: String },
    #[error("a pricing task panicked: {0}")]
    Panicked(String),
    #[error("the pricing round failed: {0}")]
    Round(String),
}

/// Makes every partition's cursor that is missing, held by nobody, so
/// the refund pass waits for each partition from the cluster's first
/// start, and retires the cursors of partitions past the count: streams
/// made again with fewer partitions have none of them, and their
/// promises would hold every refund for good (blocking).
pub(crate) fn make_partition_cursors(store: &mut MoneyStore, partitions: u16) -> Result<(), StoreError> {
    store.in_transaction(|tx| {
        for reader in log_cursor_readers(tx)? {
            if partition_of_reader(&reader).is_some_and(|number| number >= partitions) {
                tracing::warn!(%reader, partitions, "retired the pricing cursor of a partition past the count");
                retire_log_cursor(tx, &reader)?;
            }
        }
        (0..partitions).try_for_each(|number| make_log_cursor(tx, &partition_reader_name(number), FIRST_SEQUENCE))
    })
}

/// Prices `partition`'s claimed stream from its cursor until stopped, no
/// longer held (`holds`, asked before each read) or its cursor is taken.
pub(crate) async fn price_partition(
    claimed: &StreamLog,
    pricing: &PartitionPricing,
    partition: Partition,
    (now, holds): (&(dyn Fn() -> UnixMillis + Sync), impl Fn() -> bool),
    stop: &CancellationToken,
) -> Result<PriceStop, ClusterPricerError> {
    let (reader, holder) = (partition_reader_name(partition.number()), fresh_cursor_holder()?);
    let cursor = PartitionCursor { partition, partitions: claimed.partitions(), reader, holder };
    let mut from = cursor.take(claimed, pricing).await?;
    let mut reader = claimed.reader(partition, from).await?;
    loop {
        if stop.is_cancelled() {
            return Ok(PriceStop::Stopped);
        }
        if !holds() {
            return Ok(PriceStop::NotHeld);
        }
        let Some(first) = reader.next(pricing.read_wait).await? else { continue };
        let mut stretch = Stretch::default();
        stretch.add(partition, first.sequence, first.payload)?;
        let gathered_by = tokio::time::Instant::now() + pricing.gather;
        while stretch.rows.len() < PRICING_ROWS_TOGETHER_MAX {
            let wait = gathered_by.saturating_duration_since(tokio::time::Instant::now());
            let Some(next) = reader.next(wait).await? else { break };
            stretch.add(partition, next.sequence, next.payload)?;
        }
        pricing.faults.before_pricing().map_err(|e| StoreError::Task(e.to_string()))?;
        let through = stretch.through();
        match pricing.rounds.price(cursor.part(from, stretch), now()).await.map_err(ClusterPricerError::Round)? {
            None => {}
            Some(StoreError::CursorTaken(_)) => return Ok(PriceStop::CursorTaken),
            Some(refused) => return Err(refused.into()),
        }
        from = through;
    }
}

/// The lowest claimed-stream sequence partition `p`'s pricing may read
/// again (0: it has priced nothing): its last priced record, which a
/// start checks the stream still holds ([`PartitionCursor::take`]), and
/// everything after.
pub(crate) async fn pricing_position(
    pricing: &PartitionPricing,
    partition: Partition,
) -> Result<u64, ClusterPricerError> {
    let reader = partition_reader_name(partition.number());
    on_store(pricing, move |store| {
        let at = log_cursor(&mut store.db(), &reader)?.unwrap_or(0);
        Ok(last_record(&mut store.db(), &reader)?.map_or(0, |last| last.lsn.min(at)))
    })
    .await
}

/// Runs `work` on one of the node's pricing connections, on a blocking
/// thread.
async fn on_store<T: Send + 'static>(
    pricing: &PartitionPricing,
    work: impl FnOnce(&mut MoneyStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ClusterPricerError> {
    let connections = Arc::clone(&pricing.connections);
    match tokio::task::spawn_blocking(move || connections.with(work)).await {
        Ok(done) => Ok(done?),
        Err(panicked) => Err(ClusterPricerError::Panicked(panicked.to_string())),
    }
}

/// A partition's cursor as one run of its pricer holds it.
#[derive(Clone)]
struct PartitionCursor {
    partition: Partition,
    /// How many partitions the cluster has (its streams').
    partitions: u16,
    reader: String,
    holder: CursorHolder,
}

impl PartitionCursor {
    /// Takes the cursor where it stands: the sequence pricing goes on
    /// from. An old owner that moves it between the read and the hold
    /// has the read made again. A cursor whose last record the claimed
    /// stream does not hold at its place (the streams were made again,
    /// their sequences from 1) is started again from the stream's start,
    /// rather than skip every ride below it.
    async fn take(&self, claimed: &StreamLog, pricing: &PartitionPricing) -> Result<u64, ClusterPricerError> {
        let mut tries = CURSOR_HOLD_TRIES;
        loop {
            let reader = self.reader.clone();
            let (at, last) = on_store(pricing, move |store| {
                let at = log_cursor(&mut store.db(), &reader)?.unwrap_or(FIRST_SEQUENCE);
                Ok((at, last_record(&mut store.db(), &reader)?))
            })
            .await?;
            let vouched = match last {
                None => true,
                Some(last) => claimed
                    .record_at(self.partition, last.lsn)
                    .await?
                    .is_some_and(|found| LastRecord::of(found.sequence, &found.payload) == last),
            };
            let me = self.clone();
            let taken = on_store(pricing, move |store| match vouched {
                true => store.in_transaction(|tx| hold_log_cursor(tx, &me.reader, &me.holder, at)).map(|()| at),
                false => {
                    tracing::warn!(
                        partition = %me.partition, cursor = at,
                        "the partition's pricing cursor is past a record this claimed stream does not hold (the \
                         streams were made again): pricing the stream again from its start, no ride charged twice"
                    );
                    let restart = |tx: &mut dyn farestream_money::db::Db| {
                        restart_log_cursor(tx, (&me.reader, &me.holder), at, FIRST_SEQUENCE)
                    };
                    store.in_transaction(restart).map(|()| FIRST_SEQUENCE)
                }
            });
            match taken.await {
                Ok(from) => return Ok(from),
                Err(ClusterPricerError::Store(StoreError::CursorMovedAtStart(_))) if tries > 1 => tries -= 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// `stretch` as its share of a pricing round: its rows, the cursor
    /// moved from `from` past its last record; past a cut, the cut's
    /// arrivals as the partition's promise and the closing of its cards'
    /// windows closed by then.
    fn part(&self, from: u64, stretch: Stretch) -> RoundPart {
        let through = stretch.through();
        let last = LastRecord::of(stretch.last_sequence, &stretch.last_payload);
        let cut = stretch.arrivals_before_ms.map(|arrivals_before_ms| PartCut {
            arrivals_before_ms,
            partition: self.partition.number(),
            partitions: self.partitions,
        });
        RoundPart { reader: self.reader.clone(), holder: self.holder, from, through, last, rows: stretch.rows, cut }
    }
}

/// Claimed records read together: their rows, the last one, and the
/// latest cut's arrivals among them.
#[derive(Default)]
struct Stretch {
    rows: Vec<ArchivedScan>,
    last_sequence: u64,
    last_payload: Bytes,
    arrivals_before_ms: Option<UnixMillis>,
}

impl Stretch {
    fn add(&mut self, partition: Partition, sequence: u64, payload: Bytes) -> Result<(), ClusterPricerError> {
        let entry = ClaimedEntry::decode(&payload).map_err(|e| ClusterPricerError::Damaged {
            partition,
            sequence,
            why: e.to_string(),
        })?;
        match entry {
            ClaimedEntry::Rows(record) => self.rows.extend(record.rows),
            ClaimedEntry::Cut(cut) => self.arrivals_before_ms = Some(cut.arrivals_before_ms),
        }
        assert!(sequence > self.last_sequence, "a partition's records come in sequence order");
        (self.last_sequence, self.last_payload) = (sequence, payload);
        Ok(())
    }

    /// The sequence after the last record.
    fn through(&self) -> u64 {
        self.last_sequence.saturating_add(1)
    }
}
