//! The browser collaboration calls against the real server: OpenDocument (a Collaborate
//! participant whose JOIN is its request, present until it drops its stream) and
//! SubmitCollaborationEvent (one operation or cursor from no stream). An OpenDocument
//! participant gets the replay after `after_sequence`, JOIN and LEAVE presence counted per
//! user, live operations and cursors; a submitted operation is stored (idempotent by id) or
//! REJECTED with the head, exactly as Collaborate answers it; a cursor is relayed to the other
//! users only and never stored; bad input, access and the per-user subscription limit give
//! Collaborate's codes; and both calls work across two replicas. Every call goes through the
//! generated client, and every test asserts exact versions, payloads and status codes.

mod common;

use common::collab::*;
use common::*;
use std::time::Duration;
use streamhub::auth::{Role, TokenGrants, mint_hs256_with};
use streamhub::proto::{CollaborationEvent, CollaborationEventType, OpenDocumentRequest};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::{Code, Status};

use CollaborationEventType::{Cursor, Join, Leave, Rejected};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How long one expected event may take to arrive before the test fails.
const READ_LIMIT: Duration = Duration::from_secs(15);

fn open_request(doc: &str, user: &str, after: u64) -> OpenDocumentRequest {
    OpenDocumentRequest {
        document_id: doc.into(),
        user_id: user.into(),
        after_sequence: after,
    }
}

/// One response stream of a document (OpenDocument's, or a Collaborate participant's).
struct Watcher {
    who: String,
    doc: String,
    rx: Streaming<CollaborationEvent>,
}

impl Watcher {
    async fn next_item(&mut self) -> Option<Result<CollaborationEvent, Status>> {
        match tokio::time::timeout(READ_LIMIT, self.rx.next()).await {
            Ok(item) => item,
            Err(_) => panic!("{}: nothing arrived within {READ_LIMIT:?}", self.who),
        }
    }

    /// The next event, which must carry the document and a timestamp.
    async fn next(&mut self) -> CollaborationEvent {
        match self.next_item().await {
            Some(Ok(e)) => {
                assert_eq!(e.document_id, self.doc, "{}: document of {e:?}", self.who);
                assert!(e.timestamp.is_some(), "{}: timestamp of {e:?}", self.who);
                e
            }
            other => panic!("{}: expected an event, got {other:?}", self.who),
        }
    }

    async fn next_n(&mut self, n: usize) -> Vec<CollaborationEvent> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// The next `n` events, sorted: for presence events whose relative order is not defined.
    async fn next_set(&mut self, n: usize) -> Vec<Row> {
        let mut got = rows(&self.next_n(n).await);
        got.sort();
        got
    }

    /// Asserts that nothing arrives for a moment (a last check; order-based proofs come
    /// first wherever one exists).
    async fn quiet(&mut self) {
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), self.rx.next()).await {
            panic!("{}: expected nothing, got {item:?}", self.who);
        }
    }
}

/// An OpenDocument stream on a connection of its own.
async fn open_document(server: &TestServer, doc: &str, user: &str, after: u64) -> Watcher {
    let mut client = server.client().await;
    let rx = client
        .open_document(open_request(doc, user, after))
        .await
        .unwrap_or_else(|s| panic!("{user} could not open {doc}: {s:?}"))
        .into_inner();
    Watcher {
        who: format!("{user} (OpenDocument)"),
        doc: doc.into(),
        rx,
    }
}

/// A Collaborate participant on a connection of its own.
struct Participant {
    tx: mpsc::Sender<CollaborationEvent>,
    watcher: Watcher,
}

impl Participant {
    async fn join(server: &TestServer, doc: &str, user: &str, version: u64) -> Participant {
        let mut client = server.client().await;
        let (tx, rx) = mpsc::channel(64);
        tx.send(CollaborationEvent {
            document_id: doc.into(),
            user_id: user.into(),
            r#type: Join as i32,
            sequence: version,
            ..Default::default()
        })
        .await
        .expect("queue the JOIN");
        let rx = client
            .collaborate(ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|s| panic!("{user} could not join {doc} by Collaborate: {s:?}"))
            .into_inner();
        Participant {
            tx,
            watcher: Watcher {
                who: format!("{user} (Collaborate)"),
                doc: doc.into(),
                rx,
            },
        }
    }

