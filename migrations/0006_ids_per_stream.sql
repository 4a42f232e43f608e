-- Idempotency ids are scoped to their stream: a user's events, a user's inbox, one room, one
-- document. The same id in another stream of the same kind is another record, so one user can no
-- longer squat an id that another user's record will need.
--
-- Every existing row carries over unchanged: ids that were unique within a kind are unique
-- within each (kind, stream_key) too. The new index leads with the primary key's prefix, so a
-- look-up for (kind, stream_key, id) is one seek.
DROP INDEX log_records_id;
CREATE UNIQUE INDEX log_records_stream_id ON log_records (kind, stream_key, id);
