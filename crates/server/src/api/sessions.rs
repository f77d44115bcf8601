//! One-time codes and bearer tokens, in the money store. Only SHA-256
//! hashes are kept; a code is spent by its first right answer and void
//! after `otp_attempts_max` wrong ones.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::clock::UnixMillis;
use crate::money::accounts::AccountError;
use crate::money::codec::{card_from_sql, card_to_sql};
use crate::money::store::StoreError;

/// How a code check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    Right,
    Wrong,
    /// None asked for, expired, or out of attempts: ask for a new one.
    NoneValid,
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
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

/// When the phone last asked for a code, if a challenge is open.
pub fn last_challenge_at(conn: &Connection, phone: &str) -> Result<Option<UnixMillis>, AccountError> {
    Ok(conn.query_row("SELECT created_at FROM otp_challenges WHERE phone = ?1", [phone], |r| r.get(0)).optional()?)
}

/// A new six-digit code for `phone`, replacing any open one.
pub fn new_challenge(
    tx: &Transaction<'_>,
    phone: &str,
    now: UnixMillis,
    valid_ms: i64,
) -> Result<String, AccountError> {
    let code = format!("{:06}", u32::from_be_bytes(random_bytes::<4>()?) % 1_000_000);
    tx.execute(
        "INSERT INTO otp_challenges (phone, code_hash, created_at, expires_at, attempts) VALUES (?1, ?2, ?3, ?4, 0)
         ON CONFLICT (phone) DO UPDATE SET code_hash = excluded.code_hash, created_at = excluded.created_at,
                                           expires_at = excluded.expires_at, attempts = 0",
        params![phone, hash(&[phone.as_bytes(), code.as_bytes()]), now, now.saturating_add(valid_ms)],
    )?;
    Ok(code)
}

/// Checks `code` against the phone's open challenge; a right one spends it.
pub fn check_code(
    tx: &Transaction<'_>,
    phone: &str,
    code: &str,
    now: UnixMillis,
    attempts_max: u32,
) -> Result<CodeCheck, AccountError> {
    let open: Option<(Vec<u8>, i64, u32)> = tx
        .query_row("SELECT code_hash, expires_at, attempts FROM otp_challenges WHERE phone = ?1", [phone], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((code_hash, expires_at, attempts)) = open else { return Ok(CodeCheck::NoneValid) };
    if now > expires_at || attempts >= attempts_max {
        tx.execute("DELETE FROM otp_challenges WHERE phone = ?1", [phone])?;
        return Ok(CodeCheck::NoneValid);
    }
    // Hashes are compared, not codes: how long the comparison takes says
    // nothing about the code, and attempts are capped anyway.
    let right = code_hash == hash(&[phone.as_bytes(), code.as_bytes()]);
    if right {
        tx.execute("DELETE FROM otp_challenges WHERE phone = ?1", [phone])?;
        return Ok(CodeCheck::Right);
    }
    tx.execute("UPDATE otp_challenges SET attempts = attempts + 1 WHERE phone = ?1", [phone])?;
    Ok(CodeCheck::Wrong)
}

/// A new bearer token for `card_id`.
pub fn new_token(tx: &Transaction<'_>, card_id: u64, now: UnixMillis, valid_ms: i64) -> Result<String, AccountError> {
    let token = hex::encode(random_bytes::<32>()?);
    tx.execute(
        "INSERT INTO tokens (token_hash, card_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![hash(&[token.as_bytes()]), card_to_sql(card_id), now, now.saturating_add(valid_ms)],
    )?;
    Ok(token)
}

/// The card a token speaks for, if it is known and not expired.
pub fn token_card(conn: &Connection, token: &str, now: UnixMillis) -> Result<Option<u64>, AccountError> {
    let card: Option<i64> = conn
        .query_row(
            "SELECT card_id FROM tokens WHERE token_hash = ?1 AND expires_at >= ?2",
            params![hash(&[token.as_bytes()]), now],
            |r| r.get(0),
        )
        .optional()?;
    Ok(card.map(card_from_sql))
}
