//! The simulated gateway's HTTP side (axum).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use farestream_core::sync::lock;
use farestream_ingest::clock_source::{Clock, SystemClock};
use farestream_ingest::http_serve::HttpHandle;
use farestream_money::paygw::api::{
    AGREEMENTS_END_PATH, AGREEMENTS_PATH, AgreementAnswer, AgreementEnd, AgreementRequest, AnswerHead, CREDITS_PATH,
    DEBITS_PATH, ErrorAnswer, IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_CHARS_MAX, PaymentAnswer, PaymentRequest, RETRY_AFTER,
    SIGNATURE, TIMESTAMP, answer_signature, signature_valid, timestamp_fresh,
};
use serde::{Deserialize, Serialize};

use super::control::SimControl;
use super::control_routes;
use super::ledger::{Entry, Ledger};

/// A request body larger than this is refused (413).
const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// An answer is buffered whole to be signed; the client reads no more.
const ANSWER_BYTES_MAX: usize = farestream_money::paygw::ANSWER_BYTES_MAX;

/// What the simulated gateway does wrong, on purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimFaults {
    /// Added before every payment is handled.
    pub latency_ms: u64,
    /// Every Nth payment request is answered 503 without being applied
    /// (0: never).
    pub unavailable_every: u64,
    /// The `Retry-After` seconds sent with those 503s (0: none sent).
    pub retry_after_secs: u64,
    /// Every Nth payment request is applied and its answer then lost: the
    /// connection breaks mid-response (0: never).
    pub drop_answer_every: u64,
    /// Every Nth payment request is applied and answered with a decline
    /// signed under another secret, as a man in the middle would forge
    /// one (0: never). The client must not believe it.
    #[serde(default)]
    pub forged_decline_every: u64,
    /// A payment under a key already applied is refused `422` instead of
    /// getting its first result, as a gateway that forgot its keys would.
    #[serde(default)]
    pub refuse_seen_keys: bool,
}

pub(super) struct Sim {
    pub(super) ledger: Mutex<Ledger>,
    pub(super) faults: Mutex<SimFaults>,
    secret: Vec<u8>,
    clock: Arc<dyn Clock>,
    pub(super) payments_seen: AtomicU64,
    in_flight: Mutex<HashSet<String>>,
}

/// A running simulated gateway, and the client for its control calls.
pub struct SimGateway {
    http: HttpHandle,
    control: SimControl,
}

impl SimGateway {
    pub fn url(&self) -> String {
        self.http.url()
    }

    /// Top-ups, faults, the ledger: calls under the control token.
    pub fn control(&self) -> &SimControl {
        &self.control
    }

    pub async fn stop(self) {
        self.http.stop().await
    }
}

/// Opens the ledger in `data_dir` and serves on `listen`: the payment API
/// signed with `secret`, the control calls under the token in
/// `data_dir/control-token` (made on first start).
pub async fn start(data_dir: &Path, listen: SocketAddr, secret: &[u8]) -> std::io::Result<SimGateway> {
    let sim = Arc::new(Sim {
        ledger: Mutex::new(Ledger::open(data_dir)?),
        faults: Mutex::new(SimFaults::default()),
        secret: secret.to_vec(),
        clock: Arc::new(SystemClock),
        payments_seen: AtomicU64::new(0),
        in_flight: Mutex::new(HashSet::new()),
    });
    let control_token = control_routes::token_in(data_dir)?;
    let api = Router::new()
        .route(AGREEMENTS_PATH, post(agreement))
        .route(AGREEMENTS_END_PATH, post(end_agreement))
        .route(DEBITS_PATH, post(debit))
        .route(CREDITS_PATH, post(credit))
        .layer(middleware::from_fn_with_state(sim.clone(), sign_answer))
        .with_state(sim.clone());
    let app =
        api.merge(control_routes::router(sim, control_token.clone())).layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX));
    let http = farestream_ingest::http_serve::serve(listen, app, "simulated payment gateway").await?;
    let control = SimControl::new(&http.url(), &control_token);
    Ok(SimGateway { http, control })
}

