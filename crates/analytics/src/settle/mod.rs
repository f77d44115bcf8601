//! `farestream settle --date D`: the daily cut-over (日切). It reads the
//! day's settled scan files and the charges (archive plus store), prices
//! every rider's day with the core the way the pricer did, checks that
//! every ride is in exactly one charge and the money adds up, and writes
//! what changed since the day's earlier runs to the settlement tables and
//! the day's HTML report.
//!
//! Idempotent: a run that finds nothing new writes nothing and leaves the
//! same report. What arrives after the cut-over (a late upload within the
//! accepted lateness, an outcome decided, arrears paid) is written by the
//! day's next run as a change, marked late.

pub mod edges;
pub mod inputs;
pub mod lock;
pub mod report;
pub mod riders;
pub mod riders_file;
pub mod settle_types;
pub mod settlement_tables;
pub mod sql;
pub mod write;

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use datafusion::prelude::SessionContext;

use crate::archive_files::SCANS_TABLE;
use crate::tables::{ArchiveSource, archive_session, register_files};
use farestream_core::archive::schema::scan_schema;
use farestream_core::charges::ChargeOutcome;
use farestream_core::clock::UnixMillis;
use farestream_core::money::Cents;
use farestream_core::scan::ScanStatus;
use farestream_core::service_day::ServiceDayPolicy;
use farestream_core::settlement::{Break, DayCharge, RiderFigures, settle_rider, trip_edge_may_be_unarchived};
use farestream_ingest::archive::checkpoint::{checkpoint_path, read_checkpoint};
use farestream_ingest::archive::parquet_writer::SUCCESS_MARKER;
use farestream_ingest::faults::Faults;
use farestream_ingest::node_id::NodeId;
use farestream_money::MoneyStore;
use farestream_money::charges_archive::{ArchivePlace, ChargesRoot, archive_decided_charges, charges_root_in};
use farestream_money::pricer::reader_name;
use farestream_money::snapshot::{MoneySnapshot, money_snapshot};

use edges::{Edges, read_edges};
use farestream_core::fares::RIDE_SQL;
use inputs::{EarlierRuns, Positions, earlier_runs, settleable_scan_files};
use lock::settlement_lock;
use riders::{RiderDay, for_each_rider};
use riders_file::RidersFile;
pub use settle_types::{SettleError, SettleSettings, Settled, SharedArchive};
use settlement_tables::SettlementTable;
use sql::{collect_rows, column_i64, column_str, column_u64};
use write::{FileRow, RiderRow, RouteRow, RunRow, RunRows, StatusCounts, add_to, status_index, write_run};

/// The settlement's statements run one partition a core: its three
/// sorts at once each hold back merge room per partition, and at 16 a
/// core a 10-million-scan day ran out of the default 512 MiB
/// (`archive_session`).
pub const SETTLEMENT_PARTITIONS_PER_CORE: usize = 1;

