//! Idempotency ids are scoped to their stream, against the real server: the same id in two
//! users' events, two inboxes, two rooms and two documents gives two records, each with its own
//! sequence, each delivered live and replayed; within one stream the same id with other content
//! is ALREADY_EXISTS (or, in a batch, a reject with its index); and a database written by the
//! schema before migration 0006 carries over.

mod common;

use common::*;
use prost::Message;
use prost_types::Any;
use streamhub::proto::*;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::Streaming;

fn any(value: &str) -> Any {
    Any {
        type_url: "test/order".into(),
        value: value.as_bytes().to_vec(),
    }
}

fn event(user: &str, id: &str, data: &str) -> PublishUserEventRequest {
    PublishUserEventRequest {
        user_id: user.into(),
        r#type: UserEventType::Login as i32,
        data: Some(any(data)),
        id: id.into(),
    }
}

fn record(user: &str, id: &str, data: &str) -> DataRecord {
    DataRecord {
        id: id.into(),
        user_id: user.into(),
        r#type: UserEventType::Login as i32,
        data: Some(any(data)),
    }
}

fn note(user: &str, id: &str, title: &str) -> PublishNotificationRequest {
    PublishNotificationRequest {
        user_id: user.into(),
        topic: "orders".into(),
        title: title.into(),
        body: String::new(),
        data: None,
        id: id.into(),
    }
}

/// Every stored event of `user`, by replay.
async fn history(client: &mut Client, user: &str) -> Vec<UserEvent> {
    let stream = client
        .stream_user_events(StreamUserEventsRequest {
            user_id: user.into(),
            history_only: true,
            ..Default::default()
        })
        .await
        .expect("replay")
        .into_inner();
    stream.map(|e| e.expect("event")).collect().await
}

async fn batch(client: &mut Client, records: Vec<DataRecord>) -> BatchProcessingResult {
    client
        .process_data_batch(tokio_stream::iter(records))
        .await
        .expect("batch")
        .into_inner()
}

/// (sequence, id, data) of events, for exact comparisons.
fn rows(events: &[UserEvent]) -> Vec<(u64, String, String)> {
    events
        .iter()
        .map(|e| {
            let data = e.data.as_ref().map(|d| d.value.clone()).unwrap_or_default();
            (
                e.sequence,
                e.id.clone(),
                String::from_utf8_lossy(&data).into(),
            )
        })
        .collect()
}

