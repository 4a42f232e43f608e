//! Presence: who is in each room (a chat room or a collaboration document) right now, and the
//! ephemeral signals between its members (typing notices, cursors, presence changes).
//!
//! A member is one live stream. Users are counted by their streams, so a user with two tabs
//! joins when the first opens and leaves when the last closes. Each decision (first stream of a
//! user, last stream of a user) is made under one lock together with whatever the caller must
//! do in the same order (queue a join notice, broadcast a LEAVE), so two streams of one user
//! can never publish their join and leave out of order.
//!
//! A signal sent by a unary call (SendChatMessage, SubmitCollaborationEvent) comes from no
//! stream, so it skips every stream of its user instead of one.
//!
//! Nothing here is stored, and nothing here blocks: signals go through a bounded broadcast
//! channel per room, and a member that falls behind loses stale signals (never stored data) and
//! can resynchronise its view of who is present.

pub mod cluster;

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// A signal from one stream to the other streams of its room.
#[derive(Debug, Clone)]
pub struct Signal<S> {
    /// The sending stream; it never hears its own signals.
    from: u64,
    /// Set for a signal sent by a unary call (SendChatMessage, SubmitCollaborationEvent): that
    /// call has no stream of its own to skip, so none of the sending user's streams hears it.
    except_user: Option<Arc<str>>,
    body: S,
}

struct Room<S> {
    signals: broadcast::Sender<Signal<S>>,
    /// Live streams per user.
    users: HashMap<Arc<str>, usize>,
}

type Rooms<S> = HashMap<Arc<str>, Room<S>>;

/// The presence registry of one kind of room. Cheap to clone.
pub struct Presence<S> {
    rooms: Arc<Mutex<Rooms<S>>>,
    next_session: Arc<AtomicU64>,
    /// Signals buffered per room for its slowest member.
    capacity: usize,
    /// Live streams one room may hold.
    max_streams: usize,
}

impl<S> Clone for Presence<S> {
    fn clone(&self) -> Self {
        Presence {
            rooms: self.rooms.clone(),
            next_session: self.next_session.clone(),
            capacity: self.capacity,
            max_streams: self.max_streams,
        }
    }
}

impl<S> std::fmt::Debug for Presence<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// What a joining stream learns, under the registry's lock.
pub struct Joined<'a, S> {
    /// This is the user's first live stream in the room.
    pub first_of_user: bool,
    /// The other users present, not counting this user.
    pub others: Vec<Arc<str>>,
    signals: &'a broadcast::Sender<Signal<S>>,
    session: u64,
}

impl<S> Joined<'_, S> {
    /// Sends a signal to the room's other streams, ordered with every other presence change.
    pub fn broadcast(&self, body: S) {
        let _ = self.signals.send(Signal {
            from: self.session,
            except_user: None,
            body,
        });
    }
}

/// What a leaving stream learns, under the registry's lock.
pub struct Left<'a, S> {
    /// This was the user's last live stream in the room.
    pub last_of_user: bool,
    signals: &'a broadcast::Sender<Signal<S>>,
    session: u64,
}

impl<S> Left<'_, S> {
    /// Sends a signal to the room's other streams, ordered with every other presence change.
    pub fn broadcast(&self, body: S) {
        let _ = self.signals.send(Signal {
            from: self.session,
            except_user: None,
            body,
        });
    }
}

