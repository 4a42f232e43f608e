//! Presence across replicas (PostgreSQL only): who is in a room on any replica, and the
//! ephemeral signals between members on different replicas.
//!
//! A replica holds one lease per user it has live streams for in a room, taken when the user's
//! first stream here arrives and dropped when the last one leaves; the store decides, under a
//! lock per (room, user), whether another replica holds the user too (then nobody joins or
//! leaves). An upkeep task renews this replica's leases every third of the lease time and takes
//! the lapsed leases of replicas that died, so that their users' leave is announced once.
//!
//! Signals go out in the order they were sent, through one task, as text: the space, the room,
//! the hex of the encoded message and, for a signal of a unary call, the user whose streams
//! must not hear it. Signals from other replicas are handed to the local
//! registry as if a member here had sent them. Nothing here is stored in the log.

use super::{Member, Presence};
use crate::error::Result;
use crate::log::Replicas;
use crate::store::StreamKind;
use crate::store::pg::PgStore;
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Stripes of the per-(room, user) turn: decisions about one user in one room take turns in
/// this process (so a join and a leave of one user are never reordered), others rarely wait.
const TURNS: usize = 64;
/// Signals waiting to go out; past this they are dropped (they are ephemeral).
const OUTGOING_SIGNALS: usize = 4_096;

/// Presence across replicas for one kind of room. Cheap to clone.
pub struct Cluster<S> {
    inner: Arc<Inner>,
    _signal: std::marker::PhantomData<fn(S)>,
}

impl<S> Clone for Cluster<S> {
    fn clone(&self) -> Self {
        Cluster {
            inner: self.inner.clone(),
            _signal: std::marker::PhantomData,
        }
    }
}

impl<S> std::fmt::Debug for Cluster<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("space", &self.inner.space)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: PgStore,
    space: StreamKind,
    lease: Duration,
    turns: Vec<tokio::sync::Mutex<()>>,
    /// The (room, user) pairs this replica holds a lease on.
    held: Mutex<HashSet<(Arc<str>, Arc<str>)>>,
    outgoing: mpsc::Sender<String>,
}

/// The text of a signal: `<space> <room length> <room><hex of the message>`, then
/// ` <user>` when no stream of that user may hear it. The user comes last, so it may hold
/// spaces; the hex holds none, so the first space after the room starts the user.
fn signal_text(space: StreamKind, room: &str, body: &[u8], except_user: Option<&str>) -> String {
    use std::fmt::Write;
    let mut text = format!("{} {} {room}", space.code(), room.len());
    for byte in body {
        let _ = write!(text, "{byte:02x}");
    }
    if let Some(user) = except_user {
        text.push(' ');
        text.push_str(user);
    }
    text
}

/// A parsed signal: the space's code, the room, the encoded message and the excepted user.
type ParsedSignal<'a> = (i64, &'a str, Vec<u8>, Option<&'a str>);

fn parse_signal(text: &str) -> Option<ParsedSignal<'_>> {
    let (space, rest) = text.split_once(' ')?;
    let (len, rest) = rest.split_once(' ')?;
    let len: usize = len.parse().ok()?;
    let room = rest.get(..len)?;
    let tail = rest.get(len..)?;
    let (hex, except_user) = match tail.split_once(' ') {
        Some((_, "")) => return None,
        Some((hex, user)) => (hex, Some(user)),
        None => (tail, None),
    };
    let hex = hex.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let body = hex
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((space.parse().ok()?, room, body, except_user))
}

