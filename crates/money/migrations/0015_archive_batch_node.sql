-- Version 15: servers sharing one store (PostgreSQL) each write the
-- charges archive under their own data directory, so a batch names the
-- node that claimed it (its data dir's NODE_ID): after a crash a node
-- finishes its own unfinished batch, never another's that is being
-- written. A batch claimed before this version has none, and is finished
-- by whichever node looks first (there was one).
ALTER TABLE charges ADD COLUMN archive_node TEXT;
