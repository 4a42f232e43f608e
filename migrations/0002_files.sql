-- Uploaded files. A row exists from the moment an upload starts; `complete` turns 1 only after
-- the bytes are fsynced, verified and renamed into place. Only resumable uploads (a client-chosen
-- `file_id`) keep an incomplete row after their call ends; the sweep removes them once expired.
CREATE TABLE files (
    file_id             TEXT    PRIMARY KEY NOT NULL,
    filename            TEXT    NOT NULL,
    content_type        TEXT    NOT NULL,
    total_size          INTEGER NOT NULL CHECK (total_size >= 0),
    -- Declared by the client while incomplete (may be ''); the verified SHA-256 once complete.
    checksum            TEXT    NOT NULL,
    resumable           INTEGER NOT NULL,
    -- Durable bytes of an interrupted upload; total_size once complete.
    bytes_received      INTEGER NOT NULL DEFAULT 0,
    complete            INTEGER NOT NULL DEFAULT 0,
    created_at_micros   INTEGER NOT NULL,
    updated_at_micros   INTEGER NOT NULL
);

CREATE INDEX files_incomplete ON files (complete, updated_at_micros);
