//! The scans stream: one JetStream stream, subjects `PREFIX.N` for
//! partitions `0..partitions`, stored in files on `replicas` servers.
//!
//! [`StreamLog::append`] publishes a batch's records and returns only when
//! JetStream has acknowledged every one of them. JetStream acknowledges a
//! publish to a replicated stream once the stream's Raft group has
//! committed it, so an acknowledged record survives the loss of any
//! minority of its servers. A record goes with an id (`Nats-Msg-Id`): the
//! same id published again within the stream's duplicate window is
//! acknowledged as a duplicate with the first one's sequence and stored
//! once, so a batch retried after a lost acknowledgement, on this node or
//! another, adds nothing.
//!
//! [`PartitionReader`] reads one partition forward from a sequence, as
//! the archiver and the pricer read the node's own log.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use farestream_core::cluster::{PARTITIONS_MAX, Partition};
use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::Semaphore;

/// Room for a record's headers (its id) within the stream's message size.
const HEADER_BYTES_MAX: usize = 256;

/// What the scans stream is and how it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLogSettings {
    /// The stream's name in JetStream.
    pub stream: String,
    /// Partition `N` is the subject `PREFIX.N`.
    pub subject_prefix: String,
    /// How many partitions (1 to the core's `PARTITIONS_MAX`), fixed when
    /// the stream is made.
    pub partitions: u16,
    /// On how many servers each record is stored (1, 3 or 5; an odd
    /// number, so a majority is a quorum).
    pub replicas: usize,
    /// How long JetStream remembers a record's id to drop it published
    /// again.
    pub duplicate_window: Duration,
    /// How long a publish waits for its acknowledgement.
    pub ack_timeout: Duration,
    /// The largest record, in bytes (within the NATS server's
    /// `max_payload`).
    pub record_bytes_max: usize,
    /// The most publishes awaiting their acknowledgement at once, across
    /// every append (1 to [`ACKS_IN_FLIGHT_MAX`]).
    pub acks_in_flight_max: usize,
}

/// The most publishes a log keeps awaiting acknowledgement.
pub const ACKS_IN_FLIGHT_MAX: usize = 65_536;

/// One record to append: its partition, its id (the same content always
/// gets the same id) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    pub partition: Partition,
    pub id: [u8; 16],
    pub payload: Bytes,
}

/// Where an acknowledged record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence in the stream (every partition shares one sequence).
    pub sequence: u64,
    /// Its id was already in the stream: this publish stored nothing.
    pub duplicate: bool,
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub sequence: u64,
    pub payload: Bytes,
}

#[derive(Debug, Error)]
pub enum StreamLogError {
    #[error("cluster settings: {0}")]
    Settings(String),
    #[error("the scans stream {stream} cannot be made or read: {why}")]
    Stream { stream: String, why: String },
    #[error(
        "the scans stream {stream} exists as {found}, the settings say {wanted}: a stream's subjects and replicas are changed by an operator, not by a start"
    )]
    Mismatch { stream: String, found: String, wanted: String },
    #[error("a record of {bytes} bytes is over cluster.record_bytes_max ({max})")]
    RecordTooLarge { bytes: usize, max: usize },
    #[error("a record for {subject} was not acknowledged: {why}")]
    NotAcknowledged { subject: String, why: String },
    #[error("acknowledged in stream {found}, not {wanted}: another stream takes these subjects")]
    WrongStream { found: String, wanted: String },
    #[error("partition {partition} is outside the stream's {partitions}")]
    PartitionOutOfRange { partition: Partition, partitions: u16 },
    #[error("reading partition {partition}: {why}")]
    Read { partition: Partition, why: String },
    #[error("{subject} no longer ends at sequence {after}: another writer appended to it")]
    Fenced { subject: String, after: u64 },
}

/// The scans stream, opened.
pub struct StreamLog {
    context: jetstream::Context,
    stream: stream::Stream,
    settings: StreamLogSettings,
    /// Publishes awaiting their acknowledgement, across every append.
    in_flight: Arc<Semaphore>,
}

