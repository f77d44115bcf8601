//! A batch's rows into the scans stream, as an ingest node appends them:
//! split by partition (the core's `split_by_partition`), each partition's
//! rows one record in the journal's encoding (the bytes the node's own
//! log holds, so the readers decode both alike), under the record id the
//! core derives from its scans. `Ok` once every record is acknowledged:
//! then, and only then, may the batch be acked to its gateway.

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
    let records: Vec<StreamRecord> = split_by_partition(rows, log.partitions())
        .into_iter()
        .map(|(partition, rows)| StreamRecord {
            partition,
            id: record_id(partition, &rows),
            payload: Bytes::from(journal::encode(&rows, batch_seq)),
        })
        .collect();
    let appended = log.append(&records).await?;
    Ok(records.iter().map(|r| r.partition).zip(appended).collect())
}
