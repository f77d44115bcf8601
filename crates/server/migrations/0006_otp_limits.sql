-- Version 6: one-time codes limited per phone, per client and in total,
-- over time rather than per code. Before, a code whose wrong tries were
-- spent was deleted, so the resend limit found no recent code and sent a
-- new one at once: about 1 000 guesses a second at one phone's account.
-- Every code sent and every wrong code is an event here; events older
-- than the longest window (an hour) are pruned as new ones come.
CREATE TABLE otp_events (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    phone  TEXT    NOT NULL,
    client TEXT    NOT NULL,
    kind   TEXT    NOT NULL CHECK (kind IN ('sent', 'wrong')),
    at     INTEGER NOT NULL
);
CREATE INDEX otp_events_by_phone ON otp_events (phone, kind, at);
CREATE INDEX otp_events_by_client ON otp_events (client, kind, at);
CREATE INDEX otp_events_by_time ON otp_events (at);
