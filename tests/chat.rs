//! Chat rooms and history against the real server: one order for every member under concurrent
//! senders, catch-up after a reconnect, idempotent message ids, join and leave notices counted
//! per user (abrupt disconnects too), typing relayed but never stored, a restart, history pages,
//! a table of bad inputs with exact codes, and a member that stops reading. Every member talks
//! through the generated client on its own connection, and every test asserts exact sequences,
//! contents and status codes.
//!
//! Every test runs on SQLite and on PostgreSQL (`store_tests!`: `<name>::sqlite`,
//! `<name>::postgres`; the PostgreSQL one skips when it is unreachable).

mod common;

use common::chat::*;
use common::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use streamhub::config::SyncMode;
use streamhub::proto::{ChatMessage, ChatMessageType, GetChatHistoryRequest};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How long one expected message may take to arrive before the test fails.
const READ_LIMIT: Duration = Duration::from_secs(15);

/// A first message that only joins: it posts nothing.
fn hello(room: &str, user: &str, seen: u64) -> ChatMessage {
    ChatMessage {
        room_id: room.into(),
        user_id: user.into(),
        sequence: seen,
        ..Default::default()
    }
}

/// Opens a Chat stream whose first message is `first`.
async fn open(
    client: &mut Client,
    first: ChatMessage,
) -> Result<(mpsc::Sender<ChatMessage>, Streaming<ChatMessage>), Status> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.expect("queue the first message");
    let replies = client.chat(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, replies))
}

/// The status a Chat stream opened with `first` is refused with.
async fn refused(client: &mut Client, first: ChatMessage) -> Status {
    match open(client, first).await {
        Ok(_) => panic!("the first message was accepted"),
        Err(status) => status,
    }
}

/// One member of a room: one Chat stream on its own connection.
struct Member {
    room: String,
    user: String,
    tx: mpsc::Sender<ChatMessage>,
    rx: Streaming<ChatMessage>,
    client: Client,
}

impl Member {
    /// Joins on a connection of its own, having seen the room up to `seen`.
    async fn join(server: &TestServer, room: &str, user: &str, seen: u64) -> Member {
        Self::join_via(server.client().await, hello(room, user, seen)).await
    }

    async fn join_via(mut client: Client, first: ChatMessage) -> Member {
        let (tx, rx) = open(&mut client, first.clone())
            .await
            .unwrap_or_else(|s| panic!("{} could not join: {s:?}", first.user_id));
        Member {
            room: first.room_id,
            user: first.user_id,
            tx,
            rx,
            client,
        }
    }

    async fn send(&self, message: ChatMessage) {
        self.tx.send(message).await.expect("request stream open");
    }

    async fn say(&self, content: &str) {
        self.send(text(&self.room, &self.user, content)).await;
    }

    /// The next item of the response stream: a message, an error, or the end.
    async fn next_item(&mut self) -> Option<Result<ChatMessage, Status>> {
        match tokio::time::timeout(READ_LIMIT, self.rx.next()).await {
            Ok(item) => item,
            Err(_) => panic!("{}: nothing arrived within {READ_LIMIT:?}", self.user),
        }
    }

    /// The next message; anything else fails the test.
    async fn next(&mut self) -> ChatMessage {
        match self.next_item().await {
            Some(Ok(m)) => m,
            other => panic!("{}: expected a message, got {other:?}", self.user),
        }
    }

    async fn next_n(&mut self, n: usize) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts that nothing arrives for a moment.
    async fn quiet(&mut self) {
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), self.rx.next()).await {
            panic!("{}: expected nothing, got {item:?}", self.user);
        }
    }

    /// Half-closes and reads the rest of the stream, which must end with OK.
    async fn finish(self) -> Vec<ChatMessage> {
        let Member {
            tx, mut rx, user, ..
        } = self;
        drop(tx);
        let mut rest = Vec::new();
        loop {
            match tokio::time::timeout(READ_LIMIT, rx.next()).await {
                Ok(Some(Ok(m))) => rest.push(m),
                Ok(Some(Err(status))) => {
                    panic!("{user}: stream failed after half-close: {status:?}")
                }
                Ok(None) => return rest,
                Err(_) => panic!("{user}: stream did not end within {READ_LIMIT:?} of half-close"),
            }
        }
    }

    /// Reads until the stream fails; returns what came before and the status, and checks that
    /// the stream then ends.
    async fn failure(mut self) -> (Vec<ChatMessage>, Status) {
        let mut before = Vec::new();
        loop {
            match self.next_item().await {
                Some(Ok(m)) => before.push(m),
                Some(Err(status)) => {
                    assert!(
                        self.next_item().await.is_none(),
                        "stream goes on after an error"
                    );
                    return (before, status);
                }
                None => panic!("{}: stream ended with OK, expected an error", self.user),
            }
        }
    }

    /// Goes away without a word: the response is dropped (RST_STREAM) and the connection closed.
    fn disconnect(self) {
        let Member { tx, rx, client, .. } = self;
        drop(rx);
        drop(client);
        drop(tx);
    }
}

/// One page of GetChatHistory.
async fn page(
    client: &mut Client,
    room: &str,
    before: u64,
    limit: u32,
) -> (Vec<ChatMessage>, bool) {
    let reply = client
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            before_sequence: before,
            limit,
        })
        .await
        .expect("GetChatHistory")
        .into_inner();
    (reply.messages, reply.has_more)
}

// ---------------------------------------------------------------------------------------------
// 1. The basics
// ---------------------------------------------------------------------------------------------

