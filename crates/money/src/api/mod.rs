//! The account API (`docs/account-api.md`): HTTP and JSON over axum, served
//! by `serve` beside QUIC. Riders register with a phone number and a
//! one-time code and get a bearer token for their card; every card call
//! needs that card's token, and another card's token gets 404. The work is
//! [`AccountService`]'s; this layer checks input, tokens and limits.
//!
//! By job: `register` (codes, tokens), `cards` (the account, activation,
//! keys, online codes, arrears, refunds, issuer keys), `logins` (a card's
//! sessions: listed, ended), `sessions` (codes and tokens in the store),
//! `error` (every failure as JSON).

pub(crate) mod card_id_json;
mod cards;
mod error;
mod logins;
mod register;
mod sessions;

pub(crate) use sessions::random_bytes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};

pub use error::{ApiError, ErrorBody};
pub use sessions::OtpLimits;

pub use farestream_ingest::http_serve::HttpHandle;

use crate::AccountService;
use farestream_ingest::clock_source::duration_ms;
use farestream_ingest::config::Config;
use farestream_ingest::issuer_keys::LiveIssuerKeys;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen_addr: SocketAddr,
    pub request_bytes_max: usize,
    pub otp_validity: Duration,
    pub otp_attempts_max: u32,
    pub otp_resend_min: Duration,
    pub otp_sends_per_phone_per_hour_max: u32,
    pub otp_sends_per_client_per_hour_max: u32,
    pub otp_sends_per_minute_max: u32,
    pub otp_wrong_codes_per_phone_per_hour_max: u32,
    /// Where the client's address is read when behind a proxy; `None`:
    /// the TCP peer.
    pub client_address_header: Option<String>,
    pub token_validity: Duration,
    pub account_charges_max: usize,
    /// The longest credential window issued (`ride_code.credential_validity_secs`).
    pub credential_validity_secs: u32,
}

impl ApiSettings {
    /// `None` when `api.listen_addr` is empty; an address that does not parse is an error.
    pub fn from_config(config: &Config) -> Result<Option<ApiSettings>, farestream_ingest::config::ConfigError> {
        let api = &config.api;
        if api.listen_addr.is_empty() {
            return Ok(None);
        }
        let listen_addr = api.listen_addr.parse().map_err(|e| {
            farestream_ingest::config::ConfigError::Invalid(format!("api.listen_addr = {:?}: {e}", api.listen_addr))
        })?;
        Ok(Some(ApiSettings {
            listen_addr,
            request_bytes_max: api.request_bytes_max,
            otp_validity: Duration::from_secs(u64::from(api.otp_validity_secs)),
            otp_attempts_max: api.otp_attempts_max,
            otp_resend_min: Duration::from_secs(u64::from(api.otp_resend_secs_min)),
            otp_sends_per_phone_per_hour_max: api.otp_sends_per_phone_per_hour_max,
            otp_sends_per_client_per_hour_max: api.otp_sends_per_client_per_hour_max,
            otp_sends_per_minute_max: api.otp_sends_per_minute_max,
            otp_wrong_codes_per_phone_per_hour_max: api.otp_wrong_codes_per_phone_per_hour_max,
            client_address_header: Some(api.client_address_header.to_ascii_lowercase()).filter(|h| !h.is_empty()),
            token_validity: Duration::from_secs(u64::from(api.token_validity_secs)),
            account_charges_max: api.account_charges_max,
            credential_validity_secs: config.ride_code.credential_validity_secs,
        }))
    }
}

impl ApiSettings {
    /// The one-time codes' limits, in the units the store counts in.
    pub fn otp_limits(&self) -> sessions::OtpLimits {
        sessions::OtpLimits {
            validity_ms: duration_ms(self.otp_validity),
            resend_min_ms: duration_ms(self.otp_resend_min),
            sends_per_phone_per_hour_max: self.otp_sends_per_phone_per_hour_max,
            sends_per_client_per_hour_max: self.otp_sends_per_client_per_hour_max,
            sends_per_minute_max: self.otp_sends_per_minute_max,
            wrong_per_phone_per_hour_max: self.otp_wrong_codes_per_phone_per_hour_max,
        }
    }
}

/// What every handler shares.
pub struct ApiState {
    pub settings: ApiSettings,
    pub accounts: AccountService,
    /// The issuer keys in force: one signs today's credentials, all are
    /// published for validators.
    pub issuer: LiveIssuerKeys,
}

pub fn router(state: Arc<ApiState>) -> Router {
    let body_max = state.settings.request_bytes_max;
    Router::new()
        .route("/v1/otp", post(register::send_code))
        .route("/v1/register", post(register::register))
        .route("/v1/issuer-keys", get(cards::issuer_keys))
        .route("/v1/cards/{card_id}", get(cards::view))
        .route("/v1/cards/{card_id}/activate", post(cards::activate))
        .route("/v1/cards/{card_id}/keys", post(cards::keys))
        .route("/v1/cards/{card_id}/code", post(cards::online_code))
        .route("/v1/cards/{card_id}/arrears/pay", post(cards::pay_arrears))
        .route("/v1/cards/{card_id}/refund", post(cards::refund))
        .route("/v1/cards/{card_id}/sessions", get(logins::list).delete(logins::end_others))
        .route("/v1/cards/{card_id}/sessions/{session_id}", delete(logins::end_one))
        .fallback(|| async { ApiError::NoSuchCall })
        .method_not_allowed_fallback(|| async { ApiError::NoSuchCall })
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(state)
}

/// Binds `settings.listen_addr` and serves until stopped.
pub async fn start(state: ApiState) -> std::io::Result<HttpHandle> {
    let listen = state.settings.listen_addr;
    farestream_ingest::http_serve::serve(listen, router(Arc::new(state)), "account API").await
}
