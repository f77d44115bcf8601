//! A card's signed-in sessions: a rider who signs in on a new phone lists
//! the older ones and ends them (a lost phone), or ends the one in hand
//! (signing out). A session is named by its id, never by its token.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::cards::authorized_session;
use super::sessions::{EndSessions, card_sessions, end_sessions};
use super::{ApiError, ApiState};

/// `current` in a path: the session whose token made the call.
const CURRENT_SESSION: &str = "current";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SessionView {
    pub session_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The session whose token made this call.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SessionList {
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Ended {
    pub ended: usize,
}

/// `GET /v1/cards/{card_id}/sessions`: the card's live sessions, newest first.
pub(super) async fn list(
    State(api): State<Arc<ApiState>>,
    Path(card): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SessionList>, ApiError> {
    let (card_id, current) = authorized_session(&api, &headers, &card).await?;
    let now = api.accounts.clock.now_ms();
    let sessions = api.accounts.read(move |conn| card_sessions(conn, card_id, now)).await?;
    let sessions = sessions
        .into_iter()
        .map(|s| SessionView {
            current: s.session_id == current,
            session_id: s.session_id,
            created_at_ms: s.created_at,
            expires_at_ms: s.expires_at,
        })
        .collect();
    Ok(Json(SessionList { sessions }))
}

/// `DELETE /v1/cards/{card_id}/sessions/{session_id}`: ends one session
/// (`current`: the caller's own, signing out). 404 when the card has no
/// such session.
pub(super) async fn end_one(
    State(api): State<Arc<ApiState>>,
    Path((card, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (card_id, current) = authorized_session(&api, &headers, &card).await?;
    let session = if session == CURRENT_SESSION { current } else { session };
    match api.accounts.write(move |tx| end_sessions(tx, card_id, EndSessions::One(&session))).await? {
        0 => Err(ApiError::NotFound),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// `DELETE /v1/cards/{card_id}/sessions`: ends every session but the
/// caller's, and says how many.
pub(super) async fn end_others(
    State(api): State<Arc<ApiState>>,
    Path(card): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Ended>, ApiError> {
    let (card_id, current) = authorized_session(&api, &headers, &card).await?;
    let ended = api.accounts.write(move |tx| end_sessions(tx, card_id, EndSessions::AllBut(&current))).await?;
    Ok(Json(Ended { ended }))
}
