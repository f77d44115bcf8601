//! One-time codes and bearer tokens, in the money store. Only SHA-256
//! hashes are kept; a code is spent by its first right answer and void
//! after `otp_attempts_max` wrong ones.
//!
//! Guessing is limited per phone over time, not per code: every code sent
//! and every wrong code is an `otp_events` row (sends per client and in
//! total are counted per clock hour and minute in `otp_counters`), and a
//! phone with
//! `wrong_per_phone_per_hour_max` wrong codes in the last hour has no
//! code checked (not even the right one) and none sent until the hour has
//! passed. Sends are limited per phone, per client and in total, and each
//! check-and-send is one write transaction, so concurrent requests cannot
//! all pass the same check.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use crate::accounts::AccountError;
use crate::codec::{card_from_sql, card_to_sql};
use crate::db::{Db, Lock, Row, Value};
use crate::store::StoreError;
use farestream_core::clock::UnixMillis;

/// How a code check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CodeCheck {
    Right,
    Wrong,
    /// None asked for, expired, or out of attempts: ask for a new one.
    NoneValid,
    /// Too many wrong codes for this phone lately: nothing is checked.
    Locked,
}

/// What limits one-time codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtpLimits {
    pub validity_ms: i64,
    pub resend_min_ms: i64,
    pub sends_per_phone_per_hour_max: u32,
    pub sends_per_client_per_hour_max: u32,
    pub sends_per_minute_max: u32,
    pub wrong_per_phone_per_hour_max: u32,
}

/// Why no code was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendRefused {
    TooSoon,
    PhoneHourly,
    PhoneLocked,
    ClientHourly,
    Total,
}

impl SendRefused {
    /// Its name in `farestream_otp_refused_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            SendRefused::TooSoon => "too_soon",
            SendRefused::PhoneHourly => "phone_hourly",
            SendRefused::PhoneLocked => "phone_locked",
            SendRefused::ClientHourly => "client_hourly",
            SendRefused::Total => "total",
        }
    }

    pub(super) fn message(self, limits: &OtpLimits) -> String {
        match self {
            SendRefused::TooSoon => format!("a code was sent less than {} s ago", limits.resend_min_ms / 1_000),
            SendRefused::PhoneHourly => {
                format!("{} codes were sent to this phone in the last hour", limits.sends_per_phone_per_hour_max)
            }
            SendRefused::PhoneLocked => "too many wrong codes for this phone: try again in an hour".into(),
            SendRefused::ClientHourly => {
                format!(
                    "{} codes were asked for from this client in the last hour",
                    limits.sends_per_client_per_hour_max
                )
            }
            SendRefused::Total => "too many codes are being sent right now: try again in a minute".into(),
        }
    }
}

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| StoreError::Task("the OS random source failed".into()))?;
    Ok(bytes)
}

fn hash(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.finish().as_ref().to_vec()
}

/// Checks every limit and, if none refuses, records the send and makes a
/// new six-digit code for `phone` (replacing any open one), in the
/// caller's one write transaction.
pub(super) fn send_code(
    tx: &mut dyn Db,
    phone: &str,
    client: &str,
    now: UnixMillis,
    limits: &OtpLimits,
) -> Result<Result<String, SendRefused>, AccountError> {
    tx.lock(Lock::Otp)?;
    tx.execute("DELETE FROM otp_events WHERE at <= ?1", &[Value::Int(now.saturating_sub(HOUR_MS))])?;
    tx.execute("DELETE FROM otp_counters WHERE window_start < ?1", &[Value::Int(window(now, HOUR_MS))])?;
    let last_sent = tx
        .query_opt("SELECT max(at) FROM otp_events WHERE phone = ?1 AND kind = 'sent'", &[Value::Text(phone)])?
        .map(|r| r.opt_int(0))
        .transpose()?
        .flatten();
    let refused = if last_sent.is_some_and(|at| now.saturating_sub(at) < limits.resend_min_ms) {
        Some(SendRefused::TooSoon)
    } else if phone_locked(tx, phone, now, limits)? {
        Some(SendRefused::PhoneLocked)
    } else if phone_events(tx, phone, "sent", now.saturating_sub(HOUR_MS))? >= limits.sends_per_phone_per_hour_max {
        Some(SendRefused::PhoneHourly)
    } else if counted(tx, "client_hour", client, window(now, HOUR_MS))? >= limits.sends_per_client_per_hour_max {
        Some(SendRefused::ClientHourly)
    } else if counted(tx, "all_minute", "", window(now, MINUTE_MS))? >= limits.sends_per_minute_max {
        Some(SendRefused::Total)
    } else {
        None
    };
    if let Some(refused) = refused {
        return Ok(Err(refused));
    }
    record(tx, phone, client, "sent", now)?;
    count(tx, "client_hour", client, window(now, HOUR_MS))?;
    count(tx, "all_minute", "", window(now, MINUTE_MS))?;
    Ok(Ok(new_challenge(tx, phone, now, limits.validity_ms)?))
}

