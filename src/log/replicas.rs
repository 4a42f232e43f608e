//! Replicas: what crosses between streamhub processes that share one PostgreSQL database.
//!
//! Each replica holds one LISTEN connection of its own (outside the pool). Two channels arrive
//! on it:
//! - the log channel (`store::pg::LOG_CHANNEL`): "stream S has new records `first..=last`",
//!   queued by another replica's commit. If this replica has live subscribers on S, it reads
//!   those records from the store once and publishes them to its hub, where its subscribers
//!   take them like local ones. A notice can come late, out of order with local commits, or not
//!   at all (a reconnect of the LISTEN connection, an overflowing queue): a subscriber that sees
//!   a jump re-reads the store from its cursor (the gap path in `subscribe`), and a periodic
//!   check of the heads of every stream with live subscribers publishes what no notice
//!   announced. So a lost notice costs latency, never data.
//! - the signal channel ([`SIGNAL_CHANNEL`]): ephemeral signals (typing, presence, cursors),
//!   never stored. Each is handed to [`Replicas::signals`] receivers as its text. A signal
//!   longer than a NOTIFY payload may be goes through an unlogged table, and the notice
//!   carries its row id.
//!
//! It must never write a log record: only the writer does that.

use super::Hub;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::pg::{LOG_CHANNEL, LogNotice, PgStore};
use crate::store::{PAGE_RECORDS, Store, StreamKey};
use sqlx::postgres::{PgListener, PgPoolOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// The channel of ephemeral signals between replicas.
pub const SIGNAL_CHANNEL: &str = "streamhub_signal";
/// Longest signal text sent inline: NOTIFY refuses payloads of 8,000 bytes or more, and the
/// notice also carries the replica's name.
const MAX_INLINE_SIGNAL: usize = 7_000;
/// Signals buffered for a slow receiver before it loses the oldest (they are ephemeral).
const SIGNAL_BUFFER: usize = 4_096;
/// Longest wait between attempts to bring back the LISTEN connection.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Seconds a large signal's row stays in the unlogged table for receivers to read.
const SIGNAL_BODY_SECS: i64 = 60;

/// The cross-replica side of one process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Replicas {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: PgStore,
    hub: Hub,
    signals: broadcast::Sender<Arc<str>>,
    /// Streams announced by other replicas and not yet delivered: first and last sequence.
    announced: Mutex<HashMap<StreamKey, (u64, u64)>>,
    wake: Notify,
}

