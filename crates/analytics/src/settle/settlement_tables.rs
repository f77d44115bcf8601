//! The settlement's tables: one folder each under `DATA_DIR/archive`,
//! partitioned by `service_date` like the scans and charges. The four run
//! tables have one file per run (`run-NNNN.parquet`); every money and count
//! column is a change made by that run, so summing over runs gives the day
//! as it stands. `settlement_breaks` holds what the day's latest `settle`
//! found wrong (`breaks.parquet`, replaced by each `settle` that finds
//! breaks or clears earlier ones).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use farestream_core::money::Cents;
use farestream_core::scan::ScanStatus;
use farestream_core::settlement::RiderFigures;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementTable {
    /// One row per rider whose figures a run changed.
    Riders,
    /// One row per route a run changed: scans by status, rides, revenue.
    Routes,
    /// One row per run: the day's totals that run added, and what it read.
    Runs,
    /// One row per archive file a run settled: what the next run skips.
    Files,
    /// One row per break the day's latest `settle` found.
    Breaks,
}

impl SettlementTable {
    pub const ALL: [SettlementTable; 5] = [
        SettlementTable::Riders,
        SettlementTable::Routes,
        SettlementTable::Runs,
        SettlementTable::Files,
        SettlementTable::Breaks,
    ];

    /// The SQL name and the folder under `DATA_DIR/archive`.
    pub fn name(self) -> &'static str {
        match self {
            SettlementTable::Riders => "settlements",
            SettlementTable::Routes => "settlement_routes",
            SettlementTable::Runs => "settlement_runs",
            SettlementTable::Files => "settlement_files",
            SettlementTable::Breaks => "settlement_breaks",
        }
    }
}

/// How many figures a rider's row has.
pub const FIGURES: usize = RIDER_FIGURES.len();

/// Where `arrears_outstanding_cents` is among the figures: a level, not a
/// flow, so the runs table leaves it out.
pub const ARREARS_OUTSTANDING: usize = 10;

/// Figures added after the first settlement files were written: older
/// runs' files lack them, and read them as null (0).
const ADDED_LATER: [&str; 6] = [
    "netted_cents",
    "no_account_cents",
    // The statuses of sealed ride codes (issue 20).
    "scans_undecryptable",
    "scans_unknown_terminal_key",
    "scans_expired_terminal_key",
    "scans_format_retired",
];

/// The rider figures' columns, in `RiderFigures` order.
pub const RIDER_FIGURES: [&str; 14] = [
    "rides",
    "fares_cents",
    "caps_cents",
    "due_cents",
    "charged_cents",
    "succeeded_cents",
    "declined_cents",
    "pending_cents",
    "arrears_opened_cents",
    "arrears_paid_cents",
    "arrears_outstanding_cents",
    "late_rides",
    "netted_cents",
    "no_account_cents",
];

/// Figures from their columns in `RIDER_FIGURES` order.
pub fn figures_from(v: &dyn Fn(usize) -> i64) -> RiderFigures {
    RiderFigures {
        rides: v(0),
        fares_cents: Cents::new(v(1)),
        caps_cents: Cents::new(v(2)),
        due_cents: Cents::new(v(3)),
        charged_cents: Cents::new(v(4)),
        succeeded_cents: Cents::new(v(5)),
        declined_cents: Cents::new(v(6)),
        pending_cents: Cents::new(v(7)),
        arrears_opened_cents: Cents::new(v(8)),
        arrears_paid_cents: Cents::new(v(9)),
        arrears_outstanding_cents: Cents::new(v(10)),
        late_rides: v(11),
        netted_cents: Cents::new(v(12)),
        no_account_cents: Cents::new(v(13)),
    }
}

/// The figures as columns in `RIDER_FIGURES` order.
pub fn figures_to(f: &RiderFigures) -> [i64; FIGURES] {
    [
        f.rides,
        f.fares_cents.get(),
        f.caps_cents.get(),
        f.due_cents.get(),
        f.charged_cents.get(),
        f.succeeded_cents.get(),
        f.declined_cents.get(),
        f.pending_cents.get(),
        f.arrears_opened_cents.get(),
        f.arrears_paid_cents.get(),
        f.arrears_outstanding_cents.get(),
        f.late_rides,
        f.netted_cents.get(),
        f.no_account_cents.get(),
    ]
}

/// `scans_accepted`, `scans_replay`, ...: one count column per status.
pub fn status_columns() -> Vec<String> {
    ScanStatus::ALL.iter().map(|s| format!("scans_{}", s.as_str())).collect()
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int64, ADDED_LATER.contains(&name))
}

fn figure(name: &str) -> Field {
    Field::new(name, DataType::Int64, ADDED_LATER.contains(&name))
}

fn run() -> Field {
    Field::new("run", DataType::UInt32, false)
}

pub fn settlement_schema(table: SettlementTable) -> SchemaRef {
    let mut fields = vec![run()];
    match table {
        SettlementTable::Riders => {
            fields.push(Field::new("card_id", DataType::Int64, false));
            fields.extend(RIDER_FIGURES.iter().map(|n| figure(n)));
        }
        SettlementTable::Routes => {
            fields.push(Field::new("route_id", DataType::Utf8, false));
            fields.push(int("scans"));
            fields.extend(status_columns().iter().map(|n| int(n)));
            fields.extend([int("rides"), int("revenue_cents")]);
        }
        SettlementTable::Runs => {
            fields.push(Field::new("kind", DataType::Utf8, false));
            fields.push(Field::new(
                "settled_at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ));
            fields.push(Field::new("final", DataType::Boolean, false));
            fields.push(Field::new("pricer_lsn", DataType::UInt64, false));
            fields.push(int("files_settled"));
            fields.push(int("scans"));
            fields.extend(status_columns().iter().map(|n| int(n)));
            fields.push(int("riders"));
            fields.extend(
                RIDER_FIGURES.iter().enumerate().filter(|(i, _)| *i != ARREARS_OUTSTANDING).map(|(_, n)| figure(n)),
            );
            fields.extend([int("manual_review"), int("riders_awaiting_archive"), int("breaks")]);
        }
        SettlementTable::Files => {
            fields.push(Field::new("table_name", DataType::Utf8, false));
            fields.push(Field::new("file", DataType::Utf8, false));
            fields.push(int("rows"));
        }
        SettlementTable::Breaks => {
            // `run`: the run these breaks kept from being written.
            fields.push(Field::new("found_at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false));
            fields.push(Field::new("kind", DataType::Utf8, false));
            fields.push(Field::new("card_id", DataType::Int64, true));
            fields.push(Field::new("scan_id", DataType::Utf8, true));
            fields.push(Field::new("charge_id", DataType::Utf8, true));
            fields.push(Field::new("amount_cents", DataType::Int64, true));
            fields.push(Field::new("expected_cents", DataType::Int64, true));
            fields.push(Field::new("copies", DataType::Int64, true));
            fields.push(Field::new("detail", DataType::Utf8, true));
            fields.push(Field::new("description", DataType::Utf8, false));
        }
    }
    Arc::new(Schema::new(fields))
}