/// Whether the phone had too many wrong codes in the last hour.
fn phone_locked(db: &mut dyn Db, phone: &str, now: UnixMillis, limits: &OtpLimits) -> Result<bool, AccountError> {
    Ok(phone_events(db, phone, "wrong", now.saturating_sub(HOUR_MS))? >= limits.wrong_per_phone_per_hour_max)
}

/// A phone's events of `kind` after `since` (a handful: a phone's sends
/// and wrong codes are capped low).
fn phone_events(db: &mut dyn Db, who: &str, kind: &str, since: UnixMillis) -> Result<u32, AccountError> {
    let row = db.query_opt(
        "SELECT count(*) FROM otp_events WHERE phone = ?1 AND kind = ?2 AND at > ?3",
        &[Value::Text(who), Value::Text(kind), Value::Int(since)],
    )?;
    let count = row.map(|r| r.int(0)).transpose()?.unwrap_or(0);
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// The start of the clock window of `length_ms` that holds `now`.
fn window(now: UnixMillis, length_ms: i64) -> UnixMillis {
    now.div_euclid(length_ms).saturating_mul(length_ms)
}

/// Codes counted for `key` in the window starting at `start`.
fn counted(db: &mut dyn Db, scope: &str, key: &str, start: UnixMillis) -> Result<u32, AccountError> {
    let sent = db
        .query_opt(
            "SELECT sent FROM otp_counters WHERE scope = ?1 AND key = ?2 AND window_start = ?3",
            &[Value::Text(scope), Value::Text(key), Value::Int(start)],
        )?
        .map(|r| r.int(0))
        .transpose()?;
    Ok(u32::try_from(sent.unwrap_or(0)).unwrap_or(u32::MAX))
}

fn count(tx: &mut dyn Db, scope: &str, key: &str, start: UnixMillis) -> Result<(), AccountError> {
    tx.execute(
        "INSERT INTO otp_counters (scope, key, window_start, sent) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (scope, key, window_start) DO UPDATE SET sent = otp_counters.sent + 1",
        &[Value::Text(scope), Value::Text(key), Value::Int(start)],
    )?;
    Ok(())
}

fn record(tx: &mut dyn Db, phone: &str, client: &str, kind: &str, now: UnixMillis) -> Result<(), AccountError> {
    tx.execute(
        "INSERT INTO otp_events (phone, client, kind, at) VALUES (?1, ?2, ?3, ?4)",
        &[Value::Text(phone), Value::Text(client), Value::Text(kind), Value::Int(now)],
    )?;
    Ok(())
}

/// A new six-digit code for `phone`, replacing any open one.
fn new_challenge(tx: &mut dyn Db, phone: &str, now: UnixMillis, valid_ms: i64) -> Result<String, AccountError> {
    let code = format!("{:06}", u32::from_be_bytes(random_bytes::<4>()?) % 1_000_000);
    tx.execute(
        "INSERT INTO otp_challenges (phone, code_hash, created_at, expires_at, attempts) VALUES (?1, ?2, ?3, ?4, 0)
         ON CONFLICT (phone) DO UPDATE SET code_hash = excluded.code_hash, created_at = excluded.created_at,
                                           expires_at = excluded.expires_at, attempts = 0",
        &[
            Value::Text(phone),
            Value::Bytes(&hash(&[phone.as_bytes(), code.as_bytes()])),
            Value::Int(now),
            Value::Int(now.saturating_add(valid_ms)),
        ],
    )?;
    Ok(code)
}

/// Checks `code` against the phone's open challenge; a right one spends
/// it, a wrong one counts against the phone (and `client`) for an hour.
/// A challenge out of attempts stays until it expires: it is void, and
/// the resend limit still sees when it was sent.
pub(super) fn check_code(
    tx: &mut dyn Db,
    (phone, client): (&str, &str),
    code: &str,
    now: UnixMillis,
    (attempts_max, limits): (u32, &OtpLimits),
) -> Result<CodeCheck, AccountError> {
    tx.lock(Lock::Otp)?;
    if phone_locked(tx, phone, now, limits)? {
        return Ok(CodeCheck::Locked);
    }
    let open = tx.query_opt(
        "SELECT code_hash, expires_at, attempts FROM otp_challenges WHERE phone = ?1",
        &[Value::Text(phone)],
    )?;
    let Some(open) = open else { return Ok(CodeCheck::NoneValid) };
    let (code_hash, expires_at, attempts) = (open.bytes(0)?, open.int(1)?, open.int(2)?);
    if now > expires_at {
        tx.execute("DELETE FROM otp_challenges WHERE phone = ?1", &[Value::Text(phone)])?;
        return Ok(CodeCheck::NoneValid);
    }
    if attempts >= i64::from(attempts_max) {
        return Ok(CodeCheck::NoneValid);
    }
    // Hashes are compared, not codes: how long the comparison takes says
    // nothing about the code, and attempts are capped anyway.
    let right = code_hash == hash(&[phone.as_bytes(), code.as_bytes()]);
    if right {
        tx.execute("DELETE FROM otp_challenges WHERE phone = ?1", &[Value::Text(phone)])?;
        return Ok(CodeCheck::Right);
    }
    tx.execute("UPDATE otp_challenges SET attempts = attempts + 1 WHERE phone = ?1", &[Value::Text(phone)])?;
    record(tx, phone, client, "wrong", now)?;
    Ok(CodeCheck::Wrong)
}

/// A new bearer token for `card_id`.
pub(super) fn new_token(tx: &mut dyn Db, card_id: u64, now: UnixMillis, valid_ms: i64) -> Result<String, AccountError> {
    let token = hex::encode(random_bytes::<32>()?);
    tx.execute(
        "INSERT INTO tokens (token_hash, card_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        &[
            Value::Bytes(&hash(&[token.as_bytes()])),
            Value::Int(card_to_sql(card_id)),
            Value::Int(now),
            Value::Int(now.saturating_add(valid_ms)),
        ],
    )?;
    Ok(token)
}

