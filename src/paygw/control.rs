//! What the demo and the tests ask of a simulated gateway beyond the debit
//! API: top up a payer, set its faults, read its ledger; each call under
//! the gateway's control token (`control_routes`).

use std::path::Path;

use farestream_money::paygw::api::IDEMPOTENCY_KEY;

use super::control_routes::{CONTROL_TOKEN_FILE, FAULTS_PATH, LEDGER_PATH, STATS_PATH, TOPUPS_PATH};
use super::http::{SimFaults, SimStats, TopUp};
use super::ledger::Entry;

/// A client for one simulated gateway's control calls.
#[derive(Clone)]
pub struct SimControl {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl SimControl {
    pub fn new(url: &str, token: &str) -> SimControl {
        SimControl {
            http: reqwest::Client::new(),
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    /// The client for the gateway at `url` whose data dir is `paygw_dir`
    /// (where its token is).
    pub fn from_data_dir(url: &str, paygw_dir: &Path) -> std::io::Result<SimControl> {
        let path = paygw_dir.join(CONTROL_TOKEN_FILE);
        let token = std::fs::read_to_string(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(SimControl::new(url, token.trim()))
    }

    /// Adds to a payer's balance; `key` makes the top-up happen once.
    pub async fn top_up(&self, payment_user_id: &str, amount_cents: u64, key: &str) -> reqwest::Result<()> {
        let body = TopUp { payment_user_id: payment_user_id.into(), amount_cents };
        self.http
            .post(format!("{}{TOPUPS_PATH}", self.url))
            .bearer_auth(&self.token)
            .header(IDEMPOTENCY_KEY, key)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    pub async fn set_faults(&self, faults: SimFaults) -> reqwest::Result<()> {
        let url = format!("{}{FAULTS_PATH}", self.url);
        self.http.put(url).bearer_auth(&self.token).json(&faults).send().await?.error_for_status()?;
        Ok(())
    }

    pub async fn stats(&self) -> reqwest::Result<SimStats> {
        let url = format!("{}{STATS_PATH}", self.url);
        self.http.get(url).bearer_auth(&self.token).send().await?.error_for_status()?.json().await
    }

    pub async fn ledger(&self) -> reqwest::Result<Vec<Entry>> {
        let url = format!("{}{LEDGER_PATH}", self.url);
        self.http.get(url).bearer_auth(&self.token).send().await?.error_for_status()?.json().await
    }
}
