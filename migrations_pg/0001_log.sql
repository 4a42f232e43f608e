-- The log on PostgreSQL, shared by every replica of one deployment.
--
-- `stream_heads` interns each stream (kind, key) as an integer id and holds its head: the last
-- sequence and its timestamp. An append locks its streams' rows here (in sorted key order, so
-- that two groups never deadlock), assigns head + 1, … under that lock, and moves the head in
-- the same transaction. So sequences are contiguous across replicas; the primary key of `log`
-- is the last guard against a duplicate sequence.
--
-- kind: 1 events, 2 notifications, 3 chat, 4 collaboration. Never change one: rows carry it.
CREATE TABLE stream_heads (
    id       BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind     SMALLINT NOT NULL CHECK (kind BETWEEN 1 AND 4),
    key      TEXT     NOT NULL,
    head     BIGINT   NOT NULL DEFAULT 0 CHECK (head >= 0),
    head_ts  BIGINT   NOT NULL DEFAULT 0,
    UNIQUE (kind, key)
);

-- Every record, client-given id or server-assigned (a UUIDv7 that carries its sequence), is
-- unique within its stream: the index is what makes an id idempotent across replicas.
CREATE TABLE log (
    stream     BIGINT NOT NULL REFERENCES stream_heads (id),
    sequence   BIGINT NOT NULL CHECK (sequence > 0),
    id         TEXT   NOT NULL,
    ts_micros  BIGINT NOT NULL,
    payload    BYTEA  NOT NULL,
    PRIMARY KEY (stream, sequence)
);
CREATE UNIQUE INDEX log_ids ON log (stream, id);
