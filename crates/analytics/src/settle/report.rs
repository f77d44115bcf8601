//! The day's report: one HTML file a finance person opens (headline,
//! reconciliation, the runs, revenue per route, scans per hour by status,
//! riders in arrears, rides for manual review) and a plain-text headline
//! for stdout. Built only from what the runs recorded and the settled
//! files, so a rerun that changes nothing writes the same bytes.

use std::fmt::Write as _;
use std::path::Path;

use chrono::{NaiveDate, TimeZone};
use datafusion::prelude::SessionContext;

use super::settle_types::{SettleError, SettleSettings, Settled};
use super::sql::{collect_rows, column_i64, column_str, column_u64};
use super::write::{RunRow, StatusCounts};
use super::write::{add_to, status_index};
use crate::tables::{ArchiveSource, archive_session};
use farestream_core::clock::UnixMillis;
use farestream_core::money::{Cents, group_digits};
use farestream_core::scan::ScanStatus;
use farestream_core::settlement::{Break, RiderFigures};
use farestream_ingest::archive::checkpoint::replace_durably;
use farestream_ingest::faults::Faults;

/// Rows of a list the report shows at most; the count says how many more.
const REPORT_LIST_ROWS_MAX: usize = 200;

/// What the report reads from the settled scan files.
#[derive(Debug, Default)]
pub struct ScanExtras {
    /// (UTC hour since the epoch, status, scans).
    pub hourly: Vec<(i64, ScanStatus, i64)>,
    /// Late uploads past the accepted lateness: (scan, card, route, scanned at).
    pub manual_review: Vec<(String, Option<u64>, String, i64)>,
    pub manual_review_total: i64,
    /// Scans whose `scanned_at` falls outside the service day (filed
    /// under their arrival), not in the chart.
    pub outside_day: i64,
}

/// What the report shows of the settled scans. The chart covers the
/// service day's own hours, `[day_start, day_end)`: a scan filed under its
/// arrival may carry any time from 1970 to 2106, and is counted apart.
pub async fn scan_extras(ctx: &SessionContext, (day_start, day_end): (i64, i64)) -> Result<ScanExtras, SettleError> {
    let mut extras = ScanExtras::default();
    let in_day = format!("CAST(scanned_at AS BIGINT) >= {day_start} AND CAST(scanned_at AS BIGINT) < {day_end}");
    let sql = format!(
        "SELECT CAST(scanned_at AS BIGINT) / 3600000 AS hour, status, count(*) FROM day_scans
         WHERE {in_day} GROUP BY 1, 2 ORDER BY 1, 2"
    );
    for batch in collect_rows(ctx, &sql).await? {
        let (hours, statuses, n) = (column_i64(&batch, 0)?, column_str(&batch, 1)?, column_i64(&batch, 2)?);
        for i in 0..hours.len() {
            if let Some(status) = statuses[i].as_deref().and_then(ScanStatus::parse) {
                extras.hourly.push((hours[i].unwrap_or(0), status, n[i].unwrap_or(0)));
            }
        }
    }
    for batch in collect_rows(ctx, &format!("SELECT count(*) FROM day_scans WHERE NOT ({in_day})")).await? {
        extras.outside_day = column_i64(&batch, 0)?.first().copied().flatten().unwrap_or(0);
    }
    let late = "status = 'late_upload'";
    for batch in collect_rows(ctx, &format!("SELECT count(*) FROM day_scans WHERE {late}")).await? {
        extras.manual_review_total = column_i64(&batch, 0)?.first().copied().flatten().unwrap_or(0);
    }
    let sql = format!(
        "SELECT scan_id, card_id, route_id, CAST(scanned_at AS BIGINT) AS scanned_ms FROM day_scans WHERE {late}
         ORDER BY scanned_at, scan_id LIMIT {REPORT_LIST_ROWS_MAX}"
    );
    for batch in collect_rows(ctx, &sql).await? {
        let (ids, cards, routes, at) =
            (column_str(&batch, 0)?, column_u64(&batch, 1)?, column_str(&batch, 2)?, column_i64(&batch, 3)?);
        for i in 0..ids.len() {
            extras.manual_review.push((
                ids[i].clone().unwrap_or_default(),
                cards[i],
                routes[i].clone().unwrap_or_default(),
                at[i].unwrap_or(0),
            ));
        }
    }
    Ok(extras)
}

