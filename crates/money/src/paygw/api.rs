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

/// HMAC-SHA256 over the timestamp, method, path, idempotency key and body,
/// one per line, hex: a replayed or altered request fails the check.
pub fn signature(secret: &[u8], timestamp_ms: i64, method: &str, path: &str, key: &str, body: &[u8]) -> String {
    let message = signed_message(timestamp_ms, method, path, key, body);
    hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), &message).as_ref())
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
    let Ok(given) = hex::decode(given) else { return false };
    let message = signed_message(timestamp_ms, method, path, key, body);
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), &message, &given).is_ok()
}

fn signed_message(timestamp_ms: i64, method: &str, path: &str, key: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(body.len() + 128);
    for part in [timestamp_ms.to_string().as_bytes(), method.as_bytes(), path.as_bytes(), key.as_bytes()] {
        message.extend_from_slice(part);
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
    }
}
