-- Metrics: one row per series (a name and its label set) and one row per point.
--
-- `labels` is the series' canonical label set: a JSON object with its keys sorted and no empty
-- values, e.g. {"code":"200","method":"GET"} ('{}' for none). The same set always gives the
-- same text, so UNIQUE (name, labels) finds a series by equality.
CREATE TABLE metric_series (
    series_id INTEGER PRIMARY KEY,
    name      TEXT NOT NULL,
    labels    TEXT NOT NULL,
    UNIQUE (name, labels)
);

-- One row per CollectMetrics call that stored points. It exists so that points of one series
-- at the same timestamp (legal: two samples in one microsecond, or two clients) stay distinct:
-- (collection_id, point_index) names each point uniquely. AUTOINCREMENT never reuses an id.
CREATE TABLE metric_collections (
    collection_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    started_micros INTEGER NOT NULL
);

-- WITHOUT ROWID clusters each series' points in time order: an insert touches the end of its
-- series' range, and a bucketed query is one range scan of the primary key with no second
-- lookup per row. `point_index` is the point's position in its CollectMetrics stream.
-- No foreign keys: the store creates a point's series in the same transaction as the point, and
-- a check per inserted point would cost insert speed for nothing.
CREATE TABLE metric_points (
    series_id     INTEGER NOT NULL,
    ts_micros     INTEGER NOT NULL,
    collection_id INTEGER NOT NULL,
    point_index   INTEGER NOT NULL,
    value         REAL    NOT NULL,
    PRIMARY KEY (series_id, ts_micros, collection_id, point_index)
) WITHOUT ROWID;