/// The day as all its runs left it.
struct DayTotals {
    runs: Vec<RunRow>,
    scans: StatusCounts,
    figures: RiderFigures,
    riders: i64,
    riders_in_arrears: i64,
    arrears_cents: Cents,
    /// (route, scans, rides, revenue), by revenue.
    routes: Vec<(String, i64, i64, Cents)>,
    /// (card, charged, declined, outstanding), most owed first.
    owing: Vec<(u64, Cents, Cents, Cents)>,
}

async fn day_totals(ctx: &SessionContext, date: NaiveDate) -> Result<DayTotals, SettleError> {
    let day = format!("service_date = DATE '{date}'");
    let runs = read_runs(ctx, &day).await?;
    let mut scans = StatusCounts::default();
    let mut figures = RiderFigures::default();
    for run in &runs {
        scans.iter_mut().zip(run.scans).for_each(|(sum, n)| add_to(sum, n));
        figures = figures.plus(&run.totals);
    }
    let per_rider = format!(
        "SELECT card_id, sum(charged_cents) AS charged, sum(declined_cents) AS declined,
                sum(arrears_outstanding_cents) AS owed
         FROM settlements WHERE {day} GROUP BY card_id"
    );
    let mut totals = DayTotals {
        runs,
        scans,
        figures,
        riders: 0,
        riders_in_arrears: 0,
        arrears_cents: Cents::ZERO,
        routes: vec![],
        owing: vec![],
    };
    let sql = format!("SELECT count(*), count(*) FILTER (WHERE owed > 0), coalesce(sum(owed), 0) FROM ({per_rider})");
    for batch in collect_rows(ctx, &sql).await? {
        totals.riders = column_i64(&batch, 0)?.first().copied().flatten().unwrap_or(0);
        totals.riders_in_arrears = column_i64(&batch, 1)?.first().copied().flatten().unwrap_or(0);
        totals.arrears_cents = Cents::new(column_i64(&batch, 2)?.first().copied().flatten().unwrap_or(0));
    }
    let sql =
        format!("SELECT * FROM ({per_rider}) WHERE owed > 0 ORDER BY owed DESC, card_id LIMIT {REPORT_LIST_ROWS_MAX}");
    for batch in collect_rows(ctx, &sql).await? {
        let (cards, charged, declined, owed) =
            (column_u64(&batch, 0)?, column_i64(&batch, 1)?, column_i64(&batch, 2)?, column_i64(&batch, 3)?);
        for i in 0..cards.len() {
            totals.owing.push((
                cards[i].unwrap_or(0),
                Cents::new(charged[i].unwrap_or(0)),
                Cents::new(declined[i].unwrap_or(0)),
                Cents::new(owed[i].unwrap_or(0)),
            ));
        }
    }
    let sql = format!(
        "SELECT route_id, sum(scans), sum(rides), sum(revenue_cents) AS revenue FROM settlement_routes
         WHERE {day} GROUP BY route_id ORDER BY revenue DESC, route_id"
    );
    for batch in collect_rows(ctx, &sql).await? {
        let (routes, scans, rides, revenue) =
            (column_str(&batch, 0)?, column_i64(&batch, 1)?, column_i64(&batch, 2)?, column_i64(&batch, 3)?);
        for i in 0..routes.len() {
            totals.routes.push((
                routes[i].clone().unwrap_or_default(),
                scans[i].unwrap_or(0),
                rides[i].unwrap_or(0),
                Cents::new(revenue[i].unwrap_or(0)),
            ));
        }
    }
    Ok(totals)
}

