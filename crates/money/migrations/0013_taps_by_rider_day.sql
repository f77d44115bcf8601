-- Taps are stored in rider-day order: the pricer reads a rider-day's taps
-- (and a neighbouring day's edge taps) for every day it prices, and with
-- `scan_id` as the key each of those reads was an index seek plus one
-- table seek per tap, and each insert wrote two b-trees. A tap's
-- (card_id, service_date) is fixed by its log row, so the new key still
-- holds a scan once: a replayed row carries the same three values. (What
-- keeps one scan from being logged twice as a ride is the ingest dedup,
-- not this table.) The copy runs once, in the migration's transaction,
-- and needs the table's size again on disk while it runs.
CREATE TABLE taps_by_rider_day_order (
    card_id      INTEGER NOT NULL,
    service_date INTEGER NOT NULL,
    scan_id      BLOB    NOT NULL CHECK (length(scan_id) = 16),
    scanned_at   INTEGER NOT NULL,
    tap_kind     TEXT    NOT NULL CHECK (tap_kind IN ('entry', 'exit', 'single')),
    route_id     TEXT    NOT NULL,
    stop_id      TEXT    NOT NULL,
    PRIMARY KEY (card_id, service_date, scan_id)
) WITHOUT ROWID;

INSERT INTO taps_by_rider_day_order (card_id, service_date, scan_id, scanned_at, tap_kind, route_id, stop_id)
SELECT card_id, service_date, scan_id, scanned_at, tap_kind, route_id, stop_id FROM taps;

DROP TABLE taps;
ALTER TABLE taps_by_rider_day_order RENAME TO taps;
