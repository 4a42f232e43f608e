//! Notification inboxes against the real server: replay of unacknowledged notifications after a
//! reconnect, a cursor that never moves back, acknowledgements past the head, topic filters in
//! replay and live, no gap and no duplicate while publishers race a subscriber, idempotent ids,
//! a restart, and bad input with exact codes. Every test talks to the server only through the
//! generated gRPC client (plus the harness's view of the store's head and the hub) and asserts
//! exact outcomes.
//!
//! Every test runs on SQLite and on PostgreSQL (`store_tests!`: `<name>::sqlite`,
//! `<name>::postgres`; the PostgreSQL one skips when it is unreachable).

mod common;

use common::*;
use prost_types::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use streamhub::proto::*;
use streamhub::store::{StreamKey, StreamKind};
use tonic::codec::Streaming;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn note(user: &str, topic: &str, title: &str, id: &str) -> PublishNotificationRequest {
    PublishNotificationRequest {
        user_id: user.to_string(),
        topic: topic.to_string(),
        title: title.to_string(),
        body: format!("body of {title}"),
        data: None,
        id: id.to_string(),
    }
}

async fn publish(client: &mut Client, request: PublishNotificationRequest) -> Notification {
    client
        .publish_notification(request.clone())
        .await
        .unwrap_or_else(|s| panic!("publish {request:?} failed: {s:?}"))
        .into_inner()
}

async fn publish_status(client: &mut Client, request: PublishNotificationRequest) -> Status {
    match client.publish_notification(request.clone()).await {
        Ok(n) => panic!(
            "publish {request:?} should fail, but stored {:?}",
            n.into_inner()
        ),
        Err(status) => status,
    }
}

fn inbox(user: &str) -> SubscribeRequest {
    SubscribeRequest {
        user_id: user.to_string(),
        ..Default::default()
    }
}

fn filtered(user: &str, topics: &[&str], after: u64) -> SubscribeRequest {
    SubscribeRequest {
        user_id: user.to_string(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        after_sequence: after,
    }
}

async fn open(client: &mut Client, request: SubscribeRequest) -> Streaming<Notification> {
    client
        .subscribe_to_notifications(request.clone())
        .await
        .unwrap_or_else(|s| panic!("SubscribeToNotifications {request:?} failed: {s:?}"))
        .into_inner()
}

/// The next notification of an open stream; fails on an error, an end, or 20 s of silence.
async fn next(stream: &mut Streaming<Notification>) -> Notification {
    match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
        Err(_) => panic!("no notification within 20 s"),
        Ok(Err(status)) => panic!("stream failed: {status:?}"),
        Ok(Ok(None)) => panic!("stream ended early"),
        Ok(Ok(Some(n))) => n,
    }
}

async fn take(stream: &mut Streaming<Notification>, n: usize) -> Vec<Notification> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(stream).await);
    }
    out
}

/// Nothing more arrives for a while: no duplicate, nothing filtered that should not be.
async fn assert_quiet(stream: &mut Streaming<Notification>, what: &str) {
    if let Ok(message) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("{what}: expected silence, got {message:?}");
    }
}

/// The status a bad SubscribeToNotifications call gets, whether it comes with the call or as the
/// stream's first message.
async fn subscribe_status(client: &mut Client, request: SubscribeRequest) -> Status {
    match client.subscribe_to_notifications(request.clone()).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                Err(_) => panic!("Subscribe {request:?} should fail, but it stays open"),
                Ok(Err(status)) => status,
                Ok(Ok(m)) => panic!("Subscribe {request:?} should fail, got {m:?}"),
            }
        }
    }
}

async fn ack(client: &mut Client, user: &str, through: u64) -> u64 {
    client
        .acknowledge_notifications(AcknowledgeNotificationsRequest {
            user_id: user.to_string(),
            up_to_sequence: through,
        })
        .await
        .unwrap_or_else(|s| panic!("ack {user} through {through} failed: {s:?}"))
        .into_inner()
        .acknowledged_through
}

