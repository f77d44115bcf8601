//! What the demo and the tests ask of a simulated gateway beyond the debit
//! API: top up a payer, set its faults, read its ledger.

use farestream_ingest::clock_source::{Clock, SystemClock};
use farestream_money::paygw::api::{IDEMPOTENCY_KEY, SIGNATURE, TIMESTAMP, signature};

use super::http::{SimFaults, SimStats, TopUp};
use super::ledger::Entry;

/// A client for one simulated gateway's control calls.
#[derive(Clone)]
pub struct SimControl {
    http: reqwest::Client,
    url: String,
    secret: Vec<u8>,
}

impl SimControl {
    pub fn new(url: &str, secret: &[u8]) -> SimControl {
        SimControl { http: reqwest::Client::new(), url: url.trim_end_matches('/').to_string(), secret: secret.to_vec() }
    }

    /// Adds to a payer's balance; `key` makes the top-up happen once.
    pub async fn top_up(&self, payment_user_id: &str, amount_cents: u64, key: &str) -> reqwest::Result<()> {
        let body =
            serde_json::to_vec(&TopUp { payment_user_id: payment_user_id.into(), amount_cents }).unwrap_or_default();
        let timestamp = SystemClock.now_ms();
        self.http
            .post(format!("{}/v1/topups", self.url))
            .header(IDEMPOTENCY_KEY, key)
            .header(TIMESTAMP, timestamp.to_string())
            .header(SIGNATURE, signature(&self.secret, timestamp, "POST", "/v1/topups", key, &body))
            .body(body)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    pub async fn set_faults(&self, faults: SimFaults) -> reqwest::Result<()> {
        self.http.put(format!("{}/v1/faults", self.url)).json(&faults).send().await?.error_for_status()?;
        Ok(())
    }

    pub async fn stats(&self) -> reqwest::Result<SimStats> {
        self.http.get(format!("{}/v1/stats", self.url)).send().await?.error_for_status()?.json().await
    }

    pub async fn ledger(&self) -> reqwest::Result<Vec<Entry>> {
        self.http.get(format!("{}/v1/ledger", self.url)).send().await?.error_for_status()?.json().await
    }
}