/// Settles `date` as of `now`.
pub async fn settle_day(settings: &SettleSettings, date: NaiveDate, now: UnixMillis) -> Result<Settled, SettleError> {
    let archive = settings.archive()?;
    let lock = settlement_lock(settings, &archive).await?;
    let snapshot = {
        let (settings, archive) = (settings.clone(), archive.clone());
        tokio::task::spawn_blocking(move || read_money(&settings, &archive, date, now))
            .await
            .map_err(|e| SettleError::Output(format!("reading the money store stopped: {e}")))??
    };
    let ctx = archive_session(&archive, &settings.memory, SETTLEMENT_PARTITIONS_PER_CORE)?;
    let earlier = earlier_runs(&ctx, date).await?;
    let positions = match settings.shared_archive {
        None => {
            let archived_lsn = read_checkpoint(&checkpoint_path(&settings.data_dir))?;
            Positions::Log { pricer_lsn: snapshot.pricer_lsn, archived_lsn }
        }
        Some(_) => Positions::Partitions(snapshot.partition_cursors.clone()),
    };
    let (files, files_waiting) = settleable_scan_files(&archive, date, &positions).await?;
    let new_files: Vec<_> = files.iter().filter(|f| !earlier.files.contains(&f.name)).cloned().collect();
    let mut breaks: Vec<Break> = earlier
        .files
        .iter()
        .filter(|name| !files.iter().any(|f| &f.name == *name))
        .map(|name| Break::SettledFileMissing { file: name.clone() })
        .collect();
    let urls = |list: &[inputs::ScanFile]| list.iter().map(|f| f.url.clone()).collect::<Vec<_>>();
    register_files(&ctx, "day_scans", &urls(&files), scan_schema())?;
    register_files(&ctx, "new_scans", &urls(&new_files), scan_schema())?;
    let run = earlier.runs + 1;
    let archive_behind = files_waiting > 0
        || match positions {
            Positions::Log { pricer_lsn, archived_lsn } => archived_lsn < pricer_lsn,
            // A partition's pricer may run ahead of its archiver by a
            // segment, whose position is kept in JetStream: a charge whose
            // ride is in no settled file awaits the archive, never a break.
            Positions::Partitions(_) => true,
        };
    let day = DayContext::new(settings, date, &snapshot, &ctx, run).await?;
    let staging = archive.staging_dir(SettlementTable::Riders.name(), &settings.scratch_dir());
    let riders = RidersFile::create(&staging, date, run)?;
    let walked = walk_riders(settings, &ctx, (date, &day, riders), &snapshot, earlier, archive_behind).await?;
    breaks.extend(walked.breaks);
    let routes = route_rows(&ctx, &walked.routes_now, &walked.routes_before).await?;
    let new_scans = status_counts(&ctx, "new_scans").await?;
    let manual_review = new_scans[status_index(ScanStatus::LateUpload)];
    let totals = walked.riders.totals();
    let final_day = archive.has_file(SCANS_TABLE, date, SUCCESS_MARKER).await?;
    // The cut-over is always recorded, an empty day included; a later run
    // only when something changed.
    let changed = run == 1
        || !new_files.is_empty()
        || walked.riders.rows() > 0
        || routes.iter().any(|r| r.rides != 0 || !r.revenue_cents.is_zero())
        || final_day != walked.final_before;
    let run_row = RunRow {
        run,
        kind: if run == 1 { "cut_over" } else { "late_adjustment" },
        settled_at: now,
        final_day,
        pricer_lsn: snapshot.pricer_lsn,
        files_settled: new_files.len() as i64,
        scans: new_scans,
        riders: walked.riders.rows(),
        totals: RiderFigures { arrears_outstanding_cents: Cents::ZERO, ..totals },
        manual_review,
        riders_awaiting_archive: walked.awaiting,
        breaks: breaks.len() as i64,
    };
    // A run with a break writes nothing: its figures would be settled on
    // a broken input (a settled file gone would settle the day to zero).
    // The report names the breaks; the run is made once they are mended.
    let new_run = if changed && breaks.is_empty() {
        let files =
            new_files.iter().map(|f| FileRow { table: SCANS_TABLE, file: f.name.clone(), rows: f.rows }).collect();
        let riders = walked.riders.finish()?;
        write_run((&archive, &lock), date, RunRows { riders, routes, run: run_row.clone(), files }).await?;
        Some(run_row)
    } else {
        drop(walked.riders);
        None
    };
    breaks.sort();
    write::write_breaks((&archive, &lock), date, (run, now), &breaks, &settings.fares.currency).await?;
    let extras = report::scan_extras(&ctx, day.window).await?;
    report::finish(settings, &archive, date, new_run, breaks, extras).await
}

/// Flushes decided charges into the data dir's charges archive, then
/// reads the store's side in one snapshot (blocking: off the async
/// threads, as a PostgreSQL store must be).
fn read_money(
    settings: &SettleSettings,
    archive: &ArchiveSource,
    date: NaiveDate,
    now: UnixMillis,
) -> Result<MoneySnapshot, SettleError> {
    let data_dir = &settings.data_dir;
    let mut store = MoneyStore::open(&settings.store, settings.store_busy_wait)?;
    let node = NodeId::load_or_create(data_dir, &Faults::default())
        .map_err(|e| SettleError::Output(format!("the data dir's node id: {e}")))?;
    let root = match (&settings.shared_archive, archive) {
        (None, ArchiveSource::Dir(dir)) => ChargesRoot::Dir(charges_root_in(dir)),
        _ => ChargesRoot::Shared(
            archive.shared_store().map_err(|e| SettleError::Output(format!("the shared archive: {e}")))?,
            tokio::runtime::Handle::current(),
        ),
    };
    let place = ArchivePlace { root: &root, node: &node };
    archive_decided_charges(&mut store, place, settings.charges_batches, now, &Faults::default())?;
    let pricer = reader_name(store.engine(), &node);
    Ok(money_snapshot(&mut store, date, &pricer)?)
}

/// The per-card inputs besides rides and charges.
struct DayContext {
    open_entries: HashMap<u64, UnixMillis>,
    store_arrears: HashMap<u64, Cents>,
    /// Payments during the service day.
    paid_in_day: HashMap<u64, Cents>,
    /// Declines (all days) less payments (all time): what arrears should be.
    arrears_from_charges: HashMap<u64, Cents>,
    /// Rides in the files this run settles first, when it is a late run.
    late_rides: HashMap<u64, i64>,
    /// The service day's `[start, end)`.
    window: (UnixMillis, UnixMillis),
    /// The neighbouring days' taps a trip across a boundary may use.
    edges: Edges,
}