/// Verifies every request of the payment API, once, here: one that does
/// not verify is refused `401` unsigned and reaches no handler. Signs every
/// answer to one that does, refusals included, over its signature
/// (`docs/payment-gateway.md`). A refusal of an unverified request is not
/// signed: it may be a genuine request's signature on altered headers or
/// body, and a signed refusal of it would pass for the genuine request's
/// answer (a review forged a 400 that way).
async fn sign_answer(State(sim): State<Arc<Sim>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, REQUEST_BYTES_MAX).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "a request body over 64 KiB").into_response();
    };
    if let Err(refused) = verify_request(&sim, &parts.headers, parts.uri.path(), &body) {
        return refused.into_response();
    }
    let request_signature = parts.headers.get(SIGNATURE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let forged = response.extensions().get::<ForgedAnswer>().is_some();
    let (mut parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, ANSWER_BYTES_MAX).await else {
        // The answer was to be lost (a fault): it still is.
        return lost_answer();
    };
    let secret: &[u8] = if forged { b"a man in the middle without the secret" } else { &sim.secret };
    let now = sim.clock.now_ms();
    let retry_after = parts.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let head = AnswerHead { status: parts.status.as_u16(), retry_after, request_signature: &request_signature };
    let signature = answer_signature(secret, now, head, &body);
    for (name, value) in [(TIMESTAMP, now.to_string()), (SIGNATURE, signature)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            parts.headers.insert(name, value);
        }
    }
    Response::from_parts(parts, Body::from(body))
}

/// Marks an answer to be signed under the wrong secret.
#[derive(Clone, Copy)]
struct ForgedAnswer;

/// A top-up of a payer's balance (the rider's bank account, in the demo).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopUp {
    pub payment_user_id: String,
    pub amount_cents: u64,
}

pub(super) type Answer = Result<Response, Refused>;

/// A request the gateway will not handle, and why.
#[derive(Debug)]
pub(super) struct Refused {
    status: StatusCode,
    error: &'static str,
    message: String,
    retry_after_secs: u64,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = ErrorAnswer { error: self.error.into(), message: self.message };
        let mut answer = (self.status, Json(body)).into_response();
        if self.retry_after_secs > 0 {
            answer.headers_mut().insert(RETRY_AFTER, self.retry_after_secs.into());
        }
        answer
    }
}

pub(super) fn error(status: StatusCode, error: &'static str, message: impl Into<String>) -> Refused {
    Refused { status, error, message: message.into(), retry_after_secs: 0 }
}

/// The request's idempotency key: 1 to 255 characters, as Stripe's.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<&str, Refused> {
    let key = headers.get(IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok()).unwrap_or("");
    if key.is_empty() || key.chars().count() > IDEMPOTENCY_KEY_CHARS_MAX {
        return Err(error(StatusCode::BAD_REQUEST, "idempotency_key_invalid", "1 to 255 characters required"));
    }
    Ok(key)
}

/// The same key again with another body: a caller's bug, never applied.
pub(super) fn key_reused() -> Refused {
    error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", "this key was used with another request")
}

/// Whether the request is signed by the secret, as it arrived, and fresh.
fn verify_request(sim: &Sim, headers: &HeaderMap, path: &str, body: &[u8]) -> Result<(), Refused> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = header(IDEMPOTENCY_KEY);
    let Ok(timestamp) = header(TIMESTAMP).parse::<i64>() else {
        return Err(error(StatusCode::UNAUTHORIZED, "timestamp_missing", "x-farestream-timestamp: unix ms"));
    };
    if !timestamp_fresh(sim.clock.now_ms(), timestamp) {
        return Err(error(StatusCode::UNAUTHORIZED, "timestamp_skew", "request timestamp too far from now"));
    }
    if !signature_valid(&sim.secret, header(SIGNATURE), timestamp, "POST", path, key, body) {
        return Err(error(StatusCode::UNAUTHORIZED, "signature_invalid", "HMAC-SHA256 does not match"));
    }
    Ok(())
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, "body_invalid", e.to_string()))
}

