//! Metrics on PostgreSQL: series and their points, shared by every replica.
//!
//! The same semantics as the SQLite half in `store::metrics`. Existing series are found with one
//! read; missing ones are created in one transaction that first takes a transaction-level
//! advisory lock per metric name (in sorted order, so two creators never deadlock), then counts
//! and inserts under those locks: replicas creating series of one name take turns, so together
//! they cannot pass the cap of series per name. Points of one group are inserted in one
//! transaction (all or none). Like the SQLite half, it never decides what is valid: the service
//! validates before anything reaches it. It must never touch the log's tables.

use super::PgStore;
use crate::error::Result;
use crate::store::KeyRange;
use crate::store::metrics::{MetricBucketRow, MetricPointRow};
use sqlx::{Postgres, QueryBuilder, Row};
use std::collections::HashMap;

/// Points per INSERT statement (bound as arrays, so only memory bounds it).
const POINTS_CHUNK: usize = 8192;

/// Finds the series of `(names, labels)` that exist: (series id, name, labels) rows.
const FIND_SERIES: &str = "SELECT s.series_id, s.name, s.labels FROM metric_series s \
     JOIN UNNEST($1::text[], $2::text[]) AS w(name, labels) \
     ON s.name = w.name AND s.labels = w.labels";

impl PgStore {
    /// See [`crate::store::Store::metric_series_ids`].
    pub(crate) async fn metric_series_ids(
        &self,
        series: &[(&str, &str)],
        max_per_name: u64,
    ) -> Result<Vec<Option<i64>>> {
        let mut ids: Vec<Option<i64>> = vec![None; series.len()];
        let found = find_series(&self.pool, series.iter().copied()).await?;
        for (id, key) in ids.iter_mut().zip(series) {
            *id = found.get(key).copied();
        }
        let missing: Vec<(usize, (&str, &str))> = series
            .iter()
            .enumerate()
            .filter(|(i, _)| ids[*i].is_none())
            .map(|(i, &key)| (i, key))
            .collect();
        if missing.is_empty() {
            return Ok(ids);
        }

        let mut tx = self.pool.begin().await?;
        let mut names: Vec<&str> = missing.iter().map(|(_, (name, _))| *name).collect();
        names.sort_unstable();
        names.dedup();
        for name in &names {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("streamhub metric series {name}"))
                .execute(&mut *tx)
                .await?;
        }
        // Under the locks: what other streams created since the read above, and how many series
        // each name holds now.
        let mut known = find_series(&mut *tx, missing.iter().map(|(_, key)| *key)).await?;
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, COUNT(*) FROM metric_series WHERE name = ANY($1) GROUP BY name",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
        let mut room: HashMap<&str, u64> = names.iter().map(|&name| (name, max_per_name)).collect();
        for (name, stored) in &counts {
            if let Some(left) = room.get_mut(name.as_str()) {
                *left = max_per_name.saturating_sub(*stored as u64);
            }
        }
        // In order, as on SQLite: a series that is one more than its name's cap is refused.
        let mut create: Vec<(&str, &str)> = Vec::new();
        let mut planned: std::collections::HashSet<(&str, &str)> = Default::default();
        for &(_, key) in &missing {
            if known.contains_key(&key) || planned.contains(&key) {
                continue;
            }
            let Some(left) = room.get_mut(key.0) else {
                continue;
            };
            if *left == 0 {
                continue;
            }
            *left -= 1;
            planned.insert(key);
            create.push(key);
        }
        if !create.is_empty() {
            let rows = sqlx::query(
                "INSERT INTO metric_series (name, labels) \
                 SELECT * FROM UNNEST($1::text[], $2::text[]) \
                 ON CONFLICT (name, labels) DO NOTHING RETURNING series_id, name, labels",
            )
            .bind(create.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(create.iter().map(|k| k.1).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
            let mut created: HashMap<(String, String), i64> = HashMap::with_capacity(rows.len());
            for row in rows {
                created.insert((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?);
            }
            let mut lost = Vec::new();
            for &key in &create {
                match created.get(&(key.0.to_owned(), key.1.to_owned())) {
                    Some(&id) => {
                        known.insert(key, id);
                    }
                    None => lost.push(key),
                }
            }
            // Created meanwhile by a writer that did not take the name's lock: found here.
            if !lost.is_empty() {
                known.extend(find_series(&mut *tx, lost.into_iter()).await?);
            }
        }
        tx.commit().await?;
        for (i, key) in missing {
            ids[i] = known.get(&key).copied();
        }
        Ok(ids)
    }

    /// See [`crate::store::Store::insert_metric_points`]; `points` are already sorted.
    pub(crate) async fn insert_metric_points(
        &self,
        collection_id: Option<i64>,
        started_micros: i64,
        points: &[MetricPointRow],
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let collection_id = match collection_id {
            Some(id) => id,
            None => {
                sqlx::query_scalar(
                    "INSERT INTO metric_collections (started_micros) VALUES ($1) \
                     RETURNING collection_id",
                )
                .bind(started_micros)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        for chunk in points.chunks(POINTS_CHUNK) {
            sqlx::query(
                "INSERT INTO metric_points \
                 (series_id, ts_micros, collection_id, point_index, value) \
                 SELECT p.series_id, p.ts_micros, $3, p.point_index, p.value \
                 FROM UNNEST($1::int8[], $2::int8[], $4::int8[], $5::float8[]) \
                 AS p(series_id, ts_micros, point_index, value)",
            )
            .bind(chunk.iter().map(|p| p.0).collect::<Vec<_>>())
            .bind(chunk.iter().map(|p| p.1).collect::<Vec<_>>())
            .bind(collection_id)
            .bind(chunk.iter().map(|p| p.2).collect::<Vec<_>>())
            .bind(chunk.iter().map(|p| p.3).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(collection_id)
    }

    /// See [`crate::store::Store::metric_series_matching`]. `labels` is valid JSON (the server
    /// wrote it), so `::jsonb ->>` reads a label as SQLite's `json_extract` does: its text, or
    /// NULL without it. Label texts are ordered by their bytes (the column is `COLLATE "C"`).
    pub(crate) async fn metric_series_matching(
        &self,
        name: &str,
        matchers: &[(String, String)],
        limit: u64,
    ) -> Result<Vec<(i64, String)>> {
        let mut query = QueryBuilder::<Postgres>::new(
            "SELECT series_id, labels FROM metric_series WHERE name = ",
        );
        query.push_bind(name);
        for (label, value) in matchers {
            query
                .push(" AND (labels::jsonb ->> ")
                .push_bind(label.as_str())
                .push(")");
            if value.is_empty() {
                query.push(" IS NULL");
            } else {
                query.push(" = ").push_bind(value.as_str());
            }
        }
        query
            .push(" ORDER BY labels LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// See [`crate::store::Store::list_metric_series`]: one range scan of
    /// `metric_series_listed` (name COLLATE "C", labels), so that names order bytewise as on
    /// SQLite whatever the database's locale (labels are `COLLATE "C"` already).
    pub(crate) async fn list_metric_series(
        &self,
        names: &KeyRange,
        limit: u32,
    ) -> Result<Vec<(String, String)>> {
        let mut query = QueryBuilder::<Postgres>::new(
            "SELECT s.name, s.labels FROM metric_series s WHERE s.name COLLATE \"C\" ",
        );
        query
            .push(if names.from_excluded { "> " } else { ">= " })
            .push_bind(names.from.as_str());
        if let Some(below) = &names.below {
            query
                .push(" AND s.name COLLATE \"C\" < ")
                .push_bind(below.as_str());
        }
        query
            .push(
                " AND EXISTS (SELECT 1 FROM metric_points p WHERE p.series_id = s.series_id) \
                 ORDER BY s.name COLLATE \"C\", s.labels LIMIT ",
            )
            .push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// See [`crate::store::Store::metric_buckets`].
    pub(crate) async fn metric_buckets(
        &self,
        series_id: i64,
        start: i64,
        end: i64,
        step: i64,
        limit: u32,
    ) -> Result<Vec<MetricBucketRow>> {
        let rows = sqlx::query(
            "SELECT (ts_micros - $2) / $4 AS bucket, COUNT(*), MIN(value), MAX(value), \
             SUM(value) FROM metric_points \
             WHERE series_id = $1 AND ts_micros >= $2 AND ts_micros < $3 \
             GROUP BY bucket ORDER BY bucket LIMIT $5",
        )
        .bind(series_id)
        .bind(start)
        .bind(end)
        .bind(step)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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

/// The ids of the series of `keys` that exist, by (name, labels).
async fn find_series<'k, 'c, E>(
    executor: E,
    keys: impl Iterator<Item = (&'k str, &'k str)>,
) -> Result<HashMap<(&'k str, &'k str), i64>>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let keys: Vec<(&str, &str)> = keys.collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(FIND_SERIES)
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .fetch_all(executor)
        .await?;
    let position: HashMap<(&str, &str), (&'k str, &'k str)> =
        keys.iter().map(|&k| (k, k)).collect();
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let name: &str = row.try_get(1)?;
        let labels: &str = row.try_get(2)?;
        if let Some(&key) = position.get(&(name, labels)) {
            found.insert(key, row.try_get(0)?);
        }
    }
    Ok(found)
}
