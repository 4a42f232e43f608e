//! The collaboration relay: Collaborate, a bidirectional session per participant of a
//! document, and its browser twins OpenDocument (the same session with no client events after
//! its JOIN) and SubmitCollaborationEvent (one operation or cursor, from no session).
//!
//! A document is the log stream `collab/<document_id>`, and its version is the head of that
//! stream. Operations are log records: stored as head + 1 (or REJECTED for their sender alone
//! when `base_sequence` is stale), delivered to everyone in version order, and replayed to late
//! joiners through the one catch-up subscription. Presence (JOIN, LEAVE) and cursors are
//! presence signals and are never stored. The payload of an operation is opaque: this module
//! never looks inside it, never writes SQL and never runs its own replay loop. The browser
//! twins never get rules of their own: they go through Collaborate's checks, session and
//! append. Across replicas a join never runs in the call's future, which its client may drop
//! at any await: the session's task takes the lease and sends the JOIN, so every lease taken is
//! dropped again and every JOIN gets its LEAVE.

use super::session::{Control, Inbound, Relay, SessionOutput};
use super::{ResponseStream, validate_client_id, validate_key};
use crate::cancel::ClientCancelled;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::{AppendOutcome, Log, NewRecord, Start, SubscribeOptions, subscribe};
use crate::presence::cluster::Cluster;
use crate::presence::{Heard, Listener, Member, Presence};
use crate::proto::{
    CollaborationEvent, CollaborationEventType, OpenDocumentRequest, timestamp_from_micros,
};
use crate::store::{LogRecord, StreamKey, StreamKind};
use prost::Message;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tonic::{Code, Status, Streaming};

/// Answers queued for one participant's response (REJECTED events, the final status).
const CONTROL_CAPACITY: usize = 64;

/// The collaboration capability. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Collab {
    log: Log,
    presence: Presence<CollaborationEvent>,
    /// On PostgreSQL: presence and cursors across replicas.
    cluster: Option<Cluster<CollaborationEvent>>,
    max_payload_bytes: usize,
    /// `--public-documents`: documents any authenticated user may use.
    public_documents: Vec<String>,
    sessions: TaskTracker,
}

fn document_stream(document_id: &str) -> StreamKey {
    StreamKey::new(StreamKind::Collab, document_id)
}

