-- Presence across replicas. A replica holds one lease per user it has live streams for in a
-- chat room or collaboration document (space 3 chat, 4 collaboration: the stream kinds), and
-- renews all of its leases every third of the lease time. A replica that dies stops renewing;
-- once its leases lapse, a surviving replica deletes them and announces the leave of every
-- user who has no live lease left anywhere. Nothing here is a log record.
CREATE TABLE presence_leases (
    space       SMALLINT NOT NULL CHECK (space IN (3, 4)),
    room        TEXT     NOT NULL,
    user_id     TEXT     NOT NULL,
    replica     TEXT     NOT NULL,
    -- Microseconds since the Unix epoch, by the database's clock (one clock for every replica).
    expires_at  BIGINT   NOT NULL,
    PRIMARY KEY (space, room, user_id, replica)
);
CREATE INDEX presence_leases_replica ON presence_leases (replica);
CREATE INDEX presence_leases_expiry ON presence_leases (expires_at);
