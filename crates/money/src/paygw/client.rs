//! The payment gateway client: signed JSON requests over HTTP, each payment
//! under its idempotency key, every answer checked against its signature
//! and sorted into what the dispatcher does next. An answer that cannot be
//! read or verified is a `Retry`, never a decline: the charge may have been
//! applied, so it is sent again under the same key and the gateway answers
//! with its first result, signed.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use thiserror::Error;

use super::api::{
    AGREEMENTS_END_PATH, AGREEMENTS_PATH, AgreementAnswer, AgreementEnd, AgreementRequest, AnswerHead, CREDITS_PATH,
    DEBITS_PATH, ErrorAnswer, IDEMPOTENCY_KEY, PaymentAnswer, PaymentRequest, RETRY_AFTER, SIGNATURE, TIMESTAMP,
    answer_signature_valid, signature, timestamp_fresh,
};
use crate::money_metrics;
use farestream_core::gateway_answer::GatewayAnswer;
use farestream_core::retry::GatewayHealth;
use farestream_ingest::clock_source::{Clock, SystemClock, duration_ms};

/// The largest answer read from the gateway: its answers are a few hundred
/// bytes, and a bigger one is not allowed to grow the server's memory.
pub const ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Which way the money goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the rider to the operator.
    Debit,
    /// Back to the rider (an adjustment that lowers a day's price, a
    /// deposit returned).
    Credit,
}

/// What came of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Succeeded {
        transaction_id: String,
    },
    /// Final for this key: the payer could not pay.
    Declined {
        decline_code: String,
    },
    /// Worth the same request again: a timeout, a lost connection or answer,
    /// a 5xx or a 429; with the gateway's hint of when, if it gave one.
    /// The gateway may be down.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// A 409: a request under the same key is still being processed. Worth
    /// the same request again, later; the gateway is up.
    InFlight {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The gateway refused the request itself (400, 401, 403, 404, 422): a
    /// bug or a misconfiguration that an operator must see.
    Refused {
        reason: String,
    },
}

#[derive(Debug, Error)]
pub enum PaygwError {
    #[error("payment gateway {url}: {reason}")]
    Request { url: String, reason: String },
}

/// A connection pool to one payment gateway.
#[derive(Clone)]
pub struct PaymentGateway {
    http: reqwest::Client,
    base_url: String,
    secret: Vec<u8>,
}

impl PaymentGateway {
    pub fn new(base_url: &str, secret: &[u8], request_timeout: Duration) -> Result<PaymentGateway, PaygwError> {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .build()
            .map_err(|e| PaygwError::Request { url: base_url.to_string(), reason: e.to_string() })?;
        Ok(PaymentGateway { http, base_url: base_url.trim_end_matches('/').to_string(), secret: secret.to_vec() })
    }

    /// Signs the debit agreement for a payer; the same payer gets the same
    /// agreement again.
    pub async fn create_agreement(&self, payment_user_id: &str, card_id: u64) -> Result<String, PaygwError> {
        let body = AgreementRequest { payment_user_id: payment_user_id.to_string(), card_id };
        let answer = self.call(AGREEMENTS_PATH, &format!("agreement-{card_id}"), &body).await?;
        let answer: AgreementAnswer = serde_json::from_slice(&answer).map_err(|e| PaygwError::Request {
            url: format!("{}{AGREEMENTS_PATH}", self.base_url),
            reason: e.to_string(),
        })?;
        Ok(answer.agreement_id)
    }

    /// Ends an agreement; ending it again is the same success.
    pub async fn end_agreement(&self, agreement_id: &str) -> Result<(), PaygwError> {
        let body = AgreementEnd { agreement_id: agreement_id.to_string() };
        self.call(AGREEMENTS_END_PATH, &format!("end-{agreement_id}"), &body).await.map(|_| ())
    }

