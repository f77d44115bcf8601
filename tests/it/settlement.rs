//! The daily settlement over a day whose answer is known in advance: real
//! scans over QUIC, charges decided by the simulated payment gateway, a
//! decline, arrears paid, a late upload, one past the rebill window; then
//! the same day broken on purpose, one invariant at a time.

use std::path::Path;

use chrono::NaiveDate;
use farestream::archive::parquet_writer::partition_dir;
use farestream::archive::read::{archive_files, read_charges_file};
use farestream::archive::scans_root;
use farestream::charges::ChargeOutcome;
use farestream::clock_source::Clock;
use farestream::scan::TapKind;
use farestream::server::DailySettlement;
use farestream::settle::settle_settings;
use farestream_analytics::query::{OutputFormat, run_query};
use farestream_analytics::settle::riders_file::{RidersFile, SETTLEMENT_RIDERS_PER_BATCH};
use farestream_analytics::settle::write::RiderRow;
use farestream_analytics::settle::{SettleSettings, Settled, settle_day};
use farestream_analytics::tables::ArchiveSource;
use farestream_analytics::tables::MemoryBudget;
use farestream_core::archive::charge_rows::charges_to_record_batch;
use farestream_core::money::Cents;
use farestream_core::settlement::{Break, RiderFigures};

use crate::money::{MINUTE, Money, tap};
use crate::support::{T0_MS, batch, copy_of};

const DAY: &str = "2025-11-20";
const HOUR: i64 = 60 * MINUTE;

fn day() -> NaiveDate {
    DAY.parse().expect("date")
}

fn settings(m: &Money) -> SettleSettings {
    settle_settings(&m.h.config, m.h.dir.path()).expect("settings")
}

async fn settle(settings: &SettleSettings, now: i64) -> Settled {
    settle_day(settings, day(), now).await.expect("settle")
}

async fn sql(data_dir: &Path, query: &str) -> String {
    let mut out = Vec::new();
    run_query(
        &ArchiveSource::dir(&data_dir.join("archive")),
        &budget(data_dir),
        per_core(),
        query,
        OutputFormat::Csv,
        &mut out,
    )
    .await
    .expect("query");
    String::from_utf8(out).expect("utf-8")
}

/// Everything archived and priced, every charge decided.
async fn quiesce(m: &Money) {
    m.settle().await;
    m.h.server.flush_archive().await.expect("flush archive");
}

