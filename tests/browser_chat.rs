//! The browser chat calls against the real server: JoinRoom (a Chat member whose only message
//! is its request, present until it drops its stream) and SendChatMessage (one post or typing
//! notice from no stream). A JoinRoom member gets its join notice, the replay and the room's
//! one order shared with Chat members; SendChatMessage posts are idempotent and typing is
//! relayed to the other users only, never stored; dropping the stream stores the leave once per
//! user, and so does a shutdown; bad input, access and the per-user subscription limit give the same codes as Chat;
//! and both calls work across two replicas. Every call goes through the generated client, and
//! every test asserts exact sequences, contents and status codes.

mod common;

use common::chat::*;
use common::*;
use std::time::Duration;
use streamhub::auth::{Role, TokenGrants, mint_hs256_with};
use streamhub::proto::{
    ChatMessage, ChatMessageType, GetChatHistoryRequest, JoinRoomRequest, OpenDocumentRequest,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How long one expected message may take to arrive before the test fails.
const READ_LIMIT: Duration = Duration::from_secs(15);

/// A relayed typing notice as the assertions compare it: no sequence.
fn typed(user: &str, content: &str) -> Row {
    (0, "typing", user.to_string(), content.to_string())
}

fn join_request(room: &str, user: &str, after: u64) -> JoinRoomRequest {
    JoinRoomRequest {
        room_id: room.into(),
        user_id: user.into(),
        after_sequence: after,
    }
}

/// One response stream of the room (JoinRoom's, or a Chat member's) and whose it is.
struct Watcher {
    who: String,
    rx: Streaming<ChatMessage>,
}

impl Watcher {
    /// The next item of the response stream: a message, an error, or the end.
    async fn next_item(&mut self) -> Option<Result<ChatMessage, Status>> {
        match tokio::time::timeout(READ_LIMIT, self.rx.next()).await {
            Ok(item) => item,
            Err(_) => panic!("{}: nothing arrived within {READ_LIMIT:?}", self.who),
        }
    }

    /// The next message, which must carry its room and a timestamp; anything else fails.
    async fn next(&mut self) -> ChatMessage {
        match self.next_item().await {
            Some(Ok(m)) => {
                assert!(!m.room_id.is_empty(), "{}: room of {m:?}", self.who);
                assert!(m.timestamp.is_some(), "{}: timestamp of {m:?}", self.who);
                m
            }
            other => panic!("{}: expected a message, got {other:?}", self.who),
        }
    }

    async fn next_n(&mut self, n: usize) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts that nothing arrives for a moment (a last check; order-based proofs come
    /// first wherever one exists).
    async fn quiet(&mut self) {
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), self.rx.next()).await {
            panic!("{}: expected nothing, got {item:?}", self.who);
        }
    }
}

/// A JoinRoom stream on a connection of its own.
async fn join_room(server: &TestServer, room: &str, user: &str, after: u64) -> Watcher {
    let mut client = server.client().await;
    let rx = client
        .join_room(join_request(room, user, after))
        .await
        .unwrap_or_else(|s| panic!("{user} could not join {room}: {s:?}"))
        .into_inner();
    Watcher {
        who: format!("{user} (JoinRoom)"),
        rx,
    }
}

/// A Chat member: a bidirectional stream on a connection of its own.
struct ChatMember {
    room: String,
    user: String,
    tx: mpsc::Sender<ChatMessage>,
    watcher: Watcher,
}

impl ChatMember {
    async fn join(server: &TestServer, room: &str, user: &str, seen: u64) -> ChatMember {
        let mut client = server.client().await;
        let (tx, rx) = mpsc::channel(64);
        tx.send(ChatMessage {
            room_id: room.into(),
            user_id: user.into(),
            sequence: seen,
            ..Default::default()
        })
        .await
        .expect("queue the first message");
        let rx = client
            .chat(ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|s| panic!("{user} could not join {room} by Chat: {s:?}"))
            .into_inner();
        ChatMember {
            room: room.into(),
            user: user.into(),
            tx,
            watcher: Watcher {
                who: format!("{user} (Chat)"),
                rx,
            },
        }
    }

    async fn send(&self, message: ChatMessage) {
        self.tx.send(message).await.expect("request stream open");
    }

    async fn say(&self, content: &str) {
        self.send(text(&self.room, &self.user, content)).await;
    }

    /// Half-closes and reads the rest of the stream, which must end with OK.
    async fn finish(self) -> Vec<ChatMessage> {
        let ChatMember {
            tx, mut watcher, ..
        } = self;
        drop(tx);
        let mut rest = Vec::new();
        loop {
            match watcher.next_item().await {
                Some(Ok(m)) => rest.push(m),
                Some(Err(status)) => panic!("{}: failed after half-close: {status:?}", watcher.who),
                None => return rest,
            }
        }
    }
}

