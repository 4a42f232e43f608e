//! The single writer: the only task that appends to any log.
//!
//! Appends arrive on a bounded queue. The writer takes one request, drains whatever else is
//! already waiting (group commit), and commits them all in one transaction with multi-row
//! statements: one fsync for many callers. For each record it resolves idempotency, assigns
//! `head + 1` and a timestamp that never goes back, and only after COMMIT does it publish to the
//! hub and answer the callers. It never answers OK before the data is durable, and never
//! publishes a record that is not committed.

use super::hub::Hub;
use crate::error::{Error, Result};
use crate::store::{Head, LogRecord, RowToInsert, StoreWriter, StreamKey, StreamKind};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Most records that one group commit gathers from waiting requests. A single larger request
/// (a bulk import) still commits whole.
const MAX_GROUP_RECORDS: usize = 4096;
/// Streams whose heads stay cached; past this the cache starts again from the store.
const MAX_CACHED_HEADS: usize = 100_000;

/// A record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub stream: StreamKey,
    /// The idempotency id, unique within its stream. `None` means the server assigns a fresh
    /// UUID, which needs no lookup.
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

enum Command {
    Append {
        records: Vec<NewRecord>,
        reply: oneshot::Sender<Result<Vec<AppendOutcome>>>,
    },
    /// Finish everything queued before this, close the connection, then stop.
    Shutdown { done: oneshot::Sender<()> },
}

/// Upper bounds of the commit-size histogram (records per group commit).
pub const COMMIT_SIZE_BUCKETS: [u64; 14] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 65_536, 1_048_576,
];

/// Figures the writer keeps about itself, for tests and introspection.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Group commits done.
    pub commits: AtomicU64,
    /// Records stored by them.
    pub records: AtomicU64,
    /// Commits by size: `commit_sizes[i]` counts commits of at most `COMMIT_SIZE_BUCKETS[i]`
    /// records and more than the bound before it.
    pub commit_sizes: [AtomicU64; COMMIT_SIZE_BUCKETS.len()],
}

impl WriterStats {
    fn record_commit(&self, records: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        if let Some(bucket) = COMMIT_SIZE_BUCKETS
            .iter()
            .position(|bound| records as u64 <= *bound)
        {
            self.commit_sizes[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The handle services append through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    queue: mpsc::Sender<Command>,
    pub stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer task on `store`.
    pub fn spawn(store: StoreWriter, hub: Hub, queue_len: usize) -> Writer {
        let (queue, rx) = mpsc::channel(queue_len.max(1));
        let stats = Arc::new(WriterStats::default());
        tokio::spawn(run(store, hub, rx, stats.clone()));
        Writer { queue, stats }
    }

    /// Appends `records` atomically: all of them commit, or none. Returns one outcome each,
    /// in order, once they are durable.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<AppendOutcome>> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Command::Append { records, reply })
            .await
            .map_err(|_| Error::Unavailable)?;
        answer.await.map_err(|_| Error::Unavailable)?
    }

    /// Reserves a place in the queue. Appends made through permits reach the writer in the
    /// order the permits are used, so a caller can decide what to append under its own lock
    /// and still have the log keep that order.
    pub async fn reserve(&self) -> Result<AppendPermit<'_>> {
        let permit = self.queue.reserve().await.map_err(|_| Error::Unavailable)?;
        Ok(AppendPermit { permit })
    }

    /// Appends waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Lets every queued append finish, closes the database connection, and stops the task.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.queue.send(Command::Shutdown { done }).await.is_ok() {
            let _ = finished.await;
        }
    }
}

/// A reserved place in the writer's queue; see [`Writer::reserve`].
pub struct AppendPermit<'a> {
    permit: mpsc::Permit<'a, Command>,
}

impl AppendPermit<'_> {
    /// Queues `records` now, without waiting, and returns the pending answer.
    pub fn append(self, records: Vec<NewRecord>) -> PendingAppend {
        let (reply, answer) = oneshot::channel();
        self.permit.send(Command::Append { records, reply });
        PendingAppend(answer)
    }
}

