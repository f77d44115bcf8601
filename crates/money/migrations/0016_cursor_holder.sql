-- Version 16: a log cursor has one holder, and remembers the record it
-- was last moved past. Servers sharing a store (PostgreSQL) key their
-- pricer's cursor by the data dir's NODE_ID; a copied data dir carries
-- the same id. The holder (random bits a pricer takes at its start)
-- makes a pricer whose cursor another took over stop at its next move,
-- while a retry of a move whose answer was lost still matches; the last
-- record's start and digest let a starting server refuse a cursor that
-- another log moved (its records differ from this log's at that place).
-- NULL in all three: a cursor from before this version, vouched for by
-- position alone.
ALTER TABLE log_cursors ADD COLUMN holder BLOB;
ALTER TABLE log_cursors ADD COLUMN last_record_lsn INTEGER;
ALTER TABLE log_cursors ADD COLUMN last_record_digest BLOB;
