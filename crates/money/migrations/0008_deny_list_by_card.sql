-- Version 8: the deny list read by card. Every change of an account's
-- state or arrears checks that the card's newest deny-list change agrees
-- with what the account owes (a card owes if and only if it is on the
-- list), before and after the change; this keeps that read to an index
-- seek instead of a scan of the whole append-only history.
CREATE INDEX deny_list_changes_by_card ON deny_list_changes (card_id, version);
