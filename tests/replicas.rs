//! Several replicas on one PostgreSQL database and one storage directory, against the real
//! servers through the generated client: appends through both replicas reach a subscriber on
//! either, once and in order, and replay identically; a chat room with members on both sees one
//! order, and TYPING crosses replicas; a file uploaded through one downloads through the other;
//! one resumable file id cannot be uploaded through both at once; two operations on one base
//! through both store one and REJECT the other; and `kill -9` of one replica under load from both
//! loses no acknowledged append.
//!
//! Every test skips (one `skipped:` line, a pass) when PostgreSQL is unreachable, and fails then
//! with STREAMHUB_REQUIRE_POSTGRES=1. Every wait has a deadline.

mod common;

use common::user_events::*;
use common::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use streamhub::proto::file_chunk::Data;
use streamhub::proto::*;
use streamhub::service::collab::operation_from_record;
use streamhub::store::{StreamKey, StreamKind};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How long one expected message may take to arrive before the test fails.
const READ_LIMIT: Duration = Duration::from_secs(20);
/// The upload chunk size (the largest download chunk too).
const CHUNK: usize = 64 * 1024;

async fn publish(client: &mut Client, user: &str, id: &str, tag: &str) -> UserEvent {
    let request = PublishUserEventRequest {
        user_id: user.into(),
        r#type: UserEventType::Login as i32,
        data: Some(prost_types::Any {
            type_url: "type.test/replica".into(),
            value: tag.as_bytes().to_vec(),
        }),
        id: id.into(),
    };
    client
        .publish_user_event(request.clone())
        .await
        .unwrap_or_else(|s| panic!("publish {request:?}: {s:?}"))
        .into_inner()
}

/// A `history_only` replay of `user`, read to its end (which must be OK).
async fn history(client: &mut Client, user: &str) -> Vec<UserEvent> {
    let mut stream = open(
        client,
        StreamUserEventsRequest {
            history_only: true,
            ..live(user)
        },
    )
    .await;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(READ_LIMIT, stream.message()).await {
            Err(_) => panic!("history of {user}: nothing within {READ_LIMIT:?}"),
            Ok(Err(status)) => panic!("history of {user}: {status:?}"),
            Ok(Ok(None)) => return out,
            Ok(Ok(Some(event))) => out.push(event),
        }
    }
}

