//! Durable chat rooms: Chat (a bidirectional session per member), its browser twins JoinRoom
//! (the same session with no client messages) and SendChatMessage (one post or typing notice,
//! from no session), and GetChatHistory.
//!
//! A room is the log stream `chat/<room_id>`. Posts, join and leave notices are log records, so
//! they share one order, survive restarts and replay after a reconnect through the one catch-up
//! subscription. Typing notices are presence signals: relayed to the other members, never
//! stored. This module validates, turns messages into records and back, and decides when a
//! user joins or leaves; it never writes SQL and never runs its own replay loop. JoinRoom and
//! SendChatMessage never get rules of their own: they go through Chat's checks, session and
//! append, so a browser member is a member like any other. Across replicas a join never runs
//! in the call's future, which its client may drop at any await: the session's task takes the
//! lease and stores the join notice, so every lease taken is dropped again.

use super::session::{Control, Inbound, Relay, SessionOutput};
use super::{ResponseStream, validate_client_id, validate_key};
use crate::cancel::ClientCancelled;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::{
    AppendOutcome, Log, NewRecord, PendingAppend, Start, SubscribeOptions, subscribe,
};
use crate::presence::cluster::Cluster;
use crate::presence::{Heard, Listener, Member, Presence};
use crate::proto::{
    ChatMessage, ChatMessageType, GetChatHistoryRequest, GetChatHistoryResponse, JoinRoomRequest,
    timestamp_from_micros,
};
use crate::store::{LogRecord, StreamKey, StreamKind};
use prost::Message;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tonic::{Code, Status, Streaming};

/// GetChatHistory's page size when the request gives none, and its cap.
const DEFAULT_HISTORY_LIMIT: u32 = 50;
const MAX_HISTORY_LIMIT: u32 = 500;
/// Answers queued for one member's response (rejections, the final status).
const CONTROL_CAPACITY: usize = 16;
/// Posts of one member queued for the writer and not yet durable. The session keeps reading
/// while they commit, so one member can post faster than one commit per message; past this
/// many it stops reading until the oldest is durable.
const POSTS_IN_FLIGHT: usize = 64;

/// Posts of one session queued for the writer, oldest first, with what was sent.
type InFlight = VecDeque<(PendingAppend, NewRecord)>;

/// Waits until the oldest post is durable and checks its outcome; never resolves while nothing
/// is in flight. Cancel-safe: the post stays queued until its outcome is taken.
async fn next_posted(in_flight: &mut InFlight) -> Result<()> {
    let Some((pending, _)) = in_flight.front_mut() else {
        return std::future::pending().await;
    };
    let outcome = pending.await;
    match in_flight.pop_front() {
        Some((_, record)) => check_posted(outcome, &record).map(|_| ()),
        None => Err(Error::Internal("post queue emptied while awaited".into())),
    }
}

/// What a post's outcome means: a re-send of a stored message is that message (a session's
/// copy went out when it was first stored); the same id with other content is ALREADY_EXISTS.
fn check_posted(outcome: Result<Vec<AppendOutcome>>, record: &NewRecord) -> Result<Arc<LogRecord>> {
    match outcome?.into_iter().next() {
        Some(AppendOutcome::Stored(stored)) => Ok(stored),
        Some(AppendOutcome::Duplicate(existing))
            if existing.stream == record.stream && existing.payload == record.payload =>
        {
            Ok(existing)
        }
        Some(AppendOutcome::Duplicate(existing)) => Err(Error::AlreadyExists(format!(
            "message id {} already exists with different content",
            existing.id
        ))),
        Some(AppendOutcome::Rejected { .. }) | None => {
            Err(Error::Internal("unexpected append outcome".into()))
        }
    }
}

/// Limits and defaults of chat.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// Messages replayed to a member that joins with sequence 0.
    pub replay_messages: u64,
    pub max_content_bytes: usize,
    /// `--public-rooms`: rooms any authenticated user may use.
    pub public_rooms: Vec<String>,
}

/// The chat capability. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Chat {
    log: Log,
    presence: Presence<ChatMessage>,
    /// On PostgreSQL: presence and typing across replicas.
    cluster: Option<Cluster<ChatMessage>>,
    settings: ChatSettings,
    /// Every session's task, so shutdown can wait for their leave notices.
    sessions: TaskTracker,
}

