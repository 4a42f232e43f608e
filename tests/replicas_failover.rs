//! What replicas do when something between them fails, against real servers on one PostgreSQL
//! database: a LISTEN connection that dies costs latency (the head check delivers what its lost
//! notices said), never records; a signal too long for a NOTIFY payload crosses through the
//! unlogged table, byte for byte, and is stored nowhere; and when a replica is killed with
//! `kill -9`, its members' leases lapse and a survivor stores their chat leave notice and sends
//! their collaboration LEAVE.
//!
//! Every test skips (one `skipped:` line, a pass) when PostgreSQL is unreachable, and fails then
//! with STREAMHUB_REQUIRE_POSTGRES=1. Every wait has a deadline.

mod common;

use common::user_events::*;
use common::*;
use sqlx::Connection;
use std::time::Duration;
use streamhub::proto::*;
use streamhub::store::{StreamKey, StreamKind};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;

/// How long one expected message may take to arrive before the test fails.
const READ_LIMIT: Duration = Duration::from_secs(20);

/// Ends every LISTEN connection of the database (both replicas'), as a network fault or a
/// database restart would. Returns how many were ended.
async fn kill_listen_connections(database_url: &str) -> i64 {
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .expect("connect to the test database");
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&mut connection)
    .await
    .expect("terminate the LISTEN connections");
    ended
}

/// The LISTEN connection of both replicas dies, and they do not reconnect for a minute (the
/// backoff). Events published through B still reach a live subscriber on A, all of them, in
/// order: the head check (every 200 ms here) finds what no notice announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listen_connection_costs_latency_never_records() {
    let Some((a, b)) = TestServer::replicas(|config| {
        config.pg_listen_backoff_ms = 60_000;
        config.pg_head_check_ms = 200;
    })
    .await
    else {
        return;
    };
    within(120, "delivery without LISTEN", async {
        let mut subscriber_client = a.client().await;
        let mut stream = open(&mut subscriber_client, live("no-listen")).await;
        wait_for(
            "the subscriber on A on the hub",
            Duration::from_secs(15),
            || a.log.hub.receiver_count() == 1,
        )
        .await;
        let ended = kill_listen_connections(&a.home().database_url()).await;
        assert_eq!(ended, 2, "one LISTEN connection per replica");

        let mut publisher = b.client().await;
        let mut published = Vec::new();
        for i in 0..5 {
            let event = publisher
                .publish_user_event(PublishUserEventRequest {
                    user_id: "no-listen".into(),
                    r#type: UserEventType::Login as i32,
                    data: None,
                    id: format!("lost-notice-{i}"),
                })
                .await
                .expect("publish through B")
                .into_inner();
            published.push((event.sequence, event.id));
        }
        assert_eq!(
            published.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        for (sequence, id) in &published {
            let event = next_event(&mut stream).await;
            assert_eq!((event.sequence, &event.id), (*sequence, id));
        }
    })
    .await;
}

