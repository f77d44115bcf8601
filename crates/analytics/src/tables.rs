//! The archive's tables, registered with DataFusion over their Hive
//! partitions (`ROOT/service_date=YYYY-MM-DD/*.parquet`), so a filter on
//! `service_date` opens that day's folder only. Each table has a schema
//! of its own (the writers' schemas), so an empty archive still answers
//! `SELECT ... FROM scans` with no rows rather than an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::{DataType, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::object_store::ObjectStore;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::archive_files::SCANS_TABLE;
use crate::settle::settlement_tables::{SettlementTable, settlement_schema};
use farestream_core::archive::charge_rows::charge_schema;
use farestream_core::archive::schema::scan_schema;
use farestream_core::cluster::archive_location::{ArchiveLocation, ObjectStoreSettings, key_under};
use farestream_shared_archive::s3_bucket;

/// The partition column every archive table has.
pub const PARTITION_COLUMN: &str = "service_date";

/// A table of the archive: its SQL name, its folder under
/// `DATA_DIR/archive`, and its file schema (without the partition column).
pub struct ArchiveTable {
    pub name: &'static str,
    pub schema: SchemaRef,
}

/// Every table `farestream query` knows, in the order docs/analytics.md
/// documents them.
pub fn archive_tables() -> Vec<ArchiveTable> {
    let mut tables = vec![
        ArchiveTable { name: SCANS_TABLE, schema: scan_schema() },
        ArchiveTable { name: "charges", schema: charge_schema() },
    ];
    tables.extend(SettlementTable::ALL.iter().map(|t| ArchiveTable { name: t.name(), schema: settlement_schema(*t) }));
    tables
}

/// The archive a session reads: a folder (a data dir's, a cluster's
/// mounted one), or an `s3://` archive with the client DataFusion reads
/// its bucket through.
#[derive(Clone)]
pub enum ArchiveSource {
    Dir(PathBuf),
    Bucket { bucket: String, prefix: String, client: Arc<dyn ObjectStore> },
}

impl ArchiveSource {
    /// The archive in the folder `dir`.
    pub fn dir(dir: &Path) -> ArchiveSource {
        ArchiveSource::Dir(dir.to_path_buf())
    }

    /// The archive `location` names, its bucket's client made when it is
    /// object storage (no request is made yet).
    pub fn open(location: &ArchiveLocation, client: &ObjectStoreSettings) -> Result<ArchiveSource, DataFusionError> {
        Ok(match location {
            ArchiveLocation::Local(dir) => ArchiveSource::Dir(dir.clone()),
            ArchiveLocation::S3 { bucket, prefix } => ArchiveSource::Bucket {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                client: s3_bucket(bucket, client).map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?,
            },
        })
    }

    /// The folder, when the archive is one.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            ArchiveSource::Dir(dir) => Some(dir),
            ArchiveSource::Bucket { .. } => None,
        }
    }

    /// Makes the bucket's client the one `ctx` reads `s3://BUCKET` with.
    fn register_bucket(&self, ctx: &SessionContext) -> Result<(), DataFusionError> {
        if let ArchiveSource::Bucket { bucket, client, .. } = self {
            let url = ObjectStoreUrl::parse(format!("s3://{bucket}"))?;
            ctx.register_object_store(url.as_ref(), Arc::clone(client));
        }
        Ok(())
    }

    /// The table `name`'s root: `DIR/NAME/`, or `s3://BUCKET/PREFIX/NAME/`.
    fn table_url(&self, name: &str) -> Result<ListingTableUrl, DataFusionError> {
        match self {
            ArchiveSource::Dir(dir) => ListingTableUrl::parse(format!("{}/", absolute(&dir.join(name))?.display())),
            ArchiveSource::Bucket { bucket, prefix, .. } => {
                ListingTableUrl::parse(format!("s3://{bucket}/{}/", key_under(prefix, name)))
            }
        }
    }
}

/// What a session over the archive may hold in memory: its sorts, joins
/// and aggregations share `bytes_max` (DataFusion's fair spill pool) and
/// spill the rest to files under `spill_dir`, at most `spill_bytes_max`.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    pub bytes_max: usize,
    pub spill_dir: PathBuf,
    pub spill_bytes_max: u64,
}

