-- Version 3: decided charges go to the Parquet charges archive in
-- batches. A batch number is given to its charges before its files are
-- written, so a crash mid-batch rewrites the same files under the same
-- names; archived_at is set once they are durable.
ALTER TABLE charges ADD COLUMN archive_batch INTEGER;
ALTER TABLE charges ADD COLUMN archived_at INTEGER;
CREATE INDEX charges_by_archive_batch ON charges (archive_batch);
