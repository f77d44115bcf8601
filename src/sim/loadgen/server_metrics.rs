//! The server's own figures during a run, from its Prometheus endpoint
//! (`metrics.listen_addr`): CPU seconds, resident memory and its peak.

use std::time::Duration;

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
    })
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
                    farestream_pricer_lag_seconds 3.25\n";
        let figures = parse_process_figures(page).expect("figures");
        let expected = ProcessFigures {
            cpu_secs: 12.5,
            rss_bytes: 1_048_576.0,
            peak_rss_bytes: 2_097_152.0,
            pricer_lag_secs: 3.25,
        };
        assert_eq!(figures, expected);
        assert_eq!(parse_process_figures(""), None);
        assert_eq!(parse_process_figures("process_cpu_seconds_total not-a-number\n"), None);
        let no_peak = parse_process_figures("process_cpu_seconds_total 1\n").expect("cpu alone");
        assert_eq!((no_peak.rss_bytes, no_peak.peak_rss_bytes), (0.0, 0.0));
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
