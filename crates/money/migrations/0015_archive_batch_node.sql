-- Version 15: servers sharing one store (PostgreSQL) each write the
-- charges archive under their own data directory, so a batch names the
-- node that claimed it (its data dir's NODE_ID): after a crash a node
-- finishes its own unfinished batch, never another's that is being
-- written. A batch claimed before this version has none, and is finished
-- by whichever node looks first (there was one).
ALTER TABLE charges ADD COLUMN archive_node TEXT;

-- And each pricer's promise, with its cursor: every ride its server
-- received before this moment is priced. A refund goes only once every
-- server sharing the store has priced past the moment it is due, so no
-- ride a second server holds unpriced is charged after the deposit went
-- back. NULL: the server has not said yet, and refunds wait for it.
ALTER TABLE log_cursors ADD COLUMN priced_received_before INTEGER;
