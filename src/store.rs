//! The store: every line of SQL in streamhub lives here.
//!
//! It opens SQLite (WAL, the configured `synchronous`, a busy timeout), runs the embedded
//! migrations, and offers two faces: [`Store`], a pool of read-only connections for replays and
//! lookups, and [`StoreWriter`], the one read-write connection that only the log writer task holds.
//! It knows nothing of gRPC, of the hub, or of what a payload means.

mod files;
mod metrics;
mod notify;

pub use files::{FileRow, QuotaRefusal, StorageLimits};

use crate::config::{Config, SyncMode};
use crate::error::{Error, Result};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use std::{fmt, str::FromStr, sync::Arc, time::Duration};

/// Which family of streams a log belongs to. Sequences and idempotency ids are scoped by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Events,
    Notifications,
    Chat,
    Collab,
}

impl StreamKind {
    /// The value stored in the `kind` column. Never change one: rows on disk carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Events => "events",
            StreamKind::Notifications => "notifications",
            StreamKind::Chat => "chat",
            StreamKind::Collab => "collab",
        }
    }
}

/// One durable stream: a kind and the key inside it (a user id, a room id, a document id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub kind: StreamKind,
    /// Shared, because every record and hub entry of the stream carries it.
    pub key: Arc<str>,
}

impl StreamKey {
    pub fn new(kind: StreamKind, key: &str) -> Self {
        StreamKey {
            kind,
            key: Arc::from(key),
        }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.key)
    }
}

/// A committed record of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub stream: StreamKey,
    /// Position in its stream: 1, 2, 3, … with no holes.
    pub sequence: u64,
    pub id: String,
    /// Server commit time in microseconds since the Unix epoch; never decreases along the stream.
    pub ts_micros: i64,
    /// The record's protobuf body, opaque to the store.
    pub payload: Vec<u8>,
}

/// Where a stream ends now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    pub sequence: u64,
    pub ts_micros: i64,
}

/// Rows per multi-row INSERT. Six parameters a row keeps a statement far below SQLite's limit of
/// 32,766 bound parameters, and one statement per 500 rows removes the per-statement cost that
/// dominates single-row inserts.
const INSERT_CHUNK: usize = 500;
/// (stream key, id) pairs per idempotency lookup (`(stream_key, id) IN (VALUES …)`): two
/// parameters a pair, far below SQLite's limit.
const LOOKUP_CHUNK: usize = 900;

/// Refuses a database URL this build cannot serve, before anything is created in its name.
/// Without this check, sqlx would take `postgres://u:p@host/db` for a SQLite file name and
/// create `./postgres:/u:p@host/db`.
fn check_database_url(url: &str) -> Result<()> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme);
    match scheme {
        Some(scheme) if scheme.eq_ignore_ascii_case("sqlite") => Ok(()),
        Some(scheme) if !scheme.is_empty() && !scheme.contains(['/', '\\', '.']) => {
            Err(Error::Config(format!(
                "unsupported DATABASE_URL scheme `{scheme}:` in {}: this server stores its data \
                 in SQLite; use sqlite://path/to/streamhub.db",
                crate::secret::redact_url(url)
            )))
        }
        _ => Err(Error::Config(format!(
            "DATABASE_URL {} is not a URL; use sqlite://path/to/streamhub.db",
            crate::secret::redact_url(url)
        ))),
    }
}

/// Where the database's single-server lock lives: beside the SQLite file, as `<file>.lock`,
/// from the same parse of `DATABASE_URL` that opens the database (so an unsupported URL is
/// refused here, before anything is created). `None` for an in-memory database.
pub fn database_lock_path(config: &Config) -> Result<Option<std::path::PathBuf>> {
    let options = connect_options(config)?;
    let file = options.get_filename();
    let name = file.to_string_lossy();
    if name.is_empty() || name == ":memory:" || name.starts_with("file:sqlx-in-memory") {
        return Ok(None);
    }
    let mut lock = file.as_os_str().to_owned();
    lock.push(".lock");
    Ok(Some(lock.into()))
}

