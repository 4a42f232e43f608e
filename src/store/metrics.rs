//! SQL for metrics: series and their points.
//!
//! A series is a name and a canonical label text (see `migrations/0004_metrics.sql`); a point is
//! a series id, a timestamp, its place in its CollectMetrics stream and a value. Writes run as
//! jobs on the writer thread (`Store::write`), one `BEGIN IMMEDIATE` transaction per group of
//! points on the database's one read-write connection, queued between the log's group commits
//! instead of contending with them for SQLite's write lock; reads go through the read-only pool.
//! On PostgreSQL each method hands over to its half in `pg::metrics`, with the same semantics.
//! This module knows nothing of gRPC or of Prometheus naming rules, and must never decide what
//! is valid: the service validates before anything reaches it. Its types are plain (tuples, std
//! types), so that the service can use them without this private module being named.

use super::{KeyRange, Store};
use crate::error::Result;
use rusqlite::{OptionalExtension, Transaction, params};
use sqlx::{QueryBuilder, Row, Sqlite};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// Series per lookup on the read-only pool (two parameters a row, far below SQLite's limit of
/// 32,766 bound parameters).
const SERIES_CHUNK: usize = 500;

/// One point to store: (series id, timestamp in microseconds, the point's position in its
/// CollectMetrics stream, value). With the collection id, the position tells points of one
/// series at one timestamp apart.
pub type MetricPointRow = (i64, i64, i64, f64);

/// One non-empty bucket of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricBucketRow {
    /// The bucket's number: it covers `[start + n·step, start + (n+1)·step)`.
    pub bucket: i64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

impl Store {
    /// The ids of `series`, given as (name, canonical label text), in order. Existing series
    /// are found with a read; only missing ones take a write job, which commits them on its
    /// own: a series row without points is harmless (queries leave it out).
    ///
    /// A name holds at most `max_per_name` series: a missing series that would be one more is
    /// not created and comes back as `None`. The count and the inserts share the job's one
    /// transaction, so concurrent streams cannot together pass the cap.
    pub async fn metric_series_ids(
        &self,
        series: &[(&str, &str)],
        max_per_name: u64,
    ) -> Result<Vec<Option<i64>>> {
        if let Some(pg) = self.postgres() {
            return pg.metric_series_ids(series, max_per_name).await;
        }
        let position: HashMap<(&str, &str), usize> = series
            .iter()
            .enumerate()
            .map(|(i, &key)| (key, i))
            .collect();
        let mut ids: Vec<Option<i64>> = vec![None; series.len()];
        for chunk in series.chunks(SERIES_CHUNK) {
            lookup_series(&self.sqlite()?.readers, chunk, &position, &mut ids).await?;
        }
        let (places, missing): (Vec<usize>, Vec<(String, String)>) = series
            .iter()
            .zip(&ids)
            .enumerate()
            .filter(|(_, (_, id))| id.is_none())
            .map(|(i, (&(name, labels), _))| (i, (name.to_owned(), labels.to_owned())))
            .unzip();
        if missing.is_empty() {
            return Ok(ids);
        }
        let found = self
            .write(move |tx| create_series(tx, &missing, max_per_name))
            .await?;
        for (i, id) in places.into_iter().zip(found) {
            ids[i] = id;
        }
        Ok(ids)
    }

    /// Stores `points` atomically and durably: all commit, or none. `collection_id` is the
    /// stream's, or `None` for its first group, which creates one (stamped `started_micros`).
    /// Returns the collection id. Every series id must exist (see [`Self::metric_series_ids`]).
    pub async fn insert_metric_points(
        &self,
        collection_id: Option<i64>,
        started_micros: i64,
        points: &mut [MetricPointRow],
    ) -> Result<i64> {
        // In primary-key order each B-tree leaf is written once and filled in order; the order
        // of rows inside one commit is invisible to readers.
        points.sort_unstable_by_key(|&(series, ts, index, _)| (series, ts, index));
        if let Some(pg) = self.postgres() {
            return pg
                .insert_metric_points(collection_id, started_micros, points)
                .await;
        }
        let points = points.to_vec();
        self.write(move |tx| {
            let collection_id = match collection_id {
                Some(id) => id,
                None => tx
                    .prepare_cached(
                        "INSERT INTO metric_collections (started_micros) VALUES (?1) \
                         RETURNING collection_id",
                    )?
                    .query_row([started_micros], |row| row.get(0))?,
            };
            // One prepared statement, stepped once a point: on the writer's own connection a
            // step costs no round trip, so multi-row statements would save nothing worth
            // their varying SQL text.
            let mut insert = tx.prepare_cached(
                "INSERT INTO metric_points \
                 (series_id, ts_micros, collection_id, point_index, value) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (series, ts, index, value) in points {
                insert.execute(params![series, ts, collection_id, index, value])?;
            }
            Ok(collection_id)
        })
        .await
    }

