//! Card calls: each needs the card's own bearer token.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::register::json;
use super::sessions::{random_bytes, token_session};
use super::{ApiError, ApiState};
use crate::accounts::{Account, CodeBlock};
use crate::outbox::newest_charges;
use farestream_core::account::AccountState;
use farestream_core::clock::unix_secs_u32;
use farestream_core::ridecode::verify::is_weak_public_key;
use farestream_core::ridecode::{HeldTerminalKey, IssuerSigningKey, UserKey, seal};

/// The longest payment-app user id accepted.
const PAYMENT_USER_ID_BYTES_MAX: usize = 128;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AccountView {
    #[serde(with = "super::card_id_json")]
    pub card_id: u64,
    pub phone: String,
    pub state: String,
    pub deposit_cents: i64,
    pub arrears_cents: i64,
    pub currency: String,
    pub agreement_id: Option<String>,
    /// The newest charges, newest first (at most `api.account_charges_max`).
    pub charges: Vec<ChargeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ChargeView {
    pub charge_id: String,
    pub service_date: String,
    pub kind: String,
    pub amount_cents: i64,
    pub outcome: String,
    /// The scans (taps) this charge prices, hex.
    pub scan_ids: Vec<String>,
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ActivateRequest {
    pub payment_user_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct KeysRequest {
    /// A public key the app made itself (32 bytes, hex): certified, and the
    /// private key never leaves the phone. Absent: the server makes one.
    #[serde(default)]
    pub public_key_hex: Option<String>,
}

/// The day's key material.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DailyKeys {
    #[serde(with = "super::card_id_json")]
    pub card_id: u64,
    pub issuer_key_id: u32,
    pub valid_from: u32,
    pub valid_until: u32,
    /// The issuer-signed credential (docs/ride-code.md), hex.
    pub credential_hex: String,
    pub user_public_key_hex: String,
    /// The user signing key's seed, hex, only when the server made the key.
    pub user_seed_hex: Option<String>,
    /// The terminal key the app seals its codes with (docs/ride-code.md,
    /// "Format version 2").
    pub terminal_key: TerminalKeyView,
    /// The first counter of this credential's block; each code takes the
    /// next, never one twice.
    pub code_counter_from: u32,
    /// The end of the block (exclusive): fetch new keys before it.
    pub code_counter_until: u64,
}

/// The day's terminal key, as the app holds it. Its Debug leaves the
/// secret out.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct TerminalKeyView {
    pub key_id: u16,
    /// The 32-byte secret, hex.
    pub secret_hex: String,
    /// The service day it was made for, `YYYY-MM-DD`.
    pub service_date: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct OnlineCode {
    pub ride_code_hex: String,
    pub created_at: u32,
    pub valid_until: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct IssuerKeyView {
    pub key_id: u32,
    /// It signs new credentials now.
    pub active: bool,
    pub public_key_hex: String,
    pub public_key_pem: String,
    /// From when it signs new credentials.
    pub signs_from_unix_secs: i64,
    /// From when it is no longer trusted; absent while no newer key is
    /// scheduled.
    pub trusted_until_unix_secs: Option<i64>,
}

/// The card in the path, if `headers` carry its token: anything else about
/// the card, even that it exists, is not told.
async fn authorized(api: &ApiState, headers: &HeaderMap, card: &str) -> Result<u64, ApiError> {
    Ok(authorized_session(api, headers, card).await?.0)
}

/// [`authorized`], with the id of the session the token is.
pub(super) async fn authorized_session(
    api: &ApiState,
    headers: &HeaderMap,
    card: &str,
) -> Result<(u64, String), ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .ok_or_else(|| ApiError::Unauthorized("Authorization: Bearer <token> required".into()))?
        .to_string();
    let now = api.accounts.clock.now_ms();
    let holder = api.accounts.read(move |conn| token_session(conn, &token, now)).await?;
    let (holder, session_id) = holder.ok_or_else(|| ApiError::Unauthorized("unknown or expired token".into()))?;
    match card.parse::<u64>() {
        Ok(card_id) if card_id == holder => Ok((card_id, session_id)),
        _ => Err(ApiError::NotFound),
    }
}

pub(super) async fn view(
    State(api): State<Arc<ApiState>>,
    Path(card): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AccountView>, ApiError> {
    let card_id = authorized(&api, &headers, &card).await?;
    let account = api.accounts.account(card_id).await?;
    let count = api.settings.account_charges_max;
    let charges = api.accounts.read(move |conn| Ok(newest_charges(conn, card_id, count)?)).await?;
    let charges = charges
        .into_iter()
        .map(|c| ChargeView {
            charge_id: hex::encode(c.charge_id),
            service_date: c.service_date.to_string(),
            kind: c.kind.as_str().into(),
            amount_cents: c.amount_cents.get(),
            outcome: c.outcome.as_str().into(),
            scan_ids: c.scan_ids.iter().map(hex::encode).collect(),
            attempts: c.attempts,
        })
        .collect();
    Ok(Json(account_view(&api, account, charges)))
}

fn account_view(api: &ApiState, account: Account, charges: Vec<ChargeView>) -> AccountView {
    AccountView {
        card_id: account.card_id,
        phone: account.phone,
        state: account.state.as_str().into(),
        deposit_cents: account.deposit_cents.get(),
        arrears_cents: account.arrears_cents.get(),
        currency: api.accounts.currency.clone(),
        agreement_id: account.agreement_id,
        charges,
    }
}

pub(super) async fn activate(
    State(api): State<Arc<ApiState>>,
    Path(card): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AccountView>, ApiError> {
    let card_id = authorized(&api, &headers, &card).await?;
    let request: ActivateRequest = json(&body)?;
    let payer = request.payment_user_id;
    if payer.is_empty() || payer.len() > PAYMENT_USER_ID_BYTES_MAX || payer.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "payment_user_id must be 1 to {PAYMENT_USER_ID_BYTES_MAX} bytes of printable text"
        )));
    }
    let account = api.accounts.activate(card_id, &payer).await?;
    Ok(Json(account_view(&api, account, Vec::new())))
}