impl DayContext {
    async fn new(
        settings: &SettleSettings,
        date: NaiveDate,
        snapshot: &MoneySnapshot,
        ctx: &SessionContext,
        run: u32,
    ) -> Result<DayContext, SettleError> {
        let window = day_window(&settings.service_day, date);
        let (start, end) = window;
        let mut paid_in_day: HashMap<u64, Cents> = HashMap::new();
        let mut arrears_from_charges: HashMap<u64, Cents> = HashMap::new();
        for p in &snapshot.arrears_payments {
            *arrears_from_charges.entry(p.card_id).or_default() += p.amount_cents;
            if (start..end).contains(&p.at) {
                *paid_in_day.entry(p.card_id).or_default() += p.amount_cents;
            }
        }
        for (card, amount) in declines(ctx, snapshot).await? {
            *arrears_from_charges.entry(card).or_default() += amount;
        }
        let mut late_rides = HashMap::new();
        if run > 1 {
            let sql = format!("SELECT card_id, count(*) FROM new_scans WHERE {RIDE_SQL} GROUP BY card_id");
            for batch in collect_rows(ctx, &sql).await? {
                let (cards, counts) = (column_u64(&batch, 0)?, column_i64(&batch, 1)?);
                for (card, count) in cards.into_iter().zip(counts) {
                    late_rides.insert(card.unwrap_or(0), count.unwrap_or(0));
                }
            }
        }
        Ok(DayContext {
            open_entries: snapshot.open_entries.iter().copied().collect(),
            store_arrears: snapshot.arrears.iter().copied().collect(),
            paid_in_day,
            arrears_from_charges,
            late_rides,
            window,
            edges: read_edges(ctx, date, window, settings.fares.metro_exit_window_ms).await?,
        })
    }
}

/// Every declined debit, archived or not, each once, summed per card.
async fn declines(ctx: &SessionContext, snapshot: &MoneySnapshot) -> Result<HashMap<u64, Cents>, SettleError> {
    let mut by_charge: HashMap<String, (u64, Cents)> = HashMap::new();
    let declined = ChargeOutcome::Declined.as_str();
    let sql = format!(
        "SELECT charge_id, card_id, amount_cents FROM charges WHERE outcome = '{declined}' AND amount_cents > 0"
    );
    for batch in collect_rows(ctx, &sql).await? {
        let (ids, cards, amounts) = (column_str(&batch, 0)?, column_u64(&batch, 1)?, column_i64(&batch, 2)?);
        for i in 0..ids.len() {
            by_charge.insert(
                ids[i].clone().unwrap_or_default(),
                (cards[i].unwrap_or(0), Cents::new(amounts[i].unwrap_or(0))),
            );
        }
    }
    for c in snapshot
        .unarchived_charges
        .iter()
        .filter(|c| c.outcome == ChargeOutcome::Declined && c.amount_cents.is_positive())
    {
        by_charge.insert(hex::encode(c.charge_id), (c.card_id, c.amount_cents));
    }
    let mut per_card: HashMap<u64, Cents> = HashMap::new();
    for (card, amount) in by_charge.into_values() {
        *per_card.entry(card).or_default() += amount;
    }
    Ok(per_card)
}

struct Walked {
    riders: RidersFile,
    breaks: Vec<Break>,
    awaiting: i64,
    routes_now: BTreeMap<String, (i64, Cents)>,
    routes_before: BTreeMap<String, (i64, Cents)>,
    final_before: bool,
}