async fn read_runs(ctx: &SessionContext, day: &str) -> Result<Vec<RunRow>, SettleError> {
    let statuses: Vec<String> = super::settlement_tables::status_columns();
    // Every rider figure but the outstanding arrears (a level, not a flow).
    let figures: Vec<&str> = super::settlement_tables::RIDER_FIGURES
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != super::settlement_tables::ARREARS_OUTSTANDING)
        .map(|(_, n)| *n)
        .collect();
    let sql = format!(
        "SELECT run, kind, CAST(settled_at AS BIGINT) AS settled_ms, final, pricer_lsn, files_settled, riders, manual_review,
                riders_awaiting_archive, breaks, {}, {} FROM settlement_runs WHERE {day} ORDER BY run",
        statuses.join(", "),
        figures.join(", ")
    );
    let mut runs = Vec::new();
    for batch in collect_rows(ctx, &sql).await? {
        let ints = (0..batch.num_columns())
            .map(|i| if i == 1 || i == 3 { Ok(vec![]) } else { column_i64(&batch, i) })
            .collect::<Result<Vec<_>, _>>()?;
        let kinds = column_str(&batch, 1)?;
        let finals = datafusion::arrow::array::AsArray::as_boolean(batch.column(3)).iter().collect::<Vec<_>>();
        for row in 0..batch.num_rows() {
            let v = |i: usize| ints[i][row].unwrap_or(0);
            let mut scans = StatusCounts::default();
            (0..scans.len()).for_each(|s| scans[s] = v(10 + s));
            let f = |k: usize| v(10 + scans.len() + k);
            // The runs table has no outstanding arrears: the figures after it
            // sit one column earlier.
            let totals = super::settlement_tables::figures_from(&|i| match i
                .cmp(&super::settlement_tables::ARREARS_OUTSTANDING)
            {
                std::cmp::Ordering::Less => f(i),
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Greater => f(i - 1),
            });
            runs.push(RunRow {
                run: u32::try_from(v(0)).unwrap_or(0),
                kind: if kinds[row].as_deref() == Some("cut_over") { "cut_over" } else { "late_adjustment" },
                settled_at: v(2),
                final_day: finals[row].unwrap_or(false),
                pricer_lsn: u64::try_from(v(4)).unwrap_or(0),
                files_settled: v(5),
                scans,
                riders: v(6),
                totals,
                manual_review: v(7),
                riders_awaiting_archive: v(8),
                breaks: v(9),
            });
        }
    }
    Ok(runs)
}

/// Writes the report and returns what the run did.
pub async fn finish(
    settings: &SettleSettings,
    archive: &ArchiveSource,
    date: NaiveDate,
    new_run: Option<RunRow>,
    breaks: Vec<Break>,
    extras: ScanExtras,
) -> Result<Settled, SettleError> {
    let ctx = archive_session(archive, &settings.memory, super::SETTLEMENT_PARTITIONS_PER_CORE)?;
    let totals = day_totals(&ctx, date).await?;
    let currency = settings.fares.currency.as_str();
    let headline = headline(date, &totals, &breaks, currency);
    let html = html(settings, date, &totals, &breaks, &extras, &headline);
    let path = settings.report_path(date);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| SettleError::Output(format!("{}: {e}", dir.display())))?;
    replace_durably(&path, &dir.join(".tmp"), html.as_bytes(), &Faults::default())?;
    Ok(Settled { date, new_run, runs: totals.runs, breaks, report_path: path, headline })
}

