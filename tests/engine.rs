//! The log engine v2 against the real server, through the generated client. A database written
//! by the old schema (`log_records`, migrations 0001..0006) is migrated by 0007 record for
//! record: every event, notification, chat message and operation comes back with its exact
//! sequence, id (canonical UUIDs stored as 16 bytes, every other id as its exact text), timestamp
//! and content; appends continue after it and its ids still deduplicate. An import cancelled
//! mid-stream, after the server spilled every record, leaves no row, no file and no open
//! descriptor behind, and the same import then commits whole. A herd of live subscribers that
//! read nothing while thousands of large events overflow the hub still gets every event exactly
//! once, in order, as acknowledged, and stays live. And an id the server assigned is an id of its
//! stream like any other: sent back, it is a duplicate, never a second record with that id.
//! `streamhub bench events --database` counts the records it measures disk per record over.
//!
//! All but the migration (SQLite's own older schema) run on SQLite and on PostgreSQL
//! (`store_tests!`: `<name>::sqlite`, `<name>::postgres`).

mod common;

use common::user_events::*;
use common::*;
use prost::Message;
use prost_types::{Any, Timestamp};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use streamhub::proto::*;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn any(type_url: &str, value: impl Into<Vec<u8>>) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: value.into(),
    }
}

fn ts(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn nanos(ts: &Option<Timestamp>) -> i128 {
    let ts = ts.as_ref().expect("a timestamp");
    i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos)
}

fn publish_req(user: &str, ty: i32, id: &str, data: Option<Any>) -> PublishUserEventRequest {
    PublishUserEventRequest {
        user_id: user.to_string(),
        r#type: ty,
        data,
        id: id.to_string(),
    }
}

async fn publish(client: &mut Client, request: PublishUserEventRequest) -> UserEvent {
    client
        .publish_user_event(request.clone())
        .await
        .unwrap_or_else(|s| panic!("publish {request:?} failed: {s:?}"))
        .into_inner()
}

/// A `history_only` replay of `user`, read to its end (which must be OK).
async fn history(client: &mut Client, user: &str) -> Vec<UserEvent> {
    let request = StreamUserEventsRequest {
        history_only: true,
        ..live(user)
    };
    let mut stream = open(client, request).await;
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
            Err(_) => panic!("history of {user} stalled after {} events", events.len()),
            Ok(Err(status)) => panic!("history of {user} failed: {status:?}"),
            Ok(Ok(None)) => return events,
            Ok(Ok(Some(event))) => events.push(event),
        }
    }
}