fn connect_options(config: &Config) -> Result<SqliteConnectOptions> {
    check_database_url(&config.database_url)?;
    let options = SqliteConnectOptions::from_str(&config.database_url).map_err(|e| {
        Error::Config(format!(
            "invalid DATABASE_URL {}: {e}",
            crate::secret::redact_url(&config.database_url)
        ))
    })?;
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match config.sync {
            SyncMode::Full => SqliteSynchronous::Full,
            SyncMode::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
        // After a checkpoint, shrink a WAL that a large import grew back to at most 64 MiB.
        .pragma("journal_size_limit", "67108864"))
}

/// Opens the database: creates its directory and file if needed, runs migrations, and returns
/// the read pool and the single writer connection.
pub async fn open(config: &Config) -> Result<(Store, StoreWriter)> {
    let options = connect_options(config)?;
    let wal_path = {
        let mut wal = options.get_filename().as_os_str().to_owned();
        wal.push("-wal");
        std::path::PathBuf::from(wal)
    };
    if let Some(dir) = options.get_filename().parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    // The writer never checkpoints: a checkpoint copies WAL pages into the database and fsyncs
    // it, and doing that inside a commit would stall every append waiting behind it. A
    // separate connection checkpoints in the background instead.
    //
    // The writer gets 32 MiB of page cache (the default is 2 MiB), so the index pages of busy
    // streams stay in memory across appends. Readers keep the default: replays read ranges
    // sequentially, which the operating system's cache serves well, and eight readers with
    // large caches would multiply the server's memory.
    let mut writer = SqliteConnection::connect_with(
        &options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .pragma("cache_size", "-32768"),
    )
    .await?;
    sqlx::migrate!("./migrations").run(&mut writer).await?;
    let checkpointer = SqliteConnection::connect_with(&options).await?;

    // Rows outside the log (file uploads) are written through this small pool. It never touches
    // `log_records`, so the log writer stays that table's only writer.
    let meta = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await?;
    let readers = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(options.read_only(true))
        .await?;
    let stop_checkpoints = tokio_util::sync::CancellationToken::new();
    let one_checkpoint_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    let checkpoints = tokio::spawn(checkpoint_in_background(
        checkpointer,
        stop_checkpoints.clone(),
        one_checkpoint_at_a_time.clone(),
    ));
    Ok((
        Store {
            readers,
            meta,
            checkpointer: Arc::new(Checkpointer {
                stop: stop_checkpoints,
                task: std::sync::Mutex::new(Some(checkpoints)),
            }),
        },
        StoreWriter {
            conn: writer,
            wal_path,
            max_wal_bytes: config.max_wal_bytes,
            one_checkpoint_at_a_time,
        },
    ))
}

/// How often the background checkpointer moves committed WAL pages into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Runs PASSIVE checkpoints until `stop`. PASSIVE never waits for readers or the writer; what
/// it cannot copy now it copies next time. It never resets the WAL under steady load: that is
/// the writer's bound ([`StoreWriter::bound_wal`]) and the final truncation in [`Store::close`].
async fn checkpoint_in_background(
    mut conn: SqliteConnection,
    stop: tokio_util::sync::CancellationToken,
    one_checkpoint_at_a_time: Arc<tokio::sync::Mutex<()>>,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let _turn = one_checkpoint_at_a_time.lock().await;
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await
        {
            Ok((busy, wal_pages, copied)) => {
                tracing::trace!(busy, wal_pages, copied, "checkpoint")
            }
            Err(e) => tracing::warn!(error = %e, "background checkpoint failed"),
        }
    }
    let _ = conn.close().await;
}

/// The read side: a pool of read-only connections. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    readers: SqlitePool,
    /// Read-write connections for everything that is not a log append.
    meta: SqlitePool,
    checkpointer: Arc<Checkpointer>,
}