/// Keys only for an active account: this is how an unpaid rider stops riding.
async fn may_ride(api: &ApiState, card_id: u64) -> Result<Account, ApiError> {
    let account = api.accounts.account(card_id).await?;
    let reason = match account.state {
        AccountState::Active => return Ok(account),
        AccountState::Registered => "the card is not activated: sign the agreement and pay the deposit".to_string(),
        AccountState::InArrears => format!("the card owes {} in arrears: pay them first", account.arrears_cents.get()),
        AccountState::RefundPending => "a refund is pending: the card rides no more".to_string(),
        AccountState::Closed => "the card is closed".to_string(),
    };
    Err(ApiError::Conflict { error: "keys_refused", message: format!("{reason} (state {})", account.state.as_str()) })
}

/// Records that the card holds a credential until `valid_until` (seconds)
/// before it is issued, and takes its block of code counters under
/// `terminal_key`: refused, as keys are, unless the card is still active
/// in that transaction (a refund asked for a moment ago wins), so a refund
/// knows the last moment its rider can ride.
async fn record_keys(
    api: &ApiState,
    card_id: u64,
    valid_until: u32,
    terminal_key: &HeldTerminalKey,
) -> Result<CodeBlock, ApiError> {
    let until_ms = i64::from(valid_until).saturating_mul(1_000);
    match api.accounts.keys_issued(card_id, until_ms, terminal_key.key_id).await {
        Ok(block) => Ok(block),
        Err(crate::ServiceError::Account(crate::accounts::AccountError::WrongState { .. })) => {
            let changed = || ApiError::Conflict {
                error: "keys_refused",
                message: "the card's state changed while its keys were made: ask again".into(),
            };
            Err(may_ride(api, card_id).await.err().unwrap_or_else(changed))
        }
        Err(error) => Err(error.into()),
    }
}

/// Today's window: from now, never longer than `credential_validity_secs`.
fn window(api: &ApiState) -> (u32, u32) {
    let from = unix_secs_u32(api.accounts.clock.now_ms());
    (from, from.saturating_add(api.settings.credential_validity_secs))
}

