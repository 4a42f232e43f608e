//! The log engine's read side on SQLite: a small pool of read-only connections with prepared,
//! cached statements, each used on a blocking thread for a whole page at a time.
//!
//! A page is one statement run to its end on one thread, so a replay costs one hand-off per page
//! rather than one per row. Pages are bounded in bytes as well as in records, so a subscriber's
//! memory stays bounded however large its records. It must never write.

use super::PAGE_BYTES;
use super::engine::record_from_row;
use super::{KeyRange, LogRecord, StreamKey, StreamKind, StreamListing};
use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Read-only connections, opened on demand up to `max` and kept for reuse.
#[derive(Debug)]
pub struct LogReaders {
    path: std::path::PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Bounds the connections in use at once (and so the blocking threads they hold).
    in_use: Arc<tokio::sync::Semaphore>,
    /// Page reads in flight, shared by every subscriber that asks for the same page meanwhile.
    flights: Mutex<HashMap<PageKey, Flight>>,
}

/// What a page read is: stream, after, until, limit.
type PageKey = (StreamKey, u64, Option<u64>, u32);

/// One page read in flight.
#[derive(Debug)]
struct Flight {
    /// Its snapshot is at least as new as this.
    started: Instant,
    page: Arc<tokio::sync::OnceCell<Arc<Vec<LogRecord>>>>,
}

/// Removes a flight from the map when its first finisher is done with it.
struct EndsFlight<'a> {
    readers: &'a LogReaders,
    key: &'a PageKey,
    page: &'a Arc<tokio::sync::OnceCell<Arc<Vec<LogRecord>>>>,
}

impl Drop for EndsFlight<'_> {
    fn drop(&mut self) {
        let mut flights = self
            .readers
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if flights
            .get(self.key)
            .is_some_and(|flight| Arc::ptr_eq(&flight.page, self.page))
        {
            flights.remove(self.key);
        }
    }
}

/// The stream's id, from the key, inside each statement: one statement per read, no cache to
/// keep in step with the writer. A macro, so that every statement stays a `&'static str`.
macro_rules! stream_id {
    () => {
        "(SELECT id FROM streams WHERE kind = ?1 AND key = ?2)"
    };
}
const PAGE_AFTER: &str = concat!(
    "SELECT sequence, id, ts_micros, payload FROM log WHERE stream = ",
    stream_id!(),
    " AND sequence > ?3 AND sequence <= ?4 ORDER BY sequence LIMIT ?5"
);
const PAGE_BEFORE: &str = concat!(
    "SELECT sequence, id, ts_micros, payload FROM log WHERE stream = ",
    stream_id!(),
    " AND sequence < ?3 ORDER BY sequence DESC LIMIT ?4"
);
const TS_AT: &str = concat!(
    "SELECT ts_micros FROM log WHERE stream = ",
    stream_id!(),
    " AND sequence = ?3"
);
const HEAD: &str = concat!(
    "SELECT max(sequence) FROM log WHERE stream = ",
    stream_id!()
);

/// The streams of a listing: a range scan of `streams`' unique (kind, key) index, in its
/// (BINARY, bytewise) order, and for each stream one seek of the (stream, sequence) index for its
/// last record, whose row gives the timestamp. A stream without records finds no last record and
/// drops out of the join. ?1 kind, ?2 the range's start, ?3 the limit, ?4 its end. A macro, so
/// that the four shapes (start included or not, end or none) stay `&'static str`s with their own
/// index bounds: a bound written as `?4 IS NULL OR …` would not bound the scan.
macro_rules! list_streams {
    ($from:literal, $below:literal) => {
        concat!(
            "SELECT s.key, l.sequence, l.ts_micros FROM streams s JOIN log l ON l.position = \
             (SELECT position FROM log WHERE stream = s.id ORDER BY sequence DESC LIMIT 1) \
             WHERE s.kind = ?1 AND s.key ",
            $from,
            " ?2",
            $below,
            " ORDER BY s.key LIMIT ?3"
        )
    };
}
const LIST_FROM: &str = list_streams!(">=", "");
const LIST_AFTER: &str = list_streams!(">", "");
const LIST_FROM_BELOW: &str = list_streams!(">=", " AND s.key < ?4");
const LIST_AFTER_BELOW: &str = list_streams!(">", " AND s.key < ?4");

