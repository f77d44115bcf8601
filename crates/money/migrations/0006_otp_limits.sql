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
CREATE INDEX otp_events_by_time ON otp_events (at);
-- Codes sent per client per clock hour and in total per clock minute, as
-- counters: a city signing up from one address would otherwise count its
-- own thousands of events on every send.
CREATE TABLE otp_counters (
    scope        TEXT    NOT NULL CHECK (scope IN ('client_hour', 'all_minute')),
    key          TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    sent         INTEGER NOT NULL,
    PRIMARY KEY (scope, key, window_start)
) WITHOUT ROWID;
