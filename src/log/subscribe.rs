//! The one catch-up subscription that serves every durable stream.
//!
//! 1. Subscribe to the hub first, so nothing committed from now on can be missed.
//! 2. Replay the store in pages from the start position up to the head.
//! 3. Go live: a hub record at `cursor + 1` is sent, one at or below `cursor` was already sent
//!    by the replay and is skipped, and one further ahead (a gap) or a `Lagged` error makes the
//!    task re-read the store from `cursor`. It never drops or skips a record and never ends a
//!    stream because of lag.
//!
//! Records travel to the response in pages through a small bounded channel, so a slow client
//! holds the task at `send`, its hub buffer overflows into `Lagged`, and memory stays bounded.
//! The task ends as soon as the client goes away, which drops its hub receiver.

use super::Log;
use crate::error::{Error, Result};
use crate::store::{LogRecord, StreamKey};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::Stream;
use tonic::Status;

/// Records per replay page (a page also ends at `store::PAGE_BYTES` of payload).
const PAGE: u32 = crate::store::PAGE_RECORDS;
/// Pages in flight between the subscription task and the response.
const PAGES_IN_FLIGHT: usize = 4;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Everything after this sequence (0 = from the beginning).
    AfterSequence(u64),
    /// The first record whose timestamp is at or after this time (microseconds).
    AtTime(i64),
}

/// How a subscription behaves.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub start: Start,
    /// End with OK after the last record that existed when the call began.
    pub history_only: bool,
    /// The user whose per-user subscription limit this one counts against: a user token's
    /// `sub`; `None` with auth off and for services (they count only against the global limit).
    pub holder: Option<Arc<str>>,
}

/// What the subscription task hands to the response side.
enum Page<T> {
    Items(Vec<T>),
    /// The replay reached the head that existed when the subscription began; live from here.
    CaughtUp,
}

/// What a subscription delivers, for callers that need to know where the replay ends.
#[derive(Debug)]
pub enum Delivery<T> {
    Item(T),
    /// Everything up to the head at subscribe time was delivered; what follows is live.
    CaughtUp,
}

/// The response side of a subscription: a stream of items that flattens the pages.
pub struct Subscription<T> {
    pages: mpsc::Receiver<Result<Page<T>, Status>>,
    current: std::vec::IntoIter<T>,
    /// The global and per-user subscription slots. They live with the response stream, not the
    /// task: a history-only task ends as soon as its last page is buffered, but the client holds
    /// the stream (and those pages) until it is done with it.
    _slots: (
        tokio::sync::OwnedSemaphorePermit,
        Option<crate::limits::PerUserPermit>,
    ),
}