pub(super) fn request_hash(body: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, body))
}

async fn agreement(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Answer {
    idempotency_key(&headers)?;
    let request: AgreementRequest = parse(&body)?;
    if request.payment_user_id.is_empty() || request.payment_user_id.len() > 128 {
        return Err(error(StatusCode::BAD_REQUEST, "payment_user_id_invalid", "1 to 128 bytes"));
    }
    let mut ledger = lock(&sim.ledger);
    // The card's current agreement, or a new one once the last was ended
    // (a closed card whose rider signed up again).
    let mut n = 1u64;
    let agreement_id = loop {
        let id = if n == 1 { format!("agr-{}", request.card_id) } else { format!("agr-{}-{n}", request.card_id) };
        match ledger.by_key("agreement", &id) {
            Some(_) if ledger.is_ended(&id) => n += 1,
            Some(existing) if existing.payment_user_id != request.payment_user_id => {
                return Err(error(StatusCode::CONFLICT, "agreement_exists", "the card has another payer's agreement"));
            }
            Some(_) => break id,
            None => {
                let payer = &request.payment_user_id;
                append(&mut ledger, "agreement", &id, payer, &id, 0, "", "succeeded", &body)?;
                break id;
            }
        }
    };
    Ok(Json(AgreementAnswer { agreement_id }).into_response())
}

async fn end_agreement(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Answer {
    idempotency_key(&headers)?;
    let request: AgreementEnd = parse(&body)?;
    let mut ledger = lock(&sim.ledger);
    let Some(payer) = ledger.payer_of(&request.agreement_id).map(str::to_string) else {
        return Err(error(StatusCode::NOT_FOUND, "agreement_unknown", "no such agreement"));
    };
    if !ledger.is_ended(&request.agreement_id) {
        let id = &request.agreement_id;
        append(&mut ledger, "agreement_end", id, &payer, id, 0, "", "succeeded", &body)?;
    }
    Ok(StatusCode::OK.into_response())
}

async fn debit(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Answer {
    pay(&sim, "debit", &headers, body).await
}

async fn credit(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Answer {
    pay(&sim, "credit", &headers, body).await
}

/// A debit or a credit, by Stripe's idempotency rules, with the faults.
async fn pay(sim: &Arc<Sim>, kind: &str, headers: &HeaderMap, body: Bytes) -> Answer {
    let key = idempotency_key(headers)?.to_string();
    let request: PaymentRequest = parse(&body)?;
    if request.amount_cents == 0 || request.currency.len() != 3 {
        return Err(error(StatusCode::BAD_REQUEST, "amount_or_currency_invalid", "amount > 0, ISO 4217 currency"));
    }
    let faults = *lock(&sim.faults);
    let nth = sim.payments_seen.fetch_add(1, Ordering::Relaxed) + 1;
    let Some(_held) = KeyInFlight::hold(sim, &key) else {
        return Err(error(StatusCode::CONFLICT, "idempotency_key_in_use", "a request with this key is in flight"));
    };
    pay_in_flight(sim, kind, &key, &request, &body, faults, nth).await
}

/// A key marked in flight until dropped, however the request ends: a
/// caller that hangs up mid-request drops the handler's future, and the
/// key must not stay locked for ever after (it did: 409 for ever).
struct KeyInFlight<'a> {
    sim: &'a Sim,
    key: String,
}

impl<'a> KeyInFlight<'a> {
    fn hold(sim: &'a Sim, key: &str) -> Option<KeyInFlight<'a>> {
        lock(&sim.in_flight).insert(key.to_string()).then(|| KeyInFlight { sim, key: key.to_string() })
    }
}

impl Drop for KeyInFlight<'_> {
    fn drop(&mut self) {
        lock(&self.sim.in_flight).remove(&self.key);
    }
}

async fn pay_in_flight(
    sim: &Sim,
    kind: &str,
    key: &str,
    request: &PaymentRequest,
    body: &[u8],
    faults: SimFaults,
    nth: u64,
) -> Answer {
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.unavailable_every > 0 && nth.is_multiple_of(faults.unavailable_every) {
        let outage = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "simulated outage");
        return Err(Refused { retry_after_secs: faults.retry_after_secs, ..outage });
    }
    let entry = {
        let mut ledger = lock(&sim.ledger);
        match ledger.by_key(kind, key) {
            Some(_) if faults.refuse_seen_keys => {
                return Err(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_expired",
                    "this key is not known",
                ));
            }
            Some(first) if first.request_hash != request_hash(body) => return Err(key_reused()),
            Some(first) => first.clone(),
            None => {
                let Some(payer) = ledger.payer_of(&request.agreement_id).map(str::to_string) else {
                    return Err(error(StatusCode::NOT_FOUND, "agreement_unknown", "no such agreement"));
                };
                if ledger.is_ended(&request.agreement_id) {
                    return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "agreement_ended", "the agreement was ended"));
                }
                let short =
                    kind == "debit" && ledger.balance(&payer) < i64::try_from(request.amount_cents).unwrap_or(i64::MAX);
                let outcome = if short { "declined" } else { "succeeded" };
                let (agreement, amount, currency) = (&request.agreement_id, request.amount_cents, &request.currency);
                append(&mut ledger, kind, key, &payer, agreement, amount, currency, outcome, body)?
            }
        }
    };
    if faults.drop_answer_every > 0 && nth.is_multiple_of(faults.drop_answer_every) {
        return Ok(lost_answer());
    }
    if faults.forged_decline_every > 0 && nth.is_multiple_of(faults.forged_decline_every) {
        let forged = PaymentAnswer {
            status: "declined".into(),
            transaction_id: entry.transaction_id,
            decline_code: Some("insufficient_funds".into()),
        };
        let mut answer = (StatusCode::PAYMENT_REQUIRED, Json(forged)).into_response();
        answer.extensions_mut().insert(ForgedAnswer);
        return Ok(answer);
    }
    let status = if entry.outcome == "succeeded" { StatusCode::OK } else { StatusCode::PAYMENT_REQUIRED };
    let decline_code = (entry.outcome == "declined").then(|| "insufficient_funds".to_string());
    let answer = PaymentAnswer { status: entry.outcome.clone(), transaction_id: entry.transaction_id, decline_code };
    Ok((status, Json(answer)).into_response())
}

/// Headers go out, then the body fails: the connection breaks and the
/// client never reads the outcome.
fn lost_answer() -> Response {
    let broken = futures_util::stream::once(async { Err::<Bytes, _>(std::io::Error::other("simulated lost answer")) });
    Response::builder().status(StatusCode::OK).body(Body::from_stream(broken)).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn append(
    ledger: &mut Ledger,
    kind: &str,
    key: &str,
    payer: &str,
    agreement: &str,
    amount_cents: u64,
    currency: &str,
    outcome: &str,
    body: &[u8],
) -> Result<Entry, Refused> {
    let seq = ledger.next_seq();
    let entry = Entry {
        seq,
        kind: kind.into(),
        key: key.into(),
        payment_user_id: payer.into(),
        agreement_id: agreement.into(),
        amount_cents,
        currency: currency.into(),
        outcome: outcome.into(),
        transaction_id: format!("txn-{seq:08}"),
        request_hash: request_hash(body),
    };
    ledger.append(entry).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "ledger_write_failed", e.to_string()))
}

/// How many debit and credit requests arrived, answered or not: the
/// request rate a client puts on the gateway, outages included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    pub payment_requests: u64,
}
