//! Tenancy with auth on, against the real server: who may use which chat room and collaboration
//! document (the `#` user boundary, the token's `rooms`/`documents` claims, the server's public
//! patterns), the `metrics` claim, the token's issuer and lifetime, the per-user subscription
//! limit, and a chat client that resets its stream while its join is being stored.

mod common;

use common::{TestServer, poll_until, within};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use streamhub::auth::{MetricsAccess, Role, TokenGrants, mint_hs256_with};
use streamhub::proto::*;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

const SECRET: &str = "an hs256 secret of at least 32 bytes, for tests";
const HOUR: Duration = Duration::from_secs(3600);

type Client = common::AuthClient;
use common::client_as;

fn token(sub: &str, role: Role, grants: TokenGrants<'_>) -> String {
    mint_hs256_with(SECRET.as_bytes(), sub, role, HOUR, &grants).unwrap()
}

fn user(sub: &str) -> String {
    token(sub, Role::User, TokenGrants::default())
}

fn service() -> String {
    token("backend", Role::Service, TokenGrants::default())
}

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
        c.public_rooms = vec!["lobby".into(), "open-*".into()];
        c.public_documents = vec!["wiki-*".into()];
    })
    .await
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

/// Joins `room` with a first message of `content` (empty: just join). The sender keeps the
/// session open.
async fn chat(
    client: &mut Client,
    room: &str,
    content: &str,
) -> Result<(mpsc::Sender<ChatMessage>, Streaming<ChatMessage>), Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(ChatMessage {
        room_id: room.into(),
        content: content.into(),
        r#type: if content.is_empty() {
            ChatMessageType::Unspecified
        } else {
            ChatMessageType::Text
        } as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    let stream = client.chat(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, stream))
}

/// Opens `document` with a JOIN.
async fn collaborate(
    client: &mut Client,
    document: &str,
) -> Result<
    (
        mpsc::Sender<CollaborationEvent>,
        Streaming<CollaborationEvent>,
    ),
    Status,
> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(CollaborationEvent {
        document_id: document.into(),
        r#type: CollaborationEventType::Join as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    let stream = client
        .collaborate(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, stream))
}

/// The stored messages of a room as (user, content), read with a service token.
async fn history(addr: SocketAddr, room: &str) -> Vec<(String, String)> {
    let mut admin = client_as(addr, &service()).await;
    let page = admin
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    page.messages
        .into_iter()
        .map(|m| (m.user_id, m.content))
        .collect()
}

/// Reads the room stream until a message with `content` arrives.
async fn until_content(stream: &mut Streaming<ChatMessage>, content: &str) -> ChatMessage {
    loop {
        let message = stream.next().await.expect("stream open").expect("message");
        if message.content == content {
            return message;
        }
    }
}