/// The card a token speaks for and its session's id, if it is known and
/// not expired.
pub(super) fn token_session(
    db: &mut dyn Db,
    token: &str,
    now: UnixMillis,
) -> Result<Option<(u64, String)>, AccountError> {
    let token_hash = hash(&[token.as_bytes()]);
    let card = db
        .query_opt(
            "SELECT card_id FROM tokens WHERE token_hash = ?1 AND expires_at >= ?2",
            &[Value::Bytes(&token_hash), Value::Int(now)],
        )?
        .map(|r| r.int(0))
        .transpose()?;
    Ok(card.map(|card| (card_from_sql(card), session_id(&token_hash))))
}

/// A signed-in session as its rider sees it: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Session {
    pub session_id: String,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// Sessions listed at most (the newest); a phone signs in only as often as
/// its one-time codes allow.
pub(super) const SESSIONS_LISTED_MAX: usize = 100;

/// A token's public name: the first 8 bytes of its hash, in hex. It names
/// the session in lists and revocations; it cannot be used as the token.
fn session_id(token_hash: &[u8]) -> String {
    hex::encode(&token_hash[..8.min(token_hash.len())])
}

/// `card_id`'s sessions that have not expired at `now`, newest first.
pub(super) fn card_sessions(db: &mut dyn Db, card_id: u64, now: UnixMillis) -> Result<Vec<Session>, AccountError> {
    let rows = db.query(
        "SELECT token_hash, created_at, expires_at FROM tokens WHERE card_id = ?1 AND expires_at >= ?2 \
         ORDER BY created_at DESC, token_hash LIMIT ?3",
        &[Value::Int(card_to_sql(card_id)), Value::Int(now), Value::Int(SESSIONS_LISTED_MAX as i64)],
    )?;
    let session = |r: &Row| -> Result<Session, StoreError> {
        Ok(Session { session_id: session_id(r.bytes(0)?), created_at: r.int(1)?, expires_at: r.int(2)? })
    };
    Ok(rows.iter().map(session).collect::<Result<_, _>>()?)
}

/// Which of a card's sessions to end.
pub(super) enum EndSessions<'a> {
    /// The one with this id.
    One(&'a str),
    /// Every one but this (the caller's own).
    AllBut(&'a str),
}

/// Ends `card_id`'s sessions as `which` says; how many ended. Another
/// card's session is never touched, whatever its id.
pub(super) fn end_sessions(db: &mut dyn Db, card_id: u64, which: EndSessions<'_>) -> Result<usize, AccountError> {
    let (id, keep) = match which {
        EndSessions::One(id) => (id, false),
        EndSessions::AllBut(id) => (id, true),
    };
    let rows = db.query("SELECT token_hash FROM tokens WHERE card_id = ?1", &[Value::Int(card_to_sql(card_id))])?;
    let mut ended = 0;
    for row in &rows {
        let token_hash = row.bytes(0)?;
        if (session_id(token_hash) == id) != keep {
            ended += db.execute("DELETE FROM tokens WHERE token_hash = ?1", &[Value::Bytes(token_hash)])?;
        }
    }
    Ok(usize::try_from(ended).unwrap_or(usize::MAX))
}
