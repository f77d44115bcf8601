-- Version 15, as crates/money/migrations/0015_archive_batch_node.sql: the
-- node that claimed a charges-archive batch.
ALTER TABLE charges ADD COLUMN archive_node TEXT;

-- And each pricer's promise, with its cursor: every ride its server
-- received before this moment is priced. A refund goes only once every
-- server sharing the store has priced past the moment it is due, so no
-- ride a second server holds unpriced is charged after the deposit went
-- back. NULL: the server has not said yet, and refunds wait for it.
ALTER TABLE log_cursors ADD COLUMN priced_received_before BIGINT;