fn kinds(breaks: &[Break]) -> Vec<&'static str> {
    let mut kinds: Vec<_> = breaks.iter().map(Break::kind).collect();
    kinds.dedup();
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_day_settles_to_the_cent_then_late_rides_settle_as_adjustments() {
    let m = Money::start().await;
    let rich = m.rider(601, 10_000).await;
    let declining = m.rider(602, 100).await;
    let owing = m.rider(603, 100).await;
    let client = m.h.client();
    // 601: three bus-99 rides (300 each), a 3-zone metro trip (600), then a
    // bus ride past the 1500 cap. 602: a 500 trip, declined, paid later.
    // 603: a 200 bus ride, declined, still owed.
    let scans = vec![
        tap(&rich, 1, T0_MS, TapKind::Single, "bus-99"),
        tap(&rich, 2, T0_MS + 10 * MINUTE, TapKind::Single, "bus-99"),
        tap(&rich, 3, T0_MS + 20 * MINUTE, TapKind::Single, "bus-99"),
        tap(&rich, 4, T0_MS + 30 * MINUTE, TapKind::Entry, "station-01"),
        tap(&rich, 5, T0_MS + 50 * MINUTE, TapKind::Exit, "station-07"),
        tap(&rich, 6, T0_MS + 60 * MINUTE, TapKind::Single, "bus-1"),
        tap(&declining, 7, T0_MS + 5 * MINUTE, TapKind::Entry, "station-01"),
        tap(&declining, 8, T0_MS + 25 * MINUTE, TapKind::Exit, "station-05"),
        tap(&owing, 9, T0_MS + 15 * MINUTE, TapKind::Single, "bus-1"),
    ];
    client.push(&batch("depot-1", 1, scans)).await.expect("ack");
    quiesce(&m).await;
    m.control.top_up("payer-602", 1_000, "topup-602-1").await.expect("top up");
    m.h.server.accounts().pay_arrears(602).await.expect("pay");
    quiesce(&m).await;

    let settings = settings(&m);
    let first = settle(&settings, m.h.clock.now_ms()).await;
    assert!(first.breaks.is_empty(), "{:?}", first.breaks);
    let run = first.new_run.clone().expect("a first run");
    assert_eq!((run.run, run.kind, run.final_day, run.files_settled), (1, "cut_over", false, 1));
    let t = run.totals;
    assert_eq!((t.rides, t.fares_cents.get(), t.caps_cents.get(), t.due_cents.get()), (7, 2_400, 200, 2_200));
    assert_eq!(
        (t.charged_cents.get(), t.succeeded_cents.get(), t.declined_cents.get(), t.pending_cents.get()),
        (2_200, 1_500, 700, 0)
    );
    assert_eq!((t.arrears_opened_cents.get(), t.arrears_paid_cents.get(), t.late_rides), (700, -500, 0));
    assert_eq!((run.scans[0], run.scans.iter().sum::<i64>(), run.riders), (9, 9, 3));
    let riders = sql(
        m.h.dir.path(),
        "SELECT card_id, rides, fares_cents, caps_cents, due_cents, succeeded_cents, declined_cents,
                arrears_opened_cents, arrears_paid_cents, arrears_outstanding_cents
         FROM settlements WHERE service_date = DATE '2025-11-20' ORDER BY card_id",
    )
    .await;
    assert_eq!(
        riders.lines().skip(1).collect::<Vec<_>>(),
        ["601,5,1700,200,1500,1500,0,0,0,0", "602,1,500,0,500,0,500,500,-500,0", "603,1,200,0,200,0,200,200,0,200"]
    );
    let routes =
        sql(m.h.dir.path(), "SELECT route_id, scans, rides, revenue_cents FROM settlement_routes ORDER BY route_id")
            .await;
    assert_eq!(routes.lines().skip(1).collect::<Vec<_>>(), ["bus-1,2,2,200", "bus-99,3,3,900", "metro-1,4,2,1100"]);
    let report = std::fs::read_to_string(&first.report_path).expect("report");
    assert!(report.contains("Reconciled.") && report.contains("22.00"), "the report shows the day");
    assert!(first.headline.contains("due 22.00") && first.headline.contains("no breaks"), "{}", first.headline);

    // Nothing new: the same files and the same report, byte for byte.
    let again = settle(&settings, m.h.clock.now_ms() + HOUR).await;
    assert!(again.new_run.is_none() && again.breaks.is_empty());
    assert_eq!(std::fs::read_to_string(&again.report_path).expect("report"), report);
    assert_eq!(archive_files(&settings.data_dir.join("archive").join("settlement_runs")).expect("runs").len(), 1);

    // A late ride, uploaded hours later inside the rebill window: the next
    // run settles it as a late adjustment.
    let late = m.rider(604, 10_000).await;
    m.h.clock.set(T0_MS + 6 * HOUR);
    client
        .push(&batch("depot-1", 2, vec![tap(&late, 10, T0_MS + 40 * MINUTE, TapKind::Single, "bus-99")]))
        .await
        .expect("ack");
    quiesce(&m).await;
    let second = settle(&settings, m.h.clock.now_ms()).await;
    assert!(second.breaks.is_empty(), "{:?}", second.breaks);
    let run = second.new_run.expect("a late run");
    assert_eq!((run.run, run.kind, run.riders, run.files_settled), (2, "late_adjustment", 1, 1));
    assert_eq!(
        (run.totals.rides, run.totals.late_rides, run.totals.due_cents.get(), run.totals.succeeded_cents.get()),
        (1, 1, 300, 300)
    );
    let totals = sql(
        m.h.dir.path(),
        "SELECT sum(rides), sum(late_rides), sum(due_cents), sum(succeeded_cents) FROM settlements
         WHERE service_date = DATE '2025-11-20'",
    )
    .await;
    assert_eq!(totals.lines().nth(1), Some("8,1,2500,1800"), "summing the runs gives the day as it stands");

    // Past the rebill window: archived as late_upload under the day it
    // arrived, for manual review there, never charged. The run after the
    // day closed (`_SUCCESS`) marks it final, with nothing else changed.
    m.h.clock.set(T0_MS + 3 * 24 * HOUR + 20 * HOUR);
    client
        .push(&batch("depot-1", 3, vec![tap(&late, 11, T0_MS + 45 * MINUTE, TapKind::Single, "bus-1")]))
        .await
        .expect("ack");
    quiesce(&m).await;
    m.h.clock.set(m.h.clock.now_ms() + HOUR);
    m.h.server.flush_archive().await.expect("flush");
    assert!(partition_dir(&scans_root(m.h.dir.path()), day()).join("_SUCCESS").exists(), "the day closed");
    let third = settle(&settings, m.h.clock.now_ms()).await;
    assert!(third.breaks.is_empty(), "{:?}", third.breaks);
    let run = third.new_run.expect("a third run");
    assert!(run.final_day && run.totals.is_zero() && run.files_settled == 0, "{run:?}");
    assert!(third.headline.contains("(final, 3 runs)"), "{}", third.headline);
    let arrival: NaiveDate = "2025-11-24".parse().expect("date");
    let arrived = settle_day(&settings, arrival, m.h.clock.now_ms()).await.expect("settle");
    let run = arrived.new_run.expect("the arrival day's run");
    assert_eq!((run.manual_review, run.totals.rides, run.totals.due_cents.get()), (1, 0, 0), "{run:?}");
    assert!(arrived.headline.contains("1 rides for manual review"), "{}", arrived.headline);
    let report = std::fs::read_to_string(&arrived.report_path).expect("report");
    assert!(report.contains("Manual review: 1 uploads"), "the report lists it");
    // Issue 17 item 11: times for finance are local, not epoch milliseconds.
    assert!(report.contains("2025-11-20 10:45:00 +08:00"), "the late scan at its local time");
    assert!(report.contains("1 scans read outside this service day's hours"), "and keeps it out of the hourly chart");

    // The settlement `serve`'s cut-over runs is this one, on a thread of
    // its own: the same day, the same headline.
    let cut_over = farestream::settle::ArchiveSettlement::new(&m.h.config, m.h.dir.path()).expect("settlement");
    let now = m.h.clock.now_ms();
    let stop = tokio_util::sync::CancellationToken::new();
    let ran = tokio::task::spawn_blocking(move || cut_over.settle(day(), now, &stop)).await.expect("no panic");
    let again = settle(&settings, now).await;
    assert_eq!(ran, Ok(format!("{} (report {}, 0 breaks)", again.headline, again.report_path.display())));

    // Stopped, not dropped: the data dir lives on with the harness.
    m.h.server.shutdown().await.expect("shutdown");
    m.paygw.stop().await;
    breaks_are_named(m.h.dir.path(), &settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metro_trip_across_the_day_boundary_is_one_fare_on_its_entrys_day() {
    let m = Money::start().await;
    let settings = settings(&m);
    let next_day = day().succ_opt().expect("next day");
    let boundary = settings.service_day.day_start(next_day).expect("04:00");
    let (in_order, exit_first) = (m.rider(621, 10_000).await, m.rider(622, 10_000).await);
    let client = m.h.client();
    m.h.clock.set(boundary + 30 * MINUTE);
    // 621: in at 03:50, out at 04:10 (a 500 trip), a bus ride (300) after;
    // the entry is uploaded first. 622: in at 03:55, out at 04:05 (a 600
    // trip); the exit is uploaded first, so it is a maximum fare until the
    // entry arrives.
    let first = vec![
        tap(&in_order, 1, boundary - 10 * MINUTE, TapKind::Entry, "station-01"),
        tap(&exit_first, 4, boundary + 5 * MINUTE, TapKind::Exit, "station-07"),
    ];
    client.push(&batch("depot-1", 1, first)).await.expect("ack");
    let before = m.settle().await;
    let charged: Vec<_> = before.iter().map(|c| (c.card_id, c.amount_cents.get())).collect();
    assert_eq!(charged, [(622, 900)], "621's entry is open; 622's exit alone is a maximum fare");
    let second = vec![
        tap(&in_order, 2, boundary + 10 * MINUTE, TapKind::Exit, "station-05"),
        tap(&in_order, 3, boundary + 20 * MINUTE, TapKind::Single, "bus-99"),
        tap(&exit_first, 5, boundary - 5 * MINUTE, TapKind::Entry, "station-01"),
    ];
    client.push(&batch("depot-1", 2, second)).await.expect("ack");
    quiesce(&m).await;
    let charges = m.settle().await;

    let of = |card: u64, date: NaiveDate| -> Vec<(&str, i64, usize)> {
        let mut list: Vec<_> = charges
            .iter()
            .filter(|c| c.card_id == card && c.service_date == date)
            .map(|c| (c.kind.as_str(), c.amount_cents.get(), c.scan_ids.len()))
            .collect();
        list.sort();
        list
    };
    assert_eq!(of(621, day()), [("ride", 500, 1)], "the trip, on the entry's day, once");
    assert_eq!(of(621, next_day), [("ride", 0, 1), ("ride", 300, 1)], "its exit is a continuation: nothing due");
    assert_eq!(of(622, day()), [("ride", 600, 1)]);
    assert_eq!(of(622, next_day), [("adjustment", -900, 0), ("max_fare", 900, 1)], "the maximum fare comes back");
    let net: i64 = charges.iter().filter(|c| c.outcome == ChargeOutcome::Succeeded).map(|c| c.amount_cents.get()).sum();
    assert_eq!(net, 500 + 300 + 600, "two trips and a bus ride, no maximum fare kept");

    let now = m.h.clock.now_ms();
    let (d, d1) = (settle(&settings, now).await, settle_day(&settings, next_day, now).await.expect("settle"));
    assert!(d.breaks.is_empty() && d1.breaks.is_empty(), "{:?} {:?}", d.breaks, d1.breaks);
    let riders = sql(
        m.h.dir.path(),
        "SELECT service_date, card_id, sum(rides), sum(due_cents), sum(charged_cents) FROM settlements
         GROUP BY service_date, card_id ORDER BY service_date, card_id",
    )
    .await;
    assert_eq!(
        riders.lines().skip(1).collect::<Vec<_>>(),
        ["2025-11-20,621,1,500,500", "2025-11-20,622,1,600,600", "2025-11-21,621,1,300,300"],
        "each trip is a ride of its entry's day; on the exit's day 622's maximum fare and its credit net to nothing"
    );
}

/// Each break on a copy of the settled day: the reconciliation names it.
async fn breaks_are_named(data_dir: &Path, settings: &SettleSettings) {
    let now = T0_MS + 5 * 24 * HOUR;
    let scans = partition_dir(&scans_root(data_dir), day());
    let scan_file = archive_files(&scans_root(data_dir))
        .expect("files")
        .into_iter()
        .find(|f| f.starts_with(&scans))
        .expect("a scan file");
    let charges_dir = partition_dir(&data_dir.join("archive").join("charges"), day());
    let charges_file = archive_files(&data_dir.join("archive").join("charges"))
        .expect("files")
        .into_iter()
        .find(|f| f.starts_with(&charges_dir))
        .expect("a charges file");

    let copy = copy_of(data_dir);
    let name = scan_file.file_name().and_then(|n| n.to_str()).expect("name").replace("part-", "part-0");
    std::fs::copy(&scan_file, partition_dir(&scans_root(copy.path()), day()).join(name)).expect("copy");
    let broken = settle_day(&moved(settings, copy.path()), day(), now).await.expect("settle");
    assert!(kinds(&broken.breaks).contains(&"scan_archived_twice"), "{:?}", broken.breaks);

    let copy = copy_of(data_dir);
    let in_copy = copy.path().join(charges_file.strip_prefix(data_dir).expect("inside"));
    let mut rows = read_charges_file(&in_copy).expect("charges");
    let removed = rows.iter().position(|c| c.amount_cents.get() > 0).expect("a charge");
    let removed = rows.remove(removed);
    rewrite(&in_copy, &rows);
    let broken = settle_day(&moved(settings, copy.path()), day(), now).await.expect("settle");
    let expected = Break::RideNotCharged { scan_id: removed.scan_ids[0], card_id: removed.card_id };
    assert!(broken.breaks.contains(&expected), "the removed charge's ride is named: {:?}", broken.breaks);
    assert!(kinds(&broken.breaks).contains(&"money_mismatch"));
    let report = std::fs::read_to_string(&broken.report_path).expect("report");
    assert!(report.contains("Reconciliation failed") && report.contains(&hex::encode(removed.scan_ids[0])));
    // Issue 17 item 11: every break is a row to query, in CNY for finance.
    let named = sql(
        copy.path(),
        "SELECT kind, card_id, scan_id FROM settlement_breaks WHERE kind = 'ride_not_charged' ORDER BY scan_id",
    )
    .await;
    let row = format!("ride_not_charged,{},{}", removed.card_id, hex::encode(removed.scan_ids[0]));
    assert!(named.lines().any(|l| l == row), "{named}");
    let money = sql(
        copy.path(),
        "SELECT amount_cents - expected_cents AS short, description FROM settlement_breaks WHERE kind = 'money_mismatch'",
    )
    .await;
    let short = -removed.amount_cents.get();
    assert!(money.lines().nth(1).is_some_and(|l| l.starts_with(&format!("{short},")) && l.contains("CNY ")), "{money}");
    assert_eq!(
        sql(copy.path(), "SELECT count(*) AS n FROM settlement_breaks").await.lines().nth(1),
        Some(broken.breaks.len().to_string().as_str())
    );
    rows.push(removed);
    rewrite(&in_copy, &rows);
    let mended = settle_day(&moved(settings, copy.path()), day(), now).await.expect("settle");
    assert!(mended.breaks.is_empty(), "{:?}", mended.breaks);
    let left = sql(copy.path(), "SELECT count(*) AS n FROM settlement_breaks").await;
    assert_eq!(left.lines().nth(1), Some("0"), "a mended day has no breaks left");

    let copy = copy_of(data_dir);
    let in_copy = copy.path().join(charges_file.strip_prefix(data_dir).expect("inside"));
    let mut rows = read_charges_file(&in_copy).expect("charges");
    let flipped =
        rows.iter_mut().find(|c| c.outcome == ChargeOutcome::Succeeded && c.amount_cents.get() > 0).expect("a success");
    flipped.outcome = ChargeOutcome::Declined;
    let (card, flipped_amount) = (flipped.card_id, flipped.amount_cents.get());
    rewrite(&in_copy, &rows);
    let broken = settle_day(&moved(settings, copy.path()), day(), now).await.expect("settle");
    assert!(
        broken.breaks.iter().any(|b| matches!(b, Break::ArrearsMismatch { card_id, .. } if *card_id == card)),
        "a flipped outcome no longer matches the store's arrears: {:?}",
        broken.breaks
    );
    let off = sql(
        copy.path(),
        &format!(
            "SELECT expected_cents - amount_cents AS off FROM settlement_breaks
             WHERE kind = 'arrears_mismatch' AND card_id = {card}"
        ),
    )
    .await;
    assert_eq!(off.lines().nth(1), Some(flipped_amount.to_string().as_str()), "the charges say more is owed: {off}");

    // Issue 17 item 11: with its settled scans file gone, settle named the
    // break yet wrote a run of negative rides that settled the day to zero.
    let copy = copy_of(data_dir);
    let before = settle_day(&moved(settings, copy.path()), day(), now).await.expect("settle").runs.len();
    std::fs::remove_file(copy.path().join(scan_file.strip_prefix(data_dir).expect("inside"))).expect("remove");
    let broken = settle_day(&moved(settings, copy.path()), day(), now).await.expect("settle");
    assert!(kinds(&broken.breaks).contains(&"settled_file_missing"), "{:?}", broken.breaks);
    assert!(broken.new_run.is_none() && broken.runs.len() == before, "a run with breaks writes nothing");
    let runs = sql(copy.path(), "SELECT count(*) AS n, min(rides) AS least FROM settlement_runs").await;
    assert!(!runs.contains('-'), "no run of negative rides: {runs}");

    // Issue 17 item 11: a file in the day's folder that is not a scans
    // file was ignored, though the docs say it stops the run.
    let copy = copy_of(data_dir);
    std::fs::write(partition_dir(&scans_root(copy.path()), day()).join("notes.txt"), "checked by hand").expect("notes");
    let refused = match settle_day(&moved(settings, copy.path()), day(), now).await {
        Ok(_) => panic!("a day with notes.txt in its folder settled"),
        Err(error) => error.to_string(),
    };
    assert!(refused.contains("notes.txt") && refused.contains("move it out"), "{refused}");

    let copy = copy_of(data_dir);
    let in_copy = copy.path().join(charges_file.strip_prefix(data_dir).expect("inside"));
    let twin = in_copy.with_file_name("charges-999999999999.parquet");
    std::fs::copy(&in_copy, &twin).expect("copy");
    let broken = settle_day(&moved(settings, copy.path()), day(), now).await.expect("settle");
    assert!(kinds(&broken.breaks).contains(&"charge_listed_twice"), "{:?}", broken.breaks);

    // A rider an earlier run settled whose rides and charges are all gone
    // since (here a row that no ride or charge backs): the next run takes
    // its figures back, so the day sums to what its files hold.
    let copy = copy_of(data_dir);
    let settlements = copy.path().join("archive").join("settlements");
    let mut phantom = RidersFile::create(&settlements, day(), 1).expect("riders file");
    let figures = RiderFigures { rides: 2, fares_cents: Cents::new(400), ..RiderFigures::default() };
    phantom.push(RiderRow { card_id: 99_999, figures }).expect("push");
    let written = phantom.finish().expect("finish");
    std::fs::rename(&written.tmp, partition_dir(&settlements, day()).join("phantom.parquet")).expect("rename");
    let taken_back = settle_day(&moved(settings, copy.path()), day(), now).await.expect("settle");
    assert!(taken_back.breaks.is_empty(), "{:?}", taken_back.breaks);
    let run = taken_back.new_run.expect("a run taking the figures back");
    assert_eq!((run.riders, run.totals.rides, run.totals.fares_cents.get()), (1, -2, -400), "{run:?}");
    let left = sql(copy.path(), "SELECT sum(rides) AS r, sum(fares_cents) AS f FROM settlements WHERE card_id = 99999");
    assert_eq!(left.await.lines().nth(1), Some("0,0"));
}

fn moved(settings: &SettleSettings, data_dir: &Path) -> SettleSettings {
    SettleSettings { data_dir: data_dir.to_path_buf(), memory: budget(data_dir), ..settings.clone() }
}

/// `farestream query`'s partitions a core, as configured by default.
fn per_core() -> usize {
    farestream::config::Config::defaults().settlement.query_partitions_per_core
}

/// The default memory budget, spilling under `data_dir`.
fn budget(data_dir: &Path) -> MemoryBudget {
    MemoryBudget::of(data_dir, &farestream::config::Config::defaults().settlement)
}

fn rewrite(path: &Path, rows: &[farestream::charges::ChargeRecord]) {
    write_parquet(path, &charges_to_record_batch(rows).expect("batch"));
}

/// One batch as a plain Parquet file, as an outsider would write it.
fn write_parquet(path: &Path, batch: &arrow_array::RecordBatch) {
    let file = std::fs::File::create(path).expect("create");
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close");
}

/// Every status, with and without a card and a tap kind, in a scans file:
/// the settlement's SQL ride condition picks exactly the rows the pricer's
/// `is_ride` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settlements_ride_condition_picks_exactly_the_pricers_rides() {
    use farestream::fares::{RIDE_SQL, is_ride};
    use farestream::scan::{ArchivedScan, ScanStatus};
    let mut rows = Vec::new();
    let shapes = [(Some(7), Some(TapKind::Single)), (None, Some(TapKind::Entry)), (Some(7), None), (None, None)];
    for (i, status) in ScanStatus::ALL.into_iter().enumerate() {
        for (j, (card_id, tap_kind)) in shapes.into_iter().enumerate() {
            rows.push(ArchivedScan {
                scan_id: [(i * 4 + j) as u8; 16],
                gateway_id: "depot-1".into(),
                validator_id: "v".into(),
                validator_seq: 1,
                route_id: "bus-1".into(),
                stop_id: "s".into(),
                tap_kind,
                card_id,
                issuer_key_id: None,
                code_created_at: None,
                code_counter: None,
                scanned_at: T0_MS,
                received_at: T0_MS,
                status,
                reason: None,
                gate_opened: None,
                deny_list_version: None,
                service_date: day(),
            });
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let partition = partition_dir(&scans_root(dir.path()), day());
    std::fs::create_dir_all(&partition).expect("mkdir");
    let batch = farestream_core::archive::schema::to_record_batch(&rows).expect("batch");
    write_parquet(&partition.join("part-00000000000000000000-00000000000000000001.parquet"), &batch);
    let by_sql: std::collections::BTreeSet<String> =
        sql(dir.path(), &format!("SELECT scan_id FROM scans WHERE {RIDE_SQL}"))
            .await
            .lines()
            .skip(1)
            .map(String::from)
            .collect();
    let by_rust: std::collections::BTreeSet<String> =
        rows.iter().filter(|r| is_ride(r)).map(|r| hex::encode(r.scan_id)).collect();
    assert_eq!(by_sql, by_rust);
    assert_eq!(by_rust.len(), 1, "one accepted row with a card and a tap kind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_query_is_an_error_with_datafusions_message_and_an_empty_archive_has_empty_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = ArchiveSource::dir(&dir.path().join("archive"));
    for table in ["scans", "charges", "settlements", "settlement_routes", "settlement_runs", "settlement_files"] {
        let mut out = Vec::new();
        let rows = run_query(
            &archive,
            &budget(dir.path()),
            per_core(),
            &format!("SELECT count(*) AS n FROM {table}"),
            OutputFormat::Csv,
            &mut out,
        )
        .await
        .expect("an empty table answers");
        assert_eq!((rows, String::from_utf8(out).expect("utf-8")), (1, "n\n0\n".to_string()), "{table}");
    }
    for bad in ["SELEC 1", "SELECT * FROM no_such_table", "SELECT nonsense FROM scans", ""] {
        let error = run_query(&archive, &budget(dir.path()), per_core(), bad, OutputFormat::Table, &mut Vec::new())
            .await
            .expect_err(bad);
        assert!(error.is_bad_query(), "{bad}: {error}");
        assert!(!error.to_string().is_empty());
    }
}

/// Issue 21: `settlement.query_partitions_per_core` splits a statement
/// for speed alone: a GROUP BY over many keys answers the same at its
/// smallest and largest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_by_answers_the_same_at_every_partitioning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = ArchiveSource::dir(&dir.path().join("archive"));
    let per_key = "SELECT value % 100003 AS k, count(*) AS n, sum(value) AS s FROM generate_series(1, 1000000) \
                   GROUP BY k ORDER BY n DESC, s DESC, k LIMIT 3";
    let mut answers = Vec::new();
    for per_core in [1, per_core(), 64] {
        let mut out = Vec::new();
        run_query(&archive, &budget(dir.path()), per_core, per_key, OutputFormat::Csv, &mut out)
            .await
            .expect("answered");
        answers.push(String::from_utf8(out).expect("utf-8"));
    }
    assert_eq!(answers[0], "k,n,s\n99973,10,5499865\n99972,10,5499855\n99971,10,5499845\n");
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
}

/// Issue 21: the archive's SQL runs within `settlement.memory_bytes_max`.
/// A sort four times the budget spills to disk and answers in full;
/// refused any spill space, the same sort fails rather than take the
/// memory it was not given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sort_over_the_memory_budget_spills_and_without_spill_space_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = ArchiveSource::dir(&dir.path().join("archive"));
    let small = MemoryBudget { bytes_max: 32 << 20, ..budget(dir.path()) };
    // A running total over the whole series in another order: the window
    // needs every row sorted (128 MB of them) before its first answer.
    let sort = "SELECT max(total) AS total FROM (SELECT sum(value) OVER (ORDER BY value % 1000003, value) AS total \
                FROM generate_series(1, 8000000))";
    let mut out = Vec::new();
    let rows =
        run_query(&archive, &small, per_core(), sort, OutputFormat::Csv, &mut out).await.expect("spilled and answered");
    assert_eq!((rows, String::from_utf8(out).expect("utf-8")), (1, "total\n32000004000000\n".to_string()));
    // The smallest budget split the most ways a config allows: partitions
    // are capped by the budget, so the sort still spills and answers.
    let smallest = MemoryBudget { bytes_max: 16 << 20, ..small.clone() };
    let mut out = Vec::new();
    run_query(&archive, &smallest, 64, sort, OutputFormat::Csv, &mut out)
        .await
        .expect("spilled at the smallest budget");
    assert_eq!(String::from_utf8(out).expect("utf-8"), "total\n32000004000000\n");
    let no_spill = MemoryBudget { spill_bytes_max: 0, ..small };
    let error = run_query(&archive, &no_spill, per_core(), sort, OutputFormat::Csv, &mut Vec::new())
        .await
        .expect_err("no room");
    assert!(error.to_string().contains("spilling") && error.to_string().contains("limit"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_at_its_extremes_answers_or_refuses_and_never_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = ArchiveSource::dir(&dir.path().join("archive"));
    let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let error = run_query(&archive, &budget(dir.path()), per_core(), &deep, OutputFormat::Csv, &mut Vec::new())
        .await
        .expect_err("too deep");
    assert!(error.is_bad_query(), "a nesting limit, not a stack overflow: {error}");
    let long = format!("SELECT 1 AS one /* {} */", "x".repeat(1 << 20));
    let mut out = Vec::new();
    assert_eq!(
        run_query(&archive, &budget(dir.path()), per_core(), &long, OutputFormat::Csv, &mut out)
            .await
            .expect("a long statement"),
        1
    );
    assert_eq!(out, b"one\n1\n");
    let mut out = Vec::new();
    let many = "SELECT value FROM generate_series(1, 200000)";
    assert_eq!(
        run_query(&archive, &budget(dir.path()), per_core(), many, OutputFormat::Json, &mut out)
            .await
            .expect("streamed"),
        200_000
    );
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 200_000, "one JSON object per line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scans_file_that_is_not_parquet_or_not_named_by_its_log_range_is_named_in_the_error() {
    for (name, bytes, says) in [
        ("part-00000000000000000000-00000000000000000000.parquet", &b"not parquet"[..], "part-0000"),
        ("part-00000000000000000000-00000000000000000000.parquet", &b""[..], "part-0000"),
        ("extra.parquet", &b"PAR1"[..], "not named as a scans file is (part-FROM-TO.parquet"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let partition = partition_dir(&scans_root(dir.path()), day());
        std::fs::create_dir_all(&partition).expect("mkdir");
        std::fs::write(partition.join(name), bytes).expect("write");
        let settings = settle_settings(&farestream::config::Config::defaults(), dir.path()).expect("settings");
        let error = settle_day(&settings, day(), T0_MS).await.expect_err(name);
        assert!(error.to_string().contains(says), "{name}: {error}");
    }
}

/// The benchmark's generator at its smallest: every day it writes settles
/// clean, a lone scan, a metro pair, all declined and none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_days_at_their_smallest_settle_clean() {
    use farestream::sim::archive_day::{ArchiveDaySpec, write_archive_day};
    for (scans, declined_percent) in [(1, 0.0), (2, 100.0), (3, 0.0), (200, 100.0)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settle_settings(&farestream::config::Config::defaults(), dir.path()).expect("settings");
        let spec = ArchiveDaySpec {
            scans,
            date: day(),
            seed: scans,
            declined_percent,
            row_group_rows_max: 64,
            file_bytes_max: 1 << 20,
            compare_baseline: false,
        };
        let written = write_archive_day(&spec, &settings.fares, &settings.service_day, dir.path()).expect("generate");
        assert_eq!(written.scans, scans, "exactly the scans asked for");
        let settled = settle_day(&settings, day(), T0_MS).await.expect("settle");
        assert!(settled.breaks.is_empty(), "{scans} scans, {declined_percent}% declined: {:?}", settled.breaks);
        let run = settled.new_run.expect("a run");
        assert_eq!(run.scans.iter().sum::<i64>(), scans as i64);
        let declined = run.totals.declined_cents.get() > 0;
        assert_eq!(declined, declined_percent > 0.0 && run.totals.due_cents.get() > 0, "{run:?}");
    }
}

fn riders_read_back(path: &Path) -> Vec<(i64, i64)> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let int = |name: &str| {
            let column = batch.column_by_name(name).unwrap();
            column.as_any().downcast_ref::<arrow_array::Int64Array>().unwrap().values().to_vec()
        };
        rows.extend(int("card_id").into_iter().zip(int("fares_cents")));
    }
    rows
}

#[test]
fn a_riders_file_past_one_batch_holds_every_row_and_their_sum() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = RidersFile::create(dir.path(), day(), 3).unwrap();
    let n = SETTLEMENT_RIDERS_PER_BATCH + 5;
    for card in 0..n as u64 {
        let figures = RiderFigures { rides: 1, fares_cents: Cents::new(card as i64), ..RiderFigures::default() };
        file.push(RiderRow { card_id: card, figures }).unwrap();
    }
    assert_eq!(file.rows(), n as i64);
    assert_eq!(file.totals().rides, n as i64);
    assert_eq!(file.totals().fares_cents, Cents::new((n * (n - 1) / 2) as i64));
    let finished = file.finish().unwrap();
    let rows = riders_read_back(&finished.tmp);
    assert_eq!(rows.len(), n);
    assert!(rows.iter().enumerate().all(|(i, (card, fare))| *card == i as i64 && *fare == i as i64));
}

#[test]
fn an_unfinished_riders_file_is_removed_and_a_crashed_ones_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut crashed = RidersFile::create(dir.path(), day(), 1).unwrap();
    crashed.push(RiderRow { card_id: 9, figures: RiderFigures::default() }).unwrap();
    let tmp = crashed.path().to_path_buf();
    // The process died: nothing of it ran after this.
    std::mem::forget(crashed);
    assert!(tmp.exists());
    let file = RidersFile::create(dir.path(), day(), 1).unwrap();
    assert_eq!(file.path(), tmp);
    drop(file);
    assert!(!tmp.exists(), "a run that writes nothing leaves no file behind");
}

