-- Version 16, as crates/money/migrations/0016_cursor_holder.sql: a log
-- cursor's holder and the record it was last moved past.
ALTER TABLE log_cursors ADD COLUMN holder BYTEA;
ALTER TABLE log_cursors ADD COLUMN last_record_lsn BIGINT;
ALTER TABLE log_cursors ADD COLUMN last_record_digest BYTEA;
