//! Every configured limit, at the limit and one past it, against the real server: the exact
//! status of the refused call, that nothing partial was kept for it, and that the server goes on
//! serving everyone else (the calls already admitted keep delivering, and a new call succeeds once
//! there is room again). Limits are set small through `TestServer::start_with`, so each test is
//! quick and exact.
//!
//! These tests must never depend on timing beyond generous deadlines: every "not yet" is proven
//! by a state the server reports (`/metrics`, history, upload status), not by a sleep alone.

mod common;

use common::*;
use prost::Message;
use std::time::Duration;
use streamhub::proto::file_chunk::Data;
use streamhub::proto::*;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How long one expected item may take before the test fails.
const READ_LIMIT: Duration = Duration::from_secs(15);

/// The next item of a response stream within [`READ_LIMIT`].
async fn next<T>(stream: &mut Streaming<T>, what: &str) -> Option<Result<T, Status>> {
    match tokio::time::timeout(READ_LIMIT, stream.next()).await {
        Ok(item) => item,
        Err(_) => panic!("{what}: nothing arrived within {READ_LIMIT:?}"),
    }
}

/// The next message of a response stream; an error or the end fails the test.
async fn next_ok<T: std::fmt::Debug>(stream: &mut Streaming<T>, what: &str) -> T {
    match next(stream, what).await {
        Some(Ok(item)) => item,
        other => panic!("{what}: expected a message, got {other:?}"),
    }
}

