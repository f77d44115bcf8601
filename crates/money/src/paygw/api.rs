//! The payment gateway's HTTP JSON debit API, as farestream speaks it
//! (`docs/payment-gateway.md`): the bodies, the headers and the request
//! signature, shared by the client and `farestream paygw`, the simulated
//! gateway, so the two cannot drift.

use ring::hmac;
use serde::{Deserialize, Serialize};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const TIMESTAMP: &str = "x-farestream-timestamp";
pub const SIGNATURE: &str = "x-farestream-signature";
pub const RETRY_AFTER: &str = "retry-after";
/// Stripe's rule: an idempotency key is at most 255 characters.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;

pub const AGREEMENTS_PATH: &str = "/v1/agreements";
/// Ends an agreement: nothing more may be debited or credited under it.
pub const AGREEMENTS_END_PATH: &str = "/v1/agreements/end";
pub const DEBITS_PATH: &str = "/v1/debits";
pub const CREDITS_PATH: &str = "/v1/credits";

/// Signs a debit agreement for a payer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementRequest {
    pub payment_user_id: String,
    /// A string of digits, as in the account API: a gateway reading JSON
    /// numbers as doubles would get most card ids wrong above 2^53.
    #[serde(with = "crate::api::card_id_json")]
    pub card_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementAnswer {
    pub agreement_id: String,
}

/// Ends an agreement (the account closed, its deposit returned).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgreementEnd {
    pub agreement_id: String,
}

/// A debit (or a credit back) under an agreement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequest {
    pub agreement_id: String,
    /// Positive, in the currency's smallest unit.
    pub amount_cents: u64,
    pub currency: String,
    pub description: String,
}

/// The answer to a payment that was decided: 200 for `succeeded`, 402 for
/// `declined` (with a `decline_code`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAnswer {
    pub status: String,
    pub transaction_id: String,
    #[serde(default)]
    pub decline_code: Option<String>,
}

/// Any 4xx or 5xx that is not a decline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
    pub message: String,
}

/// A signed request or answer whose timestamp is further than this from
/// the receiver's clock is refused: a captured one cannot be replayed later.
pub const SIGNED_TIMESTAMP_SKEW_MS_MAX: i64 = 5 * 60 * 1000;

/// Whether a signed timestamp is within [`SIGNED_TIMESTAMP_SKEW_MS_MAX`] of now.
pub fn timestamp_fresh(now_ms: i64, timestamp_ms: i64) -> bool {
    now_ms.abs_diff(timestamp_ms) <= SIGNED_TIMESTAMP_SKEW_MS_MAX.unsigned_abs()
}

/// A request's HMAC-SHA256 over the timestamp, method, path, idempotency
/// key and body, one per line, hex: a replayed or altered request fails
/// the check.
pub fn signature(secret: &[u8], timestamp_ms: i64, method: &str, path: &str, key: &str, body: &[u8]) -> String {
    let timestamp = timestamp_ms.to_string();
    sign(secret, &[timestamp.as_bytes(), method.as_bytes(), path.as_bytes(), key.as_bytes()], body)
}

/// Whether `given` is the signature of the request, in constant time.
pub fn signature_valid(
    secret: &[u8],
    given: &str,
    timestamp_ms: i64,
    method: &str,
    path: &str,
    key: &str,
    body: &[u8],
) -> bool {
    let timestamp = timestamp_ms.to_string();
    verify(secret, given, &[timestamp.as_bytes(), method.as_bytes(), path.as_bytes(), key.as_bytes()], body)
}

/// What an answer's signature covers besides its body: the HTTP status,
/// its `Retry-After` header (empty when none), and the signature of the
/// request it answers.
#[derive(Debug, Clone, Copy)]
pub struct AnswerHead<'a> {
    pub status: u16,
    pub retry_after: &'a str,
    pub request_signature: &'a str,
}

impl AnswerHead<'_> {
    fn lines(&self, timestamp_ms: i64) -> [String; 4] {
        let Self { status, retry_after, request_signature } = *self;
        [timestamp_ms.to_string(), status.to_string(), retry_after.to_string(), request_signature.to_string()]
    }
}

/// An answer's HMAC-SHA256 over the word `answer`, its own timestamp, its
/// head and its body: it cannot be altered (a success turned into a
/// decline, a retry hint changed), nor stand for the answer to another
/// request, nor be replayed outside the time window.
pub fn answer_signature(secret: &[u8], timestamp_ms: i64, head: AnswerHead<'_>, body: &[u8]) -> String {
    let [a, b, c, d] = head.lines(timestamp_ms);
    sign(secret, &[b"answer", a.as_bytes(), b.as_bytes(), c.as_bytes(), d.as_bytes()], body)
}

/// Whether `given` is the signature of the answer, in constant time.
pub fn answer_signature_valid(
    secret: &[u8],
    given: &str,
    timestamp_ms: i64,
    head: AnswerHead<'_>,
    body: &[u8],
) -> bool {
    let [a, b, c, d] = head.lines(timestamp_ms);
    verify(secret, given, &[b"answer", a.as_bytes(), b.as_bytes(), c.as_bytes(), d.as_bytes()], body)
}