impl<S: prost::Message + Default + Clone + Send + 'static> Cluster<S> {
    /// The cluster side of `presence`, when the store is PostgreSQL: it starts relaying other
    /// replicas' signals into `presence` and keeps this replica's leases. `on_lapsed` is called
    /// once per (room, user) whose every lease lapsed (the replicas holding it died), with this
    /// cluster, to tell the other replicas too.
    pub fn start<F, Fut>(
        replicas: Option<&Replicas>,
        store: &crate::store::Store,
        space: StreamKind,
        presence: &Presence<S>,
        lease: Duration,
        shutdown: CancellationToken,
        on_lapsed: F,
    ) -> Option<Cluster<S>>
    where
        F: Fn(Cluster<S>, String, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (replicas, pg) = (replicas?, store.postgres()?);
        let (outgoing, mut queue) = mpsc::channel::<String>(OUTGOING_SIGNALS);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                store: pg.clone(),
                space,
                lease: lease.max(Duration::from_secs(1)),
                turns: (0..TURNS).map(|_| tokio::sync::Mutex::new(())).collect(),
                held: Mutex::default(),
                outgoing,
            }),
            _signal: std::marker::PhantomData,
        };
        // Out: one at a time, in order.
        let sender = replicas.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let text = tokio::select! {
                    _ = stop.cancelled() => return,
                    text = queue.recv() => match text { Some(text) => text, None => return },
                };
                if let Err(err) = sender.send_signal(&text).await {
                    tracing::debug!(error = %crate::error::cause_chain(&err), "signal not sent to other replicas");
                }
            }
        });
        // In: other replicas' signals, to this replica's members.
        let mut incoming = replicas.signals();
        let local = presence.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let text = tokio::select! {
                    _ = stop.cancelled() => return,
                    text = incoming.recv() => text,
                };
                let text = match text {
                    Ok(text) => text,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let Some((code, room, body, except_user)) = parse_signal(&text) else {
                    continue;
                };
                if code != space.code() {
                    continue;
                }
                if let Ok(message) = S::decode(body.as_slice()) {
                    local.inject_except(room, except_user, message);
                }
            }
        });
        // Upkeep: renew, then take what lapsed.
        let upkeep = cluster.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(upkeep.inner.lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(err) = upkeep.upkeep(&on_lapsed).await {
                    tracing::warn!(error = %crate::error::cause_chain(&err), "presence lease upkeep failed");
                }
            }
        });
        Some(cluster)
    }

    fn code(&self) -> i16 {
        self.inner.space.code() as i16
    }

    async fn upkeep<F, Fut>(&self, on_lapsed: &F) -> Result<()>
    where
        F: Fn(Cluster<S>, String, String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let held: Vec<(Arc<str>, Arc<str>)> = self
            .inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        self.inner
            .store
            .renew_presence_leases(self.code(), &held, self.inner.lease)
            .await?;
        for (room, user) in self.inner.store.take_lapsed_presence(self.code()).await? {
            tracing::info!(%room, %user, "presence lease lapsed on every replica; announcing the leave");
            on_lapsed(self.clone(), room, user).await;
        }
        Ok(())
    }

    /// Waits for the turn of `user` in `room` in this process.
    pub async fn turn(&self, room: &str, user: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (room, user).hash(&mut hasher);
        self.inner.turns[hasher.finish() as usize % TURNS]
            .lock()
            .await
    }

    /// The user's first stream here arrived: takes the lease. Returns whether another replica
    /// holds the user present already (then the user does not join anew).
    ///
    /// Call it under the user's [`Self::turn`], on a task that is never dropped midway (a
    /// session's task, not a call's future), and follow it with [`Self::depart`] or
    /// [`Self::withdraw`] on that task: once the store took the lease it is renewed until one
    /// of those runs, so an arrive abandoned by a cancelled call would hold the user present on
    /// every other replica for good.
    pub async fn arrive(&self, room: &Arc<str>, user: &Arc<str>) -> Result<bool> {
        let elsewhere = self
            .inner
            .store
            .take_presence_lease(self.code(), room, user, self.inner.lease)
            .await?;
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((room.clone(), user.clone()));
        Ok(elsewhere)
    }

    /// The user's last stream here left: drops the lease. Returns whether another replica
    /// still holds the user present (then the user does not leave). A failure leaves the lease
    /// to lapse: it is no longer renewed.
    pub async fn depart(&self, room: &Arc<str>, user: &Arc<str>) -> Result<bool> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(room.clone(), user.clone()));
        self.inner
            .store
            .drop_presence_lease(self.code(), room, user)
            .await
    }

    /// Takes back a stream whose arrival was never announced (its join notice or JOIN did not
    /// go out because a step after [`Self::arrive`] failed): it leaves the registry silently
    /// and, when it was the user's last stream here, the lease is dropped. Also after a failed
    /// arrive, whose lease may have been committed all the same (a lost answer to COMMIT).
    /// Under the user's turn, like `arrive`. A failed drop leaves the lease to lapse: it is no
    /// longer renewed.
    pub async fn withdraw(&self, member: Member<S>, room: &Arc<str>, user: &Arc<str>) {
        if !member.leave(|left| left.last_of_user) {
            return;
        }
        match self.depart(room, user).await {
            Ok(false) => {}
            // Another replica arrived while this one held the user, so it announced nothing;
            // this one never did either. Rare (a failure in the moment of a join on two
            // replicas at once), and nothing is stored wrong: only a notice is missing.
            Ok(true) => {
                tracing::debug!(%room, %user, "withdrawn while another replica holds the user");
            }
            Err(err) => {
                tracing::warn!(%room, %user, error = %crate::error::cause_chain(&err), "presence lease not dropped; it lapses");
            }
        }
    }

    /// Users that other replicas hold present in `room`.
    pub async fn present_elsewhere(&self, room: &str) -> Result<Vec<Arc<str>>> {
        Ok(self
            .inner
            .store
            .present_elsewhere(self.code(), room)
            .await?
            .into_iter()
            .map(Arc::from)
            .collect())
    }

    /// Sends `signal` to the members of `room` on the other replicas, after every signal sent
    /// before it. Never waits: when the queue is full, the signal is dropped.
    pub fn send(&self, room: &str, signal: &S) {
        self.send_except(room, None, signal);
    }

    /// Like [`Self::send`], but no stream of `except_user` on the other replicas hears it (a
    /// signal of that user's unary call; see [`Presence::inject_except`]).
    pub fn send_except(&self, room: &str, except_user: Option<&str>, signal: &S) {
        let text = signal_text(self.inner.space, room, &signal.encode_to_vec(), except_user);
        if self.inner.outgoing.try_send(text).is_err() {
            tracing::debug!(room, "outgoing signal queue full; signal dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_round_trips_with_spaces_in_the_room() {
        let text = signal_text(StreamKind::Chat, "a room ", &[0, 1, 0xfe, 0xff], None);
        assert_eq!(
            parse_signal(&text),
            Some((3, "a room ", vec![0, 1, 0xfe, 0xff], None))
        );
        assert_eq!(parse_signal("3 9 short"), None);
        assert_eq!(parse_signal("3 1 ax"), None);
        assert_eq!(parse_signal("3 1 a0"), None);
    }

    #[test]
    fn a_signal_round_trips_with_its_excepted_user() {
        let text = signal_text(StreamKind::Chat, "a room ", &[0xab], Some("ann the 2nd"));
        assert_eq!(
            parse_signal(&text),
            Some((3, "a room ", vec![0xab], Some("ann the 2nd")))
        );
        // An empty body is still a signal; a trailing space names nobody and is refused.
        assert_eq!(
            parse_signal(&signal_text(StreamKind::Collab, "d", &[], Some("bob"))),
            Some((StreamKind::Collab.code(), "d", vec![], Some("bob")))
        );
        assert_eq!(parse_signal("3 1 rab "), None);
        assert_eq!(parse_signal("3 1 ra b c"), None);
    }
}