fn headline(date: NaiveDate, t: &DayTotals, breaks: &[Break], currency: &str) -> String {
    let last = t.runs.last();
    let state = if last.is_some_and(|r| r.final_day) { "final" } else { "provisional" };
    let f = &t.figures;
    let scans: i64 = t.scans.iter().sum();
    let recon = if breaks.is_empty() {
        "reconciled: no breaks".to_string()
    } else {
        format!("RECONCILIATION FAILED: {} breaks", breaks.len())
    };
    format!(
        "settlement {date} ({state}, {} runs): {} scans, {} rides by {} riders ({} late); fares {currency} {} - caps {} = due {}; \
         succeeded {}, declined {}, pending {}, netted against arrears {}, no account {}; {} riders owe {}; {} rides for manual review; {recon}",
        t.runs.len(),
        group_digits(scans.unsigned_abs()),
        group_digits(f.rides.unsigned_abs()),
        group_digits(t.riders.unsigned_abs()),
        group_digits(f.late_rides.unsigned_abs()),
        f.fares_cents,
        f.caps_cents,
        f.due_cents,
        f.succeeded_cents,
        f.declined_cents,
        f.pending_cents,
        f.netted_cents,
        f.no_account_cents,
        group_digits(t.riders_in_arrears.unsigned_abs()),
        t.arrears_cents,
        group_digits(t.scans[status_index(ScanStatus::LateUpload)].unsigned_abs()),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}\
.ok{background:#e6f4e6;border:2px solid #3a3;padding:.8em}.bad{background:#fbe9e9;border:2px solid #c33;padding:.8em}\
.kpi{display:inline-block;margin:.5em 1.5em .5em 0}.kpi b{display:block;font-size:1.5em}";

/// A colour per status, in `ScanStatus::ALL` order.
const STATUS_COLOURS: [&str; ScanStatus::ALL.len()] = [
    "#4c9a2a", "#e0a100", "#c0392b", "#8e44ad", "#7f8c8d", "#d35400", "#2c3e50", "#16a085", "#2980b9", "#6d214f",
    "#b71540", "#0a3d62", "#60a3bc", "#78e08f",
];

fn html(
    settings: &SettleSettings,
    date: NaiveDate,
    t: &DayTotals,
    breaks: &[Break],
    extras: &ScanExtras,
    headline: &str,
) -> String {
    let currency = escape(&settings.fares.currency);
    let f = &t.figures;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Settlement {date}</title><style>{STYLE}</style></head><body>"
    );
    let state =
        if t.runs.last().is_some_and(|r| r.final_day) { "final" } else { "provisional: late uploads may still come" };
    let _ = write!(h, "<h1>Settlement for service day {date}</h1><p>{}</p>", escape(state));
    if breaks.is_empty() {
        let _ = write!(
            h,
            "<div class=\"ok\"><b>Reconciled.</b> Every ride is in exactly one charge, every charge has one outcome or is pending, the money adds up and every rider's arrears equal the account store's.</div>"
        );
    } else {
        let _ = write!(
            h,
            "<div class=\"bad\"><b>Reconciliation failed: {} breaks.</b><table><tr><th class=l>check</th><th class=l>row</th></tr>",
            breaks.len()
        );
        for b in breaks.iter().take(REPORT_LIST_ROWS_MAX) {
            let _ = write!(
                h,
                "<tr><td class=l>{}</td><td class=l>{}</td></tr>",
                b.kind(),
                escape(&b.describe(&settings.fares.currency))
            );
        }
        let _ = write!(
            h,
            "</table>{}<p>Every break is in the <code>settlement_breaks</code> table.</p></div>",
            more(breaks.len())
        );
    }
    let kpis = [
        ("scans", group_digits(t.scans.iter().sum::<i64>().unsigned_abs())),
        ("rides", group_digits(f.rides.unsigned_abs())),
        ("riders", group_digits(t.riders.unsigned_abs())),
        ("fares", format!("{currency} {}", f.fares_cents)),
        ("daily caps", format!("{currency} {}", f.caps_cents)),
        ("due", format!("{currency} {}", f.due_cents)),
        ("succeeded", format!("{currency} {}", f.succeeded_cents)),
        ("declined", format!("{currency} {}", f.declined_cents)),
        ("pending", format!("{currency} {}", f.pending_cents)),
        ("netted against arrears", format!("{currency} {}", f.netted_cents)),
        ("no account", format!("{currency} {}", f.no_account_cents)),
        ("riders in arrears", group_digits(t.riders_in_arrears.unsigned_abs())),
        ("arrears outstanding", format!("{currency} {}", t.arrears_cents)),
        ("late rides", group_digits(f.late_rides.unsigned_abs())),
    ];
    h.push_str("<div>");
    for (label, value) in kpis {
        let _ = write!(h, "<span class=\"kpi\"><b>{value}</b>{label}</span>");
    }
    let _ = write!(h, "</div><pre>{}</pre>", escape(headline));
    runs_table(&mut h, settings, t, &currency);
    h.push_str("<h2>Scans per hour by status</h2>");
    hourly_chart(&mut h, settings, extras);
    h.push_str("<h2>Revenue per route</h2>");
    route_chart(&mut h, t);
    let _ =
        write!(h, "<table><tr><th class=l>route</th><th>scans</th><th>rides</th><th>revenue ({currency})</th></tr>");
    for (route, scans, rides, revenue) in &t.routes {
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(route),
            group_digits(scans.unsigned_abs()),
            group_digits(rides.unsigned_abs()),
            revenue
        );
    }
    h.push_str("</table><h2>Riders in arrears</h2>");
    let _ = write!(h, "<table><tr><th>card</th><th>charged</th><th>declined</th><th>owes now</th></tr>");
    for (card, charged, declined, owed) in &t.owing {
        let _ = write!(h, "<tr><td>{card}</td><td>{}</td><td>{}</td><td>{}</td></tr>", charged, declined, owed);
    }
    let _ = write!(h, "</table>{}", more(usize::try_from(t.riders_in_arrears).unwrap_or(0)));
    let _ = write!(
        h,
        "<h2>Manual review: {} uploads past the rebill window (not charged)</h2>",
        extras.manual_review_total
    );
    h.push_str(
        "<table><tr><th class=l>scan</th><th>card</th><th class=l>route</th><th>scanned at (local time)</th></tr>",
    );
    for (scan, card, route, at) in &extras.manual_review {
        let card = card.map_or("-".to_string(), |c| c.to_string());
        let at = local_time(settings, *at);
        let _ =
            write!(h, "<tr><td class=l>{scan}</td><td>{card}</td><td class=l>{}</td><td>{at}</td></tr>", escape(route));
    }
    let _ = writeln!(h, "</table>{}</body></html>", more(usize::try_from(extras.manual_review_total).unwrap_or(0)));
    h
}