fn seqs(events: &[UserEvent]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Migration of a database written by the old schema
// ---------------------------------------------------------------------------------------------

/// One row of the old `log_records` table.
#[derive(Debug, Clone)]
struct OldRow {
    kind: &'static str,
    key: &'static str,
    sequence: i64,
    id: String,
    ts_micros: i64,
    payload: Vec<u8>,
}

/// The `streams.kind` code of an old `kind` text.
fn kind_code(kind: &str) -> i64 {
    match kind {
        "events" => 1,
        "notifications" => 2,
        "chat" => 3,
        "collab" => 4,
        other => panic!("no kind {other}"),
    }
}

/// The stored body of an event, as `body()` in src/service/events.rs builds it.
fn event_body(ty: i32, data: Option<Any>) -> Vec<u8> {
    UserEvent {
        r#type: ty,
        data,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Is `id` a canonical lowercase hyphenated UUID (what 0007 turns into 16 bytes)?
fn canonical_uuid(id: &str) -> Option<[u8; 16]> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    (uuid.hyphenated().to_string() == id).then(|| *uuid.as_bytes())
}

/// Event ids of every shape an old database may hold. Several are one UUID written in other
/// forms (case, hyphens, braces, URN): each form is a different id and must stay one.
const U1: &str = "6f1e2d3c-4b5a-4978-8877-665544332211";
const U2: &str = "a0b1c2d3-e4f5-4a6b-9c8d-7e6f5a4b3c2d";
const U3: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn alice_event_ids() -> Vec<String> {
    vec![
        // 1: canonical lowercase, a 16-byte blob after 0007.
        U1.to_string(),
        // 2: plain text.
        "order-1".to_string(),
        // 3: UPPERCASE.
        U2.to_uppercase(),
        // 4: no hyphens.
        U3.replace('-', ""),
        // 5: #3's UUID in lowercase: another id.
        U2.to_string(),
        // 6: braced.
        format!("{{{U1}}}"),
        // 7: a URN.
        format!("urn:uuid:{U3}"),
        // 8: mixed case, 36 characters.
        "0F8fad5b-d9cb-469f-a165-70867728950E".to_string(),
        // 9: what a server assigned.
        uuid::Uuid::now_v7().to_string(),
        // 10: plain text.
        "order-2".to_string(),
        // 11: the canonical form of #4 and #7.
        U3.to_string(),
        // 12: one character.
        "x".to_string(),
    ]
}

fn bob_event_ids() -> Vec<String> {
    vec![
        "order-1".to_string(), // the same text id as alice's: ids are per stream
        U1.to_string(),        // the same UUID as alice's
        U1.to_uppercase(),
        uuid::Uuid::new_v4().to_string(),
        U2.replace('-', "").to_uppercase(),
    ]
}

/// Old-format rows of every kind, with strictly increasing (once equal) timestamps per stream.
fn old_rows() -> Vec<OldRow> {
    let mut rows = Vec::new();
    let base = 1_700_000_000_123_457i64;
    for (user, ids) in [("alice", alice_event_ids()), ("bob", bob_event_ids())] {
        for (i, id) in ids.into_iter().enumerate() {
            let seq = i as i64 + 1;
            let ty = 1 + (i % 4) as i32;
            // Every third event has no data at all.
            let data = (i % 3 != 2).then(|| any("type.test/old", format!("{user}-{seq}-data")));
            // #5 shares #4's timestamp: timestamps never decrease, but they may repeat.
            let step = if seq >= 5 { seq - 1 } else { seq };
            let ts_micros = base + step * 1_000_003 + 7;
            rows.push(OldRow {
                kind: "events",
                key: user,
                sequence: seq,
                id,
                ts_micros,
                payload: event_body(ty, data),
            });
        }
    }
    // Notifications of the user key "alice" too: the same key in another kind is another
    // stream.
    for (i, id) in [
        "7c9e6679-7425-40de-944b-e07fc1f90ae7".to_string(),
        "notif-1".to_string(),
        "7C9E6679-7425-40DE-944B-E07FC1F90AE8".to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let seq = i as i64 + 1;
        rows.push(OldRow {
            kind: "notifications",
            key: "alice",
            sequence: seq,
            id,
            ts_micros: base + seq * 2_000_011,
            payload: Notification {
                topic: format!("topic.{i}"),
                title: format!("title {i}"),
                body: format!("body {i}"),
                data: (i != 1).then(|| any("type.test/n", vec![i as u8; 5])),
                ..Default::default()
            }
            .encode_to_vec(),
        });
    }
    for (room, ids) in [
        (
            "alice",
            vec![
                "c1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6".to_string(),
                "msg-2".to_string(),
            ],
        ),
        (
            "lobby",
            vec![
                "msg-1".to_string(),
                "C1E2F3A4-B5C6-4D7E-8F90-A1B2C3D4E5F6".to_string(),
                uuid::Uuid::new_v4().to_string(),
            ],
        ),
    ] {
        for (i, id) in ids.into_iter().enumerate() {
            let seq = i as i64 + 1;
            rows.push(OldRow {
                kind: "chat",
                key: room,
                sequence: seq,
                id,
                ts_micros: base + seq * 3_000_017,
                payload: ChatMessage {
                    user_id: format!("member-{i}"),
                    content: format!("{room} says {i}"),
                    r#type: ChatMessageType::Text as i32,
                    ..Default::default()
                }
                .encode_to_vec(),
            });
        }
    }
    for (i, id) in [
        "op-1".to_string(),
        "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6".to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let seq = i as i64 + 1;
        rows.push(OldRow {
            kind: "collab",
            key: "doc-1",
            sequence: seq,
            id,
            ts_micros: base + seq * 4_000_037,
            payload: CollaborationEvent {
                user_id: format!("editor-{i}"),
                payload: vec![i as u8, 0xff, 0],
                r#type: CollaborationEventType::Operation as i32,
                ..Default::default()
            }
            .encode_to_vec(),
        });
    }
    rows
}

/// What the server must answer for an old event row.
fn old_event(row: &OldRow) -> UserEvent {
    let body = UserEvent::decode(row.payload.as_slice()).unwrap();
    UserEvent {
        id: row.id.clone(),
        user_id: row.key.to_string(),
        sequence: row.sequence as u64,
        timestamp: Some(ts(row.ts_micros)),
        ..body
    }
}

/// Creates `db` with migrations 0001..0006 only (the schema before log v2) and fills
/// `log_records` with `rows`.
async fn old_database(db: &Path, rows: &[OldRow]) {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true);
    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
        .await
        .expect("create the old database");
    // The server's own embedded migrations, stopped before 0007.
    sqlx::migrate!("./migrations")
        .run_to(6, &mut conn)
        .await
        .expect("migrations 0001..0006");
    conn.close().await.expect("close");

    let conn = rusqlite::Connection::open(db).expect("open the old database");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('log_records', 'log', 'streams') ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["log_records"], "the old schema");
    let mut insert = conn
        .prepare(
            "INSERT INTO log_records (kind, stream_key, sequence, id, ts_micros, payload) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .unwrap();
    for row in rows {
        insert
            .execute(rusqlite::params![
                row.kind,
                row.key,
                row.sequence,
                row.id,
                row.ts_micros,
                row.payload
            ])
            .unwrap_or_else(|e| panic!("insert {row:?}: {e}"));
    }
    drop(insert);
    conn.close().map_err(|(_, e)| e).expect("close");
}

/// An old database with events (ids of every shape), notifications, chat messages and
/// operations is opened by the server, which migrates it with 0007. Every record comes back
/// through gRPC exactly as it was (sequence, id byte for byte, timestamp, content); appends
/// continue after the last sequence; a migrated id republished with the same content is a
/// duplicate that answers the stored record, with other content ALREADY_EXISTS; ids that differ
/// only in form (case, hyphens) stay different ids. On disk, `log_records` is gone, `log` holds
/// one row per old row (canonical UUIDs as 16-byte blobs, other ids as their text, all given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_database_is_migrated_record_for_record_and_keeps_its_ids() {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let db = dir.path().join("streamhub.db");
    let rows = old_rows();
    old_database(&db, &rows).await;
    let events_of = |user: &str| -> Vec<UserEvent> {
        rows.iter()
            .filter(|r| r.kind == "events" && r.key == user)
            .map(old_event)
            .collect()
    };
    let alice = events_of("alice");
    let bob = events_of("bob");
    assert_eq!((alice.len(), bob.len()), (12, 5));

    let server = TestServer::start_in(dir.clone(), |_| {}).await;
    let appended = within(60, "verify the migrated database", async {
        let mut client = server.client().await;

        // Every event exactly as it was, ids byte for byte.
        assert_eq!(history(&mut client, "alice").await, alice);
        assert_eq!(history(&mut client, "bob").await, bob);

        // Notifications of the key "alice", a stream of their own.
        let mut inbox = client
            .subscribe_to_notifications(SubscribeRequest {
                user_id: "alice".into(),
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        let notifications: Vec<&OldRow> =
            rows.iter().filter(|r| r.kind == "notifications").collect();
        for row in &notifications {
            let got = tokio::time::timeout(Duration::from_secs(20), inbox.message())
                .await
                .expect("a notification within 20 s")
                .expect("the inbox stream")
                .expect("a notification");
            let expected = Notification {
                id: row.id.clone(),
                user_id: "alice".into(),
                sequence: row.sequence as u64,
                timestamp: Some(ts(row.ts_micros)),
                ..Notification::decode(row.payload.as_slice()).unwrap()
            };
            assert_eq!(got, expected);
        }

        // Chat rooms, through their history.
        for room in ["alice", "lobby"] {
            let page = client
                .get_chat_history(GetChatHistoryRequest {
                    room_id: room.into(),
                    before_sequence: 0,
                    limit: 500,
                })
                .await
                .expect("chat history")
                .into_inner();
            let expected: Vec<ChatMessage> = rows
                .iter()
                .filter(|r| r.kind == "chat" && r.key == room)
                .map(|r| ChatMessage {
                    id: r.id.clone(),
                    room_id: room.into(),
                    sequence: r.sequence as u64,
                    timestamp: Some(ts(r.ts_micros)),
                    ..ChatMessage::decode(r.payload.as_slice()).unwrap()
                })
                .collect();
            assert_eq!(page.messages, expected, "room {room}");
            assert!(!page.has_more);
        }

        // The document's operations, replayed to a participant that joins at version 0 and
        // finishes at once.
        let (tx, rx) = mpsc::channel(4);
        tx.send(CollaborationEvent {
            document_id: "doc-1".into(),
            user_id: "reader".into(),
            r#type: CollaborationEventType::Join as i32,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut replies = client
            .collaborate(ReceiverStream::new(rx))
            .await
            .expect("collaborate")
            .into_inner();
        drop(tx);
        let mut ops = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), replies.next()).await {
                Err(_) => panic!("the document replay did not end"),
                Ok(None) => break,
                Ok(Some(Err(status))) => panic!("collaborate failed: {status:?}"),
                Ok(Some(Ok(event))) => {
                    if event.r#type == CollaborationEventType::Operation as i32 {
                        ops.push(event);
                    }
                }
            }
        }
        let expected: Vec<CollaborationEvent> = rows
            .iter()
            .filter(|r| r.kind == "collab")
            .map(|r| CollaborationEvent {
                id: r.id.clone(),
                document_id: "doc-1".into(),
                sequence: r.sequence as u64,
                timestamp: Some(ts(r.ts_micros)),
                ..CollaborationEvent::decode(r.payload.as_slice()).unwrap()
            })
            .collect();
        assert_eq!(ops, expected);

        // Every migrated event id still deduplicates: the same content answers the stored
        // event, other content is ALREADY_EXISTS.
        for (user, events) in [("alice", &alice), ("bob", &bob)] {
            for event in events.iter() {
                let same = publish_req(user, event.r#type, &event.id, event.data.clone());
                assert_eq!(
                    &publish(&mut client, same).await,
                    event,
                    "a retry of {user}/{}",
                    event.id
                );
                let other = publish_req(user, event.r#type, &event.id, Some(any("x/y", "other")));
                let status = client.publish_user_event(other).await.unwrap_err();
                assert_eq!(
                    status.code(),
                    Code::AlreadyExists,
                    "{user}/{}: {status:?}",
                    event.id
                );
            }
        }
        // A migrated notification id deduplicates too.
        let first = notifications[0];
        let body = Notification::decode(first.payload.as_slice()).unwrap();
        let retry = client
            .publish_notification(PublishNotificationRequest {
                user_id: "alice".into(),
                topic: body.topic.clone(),
                title: body.title.clone(),
                body: body.body.clone(),
                data: body.data.clone(),
                id: first.id.clone(),
            })
            .await
            .expect("retry a notification")
            .into_inner();
        assert_eq!(
            (retry.sequence, retry.id.as_str(), retry.timestamp),
            (1, first.id.as_str(), Some(ts(first.ts_micros)))
        );

        // New appends continue after the migrated heads, later than the last record.
        let next = publish(&mut client, publish_req("alice", 1, "", None)).await;
        assert_eq!(next.sequence, alice.len() as u64 + 1);
        assert!(nanos(&next.timestamp) > nanos(&alice.last().unwrap().timestamp));
        // Another form of a migrated UUID is another id: stored, not a duplicate. bob has no
        // "order-2", alice's id of that name is hers alone.
        let hyphenated_upper = U3.to_uppercase();
        let fresh = publish(
            &mut client,
            publish_req("alice", 2, &hyphenated_upper, None),
        )
        .await;
        assert_eq!(
            (fresh.sequence, fresh.id.as_str()),
            (alice.len() as u64 + 2, hyphenated_upper.as_str())
        );
        let bob_next = publish(&mut client, publish_req("bob", 3, "order-2", None)).await;
        assert_eq!(
            (bob_next.sequence, bob_next.id.as_str()),
            (bob.len() as u64 + 1, "order-2")
        );
        let notification = client
            .publish_notification(PublishNotificationRequest {
                user_id: "alice".into(),
                topic: "topic.new".into(),
                ..Default::default()
            })
            .await
            .expect("a new notification")
            .into_inner();
        assert_eq!(notification.sequence, notifications.len() as u64 + 1);

        // The retries stored nothing: exactly the old events and the two new ones.
        let after = history(&mut client, "alice").await;
        assert_eq!(after[..alice.len()], alice[..]);
        assert_eq!(after[alice.len()..], [next, fresh]);
        assert_eq!(
            seqs(&history(&mut client, "bob").await),
            (1..=bob.len() as u64 + 1).collect::<Vec<_>>()
        );
        4u64 // records appended by this block
    })
    .await;
    let dir = server.stop().await;

    // On disk: the old table is gone and `log` holds every old row, as 0007 describes.
    let conn = rusqlite::Connection::open(dir.path().join("streamhub.db")).unwrap();
    let old_tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'log_records%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_tables, 0, "log_records and its index are gone");
    let total: i64 = conn
        .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total as u64, rows.len() as u64 + appended);
    let old_count: i64 = conn
        .query_row(
            "SELECT count(*) FROM log WHERE ts_micros < ?1",
            [rows.iter().map(|r| r.ts_micros).max().unwrap() + 1],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_count as usize, rows.len(), "every old row, once");
    let mut find = conn
        .prepare(
            "SELECT typeof(l.id), l.id, l.given, l.ts_micros, l.payload FROM log l \
             JOIN streams s ON s.id = l.stream WHERE s.kind = ?1 AND s.key = ?2 AND l.sequence = ?3",
        )
        .unwrap();
    for row in &rows {
        let (ty, id, given, ts_micros, payload): (String, Vec<u8>, i64, i64, Vec<u8>) = find
            .query_row(
                rusqlite::params![kind_code(row.kind), row.key, row.sequence],
                |r| {
                    let ty: String = r.get(0)?;
                    let id = match r.get_ref(1)? {
                        rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                            b.to_vec()
                        }
                        other => panic!("id of {row:?} is {other:?}"),
                    };
                    Ok((ty, id, r.get(2)?, r.get(3)?, r.get(4)?))
                },
            )
            .unwrap_or_else(|e| panic!("{row:?} is not in `log`: {e}"));
        match canonical_uuid(&row.id) {
            Some(bytes) => assert_eq!((ty.as_str(), &id[..]), ("blob", &bytes[..]), "{row:?}"),
            None => assert_eq!(
                (ty.as_str(), &id[..]),
                ("text", row.id.as_bytes()),
                "{row:?}"
            ),
        }
        assert_eq!(
            (given, ts_micros, &payload),
            (1, row.ts_micros, &row.payload),
            "{row:?}"
        );
    }
    drop(find);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(conn);

    // A restart does not migrate again: the records are still there, as they were.
    let server = TestServer::start_in(dir, |_| {}).await;
    within(30, "after a restart", async {
        let mut client = server.client().await;
        let again = history(&mut client, "alice").await;
        assert_eq!(again[..alice.len()], alice[..]);
        assert_eq!(again.len(), alice.len() + 2);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. A cancelled import
// ---------------------------------------------------------------------------------------------

/// Every entry under `dir`, as paths relative to it.
fn list_dir(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// The targets of a process's open file descriptors, sorted (sockets, pipes and files alike).
/// The server's open descriptors, by target, sorted, without the database's own files: read
/// connections of its pools open on demand (a busy moment may add one), and they are not what
/// a cancelled call could leak.
fn open_fds(pid: u32) -> Vec<String> {
    let mut targets = all_open_fds(pid);
    targets.retain(|t| {
        !(t.ends_with("streamhub.db")
            || t.ends_with("streamhub.db-wal")
            || t.ends_with("streamhub.db-shm"))
    });
    targets
}

fn all_open_fds(pid: u32) -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the server's fds")
        .filter_map(|entry| {
            // A descriptor may close between the listing and the read.
            std::fs::read_link(entry.ok()?.path())
                .ok()
                .map(|t| t.to_string_lossy().into_owned())
        })
        .collect();
    targets.sort();
    targets
}

/// The sizes of the server's open files in `dir` that have no name any more: its spill files.
fn spill_sizes(pid: u32, dir: &Path) -> Vec<u64> {
    let dir = format!("{}/", dir.display());
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the server's fds")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let target = std::fs::read_link(&path).ok()?;
            let target = target.to_string_lossy();
            (target.starts_with(&dir) && target.ends_with(" (deleted)"))
                .then(|| std::fs::metadata(&path).ok().map(|m| m.len()))
                .flatten()
        })
        .collect()
}

/// The bytes a record takes in a spill file (src/store/spill.rs): index, key, id flag and id,
/// payload, each length-prefixed.
fn spilled_bytes(record: &DataRecord) -> u64 {
    let payload = event_body(record.r#type, record.data.clone()).len();
    let id = if record.id.is_empty() {
        0
    } else {
        4 + record.id.len()
    };
    (8 + 4 + record.user_id.len() + 1 + id + 4 + payload) as u64
}

/// The import's records: `n` small ones for two users, then one whose data is larger than the
/// spill's write buffer (256 KiB), so that once the server spilled it, every byte of the batch
/// is in the file and the file's size says the server took the whole batch.
fn import_records(n: usize, users: [&str; 2]) -> Vec<DataRecord> {
    let mut records: Vec<DataRecord> = (0..n)
        .map(|i| DataRecord {
            id: if i % 3 == 0 {
                uuid::Uuid::new_v4().to_string()
            } else {
                format!("import-{i}")
            },
            user_id: users[i % 2].to_string(),
            r#type: 1 + (i % 4) as i32,
            data: Some(any("type.test/import", format!("record {i} ").repeat(12))),
        })
        .collect();
    records.push(DataRecord {
        id: "import-last".into(),
        user_id: users[0].to_string(),
        r#type: 1,
        data: Some(any("type.test/big", vec![0x5a; 600 * 1024])),
    });
    records
}

store_tests!(an_import_cancelled_mid_stream_leaves_no_rows_files_or_descriptors);
/// A ProcessDataBatch of 5,000 records (and one large one) to a server in its own process is
/// cancelled after the server spilled every record, before half-close. Nothing is committed, the
/// spill was an unnamed file (the directory never shows a new name), and once the call is gone
/// the server's descriptors are exactly those it had before the call. The same batch then
/// commits whole with exact counts, and its spill is gone too.
///
/// On PostgreSQL the spill goes to the storage directory (there is no database file to sit
/// beside), which is inside the same temporary directory.
async fn an_import_cancelled_mid_stream_leaves_no_rows_files_or_descriptors(kind: StoreKind) {
    const USERS: [&str; 2] = ["cancelled-a", "cancelled-b"];
    let home = kind.home().await;
    let dir = home.dir.clone();
    let child = ChildServer::spawn_at(&home, &["--max-event-data-bytes", "1048576"]);
    let pid = child.child.id();
    let mut client = connect(&child.url()).await;
    within(120, "cancelled import", async {
        // Warm up the connections a call and a replay use, so that they count in "before".
        publish(&mut client, publish_req("warm-up", 1, "", None)).await;
        assert_eq!(history(&mut client, "warm-up").await.len(), 1);
        let files_before = list_dir(dir.path());
        let fds_before = open_fds(pid);
        assert_eq!(spill_sizes(pid, dir.path()), Vec::<u64>::new());

        let records = import_records(5_000, USERS);
        let spill_total: u64 = records.iter().map(spilled_bytes).sum();
        let (tx, rx) = mpsc::channel::<DataRecord>(64);
        let mut call_client = client.clone();
        let call = tokio::spawn(async move {
            call_client
                .process_data_batch(ReceiverStream::new(rx))
                .await
                .map(|r| r.into_inner())
        });
        for record in records.iter().cloned() {
            tx.send(record).await.expect("the call takes records");
        }
        // The server took every record: its spill file holds every byte of the batch.
        poll_until(
            "the server to spill the whole batch",
            Duration::from_secs(60),
            || async {
                match spill_sizes(pid, dir.path())[..] {
                    [size] if size == spill_total => Ok(()),
                    ref other => Err(format!("spill sizes {other:?}, want [{spill_total}]")),
                }
            },
        )
        .await;
        assert_eq!(
            list_dir(dir.path()),
            files_before,
            "the spill has no name in the directory"
        );
        assert_eq!(history(&mut client, USERS[0]).await, []);

        // Cancel without half-closing (the call's future is dropped: RST_STREAM).
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        rpc_calls_closed(child.addr, "ProcessDataBatch").await;
        // Ending the record stream now must not count as a late half-close.
        drop(tx);
        poll_until(
            "the server's descriptors to be those before the call",
            Duration::from_secs(15),
            || async {
                let now = open_fds(pid);
                if now == fds_before {
                    Ok(())
                } else {
                    let added: Vec<_> = now.iter().filter(|t| !fds_before.contains(t)).collect();
                    let gone: Vec<_> = fds_before.iter().filter(|t| !now.contains(t)).collect();
                    Err(format!(
                        "{} open (before: {}), new {added:?}, gone {gone:?}; now {now:?}",
                        now.len(),
                        fds_before.len()
                    ))
                }
            },
        )
        .await;
        assert_eq!(
            list_dir(dir.path()),
            files_before,
            "no file was left behind"
        );
        for user in USERS {
            assert_eq!(history(&mut client, user).await, [], "{user}");
        }

        // The same batch, half-closed, commits whole.
        let result = client
            .process_data_batch(tokio_stream::iter(records.clone()))
            .await
            .expect("the complete import")
            .into_inner();
        assert_eq!(
            (
                result.records_received,
                result.records_accepted,
                result.records_duplicate,
                result.records_rejected
            ),
            (5_001, 5_001, 0, 0)
        );
        assert_eq!(result.errors, []);
        for (u, user) in USERS.iter().enumerate() {
            let got = history(&mut client, user).await;
            let sent: Vec<&DataRecord> = records.iter().filter(|r| r.user_id == *user).collect();
            assert_eq!(got.len(), sent.len(), "{user}");
            for (i, (event, record)) in got.iter().zip(&sent).enumerate() {
                assert_eq!(
                    (
                        event.sequence,
                        event.id.as_str(),
                        event.r#type,
                        &event.data,
                        event.user_id.as_str()
                    ),
                    (
                        i as u64 + 1,
                        record.id.as_str(),
                        record.r#type,
                        &record.data,
                        *user
                    ),
                    "user {u} #{}",
                    i + 1
                );
            }
        }
        wait_for(
            "the committed import's spill to close",
            Duration::from_secs(15),
            || spill_sizes(pid, dir.path()).is_empty(),
        )
        .await;
        assert_eq!(list_dir(dir.path()), files_before);
    })
    .await;
    drop(client);
    assert!(child.terminate().success(), "a clean stop");
}

// ---------------------------------------------------------------------------------------------
// 3. A herd of lagging subscribers
// ---------------------------------------------------------------------------------------------

store_tests!(a_herd_of_lagging_subscribers_gets_every_event_exactly_once_and_stays_live);
/// 40 live subscribers of one user, each on its own connection, read nothing while 6 callers
/// publish 3,000 events of 2 KiB each (6 MB: far more than a hub of 4 records and the HTTP/2
/// windows hold, so every subscriber lags and falls back to the store). Then each reads: every
/// event exactly once, in order, equal to what its publisher was answered; and each still gets a
/// new live event afterwards.
async fn a_herd_of_lagging_subscribers_gets_every_event_exactly_once_and_stays_live(
    kind: StoreKind,
) {
    const USER: &str = "herd";
    const SUBSCRIBERS: usize = 40;
    const PUBLISHERS: u64 = 6;
    const EVENTS: u64 = 3_000;
    let server = TestServer::start_on(kind, |c| c.hub_capacity = 4).await;
    within(240, "herd", async {
        let mut subscribers = Vec::new();
        for _ in 0..SUBSCRIBERS {
            let mut client = server.client().await;
            let stream = open(&mut client, live(USER)).await;
            subscribers.push((client, stream));
        }
        // Every subscription listens to the hub before anything is published.
        wait_for(
            "every subscriber on the hub",
            Duration::from_secs(30),
            || server.log.hub.receiver_count() == SUBSCRIBERS,
        )
        .await;

        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            let mut client = server.client().await;
            publishers.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for j in 0..EVENTS / PUBLISHERS {
                    let id = if j % 2 == 0 {
                        format!("herd-{p}-{j}")
                    } else {
                        String::new()
                    };
                    let data = any("type.test/herd", vec![(p * 31 + j) as u8; 2048]);
                    let request = publish_req(USER, 1 + (j % 4) as i32, &id, Some(data));
                    out.push(publish(&mut client, request).await);
                }
                out
            }));
        }
        let mut published: Vec<UserEvent> = Vec::new();
        for p in publishers {
            published.extend(p.await.expect("publisher"));
        }
        published.sort_by_key(|e| e.sequence);
        assert_eq!(seqs(&published), (1..=EVENTS).collect::<Vec<_>>());
        let published = Arc::new(published);

        // Now every subscriber reads, all at once.
        let mut readers = Vec::new();
        for (n, (client, mut stream)) in subscribers.into_iter().enumerate() {
            let published = published.clone();
            readers.push(tokio::spawn(async move {
                for expected in published.iter() {
                    let got = next_event(&mut stream).await;
                    assert_eq!(
                        got.sequence, expected.sequence,
                        "subscriber {n}: a gap or a repeat"
                    );
                    assert_eq!(&got, expected, "subscriber {n}");
                }
                (client, stream)
            }));
        }
        let mut subscribers = Vec::new();
        for reader in readers {
            subscribers.push(reader.await.expect("a subscriber read everything"));
        }

        // Each is still live.
        let mut client = server.client().await;
        let after = publish(&mut client, publish_req(USER, 2, "after-herd", None)).await;
        assert_eq!(after.sequence, EVENTS + 1);
        for (n, (_, stream)) in subscribers.iter_mut().enumerate() {
            assert_eq!(next_event(stream).await, after, "subscriber {n}");
        }
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Server-assigned ids are ids of their stream too
// ---------------------------------------------------------------------------------------------

store_tests!(a_server_assigned_id_sent_back_is_the_same_id_not_a_second_record);
/// An id is unique within its stream (docs/contract.md §3), whoever chose it. An event published
/// without an id gets a server-assigned UUID; a client that later sends that id back (a retry
/// that echoes the answer, or an export of the user's events imported into the same server) is
/// sending the same id: with the same content it is a duplicate that answers the stored event,
/// with other content ALREADY_EXISTS (or a rejected record in a batch), and nothing is stored
/// twice. Before log v2 every id was in the unique index; 0007 indexes only client-given ids.
async fn a_server_assigned_id_sent_back_is_the_same_id_not_a_second_record(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "server-assigned ids", async {
        let mut client = server.client().await;
        let data = Some(any("type.test/echo", "first"));
        // One user per case, each with one event whose id the server assigned.
        let mut firsts = Vec::new();
        for user in ["echo-retry", "echo-other", "echo-import"] {
            let first = publish(&mut client, publish_req(user, 1, "", data.clone())).await;
            assert_eq!(first.sequence, 1);
            assert!(
                canonical_uuid(&first.id).is_some(),
                "a server UUID: {}",
                first.id
            );
            firsts.push(first);
        }

        // The same id and content again: the stored event, nothing new.
        let retry = client
            .publish_user_event(publish_req(
                &firsts[0].user_id,
                1,
                &firsts[0].id,
                data.clone(),
            ))
            .await
            .map(|r| r.into_inner());
        // The same id with other content: ALREADY_EXISTS.
        let other = client
            .publish_user_event(publish_req(&firsts[1].user_id, 2, &firsts[1].id, None))
            .await
            .map(|r| r.into_inner());
        // The user's export imported back: a duplicate, not a new record.
        let import = client
            .process_data_batch(tokio_stream::iter([DataRecord {
                id: firsts[2].id.clone(),
                user_id: firsts[2].user_id.clone(),
                r#type: 1,
                data: data.clone(),
            }]))
            .await
            .expect("import")
            .into_inner();
        let mut stored = Vec::new();
        for first in &firsts {
            stored.push(history(&mut client, &first.user_id).await);
        }
        let described = format!(
            "retry answered {retry:?}\nother content answered {other:?}\nimport answered \
             {import:?}\nstored (sequence, id) {:?}",
            stored
                .iter()
                .map(|events| seqs(events)
                    .into_iter()
                    .zip(events.iter().map(|e| &e.id))
                    .collect())
                .collect::<Vec<Vec<_>>>()
        );
        for (first, events) in firsts.iter().zip(&stored) {
            assert_eq!(
                events,
                std::slice::from_ref(first),
                "{}: one record per id, and it is the first\n{described}",
                first.user_id
            );
        }
        assert_eq!(retry.as_ref().ok(), Some(&firsts[0]), "{described}");
        assert_eq!(
            other.as_ref().map_err(|s| s.code()).err(),
            Some(Code::AlreadyExists),
            "{described}"
        );
        assert_eq!(
            (import.records_accepted, import.records_duplicate),
            (0, 1),
            "{described}"
        );
    })
    .await;
    server.stop().await;
}

