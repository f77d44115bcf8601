-- Version 14: charges stored in the order they are written. Keyed by
-- their id (16 random bytes), every new charge landed on a random page
-- of the table and of each of its indexes (`charges_due` and
-- `charges_by_archive_batch` end in the key too): five random pages
-- written per ride with the tap, the most of what pricing a tap cost
-- (`cargo bench --bench stages -- pricing`). With a sequence as the row's
-- key, a new charge is appended to the table and to those two indexes;
-- only the id's own index and `charges_by_rider_day` take a random page.
-- The id stays the charge's identity (unique, the gateway's idempotency
-- key); `charge_seq` is only where the row lies and is never shown.
-- SQLite cannot change a table's key in place: the table is rebuilt,
-- every row and index kept, the old rows in the order they were written.
CREATE TABLE charges_v14 (
    charge_seq       INTEGER PRIMARY KEY,
    charge_id        BLOB    NOT NULL UNIQUE CHECK (length(charge_id) = 16),
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
);
INSERT INTO charges_v14 (charge_id, card_id, service_date, kind, ride_key, amount_cents, currency, scan_ids,
                         created_at, outcome, attempts, next_attempt_at, lease_until, decided_at, gateway_txn_id,
                         last_error, archive_batch, archived_at, claims, first_attempt_at)
    SELECT charge_id, card_id, service_date, kind, ride_key, amount_cents, currency, scan_ids,
           created_at, outcome, attempts, next_attempt_at, lease_until, decided_at, gateway_txn_id,
           last_error, archive_batch, archived_at, claims, first_attempt_at
    FROM charges ORDER BY created_at, charge_id;
DROP TABLE charges;
ALTER TABLE charges_v14 RENAME TO charges;
CREATE INDEX charges_by_rider_day ON charges (card_id, service_date);
CREATE INDEX charges_due ON charges (outcome, next_attempt_at);
CREATE INDEX charges_by_archive_batch ON charges (archive_batch);