/// Two settlements of one day at once (the cut-over and an operator's
/// `settle`): the second waits for the first, then finds nothing new,
/// rather than both writing run 1 into each other's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_settlements_of_one_day_at_once_make_one_run() {
    use farestream::sim::archive_day::{ArchiveDaySpec, write_archive_day};
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settle_settings(&farestream::config::Config::defaults(), dir.path()).expect("settings");
    let spec = ArchiveDaySpec {
        scans: 20_000,
        date: day(),
        seed: 3,
        declined_percent: 5.0,
        row_group_rows_max: 4096,
        file_bytes_max: 1 << 20,
        compare_baseline: false,
    };
    write_archive_day(&spec, &settings.fares, &settings.service_day, dir.path()).expect("generate");
    let (a, b) = tokio::join!(settle_day(&settings, day(), T0_MS), settle_day(&settings, day(), T0_MS));
    let (a, b) = (a.expect("settle"), b.expect("settle"));
    assert!(a.breaks.is_empty() && b.breaks.is_empty(), "{:?} {:?}", a.breaks, b.breaks);
    assert_eq!(a.new_run.is_some() as u8 + b.new_run.is_some() as u8, 1, "exactly one run is written");
    let runs = sql(dir.path(), "SELECT count(*) AS n, sum(riders) AS riders FROM settlement_runs").await;
    let rows = sql(dir.path(), "SELECT count(*) AS n FROM settlements").await;
    let riders = a.new_run.or(b.new_run).expect("a run").riders;
    assert_eq!(runs.lines().nth(1), Some(format!("1,{riders}").as_str()));
    assert_eq!(rows.lines().nth(1), Some(riders.to_string().as_str()), "every rider's row, once");
}

#[test]
fn a_card_archived_as_a_negative_number_is_read_back_as_its_id() {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch};
    use farestream_analytics::settle::sql::column_u64;
    let cards: ArrayRef = std::sync::Arc::new(Int64Array::from(vec![Some(-2), Some(7), None]));
    let batch = RecordBatch::try_from_iter([("card_id", cards)]).unwrap();
    assert_eq!(column_u64(&batch, 0).unwrap(), vec![Some(u64::MAX - 1), Some(7), None]);
}