/// The background checkpoint task, stopped before the final truncation: a PASSIVE checkpoint
/// running at that moment would hold the checkpoint lock and make the truncation fail.
#[derive(Debug)]
struct Checkpointer {
    stop: tokio_util::sync::CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn record_from_row(stream: &StreamKey, row: &SqliteRow) -> Result<LogRecord> {
    Ok(LogRecord {
        stream: stream.clone(),
        // By position: every query that builds records selects these four columns first.
        sequence: row.try_get::<i64, _>(0)? as u64,
        id: row.try_get(1)?,
        ts_micros: row.try_get(2)?,
        payload: row.try_get(3)?,
    })
}

impl Store {
    /// Up to `limit` records of `stream` after `after`, in order, and none past `until`.
    pub async fn read_page(
        &self,
        stream: &StreamKey,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LogRecord>> {
        let until = until.map_or(i64::MAX, |u| u as i64);
        let rows = sqlx::query(
            "SELECT sequence, id, ts_micros, payload FROM log_records \
             WHERE kind = ?1 AND stream_key = ?2 AND sequence > ?3 AND sequence <= ?4 \
             ORDER BY sequence LIMIT ?5",
        )
        .bind(stream.kind.as_str())
        .bind(&*stream.key)
        // A client may ask for anything after a sequence past what SQLite stores: nothing.
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(until)
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(|r| record_from_row(stream, r)).collect()
    }

    /// Up to `limit` records of `stream` before `before` (`None`: the newest), oldest first.
    pub async fn read_page_before(
        &self,
        stream: &StreamKey,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LogRecord>> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = sqlx::query(
            "SELECT sequence, id, ts_micros, payload FROM log_records \
             WHERE kind = ?1 AND stream_key = ?2 AND sequence < ?3 \
             ORDER BY sequence DESC LIMIT ?4",
        )
        .bind(stream.kind.as_str())
        .bind(&*stream.key)
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await?;
        let mut records = rows
            .iter()
            .map(|r| record_from_row(stream, r))
            .collect::<Result<Vec<_>>>()?;
        records.reverse();
        Ok(records)
    }

    /// The last committed sequence of `stream` (0 when it is empty).
    pub async fn head(&self, stream: &StreamKey) -> Result<u64> {
        let head: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(sequence) FROM log_records WHERE kind = ?1 AND stream_key = ?2",
        )
        .bind(stream.kind.as_str())
        .bind(&*stream.key)
        .fetch_one(&self.readers)
        .await?;
        Ok(head.unwrap_or(0) as u64)
    }

    /// The timestamp of one record, if it exists.
    async fn ts_at(&self, stream: &StreamKey, sequence: u64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT ts_micros FROM log_records WHERE kind = ?1 AND stream_key = ?2 AND sequence = ?3",
        )
        .bind(stream.kind.as_str())
        .bind(&*stream.key)
        .bind(sequence as i64)
        .fetch_optional(&self.readers)
        .await?)
    }

    /// The first sequence whose timestamp is at or after `ts_micros`, or `head + 1` when none is.
    ///
    /// Timestamps never decrease along a stream, so this is a binary search over sequences:
    /// about 20 primary-key lookups for a million records, and no timestamp index to maintain
    /// on every append.
    pub async fn first_sequence_at_or_after(
        &self,
        stream: &StreamKey,
        ts_micros: i64,
    ) -> Result<u64> {
        let head = self.head(stream).await?;
        let (mut lo, mut hi) = (1u64, head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.ts_at(stream, mid).await? {
                Some(ts) if ts >= ts_micros => hi = mid,
                Some(_) => lo = mid + 1,
                None => return Err(Error::Internal(format!("hole at {stream} #{mid}"))),
            }
        }
        Ok(lo)
    }

    /// Closes every read and metadata connection, leaving the WAL truncated: a clean shutdown
    /// leaves nothing in it to replay or to take disk space.
    pub async fn close(&self) {
        self.readers.close().await;
        self.checkpointer.stop.cancel();
        let task = self
            .checkpointer
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        // The pool's busy timeout (5 s) lets a metadata write in flight finish first.
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.meta)
            .await
        {
            Ok((0, _, _)) => tracing::debug!("WAL truncated at shutdown"),
            Ok((_, wal_pages, copied)) => {
                tracing::warn!(wal_pages, copied, "WAL could not be truncated at shutdown")
            }
            Err(e) => tracing::warn!(error = %e, "final checkpoint failed"),
        }
        self.meta.close().await;
    }
}