impl<T> Subscription<T> {
    /// Like `poll_next`, but also reports the moment the replay has caught up.
    pub fn poll_delivery(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Delivery<T>, Status>>> {
        loop {
            if let Some(item) = self.current.next() {
                return Poll::Ready(Some(Ok(Delivery::Item(item))));
            }
            match self.pages.poll_recv(cx) {
                Poll::Ready(Some(Ok(Page::Items(page)))) => self.current = page.into_iter(),
                Poll::Ready(Some(Ok(Page::CaughtUp))) => {
                    return Poll::Ready(Some(Ok(Delivery::CaughtUp)));
                }
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(status))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> Stream for Subscription<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.poll_delivery(cx) {
                Poll::Ready(Some(Ok(Delivery::CaughtUp))) => continue,
                Poll::Ready(Some(Ok(Delivery::Item(item)))) => Poll::Ready(Some(Ok(item))),
                Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(status))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl<T> Unpin for Subscription<T> {}

/// Turns a stored record into the item a client sees, or `None` when a filter drops it.
pub trait RecordView: Send + 'static {
    type Item: Send + 'static;
    fn view(&mut self, record: &LogRecord) -> Result<Option<Self::Item>>;
}

impl<T, F> RecordView for F
where
    F: FnMut(&LogRecord) -> Result<Option<T>> + Send + 'static,
    T: Send + 'static,
{
    type Item = T;
    fn view(&mut self, record: &LogRecord) -> Result<Option<T>> {
        self(record)
    }
}

/// Subscribes to `stream` and returns the response stream; the work runs on its own task.
/// Fails with RESOURCE_EXHAUSTED when the server already holds its limit of subscriptions.
pub fn subscribe<V: RecordView>(
    log: &Log,
    stream: StreamKey,
    options: SubscribeOptions,
    view: V,
) -> Result<Subscription<V::Item>> {
    let user_permit = match &options.holder {
        None => None,
        Some(user) => Some(
            log.user_subscriptions
                .try_acquire(user.clone())
                .ok_or_else(|| {
                    Error::ResourceExhausted(format!(
                        "user {user:?} holds its limit of {} subscriptions; end one first",
                        log.user_subscriptions.max()
                    ))
                })?,
        ),
    };
    let permit = log.subscriptions.clone().try_acquire_owned().map_err(|_| {
        Error::ResourceExhausted("the server holds its limit of subscriptions; retry later".into())
    })?;
    let (tx, pages) = mpsc::channel(PAGES_IN_FLIGHT);
    let mut task = Task {
        log: log.clone(),
        stream,
        view,
        tx,
        cursor: 0,
        min_ts: None,
    };
    tokio::spawn(async move {
        if let Err(status) = task.run(options).await {
            // The client may already be gone; then there is nobody to tell.
            let _ = task.tx.send(Err(status)).await;
        }
    });
    Ok(Subscription {
        pages,
        current: Vec::new().into_iter(),
        _slots: (permit, user_permit),
    })
}

struct Task<V: RecordView> {
    log: Log,
    stream: StreamKey,
    view: V,
    tx: mpsc::Sender<Result<Page<V::Item>, Status>>,
    /// The last sequence handled (sent or filtered out). Everything at or below it is done.
    cursor: u64,
    /// Records older than this are skipped (a `start_time` that is still in the future).
    min_ts: Option<i64>,
}

/// Why the task stopped early without an error to report.
enum Stop {
    ClientGone,
}

impl<V: RecordView> Task<V> {
    async fn run(&mut self, options: SubscribeOptions) -> Result<(), Status> {
        // 1. Subscribe before reading the store.
        let mut live = (!options.history_only).then(|| self.log.hub.subscribe(&self.stream));
        let until = if options.history_only {
            Some(self.log.store.head(&self.stream).await?)
        } else {
            None
        };
        self.cursor = match options.start {
            Start::AfterSequence(after) => after,
            Start::AtTime(ts) => {
                self.min_ts = Some(ts);
                self.log
                    .store
                    .first_sequence_at_or_after(&self.stream, ts)
                    .await?
                    - 1
            }
        };

        // 2. Replay.
        if let Err(Stop::ClientGone) = self.catch_up(until).await? {
            return Ok(());
        }
        let Some(live) = live.as_mut() else {
            return Ok(()); // history_only: done, the stream ends with OK.
        };
        if self.tx.send(Ok(Page::CaughtUp)).await.is_err() {
            return Ok(());
        }

        // 3. Live.
        let shutdown = self.log.shutdown.clone();
        loop {
            let received = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(Error::Unavailable.into()),
                _ = self.tx.closed() => return Ok(()),
                received = live.recv() => received,
            };
            let step = match received {
                Ok(record) if record.sequence <= self.cursor => continue,
                Ok(record) if record.sequence == self.cursor + 1 => {
                    self.deliver(std::slice::from_ref(&*record)).await?
                }
                // A gap (this receiver lagged, or joined between commits): the store has it.
                Ok(_) | Err(RecvError::Lagged(_)) => self.catch_up(None).await?,
                Err(RecvError::Closed) => return Err(Error::Unavailable.into()),
            };
            if let Err(Stop::ClientGone) = step {
                return Ok(());
            }
        }
    }

    /// Reads the store in pages from `cursor` to the head (or `until`) and sends what passes.
    async fn catch_up(&mut self, until: Option<u64>) -> Result<Result<(), Stop>> {
        // Everything this task knows to be committed was committed before now.
        let needed_since = std::time::Instant::now();
        loop {
            let page = self
                .log
                .store
                .read_page_shared(&self.stream, self.cursor, until, PAGE, needed_since)
                .await?;
            let full = crate::store::page_is_full(&page, PAGE);
            if let Err(stop) = self.deliver(&page).await? {
                return Ok(Err(stop));
            }
            if !full {
                return Ok(Ok(()));
            }
        }
    }

    /// Sends the visible items of `records` (contiguous, starting at `cursor + 1`) as one page.
    async fn deliver(&mut self, records: &[LogRecord]) -> Result<Result<(), Stop>> {
        let mut items = Vec::with_capacity(records.len());
        for record in records {
            debug_assert_eq!(record.sequence, self.cursor + 1);
            self.cursor = record.sequence;
            if self.min_ts.is_some_and(|min| record.ts_micros < min) {
                continue;
            }
            if let Some(item) = self.view.view(record)? {
                items.push(item);
            }
        }
        if items.is_empty() {
            return Ok(Ok(()));
        }
        let shutdown = self.log.shutdown.clone();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(Error::Unavailable),
            sent = self.tx.send(Ok(Page::Items(items))) => Ok(sent.map_err(|_| Stop::ClientGone)),
        }
    }
}
