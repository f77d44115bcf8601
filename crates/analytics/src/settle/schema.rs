//! The settlement's four tables: one folder each under `DATA_DIR/archive`,
//! partitioned by `service_date` like the scans and charges, one file per
//! run (`run-NNNN.parquet`). Every money and count column is a change made
//! by that run, so summing over runs gives the day as it stands.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
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
}

impl SettlementTable {
    pub const ALL: [SettlementTable; 4] =
        [SettlementTable::Riders, SettlementTable::Routes, SettlementTable::Runs, SettlementTable::Files];

    /// The SQL name and the folder under `DATA_DIR/archive`.
    pub fn name(self) -> &'static str {
        match self {
            SettlementTable::Riders => "settlements",
            SettlementTable::Routes => "settlement_routes",
            SettlementTable::Runs => "settlement_runs",
            SettlementTable::Files => "settlement_files",
        }
    }
}

/// The rider figures' columns, in `RiderFigures` order.
pub const RIDER_FIGURES: [&str; 12] = [
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
];

/// Figures from their columns in `RIDER_FIGURES` order.
pub fn figures_from(v: &dyn Fn(usize) -> i64) -> RiderFigures {
    RiderFigures {
        rides: v(0),
        fares_cents: v(1),
        caps_cents: v(2),
        due_cents: v(3),
        charged_cents: v(4),
        succeeded_cents: v(5),
        declined_cents: v(6),
        pending_cents: v(7),
        arrears_opened_cents: v(8),
        arrears_paid_cents: v(9),
        arrears_outstanding_cents: v(10),
        late_rides: v(11),
    }
}

/// The figures as columns in `RIDER_FIGURES` order.
pub fn figures_to(f: &RiderFigures) -> [i64; 12] {
    [
        f.rides,
        f.fares_cents,
        f.caps_cents,
        f.due_cents,
        f.charged_cents,
        f.succeeded_cents,
        f.declined_cents,
        f.pending_cents,
        f.arrears_opened_cents,
        f.arrears_paid_cents,
        f.arrears_outstanding_cents,
        f.late_rides,
    ]
}

/// `scans_accepted`, `scans_replay`, ...: one count column per status.
pub fn status_columns() -> Vec<String> {
    ScanStatus::ALL.iter().map(|s| format!("scans_{}", s.as_str())).collect()
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int64, false)
}

fn run() -> Field {
    Field::new("run", DataType::UInt32, false)
}

pub fn settlement_schema(table: SettlementTable) -> SchemaRef {
    let mut fields = vec![run()];
    match table {
        SettlementTable::Riders => {
            fields.push(Field::new("card_id", DataType::UInt64, false));
            fields.extend(RIDER_FIGURES.iter().map(|n| int(n)));
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
            fields.extend(RIDER_FIGURES.iter().filter(|n| **n != "arrears_outstanding_cents").map(|n| int(n)));
            fields.extend([int("manual_review"), int("riders_awaiting_archive"), int("breaks")]);
        }
        SettlementTable::Files => {
            fields.push(Field::new("table_name", DataType::Utf8, false));
            fields.push(Field::new("file", DataType::Utf8, false));
            fields.push(int("rows"));
        }
    }
    Arc::new(Schema::new(fields))
}
