-- Sealed ride codes (format version 2) use a card's code counter in their
-- nonce, which must never repeat under one terminal key. Each credential
-- the account API issues gets its own block of counters: the blocks a card
-- was handed under the terminal key handed out with its newest keys.
ALTER TABLE accounts ADD COLUMN code_blocks_terminal_key_id INTEGER CHECK (code_blocks_terminal_key_id BETWEEN 1 AND 65535);
ALTER TABLE accounts ADD COLUMN code_blocks_issued INTEGER NOT NULL DEFAULT 0 CHECK (code_blocks_issued >= 0);
