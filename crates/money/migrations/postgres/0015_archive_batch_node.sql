-- Version 15, as crates/money/migrations/0015_archive_batch_node.sql: the
-- node that claimed a charges-archive batch.
ALTER TABLE charges ADD COLUMN archive_node TEXT;