/// SendChatMessage through `client`.
async fn send(client: &mut Client, message: ChatMessage) -> Result<ChatMessage, Status> {
    client
        .send_chat_message(message)
        .await
        .map(|r| r.into_inner())
}

/// SendChatMessage that must succeed.
async fn post(client: &mut Client, message: ChatMessage) -> ChatMessage {
    let what = format!("{:?}", message.content);
    send(client, message)
        .await
        .unwrap_or_else(|s| panic!("SendChatMessage {what}: {s:?}"))
}

// ---------------------------------------------------------------------------------------------
// 1. A JoinRoom member is a member
// ---------------------------------------------------------------------------------------------

store_tests!(a_join_room_member_gets_its_join_the_replay_and_the_one_order_of_the_room);

/// A JoinRoom member gets the replay after `after_sequence` (or the configured recent messages
/// for 0), then its own join notice; a SendChatMessage post comes back exactly as every member
/// receives it; and posts from a Chat member and from SendChatMessage, sent at once, reach a
/// Chat member and two JoinRoom members in one order, which is the history.
async fn a_join_room_member_gets_its_join_the_replay_and_the_one_order_of_the_room(
    kind: StoreKind,
) {
    const ROOM: &str = "browser-room";
    const EACH: usize = 20;
    let server = TestServer::start_on(kind, |c| c.chat_replay_messages = 2).await;
    within(90, "one order", async {
        let mut client = server.client().await;
        let mut ann = ChatMember::join(&server, ROOM, "ann", 0).await;
        ann.say("one").await;
        ann.say("two").await;
        assert_eq!(
            rows(&ann.watcher.next_n(3).await),
            [
                sys(1, "ann", "joined"),
                stored(2, "text", "ann", "one"),
                stored(3, "text", "ann", "two")
            ]
        );

        // After 1: the replay from 2, then the member's own join notice.
        let mut bob = join_room(&server, ROOM, "bob", 1).await;
        assert_eq!(
            rows(&bob.next_n(3).await),
            [
                stored(2, "text", "ann", "one"),
                stored(3, "text", "ann", "two"),
                sys(4, "bob", "joined")
            ]
        );
        assert_eq!(
            rows(&ann.watcher.next_n(1).await),
            [sys(4, "bob", "joined")]
        );
        // After 0: the configured two most recent, then the join.
        let mut dan = join_room(&server, ROOM, "dan", 0).await;
        assert_eq!(
            rows(&dan.next_n(3).await),
            [
                stored(3, "text", "ann", "two"),
                sys(4, "bob", "joined"),
                sys(5, "dan", "joined")
            ]
        );
        for w in [&mut ann.watcher, &mut bob] {
            assert_eq!(rows(&w.next_n(1).await), [sys(5, "dan", "joined")]);
        }

        // A post from no stream: returned as stored, and delivered as returned.
        let returned = post(&mut client, text(ROOM, "cat", "from cat")).await;
        assert_eq!(row(&returned), stored(6, "text", "cat", "from cat"));
        assert!(!returned.id.is_empty(), "{returned:?}");
        assert_eq!(returned.room_id, ROOM);
        assert!(returned.timestamp.is_some(), "{returned:?}");
        for w in [&mut ann.watcher, &mut bob, &mut dan] {
            assert_eq!(w.next().await, returned, "{}", w.who);
        }

        // Ann on her Chat stream and bob through SendChatMessage, at once.
        for n in 0..EACH {
            ann.say(&format!("ann {n}")).await;
        }
        let poster = tokio::spawn({
            let mut client = server.client().await;
            async move {
                let mut sent = Vec::new();
                for n in 0..EACH {
                    sent.push(post(&mut client, text(ROOM, "bob", &format!("bob {n}"))).await);
                }
                sent
            }
        });
        let seen_by_ann = ann.watcher.next_n(2 * EACH).await;
        let seen_by_bob = bob.next_n(2 * EACH).await;
        let seen_by_dan = dan.next_n(2 * EACH).await;
        let bobs_posts = poster.await.expect("poster");
        assert_eq!(
            seqs(&seen_by_ann),
            (7..7 + 2 * EACH as u64).collect::<Vec<_>>()
        );
        assert_eq!(seen_by_bob, seen_by_ann, "bob's order");
        assert_eq!(seen_by_dan, seen_by_ann, "dan's order");
        let from = |user: &str| -> Vec<String> {
            seen_by_ann
                .iter()
                .filter(|m| m.user_id == user)
                .map(|m| m.content.clone())
                .collect()
        };
        assert_eq!(
            from("ann"),
            (0..EACH).map(|n| format!("ann {n}")).collect::<Vec<_>>()
        );
        assert_eq!(
            from("bob"),
            (0..EACH).map(|n| format!("bob {n}")).collect::<Vec<_>>()
        );
        // What SendChatMessage returned is what everyone received at that sequence.
        for sent in &bobs_posts {
            assert_eq!(&seen_by_ann[(sent.sequence - 7) as usize], sent);
        }
        let all = history(&mut client, ROOM).await;
        assert_eq!(all.len(), 6 + 2 * EACH);
        assert_eq!(&all[6..], &seen_by_ann[..], "the history is the order seen");

        // Ann half-closes: her stream ends at her leave. Bob and dan drop theirs: one leave each.
        let head = all.len() as u64;
        assert_eq!(rows(&ann.finish().await), [sys(head + 1, "ann", "left")]);
        drop(bob);
        drop(dan);
        let all = history_reaches(&client, ROOM, head as usize + 3).await;
        let mut leaves: Vec<String> = all[head as usize + 1..]
            .iter()
            .map(|m| m.content.clone())
            .collect();
        leaves.sort();
        assert_eq!(leaves, [left("bob"), left("dan")]);
        assert_eq!(seqs(&all), (1..=head + 3).collect::<Vec<_>>());
        wait_for("no hub receivers", Duration::from_secs(15), || {
            server.log.hub.receiver_count() == 0
        })
        .await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Typing
// ---------------------------------------------------------------------------------------------

store_tests!(typing_through_send_chat_message_reaches_the_other_users_and_is_never_stored);

/// A TYPING sent by SendChatMessage is returned as relayed (no id, no sequence, a timestamp),
/// reaches the JoinRoom and Chat members of other users and none of its sender's own streams,
/// and is never stored or replayed; a Chat member's typing reaches JoinRoom members.
async fn typing_through_send_chat_message_reaches_the_other_users_and_is_never_stored(
    kind: StoreKind,
) {
    const ROOM: &str = "browser-typing";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "typing", async {
        let mut client = server.client().await;
        let mut ann = ChatMember::join(&server, ROOM, "ann", 0).await;
        let mut bob = join_room(&server, ROOM, "bob", 0).await;
        let mut cat = join_room(&server, ROOM, "cat", 0).await;
        for w in [&mut ann.watcher, &mut bob, &mut cat] {
            assert_eq!(seqs(&w.next_n(3).await), [1, 2, 3], "{}", w.who);
        }

        let returned = post(&mut client, typing(ROOM, "cat", "cat is typing")).await;
        assert_eq!(row(&returned), typed("cat", "cat is typing"));
        assert_eq!(
            (returned.id.as_str(), returned.room_id.as_str()),
            ("", ROOM)
        );
        assert!(returned.timestamp.is_some());
        assert_eq!(ann.watcher.next().await, returned);
        assert_eq!(bob.next().await, returned);
        // Cat's first relayed signal is bob's: had she heard her own, it would have come first,
        // from the same room channel.
        post(&mut client, typing(ROOM, "bob", "bob is typing")).await;
        assert_eq!(row(&cat.next().await), typed("bob", "bob is typing"));
        assert_eq!(
            row(&ann.watcher.next().await),
            typed("bob", "bob is typing")
        );
        // The same for bob, with a Chat member's typing after his own.
        ann.send(typing(ROOM, "ann", "ann is typing")).await;
        assert_eq!(row(&bob.next().await), typed("ann", "ann is typing"));
        assert_eq!(row(&cat.next().await), typed("ann", "ann is typing"));
        // Someone with no stream in the room: everyone hears it.
        post(&mut client, typing(ROOM, "eve", "")).await;
        for w in [&mut ann.watcher, &mut bob, &mut cat] {
            assert_eq!(row(&w.next().await), typed("eve", ""), "{}", w.who);
        }

        // Never stored, never replayed.
        let expected = vec![
            sys(1, "ann", "joined"),
            sys(2, "bob", "joined"),
            sys(3, "cat", "joined"),
        ];
        assert_eq!(rows(&history(&mut client, ROOM).await), expected);
        let mut dan = join_room(&server, ROOM, "dan", 0).await;
        let mut replay = expected.clone();
        replay.push(sys(4, "dan", "joined"));
        assert_eq!(rows(&dan.next_n(4).await), replay);
        // Dan's first message after the replay is a post, not an old typing notice.
        let hi = post(&mut client, text(ROOM, "eve", "hi")).await;
        assert_eq!(dan.next().await, hi);
        dan.quiet().await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Presence: the stream is the member
// ---------------------------------------------------------------------------------------------

store_tests!(a_user_on_two_join_room_streams_joins_once_and_leaves_once);

/// A user's first JoinRoom stream stores its join, a second one no second join; dropping the
/// first stores no leave, dropping the last stores one, exactly as for a Chat client that goes
/// away; SendChatMessage stores neither. Coming back joins again.
async fn a_user_on_two_join_room_streams_joins_once_and_leaves_once(kind: StoreKind) {
    const ROOM: &str = "browser-presence";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "presence", async {
        let mut client = server.client().await;
        let mut ann = ChatMember::join(&server, ROOM, "ann", 0).await;
        assert_eq!(
            rows(&ann.watcher.next_n(1).await),
            [sys(1, "ann", "joined")]
        );
        let mut bob1 = join_room(&server, ROOM, "bob", 1).await;
        assert_eq!(rows(&bob1.next_n(1).await), [sys(2, "bob", "joined")]);
        assert_eq!(
            rows(&ann.watcher.next_n(1).await),
            [sys(2, "bob", "joined")]
        );

        // A second stream of bob: no second join. JoinRoom answers once its join is stored,
        // so a join notice would come before this post.
        let mut bob2 = join_room(&server, ROOM, "bob", 2).await;
        let marker = post(&mut client, text(ROOM, "cat", "marker 1")).await;
        assert_eq!(row(&marker), stored(3, "text", "cat", "marker 1"));
        for w in [&mut ann.watcher, &mut bob1, &mut bob2] {
            assert_eq!(w.next().await, marker, "{}", w.who);
        }

        // Bob's first stream goes: he is still here.
        drop(bob1);
        let marker = post(&mut client, text(ROOM, "cat", "marker 2")).await;
        assert_eq!(row(&marker), stored(4, "text", "cat", "marker 2"));
        assert_eq!(bob2.next().await, marker);
        assert_eq!(ann.watcher.next().await, marker);
        // His last one goes: the leave, once, right after.
        drop(bob2);
        assert_eq!(rows(&ann.watcher.next_n(1).await), [sys(5, "bob", "left")]);
        assert_eq!(
            rows(&history_reaches(&client, ROOM, 5).await),
            [
                sys(1, "ann", "joined"),
                sys(2, "bob", "joined"),
                stored(3, "text", "cat", "marker 1"),
                stored(4, "text", "cat", "marker 2"),
                sys(5, "bob", "left")
            ]
        );

        // Back again: a new join.
        let mut bob3 = join_room(&server, ROOM, "bob", 5).await;
        assert_eq!(rows(&bob3.next_n(1).await), [sys(6, "bob", "joined")]);
        assert_eq!(
            rows(&ann.watcher.next_n(1).await),
            [sys(6, "bob", "joined")]
        );
        assert_eq!(
            rows(&ann.finish().await),
            [sys(7, "ann", "left")],
            "ann's stream ends at her leave"
        );
        assert_eq!(rows(&bob3.next_n(1).await), [sys(7, "ann", "left")]);
        drop(bob3);
        assert_eq!(
            rows(&history_reaches(&client, ROOM, 8).await[5..]),
            [
                sys(6, "bob", "joined"),
                sys(7, "ann", "left"),
                sys(8, "bob", "left")
            ]
        );
        wait_for("no hub receivers", Duration::from_secs(15), || {
            server.log.hub.receiver_count() == 0
        })
        .await;
        assert_eq!(history(&mut client, ROOM).await.len(), 8, "nothing after");
    })
    .await;
    server.stop().await;
}

/// A JoinRoom member still connected when the server stops gets UNAVAILABLE, and its leave is
/// stored before the server is gone: a restart finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_room_member_at_shutdown_gets_unavailable_and_its_leave_is_kept() {
    const ROOM: &str = "browser-shutdown";
    let server = TestServer::start().await;
    let mut bob = within(30, "before the stop", async {
        let mut bob = join_room(&server, ROOM, "bob", 0).await;
        assert_eq!(rows(&bob.next_n(1).await), [sys(1, "bob", "joined")]);
        bob
    })
    .await;
    let (dir, end) = within(30, "stop", async {
        tokio::join!(server.stop(), async {
            match bob.next_item().await {
                Some(Err(status)) => status,
                other => panic!("bob: expected UNAVAILABLE at shutdown, got {other:?}"),
            }
        })
    })
    .await;
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let server = TestServer::start_in(dir, |_| {}).await;
    within(30, "after the restart", async {
        let mut client = server.client().await;
        assert_eq!(
            rows(&history(&mut client, ROOM).await),
            [sys(1, "bob", "joined"), sys(2, "bob", "left")]
        );
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Idempotency
// ---------------------------------------------------------------------------------------------

store_tests!(a_resent_message_id_returns_the_stored_message_and_stores_it_once);

/// Re-sending an id with the same content returns the stored message again (its sequence and
/// timestamp), through SendChatMessage and for an id first posted on a Chat stream; the same id
/// with other content, another author or another type is ALREADY_EXISTS; members get each
/// message once.
async fn a_resent_message_id_returns_the_stored_message_and_stores_it_once(kind: StoreKind) {
    const ROOM: &str = "browser-idempotent";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "idempotency", async {
        let mut client = server.client().await;
        let mut ann = join_room(&server, ROOM, "ann", 0).await;
        assert_eq!(rows(&ann.next_n(1).await), [sys(1, "ann", "joined")]);

        let first = post(&mut client, text_with_id(ROOM, "bob", "m-1", "hello")).await;
        assert_eq!(
            (first.id.as_str(), row(&first)),
            ("m-1", stored(2, "text", "bob", "hello"))
        );
        let again = post(&mut client, text_with_id(ROOM, "bob", "m-1", "hello")).await;
        assert_eq!(again, first, "the stored message, returned again");
        for (what, other) in [
            ("other content", text_with_id(ROOM, "bob", "m-1", "HELLO")),
            ("another author", text_with_id(ROOM, "cat", "m-1", "hello")),
            (
                "another type",
                ChatMessage {
                    r#type: ChatMessageType::Image as i32,
                    ..text_with_id(ROOM, "bob", "m-1", "hello")
                },
            ),
        ] {
            let status = send(&mut client, other).await.expect_err(what);
            assert_eq!(status.code(), Code::AlreadyExists, "{what}: {status:?}");
        }

        // An id posted on a Chat stream, re-sent through SendChatMessage.
        let cat = ChatMember::join(&server, ROOM, "cat", 2).await;
        cat.send(text_with_id(ROOM, "cat", "c-1", "via chat")).await;
        let again = post(&mut client, text_with_id(ROOM, "cat", "c-1", "via chat")).await;
        assert_eq!(
            (again.id.as_str(), row(&again)),
            ("c-1", stored(4, "text", "cat", "via chat"))
        );
        // Ann got each message once: hello, cat's join, cat's post, then the end marker.
        let end = post(&mut client, text(ROOM, "bob", "end")).await;
        let got = ann.next_n(4).await;
        assert_eq!(got[0], first);
        assert_eq!(row(&got[1]), sys(3, "cat", "joined"));
        assert_eq!(got[2], again);
        assert_eq!(got[3], end);
        assert_eq!(
            rows(&history(&mut client, ROOM).await),
            [
                sys(1, "ann", "joined"),
                stored(2, "text", "bob", "hello"),
                sys(3, "cat", "joined"),
                stored(4, "text", "cat", "via chat"),
                stored(5, "text", "bob", "end")
            ]
        );
        drop(cat);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Bad input
// ---------------------------------------------------------------------------------------------

/// Chat's tables for the browser calls: every refused JoinRoom gets the code Chat gives the
/// same first message and stores no join notice; every refused SendChatMessage gets the code
/// Chat gives the same later message and stores or relays nothing. The content cap is
/// inclusive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_browser_chat_input_gets_the_exact_status_and_stores_nothing() {
    const ROOM: &str = "browser-bad";
    let server = TestServer::start().await;
    within(60, "bad input", async {
        let mut client = server.client().await;
        // The room has one message, from a member that stays, so "past the head" means > 2.
        let mut ann = ChatMember::join(&server, ROOM, "ann", 0).await;
        ann.send(text_with_id(ROOM, "ann", "base-1", "baseline"))
            .await;
        assert_eq!(seqs(&ann.watcher.next_n(2).await), [1, 2]);
        let baseline = history(&mut client, ROOM).await;
        let long = "x".repeat(129);

        let join = |f: &dyn Fn(&mut JoinRoomRequest)| {
            let mut r = join_request(ROOM, "zed", 0);
            f(&mut r);
            r
        };
        let join_table: Vec<(&str, JoinRoomRequest, Code)> = vec![
            (
                "missing room_id",
                join(&|r| r.room_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "missing user_id",
                join(&|r| r.user_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "room_id of 129 bytes",
                join(&|r| r.room_id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "room_id with a control char",
                join(&|r| r.room_id = "r\u{1b}".into()),
                Code::InvalidArgument,
            ),
            (
                "user_id with a control char",
                join(&|r| r.user_id = "z\u{7}".into()),
                Code::InvalidArgument,
            ),
            (
                "user_id of 129 bytes",
                join(&|r| r.user_id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "after_sequence past the head",
                join(&|r| r.after_sequence = 3),
                Code::OutOfRange,
            ),
            (
                "after_sequence far past the head",
                join(&|r| r.after_sequence = u64::MAX),
                Code::OutOfRange,
            ),
        ];
        for (what, request, expected) in join_table {
            let status = client.join_room(request).await.map(|_| ()).expect_err(what);
            assert_eq!(status.code(), expected, "JoinRoom {what}: {status:?}");
            assert!(
                !status.message().contains("SELECT") && !status.message().contains('/'),
                "{what}: the message leaks internals: {}",
                status.message()
            );
        }
        assert_eq!(
            history(&mut client, ROOM).await,
            baseline,
            "a refused JoinRoom stored something"
        );

        let over = "x".repeat(16 * 1024 + 1);
        let with = |f: &dyn Fn(&mut ChatMessage)| {
            let mut m = text(ROOM, "zed", "hi");
            f(&mut m);
            m
        };
        let send_table: Vec<(&str, ChatMessage, Code)> = vec![
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
                "UNSPECIFIED without content (a join is JoinRoom's)",
                with(&|m| {
                    m.r#type = 0;
                    m.content.clear()
                }),
                Code::InvalidArgument,
            ),
            (
                "TEXT without content",
                with(&|m| m.content.clear()),
                Code::InvalidArgument,
            ),
            (
                "IMAGE without content",
                with(&|m| {
                    m.r#type = ChatMessageType::Image as i32;
                    m.content.clear()
                }),
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
                "id with a tab",
                with(&|m| m.id = "a\tb".into()),
                Code::InvalidArgument,
            ),
            (
                "id of 129 bytes",
                with(&|m| m.id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "id reused with other content",
                with(&|m| m.id = "base-1".into()),
                Code::AlreadyExists,
            ),
        ];
        for (what, bad, expected) in send_table {
            let status = send(&mut client, bad).await.expect_err(what);
            assert_eq!(
                status.code(),
                expected,
                "SendChatMessage {what}: {status:?}"
            );
            assert!(
                !status.message().contains("SELECT") && !status.message().contains('/'),
                "{what}: the message leaks internals: {}",
                status.message()
            );
        }
        assert_eq!(
            history(&mut client, ROOM).await,
            baseline,
            "a refused SendChatMessage stored something"
        );

        // Nothing refused reached ann: her next message is the largest content, which is
        // accepted (the cap is inclusive).
        let exact = post(&mut client, text(ROOM, "zed", &"y".repeat(16 * 1024))).await;
        assert_eq!((exact.sequence, exact.content.len()), (3, 16 * 1024));
        assert_eq!(ann.watcher.next().await, exact);
        ann.watcher.quiet().await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Access, with auth on
// ---------------------------------------------------------------------------------------------

const SECRET: &str = "an hs256 secret of at least 32 bytes, for tests";

fn user_token(sub: &str) -> String {
    mint_hs256_with(
        SECRET.as_bytes(),
        sub,
        Role::User,
        Duration::from_secs(3600),
        &TokenGrants::default(),
    )
    .expect("mint a user token")
}

fn service_token() -> String {
    mint_hs256_with(
        SECRET.as_bytes(),
        "backend",
        Role::Service,
        Duration::from_secs(3600),
        &TokenGrants::default(),
    )
    .expect("mint a service token")
}

async fn auth_server(adjust: impl FnOnce(&mut streamhub::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
        c.public_rooms = vec!["lobby".into()];
        c.public_documents = vec!["wiki".into()];
        adjust(c);
    })
    .await
}

/// The room's history as (user, content), read with a service token.
async fn history_as_service(server: &TestServer, room: &str) -> Vec<(String, String)> {
    let mut admin = client_as(server.addr, &service_token()).await;
    admin
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            limit: 500,
            ..Default::default()
        })
        .await
        .expect("GetChatHistory as a service")
        .into_inner()
        .messages
        .into_iter()
        .map(|m| (m.user_id, m.content))
        .collect()
}

async fn join_as(
    client: &mut AuthClient,
    room: &str,
    user: &str,
) -> Result<Streaming<ChatMessage>, Status> {
    client
        .join_room(join_request(room, user, 0))
        .await
        .map(|r| r.into_inner())
}

/// Reads one message from a stream, within the read limit.
async fn next_of(stream: &mut Streaming<ChatMessage>) -> ChatMessage {
    match tokio::time::timeout(READ_LIMIT, stream.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

/// With auth on, the browser calls follow Chat's access rules before anything is stored or
/// relayed: a user outside `dm#alice,bob` is refused with PERMISSION_DENIED (no join notice,
/// no post, no typing reaches a member), a user token cannot act as another user, an empty
/// user_id becomes the token's user, a service may act for anyone, and no token is
/// UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_chat_calls_follow_the_access_rules_before_storing_anything() {
    const DM: &str = "dm#alice,bob";
    let server = auth_server(|_| {}).await;
    within(60, "access", async {
        let mut alice = client_as(server.addr, &user_token("alice")).await;
        let mut bob = client_as(server.addr, &user_token("bob")).await;
        let mut carol = client_as(server.addr, &user_token("carol")).await;
        let mut admin = client_as(server.addr, &service_token()).await;
        let mut anonymous = client_with_header(server.addr, None).await;

        // Carol is not in the DM: refused, whatever she asks for.
        expect_code(
            "carol JoinRoom",
            join_as(&mut carol, DM, "carol").await.map(|_| ()),
            Code::PermissionDenied,
        );
        expect_code(
            "carol JoinRoom with no user_id",
            join_as(&mut carol, DM, "").await.map(|_| ()),
            Code::PermissionDenied,
        );
        assert_eq!(history_as_service(&server, DM).await, [], "no join notice");

        // Alice is: her empty user_id becomes her own.
        let mut alices = join_as(&mut alice, DM, "").await.expect("alice joins");
        let hello = next_of(&mut alices).await;
        assert_eq!((hello.sequence, hello.user_id.as_str()), (1, "alice"));
        assert_eq!(hello.content, joined("alice"));

        for (what, message) in [
            ("carol TEXT", text(DM, "carol", "let me in")),
            ("carol TEXT with no user_id", text(DM, "", "let me in")),
            ("carol TYPING", typing(DM, "carol", "carol is typing")),
        ] {
            expect_code(
                what,
                carol.send_chat_message(message).await,
                Code::PermissionDenied,
            );
        }
        // Acting as someone else is refused even where both may go.
        expect_code(
            "bob as alice",
            bob.send_chat_message(text(DM, "alice", "i am alice")).await,
            Code::PermissionDenied,
        );
        expect_code(
            "bob JoinRoom as alice",
            join_as(&mut bob, DM, "alice").await.map(|_| ()),
            Code::PermissionDenied,
        );
        expect_code(
            "carol JoinRoom in the lobby as alice",
            join_as(&mut carol, "lobby", "alice").await.map(|_| ()),
            Code::PermissionDenied,
        );
        expect_code(
            "no token",
            anonymous.send_chat_message(text("lobby", "", "hi")).await,
            Code::Unauthenticated,
        );
        expect_code(
            "no token, JoinRoom",
            join_as(&mut anonymous, "lobby", "").await.map(|_| ()),
            Code::Unauthenticated,
        );

        // Bob's typing is the first thing alice hears: carol's refused typing went nowhere.
        let relayed = bob
            .send_chat_message(typing(DM, "", "bob is typing"))
            .await
            .expect("bob types")
            .into_inner();
        assert_eq!(row(&relayed), typed("bob", "bob is typing"));
        assert_eq!(next_of(&mut alices).await, relayed);
        // Bob posts as himself, a service for alice.
        let by_bob = bob
            .send_chat_message(text(DM, "", "from bob"))
            .await
            .expect("bob posts")
            .into_inner();
        assert_eq!(row(&by_bob), stored(2, "text", "bob", "from bob"));
        let for_alice = admin
            .send_chat_message(text(DM, "alice", "on alice's behalf"))
            .await
            .expect("a service posts for alice")
            .into_inner();
        assert_eq!(
            row(&for_alice),
            stored(3, "text", "alice", "on alice's behalf")
        );
        assert_eq!(next_of(&mut alices).await, by_bob);
        assert_eq!(next_of(&mut alices).await, for_alice);
        assert_eq!(
            history_as_service(&server, DM).await,
            [
                ("alice".into(), joined("alice")),
                ("bob".into(), "from bob".into()),
                ("alice".into(), "on alice's behalf".into()),
            ]
        );
        assert_eq!(
            history_as_service(&server, "lobby").await,
            [],
            "nothing refused was stored in the lobby"
        );

        // A public room: carol may, as herself.
        let mut carols = join_as(&mut carol, "lobby", "").await.expect("carol joins");
        let hello = next_of(&mut carols).await;
        assert_eq!(
            (
                hello.sequence,
                hello.user_id.as_str(),
                hello.content.as_str()
            ),
            (1, "carol", joined("carol").as_str())
        );
        drop(alices);
        drop(carols);
    })
    .await;
    server.stop().await;
}

/// JoinRoom counts against `--max-subscriptions-per-user` like every other stream: with the
/// limit of 2 held by two JoinRoom streams, a third JoinRoom, a Chat stream and an
/// OpenDocument stream are RESOURCE_EXHAUSTED and store nothing, SendChatMessage (no stream)
/// still works, another user is not affected, and a dropped stream frees its unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_room_counts_against_the_per_user_subscription_limit() {
    let server = auth_server(|c| c.max_subscriptions_per_user = 2).await;
    within(60, "per-user limit", async {
        let mut alice = client_as(server.addr, &user_token("alice")).await;
        let mut bob = client_as(server.addr, &user_token("bob")).await;
        let mut first = join_as(&mut alice, "lobby", "").await.expect("1st");
        assert_eq!(next_of(&mut first).await.content, joined("alice"));
        let second = join_as(&mut alice, "lobby", "").await.expect("2nd");
        assert_eq!(server.log.user_subscriptions.held_by("alice"), 2);

        expect_code(
            "3rd: JoinRoom",
            join_as(&mut alice, "dm#alice,bob", "").await.map(|_| ()),
            Code::ResourceExhausted,
        );
        let (tx, rx) = mpsc::channel(1);
        tx.send(ChatMessage {
            room_id: "dm#alice,bob".into(),
            ..Default::default()
        })
        .await
        .expect("queue");
        expect_code(
            "3rd: Chat",
            alice.chat(ReceiverStream::new(rx)).await.map(|_| ()),
            Code::ResourceExhausted,
        );
        expect_code(
            "3rd: OpenDocument",
            alice
                .open_document(OpenDocumentRequest {
                    document_id: "wiki".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Code::ResourceExhausted,
        );
        assert_eq!(history_as_service(&server, "dm#alice,bob").await, []);
        // Not a stream: not counted.
        let posted = alice
            .send_chat_message(text("lobby", "", "still here"))
            .await
            .expect("SendChatMessage is no subscription")
            .into_inner();
        assert_eq!(next_of(&mut first).await, posted);
        // Bob is not affected.
        let mut bobs = join_as(&mut bob, "lobby", "").await.expect("bob");
        let mut replay = Vec::new();
        for _ in 0..3 {
            replay.push(next_of(&mut bobs).await.content);
        }
        assert_eq!(
            replay,
            [joined("alice"), "still here".into(), joined("bob")]
        );

        // One of alice's streams goes: its unit is free again.
        drop(second);
        wait_for("alice's dropped stream released", READ_LIMIT, || {
            server.log.user_subscriptions.held_by("alice") == 1
        })
        .await;
        let mut again = join_as(&mut alice, "dm#alice,bob", "")
            .await
            .expect("again");
        assert_eq!(next_of(&mut again).await.content, joined("alice"));
        assert_eq!(
            history_as_service(&server, "lobby").await,
            [
                ("alice".into(), joined("alice")),
                ("alice".into(), "still here".into()),
                ("bob".into(), joined("bob")),
            ],
            "alice's second stream added no join and its end no leave"
        );
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Across replicas
// ---------------------------------------------------------------------------------------------

/// Ann is a JoinRoom member through replica A, bob a Chat member through B. A post and typing
/// sent by SendChatMessage through B reach ann on A; ann's own typing sent through B does not
/// reach her stream on A; ann's post through A reaches bob on B; and dropping ann's stream on
/// A stores her leave, read through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_chat_calls_work_across_replicas() {
    const ROOM: &str = "browser-replicas";
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    within(90, "across replicas", async {
        let mut through_a = a.client().await;
        let mut through_b = b.client().await;
        let mut ann = join_room(&a, ROOM, "ann", 0).await;
        assert_eq!(rows(&ann.next_n(1).await), [sys(1, "ann", "joined")]);
        let mut bob = ChatMember::join(&b, ROOM, "bob", 0).await;
        assert_eq!(
            rows(&bob.watcher.next_n(2).await),
            [sys(1, "ann", "joined"), sys(2, "bob", "joined")]
        );
        assert_eq!(rows(&ann.next_n(1).await), [sys(2, "bob", "joined")]);

        let from_b = post(&mut through_b, text(ROOM, "cat", "through B")).await;
        assert_eq!(row(&from_b), stored(3, "text", "cat", "through B"));
        assert_eq!(ann.next().await, from_b);
        assert_eq!(bob.watcher.next().await, from_b);

        let typed_b = post(&mut through_b, typing(ROOM, "cat", "cat is typing")).await;
        assert_eq!(ann.next().await, typed_b, "typing through B reaches A");
        assert_eq!(bob.watcher.next().await, typed_b);
        // Ann's own typing, sent through B, skips her stream on A: her next signal is dan's.
        let own = post(&mut through_b, typing(ROOM, "ann", "ann is typing")).await;
        assert_eq!(bob.watcher.next().await, own);
        let dans = post(&mut through_b, typing(ROOM, "dan", "dan is typing")).await;
        assert_eq!(bob.watcher.next().await, dans);
        assert_eq!(ann.next().await, dans);

        let from_a = post(&mut through_a, text(ROOM, "ann", "through A")).await;
        assert_eq!(row(&from_a), stored(4, "text", "ann", "through A"));
        assert_eq!(bob.watcher.next().await, from_a);
        assert_eq!(ann.next().await, from_a);

        drop(ann);
        assert_eq!(rows(&bob.watcher.next_n(1).await), [sys(5, "ann", "left")]);
        assert_eq!(
            rows(&history_reaches(&through_b, ROOM, 5).await),
            [
                sys(1, "ann", "joined"),
                sys(2, "bob", "joined"),
                stored(3, "text", "cat", "through B"),
                stored(4, "text", "ann", "through A"),
                sys(5, "ann", "left")
            ],
            "typing is never stored"
        );
        assert_eq!(rows(&bob.finish().await), [sys(6, "bob", "left")]);
    })
    .await;
    a.stop().await;
    b.stop().await;
}