impl StreamLog {
    /// Opens the stream, making it when it does not exist; refuses one
    /// that differs from the settings in anything that decides where a
    /// record goes or how long it is kept: its partitions (recorded in
    /// the stream's metadata), subjects, replicas, storage, duplicate
    /// window, record size, and limits (a limit would let JetStream drop
    /// acknowledged records).
    pub async fn open(client: async_nats::Client, settings: StreamLogSettings) -> Result<StreamLog, StreamLogError> {
        check(&settings)?;
        let context = jetstream::context::ContextBuilder::new()
            .timeout(settings.ack_timeout)
            .max_ack_inflight(settings.acks_in_flight_max)
            // Appends never ask for more than `in_flight` hands out, so a
            // full client is a bug: an error, not a wait without end.
            .backpressure_on_inflight(false)
            .build(client);
        let wanted = stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{}.*", settings.subject_prefix)],
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            duplicate_window: settings.duplicate_window,
            // The stream counts the id's header too.
            max_message_size: i32::try_from(settings.record_bytes_max.saturating_add(HEADER_BYTES_MAX))
                .unwrap_or(i32::MAX),
            discard: stream::DiscardPolicy::New,
            metadata: [(PARTITIONS_KEY.to_string(), settings.partitions.to_string())].into(),
            ..Default::default()
        };
        let stream_error =
            |e: &dyn std::fmt::Display| StreamLogError::Stream { stream: settings.stream.clone(), why: e.to_string() };
        let mut stream = context.get_or_create_stream(wanted.clone()).await.map_err(|e| stream_error(&e))?;
        let found = &stream.info().await.map_err(|e| stream_error(&e))?.config;
        if shape(found) != shape(&wanted) {
            return Err(StreamLogError::Mismatch {
                stream: settings.stream.clone(),
                found: shape(found),
                wanted: shape(&wanted),
            });
        }
        let in_flight = Arc::new(Semaphore::new(settings.acks_in_flight_max));
        Ok(StreamLog { context, stream, settings, in_flight })
    }

    /// How many partitions the stream has.
    pub fn partitions(&self) -> u16 {
        self.settings.partitions
    }

    /// The largest record's payload, in bytes.
    pub fn record_bytes_max(&self) -> usize {
        self.settings.record_bytes_max
    }

    /// The subject partition `p`'s records go to.
    pub fn subject(&self, partition: Partition) -> String {
        format!("{}.{}", self.settings.subject_prefix, partition.number())
    }

    /// Publishes every record, then waits for every acknowledgement; `Ok`
    /// only when JetStream has acknowledged them all, in the records'
    /// order. On an error some records may be stored and others not: the
    /// caller does not acknowledge its batch, and its retry publishes the
    /// same ids again.
    ///
    /// Records go out at most `acks_in_flight_max` at a time across every
    /// append on this log, each group waiting for its acknowledgements
    /// (each within `ack_timeout`) before the next is sent.
    pub async fn append(&self, records: &[StreamRecord]) -> Result<Vec<Appended>, StreamLogError> {
        let max = self.settings.record_bytes_max;
        if let Some(big) = records.iter().find(|r| r.payload.len() > max) {
            return Err(StreamLogError::RecordTooLarge { bytes: big.payload.len(), max });
        }
        if let Some(outside) = records.iter().find(|r| r.partition.number() >= self.settings.partitions) {
            return Err(self.out_of_range(outside.partition));
        }
        let mut appended = Vec::with_capacity(records.len());
        for group in records.chunks(self.settings.acks_in_flight_max) {
            let permits = u32::try_from(group.len()).unwrap_or(u32::MAX);
            let Ok(_permits) = self.in_flight.acquire_many(permits).await else {
                unreachable!("the log's semaphore is never closed");
            };
            self.append_group(group, &mut appended).await?;
        }
        debug_assert_eq!(appended.len(), records.len());
        Ok(appended)
    }

    async fn append_group(&self, group: &[StreamRecord], appended: &mut Vec<Appended>) -> Result<(), StreamLogError> {
        let mut pending = Vec::with_capacity(group.len());
        for record in group {
            let subject = self.subject(record.partition);
            let publish = jetstream::message::PublishMessage::build()
                .payload(record.payload.clone())
                .message_id(message_id(record));
            let ack = self
                .context
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| StreamLogError::NotAcknowledged { subject: subject.clone(), why: e.to_string() })?;
            pending.push((subject, ack));
        }
        for (subject, ack) in pending {
            let ack = ack.await.map_err(|e| StreamLogError::NotAcknowledged { subject, why: e.to_string() })?;
            if ack.stream != self.settings.stream {
                return Err(StreamLogError::WrongStream { found: ack.stream, wanted: self.settings.stream.clone() });
            }
            appended.push(Appended { sequence: ack.sequence, duplicate: ack.duplicate });
        }
        Ok(())
    }

    /// Appends `payload` to partition `p` only while the partition's last
    /// record is still at sequence `after` (0: it has none): a log with
    /// one writer. The new record's sequence, or [`StreamLogError::Fenced`]
    /// once anyone else appended to the partition since `after` (the
    /// server checks it, so two writers can never both extend one end).
    /// An append whose acknowledgement was lost may have been stored: its
    /// retry is then fenced by it, and the writer reads the log again.
    pub async fn append_after(&self, partition: Partition, payload: Bytes, after: u64) -> Result<u64, StreamLogError> {
        if partition.number() >= self.settings.partitions {
            return Err(self.out_of_range(partition));
        }
        let max = self.settings.record_bytes_max;
        if payload.len() > max {
            return Err(StreamLogError::RecordTooLarge { bytes: payload.len(), max });
        }
        let subject = self.subject(partition);
        let Ok(_permit) = self.in_flight.acquire().await else {
            unreachable!("the log's semaphore is never closed");
        };
        let publish =
            jetstream::message::PublishMessage::build().payload(payload).expected_last_subject_sequence(after);
        let not_acknowledged = |why: String| StreamLogError::NotAcknowledged { subject: subject.clone(), why };
        let ack =
            self.context.send_publish(subject.clone(), publish).await.map_err(|e| not_acknowledged(e.to_string()))?;
        let ack = match ack.await {
            Ok(ack) => ack,
            Err(e) if is_wrong_last_sequence(&e) => return Err(StreamLogError::Fenced { subject, after }),
            Err(e) => return Err(not_acknowledged(e.to_string())),
        };
        if ack.stream != self.settings.stream {
            return Err(StreamLogError::WrongStream { found: ack.stream, wanted: self.settings.stream.clone() });
        }
        Ok(ack.sequence)
    }

    /// Partition `p`'s last record, `None` while it has none.
    pub async fn last_in(&self, partition: Partition) -> Result<Option<StoredRecord>, StreamLogError> {
        if partition.number() >= self.settings.partitions {
            return Err(self.out_of_range(partition));
        }
        match self.stream.get_last_raw_message_by_subject(&self.subject(partition)).await {
            Ok(message) => Ok(Some(StoredRecord { sequence: message.sequence, payload: message.payload })),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(StreamLogError::Read { partition, why: e.to_string() }),
        }
    }

    /// The record at stream sequence `sequence` if it is partition `p`'s;
    /// `None` when the stream holds none there, or another partition's.
    pub async fn record_at(&self, partition: Partition, sequence: u64) -> Result<Option<StoredRecord>, StreamLogError> {
        if partition.number() >= self.settings.partitions {
            return Err(self.out_of_range(partition));
        }
        match self.stream.get_raw_message(sequence).await {
            Ok(message) if message.subject.as_str() == self.subject(partition) => {
                Ok(Some(StoredRecord { sequence: message.sequence, payload: message.payload }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(StreamLogError::Read { partition, why: e.to_string() }),
        }
    }

    /// Gives up partition `p`'s records before stream sequence `below`
    /// (JetStream's purge of a subject up to a sequence): the caller
    /// knows every reader and every checkpoint kept has passed them. The
    /// records removed.
    ///
    /// Nothing lies below sequence 1, and JetStream reads a purge
    /// sequence of 0 as "none given": the whole subject. A reader at 0
    /// (one that has read nothing yet) must keep everything, so 0 and 1
    /// never reach the server.
    pub async fn purge_below(&self, partition: Partition, below: u64) -> Result<u64, StreamLogError> {
        if partition.number() >= self.settings.partitions {
            return Err(self.out_of_range(partition));
        }
        if below <= 1 {
            return Ok(0);
        }
        let purged = self.stream.purge().filter(self.subject(partition)).sequence(below).await;
        purged.map(|response| response.purged).map_err(|e| StreamLogError::Read { partition, why: e.to_string() })
    }

    fn out_of_range(&self, partition: Partition) -> StreamLogError {
        StreamLogError::PartitionOutOfRange { partition, partitions: self.settings.partitions }
    }

    /// Partition `p`'s records from stream sequence `from` on (1 is the
    /// first), in order.
    pub async fn reader(&self, partition: Partition, from: u64) -> Result<PartitionReader, StreamLogError> {
        if partition.number() >= self.settings.partitions {
            return Err(self.out_of_range(partition));
        }
        let mut reader = PartitionReader {
            partition,
            stream: self.stream.clone(),
            subject: self.subject(partition),
            next: from.max(1),
            messages: None,
        };
        // A stream between leaders cannot make the consumer now; `next`
        // makes it when it can.
        if let Err(e) = reader.open().await {
            tracing::warn!(%partition, error = %e, "partition reader not made yet");
        }
        Ok(reader)
    }
}

/// JetStream refused a publish because the subject no longer ends where
/// it expected: error 10071 before NATS 2.11, 10164 since (async-nats
/// 0.50 knows only the first by kind; a review saw 26 of 30 lost races
/// answered with the second).
fn is_wrong_last_sequence(e: &jetstream::context::PublishError) -> bool {
    const WRONG_LAST_SEQUENCE_SINCE_2_11: u64 = 10_164;
    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|server| server.error_code().0 == WRONG_LAST_SEQUENCE_SINCE_2_11)
}

/// The record's id as JetStream keeps it: its partition and its own id.
/// JetStream drops a repeated id across the whole stream, so the
/// partition is part of it: one id in two partitions is two records.
fn message_id(record: &StreamRecord) -> String {
    format!("{}-{}", record.partition.number(), hex::encode(record.id))
}

/// Where the stream keeps its partition count.
const PARTITIONS_KEY: &str = "farestream_partitions";

/// What a stream must match, as words for the refusal: a limit the
/// server reports as -1 or 0 is none.
fn shape(c: &stream::Config) -> String {
    let limit = |n: i64| if n > 0 { n.to_string() } else { "none".to_string() };
    format!(
        "partitions {:?}, subjects {:?}, {} replicas, {:?} storage, duplicate window {:?}, records up to {} bytes, \
         {:?} retention, limits: age {:?}, messages {}, per subject {}, bytes {}",
        c.metadata.get(PARTITIONS_KEY),
        c.subjects,
        c.num_replicas,
        c.storage,
        c.duplicate_window,
        c.max_message_size,
        c.retention,
        c.max_age,
        limit(c.max_messages),
        limit(c.max_messages_per_subject),
        limit(c.max_bytes),
    )
}

fn check(settings: &StreamLogSettings) -> Result<(), StreamLogError> {
    let bad = |why: String| Err(StreamLogError::Settings(why));
    if settings.partitions == 0 || settings.partitions > PARTITIONS_MAX {
        return bad(format!("cluster.partitions is {}: 1 to {PARTITIONS_MAX}", settings.partitions));
    }
    if ![1, 3, 5].contains(&settings.replicas) {
        return bad(format!("cluster.replicas is {}: 1, 3 or 5", settings.replicas));
    }
    if !farestream_core::cluster::is_name_token(&settings.stream) {
        return bad(format!("the stream name {:?} is not letters, digits, '_' and '-'", settings.stream));
    }
    if !settings.subject_prefix.split('.').all(farestream_core::cluster::is_name_token) {
        return bad(format!("the subject prefix {:?} is not dot-separated tokens", settings.subject_prefix));
    }
    if settings.record_bytes_max == 0 {
        return bad("cluster.record_bytes_max is 0".to_string());
    }
    if settings.acks_in_flight_max == 0 || settings.acks_in_flight_max > ACKS_IN_FLIGHT_MAX {
        return bad(format!(
            "cluster.acks_in_flight_max is {}: 1 to {ACKS_IN_FLIGHT_MAX}",
            settings.acks_in_flight_max
        ));
    }
    Ok(())
}

/// How long a reader waits before making its consumer again after a
/// failed try.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

/// One partition read forward: an ordered consumer, which JetStream
/// hands the records in sequence order. When it fails (its server was
/// lost, a leader moved) it is made again from the record after the last
/// one read, so a reader goes on through a server's death and never
/// hands a record twice or skips one.
pub struct PartitionReader {
    partition: Partition,
    stream: stream::Stream,
    subject: String,
    /// The sequence of the next record to hand out.
    next: u64,
    messages: Option<consumer::pull::Ordered>,
}

impl PartitionReader {
    /// The next record, waiting at most `wait` for one; `None` when none
    /// came in that time (also while the consumer is being made again).
    pub async fn next(&mut self, wait: Duration) -> Result<Option<StoredRecord>, StreamLogError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Some(messages) = &mut self.messages else {
                match tokio::time::timeout_at(deadline, self.open()).await {
                    Err(_elapsed) => return Ok(None),
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => {
                        tracing::warn!(partition = %self.partition, error = %e, "partition reader not made yet");
                        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + REOPEN_PAUSE)).await;
                        continue;
                    }
                }
            };
            let message = match tokio::time::timeout_at(deadline, messages.next()).await {
                Err(_elapsed) => return Ok(None),
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    tracing::warn!(partition = %self.partition, next = self.next, error = %e, "partition reader made again");
                    self.messages = None;
                    continue;
                }
                Ok(None) => {
                    tracing::warn!(partition = %self.partition, next = self.next, "partition reader ended; made again");
                    self.messages = None;
                    continue;
                }
            };
            let info = message.info().map_err(|e| self.read_error(&e))?;
            let sequence = info.stream_sequence;
            if sequence < self.next {
                continue; // handed out before the consumer was made again
            }
            self.next = sequence.saturating_add(1);
            return Ok(Some(StoredRecord { sequence, payload: message.message.payload.clone() }));
        }
    }

    /// Makes the consumer from `next` on; an error leaves it unmade, to
    /// be tried again by the next [`PartitionReader::next`].
    async fn open(&mut self) -> Result<(), StreamLogError> {
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: self.next },
                ..Default::default()
            })
            .await
            .map_err(|e| self.read_error(&e))?;
        self.messages = Some(consumer.messages().await.map_err(|e| self.read_error(&e))?);
        Ok(())
    }

    fn read_error(&self, e: &dyn std::fmt::Display) -> StreamLogError {
        StreamLogError::Read { partition: self.partition, why: e.to_string() }
    }
}
