//! Registration: a one-time code to the phone, then the code for a token.
//! A phone that already has a card gets a new token for it (a new phone,
//! a reinstalled app); otherwise a card is made.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::sessions::{CodeCheck, SendRefused, check_code, new_token, random_bytes, send_code as send_code_checked};
use super::{ApiError, ApiState};
use crate::accounts::{self, AccountError};
use farestream_core::account::AccountState;
use farestream_ingest::clock_source::duration_ms;

/// The longest phone number E.164 allows, in digits.
const PHONE_DIGITS_MAX: usize = 15;
const PHONE_DIGITS_MIN: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CodeRequest {
    pub phone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CodeSent {
    pub phone: String,
    pub expires_in_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RegisterRequest {
    pub phone: String,
    pub code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Registered {
    #[serde(with = "super::card_id_json")]
    pub card_id: u64,
    pub token: String,
}

/// Parses a JSON body into `T`, or a 400 that says what is wrong.
pub(super) fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

/// `+` and 8 to 15 digits (E.164).
fn check_phone(phone: &str) -> Result<(), ApiError> {
    let digits = phone.strip_prefix('+').unwrap_or("");
    let ok =
        (PHONE_DIGITS_MIN..=PHONE_DIGITS_MAX).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "phone must be + and {PHONE_DIGITS_MIN} to {PHONE_DIGITS_MAX} digits (E.164)"
        )));
    }
    Ok(())
}

/// One entry of a proxy header: `203.0.113.9`, `203.0.113.9:4711`,
/// `2001:db8::9`, `[2001:db8::9]`, `[2001:db8::9]:4711`, or RFC 7239's
/// `for=...` (quoted or not) with any of those.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let entry = entry
        .split(';')
        .find_map(|part| part.trim().strip_prefix("for=").or_else(|| part.trim().strip_prefix("For=")))
        .unwrap_or(entry)
        .trim_matches('"');
    let unbracketed = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).unwrap_or(entry);
    unbracketed.parse::<IpAddr>().or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip())).ok()
}

/// Who asked: the last address in the configured proxy header (the one
/// the operator's proxy appended: every address before it, and every line
/// of the header before the last, is whatever the client sent), or the TCP
/// peer's address. A last entry that is not an address (or `address:port`)
/// counts as the peer's, so junk never makes a fresh client. An IPv6
/// client counts by its /64, the block one subscriber gets.
fn client_address(header: Option<&str>, peer: SocketAddr, headers: &HeaderMap) -> String {
    let forwarded = header
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(parse_forwarded_address);
    match forwarded.unwrap_or(peer.ip()) {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(|v4| v4.to_string()).unwrap_or_default(),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

pub(super) async fn send_code(
    State(api): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CodeSent>), ApiError> {
    let request: CodeRequest = json(&body)?;
    check_phone(&request.phone)?;
    let accounts = &api.accounts;
    let now = accounts.clock.now_ms();
    let (phone, client, limits) = (
        request.phone.clone(),
        client_address(api.settings.client_address_header.as_deref(), peer, &headers),
        api.settings.otp_limits(),
    );
    let sent = accounts.write(move |tx| send_code_checked(tx, &phone, &client, now, &limits)).await?;
    let code = sent.map_err(|refused| {
        crate::money_metrics::otp_refused(refused.label());
        ApiError::TooManyRequests(refused.message(&limits))
    })?;
    accounts.notifier.notify(&request.phone, &format!("your farestream code is {code}"));
    let sent = CodeSent { phone: request.phone, expires_in_secs: api.settings.otp_validity.as_secs() };
    Ok((StatusCode::ACCEPTED, Json(sent)))
}

pub(super) async fn register(
    State(api): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let request: RegisterRequest = json(&body)?;
    check_phone(&request.phone)?;
    if request.code.len() != 6 || !request.code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest("code must be the six digits sent to the phone".into()));
    }
    let accounts = &api.accounts;
    let now = accounts.clock.now_ms();
    let (attempts_max, token_ms) = (api.settings.otp_attempts_max, duration_ms(api.settings.token_validity));
    let (client, limits) =
        (client_address(api.settings.client_address_header.as_deref(), peer, &headers), api.settings.otp_limits());
    // 63 random bits: card ids stay within a signed 64-bit integer, which
    // every reader of the archives holds (`scan::ID_MAX`).
    let random = u64::from_be_bytes(random_bytes::<8>().map_err(|e| ApiError::Internal(e.to_string()))?);
    let card_id = (random >> 1).max(1);
    let outcome = accounts
        .write(move |tx| {
            match check_code(tx, (&request.phone, &client), &request.code, now, (attempts_max, &limits))? {
                CodeCheck::Right => {}
                other => return Ok(Err(other)),
            }
            let card = match accounts::card_of_phone(tx, &request.phone)? {
                Some(card) if accounts::account(tx, card)?.state == AccountState::Closed => {
                    accounts::reopen(tx, card, now)?.card_id
                }
                Some(card) => card,
                None => accounts::register(tx, card_id, &request.phone, now)?.card_id,
            };
            Ok::<_, AccountError>(Ok((card, new_token(tx, card, now, token_ms)?)))
        })
        .await?;
    match outcome {
        Ok((card_id, token)) => Ok((StatusCode::CREATED, Json(Registered { card_id, token }))),
        Err(CodeCheck::Wrong) => Err(ApiError::Unauthorized("wrong code".into())),
        Err(CodeCheck::Locked) => {
            crate::money_metrics::otp_refused("phone_locked");
            Err(ApiError::TooManyRequests(SendRefused::PhoneLocked.message(&limits)))
        }
        Err(_) => Err(ApiError::Unauthorized("no valid code for this phone: ask for a new one".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review of issue 19: the first line of a repeated header was read (a
    /// proxy that adds a line left the client's own line first), and any
    /// text was a client of its own, so each request could pick a fresh
    /// bucket.
    #[test]
    fn the_client_is_the_proxys_last_entry_and_junk_is_the_peer() {
        let peer: SocketAddr = "10.0.0.2:5000".parse().expect("peer");
        let with = |lines: &[&str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append("x-forwarded-for", line.parse().expect("header"));
            }
            client_address(Some("x-forwarded-for"), peer, &headers)
        };
        assert_eq!(with(&["6.6.6.1", "203.0.113.9"]), "203.0.113.9", "the last line, the proxy's");
        assert_eq!(with(&["6.6.6.1, 203.0.113.9"]), "203.0.113.9");
        assert_eq!(with(&["203.0.113.9:4711"]), "203.0.113.9", "address:port");
        assert_eq!(with(&["[2001:db8:1:2:3::9]:4711"]), "2001:db8:1:2::/64");
        assert_eq!(with(&["[2001:db8:1:2:3::9]"]), "2001:db8:1:2::/64");
        // RFC 7239's Forwarded header.
        assert_eq!(with(&["for=6.6.6.1, for=203.0.113.9;proto=https"]), "203.0.113.9");
        assert_eq!(with(&["for=\"[2001:db8:1:2:3::9]:4711\""]), "2001:db8:1:2::/64");
        assert_eq!(with(&["for=_hidden"]), "10.0.0.2", "an obfuscated identifier is the peer's");
        for junk in ["", "junk", "6.6.6.1, junk-7", &"x".repeat(10_000)] {
            assert_eq!(with(&[junk]), "10.0.0.2", "{junk:.20}: the peer's, not a client of its own");
        }
        assert_eq!(with(&[]), "10.0.0.2", "no header");
        assert_eq!(client_address(None, peer, &HeaderMap::new()), "10.0.0.2", "no header configured");
    }
}