/// Posts one message and waits for the room to hand it back.
async fn post_and_see(
    tx: &mpsc::Sender<ChatMessage>,
    stream: &mut Streaming<ChatMessage>,
    content: &str,
) {
    tx.send(ChatMessage {
        content: content.into(),
        r#type: ChatMessageType::Text as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    until_content(stream, content).await;
}

#[tokio::test]
async fn rooms_open_by_boundary_by_claim_or_by_server_pattern_and_refuse_everyone_else() {
    within(60, "rooms", async {
        let server = server().await;
        let granted = token(
            "ann",
            Role::User,
            TokenGrants {
                rooms: Some(&["team-*".into(), "exact".into(), "dm#bob,carl".into()]),
                ..TokenGrants::default()
            },
        );
        let mut ann = client_as(server.addr, &user("ann")).await;
        let mut ann_granted = client_as(server.addr, &granted).await;

        // Each way in: the session is open, the post is stored and delivered. `true` picks the
        // token with the `rooms` claim.
        let allowed = [
            (false, "dm#ann,bob"),
            (false, "notes#ann"),
            (false, "lobby"),
            (false, "open-42"),
            (true, "team-red"),
            (true, "exact"),
            // A token claim may open an id past a boundary; server patterns never do.
            (true, "dm#bob,carl"),
        ];
        for (with_claim, room) in allowed {
            let client = if with_claim {
                &mut ann_granted
            } else {
                &mut ann
            };
            let (tx, mut stream) = chat(client, room, "").await.unwrap_or_else(|status| {
                panic!("{room}: {status:?}");
            });
            post_and_see(&tx, &mut stream, &format!("hello {room}")).await;
            assert_eq!(
                history(server.addr, room).await.last().unwrap(),
                &("ann".to_string(), format!("hello {room}")),
                "{room}"
            );
        }

        // Everyone else: PERMISSION_DENIED before anything is stored.
        let refused = [
            (false, "dm#bob,carl"),
            (false, "dm# ann"),
            (false, "dm#Ann"),
            (false, "dm#ann#bob"),
            (false, "team-red"),
            (false, "lobby2"),
            (false, "open-#ann2"),
            (true, "exactly"),
            (true, "Team-red"),
        ];
        for (with_claim, room) in refused {
            let client = if with_claim {
                &mut ann_granted
            } else {
                &mut ann
            };
            expect_code(
                &format!("join {room}"),
                chat(client, room, "sneaky").await.map(|_| ()),
                Code::PermissionDenied,
            );
            expect_code(
                &format!("history of {room}"),
                client
                    .get_chat_history(GetChatHistoryRequest {
                        room_id: room.into(),
                        ..Default::default()
                    })
                    .await,
                Code::PermissionDenied,
            );
            if room != "dm#bob,carl" && room != "team-red" {
                assert_eq!(history(server.addr, room).await, vec![], "{room}");
            }
        }
        // Rooms that exist: the refused attempt added no join notice and no message.
        for room in ["dm#bob,carl", "team-red"] {
            let stored = history(server.addr, room).await;
            assert!(
                stored
                    .iter()
                    .all(|(_, content)| !content.contains("sneaky")),
                "{room}: {stored:?}"
            );
            let joins = stored
                .iter()
                .filter(|(_, content)| content == "User ann joined the chat")
                .count();
            assert_eq!(
                joins, 1,
                "{room}: only the granted session joined: {stored:?}"
            );
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn server_patterns_never_open_direct_messages() {
    within(60, "public star", async {
        let server = TestServer::start_with(|c| {
            c.auth = true;
            c.auth_hs256_secret = Some(SECRET.to_string().into());
            c.public_rooms = vec!["*".into()];
            c.public_documents = vec!["*".into()];
        })
        .await;
        let mut ann = client_as(server.addr, &user("ann")).await;
        chat(&mut ann, "anything-at-all", "").await.unwrap();
        collaborate(&mut ann, "any-document").await.unwrap();
        expect_code(
            "dm of others",
            chat(&mut ann, "dm#bob,carl", "").await.map(|_| ()),
            Code::PermissionDenied,
        );
        expect_code(
            "document of others",
            collaborate(&mut ann, "notes#bob").await.map(|_| ()),
            Code::PermissionDenied,
        );
        server.stop().await;
    })
    .await;
}

/// Reads collaboration events until a JOIN of `user` arrives, and returns every JOIN user seen
/// on the way.
async fn joins_until(stream: &mut Streaming<CollaborationEvent>, user: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let event = stream.next().await.expect("stream open").expect("event");
        if event.r#type == CollaborationEventType::Join as i32 {
            seen.push(event.user_id.clone());
            if event.user_id == user {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn documents_follow_the_same_three_rules_and_a_refusal_announces_nothing() {
    within(60, "documents", async {
        let server = server().await;
        let granted = token(
            "ann",
            Role::User,
            TokenGrants {
                documents: Some(&["plan-*".into()]),
                ..TokenGrants::default()
            },
        );
        let mut ann = client_as(server.addr, &user("ann")).await;
        let mut ann_granted = client_as(server.addr, &granted).await;
        let mut admin = client_as(server.addr, &service()).await;

        for (with_claim, document) in [
            (false, "notes#ann"),
            (false, "shared#bob,ann"),
            (false, "wiki-home"),
            (true, "plan-q3"),
        ] {
            let client = if with_claim {
                &mut ann_granted
            } else {
                &mut ann
            };
            let (tx, mut stream) = collaborate(client, document)
                .await
                .unwrap_or_else(|status| panic!("{document}: {status:?}"));
            tx.send(CollaborationEvent {
                r#type: CollaborationEventType::Operation as i32,
                payload: b"insert".to_vec(),
                base_sequence: Some(0),
                ..Default::default()
            })
            .await
            .unwrap();
            loop {
                let event = stream.next().await.unwrap().unwrap();
                if event.r#type == CollaborationEventType::Operation as i32 {
                    assert_eq!((event.sequence, event.user_id.as_str()), (1, "ann"));
                    break;
                }
            }
        }

        // A service participant watches the document (present once its call is answered); bob's
        // grant lets him in after the refused attempts, so the first JOIN the watcher sees
        // must be bob's.
        let (_watch_tx, mut watcher) = collaborate(&mut admin, "plan-secret").await.unwrap();
        for (with_claim, document) in [
            (false, "plan-secret"),
            (false, "notes#bob"),
            (false, "wiki"),
            (true, "Plan-q3"),
        ] {
            let client = if with_claim {
                &mut ann_granted
            } else {
                &mut ann
            };
            expect_code(
                &format!("open {document}"),
                collaborate(client, document).await.map(|_| ()),
                Code::PermissionDenied,
            );
        }
        let bob_token = token(
            "bob",
            Role::User,
            TokenGrants {
                documents: Some(&["plan-secret".into()]),
                ..TokenGrants::default()
            },
        );
        let mut bob = client_as(server.addr, &bob_token).await;
        let (_bob_tx, _bob_stream) = collaborate(&mut bob, "plan-secret").await.unwrap();
        assert_eq!(joins_until(&mut watcher, "bob").await, vec!["bob"]);
        server.stop().await;
    })
    .await;
}

fn point(name: &str, value: f64) -> MetricData {
    MetricData {
        name: name.into(),
        value,
        ..Default::default()
    }
}

async fn collect(client: &mut Client, points: Vec<MetricData>) -> Result<u64, Status> {
    Ok(client
        .collect_metrics(tokio_stream::iter(points))
        .await?
        .into_inner()
        .metrics_stored)
}

async fn query(client: &mut Client, name: &str) -> Result<usize, Status> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Ok(client
        .query_metrics(QueryMetricsRequest {
            name: name.into(),
            start: Some(prost_types::Timestamp {
                seconds: now - 600,
                nanos: 0,
            }),
            end: Some(prost_types::Timestamp {
                seconds: now + 600,
                nanos: 0,
            }),
            step_seconds: 60,
            ..Default::default()
        })
        .await?
        .into_inner()
        .series
        .len())
}

#[tokio::test]
async fn metrics_need_a_service_token_or_the_metrics_claim() {
    within(60, "metrics claims", async {
        let server = server().await;
        let with = |access| {
            token(
                "ann",
                Role::User,
                TokenGrants {
                    metrics: Some(access),
                    ..TokenGrants::default()
                },
            )
        };
        let mut plain = client_as(server.addr, &user("ann")).await;
        let mut reader = client_as(server.addr, &with(MetricsAccess::Read)).await;
        let mut writer = client_as(server.addr, &with(MetricsAccess::Write)).await;
        let mut admin = client_as(server.addr, &service()).await;

        expect_code(
            "collect without claim",
            collect(&mut plain, vec![point("cpu", 1.0)]).await,
            Code::PermissionDenied,
        );
        expect_code(
            "query without claim",
            query(&mut plain, "cpu").await,
            Code::PermissionDenied,
        );
        expect_code(
            "collect with read",
            collect(&mut reader, vec![point("cpu", 1.0)]).await,
            Code::PermissionDenied,
        );
        assert_eq!(
            query(&mut reader, "cpu").await.unwrap(),
            0,
            "nothing was stored"
        );
        assert_eq!(
            collect(&mut writer, vec![point("cpu", 1.0)]).await.unwrap(),
            1
        );
        assert_eq!(
            collect(&mut admin, vec![point("mem", 2.0)]).await.unwrap(),
            1
        );
        assert_eq!(query(&mut writer, "cpu").await.unwrap(), 1);
        assert_eq!(query(&mut reader, "mem").await.unwrap(), 1);
        assert_eq!(query(&mut admin, "cpu").await.unwrap(), 1);
        server.stop().await;
    })
    .await;
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn raw_token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_need_the_trusted_issuer_a_bounded_lifetime_and_well_formed_claims() {
    within(60, "token checks", async {
        let server = TestServer::start_with(|c| {
            c.auth = true;
            c.auth_hs256_secret = Some(SECRET.to_string().into());
            c.auth_issuer = Some("https://id.example".into());
            c.auth_max_token_ttl_secs = 3600;
        })
        .await;
        let now = now_secs();
        let iss = "https://id.example";
        let cases = [
            ("good", serde_json::json!({"sub": "ann", "iss": iss, "iat": now, "exp": now + 3600}), Code::Ok),
            ("other issuer", serde_json::json!({"sub": "ann", "iss": "https://evil.example", "iat": now, "exp": now + 60}), Code::Unauthenticated),
            ("no issuer", serde_json::json!({"sub": "ann", "iat": now, "exp": now + 60}), Code::Unauthenticated),
            ("lives too long", serde_json::json!({"sub": "ann", "iss": iss, "iat": now, "exp": now + 3601}), Code::Unauthenticated),
            ("issued in the future", serde_json::json!({"sub": "ann", "iss": iss, "iat": now + 86_400, "exp": now + 86_460}), Code::Unauthenticated),
            ("issuer in an array", serde_json::json!({"sub": "ann", "iss": [iss, "x"], "iat": now, "exp": now + 60}), Code::Unauthenticated),
            ("no iat", serde_json::json!({"sub": "ann", "iss": iss, "exp": now + 60}), Code::Unauthenticated),
            ("rooms is a string", serde_json::json!({"sub": "ann", "iss": iss, "iat": now, "exp": now + 60, "rooms": "lobby"}), Code::Unauthenticated),
            ("documents holds a number", serde_json::json!({"sub": "ann", "iss": iss, "iat": now, "exp": now + 60, "documents": [1]}), Code::Unauthenticated),
            ("metrics is unknown", serde_json::json!({"sub": "ann", "iss": iss, "iat": now, "exp": now + 60, "metrics": "all"}), Code::Unauthenticated),
        ];
        for (name, claims, want) in cases {
            let mut client = client_as(server.addr, &raw_token(claims)).await;
            let got = client
                .publish_user_event(PublishUserEventRequest {
                    r#type: UserEventType::Login as i32,
                    ..Default::default()
                })
                .await;
            match (got, want) {
                (Ok(event), Code::Ok) => assert_eq!(event.into_inner().user_id, "ann"),
                (Err(status), want) => assert_eq!(status.code(), want, "{name}: {status:?}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_token_command_writes_grants_and_warns_about_long_lifetimes() {
    within(60, "token command", async {
        let server = TestServer::start_with(|c| {
            c.auth = true;
            c.auth_hs256_secret = Some(SECRET.to_string().into());
            c.auth_issuer = Some("iss-1".into());
        })
        .await;
        let mint = |ttl: &str| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamhub"))
                .args(["token", "--sub", "ann", "--rooms", "team-*,lobby"])
                .args([
                    "--documents",
                    "plan",
                    "--metrics",
                    "read",
                    "--issuer",
                    "iss-1",
                ])
                .args(["--ttl", ttl])
                .env("STREAMHUB_AUTH_HS256_SECRET", SECRET)
                .env_remove("STREAMHUB_AUTH_HS256_SECRET_FILE")
                .env_remove("STREAMHUB_AUTH_AUDIENCE")
                .env_remove("STREAMHUB_AUTH_ISSUER")
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            (
                String::from_utf8(out.stdout).unwrap().trim().to_string(),
                String::from_utf8(out.stderr).unwrap(),
            )
        };
        let (short, warning) = mint("1h");
        assert!(!warning.contains("warning"), "{warning}");
        let mut ann = client_as(server.addr, &short).await;
        chat(&mut ann, "team-blue", "").await.unwrap();
        chat(&mut ann, "lobby", "").await.unwrap();
        collaborate(&mut ann, "plan").await.unwrap();
        assert_eq!(query(&mut ann, "cpu").await.unwrap(), 0);
        expect_code(
            "read claim cannot collect",
            collect(&mut ann, vec![point("cpu", 1.0)]).await,
            Code::PermissionDenied,
        );

        let (long, warning) = mint("2d");
        assert!(
            warning.contains("--ttl is 172800 s") && warning.contains("86400"),
            "{warning}"
        );
        let mut refused = client_as(server.addr, &long).await;
        expect_code(
            "2-day token",
            query(&mut refused, "cpu").await,
            Code::Unauthenticated,
        );
        server.stop().await;
    })
    .await;
}

async fn events_stream(client: &mut Client, user_id: &str) -> Result<Streaming<UserEvent>, Status> {
    Ok(client
        .stream_user_events(StreamUserEventsRequest {
            user_id: user_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

#[tokio::test]
async fn one_user_holds_at_most_its_subscriptions_and_others_are_not_affected() {
    within(60, "per-user subscriptions", async {
        let server = TestServer::start_with(|c| {
            c.auth = true;
            c.auth_hs256_secret = Some(SECRET.to_string().into());
            c.max_subscriptions_per_user = 4;
        })
        .await;
        let mut ann = client_as(server.addr, &user("ann")).await;
        let mut bob = client_as(server.addr, &user("bob")).await;
        let mut admin = client_as(server.addr, &service()).await;

        // N = 4 streams of every kind.
        let events = events_stream(&mut ann, "").await.unwrap();
        let _inbox = ann
            .subscribe_to_notifications(SubscribeRequest::default())
            .await
            .unwrap();
        let _room = chat(&mut ann, "notes#ann", "").await.unwrap();
        let _document = collaborate(&mut ann, "notes#ann").await.unwrap();
        // N + 1, of each kind: RESOURCE_EXHAUSTED, and nothing stored for the refused join.
        expect_code(
            "5th: events",
            events_stream(&mut ann, "").await.map(|_| ()),
            Code::ResourceExhausted,
        );
        expect_code(
            "5th: notifications",
            ann.subscribe_to_notifications(SubscribeRequest::default())
                .await
                .map(|_| ()),
            Code::ResourceExhausted,
        );
        expect_code(
            "5th: chat",
            chat(&mut ann, "dm#ann,bob", "").await.map(|_| ()),
            Code::ResourceExhausted,
        );
        assert_eq!(history(server.addr, "dm#ann,bob").await, vec![]);
        expect_code(
            "5th: collaboration",
            collaborate(&mut ann, "other#ann").await.map(|_| ()),
            Code::ResourceExhausted,
        );
        // Another user, and a service acting for ann, are not affected.
        let mut bobs = Vec::new();
        for _ in 0..4 {
            bobs.push(events_stream(&mut bob, "").await.unwrap());
        }
        for _ in 0..6 {
            bobs.push(events_stream(&mut admin, "ann").await.unwrap());
        }
        // A history-only stream that is not read holds its slot too, also once its replay has
        // been read from the store: bob's history (8 MiB) is larger than what the HTTP/2 flow
        // window lets through unread, and four unread copies fill his limit.
        drop(bobs);
        let records: Vec<DataRecord> = (0..1000)
            .map(|i| DataRecord {
                id: format!("big-{i}"),
                r#type: UserEventType::Login as i32,
                data: Some(prost_types::Any {
                    type_url: "type.googleapis.com/test.Blob".into(),
                    value: vec![7; 8192],
                }),
                ..Default::default()
            })
            .collect();
        let imported = bob
            .process_data_batch(tokio_stream::iter(records))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(imported.records_accepted, 1000);
        let history_only = StreamUserEventsRequest {
            history_only: true,
            ..Default::default()
        };
        // One connection each, so that unread streams cannot starve each other of the
        // connection's flow-control window.
        let mut unread = Vec::new();
        for _ in 0..4 {
            let mut connection = client_as(server.addr, &user("bob")).await;
            unread.push(
                connection
                    .stream_user_events(history_only.clone())
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        expect_code(
            "5th history-only stream",
            bob.stream_user_events(history_only.clone())
                .await
                .map(|_| ()),
            Code::ResourceExhausted,
        );
        // Read to its end, a history-only stream gives its slot back.
        let mut first = unread.remove(0);
        let mut read = 0;
        while let Some(event) = first.next().await {
            event.unwrap();
            read += 1;
        }
        assert_eq!(read, 1000);
        drop(unread);
        poll_until("bob's freed slots", Duration::from_secs(10), || {
            let mut bob = bob.clone();
            let request = history_only.clone();
            async move {
                let mut streams = Vec::new();
                for _ in 0..4 {
                    streams.push(
                        bob.stream_user_events(request.clone())
                            .await
                            .map_err(|status| format!("{status:?}"))?,
                    );
                }
                Ok(())
            }
        })
        .await;

        // Ending one of ann's streams frees its slot once the server has seen it go.
        drop(events);
        let again = poll_until("ann's freed slot", Duration::from_secs(10), || {
            let mut ann = ann.clone();
            async move {
                events_stream(&mut ann, "")
                    .await
                    .map_err(|status| format!("{status:?}"))
            }
        })
        .await;
        drop(again);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_chat_client_that_resets_during_its_join_still_gets_its_leave_notice() {
    within(120, "reset during join", async {
        let server = TestServer::start().await;
        let room = "reset-room";
        // Cancel calls at many points of their join; wherever a cancel lands, a join notice
        // that was stored is followed by a leave notice.
        for attempt in 0..60u32 {
            let mut client = server.client().await;
            let first = ChatMessage {
                room_id: room.into(),
                user_id: format!("u{attempt}"),
                ..Default::default()
            };
            let call = tokio::spawn(async move {
                let (tx, rx) = mpsc::channel(1);
                tx.send(first).await.unwrap();
                let _keep_open = tx;
                client.chat(ReceiverStream::new(rx)).await.map(|_| ())
            });
            for _ in 0..attempt {
                tokio::task::yield_now().await;
            }
            call.abort();
            let _ = call.await;
        }
        common::rpc_calls_closed(server.addr, "Chat").await;
        let mut client = server.client().await;
        poll_until("a leave after every join", Duration::from_secs(15), || {
            let mut client = client.clone();
            async move {
                let page = client
                    .get_chat_history(GetChatHistoryRequest {
                        room_id: room.into(),
                        limit: 500,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| format!("{s:?}"))?
                    .into_inner();
                let mut present = std::collections::BTreeMap::<String, i32>::new();
                for message in &page.messages {
                    let delta = if message.content.ends_with("joined the chat") {
                        1
                    } else if message.content.ends_with("left the chat") {
                        -1
                    } else {
                        0
                    };
                    *present.entry(message.user_id.clone()).or_default() += delta;
                }
                present.retain(|_, n| *n != 0);
                if present.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still present: {present:?}"))
                }
            }
        })
        .await;
        let _ = &mut client;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_long_repeated_event_type_filter_is_one_filter() {
    within(60, "event types", async {
        let server = TestServer::start().await;
        let mut client = server.client().await;
        for kind in [
            UserEventType::Login,
            UserEventType::Logout,
            UserEventType::Login,
        ] {
            client
                .publish_user_event(PublishUserEventRequest {
                    user_id: "ann".into(),
                    r#type: kind as i32,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let mut stream = client
            .stream_user_events(StreamUserEventsRequest {
                user_id: "ann".into(),
                event_types: vec![UserEventType::Login as i32; 100_000],
                history_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut sequences = Vec::new();
        while let Some(event) = stream.next().await {
            sequences.push(event.unwrap().sequence);
        }
        assert_eq!(sequences, vec![1, 3]);
        server.stop().await;
    })
    .await;
}
