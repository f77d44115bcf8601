//! How far each partition's claimed log is archived: the last cut whose
//! segment is in the shared archive, and that cut's arrivals (which days
//! it closed). A key a partition in a key-value bucket, written after the
//! segment's files. The files are a function of the claimed log, so the
//! position is only where to read on from: an archiver that finds it
//! behind (an old owner wrote last) writes the same files again.

use async_nats::jetstream::{self, kv};
use farestream_core::cluster::Partition;

use crate::bucket::{BucketError, open_bucket};

/// A partition's archive position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchivedThrough {
    /// The claimed log's sequence of the last archived cut (0: none).
    pub cut: u64,
    /// That cut's `arrivals_before_ms` (`i64::MIN`: none).
    pub arrivals_before_ms: i64,
}

impl ArchivedThrough {
    /// Nothing archived yet.
    pub const START: ArchivedThrough = ArchivedThrough { cut: 0, arrivals_before_ms: i64::MIN };

    fn encode(self) -> String {
        format!("{} {}", self.cut, self.arrivals_before_ms)
    }

    fn decode(text: &[u8]) -> Option<ArchivedThrough> {
        let text = std::str::from_utf8(text).ok()?;
        let (cut, arrivals) = text.split_once(' ')?;
        Some(ArchivedThrough { cut: cut.parse().ok()?, arrivals_before_ms: arrivals.parse().ok()? })
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
            Some(bytes) => ArchivedThrough::decode(&bytes).ok_or_else(|| {
                self.error(&format!("partition {partition}'s position {:?} is not `CUT ARRIVALS`", bytes))
            }),
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
            ArchivedThrough { cut: u64::MAX, arrivals_before_ms: i64::MAX },
            ArchivedThrough { cut: 7, arrivals_before_ms: -1 },
        ] {
            assert_eq!(ArchivedThrough::decode(through.encode().as_bytes()), Some(through));
        }
        for bad in [&b""[..], b"7", b"7 ", b" 7", b"x 1", b"1 2 3", b"18446744073709551616 0", b"\xff 1"] {
            assert_eq!(ArchivedThrough::decode(bad), None, "{bad:?}");
        }
    }
}
