-- File ownership and storage accounting (release 2 tenancy).
--
-- `owner` is the token `sub` that started the upload; '' for rows from before this migration
-- and for uploads made with auth off. With auth on, only service tokens reach a file whose
-- owner is ''.
--
-- `reserved` is what the row counts against the storage totals right now: its declared size
-- while a call is writing it or once it is complete, and only its kept (durable) bytes while it
-- is an interrupted resumable upload. `charged` is 1 when `reserved` also counts in the owner's
-- `storage_usage` row (uploads made with a user token); service uploads count only in
-- `storage_total`.
--
-- The totals live in rows, updated in the same transaction as the file row they follow, so that
-- no request ever sums the `files` table (and several replicas can share them).
ALTER TABLE files ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE files ADD COLUMN charged INTEGER NOT NULL DEFAULT 0;
ALTER TABLE files ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0);
-- Existing rows counted their declared size against the one global quota; they still do.
UPDATE files SET reserved = total_size;

CREATE TABLE storage_usage (
    owner TEXT    PRIMARY KEY NOT NULL,
    bytes INTEGER NOT NULL CHECK (bytes >= 0)
) WITHOUT ROWID;

-- One row: the declared bytes of every stored file and upload, for --max-storage-bytes.
CREATE TABLE storage_total (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL CHECK (bytes >= 0)
);
INSERT INTO storage_total (id, bytes) SELECT 1, COALESCE(SUM(reserved), 0) FROM files;