/// Whether a page read with `limit` may have stopped before the end: it holds `limit` records,
/// or reached [`PAGE_BYTES`] of payload. Only a page short of both reached the end.
pub fn page_is_full(page: &[LogRecord], limit: u32) -> bool {
    page.len() >= limit as usize
        || page.iter().map(|r| r.payload.len()).sum::<usize>() >= PAGE_BYTES
}

impl LogReaders {
    pub fn new(path: std::path::PathBuf, max: usize) -> Arc<LogReaders> {
        Arc::new(LogReaders {
            path,
            idle: Mutex::new(Vec::new()),
            in_use: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
            flights: Mutex::new(HashMap::new()),
        })
    }

    fn connect(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(super::engine::BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }

    /// Runs `read` on a pooled connection on a blocking thread. The permit goes with the read,
    /// so a caller that gives up does not free its place before the read is over.
    async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = self
            .in_use
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable)?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                Some(conn) => conn,
                None => pool.connect()?,
            };
            let result = read(&conn);
            if !pool.in_use.is_closed() {
                pool.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn);
            }
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("a read task failed: {e}")))?
    }

    /// Refuses new reads and closes the idle connections; a read in progress closes its own
    /// when it ends. After this no reader keeps the WAL from being truncated.
    pub fn close(&self) {
        self.in_use.close();
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Records of `stream` after `after`, in order, none past `until`: at most `limit` of
    /// them, and no more once [`PAGE_BYTES`] of payload are in the page (but always at least
    /// one).
    pub async fn read_page(
        self: &Arc<Self>,
        stream: &StreamKey,
        after: u64,
        until: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LogRecord>> {
        let stream = stream.clone();
        self.with(move |conn| {
            let mut statement = conn.prepare_cached(PAGE_AFTER)?;
            let mut rows = statement.query(params![
                stream.kind.code(),
                &*stream.key,
                // A client may ask for anything after a sequence past what SQLite stores.
                after.min(i64::MAX as u64) as i64,
                until.map_or(i64::MAX, |u| u.min(i64::MAX as u64) as i64),
                limit
            ])?;
            let mut page = Vec::new();
            let mut bytes = 0;
            while let Some(row) = rows.next()? {
                let record = record_from_row(&stream, row)?;
                bytes += record.payload.len();
                page.push(record);
                if bytes >= PAGE_BYTES {
                    break;
                }
            }
            Ok(page)
        })
        .await
    }

    /// [`Self::read_page`], shared: subscribers lagging on one stream (a herd woken by the same
    /// burst) that ask for the same page while it is being read all get that one read, instead
    /// of each reading the same rows again. `not_before` is when the caller learned that it
    /// needs the page: only a read that started since then has a snapshot new enough to hold
    /// every record the caller knows to be committed.
    pub async fn read_page_shared(
        self: &Arc<Self>,
        stream: &StreamKey,
        after: u64,
        until: Option<u64>,
        limit: u32,
        not_before: Instant,
    ) -> Result<Arc<Vec<LogRecord>>> {
        let key: PageKey = (stream.clone(), after, until, limit);
        let cell = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&key) {
                Some(flight) if flight.started >= not_before => flight.page.clone(),
                _ => {
                    let page = Arc::new(tokio::sync::OnceCell::new());
                    flights.insert(
                        key.clone(),
                        Flight {
                            started: Instant::now(),
                            page: page.clone(),
                        },
                    );
                    page
                }
            }
        };
        // Whoever finishes (or gives up) first ends the flight: only reads in flight are
        // shared, since a finished page would soon be stale and holding pages would hold their
        // memory. A guard, so that a caller dropped mid-read ends it too.
        let _ends = EndsFlight {
            readers: self,
            key: &key,
            page: &cell,
        };
        cell.get_or_try_init(|| async {
            self.read_page(stream, after, until, limit)
                .await
                .map(Arc::new)
        })
        .await
        .cloned()
    }

    /// Up to `limit` records of `stream` before `before` (`None`: the newest), oldest first.
    pub async fn read_page_before(
        self: &Arc<Self>,
        stream: &StreamKey,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LogRecord>> {
        let stream = stream.clone();
        self.with(move |conn| {
            let mut statement = conn.prepare_cached(PAGE_BEFORE)?;
            let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            let mut records = statement
                .query_map(
                    params![stream.kind.code(), &*stream.key, before, limit],
                    |row| record_from_row(&stream, row),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            records.reverse();
            Ok(records)
        })
        .await
    }

    /// The last committed sequence of `stream` (0 when it is empty).
    pub async fn head(self: &Arc<Self>, stream: &StreamKey) -> Result<u64> {
        let stream = stream.clone();
        self.with(move |conn| head(conn, &stream)).await
    }

    /// The first sequence whose timestamp is at or after `ts_micros`, or `head + 1` when none
    /// is. Timestamps never decrease along a stream, so this is a binary search over
    /// sequences: about 20 primary-key seeks for a million records, all on one thread, and no
    /// timestamp index to maintain on every append.
    pub async fn first_sequence_at_or_after(
        self: &Arc<Self>,
        stream: &StreamKey,
        ts_micros: i64,
    ) -> Result<u64> {
        let stream = stream.clone();
        self.with(move |conn| {
            // One read transaction, so the head and every probe see the same snapshot.
            conn.execute_batch("BEGIN")?;
            let found = (|| {
                let head = head(conn, &stream)?;
                let mut probe = conn.prepare_cached(TS_AT)?;
                let (mut lo, mut hi) = (1u64, head + 1);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    let ts: Option<i64> = probe
                        .query_row(
                            params![stream.kind.code(), &*stream.key, mid as i64],
                            |row| row.get(0),
                        )
                        .optional()?;
                    match ts {
                        Some(ts) if ts >= ts_micros => hi = mid,
                        Some(_) => lo = mid + 1,
                        None => return Err(Error::Internal(format!("hole at {stream} #{mid}"))),
                    }
                }
                Ok(lo)
            })();
            conn.execute_batch("COMMIT")?;
            found
        })
        .await
    }
}

