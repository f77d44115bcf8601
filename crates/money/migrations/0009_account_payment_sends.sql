-- How many times an account payment's attempt went out. A refusal (4xx)
-- of an attempt that went out before with no answer does not prove the
-- first request was not applied, so it does not decide the attempt: only
-- a refusal of its first send does. An attempt still undecided from
-- before this column may have gone out once.
ALTER TABLE account_payments ADD COLUMN sends INTEGER NOT NULL DEFAULT 0 CHECK (sends >= 0);
UPDATE account_payments SET sends = 1 WHERE outcome = 'unknown';
