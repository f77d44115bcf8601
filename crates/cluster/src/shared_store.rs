//! The store every node shares (docs/scale-out.md, "The shared
//! archive"): a local path that every node mounts, or object storage
//! behind `object_store`. The segments' Parquet files go there, and the
//! partition owners' checkpoints (`crate::checkpoints`).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use thiserror::Error;

/// The shared store, and its root when it is a local directory.
#[derive(Clone)]
pub struct SharedStore {
    pub store: Arc<dyn ObjectStore>,
    /// Where a local store lives: each file put and its folder are
    /// fsynced there before a put returns (`object_store`'s local store
    /// renames, but syncs nothing), so whatever moves on after a put (an
    /// archive position, a stream given up) never outlives the file.
    pub local_root: Option<PathBuf>,
}

#[derive(Debug, Error)]
#[error("the shared store at {path}: {source}")]
pub struct SharedStoreError {
    pub path: String,
    #[source]
    pub source: object_store::Error,
}

impl SharedStore {
    /// The store at a local path (made when missing).
    pub fn local(dir: &std::path::Path) -> Result<SharedStore, object_store::Error> {
        std::fs::create_dir_all(dir).map_err(generic)?;
        let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?);
        Ok(SharedStore { store, local_root: Some(dir.to_path_buf()) })
    }

    /// Puts `bytes` at `path` whole (a temporary file and a rename on
    /// local disk, one request on object storage), durably.
    pub async fn put_durable(&self, path: &str, bytes: Bytes) -> Result<(), SharedStoreError> {
        let store_error = |source| SharedStoreError { path: path.to_string(), source };
        let location = StorePath::parse(path).map_err(|e| store_error(e.into()))?;
        self.store.put(&location, bytes.into()).await.map_err(store_error)?;
        if let Some(root) = &self.local_root {
            sync_local(&root.join(path)).map_err(|e| store_error(generic(e)))?;
        }
        Ok(())
    }
}

/// Fsyncs a file the local store put and its folder.
fn sync_local(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    std::fs::File::open(file.parent().unwrap_or(std::path::Path::new(".")))?.sync_all()
}

/// A local file system error as `object_store` reports its own.
fn generic(source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(source) }
}
