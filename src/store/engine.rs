//! The log engine's write side on SQLite: the database's one read-write connection, owned by the
//! writer thread (`crate::log::writer`), with prepared, cached statements.
//!
//! It turns a group of appends into one IMMEDIATE transaction: it interns stream keys as integer
//! ids, assigns each stored record `head + 1` and a timestamp that never goes back, resolves
//! idempotency with the unique index on client-given ids (an insert that the index refuses is a
//! duplicate, so a new id costs no look-up), and commits with the configured `synchronous`.
//! Imports commit the same way from a spill file, in a transaction of their own. Other writes
//! (file rows, cursors, metrics) run as jobs in transactions of their own on the same connection,
//! so nothing else in the process ever takes SQLite's write lock.
//!
//! It must never answer or publish anything itself: it returns outcomes, and the writer thread
//! answers callers and feeds the hub only after a commit succeeded. Its caches change only after
//! a commit, so a failed transaction leaves nothing stale behind.

use super::spill::{SpillReader, SpilledRecord};
use super::{Head, LogRecord, StreamKey, StreamKind};
use crate::error::{Error, Result};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, Transaction, TransactionBehavior, params};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Streams whose ids and heads stay cached; past this the caches start again from the store.
const MAX_CACHED_STREAMS: usize = 100_000;
/// Conflicting records of an import listed by id; the rest are counted.
pub const MAX_LISTED_CONFLICTS: usize = 100;

/// A record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub stream: StreamKey,
    /// The idempotency id, unique within its stream. `None` means the server assigns a fresh
    /// UUID, which needs no lookup and no index entry.
    pub id: Option<String>,
    pub payload: Vec<u8>,
    /// Optimistic concurrency: store the record only if its stream's head is this sequence.
    /// Otherwise nothing is stored and the outcome is [`AppendOutcome::Rejected`].
    pub expect_head: Option<u64>,
}

/// What happened to one appended record.
#[derive(Debug, Clone)]
pub enum AppendOutcome {
    /// Newly stored.
    Stored(Arc<LogRecord>),
    /// A record with this id already existed in the same stream (or came earlier in the same
    /// group); this is that record. The caller decides whether the content matches.
    Duplicate(Arc<LogRecord>),
    /// `expect_head` did not match; `head` is the stream's head at commit time.
    Rejected { head: u64 },
}

/// A committed group: each request's outcomes, and the newly stored records in commit order.
pub type GroupOutcome = (Vec<Vec<AppendOutcome>>, Vec<Arc<LogRecord>>);

/// What an import did, counted rather than listed: an import may bring millions of records.
#[derive(Debug, Default)]
pub struct ImportOutcome {
    pub stored: u64,
    /// Records whose id was already stored (or came earlier in the import) with the same
    /// content: retries, not stored again.
    pub duplicates: u64,
    /// Records whose id was already stored with other content: not stored.
    pub conflicts: u64,
    /// The first [`MAX_LISTED_CONFLICTS`] conflicts: (batch index, id).
    pub listed_conflicts: Vec<(u64, String)>,
    /// The last stored record of each stream, for the hub: a live subscriber that sees it jump
    /// past its cursor re-reads the rest from the store, so the import is never held in memory.
    pub last_per_stream: Vec<Arc<LogRecord>>,
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// An id as stored: a canonical lowercase UUID as its 16 bytes, anything else as its text.
pub(crate) enum StoredId<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> StoredId<'a> {
    pub(crate) fn of(id: &'a str) -> Self {
        match uuid::Uuid::try_parse(id) {
            // Only the canonical form becomes bytes: `ABC…` or an unhyphenated UUID must come
            // back exactly as sent, so those stay text.
            Ok(uuid)
                if uuid
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer())
                    == id =>
            {
                StoredId::Uuid(*uuid.as_bytes())
            }
            _ => StoredId::Text(id),
        }
    }
}

impl ToSql for StoredId<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            StoredId::Uuid(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
            StoredId::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        })
    }
}

