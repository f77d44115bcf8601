//! How far each partition's claimed log is archived: the last cut whose
//! segment is in the shared archive, and that cut's arrivals (which days
//! it closed). A key a partition in a key-value bucket, written after the
//! segment's files. The files are a function of the claimed log, so the
//! position is only where to read on from: an archiver that finds it
//! behind (an old owner wrote last) writes the same files again.

use async_nats::jetstream::{self, kv};
use chrono::NaiveDate;
use farestream_core::cluster::Partition;

use crate::bucket::{BucketError, open_bucket};

/// A partition's archive position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchivedThrough {
    /// The claimed log's sequence of the last archived cut (0: none).
    pub cut: u64,
    /// The last service day that cut closed in the partition.
    pub closed_through: Option<NaiveDate>,
}

impl ArchivedThrough {
    /// Nothing archived yet.
    pub const START: ArchivedThrough = ArchivedThrough { cut: 0, closed_through: None };

    /// `CUT YYYY-MM-DD`, or `CUT -` with no day closed.
    fn encode(self) -> String {
        match self.closed_through {
            Some(day) => format!("{} {day}", self.cut),
            None => format!("{} -", self.cut),
        }
    }

    fn decode(text: &[u8]) -> Option<ArchivedThrough> {
        let text = std::str::from_utf8(text).ok()?;
        let (cut, day) = text.split_once(' ')?;
        let closed_through = if day == "-" { None } else { Some(day.parse().ok()?) };
        Some(ArchivedThrough { cut: cut.parse().ok()?, closed_through })
    }
}

/// Every partition's archive position, in `cluster.progress_bucket`.
#[derive(Clone)]
pub struct ArchiveProgress {
    bucket: String,
    store: kv::Store,
}

impl ArchiveProgress {
    /// Opens the bucket (made on the cluster's first start), its entries
    /// kept for ever on `replicas` servers.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
    ) -> Result<ArchiveProgress, BucketError> {
        let context = jetstream::new(client);
        let store = open_bucket(&context, bucket, std::time::Duration::ZERO, replicas).await?;
        Ok(ArchiveProgress { bucket: bucket.to_string(), store })
    }

    /// Where `partition`'s archive stands; [`ArchivedThrough::START`] when
    /// nothing is archived. A value that does not read is an error, not a
    /// start from nothing (that would only write files again, but hides a
    /// stranger's writes to the bucket).
    pub async fn get(&self, partition: Partition) -> Result<ArchivedThrough, BucketError> {
        let value = self.store.get(key(partition)).await.map_err(|e| self.error(&e))?;
        match value {
            None => Ok(ArchivedThrough::START),
            Some(bytes) => ArchivedThrough::decode(&bytes)
                .ok_or_else(|| self.error(&format!("partition {partition}'s position {:?} is not `CUT DAY`", bytes))),
        }
    }

    /// `partition` is archived through `through`.
    pub async fn set(&self, partition: Partition, through: ArchivedThrough) -> Result<(), BucketError> {
        self.store.put(key(partition), through.encode().into()).await.map_err(|e| self.error(&e))?;
        Ok(())
    }

    fn error(&self, why: &dyn std::fmt::Display) -> BucketError {
        BucketError::Store { bucket: self.bucket.clone(), why: why.to_string() }
    }
}

fn key(partition: Partition) -> String {
    format!("archived.{}", partition.number())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_at_their_extremes_read_back_and_others_do_not() {
        for through in [
            ArchivedThrough::START,
            ArchivedThrough { cut: u64::MAX, closed_through: Some(NaiveDate::MAX) },
            ArchivedThrough { cut: 7, closed_through: Some(NaiveDate::MIN) },
            ArchivedThrough { cut: 8, closed_through: NaiveDate::from_ymd_opt(2026, 12, 6) },
        ] {
            assert_eq!(ArchivedThrough::decode(through.encode().as_bytes()), Some(through));
        }
        let bad: [&[u8]; 9] =
            [b"", b"7", b"7 ", b" 7", b"x -", b"1 - 3", b"18446744073709551616 -", b"\xff -", b"1 2026-13-01"];
        for bad in bad {
            assert_eq!(ArchivedThrough::decode(bad), None, "{bad:?}");
        }
    }
}
