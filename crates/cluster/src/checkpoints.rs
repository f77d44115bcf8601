//! The partition owners' checkpoints in the shared store
//! (`farestream_core::cluster::checkpoint` says what one holds): written
//! at a cut every `cluster.claim_checkpoint_interval_ms`, the newest
//! [`CHECKPOINTS_KEPT`] of a partition kept, read by the next owner.

use bytes::Bytes;
use farestream_core::cluster::Partition;
use farestream_core::cluster::checkpoint::{CHECKPOINT_HEADER_LEN, checkpoint_dir, parse_checkpoint_name};
use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as StorePath;

use farestream_shared_archive::{SharedStore, SharedStoreError};

/// How many of a partition's checkpoints are kept: the newest, and one
/// before it to fall back on should the newest not read. The streams are
/// given up only below the oldest kept.
pub const CHECKPOINTS_KEPT: usize = 2;

/// A checkpoint in the store, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptCheckpoint {
    pub cut_sequence: u64,
    pub scans_from: u64,
    path: StorePath,
}

impl KeptCheckpoint {
    /// Where it is in the shared store.
    pub fn path(&self) -> &StorePath {
        &self.path
    }
}

/// The checkpoints of every partition, in the shared store.
#[derive(Clone)]
pub struct ClaimCheckpoints {
    shared: SharedStore,
}

impl ClaimCheckpoints {
    pub fn new(shared: SharedStore) -> ClaimCheckpoints {
        ClaimCheckpoints { shared }
    }

    /// Partition `p`'s checkpoints, the newest cut first; names that are
    /// not a checkpoint's are passed over.
    pub async fn kept(&self, partition: Partition) -> Result<Vec<KeptCheckpoint>, SharedStoreError> {
        let dir = checkpoint_dir(partition);
        let prefix = StorePath::from(dir.as_str());
        let listed: Vec<_> = match self.shared.store.list(Some(&prefix)).try_collect().await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(source) => return Err(SharedStoreError { path: dir, source }),
        };
        let mut kept: Vec<KeptCheckpoint> = listed
            .into_iter()
            .filter_map(|meta| {
                let (cut_sequence, scans_from) = parse_checkpoint_name(meta.location.filename()?)?;
                Some(KeptCheckpoint { cut_sequence, scans_from, path: meta.location })
            })
            .collect();
        kept.sort_by_key(|k| std::cmp::Reverse(k.cut_sequence));
        Ok(kept)
    }

    /// A checkpoint's bytes, whole.
    pub async fn read(&self, kept: &KeptCheckpoint) -> Result<Bytes, SharedStoreError> {
        let got = self.shared.store.get(&kept.path).await.map_err(|source| self.error(kept, source))?;
        got.bytes().await.map_err(|source| self.error(kept, source))
    }

    /// A checkpoint's header only.
    pub async fn read_header(&self, kept: &KeptCheckpoint) -> Result<Bytes, SharedStoreError> {
        let range = 0..CHECKPOINT_HEADER_LEN as u64;
        self.shared.store.get_range(&kept.path, range).await.map_err(|source| self.error(kept, source))
    }

    /// Writes a checkpoint at `path` durably, then removes the partition's
    /// checkpoints older than the newest [`CHECKPOINTS_KEPT`].
    pub async fn write(&self, partition: Partition, path: &str, bytes: Vec<u8>) -> Result<(), SharedStoreError> {
        self.shared.put_durable(path, Bytes::from(bytes)).await?;
        for old in self.kept(partition).await?.iter().skip(CHECKPOINTS_KEPT) {
            match self.shared.store.delete(&old.path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(self.error(old, source)),
            }
        }
        Ok(())
    }

    fn error(&self, kept: &KeptCheckpoint, source: object_store::Error) -> SharedStoreError {
        SharedStoreError { path: kept.path.to_string(), source }
    }
}
