//! farestream's shared archive: the store a cluster's nodes share
//! (docs/scale-out.md, "The shared archive"), a path every node mounts
//! or object storage behind `object_store` (S3 or a store that speaks
//! its API). The segments' Parquet files go there, the charges
//! archive's, the day markers and the partition owners' checkpoints
//! (`farestream_cluster::checkpoints`).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use thiserror::Error;

use farestream_core::cluster::archive_location::{ArchiveLocation, ObjectStoreSettings};

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
    /// The store `location` names: keys under an `s3://` archive's prefix,
    /// or a local path.
    pub fn open(
        location: &ArchiveLocation,
        settings: &ObjectStoreSettings,
    ) -> Result<SharedStore, object_store::Error> {
        match location {
            ArchiveLocation::Local(dir) => SharedStore::local(dir),
            ArchiveLocation::S3 { bucket, prefix } => SharedStore::in_bucket(s3_bucket(bucket, settings)?, prefix),
        }
    }

    /// The keys under `prefix` of the bucket `bucket` is the client of.
    pub fn in_bucket(bucket: Arc<dyn ObjectStore>, prefix: &str) -> Result<SharedStore, object_store::Error> {
        let store: Arc<dyn ObjectStore> = match prefix.is_empty() {
            true => bucket,
            false => Arc::new(PrefixStore::new(bucket, StorePath::parse(prefix)?)),
        };
        Ok(SharedStore { store, local_root: None })
    }

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

/// A whole S3 bucket, as DataFusion registers it for `s3://BUCKET`.
/// With a credentials file, its key and nothing of the environment (a
/// session token left there would be sent with the file's key); without
/// one, the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, and `AWS_ENDPOINT` where the settings name none)
/// or the instance's role.
pub fn s3_bucket(bucket: &str, settings: &ObjectStoreSettings) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    let mut builder = match settings.credentials_file.is_empty() {
        true => AmazonS3Builder::from_env(),
        false => {
            let credentials = S3Credentials::read(&settings.credentials_file)
                .map_err(|e| object_store::Error::Generic { store: "S3", source: e.into() })?;
            let builder = AmazonS3Builder::new()
                .with_access_key_id(credentials.access_key_id)
                .with_secret_access_key(credentials.secret_access_key);
            match credentials.session_token.is_empty() {
                true => builder,
                false => builder.with_token(credentials.session_token),
            }
        }
    };
    builder = builder
        .with_bucket_name(bucket)
        .with_region(&settings.region)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: settings.retries_max,
            retry_timeout: settings.retry_timeout,
        })
        .with_client_options(
            ClientOptions::new().with_timeout(settings.request_timeout).with_allow_http(settings.allow_http),
        );
    if !settings.endpoint.is_empty() {
        builder = builder.with_endpoint(&settings.endpoint);
    }
    Ok(Arc::new(builder.build()?))
}

/// Why a credentials file cannot be used (never quoting the file).
#[derive(Debug, Error)]
#[error("{0}")]
pub struct CredentialsError(String);

/// An S3 access key, from `cluster.archive_s3_credentials_file`: a TOML
/// file of `access_key_id`, `secret_access_key` and, for temporary
/// credentials, `session_token`. Its `Debug` shows the key id only.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

impl S3Credentials {
    /// The credentials in the file at `path`, at most
    /// [`CREDENTIALS_FILE_BYTES_MAX`] bytes.
    pub fn read(path: &str) -> Result<S3Credentials, CredentialsError> {
        let bad = |why: String| CredentialsError(format!("cluster.archive_s3_credentials_file {path:?}: {why}"));
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(CREDENTIALS_FILE_BYTES_MAX as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| bad(e.to_string()))?;
        if bytes.len() > CREDENTIALS_FILE_BYTES_MAX {
            return Err(bad(format!("over {CREDENTIALS_FILE_BYTES_MAX} bytes")));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8".into()))?;
        // The parser's message quotes the offending line: never a secret's.
        let credentials: S3Credentials = toml::from_str(text).map_err(|_| {
            bad("not TOML of access_key_id, secret_access_key and (optional) session_token strings".into())
        })?;
        if credentials.access_key_id.is_empty() || credentials.secret_access_key.is_empty() {
            return Err(bad("access_key_id or secret_access_key is empty".into()));
        }
        Ok(credentials)
    }
}

/// The largest credentials file read, in bytes (a session token is about
/// 1 KiB).
pub const CREDENTIALS_FILE_BYTES_MAX: usize = 8_192;

/// Fsyncs a file the local store put and its folder.
fn sync_local(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    std::fs::File::open(file.parent().unwrap_or(std::path::Path::new(".")))?.sync_all()
}

/// A local file system error as `object_store` reports its own.
fn generic(source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(source) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_at_their_extremes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        };
        let good = file("good", "access_key_id = \"AKID\"\nsecret_access_key = \"s3cr3t\"\n");
        let read = S3Credentials::read(&good).expect("good");
        assert_eq!((read.access_key_id.as_str(), read.session_token.as_str()), ("AKID", ""));
        assert!(!format!("{read:?}").contains("s3cr3t"), "Debug never shows the secret");
        let token = "t".repeat(CREDENTIALS_FILE_BYTES_MAX - 80);
        let longest =
            file("longest", &format!("access_key_id = \"A\"\nsecret_access_key = \"s\"\nsession_token = \"{token}\""));
        assert!(std::fs::metadata(&longest).expect("meta").len() <= CREDENTIALS_FILE_BYTES_MAX as u64);
        assert_eq!(S3Credentials::read(&longest).expect("longest").session_token, token);
        let over = format!(
            "access_key_id = \"A\"\nsecret_access_key = \"s\"\nsession_token = \"{}\"",
            "t".repeat(CREDENTIALS_FILE_BYTES_MAX)
        );
        for (name, text, says) in [
            ("empty", "", "not TOML"),
            ("over", over.as_str(), "over 8192 bytes"),
            ("no-secret", "access_key_id = \"A\"", "not TOML"),
            ("empty-secret", "access_key_id = \"A\"\nsecret_access_key = \"\"", "is empty"),
            ("unknown", "access_key_id = \"A\"\nsecret_access_key = \"s\"\nregion = \"x\"", "not TOML"),
            ("unterminated", "access_key_id = \"A", "not TOML"),
            ("secret-in-error", "secret_access_key = \"hunter2\" oops", "not TOML"),
        ] {
            let error = S3Credentials::read(&file(name, text)).expect_err(name).to_string();
            assert!(error.contains(says) && error.contains("archive_s3_credentials_file"), "{name}: {error}");
            assert!(!error.contains("hunter2"), "{name}: a secret in the error: {error}");
        }
        let not_utf8 = dir.path().join("not-utf8");
        std::fs::write(&not_utf8, b"access_key_id = \"\xff\"").expect("write");
        let error = S3Credentials::read(&not_utf8.display().to_string()).expect_err("not UTF-8").to_string();
        assert!(error.contains("not UTF-8"), "{error}");
        let missing = dir.path().join("missing").display().to_string();
        assert!(S3Credentials::read(&missing).is_err());
    }
}