fn room_stream(room_id: &str) -> StreamKey {
    StreamKey::new(StreamKind::Chat, room_id)
}

/// The stored body of a message: who, what and which type. The id, room, sequence and time are
/// the record's own columns.
fn body(user_id: &str, content: &str, kind: ChatMessageType) -> Vec<u8> {
    ChatMessage {
        user_id: user_id.to_string(),
        content: content.to_string(),
        r#type: kind as i32,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Rebuilds a room message from its log record.
pub fn message_from_record(record: &LogRecord) -> Result<ChatMessage> {
    let mut message = ChatMessage::decode(record.payload.as_slice())
        .map_err(|e| Error::Internal(format!("corrupt chat message {}: {e}", record.id)))?;
    message.id = record.id.clone();
    message.room_id = record.stream.key.to_string();
    message.sequence = record.sequence;
    message.timestamp = Some(timestamp_from_micros(record.ts_micros));
    Ok(message)
}

fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

/// What one client message asks for.
enum Incoming {
    /// Store this in the room.
    Post(NewRecord),
    /// Relay this typing notice to the others.
    Typing(ChatMessage),
    /// Nothing beyond joining (a first message without content).
    Nothing,
}

/// A member counted in the room, its ear on the room's signals, and its join notice when it
/// was the user's first stream (and, across replicas, no other replica held the user).
type Entered = (
    Member<ChatMessage>,
    Listener<ChatMessage>,
    Option<PendingAppend>,
);

/// Where a session's join is decided.
enum Joining {
    /// One replica: in the call, already done.
    Joined(Entered),
    /// Across replicas: on the session's task (`Chat::join_across`).
    Across(Cluster<ChatMessage>),
}

/// Why a session's inbound side stopped.
enum Ending {
    /// Half-close: the client is done sending and gets the rest of the room up to its leave.
    Finished,
    /// The client is gone (cancel, reset, dead connection): nobody to answer.
    Gone,
    /// A bad message or a failed append: the stream ends with this status.
    Failed(Status),
    /// The server is shutting down.
    Shutdown,
}

/// A join or leave notice: a system message of the room.
fn notice_record(stream: &StreamKey, user: &str, what: &str) -> NewRecord {
    NewRecord {
        stream: stream.clone(),
        id: None,
        payload: body(
            user,
            &format!("User {user} {what} the chat"),
            ChatMessageType::System,
        ),
        expect_head: None,
    }
}

/// A typing notice from a user to a room.
fn typing(room: &str, user: &str, content: String) -> ChatMessage {
    ChatMessage {
        user_id: user.to_string(),
        room_id: room.to_string(),
        content,
        timestamp: Some(now_timestamp()),
        r#type: ChatMessageType::Typing as i32,
        ..Default::default()
    }
}

impl Chat {
    pub fn new(log: Log, config: &Config, sessions: TaskTracker) -> Self {
        let presence = Presence::new(config.presence_capacity, config.max_room_members);
        let writer = log.writer.clone();
        // A replica that died owed its members' leave notices: a survivor stores them.
        let cluster = Cluster::start(
            log.replicas.as_ref(),
            &log.store,
            StreamKind::Chat,
            &presence,
            std::time::Duration::from_secs(config.pg_presence_lease_secs),
            log.shutdown.clone(),
            move |_, room: String, user: String| {
                let writer = writer.clone();
                async move {
                    let notice = notice_record(&room_stream(&room), &user, "left");
                    if let Err(e) = writer.append(vec![notice]).await {
                        tracing::warn!(%room, %user, error = %crate::error::cause_chain(&e), "leave notice of a lapsed member not stored");
                    }
                }
            },
        );
        Chat {
            log,
            presence,
            cluster,
            settings: ChatSettings {
                replay_messages: config.chat_replay_messages,
                max_content_bytes: config.max_chat_content_bytes,
                public_rooms: config.public_rooms.clone(),
            },
            sessions,
        }
    }

    /// A SYSTEM notice about `user`, stored like any message.
    fn notice(&self, stream: &StreamKey, user: &str, what: &str) -> NewRecord {
        notice_record(stream, user, what)
    }

    /// Relays an ephemeral signal to the room's other members, here and on other replicas.
    fn signal(&self, member: &Member<ChatMessage>, message: ChatMessage) {
        if let Some(cluster) = &self.cluster {
            cluster.send(&message.room_id, &message);
        }
        member.signal(message);
    }

    /// Relays an ephemeral signal of a unary call (SendChatMessage) to the other users'
    /// streams, here and on other replicas. The call has no stream of its own, so every stream
    /// of its user is skipped.
    fn signal_from_call(&self, message: &ChatMessage) {
        if let Some(cluster) = &self.cluster {
            cluster.send_except(&message.room_id, Some(&message.user_id), message);
        }
        self.presence
            .inject_except(&message.room_id, Some(&message.user_id), message.clone());
    }

    /// Validates one client message of the session in `room` by `user`.
    fn check(
        &self,
        message: &ChatMessage,
        room: &str,
        user: &str,
        first: bool,
    ) -> Result<Incoming> {
        if !message.room_id.is_empty() && message.room_id != room {
            return Err(Error::invalid(format!(
                "room_id cannot change mid-stream (joined {room:?}, got {:?})",
                message.room_id
            )));
        }
        if !message.user_id.is_empty() && message.user_id != user {
            return Err(Error::invalid(format!(
                "user_id cannot change mid-stream (joined as {user:?}, got {:?})",
                message.user_id
            )));
        }
        let kind = ChatMessageType::try_from(message.r#type)
            .map_err(|_| Error::invalid(format!("type has unknown value {}", message.r#type)))?;
        if message.content.len() > self.settings.max_content_bytes {
            return Err(Error::ResourceExhausted(format!(
                "content is {} bytes; the limit is {}",
                message.content.len(),
                self.settings.max_content_bytes
            )));
        }
        let id = validate_client_id(&message.id)?;
        match kind {
            ChatMessageType::System => {
                Err(Error::invalid("SYSTEM messages come only from the server"))
            }
            ChatMessageType::Typing => Ok(Incoming::Typing(typing(
                room,
                user,
                message.content.clone(),
            ))),
            ChatMessageType::Unspecified if message.content.is_empty() => Ok(Incoming::Nothing),
            ChatMessageType::Unspecified => Err(Error::invalid(
                "type is required for a message with content (TEXT, IMAGE or FILE)",
            )),
            ChatMessageType::Text | ChatMessageType::Image | ChatMessageType::File => {
                if message.content.is_empty() {
                    return if first {
                        Ok(Incoming::Nothing)
                    } else {
                        Err(Error::invalid("content is required"))
                    };
                }
                Ok(Incoming::Post(NewRecord {
                    stream: room_stream(room),
                    id,
                    payload: body(user, &message.content, kind),
                    expect_head: None,
                }))
            }
        }
    }

    /// Chat: joins on the first message, then runs the session on its own task and returns the
    /// member's view of the room.
    pub async fn session(
        &self,
        mut inbound: Streaming<ChatMessage>,
        cancelled: ClientCancelled,
        identity: Option<crate::auth::Identity>,
    ) -> Result<ResponseStream<ChatMessage>, Status> {
        let first = inbound.message().await?.ok_or_else(|| {
            Error::invalid("the stream ended before its first message, which joins a room")
        })?;
        self.start(
            first,
            Inbound::Client(Box::new(inbound)),
            cancelled,
            identity,
        )
        .await
    }

    /// JoinRoom: a Chat session whose first message is the request (a join with no content,
    /// having seen the room up to `after_sequence`) and which sends nothing more. The member
    /// is present until the client drops the response; then its leave is stored exactly as
    /// for a Chat client that went away.
    pub async fn join_room(
        &self,
        request: JoinRoomRequest,
        identity: Option<crate::auth::Identity>,
    ) -> Result<ResponseStream<ChatMessage>, Status> {
        let first = ChatMessage {
            room_id: request.room_id,
            user_id: request.user_id,
            sequence: request.after_sequence,
            ..Default::default()
        };
        // Nothing to cancel: the request has no stream of its own.
        self.start(first, Inbound::Held, ClientCancelled::default(), identity)
            .await
    }

    /// SendChatMessage: one TEXT, IMAGE or FILE stored (idempotent by id) and returned as
    /// stored, or one TYPING relayed and returned as relayed. The same checks and access rules
    /// as a Chat message; no join or leave notice (presence belongs to streams).
    pub async fn send(
        &self,
        mut message: ChatMessage,
        identity: Option<&crate::auth::Identity>,
    ) -> Result<ChatMessage> {
        crate::auth::act_as(identity, &mut message.user_id)?;
        validate_key("room_id", &message.room_id)?;
        validate_key("user_id", &message.user_id)?;
        // Before anything is stored or relayed.
        crate::auth::may_enter(
            identity,
            crate::auth::Space::Room,
            &message.room_id,
            &self.settings.public_rooms,
        )?;
        match self.check(&message, &message.room_id, &message.user_id, false)? {
            Incoming::Nothing => Err(Error::invalid(
                "type is required (TEXT, IMAGE, FILE or TYPING); joining is JoinRoom's",
            )),
            Incoming::Typing(notice) => {
                self.signal_from_call(&notice);
                Ok(notice)
            }
            Incoming::Post(record) => {
                let outcome = self.log.writer.append(vec![record.clone()]).await;
                let stored = check_posted(outcome, &record)?;
                message_from_record(&stored)
            }
        }
    }

    /// Joins `first.room_id` as `first.user_id` (the first message of a Chat stream, or a
    /// JoinRoom request), then runs the session on its own task with `inbound` as the
    /// client's further messages, and returns the member's view of the room.
    async fn start(
        &self,
        mut first: ChatMessage,
        inbound: Inbound<ChatMessage>,
        cancelled: ClientCancelled,
        identity: Option<crate::auth::Identity>,
    ) -> Result<ResponseStream<ChatMessage>, Status> {
        // The first message binds the session's user; later ones must keep it.
        crate::auth::act_as(identity.as_ref(), &mut first.user_id)?;
        validate_key("room_id", &first.room_id)?;
        validate_key("user_id", &first.user_id)?;
        // Before anything is stored: no join notice, no presence for a refused user.
        crate::auth::may_enter(
            identity.as_ref(),
            crate::auth::Space::Room,
            &first.room_id,
            &self.settings.public_rooms,
        )?;
        let room: Arc<str> = first.room_id.as_str().into();
        let user: Arc<str> = first.user_id.as_str().into();
        // Everything about the first message is checked before anything is stored.
        let first_incoming = self.check(&first, &room, &user, true)?;
        let stream = room_stream(&room);
        let head = self.log.store.head(&stream).await?;
        let after = match first.sequence {
            0 => head.saturating_sub(self.settings.replay_messages),
            seen if seen > head => {
                return Err(Error::OutOfRange(format!(
                    "sequence {seen} is past the room's last message ({head})"
                ))
                .into());
            }
            seen => seen,
        };

        // Subscribe before joining, so the member's own join notice reaches it.
        let durable = subscribe(
            &self.log,
            stream.clone(),
            SubscribeOptions {
                start: Start::AfterSequence(after),
                history_only: false,
                holder: crate::auth::limited_user(identity.as_ref()),
            },
            |record: &LogRecord| message_from_record(record).map(Some),
        )?;
        let joining = match &self.cluster {
            // One replica: the join is decided under the registry's lock with its notice
            // queued, and nothing is awaited between them, so a cancelled call leaves nothing
            // half-done.
            None => {
                let permit = self.log.writer.reserve().await?;
                Joining::Joined(self.presence.join(&room, &user, |joined| {
                    joined
                        .first_of_user
                        .then(|| permit.append(vec![self.notice(&stream, &user, "joined")]))
                })?)
            }
            // Across replicas the join awaits the store (the lease) and then the writer (the
            // notice): the session's task does it, see `join_across`.
            Some(cluster) => Joining::Across(cluster.clone()),
        };
        // From here on the session's own task owns the member: a client that resets its stream
        // (a browser reload during JoinRoom) drops this call, but the task still sees the join
        // through and then stores the leave, and drops the lease.
        let (control, control_rx) = mpsc::channel(CONTROL_CAPACITY);
        let (joined, join_outcome) =
            tokio::sync::oneshot::channel::<Result<Listener<ChatMessage>>>();
        let chat = self.clone();
        self.sessions.spawn(async move {
            let (member, listener, join_notice) = match joining {
                Joining::Joined(entered) => entered,
                Joining::Across(cluster) => {
                    match chat.join_across(&cluster, &room, &user, &stream).await {
                        Ok(entered) => entered,
                        Err(e) => {
                            let _ = joined.send(Err(e));
                            return;
                        }
                    }
                }
            };
            if let Some(pending) = join_notice
                && let Err(e) = pending.outcome().await
            {
                match &chat.cluster {
                    // Not announced, so no leave notice either; but the lease must go, or the
                    // upkeep would renew it for good and every other replica would hold the
                    // user present elsewhere.
                    Some(cluster) => {
                        let _turn = cluster.turn(&room, &user).await;
                        cluster.withdraw(member, &room, &user).await;
                    }
                    None => drop(member),
                }
                let _ = joined.send(Err(e));
                return;
            }
            tracing::debug!(room = %stream.key, %user, after, "member joined");
            if joined.send(Ok(listener)).is_err() {
                // The call is gone: nobody reads the session, but the room is owed the leave.
                if let Err(e) = chat.leave(member, &stream, &user, false).await {
                    tracing::warn!(room = %stream.key, %user, error = %crate::error::cause_chain(&e), "leave notice not stored");
                }
                return;
            }
            chat.run(
                inbound,
                first_incoming,
                member,
                control,
                cancelled,
                stream,
                user,
            )
            .await;
        });
        let listener = match join_outcome.await {
            Ok(Ok(listener)) => listener,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(Error::Internal("the session ended before its join".into()).into());
            }
        };
        Ok(Box::pin(SessionOutput::new(
            control_rx,
            durable,
            after,
            TypingRelay(listener),
        )))
    }

    /// Joins across replicas: under the user's turn, counts the stream here, takes the lease
    /// when it is the user's first stream here, and queues the join notice unless another
    /// replica holds the user present already.
    ///
    /// Runs on the session's task, never in the call: a call is dropped whenever its client
    /// cancels, and dropped between the lease and the notice it would leave a lease that the
    /// upkeep renews for good (the user "present elsewhere" to every other replica, who then
    /// store no join or leave notice for them) with no stream left to drop it. A task is never
    /// dropped midway, so every arrive is followed by the session's depart, and a failure here
    /// withdraws the member and the lease before it returns.
    ///
    /// Every arrive and depart of one (room, user) on this replica, here and in `leave`, runs
    /// on a session task holding the user's turn, and the turn is fair (first come, first
    /// served): a reload's new stream waits for the old one's join to be decided, and the old
    /// one's depart is ordered with the new one's arrive (the new one, while the old member is
    /// still counted, is no first stream and takes no lease; once it is gone, the depart is
    /// done). No depart ever runs detached from the turn.
    async fn join_across(
        &self,
        cluster: &Cluster<ChatMessage>,
        room: &Arc<str>,
        user: &Arc<str>,
        stream: &StreamKey,
    ) -> Result<Entered> {
        // The user's turn orders this join with their other streams' joins and leaves in this
        // process; the store orders it with other replicas'.
        let _turn = cluster.turn(room, user).await;
        let (member, listener, first_here) = self
            .presence
            .join(room, user, |joined| joined.first_of_user)?;
        if !first_here {
            return Ok((member, listener, None));
        }
        let elsewhere = match cluster.arrive(room, user).await {
            Ok(elsewhere) => elsewhere,
            Err(e) => {
                cluster.withdraw(member, room, user).await;
                return Err(e);
            }
        };
        if elsewhere {
            return Ok((member, listener, None));
        }
        // Queued under the turn, so it reaches the writer before any leave notice of this user
        // from this replica.
        match self.log.writer.reserve().await {
            Ok(permit) => {
                let notice = permit.append(vec![self.notice(stream, user, "joined")]);
                Ok((member, listener, Some(notice)))
            }
            Err(e) => {
                cluster.withdraw(member, room, user).await;
                Err(e)
            }
        }
    }

    /// The session's inbound side: posts and typing until the client finishes or goes away,
    /// then the leave.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        self,
        mut inbound: Inbound<ChatMessage>,
        first: Incoming,
        member: Member<ChatMessage>,
        control: mpsc::Sender<Control<ChatMessage>>,
        cancelled: ClientCancelled,
        stream: StreamKey,
        user: Arc<str>,
    ) {
        let shutdown = self.log.shutdown.clone();
        let mut typing_shown = false;
        let mut in_flight = InFlight::new();
        let mut next = Some(first);
        let mut ending = loop {
            if let Some(incoming) = next.take()
                && let Err(e) = self
                    .handle(&member, incoming, &mut typing_shown, &mut in_flight)
                    .await
            {
                break Ending::Failed(e.into());
            }
            let received = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ending::Shutdown,
                _ = control.closed() => break Ending::Gone,
                posted = next_posted(&mut in_flight) => match posted {
                    Ok(()) => continue,
                    Err(e) => break Ending::Failed(e.into()),
                },
                received = inbound.message(), if in_flight.len() < POSTS_IN_FLIGHT => received,
            };
            match received {
                Ok(Some(message)) => match self.check(&message, &stream.key, &user, false) {
                    Ok(incoming) => next = Some(incoming),
                    Err(e) => break Ending::Failed(e.into()),
                },
                // hyper reports a client's cancel as a clean end: only the flag tells them apart.
                Ok(None) if cancelled.is_set() => break Ending::Gone,
                Ok(None) => break Ending::Finished,
                // A message over the size limit is the client's fault and gets its status; any
                // other error means the client or its connection is gone.
                Err(status) if status.code() == Code::ResourceExhausted => {
                    break Ending::Failed(status);
                }
                Err(_) => break Ending::Gone,
            }
        };

        // Posts still committing: a client that finished is owed their outcome (one may be an
        // ALREADY_EXISTS); a client that is gone is not, and they commit all the same.
        if matches!(ending, Ending::Finished) {
            while !in_flight.is_empty() {
                if let Err(e) = next_posted(&mut in_flight).await {
                    ending = Ending::Failed(e.into());
                    break;
                }
            }
        }
        if matches!(ending, Ending::Finished) {
            // The stream must end at the leave notice, not past it: hold the log back until
            // its sequence is known. Never waits: with the queue full (a client that reads
            // nothing) the leave is not delayed, and the drain may only run a little past it.
            let _ = control.try_send(Control::Finishing);
        }
        // A failing session gives its status before its leave notice is stored, so the client
        // sees the status, not its own leave, as the end. Never waits (see above); when the
        // queue is full the status goes after the leave instead.
        let failure: Option<Status> = match &ending {
            Ending::Failed(status) => Some(status.clone()),
            Ending::Shutdown => Some(Error::Unavailable.into()),
            Ending::Finished | Ending::Gone => None,
        };
        let failure_sent =
            failure.is_some_and(|status| control.try_send(Control::Fail(status)).is_ok());
        let left = self.leave(member, &stream, &user, typing_shown).await;
        if let Err(e) = &left {
            tracing::warn!(room = %stream.key, %user, error = %crate::error::cause_chain(e), "leave notice not stored");
        }
        let last = match (ending, left) {
            (Ending::Finished, Ok(through)) => Control::DrainThrough(through),
            (Ending::Finished, Err(e)) => Control::Fail(e.into()),
            (Ending::Failed(status), _) => Control::Fail(status),
            (Ending::Shutdown, _) => Control::Fail(Error::Unavailable.into()),
            (Ending::Gone, _) => return,
        };
        if !failure_sent {
            let _ = control.send(last).await;
        }
    }

    async fn handle(
        &self,
        member: &Member<ChatMessage>,
        incoming: Incoming,
        typing_shown: &mut bool,
        in_flight: &mut InFlight,
    ) -> Result<()> {
        match incoming {
            Incoming::Nothing => Ok(()),
            Incoming::Typing(notice) => {
                // Empty content means "stopped typing".
                *typing_shown = !notice.content.is_empty();
                self.signal(member, notice);
                Ok(())
            }
            Incoming::Post(record) => {
                // A message ends its author's typing notice on every client.
                *typing_shown = false;
                self.post(record, in_flight).await
            }
        }
    }

    /// Queues one message for the writer, in the member's order; the room's log delivers it to
    /// every member, the author included. Its outcome is checked when it is durable.
    async fn post(&self, record: NewRecord, in_flight: &mut InFlight) -> Result<()> {
        let pending = self
            .log
            .writer
            .reserve()
            .await?
            .append(vec![record.clone()]);
        in_flight.push_back((pending, record));
        Ok(())
    }

    /// Removes the member; when it was the user's last stream in the room, stores the leave
    /// notice. Returns the room sequence the member is owed up to (its leave notice, or the
    /// head when the user is still present elsewhere).
    async fn leave(
        &self,
        member: Member<ChatMessage>,
        stream: &StreamKey,
        user: &str,
        typing_shown: bool,
    ) -> Result<u64> {
        if typing_shown {
            // An empty typing notice means "stopped typing": none outlives its stream.
            self.signal(&member, typing(&stream.key, user, String::new()));
        }
        if let Some(cluster) = &self.cluster {
            let (room, user): (Arc<str>, Arc<str>) = (stream.key.clone(), user.into());
            let _turn = cluster.turn(&room, &user).await;
            let last_here = member.leave(|left| left.last_of_user);
            // A failed drop leaves the lease to lapse: a survivor stores the leave notice.
            if !last_here || cluster.depart(&room, &user).await? {
                return self.log.store.head(stream).await;
            }
            let pending = self
                .log
                .writer
                .reserve()
                .await?
                .append(vec![self.notice(stream, &user, "left")]);
            return match pending.outcome().await?.into_iter().next() {
                Some(AppendOutcome::Stored(record)) => Ok(record.sequence),
                _ => Err(Error::Internal("unexpected append outcome".into())),
            };
        }
        let permit = self.log.writer.reserve().await?;
        let notice = member.leave(|left| {
            left.last_of_user
                .then(|| permit.append(vec![self.notice(stream, user, "left")]))
        });
        match notice {
            Some(pending) => match pending.outcome().await?.into_iter().next() {
                Some(AppendOutcome::Stored(record)) => Ok(record.sequence),
                _ => Err(Error::Internal("unexpected append outcome".into())),
            },
            None => self.log.store.head(stream).await,
        }
    }

    /// GetChatHistory: one page of the room, oldest first, before `before_sequence`.
    pub async fn history(
        &self,
        request: GetChatHistoryRequest,
        identity: Option<&crate::auth::Identity>,
    ) -> Result<GetChatHistoryResponse> {
        validate_key("room_id", &request.room_id)?;
        crate::auth::may_enter(
            identity,
            crate::auth::Space::Room,
            &request.room_id,
            &self.settings.public_rooms,
        )?;
        let limit = match request.limit {
            0 => DEFAULT_HISTORY_LIMIT,
            n => n.min(MAX_HISTORY_LIMIT),
        };
        let before = (request.before_sequence > 0).then_some(request.before_sequence);
        let records = self
            .log
            .store
            .read_page_before(&room_stream(&request.room_id), before, limit)
            .await?;
        // Sequences are contiguous from 1, so older messages exist exactly when this page
        // does not start at 1.
        let has_more = records.first().is_some_and(|r| r.sequence > 1);
        let messages = records
            .iter()
            .map(message_from_record)
            .collect::<Result<Vec<_>>>()?;
        Ok(GetChatHistoryResponse { messages, has_more })
    }
}

/// Typing notices from the other members of the room.
struct TypingRelay(Listener<ChatMessage>);

impl Relay<ChatMessage> for TypingRelay {
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Option<ChatMessage>> {
        loop {
            return match self.0.poll_heard(cx) {
                Poll::Ready(Some(Heard::Signal(message))) => Poll::Ready(Some(message)),
                // Stale typing notices are worth nothing: skip what was lost.
                Poll::Ready(Some(Heard::Lagged)) => continue,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}