/// Settles every rider of the day and writes the changes to `riders`.
async fn walk_riders(
    settings: &SettleSettings,
    ctx: &SessionContext,
    (date, day, riders): (NaiveDate, &DayContext, RidersFile),
    snapshot: &MoneySnapshot,
    earlier: EarlierRuns,
    archive_behind: bool,
) -> Result<Walked, SettleError> {
    let mut store_charges: BTreeMap<u64, Vec<DayCharge>> = BTreeMap::new();
    for c in snapshot.unarchived_charges.iter().filter(|c| c.service_date == date) {
        store_charges.entry(c.card_id).or_default().push(DayCharge::from(c));
    }
    let EarlierRuns { runs, routes: routes_before, final_day: final_before, .. } = earlier;
    let mut walked =
        Walked { riders, breaks: Vec::new(), awaiting: 0, routes_now: BTreeMap::new(), routes_before, final_before };
    for_each_rider(ctx, date, runs, store_charges, |RiderDay { card, taps, charges, before }| {
        let previous = before.unwrap_or_default();
        if taps.is_empty() && charges.is_empty() {
            // Settled by an earlier run, its rides and charges all gone
            // since: the run takes back what the earlier ones gave.
            if !previous.is_zero() {
                walked.riders.push(RiderRow { card_id: card, figures: RiderFigures::default().minus(&previous) })?;
            }
            return Ok(());
        }
        let edges = day.edges.of(card);
        let open_entry = day.open_entries.get(&card).copied();
        let settled = settle_rider(&settings.fares, card, &taps, &edges, &charges, open_entry);
        for route in settled.routes {
            let entry = walked.routes_now.entry(route.route_id).or_default();
            add_to(&mut entry.0, route.rides);
            entry.1 += route.revenue_cents;
        }
        let unarchived = !settled.unarchived_scans.is_empty()
            || trip_edge_may_be_unarchived(&settings.fares, &taps, &edges, day.window);
        if unarchived && archive_behind {
            // The pricer is ahead of the archive: this rider waits for the
            // next run, figures and checks alike.
            walked.awaiting += 1;
            return Ok(());
        }
        walked.breaks.extend(settled.breaks);
        walked.breaks.extend(
            settled
                .unarchived_scans
                .iter()
                .map(|(charge_id, scan_id)| Break::ChargeWithoutRide { charge_id: *charge_id, scan_id: *scan_id }),
        );
        let store = day.store_arrears.get(&card).copied().unwrap_or_default();
        let expected = day.arrears_from_charges.get(&card).copied().unwrap_or_default();
        if store != expected {
            walked.breaks.push(Break::ArrearsMismatch {
                card_id: card,
                from_charges_cents: expected,
                store_cents: store,
            });
        }
        let now = RiderFigures {
            arrears_paid_cents: day.paid_in_day.get(&card).copied().unwrap_or_default(),
            arrears_outstanding_cents: store,
            late_rides: previous.late_rides.saturating_add(day.late_rides.get(&card).copied().unwrap_or(0)),
            ..settled.figures
        };
        let change = now.minus(&previous);
        if !change.is_zero() {
            walked.riders.push(RiderRow { card_id: card, figures: change })?;
        }
        Ok(())
    })
    .await?;
    Ok(walked)
}

/// The service day's `[start, end)` in milliseconds since the epoch.
fn day_window(policy: &ServiceDayPolicy, date: NaiveDate) -> (UnixMillis, UnixMillis) {
    let start = policy.day_start(date).unwrap_or(UnixMillis::MIN);
    let end = date.succ_opt().and_then(|d| policy.day_start(d)).unwrap_or(UnixMillis::MAX);
    (start, end)
}

/// Scans by status in `table`.
async fn status_counts(ctx: &SessionContext, table: &str) -> Result<StatusCounts, SettleError> {
    let mut counts = StatusCounts::default();
    for batch in collect_rows(ctx, &format!("SELECT status, count(*) FROM {table} GROUP BY status")).await? {
        let (statuses, n) = (column_str(&batch, 0)?, column_i64(&batch, 1)?);
        for (status, n) in statuses.into_iter().zip(n) {
            if let Some(status) = status.as_deref().and_then(ScanStatus::parse) {
                add_to(&mut counts[status_index(status)], n.unwrap_or(0));
            }
        }
    }
    Ok(counts)
}

/// Per route: the new files' scans by status, and the change in rides and
/// revenue since the earlier runs.
async fn route_rows(
    ctx: &SessionContext,
    now: &BTreeMap<String, (i64, Cents)>,
    before: &BTreeMap<String, (i64, Cents)>,
) -> Result<Vec<RouteRow>, SettleError> {
    let mut rows: BTreeMap<String, RouteRow> = BTreeMap::new();
    let blank = |route: &str| RouteRow {
        route_id: route.to_string(),
        scans: StatusCounts::default(),
        rides: 0,
        revenue_cents: Cents::ZERO,
    };
    for batch in collect_rows(ctx, "SELECT route_id, status, count(*) FROM new_scans GROUP BY route_id, status").await?
    {
        let (routes, statuses, n) = (column_str(&batch, 0)?, column_str(&batch, 1)?, column_i64(&batch, 2)?);
        for i in 0..routes.len() {
            let route = routes[i].clone().unwrap_or_default();
            let Some(status) = statuses[i].as_deref().and_then(ScanStatus::parse) else { continue };
            add_to(
                &mut rows.entry(route.clone()).or_insert_with(|| blank(&route)).scans[status_index(status)],
                n[i].unwrap_or(0),
            );
        }
    }
    for route in now.keys().chain(before.keys()) {
        let (rides_now, revenue_now) = now.get(route).copied().unwrap_or_default();
        let (rides_before, revenue_before) = before.get(route).copied().unwrap_or_default();
        let row = rows.entry(route.clone()).or_insert_with(|| blank(route));
        row.rides = rides_now.saturating_sub(rides_before);
        row.revenue_cents = revenue_now - revenue_before;
    }
    Ok(rows
        .into_values()
        .filter(|r| r.rides != 0 || !r.revenue_cents.is_zero() || r.scans.iter().any(|n| *n != 0))
        .collect())
}
