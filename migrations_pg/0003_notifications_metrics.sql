-- Notification cursors and metrics on PostgreSQL, shared by every replica of one deployment:
-- the same tables as SQLite's migrations/0003_notifications.sql and 0004_metrics.sql.
--
-- Each user's notification cursor: every notification of the user's `notifications` log stream
-- at or below `acknowledged_through` is acknowledged. A user without a row has acknowledged
-- nothing (0). The cursor only ever moves forward: the one statement that writes it (an upsert)
-- takes the larger of the stored and the new value, under the row's lock.
CREATE TABLE notification_cursors (
    user_id              TEXT   PRIMARY KEY,
    acknowledged_through BIGINT NOT NULL CHECK (acknowledged_through >= 0)
);

-- Metrics: one row per series (a name and its label set) and one row per point.
--
-- `labels` is the series' canonical label set: a JSON object with its keys sorted and no empty
-- values, e.g. {"code":"200","method":"GET"} ('{}' for none), kept as the exact text the server
-- wrote (TEXT, not JSONB, which would reorder and respace it). The same set always gives the same
-- text, so UNIQUE (name, labels) finds a series by equality. COLLATE "C" orders label texts by
-- their bytes, as SQLite does, whatever the database's locale.
--
-- A name holds at most --max-series-per-metric series: replicas creating series of one name
-- take turns on a transaction-level advisory lock for that name, so their counts and inserts
-- cannot together pass the cap.
CREATE TABLE metric_series (
    series_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name      TEXT NOT NULL,
    labels    TEXT COLLATE "C" NOT NULL,
    UNIQUE (name, labels)
);
-- One row per CollectMetrics call that stored points: (collection_id, point_index) names each
-- point uniquely, so points of one series at the same timestamp stay distinct. An identity never
-- hands out an id twice.
CREATE TABLE metric_collections (
    collection_id  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_micros BIGINT NOT NULL
);
-- The primary key leads with (series_id, ts_micros): a bucketed query is one range scan of it.
-- No foreign keys, as on SQLite: the store only inserts points of series it has looked up.
CREATE TABLE metric_points (
    series_id     BIGINT           NOT NULL,
    ts_micros     BIGINT           NOT NULL,
    collection_id BIGINT           NOT NULL,
    point_index   BIGINT           NOT NULL,
    value         DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series_id, ts_micros, collection_id, point_index)
);