/// The text of a stored id: the exact id that was sent.
pub(crate) fn id_text(value: ValueRef<'_>) -> rusqlite::Result<String> {
    match value {
        ValueRef::Blob(bytes) => uuid::Uuid::from_slice(bytes)
            .map(|uuid| uuid.hyphenated().to_string())
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, value.data_type(), e.into())),
        ValueRef::Text(text) => std::str::from_utf8(text)
            .map(str::to_owned)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, value.data_type(), e.into())),
        other => Err(rusqlite::Error::InvalidColumnType(
            1,
            "id".into(),
            other.data_type(),
        )),
    }
}

/// Bits of a server-assigned id that carry the record's sequence.
const SERVER_ID_SEQUENCE_BITS: u32 = 42;
const SERVER_ID_SEQUENCE_MASK: u64 = (1 << SERVER_ID_SEQUENCE_BITS) - 1;

/// A server-assigned id: a UUIDv7 whose timestamp is the record's commit time (in ms), whose
/// last 42 bits are its sequence, and whose other 26 bits are random.
///
/// Server ids are not indexed. A client that sends one back (a retry with the id it was
/// answered, or an export imported again) must still find its record, and the sequence in the
/// id finds it with one primary-key seek: see [`sequence_of_server_id`]. The sequence is not a
/// secret (every event carries it), and nothing else about the stream is in the id.
fn server_id(ts_micros: i64, sequence: u64) -> [u8; 16] {
    let mut random = [0u8; 10];
    // A failing system RNG leaves the random bits zero; the id is still unique in its stream
    // (the sequence), so an append never fails for it.
    let _ = getrandom::fill(&mut random[..4]);
    let mut tail = u64::from_be_bytes(random[2..10].try_into().unwrap_or_default());
    tail |= sequence & SERVER_ID_SEQUENCE_MASK;
    random[2..10].copy_from_slice(&tail.to_be_bytes());
    let millis = u64::try_from(ts_micros / 1000).unwrap_or(0);
    *uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .as_bytes()
}

/// [`server_id`] as text, for a store that keeps ids as text (PostgreSQL).
pub(crate) fn server_id_text(ts_micros: i64, sequence: u64) -> String {
    uuid::Uuid::from_bytes(server_id(ts_micros, sequence))
        .hyphenated()
        .to_string()
}

/// The sequence a server-assigned id would carry, if `id` is shaped like one (a UUIDv7).
fn sequence_of_server_id(id: &[u8; 16]) -> Option<u64> {
    let uuid = uuid::Uuid::from_bytes(*id);
    if uuid.get_version_num() != 7 {
        return None;
    }
    let tail = u64::from_be_bytes(id[8..16].try_into().ok()?);
    Some(tail & SERVER_ID_SEQUENCE_MASK)
}

