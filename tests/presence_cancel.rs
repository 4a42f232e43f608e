//! Presence across replicas when a join is cut short: a JoinRoom or OpenDocument call dropped
//! by its client (a browser reload) after its replica took the user's presence lease and before
//! the join was announced, and a join notice that fails to store. Against two real replicas on
//! PostgreSQL (skipped when it is unreachable), each test pins its call in the exact window with
//! database locks the test holds, watches for it there (`pg_stat_activity`, `presence_leases`),
//! cuts it, and then asserts exact outcomes: the lease is dropped, the room's history or the
//! other participants' presence events are what they must be, and the user, joining again
//! through the other replica, is announced there (nobody holds them "present elsewhere").
//!
//! These tests only read what the server stored and add locks and triggers to their own test
//! database; they never write the server's rows.

mod common;

use common::*;
use sqlx::postgres::PgConnection;
use std::time::Duration;
use streamhub::proto::{
    ChatMessage, ChatMessageType, CollaborationEvent, CollaborationEventType,
    GetChatHistoryRequest, JoinRoomRequest, OpenDocumentRequest,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codec::Streaming;

/// The `space` of chat rooms and of collaboration documents in `presence_leases`.
const CHAT: i16 = 3;
const COLLAB: i16 = 4;
/// How long one expected condition or event may take before the test fails.
const LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn execute(conn: &mut PgConnection, statement: &'static str) {
    sqlx::query(statement)
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// The users holding a presence lease in `room` of `space`, by any replica, sorted.
async fn leases(conn: &mut PgConnection, space: i16, room: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT user_id FROM presence_leases WHERE space = $1 AND room = $2 ORDER BY user_id",
    )
    .bind(space)
    .bind(room)
    .fetch_all(&mut *conn)
    .await
    .expect("read presence_leases")
}

/// Waits until `room` of `space` has exactly these leases.
async fn leases_become(conn: &mut PgConnection, space: i16, room: &str, users: &[&str]) {
    poll_until(&format!("leases {users:?} in {room}"), LIMIT, async || {
        let now = leases(conn, space, room).await;
        if now == users {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await
}

/// Waits until a session of database `db` waits on a lock (of `event`: `advisory`,
/// `relation`, `transactionid`, …) in a statement that starts with `statement`.
async fn lock_wait(conn: &mut PgConnection, db: &str, event: &str, statement: &str) {
    poll_until(
        &format!("a {event} lock wait in {statement:?}"),
        LIMIT,
        async || {
            let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT query FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' \
             AND wait_event = $2",
        )
        .bind(db)
        .bind(event)
        .fetch_all(&mut *conn)
        .await
        .expect("read pg_stat_activity");
            if waiting.iter().any(|query| query.starts_with(statement)) {
                Ok(())
            } else {
                Err(format!("{waiting:?}"))
            }
        },
    )
    .await
}

/// Waits until the server has dropped its only `rpc` call as CANCELLED: the client's reset
/// reached it, and the handler's future is gone without an answer.
async fn dropped_as_cancelled(server: &TestServer, rpc: &str) {
    rpc_calls_closed(server.addr, rpc).await;
    let text = scrape(server.addr).await;
    let name = format!("streamhub_rpc_finished_total{{rpc=\"{rpc}\",code=\"CANCELLED\"}}");
    assert_eq!(metric(&text, &name), Some(1), "{name} in:\n{text}");
}

/// The whole room as (sequence, type, author, content), oldest first.
async fn history(client: &mut Client, room: &str) -> Vec<(u64, i32, String, String)> {
    let reply = client
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            before_sequence: 0,
            limit: 500,
        })
        .await
        .expect("GetChatHistory")
        .into_inner();
    reply
        .messages
        .into_iter()
        .map(|m| (m.sequence, m.r#type, m.user_id, m.content))
        .collect()
}

/// Waits until the room's history is exactly `want`.
async fn history_becomes(client: &Client, room: &str, want: &[(u64, i32, String, String)]) {
    poll_until(&format!("the history of {room}"), LIMIT, || {
        let mut client = client.clone();
        async move {
            let now = history(&mut client, room).await;
            if now == want {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        }
    })
    .await
}

fn posted(sequence: u64, user: &str, content: &str) -> (u64, i32, String, String) {
    (
        sequence,
        ChatMessageType::Text as i32,
        user.into(),
        content.into(),
    )
}

fn notice(sequence: u64, user: &str, what: &str) -> (u64, i32, String, String) {
    (
        sequence,
        ChatMessageType::System as i32,
        user.into(),
        format!("User {user} {what} the chat"),
    )
}

/// SendChatMessage of a TEXT through `client`, which must be stored.
async fn post(mut client: Client, room: &str, user: &str, content: &str) -> u64 {
    client
        .send_chat_message(ChatMessage {
            room_id: room.into(),
            user_id: user.into(),
            content: content.into(),
            r#type: ChatMessageType::Text as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("post {content:?}: {s:?}"))
        .into_inner()
        .sequence
}

fn join_request(room: &str, user: &str, after: u64) -> JoinRoomRequest {
    JoinRoomRequest {
        room_id: room.into(),
        user_id: user.into(),
        after_sequence: after,
    }
}

/// The next item of a response stream, within [`LIMIT`].
async fn next<T: std::fmt::Debug>(stream: &mut Streaming<T>, who: &str) -> T {
    match tokio::time::timeout(LIMIT, stream.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(other) => panic!("{who}: expected a message, got {other:?}"),
        Err(_) => panic!("{who}: nothing arrived within {LIMIT:?}"),
    }
}

/// A collaboration event as (type, user): what the presence assertions compare.
fn presence(event: &CollaborationEvent) -> (i32, String) {
    (event.r#type, event.user_id.clone())
}

fn join_of(user: &str) -> (i32, String) {
    (CollaborationEventType::Join as i32, user.into())
}

fn leave_of(user: &str) -> (i32, String) {
    (CollaborationEventType::Leave as i32, user.into())
}

async fn open_document(
    server: &TestServer,
    doc: &str,
    user: &str,
) -> Streaming<CollaborationEvent> {
    server
        .client()
        .await
        .open_document(OpenDocumentRequest {
            document_id: doc.into(),
            user_id: user.into(),
            after_sequence: 0,
        })
        .await
        .unwrap_or_else(|s| panic!("{user} could not open {doc}: {s:?}"))
        .into_inner()
}

/// Replicas with no statement timeout: the tests hold their locks as long as they need.
fn patient(config: &mut streamhub::Config) {
    config.pg_statement_timeout_ms = 0;
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Replica A's writer queue holds one append. The test locks the room's head row, so A's
/// writer is stuck committing carol's "one" and "two" waits in its queue; alice's JoinRoom on
/// A then takes her lease and waits for room in the queue to store her join notice. Her client
/// cancels right there. Once the lock goes, her join is seen through anyway and her leave is
/// stored after it (sequences 4 and 5), her lease is gone, and joining through B stores her
/// join notice (sequence 6): she is not "present elsewhere".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_room_cancelled_after_its_lease_still_joins_leaves_and_drops_the_lease() {
    const ROOM: &str = "cancelled-join-room";
    let Some((a, b)) = TestServer::replicas(|config| {
        patient(config);
        config.writer_queue = 1;
    })
    .await
    else {
        return;
    };
    let db = a.db.clone().expect("replicas run on PostgreSQL");
    within(120, "a cancelled JoinRoom", async {
        assert_eq!(post(a.client().await, ROOM, "carol", "zero").await, 1);
        let mut watch = db.connect().await;
        let mut holder = db.connect().await;
        execute(&mut holder, "BEGIN").await;
        sqlx::query("SELECT head FROM stream_heads WHERE kind = $1 AND key = $2 FOR UPDATE")
            .bind(CHAT)
            .bind(ROOM)
            .fetch_one(&mut holder)
            .await
            .expect("lock the room's head");

        let one = tokio::spawn(post(a.client().await, ROOM, "carol", "one"));
        lock_wait(
            &mut watch,
            db.name(),
            "transactionid",
            "INSERT INTO stream_heads",
        )
        .await;
        let two = tokio::spawn(post(a.client().await, ROOM, "carol", "two"));
        wait_for("\"two\" queued for A's writer", LIMIT, || {
            a.log.writer.queue_depth() == 1
        })
        .await;

        let mut alice = a.client().await;
        let join =
            tokio::spawn(async move { alice.join_room(join_request(ROOM, "alice", 0)).await });
        // Her lease is taken, and the queue is full: she waits to queue her join notice.
        leases_become(&mut watch, CHAT, ROOM, &["alice"]).await;
        assert!(
            !join.is_finished(),
            "JoinRoom answered with the writer stuck"
        );
        join.abort();
        assert!(join.await.is_err_and(|e| e.is_cancelled()));
        dropped_as_cancelled(&a, "JoinRoom").await;

        execute(&mut holder, "ROLLBACK").await;
        assert_eq!(one.await.expect("post one"), 2);
        assert_eq!(two.await.expect("post two"), 3);
        let reader = b.client().await;
        history_becomes(
            &reader,
            ROOM,
            &[
                posted(1, "carol", "zero"),
                posted(2, "carol", "one"),
                posted(3, "carol", "two"),
                notice(4, "alice", "joined"),
                notice(5, "alice", "left"),
            ],
        )
        .await;
        leases_become(&mut watch, CHAT, ROOM, &[]).await;

        let mut on_b = b
            .client()
            .await
            .join_room(join_request(ROOM, "alice", 5))
            .await
            .expect("alice joins through B")
            .into_inner();
        let joined = next(&mut on_b, "alice on B").await;
        assert_eq!(
            (joined.sequence, joined.r#type, joined.content.as_str()),
            (
                6,
                ChatMessageType::System as i32,
                "User alice joined the chat"
            )
        );
        leases_become(&mut watch, CHAT, ROOM, &["alice"]).await;
        drop(on_b);
        history_becomes(
            &reader,
            ROOM,
            &[
                posted(1, "carol", "zero"),
                posted(2, "carol", "one"),
                posted(3, "carol", "two"),
                notice(4, "alice", "joined"),
                notice(5, "alice", "left"),
                notice(6, "alice", "joined"),
                notice(7, "alice", "left"),
            ],
        )
        .await;
        leases_become(&mut watch, CHAT, ROOM, &[]).await;
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// A trigger of the test refuses alice's join notice. Her JoinRoom on A fails with INTERNAL
/// (no database text in the status), nothing of hers is stored, and her lease is dropped
/// instead of being renewed for good; with the trigger gone, joining through B stores her
/// join notice (sequence 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_room_whose_join_notice_fails_drops_its_lease() {
    const ROOM: &str = "refused-join-room";
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    let db = a.db.clone().expect("replicas run on PostgreSQL");
    within(90, "a failed join notice", async {
        let mut watch = db.connect().await;
        execute(
            &mut watch,
            "CREATE FUNCTION refuse_alice() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'the test refuses this join notice'; END $$",
        )
        .await;
        execute(
            &mut watch,
            "CREATE TRIGGER refuse_alice BEFORE INSERT ON log FOR EACH ROW \
             WHEN (position(convert_to('User alice joined the chat', 'UTF8') in NEW.payload) > 0) \
             EXECUTE FUNCTION refuse_alice()",
        )
        .await;

        let refused = a
            .client()
            .await
            .join_room(join_request(ROOM, "alice", 0))
            .await
            .expect_err("the join notice is refused");
        assert_eq!(refused.code(), Code::Internal, "{refused:?}");
        assert!(
            !refused.message().contains("refuses") && !refused.message().contains("INSERT"),
            "no database text reaches the client: {refused:?}"
        );
        leases_become(&mut watch, CHAT, ROOM, &[]).await;
        let mut reader = b.client().await;
        assert_eq!(history(&mut reader, ROOM).await, []);

        execute(&mut watch, "DROP TRIGGER refuse_alice ON log").await;
        let mut on_b = b
            .client()
            .await
            .join_room(join_request(ROOM, "alice", 0))
            .await
            .expect("alice joins through B")
            .into_inner();
        let joined = next(&mut on_b, "alice on B").await;
        assert_eq!(
            (joined.sequence, joined.r#type, joined.content.as_str()),
            (
                1,
                ChatMessageType::System as i32,
                "User alice joined the chat"
            )
        );
        drop(on_b);
        history_becomes(
            &reader,
            ROOM,
            &[notice(1, "alice", "joined"), notice(2, "alice", "left")],
        )
        .await;
        leases_become(&mut watch, CHAT, ROOM, &[]).await;
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// Bob has the document open through B. Alice's OpenDocument on A is held by the test twice:
/// first inside the insert of her lease (a trigger waits for the test's advisory lock), long
/// enough to queue an ACCESS EXCLUSIVE lock of `presence_leases` behind it; then, her lease
/// stored and her JOIN sent (bob hears it), her replica's look-up of who else is present waits
/// for that lock. Her client cancels right there. Once the lock goes, bob hears her LEAVE, her
/// lease is gone, and when she opens the document through B, bob hears her JOIN again: nobody
/// holds her "present elsewhere", and no ghost of her stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_document_cancelled_after_its_join_still_sends_the_leave() {
    const DOC: &str = "cancelled-open-doc";
    let Some((a, b)) = TestServer::replicas(patient).await else {
        return;
    };
    let db = a.db.clone().expect("replicas run on PostgreSQL");
    within(120, "a cancelled OpenDocument", async {
        let mut bob = open_document(&b, DOC, "bob").await;
        let mut watch = db.connect().await;
        leases_become(&mut watch, COLLAB, DOC, &["bob"]).await;
        execute(
            &mut watch,
            "CREATE FUNCTION hold_alice() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_advisory_xact_lock_shared(424242, 1); RETURN NEW; END $$",
        )
        .await;
        execute(
            &mut watch,
            "CREATE TRIGGER hold_alice BEFORE INSERT ON presence_leases FOR EACH ROW \
             WHEN (NEW.user_id = 'alice' AND NEW.room = 'cancelled-open-doc') \
             EXECUTE FUNCTION hold_alice()",
        )
        .await;
        let mut gate = db.connect().await;
        execute(&mut gate, "BEGIN").await;
        execute(&mut gate, "SELECT pg_advisory_xact_lock(424242, 1)").await;

        let mut alice = a.client().await;
        let open = tokio::spawn(async move {
            alice
                .open_document(OpenDocumentRequest {
                    document_id: DOC.into(),
                    user_id: "alice".into(),
                    after_sequence: 0,
                })
                .await
        });
        // Her lease's insert waits inside its transaction, which holds `presence_leases`.
        lock_wait(
            &mut watch,
            db.name(),
            "advisory",
            "INSERT INTO presence_leases",
        )
        .await;
        let mut locker = db.connect().await;
        let (locked_tx, locked) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let lock = tokio::spawn(async move {
            execute(&mut locker, "BEGIN").await;
            execute(
                &mut locker,
                "LOCK TABLE presence_leases IN ACCESS EXCLUSIVE MODE",
            )
            .await;
            let _ = locked_tx.send(());
            let _ = released.await;
            execute(&mut locker, "ROLLBACK").await;
        });
        lock_wait(
            &mut watch,
            db.name(),
            "relation",
            "LOCK TABLE presence_leases",
        )
        .await;
        execute(&mut gate, "COMMIT").await;
        // Her lease commits, the lock is granted before anything else asks, and her JOIN goes
        // out; the look-up of who is present elsewhere waits for the lock.
        tokio::time::timeout(LIMIT, locked)
            .await
            .expect("the table lock within the limit")
            .expect("the locker runs");
        assert_eq!(presence(&next(&mut bob, "bob").await), join_of("alice"));
        lock_wait(
            &mut watch,
            db.name(),
            "relation",
            "SELECT DISTINCT user_id FROM presence_leases",
        )
        .await;
        assert!(
            !open.is_finished(),
            "OpenDocument answered before its look-up"
        );
        open.abort();
        assert!(open.await.is_err_and(|e| e.is_cancelled()));
        dropped_as_cancelled(&a, "OpenDocument").await;

        let _ = release.send(());
        lock.await.expect("the locker ends");
        assert_eq!(presence(&next(&mut bob, "bob").await), leave_of("alice"));
        leases_become(&mut watch, COLLAB, DOC, &["bob"]).await;
        execute(&mut watch, "DROP TRIGGER hold_alice ON presence_leases").await;

        let mut on_b = open_document(&b, DOC, "alice").await;
        assert_eq!(
            presence(&next(&mut on_b, "alice on B").await),
            join_of("bob")
        );
        assert_eq!(presence(&next(&mut bob, "bob").await), join_of("alice"));
        leases_become(&mut watch, COLLAB, DOC, &["alice", "bob"]).await;
        drop(on_b);
        assert_eq!(presence(&next(&mut bob, "bob").await), leave_of("alice"));
        leases_become(&mut watch, COLLAB, DOC, &["bob"]).await;
    })
    .await;
    a.stop().await;
    b.stop().await;
}
