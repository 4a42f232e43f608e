//! Collaboration against the real server: five editors racing with and without
//! `base_sequence` (one op order for all, versions contiguous, stale bases REJECTED and stored
//! nowhere), late joiners, a restart that replays the log identically, presence (JOIN, CURSOR,
//! LEAVE, also on abrupt ends), idempotent operation ids, and a table of bad inputs with exact
//! codes. Every participant has its own connection and goes through the generated client.
//!
//! Every test runs on SQLite and on PostgreSQL (`store_tests!`: `<name>::sqlite`,
//! `<name>::postgres`; the PostgreSQL one skips when it is unreachable).

mod common;

use common::collab::*;
use common::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use streamhub::proto::{CollaborationEvent, CollaborationEventType};
use tokio::sync::{Barrier, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::{Code, Status};

use CollaborationEventType::{Cursor, Join, Leave, Operation, Rejected};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How long one expected event may take to arrive before the test fails.
const READ_LIMIT: Duration = Duration::from_secs(15);

fn join_event(doc: &str, user: &str, version: u64) -> CollaborationEvent {
    CollaborationEvent {
        document_id: doc.into(),
        user_id: user.into(),
        r#type: Join as i32,
        sequence: version,
        ..Default::default()
    }
}

fn versions(es: &[CollaborationEvent]) -> Vec<u64> {
    es.iter().map(|e| e.sequence).collect()
}

/// Opens a Collaborate stream whose first event is `first`.
async fn open(
    client: &mut Client,
    first: CollaborationEvent,
) -> Result<
    (
        mpsc::Sender<CollaborationEvent>,
        Streaming<CollaborationEvent>,
    ),
    Status,
> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.expect("queue the first event");
    let replies = client
        .collaborate(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, replies))
}

/// One participant: one Collaborate stream on its own connection.
struct Participant {
    doc: String,
    user: String,
    tx: mpsc::Sender<CollaborationEvent>,
    rx: Streaming<CollaborationEvent>,
    client: Client,
}

impl Participant {
    async fn join(server: &TestServer, doc: &str, user: &str, version: u64) -> Participant {
        Self::join_via(server.client().await, doc, user, version).await
    }

    async fn join_via(mut client: Client, doc: &str, user: &str, version: u64) -> Participant {
        let (tx, rx) = open(&mut client, join_event(doc, user, version))
            .await
            .unwrap_or_else(|s| panic!("{user} could not join: {s:?}"));
        Participant {
            doc: doc.into(),
            user: user.into(),
            tx,
            rx,
            client,
        }
    }

    async fn send(&self, event: CollaborationEvent) {
        self.tx.send(event).await.expect("request stream open");
    }

    async fn op(&self, id: &str, payload: &[u8], base: Option<u64>) {
        self.send(op(&self.doc, &self.user, id, payload, base))
            .await;
    }

    async fn next_item(&mut self) -> Option<Result<CollaborationEvent, Status>> {
        match tokio::time::timeout(READ_LIMIT, self.rx.next()).await {
            Ok(item) => item,
            Err(_) => panic!("{}: nothing arrived within {READ_LIMIT:?}", self.user),
        }
    }

    async fn next(&mut self) -> CollaborationEvent {
        match self.next_item().await {
            Some(Ok(e)) => {
                assert_eq!(e.document_id, self.doc, "document of {e:?}");
                assert!(e.timestamp.is_some(), "timestamp of {e:?}");
                e
            }
            other => panic!("{}: expected an event, got {other:?}", self.user),
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

    /// Asserts that nothing arrives for a moment.
    async fn quiet(&mut self) {
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), self.rx.next()).await {
            panic!("{}: expected nothing, got {item:?}", self.user);
        }
    }

    /// Half-closes and reads the rest, which must end with OK.
    async fn finish(self) -> Vec<CollaborationEvent> {
        let Participant { tx, rx, user, .. } = self;
        drop(tx);
        read_to_end(rx, &user).await
    }