impl MemoryBudget {
    /// The config's budget, spilling to `DATA_DIR/tmp/analytics`.
    pub fn of(data_dir: &Path, config: &farestream_ingest::config::SettlementConfig) -> MemoryBudget {
        MemoryBudget {
            bytes_max: config.memory_bytes_max,
            spill_dir: data_dir.join("tmp").join("analytics"),
            spill_bytes_max: config.spill_bytes_max,
        }
    }
}

/// A session with every archive table registered, within `budget`, its
/// statements split into `partitions_per_core` partitions for each core.
/// More partitions than cores make a `GROUP BY` over millions of keys
/// build many small hash tables, each in the CPU's caches while it is
/// filled, where one per core misses the cache at every row: the
/// per-rider query over a 10-million-scan day took half the time at 16
/// a core (`scripts/settle-bench.sh`). Each partition of a sort holds
/// back its share of the pool to merge spills, so the settlement, three
/// sorts at once, keeps one a core.
pub fn archive_session(
    archive: &ArchiveSource,
    budget: &MemoryBudget,
    partitions_per_core: usize,
) -> Result<SessionContext, DataFusionError> {
    std::fs::create_dir_all(&budget.spill_dir)
        .map_err(|e| DataFusionError::External(format!("{}: {e}", budget.spill_dir.display()).into()))?;
    let disk = DiskManagerBuilder::default()
        .with_mode(DiskManagerMode::Directories(vec![budget.spill_dir.clone()]))
        .with_max_temp_directory_size(budget.spill_bytes_max);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(budget.bytes_max)))
        .with_disk_manager_builder(disk)
        .build_arc()?;
    // Each sorting partition holds back room to merge its spills; at
    // DataFusion's 10 MiB a small budget could not sort at all.
    let config = SessionConfig::new();
    let cores = config.target_partitions().max(1);
    let partitions = cores.saturating_mul(partitions_per_core.max(1)).min(partitions_within(budget.bytes_max, cores));
    let config = config.with_target_partitions(partitions);
    let merge_room = (budget.bytes_max / (4 * partitions)).min(config.options().execution.sort_spill_reservation_bytes);
    let config = config.with_sort_spill_reservation_bytes(merge_room);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    archive.register_bucket(&ctx)?;
    for table in archive_tables() {
        register_partitioned(&ctx, table.name, archive.table_url(table.name)?, table.schema)?;
    }
    Ok(ctx)
}

/// The most partitions `bytes_max` gives each at least
/// [`PARTITION_BYTES_MIN`], and never fewer than one a core. A sort
/// partition and the repartition feeding it each take a share of the
/// pool, and a sorter whose share is under one batch fails rather than
/// spill: 16 a core at 16 MiB did, where one a core spilled and answered.
fn partitions_within(bytes_max: usize, cores: usize) -> usize {
    (bytes_max / PARTITION_BYTES_MIN).max(cores)
}

/// What a statement's partition needs of the pool at least: a sort's
/// batch, the repartition's and room to merge (8 192 rows of a few
/// columns are about 1 MiB).
const PARTITION_BYTES_MIN: usize = 8 << 20;

/// Registers `url` as a table partitioned by `service_date` (a `DATE`).
fn register_partitioned(
    ctx: &SessionContext,
    name: &str,
    url: ListingTableUrl,
    schema: SchemaRef,
) -> Result<(), DataFusionError> {
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![(PARTITION_COLUMN.to_string(), DataType::Date32)]);
    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// Registers exactly the files at `urls` (one day's, all of one schema,
/// each an absolute path or an `s3://` URL of the session's bucket) as a
/// table with no partition column.
pub fn register_files(
    ctx: &SessionContext,
    name: &str,
    urls: &[String],
    schema: SchemaRef,
) -> Result<(), DataFusionError> {
    if urls.is_empty() {
        let empty = datafusion::datasource::MemTable::try_new(schema, vec![vec![]])?;
        ctx.register_table(name, Arc::new(empty))?;
        return Ok(());
    }
    let urls = urls.iter().map(ListingTableUrl::parse).collect::<Result<Vec<_>, _>>()?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, DataFusionError> {
    std::path::absolute(path).map_err(|e| DataFusionError::External(Box::new(e)))
}
