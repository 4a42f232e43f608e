-- Listings for the console (ListStreams, ListMetricSeries), ordered by the bytes of their keys
-- whatever the database's locale: each is one range scan of an index in COLLATE "C" order.
--
-- The unique indexes on (kind, key) and (name, labels) follow the database's default collation,
-- which need not be bytewise (en_US sorts "a_b" after "ab"), so neither can serve a bytewise
-- order or a bytewise key range. These two can.
--
-- `stream_heads_listed` holds only columns that never change (kind, key), with no predicate on
-- `head`: moving a head on every append stays a HOT update that touches no index. Streams
-- without records (head 0, left by a rejected first append) are filtered from the heap rows the
-- scan reads anyway.
CREATE INDEX stream_heads_listed ON stream_heads (kind, key COLLATE "C");
CREATE INDEX metric_series_listed ON metric_series (name COLLATE "C", labels);