fn code<T>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn publish_event(client: &mut Client, user: &str) -> UserEvent {
    client
        .publish_user_event(PublishUserEventRequest {
            user_id: user.into(),
            r#type: UserEventType::Login as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("publish for {user}: {s:?}"))
        .into_inner()
}

async fn events(client: &mut Client, user: &str) -> Result<Streaming<UserEvent>, Status> {
    client
        .stream_user_events(StreamUserEventsRequest {
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn notifications(client: &mut Client, user: &str) -> Result<Streaming<Notification>, Status> {
    client
        .subscribe_to_notifications(SubscribeRequest {
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn hello(room: &str, user: &str) -> ChatMessage {
    ChatMessage {
        room_id: room.into(),
        user_id: user.into(),
        ..Default::default()
    }
}

fn text(room: &str, user: &str, content: &str) -> ChatMessage {
    ChatMessage {
        room_id: room.into(),
        user_id: user.into(),
        content: content.into(),
        r#type: ChatMessageType::Text as i32,
        ..Default::default()
    }
}

/// A Chat stream: the sender of its requests (kept, so the stream stays open) and its replies.
type ChatStream = (mpsc::Sender<ChatMessage>, Streaming<ChatMessage>);

async fn chat(client: &mut Client, first: ChatMessage) -> Result<ChatStream, Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.expect("queue the first message");
    let replies = client.chat(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, replies))
}

/// The room's whole history as (type, content), oldest first.
async fn room_history(client: &mut Client, room: &str) -> Vec<(i32, String)> {
    client
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            limit: 500,
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .messages
        .into_iter()
        .map(|m| (m.r#type, m.content))
        .collect()
}

/// Waits until the room's history has at least `len` messages and returns it: a failing chat
/// session gives its status first and stores the member's leave after it.
async fn room_history_reaches(client: &mut Client, room: &str, len: usize) -> Vec<(i32, String)> {
    let client = client.clone();
    poll_until(
        &format!("{len} messages in the history of {room}"),
        READ_LIMIT,
        || {
            let mut client = client.clone();
            async move {
                let history = room_history(&mut client, room).await;
                if history.len() >= len {
                    Ok(history)
                } else {
                    Err(format!("{history:?}"))
                }
            }
        },
    )
    .await
}

fn system(content: &str) -> (i32, String) {
    (ChatMessageType::System as i32, content.to_string())
}

fn join_event(document: &str, user: &str) -> CollaborationEvent {
    CollaborationEvent {
        document_id: document.into(),
        user_id: user.into(),
        r#type: CollaborationEventType::Join as i32,
        ..Default::default()
    }
}

fn metadata(total_size: i64, file_id: &str) -> FileChunk {
    FileChunk {
        data: Some(Data::Metadata(FileMetadata {
            filename: "f.bin".into(),
            total_size,
            file_id: file_id.into(),
            ..Default::default()
        })),
        offset: 0,
    }
}

fn chunk(bytes: Vec<u8>) -> FileChunk {
    FileChunk {
        data: Some(Data::Chunk(bytes)),
        offset: 0,
    }
}

/// Uploads `size` bytes in 16 KiB chunks; returns the answer.
async fn upload(client: &mut Client, size: usize) -> Result<UploadFileResponse, Status> {
    let mut messages = vec![metadata(size as i64, "")];
    let bytes = vec![7u8; size];
    messages.extend(bytes.chunks(16 * 1024).map(|c| chunk(c.to_vec())));
    client
        .upload_file(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Sends only the metadata of an upload and keeps the request stream open: the answer must come
/// without a single chunk. Returns it, with the still-open sender.
async fn upload_refused_before_any_byte(
    client: &mut Client,
    total_size: i64,
    file_id: &str,
) -> (Status, mpsc::Sender<FileChunk>) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(metadata(total_size, file_id)).await.unwrap();
    let answer = tokio::time::timeout(READ_LIMIT, client.upload_file(ReceiverStream::new(rx)))
        .await
        .expect("the server answers on the metadata alone, before any chunk");
    match answer {
        Ok(done) => panic!("an upload of {total_size} bytes was accepted: {done:?}"),
        Err(status) => (status, tx),
    }
}

/// Regular files directly in `dir` (not in subdirectories).
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // The single-server lock is the server's own, not a stored file.
                .filter(|name| name != ".streamhub.lock")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

/// `max_subscriptions` counts every live subscription of every kind together: an event stream, a
/// notification stream and a chat session fill a limit of 3; a fourth of any kind is refused with
/// RESOURCE_EXHAUSTED (a refused chat stores no join notice); the three keep delivering; and once
/// one of them ends, a new one is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_the_limit_get_resource_exhausted_and_the_rest_keep_delivering() {
    let server = TestServer::start_with(|c| c.max_subscriptions = 3).await;
    within(60, "subscriptions", async {
        let mut c = server.client().await;
        let mut ann = events(&mut c, "ann").await.expect("1st: events");
        let mut bob = notifications(&mut c, "bob")
            .await
            .expect("2nd: notifications");
        let (carl_tx, mut carl) = chat(&mut c, hello("lobby", "carl"))
            .await
            .expect("3rd: chat");
        assert_eq!(
            next_ok(&mut carl, "carl's join").await.content,
            "User carl joined the chat"
        );

        // The fourth, of each kind.
        let refused = events(&mut c, "dan").await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(
            refused.message(),
            "the server holds its limit of subscriptions; retry later"
        );
        assert_eq!(
            code(notifications(&mut c, "dan").await),
            Code::ResourceExhausted
        );
        let refused = chat(&mut c, text("lobby", "dan", "hi")).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        // Nothing of dan's was stored: not his join, not the text his first message carried.
        assert_eq!(
            room_history(&mut c, "lobby").await,
            vec![system("User carl joined the chat")]
        );

        // The three admitted streams still deliver.
        let event = publish_event(&mut c, "ann").await;
        assert_eq!(next_ok(&mut ann, "ann's event").await, event);
        c.publish_notification(PublishNotificationRequest {
            user_id: "bob".into(),
            topic: "news".into(),
            title: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let note = next_ok(&mut bob, "bob's notification").await;
        assert_eq!((note.sequence, note.topic.as_str()), (1, "news"));
        carl_tx
            .send(text("lobby", "carl", "still here"))
            .await
            .unwrap();
        let echo = next_ok(&mut carl, "carl's post").await;
        assert_eq!((echo.sequence, echo.content.as_str()), (2, "still here"));
        // Unary calls are not subscriptions and are never refused by this limit.
        publish_event(&mut c, "dan").await;

        // One ends (the client drops it): its permit comes back and a new stream is admitted.
        drop(ann);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut dan = loop {
            match events(&mut c, "dan").await {
                Ok(stream) => break stream,
                Err(s) if s.code() == Code::ResourceExhausted => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the ended stream's permit never came back"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) => panic!("unexpected {s:?}"),
            }
        };
        assert_eq!(next_ok(&mut dan, "dan's replay").await.user_id, "dan");
        // And the limit holds again.
        assert_eq!(code(events(&mut c, "eve").await), Code::ResourceExhausted);
        drop((bob, carl_tx, carl, dan));
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Room members
// ---------------------------------------------------------------------------------------------

/// `max_room_members` = 2: a third Chat stream in the room is refused with RESOURCE_EXHAUSTED
/// and leaves nothing behind (no join notice, no hub receiver, no presence); other rooms are not
/// affected; once a member leaves, the third joins. The same limit holds for a collaboration
/// document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_one_more_member_and_stores_nothing_for_it() {
    let server = TestServer::start_with(|c| c.max_room_members = 2).await;
    within(60, "room members", async {
        let mut c = server.client().await;
        let (ann_tx, mut ann) = chat(&mut c, hello("r", "ann")).await.unwrap();
        next_ok(&mut ann, "ann's join").await;
        let (bob_tx, mut bob) = chat(&mut c, hello("r", "bob")).await.unwrap();
        next_ok(&mut bob, "bob's join").await;
        assert_eq!(server.log.hub.receiver_count(), 2);

        let refused = chat(&mut c, text("r", "carl", "let me in"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(
            refused.message(),
            "\"r\" already has its limit of 2 live streams"
        );
        // A second stream of a user already present counts too: streams are members.
        assert_eq!(
            code(chat(&mut c, hello("r", "ann")).await),
            Code::ResourceExhausted
        );
        assert_eq!(
            room_history(&mut c, "r").await,
            vec![
                system("User ann joined the chat"),
                system("User bob joined the chat")
            ]
        );
        // The refused streams' subscriptions were released.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while server.log.hub.receiver_count() != 2 {
            assert!(tokio::time::Instant::now() < deadline, "receivers leaked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Another room is not affected.
        let (_carl_tx, mut carl) = chat(&mut c, hello("s", "carl")).await.unwrap();
        assert_eq!(
            next_ok(&mut carl, "carl in s").await.content,
            "User carl joined the chat"
        );
        // The members of the full room still talk.
        ann_tx.send(text("r", "ann", "hello bob")).await.unwrap();
        next_ok(&mut ann, "ann's bob join").await;
        assert_eq!(next_ok(&mut ann, "ann's echo").await.content, "hello bob");

        // bob half-closes: his stream ends at his leave, and carl fits.
        drop(bob_tx);
        while let Some(item) = next(&mut bob, "bob's drain").await {
            item.expect("bob drains cleanly");
        }
        let (_carl_r, mut carl_r) = chat(&mut c, hello("r", "carl")).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(next_ok(&mut carl_r, "carl in r").await.content);
        }
        assert_eq!(
            seen,
            [
                "User ann joined the chat",
                "User bob joined the chat",
                "hello bob",
                "User bob left the chat",
                "User carl joined the chat"
            ]
        );

        // Collaboration documents share the rule.
        let mut open_doc = async |user: &str| {
            let (tx, rx) = mpsc::channel(4);
            tx.send(join_event("doc", user)).await.unwrap();
            c.collaborate(ReceiverStream::new(rx))
                .await
                .map(|r| (tx, r.into_inner()))
        };
        let one = open_doc("ann").await.expect("1st participant");
        let two = open_doc("bob").await.expect("2nd participant");
        let refused = open_doc("carl").await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        drop((one, two, ann_tx, ann));
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Files: storage quota and upload size
// ---------------------------------------------------------------------------------------------

/// `max_storage_bytes` = 100,000 on declared sizes: two uploads of 40,000 fit; a third of 40,000
/// is refused on its metadata alone, before any byte, and leaves no row and no part; exactly the
/// remaining 20,000 still fit, and then one byte more does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_quota_refuses_the_upload_that_would_pass_it_before_any_byte() {
    let server = TestServer::start_with(|c| c.max_storage_bytes = 100_000).await;
    let storage = server.dir.path().join("files");
    within(60, "storage quota", async {
        let mut c = server.client().await;
        upload(&mut c, 40_000).await.expect("1st fits");
        upload(&mut c, 40_000).await.expect("2nd fits");

        // A resumable upload (client-chosen id) would keep a row and a part if anything were
        // kept: it is refused without either.
        let id = uuid::Uuid::new_v4().to_string();
        let (refused, tx) = upload_refused_before_any_byte(&mut c, 40_000, &id).await;
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(
            refused.message(),
            "storage quota: 80000 bytes of 100000 are in use; 40000 more do not fit"
        );
        drop(tx);
        let status = c
            .get_upload_status(GetUploadStatusRequest {
                file_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::NotFound,
            "no row for the refused upload"
        );
        assert_eq!(files_in(&storage.join("tmp")), Vec::<String>::new());
        assert_eq!(files_in(&storage).len(), 2);

        // Exactly up to the quota fits; one byte more does not.
        upload(&mut c, 20_000).await.expect("the last 20,000 fit");
        let (refused, _tx) = upload_refused_before_any_byte(&mut c, 1, "").await;
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        // An empty file takes no room and still fits.
        upload(&mut c, 0).await.expect("an empty file fits");
        assert_eq!(files_in(&storage).len(), 4);
        assert_eq!(files_in(&storage.join("tmp")), Vec::<String>::new());
    })
    .await;
    server.stop().await;
}

/// `max_upload_bytes` = 1,000: a file of exactly 1,000 bytes uploads; 1,001 declared bytes are
/// refused with RESOURCE_EXHAUSTED on the metadata alone, with no row and no part left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_size_cap_is_refused_before_any_byte() {
    let server = TestServer::start_with(|c| c.max_upload_bytes = 1_000).await;
    let storage = server.dir.path().join("files");
    within(60, "upload cap", async {
        let mut c = server.client().await;
        let done = upload(&mut c, 1_000).await.expect("exactly the cap fits");
        assert_eq!(done.bytes_uploaded, 1_000);

        let id = uuid::Uuid::new_v4().to_string();
        let (refused, _tx) = upload_refused_before_any_byte(&mut c, 1_001, &id).await;
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(
            refused.message(),
            "total_size 1001 is over the limit of 1000 bytes"
        );
        let status = c
            .get_upload_status(GetUploadStatusRequest { file_id: id })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(files_in(&storage.join("tmp")), Vec::<String>::new());
        assert_eq!(files_in(&storage).len(), 1);
        upload(&mut c, 999).await.expect("the server goes on");
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Size caps of single requests and batches
// ---------------------------------------------------------------------------------------------

/// A DataRecord for `user` whose encoding is exactly `len` bytes.
fn record_of_len(user: &str, len: usize) -> DataRecord {
    let mut record = DataRecord {
        user_id: user.into(),
        r#type: UserEventType::Login as i32,
        data: Some(prost_types::Any {
            type_url: "t".into(),
            value: Vec::new(),
        }),
        ..Default::default()
    };
    while record.encoded_len() < len {
        record.data.as_mut().unwrap().value.push(1);
    }
    assert_eq!(
        record.encoded_len(),
        len,
        "no record of exactly {len} bytes"
    );
    record
}

/// Events of `user` stored so far.
async fn stored_events(client: &mut Client, user: &str) -> usize {
    client
        .stream_user_events(StreamUserEventsRequest {
            user_id: user.into(),
            history_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await
        .len()
}

/// Every per-request size cap, set to 100 bytes (and 3 records per batch): exactly the cap is
/// accepted, one more byte (or record) gets RESOURCE_EXHAUSTED with a message naming the limit,
/// and nothing of the refused request is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_cap_accepts_its_limit_and_refuses_one_more() {
    let server = TestServer::start_with(|c| {
        c.max_event_data_bytes = 100;
        c.max_notification_bytes = 100;
        c.max_chat_content_bytes = 100;
        c.max_collab_payload_bytes = 100;
        c.max_batch_records = 3;
        c.max_batch_bytes = 100;
    })
    .await;
    within(60, "size caps", async {
        let mut c = server.client().await;

        // Event data: the encoded Any.
        let data = |len: usize| {
            let mut any = prost_types::Any {
                type_url: "t".into(),
                value: Vec::new(),
            };
            while any.encoded_len() < len {
                any.value.push(0);
            }
            any
        };
        let publish = |len: usize| PublishUserEventRequest {
            user_id: "caps".into(),
            r#type: UserEventType::Login as i32,
            data: Some(data(len)),
            id: String::new(),
        };
        c.publish_user_event(publish(100)).await.expect("100 bytes");
        let over = c.publish_user_event(publish(101)).await.unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert_eq!(over.message(), "data is 101 bytes; the limit is 100");
        assert_eq!(stored_events(&mut c, "caps").await, 1);

        // Notification: title, body and data together.
        let note = |body: usize| PublishNotificationRequest {
            user_id: "caps".into(),
            topic: "t".into(),
            title: "x".repeat(60),
            body: "y".repeat(body),
            ..Default::default()
        };
        c.publish_notification(note(40)).await.expect("100 bytes");
        let over = c.publish_notification(note(41)).await.unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert_eq!(
            over.message(),
            "title, body and data are 101 bytes together; the limit is 100"
        );

        // Chat content: as a joining post (refused before anything is stored) and mid-stream.
        let over = chat(&mut c, text("caps", "ann", &"x".repeat(101)))
            .await
            .unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert_eq!(over.message(), "content is 101 bytes; the limit is 100");
        assert_eq!(room_history(&mut c, "caps").await, Vec::new());
        let (tx, mut replies) = chat(&mut c, text("caps", "ann", &"x".repeat(100)))
            .await
            .expect("100 bytes");
        assert_eq!(next_ok(&mut replies, "join").await.sequence, 1);
        assert_eq!(next_ok(&mut replies, "post").await.content.len(), 100);
        tx.send(text("caps", "ann", &"x".repeat(101)))
            .await
            .unwrap();
        match next(&mut replies, "over").await {
            Some(Err(status)) => assert_eq!(status.code(), Code::ResourceExhausted),
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }

        // Collaboration payload.
        let (tx, rx) = mpsc::channel(4);
        tx.send(join_event("caps", "ann")).await.unwrap();
        let mut doc = c
            .collaborate(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let op = |len: usize| CollaborationEvent {
            r#type: CollaborationEventType::Operation as i32,
            payload: vec![1; len],
            ..Default::default()
        };
        tx.send(op(100)).await.unwrap();
        let applied = next_ok(&mut doc, "op").await;
        assert_eq!((applied.sequence, applied.payload.len()), (1, 100));
        tx.send(op(101)).await.unwrap();
        match next(&mut doc, "over").await {
            Some(Err(status)) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert_eq!(status.message(), "payload is 101 bytes; the limit is 100");
            }
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }

        // Batches: 3 records commit; a 4th refuses the whole batch.
        let small = |_| record_of_len("batch", 20);
        let done = c
            .process_data_batch(tokio_stream::iter((0..3).map(small)))
            .await
            .expect("3 records")
            .into_inner();
        assert_eq!(done.records_accepted, 3);
        let over = c
            .process_data_batch(tokio_stream::iter((3..7).map(small)))
            .await
            .unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert_eq!(over.message(), "a batch may hold at most 3 records");
        // Bytes: 50 + 50 commit; 50 + 51 refuse the whole batch.
        let done = c
            .process_data_batch(tokio_stream::iter(vec![
                record_of_len("batch", 50),
                record_of_len("batch", 50),
            ]))
            .await
            .expect("100 bytes")
            .into_inner();
        assert_eq!(done.records_accepted, 2);
        let over = c
            .process_data_batch(tokio_stream::iter(vec![
                record_of_len("batch", 50),
                record_of_len("batch", 51),
            ]))
            .await
            .unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert_eq!(over.message(), "a batch may hold at most 100 bytes");
        assert_eq!(stored_events(&mut c, "batch").await, 5);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Live keys
// ---------------------------------------------------------------------------------------------

fn input(id: &str, key: &str, value: f64) -> DataInput {
    DataInput {
        id: id.into(),
        key: key.into(),
        value,
        ..Default::default()
    }
}

/// `live_max_keys` = 2: two keys (each used again) are served; a third distinct key ends the
/// stream with RESOURCE_EXHAUSTED after every earlier result; a new stream on the same
/// connection starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_past_its_key_limit_ends_with_resource_exhausted() {
    let server = TestServer::start_with(|c| c.live_max_keys = 2).await;
    within(60, "live keys", async {
        let mut c = server.client().await;
        let inputs = vec![
            input("1", "a", 1.0),
            input("2", "b", 2.0),
            input("3", "a", 3.0),
            input("4", "c", 4.0),
            input("5", "a", 5.0),
        ];
        let mut results = c
            .process_live_data(tokio_stream::iter(inputs))
            .await
            .unwrap()
            .into_inner();
        let mut ids = Vec::new();
        let end = loop {
            match next(&mut results, "live").await {
                Some(Ok(r)) => ids.push(r.input_id),
                Some(Err(status)) => break status,
                None => panic!("the stream ended with OK after {ids:?}"),
            }
        };
        assert_eq!(ids, ["1", "2", "3"]);
        assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
        assert_eq!(end.message(), "more than 2 distinct keys in one stream");

        let mut again = c
            .process_live_data(tokio_stream::iter(vec![
                input("1", "x", 1.0),
                input("2", "y", 2.0),
            ]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next_ok(&mut again, "x").await.key, "x");
        assert_eq!(next_ok(&mut again, "y").await.key, "y");
        assert!(next(&mut again, "end").await.is_none());
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Message size
// ---------------------------------------------------------------------------------------------

const MAX_MESSAGE: usize = 2048;

/// A PublishUserEventRequest whose encoding is exactly `len` bytes.
fn publish_of_len(len: usize) -> PublishUserEventRequest {
    let mut request = PublishUserEventRequest {
        user_id: "big".into(),
        r#type: UserEventType::Login as i32,
        data: Some(prost_types::Any {
            type_url: "t".into(),
            value: Vec::new(),
        }),
        id: String::new(),
    };
    for n in 0..len {
        request.data.as_mut().unwrap().value = vec![1; n];
        if request.encoded_len() == len {
            return request;
        }
    }
    panic!("no request of exactly {len} bytes");
}

/// A chat message whose encoding is exactly `len` bytes.
fn chat_of_len(len: usize) -> ChatMessage {
    (0..len)
        .map(|n| text("big", "ann", &"x".repeat(n)))
        .find(|m| m.encoded_len() == len)
        .expect("a chat message of the length")
}

/// `max_message_bytes` = 2048: a message of exactly 2048 bytes is decoded; 2049 bytes are
/// refused with RESOURCE_EXHAUSTED (docs/contract.md §9: over a configured limit), for a unary request,
/// in a client stream and in a bidirectional stream; the connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_one_byte_over_the_decode_limit_gets_resource_exhausted() {
    let server = TestServer::start_with(|c| c.max_message_bytes = MAX_MESSAGE).await;
    within(60, "message size", async {
        let mut c = server.client().await;
        // Unary.
        let at = publish_of_len(MAX_MESSAGE);
        assert_eq!(at.encoded_len(), MAX_MESSAGE);
        c.publish_user_event(at).await.expect("exactly the limit");
        let over = c
            .publish_user_event(publish_of_len(MAX_MESSAGE + 1))
            .await
            .unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert_eq!(
            over.message(),
            "a message of 2049 bytes is over the limit of 2048 bytes"
        );

        // Client stream: the batch fails as a whole and commits nothing.
        let small = DataRecord {
            user_id: "batch".into(),
            r#type: UserEventType::Login as i32,
            ..Default::default()
        };
        let mut big = DataRecord {
            user_id: "batch".into(),
            r#type: UserEventType::Login as i32,
            data: Some(prost_types::Any {
                type_url: "t".into(),
                value: Vec::new(),
            }),
            ..Default::default()
        };
        while big.encoded_len() <= MAX_MESSAGE {
            big.data.as_mut().unwrap().value.push(1);
        }
        let over = c
            .process_data_batch(tokio_stream::iter(vec![small.clone(), big]))
            .await
            .unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        let history = c
            .stream_user_events(StreamUserEventsRequest {
                user_id: "batch".into(),
                history_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .collect::<Vec<_>>()
            .await;
        assert!(history.is_empty(), "the failed batch stored {history:?}");

        // Client stream of files: a chunk message over the limit.
        let id = uuid::Uuid::new_v4().to_string();
        let over = c
            .upload_file(tokio_stream::iter(vec![
                metadata(4096, &id),
                chunk(vec![0; MAX_MESSAGE]),
            ]))
            .await
            .unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");

        // Bidirectional: a chat message of exactly the limit is posted; one byte more ends the
        // stream with RESOURCE_EXHAUSTED (and the member's leave is stored).
        let (tx, mut replies) = chat(&mut c, hello("big", "ann")).await.unwrap();
        next_ok(&mut replies, "join").await;
        tx.send(chat_of_len(MAX_MESSAGE)).await.unwrap();
        let posted = next_ok(&mut replies, "post").await;
        assert_eq!(posted.sequence, 2);
        tx.send(chat_of_len(MAX_MESSAGE + 1)).await.unwrap();
        let end = loop {
            match next(&mut replies, "over").await {
                Some(Ok(m)) => assert_eq!(m.r#type, ChatMessageType::System as i32, "{m:?}"),
                Some(Err(status)) => break status,
                None => panic!("the chat stream ended with OK after an oversized message"),
            }
        };
        assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
        // The status comes before the leave is stored: wait for it.
        let history = room_history_reaches(&mut c, "big", 3).await;
        assert_eq!(history.len(), 3, "join, the post, leave");
        assert_eq!(history[2], system("User ann left the chat"));

        // Bidirectional, processing: results before the oversized input, then the status.
        let mut inputs = vec![input("1", "k", 1.0)];
        let mut huge = input("2", "k", 2.0);
        huge.id = "i".repeat(MAX_MESSAGE);
        inputs.push(huge);
        let mut results = c
            .process_live_data(tokio_stream::iter(inputs))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next_ok(&mut results, "1st").await.input_id, "1");
        let end = next(&mut results, "over").await;
        match end {
            Some(Err(status)) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }

        // The connection and the server go on.
        publish_event(&mut c, "after").await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Concurrent streams per connection
// ---------------------------------------------------------------------------------------------

/// `max_concurrent_streams` = 2 is an HTTP/2 SETTINGS value, not a gRPC status: a compliant
/// client (tonic's) does not open a third stream on the connection but queues it until one of
/// the two ends. So the third call on that connection is not refused; it waits, and the server
/// never sees it (its open-call gauge stays at 2) until a slot frees, then it is served. Another
/// connection is not affected meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_stream_on_a_connection_waits_for_a_free_slot_while_others_are_served() {
    let server = TestServer::start_with(|c| c.max_concurrent_streams = 2).await;
    within(60, "concurrent streams", async {
        let mut c = server.client().await;
        for user in ["u1", "u2", "u3", "other"] {
            publish_event(&mut c, user).await;
        }
        let mut s1 = events(&mut c, "u1").await.unwrap();
        next_ok(&mut s1, "u1").await;
        let mut s2 = events(&mut c, "u2").await.unwrap();
        next_ok(&mut s2, "u2").await;

        // The third call on the same connection.
        let mut queued = c.clone();
        let third = tokio::spawn(async move { events(&mut queued, "u3").await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!third.is_finished(), "the third stream was not held back");
        let text = scrape(server.addr).await;
        assert_eq!(rpc_open(&text, "StreamUserEvents"), 2, "{text}");

        // Another connection is served meanwhile, for streams and unary calls alike. The
        // deadlines are generous: a connection held up by the full one would wait forever.
        let mut other = server.client().await;
        let mut s4 = within(30, "other connection", events(&mut other, "other"))
            .await
            .unwrap();
        assert_eq!(next_ok(&mut s4, "other").await.user_id, "other");
        within(30, "unary elsewhere", publish_event(&mut other, "u3")).await;
        assert!(!third.is_finished(), "still held back");
        let text = scrape(server.addr).await;
        assert_eq!(rpc_open(&text, "StreamUserEvents"), 3, "{text}");

        // A slot frees: the third is opened and served, from the start of u3's stream.
        drop(s1);
        let mut s3 = within(10, "third after a free slot", third)
            .await
            .unwrap()
            .expect("the queued stream is served");
        assert_eq!(next_ok(&mut s3, "u3 1").await.sequence, 1);
        assert_eq!(next_ok(&mut s3, "u3 2").await.sequence, 2);
        drop((s2, s3, s4));
    })
    .await;
    server.stop().await;
}
