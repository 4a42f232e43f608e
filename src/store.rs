//! The store: every line of SQL in streamhub lives here, for SQLite and for PostgreSQL.
//!
//! `DATABASE_URL` picks the database. SQLite (the default, one server): WAL, the configured
//! `synchronous`, a busy timeout, migrations from `migrations/`. PostgreSQL (several replicas
//! on one database): a connection pool, migrations from `migrations_pg/` (see `pg`). Either way
//! it offers two faces: [`Store`], reads for replays and lookups plus the queue that hands
//! writes to the writer thread, and [`LogWriter`], the write side that only the writer thread
//! (`crate::log::writer`) holds. It knows nothing of gRPC, of the hub, or of what a payload
//! means.

mod engine;
mod files;
mod metrics;
mod notify;
pub mod pg;
mod reader;
pub mod spill;

pub use engine::{
    AppendOutcome, GroupOutcome, ImportOutcome, MAX_LISTED_CONFLICTS, NewRecord, SqliteWriter,
    now_micros,
};
pub use files::{FileRow, QuotaRefusal, StorageLimits};
use reader::LogReaders;
pub use reader::page_is_full;
use spill::SpillReader;

use crate::config::{Config, SyncMode};
use crate::error::{Error, Result};
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use std::{fmt, str::FromStr, sync::Arc, time::Duration};
use tokio::sync::{mpsc, oneshot};

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

/// One stream of a listing ([`Store::list_streams`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamListing {
    pub key: String,
    /// The stream's last sequence (at least 1: listings leave empty streams out).
    pub head: u64,
    /// The commit time of its last record, in microseconds since the Unix epoch.
    pub last_ts_micros: i64,
}

/// A range of keys in bytewise order (the order of SQLite's BINARY collation and PostgreSQL's
/// "C"): the keys that start with a prefix, from a point on. A prefix is plain text, so `%`
/// and `_` in it are only themselves: the range is two comparisons, never a LIKE pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Where the range starts.
    pub from: String,
    /// Whether `from` itself is left out: the page before ended with it.
    pub from_excluded: bool,
    /// The first key past the range, excluded; `None` runs to the last key.
    pub below: Option<String>,
}

impl KeyRange {
    /// The keys that start with `prefix`, after `after` when given.
    ///
    /// The keys that start with `p` are exactly those at or after `p` and before `p` with its
    /// last character replaced by the next one (dropping trailing characters that have none):
    /// UTF-8 orders by code point, and no character's encoding is a prefix of another's. Each
    /// bound stays valid text, which PostgreSQL requires of a TEXT parameter.
    pub fn prefixed(prefix: &str, after: Option<&str>) -> KeyRange {
        let (from, from_excluded) = match after {
            // `str` compares bytewise, as the databases do here.
            Some(after) if after >= prefix => (after.to_string(), true),
            _ => (prefix.to_string(), false),
        };
        let mut below: Vec<char> = prefix.chars().collect();
        let below = loop {
            let Some(last) = below.pop() else {
                break None;
            };
            let next = match last {
                '\u{D7FF}' => Some('\u{E000}'),
                c => char::from_u32(c as u32 + 1),
            };
            if let Some(next) = next {
                below.push(next);
                break Some(below.into_iter().collect());
            }
        };
        KeyRange {
            from,
            from_excluded,
            below,
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &str) -> bool {
        let after_start = if self.from_excluded {
            key > self.from.as_str()
        } else {
            key >= self.from.as_str()
        };
        after_start && self.below.as_deref().is_none_or(|below| key < below)
    }
}

/// Refuses a database URL this build cannot serve, before anything is created in its name.
/// Without this check, sqlx would take `postgres://u:p@host/db` for a SQLite file name and
/// create `./postgres:/u:p@host/db`.
fn check_database_url(url: &str) -> Result<()> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme);
    match scheme {
        Some(scheme) if scheme.eq_ignore_ascii_case("sqlite") => Ok(()),
        Some(_) if is_postgres_url(url) => Err(Error::Config(format!(
            "DATABASE_URL {} is PostgreSQL, which has no database file",
            crate::secret::redact_url(url)
        ))),
        Some(scheme) if !scheme.is_empty() && !scheme.contains(['/', '\\', '.']) => {
            Err(Error::Config(format!(
                "unsupported DATABASE_URL scheme `{scheme}:` in {}: use \
                 sqlite://path/to/streamhub.db (one server) or postgres://user@host/db \
                 (several replicas)",
                crate::secret::redact_url(url)
            )))
        }
        _ => Err(Error::Config(format!(
            "DATABASE_URL {} is not a URL; use sqlite://path/to/streamhub.db or \
             postgres://user@host/db",
            crate::secret::redact_url(url)
        ))),
    }
}