fn sign(secret: &[u8], lines: &[&[u8]], body: &[u8]) -> String {
    let message = signed_message(lines, body);
    hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), &message).as_ref())
}

fn verify(secret: &[u8], given: &str, lines: &[&[u8]], body: &[u8]) -> bool {
    // 64 digits exactly: the decoder would also take a `0x` before them.
    if given.len() != 64 {
        return false;
    }
    let Ok(given) = hex::decode(given) else { return false };
    let message = signed_message(lines, body);
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), &message, &given).is_ok()
}

/// Each line then a line end, then the body. A request's first line is a
/// number and an answer's is `answer`: one can never pass for the other.
fn signed_message(lines: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(body.len() + 160);
    for line in lines {
        message.extend_from_slice(line);
        message.push(b'\n');
    }
    message.extend_from_slice(body);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agreement_names_its_card_as_a_string() {
        let request = AgreementRequest { payment_user_id: "payer-1".into(), card_id: 9_007_199_254_740_993 };
        let json = serde_json::to_value(&request).expect("json");
        assert_eq!(json, serde_json::json!({"payment_user_id": "payer-1", "card_id": "9007199254740993"}));
        assert_eq!(serde_json::from_value::<AgreementRequest>(json).expect("back"), request);
    }

    #[test]
    fn a_signature_checks_only_for_the_same_request_and_secret() {
        let sig = signature(b"s", 1, "POST", DEBITS_PATH, "k", b"{}");
        assert!(signature_valid(b"s", &sig, 1, "POST", DEBITS_PATH, "k", b"{}"));
        assert!(!signature_valid(b"t", &sig, 1, "POST", DEBITS_PATH, "k", b"{}"));
        assert!(!signature_valid(b"s", &sig, 2, "POST", DEBITS_PATH, "k", b"{}"));
        assert!(!signature_valid(b"s", &sig, 1, "POST", CREDITS_PATH, "k", b"{}"));
        assert!(!signature_valid(b"s", &sig, 1, "POST", DEBITS_PATH, "k2", b"{}"));
        assert!(!signature_valid(b"s", &sig, 1, "POST", DEBITS_PATH, "k", b"{ }"));
        assert!(!signature_valid(b"s", "not hex", 1, "POST", DEBITS_PATH, "k", b"{}"));
        assert!(!signature_valid(b"s", "", 1, "POST", DEBITS_PATH, "k", b""));
        assert!(!signature_valid(b"s", &format!("0x{sig}"), 1, "POST", DEBITS_PATH, "k", b"{}"), "prefixed");
        assert!(!signature_valid(b"s", &format!("{sig}0"), 1, "POST", DEBITS_PATH, "k", b"{}"), "a digit long");
    }

    #[test]
    fn an_answer_checks_only_for_its_own_request_status_and_body() {
        let request = signature(b"s", 1, "POST", DEBITS_PATH, "k", b"{}");
        let head = AnswerHead { status: 200, retry_after: "", request_signature: &request };
        let sig = answer_signature(b"s", 2, head, b"ok");
        assert!(answer_signature_valid(b"s", &sig, 2, head, b"ok"));
        assert!(!answer_signature_valid(b"t", &sig, 2, head, b"ok"), "another secret");
        assert!(!answer_signature_valid(b"s", &sig, 3, head, b"ok"), "another time");
        assert!(!answer_signature_valid(b"s", &sig, 2, AnswerHead { status: 402, ..head }, b"ok"), "made a decline");
        assert!(!answer_signature_valid(b"s", &sig, 2, AnswerHead { retry_after: "0", ..head }, b"ok"), "a hint added");
        let other = AnswerHead { request_signature: "other", ..head };
        assert!(!answer_signature_valid(b"s", &sig, 2, other, b"ok"), "the answer to another request");
        assert!(!answer_signature_valid(b"s", &sig, 2, head, b"no"), "another body");
        assert!(!answer_signature_valid(b"s", "", 2, head, b"ok"), "unsigned");
        // A request's signature is never an answer's, nor the other way.
        assert!(!signature_valid(b"s", &sig, 2, "200", &request, "", b"ok"));
    }

    #[test]
    fn a_timestamp_is_fresh_within_the_window_either_way() {
        let now = 1_000_000_000;
        for (at, fresh) in [
            (now, true),
            (now - SIGNED_TIMESTAMP_SKEW_MS_MAX, true),
            (now + SIGNED_TIMESTAMP_SKEW_MS_MAX, true),
            (now - SIGNED_TIMESTAMP_SKEW_MS_MAX - 1, false),
            (now + SIGNED_TIMESTAMP_SKEW_MS_MAX + 1, false),
            (i64::MIN, false),
            (i64::MAX, false),
        ] {
            assert_eq!(timestamp_fresh(now, at), fresh, "{at}");
        }
    }
}
