-- Version 5: an account's own payments (the deposit, arrears paid, the
-- deposit refunded) are written down before they go out, each under the
-- idempotency key of its attempt (`KIND-CARD-N`). An attempt whose answer
-- was lost stays `unknown` and is sent again under the same key before any
-- new attempt is made; a final answer (succeeded, declined, refused) makes
-- the next attempt a new key. Before, keys were derived from the history
-- and the amount, so a lost answer followed by a new decline sent a second
-- payment under a new key, and nothing recorded the first.
CREATE TABLE account_payments (
    payment_key    TEXT    PRIMARY KEY,
    card_id        INTEGER NOT NULL REFERENCES accounts (card_id),
    kind           TEXT    NOT NULL CHECK (kind IN ('deposit', 'arrears', 'refund')),
    attempt        INTEGER NOT NULL CHECK (attempt >= 1),
    amount_cents   INTEGER NOT NULL CHECK (amount_cents > 0),
    agreement_id   TEXT    NOT NULL,
    outcome        TEXT    NOT NULL CHECK (outcome IN ('unknown', 'succeeded', 'declined', 'refused')),
    created_at     INTEGER NOT NULL,
    decided_at     INTEGER,
    gateway_txn_id TEXT,
    last_error     TEXT,
    UNIQUE (card_id, kind, attempt)
) WITHOUT ROWID;
-- At most one attempt per card and kind is undecided.
CREATE UNIQUE INDEX account_payments_one_unknown ON account_payments (card_id, kind) WHERE outcome = 'unknown';

-- The end of the newest credential issued to the card (Unix ms): the last
-- moment its rider can still ride without new keys.
ALTER TABLE accounts ADD COLUMN keys_valid_until INTEGER;
-- When a pending refund may be paid: no ride can arrive after it (the
-- newest credential's end, plus the accepted lateness of uploads).
ALTER TABLE accounts ADD COLUMN refund_due_at INTEGER;
-- Cards that may hold keys issued before the end was recorded: assume the
-- longest credential the config allows (7 days) from now. (A refund asked
-- for before this version has no due time; the code waits as long for it.)
UPDATE accounts SET keys_valid_until = CAST(strftime('%s', 'now') AS INTEGER) * 1000 + 604800000
    WHERE state IN ('active', 'in_arrears');

-- From now on a refund request denies the card at once (until it closes,
-- when no credential of it is valid any more): put the cards already
-- pending on the list.
INSERT INTO deny_list_changes (card_id, denied, at)
    SELECT card_id, 1, CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM accounts
    WHERE state = 'refund_pending' AND arrears_cents = 0 ORDER BY card_id;