impl LogReaders {
    /// See [`super::Store::list_streams`].
    pub async fn list_streams(
        self: &Arc<Self>,
        kind: StreamKind,
        range: &KeyRange,
        limit: u32,
    ) -> Result<Vec<StreamListing>> {
        let range = range.clone();
        self.with(move |conn| {
            let sql = match (range.from_excluded, range.below.is_some()) {
                (false, false) => LIST_FROM,
                (true, false) => LIST_AFTER,
                (false, true) => LIST_FROM_BELOW,
                (true, true) => LIST_AFTER_BELOW,
            };
            let mut statement = conn.prepare_cached(sql)?;
            let listing = |row: &rusqlite::Row<'_>| {
                Ok(StreamListing {
                    key: row.get(0)?,
                    head: row.get::<_, i64>(1)? as u64,
                    last_ts_micros: row.get(2)?,
                })
            };
            let rows = match &range.below {
                None => statement.query_map(params![kind.code(), range.from, limit], listing)?,
                Some(below) => {
                    statement.query_map(params![kind.code(), range.from, limit, below], listing)?
                }
            };
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

fn head(conn: &Connection, stream: &StreamKey) -> Result<u64> {
    let head: Option<i64> = conn
        .prepare_cached(HEAD)?
        .query_row(params![stream.kind.code(), &*stream.key], |row| row.get(0))?;
    Ok(head.unwrap_or(0) as u64)
}