impl<S: Clone + Send + 'static> Presence<S> {
    pub fn new(capacity: usize, max_streams: usize) -> Self {
        Presence {
            rooms: Arc::default(),
            next_session: Arc::new(AtomicU64::new(1)),
            capacity: capacity.max(1),
            max_streams,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rooms<S>> {
        // Every change under this lock is a single map update, so a poisoned lock (a panic in a
        // caller's closure) leaves nothing half-done.
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a stream of `user` to `room`. `under_lock` runs while the registry is locked, after
    /// the member is counted and before anyone else can join or leave. A full room refuses the
    /// stream with RESOURCE_EXHAUSTED, and `under_lock` does not run.
    pub fn join<R>(
        &self,
        room: &str,
        user: &str,
        under_lock: impl FnOnce(&Joined<'_, S>) -> R,
    ) -> Result<(Member<S>, Listener<S>, R)> {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut rooms = self.lock();
        let streams: usize = rooms.get(room).map_or(0, |r| r.users.values().sum());
        if streams >= self.max_streams {
            return Err(Error::ResourceExhausted(format!(
                "{room:?} already has its limit of {} live streams",
                self.max_streams
            )));
        }
        let room: Arc<str> = room.into();
        let user: Arc<str> = user.into();
        let entry = rooms.entry(room.clone()).or_insert_with(|| Room {
            signals: broadcast::channel(self.capacity).0,
            users: HashMap::new(),
        });
        let others = entry
            .users
            .keys()
            .filter(|u| u.as_ref() != user.as_ref())
            .cloned()
            .collect();
        let streams = entry.users.entry(user.clone()).or_insert(0);
        *streams += 1;
        let joined = Joined {
            first_of_user: *streams == 1,
            others,
            signals: &entry.signals,
            session,
        };
        let answer = under_lock(&joined);
        let rx = entry.signals.subscribe();
        drop(rooms);
        let member = Member {
            presence: self.clone(),
            room: room.clone(),
            user: user.clone(),
            session,
            left: false,
        };
        let listener = Listener {
            presence: self.clone(),
            room,
            user,
            session,
            rx: BroadcastStream::new(rx),
        };
        Ok((member, listener, answer))
    }
}

impl<S: Clone + Send + 'static> Presence<S> {
    /// Hands a signal from another replica to every stream of `room` here (none, when nobody
    /// here is in it). Session 0 is no stream's, so every member hears it.
    pub fn inject(&self, room: &str, body: S) {
        self.inject_except(room, None, body);
    }

    /// Like [`Self::inject`], but no stream of `except_user` hears it: a signal from a unary
    /// call of that user (which has no stream to skip), or one relayed for it by another
    /// replica.
    pub fn inject_except(&self, room: &str, except_user: Option<&str>, body: S) {
        if let Some(room) = self.lock().get(room) {
            let _ = room.signals.send(Signal {
                from: 0,
                except_user: except_user.map(Arc::from),
                body,
            });
        }
    }
}

/// One live stream's place in a room. Leaving is explicit, so the caller can act on it; if a
/// member is dropped without leaving (a panic), it is still removed, silently. Across replicas
/// a silent drop would leave the user's lease behind (see [`cluster::Cluster::arrive`]), so a
/// member there is only ever held by a task that is never dropped midway.
pub struct Member<S: Clone + Send + 'static> {
    presence: Presence<S>,
    room: Arc<str>,
    user: Arc<str>,
    session: u64,
    left: bool,
}

impl<S: Clone + Send + 'static> Member<S> {
    /// Sends an ephemeral signal to the room's other streams.
    pub fn signal(&self, body: S) {
        let rooms = self.presence.lock();
        if let Some(room) = rooms.get(&self.room) {
            let _ = room.signals.send(Signal {
                from: self.session,
                except_user: None,
                body,
            });
        }
    }

    /// Removes this stream from the room. `under_lock` runs while the registry is locked.
    pub fn leave<R>(mut self, under_lock: impl FnOnce(&Left<'_, S>) -> R) -> R {
        self.left = true;
        self.remove(under_lock)
    }

    fn remove<R>(&self, under_lock: impl FnOnce(&Left<'_, S>) -> R) -> R {
        let mut rooms = self.presence.lock();
        let Some(room) = rooms.get_mut(&self.room) else {
            // Unreachable while this member exists; answer as if it were the last.
            let (signals, _) = broadcast::channel(1);
            return under_lock(&Left {
                last_of_user: true,
                signals: &signals,
                session: self.session,
            });
        };
        let last_of_user = match room.users.get_mut(&self.user) {
            Some(streams) if *streams > 1 => {
                *streams -= 1;
                false
            }
            _ => {
                room.users.remove(&self.user);
                true
            }
        };
        let answer = under_lock(&Left {
            last_of_user,
            signals: &room.signals,
            session: self.session,
        });
        if room.users.is_empty() {
            rooms.remove(&self.room);
        }
        answer
    }
}

impl<S: Clone + Send + 'static> Drop for Member<S> {
    fn drop(&mut self) {
        if !self.left {
            self.remove(|_| ());
        }
    }
}

/// What a listener hears.
#[derive(Debug)]
pub enum Heard<S> {
    Signal(S),
    /// Signals were lost because this listener fell behind; presence may need a resync.
    Lagged,
}

/// One stream's ear on its room's signals; it never hears its own.
pub struct Listener<S: Clone + Send + 'static> {
    presence: Presence<S>,
    room: Arc<str>,
    user: Arc<str>,
    session: u64,
    rx: BroadcastStream<Signal<S>>,
}

impl<S: Clone + Send + 'static> Listener<S> {
    /// The next signal from another stream; `None` once the room is gone.
    pub fn poll_heard(&mut self, cx: &mut Context<'_>) -> Poll<Option<Heard<S>>> {
        loop {
            return match Pin::new(&mut self.rx).poll_next(cx) {
                Poll::Ready(Some(Ok(signal))) if signal.from == self.session => continue,
                Poll::Ready(Some(Ok(signal)))
                    if signal.except_user.as_deref() == Some(self.user.as_ref()) =>
                {
                    continue;
                }
                Poll::Ready(Some(Ok(signal))) => Poll::Ready(Some(Heard::Signal(signal.body))),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                    Poll::Ready(Some(Heard::Lagged))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }

    /// Starts listening afresh and returns the other users present now, atomically: every
    /// change after the answer is heard, none before it.
    pub fn resync(&mut self) -> Vec<Arc<str>> {
        let rooms = self.presence.lock();
        match rooms.get(&self.room) {
            Some(room) => {
                self.rx = BroadcastStream::new(room.signals.subscribe());
                room.users
                    .keys()
                    .filter(|u| u.as_ref() != self.user.as_ref())
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        }
    }
}