/// Whether `url` names a PostgreSQL database (`postgres:` or `postgresql:`).
pub fn is_postgres_url(url: &str) -> bool {
    url.split_once(':').is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
    })
}

/// Where the database's single-server lock lives: beside the SQLite file, as `<file>.lock`,
/// from the same parse of `DATABASE_URL` that opens the database (so an unsupported URL is
/// refused here, before anything is created). `None` for an in-memory database, and for
/// PostgreSQL, which several replicas share by design.
pub fn database_lock_path(config: &Config) -> Result<Option<std::path::PathBuf>> {
    if config.is_postgres() {
        return Ok(None);
    }
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

/// How much disk a SQLite database takes for the records it holds, for `streamhub bench`.
pub struct Footprint {
    /// The database file and its WAL, in bytes.
    pub bytes: u64,
    /// Records in the log, every kind.
    pub records: u64,
}

/// Measures the SQLite database at `database_url` from outside its server: the sizes of the file
/// and its WAL, and the log's record count through a read-only connection (WAL mode lets it read
/// beside a running server). PostgreSQL has no single file to measure, so it is refused.
pub async fn footprint(database_url: &str) -> Result<Footprint> {
    if is_postgres_url(database_url) {
        return Err(Error::Config(
            "disk per record is measured on a SQLite database only".into(),
        ));
    }
    check_database_url(database_url)?;
    let options = SqliteConnectOptions::from_str(database_url)
        .map_err(|e| {
            Error::Config(format!(
                "invalid database URL {}: {e}",
                crate::secret::redact_url(database_url)
            ))
        })?
        .read_only(true);
    let file = options.get_filename().to_path_buf();
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let bytes = size(&file) + size(std::path::Path::new(&wal));
    let mut connection = SqliteConnection::connect_with(&options).await?;
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM log")
        .fetch_one(&mut connection)
        .await?;
    let _ = connection.close().await;
    Ok(Footprint {
        bytes,
        records: records.max(0) as u64,
    })
}

/// Where imports spill while they arrive: the database file's directory (the storage directory
/// for an in-memory database).
pub fn spill_dir(config: &Config) -> Result<std::path::PathBuf> {
    Ok(match database_lock_path(config)? {
        Some(lock) => match lock.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        },
        None => config.storage_dir.clone(),
    })
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

/// Everything that writes, as the writer thread receives it: log appends (gathered into group
/// commits), imports and jobs (each in a transaction of its own), and the final stop.
pub enum WriteCommand {
    Append {
        records: Vec<NewRecord>,
        reply: oneshot::Sender<Result<Vec<AppendOutcome>>>,
    },
    Import {
        kind: StreamKind,
        spill: SpillReader,
        reply: oneshot::Sender<Result<ImportOutcome>>,
    },
    /// A write outside the log (a file row, a cursor, metric points); it answers through its
    /// own channel.
    /// SQLite only: on PostgreSQL those writes go straight to the pool.
    Job(Box<dyn FnOnce(&mut LogWriter) + Send>),
    /// Finish everything queued before this, truncate the WAL, close, then stop.
    Shutdown { done: oneshot::Sender<()> },
}

/// The writer's side of the store: its connection and the queue it serves.
pub struct WriteQueue {
    pub writer: LogWriter,
    pub commands: mpsc::Receiver<WriteCommand>,
    pub sender: mpsc::Sender<WriteCommand>,
}

/// The writer thread's side of the store: the SQLite connection, or the PostgreSQL pool.
pub enum LogWriter {
    Sqlite(SqliteWriter),
    Postgres(pg::PgWriter),
}

impl LogWriter {
    /// Commits one group atomically; see [`SqliteWriter::append_group`].
    pub fn append_group(&mut self, requests: Vec<Vec<NewRecord>>) -> Result<GroupOutcome> {
        match self {
            LogWriter::Sqlite(writer) => writer.append_group(requests),
            LogWriter::Postgres(writer) => writer.append_group(requests),
        }
    }

    /// Commits a spilled import in one transaction of its own.
    pub fn import(&mut self, kind: StreamKind, spill: SpillReader) -> Result<ImportOutcome> {
        match self {
            LogWriter::Sqlite(writer) => writer.import(kind, spill),
            LogWriter::Postgres(writer) => writer.import(kind, spill),
        }
    }

    /// Runs a SQLite job in a transaction of its own.
    pub fn run_job<T>(
        &mut self,
        job: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        match self {
            LogWriter::Sqlite(writer) => writer.run_job(job),
            LogWriter::Postgres(_) => Err(Error::Internal(
                "a SQLite write job was sent to the PostgreSQL store".into(),
            )),
        }
    }

    /// SQLite: keeps the WAL under its bound. Nothing to do on PostgreSQL.
    pub fn bound_wal(&mut self) -> Result<()> {
        match self {
            LogWriter::Sqlite(writer) => writer.bound_wal(),
            LogWriter::Postgres(_) => Ok(()),
        }
    }

    /// SQLite: truncates a WAL that an import grew. Nothing to do on PostgreSQL.
    pub fn settle_after_large(&mut self) -> Result<()> {
        match self {
            LogWriter::Sqlite(writer) => writer.settle_after_large(),
            LogWriter::Postgres(_) => Ok(()),
        }
    }

    pub fn close(self) {
        match self {
            LogWriter::Sqlite(writer) => writer.close(),
            LogWriter::Postgres(writer) => writer.close(),
        }
    }
}

/// How often the background checkpointer moves committed WAL pages into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Read-only connections of the log engine: replays and head look-ups, one page per use.
const LOG_READERS: usize = 8;

/// Opens the database: creates its directory and file if needed, runs migrations, and returns
/// the read side and the writer's queue.
pub async fn open(config: &Config) -> Result<(Store, WriteQueue)> {
    let (sender, commands) = mpsc::channel(config.writer_queue.max(1));
    if config.is_postgres() {
        let pg = pg::open(config).await?;
        let writer = LogWriter::Postgres(pg::PgWriter::open(&pg).await?);
        return Ok((
            Store {
                writes: sender.clone(),
                backend: Backend::Postgres(Box::new(pg)),
            },
            WriteQueue {
                writer,
                commands,
                sender,
            },
        ));
    }
    let options = connect_options(config)?;
    let path = options.get_filename().to_path_buf();
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    {
        let mut migrator = SqliteConnection::connect_with(&options).await?;
        sqlx::migrate!("./migrations").run(&mut migrator).await?;
        migrator.close().await?;
    }
    let one_checkpoint_at_a_time = Arc::new(std::sync::Mutex::new(()));
    let writer = LogWriter::Sqlite(SqliteWriter::open(
        &path,
        config.sync == SyncMode::Full,
        config.max_wal_bytes,
        one_checkpoint_at_a_time.clone(),
    )?);
    let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let checkpoints = engine::checkpoint_in_background(
        path.clone(),
        CHECKPOINT_INTERVAL,
        stop.clone(),
        one_checkpoint_at_a_time,
    )?;

    let readers = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(options.read_only(true))
        .await?;
    Ok((
        Store {
            writes: sender.clone(),
            backend: Backend::Sqlite(SqliteSide {
                readers,
                log_readers: LogReaders::new(path, LOG_READERS),
                checkpointer: Arc::new(Checkpointer {
                    stop,
                    thread: std::sync::Mutex::new(Some(checkpoints)),
                }),
            }),
        },
        WriteQueue {
            writer,
            commands,
            sender,
        },
    ))
}

/// The read side, and the way to hand writes to the writer thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// The writer thread's queue, for jobs.
    writes: mpsc::Sender<WriteCommand>,
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteSide),
    /// Boxed: its connect options are large, and a `Store` is cloned into every service.
    Postgres(Box<pg::PgStore>),
}

