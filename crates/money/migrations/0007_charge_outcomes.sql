-- Version 7: two outcomes decided before a charge is ever sent.
-- `no_account`: the card has no account (a card the account API never
-- issued), so nobody can be charged; before, such charges were refused and
-- retried every ten minutes for ever. `netted`: a credit set against the
-- card's arrears instead of paid out to a rider who owes.
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt,
-- every row and index kept.
CREATE TABLE charges_v7 (
    charge_id        BLOB    PRIMARY KEY CHECK (length(charge_id) = 16),
    card_id          INTEGER NOT NULL,
    service_date     INTEGER NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('ride', 'max_fare', 'adjustment')),
    ride_key         BLOB,
    amount_cents     INTEGER NOT NULL,
    currency         TEXT    NOT NULL,
    scan_ids         BLOB    NOT NULL,
    created_at       INTEGER NOT NULL,
    outcome          TEXT    NOT NULL CHECK (outcome IN
                         ('pending', 'succeeded', 'declined', 'failed', 'nothing_due', 'no_account', 'netted')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_until      INTEGER NOT NULL DEFAULT 0,
    decided_at       INTEGER,
    gateway_txn_id   TEXT,
    last_error       TEXT,
    archive_batch    INTEGER,
    archived_at      INTEGER,
    claims           INTEGER NOT NULL DEFAULT 0,
    first_attempt_at INTEGER
) WITHOUT ROWID;
INSERT INTO charges_v7 (charge_id, card_id, service_date, kind, ride_key, amount_cents, currency, scan_ids,
                        created_at, outcome, attempts, next_attempt_at, lease_until, decided_at, gateway_txn_id,
                        last_error, archive_batch, archived_at, claims, first_attempt_at)
    SELECT charge_id, card_id, service_date, kind, ride_key, amount_cents, currency, scan_ids,
           created_at, outcome, attempts, next_attempt_at, lease_until, decided_at, gateway_txn_id,
           last_error, archive_batch, archived_at, claims, first_attempt_at
    FROM charges;
DROP TABLE charges;
ALTER TABLE charges_v7 RENAME TO charges;
CREATE INDEX charges_by_rider_day ON charges (card_id, service_date);
CREATE INDEX charges_due ON charges (outcome, next_attempt_at);
CREATE INDEX charges_by_archive_batch ON charges (archive_batch);
