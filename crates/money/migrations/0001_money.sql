-- farestream's money store, version 1. Amounts are integer minor units
-- (cents, fen); times are Unix milliseconds; service dates are days since
-- 1970-01-01; ids are 16 raw bytes. Append-only where the text says so.

-- A rider's account: the card, who holds it, the debit agreement, the
-- deposit, the state, and what is owed.
CREATE TABLE accounts (
    card_id          INTEGER PRIMARY KEY,
    phone            TEXT    NOT NULL UNIQUE,
    payment_user_id  TEXT,
    agreement_id     TEXT UNIQUE,
    deposit_cents    INTEGER NOT NULL DEFAULT 0 CHECK (deposit_cents >= 0),
    state            TEXT    NOT NULL CHECK (state IN
                         ('registered', 'active', 'in_arrears', 'refund_pending', 'closed')),
    arrears_cents    INTEGER NOT NULL DEFAULT 0 CHECK (arrears_cents >= 0),
    refund_requested_at INTEGER,
    created_at       INTEGER NOT NULL
);

-- Every change to an account, with its cause. Append-only.
CREATE TABLE account_history (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    card_id      INTEGER NOT NULL REFERENCES accounts (card_id),
    at           INTEGER NOT NULL,
    event        TEXT    NOT NULL,
    from_state   TEXT,
    to_state     TEXT    NOT NULL,
    amount_cents INTEGER NOT NULL DEFAULT 0,
    cause        TEXT    NOT NULL
);
CREATE INDEX account_history_by_card ON account_history (card_id, seq);

-- The taps that are rides (signatures valid, gate opened), as pricing
-- input: one row per scan, whatever the log replays.
CREATE TABLE taps (
    scan_id      BLOB    PRIMARY KEY CHECK (length(scan_id) = 16),
    card_id      INTEGER NOT NULL,
    service_date INTEGER NOT NULL,
    scanned_at   INTEGER NOT NULL,
    tap_kind     TEXT    NOT NULL CHECK (tap_kind IN ('entry', 'exit', 'single')),
    route_id     TEXT    NOT NULL,
    stop_id      TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX taps_by_rider_day ON taps (card_id, service_date);

-- The outbox: every charge, written before its first attempt. Its id is
-- the payment gateway's idempotency key. A row is never deleted; only its
-- outcome, attempt count and schedule change. `next_attempt_at` and
-- `lease_until` are wall-clock times (the dispatcher's); the others are the
-- server's clock.
CREATE TABLE charges (
    charge_id       BLOB    PRIMARY KEY CHECK (length(charge_id) = 16),
    card_id         INTEGER NOT NULL,
    service_date    INTEGER NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('ride', 'max_fare', 'adjustment')),
    ride_key        BLOB,
    amount_cents    INTEGER NOT NULL,
    currency        TEXT    NOT NULL,
    scan_ids        BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    outcome         TEXT    NOT NULL CHECK (outcome IN
                        ('pending', 'succeeded', 'declined', 'failed', 'nothing_due')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER NOT NULL DEFAULT 0,
    decided_at      INTEGER,
    gateway_txn_id  TEXT,
    last_error      TEXT
) WITHOUT ROWID;
CREATE INDEX charges_by_rider_day ON charges (card_id, service_date);
CREATE INDEX charges_due ON charges (outcome, next_attempt_at);

-- Rider-days with an entry whose exit may still come: priced again when
-- the exit window closes.
CREATE TABLE open_entries (
    card_id      INTEGER NOT NULL,
    service_date INTEGER NOT NULL,
    closes_at    INTEGER NOT NULL,
    PRIMARY KEY (card_id, service_date)
) WITHOUT ROWID;
CREATE INDEX open_entries_by_close ON open_entries (closes_at);

-- How far each reader of the write-ahead log has gone.
CREATE TABLE log_cursors (
    reader TEXT    PRIMARY KEY,
    lsn    INTEGER NOT NULL CHECK (lsn >= 0)
);

-- The deny list: a card is on it while its account owes arrears. Every
-- change gets the next version. Append-only.
CREATE TABLE deny_list_changes (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    card_id INTEGER NOT NULL,
    denied  INTEGER NOT NULL CHECK (denied IN (0, 1)),
    at      INTEGER NOT NULL
);