    /// Reads until the stream fails; returns the status and checks that the stream then ends.
    async fn failure(mut self) -> (Vec<CollaborationEvent>, Status) {
        let mut before = Vec::new();
        loop {
            match self.next_item().await {
                Some(Ok(e)) => before.push(e),
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
}

/// Reads a stream to its end, which must be OK.
async fn read_to_end(mut rx: Streaming<CollaborationEvent>, user: &str) -> Vec<CollaborationEvent> {
    let mut rest = Vec::new();
    loop {
        match tokio::time::timeout(READ_LIMIT, rx.next()).await {
            Ok(Some(Ok(e))) => rest.push(e),
            Ok(Some(Err(status))) => panic!("{user}: stream failed: {status:?}"),
            Ok(None) => return rest,
            Err(_) => panic!("{user}: stream did not end within {READ_LIMIT:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Concurrent editors
// ---------------------------------------------------------------------------------------------

/// What became of one submitted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Stored(u64),
    /// REJECTED, carrying the head.
    Rejected(u64),
}

/// One submitted operation: its id, base and fate.
type Submitted = (String, Option<u64>, Fate);

store_tests!(five_editors_at_once_see_one_order_and_stale_bases_are_rejected);
/// Five editors submit 100 operations each at the same time, every other one with
/// `base_sequence` set to the last version the editor saw. Every editor sees the same operations
/// in the same order with versions contiguous from 1; an op with a base is stored exactly at
/// base + 1 or REJECTED to its sender alone with the head; rejected ops are stored nowhere; a
/// late joiner with version N gets exactly the ops after N; after a restart the log replays
/// identically and versions continue.
async fn five_editors_at_once_see_one_order_and_stale_bases_are_rejected(kind: StoreKind) {
    const DOC: &str = "race-doc";
    const EDITORS: usize = 5;
    const EACH: usize = 100;
    let server = TestServer::start_on(kind, |_| {}).await;
    let (reference, head) = within(60, "editors", async {
        let mut editors: Vec<Participant> = Vec::new();
        for k in 0..EDITORS {
            let mut p = Participant::join(&server, DOC, &format!("u{k}"), 0).await;
            // Everyone already present, then the later arrivals, as JOINs.
            let mut expected: Vec<Row> = (0..k)
                .map(|j| signal("join", &format!("u{j}"), b""))
                .collect();
            expected.sort();
            assert_eq!(p.next_set(k).await, expected, "u{k} at join");
            for (j, earlier) in editors.iter_mut().enumerate() {
                assert_eq!(
                    rows(&earlier.next_n(1).await),
                    [signal("join", &format!("u{k}"), b"")],
                    "u{j} hears u{k}"
                );
            }
            editors.push(p);
        }

        let barrier = Arc::new(Barrier::new(EDITORS));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (k, editor) in editors.into_iter().enumerate() {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let Participant {
                    doc,
                    user,
                    tx,
                    mut rx,
                    client,
                } = editor;
                let seen = Arc::new(AtomicU64::new(0));
                let (fate_tx, mut fates) = mpsc::unbounded_channel::<(String, Fate)>();
                let reader = {
                    let (seen, user) = (seen.clone(), user.clone());
                    tokio::spawn(async move {
                        let mut ops = Vec::new();
                        let mut others = Vec::new();
                        loop {
                            let e = match tokio::time::timeout(READ_LIMIT, rx.next()).await {
                                Ok(Some(Ok(e))) => e,
                                Ok(Some(Err(status))) => panic!("{user}: {status:?}"),
                                Ok(None) => return (ops, others),
                                Err(_) => panic!("{user}: stalled"),
                            };
                            match CollaborationEventType::try_from(e.r#type) {
                                Ok(Operation) => {
                                    seen.store(e.sequence, Ordering::Release);
                                    if e.user_id == user {
                                        let _ =
                                            fate_tx.send((e.id.clone(), Fate::Stored(e.sequence)));
                                    }
                                    ops.push(e);
                                }
                                Ok(Rejected) => {
                                    assert_eq!(e.user_id, user, "REJECTED reached another user");
                                    assert!(e.payload.is_empty());
                                    let _ =
                                        fate_tx.send((e.id.clone(), Fate::Rejected(e.sequence)));
                                }
                                _ => others.push(e),
                            }
                        }
                    })
                };
                let mut submitted: Vec<Submitted> = Vec::new();
                for i in 0..EACH {
                    let id = format!("{user}-{i}");
                    let base = (i % 2 == 1).then(|| seen.load(Ordering::Acquire));
                    let payload = format!("{user} edit {i}").into_bytes();
                    tx.send(op(&doc, &user, &id, &payload, base))
                        .await
                        .expect("send");
                    let (got_id, fate) = tokio::time::timeout(READ_LIMIT, fates.recv())
                        .await
                        .expect("an answer in time")
                        .expect("reader alive");
                    assert_eq!(got_id, id, "{user}: answers come in submission order");
                    submitted.push((id, base, fate));
                }
                // Leave only when everyone is done, so each stream drains through the final
                // head.
                barrier.wait().await;
                drop(tx);
                let (ops, others) = reader.await.expect("reader");
                drop(client);
                (k, user, submitted, ops, others)
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("editor"));
        }
        let elapsed = started.elapsed();

        let all: Vec<&Submitted> = results.iter().flat_map(|r| r.2.iter()).collect();
        let accepted: Vec<&Submitted> = all
            .iter()
            .copied()
            .filter(|s| matches!(s.2, Fate::Stored(_)))
            .collect();
        let rejected: Vec<&Submitted> = all
            .iter()
            .copied()
            .filter(|s| matches!(s.2, Fate::Rejected(_)))
            .collect();
        let based_accepted = accepted.iter().filter(|s| s.1.is_some()).count();
        eprintln!(
            "editors: {} ops in {elapsed:?}: {} stored ({based_accepted} of them with a base), {} \
             rejected (debug build, shared machine)",
            all.len(),
            accepted.len(),
            rejected.len()
        );
        let head = accepted.len() as u64;
        assert_eq!(all.len(), EDITORS * EACH);
        // Both outcomes happened: the race is real.
        assert!(!rejected.is_empty(), "no stale base was rejected");
        assert!(based_accepted > 0, "no op with a base was stored");

        // One order for everyone, versions 1..=head.
        let reference = results[0].3.clone();
        assert_eq!(versions(&reference), (1..=head).collect::<Vec<_>>());
        for (k, user, _, ops, others) in &results {
            assert_eq!(ops, &reference, "{user} saw another order");
            // Presence while editing: only the LEAVEs of editors that finished first.
            for e in others {
                assert_eq!(kind_name(e.r#type), "leave", "u{k} got {e:?}");
            }
        }
        for (id, base, fate) in &all {
            match (base, fate) {
                // An unbased op is never rejected.
                (None, Fate::Rejected(h)) => panic!("{id} rejected without a base (head {h})"),
                (None, Fate::Stored(_)) => {}
                // Stored exactly on its base.
                (Some(b), Fate::Stored(v)) => assert_eq!(*v, b + 1, "{id} stored off its base"),
                // The head it was rejected at is newer than its base, and exists.
                (Some(b), Fate::Rejected(h)) => {
                    assert!(h > b && *h <= head, "{id}: base {b}, rejected at head {h}")
                }
            }
        }
        // The stored log is exactly the accepted ops, as delivered; no rejected id anywhere.
        let log = stored_log(&server, DOC).await;
        assert_eq!(log, reference);
        let log_ids: HashSet<&str> = log.iter().map(|e| e.id.as_str()).collect();
        let accepted_ids: HashSet<&str> = accepted.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(log_ids, accepted_ids);
        for (id, _, fate) in &accepted {
            let Fate::Stored(v) = fate else {
                unreachable!()
            };
            assert_eq!(reference[(*v - 1) as usize].id, *id);
        }
        for (id, _, _) in &rejected {
            assert!(!log_ids.contains(id.as_str()), "rejected {id} was stored");
        }

        // Late joiners get exactly the ops after their version.
        for version in [0, 1, head / 2, head - 1, head] {
            let late = Participant::join(&server, DOC, "late", version).await;
            let got = late.finish().await;
            assert_eq!(
                got,
                reference[version as usize..],
                "late joiner at {version}"
            );
        }
        (reference, head)
    })
    .await;

    // A participant still connected when the server stops gets UNAVAILABLE.
    let stayer = Participant::join(&server, DOC, "stayer", head).await;
    let home = server.home();
    let (_, (before, status)) = within(30, "stop", async {
        tokio::join!(server.stop(), stayer.failure())
    })
    .await;
    assert_eq!(before, []);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let server = TestServer::start_at(home, |_| {}).await;
    within(30, "after restart", async {
        let late = Participant::join(&server, DOC, "after-restart", 0).await;
        assert_eq!(
            late.finish().await,
            reference,
            "the log replays identically"
        );
        // Versions continue from the head; a base still has to match it.
        let mut p = Participant::join(&server, DOC, "u0", head).await;
        p.op("next-1", b"after restart", Some(head)).await;
        assert_eq!(
            rows(&p.next_n(1).await),
            [stored_op(head + 1, "u0", "next-1", b"after restart")]
        );
        p.op("next-2", b"stale", Some(head)).await;
        let rejected = p.next().await;
        assert_eq!(
            (
                kind_name(rejected.r#type),
                rejected.sequence,
                rejected.id.as_str()
            ),
            ("rejected", head + 1, "next-2")
        );
        assert_eq!(rejected.base_sequence, Some(head));
        assert_eq!(p.finish().await, []);
        assert_eq!(stored_log(&server, DOC).await.len() as u64, head + 1);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Presence
// ---------------------------------------------------------------------------------------------

store_tests!(presence_joins_cursors_and_leaves_reach_the_others);
/// A newcomer gets the replay, then a JOIN for each participant already present; the others get
/// its JOIN; CURSOR goes to the others only; a user's second stream adds no JOIN and its end no
/// LEAVE; a LEAVE goes out when a user's last stream ends: by LEAVE, by half-close, by an aborted
/// task or by a cut connection.
async fn presence_joins_cursors_and_leaves_reach_the_others(kind: StoreKind) {
    const DOC: &str = "presence-doc";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "presence", async {
        let mut ann = Participant::join(&server, DOC, "ann", 0).await;
        ann.op("a-1", b"one", None).await;
        ann.op("a-2", b"two", Some(1)).await;
        let ops = vec![
            stored_op(1, "ann", "a-1", b"one"),
            stored_op(2, "ann", "a-2", b"two"),
        ];
        assert_eq!(rows(&ann.next_n(2).await), ops);

        // The replay first, then who is here.
        let mut bob = Participant::join(&server, DOC, "bob", 0).await;
        let mut expected = ops.clone();
        expected.push(signal("join", "ann", b""));
        assert_eq!(rows(&bob.next_n(3).await), expected);
        assert_eq!(rows(&ann.next_n(1).await), [signal("join", "bob", b"")]);

        let proxy = Cuttable::to(server.addr).await;
        let mut cat = Participant::join_via(proxy.client().await, DOC, "cat", 2).await;
        assert_eq!(
            cat.next_set(2).await,
            [signal("join", "ann", b""), signal("join", "bob", b"")]
        );
        assert_eq!(rows(&ann.next_n(1).await), [signal("join", "cat", b"")]);
        assert_eq!(rows(&bob.next_n(1).await), [signal("join", "cat", b"")]);

        // Cursors go to the others only: bob's first relayed signal is ann's cursor, which would
        // come after his own had he heard it.
        bob.send(cursor(DOC, "bob", b"bob@7")).await;
        assert_eq!(
            rows(&ann.next_n(1).await),
            [signal("cursor", "bob", b"bob@7")]
        );
        assert_eq!(
            rows(&cat.next_n(1).await),
            [signal("cursor", "bob", b"bob@7")]
        );
        ann.send(cursor(DOC, "ann", b"ann@1")).await;
        assert_eq!(
            rows(&bob.next_n(1).await),
            [signal("cursor", "ann", b"ann@1")]
        );
        assert_eq!(
            rows(&cat.next_n(1).await),
            [signal("cursor", "ann", b"ann@1")]
        );
        ann.quiet().await;

        // A second stream of ann: the others hear nothing, it learns who is here.
        let mut ann2 = Participant::join(&server, DOC, "ann", 2).await;
        assert_eq!(
            ann2.next_set(2).await,
            [signal("join", "bob", b""), signal("join", "cat", b"")]
        );
        bob.quiet().await;
        // Ann's second stream's cursor reaches her first stream too: it is another stream.
        ann2.send(cursor(DOC, "ann", b"ann@2")).await;
        assert_eq!(
            rows(&ann.next_n(1).await),
            [signal("cursor", "ann", b"ann@2")]
        );
        assert_eq!(
            rows(&bob.next_n(1).await),
            [signal("cursor", "ann", b"ann@2")]
        );
        assert_eq!(
            rows(&cat.next_n(1).await),
            [signal("cursor", "ann", b"ann@2")]
        );
        // Its end is no LEAVE: ann is still here.
        assert_eq!(ann2.finish().await, []);
        bob.quiet().await;

        // Cat's connection is cut: the others get her LEAVE.
        proxy.cut();
        assert_eq!(rows(&ann.next_n(1).await), [signal("leave", "cat", b"")]);
        assert_eq!(rows(&bob.next_n(1).await), [signal("leave", "cat", b"")]);
        assert!(matches!(cat.next_item().await, Some(Err(_))));

        // Dan's task is aborted mid-stream: a LEAVE too.
        let mut dan = Participant::join(&server, DOC, "dan", 2).await;
        assert_eq!(
            dan.next_set(2).await,
            [signal("join", "ann", b""), signal("join", "bob", b"")]
        );
        assert_eq!(rows(&ann.next_n(1).await), [signal("join", "dan", b"")]);
        assert_eq!(rows(&bob.next_n(1).await), [signal("join", "dan", b"")]);
        // Aborted once it is reading (it says so), not after a guessed pause.
        let (reading, started) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn(async move {
            let mut dan = dan;
            let _ = reading.send(());
            while let Some(Ok(_)) = dan.rx.next().await {}
            dan
        });
        within(15, "the holder task starts", started)
            .await
            .expect("holder started");
        holder.abort();
        assert_eq!(rows(&ann.next_n(1).await), [signal("leave", "dan", b"")]);
        assert_eq!(rows(&bob.next_n(1).await), [signal("leave", "dan", b"")]);

        // Bob sends LEAVE: his stream ends with OK, ann gets his LEAVE.
        bob.send(CollaborationEvent {
            r#type: Leave as i32,
            ..Default::default()
        })
        .await;
        assert_eq!(read_to_end(bob.rx, "bob").await, []);
        assert_eq!(rows(&ann.next_n(1).await), [signal("leave", "bob", b"")]);
        ann.quiet().await;
        // Nothing of presence was stored.
        assert_eq!(rows(&stored_log(&server, DOC).await), ops);
        assert_eq!(ann.finish().await, []);
        wait_for("no hub receivers", Duration::from_secs(5), || {
            server.log.hub.receiver_count() == 0
        })
        .await;
    })
    .await;
    server.stop().await;
}

store_tests!(a_participant_that_falls_behind_resynchronises_presence);
/// A participant that stops reading while a flood of cursors (far more than the HTTP/2 windows
/// and the room's signal buffer hold) goes by, and while others join and leave, loses stale
/// cursors but not its view of who is present: reading again, the JOIN and LEAVE events it gets
/// add up to exactly the users present, and it is live again afterwards. Nothing blocks the
/// others meanwhile.
async fn a_participant_that_falls_behind_resynchronises_presence(kind: StoreKind) {
    const DOC: &str = "lag-doc";
    const CURSORS: usize = 300;
    let server = TestServer::start_on(kind, |c| c.presence_capacity = 4).await;
    within(60, "presence lag", async {
        let mut ann = Participant::join(&server, DOC, "ann", 0).await;
        let mut sam = Participant::join(&server, DOC, "sam", 0).await;
        assert_eq!(rows(&ann.next_n(1).await), [signal("join", "sam", b"")]);
        let mut bob = Participant::join(&server, DOC, "bob", 0).await;
        assert_eq!(rows(&ann.next_n(1).await), [signal("join", "bob", b"")]);
        assert_eq!(
            bob.next_set(2).await,
            [signal("join", "ann", b""), signal("join", "sam", b"")]
        );

        // Sam reads nothing from here. 300 cursors of 32 KiB (9.6 MB) go by, and meanwhile cat
        // joins and ann leaves. Each flood ends with an operation of bob's: its echo on bob's
        // stream proves the session has relayed every cursor before it (one session handles its
        // events in order), so what comes next comes after the flood, not amid it.
        let big = vec![9u8; 32 * 1024];
        async fn flood_done(bob: &mut Participant, id: &str) {
            bob.op(id, id.as_bytes(), None).await;
            loop {
                let e = bob.next().await;
                if e.r#type == Operation as i32 && e.id == id {
                    return;
                }
            }
        }
        // Reads `p` (so that it never holds anyone back) until `done` says it has what it
        // waits for.
        fn reader(
            mut p: Participant,
            mut done: impl FnMut(&CollaborationEvent) -> bool + Send + 'static,
        ) -> tokio::task::JoinHandle<Participant> {
            tokio::spawn(async move {
                loop {
                    let e = p.next().await;
                    if done(&e) {
                        return p;
                    }
                }
            })
        }
        // Ann reads until she has cat's JOIN and the first flood's operation, the last things
        // that happen before she leaves. As a signal the JOIN comes after every cursor of the
        // first flood; announced after a lag, the cursors before it are gone. The operation
        // comes by the log, which may be later than the JOIN. Then nothing is left for her.
        let (mut cat_joined, mut flood_1) = (false, false);
        let ann_reads = reader(ann, move |e| {
            cat_joined |= e.r#type == Join as i32 && e.user_id == "cat";
            flood_1 |= e.r#type == Operation as i32 && e.id == "flood-1";
            cat_joined && flood_1
        });
        for _ in 0..CURSORS / 2 {
            bob.send(cursor(DOC, "bob", &big)).await;
        }
        flood_done(&mut bob, "flood-1").await;
        let cat = Participant::join(&server, DOC, "cat", 0).await;
        // Cat reads until the end of the second flood (its operation is durable: never lost).
        let cat_reads = reader(cat, |e| e.r#type == Operation as i32 && e.id == "flood-2");
        let ann = ann_reads.await.expect("ann");
        assert_eq!(ann.finish().await, []);
        for _ in 0..CURSORS / 2 {
            bob.send(cursor(DOC, "bob", &big)).await;
        }
        flood_done(&mut bob, "flood-2").await;

        // Sam reads again, until it has both operations and its view of who is here has
        // settled on bob and cat. Sam lagged (the check below), so its presence was resynced
        // after the floods were relayed: no stale cursor can follow.
        let mut transcript = Vec::new();
        let mut present: HashSet<String> = HashSet::new();
        let want = HashSet::from(["bob".to_string(), "cat".to_string()]);
        let mut ops = 0;
        while ops < 2 || present != want {
            let e = match tokio::time::timeout(READ_LIMIT, sam.rx.next()).await {
                Ok(Some(Ok(e))) => e,
                Ok(other) => panic!("sam: expected an event, got {other:?}"),
                Err(_) => panic!(
                    "sam's view stayed at {present:?} with {ops} of 2 operations for \
                     {READ_LIMIT:?}; expected {want:?}"
                ),
            };
            match CollaborationEventType::try_from(e.r#type) {
                Ok(Join) => assert!(
                    present.insert(e.user_id.clone()),
                    "JOIN of a present user: {e:?}"
                ),
                Ok(Leave) => assert!(present.remove(&e.user_id), "LEAVE of an absent user: {e:?}"),
                Ok(Operation) => ops += 1,
                Ok(Cursor) => {}
                _ => panic!("unexpected {e:?}"),
            }
            transcript.push(e);
        }
        let cursors = transcript
            .iter()
            .filter(|e| e.r#type == Cursor as i32)
            .count();
        assert_eq!(
            rows(
                &transcript
                    .iter()
                    .filter(|e| e.r#type == Operation as i32)
                    .cloned()
                    .collect::<Vec<_>>()
            ),
            [
                stored_op(1, "bob", "flood-1", b"flood-1"),
                stored_op(2, "bob", "flood-2", b"flood-2")
            ]
        );
        eprintln!("presence lag: sam got {cursors} of {CURSORS} cursors");
        assert!(
            cursors < CURSORS,
            "no cursor was lost: the flood did not lag"
        );

        // Live again.
        let cat = cat_reads.await.expect("cat");
        cat.send(cursor(DOC, "cat", b"cat@1")).await;
        assert_eq!(
            rows(&sam.next_n(1).await),
            [signal("cursor", "cat", b"cat@1")]
        );
        for p in [sam, bob, cat] {
            p.finish().await;
        }
    })
    .await;
    server.stop().await;
}

store_tests!(a_user_flapping_on_two_streams_is_announced_in_order);
/// One user opening and closing streams from two tasks at once: an observer hears its JOIN and
/// LEAVE alternate, never two of a kind in a row, ending with a LEAVE.
async fn a_user_flapping_on_two_streams_is_announced_in_order(kind: StoreKind) {
    const DOC: &str = "flap-doc";
    const CYCLES: usize = 25;
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "flapping", async {
        let mut watcher = Participant::join(&server, DOC, "watcher", 0).await;
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let mut client = server.client().await;
            tasks.push(tokio::spawn(async move {
                for _ in 0..CYCLES {
                    let (tx, rx) = open(&mut client, join_event(DOC, "flap", 0))
                        .await
                        .expect("join");
                    drop(tx);
                    read_to_end(rx, "flap").await;
                }
            }));
        }
        for task in tasks {
            task.await.expect("flapper");
        }
        // Every flap stream has ended, and a session announces its LEAVE before its stream
        // ends: all of flap's events are out. A marker joins now; its JOIN reaches the watcher
        // after all of them (one room channel, in order; after a lag, the resync announces
        // who is present, the marker included), so reading up to it reads them all.
        let marker = Participant::join(&server, DOC, "marker", 0).await;
        let mut heard = Vec::new();
        loop {
            let e = watcher.next().await;
            if e.user_id == "marker" {
                assert_eq!(kind_name(e.r#type), "join", "{e:?}");
                break;
            }
            assert_eq!(e.user_id, "flap");
            heard.push(kind_name(e.r#type));
        }
        assert!(
            heard.len() >= 2 && heard.len().is_multiple_of(2),
            "{heard:?}"
        );
        for (i, pair) in heard.chunks(2).enumerate() {
            assert_eq!(
                pair,
                ["join", "leave"],
                "events {} and {}",
                2 * i + 1,
                2 * i + 2
            );
        }
        assert_eq!(watcher.finish().await, []);
        drop(marker);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Idempotency
// ---------------------------------------------------------------------------------------------

store_tests!(a_resent_operation_id_is_stored_and_delivered_once);
/// A re-sent operation id is stored and delivered once, even when its base has gone stale
/// meanwhile; the same id with other content gets ALREADY_EXISTS. Ids are scoped to their
/// document: the same id in another document is that document's own operation.
async fn a_resent_operation_id_is_stored_and_delivered_once(kind: StoreKind) {
    const DOC: &str = "idem-doc";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "idempotency", async {
        let mut ann = Participant::join(&server, DOC, "ann", 0).await;
        // A base of 0 on an empty document matches.
        ann.op("op-1", b"first", Some(0)).await;
        assert_eq!(
            rows(&ann.next_n(1).await),
            [stored_op(1, "ann", "op-1", b"first")]
        );
        ann.op("op-2", b"second", None).await;
        assert_eq!(
            rows(&ann.next_n(1).await),
            [stored_op(2, "ann", "op-2", b"second")]
        );
        // The retry of op-1 carries its old base (0), stale now: still a duplicate, not a
        // rejection, and not delivered again.
        ann.op("op-1", b"first", Some(0)).await;
        ann.op("op-3", b"third", Some(2)).await;
        assert_eq!(
            rows(&ann.next_n(1).await),
            [stored_op(3, "ann", "op-3", b"third")]
        );
        ann.quiet().await;

        // Another stream of ann retries op-3 after a lost answer, from version 2.
        let mut again = Participant::join(&server, DOC, "ann", 2).await;
        again.op("op-3", b"third", Some(2)).await;
        assert_eq!(
            rows(&again.next_n(1).await),
            [stored_op(3, "ann", "op-3", b"third")]
        );
        again.quiet().await;

        again.op("op-1", b"changed", None).await;
        let (_, status) = again.failure().await;
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        let mut bob = Participant::join(&server, "other-doc", "bob", 0).await;
        bob.op("op-2", b"second", None).await;
        assert_eq!(
            rows(&bob.next_n(1).await),
            [stored_op(1, "bob", "op-2", b"second")]
        );
        assert_eq!(
            rows(&stored_log(&server, "other-doc").await),
            [stored_op(1, "bob", "op-2", b"second")]
        );
        ann.quiet().await;
        assert_eq!(
            rows(&stored_log(&server, DOC).await),
            [
                stored_op(1, "ann", "op-1", b"first"),
                stored_op(2, "ann", "op-2", b"second"),
                stored_op(3, "ann", "op-3", b"third"),
            ]
        );
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Bad input
// ---------------------------------------------------------------------------------------------

store_tests!(bad_collab_input_gets_the_exact_status_and_stores_nothing);
/// Every refused first event gets its exact code and has no effect (no JOIN reaches anyone);
/// every refused later event ends its stream with its exact code and stores nothing from there
/// on. The payload cap is inclusive.
async fn bad_collab_input_gets_the_exact_status_and_stores_nothing(kind: StoreKind) {
    const DOC: &str = "bad-doc";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "bad input", async {
        let mut client = server.client().await;
        let mut ann = Participant::join(&server, DOC, "ann", 0).await;
        ann.op("base-1", b"base", None).await;
        assert_eq!(versions(&ann.next_n(1).await), [1]);
        let over = vec![7u8; 64 * 1024 + 1];
        let long = "x".repeat(129);
        let first = |f: &dyn Fn(&mut CollaborationEvent)| {
            let mut e = join_event(DOC, "zed", 0);
            f(&mut e);
            e
        };

        let first_table: Vec<(&str, CollaborationEvent, Code)> = vec![
            (
                "missing document_id",
                first(&|e| e.document_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "missing user_id",
                first(&|e| e.user_id.clear()),
                Code::InvalidArgument,
            ),
            (
                "document_id of 129 bytes",
                first(&|e| e.document_id = long.clone()),
                Code::InvalidArgument,
            ),
            (
                "user_id with a control char",
                first(&|e| e.user_id = "z\u{0}".into()),
                Code::InvalidArgument,
            ),
            (
                "first event OPERATION",
                first(&|e| e.r#type = Operation as i32),
                Code::InvalidArgument,
            ),
            (
                "first event CURSOR",
                first(&|e| e.r#type = Cursor as i32),
                Code::InvalidArgument,
            ),
            (
                "first event LEAVE",
                first(&|e| e.r#type = Leave as i32),
                Code::InvalidArgument,
            ),
            (
                "first event REJECTED",
                first(&|e| e.r#type = Rejected as i32),
                Code::InvalidArgument,
            ),
            (
                "first event UNSPECIFIED",
                first(&|e| e.r#type = 0),
                Code::InvalidArgument,
            ),
            (
                "first event of unknown type 99",
                first(&|e| e.r#type = 99),
                Code::InvalidArgument,
            ),
            (
                "JOIN payload over 64 KiB",
                first(&|e| e.payload = over.clone()),
                Code::ResourceExhausted,
            ),
            (
                "version past the head",
                first(&|e| e.sequence = 2),
                Code::OutOfRange,
            ),
            (
                "version far past the head",
                first(&|e| e.sequence = u64::MAX),
                Code::OutOfRange,
            ),
        ];
        for (what, event, expected) in first_table {
            let status = match open(&mut client, event).await {
                Ok(_) => panic!("{what}: accepted"),
                Err(status) => status,
            };
            assert_eq!(status.code(), expected, "{what}: {status:?}");
        }
        let status = client
            .collaborate(tokio_stream::iter(Vec::<CollaborationEvent>::new()))
            .await
            .expect_err("empty stream");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "empty stream: {status:?}"
        );
        // No refused join was announced.
        ann.quiet().await;
        let mut log = stored_log(&server, DOC).await;
        assert_eq!(versions(&log), [1]);

        // The largest payload is accepted, for a cursor and for an op (handled in order, so
        // the op's echo means the cursor was accepted too).
        ann.send(cursor(DOC, "ann", &vec![2u8; 64 * 1024])).await;
        ann.op("exact", &vec![1u8; 64 * 1024], None).await;
        assert_eq!(ann.next().await.payload.len(), 64 * 1024);
        log = stored_log(&server, DOC).await;
        assert_eq!(versions(&log), [1, 2]);

        let later = |f: &dyn Fn(&mut CollaborationEvent)| {
            let mut e = op(DOC, "zed", "", b"edit", None);
            f(&mut e);
            e
        };
        let later_table: Vec<(&str, CollaborationEvent, Code)> = vec![
            (
                "JOIN again",
                later(&|e| e.r#type = Join as i32),
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
                "document switched",
                later(&|e| e.document_id = "elsewhere".into()),
                Code::InvalidArgument,
            ),
            (
                "user switched",
                later(&|e| e.user_id = "someone-else".into()),
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
        for (n, (what, bad, expected)) in later_table.into_iter().enumerate() {
            let version = log.len() as u64;
            let mut zed = Participant::join(&server, DOC, "zed", version).await;
            let good = format!("fine before {what}");
            let good_op = stored_op(version + 1, "zed", &format!("good-{n}"), good.as_bytes());
            zed.op(&format!("good-{n}"), good.as_bytes(), Some(version))
                .await;
            // Zed sees ann's JOIN and its own good op (in either order: one is live, one is
            // presence).
            let mut expected_seen = vec![signal("join", "ann", b""), good_op.clone()];
            expected_seen.sort();
            assert_eq!(zed.next_set(2).await, expected_seen, "{what}");
            zed.send(bad).await;
            // Possibly after the stream already failed: then it has nowhere to go.
            let _ = zed
                .tx
                .send(op(DOC, "zed", &format!("never-{n}"), b"never stored", None))
                .await;
            let (before, status) = zed.failure().await;
            assert_eq!(status.code(), expected, "{what}: {status:?}");
            assert_eq!(before, [], "{what}");
            // Ann saw zed come, edit and go.
            let mut expected_seen = vec![
                signal("join", "zed", b""),
                good_op.clone(),
                signal("leave", "zed", b""),
            ];
            expected_seen.sort();
            assert_eq!(ann.next_set(3).await, expected_seen, "{what}");
            let now = stored_log(&server, DOC).await;
            assert_eq!(&now[..log.len()], &log[..], "{what}");
            assert_eq!(
                versions(&now[log.len()..]),
                [version + 1],
                "{what}: stored after the bad event"
            );
            log = now;
        }
        ann.quiet().await;
        let mut seen_ids = HashMap::new();
        for e in &log {
            *seen_ids.entry(e.id.clone()).or_insert(0) += 1;
        }
        assert!(seen_ids.values().all(|&n| n == 1));
        assert!(!seen_ids.keys().any(|id| id.starts_with("never-")));
    })
    .await;
    server.stop().await;
}
