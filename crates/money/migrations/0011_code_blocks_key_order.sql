-- Terminal keys are handed out in the order of their hand-out moments, not
-- of their ids: an emergency rotation on one day takes a higher id than
-- the next day's key, made a day ahead. A card's blocks are counted under
-- the key it got last, and keys are compared by (handed out from, id).
ALTER TABLE accounts ADD COLUMN code_blocks_key_handed_out_from INTEGER;