impl Replicas {
    /// Starts the LISTEN connection, the delivery task and the head check, when the store is
    /// PostgreSQL; `None` for SQLite. They stop when `shutdown` is cancelled.
    pub async fn start(
        store: &Store,
        hub: Hub,
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<Option<Replicas>> {
        let Some(pg) = store.postgres() else {
            return Ok(None);
        };
        let replicas = Replicas {
            inner: Arc::new(Inner {
                store: pg.clone(),
                hub,
                signals: broadcast::channel(SIGNAL_BUFFER).0,
                announced: Mutex::default(),
                wake: Notify::new(),
            }),
        };
        // The first connection is made here, so that a start that cannot LISTEN fails.
        let listener = replicas.listen().await?;
        let backoff = Duration::from_millis(config.pg_listen_backoff_ms.max(1));
        tokio::spawn(
            replicas
                .clone()
                .run_listener(listener, backoff, shutdown.clone()),
        );
        tokio::spawn(replicas.clone().run_delivery(shutdown.clone()));
        let period = Duration::from_millis(config.pg_head_check_ms.max(10));
        tokio::spawn(replicas.clone().run_head_check(period, shutdown));
        Ok(Some(replicas))
    }

    /// This replica's name (fresh per start).
    pub fn id(&self) -> &str {
        &self.inner.store.replica
    }

    /// Signals sent by the other replicas from now on, as their text.
    pub fn signals(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.signals.subscribe()
    }

    /// Sends `text` to the other replicas' [`Self::signals`] receivers. Never stored in the
    /// log; a long one passes through an unlogged table for a minute.
    pub async fn send_signal(&self, text: &str) -> Result<()> {
        let replica = &self.inner.store.replica;
        let pool = &self.inner.store.pool;
        let notice = if text.len() <= MAX_INLINE_SIGNAL {
            format!("{replica} ={text}")
        } else {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO signal_bodies (body, created_at) \
                 VALUES ($1, extract(epoch from now())::bigint) RETURNING id",
            )
            .bind(text)
            .fetch_one(pool)
            .await?;
            format!("{replica} @{id}")
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SIGNAL_CHANNEL)
            .bind(notice)
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn listen(&self) -> Result<PgListener> {
        // A pool of one, outside the main pool: LISTEN holds its connection for good.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(self.inner.store.options.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.eager_reconnect(false);
        listener.listen_all([LOG_CHANNEL, SIGNAL_CHANNEL]).await?;
        Ok(listener)
    }

    async fn run_listener(
        self,
        mut listener: PgListener,
        first_backoff: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => {
                    self.handle(notification.channel(), notification.payload())
                }
                outcome => {
                    match outcome {
                        Err(err) => tracing::warn!(
                            error = %crate::error::cause_chain(&err),
                            "LISTEN connection failed; reconnecting"
                        ),
                        _ => tracing::warn!("LISTEN connection lost; reconnecting"),
                    }
                    let mut backoff = first_backoff;
                    listener = loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        match self.listen().await {
                            Ok(listener) => break listener,
                            Err(err) => {
                                tracing::warn!(
                                    error = %crate::error::cause_chain(&err),
                                    backoff_ms = backoff.as_millis() as u64,
                                    "LISTEN reconnect failed"
                                );
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                        }
                    };
                    tracing::info!("LISTEN connection back; checking heads for missed records");
                    // Notices sent meanwhile are lost: the head check finds what they said.
                    if let Err(err) = self.check_heads().await {
                        tracing::warn!(error = %crate::error::cause_chain(&err), "head check failed");
                    }
                }
            }
        }
    }

    fn handle(&self, channel: &str, payload: &str) {
        if channel == LOG_CHANNEL {
            let mut woke = false;
            for line in payload.lines() {
                let Some(notice) = LogNotice::parse(line) else {
                    tracing::warn!(line, "unreadable log notice");
                    continue;
                };
                if notice.replica == *self.inner.store.replica {
                    return; // This replica's writer published its own records already.
                }
                if self.inner.hub.newest(&notice.stream).is_none() {
                    continue; // Nobody here subscribes to it.
                }
                let mut announced = self
                    .inner
                    .announced
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let range = announced
                    .entry(notice.stream)
                    .or_insert((notice.first, notice.last));
                range.0 = range.0.min(notice.first);
                range.1 = range.1.max(notice.last);
                woke = true;
            }
            if woke {
                self.inner.wake.notify_one();
            }
        } else if channel == SIGNAL_CHANNEL {
            let Some((replica, body)) = payload.split_once(' ') else {
                return;
            };
            if replica == &*self.inner.store.replica {
                return;
            }
            if let Some(text) = body.strip_prefix('=') {
                let _ = self.inner.signals.send(Arc::from(text));
            } else if let Some(id) = body.strip_prefix('@').and_then(|id| id.parse::<i64>().ok()) {
                let this = self.clone();
                tokio::spawn(async move {
                    let body: Result<Option<String>> =
                        sqlx::query_scalar("SELECT body FROM signal_bodies WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&this.inner.store.pool)
                            .await
                            .map_err(Error::from);
                    match body {
                        Ok(Some(text)) => {
                            let _ = this.inner.signals.send(Arc::from(text));
                        }
                        Ok(None) => {}
                        Err(err) => tracing::warn!(
                            error = %crate::error::cause_chain(&err),
                            "reading a large signal failed"
                        ),
                    }
                });
            }
        }
    }

    /// Delivers what other replicas announced: one store read per stream however many
    /// notices arrived for it meanwhile.
    async fn run_delivery(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.inner.wake.notified() => {}
            }
            let announced = std::mem::take(
                &mut *self
                    .inner
                    .announced
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            for (stream, (first, last)) in announced {
                if let Err(err) = self.deliver(&stream, first, last).await {
                    tracing::warn!(
                        error = %crate::error::cause_chain(&err),
                        %stream,
                        "delivering another replica's records failed; subscribers re-read them"
                    );
                }
            }
        }
    }

    /// Publishes records `first..=last` of `stream` to the hub, unless nobody here waits for
    /// them. More than a page publishes only the last one: subscribers see the jump and read
    /// the rest from the store themselves, in pages.
    async fn deliver(&self, stream: &StreamKey, first: u64, last: u64) -> Result<()> {
        match self.inner.hub.newest(stream) {
            Some(newest) if newest < last => {}
            _ => return Ok(()),
        }
        let after = if last - first >= u64::from(PAGE_RECORDS) {
            last - 1
        } else {
            first.saturating_sub(1)
        };
        let records = self
            .inner
            .store
            .read_page(stream, after, Some(last), PAGE_RECORDS)
            .await?;
        let records: Vec<_> = records.into_iter().map(Arc::new).collect();
        self.inner.hub.publish(&records);
        Ok(())
    }

    /// Every `period`: the heads of every stream with live subscribers here, compared with
    /// what the hub last published; a stream that moved without a notice gets its newest
    /// record published, and its subscribers catch up from the store.
    async fn run_head_check(self, period: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.check_heads().await {
                tracing::warn!(error = %crate::error::cause_chain(&err), "head check failed");
            }
            rounds += 1;
            if rounds.is_multiple_of(30) {
                let _ = sqlx::query(
                    "DELETE FROM signal_bodies WHERE created_at < extract(epoch from now())::bigint - $1",
                )
                .bind(SIGNAL_BODY_SECS)
                .execute(&self.inner.store.pool)
                .await;
            }
        }
    }

    async fn check_heads(&self) -> Result<()> {
        let live = self.inner.hub.live_streams();
        if live.is_empty() {
            return Ok(());
        }
        let streams: Vec<StreamKey> = live.iter().map(|(s, _)| s.clone()).collect();
        let heads = self.inner.store.heads(&streams).await?;
        for (stream, newest) in live {
            let Some(&head) = heads.get(&stream) else {
                continue;
            };
            if head > newest {
                self.deliver(&stream, head, head).await?;
            }
        }
        Ok(())
    }
}