/// `streamhub bench events --database` reports the disk per stored record of the server's SQLite
/// database: the database file and its WAL over every record in the log, here exactly the
/// appends the bench made (the real binary, against the real server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_disk_per_stored_record_of_the_sqlite_database() {
    let server = TestServer::start().await;
    let database = server.dir.path().join("streamhub.db");
    let (url, db) = (server.url(), database.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_streamhub"))
            .args(["bench", "--server", &url, "events"])
            .args(["--phases", "append", "--appends", "300", "--callers", "4"])
            .arg("--database")
            .arg(&db)
            .output()
    })
    .await
    .expect("bench task")
    .expect("run streamhub bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row = stdout
        .lines()
        .find(|line| line.contains("disk per stored record"))
        .unwrap_or_else(|| panic!("no disk row in:\n{stdout}"));
    assert!(row.contains("over 300 records"), "{row}");
    // The byte figure moves as checkpoints copy the WAL into the file, so only its shape and
    // the record count are exact: "… N B  X MB over 300 records".
    let per_record: u64 = row
        .split_whitespace()
        .zip(row.split_whitespace().skip(1))
        .find(|(_, unit)| *unit == "B")
        .and_then(|(number, _)| number.parse().ok())
        .unwrap_or_else(|| panic!("no per-record figure in {row:?}"));
    assert!(per_record > 0, "{row}");
    let footprint = streamhub::store::footprint(&format!("sqlite://{}", database.display()))
        .await
        .expect("footprint");
    assert_eq!(footprint.records, 300);
    assert!(footprint.bytes > 0);
}
