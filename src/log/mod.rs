//! The log engine under every durable stream (events, notifications, chat rooms, collaboration
//! documents): one writer with group commit, one hub for live fan-out, and one catch-up
//! subscription. Services append and subscribe through [`Log`] and never touch SQL or channels.

pub mod hub;
pub mod replicas;
pub mod subscribe;
pub mod writer;

pub use hub::Hub;
pub use replicas::Replicas;
pub use subscribe::{Delivery, RecordView, Start, SubscribeOptions, Subscription, subscribe};
pub use writer::{AppendOutcome, AppendPermit, ImportOutcome, NewRecord, PendingAppend, Writer};

use crate::store::Store;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Everything a service needs to append to and read from the logs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Log {
    pub store: Store,
    pub hub: Hub,
    pub writer: Writer,
    /// Cancelled when the server begins shutting down: live streams end with UNAVAILABLE.
    pub shutdown: CancellationToken,
    /// One permit per subscription, held by its task for the subscription's whole life.
    pub subscriptions: Arc<Semaphore>,
    /// The same per user (with auth on), so that one user cannot take every permit.
    pub user_subscriptions: Arc<crate::limits::PerUserLimit>,
    /// Where imports spill while they arrive: the database's own directory, so a spill takes
    /// the disk the import is headed for rather than memory.
    pub spill_dir: std::path::PathBuf,
    /// On PostgreSQL, the other replicas: their records reach this hub, and signals cross
    /// through it. `None` on SQLite (one server).
    pub replicas: Option<Replicas>,
}