    /// A request that is not a payment: its answer's body on success, an
    /// error naming the URL and the status otherwise.
    async fn call<B: serde::Serialize>(&self, path: &str, key: &str, body: &B) -> Result<Vec<u8>, PaygwError> {
        let url = format!("{}{path}", self.base_url);
        let failed = |reason: String| PaygwError::Request { url: url.clone(), reason };
        let (response, request_signature) = self.post(path, key, body).await.map_err(|e| failed(e.to_string()))?;
        let (status, headers) = (response.status(), response.headers().clone());
        let answer = read_limited(response).await.map_err(failed)?;
        self.verify_answer(&request_signature, status, &headers, &answer)
            .map_err(|why| failed(unverified(status, why)))?;
        if !status.is_success() {
            return Err(failed(format!("HTTP {status}: {}", String::from_utf8_lossy(&answer))));
        }
        Ok(answer)
    }

    /// Sends one payment under `key`.
    pub async fn pay(&self, direction: Direction, key: &str, request: &PaymentRequest) -> Answer {
        let path = match direction {
            Direction::Debit => DEBITS_PATH,
            Direction::Credit => CREDITS_PATH,
        };
        let (response, request_signature) = match self.post(path, key, request).await {
            Ok(sent) => sent,
            Err(error) => return Answer::Retry { reason: describe(&error), retry_after: None },
        };
        let (status, headers) = (response.status(), response.headers().clone());
        let body = match read_limited(response).await {
            Ok(body) => body,
            // The answer was lost on the way (or is not one): the payment
            // may have applied, so the same key goes again.
            // The hint is unverified without the body: not believed.
            Err(reason) => return Answer::Retry { reason, retry_after: None },
        };
        match self.verify_answer(&request_signature, status, &headers, &body) {
            Ok(()) => classify(status, &body, retry_after(&headers)),
            // Not the gateway's word (a forged decline, a proxy's page):
            // believed in nothing, the hint included; asked again.
            Err(why) => Answer::Retry { reason: unverified(status, why), retry_after: None },
        }
    }

    /// Sends a signed request; the signature comes back with the response,
    /// since the answer's signature covers it.
    async fn post<B: serde::Serialize>(
        &self,
        path: &str,
        key: &str,
        body: &B,
    ) -> reqwest::Result<(reqwest::Response, String)> {
        let body = serde_json::to_vec(body).unwrap_or_default();
        // Wall-clock time, whatever clock the server runs on: the gateway
        // checks it against its own to refuse replayed requests.
        let timestamp = SystemClock.now_ms();
        let request_signature = signature(&self.secret, timestamp, "POST", path, key, &body);
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_KEY, key)
            .header(TIMESTAMP, timestamp.to_string())
            .header(SIGNATURE, &request_signature)
            .body(body)
            .send()
            .await?;
        Ok((response, request_signature))
    }

    /// Whether the answer is the gateway's, to this request, and fresh;
    /// why not, as a metric label, and counted.
    fn verify_answer(
        &self,
        request_signature: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), &'static str> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signed = header(TIMESTAMP).and_then(|t| t.parse::<i64>().ok()).zip(header(SIGNATURE));
        let retry_after = header(RETRY_AFTER).unwrap_or_default();
        let head = AnswerHead { status: status.as_u16(), retry_after, request_signature };
        let why = match signed {
            None => "unsigned",
            Some((at, _)) if !timestamp_fresh(SystemClock.now_ms(), at) => "stale",
            Some((at, given)) if answer_signature_valid(&self.secret, given, at, head, body) => return Ok(()),
            Some(_) => "signature_invalid",
        };
        money_metrics::payment_answer_unverified(why);
        Err(why)
    }
}

/// Why an answer was not believed, for the charge's row and the log.
fn unverified(status: StatusCode, why: &str) -> String {
    format!(
        "HTTP {status} answer not verified ({why}): is payments secret the same at both ends, and the clocks right?"
    )
}

