//! An archive's files outside DataFusion, in a folder or a bucket alike:
//! what the settlement lists, counts and writes, and what the audit reads.
//! A folder's writes are durable renames (a crash leaves the old file or
//! the new one); a bucket's are single puts, whole or not at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::object_store::ObjectMeta;
use datafusion::object_store::buffered::BufWriter;
use datafusion::object_store::path::Path as Key;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use futures_util::{StreamExt, TryStreamExt};
use parquet::file::reader::{FileReader, SerializedFileReader};
use tokio::io::AsyncWriteExt;

use crate::tables::ArchiveSource;
use farestream_core::cluster::archive_location::key_under;
use farestream_core::scan::ArchivedScan;
use farestream_ingest::archive::ArchiveError;
use farestream_ingest::archive::checkpoint::{rename_durably, replace_durably};
use farestream_ingest::archive::parquet_writer::{
    SUCCESS_MARKER, open_files_dir, partition_date, partition_dir, partition_dir_name,
};
use farestream_ingest::archive::read::{read_all, scans_in};
use farestream_ingest::faults::Faults;
use farestream_shared_archive::SharedStore;

/// The scans table's folder in an archive.
pub const SCANS_TABLE: &str = "scans";

/// Footers read from a bucket at once: each is a request or two of a
/// few kilobytes, and a cluster's day has a file per partition and cut.
pub const FOOTER_READS_AT_ONCE_MAX: usize = 16;

/// A file in a day's folder of a table.
#[derive(Debug, Clone)]
pub struct ArchiveFile {
    /// Its name in the folder.
    pub name: String,
    /// What DataFusion reads it by: an absolute path, or `s3://BUCKET/KEY`.
    pub url: String,
    at: FileAt,
}

/// Where a file is, to be read outside DataFusion.
#[derive(Debug, Clone)]
enum FileAt {
    Folder(PathBuf),
    /// Its bucket's client, and its key and size as the listing gave them
    /// (a footer is read from the end).
    Bucket {
        client: Arc<dyn ObjectStore>,
        object: ObjectMeta,
    },
}

impl ArchiveFile {
    /// The rows its Parquet footer counts.
    async fn parquet_rows(&self) -> Result<i64, ArchiveFilesError> {
        match &self.at {
            FileAt::Folder(path) => {
                let file = std::fs::File::open(path).map_err(folder(path))?;
                let reader = SerializedFileReader::new(file).map_err(parquet(&self.url))?;
                Ok(reader.metadata().file_metadata().num_rows())
            }
            FileAt::Bucket { client, object } => {
                let footer = DFParquetMetadata::new(client.as_ref(), object).fetch_metadata().await;
                let metadata = footer.map_err(|e| ArchiveFilesError::Footer { place: self.url.clone(), source: e })?;
                Ok(metadata.file_metadata().num_rows())
            }
        }
    }
}

