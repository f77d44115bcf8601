-- Version 2: what the account API keeps. Codes and tokens are stored as
-- SHA-256 hashes only: a copy of this file signs nobody in.

-- One pending one-time code per phone number.
CREATE TABLE otp_challenges (
    phone      TEXT    PRIMARY KEY,
    code_hash  BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Bearer tokens: each speaks for one card.
CREATE TABLE tokens (
    token_hash BLOB    PRIMARY KEY,
    card_id    INTEGER NOT NULL REFERENCES accounts (card_id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX tokens_by_card ON tokens (card_id);