/// The answer's body, at most [`ANSWER_BYTES_MAX`] of it.
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > ANSWER_BYTES_MAX {
            return Err(format!("an answer over {ANSWER_BYTES_MAX} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Answer {
    /// What the answer says of the gateway itself, for its circuit breaker.
    pub fn gateway_health(&self) -> GatewayHealth {
        match self {
            Answer::Retry { .. } => GatewayHealth::RetryableFailure,
            Answer::Succeeded { .. } | Answer::Declined { .. } | Answer::InFlight { .. } | Answer::Refused { .. } => {
                GatewayHealth::Answered
            }
        }
    }

    /// The answer as the core decides on it (`gateway_answer`).
    pub fn as_decided(&self) -> GatewayAnswer {
        let ms = |hint: &Option<Duration>| hint.map(duration_ms);
        match self {
            Answer::Succeeded { .. } => GatewayAnswer::Succeeded,
            Answer::Declined { .. } => GatewayAnswer::Declined,
            Answer::Retry { retry_after, .. } => GatewayAnswer::Retry { retry_after_ms: ms(retry_after) },
            Answer::InFlight { retry_after, .. } => GatewayAnswer::InFlight { retry_after_ms: ms(retry_after) },
            Answer::Refused { .. } => GatewayAnswer::Refused,
        }
    }

    /// Its text for the charge's row: the gateway's transaction id, the
    /// decline code, or why it is tried again.
    pub fn detail(&self) -> &str {
        match self {
            Answer::Succeeded { transaction_id } => transaction_id,
            Answer::Declined { decline_code } => decline_code,
            Answer::Retry { reason, .. } | Answer::InFlight { reason, .. } | Answer::Refused { reason } => reason,
        }
    }
}

/// Sorts a read answer: the status decides, the body adds detail.
fn classify(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Answer {
    let payment = || serde_json::from_slice::<PaymentAnswer>(body).ok();
    let error = || {
        serde_json::from_slice::<ErrorAnswer>(body)
            .map(|e| format!("HTTP {status}: {}: {}", e.error, e.message))
            .unwrap_or_else(|_| format!("HTTP {status}"))
    };
    match status {
        StatusCode::OK | StatusCode::CREATED => match payment() {
            Some(answer) if answer.status == "succeeded" => Answer::Succeeded { transaction_id: answer.transaction_id },
            _ => Answer::Retry { reason: format!("HTTP {status} with an unreadable body"), retry_after },
        },
        StatusCode::PAYMENT_REQUIRED => match payment() {
            Some(answer) => Answer::Declined { decline_code: answer.decline_code.unwrap_or_else(|| "declined".into()) },
            None => Answer::Declined { decline_code: "declined".into() },
        },
        StatusCode::CONFLICT => Answer::InFlight { reason: error(), retry_after },
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => Answer::Retry { reason: error(), retry_after },
        status if status.is_server_error() => Answer::Retry { reason: error(), retry_after },
        _ => Answer::Refused { reason: error() },
    }
}

/// `Retry-After` in seconds, as HTTP gives it; a date or garbage is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(|secs| Duration::from_secs(secs.min(86_400)))
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        format!("cannot connect: {error}")
    } else {
        format!("no answer: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_sorted_into_what_happens_next() {
        let ok = br#"{"status":"succeeded","transaction_id":"t1"}"#;
        let declined = br#"{"status":"declined","transaction_id":"t2","decline_code":"insufficient_funds"}"#;
        assert_eq!(classify(StatusCode::OK, ok, None), Answer::Succeeded { transaction_id: "t1".into() });
        assert_eq!(
            classify(StatusCode::PAYMENT_REQUIRED, declined, None),
            Answer::Declined { decline_code: "insufficient_funds".into() }
        );
        assert!(matches!(classify(StatusCode::OK, b"", None), Answer::Retry { .. }), "a 200 we cannot read");
        let hint = Some(Duration::from_secs(3));
        assert_eq!(
            classify(StatusCode::CONFLICT, b"", hint),
            Answer::InFlight { reason: "HTTP 409 Conflict".into(), retry_after: hint }
        );
        for status in [StatusCode::TOO_MANY_REQUESTS, StatusCode::BAD_GATEWAY] {
            assert_eq!(
                classify(status, b"", hint),
                Answer::Retry { reason: format!("HTTP {status}"), retry_after: hint }
            );
        }
        for status in [StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED, StatusCode::UNPROCESSABLE_ENTITY] {
            assert!(matches!(classify(status, b"{}", None), Answer::Refused { .. }));
        }
    }
}
