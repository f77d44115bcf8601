-- Version 17: when a charges-archive batch was last claimed, by the
-- claiming server's clock (Unix ms). In a cluster
-- every node puts a batch's files under the same names into one shared
-- archive, so a batch whose node stopped claiming it (a node that died
-- and never came back) is taken over once its claim is as old as
-- payments.charges_archive_claim_stale_ms. NULL: claimed before this
-- version, and stale at once.
ALTER TABLE charges ADD COLUMN archive_claimed_at INTEGER;
