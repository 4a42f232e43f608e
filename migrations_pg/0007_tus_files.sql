-- tus uploads (release 2, browsers) and ListFiles, on PostgreSQL: the same columns and indexes as
-- SQLite's migrations/0008_tus_files.sql, with a BOOLEAN flag.
--
-- `tus_metadata` is the `Upload-Metadata` header a tus client created the upload with, exactly as
-- sent ('' for uploads made by UploadFile). `unverified` is true while a call writes a chunk that
-- must match its `Upload-Checksum` before it counts: the startup repair then cuts the part back to
-- `bytes_received` instead of adopting what lies past it. Recording progress clears it.
ALTER TABLE files ADD COLUMN tus_metadata TEXT NOT NULL DEFAULT '';
ALTER TABLE files ADD COLUMN unverified BOOLEAN NOT NULL DEFAULT FALSE;

-- ListFiles: complete files newest first, by completion time (`updated_at_micros` never changes
-- once a row is complete) and id; for everyone (services) and per owner (users).
CREATE INDEX files_complete_newest ON files (updated_at_micros, file_id) WHERE complete;
CREATE INDEX files_complete_newest_by_owner ON files (owner, updated_at_micros, file_id)
    WHERE complete;