async fn ack_status(client: &mut Client, user: &str, through: u64) -> Status {
    match client
        .acknowledge_notifications(AcknowledgeNotificationsRequest {
            user_id: user.to_string(),
            up_to_sequence: through,
        })
        .await
    {
        Ok(r) => panic!(
            "ack {user:?} through {through} should fail, but answered {:?}",
            r.into_inner()
        ),
        Err(status) => status,
    }
}

/// The last committed sequence of a user's inbox, straight from the store.
async fn head(server: &TestServer, user: &str) -> u64 {
    server
        .log
        .store
        .head(&StreamKey::new(StreamKind::Notifications, user))
        .await
        .expect("head")
}

fn seqs(notifications: &[Notification]) -> Vec<u64> {
    notifications.iter().map(|n| n.sequence).collect()
}

fn any(type_url: &str, value: impl Into<Vec<u8>>) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: value.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The acknowledged cursor decides what a reconnect replays
// ---------------------------------------------------------------------------------------------

store_tests!(
    unacknowledged_notifications_are_replayed_after_a_reconnect_and_acknowledged_ones_are_not
);
async fn unacknowledged_notifications_are_replayed_after_a_reconnect_and_acknowledged_ones_are_not(
    kind: StoreKind,
) {
    const USER: &str = "inbox-user";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "replay after reconnect", async {
        let mut client = server.client().await;
        let mut published = Vec::new();
        for i in 1..=6 {
            let n = publish(&mut client, note(USER, "alerts", &format!("n{i}"), "")).await;
            assert_eq!((n.sequence, n.user_id.as_str()), (i, USER));
            published.push(n);
        }

        // Nothing acknowledged yet: everything is replayed, exactly as published.
        let mut first = open(&mut client, inbox(USER)).await;
        assert_eq!(take(&mut first, 6).await, published);
        assert_quiet(&mut first, "first connection").await;
        assert_eq!(ack(&mut client, USER, 4).await, 4);
        drop(first);

        // A reconnect replays only what is unacknowledged.
        let mut plain = open(&mut client, inbox(USER)).await;
        assert_eq!(take(&mut plain, 2).await, published[4..]);
        assert_quiet(&mut plain, "after ack 4").await;
        // An after_sequence below the cursor does not bring acknowledged ones back…
        let mut below = open(&mut client, filtered(USER, &[], 2)).await;
        assert_eq!(take(&mut below, 2).await, published[4..]);
        assert_quiet(&mut below, "after_sequence 2 under cursor 4").await;
        // …and one above the cursor wins.
        let mut above = open(&mut client, filtered(USER, &[], 5)).await;
        assert_eq!(next(&mut above).await, published[5]);
        assert_quiet(&mut above, "after_sequence 5 over cursor 4").await;

        // An after_sequence past anything that can exist replays nothing (and never wraps).
        let mut beyond = Vec::new();
        for after in [1_000, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            let mut stream = open(&mut client, filtered(USER, &[], after)).await;
            assert_quiet(&mut stream, &format!("after_sequence {after}")).await;
            beyond.push(stream);
        }

        // All three go on live, with exactly the next one.
        let seventh = publish(&mut client, note(USER, "alerts", "n7", "")).await;
        assert_eq!(seventh.sequence, 7);
        for stream in [&mut plain, &mut below, &mut above] {
            assert_eq!(next(stream).await, seventh);
            assert_quiet(stream, "after the live one").await;
        }
        for stream in &mut beyond {
            assert_quiet(stream, "far-ahead subscriber after a live one").await;
        }
        drop(beyond);

        // Everything acknowledged: a reconnect replays nothing and waits for new ones.
        assert_eq!(ack(&mut client, USER, 7).await, 7);
        drop((plain, below, above));
        let mut caught_up = open(&mut client, inbox(USER)).await;
        assert_quiet(&mut caught_up, "fully acknowledged").await;
        let eighth = publish(&mut client, note(USER, "alerts", "n8", "")).await;
        assert_eq!(next(&mut caught_up).await, eighth);

        // Cursors are per user: another inbox still replays from its start.
        let other = publish(&mut client, note("inbox-other", "alerts", "o1", "")).await;
        assert_eq!(other.sequence, 1);
        let mut other_stream = open(&mut client, inbox("inbox-other")).await;
        assert_eq!(next(&mut other_stream).await, other);
        assert_eq!(ack(&mut client, "inbox-other", 0).await, 0);
        assert_eq!(ack(&mut client, USER, 0).await, 7);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. The cursor only moves forward
// ---------------------------------------------------------------------------------------------

store_tests!(an_acknowledgement_never_moves_the_cursor_back);
async fn an_acknowledgement_never_moves_the_cursor_back(kind: StoreKind) {
    const USER: &str = "cursor-user";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "cursor", async {
        let mut client = server.client().await;
        for i in 0..40 {
            publish(&mut client, note(USER, "t", &format!("c{i}"), "")).await;
        }
        // Each answer is the cursor as it stands after the call.
        for (through, answer) in [(5, 5), (3, 5), (0, 5), (5, 5), (8, 8), (1, 8), (7, 8)] {
            assert_eq!(
                ack(&mut client, USER, through).await,
                answer,
                "ack {through}"
            );
        }

        // Concurrent acknowledgements in scrambled order: every answer is at least its own
        // request, and the cursor ends at the largest.
        let mut rng = XorShift::new(7);
        let mut values: Vec<u64> = (9..=40).collect();
        for i in (1..values.len()).rev() {
            values.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut calls = tokio::task::JoinSet::new();
        for value in values {
            let mut c = client.clone();
            calls.spawn(async move { (value, ack(&mut c, USER, value).await) });
        }
        while let Some(done) = calls.join_next().await {
            let (asked, answered) = done.expect("ack task");
            assert!(
                (asked..=40).contains(&answered),
                "ack {asked} answered {answered}"
            );
        }
        assert_eq!(ack(&mut client, USER, 0).await, 40);
        assert_eq!(ack(&mut client, USER, 12).await, 40);

        // And the inbox agrees: nothing is replayed.
        let mut stream = open(&mut client, inbox(USER)).await;
        assert_quiet(&mut stream, "everything acknowledged").await;
    })
    .await;
    server.stop().await;
}

store_tests!(acknowledging_past_the_head_gets_out_of_range_and_changes_nothing);
async fn acknowledging_past_the_head_gets_out_of_range_and_changes_nothing(kind: StoreKind) {
    const USER: &str = "past-head-user";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "past the head", async {
        let mut client = server.client().await;
        // An empty inbox: 0 reads the cursor, anything more is past the head.
        assert_eq!(ack(&mut client, USER, 0).await, 0);
        let status = ack_status(&mut client, USER, 1).await;
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

        for i in 1..=3 {
            publish(&mut client, note(USER, "t", &format!("p{i}"), "")).await;
        }
        for past in [4, 5, 1_000, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            let status = ack_status(&mut client, USER, past).await;
            assert_eq!(status.code(), Code::OutOfRange, "ack {past}: {status:?}");
            assert_eq!(ack(&mut client, USER, 0).await, 0, "ack {past} moved it");
        }
        assert_eq!(ack(&mut client, USER, 3).await, 3);
        let status = ack_status(&mut client, USER, 4).await;
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert_eq!(ack(&mut client, USER, 0).await, 3);

        // The head is the user's notifications, not their events of the same name.
        client
            .publish_user_event(PublishUserEventRequest {
                user_id: "events-only-user".into(),
                r#type: UserEventType::Login as i32,
                data: None,
                id: String::new(),
            })
            .await
            .expect("event");
        let status = ack_status(&mut client, "events-only-user", 1).await;
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

        // The refused acknowledgement hid nothing: a new notification is delivered.
        let fourth = publish(&mut client, note(USER, "t", "p4", "")).await;
        let mut stream = open(&mut client, inbox(USER)).await;
        assert_eq!(next(&mut stream).await, fourth);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Topic filters
// ---------------------------------------------------------------------------------------------

const TOPICS: [&str; 5] = ["alerts", "billing", "chat", "alerts.eu", "billing"];

store_tests!(a_topic_filter_applies_identically_in_replay_and_live);
async fn a_topic_filter_applies_identically_in_replay_and_live(kind: StoreKind) {
    const USER: &str = "topic-user";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "topic filter", async {
        let mut client = server.client().await;
        let wanted = ["alerts", "chat"];
        // Opened before anything exists: everything it sees comes live.
        let mut live_only = open(&mut client, filtered(USER, &wanted, 0)).await;
        wait_for("the live subscriber", Duration::from_secs(10), || {
            server.log.hub.receiver_count() == 1
        })
        .await;

        let mut all = Vec::new();
        for i in 0..20 {
            let topic = TOPICS[i % TOPICS.len()];
            all.push(publish(&mut client, note(USER, topic, &format!("a{i}"), "")).await);
        }
        // Opened half-way: replay, then live. The duplicate in its list changes nothing.
        let mut half_way = open(&mut client, filtered(USER, &["chat", "alerts", "chat"], 0)).await;
        for i in 20..40 {
            let topic = TOPICS[(i * 7) % TOPICS.len()];
            all.push(publish(&mut client, note(USER, topic, &format!("b{i}"), "")).await);
        }
        // Opened after everything: replay only.
        let mut replay_only = open(&mut client, filtered(USER, &wanted, 0)).await;

        // Exact topic match: "alerts" does not take "alerts.eu".
        let expected: Vec<Notification> = all
            .iter()
            .filter(|n| n.topic == "alerts" || n.topic == "chat")
            .cloned()
            .collect();
        let expected_seqs: Vec<u64> = (1..=40u64)
            .filter(|s| {
                let i = (*s - 1) as usize;
                let topic = if i < 20 {
                    TOPICS[i % TOPICS.len()]
                } else {
                    TOPICS[(i * 7) % TOPICS.len()]
                };
                topic == "alerts" || topic == "chat"
            })
            .collect();
        assert_eq!(seqs(&expected), expected_seqs);
        assert!(expected.len() > 10 && expected.len() < 30);
        for (name, stream) in [
            ("live only", &mut live_only),
            ("half way", &mut half_way),
            ("replay only", &mut replay_only),
        ] {
            assert_eq!(take(stream, expected.len()).await, expected, "{name}");
            assert_quiet(stream, name).await;
        }

        // Filtered-out ones that follow do not reach it; the next wanted one does, exactly.
        publish(&mut client, note(USER, "billing", "skip-1", "")).await;
        publish(&mut client, note(USER, "alerts.eu", "skip-2", "")).await;
        let wanted_next = publish(&mut client, note(USER, "chat", "take", "")).await;
        assert_eq!(wanted_next.sequence, 43);
        for stream in [&mut live_only, &mut half_way, &mut replay_only] {
            assert_eq!(next(stream).await, wanted_next);
        }

        // The filter and the cursor together: after ack 20, only wanted ones past 20.
        assert_eq!(ack(&mut client, USER, 20).await, 20);
        let mut after_ack = open(&mut client, filtered(USER, &wanted, 0)).await;
        let rest: Vec<Notification> = expected
            .iter()
            .filter(|n| n.sequence > 20)
            .chain(std::iter::once(&wanted_next))
            .cloned()
            .collect();
        assert_eq!(take(&mut after_ack, rest.len()).await, rest);
        assert_quiet(&mut after_ack, "filter after ack").await;

        // A topic nobody published yet: silence, then exactly the one.
        let mut rare = open(&mut client, filtered(USER, &["rare:topic/x"], 0)).await;
        assert_quiet(&mut rare, "rare topic").await;
        let r = publish(&mut client, note(USER, "rare:topic/x", "rare", "")).await;
        assert_eq!(next(&mut rare).await, r);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Publishers racing a subscriber
// ---------------------------------------------------------------------------------------------

store_tests!(concurrent_publishing_while_subscribing_leaves_no_gap_and_no_duplicate);
async fn concurrent_publishing_while_subscribing_leaves_no_gap_and_no_duplicate(kind: StoreKind) {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 250;
    const TOTAL: u64 = PUBLISHERS * EACH;
    let server = TestServer::start_on(kind, |_| {}).await;
    within(120, "race", async {
        let mut client = server.client().await;
        // Subscribers join early, mid-way and late in different rounds.
        for (round, join_at) in [(0u64, 1u64), (1, 500), (2, 900)] {
            let user = format!("race-user-{round}");
            let published = Arc::new(AtomicU64::new(0));
            let mut publishers = tokio::task::JoinSet::new();
            for p in 0..PUBLISHERS {
                let mut c = server.client().await;
                let (user, published) = (user.clone(), published.clone());
                publishers.spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..EACH {
                        let n = publish(&mut c, note(&user, &format!("p{p}"), &format!("{i}"), ""))
                            .await;
                        published.fetch_add(1, Ordering::Relaxed);
                        mine.push(n);
                    }
                    mine
                });
            }
            wait_for("publishers to get going", Duration::from_secs(60), || {
                published.load(Ordering::Relaxed) >= join_at
            })
            .await;
            let mut everything = open(&mut client, inbox(&user)).await;
            let mut evens = open(&mut client, filtered(&user, &["p0", "p2"], 0)).await;

            let mut stored = Vec::new();
            while let Some(done) = publishers.join_next().await {
                stored.extend(done.expect("publisher"));
            }
            stored.sort_by_key(|n| n.sequence);
            assert_eq!(
                seqs(&stored),
                (1..=TOTAL).collect::<Vec<_>>(),
                "round {round}"
            );

            let seen = take(&mut everything, TOTAL as usize).await;
            assert_eq!(
                seqs(&seen),
                seqs(&stored),
                "round {round}: no gap, no duplicate"
            );
            assert_eq!(
                seen, stored,
                "round {round}: exactly 1..={TOTAL}, as stored"
            );
            assert_quiet(&mut everything, "no duplicate after the last").await;
            let want: Vec<Notification> = stored
                .iter()
                .filter(|n| n.topic == "p0" || n.topic == "p2")
                .cloned()
                .collect();
            assert_eq!(want.len() as u64, 2 * EACH);
            let seen_evens = take(&mut evens, want.len()).await;
            assert_eq!(seqs(&seen_evens), seqs(&want), "round {round}: filtered");
            assert_eq!(seen_evens, want, "round {round}: filtered, as stored");
            assert_quiet(&mut evens, "no duplicate in the filtered stream").await;
        }
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Idempotency
// ---------------------------------------------------------------------------------------------

store_tests!(publishing_is_idempotent_by_id_and_a_reused_id_gets_already_exists);
async fn publishing_is_idempotent_by_id_and_a_reused_id_gets_already_exists(kind: StoreKind) {
    const USER: &str = "idem-user";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "idempotency", async {
        let mut client = server.client().await;
        let mut request = note(USER, "orders", "shipped", "order-42");
        request.data = Some(any("test/order", "42"));
        let first = publish(&mut client, request.clone()).await;
        assert_eq!((first.sequence, first.id.as_str()), (1, "order-42"));
        assert_eq!(first.data, request.data);

        // A retry gets the stored notification (same sequence and timestamp), stored once.
        assert_eq!(publish(&mut client, request.clone()).await, first);
        let mut retries = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (mut c, r) = (client.clone(), request.clone());
            retries.spawn(async move { publish(&mut c, r).await });
        }
        while let Some(done) = retries.join_next().await {
            assert_eq!(done.expect("retry"), first);
        }
        assert_eq!(head(&server, USER).await, 1);

        // The same id with anything different in this user's inbox is refused.
        let variants: Vec<(&str, PublishNotificationRequest)> = vec![
            (
                "another title",
                PublishNotificationRequest {
                    title: "x".into(),
                    ..request.clone()
                },
            ),
            (
                "another body",
                PublishNotificationRequest {
                    body: "x".into(),
                    ..request.clone()
                },
            ),
            (
                "another topic",
                PublishNotificationRequest {
                    topic: "x".into(),
                    ..request.clone()
                },
            ),
            (
                "other data",
                PublishNotificationRequest {
                    data: Some(any("test/order", "43")),
                    ..request.clone()
                },
            ),
            (
                "no data",
                PublishNotificationRequest {
                    data: None,
                    ..request.clone()
                },
            ),
        ];
        for (what, variant) in variants {
            let status = publish_status(&mut client, variant).await;
            assert_eq!(status.code(), Code::AlreadyExists, "{what}: {status:?}");
        }
        assert_eq!(head(&server, USER).await, 1);
        assert_eq!(head(&server, "idem-other").await, 0);
        // Ids are scoped to their inbox: another user's inbox takes the same id as its own.
        let theirs = publish(
            &mut client,
            PublishNotificationRequest {
                user_id: "idem-other".into(),
                ..request.clone()
            },
        )
        .await;
        assert_eq!(
            (theirs.sequence, theirs.id.as_str()),
            (1, first.id.as_str())
        );
        assert_eq!(head(&server, "idem-other").await, 1);

        // Without an id the server assigns a fresh one each time.
        let a = publish(&mut client, note(USER, "orders", "same", "")).await;
        let b = publish(&mut client, note(USER, "orders", "same", "")).await;
        assert_eq!((a.sequence, b.sequence), (2, 3));
        assert!(!a.id.is_empty() && !b.id.is_empty() && a.id != b.id);

        // Notification ids and event ids are separate namespaces.
        let event = client
            .publish_user_event(PublishUserEventRequest {
                user_id: USER.into(),
                r#type: UserEventType::Login as i32,
                data: None,
                id: "order-42".into(),
            })
            .await
            .expect("event with the same id")
            .into_inner();
        assert_eq!((event.sequence, event.id.as_str()), (1, "order-42"));

        // A subscriber sees the retried one once.
        let mut stream = open(&mut client, inbox(USER)).await;
        assert_eq!(take(&mut stream, 3).await, vec![first, a, b]);
        assert_quiet(&mut stream, "retries stored once").await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Restart
// ---------------------------------------------------------------------------------------------

store_tests!(the_cursor_and_the_inbox_survive_a_restart);
async fn the_cursor_and_the_inbox_survive_a_restart(kind: StoreKind) {
    const USER: &str = "restart-user";
    let server = TestServer::start_on(kind, |_| {}).await;
    let before = within(30, "before restart", async {
        let mut client = server.client().await;
        let mut before = Vec::new();
        for i in 1..=5 {
            before.push(
                publish(
                    &mut client,
                    note(USER, "t", &format!("r{i}"), &format!("r-{i}")),
                )
                .await,
            );
        }
        assert_eq!(ack(&mut client, USER, 3).await, 3);
        before
    })
    .await;
    let home = server.home();
    within(30, "stop", server.stop()).await;

    let server = TestServer::start_at(home, |_| {}).await;
    within(30, "after restart", async {
        let mut client = server.client().await;
        assert_eq!(ack(&mut client, USER, 0).await, 3);
        let mut stream = open(&mut client, inbox(USER)).await;
        assert_eq!(take(&mut stream, 2).await, before[3..]);
        assert_quiet(&mut stream, "after restart").await;
        assert_eq!(ack(&mut client, USER, 2).await, 3);

        // Sequences and ids carry on.
        let sixth = publish(&mut client, note(USER, "t", "r6", "")).await;
        assert_eq!(sixth.sequence, 6);
        assert_eq!(next(&mut stream).await, sixth);
        assert_eq!(
            publish(&mut client, note(USER, "t", "r2", "r-2")).await,
            before[1]
        );
        assert_eq!(ack(&mut client, USER, 6).await, 6);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input
// ---------------------------------------------------------------------------------------------

store_tests!(bad_input_gets_the_exact_status_and_stores_nothing);
async fn bad_input_gets_the_exact_status_and_stores_nothing(kind: StoreKind) {
    const USER: &str = "bad-notify-user";
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "bad input", async {
        let mut client = server.client().await;
        let long_key = "u".repeat(129);
        let half = 32 * 1024;

        let publish_table: Vec<(&str, PublishNotificationRequest, Code)> = vec![
            (
                "empty user_id",
                note("", "t", "x", "bad-1"),
                Code::InvalidArgument,
            ),
            (
                "user_id of 129 bytes",
                note(&long_key, "t", "x", "bad-2"),
                Code::InvalidArgument,
            ),
            (
                "user_id with a control char",
                note("bad\u{7}user", "t", "x", "bad-3"),
                Code::InvalidArgument,
            ),
            (
                "empty topic",
                note(USER, "", "x", "bad-4"),
                Code::InvalidArgument,
            ),
            (
                "topic of 65 bytes",
                note(USER, &"t".repeat(65), "x", "bad-5"),
                Code::InvalidArgument,
            ),
            (
                "topic with a space",
                note(USER, "two words", "x", "bad-6"),
                Code::InvalidArgument,
            ),
            (
                "topic with a tab",
                note(USER, "a\tb", "x", "bad-7"),
                Code::InvalidArgument,
            ),
            (
                "topic with a newline",
                note(USER, "a\n", "x", "bad-8"),
                Code::InvalidArgument,
            ),
            (
                "topic with a comma",
                note(USER, "a,b", "x", "bad-9"),
                Code::InvalidArgument,
            ),
            (
                "topic with a NUL",
                note(USER, "a\0b", "x", "bad-10"),
                Code::InvalidArgument,
            ),
            (
                "non-ASCII topic",
                note(USER, "café", "x", "bad-11"),
                Code::InvalidArgument,
            ),
            (
                "id with whitespace",
                note(USER, "t", "x", "bad id"),
                Code::InvalidArgument,
            ),
            (
                "id of 129 bytes",
                note(USER, "t", "x", &"i".repeat(129)),
                Code::InvalidArgument,
            ),
            (
                "title and body one byte over 64 KiB",
                PublishNotificationRequest {
                    title: "t".repeat(half),
                    body: "b".repeat(half + 1),
                    ..note(USER, "t", "", "bad-12")
                },
                Code::ResourceExhausted,
            ),
            (
                "data of 64 KiB",
                PublishNotificationRequest {
                    title: String::new(),
                    body: String::new(),
                    data: Some(any("", vec![0u8; 64 * 1024])),
                    ..note(USER, "t", "", "bad-13")
                },
                Code::ResourceExhausted,
            ),
            (
                "a bad topic and too large",
                PublishNotificationRequest {
                    body: "b".repeat(70_000),
                    ..note(USER, "bad topic", "", "bad-14")
                },
                Code::InvalidArgument,
            ),
        ];
        for (what, request, code) in publish_table {
            let status = publish_status(&mut client, request).await;
            assert_eq!(
                status.code(),
                code,
                "PublishNotification with {what}: {status:?}"
            );
            assert!(!status.message().is_empty(), "{what}: the status says why");
        }

        let too_many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
        let subscribe_table: Vec<(&str, SubscribeRequest, Code)> = vec![
            ("empty user_id", inbox(""), Code::InvalidArgument),
            (
                "user_id of 129 bytes",
                inbox(&long_key),
                Code::InvalidArgument,
            ),
            (
                "user_id with a control char",
                inbox("bad\u{1b}user"),
                Code::InvalidArgument,
            ),
            (
                "an empty topic",
                filtered(USER, &["ok", ""], 0),
                Code::InvalidArgument,
            ),
            (
                "a topic with a space",
                filtered(USER, &["ok", "not ok"], 0),
                Code::InvalidArgument,
            ),
            (
                "a topic of 65 bytes",
                filtered(USER, &[&"t".repeat(65)], 0),
                Code::InvalidArgument,
            ),
            (
                "101 topics",
                SubscribeRequest {
                    topics: too_many,
                    ..inbox(USER)
                },
                Code::InvalidArgument,
            ),
        ];
        for (what, request, code) in subscribe_table {
            let status = subscribe_status(&mut client, request).await;
            assert_eq!(
                status.code(),
                code,
                "SubscribeToNotifications with {what}: {status:?}"
            );
        }

        let ack_table: Vec<(&str, &str, u64, Code)> = vec![
            ("empty user_id", "", 0, Code::InvalidArgument),
            ("empty user_id and a sequence", "", 1, Code::InvalidArgument),
            ("user_id of 129 bytes", &long_key, 0, Code::InvalidArgument),
            (
                "user_id with a control char",
                "bad\u{0}user",
                0,
                Code::InvalidArgument,
            ),
            ("a sequence past the head", USER, 1, Code::OutOfRange),
        ];
        for (what, user, through, code) in ack_table {
            let status = ack_status(&mut client, user, through).await;
            assert_eq!(
                status.code(),
                code,
                "AcknowledgeNotifications with {what}: {status:?}"
            );
        }

        // Nothing was stored by any of them, and no failed stream holds a hub slot.
        assert_eq!(head(&server, USER).await, 0);
        assert_eq!(ack(&mut client, USER, 0).await, 0);
        wait_for(
            "failed streams to release the hub",
            Duration::from_secs(10),
            || server.log.hub.receiver_count() == 0,
        )
        .await;
        // The refused ids were never stored: reusing them is a fresh notification.
        for (i, id) in ["bad-1", "bad-4", "bad-12", "bad-13"].iter().enumerate() {
            let n = publish(&mut client, note(USER, "t", "ok", id)).await;
            assert_eq!((n.sequence, n.id.as_str()), (i as u64 + 1, *id));
        }

        // The limits are inclusive: a 64-byte topic, 128-byte key and id, 100 topics, and
        // title + body of exactly 64 KiB.
        let topic = "t".repeat(64);
        let n = publish(
            &mut client,
            note(&"k".repeat(128), &topic, "x", &"i".repeat(128)),
        )
        .await;
        assert_eq!(
            (n.sequence, n.topic.len(), n.user_id.len(), n.id.len()),
            (1, 64, 128, 128)
        );
        let full = publish(
            &mut client,
            PublishNotificationRequest {
                title: "t".repeat(half),
                body: "b".repeat(half),
                ..note(USER, "a.b-c_d:e/f", "", "")
            },
        )
        .await;
        assert_eq!(
            (full.sequence, full.title.len() + full.body.len()),
            (5, 64 * 1024)
        );
        // 99 topics that never occur, and "t", which the four above carry.
        let hundred: Vec<String> = (0..99)
            .map(|i| format!("t{i}"))
            .chain(["t".to_string()])
            .collect();
        let mut stream = open(
            &mut client,
            SubscribeRequest {
                topics: hundred,
                ..inbox(USER)
            },
        )
        .await;
        assert_eq!(seqs(&take(&mut stream, 4).await), [1, 2, 3, 4]);
        assert_quiet(&mut stream, "the full one has another topic").await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Cancellation and shutdown
// ---------------------------------------------------------------------------------------------

store_tests!(dropped_subscriptions_release_the_hub_and_a_stop_ends_live_ones_with_unavailable);
async fn dropped_subscriptions_release_the_hub_and_a_stop_ends_live_ones_with_unavailable(
    kind: StoreKind,
) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let mut client = server.client().await;
    let mut streams = Vec::new();
    within(30, "subscribe", async {
        for i in 0..50 {
            streams.push(open(&mut client, inbox(&format!("drop-user-{}", i % 10))).await);
        }
        wait_for("50 hub receivers", Duration::from_secs(10), || {
            server.log.hub.receiver_count() == 50
        })
        .await;
        drop(streams);
        wait_for("every receiver to go", Duration::from_secs(10), || {
            server.log.hub.receiver_count() == 0 && server.log.hub.stream_count() == 0
        })
        .await;
    })
    .await;

    let mut stream = within(10, "open", open(&mut client, inbox("stop-user"))).await;
    let n = within(
        10,
        "publish",
        publish(&mut client, note("stop-user", "t", "x", "")),
    )
    .await;
    assert_eq!(within(10, "live", next(&mut stream)).await, n);
    let stopping = tokio::spawn(server.stop());
    match within(10, "the stream to end", stream.message()).await {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(other) => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    within(30, "stop", stopping).await.expect("stop task");
}