fn row(seq: u64, id: &str, data: &str) -> (u64, String, String) {
    (seq, id.into(), data.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_in_two_users_streams_is_two_events() {
    let server = TestServer::start().await;
    within(30, "events", async {
        let mut client = server.client().await;
        // alice listens live before anything is published.
        let mut live = client
            .stream_user_events(StreamUserEventsRequest {
                user_id: "alice".into(),
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        let bob = client
            .publish_user_event(event("bob", "order-1-shipped", "bob's"))
            .await
            .expect("bob publishes")
            .into_inner();
        let alice = client
            .publish_user_event(event("alice", "order-1-shipped", "alice's"))
            .await
            .expect("alice publishes: bob's id does not squat hers")
            .into_inner();
        assert_eq!((bob.sequence, alice.sequence), (1, 1));
        let delivered = live.next().await.expect("live event").expect("ok");
        assert_eq!(delivered, alice);

        // A retry in either stream is the same event; other content in one stream is a conflict.
        let again = client
            .publish_user_event(event("alice", "order-1-shipped", "alice's"))
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(again, alice);
        let status = client
            .publish_user_event(event("alice", "order-1-shipped", "changed"))
            .await
            .expect_err("other content");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

        assert_eq!(
            rows(&history(&mut client, "bob").await),
            [row(1, "order-1-shipped", "bob's")]
        );
        assert_eq!(
            rows(&history(&mut client, "alice").await),
            [row(1, "order-1-shipped", "alice's")]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_notification_id_in_two_inboxes_is_two_notifications() {
    let server = TestServer::start().await;
    within(30, "notifications", async {
        let mut client = server.client().await;
        let bob = client
            .publish_notification(note("bob", "order-1-shipped", "for bob"))
            .await
            .expect("bob's")
            .into_inner();
        let alice = client
            .publish_notification(note("alice", "order-1-shipped", "for alice"))
            .await
            .expect("alice's is delivered, not ALREADY_EXISTS")
            .into_inner();
        assert_eq!((bob.sequence, alice.sequence), (1, 1));
        assert_eq!(
            (bob.title.as_str(), alice.title.as_str()),
            ("for bob", "for alice")
        );
        let status = client
            .publish_notification(note("alice", "order-1-shipped", "changed"))
            .await
            .expect_err("other content in one inbox");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        let retry = client
            .publish_notification(note("bob", "order-1-shipped", "for bob"))
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(retry, bob);

        // Each inbox replays its own.
        for (user, expected) in [("bob", &bob), ("alice", &alice)] {
            let mut inbox = client
                .subscribe_to_notifications(SubscribeRequest {
                    user_id: user.into(),
                    ..Default::default()
                })
                .await
                .expect("subscribe")
                .into_inner();
            let first = inbox.next().await.expect("replayed").expect("ok");
            assert_eq!(&first, expected, "{user}");
        }
    })
    .await;
}

/// A chat stream: what it sends and what it receives.
struct Member {
    tx: mpsc::Sender<ChatMessage>,
    rx: Streaming<ChatMessage>,
}

fn text(room: &str, user: &str, id: &str, content: &str) -> ChatMessage {
    ChatMessage {
        id: id.into(),
        user_id: user.into(),
        room_id: room.into(),
        content: content.into(),
        r#type: ChatMessageType::Text as i32,
        ..Default::default()
    }
}

impl Member {
    /// Joins `room` with a first message that only joins, and takes the join notice.
    async fn join(client: &mut Client, room: &str, user: &str) -> Member {
        let (tx, messages) = mpsc::channel(16);
        tx.send(ChatMessage {
            user_id: user.into(),
            room_id: room.into(),
            ..Default::default()
        })
        .await
        .expect("queue join");
        let mut rx = client
            .chat(ReceiverStream::new(messages))
            .await
            .expect("chat")
            .into_inner();
        let notice = rx.next().await.expect("join notice").expect("ok");
        assert_eq!(notice.r#type, ChatMessageType::System as i32);
        Member { tx, rx }
    }

    async fn post(&mut self, message: ChatMessage) -> Result<ChatMessage, tonic::Status> {
        self.tx.send(message).await.expect("send");
        self.rx.next().await.expect("an answer")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_id_in_two_rooms_is_two_messages() {
    let server = TestServer::start().await;
    within(30, "chat", async {
        let mut client = server.client().await;
        let mut ann = Member::join(&mut client, "room-a", "ann").await;
        let mut bob = Member::join(&mut client, "room-b", "bob").await;
        let a = ann
            .post(text("room-a", "ann", "m-1", "hello a"))
            .await
            .expect("stored in room-a");
        let b = bob
            .post(text("room-b", "bob", "m-1", "hello b"))
            .await
            .expect("stored in room-b: not a conflict with room-a");
        // Sequence 1 is each room's join notice.
        assert_eq!((a.sequence, a.id.as_str()), (2, "m-1"));
        assert_eq!((b.sequence, b.id.as_str()), (2, "m-1"));
        for (room, expected) in [("room-a", &a), ("room-b", &b)] {
            let history = client
                .get_chat_history(GetChatHistoryRequest {
                    room_id: room.into(),
                    ..Default::default()
                })
                .await
                .expect("history")
                .into_inner();
            assert_eq!(history.messages.last(), Some(expected), "{room}");
            assert_eq!(history.messages.len(), 2, "{room}");
        }
        // The same id with other content in one room is a conflict.
        let status = bob
            .post(text("room-b", "bob", "m-1", "changed"))
            .await
            .expect_err("conflict");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    })
    .await;
}

fn op(doc: &str, user: &str, id: &str, payload: &[u8]) -> CollaborationEvent {
    CollaborationEvent {
        id: id.into(),
        document_id: doc.into(),
        user_id: user.into(),
        r#type: CollaborationEventType::Operation as i32,
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// Joins `doc` and returns the stream's sender and receiver.
async fn open_document(
    client: &mut Client,
    doc: &str,
    user: &str,
) -> (
    mpsc::Sender<CollaborationEvent>,
    Streaming<CollaborationEvent>,
) {
    let (tx, events) = mpsc::channel(16);
    tx.send(CollaborationEvent {
        document_id: doc.into(),
        user_id: user.into(),
        r#type: CollaborationEventType::Join as i32,
        ..Default::default()
    })
    .await
    .expect("queue join");
    let rx = client
        .collaborate(ReceiverStream::new(events))
        .await
        .expect("collaborate")
        .into_inner();
    (tx, rx)
}

/// The next stored operation on `rx`, skipping presence.
async fn next_op(
    rx: &mut Streaming<CollaborationEvent>,
) -> Result<CollaborationEvent, tonic::Status> {
    loop {
        let event = rx.next().await.expect("an event")?;
        if event.r#type == CollaborationEventType::Operation as i32 {
            return Ok(event);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_operation_id_in_two_documents_is_two_operations() {
    let server = TestServer::start().await;
    within(30, "collaboration", async {
        let mut client = server.client().await;
        let (ann_tx, mut ann_rx) = open_document(&mut client, "doc-a", "ann").await;
        let (bob_tx, mut bob_rx) = open_document(&mut client, "doc-b", "bob").await;
        ann_tx
            .send(op("doc-a", "ann", "op-1", b"a"))
            .await
            .expect("send");
        let a = next_op(&mut ann_rx).await.expect("stored in doc-a");
        bob_tx
            .send(op("doc-b", "bob", "op-1", b"b"))
            .await
            .expect("send");
        let b = next_op(&mut bob_rx)
            .await
            .expect("stored in doc-b: not a conflict with doc-a");
        assert_eq!(
            (a.sequence, a.id.as_str(), a.payload.as_slice()),
            (1, "op-1", &b"a"[..])
        );
        assert_eq!(
            (b.sequence, b.id.as_str(), b.payload.as_slice()),
            (1, "op-1", &b"b"[..])
        );

        // A new participant of each document gets its operation replayed.
        for (doc, expected) in [("doc-a", &a), ("doc-b", &b)] {
            let (_tx, mut rx) = open_document(&mut client, doc, "cat").await;
            let replayed = next_op(&mut rx).await.expect("replayed");
            assert_eq!(&replayed, expected, "{doc}");
        }
        // Other content under the same id in one document is a conflict.
        bob_tx
            .send(op("doc-b", "bob", "op-1", b"changed"))
            .await
            .expect("send");
        let status = next_op(&mut bob_rx).await.expect_err("conflict");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_scopes_ids_to_each_users_stream() {
    let server = TestServer::start().await;
    within(30, "batch", async {
        let mut client = server.client().await;
        // One id for two users: two records.
        let result = batch(
            &mut client,
            vec![record("bob", "x-1", "b1"), record("alice", "x-1", "a1")],
        )
        .await;
        assert_eq!(
            (result.records_received, result.records_accepted),
            (2, 2),
            "{result:?}"
        );
        assert_eq!(
            (result.records_duplicate, result.records_rejected),
            (0, 0),
            "{result:?}"
        );
        assert_eq!(
            rows(&history(&mut client, "bob").await),
            [row(1, "x-1", "b1")]
        );
        assert_eq!(
            rows(&history(&mut client, "alice").await),
            [row(1, "x-1", "a1")]
        );

        // Within one stream: a repeat with the same content is a duplicate, with other content
        // a reject with its index; against stored records the same, and other users' ids never
        // count.
        let result = batch(
            &mut client,
            vec![
                record("bob", "x-2", "b2"),        // 0: new
                record("bob", "x-2", "b2"),        // 1: the same again: duplicate
                record("bob", "x-2", "other"),     // 2: other content: reject
                record("bob", "x-1", "b1"),        // 3: stored, same content: duplicate
                record("bob", "x-1", "a1"),        // 4: stored, other content: reject
                record("carol", "x-1", "c1"),      // 5: another stream: new
                record("", "x-9", "no user"),      // 6: invalid: reject
                record("alice", "x-2", "alice's"), // 7: another stream: new
            ],
        )
        .await;
        assert_eq!(
            (
                result.records_received,
                result.records_accepted,
                result.records_duplicate,
                result.records_rejected
            ),
            (8, 3, 2, 3),
            "{result:?}"
        );
        let rejects: Vec<(u64, &str, &str)> = result
            .errors
            .iter()
            .map(|e| (e.index, e.record_id.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            rejects,
            [
                (
                    2,
                    "x-2",
                    "event id x-2 already exists in this user's events with different content"
                ),
                (
                    4,
                    "x-1",
                    "event id x-1 already exists in this user's events with different content"
                ),
                (6, "x-9", "user_id is required"),
            ]
        );
        assert_eq!(
            rows(&history(&mut client, "bob").await),
            [row(1, "x-1", "b1"), row(2, "x-2", "b2")]
        );
        assert_eq!(
            rows(&history(&mut client, "alice").await),
            [row(1, "x-1", "a1"), row(2, "x-2", "alice's")]
        );
        assert_eq!(
            rows(&history(&mut client, "carol").await),
            [row(1, "x-1", "c1")]
        );
    })
    .await;
}

/// The stored body of an event as the server writes it (type and data; the id, user, sequence
/// and timestamp are columns).
fn event_body(data: &str) -> Vec<u8> {
    UserEvent {
        r#type: UserEventType::Login as i32,
        data: Some(any(data)),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A database written by the schema before 0006 (migrations 0001 to 0004 only, ids unique per
/// kind) opens on this server: its records replay, and its ids stay idempotent within their
/// streams while other streams may now use them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_the_old_schema_carries_over() {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
    {
        use sqlx::ConnectOptions;
        use std::str::FromStr;
        let url = format!("sqlite://{}", dir.path().join("streamhub.db").display());
        let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
            .expect("url")
            .create_if_missing(true)
            .connect()
            .await
            .expect("open old database");
        let mut old = sqlx::migrate::Migrator::new(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations"
        )))
        .await
        .expect("migrations");
        old.migrations = old
            .migrations
            .iter()
            .filter(|m| m.version <= 4)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        assert_eq!(old.migrations.len(), 4);
        old.run(&mut conn).await.expect("old schema");
        for (user, seq, id, data) in [
            ("bob", 1, "order-1", "bob's first"),
            ("bob", 2, "order-2", "bob's second"),
        ] {
            sqlx::query(
                "INSERT INTO log_records (kind, stream_key, sequence, id, ts_micros, payload) \
                 VALUES ('events', ?1, ?2, ?3, ?4, ?5)",
            )
            .bind(user)
            .bind(seq)
            .bind(id)
            .bind(1_700_000_000_000_000i64 + seq)
            .bind(event_body(data))
            .execute(&mut conn)
            .await
            .expect("old row");
        }
        // Under the old index the same id in another user's stream was refused.
        let squatted = sqlx::query(
            "INSERT INTO log_records (kind, stream_key, sequence, id, ts_micros, payload) \
             VALUES ('events', 'alice', 1, 'order-1', 1, x'00')",
        )
        .execute(&mut conn)
        .await;
        assert!(squatted.is_err(), "the old schema scopes ids to the kind");
    }

    let server = TestServer::start_in(dir, |_| {}).await;
    within(30, "carry over", async {
        let mut client = server.client().await;
        assert_eq!(
            rows(&history(&mut client, "bob").await),
            [
                row(1, "order-1", "bob's first"),
                row(2, "order-2", "bob's second")
            ]
        );
        // Idempotency holds for the old rows...
        let retry = client
            .publish_user_event(event("bob", "order-1", "bob's first"))
            .await
            .expect("retry of an old record")
            .into_inner();
        assert_eq!(retry.sequence, 1);
        let status = client
            .publish_user_event(event("bob", "order-2", "changed"))
            .await
            .expect_err("other content");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        // ...and another user may now use the id.
        let alice = client
            .publish_user_event(event("alice", "order-1", "alice's"))
            .await
            .expect("alice's own order-1")
            .into_inner();
        assert_eq!(alice.sequence, 1);
        let next = client
            .publish_user_event(event("bob", "order-3", "bob's third"))
            .await
            .expect("bob goes on")
            .into_inner();
        assert_eq!(next.sequence, 3);
    })
    .await;
}
