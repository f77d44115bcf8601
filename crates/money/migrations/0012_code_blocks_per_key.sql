-- A card's counter blocks are counted per terminal key, not only under the
-- key it got last: with one count, a key handed out before the card's last
-- one (a clock that jumped ahead and back) got no block at all, and the
-- rider no keys, until the jumped-to day. The three `code_blocks_*` columns
-- of `accounts` (migrations 10 and 11) are no longer read or written.
--
-- Rows are kept for the card's newest `CODE_BLOCK_KEYS_KEPT` key ids
-- (crates/money/src/accounts.rs); a key older than those gets no block,
-- since its count is gone.
CREATE TABLE code_blocks (
    card_id INTEGER NOT NULL REFERENCES accounts(card_id),
    terminal_key_id INTEGER NOT NULL CHECK (terminal_key_id BETWEEN 1 AND 65535),
    issued INTEGER NOT NULL CHECK (issued >= 1),
    PRIMARY KEY (card_id, terminal_key_id)
) WITHOUT ROWID;

INSERT INTO code_blocks (card_id, terminal_key_id, issued)
SELECT card_id, code_blocks_terminal_key_id, code_blocks_issued
FROM accounts
WHERE code_blocks_terminal_key_id IS NOT NULL AND code_blocks_issued >= 1;
