-- The one log under every durable stream: a user's events, a user's notifications, a chat room,
-- a collaboration document. Each (kind, stream_key) is an append-only log with contiguous
-- sequences from 1. `payload` is the record's protobuf body; the server-assigned fields
-- (id, sequence, timestamp) live in their own columns.
--
-- WITHOUT ROWID clusters each stream's records together in sequence order: an append touches the
-- end of its stream's range and a replay is one sequential range scan, with no second lookup
-- per row.
CREATE TABLE log_records (
    kind       TEXT    NOT NULL,
    stream_key TEXT    NOT NULL,
    sequence   INTEGER NOT NULL CHECK (sequence > 0),
    id         TEXT    NOT NULL,
    ts_micros  INTEGER NOT NULL,
    payload    BLOB    NOT NULL,
    PRIMARY KEY (kind, stream_key, sequence)
) WITHOUT ROWID;

-- Idempotency: an id is unique within a kind, so a retried append finds its first copy.
CREATE UNIQUE INDEX log_records_id ON log_records (kind, id);