/// The only read-write connection. Held by the log writer task alone, so every append is
/// serialized through one place.
#[derive(Debug)]
pub struct StoreWriter {
    conn: SqliteConnection,
    /// `<database>-wal`, watched after every commit.
    wal_path: std::path::PathBuf,
    /// Past this size the WAL is truncated before the next commit.
    max_wal_bytes: u64,
    /// Shared with the background checkpointer. SQLite lets one checkpoint run at a time and
    /// fails a second one at once (without waiting), so the truncation waits here for a running
    /// PASSIVE checkpoint to finish instead of failing against it.
    one_checkpoint_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// How long a WAL truncation waits for readers to leave old snapshots, per attempt, in
/// milliseconds. Short, because the writer waits with it; a reader that stays longer only
/// delays the truncation to a later commit. A macro, so that the PRAGMA stays `&'static str`.
macro_rules! wal_truncate_wait_ms {
    () => {
        "100"
    };
}
/// Attempts per commit, each waiting up to the time above for readers on old snapshots.
const WAL_TRUNCATE_ATTEMPTS: usize = 3;

/// A record ready to insert: its sequence and timestamp are already assigned.
#[derive(Debug)]
pub struct RowToInsert<'a> {
    pub stream: &'a StreamKey,
    pub sequence: u64,
    pub id: &'a str,
    pub ts_micros: i64,
    pub payload: &'a [u8],
}

impl StoreWriter {
    /// Closes the connection cleanly; [`Store::close`] truncates the WAL after it.
    pub async fn close(self) -> Result<()> {
        self.conn.close().await?;
        Ok(())
    }