/// `at` in the service day's time zone, as finance reads it:
/// `2025-11-20 09:30:00 +08:00`.
fn local_time(settings: &SettleSettings, at: UnixMillis) -> String {
    chrono::Utc.timestamp_millis_opt(at).single().map_or_else(
        || format!("{at} ms"),
        |t| t.with_timezone(&settings.service_day.time_zone).format("%Y-%m-%d %H:%M:%S %:z").to_string(),
    )
}

fn more(total: usize) -> String {
    if total > REPORT_LIST_ROWS_MAX {
        format!("<p>… and {} more (query the settlement tables).</p>", total - REPORT_LIST_ROWS_MAX)
    } else {
        String::new()
    }
}

fn runs_table(h: &mut String, settings: &SettleSettings, t: &DayTotals, currency: &str) {
    let _ = write!(
        h,
        "<h2>Runs</h2><table><tr><th>run</th><th class=l>kind</th><th>settled at (local time)</th><th>files</th><th>scans</th><th>rides</th><th>late rides</th><th>due ({currency})</th><th>succeeded</th><th>declined</th><th>pending</th><th>awaiting archive</th><th>breaks</th></tr>"
    );
    for r in &t.runs {
        let at = local_time(settings, r.settled_at);
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=l>{}</td><td>{at}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.run,
            r.kind,
            r.files_settled,
            group_digits(r.scans.iter().sum::<i64>().unsigned_abs()),
            r.totals.rides,
            r.totals.late_rides,
            r.totals.due_cents,
            r.totals.succeeded_cents,
            r.totals.declined_cents,
            r.totals.pending_cents,
            r.riders_awaiting_archive,
            r.breaks
        );
    }
    h.push_str("</table>");
}