pub(super) async fn keys(
    State(api): State<Arc<ApiState>>,
    Path(card): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<DailyKeys>, ApiError> {
    let card_id = authorized(&api, &headers, &card).await?;
    let request: KeysRequest = if body.is_empty() { KeysRequest::default() } else { json(&body)? };
    may_ride(&api, card_id).await?;
    let (public_key, seed) = match request.public_key_hex {
        Some(hex_key) => (parse_public_key(&hex_key)?, None),
        None => {
            let seed = random_bytes::<32>().map_err(|e| ApiError::Internal(e.to_string()))?;
            let key = UserKey::from_seed(&seed).map_err(|e| ApiError::Internal(e.to_string()))?;
            (key.public_key(), Some(seed))
        }
    };
    let (issuer, terminal_key) = (signer(&api)?, handed_out_terminal_key(&api)?);
    let (valid_from, valid_until) = window(&api);
    let block = record_keys(&api, card_id, valid_until, &terminal_key).await?;
    let credential = issuer.issue(card_id, public_key, valid_from, valid_until);
    Ok(Json(DailyKeys {
        card_id,
        issuer_key_id: issuer.key_id(),
        valid_from,
        valid_until,
        credential_hex: hex::encode(credential.to_bytes()),
        user_public_key_hex: hex::encode(public_key),
        user_seed_hex: seed.map(hex::encode),
        terminal_key: TerminalKeyView {
            key_id: terminal_key.key_id,
            secret_hex: hex::encode(terminal_key.secret),
            service_date: terminal_key.service_date.format("%Y-%m-%d").to_string(),
        },
        code_counter_from: block.counters.0,
        code_counter_until: block.counters.1,
    }))
}

impl std::fmt::Debug for TerminalKeyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TerminalKeyView({}, {}, ..)", self.key_id, self.service_date)
    }
}

/// The terminal key handed out now: taken once per request, like the signer.
fn handed_out_terminal_key(api: &ApiState) -> Result<HeldTerminalKey, ApiError> {
    let now_secs = api.accounts.clock.now_ms().div_euclid(1000);
    api.issuer
        .now()
        .terminal_handed_out(now_secs)
        .ok_or_else(|| ApiError::Unavailable("no terminal key is handed out now".into()))
}

/// The issuer key that signs now: taken once per request, so a rotation
/// in between never splits one answer between two keys.
fn signer(api: &ApiState) -> Result<Arc<IssuerSigningKey>, ApiError> {
    api.issuer.now().signer.clone().ok_or_else(|| ApiError::Unavailable("no issuer key signs credentials now".into()))
}

/// 32 bytes of hex, and a key the server would trust: a canonical point
/// of large order (a weak key's signatures prove nothing).
fn parse_public_key(text: &str) -> Result<[u8; 32], ApiError> {
    let bad = || ApiError::BadRequest("public_key_hex must be a 32-byte Ed25519 public key in hex".into());
    // 64 digits exactly: the decoder would also take a `0x` before them.
    if text.len() != 64 {
        return Err(bad());
    }
    let bytes: [u8; 32] = hex::decode(text).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
    if is_weak_public_key(&bytes) {
        return Err(bad());
    }
    Ok(bytes)
}

pub(super) async fn online_code(
    State(api): State<Arc<ApiState>>,
    Path(card): Path<String>,
    headers: HeaderMap,
) -> Result<Json<OnlineCode>, ApiError> {
    let card_id = authorized(&api, &headers, &card).await?;
    may_ride(&api, card_id).await?;
    let seed = random_bytes::<32>().map_err(|e| ApiError::Internal(e.to_string()))?;
    let key = UserKey::from_seed(&seed).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (issuer, terminal_key) = (signer(&api)?, handed_out_terminal_key(&api)?);
    let (created_at, valid_until) = window(&api);
    let block = record_keys(&api, card_id, valid_until, &terminal_key).await?;
    let credential = issuer.issue(card_id, key.public_key(), created_at, valid_until);
    // Its own block's first counter: no other code of the card shares its nonce.
    let code = key.make_code(&credential, created_at, block.counters.0);
    let sealed = seal(&code, &terminal_key.key());
    Ok(Json(OnlineCode { ride_code_hex: hex::encode(sealed), created_at, valid_until }))
}

pub(super) async fn pay_arrears(
    State(api): State<Arc<ApiState>>,
    Path(card): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AccountView>, ApiError> {
    let card_id = authorized(&api, &headers, &card).await?;
    let account = api.accounts.pay_arrears(card_id).await?;
    Ok(Json(account_view(&api, account, Vec::new())))
}

pub(super) async fn refund(
    State(api): State<Arc<ApiState>>,
    Path(card): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AccountView>, ApiError> {
    let card_id = authorized(&api, &headers, &card).await?;
    let account = api.accounts.request_refund(card_id).await?;
    Ok(Json(account_view(&api, account, Vec::new())))
}

pub(super) async fn issuer_keys(State(api): State<Arc<ApiState>>) -> Json<Vec<IssuerKeyView>> {
    Json(
        api.issuer
            .now()
            .published
            .iter()
            .map(|k| IssuerKeyView {
                key_id: k.key.key_id,
                active: k.active,
                public_key_hex: hex::encode(k.key.public_key),
                public_key_pem: k.pem.clone(),
                signs_from_unix_secs: k.key.signs_from_secs,
                trusted_until_unix_secs: k.key.trusted_until_secs,
            })
            .collect(),
    )
}
