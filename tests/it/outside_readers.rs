//! The archives as analysts read them, from outside: Python's DuckDB and
//! pyarrow (`scripts/read-archives.py`, and Spark when pyspark and Java are
//! installed) read the scans, charges and
//! settlements of a live server, whose archiver holds a file open, and
//! every figure is checked against what farestream wrote. Needs `python3`
//! with `duckdb` and `pyarrow` (`.ci/run` installs them when it can);
//! without them the test says so and passes, unless
//! `FARESTREAM_OUTSIDE_READERS=required`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::NaiveDate;
use farestream::archive::read::{read_all, read_all_charges};
use farestream::archive::scans_root;
use farestream::charges::{ChargeOutcome, ChargeRecord};
use farestream::clock_source::Clock;
use farestream::scan::TapKind;
use farestream::settle::settle_settings;
use farestream::wire::{GateDecision, ScanRecord};
use farestream_analytics::settle::settle_day;

use crate::money::{MINUTE, Money, tap};
use crate::support::{batch, repo_file};

/// Whether `python3` can import what the script needs.
pub(crate) fn python_has_readers() -> bool {
    let found = Command::new("python3").args(["-c", "import duckdb, pyarrow, tomllib"]).output();
    match found {
        Ok(out) if out.status.success() => true,
        _ if std::env::var("FARESTREAM_OUTSIDE_READERS").as_deref() == Ok("required") => {
            panic!("python3 with duckdb and pyarrow is required (FARESTREAM_OUTSIDE_READERS=required)")
        }
        _ => false,
    }
}

