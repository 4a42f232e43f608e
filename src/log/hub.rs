//! The hub: in-process live fan-out of committed records, keyed by stream.
//!
//! Each stream with at least one subscriber has a bounded broadcast channel. The writer publishes
//! to it after commit; subscribers that fall more than the channel's capacity behind see `Lagged`
//! and re-read the store. The hub never stores anything, never blocks a publisher, and knows
//! nothing of SQLite. A stream's channel is removed as soon as its last receiver goes away.

use crate::store::{LogRecord, StreamKey};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

type Channels = HashMap<StreamKey, Channel>;

/// One stream's live channel, and the newest sequence published on it since it opened: what
/// another replica's notice or the head check compares the store's head with.
#[derive(Debug)]
struct Channel {
    sender: broadcast::Sender<Arc<LogRecord>>,
    newest: u64,
}

/// Keyed broadcast registry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    channels: Arc<Mutex<Channels>>,
    /// Records buffered per stream for its slowest subscriber before that one lags.
    capacity: usize,
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        Hub {
            channels: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Channels> {
        // A panic while holding this lock cannot leave the map inconsistent (every operation on
        // it is a single insert, lookup or remove), so a poisoned lock is safe to keep using.
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts receiving every record published to `stream` from now on.
    pub fn subscribe(&self, stream: &StreamKey) -> HubReceiver {
        let mut channels = self.lock();
        let channel = channels.entry(stream.clone()).or_insert_with(|| Channel {
            sender: broadcast::channel(self.capacity).0,
            newest: 0,
        });
        HubReceiver {
            rx: Some(channel.sender.subscribe()),
            stream: stream.clone(),
            hub: self.clone(),
        }
    }

    /// Sends committed records, in commit order, to their streams' subscribers.
    pub fn publish(&self, records: &[Arc<LogRecord>]) {
        let mut channels = self.lock();
        if channels.is_empty() {
            return;
        }
        for record in records {
            if let Some(channel) = channels.get_mut(&record.stream) {
                channel.newest = channel.newest.max(record.sequence);
                // An error only means the last receiver left a moment ago; nothing to do.
                let _ = channel.sender.send(record.clone());
            }
        }
    }

    /// The newest sequence published to `stream` since its channel opened, or `None` when
    /// nobody subscribes to it (then nothing needs to be published).
    pub fn newest(&self, stream: &StreamKey) -> Option<u64> {
        self.lock().get(stream).map(|channel| channel.newest)
    }

    /// Every stream with a subscriber now, with its newest published sequence.
    pub fn live_streams(&self) -> Vec<(StreamKey, u64)> {
        self.lock()
            .iter()
            .map(|(stream, channel)| (stream.clone(), channel.newest))
            .collect()
    }

    /// Live receivers across all streams. Tests and introspection use it to prove that
    /// finished subscriptions release their slot.
    pub fn receiver_count(&self) -> usize {
        self.lock()
            .values()
            .map(|c| c.sender.receiver_count())
            .sum()
    }

    /// Streams that currently have a channel.
    pub fn stream_count(&self) -> usize {
        self.lock().len()
    }
}

/// A subscription's end of a stream's channel. Dropping it releases the slot, and the channel
/// itself when it was the last.
#[derive(Debug)]
pub struct HubReceiver {
    rx: Option<broadcast::Receiver<Arc<LogRecord>>>,
    stream: StreamKey,
    hub: Hub,
}

impl HubReceiver {
    pub async fn recv(&mut self) -> Result<Arc<LogRecord>, broadcast::error::RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for HubReceiver {
    fn drop(&mut self) {
        // Hold the lock while the receiver goes, so a concurrent subscribe either sees this
        // channel with a live receiver count or makes a fresh one.
        let mut channels = self.hub.lock();
        drop(self.rx.take());
        if channels
            .get(&self.stream)
            .is_some_and(|channel| channel.sender.receiver_count() == 0)
        {
            channels.remove(&self.stream);
        }
    }
}
