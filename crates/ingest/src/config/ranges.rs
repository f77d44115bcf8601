//! The range of every numeric config key, with its unit: checked on the
//! merged TOML before it becomes a [`super::Config`], so a value outside
//! its range refuses to start, naming the key, the value and the range,
//! and nothing is silently clamped. `config/farestream.toml` states each
//! range next to its key; a test checks the two agree.

use thiserror::Error;

/// One key's allowed values, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRange {
    pub key: &'static str,
    pub min: i64,
    pub max: i64,
    pub unit: &'static str,
}

const fn range(key: &'static str, min: i64, max: i64, unit: &'static str) -> KeyRange {
    KeyRange { key, min, max, unit }
}

const KIB: i64 = 1024;
const MIB: i64 = 1024 * KIB;
const GIB: i64 = 1024 * MIB;

/// Every numeric key. The bounds are where the server still works as
/// documented: below them it refuses everything, busy-loops or hangs;
/// above them a wait becomes "never" or a count outgrows what it guards.
pub const RANGES: &[KeyRange] = &[
    range("server.connections_max", 1, 65_536, "connections"),
    range("server.streams_per_connection_max", 1, 1_024, "streams"),
    range("server.idle_timeout_ms", 1_000, 600_000, "ms"),
    range("server.connections_per_address_max", 1, 65_536, "connections"),
    range("server.handshake_timeout_ms", 100, 60_000, "ms"),
    range("server.handshakes_in_flight_max", 1, 65_536, "handshakes"),
    range("server.handshakes_per_address_in_flight_max", 1, 65_536, "handshakes"),
    range("server.handshakes_per_address_per_sec_max", 1, 100_000, "handshakes/s"),
    range("server.connections_per_gateway_max", 1, 1_024, "connections"),
    range("server.batch_idle_timeout_ms", 1_000, 86_400_000, "ms"),
    range("server.gateway_scans_per_sec_max", 1, 100_000_000, "scans/s"),
    range("server.gateway_batches_in_flight_max", 1, 4_096, "batches"),
    range("server.pipeline_batches_in_flight_max", 1, 4_096, "batches"),
    range("server.verify_slices_in_flight_max", 1, 1_024, "slices"),
    range("server.verify_slice_scans_max", 1, 100_000, "scans"),
    range("server.frames_in_flight_bytes_max", 64 * KIB, 64 * GIB, "bytes"),
    range("server.shutdown_deadline_ms", 100, 600_000, "ms"),
    range("server.deny_list_changes_kept_max", 1, 10_000_000, "changes"),
    range("wire.frame_bytes_max", KIB, 64 * MIB, "bytes"),
    range("wire.batch_scans_max", 1, 100_000, "scans"),
    range("wire.id_bytes_max", 1, 1_024, "bytes"),
    range("wire.frame_read_timeout_ms", 100, 600_000, "ms"),
    range("wire.deny_list_page_cards_max", 1, 1_000_000, "cards"),
    range("ride_code.code_validity_secs", 1, 86_400, "s"),
    range("ride_code.clock_skew_secs", 0, 3_600, "s"),
    range("ride_code.credential_validity_secs", 60, 604_800, "s"),
    range("ingest.accepted_lateness_secs", 60, 2_592_000, "s"),
    range("ingest.verify_chunk_signatures", 1, 1_024, "signatures"),
    range("ingest.dedup_sweep_interval_secs", 1, 3_600, "s"),
    range("ingest.dedup_hot_entries_max", 1_024, 268_435_456, "entries"),
    range("ingest.dedup_cold_sweep_interval_secs", 60, 86_400, "s"),
    range("ingest.dedup_snapshot_interval_secs", 10, 86_400, "s"),
    range("wal.segment_bytes_max", MIB, 64 * GIB, "bytes"),
    range("wal.record_bytes_max", 2 * KIB, GIB, "bytes"),
    range("wal.ack_wait_ms_max", 100, 60_000, "ms"),
    range("wal.disk_full_retry_ms", 10, 60_000, "ms"),
    range("archive.poll_interval_ms", 10, 60_000, "ms"),
    range("archive.retry_after_error_ms", 10, 600_000, "ms"),
    range("archive.file_bytes_max", 64 * KIB, 16 * GIB, "bytes"),
    range("archive.file_age_secs_max", 1, 86_400, "s"),
    range("archive.row_group_rows_max", 1_024, 10_000_000, "rows"),
    range("service_day.start_hour", 0, 23, "h"),
    range("settlement.cut_over_delay_minutes", 0, 1_380, "min"),
    range("settlement.cut_over_retry_interval_secs", 1, 86_400, "s"),
    range("settlement.memory_bytes_max", 16 * MIB, 64 * GIB, "bytes"),
    range("settlement.query_partitions_per_core", 1, 64, "partitions"),
    range("settlement.spill_bytes_max", 0, 16 * 1024 * GIB, "bytes"),
    range("keys.lock_wait_ms_max", 0, 600_000, "ms"),
    range("keys.signing_lead_secs", 0, 2_592_000, "s"),
    range("keys.reload_interval_ms", 10, super::KEYS_RELOAD_INTERVAL_MS_MAX as i64, "ms"),
    range("keys.unknown_key_read_wait_ms_max", 10, 60_000, "ms"),
    range("keys.terminal_rotation_lead_secs", 0, 3_600, "s"),
    range("fleet.gateway_cert_valid_days", 1, 3_650, "days"),
    range("fleet.revocation_check_interval_ms", 100, 600_000, "ms"),
    range("gateway.connect_timeout_ms", 100, 600_000, "ms"),
    range("gateway.ack_timeout_ms", 100, 600_000, "ms"),
    range("gateway.retry_attempts_max", 1, 1_000_000, "attempts"),
    range("gateway.retry_backoff_ms_initial", 1, 600_000, "ms"),
    range("gateway.retry_backoff_ms_max", 1, 600_000, "ms"),
    range("gateway.deny_list_cards_max", 0, 100_000_000, "cards"),
    range("payments.deposit_cents", 0, 100_000_000, "cents"),
    range("payments.refund_check_interval_ms", 1_000, 86_400_000, "ms"),
    range("payments.deny_list_sync_interval_ms", 100, 600_000, "ms"),
    range("payments.charges_archive_interval_ms", 100, 86_400_000, "ms"),
    range("payments.charges_archive_batch_charges_max", 1, 10_000_000, "charges"),
    range("payments.charges_archive_claim_stale_ms", 300, 604_800_000, "ms"),
    range("payments.dispatch_concurrency_max", 1, 1_024, "requests"),
    range("payments.dispatch_batch_charges_max", 1, 100_000, "charges"),
    range("payments.dispatch_lease_ms", 1_000, 3_600_000, "ms"),
    range("payments.request_timeout_ms", 100, 600_000, "ms"),
    range("payments.retry_budget_hours", 1, 720, "h"),
    range("payments.retry_backoff_ms_initial", 1, 600_000, "ms"),
    range("payments.retry_backoff_ms_max", 1, 3_600_000, "ms"),
    range("payments.failed_retry_after_ms", 1_000, 86_400_000, "ms"),
    range("payments.breaker_failures_to_open", 1, 100_000, "answers"),
    range("payments.breaker_probe_interval_ms_initial", 10, 60_000, "ms"),
    range("payments.breaker_probe_interval_ms_max", 10, 600_000, "ms"),
    range("payments.pricer_poll_interval_ms", 10, 60_000, "ms"),
    range("payments.pricer_thread_nice", 0, 19, "nice"),
    range("payments.pricer_store_cache_mib", 1, 65_536, "MiB"),
    range("payments.store_busy_wait_ms", 10, 600_000, "ms"),
    range("payments.money_store_connect_timeout_ms", 100, 600_000, "ms"),
    range("payments.money_store_unreachable_after_ms", 6_000, 3_600_000, "ms"),
    range("payments.money_store_lock_wait_ms_max", 100, 3_600_000, "ms"),
    range("payments.money_store_connections_max", 1, 64, "connections"),
    range("payments.money_store_idle_in_transaction_ms_max", 1_000, 3_600_000, "ms"),
    range("api.request_bytes_max", 256, MIB, "bytes"),
    range("api.otp_validity_secs", 60, 3_600, "s"),
    range("api.otp_attempts_max", 1, 20, "attempts"),
    range("api.otp_resend_secs_min", 1, 3_600, "s"),
    range("api.otp_sends_per_phone_per_hour_max", 1, 100, "codes"),
    range("api.otp_sends_per_client_per_hour_max", 1, 10_000_000, "codes"),
    range("api.otp_sends_per_minute_max", 1, 10_000_000, "codes"),
    range("api.otp_wrong_codes_per_phone_per_hour_max", 1, 1_000, "codes"),
    range("api.token_validity_secs", 3_600, 31_536_000, "s"),
    range("api.account_charges_max", 1, 10_000, "charges"),
    range("cluster.connect_timeout_ms", 100, 600_000, "ms"),
    range("cluster.start_wait_ms", 0, 600_000, "ms"),
    range("cluster.partitions", 1, farestream_core::cluster::PARTITIONS_MAX as i64, "partitions"),
    range("cluster.replicas", 1, 5, "servers"),
    range("cluster.duplicate_window_ms", 1_000, 86_400_000, "ms"),
    range("cluster.append_ack_timeout_ms", 100, 600_000, "ms"),
    range("cluster.record_bytes_max", 64 * KIB, 64 * MIB - 256, "bytes"),
    range("cluster.acks_in_flight_max", 1, 65_536, "records"),
    range("cluster.lease_ttl_ms", 1_000, 86_400_000, "ms"),
    range("cluster.lease_renew_interval_ms", 100, 43_200_000, "ms"),
    range("cluster.lease_safety_margin_ms", 0, 86_400_000, "ms"),
    range("cluster.claim_read_wait_ms", 10, 60_000, "ms"),
    range("cluster.segment_rows_max", 1_000, super::cluster::SEGMENT_ROWS_MAX_LIMIT as i64, "rows"),
    range("cluster.segment_age_max_ms", 1_000, 3_600_000, "ms"),
    range("cluster.claim_checkpoint_interval_ms", 1_000, 86_400_000, "ms"),
    range("cluster.archive_request_timeout_ms", 100, 600_000, "ms"),
    range("cluster.archive_retries_max", 0, 100, "retries"),
    range("cluster.archive_retry_timeout_ms", 1_000, 300_000, "ms"),
];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{key} = {value} is outside its range, {min} to {max} {unit}")]
pub struct OutOfRange {
    pub key: &'static str,
    pub value: i64,
    pub min: i64,
    pub max: i64,
    pub unit: &'static str,
}

/// The first integer in `table` outside its key's range. Values of
/// another type are left to deserialization, which names the key and the
/// type it expected.
pub fn check(table: &toml::Table) -> Result<(), OutOfRange> {
    for range in RANGES {
        let Some(toml::Value::Integer(value)) = lookup(table, range.key) else { continue };
        if !(range.min..=range.max).contains(value) {
            let KeyRange { key, min, max, unit } = *range;
            return Err(OutOfRange { key, value: *value, min, max, unit });
        }
    }
    Ok(())
}

fn lookup<'t>(table: &'t toml::Table, dotted: &str) -> Option<&'t toml::Value> {
    let (section, key) = dotted.split_once('.')?;
    table.get(section)?.as_table()?.get(key)
}

/// The range of `key`, if it is numeric.
pub fn of(key: &str) -> Option<&'static KeyRange> {
    RANGES.iter().find(|r| r.key == key)
}
