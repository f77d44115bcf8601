-- Version 4: a charge's attempts count requests that went out, and its
-- retry budget runs from the first of them.
-- `claims` fences the outbox's leases: each claim takes the next number,
-- and only the claim holding the latest may write an outcome. (Before,
-- `attempts` did both, so every claimed charge a crash cut short counted
-- an attempt never sent, and charges the gateway had paid turned `failed`.)
-- `first_attempt_at` is wall-clock, as `next_attempt_at` is.
ALTER TABLE charges ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
ALTER TABLE charges ADD COLUMN first_attempt_at INTEGER;
UPDATE charges SET claims = attempts;
-- A charge already tried keeps its budget running from when it was made.
UPDATE charges SET first_attempt_at = created_at WHERE attempts > 0;
