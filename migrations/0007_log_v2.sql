-- Log engine v2: compact keys and compact ids.
--
-- `streams` interns each (kind, key) once, so a record's key is two small integers (stream,
-- sequence) instead of the kind and key text repeated in every row and index entry. `kind` is
-- 1 events, 2 notifications, 3 chat, 4 collaboration; never renumber one, rows carry them.
--
-- `log.id` holds a canonical lowercase UUID (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex digits
-- 0-9a-f) as its 16 bytes, and any other id as the text that was sent. A BLOB column converts
-- nothing, so a text id stays text and a blob stays a blob; a replay turns a blob back into that
-- exact text, so it returns exactly the id that was sent.
--
-- `given` is 1 for an id the client chose (an idempotency id) and 0 for one the server assigned.
-- Only client-given ids are indexed: a fresh server id needs no look-up and no index entry. SQLite
-- stores the integers 0 and 1 in the record header alone, so the flag costs no payload byte.
--
-- Every record of `log_records` carries over with its stream, sequence, id, timestamp and payload.
-- Old rows do not say who chose their id, so all of them keep an indexed id (given = 1): an id
-- that was unique before stays unique, and a retry of an old append still finds its first copy.
CREATE TABLE streams (
    id   INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL CHECK (kind BETWEEN 1 AND 4),
    key  TEXT    NOT NULL,
    UNIQUE (kind, key)
);

-- Records are kept in commit order: `position` (the rowid) grows with every append, so a group
-- commit that appends to many streams writes its records into the last one or two pages of the
-- table instead of one page per stream, and SQLite fills those pages completely. The index on
-- (stream, sequence) finds a stream's records; its entries are small, so a group commit touches
-- one index page per stream but splits rarely. Measured with 1,000 streams and 16 records per
-- commit: 9.7 WAL frames per commit, against 27.9 when the table itself was clustered by
-- (stream, sequence). A stream written in one burst (an import) still reads back as one
-- sequential range of the table.
CREATE TABLE log (
    position  INTEGER PRIMARY KEY,
    stream    INTEGER NOT NULL,
    sequence  INTEGER NOT NULL CHECK (sequence > 0),
    id        BLOB    NOT NULL,
    given     INTEGER NOT NULL,
    ts_micros INTEGER NOT NULL,
    payload   BLOB    NOT NULL
);


INSERT INTO streams (kind, key)
SELECT DISTINCT
    CASE kind WHEN 'events' THEN 1 WHEN 'notifications' THEN 2 WHEN 'chat' THEN 3 WHEN 'collab' THEN 4 END,
    stream_key
FROM log_records
ORDER BY 1, 2;

INSERT INTO log (stream, sequence, id, given, ts_micros, payload)
SELECT
    s.id,
    r.sequence,
    CASE
        WHEN length(r.id) = 36
             AND r.id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
        THEN unhex(replace(r.id, '-', ''))
        ELSE r.id
    END,
    1,
    r.ts_micros,
    r.payload
FROM log_records r
JOIN streams s
  ON s.key = r.stream_key
 AND s.kind = CASE r.kind WHEN 'events' THEN 1 WHEN 'notifications' THEN 2 WHEN 'chat' THEN 3 WHEN 'collab' THEN 4 END
ORDER BY s.id, r.sequence;

-- The indexes come after the copy: built once in sorted order, not entry by entry.
-- A stream's records in sequence order, and the last guard of contiguous sequences: a second
-- record at a taken (stream, sequence) is refused.
CREATE UNIQUE INDEX log_stream_sequence ON log (stream, sequence);

-- Idempotency: a client-given id is unique within its stream, and a retry finds its first copy
-- with one seek.
CREATE UNIQUE INDEX log_given_ids ON log (stream, id) WHERE given = 1;

DROP TABLE log_records;
