//! The simulated gateway's control calls: top-ups, faults, the ledger and
//! its request count. They move money and break the gateway on purpose, so
//! each needs the control token (`Authorization: Bearer TOKEN`), a secret of
//! its own kept in the gateway's data dir, not the payments secret the
//! server holds: a server (or whoever stole its secret) cannot top anyone up.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use farestream_core::sync::lock;
use ring::rand::SecureRandom;

use super::http::{
    Answer, Sim, SimFaults, SimStats, TopUp, append, error, idempotency_key, key_reused, parse, request_hash,
};
use super::ledger::Entry;

/// The file in the gateway's data dir that holds its control token.
pub const CONTROL_TOKEN_FILE: &str = "control-token";
/// Random bytes in a token (written as hex).
const CONTROL_TOKEN_BYTES: usize = 32;

pub(super) const TOPUPS_PATH: &str = "/v1/topups";
pub(super) const LEDGER_PATH: &str = "/v1/ledger";
pub(super) const FAULTS_PATH: &str = "/v1/faults";
pub(super) const STATS_PATH: &str = "/v1/stats";

/// The token in `data_dir`, made (random, owner-only) on first start.
pub(super) fn token_in(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(CONTROL_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        // A crash between making the file and writing it: made again.
        Ok(_) => std::fs::remove_file(&path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; CONTROL_TOKEN_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| std::io::Error::other("the OS random source failed"))?;
    let token = hex::encode(bytes);
    farestream_ingest::files::write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// The control routes, each behind the token.
pub(super) fn router(sim: Arc<Sim>, token: String) -> Router {
    Router::new()
        .route(TOPUPS_PATH, post(topup))
        .route(LEDGER_PATH, get(ledger))
        .route(FAULTS_PATH, put(set_faults))
        .route(STATS_PATH, get(stats))
        .layer(middleware::from_fn_with_state(Arc::new(token), require_token))
        .with_state(sim)
}

/// Refuses a call without the token: 401, nothing done.
async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    let given = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let given = given.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
    if !same_secret(given, &token) {
        return error(StatusCode::UNAUTHORIZED, "control_token_invalid", "Authorization: Bearer <control-token>")
            .into_response();
    }
    next.run(request).await
}

/// Compares digests, so the time taken says nothing of the token.
fn same_secret(given: &str, token: &str) -> bool {
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref().to_vec();
    !given.is_empty() && digest(given) == digest(token)
}

async fn topup(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Answer {
    let key = idempotency_key(&headers)?;
    let request: TopUp = parse(&body)?;
    let mut ledger = lock(&sim.ledger);
    match ledger.by_key("topup", key) {
        Some(first) if first.request_hash != request_hash(&body) => return Err(key_reused()),
        Some(_) => {}
        None => {
            let payer = &request.payment_user_id;
            append(&mut ledger, "topup", key, payer, "", request.amount_cents, "", "succeeded", &body)?;
        }
    }
    Ok(Json(serde_json::json!({ "balance_cents": ledger.balance(&request.payment_user_id) })).into_response())
}

async fn ledger(State(sim): State<Arc<Sim>>) -> Json<Vec<Entry>> {
    Json(lock(&sim.ledger).entries().to_vec())
}

async fn stats(State(sim): State<Arc<Sim>>) -> Json<SimStats> {
    Json(SimStats { payment_requests: sim.payments_seen.load(Ordering::Relaxed) })
}

async fn set_faults(State(sim): State<Arc<Sim>>, Json(faults): Json<SimFaults>) -> StatusCode {
    *lock(&sim.faults) = faults;
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = token_in(dir.path()).expect("made");
        assert_eq!(first.len(), 2 * CONTROL_TOKEN_BYTES);
        assert_eq!(token_in(dir.path()).expect("read"), first, "the same token after a restart");
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(token_in(other.path()).expect("made"), first, "random");
        std::fs::write(dir.path().join(CONTROL_TOKEN_FILE), "").expect("an empty token file");
        let again = token_in(dir.path()).expect("an empty file is made again");
        assert_eq!(again.len(), 2 * CONTROL_TOKEN_BYTES);
    }

    #[test]
    fn only_the_token_itself_passes() {
        assert!(same_secret("abc", "abc"));
        for given in ["", "abd", "ab", "abcd", "ABC"] {
            assert!(!same_secret(given, "abc"), "{given:?}");
        }
    }
}