/// Stacked bars, one per local hour of the service day, coloured by status.
fn hourly_chart(h: &mut String, settings: &SettleSettings, extras: &ScanExtras) {
    let mut hours: std::collections::BTreeMap<i64, [i64; ScanStatus::ALL.len()]> = std::collections::BTreeMap::new();
    for (hour, status, n) in &extras.hourly {
        add_to(&mut hours.entry(*hour).or_default()[status_index(*status)], *n);
    }
    let peak = hours.values().map(|c| c.iter().sum::<i64>()).max().unwrap_or(0).max(1);
    let (bar, height) = (22i64, 200i64);
    let width = (hours.len() as i64) * bar + 60;
    let _ = write!(
        h,
        "<svg width=\"{width}\" height=\"{}\" role=\"img\" aria-label=\"scans per hour by status\">",
        height + 40
    );
    for (i, (hour, counts)) in hours.iter().enumerate() {
        let x = 40 + i as i64 * bar;
        let mut y = height;
        for (s, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let bar_height = (n.saturating_mul(height) / peak).max(1);
            y -= bar_height;
            let _ = write!(
                h,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{bar_height}\" fill=\"{}\"><title>{}: {n}</title></rect>",
                bar - 2,
                STATUS_COLOURS[s],
                ScanStatus::ALL[s]
            );
        }
        let local = chrono::Utc
            .timestamp_millis_opt(hour.saturating_mul(3_600_000))
            .single()
            .map(|t| t.with_timezone(&settings.service_day.time_zone).format("%H").to_string())
            .unwrap_or_default();
        let _ = write!(h, "<text x=\"{}\" y=\"{}\" font-size=\"10\">{local}</text>", x + 4, height + 14);
    }
    let _ = write!(h, "<text x=\"0\" y=\"10\" font-size=\"10\">{}</text></svg><p>", group_digits(peak.unsigned_abs()));
    for (s, status) in ScanStatus::ALL.iter().enumerate() {
        let _ = write!(h, "<span style=\"color:{}\">■</span> {status} ", STATUS_COLOURS[s]);
    }
    if extras.outside_day > 0 {
        let _ = write!(
            h,
            " ({} scans read outside this service day's hours, filed under their arrival, are not drawn)",
            group_digits(extras.outside_day.unsigned_abs())
        );
    }
    h.push_str("</p>");
}

/// Horizontal bars, the top routes by revenue.
fn route_chart(h: &mut String, t: &DayTotals) {
    let shown: Vec<_> = t.routes.iter().take(30).collect();
    let peak = shown.iter().map(|r| r.3.get()).max().unwrap_or(0).max(1);
    let _ = write!(
        h,
        "<svg width=\"620\" height=\"{}\" role=\"img\" aria-label=\"revenue per route\">",
        shown.len() * 18 + 4
    );
    for (i, (route, _, _, revenue)) in shown.iter().enumerate() {
        let y = i * 18;
        let w = (revenue.get().max(0).saturating_mul(400) / peak).max(1);
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{}\" font-size=\"11\">{}</text><rect x=\"140\" y=\"{}\" width=\"{w}\" height=\"14\" fill=\"#2980b9\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>",
            y + 12,
            escape(route),
            y + 1,
            145 + w,
            y + 12,
            revenue
        );
    }
    h.push_str("</svg>");
}