    /// The WAL's size on disk now (0 when it does not exist).
    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(&self.wal_path).map_or(0, |m| m.len())
    }

    /// Keeps the WAL within `--max-wal-bytes`: called after each commit, and when that commit
    /// left the WAL larger than the bound, it runs a TRUNCATE checkpoint, which copies what the
    /// background checkpointer has not yet copied and resets the file to zero bytes.
    ///
    /// A PASSIVE checkpoint alone never gets there under steady load: new frames always arrive,
    /// so the WAL never restarts and grows without bound. TRUNCATE waits for a running
    /// background checkpoint to finish, and for readers on old snapshots, but only briefly
    /// (100 ms per attempt, three attempts); when readers stay, it tries again after the next
    /// commit and never blocks the writer for long. The busy timeout
    /// goes back to the writer's usual 5 s afterwards (the same as `connect_options`).
    pub async fn bound_wal(&mut self) -> Result<()> {
        let before = self.wal_bytes();
        if before <= self.max_wal_bytes {
            return Ok(());
        }
        let _turn = self.one_checkpoint_at_a_time.lock().await;
        sqlx::query(concat!("PRAGMA busy_timeout = ", wal_truncate_wait_ms!()))
            .execute(&mut self.conn)
            .await?;
        let mut truncated = false;
        for _ in 0..WAL_TRUNCATE_ATTEMPTS {
            let (busy, wal_pages, copied) =
                sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(&mut self.conn)
                    .await?;
            if busy == 0 {
                truncated = true;
                break;
            }
            tracing::debug!(
                wal_pages,
                copied,
                "WAL truncation waited for readers; retrying"
            );
        }
        sqlx::query("PRAGMA busy_timeout = 5000")
            .execute(&mut self.conn)
            .await?;
        if truncated {
            tracing::debug!(wal_bytes_before = before, "WAL truncated");
        } else {
            tracing::warn!(
                wal_bytes = before,
                max_wal_bytes = self.max_wal_bytes,
                "WAL is over its bound and readers on old snapshots kept it from being \
                 truncated; retrying after the next commit"
            );
        }
        Ok(())
    }

    // The reads below run outside the insert's transaction. That is sound only because this
    // connection is the database's one writer: nothing can change between a read and the
    // insert that follows it.

    /// The current head of `stream`.
    pub async fn head(&mut self, stream: &StreamKey) -> Result<Head> {
        let row = sqlx::query(
            "SELECT sequence, ts_micros FROM log_records WHERE kind = ?1 AND stream_key = ?2 \
             ORDER BY sequence DESC LIMIT 1",
        )
        .bind(stream.kind.as_str())
        .bind(&*stream.key)
        .fetch_optional(&mut self.conn)
        .await?;
        Ok(match row {
            Some(row) => Head {
                sequence: row.try_get::<i64, _>(0)? as u64,
                ts_micros: row.try_get(1)?,
            },
            None => Head::default(),
        })
    }

    /// The stored records of `kind` whose (stream key, id) pairs are among `keys`. Ids are
    /// unique within one stream, so each pair names at most one record.
    pub async fn find_by_ids(
        &mut self,
        kind: StreamKind,
        keys: &[(&str, &str)],
    ) -> Result<Vec<LogRecord>> {
        let mut found = Vec::new();
        for chunk in keys.chunks(LOOKUP_CHUNK) {
            let mut query = QueryBuilder::<Sqlite>::new(
                // Without statistics the planner may scan the primary key's `kind` prefix
                // instead; the per-stream id index answers each pair with one seek.
                "SELECT sequence, id, ts_micros, payload, stream_key FROM log_records \
                 INDEXED BY log_records_stream_id WHERE kind = ",
            );
            query
                .push_bind(kind.as_str())
                .push(" AND (stream_key, id) IN (VALUES ");
            let mut list = query.separated(", ");
            for &(key, id) in chunk {
                list.push("(")
                    .push_bind_unseparated(key)
                    .push_unseparated(", ")
                    .push_bind_unseparated(id)
                    .push_unseparated(")");
            }
            query.push(")");
            for row in query.build().fetch_all(&mut self.conn).await? {
                let stream = StreamKey::new(kind, row.try_get(4)?);
                found.push(record_from_row(&stream, &row)?);
            }
        }
        Ok(found)
    }

    /// Inserts all `rows` atomically and durably: all commit, or none.
    ///
    /// Up to [`INSERT_CHUNK`] rows go in one multi-row statement, which SQLite commits
    /// atomically on its own: one round trip to the database thread instead of three (BEGIN,
    /// INSERT, COMMIT). More rows take an explicit transaction.
    pub async fn insert_atomic(&mut self, rows: &mut [RowToInsert<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // In primary-key order each B-tree leaf is written once and filled in order; in
        // arrival order a batch spread over many streams rewrites the same leaves again and
        // again. The order of rows inside one atomic commit is invisible to readers.
        rows.sort_unstable_by(|a, b| {
            (a.stream.kind.as_str(), &*a.stream.key, a.sequence).cmp(&(
                b.stream.kind.as_str(),
                &*b.stream.key,
                b.sequence,
            ))
        });
        if rows.len() <= INSERT_CHUNK {
            return insert_rows(&mut self.conn, rows).await;
        }
        let mut tx = self.conn.begin().await?;
        for chunk in rows.chunks(INSERT_CHUNK) {
            insert_rows(&mut tx, chunk).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// One multi-row INSERT statement.
async fn insert_rows(conn: &mut SqliteConnection, rows: &[RowToInsert<'_>]) -> Result<()> {
    let mut query = QueryBuilder::<Sqlite>::new(
        "INSERT INTO log_records (kind, stream_key, sequence, id, ts_micros, payload) ",
    );
    query.push_values(rows, |mut row, r| {
        row.push_bind(r.stream.kind.as_str())
            .push_bind(&*r.stream.key)
            .push_bind(r.sequence as i64)
            .push_bind(r.id)
            .push_bind(r.ts_micros)
            .push_bind(r.payload);
    });
    query.build().execute(&mut *conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_lock_sits_beside_the_file() {
        let mut config = Config::in_dir(std::path::Path::new("/tmp/x"));
        assert_eq!(
            database_lock_path(&config).unwrap(),
            Some("/tmp/x/streamhub.db.lock".into())
        );
        config.database_url = "sqlite:data/a.db?mode=rwc".into();
        assert_eq!(
            database_lock_path(&config).unwrap(),
            Some("data/a.db.lock".into())
        );
        config.database_url = "sqlite::memory:".into();
        assert_eq!(database_lock_path(&config).unwrap(), None);
        config.database_url = "mysql://u:p@h/db".into();
        assert!(database_lock_path(&config).is_err());
    }
}
