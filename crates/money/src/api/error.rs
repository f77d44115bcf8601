//! Every way an API call fails, as the status and JSON body a client reads.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::ServiceError;
use crate::accounts::AccountError;

/// The body of every 4xx and 5xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    /// Also another rider's card: 404, so a token cannot probe which cards exist.
    NotFound,
    /// A path or method the API does not have.
    NoSuchCall,
    /// The account's state forbids the call (keys in arrears, say).
    Conflict {
        error: &'static str,
        message: String,
    },
    PaymentDeclined(String),
    TooManyRequests(String),
    /// The payment gateway refused the request itself: final, not the
    /// rider's doing; an operator must look.
    PaymentRefused(String),
    Unavailable(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such card".to_string()),
            ApiError::NoSuchCall => {
                (StatusCode::NOT_FOUND, "no_such_call", "no such path and method: see docs/account-api.md".into())
            }
            ApiError::Conflict { error, message } => (StatusCode::CONFLICT, error, message),
            ApiError::PaymentDeclined(m) => (StatusCode::PAYMENT_REQUIRED, "payment_declined", m),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", m),
            ApiError::PaymentRefused(m) => (StatusCode::BAD_GATEWAY, "payment_refused", m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::Internal(m) => {
                tracing::error!(message = %m, "account API internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server could not finish the call".into())
            }
        };
        crate::money_metrics::api_error(error);
        (status, Json(ErrorBody { error: error.into(), message })).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> ApiError {
        match error {
            ServiceError::Account(AccountError::NotFound(_)) => ApiError::NotFound,
            ServiceError::Account(error @ AccountError::WrongState { .. }) => {
                ApiError::Conflict { error: "wrong_state", message: error.to_string() }
            }
            ServiceError::Account(error @ AccountError::PhoneTaken(_)) => {
                ApiError::Conflict { error: "phone_taken", message: error.to_string() }
            }
            ServiceError::Account(error @ AccountError::CodeBlocksExhausted { .. }) => {
                ApiError::Conflict { error: "keys_refused", message: error.to_string() }
            }
            ServiceError::Account(error @ AccountError::NotYet { .. }) => {
                ApiError::Conflict { error: "not_yet", message: error.to_string() }
            }
            ServiceError::Account(AccountError::Store(error)) => ApiError::Internal(error.to_string()),
            ServiceError::Declined(code) => ApiError::PaymentDeclined(code),
            error @ ServiceError::PaymentInProgress => {
                ApiError::Conflict { error: "payment_in_progress", message: error.to_string() }
            }
            error @ (ServiceError::GatewayUnavailable(_)
            | ServiceError::GatewayRefused(_)
            | ServiceError::NoGateway) => ApiError::Unavailable(error.to_string()),
        }
    }
}
