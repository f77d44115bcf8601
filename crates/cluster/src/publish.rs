//! A batch's rows into the scans stream, as an ingest node appends them:
//! split by partition (the core's `split_by_partition`), each partition's
//! rows one record in the journal's encoding (the bytes the node's own
//! log holds, so the readers decode both alike), under the record id the
//! core derives from its scans. A partition's rows over the stream's
//! record size go out as several records, halved until each fits, in
//! the batch's order. `Ok` once every record is acknowledged: then, and
//! only then, may the batch be acked to its gateway.

use bytes::Bytes;
use farestream_core::cluster::{Partition, record_id, split_by_partition};
use farestream_core::journal;
use farestream_core::scan::ArchivedScan;

use crate::stream_log::{Appended, StreamLog, StreamLogError, StreamRecord};

/// Appends one batch's rows; where each partition's record went.
pub async fn append_batch(
    log: &StreamLog,
    rows: Vec<ArchivedScan>,
    batch_seq: u64,
) -> Result<Vec<(Partition, Appended)>, StreamLogError> {
    let mut records = Vec::new();
    for (partition, rows) in split_by_partition(rows, log.partitions()) {
        push_records(&mut records, partition, &rows, batch_seq, log.record_bytes_max());
    }
    let appended = log.append(&records).await?;
    Ok(records.iter().map(|r| r.partition).zip(appended).collect())
}

/// `rows` of one partition as records of at most `bytes_max` each: whole
/// when they fit, else each half in turn. A single row over the limit
/// stays one record, which `append` refuses by its size (the config
/// keeps `cluster.record_bytes_max` above the largest row).
fn push_records(
    records: &mut Vec<StreamRecord>,
    partition: Partition,
    rows: &[ArchivedScan],
    batch_seq: u64,
    bytes_max: usize,
) {
    let payload = journal::encode(rows, batch_seq);
    if payload.len() <= bytes_max || rows.len() <= 1 {
        records.push(StreamRecord { partition, id: record_id(partition, rows), payload: Bytes::from(payload) });
        return;
    }
    let (first, second) = rows.split_at(rows.len() / 2);
    push_records(records, partition, first, batch_seq, bytes_max);
    push_records(records, partition, second, batch_seq, bytes_max);
}