/// The row counts of `files`, from their footers, in order.
pub async fn parquet_rows(files: &[ArchiveFile]) -> Result<Vec<i64>, ArchiveFilesError> {
    futures_util::stream::iter(files.iter().map(ArchiveFile::parquet_rows))
        .buffered(FOOTER_READS_AT_ONCE_MAX)
        .try_collect()
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveFilesError {
    #[error("{place}: {source}")]
    Folder { place: String, source: std::io::Error },
    #[error("{place}: {source}")]
    Bucket { place: String, source: datafusion::object_store::Error },
    #[error("{place}: {source}")]
    Parquet { place: String, source: parquet::errors::ParquetError },
    #[error("{place}: {source}")]
    Footer { place: String, source: datafusion::error::DataFusionError },
    #[error("{place}: {source}")]
    Upload { place: String, source: std::io::Error },
    #[error("{place} is a folder inside a day's folder, where only the day's files belong: move it out")]
    NotAFile { place: String },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl ArchiveSource {
    /// Every file in `table`'s folder of `date` but its `_SUCCESS`
    /// marker, sorted by name; none when the folder is not there.
    pub async fn day_files(&self, table: &str, date: NaiveDate) -> Result<Vec<ArchiveFile>, ArchiveFilesError> {
        let mut files = match self {
            ArchiveSource::Dir(dir) => folder_files(&partition_dir(&dir.join(table), date))?,
            ArchiveSource::Bucket { bucket: bucket_name, prefix, client } => {
                let folder = day_key(prefix, table, date, None)?;
                let listing = client.list_with_delimiter(Some(&folder)).await.map_err(bucket(&folder))?;
                // A folder in the day's folder is no file: named, as in a
                // folder's archive, never passed over.
                if let Some(inner) = listing.common_prefixes.first() {
                    return Err(ArchiveFilesError::NotAFile { place: format!("s3://{bucket_name}/{inner}/") });
                }
                listing
                    .objects
                    .into_iter()
                    // The day's folder's own marker (`…/service_date=D/`,
                    // as S3 consoles make a folder) is the folder.
                    .filter(|o| o.location != folder)
                    .filter_map(|o| {
                        let name = o.location.filename()?.to_string();
                        let url = format!("s3://{bucket_name}/{}", o.location);
                        let at = FileAt::Bucket { client: Arc::clone(client), object: o };
                        Some(ArchiveFile { url, name, at })
                    })
                    .collect()
            }
        };
        files.retain(|f| f.name != SUCCESS_MARKER);
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// Whether `table`'s folder of `date` holds a file named `name`.
    pub async fn has_file(&self, table: &str, date: NaiveDate, name: &str) -> Result<bool, ArchiveFilesError> {
        match self {
            ArchiveSource::Dir(dir) => {
                let path = partition_dir(&dir.join(table), date).join(name);
                path.try_exists().map_err(folder(&path))
            }
            ArchiveSource::Bucket { prefix, client, .. } => {
                let key = day_key(prefix, table, date, Some(name))?;
                match client.head(&key).await {
                    Ok(_) => Ok(true),
                    Err(datafusion::object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(bucket(&key)(e)),
                }
            }
        }
    }

    /// Writes `bytes` as `name` in `table`'s folder of `date`, replacing
    /// any file of that name.
    pub async fn put(&self, table: &str, date: NaiveDate, name: &str, bytes: Vec<u8>) -> Result<(), ArchiveFilesError> {
        match self {
            ArchiveSource::Dir(dir) => {
                let (path, root) = made_folder(dir, table, date, name)?;
                replace_durably(&path, &open_files_dir(&root), &bytes, &Faults::default())?;
            }
            ArchiveSource::Bucket { prefix, client, .. } => {
                let key = day_key(prefix, table, date, Some(name))?;
                client.put(&key, bytes.into()).await.map_err(bucket(&key))?;
            }
        }
        Ok(())
    }

    /// Moves the finished file `staged` (in [`ArchiveSource::staging_dir`])
    /// in as `name` in `table`'s folder of `date`: a rename in a folder,
    /// an upload in parts (bounded memory) into a bucket.
    pub async fn put_staged(
        &self,
        table: &str,
        date: NaiveDate,
        name: &str,
        staged: &Path,
    ) -> Result<(), ArchiveFilesError> {
        match self {
            ArchiveSource::Dir(dir) => {
                let (path, _) = made_folder(dir, table, date, name)?;
                rename_durably(staged, &path, &Faults::default())?;
            }
            ArchiveSource::Bucket { prefix, client, .. } => {
                let key = day_key(prefix, table, date, Some(name))?;
                let mut file = tokio::fs::File::open(staged).await.map_err(folder(staged))?;
                let mut upload = BufWriter::new(Arc::clone(client), key.clone());
                let failed =
                    |e| ArchiveFilesError::Upload { place: format!("uploading {staged:?} to {key}"), source: e };
                if let Err(e) = tokio::io::copy(&mut file, &mut upload).await {
                    // Nothing is put: a multipart upload's parts go with it.
                    let _ = upload.abort().await;
                    return Err(failed(e));
                }
                // A failed finish cannot be aborted (`BufWriter` panics):
                // its parts are left to the bucket's rule for incomplete
                // multipart uploads (docs/scale-out.md).
                upload.shutdown().await.map_err(failed)?;
                tokio::fs::remove_file(staged).await.map_err(folder(staged))?;
            }
        }
        Ok(())
    }

    /// The archive as the nodes' shared store (what the charges archive
    /// writes a cluster's charges through), on this source's client.
    pub fn shared_store(&self) -> Result<SharedStore, datafusion::object_store::Error> {
        match self {
            ArchiveSource::Dir(dir) => SharedStore::local(dir),
            ArchiveSource::Bucket { prefix, client, .. } => SharedStore::in_bucket(Arc::clone(client), prefix),
        }
    }

    /// Where a file of `table` is built before [`ArchiveSource::put_staged`]
    /// moves it in: the table's own `.tmp` (a rename's, on its file
    /// system) for a folder, `scratch` (the data dir's) for a bucket.
    pub fn staging_dir(&self, table: &str, scratch: &Path) -> PathBuf {
        match self {
            ArchiveSource::Dir(dir) => open_files_dir(&dir.join(table)),
            ArchiveSource::Bucket { .. } => scratch.join(table),
        }
    }

    /// Every scan of the archive, read whole (the audit's input).
    pub async fn all_scans(&self) -> Result<Vec<ArchivedScan>, ArchiveFilesError> {
        let (prefix, client) = match self {
            ArchiveSource::Dir(dir) => return Ok(read_all(&dir.join(SCANS_TABLE))?),
            ArchiveSource::Bucket { prefix, client, .. } => (prefix, client),
        };
        let root = parse_key(key_under(prefix, SCANS_TABLE))?;
        let objects: Vec<_> = client.list(Some(&root)).try_collect().await.map_err(bucket(&root))?;
        let mut rows = Vec::new();
        for object in objects {
            // `scans/service_date=D/NAME` only, as `read_all` reads a
            // folder: a copy in a deeper folder is no part of the archive.
            let Some(parts) = object.location.prefix_match(&root) else { continue };
            let parts: Vec<_> = parts.collect();
            let [day, name] = &parts[..] else { continue };
            let Some(date) = partition_date(Path::new(day.as_ref())) else { continue };
            if !name.as_ref().ends_with(".parquet") || name.as_ref().starts_with('.') {
                continue;
            }
            let bytes = client.get(&object.location).await.map_err(bucket(&object.location))?;
            let bytes = bytes.bytes().await.map_err(bucket(&object.location))?;
            rows.extend(scans_in(bytes, Path::new(object.location.as_ref()), date)?);
        }
        Ok(rows)
    }
}

/// The key of `table`'s folder of `date` under `prefix`, or of the file
/// `name` in it.
fn day_key(prefix: &str, table: &str, date: NaiveDate, name: Option<&str>) -> Result<Key, ArchiveFilesError> {
    let folder = key_under(prefix, &format!("{table}/{}", partition_dir_name(date)));
    parse_key(match name {
        Some(name) => format!("{folder}/{name}"),
        None => folder,
    })
}

fn parse_key(key: String) -> Result<Key, ArchiveFilesError> {
    Key::parse(&key).map_err(|e| ArchiveFilesError::Bucket { place: key, source: e.into() })
}

/// `name` in `table`'s folder of `date` under `dir`, the folder made, and
/// the table's root.
fn made_folder(dir: &Path, table: &str, date: NaiveDate, name: &str) -> Result<(PathBuf, PathBuf), ArchiveFilesError> {
    let root = dir.join(table);
    let partition = partition_dir(&root, date);
    std::fs::create_dir_all(&partition).map_err(folder(&partition))?;
    Ok((partition.join(name), root))
}

fn folder_files(partition: &Path) -> Result<Vec<ArchiveFile>, ArchiveFilesError> {
    let entries = match std::fs::read_dir(partition) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(folder(partition)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = std::path::absolute(entry.map_err(folder(partition))?.path()).map_err(folder(partition))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        files.push(ArchiveFile { name, url: path.display().to_string(), at: FileAt::Folder(path) });
    }
    Ok(files)
}

fn folder(path: &Path) -> impl Fn(std::io::Error) -> ArchiveFilesError + '_ {
    move |source| ArchiveFilesError::Folder { place: path.display().to_string(), source }
}

fn bucket(key: &Key) -> impl Fn(datafusion::object_store::Error) -> ArchiveFilesError + '_ {
    move |source| ArchiveFilesError::Bucket { place: key.to_string(), source }
}

fn parquet(place: &str) -> impl Fn(parquet::errors::ParquetError) -> ArchiveFilesError + '_ {
    move |source| ArchiveFilesError::Parquet { place: place.to_string(), source }
}
