-- Version 17, as crates/money/migrations/0017_archive_claimed_at.sql:
-- when a charges-archive batch was last claimed (Unix ms).
ALTER TABLE charges ADD COLUMN archive_claimed_at BIGINT;