fn seqs(events: &[UserEvent]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

fn ids(events: &[UserEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

#[test]
fn a_test_database_url_keeps_everything_but_the_name() {
    for (url, want) in [
        (
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432/x",
        ),
        (
            "postgres://u:p@h/postgres?sslmode=disable",
            "postgres://u:p@h/x?sslmode=disable",
        ),
        ("postgres://u@h:5432", "postgres://u@h:5432/x"),
        (
            "postgresql://u@h/?sslmode=disable",
            "postgresql://u@h/x?sslmode=disable",
        ),
    ] {
        assert_eq!(common::pg::with_database(url, "x"), want, "{url}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. User events through both replicas
// ---------------------------------------------------------------------------------------------

/// A live subscriber on A and one on B, then 2 publishers on each replica append 200 events each
/// to one user, all at once. Both subscribers get every event, 1..=800, in order, exactly once,
/// each as its publisher was answered; a history replay on B returns the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_appends_through_both_replicas_in_order_exactly_once() {
    const USER: &str = "both-replicas";
    const PER_TASK: u64 = 200;
    const TASKS_PER_REPLICA: u64 = 2;
    const TOTAL: u64 = 2 * TASKS_PER_REPLICA * PER_TASK;
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    within(180, "appends through both replicas", async {
        // The subscribers listen before anything is published.
        let mut subscribers = Vec::new();
        for (name, server) in [("A", &a), ("B", &b)] {
            let mut client = server.client().await;
            let mut stream = open(&mut client, live(USER)).await;
            wait_for(
                &format!("the subscriber on {name} on the hub"),
                Duration::from_secs(15),
                || server.log.hub.receiver_count() == 1,
            )
            .await;
            subscribers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for expected in 1..=TOTAL {
                    let event = next_event(&mut stream).await;
                    assert_eq!(
                        event.sequence, expected,
                        "the subscriber on {name}: a gap, a repeat or another order"
                    );
                    got.push(event);
                }
                (client, stream, got)
            }));
        }

        let mut publishers = Vec::new();
        for (name, server) in [("A", &a), ("B", &b)] {
            for t in 0..TASKS_PER_REPLICA {
                let mut client = server.client().await;
                publishers.push(tokio::spawn(async move {
                    let mut answered = Vec::new();
                    for n in 0..PER_TASK {
                        let id = format!("{name}-{t}-{n}");
                        answered.push(publish(&mut client, USER, &id, &id).await);
                    }
                    answered
                }));
            }
        }
        let mut answered = Vec::new();
        for publisher in publishers {
            answered.extend(publisher.await.expect("publisher"));
        }
        answered.sort_by_key(|e| e.sequence);
        assert_eq!(
            seqs(&answered),
            (1..=TOTAL).collect::<Vec<_>>(),
            "the answers: contiguous sequences across replicas"
        );

        // The store: a replay through B is exactly what was answered.
        let mut client_b = b.client().await;
        let replay = history(&mut client_b, USER).await;
        assert_eq!(ids(&replay), ids(&answered), "the replay on B");
        assert_eq!(replay, answered, "the replay on B");

        // Live delivery on both replicas: every event as answered, in order, once.
        for (name, subscriber) in ["A", "B"].into_iter().zip(subscribers) {
            let (_client, mut stream, got) = subscriber
                .await
                .unwrap_or_else(|e| panic!("the subscriber on {name}: {e}"));
            assert_eq!(got, answered, "the subscriber on {name}");
            if let Ok(extra) =
                tokio::time::timeout(Duration::from_millis(300), stream.message()).await
            {
                panic!("the subscriber on {name} got more than was published: {extra:?}");
            }
        }
    })
    .await;
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Chat across replicas
// ---------------------------------------------------------------------------------------------

fn chat_text(room: &str, user: &str, content: &str) -> ChatMessage {
    ChatMessage {
        room_id: room.into(),
        user_id: user.into(),
        content: content.into(),
        r#type: ChatMessageType::Text as i32,
        ..Default::default()
    }
}

/// One member of a room: one Chat stream on its own connection to one replica.
struct Member {
    user: String,
    tx: mpsc::Sender<ChatMessage>,
    rx: Streaming<ChatMessage>,
    _client: Client,
}

impl Member {
    /// Joins (a first message that posts nothing) through `server`, having seen nothing.
    async fn join(server: &TestServer, room: &str, user: &str) -> Member {
        let mut client = server.client().await;
        let (tx, rx) = mpsc::channel(64);
        tx.send(ChatMessage {
            room_id: room.into(),
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .expect("queue the join");
        let rx = client
            .chat(ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|s| panic!("{user} could not join: {s:?}"))
            .into_inner();
        Member {
            user: user.into(),
            tx,
            rx,
            _client: client,
        }
    }

    async fn next(&mut self) -> ChatMessage {
        match tokio::time::timeout(READ_LIMIT, self.rx.next()).await {
            Err(_) => panic!("{}: nothing arrived within {READ_LIMIT:?}", self.user),
            Ok(Some(Ok(m))) => m,
            Ok(other) => panic!("{}: expected a message, got {other:?}", self.user),
        }
    }

    async fn next_n(&mut self, n: usize) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }
}

/// A message as (sequence, type, author, content).
fn chat_row(m: &ChatMessage) -> (u64, i32, String, String) {
    (m.sequence, m.r#type, m.user_id.clone(), m.content.clone())
}

fn joined(seq: u64, user: &str) -> (u64, i32, String, String) {
    (
        seq,
        ChatMessageType::System as i32,
        user.into(),
        format!("User {user} joined the chat"),
    )
}

/// The room's history through `client`, oldest first (one page: the tests stay under it).
async fn chat_history(client: &mut Client, room: &str) -> Vec<ChatMessage> {
    let reply = client
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            before_sequence: 0,
            limit: 1000,
        })
        .await
        .expect("GetChatHistory")
        .into_inner();
    assert!(!reply.has_more, "the room fits in one page");
    reply.messages
}

/// Ann is a member through A, bob through B; each sends 100 messages at once. Both receive the
/// same messages (joins included) in the same order, sequences 1..=202 with no gap, each one's
/// own messages in the order sent; the history through A is that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_with_members_on_both_replicas_sees_one_order() {
    const ROOM: &str = "replica-room";
    const EACH: usize = 100;
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    within(120, "one order across replicas", async {
        // Each join is stored before Chat answers: ann's is 1, bob's 2.
        let ann = Member::join(&a, ROOM, "ann").await;
        let bob = Member::join(&b, ROOM, "bob").await;
        let total = 2 + 2 * EACH;
        let mut tasks = Vec::new();
        for mut member in [ann, bob] {
            tasks.push(tokio::spawn(async move {
                let tx = member.tx.clone();
                let user = member.user.clone();
                let sender = tokio::spawn(async move {
                    for n in 0..EACH {
                        tx.send(chat_text(ROOM, &user, &format!("{user} {n}")))
                            .await
                            .expect("send");
                    }
                });
                let got = member.next_n(total).await;
                sender.await.expect("sender");
                (member, got)
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("member"));
        }
        let (_, reference) = &results[0];
        assert_eq!(
            reference.iter().map(|m| m.sequence).collect::<Vec<_>>(),
            (1..=total as u64).collect::<Vec<_>>(),
            "ann's sequences"
        );
        assert_eq!(
            [chat_row(&reference[0]), chat_row(&reference[1])],
            [joined(1, "ann"), joined(2, "bob")]
        );
        for (member, got) in &results {
            assert_eq!(got, reference, "{} saw another order than ann", member.user);
            let own: Vec<&str> = got
                .iter()
                .filter(|m| m.r#type == ChatMessageType::Text as i32 && m.user_id == member.user)
                .map(|m| m.content.as_str())
                .collect();
            let sent: Vec<String> = (0..EACH).map(|n| format!("{} {n}", member.user)).collect();
            assert_eq!(own, sent, "{}'s own messages", member.user);
        }
        let mut client = a.client().await;
        let all = chat_history(&mut client, ROOM).await;
        assert_eq!(&all[..total], &reference[..], "the history through A");
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// TYPING sent by ann through A reaches bob through B, with no sequence and no id, and is not
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_through_one_replica_reaches_a_member_on_the_other() {
    const ROOM: &str = "replica-typing";
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    within(60, "typing across replicas", async {
        let mut ann = Member::join(&a, ROOM, "ann").await;
        assert_eq!(chat_row(&ann.next().await), joined(1, "ann"));
        let mut bob = Member::join(&b, ROOM, "bob").await;
        assert_eq!(
            bob.next_n(2).await.iter().map(chat_row).collect::<Vec<_>>(),
            [joined(1, "ann"), joined(2, "bob")]
        );
        ann.tx
            .send(ChatMessage {
                r#type: ChatMessageType::Typing as i32,
                ..chat_text(ROOM, "ann", "ann is typing")
            })
            .await
            .expect("send");
        let heard = bob.next().await;
        assert_eq!(
            (
                chat_row(&heard),
                heard.room_id.as_str(),
                heard.id.is_empty()
            ),
            (
                (
                    0,
                    ChatMessageType::Typing as i32,
                    "ann".into(),
                    "ann is typing".into()
                ),
                ROOM,
                true
            )
        );
        let mut client = b.client().await;
        assert_eq!(
            chat_history(&mut client, ROOM)
                .await
                .iter()
                .map(chat_row)
                .collect::<Vec<_>>(),
            [joined(1, "ann"), joined(2, "bob")],
            "TYPING is never stored"
        );
    })
    .await;
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Files across replicas
// ---------------------------------------------------------------------------------------------

fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    XorShift::new(seed).fill(&mut bytes);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn file_meta(name: &str, bytes: &[u8], file_id: &str) -> FileMetadata {
    FileMetadata {
        filename: name.into(),
        total_size: bytes.len() as i64,
        checksum: sha256_hex(bytes),
        file_id: file_id.into(),
        ..Default::default()
    }
}

/// The metadata message, then `bytes[start..]` in 64 KiB chunks carrying their offsets.
fn upload_messages(meta: FileMetadata, bytes: &[u8], start: usize) -> Vec<FileChunk> {
    let mut out = vec![FileChunk {
        offset: 0,
        data: Some(Data::Metadata(meta)),
    }];
    let mut pos = start;
    while pos < bytes.len() {
        let end = (pos + CHUNK).min(bytes.len());
        out.push(FileChunk {
            offset: pos as i64,
            data: Some(Data::Chunk(bytes[pos..end].to_vec())),
        });
        pos = end;
    }
    out
}

async fn upload(client: &mut Client, msgs: Vec<FileChunk>) -> Result<UploadFileResponse, Status> {
    client
        .upload_file(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// Downloads the whole file: its metadata and bytes.
async fn download(client: &mut Client, file_id: &str) -> (FileMetadata, Vec<u8>) {
    let mut stream = client
        .download_file(DownloadFileRequest {
            file_id: file_id.into(),
            offset: 0,
        })
        .await
        .unwrap_or_else(|s| panic!("download {file_id}: {s:?}"))
        .into_inner();
    let mut meta = None;
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout(READ_LIMIT, stream.message()).await {
            Err(_) => panic!("download {file_id}: nothing within {READ_LIMIT:?}"),
            Ok(Err(status)) => panic!("download {file_id}: {status:?}"),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(FileChunk {
                data: Some(Data::Metadata(m)),
                ..
            }))) if meta.is_none() && bytes.is_empty() => meta = Some(m),
            Ok(Ok(Some(FileChunk {
                data: Some(Data::Chunk(c)),
                offset,
            }))) if meta.is_some() => {
                assert_eq!(offset, bytes.len() as i64, "download {file_id}: offset");
                bytes.extend_from_slice(&c);
            }
            Ok(Ok(Some(other))) => panic!("download {file_id}: out of place: {other:?}"),
        }
    }
    (meta.expect("a metadata message"), bytes)
}

/// A 1 MiB + 17 bytes file uploaded through A (server-assigned id) downloads through B with the
/// same bytes and checksum, and B's GetFileInfo describes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_through_one_replica_downloads_through_the_other() {
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    within(60, "upload through A, download through B", async {
        let bytes = bytes_of(7, 1024 * 1024 + 17);
        let mut client_a = a.client().await;
        let uploaded = upload(
            &mut client_a,
            upload_messages(file_meta("across.bin", &bytes, ""), &bytes, 0),
        )
        .await
        .expect("upload through A");
        assert_eq!(uploaded.bytes_uploaded, bytes.len() as i64);
        assert!(uploaded.checksum_verified);

        let mut client_b = b.client().await;
        let info = client_b
            .get_file_info(GetFileInfoRequest {
                file_id: uploaded.file_id.clone(),
            })
            .await
            .expect("GetFileInfo through B")
            .into_inner();
        assert_eq!(
            (
                info.file_id.as_str(),
                info.filename.as_str(),
                info.total_size,
                info.checksum.as_str()
            ),
            (
                uploaded.file_id.as_str(),
                "across.bin",
                bytes.len() as i64,
                sha256_hex(&bytes).as_str()
            )
        );
        let (meta, got) = download(&mut client_b, &uploaded.file_id).await;
        assert_eq!(got.len(), bytes.len(), "length through B");
        assert!(got == bytes, "the bytes through B differ");
        assert_eq!(sha256_hex(&got), sha256_hex(&bytes));
        assert_eq!(meta.checksum, sha256_hex(&bytes));
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// A resumable upload (client file_id) is held open through A mid-file; the same id uploaded
/// whole through B gets ABORTED (A's claim holds it, across replicas), and so does a second
/// attempt through A; A's upload then completes, and the file downloads whole through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_resumable_file_id_through_both_replicas_at_once_the_second_gets_aborted() {
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    within(60, "one file id through both replicas", async {
        let bytes = bytes_of(11, 500_000);
        let id = uuid::Uuid::new_v4().to_string();
        let meta = file_meta("claimed.bin", &bytes, &id);
        let first_part = 3 * CHUNK;

        let client_a = a.client().await;
        let (tx, rx) = mpsc::channel(8);
        let first = {
            let mut client = client_a.clone();
            tokio::spawn(async move {
                client
                    .upload_file(ReceiverStream::new(rx))
                    .await
                    .map(|r| r.into_inner())
            })
        };
        let msgs = upload_messages(meta.clone(), &bytes, 0);
        let (head, tail) = msgs.split_at(1 + first_part / CHUNK);
        for msg in head {
            tx.send(msg.clone()).await.expect("A's call takes chunks");
        }
        // A's upload holds the id once B knows it (the claim is in the database).
        let mut client_b = b.client().await;
        let in_progress = poll_until(
            "B to see A's upload in progress",
            Duration::from_secs(15),
            || {
                let mut client = client_b.clone();
                let id = id.clone();
                async move {
                    client
                        .get_upload_status(GetUploadStatusRequest { file_id: id })
                        .await
                        .map(|s| s.into_inner())
                        .map_err(|s| format!("{s:?}"))
                }
            },
        )
        .await;
        assert_eq!(
            (in_progress.total_size, in_progress.complete),
            (bytes.len() as i64, false)
        );

        let through_b = upload(&mut client_b, upload_messages(meta.clone(), &bytes, 0)).await;
        assert_eq!(
            through_b.as_ref().map_err(Status::code).err(),
            Some(Code::Aborted),
            "the whole file through B while A holds the id: {through_b:?}"
        );
        let mut again_a = client_a.clone();
        let through_a = upload(&mut again_a, upload_messages(meta.clone(), &bytes, 0)).await;
        assert_eq!(
            through_a.as_ref().map_err(Status::code).err(),
            Some(Code::Aborted),
            "a second upload through A: {through_a:?}"
        );

        for msg in tail {
            tx.send(msg.clone()).await.expect("A's call takes the rest");
        }
        drop(tx);
        let done = first
            .await
            .expect("A's call task")
            .expect("A's upload completes");
        assert_eq!(
            (
                done.file_id.as_str(),
                done.bytes_uploaded,
                done.checksum_verified
            ),
            (id.as_str(), bytes.len() as i64, true)
        );
        let (_, got) = download(&mut client_b, &id).await;
        assert!(got == bytes, "the bytes through B differ");
    })
    .await;
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Collaboration across replicas
// ---------------------------------------------------------------------------------------------

fn collab_join(doc: &str, user: &str) -> CollaborationEvent {
    CollaborationEvent {
        document_id: doc.into(),
        user_id: user.into(),
        r#type: CollaborationEventType::Join as i32,
        sequence: 0,
        ..Default::default()
    }
}

/// Opens a Collaborate stream through `server` for `user`.
async fn collaborate(
    server: &TestServer,
    doc: &str,
    user: &str,
) -> (
    Client,
    mpsc::Sender<CollaborationEvent>,
    Streaming<CollaborationEvent>,
) {
    let mut client = server.client().await;
    let (tx, rx) = mpsc::channel(16);
    tx.send(collab_join(doc, user)).await.expect("queue join");
    let rx = client
        .collaborate(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|s| panic!("{user} could not join: {s:?}"))
        .into_inner();
    (client, tx, rx)
}

/// Operations and rejections of a Collaborate stream (presence signals skipped) until `done`
/// holds for what was read.
async fn read_ops_until(
    rx: &mut Streaming<CollaborationEvent>,
    user: &str,
    done: impl Fn(&[CollaborationEvent]) -> bool,
) -> Vec<CollaborationEvent> {
    let mut got = Vec::new();
    while !done(&got) {
        match tokio::time::timeout(READ_LIMIT, rx.next()).await {
            Err(_) => panic!("{user}: after {got:?} nothing within {READ_LIMIT:?}"),
            Ok(Some(Ok(e)))
                if e.r#type == CollaborationEventType::Operation as i32
                    || e.r#type == CollaborationEventType::Rejected as i32 =>
            {
                got.push(e)
            }
            Ok(Some(Ok(_presence))) => {}
            Ok(other) => panic!("{user}: expected an event, got {other:?}"),
        }
    }
    got
}

/// Two editors, one through each replica, submit an operation on base 0 at the same moment.
/// Exactly one is stored, as version 1; the other comes back to its sender REJECTED, carrying
/// the head (1) and its base (0), and is stored nowhere. Both editors get the stored one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_base_through_both_replicas_stores_one_operation_and_rejects_the_other() {
    const DOC: &str = "replica-doc";
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    within(60, "one base through both replicas", async {
        let (_ca, tx_a, mut rx_a) = collaborate(&a, DOC, "ann").await;
        let (_cb, tx_b, mut rx_b) = collaborate(&b, DOC, "bob").await;
        let op = |user: &str, id: &str| CollaborationEvent {
            id: id.into(),
            document_id: DOC.into(),
            user_id: user.into(),
            r#type: CollaborationEventType::Operation as i32,
            payload: id.as_bytes().to_vec(),
            base_sequence: Some(0),
            ..Default::default()
        };
        let (sent_a, sent_b) =
            tokio::join!(tx_a.send(op("ann", "op-a")), tx_b.send(op("bob", "op-b")));
        sent_a.expect("send through A");
        sent_b.expect("send through B");

        // Each sender learns its own operation's fate.
        let fate =
            |id: &'static str| move |got: &[CollaborationEvent]| got.iter().any(|e| e.id == id);
        let seen_a = read_ops_until(&mut rx_a, "ann", fate("op-a")).await;
        let seen_b = read_ops_until(&mut rx_b, "bob", fate("op-b")).await;
        let own = |seen: &[CollaborationEvent], id: &str| {
            seen.iter().find(|e| e.id == id).cloned().expect("own fate")
        };
        let (own_a, own_b) = (own(&seen_a, "op-a"), own(&seen_b, "op-b"));
        let (stored, rejected) = match (
            own_a.r#type == CollaborationEventType::Operation as i32,
            own_b.r#type == CollaborationEventType::Operation as i32,
        ) {
            (true, false) => (own_a, own_b),
            (false, true) => (own_b, own_a),
            _ => panic!("not exactly one stored: ann {own_a:?}, bob {own_b:?}"),
        };
        assert_eq!(
            stored.sequence, 1,
            "the stored one is version 1: {stored:?}"
        );
        assert_eq!(
            (rejected.r#type, rejected.sequence, rejected.base_sequence),
            (CollaborationEventType::Rejected as i32, 1, Some(0)),
            "the other is REJECTED carrying the head: {rejected:?}"
        );

        // The store holds exactly the stored one.
        let records = b
            .log
            .store
            .read_page(&StreamKey::new(StreamKind::Collab, DOC), 0, None, 100)
            .await
            .expect("read the document's log");
        let logged: Vec<CollaborationEvent> = records
            .iter()
            .map(|r| operation_from_record(r).expect("decode"))
            .collect();
        assert_eq!(
            logged
                .iter()
                .map(|e| (e.sequence, e.id.as_str()))
                .collect::<Vec<_>>(),
            [(1, stored.id.as_str())]
        );

        // Both editors get the stored operation, the loser's from the other replica.
        let has_stored = |got: &[CollaborationEvent]| {
            got.iter()
                .any(|e| e.r#type == CollaborationEventType::Operation as i32 && e.sequence == 1)
        };
        let mut all_a = seen_a.clone();
        if !has_stored(&all_a) {
            all_a.extend(read_ops_until(&mut rx_a, "ann", has_stored).await);
        }
        let mut all_b = seen_b.clone();
        if !has_stored(&all_b) {
            all_b.extend(read_ops_until(&mut rx_b, "bob", has_stored).await);
        }
        for (user, all) in [("ann", &all_a), ("bob", &all_b)] {
            let ops: Vec<(u64, &str)> = all
                .iter()
                .filter(|e| e.r#type == CollaborationEventType::Operation as i32)
                .map(|e| (e.sequence, e.id.as_str()))
                .collect();
            assert_eq!(ops, [(1, stored.id.as_str())], "{user}'s operations");
        }
    })
    .await;
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 of one replica under load from both
// ---------------------------------------------------------------------------------------------

const KILL_USERS: [&str; 3] = ["kill-a", "kill-b", "kill-c"];

/// Three publishers against `url`, each cycling through the users, until the server is gone or
/// `stop` is set. Every acknowledged append goes to `acked` (id → event) and counts in `count`.
async fn kill_load(
    url: &str,
    replica: &'static str,
    acked: &Arc<Mutex<HashMap<String, UserEvent>>>,
    count: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for t in 0..3usize {
        let mut client = connect(url).await;
        let (acked, count, stop) = (acked.clone(), count.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let user = KILL_USERS[(t + n) % KILL_USERS.len()];
                let id = format!("{replica}-{t}-{n}");
                let request = PublishUserEventRequest {
                    user_id: user.into(),
                    r#type: UserEventType::ProfileUpdate as i32,
                    data: None,
                    id: id.clone(),
                };
                match client.publish_user_event(request).await {
                    Ok(event) => {
                        let event = event.into_inner();
                        assert_eq!((event.user_id.as_str(), event.id.as_str()), (user, &*id));
                        let before = acked.lock().unwrap().insert(id.clone(), event);
                        assert!(before.is_none(), "{id} acknowledged twice");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    tasks
}

/// Two replicas in processes of their own on one database, with three publishers on each. Once
/// both have acknowledged appends, replica A gets SIGKILL mid-load; B goes on until it has
/// acknowledged 100 more. Then, replayed through B: every acknowledged append is there with the
/// sequence it was answered with, each user's sequences are 1..=n with no hole, and no id is
/// stored twice. B still appends after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_one_replica_under_load_loses_no_acknowledged_append() {
    if !postgres_ready().await {
        return;
    }
    let home = StoreKind::Postgres.home().await;
    let replica_a = ChildServer::spawn_at(&home, &[]);
    let replica_b = ChildServer::spawn_at(&home, &[]);
    let url_b = replica_b.url();
    let acked: Arc<Mutex<HashMap<String, UserEvent>>> = Arc::default();
    let (count_a, count_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    within(120, "kill -9 of one replica", async {
        let started = Instant::now();
        let tasks_a = kill_load(&replica_a.url(), "A", &acked, &count_a, &stop).await;
        let tasks_b = kill_load(&url_b, "B", &acked, &count_b, &stop).await;
        wait_for(
            "acknowledged appends on both replicas before the kill",
            Duration::from_secs(60),
            || {
                started.elapsed() >= Duration::from_millis(500)
                    && count_a.load(Ordering::Relaxed) >= 150
                    && count_b.load(Ordering::Relaxed) >= 150
            },
        )
        .await;
        replica_a.kill9();
        let (killed_a, killed_b) = (
            count_a.load(Ordering::Relaxed),
            count_b.load(Ordering::Relaxed),
        );
        for task in tasks_a {
            task.await.expect("a publisher on A");
        }
        wait_for(
            "100 more appends acknowledged by B after the kill",
            Duration::from_secs(60),
            || count_b.load(Ordering::Relaxed) >= killed_b + 100,
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks_b {
            task.await.expect("a publisher on B");
        }

        let mut client = connect(&url_b).await;
        let mut stored: HashMap<String, UserEvent> = HashMap::new();
        let mut heads = BTreeMap::new();
        for user in KILL_USERS {
            let events = history(&mut client, user).await;
            assert_eq!(
                seqs(&events),
                (1..=events.len() as u64).collect::<Vec<_>>(),
                "{user}: sequences are contiguous from 1"
            );
            heads.insert(user, events.len() as u64);
            for event in events {
                let id = event.id.clone();
                assert!(stored.insert(id.clone(), event).is_none(), "{id} stored twice");
            }
        }
        let acked = acked.lock().unwrap().clone();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|&(id, event)| stored.get(id) != Some(event))
            .map(|(id, _)| id)
            .collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged appends missing or changed, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let unacknowledged: HashSet<&String> =
            stored.keys().filter(|id| !acked.contains_key(*id)).collect();
        assert!(
            unacknowledged.iter().all(|id| id.starts_with("A-")),
            "only appends in flight on A at the kill may be stored unacknowledged: {unacknowledged:?}"
        );
        eprintln!(
            "killed A at {killed_a} (A) + {killed_b} (B) acks; {} acknowledged, {} stored, {} \
             stored unacknowledged",
            acked.len(),
            stored.len(),
            unacknowledged.len()
        );

        // The survivor goes on from the heads.
        for user in KILL_USERS {
            let next = publish(&mut client, user, "", "after").await;
            assert_eq!(next.sequence, heads[user] + 1, "{user}");
        }
    })
    .await;
    assert!(replica_b.terminate().success(), "B stops cleanly");
}