/// The answer to an append queued through a permit. Awaiting it (also through `&mut`, which
/// keeps it when a `select!` picks another branch) waits until the records are durable.
pub struct PendingAppend(oneshot::Receiver<Result<Vec<AppendOutcome>>>);

impl PendingAppend {
    /// Waits until the records are durable (or failed).
    pub async fn outcome(self) -> Result<Vec<AppendOutcome>> {
        self.await
    }
}

impl std::future::Future for PendingAppend {
    type Output = Result<Vec<AppendOutcome>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.map_err(|_| Error::Unavailable)?)
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>>>;

async fn run(
    mut store: StoreWriter,
    hub: Hub,
    mut queue: mpsc::Receiver<Command>,
    stats: Arc<WriterStats>,
) {
    let mut heads: HashMap<StreamKey, Head> = HashMap::new();
    let mut shutdown = None;
    while shutdown.is_none() {
        let Some(first) = queue.recv().await else {
            break;
        };
        // Group commit: everything already waiting joins this transaction.
        let mut requests: Vec<Vec<NewRecord>> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut gathered = 0;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append { records, reply } => {
                    gathered += records.len();
                    requests.push(records);
                    replies.push(reply);
                }
                Command::Shutdown { done } => {
                    shutdown = Some(done);
                    break;
                }
            }
            if gathered < MAX_GROUP_RECORDS {
                next = queue.try_recv().ok();
            }
        }
        if requests.is_empty() {
            continue;
        }
        if heads.len() > MAX_CACHED_HEADS {
            heads.clear();
        }

        let started = std::time::Instant::now();
        match commit_group(&mut store, &mut heads, requests).await {
            Ok((outcomes, stored)) => {
                tracing::trace!(
                    requests = replies.len(),
                    records = stored.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "group committed"
                );
                stats.record_commit(stored.len());
                hub.publish(&stored);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
                // After the answers, so that only later groups wait for a truncation.
                if let Err(err) = store.bound_wal().await {
                    tracing::warn!(error = %crate::error::cause_chain(&err), "WAL truncation failed");
                }
            }
            Err(err) => {
                tracing::error!(
                    error = %crate::error::cause_chain(&err),
                    requests = replies.len(),
                    "group commit failed"
                );
                // Nothing was kept: cached heads may be ahead of the store.
                heads.clear();
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
    if let Err(err) = store.close().await {
        tracing::error!(error = %crate::error::cause_chain(&err), "closing the writer connection failed");
    }
    tracing::debug!("log writer stopped");
    if let Some(done) = shutdown {
        let _ = done.send(());
    }
}

/// What an appended record turns out to be, decided before anything is built.
enum Fate {
    New,
    /// Its id is already stored.
    Stored(Arc<LogRecord>),
    /// Its id came earlier in this group: (request, record) of that first copy.
    RepeatOf(usize, usize),
}

/// Commits one group atomically. Returns each request's outcomes and the newly stored records
/// in commit order. On error nothing is kept and `heads` may be stale: the caller clears it.
async fn commit_group(
    store: &mut StoreWriter,
    heads: &mut HashMap<StreamKey, Head>,
    requests: Vec<Vec<NewRecord>>,
) -> Result<(Vec<Vec<AppendOutcome>>, Vec<Arc<LogRecord>>)> {
    // Idempotency: one lookup per kind for every client-given id in the group. Ids are scoped
    // to their stream, so the lookup and every match below go by (stream, id).
    let mut ids_by_kind: HashMap<StreamKind, Vec<(&str, &str)>> = HashMap::new();
    for record in requests.iter().flatten() {
        if let Some(id) = &record.id {
            ids_by_kind
                .entry(record.stream.kind)
                .or_default()
                .push((&record.stream.key, id));
        }
    }
    let mut found: Vec<Arc<LogRecord>> = Vec::new();
    for (kind, keys) in ids_by_kind {
        found.extend(
            store
                .find_by_ids(kind, &keys)
                .await?
                .into_iter()
                .map(Arc::new),
        );
    }
    let already_stored: HashMap<(StreamKind, &str, &str), &Arc<LogRecord>> = found
        .iter()
        .map(|r| ((r.stream.kind, &*r.stream.key, r.id.as_str()), r))
        .collect();

    // Each record's fate, borrowing ids rather than copying them: a bulk import can bring a
    // million of them.
    let fates: Vec<Vec<Fate>> = {
        let mut first_copy: HashMap<(StreamKind, &str, &str), (usize, usize)> = HashMap::new();
        let mut fates = Vec::with_capacity(requests.len());
        for (r, request) in requests.iter().enumerate() {
            let mut request_fates = Vec::with_capacity(request.len());
            for (i, record) in request.iter().enumerate() {
                let fate = match record.id.as_deref() {
                    None => Fate::New,
                    Some(id) => {
                        let key = (record.stream.kind, &*record.stream.key, id);
                        if let Some(&stored) = already_stored.get(&key) {
                            Fate::Stored(stored.clone())
                        } else if let Some(&(fr, fi)) = first_copy.get(&key) {
                            Fate::RepeatOf(fr, fi)
                        } else {
                            first_copy.insert(key, (r, i));
                            Fate::New
                        }
                    }
                };
                request_fates.push(fate);
            }
            fates.push(request_fates);
        }
        fates
    };

    // Heads of streams not cached yet.
    for record in requests.iter().flatten() {
        if !heads.contains_key(&record.stream) {
            let head = store.head(&record.stream).await?;
            heads.insert(record.stream.clone(), head);
        }
    }

    let now = now_micros();
    let mut outcomes: Vec<Vec<AppendOutcome>> = Vec::with_capacity(requests.len());
    let mut stored = Vec::with_capacity(requests.iter().map(Vec::len).sum());
    for (r, (request, request_fates)) in requests.into_iter().zip(fates).enumerate() {
        let mut request_outcomes = Vec::with_capacity(request.len());
        for (record, fate) in request.into_iter().zip(request_fates) {
            let outcome = match fate {
                Fate::Stored(existing) => AppendOutcome::Duplicate(existing),
                Fate::RepeatOf(fr, fi) => {
                    let first = if fr == r {
                        &request_outcomes[fi]
                    } else {
                        &outcomes[fr][fi]
                    };
                    match first {
                        AppendOutcome::Stored(first) => AppendOutcome::Duplicate(first.clone()),
                        AppendOutcome::Duplicate(_) => {
                            return Err(Error::Internal("first copy of an id not stored".into()));
                        }
                        // The first copy lost its race for the head; so does this one.
                        AppendOutcome::Rejected { .. } => AppendOutcome::Rejected {
                            head: heads.get(&record.stream).map_or(0, |h| h.sequence),
                        },
                    }
                }
                Fate::New => {
                    let head = heads
                        .get_mut(&record.stream)
                        .ok_or_else(|| Error::Internal("head not loaded".into()))?;
                    if let Some(expected) = record.expect_head
                        && expected != head.sequence
                    {
                        request_outcomes.push(AppendOutcome::Rejected {
                            head: head.sequence,
                        });
                        continue;
                    }
                    head.sequence += 1;
                    head.ts_micros = head.ts_micros.max(now);
                    let new = Arc::new(LogRecord {
                        sequence: head.sequence,
                        ts_micros: head.ts_micros,
                        // Time-ordered ids keep the id index's inserts at its right edge.
                        id: record
                            .id
                            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                        stream: record.stream,
                        payload: record.payload,
                    });
                    stored.push(new.clone());
                    AppendOutcome::Stored(new)
                }
            };
            request_outcomes.push(outcome);
        }
        outcomes.push(request_outcomes);
    }

    let mut rows: Vec<RowToInsert<'_>> = stored
        .iter()
        .map(|r| RowToInsert {
            stream: &r.stream,
            sequence: r.sequence,
            id: &r.id,
            ts_micros: r.ts_micros,
            payload: &r.payload,
        })
        .collect();
    store.insert_atomic(&mut rows).await?;
    Ok((outcomes, stored))
}