store_tests!(a_member_gets_its_join_notice_and_its_own_message_then_leaves);
async fn a_member_gets_its_join_notice_and_its_own_message_then_leaves(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "basics", async {
        let mut ann = Member::join(&server, "r", "ann", 0).await;
        let notice = ann.next().await;
        assert_eq!(row(&notice), sys(1, "ann", "joined"));
        assert_eq!(notice.room_id, "r");
        assert!(!notice.id.is_empty() && notice.timestamp.is_some());
        ann.say("hello").await;
        let echo = ann.next().await;
        assert_eq!(row(&echo), stored(2, "text", "ann", "hello"));
        assert_eq!(echo.room_id, "r");
        // A half-close drains the room through the member's own leave notice, then ends OK.
        assert_eq!(rows(&ann.finish().await), [sys(3, "ann", "left")]);

        let mut client = server.client().await;
        let all = history(&mut client, "r").await;
        assert_eq!(
            rows(&all),
            [
                sys(1, "ann", "joined"),
                stored(2, "text", "ann", "hello"),
                sys(3, "ann", "left")
            ]
        );
        // History gives back exactly what the stream delivered.
        assert_eq!(all[0], notice);
        assert_eq!(all[1], echo);

        // A first message with content joins and posts, in that order; IMAGE and FILE are
        // stored like TEXT.
        let mut bob = Member::join_via(
            server.client().await,
            ChatMessage {
                sequence: 3,
                ..message(
                    "r",
                    "bob",
                    ChatMessageType::Image,
                    "https://example.com/cat.png",
                )
            },
        )
        .await;
        bob.send(message("r", "", ChatMessageType::File, "report.pdf"))
            .await;
        assert_eq!(
            rows(&bob.next_n(3).await),
            [
                sys(4, "bob", "joined"),
                stored(5, "image", "bob", "https://example.com/cat.png"),
                stored(6, "file", "bob", "report.pdf"),
            ]
        );
        // A message without type or content (a keep-alive) stores nothing.
        bob.send(hello("r", "bob", 0)).await;
        assert_eq!(rows(&bob.finish().await), [sys(7, "bob", "left")]);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Order under concurrent senders
// ---------------------------------------------------------------------------------------------

store_tests!(three_members_sending_at_once_all_see_one_order);
/// Three members, each on its own connection, send 200 messages each at the same time. Every
/// member receives the same 603 messages (3 join notices, then the 600 posts) in the same order
/// with contiguous sequences, each author's messages in the order it sent them.
async fn three_members_sending_at_once_all_see_one_order(kind: StoreKind) {
    const ROOM: &str = "order-room";
    const EACH: usize = 200;
    const USERS: [&str; 3] = ["ann", "bob", "cat"];
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "order", async {
        let mut members = Vec::new();
        for user in USERS {
            // Each join is stored before Chat answers, so the joins are 1, 2, 3.
            members.push(Member::join(&server, ROOM, user, 0).await);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for mut member in members {
            tasks.push(tokio::spawn(async move {
                let tx = member.tx.clone();
                let (room, user) = (member.room.clone(), member.user.clone());
                let sender = tokio::spawn(async move {
                    for n in 0..EACH {
                        tx.send(text(&room, &user, &format!("{user} {n}")))
                            .await
                            .expect("send");
                    }
                });
                let mut got = Vec::new();
                let mut texts = 0;
                while texts < USERS.len() * EACH {
                    let m = member.next().await;
                    if m.r#type == ChatMessageType::Text as i32 {
                        texts += 1;
                    }
                    got.push(m);
                }
                sender.await.expect("sender");
                let user = member.user.clone();
                let rest = member.finish().await;
                (user, got, rest)
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("member"));
        }
        eprintln!(
            "order: {} messages through 3 members in {:?} (debug build, shared machine)",
            USERS.len() * EACH,
            started.elapsed()
        );

        let (_, reference, _) = &results[0];
        let total = 3 + USERS.len() * EACH;
        assert_eq!(seqs(reference), (1..=total as u64).collect::<Vec<_>>());
        assert_eq!(
            rows(&reference[..3]),
            [
                sys(1, "ann", "joined"),
                sys(2, "bob", "joined"),
                sys(3, "cat", "joined")
            ]
        );
        let ids: HashSet<&str> = reference.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), total, "ids are unique");
        for (user, got, rest) in &results {
            assert_eq!(got, reference, "{user} saw another order");
            // The stream drains through the member's own leave notice, the last item.
            eprintln!("{user} rest: {:?}", rows(rest));
            let last = rest.last().expect("own leave notice");
            assert_eq!(
                (last.content.clone(), last.user_id.as_str()),
                (left(user), user.as_str())
            );
            // Its own messages came back, in the order it sent them.
            let own: Vec<String> = got
                .iter()
                .filter(|m| m.r#type == ChatMessageType::Text as i32 && &m.user_id == user)
                .map(|m| m.content.clone())
                .collect();
            let sent: Vec<String> = (0..EACH).map(|n| format!("{user} {n}")).collect();
            assert_eq!(own, sent, "{user}'s own messages");
        }

        let mut client = server.client().await;
        let all = history(&mut client, ROOM).await;
        assert_eq!(all.len(), total + 3);
        assert_eq!(&all[..total], &reference[..]);
        let leaves: HashSet<String> = all[total..].iter().map(|m| m.content.clone()).collect();
        assert_eq!(leaves, USERS.iter().map(|u| left(u)).collect());
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Reconnect
// ---------------------------------------------------------------------------------------------

store_tests!(a_member_that_reconnects_gets_exactly_what_it_missed_then_live);
/// A member drops off; 50 messages are posted; it rejoins with the last sequence it saw and
/// gets exactly what it missed (its own leave, the 50, its new join), then live messages, with
/// no duplicate. A newcomer with sequence 0 gets the latest 50 and then its join.
async fn a_member_that_reconnects_gets_exactly_what_it_missed_then_live(kind: StoreKind) {
    const ROOM: &str = "reconnect-room";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "reconnect", async {
        let mut client = server.client().await;
        let mut ann = Member::join(&server, ROOM, "ann", 0).await;
        assert_eq!(rows(&ann.next_n(1).await), [sys(1, "ann", "joined")]);
        let mut bob = Member::join(&server, ROOM, "bob", 0).await;
        assert_eq!(
            rows(&bob.next_n(2).await),
            [sys(1, "ann", "joined"), sys(2, "bob", "joined")]
        );
        assert_eq!(rows(&ann.next_n(1).await), [sys(2, "bob", "joined")]);
        ann.say("before").await;
        let before = stored(3, "text", "ann", "before");
        assert_eq!(rows(&ann.next_n(1).await), std::slice::from_ref(&before));
        assert_eq!(rows(&bob.next_n(1).await), std::slice::from_ref(&before));

        // Bob goes away without a word; his session notices and stores his leave.
        bob.disconnect();
        assert_eq!(rows(&ann.next_n(1).await), [sys(4, "bob", "left")]);
        assert_eq!(history_reaches(&client, ROOM, 4).await.len(), 4);

        let mut missed = vec![sys(4, "bob", "left")];
        for i in 0..50u64 {
            ann.say(&format!("missed {i}")).await;
            let m = ann.next().await;
            assert_eq!(
                row(&m),
                stored(5 + i, "text", "ann", &format!("missed {i}"))
            );
            missed.push(row(&m));
        }
        missed.push(sys(55, "bob", "joined"));

        let mut bob = Member::join(&server, ROOM, "bob", 3).await;
        assert_eq!(rows(&bob.next_n(52).await), missed);
        assert_eq!(rows(&ann.next_n(1).await), [sys(55, "bob", "joined")]);
        ann.say("live").await;
        assert_eq!(
            rows(&bob.next_n(1).await),
            [stored(56, "text", "ann", "live")]
        );
        assert_eq!(
            rows(&ann.next_n(1).await),
            [stored(56, "text", "ann", "live")]
        );
        bob.quiet().await;

        // A newcomer with sequence 0 gets the latest 50 (7..=56), then its own join.
        let mut cat = Member::join(&server, ROOM, "cat", 0).await;
        let replay = cat.next_n(51).await;
        assert_eq!(seqs(&replay), (7..=57).collect::<Vec<_>>());
        assert_eq!(row(&replay[50]), sys(57, "cat", "joined"));
        assert_eq!(&history(&mut client, ROOM).await[6..], &replay[..]);

        // Draining: nothing bob already had comes again.
        assert_eq!(
            rows(&bob.finish().await),
            [sys(57, "cat", "joined"), sys(58, "bob", "left")]
        );
        assert_eq!(
            rows(&ann.next_n(2).await),
            [sys(57, "cat", "joined"), sys(58, "bob", "left")]
        );
    })
    .await;
    server.stop().await;
}

store_tests!(the_replay_for_sequence_zero_is_configurable);
/// The replay of a member joining with sequence 0 follows `chat_replay_messages`.
async fn the_replay_for_sequence_zero_is_configurable(kind: StoreKind) {
    const ROOM: &str = "replay-room";
    let server = TestServer::start_on(kind, |c| c.chat_replay_messages = 3).await;
    within(30, "replay", async {
        let mut ann = Member::join(&server, ROOM, "ann", 0).await;
        for i in 0..5 {
            ann.say(&format!("m{i}")).await;
        }
        assert_eq!(seqs(&ann.next_n(6).await), [1, 2, 3, 4, 5, 6]);
        let mut bob = Member::join(&server, ROOM, "bob", 0).await;
        assert_eq!(
            rows(&bob.next_n(4).await),
            [
                stored(4, "text", "ann", "m2"),
                stored(5, "text", "ann", "m3"),
                stored(6, "text", "ann", "m4"),
                sys(7, "bob", "joined")
            ]
        );
        // Sequence N replays everything after N, whatever the setting.
        let mut cat = Member::join(&server, ROOM, "cat", 1).await;
        assert_eq!(seqs(&cat.next_n(7).await), [2, 3, 4, 5, 6, 7, 8]);
        // Sequence equal to the head: nothing but the join.
        let mut dan = Member::join(&server, ROOM, "dan", 8).await;
        assert_eq!(rows(&dan.next_n(1).await), [sys(9, "dan", "joined")]);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Idempotency
// ---------------------------------------------------------------------------------------------

store_tests!(a_resent_message_id_is_stored_and_delivered_once);
/// A re-sent id with the same content is stored and delivered once, also from a new stream
/// after a lost answer; the same id with other content gets ALREADY_EXISTS and ends that stream.
/// Ids are scoped to their room: the same id in another room is that room's own message.
async fn a_resent_message_id_is_stored_and_delivered_once(kind: StoreKind) {
    const ROOM: &str = "idem-room";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "idempotency", async {
        let mut client = server.client().await;
        let mut ann = Member::join(&server, ROOM, "ann", 0).await;
        let mut cat = Member::join(&server, ROOM, "cat", 0).await;
        assert_eq!(seqs(&ann.next_n(2).await), [1, 2]);
        assert_eq!(seqs(&cat.next_n(2).await), [1, 2]);

        ann.send(text_with_id(ROOM, "ann", "m-1", "hello")).await;
        let hello = ann.next().await;
        assert_eq!(row(&hello), stored(3, "text", "ann", "hello"));
        assert_eq!(hello.id, "m-1");
        ann.send(text_with_id(ROOM, "ann", "m-1", "hello")).await;
        ann.send(text_with_id(ROOM, "ann", "m-2", "world")).await;
        let world = stored(4, "text", "ann", "world");
        assert_eq!(rows(&ann.next_n(1).await), std::slice::from_ref(&world));
        let seen = cat.next_n(2).await;
        assert_eq!(rows(&seen), [row(&hello), world.clone()]);
        assert_eq!(seen[0], hello);

        // The answer to m-2 was lost: ann reconnects from what she saw (3) and sends it again as
        // the first message. The replay brings it; it is not stored again, and ann is still
        // present on her first stream, so no join notice either.
        let mut again = Member::join_via(
            server.client().await,
            ChatMessage {
                sequence: 3,
                ..text_with_id(ROOM, "ann", "m-2", "world")
            },
        )
        .await;
        assert_eq!(rows(&again.next_n(1).await), std::slice::from_ref(&world));
        ann.say("third").await;
        let third = stored(5, "text", "ann", "third");
        assert_eq!(rows(&again.next_n(1).await), std::slice::from_ref(&third));
        assert_eq!(rows(&ann.next_n(1).await), std::slice::from_ref(&third));
        assert_eq!(rows(&cat.next_n(1).await), std::slice::from_ref(&third));
        cat.quiet().await;

        let expected = vec![
            sys(1, "ann", "joined"),
            sys(2, "cat", "joined"),
            stored(3, "text", "ann", "hello"),
            world.clone(),
            third.clone(),
        ];
        assert_eq!(rows(&history(&mut client, ROOM).await), expected);

        // The same id with other content ends that stream; ann stays present on her first
        // stream, so nothing is stored, not even a leave notice.
        again
            .send(text_with_id(ROOM, "ann", "m-1", "changed"))
            .await;
        let (_, status) = again.failure().await;
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        // Ids are scoped to their room: m-1 in another room is that room's own message.
        let mut bob = Member::join(&server, "other-room", "bob", 0).await;
        assert_eq!(rows(&bob.next_n(1).await), [sys(1, "bob", "joined")]);
        bob.send(text_with_id("other-room", "bob", "m-1", "hello"))
            .await;
        let theirs = bob.next().await;
        assert_eq!(row(&theirs), stored(2, "text", "bob", "hello"));
        assert_eq!(theirs.id, "m-1");
        assert_eq!(
            rows(&history(&mut client, "other-room").await),
            [sys(1, "bob", "joined"), stored(2, "text", "bob", "hello")]
        );
        cat.quiet().await;
        assert_eq!(rows(&history(&mut client, ROOM).await), expected);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Join and leave
// ---------------------------------------------------------------------------------------------

store_tests!(join_and_leave_notices_count_users_not_streams);
/// A user's join notice goes out once, on its first stream, and its leave notice when its last
/// stream ends, whether that stream half-closes, is cancelled by an aborted task, or loses its
/// connection.
async fn join_and_leave_notices_count_users_not_streams(kind: StoreKind) {
    const ROOM: &str = "presence-room";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "join and leave", async {
        let mut client = server.client().await;
        let mut ann1 = Member::join(&server, ROOM, "ann", 0).await;
        assert_eq!(rows(&ann1.next_n(1).await), [sys(1, "ann", "joined")]);
        // A second stream of ann: the replay, and no second join.
        let mut ann2 = Member::join(&server, ROOM, "ann", 0).await;
        assert_eq!(rows(&ann2.next_n(1).await), [sys(1, "ann", "joined")]);
        // Bob through a connection that can be cut.
        let proxy = Cuttable::to(server.addr).await;
        let mut bob = Member::join_via(proxy.client().await, hello(ROOM, "bob", 0)).await;
        assert_eq!(
            rows(&bob.next_n(2).await),
            [sys(1, "ann", "joined"), sys(2, "bob", "joined")]
        );
        assert_eq!(rows(&ann1.next_n(1).await), [sys(2, "bob", "joined")]);
        assert_eq!(rows(&ann2.next_n(1).await), [sys(2, "bob", "joined")]);

        // Ann's first stream half-closes: it drains to the head and ends, ann stays present.
        assert_eq!(rows(&ann1.finish().await), []);
        assert_eq!(
            rows(&history(&mut client, ROOM).await),
            [sys(1, "ann", "joined"), sys(2, "bob", "joined")]
        );
        bob.quiet().await;

        // Ann's last stream dies with the task that held it: now she leaves. The task is
        // aborted once it is reading (it says so), not after a guessed pause.
        let (reading, started) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn(async move {
            let mut ann2 = ann2;
            let _ = reading.send(());
            while let Some(Ok(_)) = ann2.rx.next().await {}
            ann2
        });
        within(15, "the holder task starts", started)
            .await
            .expect("holder started");
        holder.abort();
        assert_eq!(rows(&bob.next_n(1).await), [sys(3, "ann", "left")]);
        assert_eq!(history_reaches(&client, ROOM, 3).await.len(), 3);

        // Bob's connection is cut: a dead client leaves too.
        let mut watcher = Member::join(&server, ROOM, "cat", 3).await;
        assert_eq!(rows(&watcher.next_n(1).await), [sys(4, "cat", "joined")]);
        assert_eq!(rows(&bob.next_n(1).await), [sys(4, "cat", "joined")]);
        proxy.cut();
        assert_eq!(rows(&watcher.next_n(1).await), [sys(5, "bob", "left")]);
        // The cut stream ends with an error on bob's side, not with OK.
        assert!(matches!(bob.next_item().await, Some(Err(_))));

        // Ann comes back: one new join.
        let mut ann3 = Member::join(&server, ROOM, "ann", 5).await;
        assert_eq!(rows(&ann3.next_n(1).await), [sys(6, "ann", "joined")]);
        assert_eq!(rows(&watcher.next_n(1).await), [sys(6, "ann", "joined")]);
        assert_eq!(rows(&ann3.finish().await), [sys(7, "ann", "left")]);
        assert_eq!(
            rows(&watcher.finish().await),
            [sys(7, "ann", "left"), sys(8, "cat", "left")]
        );
        assert_eq!(
            rows(&history(&mut client, ROOM).await),
            [
                sys(1, "ann", "joined"),
                sys(2, "bob", "joined"),
                sys(3, "ann", "left"),
                sys(4, "cat", "joined"),
                sys(5, "bob", "left"),
                sys(6, "ann", "joined"),
                sys(7, "ann", "left"),
                sys(8, "cat", "left"),
            ]
        );
        // Every session released its live subscription.
        wait_for("no hub receivers", Duration::from_secs(5), || {
            server.log.hub.receiver_count() == 0
        })
        .await;
    })
    .await;
    server.stop().await;
}

store_tests!(a_user_flapping_on_two_streams_gets_its_notices_in_order);
/// One user opening and closing streams from two tasks at once: its notices alternate, joined
/// then left, never two of a kind in a row, and end with a leave: each decision (first stream,
/// last stream) and its notice take one order.
async fn a_user_flapping_on_two_streams_gets_its_notices_in_order(kind: StoreKind) {
    const ROOM: &str = "flap-room";
    const CYCLES: usize = 25;
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "flapping", async {
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let mut client = server.client().await;
            tasks.push(tokio::spawn(async move {
                for _ in 0..CYCLES {
                    let (tx, rx) = open(&mut client, hello(ROOM, "flap", 0))
                        .await
                        .expect("join");
                    let member = Member {
                        room: ROOM.into(),
                        user: "flap".into(),
                        tx,
                        rx,
                        client: client.clone(),
                    };
                    member.finish().await;
                }
            }));
        }
        for task in tasks {
            task.await.expect("flapper");
        }
        let mut client = server.client().await;
        let all = history(&mut client, ROOM).await;
        let kinds: Vec<&str> = all
            .iter()
            .map(|m| {
                assert_eq!(m.user_id, "flap");
                if m.content == joined("flap") {
                    "joined"
                } else {
                    assert_eq!(m.content, left("flap"));
                    "left"
                }
            })
            .collect();
        assert!(
            kinds.len() >= 2 && kinds.len().is_multiple_of(2),
            "{kinds:?}"
        );
        for (i, pair) in kinds.chunks(2).enumerate() {
            assert_eq!(
                pair,
                ["joined", "left"],
                "notices {} and {}",
                2 * i + 1,
                2 * i + 2
            );
        }
        assert_eq!(seqs(&all), (1..=kinds.len() as u64).collect::<Vec<_>>());
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Typing
// ---------------------------------------------------------------------------------------------

fn typing_row(m: &ChatMessage) -> (u64, &'static str, String, String, String) {
    (
        m.sequence,
        kind_name(m.r#type),
        m.room_id.clone(),
        m.user_id.clone(),
        m.content.clone(),
    )
}

fn typed(room: &str, user: &str, content: &str) -> (u64, &'static str, String, String, String) {
    (0, "typing", room.into(), user.into(), content.into())
}

store_tests!(typing_reaches_the_others_only_and_is_never_stored);
/// TYPING reaches the other members, not its sender, is never stored or replayed, and a typing
/// member whose stream ends leaves an empty ("stopped") TYPING behind.
async fn typing_reaches_the_others_only_and_is_never_stored(kind: StoreKind) {
    const ROOM: &str = "typing-room";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "typing", async {
        let mut client = server.client().await;
        let mut ann = Member::join(&server, ROOM, "ann", 0).await;
        let mut bob = Member::join(&server, ROOM, "bob", 0).await;
        let mut cat = Member::join(&server, ROOM, "cat", 0).await;
        assert_eq!(seqs(&ann.next_n(3).await), [1, 2, 3]);
        assert_eq!(seqs(&bob.next_n(3).await), [1, 2, 3]);
        assert_eq!(seqs(&cat.next_n(3).await), [1, 2, 3]);

        ann.send(typing(ROOM, "ann", "ann is typing")).await;
        let heard = bob.next().await;
        assert_eq!(typing_row(&heard), typed(ROOM, "ann", "ann is typing"));
        assert!(heard.id.is_empty() && heard.timestamp.is_some());
        assert_eq!(
            typing_row(&cat.next().await),
            typed(ROOM, "ann", "ann is typing")
        );
        ann.say("hi").await;
        let hi = stored(4, "text", "ann", "hi");
        for m in [&mut ann, &mut bob, &mut cat] {
            assert_eq!(rows(&m.next_n(1).await), std::slice::from_ref(&hi));
        }
        // Bob stops typing explicitly (empty content). Ann's first relayed signal is bob's: had
        // she heard her own, it would have come first, from the same room channel.
        bob.send(typing(ROOM, "bob", "")).await;
        assert_eq!(typing_row(&ann.next().await), typed(ROOM, "bob", ""));
        assert_eq!(typing_row(&cat.next().await), typed(ROOM, "bob", ""));
        bob.quiet().await;

        // Cat is typing when her stream dies: the others get cat's "stopped" and her leave.
        cat.send(typing(ROOM, "cat", "cat is typing")).await;
        assert_eq!(
            typing_row(&ann.next().await),
            typed(ROOM, "cat", "cat is typing")
        );
        assert_eq!(
            typing_row(&bob.next().await),
            typed(ROOM, "cat", "cat is typing")
        );
        cat.disconnect();
        for m in [&mut ann, &mut bob] {
            let mut two: Vec<_> = m.next_n(2).await.iter().map(typing_row).collect();
            two.sort();
            assert_eq!(
                two,
                [
                    typed(ROOM, "cat", ""),
                    (5, "system", ROOM.into(), "cat".into(), left("cat"))
                ]
            );
        }
        ann.quiet().await;

        // Never stored: not in the history, not in a replay.
        let expected = vec![
            sys(1, "ann", "joined"),
            sys(2, "bob", "joined"),
            sys(3, "cat", "joined"),
            hi.clone(),
            sys(5, "cat", "left"),
        ];
        assert_eq!(rows(&history(&mut client, ROOM).await), expected);
        let mut dan = Member::join(&server, ROOM, "dan", 0).await;
        let mut replay = expected.clone();
        replay.push(sys(6, "dan", "joined"));
        assert_eq!(rows(&dan.next_n(6).await), replay);
        dan.quiet().await;
        assert_eq!(rows(&ann.next_n(1).await), [sys(6, "dan", "joined")]);
        assert_eq!(rows(&bob.next_n(1).await), [sys(6, "dan", "joined")]);

        // Ann's post ended her typing notice, and bob stopped his explicitly: their streams
        // end with no "stopped" notice, only their leaves.
        assert_eq!(rows(&ann.finish().await), [sys(7, "ann", "left")]);
        assert_eq!(
            rows(&bob.finish().await),
            [sys(7, "ann", "left"), sys(8, "bob", "left")]
        );
        assert_eq!(
            rows(&dan.next_n(2).await),
            [sys(7, "ann", "left"), sys(8, "bob", "left")]
        );
        dan.quiet().await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Restart
// ---------------------------------------------------------------------------------------------

store_tests!(messages_survive_a_restart_and_sequences_continue);
/// Messages survive a restart exactly (ids, sequences, timestamps); a member still connected at
/// shutdown gets UNAVAILABLE and its leave notice is stored first; sequences continue.
async fn messages_survive_a_restart_and_sequences_continue(kind: StoreKind) {
    const ROOM: &str = "restart-room";
    let server = TestServer::start_on(kind, |_| {}).await;
    let (before, bob) = within(30, "before restart", async {
        let mut ann = Member::join(&server, ROOM, "ann", 0).await;
        for i in 0..10 {
            ann.say(&format!("m{i}")).await;
        }
        assert_eq!(seqs(&ann.next_n(11).await), (1..=11).collect::<Vec<_>>());
        assert_eq!(rows(&ann.finish().await), [sys(12, "ann", "left")]);
        let mut bob = Member::join(&server, ROOM, "bob", 12).await;
        assert_eq!(rows(&bob.next_n(1).await), [sys(13, "bob", "joined")]);
        let mut client = server.client().await;
        (history(&mut client, ROOM).await, bob)
    })
    .await;
    assert_eq!(before.len(), 13);

    // Bob is still connected when the server stops.
    let home = server.home();
    let (_, (_, status)) = within(30, "stop", async {
        tokio::join!(server.stop(), bob.failure())
    })
    .await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let server = TestServer::start_at(home, |_| {}).await;
    within(30, "after restart", async {
        let mut client = server.client().await;
        let after = history(&mut client, ROOM).await;
        assert_eq!(&after[..13], &before[..]);
        assert_eq!(rows(&after[13..]), [sys(14, "bob", "left")]);
        let mut ann = Member::join(&server, ROOM, "ann", 14).await;
        assert_eq!(rows(&ann.next_n(1).await), [sys(15, "ann", "joined")]);
        ann.say("after restart").await;
        let m = ann.next().await;
        assert_eq!(row(&m), stored(16, "text", "ann", "after restart"));
        let micros = |m: &ChatMessage| {
            let t = m.timestamp.expect("timestamp");
            t.seconds as i128 * 1_000_000 + t.nanos as i128 / 1000
        };
        assert!(
            micros(&m) >= micros(&after[13]),
            "time went back after the restart"
        );
        assert_eq!(rows(&ann.finish().await), [sys(17, "ann", "left")]);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. History pages
// ---------------------------------------------------------------------------------------------

store_tests!(history_pages_backwards_with_exact_limits_and_has_more);
/// GetChatHistory pages backwards from `before_sequence` (0 = the newest), `limit` 0 means 50
/// and is capped at 500, and `has_more` is exact at every boundary.
async fn history_pages_backwards_with_exact_limits_and_has_more(kind: StoreKind) {
    const ROOM: &str = "history-room";
    const USERS: [&str; 4] = ["ann", "bob", "cat", "dan"];
    const EACH: u64 = 155;
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "history", async {
        let mut client = server.client().await;
        // An empty room.
        assert_eq!(page(&mut client, ROOM, 0, 0).await, (vec![], false));

        // 4 joins and 620 posts from four concurrent members: 624 messages.
        let mut tasks = Vec::new();
        for user in USERS {
            let mut member = Member::join(&server, ROOM, user, 0).await;
            tasks.push(tokio::spawn(async move {
                for n in 0..EACH {
                    member.say(&format!("{n}")).await;
                }
                // Wait for our own last message before leaving.
                loop {
                    let m = member.next().await;
                    if m.user_id == member.user && m.content == format!("{}", EACH - 1) {
                        break;
                    }
                }
                member
            }));
        }
        let mut members = Vec::new();
        for task in tasks {
            members.push(task.await.expect("member"));
        }
        let total = USERS.len() as u64 * (EACH + 1);
        let all = history(&mut client, ROOM).await;
        assert_eq!(seqs(&all), (1..=total).collect::<Vec<_>>());
        let range = |from: u64, to: u64| all[(from - 1) as usize..to as usize].to_vec();

        let cases: Vec<(&str, u64, u32, Vec<ChatMessage>, bool)> = vec![
            (
                "newest, default limit",
                0,
                0,
                range(total - 49, total),
                true,
            ),
            ("newest, limit 1", 0, 1, range(total, total), true),
            (
                "newest, limit 10,000 capped at 500",
                0,
                10_000,
                range(total - 499, total),
                true,
            ),
            ("newest, limit 500", 0, 500, range(total - 499, total), true),
            (
                "newest, limit 501 capped",
                0,
                501,
                range(total - 499, total),
                true,
            ),
            (
                "before the head + 1",
                total + 1,
                0,
                range(total - 49, total),
                true,
            ),
            (
                "before far past the head",
                1 << 40,
                3,
                range(total - 2, total),
                true,
            ),
            (
                "before u64::MAX",
                u64::MAX,
                3,
                range(total - 2, total),
                true,
            ),
            ("before 101, limit 50", 101, 50, range(51, 100), true),
            (
                "before 51, limit 50: exactly the oldest",
                51,
                50,
                range(1, 50),
                false,
            ),
            (
                "before 52, limit 50: one older remains",
                52,
                50,
                range(2, 51),
                true,
            ),
            ("before 51, default limit", 51, 0, range(1, 50), false),
            (
                "before 125, limit 500: fewer than asked",
                125,
                500,
                range(1, 124),
                false,
            ),
            ("before 2", 2, 0, range(1, 1), false),
            ("before 1: nothing older", 1, 0, vec![], false),
        ];
        for (what, before, limit, expected, has_more) in cases {
            let (messages, more) = page(&mut client, ROOM, before, limit).await;
            assert_eq!(seqs(&messages), seqs(&expected), "{what}");
            assert_eq!(messages, expected, "{what}");
            assert_eq!(more, has_more, "{what}: has_more");
        }
        // Another room's history is separate.
        assert_eq!(
            page(&mut client, "history-room-2", 0, 0).await,
            (vec![], false)
        );
        // A missing or malformed room.
        for (what, room) in [
            ("empty", String::new()),
            ("129 bytes", "r".repeat(129)),
            ("control", "a\u{1}b".into()),
        ] {
            let status = client
                .get_chat_history(GetChatHistoryRequest {
                    room_id: room,
                    ..Default::default()
                })
                .await
                .expect_err(what);
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        }
        drop(members);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Bad input
// ---------------------------------------------------------------------------------------------

store_tests!(bad_chat_input_gets_the_exact_status_and_stores_nothing);
/// Every refused first message gets its exact code and stores nothing (no join notice); every
/// refused later message ends its stream with its exact code, and stores nothing but the
/// member's own join and leave.
async fn bad_chat_input_gets_the_exact_status_and_stores_nothing(kind: StoreKind) {
    const ROOM: &str = "bad-room";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "bad input", async {
        let mut client = server.client().await;
        // The room has one message, from a member that stays, so "past the head" means > 2.
        let mut ann = Member::join(&server, ROOM, "ann", 0).await;
        ann.say("baseline").await;
        assert_eq!(seqs(&ann.next_n(2).await), [1, 2]);
        let baseline = history(&mut client, ROOM).await;
        let over = "x".repeat(16 * 1024 + 1);
        let long = "x".repeat(129);
        let with = |f: &dyn Fn(&mut ChatMessage)| {
            let mut m = text(ROOM, "zed", "hi");
            f(&mut m);
            m
        };

        let first_table: Vec<(&str, ChatMessage, Code)> = vec![
            (
                "missing room_id",
                with(&|m| m.room_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "missing user_id",
                with(&|m| m.user_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "room_id of 129 bytes",
                with(&|m| m.room_id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "user_id with a control char",
                with(&|m| m.user_id = "z\u{7}".into()),
                Code::InvalidArgument,
            ),
            (
                "SYSTEM from a client",
                with(&|m| m.r#type = ChatMessageType::System as i32),
                Code::InvalidArgument,
            ),
            (
                "unknown type 99",
                with(&|m| m.r#type = 99),
                Code::InvalidArgument,
            ),
            (
                "negative type",
                with(&|m| m.r#type = -1),
                Code::InvalidArgument,
            ),
            (
                "UNSPECIFIED with content",
                with(&|m| m.r#type = 0),
                Code::InvalidArgument,
            ),
            (
                "content over 16 KiB",
                with(&|m| m.content = over.clone()),
                Code::ResourceExhausted,
            ),
            (
                "typing over 16 KiB",
                with(&|m| {
                    m.r#type = ChatMessageType::Typing as i32;
                    m.content = over.clone()
                }),
                Code::ResourceExhausted,
            ),
            (
                "id with whitespace",
                with(&|m| m.id = "an id".into()),
                Code::InvalidArgument,
            ),
            (
                "id of 129 bytes",
                with(&|m| m.id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "sequence past the head",
                with(&|m| m.sequence = 3),
                Code::OutOfRange,
            ),
            (
                "sequence far past the head",
                with(&|m| m.sequence = u64::MAX),
                Code::OutOfRange,
            ),
        ];
        for (what, first, expected) in first_table {
            let status = refused(&mut client, first).await;
            assert_eq!(status.code(), expected, "{what}: {status:?}");
            assert!(
                !status.message().contains("SELECT") && !status.message().contains('/'),
                "{what}: the message leaks internals: {}",
                status.message()
            );
        }
        // An empty request stream.
        let status = client
            .chat(tokio_stream::iter(Vec::<ChatMessage>::new()))
            .await
            .expect_err("empty stream");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "empty stream: {status:?}"
        );
        assert_eq!(
            history(&mut client, ROOM).await,
            baseline,
            "a refused join stored something"
        );

        // The largest content is accepted: the cap is inclusive.
        let exact = "y".repeat(16 * 1024);
        ann.say(&exact).await;
        let m = ann.next().await;
        assert_eq!((m.sequence, m.content.len()), (3, 16 * 1024));
        let mut expected_history = history(&mut client, ROOM).await;

        let later_table: Vec<(&str, ChatMessage, Code)> = vec![
            (
                "SYSTEM from a client",
                with(&|m| m.r#type = ChatMessageType::System as i32),
                Code::InvalidArgument,
            ),
            (
                "room switched",
                with(&|m| m.room_id = "elsewhere".into()),
                Code::InvalidArgument,
            ),
            (
                "user switched",
                with(&|m| m.user_id = "someone-else".into()),
                Code::InvalidArgument,
            ),
            (
                "content over 16 KiB",
                with(&|m| m.content = over.clone()),
                Code::ResourceExhausted,
            ),
            (
                "unknown type 99",
                with(&|m| m.r#type = 99),
                Code::InvalidArgument,
            ),
            (
                "UNSPECIFIED with content",
                with(&|m| m.r#type = 0),
                Code::InvalidArgument,
            ),
            (
                "TEXT without content",
                with(&|m| m.content.clear()),
                Code::InvalidArgument,
            ),
            (
                "id with a tab",
                with(&|m| m.id = "a\tb".into()),
                Code::InvalidArgument,
            ),
        ];
        for (what, bad, expected) in later_table {
            let zed = Member::join(&server, ROOM, "zed", 0).await;
            zed.send(text(ROOM, "zed", &format!("fine before {what}")))
                .await;
            zed.send(bad).await;
            // Possibly after the stream already failed: then it has nowhere to go.
            let _ = zed.tx.send(text(ROOM, "zed", "never stored")).await;
            let (_, status) = zed.failure().await;
            assert_eq!(status.code(), expected, "{what}: {status:?}");
            // Stored: zed's join, the good message, zed's leave; nothing from the bad one on.
            let head = expected_history.len() as u64;
            expected_history = history_reaches(&client, ROOM, head as usize + 3).await;
            assert_eq!(
                rows(&expected_history[head as usize..]),
                [
                    sys(head + 1, "zed", "joined"),
                    stored(head + 2, "text", "zed", &format!("fine before {what}")),
                    sys(head + 3, "zed", "left")
                ],
                "{what}"
            );
            assert_eq!(ann.next_n(3).await.len(), 3);
        }
        ann.quiet().await;
        // Every zed session is over (its leave is stored, the last thing it does). A post by
        // ann lands right after the last leave: nothing else was stored in between.
        ann.say("the end").await;
        let end = ann.next().await;
        let head = expected_history.len() as u64;
        assert_eq!(row(&end), stored(head + 1, "text", "ann", "the end"));
        expected_history.push(end);
        assert_eq!(history(&mut client, ROOM).await, expected_history);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 10. A slow member
// ---------------------------------------------------------------------------------------------

store_tests!(a_member_that_stops_reading_holds_back_no_one_and_loses_nothing);
/// A member that stops reading while 10,000 messages flow does not hold back the others: each
/// of them gets every message (a stalled one fails its read deadline), the slow member's
/// subscription falls back to the store instead of buffering (memory stays bounded), and when
/// it reads again it gets every stored message in order with no gap. The slow member has its
/// own connection: on a shared one, HTTP/2 flow control would stall everyone on it. How fast
/// the others get their messages is a figure of `streamhub bench chat`, not asserted here.
async fn a_member_that_stops_reading_holds_back_no_one_and_loses_nothing(kind: StoreKind) {
    const ROOM: &str = "slow-room";
    const SENDERS: [&str; 2] = ["ann", "bob"];
    const TOTAL: usize = 10_000;
    const EACH: usize = TOTAL / SENDERS.len();
    /// Messages a sender has in flight (sent, own copy not yet back).
    const WINDOW: usize = 16;
    // fsync at checkpoints only: this test is about flow, not durability, and it keeps 10,000
    // one-message commits within the time budget of a debug build.
    let server = TestServer::start_on(kind, |c| c.sync = SyncMode::Normal).await;
    within(120, "slow member", async {
        let mut slow = Member::join(&server, ROOM, "slow", 0).await;
        assert_eq!(rows(&slow.next_n(1).await), [sys(1, "slow", "joined")]);
        let mut fast = Vec::new();
        for user in SENDERS {
            fast.push(Member::join(&server, ROOM, user, 1).await);
        }
        for member in &mut fast {
            assert_eq!(seqs(&member.next_n(2).await), [2, 3]);
        }
        assert_eq!(server.log.hub.receiver_count(), 3);
        let rss_before = rss_kib();

        let started = Instant::now();
        let peak_rss = Arc::new(Mutex::new(rss_before));
        let sampler = {
            let peak = peak_rss.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let now = rss_kib();
                    let mut peak = peak.lock().unwrap();
                    *peak = (*peak).max(now);
                }
            })
        };
        let mut tasks = Vec::new();
        for (s, mut member) in fast.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let window = Arc::new(Semaphore::new(WINDOW));
                let sender = {
                    let (tx, room, user) =
                        (member.tx.clone(), member.room.clone(), member.user.clone());
                    let window = window.clone();
                    let body = "z".repeat(1000);
                    tokio::spawn(async move {
                        for n in 0..EACH {
                            window.acquire().await.expect("window").forget();
                            tx.send(text(&room, &user, &format!("{s} {n} {body}")))
                                .await
                                .expect("send");
                        }
                    })
                };
                let mut got = Vec::with_capacity(TOTAL);
                while got.len() < TOTAL {
                    // Fails after READ_LIMIT of silence: a member held back by the slow one.
                    let m = member.next().await;
                    let mut words = m.content.splitn(3, ' ');
                    let from: usize = words.next().and_then(|w| w.parse().ok()).expect("sender");
                    let n: usize = words.next().and_then(|w| w.parse().ok()).expect("n");
                    if from == s {
                        window.add_permits(1);
                    }
                    got.push((m.sequence, from, n));
                }
                sender.await.expect("sender");
                (member, got)
            }));
        }
        let mut members = Vec::new();
        let mut order = None;
        for task in tasks {
            let (member, got) = task.await.expect("fast member");
            // Everyone got every message, in one order, contiguous after the joins.
            assert_eq!(
                got.iter().map(|g| g.0).collect::<Vec<_>>(),
                (4..4 + TOTAL as u64).collect::<Vec<_>>()
            );
            match &order {
                None => order = Some(got),
                Some(first) => assert_eq!(first, &got),
            }
            members.push(member);
        }
        let elapsed = started.elapsed();
        sampler.abort();
        let rss_peak = *peak_rss.lock().unwrap();
        eprintln!(
            "slow member: {TOTAL} messages in {elapsed:?} (a figure, not asserted); RSS {} MiB \
             before, peak {} MiB (debug build, shared machine)",
            rss_before / 1024,
            rss_peak / 1024
        );
        // The slow member's subscription is still there (it was never dropped for lag).
        assert_eq!(server.log.hub.receiver_count(), 3);
        // Memory bound, with a 4x margin. Expected: the whole test process (in-process server,
        // both fast members' SQLite and HTTP/2 buffers, the slow member's bounded pages and
        // windows, and the other tests of this file running alongside) grows by 41-43 MiB
        // here, measured in a debug build under load (41 MiB with this test alone). The bound
        // is 4x 44 MiB, 176 MiB, because the RSS of a shared process is noisy (allocator
        // arenas, parallel tests) and a bound close to the figure fails for no bug. It still
        // catches growth with the backlog: the 10,000 messages held for the slow member as
        // records and encoded replies, several copies each, or a per-message leak.
        // Boundedness itself is structural (bounded pages, `Lagged` falls back to the store),
        // checked by the receiver count above and the complete, in-order catch-up below.
        assert!(
            rss_peak.saturating_sub(rss_before) < 4 * 44 * 1024,
            "RSS grew from {rss_before} KiB to {rss_peak} KiB (bound: 4x the expected 44 MiB)"
        );

        // The slow member reads again: everything, in order, no gap, then live.
        let order = order.expect("order");
        let mut caught = slow.next_n(2).await;
        assert_eq!(
            rows(&caught),
            [sys(2, "ann", "joined"), sys(3, "bob", "joined")]
        );
        caught = slow.next_n(TOTAL).await;
        let seen: Vec<(u64, usize, usize)> = caught
            .iter()
            .map(|m| {
                let mut words = m.content.splitn(3, ' ');
                let from = words.next().and_then(|w| w.parse().ok()).expect("sender");
                let n = words.next().and_then(|w| w.parse().ok()).expect("n");
                (m.sequence, from, n)
            })
            .collect();
        assert_eq!(seen, order);
        members[0].say("live again").await;
        assert_eq!(
            rows(&slow.next_n(1).await),
            [stored(4 + TOTAL as u64, "text", "ann", "live again")]
        );
        assert_eq!(
            rows(&slow.finish().await),
            [sys(5 + TOTAL as u64, "slow", "left")]
        );
    })
    .await;
    server.stop().await;
}