fn collab_event(
    doc: &str,
    user: &str,
    kind: CollaborationEventType,
    payload: &[u8],
) -> CollaborationEvent {
    CollaborationEvent {
        document_id: doc.into(),
        user_id: user.into(),
        r#type: kind as i32,
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// A Collaborate stream through `url` for `user`, joined at version 0.
async fn collaborate(
    url: &str,
    doc: &str,
    user: &str,
) -> (
    Client,
    mpsc::Sender<CollaborationEvent>,
    Streaming<CollaborationEvent>,
) {
    let mut client = connect(url).await;
    let (tx, rx) = mpsc::channel(16);
    tx.send(collab_event(doc, user, CollaborationEventType::Join, b""))
        .await
        .expect("queue the join");
    let rx = client
        .collaborate(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|s| panic!("{user} could not join: {s:?}"))
        .into_inner();
    (client, tx, rx)
}

/// The next event of `kind` from `who`, skipping everything else.
async fn next_of(
    rx: &mut Streaming<CollaborationEvent>,
    kind: CollaborationEventType,
    who: &str,
) -> CollaborationEvent {
    loop {
        match tokio::time::timeout(READ_LIMIT, rx.next()).await {
            Err(_) => panic!("no {kind:?} from {who} within {READ_LIMIT:?}"),
            Ok(Some(Ok(event))) if event.r#type == kind as i32 && event.user_id == who => {
                return event;
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("expected {kind:?} from {who}, got {other:?}"),
        }
    }
}

/// A 20,000-byte cursor, far past what a NOTIFY payload may carry once encoded, goes from a
/// participant on A to one on B exactly as sent, and nothing of it is stored in the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_too_long_for_a_notice_crosses_replicas_byte_for_byte() {
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    within(60, "a long cursor across replicas", async {
        let doc = "long-cursor";
        let (_bob_client, _bob_tx, mut bob) = collaborate(&b.url(), doc, "bob").await;
        let (_alice_client, alice_tx, mut alice) = collaborate(&a.url(), doc, "alice").await;
        // Each hears the other's JOIN: both are live on both replicas.
        next_of(&mut bob, CollaborationEventType::Join, "alice").await;
        next_of(&mut alice, CollaborationEventType::Join, "bob").await;

        let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        alice_tx
            .send(collab_event(
                doc,
                "alice",
                CollaborationEventType::Cursor,
                &payload,
            ))
            .await
            .expect("send the cursor");
        let cursor = next_of(&mut bob, CollaborationEventType::Cursor, "alice").await;
        assert_eq!(cursor.payload, payload);
        assert_eq!(cursor.sequence, 0, "a cursor is not a stored record");
        let stream = StreamKey::new(StreamKind::Collab, doc);
        assert_eq!(a.log.store.head(&stream).await.expect("head"), 0);
    })
    .await;
}

async fn chat_history(client: &mut Client, room: &str) -> Vec<(u64, String)> {
    client
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            before_sequence: 0,
            limit: 100,
        })
        .await
        .expect("GetChatHistory")
        .into_inner()
        .messages
        .into_iter()
        .map(|m| (m.sequence, m.content))
        .collect()
}

/// Replica B (a child process) holds carol in a chat room and dave in a document; erin is in
/// the document through A. B dies by `kill -9`. Once B's leases lapse (2 s here), A stores
/// carol's leave notice (sequence 2, after her join) and erin hears dave's LEAVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_s_members_leave_once_their_leases_lapse() {
    if !postgres_ready().await {
        return;
    }
    let home = StoreKind::Postgres.home().await;
    let a = TestServer::start_at(home.clone(), |config| config.pg_presence_lease_secs = 2).await;
    let b = ChildServer::spawn_at(&home, &["--pg-presence-lease-secs", "2"]);
    within(90, "leases lapse after kill -9", async {
        let room = "lapse-room";
        let mut carol_client = connect(&b.url()).await;
        let (carol_tx, carol_rx) = mpsc::channel(4);
        carol_tx
            .send(ChatMessage {
                room_id: room.into(),
                user_id: "carol".into(),
                ..Default::default()
            })
            .await
            .expect("queue the join");
        let _carol = carol_client
            .chat(ReceiverStream::new(carol_rx))
            .await
            .expect("carol joins through B")
            .into_inner();
        let reader = a.client().await;
        let joined = vec![(1, "User carol joined the chat".to_string())];
        poll_until("carol's join notice", Duration::from_secs(20), || {
            let mut reader = reader.clone();
            let joined = joined.clone();
            async move {
                let history = chat_history(&mut reader, room).await;
                if history == joined {
                    Ok(())
                } else {
                    Err(format!("{history:?}"))
                }
            }
        })
        .await;

        let doc = "lapse-doc";
        let (_dave_client, _dave_tx, _dave) = collaborate(&b.url(), doc, "dave").await;
        let (_erin_client, _erin_tx, mut erin) = collaborate(&a.url(), doc, "erin").await;
        next_of(&mut erin, CollaborationEventType::Join, "dave").await;

        b.kill9();
        next_of(&mut erin, CollaborationEventType::Leave, "dave").await;
        let left = vec![
            (1, "User carol joined the chat".to_string()),
            (2, "User carol left the chat".to_string()),
        ];
        poll_until("carol's leave notice", Duration::from_secs(20), || {
            let mut reader = reader.clone();
            let left = left.clone();
            async move {
                let history = chat_history(&mut reader, room).await;
                if history == left {
                    Ok(())
                } else {
                    Err(format!("{history:?}"))
                }
            }
        })
        .await;
    })
    .await;
}
