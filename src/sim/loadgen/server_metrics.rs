//! The server's own figures during a run, from its Prometheus endpoint
//! (`metrics.listen_addr`): CPU seconds (the pricer's among them),
//! resident memory and its peak, how far pricing lagged, and how long
//! after the run it took to price everything acked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// One scrape of the server's process figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    /// `process_cpu_seconds_total`: user and system CPU since the start.
    pub cpu_secs: f64,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: f64,
    /// `farestream_process_peak_resident_memory_bytes`: the kernel's
    /// high-water mark (VmHWM) since the start.
    pub peak_rss_bytes: f64,
    /// `farestream_pricer_lag_seconds`: how far pricing is behind ingest.
    pub pricer_lag_secs: f64,
    /// `farestream_thread_cpu_seconds{thread="pricer"}`.
    pub pricer_cpu_secs: Option<f64>,
    /// `farestream_wal_durable_lsn`: what the log holds durably, set
    /// before an ack goes out.
    pub durable_lsn: Option<f64>,
    /// `farestream_pricer_priced_lsn`: how far the pricer has priced.
    pub priced_lsn: Option<f64>,
}

/// The figures in a Prometheus text page; `None` when the page lacks the
/// CPU counter (a server too old, or not farestream).
pub fn parse_process_figures(page: &str) -> Option<ProcessFigures> {
    let value = |name: &str| {
        page.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    Some(ProcessFigures {
        cpu_secs: value("process_cpu_seconds_total")?,
        rss_bytes: value("process_resident_memory_bytes").unwrap_or(0.0),
        peak_rss_bytes: value("farestream_process_peak_resident_memory_bytes").unwrap_or(0.0),
        pricer_lag_secs: value("farestream_pricer_lag_seconds").unwrap_or(0.0),
        pricer_cpu_secs: value(r#"farestream_thread_cpu_seconds{thread="pricer"}"#),
        durable_lsn: value("farestream_wal_durable_lsn"),
        priced_lsn: value("farestream_pricer_priced_lsn"),
    })
}

/// The server's figures over one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerFigures {
    /// CPU seconds the server used during the run.
    pub cpu_secs: f64,
    /// Of those, the pricer thread's; `None` when the server does not say.
    pub pricer_cpu_secs: Option<f64>,
    /// CPU seconds from the last ack until pricing caught up (and a
    /// second more, the figures' refresh): the work the run deferred.
    pub catch_up_cpu_secs: f64,
    /// The highest resident memory it reported (its high-water mark).
    pub peak_rss_bytes: f64,
    /// The most its pricing lagged behind ingest.
    pub pricer_lag_max_secs: f64,
    /// How long after the last ack everything acked was priced; `None`
    /// when the server does not say or it took over [`CATCH_UP_WAIT_MAX`].
    pub pricing_caught_up_after: Option<Duration>,
}

impl ServerFigures {
    /// For a run whose server said nothing: every figure NaN or `None`.
    pub const UNKNOWN: ServerFigures = ServerFigures {
        cpu_secs: f64::NAN,
        pricer_cpu_secs: None,
        catch_up_cpu_secs: f64::NAN,
        peak_rss_bytes: f64::NAN,
        pricer_lag_max_secs: f64::NAN,
        pricing_caught_up_after: None,
    };

    /// The pricer's share of the server's CPU over the run; NaN unknown.
    pub fn pricer_share(&self) -> f64 {
        self.pricer_cpu_secs.map_or(f64::NAN, |pricer| pricer / self.cpu_secs.max(1e-9))
    }
}

/// How often the server's metrics are read during a run.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// How often they are read while waiting for pricing to catch up.
const CATCH_UP_POLL: Duration = Duration::from_millis(250);
/// The longest a run waits for pricing to catch up after its last ack.
pub const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(600);
/// The server brings its CPU figures up to date this often.
const CPU_FIGURES_REFRESH: Duration = crate::telemetry::PROCESS_METRICS_INTERVAL;

/// Watches a server's metrics through a run: a scrape before, samples
/// during (for the peaks), and at the end the wait for pricing to catch up.
pub struct ServerWatch {
    http: reqwest::Client,
    url: String,
    before: ProcessFigures,
    /// The highest RSS and pricer lag the samples saw.
    peaks: Arc<Mutex<(f64, f64)>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl ServerWatch {
    pub async fn start(url: String) -> Result<ServerWatch, String> {
        let http = reqwest::Client::new();
        let before = scrape(&http, &url, SCRAPE_INTERVAL).await?;
        let peaks = Arc::new(Mutex::new((0f64, 0f64)));
        let sampler = tokio::spawn({
            let (http, url, peaks) = (http.clone(), url.clone(), Arc::clone(&peaks));
            async move {
                loop {
                    if let Ok(figures) = scrape(&http, &url, SCRAPE_INTERVAL).await {
                        note_peaks(&peaks, &figures);
                    }
                    tokio::time::sleep(SCRAPE_INTERVAL).await;
                }
            }
        });
        Ok(ServerWatch { http, url, before, peaks, sampler })
    }

    /// The run's figures; call right after its last ack. Waits until the
    /// pricer has priced what the log held then (at most [`CATCH_UP_WAIT_MAX`]).
    pub async fn finish(self) -> Result<ServerFigures, String> {
        let run_ended = Instant::now();
        let at_end = self.scrape_after(Duration::ZERO).await?;
        // Set before each ack went out: it covers every scan acked.
        let caught_up = match at_end.durable_lsn {
            Some(acked) => self.wait_for_pricing(acked, run_ended).await?,
            None => None,
        };
        self.sampler.abort();
        let after = self.scrape_after(CPU_FIGURES_REFRESH).await?;
        let (rss, lag) = *lock(&self.peaks);
        Ok(ServerFigures {
            cpu_secs: at_end.cpu_secs - self.before.cpu_secs,
            // Absent at the start of a run on a server just started: its
            // threads are counted from their first second.
            pricer_cpu_secs: at_end.pricer_cpu_secs.map(|end| end - self.before.pricer_cpu_secs.unwrap_or(0.0)),
            catch_up_cpu_secs: after.cpu_secs - at_end.cpu_secs,
            peak_rss_bytes: rss,
            pricer_lag_max_secs: lag,
            pricing_caught_up_after: caught_up,
        })
    }

    async fn scrape_after(&self, wait: Duration) -> Result<ProcessFigures, String> {
        tokio::time::sleep(wait).await;
        let figures = scrape(&self.http, &self.url, SCRAPE_INTERVAL).await?;
        note_peaks(&self.peaks, &figures);
        Ok(figures)
    }

    /// When the pricer reached `acked`, counted from `run_ended`.
    async fn wait_for_pricing(&self, acked: f64, run_ended: Instant) -> Result<Option<Duration>, String> {
        while run_ended.elapsed() < CATCH_UP_WAIT_MAX {
            let figures = self.scrape_after(Duration::ZERO).await?;
            match figures.priced_lsn {
                Some(priced) if priced >= acked => return Ok(Some(run_ended.elapsed())),
                Some(_) => tokio::time::sleep(CATCH_UP_POLL).await,
                None => return Ok(None),
            }
        }
        Ok(None)
    }
}

fn note_peaks(peaks: &Mutex<(f64, f64)>, figures: &ProcessFigures) {
    let mut peaks = lock(peaks);
    peaks.0 = peaks.0.max(figures.peak_rss_bytes).max(figures.rss_bytes);
    peaks.1 = peaks.1.max(figures.pricer_lag_secs);
}

/// The largest metrics page read: a server's page is a few tens of KiB,
/// and whatever answers at the URL given costs no more than this.
pub const METRICS_PAGE_BYTES_MAX: usize = 4 << 20;

/// Scrapes `url` once, within `timeout`.
pub async fn scrape(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<ProcessFigures, String> {
    let failed = |e: reqwest::Error| format!("{url}: {e}");
    let mut response =
        http.get(url).timeout(timeout).send().await.and_then(reqwest::Response::error_for_status).map_err(failed)?;
    let mut page = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if page.len() + chunk.len() > METRICS_PAGE_BYTES_MAX {
            return Err(format!("{url}: a page over {METRICS_PAGE_BYTES_MAX} bytes is not a metrics page"));
        }
        page.extend_from_slice(&chunk);
    }
    parse_process_figures(&String::from_utf8_lossy(&page))
        .ok_or_else(|| format!("{url}: no process_cpu_seconds_total on the page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_are_read_from_a_prometheus_page() {
        let page = "# HELP process_cpu_seconds_total Total CPU.\n# TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total 12.5\nprocess_resident_memory_bytes 1048576\n\
                    farestream_process_peak_resident_memory_bytes 2097152\nprocess_cpu_seconds_total_x 9\n\
                    farestream_pricer_lag_seconds 3.25\n\
                    farestream_thread_cpu_seconds{thread=\"archiver\"} 1.5\n\
                    farestream_thread_cpu_seconds{thread=\"pricer\"} 4.75\n\
                    farestream_wal_durable_lsn 900\nfarestream_pricer_priced_lsn 800\n";
        let figures = parse_process_figures(page).expect("figures");
        let expected = ProcessFigures {
            cpu_secs: 12.5,
            rss_bytes: 1_048_576.0,
            peak_rss_bytes: 2_097_152.0,
            pricer_lag_secs: 3.25,
            pricer_cpu_secs: Some(4.75),
            durable_lsn: Some(900.0),
            priced_lsn: Some(800.0),
        };
        assert_eq!(figures, expected);
        assert_eq!(parse_process_figures(""), None);
        assert_eq!(parse_process_figures("process_cpu_seconds_total not-a-number\n"), None);
        let no_peak = parse_process_figures("process_cpu_seconds_total 1\n").expect("cpu alone");
        assert_eq!((no_peak.rss_bytes, no_peak.peak_rss_bytes), (0.0, 0.0));
        assert_eq!((no_peak.durable_lsn, no_peak.priced_lsn), (None, None), "absent, not zero");
    }

    /// A page at the limit is read; one byte more is refused by name, not
    /// held in memory; a page without the figures says so.
    #[tokio::test]
    async fn a_scrape_reads_at_most_the_page_limit() {
        let line = "process_cpu_seconds_total 2.5\n";
        let padded = move |len: usize| format!("{line}{}", "#".repeat(len - line.len()));
        let app = axum::Router::new()
            .route("/at-limit", axum::routing::get(move || async move { padded(METRICS_PAGE_BYTES_MAX) }))
            .route("/over", axum::routing::get(move || async move { padded(METRICS_PAGE_BYTES_MAX + 1) }))
            .route("/empty", axum::routing::get(|| async { "" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (http, wait) = (reqwest::Client::new(), Duration::from_secs(10));
        let at = scrape(&http, &format!("http://{addr}/at-limit"), wait).await.expect("at the limit");
        assert_eq!(at.cpu_secs, 2.5);
        let over = scrape(&http, &format!("http://{addr}/over"), wait).await.expect_err("over");
        assert!(over.contains("is not a metrics page"), "{over}");
        let empty = scrape(&http, &format!("http://{addr}/empty"), wait).await.expect_err("empty");
        assert!(empty.contains("no process_cpu_seconds_total"), "{empty}");
    }
}