    /// The series called `name` whose labels match every matcher, as (series id, canonical
    /// label text), in label-text order; at most `limit`. A matcher (label, value) matches a
    /// series whose label has that value; with an empty value, a series without the label.
    /// Label names are `[a-zA-Z_][a-zA-Z0-9_]*` (the service checks), so the JSON path needs
    /// no escaping; it is bound all the same.
    pub async fn metric_series_matching(
        &self,
        name: &str,
        matchers: &[(String, String)],
        limit: u64,
    ) -> Result<Vec<(i64, String)>> {
        if let Some(pg) = self.postgres() {
            return pg.metric_series_matching(name, matchers, limit).await;
        }
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT series_id, labels FROM metric_series WHERE name = ",
        );
        query.push_bind(name);
        for (label, value) in matchers {
            query
                .push(" AND json_extract(labels, ")
                .push_bind(format!("$.\"{label}\""))
                .push(")");
            if value.is_empty() {
                query.push(" IS NULL");
            } else {
                query.push(" = ").push_bind(value);
            }
        }
        query
            .push(" ORDER BY labels LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = query.build().fetch_all(&self.sqlite()?.readers).await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Up to `limit` series whose names lie in `names` (see [`KeyRange`]), as (name, canonical
    /// label text), ordered by name, then label text, both bytewise. One range scan of the
    /// unique (name, labels) index; a series without points (its points' commit failed after
    /// the series was created) is left out, as queries leave it out, with one seek of the
    /// points' primary key per series.
    pub async fn list_metric_series(
        &self,
        names: &KeyRange,
        limit: u32,
    ) -> Result<Vec<(String, String)>> {
        if let Some(pg) = self.postgres() {
            return pg.list_metric_series(names, limit).await;
        }
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT s.name, s.labels FROM metric_series s WHERE s.name ",
        );
        query
            .push(if names.from_excluded { "> " } else { ">= " })
            .push_bind(names.from.as_str());
        if let Some(below) = &names.below {
            query.push(" AND s.name < ").push_bind(below.as_str());
        }
        query
            .push(
                " AND EXISTS (SELECT 1 FROM metric_points p WHERE p.series_id = s.series_id) \
                 ORDER BY s.name, s.labels LIMIT ",
            )
            .push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.sqlite()?.readers).await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// The non-empty buckets of one series between `start` (inclusive) and `end` (exclusive),
    /// each `step` microseconds wide and aligned to `start`, in time order; at most `limit`.
    pub async fn metric_buckets(
        &self,
        series_id: i64,
        start: i64,
        end: i64,
        step: i64,
        limit: u32,
    ) -> Result<Vec<MetricBucketRow>> {
        if let Some(pg) = self.postgres() {
            return pg.metric_buckets(series_id, start, end, step, limit).await;
        }
        // Points are clustered by (series_id, ts_micros): this is one range scan. TOTAL is SUM
        // that always answers a float.
        let rows = sqlx::query(
            "SELECT (ts_micros - ?2) / ?4 AS bucket, COUNT(*), MIN(value), MAX(value), \
             TOTAL(value) FROM metric_points \
             WHERE series_id = ?1 AND ts_micros >= ?2 AND ts_micros < ?3 \
             GROUP BY bucket ORDER BY bucket LIMIT ?5",
        )
        .bind(series_id)
        .bind(start)
        .bind(end)
        .bind(step)
        .bind(i64::from(limit))
        .fetch_all(&self.sqlite()?.readers)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MetricBucketRow {
                    bucket: row.try_get(0)?,
                    count: row.try_get::<i64, _>(1)? as u64,
                    min: row.try_get(2)?,
                    max: row.try_get(3)?,
                    sum: row.try_get(4)?,
                })
            })
            .collect()
    }
}

/// Finds or creates each series of `missing` inside a write job's transaction, in order, and
/// answers its id, or `None` for one that the cap of `max_per_name` series per name refused.
/// Another stream may have created some of them since the caller's read: those are found here.
fn create_series(
    tx: &Transaction<'_>,
    missing: &[(String, String)],
    max_per_name: u64,
) -> Result<Vec<Option<i64>>> {
    let mut find =
        tx.prepare_cached("SELECT series_id FROM metric_series WHERE name = ?1 AND labels = ?2")?;
    let mut count = tx.prepare_cached("SELECT COUNT(*) FROM metric_series WHERE name = ?1")?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO metric_series (name, labels) VALUES (?1, ?2) \
         ON CONFLICT (name, labels) DO NOTHING RETURNING series_id",
    )?;
    // Room left under the cap, per name, counted inside the transaction before its first
    // insert and then kept here.
    let mut room: HashMap<&str, u64> = HashMap::new();
    let mut ids = Vec::with_capacity(missing.len());
    for (name, labels) in missing {
        let found: Option<i64> = find
            .query_row(params![name, labels], |row| row.get(0))
            .optional()?;
        if found.is_some() {
            ids.push(found);
            continue;
        }
        let left = match room.entry(name.as_str()) {
            Entry::Occupied(left) => left.into_mut(),
            Entry::Vacant(place) => {
                let stored: i64 = count.query_row([name], |row| row.get(0))?;
                place.insert(max_per_name.saturating_sub(stored as u64))
            }
        };
        if *left == 0 {
            ids.push(None);
            continue;
        }
        *left -= 1;
        let created: Option<i64> = insert
            .query_row(params![name, labels], |row| row.get(0))
            .optional()?;
        ids.push(match created {
            Some(id) => Some(id),
            None => find
                .query_row(params![name, labels], |row| row.get(0))
                .optional()?,
        });
    }
    Ok(ids)
}

/// Fills in `ids` (indexed by `position`) for the series of `chunk` that exist.
async fn lookup_series<'c, E>(
    executor: E,
    chunk: &[(&str, &str)],
    position: &HashMap<(&str, &str), usize>,
    ids: &mut [Option<i64>],
) -> Result<()>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let mut select = QueryBuilder::<Sqlite>::new(
        "SELECT series_id, name, labels FROM metric_series WHERE (name, labels) IN (VALUES ",
    );
    let mut list = select.separated(", ");
    for &(name, labels) in chunk {
        list.push("(")
            .push_bind_unseparated(name)
            .push_unseparated(", ")
            .push_bind_unseparated(labels)
            .push_unseparated(")");
    }
    select.push(")");
    for row in select.build().fetch_all(executor).await? {
        let name: &str = row.try_get(1)?;
        let labels: &str = row.try_get(2)?;
        if let Some(&i) = position.get(&(name, labels)) {
            ids[i] = Some(row.try_get(0)?);
        }
    }
    Ok(())
}
