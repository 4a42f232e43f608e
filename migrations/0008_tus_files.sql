-- tus uploads (release 2, browsers) and ListFiles.
--
-- A tus upload is an ordinary `files` row (resumable, with a server-chosen UUID); two columns
-- carry what only tus needs:
-- `tus_metadata` is the `Upload-Metadata` header the client created it with, exactly as sent, for
-- HEAD answers to carry back ('' for uploads made by UploadFile);
-- `unverified` is 1 while a call writes a chunk that must match its `Upload-Checksum` before it
-- counts: the part may then hold bytes past `bytes_received` that nothing has verified, and the
-- startup repair cuts them off instead of adopting them. Recording progress clears it.
ALTER TABLE files ADD COLUMN tus_metadata TEXT NOT NULL DEFAULT '';
ALTER TABLE files ADD COLUMN unverified INTEGER NOT NULL DEFAULT 0;

-- ListFiles: complete files newest first, by completion time (`updated_at_micros` never changes
-- once a row is complete) and id; for everyone (services) and per owner (users).
CREATE INDEX files_complete_newest ON files (updated_at_micros, file_id) WHERE complete = 1;
CREATE INDEX files_complete_newest_by_owner ON files (owner, updated_at_micros, file_id)
    WHERE complete = 1;