/// SQLite's read side.
#[derive(Clone, Debug)]
struct SqliteSide {
    /// sqlx read-only connections, for files and metrics.
    readers: SqlitePool,
    /// The log engine's read-only connections.
    log_readers: Arc<LogReaders>,
    checkpointer: Arc<Checkpointer>,
}

/// The background checkpoint thread, stopped before the final truncation.
#[derive(Debug)]
struct Checkpointer {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Checkpointer {
    fn stop(&self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Records a subscriber reads per page at most, and bytes of payload per page at most (a page
/// is the unit a subscriber holds in memory).
pub const PAGE_RECORDS: u32 = 1000;
pub const PAGE_BYTES: usize = 1 << 20;

impl Store {
    /// Records of `stream` after `after`, in order, none past `until`: at most `limit`, and
    /// fewer once a page holds [`PAGE_BYTES`] of payload.
    pub async fn read_page(
        &self,
        stream: &StreamKey,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LogRecord>> {
        match &self.backend {
            Backend::Sqlite(sqlite) => {
                sqlite
                    .log_readers
                    .read_page(stream, after, until, limit)
                    .await
            }
            Backend::Postgres(pg) => pg.read_page(stream, after, until, limit).await,
        }
    }

    /// [`Self::read_page`] for subscribers: callers asking for the same page at the same time
    /// share one read. `not_before` is when the caller learned it needs the page (the read's
    /// snapshot is at least that new).
    pub async fn read_page_shared(
        &self,
        stream: &StreamKey,
        after: u64,
        until: Option<u64>,
        limit: u32,
        not_before: std::time::Instant,
    ) -> Result<Arc<Vec<LogRecord>>> {
        match &self.backend {
            Backend::Sqlite(sqlite) => {
                sqlite
                    .log_readers
                    .read_page_shared(stream, after, until, limit, not_before)
                    .await
            }
            // Every PostgreSQL read sees everything committed before it began.
            Backend::Postgres(pg) => pg
                .read_page(stream, after, until, limit)
                .await
                .map(Arc::new),
        }
    }

    /// Up to `limit` records of `stream` before `before` (`None`: the newest), oldest first.
    pub async fn read_page_before(
        &self,
        stream: &StreamKey,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LogRecord>> {
        match &self.backend {
            Backend::Sqlite(sqlite) => {
                sqlite
                    .log_readers
                    .read_page_before(stream, before, limit)
                    .await
            }
            Backend::Postgres(pg) => pg.read_page_before(stream, before, limit).await,
        }
    }

    /// The last committed sequence of `stream` (0 when it is empty).
    pub async fn head(&self, stream: &StreamKey) -> Result<u64> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.log_readers.head(stream).await,
            Backend::Postgres(pg) => pg.head(stream).await,
        }
    }

    /// The first sequence whose timestamp is at or after `ts_micros`, or `head + 1` when none is.
    pub async fn first_sequence_at_or_after(
        &self,
        stream: &StreamKey,
        ts_micros: i64,
    ) -> Result<u64> {
        match &self.backend {
            Backend::Sqlite(sqlite) => {
                sqlite
                    .log_readers
                    .first_sequence_at_or_after(stream, ts_micros)
                    .await
            }
            Backend::Postgres(pg) => pg.first_sequence_at_or_after(stream, ts_micros).await,
        }
    }

    /// Up to `limit` streams of `kind` that hold at least one record, in the bytewise order of
    /// their keys, within `range` (see [`KeyRange`]). One range scan of the interned streams'
    /// index, plus one index seek per listed stream on SQLite (its head and last timestamp);
    /// never a scan of the records.
    pub async fn list_streams(
        &self,
        kind: StreamKind,
        range: &KeyRange,
        limit: u32,
    ) -> Result<Vec<StreamListing>> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.log_readers.list_streams(kind, range, limit).await,
            Backend::Postgres(pg) => pg.list_streams(kind, range, limit).await,
        }
    }

    /// The PostgreSQL store, when that is the database: what only several replicas need (the
    /// LISTEN connection, presence leases, upload claims).
    pub fn postgres(&self) -> Option<&pg::PgStore> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg.as_ref()),
            Backend::Sqlite(_) => None,
        }
    }

    /// SQLite's read side, for the SQLite half of a query method.
    fn sqlite(&self) -> Result<&SqliteSide> {
        match &self.backend {
            Backend::Sqlite(sqlite) => Ok(sqlite),
            Backend::Postgres(_) => Err(Error::Internal(
                "a SQLite query was sent to the PostgreSQL store".into(),
            )),
        }
    }

    /// Runs `job` on the writer thread in a transaction of its own (never inside a group
    /// commit): committed when it returns `Ok`, rolled back otherwise.
    pub(crate) async fn write<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(WriteCommand::Job(Box::new(
                move |writer: &mut LogWriter| {
                    let _ = reply.send(writer.run_job(job));
                },
            )))
            .await
            .map_err(|_| Error::Unavailable)?;
        answer.await.map_err(|_| Error::Unavailable)?
    }

    /// Closes every read connection and stops the background checkpointer. Call it before the
    /// writer's shutdown: the writer then truncates the WAL with no reader left to wait for.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(sqlite) => {
                sqlite.log_readers.close();
                sqlite.readers.close().await;
                let checkpointer = sqlite.checkpointer.clone();
                let _ = tokio::task::spawn_blocking(move || checkpointer.stop()).await;
            }
            // The pool closes with the writer, after the last queued write.
            Backend::Postgres(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_holds_exactly_the_keys_that_start_with_it() {
        let range = KeyRange::prefixed("ab", None);
        assert_eq!(
            (
                range.from.as_str(),
                range.from_excluded,
                range.below.as_deref()
            ),
            ("ab", false, Some("ac"))
        );
        assert_eq!(KeyRange::prefixed("", None).below, None);
        assert_eq!(
            KeyRange::prefixed("a\u{10FFFF}", None).below.as_deref(),
            Some("b")
        );
        assert_eq!(KeyRange::prefixed("\u{10FFFF}", None).below, None);
        assert_eq!(
            KeyRange::prefixed("x\u{D7FF}", None).below.as_deref(),
            Some("x\u{E000}")
        );
        // A page token before the prefix starts at the prefix; one inside it, after itself.
        assert_eq!(KeyRange::prefixed("b", Some("a")).from, "b");
        let after = KeyRange::prefixed("b", Some("b1"));
        assert_eq!((after.from.as_str(), after.from_excluded), ("b1", true));
        let keys = [
            "",
            "a",
            "a%",
            "a_",
            "a%b",
            "ab",
            "a\u{7f}",
            "a\u{80}",
            "a\u{FFFF}",
            "a\u{10FFFF}",
            "a\u{10FFFF}z",
            "b",
            "%",
            "_",
            "é",
            "éa",
            "ê",
        ];
        for prefix in ["", "a", "a%", "a_", "é", "a\u{10FFFF}", "\u{10FFFF}"] {
            for after in [None, Some("a"), Some("a%"), Some("é")] {
                let range = KeyRange::prefixed(prefix, after);
                for key in keys {
                    let expected = key.starts_with(prefix) && after.is_none_or(|a| key > a);
                    assert_eq!(
                        range.contains(key),
                        expected,
                        "{prefix:?} after {after:?}: {key:?}"
                    );
                }
            }
        }
    }

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
