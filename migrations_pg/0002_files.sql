-- Uploaded files and the storage accounting that follows them, on PostgreSQL, shared by every
-- replica of one deployment. The same tables as SQLite's after migrations/0002_files.sql and
-- 0005_file_owners.sql, with BOOLEAN flags and BIGINT sizes.
--
-- A row exists from the moment an upload starts; `complete` turns true only after the bytes are
-- fsynced, verified and renamed into place (the storage directory is shared by the replicas).
-- Only resumable uploads (a client-chosen `file_id`) keep an incomplete row after their call
-- ends; the sweep removes them once expired.
--
-- `owner` is the token `sub` that started the upload ('' with auth off). `reserved` is what the
-- row counts against the storage totals right now: its declared size while a call is writing it
-- or once it is complete, and only its kept (durable) bytes while it is an interrupted resumable
-- upload. `charged` is true when `reserved` also counts in the owner's `storage_usage` row
-- (uploads made with a user token).
--
-- No replica writes to this table without holding the upload's claim: a session-level advisory
-- lock on hashtextextended('streamhub upload <file_id>', 0), taken on each replica's claim
-- connection (see src/store/pg/files.rs). A replica that dies loses its session, and with it
-- its claims, so no lease table is needed.
CREATE TABLE files (
    file_id             TEXT    PRIMARY KEY,
    filename            TEXT    NOT NULL,
    content_type        TEXT    NOT NULL,
    total_size          BIGINT  NOT NULL CHECK (total_size >= 0),
    -- Declared by the client while incomplete (may be ''); the verified SHA-256 once complete.
    checksum            TEXT    NOT NULL,
    resumable           BOOLEAN NOT NULL,
    -- Durable bytes of an interrupted upload; total_size once complete.
    bytes_received      BIGINT  NOT NULL DEFAULT 0,
    complete            BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_micros   BIGINT  NOT NULL,
    updated_at_micros   BIGINT  NOT NULL,
    owner               TEXT    NOT NULL DEFAULT '',
    charged             BOOLEAN NOT NULL DEFAULT FALSE,
    reserved            BIGINT  NOT NULL DEFAULT 0 CHECK (reserved >= 0)
);
-- The expiry sweep's look-up: incomplete uploads by age.
CREATE INDEX files_incomplete ON files (updated_at_micros) WHERE NOT complete;

-- The totals live in rows, updated in the same transaction as the file row they follow, so that
-- no request ever sums `files`. Every change locks the one `storage_total` row first (SELECT …
-- FOR UPDATE), then reads or moves the owner's `storage_usage` row: replicas that reserve at the
-- same time take turns on that lock, so two uploads can never both fit into the same free space.
CREATE TABLE storage_usage (
    owner TEXT   PRIMARY KEY,
    bytes BIGINT NOT NULL CHECK (bytes >= 0)
);
-- One row: the declared bytes of every stored file and upload, for --max-storage-bytes.
CREATE TABLE storage_total (
    id    SMALLINT PRIMARY KEY CHECK (id = 1),
    bytes BIGINT   NOT NULL CHECK (bytes >= 0)
);
INSERT INTO storage_total (id, bytes) VALUES (1, 0);
