//! The single writer: the one thread that writes to the database.
//!
//! Everything that writes arrives on one bounded queue. The thread takes one command; when it is
//! an append, it drains every other append already waiting (group commit) and commits them all in
//! one transaction: one fsync for many callers. Imports and jobs run alone, each in a transaction
//! of its own, so a large one never holds small appends in its commit. Only after COMMIT does it
//! answer the callers, and only then publish to the hub: callers never wait for fan-out, and no
//! subscriber ever sees a record that is not durable.
//!
//! It owns its connection on a dedicated OS thread, so a commit is a direct call into SQLite with
//! prepared statements: no hand-off per statement.

use super::hub::Hub;
use crate::error::{Error, Result};
pub use crate::store::{AppendOutcome, ImportOutcome, NewRecord};
use crate::store::{LogWriter, StreamKind, WriteCommand, WriteQueue, spill::SpillReader};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Most records that one group commit gathers from waiting requests. A single larger request
/// still commits whole.
const MAX_GROUP_RECORDS: usize = 4096;

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
    queue: mpsc::Sender<WriteCommand>,
    pub stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer thread on the store's write queue.
    pub fn spawn(queue: WriteQueue, hub: Hub) -> Result<Writer> {
        let stats = Arc::new(WriterStats::default());
        let WriteQueue {
            writer,
            commands,
            sender,
        } = queue;
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("streamhub-writer".into())
            .spawn(move || run(writer, hub, commands, thread_stats))?;
        Ok(Writer {
            queue: sender,
            stats,
        })
    }

    /// Appends `records` atomically: all of them commit, or none. Returns one outcome each,
    /// in order, once they are durable.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<AppendOutcome>> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(WriteCommand::Append { records, reply })
            .await
            .map_err(|_| Error::Unavailable)?;
        answer.await.map_err(|_| Error::Unavailable)?
    }

    /// Commits a spilled import to streams of `kind` in one transaction of its own.
    pub async fn import(&self, kind: StreamKind, spill: SpillReader) -> Result<ImportOutcome> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(WriteCommand::Import { kind, spill, reply })
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

    /// Commands waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Lets every queued command finish, truncates the WAL, closes the connection, and stops
    /// the thread.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self
            .queue
            .send(WriteCommand::Shutdown { done })
            .await
            .is_ok()
        {
            let _ = finished.await;
        }
    }
}

/// A reserved place in the writer's queue; see [`Writer::reserve`].
pub struct AppendPermit<'a> {
    permit: mpsc::Permit<'a, WriteCommand>,
}

impl AppendPermit<'_> {
    /// Queues `records` now, without waiting, and returns the pending answer.
    pub fn append(self, records: Vec<NewRecord>) -> PendingAppend {
        let (reply, answer) = oneshot::channel();
        self.permit.send(WriteCommand::Append { records, reply });
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

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>>>;

fn run(
    mut writer: LogWriter,
    hub: Hub,
    mut queue: mpsc::Receiver<WriteCommand>,
    stats: Arc<WriterStats>,
) {
    // A command met while gathering a group waits here for its turn after the group.
    let mut held: VecDeque<WriteCommand> = VecDeque::new();
    let mut shutdown = None;
    while shutdown.is_none() {
        let Some(first) = held.pop_front().or_else(|| queue.blocking_recv()) else {
            break;
        };
        match first {
            WriteCommand::Append { records, reply } => {
                // Group commit: every append already waiting joins this transaction.
                let mut gathered = records.len();
                let mut requests = vec![records];
                let mut replies = vec![reply];
                while gathered < MAX_GROUP_RECORDS && held.is_empty() {
                    match queue.try_recv() {
                        Ok(WriteCommand::Append { records, reply }) => {
                            gathered += records.len();
                            requests.push(records);
                            replies.push(reply);
                        }
                        Ok(other) => held.push_back(other),
                        Err(_) => break,
                    }
                }
                commit_group(&mut writer, &hub, &stats, requests, replies);
            }
            WriteCommand::Import { kind, spill, reply } => {
                let started = std::time::Instant::now();
                match writer.import(kind, spill) {
                    Ok(mut outcome) => {
                        tracing::debug!(
                            stored = outcome.stored,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "import committed"
                        );
                        stats.record_commit(outcome.stored as usize);
                        let last = std::mem::take(&mut outcome.last_per_stream);
                        let _ = reply.send(Ok(outcome));
                        hub.publish(&last);
                    }
                    Err(err) => {
                        tracing::error!(error = %crate::error::cause_chain(&err), "import failed");
                        let _ = reply.send(Err(err));
                    }
                }
                if let Err(err) = writer.settle_after_large() {
                    tracing::warn!(error = %crate::error::cause_chain(&err), "WAL truncation failed");
                }
            }
            WriteCommand::Job(job) => {
                // A job that panics rolls its transaction back (the transaction's drop) and
                // drops its caller's answer (UNAVAILABLE); the writer goes on with the rest.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut writer)))
                    .is_err()
                {
                    tracing::error!("a write job panicked; its transaction was rolled back");
                }
                bound_wal(&mut writer);
            }
            WriteCommand::Shutdown { done } => shutdown = Some(done),
        }
    }
    writer.close();
    tracing::debug!("log writer stopped");
    if let Some(done) = shutdown {
        let _ = done.send(());
    }
}

fn commit_group(
    writer: &mut LogWriter,
    hub: &Hub,
    stats: &WriterStats,
    requests: Vec<Vec<crate::store::NewRecord>>,
    replies: Vec<Reply>,
) {
    let started = std::time::Instant::now();
    match writer.append_group(requests) {
        Ok((outcomes, stored)) => {
            tracing::trace!(
                requests = replies.len(),
                records = stored.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "group committed"
            );
            stats.record_commit(stored.len());
            // Callers first: their records are durable now, and fan-out can wait a moment.
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
            hub.publish(&stored);
        }
        Err(err) => {
            tracing::error!(
                error = %crate::error::cause_chain(&err),
                requests = replies.len(),
                "group commit failed"
            );
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
    // After the answers, so that only later groups wait for a truncation.
    bound_wal(writer);
}

fn bound_wal(writer: &mut LogWriter) {
    if let Err(err) = writer.bound_wal() {
        tracing::warn!(error = %crate::error::cause_chain(&err), "WAL truncation failed");
    }
}