/// The stored body of an operation: its author and payload. The id, document, version and time
/// are the record's own columns; `base_sequence` only matters at the moment of the append.
fn body(user_id: &str, payload: Vec<u8>) -> Vec<u8> {
    CollaborationEvent {
        user_id: user_id.to_string(),
        payload,
        r#type: CollaborationEventType::Operation as i32,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Rebuilds an operation from its log record.
pub fn operation_from_record(record: &LogRecord) -> Result<CollaborationEvent> {
    let mut event = CollaborationEvent::decode(record.payload.as_slice())
        .map_err(|e| Error::Internal(format!("corrupt operation {}: {e}", record.id)))?;
    event.id = record.id.clone();
    event.document_id = record.stream.key.to_string();
    event.sequence = record.sequence;
    event.timestamp = Some(timestamp_from_micros(record.ts_micros));
    Ok(event)
}

/// A presence event (JOIN or LEAVE) about `user`.
fn presence_event(document: &str, user: &str, kind: CollaborationEventType) -> CollaborationEvent {
    CollaborationEvent {
        document_id: document.to_string(),
        user_id: user.to_string(),
        r#type: kind as i32,
        timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        ..Default::default()
    }
}

/// What one client event (after the JOIN) asks for.
enum Incoming {
    Operation(NewRecord, CollaborationEvent),
    Cursor(CollaborationEvent),
    Leave,
}

/// What became of one operation.
enum Applied {
    /// Stored now, or stored before under the same id with the same content.
    Stored(Arc<LogRecord>),
    /// Its base was stale: this REJECTED event, carrying the head, is for its sender alone.
    Rejected(CollaborationEvent),
}

/// What a session's task hands its call once joined: its ear on the document's signals and
/// the other users present.
type Entry = (Listener<CollaborationEvent>, Vec<Arc<str>>);

/// Why a session's inbound side stopped.
enum Ending {
    /// Half-close or LEAVE: the client gets the document up to the head, then OK.
    Finished,
    /// The client is gone: nobody to answer.
    Gone,
    Failed(Status),
    Shutdown,
}

impl Collab {
    pub fn new(log: Log, config: &Config, sessions: TaskTracker) -> Self {
        let presence = Presence::new(config.presence_capacity, config.max_room_members);
        let local = presence.clone();
        // A replica that died owed its participants' LEAVE: a survivor tells everyone.
        let cluster = Cluster::start(
            log.replicas.as_ref(),
            &log.store,
            StreamKind::Collab,
            &presence,
            std::time::Duration::from_secs(config.pg_presence_lease_secs),
            log.shutdown.clone(),
            move |cluster: Cluster<CollaborationEvent>, document: String, user: String| {
                let leave = presence_event(&document, &user, CollaborationEventType::Leave);
                cluster.send(&document, &leave);
                local.inject(&document, leave);
                std::future::ready(())
            },
        );
        Collab {
            log,
            presence,
            cluster,
            max_payload_bytes: config.max_collab_payload_bytes,
            public_documents: config.public_documents.clone(),
            sessions,
        }
    }

    fn check_payload(&self, event: &CollaborationEvent) -> Result<()> {
        if event.payload.len() > self.max_payload_bytes {
            return Err(Error::ResourceExhausted(format!(
                "payload is {} bytes; the limit is {}",
                event.payload.len(),
                self.max_payload_bytes
            )));
        }
        Ok(())
    }

    /// Validates one event after the JOIN of a session on `document` by `user`.
    fn check(&self, event: CollaborationEvent, document: &str, user: &str) -> Result<Incoming> {
        if !event.document_id.is_empty() && event.document_id != document {
            return Err(Error::invalid(format!(
                "document_id cannot change mid-stream (joined {document:?}, got {:?})",
                event.document_id
            )));
        }
        if !event.user_id.is_empty() && event.user_id != user {
            return Err(Error::invalid(format!(
                "user_id cannot change mid-stream (joined as {user:?}, got {:?})",
                event.user_id
            )));
        }
        let kind = CollaborationEventType::try_from(event.r#type)
            .map_err(|_| Error::invalid(format!("type has unknown value {}", event.r#type)))?;
        self.check_payload(&event)?;
        match kind {
            CollaborationEventType::Operation => {
                let record = NewRecord {
                    stream: document_stream(document),
                    id: validate_client_id(&event.id)?,
                    payload: body(user, event.payload.clone()),
                    expect_head: event.base_sequence,
                };
                Ok(Incoming::Operation(record, event))
            }
            CollaborationEventType::Cursor => Ok(Incoming::Cursor(CollaborationEvent {
                id: String::new(),
                document_id: document.to_string(),
                user_id: user.to_string(),
                r#type: CollaborationEventType::Cursor as i32,
                payload: event.payload,
                sequence: 0,
                base_sequence: None,
                timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            })),
            CollaborationEventType::Leave => Ok(Incoming::Leave),
            CollaborationEventType::Join => {
                Err(Error::invalid("already joined: JOIN comes only first"))
            }
            CollaborationEventType::Rejected => {
                Err(Error::invalid("REJECTED events come only from the server"))
            }
            CollaborationEventType::Unspecified => Err(Error::invalid("type is required")),
        }
    }

    /// Collaborate: joins on the first event (JOIN), then runs the session on its own task and
    /// returns the participant's view of the document.
    pub async fn session(
        &self,
        mut inbound: Streaming<CollaborationEvent>,
        cancelled: ClientCancelled,
        identity: Option<crate::auth::Identity>,
    ) -> Result<ResponseStream<CollaborationEvent>, Status> {
        let first = inbound.message().await?.ok_or_else(|| {
            Error::invalid("the stream ended before its first event, which must be JOIN")
        })?;
        if first.r#type != CollaborationEventType::Join as i32 {
            return Err(Error::invalid("the first event must be JOIN").into());
        }
        self.start(
            first,
            Inbound::Client(Box::new(inbound)),
            cancelled,
            identity,
        )
        .await
    }

    /// OpenDocument: a Collaborate session whose JOIN is the request (the client has the
    /// document up to `after_sequence`, as a JOIN's `sequence` says) and which sends nothing
    /// more. The participant is present until the client drops the response; then its LEAVE
    /// goes out exactly as for a Collaborate client that went away.
    pub async fn open_document(
        &self,
        request: OpenDocumentRequest,
        identity: Option<crate::auth::Identity>,
    ) -> Result<ResponseStream<CollaborationEvent>, Status> {
        let join = CollaborationEvent {
            document_id: request.document_id,
            user_id: request.user_id,
            r#type: CollaborationEventType::Join as i32,
            sequence: request.after_sequence,
            ..Default::default()
        };
        // Nothing to cancel: the request has no stream of its own.
        self.start(join, Inbound::Held, ClientCancelled::default(), identity)
            .await
    }

    /// SubmitCollaborationEvent: an OPERATION answered with the stored operation (idempotent
    /// by id) or a REJECTED event carrying the head, as Collaborate answers it; or a CURSOR
    /// relayed to the other users' streams and returned as relayed. JOIN and LEAVE belong to a
    /// stream (OpenDocument, Collaborate); the rest is Collaborate's check.
    pub async fn submit(
        &self,
        mut event: CollaborationEvent,
        identity: Option<&crate::auth::Identity>,
    ) -> Result<CollaborationEvent> {
        crate::auth::act_as(identity, &mut event.user_id)?;
        validate_key("document_id", &event.document_id)?;
        validate_key("user_id", &event.user_id)?;
        // Before anything is stored or relayed.
        crate::auth::may_enter(
            identity,
            crate::auth::Space::Document,
            &event.document_id,
            &self.public_documents,
        )?;
        match CollaborationEventType::try_from(event.r#type) {
            Ok(CollaborationEventType::Join) => {
                return Err(Error::invalid(
                    "JOIN is a stream's: open the document with OpenDocument",
                ));
            }
            Ok(CollaborationEventType::Leave) => {
                return Err(Error::invalid(
                    "LEAVE is a stream's: drop the OpenDocument stream to leave",
                ));
            }
            _ => {}
        }
        let document = event.document_id.clone();
        let user = event.user_id.clone();
        let stream = document_stream(&document);
        match self.check(event, &document, &user)? {
            Incoming::Operation(record, event) => {
                match self.apply(record, event, &stream, &user).await? {
                    Applied::Stored(record) => operation_from_record(&record),
                    Applied::Rejected(rejected) => Ok(rejected),
                }
            }
            Incoming::Cursor(cursor) => {
                // No stream of the sender's to skip: none of its user's streams hears it.
                if let Some(cluster) = &self.cluster {
                    cluster.send_except(&document, Some(&user), &cursor);
                }
                self.presence
                    .inject_except(&document, Some(&user), cursor.clone());
                Ok(cursor)
            }
            Incoming::Leave => Err(Error::Internal("LEAVE passed the check".into())),
        }
    }

    /// Joins with `first` (the JOIN of a Collaborate stream, or an OpenDocument request), then
    /// runs the session on its own task with `inbound` as the client's further events, and
    /// returns the participant's view of the document.
    async fn start(
        &self,
        mut first: CollaborationEvent,
        inbound: Inbound<CollaborationEvent>,
        cancelled: ClientCancelled,
        identity: Option<crate::auth::Identity>,
    ) -> Result<ResponseStream<CollaborationEvent>, Status> {
        // The JOIN binds the session's user; later events must keep it.
        crate::auth::act_as(identity.as_ref(), &mut first.user_id)?;
        validate_key("document_id", &first.document_id)?;
        validate_key("user_id", &first.user_id)?;
        // Before anything is stored or announced: no presence for a refused user.
        crate::auth::may_enter(
            identity.as_ref(),
            crate::auth::Space::Document,
            &first.document_id,
            &self.public_documents,
        )?;
        self.check_payload(&first)?;
        let document: Arc<str> = first.document_id.as_str().into();
        let user: Arc<str> = first.user_id.as_str().into();
        let stream = document_stream(&document);
        let head = self.log.store.head(&stream).await?;
        let version = first.sequence;
        if version > head {
            return Err(Error::OutOfRange(format!(
                "sequence {version} is past the document's version ({head})"
            ))
            .into());
        }

        // 1. The operations after the client's version, then live ones.
        let durable = subscribe(
            &self.log,
            stream.clone(),
            SubscribeOptions {
                start: Start::AfterSequence(version),
                history_only: false,
                holder: crate::auth::limited_user(identity.as_ref()),
            },
            |record: &LogRecord| operation_from_record(record).map(Some),
        )?;
        // 2 and 3. Who is here (sent once the replay is done), and telling them about us.
        let (control, control_rx) = mpsc::channel(CONTROL_CAPACITY);
        let collab = self.clone();
        let (listener, others) = match &self.cluster {
            // One replica: the join and its JOIN happen under the registry's lock and nothing is
            // awaited before the session's task owns the member, so a cancelled call leaves
            // nothing half-done.
            None => {
                let (member, listener, others) =
                    self.presence.join(&document, &user, |joined| {
                        if joined.first_of_user {
                            joined.broadcast(presence_event(
                                &document,
                                &user,
                                CollaborationEventType::Join,
                            ));
                        }
                        joined.others.clone()
                    })?;
                self.sessions.spawn(async move {
                    collab
                        .run(inbound, member, control, cancelled, stream, user)
                        .await;
                });
                (listener, others)
            }
            // Across replicas the join awaits the store (the lease, then who is present
            // elsewhere): the session's task does it, see `join_across`, and this call only
            // waits for its answer. A client that cancels (a browser reload during
            // OpenDocument) drops this call, not the join: the task sees it through and then
            // sends the LEAVE and drops the lease.
            Some(cluster) => {
                let cluster = cluster.clone();
                let (entered, entry) = tokio::sync::oneshot::channel::<Result<Entry>>();
                let joining = document.clone();
                self.sessions.spawn(async move {
                    let (member, listener, others) =
                        match collab.join_across(&cluster, &joining, &user).await {
                            Ok(joined) => joined,
                            Err(e) => {
                                let _ = entered.send(Err(e));
                                return;
                            }
                        };
                    if entered.send(Ok((listener, others))).is_err() {
                        // The call is gone: nobody reads the session, but the document is owed
                        // the LEAVE.
                        collab.leave(member, &stream, &user).await;
                        return;
                    }
                    collab
                        .run(inbound, member, control, cancelled, stream, user)
                        .await;
                });
                match entry.await {
                    Ok(entered) => entered?,
                    Err(_) => {
                        return Err(
                            Error::Internal("the session ended before its join".into()).into()
                        );
                    }
                }
            }
        };
        tracing::debug!(%document, version, present = others.len(), "participant joined");
        let relay = PresenceRelay::new(listener, document.clone(), others);
        Ok(Box::pin(SessionOutput::new(
            control_rx, durable, version, relay,
        )))
    }

    /// Joins across replicas: under the user's turn, counts the stream here, takes the lease
    /// when it is the user's first stream here and sends the JOIN unless another replica holds
    /// the user present already; then adds the users present on other replicas.
    ///
    /// Runs on the session's task, never in the call: a call is dropped whenever its client
    /// cancels, and dropped after the lease (and the JOIN) it would leave a lease that the
    /// upkeep renews for good and a participant no LEAVE ever removes, on every replica. A
    /// task is never dropped midway, so every arrive is followed by a depart: on a failure
    /// before the JOIN the member is withdrawn silently, after it the member leaves with its
    /// LEAVE, before this returns.
    ///
    /// Every arrive and depart of one (document, user) on this replica, here and in `leave`,
    /// runs on a session task holding the user's turn, and the turn is fair (first come, first
    /// served): a reload's new stream waits until the old one's join is decided, and the old
    /// one's depart is ordered with the new one's arrive. No depart ever runs detached from the
    /// turn.
    async fn join_across(
        &self,
        cluster: &Cluster<CollaborationEvent>,
        document: &Arc<str>,
        user: &Arc<str>,
    ) -> Result<(
        Member<CollaborationEvent>,
        Listener<CollaborationEvent>,
        Vec<Arc<str>>,
    )> {
        let (member, listener, mut others) = {
            // The user's turn orders this JOIN with their other streams' in this process; the
            // store orders it with other replicas'.
            let _turn = cluster.turn(document, user).await;
            let (member, listener, (first_here, others)) =
                self.presence.join(document, user, |joined| {
                    (joined.first_of_user, joined.others.clone())
                })?;
            if first_here {
                match cluster.arrive(document, user).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let join = presence_event(document, user, CollaborationEventType::Join);
                        cluster.send(document, &join);
                        member.signal(join);
                    }
                    Err(e) => {
                        cluster.withdraw(member, document, user).await;
                        return Err(e);
                    }
                }
            }
            (member, listener, others)
        };
        // Who else is present is no decision about this user: it needs no turn. The listener
        // already hears every change, and the relay's set of known users absorbs the overlap.
        match cluster.present_elsewhere(document).await {
            Ok(present) => {
                for present in present {
                    if present != *user && !others.contains(&present) {
                        others.push(present);
                    }
                }
                Ok((member, listener, others))
            }
            Err(e) => {
                // The JOIN may have gone out: leave as any session does.
                self.leave(member, &document_stream(document), user).await;
                Err(e)
            }
        }
    }

    /// The session's inbound side: operations and cursors until the client finishes or goes
    /// away, then the LEAVE.
    async fn run(
        self,
        mut inbound: Inbound<CollaborationEvent>,
        member: Member<CollaborationEvent>,
        control: mpsc::Sender<Control<CollaborationEvent>>,
        cancelled: ClientCancelled,
        stream: StreamKey,
        user: Arc<str>,
    ) {
        let shutdown = self.log.shutdown.clone();
        let ending = loop {
            let received = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ending::Shutdown,
                _ = control.closed() => break Ending::Gone,
                received = inbound.message() => received,
            };
            let event = match received {
                Ok(Some(event)) => event,
                Ok(None) if cancelled.is_set() => break Ending::Gone,
                Ok(None) => break Ending::Finished,
                // A message over the size limit is the client's fault and gets its status; any
                // other error means the client or its connection is gone.
                Err(status) if status.code() == Code::ResourceExhausted => {
                    break Ending::Failed(status);
                }
                Err(_) => break Ending::Gone,
            };
            let step = match self.check(event, &stream.key, &user) {
                Ok(Incoming::Leave) => break Ending::Finished,
                Ok(Incoming::Cursor(cursor)) => {
                    if let Some(cluster) = &self.cluster {
                        cluster.send(&stream.key, &cursor);
                    }
                    member.signal(cursor);
                    Ok(())
                }
                Ok(Incoming::Operation(record, event)) => {
                    match self.apply(record, event, &stream, &user).await {
                        // Delivered to everyone, the sender included, by the document's log.
                        Ok(Applied::Stored(_)) => Ok(()),
                        Ok(Applied::Rejected(rejected)) => {
                            // Only fails when the client is gone, which the session notices
                            // next.
                            let _ = control.send(Control::Send(rejected)).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = step {
                break Ending::Failed(e.into());
            }
        };

        if matches!(ending, Ending::Finished) {
            // The stream must end at the head read below, not past it. Never waits: with the
            // queue full (REJECTED events a client does not read) the LEAVE is not delayed.
            let _ = control.try_send(Control::Finishing);
        }
        self.leave(member, &stream, &user).await;
        let last = match ending {
            Ending::Finished => match self.log.store.head(&stream).await {
                Ok(head) => Control::DrainThrough(head),
                Err(e) => Control::Fail(e.into()),
            },
            Ending::Failed(status) => Control::Fail(status),
            Ending::Shutdown => Control::Fail(Error::Unavailable.into()),
            Ending::Gone => return,
        };
        let _ = control.send(last).await;
    }

    /// Removes the member; when it was the user's last stream here (and, across replicas, no
    /// other replica holds the user), everyone gets its LEAVE.
    async fn leave(&self, member: Member<CollaborationEvent>, stream: &StreamKey, user: &Arc<str>) {
        match &self.cluster {
            None => member.leave(|left| {
                if left.last_of_user {
                    left.broadcast(presence_event(
                        &stream.key,
                        user,
                        CollaborationEventType::Leave,
                    ));
                }
            }),
            Some(cluster) => {
                let _turn = cluster.turn(&stream.key, user).await;
                let last_here = member.leave(|left| left.last_of_user);
                // A failed drop leaves the lease to lapse: a survivor sends the LEAVE then.
                if last_here && matches!(cluster.depart(&stream.key, user).await, Ok(false)) {
                    let leave = presence_event(&stream.key, user, CollaborationEventType::Leave);
                    cluster.send(&stream.key, &leave);
                    self.presence.inject(&stream.key, leave);
                }
            }
        }
    }

    /// Appends one operation, or makes the REJECTED answer for its sender when its base is
    /// stale.
    async fn apply(
        &self,
        record: NewRecord,
        event: CollaborationEvent,
        stream: &StreamKey,
        user: &str,
    ) -> Result<Applied> {
        let outcome = self.log.writer.append(vec![record.clone()]).await?;
        match outcome.into_iter().next() {
            Some(AppendOutcome::Stored(stored)) => Ok(Applied::Stored(stored)),
            // A re-sent operation: it was delivered when first stored.
            Some(AppendOutcome::Duplicate(existing))
                if existing.stream == record.stream && existing.payload == record.payload =>
            {
                Ok(Applied::Stored(existing))
            }
            Some(AppendOutcome::Duplicate(existing)) => Err(Error::AlreadyExists(format!(
                "operation id {} already exists with different content",
                existing.id
            ))),
            Some(AppendOutcome::Rejected { head }) => {
                let rejected = CollaborationEvent {
                    id: event.id,
                    document_id: stream.key.to_string(),
                    user_id: user.to_string(),
                    r#type: CollaborationEventType::Rejected as i32,
                    payload: Vec::new(),
                    sequence: head,
                    base_sequence: event.base_sequence,
                    timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                };
                Ok(Applied::Rejected(rejected))
            }
            None => Err(Error::Internal("writer returned no outcome".into())),
        }
    }
}

/// Presence for one participant: first a JOIN for everyone already present, then the others'
/// JOIN, LEAVE and CURSOR events. It keeps the set of users it has announced, so a participant
/// that fell behind resynchronises instead of keeping a ghost.
struct PresenceRelay {
    listener: Listener<CollaborationEvent>,
    document: Arc<str>,
    /// Users this participant was told are present.
    known: HashSet<Arc<str>>,
    pending: VecDeque<CollaborationEvent>,
}

impl PresenceRelay {
    fn new(
        listener: Listener<CollaborationEvent>,
        document: Arc<str>,
        present: Vec<Arc<str>>,
    ) -> Self {
        let mut relay = PresenceRelay {
            listener,
            document,
            known: HashSet::new(),
            pending: VecDeque::new(),
        };
        relay.announce(present);
        relay
    }

    /// Queues the JOIN and LEAVE events that turn `known` into `present`.
    fn announce(&mut self, present: Vec<Arc<str>>) {
        let present: HashSet<Arc<str>> = present.into_iter().collect();
        for gone in self.known.difference(&present) {
            self.pending.push_back(presence_event(
                &self.document,
                gone,
                CollaborationEventType::Leave,
            ));
        }
        for new in present.difference(&self.known) {
            self.pending.push_back(presence_event(
                &self.document,
                new,
                CollaborationEventType::Join,
            ));
        }
        self.known = present;
    }
}

impl Relay<CollaborationEvent> for PresenceRelay {
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Option<CollaborationEvent>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Poll::Ready(Some(event));
            }
            match self.listener.poll_heard(cx) {
                Poll::Ready(Some(Heard::Signal(event))) => {
                    let user: Arc<str> = event.user_id.as_str().into();
                    let news = match CollaborationEventType::try_from(event.r#type) {
                        Ok(CollaborationEventType::Join) => self.known.insert(user),
                        Ok(CollaborationEventType::Leave) => self.known.remove(&user),
                        _ => true,
                    };
                    if news {
                        return Poll::Ready(Some(event));
                    }
                }
                Poll::Ready(Some(Heard::Lagged)) => {
                    let present = self.listener.resync();
                    self.announce(present);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