fn read_from_outside(data_dir: &Path) -> serde_json::Value {
    let out =
        Command::new("python3").arg(repo_file("scripts/read-archives.py")).arg(data_dir).output().expect("run python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Waits until the archiver holds a file open in `scans/.tmp/`.
async fn an_open_file(data_dir: &Path) -> bool {
    let tmp = scans_root(data_dir).join(".tmp");
    for _ in 0..200 {
        let open = std::fs::read_dir(&tmp)
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".open-")))
            .unwrap_or(false);
        if open {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_and_pyarrow_read_the_archives_as_documented_while_the_server_writes() {
    if !python_has_readers() {
        eprintln!("outside_readers: skipped, python3 with duckdb and pyarrow not found");
        return;
    }
    let m = Money::start().await;
    let settings = settle_settings(&m.h.config, m.h.dir.path()).expect("settings");
    let day: NaiveDate = "2025-11-20".parse().expect("date");
    let next_day = day.succ_opt().expect("next day");
    let boundary = settings.service_day.day_start(next_day).expect("04:00");
    let (bus, night) = (m.rider(641, 10_000).await, m.rider(642, 10_000).await);
    let client = m.h.client();
    m.h.clock.set(boundary + 30 * MINUTE);
    let scans = vec![
        tap(&bus, 1, boundary - 5 * 60 * MINUTE, TapKind::Single, "bus-99"),
        tap(&bus, 2, boundary - 4 * 60 * MINUTE, TapKind::Entry, "station-01"),
        tap(&bus, 3, boundary - 4 * 60 * MINUTE + 20 * MINUTE, TapKind::Exit, "station-05"),
        tap(&night, 4, boundary - 10 * MINUTE, TapKind::Entry, "station-01"),
        tap(&night, 5, boundary + 10 * MINUTE, TapKind::Exit, "station-07"),
        // Issue 17 item 13: a hostile validator clock (±2^63 ms) was
        // archived as sent and DuckDB failed every query on scanned_at.
        ScanRecord { validator_time_ms: i64::MAX, ..tap(&bus, 7, boundary, TapKind::Single, "bus-99") },
        ScanRecord { validator_time_ms: i64::MIN, ..tap(&bus, 8, boundary, TapKind::Single, "bus-99") },
    ];
    client.push(&batch("depot-1", 1, scans)).await.expect("ack");
    m.settle().await;
    m.h.server.flush_archive().await.expect("flush archive");
    let charges: Vec<ChargeRecord> = m.settle().await;
    for date in [day, next_day] {
        let settled = settle_day(&settings, date, m.h.clock.now_ms()).await.expect("settle");
        assert!(settled.breaks.is_empty(), "{:?}", settled.breaks);
    }
    // One more scan, archived into a file the archiver keeps open. Its
    // gate refused it: no ride, so no charge is archived while the
    // readers read (their figures are compared exactly).
    let refused = ScanRecord {
        gate: GateDecision::Refused as i32,
        ..tap(&bus, 6, boundary + 20 * MINUTE, TapKind::Single, "bus-99")
    };
    client.push(&batch("depot-1", 2, vec![refused])).await.expect("ack");
    assert!(an_open_file(m.h.dir.path()).await, "the archiver holds a file open");

    let found = read_from_outside(m.h.dir.path());
    let finished = read_all(&scans_root(m.h.dir.path())).expect("scans").len() as u64;
    assert_eq!(finished, 7, "the last scan is still in the open file");
    for key in ["duckdb_scans", "duckdb_scans_recursive", "pyarrow_dataset_scans", "pyarrow_read_table_scans"] {
        assert_eq!(found[key], finished, "{key}: {found}");
    }
    assert_eq!(found["duckdb_service_date_type"], "DATE");
    assert_eq!(
        found["duckdb_scans_by_date"],
        serde_json::json!({"2025-11-20": 4, "2025-11-21": 3}),
        "the two malformed times are filed under the day they arrived"
    );
    // 1970-01-01 and 2106-02-07 06:28:15.999 UTC, as epoch milliseconds
    // (a rendered timestamp's form depends on the reader's time zone).
    assert_eq!(found["duckdb_scanned_at_range"], serde_json::json!([0, 4_294_967_295_999i64]));
    let archived = read_all_charges(&m.h.dir.path().join("archive").join("charges")).expect("charges");
    assert_eq!(found["pyarrow_read_table_charges"], archived.len() as u64);
    let succeeded: i64 =
        charges.iter().filter(|c| c.outcome == ChargeOutcome::Succeeded).map(|c| c.amount_cents.get()).sum();
    assert_eq!(found["duckdb_charges_succeeded_cents"], succeeded);
    assert_eq!(succeeded, 300 + 500 + 600, "a bus ride and two trips, the night one charged once");
    let due: BTreeMap<String, i64> =
        serde_json::from_value(found["duckdb_settlements_due_cents"].clone()).expect("map");
    assert_eq!(due, BTreeMap::from([("2025-11-20/641".into(), 800), ("2025-11-20/642".into(), 600)]));
    assert_eq!(found["pyarrow_read_table_settlements"], 2);
    // Issue 17 item 14: ids are signed 64-bit, which every engine holds.
    assert_eq!(
        found["duckdb_id_types"],
        serde_json::json!({"card_id": "BIGINT", "validator_seq": "BIGINT", "charges.card_id": "BIGINT"})
    );
    assert_eq!(
        found["pyarrow_id_types"],
        serde_json::json!({"scans": "int64", "charges": "int64", "settlements": "int64"})
    );
    match &found["pyspark_id_types"] {
        serde_json::Value::String(why) => eprintln!("outside_readers: Spark not checked: {why}"),
        types => assert_eq!(
            types,
            &serde_json::json!({"scans": "bigint", "charges": "bigint", "settlements": "bigint"}),
            "Spark reads card_id as a long, not a decimal(20,0)"
        ),
    }
    assert_eq!(
        found["trips"],
        serde_json::json!([
            [641, "2025-11-20", "2025-11-20", "station-01", "station-05"],
            [642, "2025-11-20", "2025-11-21", "station-01", "station-07"]
        ]),
        "the docs' trip query links entry and exit, across the boundary too"
    );
    m.stop().await;
}

/// The settlement recomputed from the archives alone in DuckDB
/// (`scripts/settle-duckdb.py`, what `scripts/settle-bench.sh` times):
/// every rider's rides, fares, caps and charges equal what `settle` wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_recomputes_a_generated_days_settlement_to_the_cent() {
    use farestream::sim::archive_day::{ArchiveDaySpec, write_archive_day};
    if !python_has_readers() {
        eprintln!("outside_readers: skipped, python3 with duckdb and pyarrow not found");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settle_settings(&farestream::config::Config::defaults(), dir.path()).expect("settings");
    let day: NaiveDate = "2025-11-20".parse().expect("date");
    let spec = ArchiveDaySpec {
        scans: 20_000,
        date: day,
        seed: 7,
        declined_percent: 5.0,
        row_group_rows_max: 4096,
        file_bytes_max: 1 << 20,
        compare_baseline: false,
    };
    write_archive_day(&spec, &settings.fares, &settings.service_day, dir.path()).expect("generate");
    let settled = settle_day(&settings, day, crate::support::T0_MS).await.expect("settle");
    assert!(settled.breaks.is_empty(), "{:?}", settled.breaks);
    let out = Command::new("python3")
        .arg(repo_file("scripts/settle-duckdb.py"))
        .args([dir.path().to_str().expect("utf-8 path"), "2025-11-20"])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("totals equal, 0 riders differ, 0 breaks"), "{stdout}");
    let rides = settled.new_run.expect("a run").totals.rides;
    assert!(rides > 10_000 && stdout.contains(&format!(" {rides} rides,")), "{rides} rides: {stdout}");
}