/// A record of `stream` from a row whose first four columns are sequence, id, ts_micros and
/// payload, as every query that builds records selects them.
pub(crate) fn record_from_row(
    stream: &StreamKey,
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<LogRecord> {
    Ok(LogRecord {
        stream: stream.clone(),
        sequence: row.get::<_, i64>(0)? as u64,
        id: id_text(row.get_ref(1)?)?,
        ts_micros: row.get(2)?,
        payload: row.get(3)?,
    })
}

/// The checkpoint modes this engine runs.
#[derive(Clone, Copy)]
enum Checkpoint {
    Passive,
    Restart,
    Truncate,
}

/// Runs one checkpoint and returns SQLite's answer: (busy, frames in the WAL, frames copied).
fn checkpoint(conn: &Connection, mode: Checkpoint) -> rusqlite::Result<(i64, i64, i64)> {
    let pragma = match mode {
        Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Checkpoint::Restart => "PRAGMA wal_checkpoint(RESTART)",
        Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    conn.query_row(pragma, [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

impl StreamKind {
    /// The value stored in `streams.kind`. Never change one: rows on disk carry it.
    pub fn code(self) -> i64 {
        match self {
            StreamKind::Events => 1,
            StreamKind::Notifications => 2,
            StreamKind::Chat => 3,
            StreamKind::Collab => 4,
        }
    }
}

/// The writer thread's connection. Only that thread holds it.
pub struct SqliteWriter {
    conn: Connection,
    /// Interned stream ids, as committed.
    streams: HashMap<StreamKey, i64>,
    /// Heads by stream id, as committed.
    heads: HashMap<i64, Head>,
    /// `<database>-wal`, watched after every commit.
    wal_path: std::path::PathBuf,
    /// Past this size the WAL is truncated before the next commit.
    max_wal_bytes: u64,
    /// Shared with the background checkpointer: SQLite runs one checkpoint at a time and fails a
    /// second one at once, so the truncation waits here for a running PASSIVE one instead.
    one_checkpoint_at_a_time: Arc<Mutex<()>>,
    /// When the writer next restarts the WAL.
    next_restart: std::time::Instant,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("cached_streams", &self.streams.len())
            .finish()
    }
}

/// The statements of an append, each prepared once per connection and then reused.
const FIND_STREAM: &str = "SELECT id FROM streams WHERE kind = ?1 AND key = ?2";
const INSERT_STREAM: &str = "INSERT INTO streams (kind, key) VALUES (?1, ?2)";
const HEAD: &str =
    "SELECT sequence, ts_micros FROM log WHERE stream = ?1 ORDER BY sequence DESC LIMIT 1";
/// A client-given id that the unique index already holds is left out (the caller then reads the
/// first copy); any other conflict, such as a taken (stream, sequence), is an error.
const INSERT_GIVEN: &str = "INSERT INTO log (stream, sequence, id, given, ts_micros, payload) \
     VALUES (?1, ?2, ?3, 1, ?4, ?5) ON CONFLICT (stream, id) WHERE given = 1 DO NOTHING";
const INSERT_ASSIGNED: &str = "INSERT INTO log (stream, sequence, id, given, ts_micros, payload) \
     VALUES (?1, ?2, ?3, 0, ?4, ?5)";
const FIND_GIVEN: &str = "SELECT sequence, id, ts_micros, payload FROM log \
     WHERE stream = ?1 AND id = ?2 AND given = 1";
const FIND_ASSIGNED: &str = "SELECT sequence, id, ts_micros, payload FROM log \
     WHERE stream = ?1 AND sequence = ?2 AND id = ?3 AND given = 0";

/// How long a WAL truncation waits for readers to leave old snapshots, per attempt. Short,
/// because the writer waits with it; a reader that stays longer only delays the truncation to a
/// later commit.
const WAL_TRUNCATE_WAIT: Duration = Duration::from_millis(100);
/// Attempts per commit, each waiting up to the time above for readers on old snapshots.
const WAL_TRUNCATE_ATTEMPTS: usize = 3;
/// A WAL larger than this after an import is truncated at once; see
/// [`SqliteWriter::settle_after_large`].
const SETTLE_AFTER_LARGE_BYTES: u64 = 16 << 20;
/// How often the writer restarts the WAL under steady load, and how soon it tries again when
/// readers or a running checkpoint kept it from doing so; see [`SqliteWriter::restart_wal`].
const WAL_RESTART_EVERY: Duration = Duration::from_millis(250);
const WAL_RESTART_RETRY: Duration = Duration::from_millis(50);
/// How long a restart waits for readers: a restart is an optimisation, so it gives up quickly.
const WAL_RESTART_WAIT: Duration = Duration::from_millis(5);
/// The writer's busy timeout outside truncations: long enough for a reader's checkpoint.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One transaction's view of the caches: what it interns and advances is kept here and merged
/// into the writer's caches only after COMMIT.
struct Pending<'w> {
    tx: Transaction<'w>,
    streams: &'w HashMap<StreamKey, i64>,
    heads: &'w HashMap<i64, Head>,
    new_streams: HashMap<StreamKey, i64>,
    new_heads: HashMap<i64, Head>,
    now: i64,
}

/// What one record turned out to be.
enum Appended {
    Stored {
        sequence: u64,
        ts_micros: i64,
        id: String,
    },
    Duplicate(LogRecord),
    Rejected {
        head: u64,
    },
}

impl<'w> Pending<'w> {
    fn stream_id(&mut self, stream: &StreamKey) -> Result<i64> {
        if let Some(&id) = self
            .streams
            .get(stream)
            .or_else(|| self.new_streams.get(stream))
        {
            return Ok(id);
        }
        let kind = stream.kind.code();
        let found: Option<i64> = self
            .tx
            .prepare_cached(FIND_STREAM)?
            .query_row(params![kind, &*stream.key], |row| row.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                self.tx
                    .prepare_cached(INSERT_STREAM)?
                    .execute(params![kind, &*stream.key])?;
                self.tx.last_insert_rowid()
            }
        };
        self.new_streams.insert(stream.clone(), id);
        Ok(id)
    }

    fn head(&mut self, stream_id: i64) -> Result<Head> {
        if let Some(head) = self
            .new_heads
            .get(&stream_id)
            .or_else(|| self.heads.get(&stream_id))
        {
            return Ok(*head);
        }
        let head = self
            .tx
            .prepare_cached(HEAD)?
            .query_row([stream_id], |row| {
                Ok(Head {
                    sequence: row.get::<_, i64>(0)? as u64,
                    ts_micros: row.get(1)?,
                })
            })
            .optional()?
            .unwrap_or_default();
        self.new_heads.insert(stream_id, head);
        Ok(head)
    }

    /// The server-assigned record with this id, when `id` is shaped like one.
    fn find_assigned(
        &mut self,
        stream_id: i64,
        head: u64,
        stream: &StreamKey,
        id: &str,
    ) -> Result<Option<LogRecord>> {
        let StoredId::Uuid(bytes) = StoredId::of(id) else {
            return Ok(None);
        };
        let Some(sequence) = sequence_of_server_id(&bytes).filter(|s| (1..=head).contains(s))
        else {
            return Ok(None);
        };
        Ok(self
            .tx
            .prepare_cached(FIND_ASSIGNED)?
            .query_row(
                params![stream_id, sequence as i64, StoredId::Uuid(bytes)],
                |row| record_from_row(stream, row),
            )
            .optional()?)
    }

    fn find_given(
        &mut self,
        stream_id: i64,
        stream: &StreamKey,
        id: &str,
    ) -> Result<Option<LogRecord>> {
        Ok(self
            .tx
            .prepare_cached(FIND_GIVEN)?
            .query_row(params![stream_id, StoredId::of(id)], |row| {
                record_from_row(stream, row)
            })
            .optional()?)
    }

    /// Appends one record in order after everything before it in this transaction.
    fn append(
        &mut self,
        stream: &StreamKey,
        id: Option<&str>,
        payload: &[u8],
        expect_head: Option<u64>,
    ) -> Result<Appended> {
        let stream_id = self.stream_id(stream)?;
        let head = self.head(stream_id)?;
        // A server-assigned id sent back is that record, not a new one.
        if let Some(id) = id
            && let Some(existing) = self.find_assigned(stream_id, head.sequence, stream, id)?
        {
            return Ok(Appended::Duplicate(existing));
        }
        if let Some(expected) = expect_head
            && expected != head.sequence
        {
            // A stored id answers with its record whatever the head: a retry of an append that
            // was stored is a duplicate, not a conflict.
            if let Some(id) = id
                && let Some(existing) = self.find_given(stream_id, stream, id)?
            {
                return Ok(Appended::Duplicate(existing));
            }
            return Ok(Appended::Rejected {
                head: head.sequence,
            });
        }
        let sequence = head.sequence + 1;
        let ts_micros = head.ts_micros.max(self.now);
        let stored_id = match id {
            Some(id) => {
                let inserted = self.tx.prepare_cached(INSERT_GIVEN)?.execute(params![
                    stream_id,
                    sequence as i64,
                    StoredId::of(id),
                    ts_micros,
                    payload
                ])?;
                if inserted == 0 {
                    let existing = self.find_given(stream_id, stream, id)?.ok_or_else(|| {
                        Error::Internal(format!("{stream}: id conflict without a stored id"))
                    })?;
                    return Ok(Appended::Duplicate(existing));
                }
                id.to_owned()
            }
            None => {
                // Time-ordered, so ids sort as they are made; stored as 16 bytes.
                let bytes = server_id(ts_micros, sequence);
                self.tx.prepare_cached(INSERT_ASSIGNED)?.execute(params![
                    stream_id,
                    sequence as i64,
                    StoredId::Uuid(bytes),
                    ts_micros,
                    payload
                ])?;
                uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
            }
        };
        self.new_heads.insert(
            stream_id,
            Head {
                sequence,
                ts_micros,
            },
        );
        Ok(Appended::Stored {
            sequence,
            ts_micros,
            id: stored_id,
        })
    }

    /// Commits and hands back what the caches learned.
    fn commit(self) -> Result<(HashMap<StreamKey, i64>, HashMap<i64, Head>)> {
        self.tx.commit()?;
        Ok((self.new_streams, self.new_heads))
    }
}

impl SqliteWriter {
    /// Opens the read-write connection on a database that migrations have already prepared.
    pub(crate) fn open(
        path: &std::path::Path,
        synchronous_full: bool,
        max_wal_bytes: u64,
        one_checkpoint_at_a_time: Arc<Mutex<()>>,
    ) -> Result<SqliteWriter> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        // The writer never checkpoints on its own: a checkpoint inside a commit would stall
        // every append behind it. The background checkpointer and `bound_wal` do it instead.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // 32 MiB of page cache (the default is 2 MiB), so the index pages of busy streams stay
        // in memory across appends, and an import's pages spill to the WAL late.
        conn.pragma_update(None, "cache_size", -32768)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "journal_size_limit", 67_108_864)?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(SqliteWriter {
            conn,
            streams: HashMap::new(),
            heads: HashMap::new(),
            wal_path: wal.into(),
            max_wal_bytes,
            one_checkpoint_at_a_time,
            next_restart: std::time::Instant::now(),
        })
    }

    fn begin(&mut self) -> Result<Pending<'_>> {
        if self.streams.len() > MAX_CACHED_STREAMS {
            self.streams.clear();
            self.heads.clear();
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        Ok(Pending {
            tx,
            streams: &self.streams,
            heads: &self.heads,
            new_streams: HashMap::new(),
            new_heads: HashMap::new(),
            now: now_micros(),
        })
    }

    fn learn(&mut self, (streams, heads): (HashMap<StreamKey, i64>, HashMap<i64, Head>)) {
        self.streams.extend(streams);
        self.heads.extend(heads);
    }

    /// Commits one group atomically. Returns each request's outcomes and the newly stored
    /// records in commit order. On error nothing is kept.
    pub fn append_group(&mut self, requests: Vec<Vec<NewRecord>>) -> Result<GroupOutcome> {
        let outcome = self.try_append_group(requests);
        if outcome.is_err() {
            self.forget();
        }
        outcome
    }

    /// After a failed transaction nothing it learned was kept, but the caches start again from
    /// the store anyway: if a head were ever stale, every later group on that stream would
    /// fail on the (stream, sequence) index.
    fn forget(&mut self) {
        self.streams.clear();
        self.heads.clear();
    }

    fn try_append_group(&mut self, requests: Vec<Vec<NewRecord>>) -> Result<GroupOutcome> {
        let mut pending = self.begin()?;
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut stored = Vec::new();
        for request in requests {
            let mut request_outcomes = Vec::with_capacity(request.len());
            for record in request {
                let outcome = match pending.append(
                    &record.stream,
                    record.id.as_deref(),
                    &record.payload,
                    record.expect_head,
                )? {
                    Appended::Stored {
                        sequence,
                        ts_micros,
                        id,
                    } => {
                        let new = Arc::new(LogRecord {
                            stream: record.stream,
                            sequence,
                            id,
                            ts_micros,
                            payload: record.payload,
                        });
                        stored.push(new.clone());
                        AppendOutcome::Stored(new)
                    }
                    Appended::Duplicate(existing) => AppendOutcome::Duplicate(Arc::new(existing)),
                    Appended::Rejected { head } => AppendOutcome::Rejected { head },
                };
                request_outcomes.push(outcome);
            }
            outcomes.push(request_outcomes);
        }
        let learned = pending.commit()?;
        self.learn(learned);
        Ok((outcomes, stored))
    }

    /// Commits every record of `spill` to streams of `kind` in one transaction: all of them,
    /// or none. A record whose id is already stored with the same content is a duplicate, with
    /// other content a conflict; neither is stored. Memory stays flat however long the spill.
    pub fn import(&mut self, kind: StreamKind, spill: SpillReader) -> Result<ImportOutcome> {
        let outcome = self.try_import(kind, spill);
        if outcome.is_err() {
            self.forget();
        }
        outcome
    }

    fn try_import(&mut self, kind: StreamKind, mut spill: SpillReader) -> Result<ImportOutcome> {
        let mut pending = self.begin()?;
        let mut outcome = ImportOutcome::default();
        let mut last: HashMap<StreamKey, (u64, i64, String)> = HashMap::new();
        let mut record = SpilledRecord::default();
        let mut stream = StreamKey::new(kind, "");
        while spill.next(&mut record)? {
            if *stream.key != *record.key {
                stream = StreamKey::new(kind, &record.key);
            }
            match pending.append(&stream, record.id.as_deref(), &record.payload, None)? {
                Appended::Stored {
                    sequence,
                    ts_micros,
                    id,
                } => {
                    outcome.stored += 1;
                    last.insert(stream.clone(), (sequence, ts_micros, id));
                }
                Appended::Duplicate(existing) if existing.payload == record.payload => {
                    outcome.duplicates += 1
                }
                Appended::Duplicate(existing) => {
                    outcome.conflicts += 1;
                    if outcome.listed_conflicts.len() < MAX_LISTED_CONFLICTS {
                        outcome.listed_conflicts.push((record.index, existing.id));
                    }
                }
                Appended::Rejected { .. } => {
                    return Err(Error::Internal(
                        "an import record had an expected head".into(),
                    ));
                }
            }
        }
        // The last records' payloads are read back before the commit, so that nothing can fail
        // after it: the hub delivers whole records, and only these few are needed.
        for (stream, (sequence, ts_micros, id)) in last {
            let stream_id = pending.stream_id(&stream)?;
            let payload: Vec<u8> = pending
                .tx
                .prepare_cached("SELECT payload FROM log WHERE stream = ?1 AND sequence = ?2")?
                .query_row(params![stream_id, sequence as i64], |row| row.get(0))?;
            outcome.last_per_stream.push(Arc::new(LogRecord {
                stream,
                sequence,
                id,
                ts_micros,
                payload,
            }));
        }
        let learned = pending.commit()?;
        self.learn(learned);
        Ok(outcome)
    }

    /// Runs `job` in a transaction of its own: committed when it returns `Ok`, rolled back
    /// otherwise.
    pub fn run_job<T>(&mut self, job: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = job(&tx)?;
        tx.commit()?;
        Ok(value)
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
    /// commit and never blocks the writer for long.
    ///
    /// Between truncations it restarts the WAL every [`WAL_RESTART_EVERY`] (see
    /// [`Self::restart_wal`]), so that under steady load the WAL holds a fraction of a second
    /// of frames and commits overwrite its first pages instead of growing the file.
    pub fn bound_wal(&mut self) -> Result<()> {
        let before = self.wal_bytes();
        if before > self.max_wal_bytes {
            return self.truncate_wal(before);
        }
        if std::time::Instant::now() >= self.next_restart {
            self.restart_wal()?;
        }
        Ok(())
    }

    /// A RESTART checkpoint: copies the few frames the background checkpointer has not copied
    /// yet, waits briefly for readers to leave the WAL, and makes the next commit write from the
    /// start of the file again. The file keeps its size (up to `journal_size_limit`), so those
    /// writes overwrite blocks the file system already holds. Without restarts a PASSIVE
    /// checkpoint never lets the WAL start over under steady load, every commit appends to the
    /// end of an ever longer file, and extending the file cost the writer thread more than its
    /// inserts (the kernel zeroes each new block). When a background checkpoint is running,
    /// or readers stay, it tries again a little later.
    fn restart_wal(&mut self) -> Result<()> {
        let now = std::time::Instant::now();
        let Ok(_turn) = self.one_checkpoint_at_a_time.try_lock() else {
            self.next_restart = now + WAL_RESTART_RETRY;
            return Ok(());
        };
        self.conn.busy_timeout(WAL_RESTART_WAIT)?;
        let outcome = checkpoint(&self.conn, Checkpoint::Restart);
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        let (busy, _, _) = outcome?;
        self.next_restart = now
            + if busy == 0 {
                WAL_RESTART_EVERY
            } else {
                WAL_RESTART_RETRY
            };
        Ok(())
    }

    /// Truncates the WAL right after a large transaction (an import) whenever it holds more
    /// than [`SETTLE_AFTER_LARGE_BYTES`]: the copy into the database then happens now, while
    /// that transaction's own caller has its answer, instead of piece by piece under the live
    /// traffic that follows, where every piece would slow its fsyncs.
    pub fn settle_after_large(&mut self) -> Result<()> {
        let before = self.wal_bytes();
        if before <= SETTLE_AFTER_LARGE_BYTES.min(self.max_wal_bytes) {
            return Ok(());
        }
        self.truncate_wal(before)
    }

    /// TRUNCATE checkpoints, up to [`WAL_TRUNCATE_ATTEMPTS`]; true once one succeeded.
    fn truncate_attempts(&self) -> Result<bool> {
        for _ in 0..WAL_TRUNCATE_ATTEMPTS {
            let (busy, wal_pages, copied) = checkpoint(&self.conn, Checkpoint::Truncate)?;
            if busy == 0 {
                return Ok(true);
            }
            tracing::debug!(
                wal_pages,
                copied,
                "WAL truncation waited for readers; retrying"
            );
        }
        Ok(false)
    }

    fn truncate_wal(&mut self, before: u64) -> Result<()> {
        let _turn = self
            .one_checkpoint_at_a_time
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.conn.busy_timeout(WAL_TRUNCATE_WAIT)?;
        let attempts = self.truncate_attempts();
        // The usual busy timeout comes back whatever the attempts gave.
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        let truncated = attempts?;
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

    /// A TRUNCATE checkpoint at shutdown, after every other connection that writes is gone: a
    /// clean stop leaves nothing in the WAL to replay or to take disk space.
    pub fn close(self) {
        let _turn = self
            .one_checkpoint_at_a_time
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match checkpoint(&self.conn, Checkpoint::Truncate) {
            Ok((0, _, _)) => tracing::debug!("WAL truncated at shutdown"),
            Ok((_, wal_pages, copied)) => {
                tracing::warn!(wal_pages, copied, "WAL could not be truncated at shutdown")
            }
            Err(e) => tracing::warn!(error = %e, "final checkpoint failed"),
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::error!(error = %e, "closing the writer connection failed");
        }
    }
}

/// Runs PASSIVE checkpoints every `interval` until `stop` is set, on its own thread and its own
/// connection. PASSIVE never waits for readers or the writer; what it cannot copy now it copies
/// next time. It never resets the WAL under steady load: that is [`SqliteWriter::bound_wal`].
pub(crate) fn checkpoint_in_background(
    path: std::path::PathBuf,
    interval: Duration,
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    one_checkpoint_at_a_time: Arc<Mutex<()>>,
) -> Result<std::thread::JoinHandle<()>> {
    let conn = Connection::open(&path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(std::thread::Builder::new()
        .name("streamhub-checkpoint".into())
        .spawn(move || {
            let (stopped, wake) = &*stop;
            let mut guard = stopped.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let (next, _) = wake
                    .wait_timeout(guard, interval)
                    .unwrap_or_else(|p| p.into_inner());
                guard = next;
                if *guard {
                    break;
                }
                let _turn = one_checkpoint_at_a_time
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match checkpoint(&conn, Checkpoint::Passive) {
                    Ok((busy, wal_pages, copied)) => {
                        tracing::trace!(busy, wal_pages, copied, "checkpoint")
                    }
                    Err(e) => tracing::warn!(error = %e, "background checkpoint failed"),
                }
            }
        })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_id_is_a_v7_uuid_that_carries_its_sequence_and_time() {
        let ts_micros = 1_796_000_000_123_456;
        for sequence in [1, 2, 1000, SERVER_ID_SEQUENCE_MASK] {
            let id = server_id(ts_micros, sequence);
            let uuid = uuid::Uuid::from_bytes(id);
            assert_eq!(uuid.get_version_num(), 7);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            assert_eq!(
                secs * 1000 + u64::from(nanos) / 1_000_000,
                1_796_000_000_123
            );
            assert_eq!(sequence_of_server_id(&id), Some(sequence));
            // Canonical, so it is stored as these 16 bytes and read back as the same text.
            let text = uuid.hyphenated().to_string();
            assert!(matches!(StoredId::of(&text), StoredId::Uuid(b) if b == id));
        }
        assert_eq!(sequence_of_server_id(uuid::Uuid::new_v4().as_bytes()), None);
        // Two ids of one record time and sequence differ in their random bits.
        assert_ne!(server_id(ts_micros, 7), server_id(ts_micros, 7));
    }
}
