//! ListStreams and ListMetricSeries against the real server, on SQLite and on PostgreSQL
//! (`store_tests!`: `<name>::sqlite`, `<name>::postgres`): exact keys, heads and last
//! timestamps for every kind (events of several users, an inbox, chat rooms, a collaboration
//! document, and a document whose only append was rejected, which holds no record), literal
//! prefixes (`%` and `_` are no wildcards), bytewise order, paging through 250 streams with
//! exact pages and tokens, the clamp of a large limit, an empty store, a table of bad requests,
//! who may list with auth on, metric series by name then labels, and the `streamhub streams
//! list` and `streamhub metrics series` commands through the built binary.
//!
//! What a listing says is checked against what the calls that wrote the records answered
//! (sequences and timestamps), through the generated gRPC client.

mod common;

use common::*;
use prost_types::Timestamp;
use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use streamhub::auth::{MetricsAccess, Role, TokenGrants, mint_hs256_with};
use streamhub::proto::{
    self, ChatMessage, ChatMessageType, CollaborationEvent, CollaborationEventType, DataRecord,
    GetChatHistoryRequest, ListMetricSeriesRequest, ListMetricSeriesResponse, ListStreamsRequest,
    ListStreamsResponse, MetricData, PublishNotificationRequest, PublishUserEventRequest,
    UserEventType,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use proto::StreamKind::{Chat, Collaboration, Events, Notifications};

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "an hs256 secret of at least 32 bytes, for tests";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A listed stream as the assertions compare it: (key, head, last timestamp in microseconds).
type Listed = (String, u64, i64);

fn micros(ts: &Option<Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("a timestamp");
    ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000
}

fn request(kind: proto::StreamKind, prefix: &str, token: &str, limit: u32) -> ListStreamsRequest {
    ListStreamsRequest {
        kind: kind as i32,
        key_prefix: prefix.into(),
        page_token: token.into(),
        limit,
    }
}

async fn page(
    client: &mut Client,
    kind: proto::StreamKind,
    prefix: &str,
    token: &str,
    limit: u32,
) -> ListStreamsResponse {
    client
        .list_streams(request(kind, prefix, token, limit))
        .await
        .unwrap_or_else(|s| panic!("ListStreams {kind:?} {prefix:?}: {s:?}"))
        .into_inner()
}

fn listed(page: &ListStreamsResponse) -> Vec<Listed> {
    page.streams
        .iter()
        .map(|s| (s.key.clone(), s.head, micros(&s.last_timestamp)))
        .collect()
}

fn keys(page: &ListStreamsResponse) -> Vec<String> {
    page.streams.iter().map(|s| s.key.clone()).collect()
}

/// One whole listing (a single page of up to 1,000, which must be the last).
async fn all(client: &mut Client, kind: proto::StreamKind, prefix: &str) -> Vec<Listed> {
    let answer = page(client, kind, prefix, "", 1000).await;
    assert_eq!(
        answer.next_page_token, "",
        "{kind:?} {prefix:?} fits one page"
    );
    listed(&answer)
}

/// Publishes one event and answers what the stream now ends with: (sequence, timestamp).
async fn publish(client: &mut Client, user: &str) -> (u64, i64) {
    let event = client
        .publish_user_event(PublishUserEventRequest {
            user_id: user.into(),
            r#type: UserEventType::Login as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("publish for {user}: {s:?}"))
        .into_inner();
    (event.sequence, micros(&event.timestamp))
}

/// Imports `records` events for each (user, records) in one ProcessDataBatch call.
async fn import(client: &mut Client, users: &[(String, u64)]) {
    let records: Vec<DataRecord> = users
        .iter()
        .flat_map(|(user, n)| {
            (0..*n).map(move |_| DataRecord {
                user_id: user.clone(),
                r#type: UserEventType::Login as i32,
                ..Default::default()
            })
        })
        .collect();
    let total = records.len() as u64;
    let result = client
        .process_data_batch(tokio_stream::iter(records))
        .await
        .expect("import")
        .into_inner();
    assert_eq!(
        (result.records_accepted, result.records_rejected),
        (total, 0),
        "{result:?}"
    );
}

/// The newest message of a room, through GetChatHistory: (sequence, timestamp, content).
async fn last_message(client: &mut Client, room: &str) -> Option<(u64, i64, String)> {
    let history = client
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            before_sequence: 0,
            limit: 1,
        })
        .await
        .expect("history")
        .into_inner();
    history
        .messages
        .last()
        .map(|m| (m.sequence, micros(&m.timestamp), m.content.clone()))
}

/// One member joins `room`, posts `text` and leaves: the room then holds the join notice, the
/// message and the leave notice. Answers the room's last record: (head, timestamp).
async fn chat_visit(server: &TestServer, room: &str, user: &str, text: &str) -> (u64, i64) {
    let mut client = server.client().await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(ChatMessage {
        room_id: room.into(),
        user_id: user.into(),
        content: text.into(),
        r#type: ChatMessageType::Text as i32,
        ..Default::default()
    })
    .await
    .expect("queue");
    let mut replies = client
        .chat(ReceiverStream::new(rx))
        .await
        .expect("join")
        .into_inner();
    // The message comes back once it is stored.
    within(15, "the posted message comes back", async {
        loop {
            let message = replies.next().await.expect("open").expect("ok");
            if message.content == text {
                break;
            }
        }
    })
    .await;
    drop(tx);
    within(15, "the stream ends after a half-close", async {
        while replies.next().await.is_some() {}
    })
    .await;
    // The leave notice is stored after the stream ended.
    let left = format!("User {user} left the chat");
    poll_until(&format!("{room}'s leave notice"), WAIT, || {
        let mut client = client.clone();
        let left = left.clone();
        async move {
            match last_message(&mut client, room).await {
                Some((sequence, ts, content)) if content == left => Ok((sequence, ts)),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
}

/// One participant opens `document` and submits each of `ops` in turn (no base sequence),
/// waiting for each to come back stored. Answers the document's last operation: (head,
/// timestamp).
async fn edit(server: &TestServer, document: &str, ops: &[&str]) -> (u64, i64) {
    let mut client = server.client().await;
    let (tx, rx) = mpsc::channel(8);
    let event = |kind: CollaborationEventType, id: &str, base: Option<u64>| CollaborationEvent {
        id: id.into(),
        document_id: document.into(),
        user_id: "editor".into(),
        r#type: kind as i32,
        payload: id.as_bytes().to_vec(),
        base_sequence: base,
        ..Default::default()
    };
    tx.send(event(CollaborationEventType::Join, "", None))
        .await
        .expect("queue");
    let mut replies = client
        .collaborate(ReceiverStream::new(rx))
        .await
        .expect("open the document")
        .into_inner();
    let mut last = (0, 0);
    for id in ops {
        tx.send(event(CollaborationEventType::Operation, id, None))
            .await
            .expect("send");
        last = within(15, "the operation comes back", async {
            loop {
                let e = replies.next().await.expect("open").expect("ok");
                if e.r#type == CollaborationEventType::Operation as i32 && e.id == *id {
                    break (e.sequence, micros(&e.timestamp));
                }
            }
        })
        .await;
    }
    drop(tx);
    within(15, "the stream ends after a half-close", async {
        while replies.next().await.is_some() {}
    })
    .await;
    last
}

/// An operation on an empty document whose base is stale: REJECTED, so the document's stream
/// is named in the store but holds no record.
async fn rejected_edit(server: &TestServer, document: &str) {
    let mut client = server.client().await;
    let (tx, rx) = mpsc::channel(8);
    for (kind, base) in [
        (CollaborationEventType::Join, None),
        (CollaborationEventType::Operation, Some(5)),
    ] {
        tx.send(CollaborationEvent {
            id: if base.is_some() {
                "late".into()
            } else {
                "".into()
            },
            document_id: document.into(),
            user_id: "editor".into(),
            r#type: kind as i32,
            payload: b"x".to_vec(),
            base_sequence: base,
            ..Default::default()
        })
        .await
        .expect("queue");
    }
    let mut replies = client
        .collaborate(ReceiverStream::new(rx))
        .await
        .expect("open the document")
        .into_inner();
    within(15, "the REJECTED answer", async {
        loop {
            let e = replies.next().await.expect("open").expect("ok");
            if e.r#type == CollaborationEventType::Rejected as i32 {
                assert_eq!(e.sequence, 0, "the head of an empty document: {e:?}");
                break;
            }
        }
    })
    .await;
    drop(tx);
    within(15, "the stream ends after a half-close", async {
        while replies.next().await.is_some() {}
    })
    .await;
}

/// What the store itself holds for a stream, read from its tables: `None` when the stream was
/// never named, otherwise how many records it has (SQLite) or its head (PostgreSQL). Only to
/// show that a test's empty stream is really there to be left out.
async fn interned_heads(server: &TestServer, kind_code: i16, key: &str) -> Option<i64> {
    use sqlx::Connection;
    match &server.db {
        Some(db) => {
            let mut conn = db.connect().await;
            let head: Option<i64> =
                sqlx::query_scalar("SELECT head FROM stream_heads WHERE kind = $1 AND key = $2")
                    .bind(kind_code)
                    .bind(key)
                    .fetch_optional(&mut conn)
                    .await
                    .expect("read stream_heads");
            let _ = conn.close().await;
            head
        }
        None => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(server.dir.path().join("streamhub.db"))
                .read_only(true);
            let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
                .await
                .expect("open the database");
            let count: Option<i64> = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM log WHERE stream = s.id) FROM streams s \
                 WHERE s.kind = ?1 AND s.key = ?2",
            )
            .bind(kind_code)
            .bind(key)
            .fetch_optional(&mut conn)
            .await
            .expect("read streams");
            let _ = conn.close().await;
            count
        }
    }
}