    async fn send(&self, event: CollaborationEvent) {
        self.tx.send(event).await.expect("request stream open");
    }
}

async fn submit(
    client: &mut Client,
    event: CollaborationEvent,
) -> Result<CollaborationEvent, Status> {
    client
        .submit_collaboration_event(event)
        .await
        .map(|r| r.into_inner())
}

/// SubmitCollaborationEvent that must succeed.
async fn submitted(client: &mut Client, event: CollaborationEvent) -> CollaborationEvent {
    let what = format!("{} {:?}", kind_name(event.r#type), event.id);
    submit(client, event)
        .await
        .unwrap_or_else(|s| panic!("SubmitCollaborationEvent {what}: {s:?}"))
}

// ---------------------------------------------------------------------------------------------
// 1. An OpenDocument participant is a participant
// ---------------------------------------------------------------------------------------------

store_tests!(open_document_brings_the_replay_presence_and_live_operations);

/// An OpenDocument participant gets the operations after `after_sequence` (all of them for 0),
/// then a JOIN for each user present; the others get its JOIN; it gets live operations and the
/// others' cursors; a user's second OpenDocument stream adds no JOIN and its end no LEAVE; the
/// last one's end is a LEAVE for everyone, exactly as when a Collaborate client goes away.
/// Nothing of presence is stored.
async fn open_document_brings_the_replay_presence_and_live_operations(kind: StoreKind) {
    const DOC: &str = "browser-doc";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "OpenDocument", async {
        let mut client = server.client().await;
        let mut ann = Participant::join(&server, DOC, "ann", 0).await;
        ann.send(op(DOC, "ann", "a-1", b"one", None)).await;
        ann.send(op(DOC, "ann", "a-2", b"two", Some(1))).await;
        let ops = vec![
            stored_op(1, "ann", "a-1", b"one"),
            stored_op(2, "ann", "a-2", b"two"),
        ];
        assert_eq!(rows(&ann.watcher.next_n(2).await), ops);

        // After version 1: the op after it, then who is here.
        let mut bob = open_document(&server, DOC, "bob", 1).await;
        assert_eq!(
            rows(&bob.next_n(2).await),
            [ops[1].clone(), signal("join", "ann", b"")]
        );
        assert_eq!(
            rows(&ann.watcher.next_n(1).await),
            [signal("join", "bob", b"")]
        );
        // After 0: the whole document.
        let mut cat = open_document(&server, DOC, "cat", 0).await;
        assert_eq!(rows(&cat.next_n(2).await), ops);
        assert_eq!(
            cat.next_set(2).await,
            [signal("join", "ann", b""), signal("join", "bob", b"")]
        );
        for w in [&mut ann.watcher, &mut bob] {
            assert_eq!(rows(&w.next_n(1).await), [signal("join", "cat", b"")]);
        }

        // A live op from someone with no stream, and one from ann's Collaborate stream.
        let third = submitted(&mut client, op(DOC, "dan", "d-1", b"three", Some(2))).await;
        assert_eq!(row(&third), stored_op(3, "dan", "d-1", b"three"));
        for w in [&mut ann.watcher, &mut bob, &mut cat] {
            assert_eq!(w.next().await, third, "{}", w.who);
        }
        ann.send(op(DOC, "ann", "a-3", b"four", None)).await;
        for w in [&mut ann.watcher, &mut bob, &mut cat] {
            assert_eq!(
                rows(&w.next_n(1).await),
                [stored_op(4, "ann", "a-3", b"four")]
            );
        }
        // Ann's cursor reaches the OpenDocument participants.
        ann.send(cursor(DOC, "ann", b"ann@4")).await;
        for w in [&mut bob, &mut cat] {
            assert_eq!(
                rows(&w.next_n(1).await),
                [signal("cursor", "ann", b"ann@4")]
            );
        }

        // A second stream of bob: the others hear nothing (the next thing ann gets is an
        // op, not a JOIN), and it learns who is here.
        let mut bob2 = open_document(&server, DOC, "bob", 4).await;
        assert_eq!(
            bob2.next_set(2).await,
            [signal("join", "ann", b""), signal("join", "cat", b"")]
        );
        let fifth = submitted(&mut client, op(DOC, "dan", "d-2", b"five", None)).await;
        for w in [&mut ann.watcher, &mut bob, &mut cat, &mut bob2] {
            assert_eq!(w.next().await, fifth, "{}", w.who);
        }
        // Its end is no LEAVE: bob is still here.
        drop(bob2);
        let sixth = submitted(&mut client, op(DOC, "dan", "d-3", b"six", None)).await;
        for w in [&mut ann.watcher, &mut bob, &mut cat] {
            assert_eq!(w.next().await, sixth, "{}", w.who);
        }
        // His last one goes: a LEAVE for the others.
        drop(bob);
        assert_eq!(
            rows(&ann.watcher.next_n(1).await),
            [signal("leave", "bob", b"")]
        );
        assert_eq!(rows(&cat.next_n(1).await), [signal("leave", "bob", b"")]);
        drop(cat);
        assert_eq!(
            rows(&ann.watcher.next_n(1).await),
            [signal("leave", "cat", b"")]
        );
        ann.watcher.quiet().await;
        assert_eq!(
            rows(&stored_log(&server, DOC).await),
            [
                ops[0].clone(),
                ops[1].clone(),
                stored_op(3, "dan", "d-1", b"three"),
                stored_op(4, "ann", "a-3", b"four"),
                stored_op(5, "dan", "d-2", b"five"),
                stored_op(6, "dan", "d-3", b"six"),
            ],
            "only operations are stored"
        );
        drop(ann);
        wait_for("no hub receivers", Duration::from_secs(15), || {
            server.log.hub.receiver_count() == 0
        })
        .await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. SubmitCollaborationEvent answers as Collaborate does
// ---------------------------------------------------------------------------------------------

store_tests!(submit_answers_operations_as_collaborate_does_and_relays_cursors);

/// An operation on the current base is stored and returned as every participant receives it;
/// a stale base gets REJECTED carrying the head and its base, for the caller alone, stored
/// nowhere; a retry of a stored id is that operation again, even with its now stale base; the
/// same id with other content is ALREADY_EXISTS. A cursor is returned as relayed (no id, no
/// version), reaches the other users' streams and none of its sender's, and is never stored.
async fn submit_answers_operations_as_collaborate_does_and_relays_cursors(kind: StoreKind) {
    const DOC: &str = "browser-submit";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "SubmitCollaborationEvent", async {
        let mut client = server.client().await;
        let mut ann = Participant::join(&server, DOC, "ann", 0).await;
        let mut bob = open_document(&server, DOC, "bob", 0).await;
        assert_eq!(rows(&bob.next_n(1).await), [signal("join", "ann", b"")]);
        assert_eq!(
            rows(&ann.watcher.next_n(1).await),
            [signal("join", "bob", b"")]
        );

        // A base of 0 on an empty document matches.
        let first = submitted(&mut client, op(DOC, "bob", "b-1", b"first", Some(0))).await;
        assert_eq!(row(&first), stored_op(1, "bob", "b-1", b"first"));
        assert_eq!(first.document_id, DOC);
        assert!(first.timestamp.is_some());
        assert_eq!(ann.watcher.next().await, first);
        assert_eq!(bob.next().await, first);

        // A stale base: REJECTED with the head, for the caller alone.
        let rejected = submitted(&mut client, op(DOC, "bob", "b-2", b"stale", Some(0))).await;
        assert_eq!(
            (
                kind_name(rejected.r#type),
                rejected.sequence,
                rejected.base_sequence,
                rejected.id.as_str(),
                rejected.user_id.as_str(),
                rejected.document_id.as_str(),
                rejected.payload.as_slice()
            ),
            ("rejected", 1, Some(0), "b-2", "bob", DOC, &b""[..])
        );
        assert!(rejected.timestamp.is_some());
        // The retry of b-1 with its old base: the stored op, not a rejection.
        let again = submitted(&mut client, op(DOC, "bob", "b-1", b"first", Some(0))).await;
        assert_eq!(again, first, "the stored operation, returned again");
        let status = submit(&mut client, op(DOC, "bob", "b-1", b"changed", None))
            .await
            .expect_err("other content");
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        // Neither the rejection nor the retry reached anyone: the next op comes next.
        let second = submitted(&mut client, op(DOC, "bob", "b-3", b"second", Some(1))).await;
        assert_eq!(row(&second), stored_op(2, "bob", "b-3", b"second"));
        assert_eq!(ann.watcher.next().await, second);
        assert_eq!(bob.next().await, second);

        // A cursor from bob: returned as relayed, heard by ann; not by bob's own stream, whose
        // first relayed signal is then ann's cursor (from the same room channel).
        let relayed = submitted(&mut client, cursor(DOC, "bob", b"bob@2")).await;
        assert_eq!(row(&relayed), signal("cursor", "bob", b"bob@2"));
        assert_eq!(relayed.document_id, DOC);
        assert!(relayed.timestamp.is_some() && relayed.base_sequence.is_none());
        assert_eq!(ann.watcher.next().await, relayed);
        ann.send(cursor(DOC, "ann", b"ann@2")).await;
        assert_eq!(
            rows(&bob.next_n(1).await),
            [signal("cursor", "ann", b"ann@2")]
        );
        // A cursor from a user with no stream reaches everyone.
        let eves = submitted(&mut client, cursor(DOC, "eve", b"eve@0")).await;
        assert_eq!(ann.watcher.next().await, eves);
        assert_eq!(bob.next().await, eves);
        bob.quiet().await;

        assert_eq!(
            rows(&stored_log(&server, DOC).await),
            [
                stored_op(1, "bob", "b-1", b"first"),
                stored_op(2, "bob", "b-3", b"second")
            ],
            "one op per id, no rejection, no cursor"
        );
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Bad input
// ---------------------------------------------------------------------------------------------

/// Collaborate's tables for the browser calls: every refused OpenDocument gets the code
/// Collaborate gives the same JOIN and announces nothing; every refused
/// SubmitCollaborationEvent gets the code Collaborate gives the same later event (JOIN and
/// LEAVE, which belong to a stream, are INVALID_ARGUMENT too) and stores or relays nothing.
/// The payload cap is inclusive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_browser_collab_input_gets_the_exact_status_and_stores_nothing() {
    const DOC: &str = "browser-bad-doc";
    let server = TestServer::start().await;
    within(60, "bad input", async {
        let mut client = server.client().await;
        let mut ann = Participant::join(&server, DOC, "ann", 0).await;
        ann.send(op(DOC, "ann", "base-1", b"base", None)).await;
        assert_eq!(
            rows(&ann.watcher.next_n(1).await),
            [stored_op(1, "ann", "base-1", b"base")]
        );
        let long = "x".repeat(129);

        let open = |f: &dyn Fn(&mut OpenDocumentRequest)| {
            let mut r = open_request(DOC, "zed", 0);
            f(&mut r);
            r
        };
        let open_table: Vec<(&str, OpenDocumentRequest, Code)> = vec![
            (
                "missing document_id",
                open(&|r| r.document_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "missing user_id",
                open(&|r| r.user_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "document_id of 129 bytes",
                open(&|r| r.document_id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "document_id with a control char",
                open(&|r| r.document_id = "d\n".into()),
                Code::InvalidArgument,
            ),
            (
                "user_id with a control char",
                open(&|r| r.user_id = "z\u{0}".into()),
                Code::InvalidArgument,
            ),
            (
                "user_id of 129 bytes",
                open(&|r| r.user_id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "after_sequence past the head",
                open(&|r| r.after_sequence = 2),
                Code::OutOfRange,
            ),
            (
                "after_sequence far past the head",
                open(&|r| r.after_sequence = u64::MAX),
                Code::OutOfRange,
            ),
        ];
        for (what, request, expected) in open_table {
            let status = client
                .open_document(request)
                .await
                .map(|_| ())
                .expect_err(what);
            assert_eq!(status.code(), expected, "OpenDocument {what}: {status:?}");
            assert!(
                !status.message().contains("SELECT") && !status.message().contains('/'),
                "{what}: the message leaks internals: {}",
                status.message()
            );
        }

        let over = vec![7u8; 64 * 1024 + 1];
        let later = |f: &dyn Fn(&mut CollaborationEvent)| {
            let mut e = op(DOC, "zed", "", b"edit", None);
            f(&mut e);
            e
        };
        let submit_table: Vec<(&str, CollaborationEvent, Code)> = vec![
            (
                "missing document_id",
                later(&|e| e.document_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "missing user_id",
                later(&|e| e.user_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "document_id of 129 bytes",
                later(&|e| e.document_id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "user_id with a control char",
                later(&|e| e.user_id = "z\u{0}".into()),
                Code::InvalidArgument,
            ),
            (
                "JOIN",
                later(&|e| e.r#type = Join as i32),
                Code::InvalidArgument,
            ),
            (
                "LEAVE",
                later(&|e| e.r#type = Leave as i32),
                Code::InvalidArgument,
            ),
            (
                "REJECTED from a client",
                later(&|e| e.r#type = Rejected as i32),
                Code::InvalidArgument,
            ),
            (
                "UNSPECIFIED",
                later(&|e| e.r#type = 0),
                Code::InvalidArgument,
            ),
            (
                "unknown type 99",
                later(&|e| e.r#type = 99),
                Code::InvalidArgument,
            ),
            (
                "negative type",
                later(&|e| e.r#type = -1),
                Code::InvalidArgument,
            ),
            (
                "op payload over 64 KiB",
                later(&|e| e.payload = over.clone()),
                Code::ResourceExhausted,
            ),
            (
                "cursor payload over 64 KiB",
                later(&|e| {
                    e.r#type = Cursor as i32;
                    e.payload = over.clone()
                }),
                Code::ResourceExhausted,
            ),
            (
                "op id with whitespace",
                later(&|e| e.id = "an id".into()),
                Code::InvalidArgument,
            ),
            (
                "op id of 129 bytes",
                later(&|e| e.id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "op id reused with other content",
                later(&|e| e.id = "base-1".into()),
                Code::AlreadyExists,
            ),
        ];
        for (what, bad, expected) in submit_table {
            let status = submit(&mut client, bad).await.expect_err(what);
            assert_eq!(
                status.code(),
                expected,
                "SubmitCollaborationEvent {what}: {status:?}"
            );
            assert!(
                !status.message().contains("SELECT") && !status.message().contains('/'),
                "{what}: the message leaks internals: {}",
                status.message()
            );
        }
        assert_eq!(
            rows(&stored_log(&server, DOC).await),
            [stored_op(1, "ann", "base-1", b"base")],
            "a refused call stored something"
        );

        // Nothing refused reached ann (no JOIN, no cursor, no op): her next events are the
        // largest cursor and the largest op, which are accepted (the cap is inclusive).
        let big_cursor = submitted(&mut client, cursor(DOC, "zed", &vec![2u8; 64 * 1024])).await;
        assert_eq!(ann.watcher.next().await, big_cursor);
        let big_op = submitted(&mut client, op(DOC, "zed", "", &vec![1u8; 64 * 1024], None)).await;
        assert_eq!((big_op.sequence, big_op.payload.len()), (2, 64 * 1024));
        assert_eq!(ann.watcher.next().await, big_op);
        ann.watcher.quiet().await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Access, with auth on
// ---------------------------------------------------------------------------------------------

const SECRET: &str = "an hs256 secret of at least 32 bytes, for tests";

fn token(sub: &str, role: Role) -> String {
    mint_hs256_with(
        SECRET.as_bytes(),
        sub,
        role,
        Duration::from_secs(3600),
        &TokenGrants::default(),
    )
    .expect("mint a token")
}

async fn auth_server(adjust: impl FnOnce(&mut streamhub::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
        c.public_documents = vec!["wiki".into()];
        adjust(c);
    })
    .await
}

async fn open_as(
    client: &mut AuthClient,
    doc: &str,
    user: &str,
) -> Result<Streaming<CollaborationEvent>, Status> {
    client
        .open_document(open_request(doc, user, 0))
        .await
        .map(|r| r.into_inner())
}

async fn next_of(stream: &mut Streaming<CollaborationEvent>) -> CollaborationEvent {
    match tokio::time::timeout(READ_LIMIT, stream.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

/// With auth on, the browser calls follow Collaborate's access rules before anything is stored
/// or announced: a user outside `dm#alice,bob` is refused with PERMISSION_DENIED (no JOIN, no
/// op, no cursor reaches a participant), a user token cannot act as another user, an empty
/// user_id becomes the token's user, and a service may act for anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_collab_calls_follow_the_access_rules_before_storing_anything() {
    const DM: &str = "dm#alice,bob";
    let server = auth_server(|_| {}).await;
    within(60, "access", async {
        let mut alice = client_as(server.addr, &token("alice", Role::User)).await;
        let mut bob = client_as(server.addr, &token("bob", Role::User)).await;
        let mut carol = client_as(server.addr, &token("carol", Role::User)).await;
        let mut admin = client_as(server.addr, &token("backend", Role::Service)).await;

        let mut alices = open_as(&mut alice, DM, "").await.expect("alice opens");
        for (what, result) in [
            (
                "carol OpenDocument",
                open_as(&mut carol, DM, "carol").await.map(|_| ()),
            ),
            (
                "carol OpenDocument, no user_id",
                open_as(&mut carol, DM, "").await.map(|_| ()),
            ),
            (
                "bob OpenDocument as alice",
                open_as(&mut bob, DM, "alice").await.map(|_| ()),
            ),
            (
                "carol OpenDocument in the wiki as alice",
                open_as(&mut carol, "wiki", "alice").await.map(|_| ()),
            ),
        ] {
            expect_code(what, result, Code::PermissionDenied);
        }
        for (what, event) in [
            ("carol op", op(DM, "carol", "c-1", b"let me in", None)),
            (
                "carol op, no user_id",
                op(DM, "", "c-2", b"let me in", None),
            ),
            ("carol cursor", cursor(DM, "carol", b"carol@0")),
        ] {
            expect_code(
                what,
                carol.submit_collaboration_event(event).await,
                Code::PermissionDenied,
            );
        }
        expect_code(
            "bob as alice",
            bob.submit_collaboration_event(op(DM, "alice", "x", b"i am alice", None))
                .await,
            Code::PermissionDenied,
        );

        // Nothing refused reached alice: the first thing she hears is bob's JOIN.
        let mut bobs = open_as(&mut bob, DM, "").await.expect("bob opens");
        assert_eq!(row(&next_of(&mut alices).await), signal("join", "bob", b""));
        assert_eq!(row(&next_of(&mut bobs).await), signal("join", "alice", b""));
        // Bob edits as himself, a service for alice.
        let by_bob = bob
            .submit_collaboration_event(op(DM, "", "b-1", b"from bob", Some(0)))
            .await
            .expect("bob submits")
            .into_inner();
        assert_eq!(row(&by_bob), stored_op(1, "bob", "b-1", b"from bob"));
        let for_alice = admin
            .submit_collaboration_event(op(DM, "alice", "s-1", b"for alice", None))
            .await
            .expect("a service submits for alice")
            .into_inner();
        assert_eq!(row(&for_alice), stored_op(2, "alice", "s-1", b"for alice"));
        assert_eq!(next_of(&mut alices).await, by_bob);
        assert_eq!(next_of(&mut alices).await, for_alice);
        assert_eq!(
            rows(&stored_log(&server, DM).await),
            [
                stored_op(1, "bob", "b-1", b"from bob"),
                stored_op(2, "alice", "s-1", b"for alice")
            ]
        );
        assert_eq!(stored_log(&server, "wiki").await, []);

        // A public document: carol may, as herself.
        let mut carols = open_as(&mut carol, "wiki", "")
            .await
            .expect("carol opens the wiki");
        let mine = carol
            .submit_collaboration_event(op("wiki", "", "w-1", b"hello", None))
            .await
            .expect("carol edits the wiki")
            .into_inner();
        assert_eq!(row(&mine), stored_op(1, "carol", "w-1", b"hello"));
        assert_eq!(next_of(&mut carols).await, mine);
    })
    .await;
    server.stop().await;
}

/// OpenDocument counts against `--max-subscriptions-per-user`: with the limit of 1 held by an
/// OpenDocument stream, another OpenDocument and a Collaborate stream are RESOURCE_EXHAUSTED
/// and announce nothing, SubmitCollaborationEvent (no stream) still works, and the dropped
/// stream frees its unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_document_counts_against_the_per_user_subscription_limit() {
    let server = auth_server(|c| c.max_subscriptions_per_user = 1).await;
    within(60, "per-user limit", async {
        let mut alice = client_as(server.addr, &token("alice", Role::User)).await;
        let mut bob = client_as(server.addr, &token("bob", Role::User)).await;
        let first = open_as(&mut alice, "wiki", "").await.expect("1st");
        assert_eq!(server.log.user_subscriptions.held_by("alice"), 1);
        let mut bobs = open_as(&mut bob, "wiki", "").await.expect("bob");
        assert_eq!(row(&next_of(&mut bobs).await), signal("join", "alice", b""));

        expect_code(
            "2nd: OpenDocument",
            open_as(&mut alice, "notes#alice", "").await.map(|_| ()),
            Code::ResourceExhausted,
        );
        let (tx, rx) = mpsc::channel(1);
        tx.send(CollaborationEvent {
            document_id: "notes#alice".into(),
            r#type: Join as i32,
            ..Default::default()
        })
        .await
        .expect("queue");
        expect_code(
            "2nd: Collaborate",
            alice.collaborate(ReceiverStream::new(rx)).await.map(|_| ()),
            Code::ResourceExhausted,
        );
        // Not a stream: not counted. Its op is the next thing bob gets (no JOIN came first).
        let edit = alice
            .submit_collaboration_event(op("wiki", "", "a-1", b"edit", None))
            .await
            .expect("SubmitCollaborationEvent is no subscription")
            .into_inner();
        assert_eq!(next_of(&mut bobs).await, edit);

        drop(first);
        assert_eq!(
            row(&next_of(&mut bobs).await),
            signal("leave", "alice", b"")
        );
        wait_for("alice's dropped stream released", READ_LIMIT, || {
            server.log.user_subscriptions.held_by("alice") == 0
        })
        .await;
        let _again = open_as(&mut alice, "notes#alice", "").await.expect("again");
        assert_eq!(server.log.user_subscriptions.held_by("alice"), 1);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Across replicas
// ---------------------------------------------------------------------------------------------

/// Ann has the document open through replica A, bob through B. Each gets the other's JOIN; an
/// operation submitted through B reaches ann on A as returned; a stale base through A gets
/// REJECTED with the head; a cursor through B reaches ann, and bob's own through B skips his
/// stream; dropping bob's stream on B is a LEAVE for ann on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_collab_calls_work_across_replicas() {
    const DOC: &str = "browser-replica-doc";
    let Some((a, b)) = TestServer::replicas(|_| {}).await else {
        return;
    };
    within(90, "across replicas", async {
        let mut through_a = a.client().await;
        let mut through_b = b.client().await;
        let mut ann = open_document(&a, DOC, "ann", 0).await;
        let mut bob = open_document(&b, DOC, "bob", 0).await;
        assert_eq!(rows(&bob.next_n(1).await), [signal("join", "ann", b"")]);
        assert_eq!(rows(&ann.next_n(1).await), [signal("join", "bob", b"")]);

        let from_b = submitted(&mut through_b, op(DOC, "bob", "b-1", b"through B", Some(0))).await;
        assert_eq!(row(&from_b), stored_op(1, "bob", "b-1", b"through B"));
        assert_eq!(ann.next().await, from_b);
        assert_eq!(bob.next().await, from_b);
        let stale = submitted(&mut through_a, op(DOC, "ann", "a-1", b"stale", Some(0))).await;
        assert_eq!(
            (kind_name(stale.r#type), stale.sequence, stale.base_sequence),
            ("rejected", 1, Some(0))
        );

        // Bob's cursor through B skips his stream; cat's reaches both: bob's first signal is
        // cat's.
        let own = submitted(&mut through_b, cursor(DOC, "bob", b"bob@1")).await;
        assert_eq!(ann.next().await, own);
        let cats = submitted(&mut through_b, cursor(DOC, "cat", b"cat@1")).await;
        assert_eq!(ann.next().await, cats);
        assert_eq!(bob.next().await, cats);
        // Ann's through B skips her stream on A: her next event is the op after it.
        let anns = submitted(&mut through_b, cursor(DOC, "ann", b"ann@1")).await;
        assert_eq!(bob.next().await, anns);
        let from_a = submitted(&mut through_a, op(DOC, "ann", "a-2", b"through A", Some(1))).await;
        assert_eq!(row(&from_a), stored_op(2, "ann", "a-2", b"through A"));
        assert_eq!(bob.next().await, from_a);
        assert_eq!(ann.next().await, from_a);

        drop(bob);
        assert_eq!(rows(&ann.next_n(1).await), [signal("leave", "bob", b"")]);
        assert_eq!(
            rows(&stored_log(&a, DOC).await),
            [
                stored_op(1, "bob", "b-1", b"through B"),
                stored_op(2, "ann", "a-2", b"through A")
            ]
        );
    })
    .await;
    a.stop().await;
    b.stop().await;
}
