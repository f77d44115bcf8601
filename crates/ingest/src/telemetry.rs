//! The ingest side's metrics and the Prometheus exporter, named for
//! Prometheus; the money side's are in `farestream_money::money_metrics`.
//! Each function logs nothing and counts one thing; call sites stay short
//! and the names cannot drift between them.

use std::net::SocketAddr;

use metrics::{counter, gauge, histogram};

use farestream_core::ingest::dedup::DedupSizes;
use farestream_core::scan::ScanStatus;

/// Starts the Prometheus scrape endpoint.
pub fn install_prometheus(listen_addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen_addr)
        .install()
        .map_err(|e| e.to_string())?;
    let collector = metrics_process::Collector::default();
    collector.describe();
    std::thread::Builder::new()
        .name("process-metrics".into())
        .spawn(move || {
            loop {
                collector.collect();
                record_peak_resident_memory();
                record_thread_cpu();
                std::thread::sleep(PROCESS_METRICS_INTERVAL);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// How often the process figures (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, the peak, the threads' CPU) are
/// brought up to date.
pub const PROCESS_METRICS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The kernel's high-water mark of resident memory (VmHWM): a load's peak,
/// which a once-a-second sample of the current RSS would miss.
fn record_peak_resident_memory() {
    if let Some(memory) = resident_memory().ok().filter(|memory| memory.peak_bytes > 0) {
        gauge!("farestream_process_peak_resident_memory_bytes").set(memory.peak_bytes as f64);
    }
}

/// This process's resident memory, from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct ResidentMemory {
    /// Now (VmRSS).
    pub bytes: u64,
    /// Its high-water mark (VmHWM).
    pub peak_bytes: u64,
}

/// This process's resident memory now and at its peak.
pub fn resident_memory() -> Result<ResidentMemory, String> {
    let status = procfs::process::Process::myself().and_then(|p| p.status()).map_err(|e| e.to_string())?;
    let bytes = |kib: Option<u64>| kib.unwrap_or(0).saturating_mul(1024);
    Ok(ResidentMemory { bytes: bytes(status.vmrss), peak_bytes: bytes(status.vmhwm) })
}

/// CPU seconds of each of the server's threads by name, the kernel's
/// per-thread counters (threads of one name, the tokio workers, summed):
/// where a load's CPU went, read live (a pricer giving way shows here).
/// The names are the server's own, a dozen at most.
fn record_thread_cpu() {
    let Ok(tasks) = procfs::process::Process::myself().and_then(|p| p.tasks()) else { return };
    let mut ticks_by_name: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for stat in tasks.flatten().filter_map(|task| task.stat().ok()) {
        *ticks_by_name.entry(stat.comm).or_default() += stat.utime.saturating_add(stat.stime);
    }
    let ticks_per_sec = procfs::ticks_per_second().max(1) as f64;
    for (name, ticks) in ticks_by_name {
        gauge!("farestream_thread_cpu_seconds", "thread" => name).set(ticks as f64 / ticks_per_sec);
    }
}

pub fn scans_archived(status: ScanStatus, count: u64) {
    counter!("farestream_scans_total", "status" => status.as_str()).increment(count);
}

pub fn scans_redelivered(count: u64) {
    counter!("farestream_scan_redeliveries_total").increment(count);
}

/// A batch answered: `outcome` is `ok`, `malformed` or `backoff`.
pub fn batch_answered(outcome: &'static str, seconds: f64) {
    counter!("farestream_batches_total", "outcome" => outcome).increment(1);
    histogram!("farestream_batch_seconds", "outcome" => outcome).record(seconds);
}

/// A batch refused before processing (answered `MALFORMED` or, for a slow
/// or crowded read, `BACKOFF`); `reason` names the check that failed.
pub fn batch_refused(reason: &'static str) {
    counter!("farestream_batch_errors_total", "reason" => reason).increment(1);
}

/// In cluster mode, a partition's claim task failed (the streams out of
/// reach, a damaged record); it starts again from the claimed stream.
pub fn partition_claim_failed() {
    counter!("farestream_partition_claim_failures_total").increment(1);
}

/// In cluster mode, records of the scans and claimed streams given up
/// once every reader had passed them (`farestream_cluster::retention`).
pub fn stream_records_given_up(records: u64) {
    counter!("farestream_stream_records_given_up_total").increment(records);
}

pub fn connection_opened() {
    counter!("farestream_connections_total").increment(1);
}

/// A connection refused or closed by a limit or the fleet's trust;
/// `reason` names which (docs/operations.md lists them).
pub fn connection_refused(reason: &'static str) {
    counter!("farestream_connections_refused_total", "reason" => reason).increment(1);
}

/// Connections closed because their gateway was revoked while connected.
pub fn gateways_revoked_while_connected(connections: usize) {
    counter!("farestream_connections_revoked_total").increment(connections as u64);
}

/// A reread of the fleet's revocation list that failed (the list in force
/// stays).
pub fn revocation_list_unreadable() {
    counter!("farestream_revocation_list_errors_total").increment(1);
}

pub fn archive_rows_written(rows: usize) {
    counter!("farestream_archive_rows_total").increment(rows as u64);
}

pub fn archive_files_closed(files: usize) {
    counter!("farestream_archive_files_total").increment(files as u64);
}

pub fn archive_retried() {
    counter!("farestream_archive_retries_total").increment(1);
}

pub fn archive_failed() {
    counter!("farestream_archive_failures_total").increment(1);
}

pub fn dedup_sizes(sizes: DedupSizes) {
    gauge!("farestream_dedup_entries", "index" => "deliveries").set(sizes.deliveries as f64);
    gauge!("farestream_dedup_entries", "index" => "rides").set(sizes.rides as f64);
    gauge!("farestream_dedup_entries", "index" => "credentials").set(sizes.credentials as f64);
}

/// A dedup snapshot put in place: its size and how long it took.
pub fn dedup_snapshot_written(bytes: u64, seconds: f64) {
    counter!("farestream_dedup_snapshots_total", "result" => "written").increment(1);
    gauge!("farestream_dedup_snapshot_bytes").set(bytes as f64);
    gauge!("farestream_dedup_snapshot_write_seconds").set(seconds);
}

/// A dedup snapshot not written (the log is no longer held for the one in place).
pub fn dedup_snapshot_failed() {
    counter!("farestream_dedup_snapshots_total", "result" => "failed").increment(1);
}

/// A dedup snapshot found at start but not used (damaged, from other
/// settings, or past the log): the restart read the archive instead.
pub fn dedup_snapshot_refused() {
    counter!("farestream_dedup_snapshots_total", "result" => "refused").increment(1);
}

/// How far the archive trails the log: bytes acknowledged but not yet in
/// a closed Parquet file.
pub fn archive_lag(durable_lsn: u64, archived_lsn: u64) {
    gauge!("farestream_archive_lag_bytes").set(durable_lsn.saturating_sub(archived_lsn) as f64);
}

/// A group of records made durable, up to `durable_lsn`: set before any
/// of them is acknowledged, so a reader who has an ack sees its LSN.
pub fn wal_group_committed(bytes: usize, durable_lsn: u64) {
    counter!("farestream_wal_fsyncs_total").increment(1);
    counter!("farestream_wal_bytes_total").increment(bytes as u64);
    gauge!("farestream_wal_durable_lsn").set(durable_lsn as f64);
}

pub fn wal_disk_full() {
    counter!("farestream_wal_disk_full_total").increment(1);
}

pub fn wal_failed() {
    counter!("farestream_wal_failures_total").increment(1);
}

/// Issuer key sets written to gateways (on connect and on each change).
pub fn issuer_key_sets_sent() {
    counter!("farestream_issuer_key_sets_sent_total").increment(1);
}

/// The issuer keys a running server holds changed (a rotation, a key that
/// ran out or was retired).
pub fn issuer_keys_changed() {
    counter!("farestream_issuer_keys_changes_total").increment(1);
}

/// A cluster node read the shared key store again before deciding a
/// batch that named a terminal key it did not hold.
pub fn key_store_read_for_unknown_terminal_key() {
    counter!("farestream_key_store_reads_for_unknown_terminal_keys_total").increment(1);
}

/// The key store could not be reread; the server keeps the keys it holds.
pub fn issuer_keys_reload_failed() {
    counter!("farestream_issuer_keys_reload_failures_total").increment(1);
}

/// Deny-list updates (pages or changes) written to gateways.
pub fn deny_list_updates_sent(count: usize) {
    counter!("farestream_deny_list_updates_total").increment(count as u64);
}