fn point(name: &str, labels: &[(&str, &str)], value: f64) -> MetricData {
    MetricData {
        name: name.into(),
        value,
        timestamp: None,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// A listed series as the assertions compare it: its name and sorted labels.
fn series_rows(response: &ListMetricSeriesResponse) -> Vec<(String, Vec<(String, String)>)> {
    response
        .series
        .iter()
        .map(|s| {
            assert!(s.buckets.is_empty(), "no buckets: {s:?}");
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            (s.name.clone(), labels)
        })
        .collect()
}

fn row(name: &str, labels: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

async fn series(client: &mut Client, prefix: &str, limit: u32) -> ListMetricSeriesResponse {
    client
        .list_metric_series(ListMetricSeriesRequest {
            name_prefix: prefix.into(),
            limit,
        })
        .await
        .unwrap_or_else(|s| panic!("ListMetricSeries {prefix:?}: {s:?}"))
        .into_inner()
}

/// The series of [`store_some_series`], in the order a listing gives them: names bytewise, then
/// label texts bytewise (`{"code":"200","method":"GET"}` < `{"code":"200","method":"POST"}`).
fn all_series() -> Vec<(String, Vec<(String, String)>)> {
    vec![
        row("cpu_seconds", &[("core", "0")]),
        row("cpu_seconds", &[("core", "1")]),
        row("http_latency_seconds", &[]),
        row("http_requests_total", &[("code", "200"), ("method", "GET")]),
        row(
            "http_requests_total",
            &[("code", "200"), ("method", "POST")],
        ),
        row("http_requests_total", &[("code", "500"), ("method", "GET")]),
        row("httpx_total", &[]),
    ]
}

async fn store_some_series(client: &mut Client) {
    let points = vec![
        point(
            "http_requests_total",
            &[("method", "GET"), ("code", "500")],
            1.0,
        ),
        point("httpx_total", &[], 2.0),
        point(
            "http_requests_total",
            &[("code", "200"), ("method", "POST")],
            3.0,
        ),
        point("cpu_seconds", &[("core", "1")], 4.0),
        point("http_latency_seconds", &[], 5.0),
        point(
            "http_requests_total",
            &[("code", "200"), ("method", "GET")],
            6.0,
        ),
        point("cpu_seconds", &[("core", "0")], 7.0),
        // A second point of a series: still one series.
        point("cpu_seconds", &[("core", "0")], 8.0),
    ];
    let result = client
        .collect_metrics(tokio_stream::iter(points))
        .await
        .expect("collect")
        .into_inner();
    assert_eq!((result.metrics_stored, result.metrics_rejected), (8, 0));
}

fn token(sub: &str, role: Role, metrics: Option<MetricsAccess>) -> String {
    mint_hs256_with(
        SECRET.as_bytes(),
        sub,
        role,
        Duration::from_secs(3600),
        &TokenGrants {
            metrics,
            ..TokenGrants::default()
        },
    )
    .expect("mint")
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// ListStreams
// ---------------------------------------------------------------------------------------------

store_tests!(every_kind_lists_its_streams_with_exact_heads_and_last_timestamps);
/// Events of three users, two inboxes, two chat rooms and two documents (one of them named only
/// by a rejected operation): each kind lists exactly its own streams that hold records, in key
/// order, with the head and timestamp the writing calls answered.
async fn every_kind_lists_its_streams_with_exact_heads_and_last_timestamps(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let mut client = server.client().await;
    within(120, "listing every kind", async {
        let mut last = HashMap::new();
        for user in ["cy", "ann", "bob", "ann", "cy", "ann"] {
            last.insert(user, publish(&mut client, user).await);
        }
        let mut inbox = (0, 0);
        for title in ["one", "two"] {
            let n = client
                .publish_notification(PublishNotificationRequest {
                    user_id: "ann".into(),
                    topic: "news".into(),
                    title: title.into(),
                    ..Default::default()
                })
                .await
                .expect("notify")
                .into_inner();
            inbox = (n.sequence, micros(&n.timestamp));
        }
        let lobby = chat_visit(&server, "lobby", "ann", "hi").await;
        let team = chat_visit(&server, "team-a", "bob", "hello").await;
        let spec = edit(&server, "spec", &["op-1", "op-2"]).await;
        rejected_edit(&server, "ghost").await;
        assert_eq!(
            interned_heads(&server, 4, "ghost").await,
            Some(0),
            "the rejected operation named the document without storing a record"
        );

        let entry = |key: &str, (head, ts): (u64, i64)| (key.to_string(), head, ts);
        assert_eq!(last["ann"].0, 3);
        assert_eq!(
            all(&mut client, Events, "").await,
            vec![
                entry("ann", last["ann"]),
                entry("bob", last["bob"]),
                entry("cy", last["cy"]),
            ]
        );
        assert_eq!(inbox.0, 2);
        assert_eq!(
            all(&mut client, Notifications, "").await,
            vec![entry("ann", inbox)]
        );
        // Join notice, message, leave notice.
        assert_eq!((lobby.0, team.0), (3, 3));
        assert_eq!(
            all(&mut client, Chat, "").await,
            vec![entry("lobby", lobby), entry("team-a", team)]
        );
        // Two operations; "ghost" has no record and is not listed.
        assert_eq!(spec.0, 2);
        assert_eq!(
            all(&mut client, Collaboration, "").await,
            vec![entry("spec", spec)]
        );
        assert_eq!(all(&mut client, Collaboration, "gh").await, vec![]);
        // A stream's listing follows its appends.
        let next = publish(&mut client, "bob").await;
        assert_eq!(next.0, 2);
        assert_eq!(
            all(&mut client, Events, "b").await,
            vec![entry("bob", next)]
        );
    })
    .await;
}

store_tests!(a_prefix_is_literal_text_and_keys_order_bytewise);
/// `%` and `_` in a prefix match only themselves; keys order by their bytes (`A` < `_` < `a`,
/// ASCII before `é`), whatever the database's locale.
async fn a_prefix_is_literal_text_and_keys_order_bytewise(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let mut client = server.client().await;
    within(120, "prefix listings", async {
        let users = [
            "a", "a%", "a%b", "a_b", "aXb", "ab", "a b", "Ab", "b%", "%x", "_y", "é1", "éa", "ê",
            "e", "100%",
        ];
        import(
            &mut client,
            &users.iter().map(|u| (u.to_string(), 1)).collect::<Vec<_>>(),
        )
        .await;
        let mut sorted: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        sorted.sort(); // `String` orders bytewise.
        let names = |listing: Vec<Listed>| -> Vec<String> {
            listing
                .into_iter()
                .map(|(key, head, _)| {
                    assert_eq!(head, 1, "{key}");
                    key
                })
                .collect()
        };
        assert_eq!(names(all(&mut client, Events, "").await), sorted);
        for (prefix, expected) in [
            ("a%", vec!["a%", "a%b"]),
            ("a_", vec!["a_b"]),
            ("%", vec!["%x"]),
            ("_", vec!["_y"]),
            ("a", vec!["a", "a b", "a%", "a%b", "aXb", "a_b", "ab"]),
            ("A", vec!["Ab"]),
            ("é", vec!["é1", "éa"]),
            ("100%", vec!["100%"]),
            ("a%b", vec!["a%b"]),
            ("a%bc", vec![]),
            ("z", vec![]),
        ] {
            assert_eq!(
                names(all(&mut client, Events, prefix).await),
                expected,
                "prefix {prefix:?}"
            );
        }
        // Other kinds hold none of them.
        assert_eq!(all(&mut client, Notifications, "a").await, vec![]);
    })
    .await;
}

store_tests!(pages_of_100_walk_250_streams_and_a_large_limit_is_lowered_to_1000);
/// 250 streams `user-000` … `user-249` (stream i holds i % 3 + 1 records) among 1,001: three
/// pages of 100, 100 and 50 with tokens between them and none after the last; a full last page
/// has no token either; limit 0 means 100; a limit of 5,000 gets 1,000 and a token.
async fn pages_of_100_walk_250_streams_and_a_large_limit_is_lowered_to_1000(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let mut client = server.client().await;
    within(180, "paging", async {
        let users: Vec<(String, u64)> = (0..250)
            .map(|i| (format!("user-{i:03}"), i % 3 + 1))
            .chain((0..751).map(|i| (format!("zz-{i:03}"), 1)))
            .collect();
        import(&mut client, &users).await;
        // Each stream's last timestamp, read back through its history.
        let mut expected = Vec::new();
        for (user, n) in &users[..250] {
            let events = client
                .stream_user_events(proto::StreamUserEventsRequest {
                    user_id: user.clone(),
                    history_only: true,
                    ..Default::default()
                })
                .await
                .expect("replay")
                .into_inner()
                .collect::<Vec<_>>()
                .await;
            let last = events.last().expect("an event").as_ref().expect("ok");
            assert_eq!(last.sequence, *n, "{user}");
            expected.push((user.clone(), *n, micros(&last.timestamp)));
        }

        let first = page(&mut client, Events, "user-", "", 100).await;
        assert_eq!(listed(&first), expected[..100]);
        assert_ne!(first.next_page_token, "");
        // The same request gives the same token.
        let again = page(&mut client, Events, "user-", "", 100).await;
        assert_eq!(again.next_page_token, first.next_page_token);
        let second = page(&mut client, Events, "user-", &first.next_page_token, 100).await;
        assert_eq!(listed(&second), expected[100..200]);
        assert_ne!(second.next_page_token, "");
        assert_ne!(second.next_page_token, first.next_page_token);
        let third = page(&mut client, Events, "user-", &second.next_page_token, 100).await;
        assert_eq!(listed(&third), expected[200..]);
        assert_eq!(third.next_page_token, "", "the last page has no token");
        // A limit of 0 means 100.
        let default = page(&mut client, Events, "user-", "", 0).await;
        assert_eq!(listed(&default), expected[..100]);
        assert_eq!(default.next_page_token, first.next_page_token);
        // Exactly 100 streams under "user-1": one full page, and it is the last.
        let full = page(&mut client, Events, "user-1", "", 100).await;
        assert_eq!(listed(&full), expected[100..200]);
        assert_eq!(full.next_page_token, "");
        // A token from one prefix continues in another from the same key on: positions, not
        // queries.
        let crossed = page(&mut client, Events, "user-", &first.next_page_token, 3).await;
        assert_eq!(listed(&crossed), expected[100..103]);

        // 1,001 streams in all: a limit of 5,000 is lowered to 1,000.
        let big = page(&mut client, Events, "", "", 5000).await;
        assert_eq!(big.streams.len(), 1000);
        assert_eq!(listed(&big)[..250], expected[..]);
        assert_eq!(big.streams[999].key, "zz-749");
        assert_ne!(big.next_page_token, "");
        let rest = page(&mut client, Events, "", &big.next_page_token, 5000).await;
        assert_eq!(keys(&rest), vec!["zz-750"]);
        assert_eq!(rest.next_page_token, "");
    })
    .await;
}

store_tests!(an_empty_store_lists_nothing);
/// No streams and no series: every kind lists an empty last page, and no series are known.
async fn an_empty_store_lists_nothing(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let mut client = server.client().await;
    for kind in [Events, Notifications, Chat, Collaboration] {
        let answer = page(&mut client, kind, "", "", 0).await;
        assert_eq!(answer, ListStreamsResponse::default(), "{kind:?}");
    }
    assert_eq!(
        series(&mut client, "", 0).await,
        ListMetricSeriesResponse::default()
    );
}

store_tests!(bad_listing_requests_get_invalid_argument);
/// Every malformed request and the code it gets: an unset or unknown kind, a page token this
/// server did not make (or made for another kind), a prefix no key can have; a limit over the
/// maximum is lowered, not refused.
async fn bad_listing_requests_get_invalid_argument(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let mut client = server.client().await;
    // "k" is 0x6b: the token has a hex letter, so it has a form in capitals.
    for user in ["k1", "k2"] {
        publish(&mut client, user).await;
    }
    let events_token = page(&mut client, Events, "", "", 1).await.next_page_token;
    assert_ne!(events_token, "");
    let long_prefix = "p".repeat(129);
    let cases: Vec<(&str, ListStreamsRequest, Option<Code>)> = vec![
        (
            "UNSPECIFIED kind",
            request(proto::StreamKind::Unspecified, "", "", 0),
            Some(Code::InvalidArgument),
        ),
        (
            "unknown kind 99",
            ListStreamsRequest {
                kind: 99,
                ..Default::default()
            },
            Some(Code::InvalidArgument),
        ),
        (
            "negative kind",
            ListStreamsRequest {
                kind: -1,
                ..Default::default()
            },
            Some(Code::InvalidArgument),
        ),
        (
            "a token that is not hex",
            request(Events, "", "not a token", 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a token of odd length",
            request(Events, "", &events_token[1..], 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a token in capitals",
            request(Events, "", &events_token.to_uppercase(), 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a token with only a kind",
            request(Events, "", "01", 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a token whose key is not UTF-8",
            request(Events, "", "01ff", 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a token whose key is a control character",
            request(Events, "", "010a", 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a token of another kind",
            request(Chat, "", &events_token, 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a token longer than any key",
            request(Events, "", &format!("01{}", "61".repeat(129)), 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a prefix with a newline",
            request(Events, "u\n", "", 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a prefix with NUL",
            request(Events, "u\0", "", 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a prefix longer than a key",
            request(Events, &long_prefix, "", 0),
            Some(Code::InvalidArgument),
        ),
        (
            "a prefix as long as a key",
            request(Events, &long_prefix[1..], "", 0),
            None,
        ),
        ("limit 5000 (lowered)", request(Events, "", "", 5000), None),
        ("limit 1", request(Events, "", "", 1), None),
        ("the token", request(Events, "", &events_token, 0), None),
    ];
    for (what, request, code) in cases {
        let result = client.list_streams(request).await;
        match code {
            Some(code) => expect_code(what, result, code),
            None => {
                result.unwrap_or_else(|s| panic!("{what}: {s:?}"));
            }
        }
    }
    // The token continues after k1.
    let next = page(&mut client, Events, "", &events_token, 0).await;
    assert_eq!(keys(&next), vec!["k2"]);

    let metric_cases: Vec<(&str, ListMetricSeriesRequest, Option<Code>)> = vec![
        (
            "a prefix that starts with a digit",
            ListMetricSeriesRequest {
                name_prefix: "9a".into(),
                limit: 0,
            },
            Some(Code::InvalidArgument),
        ),
        (
            "a prefix with a dash",
            ListMetricSeriesRequest {
                name_prefix: "http-".into(),
                limit: 0,
            },
            Some(Code::InvalidArgument),
        ),
        (
            "a prefix with %",
            ListMetricSeriesRequest {
                name_prefix: "http%".into(),
                limit: 0,
            },
            Some(Code::InvalidArgument),
        ),
        (
            "a prefix longer than a name",
            ListMetricSeriesRequest {
                name_prefix: "a".repeat(257),
                limit: 0,
            },
            Some(Code::InvalidArgument),
        ),
        (
            "a prefix as long as a name",
            ListMetricSeriesRequest {
                name_prefix: "a".repeat(256),
                limit: 0,
            },
            None,
        ),
        (
            "limit 5000 (lowered)",
            ListMetricSeriesRequest {
                name_prefix: String::new(),
                limit: 5000,
            },
            None,
        ),
    ];
    for (what, request, code) in metric_cases {
        let result = client.list_metric_series(request).await;
        match code {
            Some(code) => expect_code(what, result, code),
            None => {
                result.unwrap_or_else(|s| panic!("{what}: {s:?}"));
            }
        }
    }
}

store_tests!(with_auth_on_only_services_list_streams_and_series_need_the_metrics_claim);
/// With auth on: a user token is refused ListStreams (before its request is even looked at), a
/// service token lists; ListMetricSeries takes what QueryMetrics takes: a service, or a user
/// whose `metrics` claim is `read` or `write`.
async fn with_auth_on_only_services_list_streams_and_series_need_the_metrics_claim(
    kind: StoreKind,
) {
    let server = TestServer::start_on(kind, |c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
    })
    .await;
    let service = token("backend", Role::Service, None);
    let mut backend = client_as(server.addr, &service).await;
    let ann = token("ann", Role::User, None);
    let mut ann_client = client_as(server.addr, &ann).await;
    let reader = token("dash", Role::User, Some(MetricsAccess::Read));
    let mut reader_client = client_as(server.addr, &reader).await;
    let writer = token("pusher", Role::User, Some(MetricsAccess::Write));
    let mut writer_client = client_as(server.addr, &writer).await;
    let mut anonymous = client_with_header(server.addr, None).await;

    // Ann writes her own events; only the service may list them.
    let event = ann_client
        .publish_user_event(PublishUserEventRequest {
            user_id: "ann".into(),
            r#type: UserEventType::Login as i32,
            ..Default::default()
        })
        .await
        .expect("ann publishes")
        .into_inner();
    for (what, request) in [
        ("her own kind", request(Events, "ann", "", 0)),
        (
            "a bad kind",
            request(proto::StreamKind::Unspecified, "", "", 0),
        ),
        ("chat", request(Chat, "", "", 0)),
    ] {
        expect_code(
            &format!("a user token, {what}"),
            ann_client.list_streams(request).await,
            Code::PermissionDenied,
        );
    }
    expect_code(
        "a user token with the metrics claim",
        reader_client.list_streams(request(Events, "", "", 0)).await,
        Code::PermissionDenied,
    );
    expect_code(
        "no token",
        anonymous.list_streams(request(Events, "", "", 0)).await,
        Code::Unauthenticated,
    );
    let listed_by_service = backend
        .list_streams(request(Events, "", "", 0))
        .await
        .expect("a service lists")
        .into_inner();
    assert_eq!(
        listed(&listed_by_service),
        vec![("ann".to_string(), 1, micros(&event.timestamp))]
    );
    expect_code(
        "a service token, bad kind",
        backend
            .list_streams(request(proto::StreamKind::Unspecified, "", "", 0))
            .await,
        Code::InvalidArgument,
    );

    // Series: written by the pusher, listed by whoever may query.
    writer_client
        .collect_metrics(tokio_stream::iter(vec![point(
            "jobs_total",
            &[("queue", "mail")],
            1.0,
        )]))
        .await
        .expect("collect");
    let expected = vec![row("jobs_total", &[("queue", "mail")])];
    expect_code(
        "a user token without the metrics claim",
        ann_client
            .list_metric_series(ListMetricSeriesRequest::default())
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        "no token",
        anonymous
            .list_metric_series(ListMetricSeriesRequest::default())
            .await,
        Code::Unauthenticated,
    );
    for (what, client) in [
        ("metrics: read", &mut reader_client),
        ("metrics: write", &mut writer_client),
        ("a service", &mut backend),
    ] {
        let answer = client
            .list_metric_series(ListMetricSeriesRequest::default())
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"))
            .into_inner();
        assert_eq!(series_rows(&answer), expected, "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// ListMetricSeries
// ---------------------------------------------------------------------------------------------

store_tests!(metric_series_list_by_name_then_labels_with_literal_prefixes);
/// Seven series of four names: listed by name, then label text, bytewise; a prefix selects by
/// name (its `_` is literal: `http_` leaves `httpx_total` out); a limit cuts the list.
async fn metric_series_list_by_name_then_labels_with_literal_prefixes(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let mut client = server.client().await;
    store_some_series(&mut client).await;
    let every = all_series();
    assert_eq!(series_rows(&series(&mut client, "", 0).await), every);
    assert_eq!(
        series_rows(&series(&mut client, "http_", 0).await),
        every[2..6]
    );
    assert_eq!(
        series_rows(&series(&mut client, "http", 0).await),
        every[2..]
    );
    assert_eq!(
        series_rows(&series(&mut client, "http_requests_total", 0).await),
        every[3..6]
    );
    assert_eq!(
        series_rows(&series(&mut client, "cpu_seconds", 1).await),
        every[..1]
    );
    assert_eq!(series_rows(&series(&mut client, "", 3).await), every[..3]);
    assert_eq!(series_rows(&series(&mut client, "zzz", 0).await), vec![]);
    // A later point of a known series adds no series; a new label set adds one, and label
    // texts order bytewise: `{"a":"1"}` before `{}`.
    client
        .collect_metrics(tokio_stream::iter(vec![
            point("httpx_total", &[], 9.0),
            point("httpx_total", &[("a", "1")], 9.0),
        ]))
        .await
        .expect("collect");
    assert_eq!(
        series_rows(&series(&mut client, "httpx", 0).await),
        vec![row("httpx_total", &[("a", "1")]), row("httpx_total", &[])]
    );
}

// ---------------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------------

/// The variables that would point the CLI elsewhere than the test says.
const ENV: &[&str] = &[
    "STREAMHUB_SERVER",
    "STREAMHUB_TOKEN",
    "STREAMHUB_CA_CERT",
    "STREAMHUB_CLIENT_CERT",
    "STREAMHUB_CLIENT_KEY",
];

/// Runs the built binary to its end off the runtime's threads (the server runs on them).
async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let what = format!("streamhub {}", args.join(" "));
    within(60, &what, async move {
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_streamhub"));
            for name in ENV {
                command.env_remove(name);
            }
            command
                .env("NO_COLOR", "1")
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .expect("run streamhub")
        })
        .await
        .expect("runner thread")
    })
    .await
}

#[track_caller]
fn ok_output(output: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        output.status.code()
    );
    (stdout, stderr)
}

/// `streamhub streams list` prints key, head and last time under a header, pages with the
/// command it prints on stderr, takes `collab` for collaboration, prints proto3 JSON with
/// `--json`, and answers a service-only refusal with a non-zero exit; `streamhub metrics series`
/// prints one series a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_streams_and_series() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let addr = server.addr.to_string();
    let mut last = HashMap::new();
    for user in ["ann", "bob", "ann", "carol-with-a-long-name"] {
        last.insert(user, publish(&mut client, user).await);
    }
    let timestamp_text = |user: &str| {
        let ts = micros_to_timestamp(last[user].1);
        ts.to_string()
    };
    store_some_series(&mut client).await;

    let (stdout, stderr) =
        ok_output(&cli(&["streams", "list", "--kind", "events", "--server", &addr]).await);
    let width = "carol-with-a-long-name".len();
    let expected = [
        format!("{:<width$}  head  last record", "key"),
        format!("{:<width$}     2  {}", "ann", timestamp_text("ann")),
        format!("{:<width$}     1  {}", "bob", timestamp_text("bob")),
        format!(
            "carol-with-a-long-name     1  {}",
            timestamp_text("carol-with-a-long-name")
        ),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stderr}");
    assert_eq!(stderr, "", "no more pages");

    // One a page: the hint names the next page's command, which gives the next stream.
    let (stdout, stderr) = ok_output(
        &cli(&[
            "--server", &addr, "streams", "list", "--kind", "events", "--limit", "1",
        ])
        .await,
    );
    assert_eq!(
        stdout.lines().nth(1).map(|l| l.split_whitespace().next()),
        Some(Some("ann"))
    );
    let token = stderr
        .trim()
        .strip_suffix(')')
        .and_then(|s| s.rsplit_once("--page-token "))
        .map(|(_, token)| token.to_string())
        .unwrap_or_else(|| panic!("no next page in {stderr:?}"));
    assert!(
        stderr.starts_with("(more streams: streamhub streams list --kind events --limit 1 "),
        "{stderr}"
    );
    let (stdout, _) = ok_output(
        &cli(&[
            "--server",
            &addr,
            "streams",
            "list",
            "--kind",
            "events",
            "--limit",
            "1",
            "--page-token",
            &token,
        ])
        .await,
    );
    assert_eq!(
        stdout.lines().nth(1).map(|l| l.split_whitespace().next()),
        Some(Some("bob"))
    );

    // --json is the ListStreamsResponse, as the RPC answers it.
    let (stdout, _) = ok_output(
        &cli(&[
            "--server", &addr, "streams", "list", "--kind", "events", "--prefix", "a", "--json",
        ])
        .await,
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({
            "streams": [{
                "key": "ann",
                "head": "2",
                "lastTimestamp": timestamp_text("ann"),
            }]
        })
    );
    let (stdout, stderr) =
        ok_output(&cli(&["--server", &addr, "streams", "list", "--kind", "collab"]).await);
    assert_eq!((stdout.as_str(), stderr.as_str()), ("", "(no streams)\n"));

    // Bad input: a kind clap does not know never reaches the server; a bad token does.
    let output = cli(&["--server", &addr, "streams", "list", "--kind", "rooms"]).await;
    assert_eq!(output.status.code(), Some(2));
    let output = cli(&[
        "--server",
        &addr,
        "streams",
        "list",
        "--kind",
        "events",
        "--page-token",
        "zz",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");

    // Series, one a line.
    let (stdout, _) = ok_output(&cli(&["--server", &addr, "metrics", "series"]).await);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "cpu_seconds{core=\"0\"}",
            "cpu_seconds{core=\"1\"}",
            "http_latency_seconds",
            "http_requests_total{code=\"200\",method=\"GET\"}",
            "http_requests_total{code=\"200\",method=\"POST\"}",
            "http_requests_total{code=\"500\",method=\"GET\"}",
            "httpx_total",
        ]
    );
    let (stdout, _) = ok_output(
        &cli(&[
            "--server", &addr, "metrics", "series", "--prefix", "http_r", "--json",
        ])
        .await,
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(json["series"].as_array().map(Vec::len), Some(3), "{json}");
    assert_eq!(json["series"][2]["labels"]["code"], "500");
}

/// Whether a service token is needed shows at the CLI as PermissionDenied and exit status 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_needs_a_service_token_to_list_streams() {
    let server = TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
    })
    .await;
    let addr = server.addr.to_string();
    let user = token("ann", Role::User, None);
    let output = cli(&[
        "--server", &addr, "--token", &user, "streams", "list", "--kind", "events",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    let service = token("backend", Role::Service, None);
    let (stdout, stderr) = ok_output(
        &cli(&[
            "--server", &addr, "--token", &service, "streams", "list", "--kind", "events",
        ])
        .await,
    );
    assert_eq!((stdout.as_str(), stderr.as_str()), ("", "(no streams)\n"));
}

fn micros_to_timestamp(micros: i64) -> Timestamp {
    streamhub::proto::timestamp_from_micros(micros)
}
