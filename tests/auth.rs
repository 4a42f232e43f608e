//! Authentication and authorization against the real server: bearer tokens (HS256, RS256,
//! EdDSA) checked before any handler runs, the one "act only as yourself" rule on every RPC that
//! names a user, signed download URLs over plain HTTP, the `streamhub token` command, and the
//! start-up refusals and warnings. Auth off is the default, and every other test file proves
//! that everything works without a header then.

mod common;

use common::within;

use common::TestServer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use streamhub::auth::UrlSigner;
use streamhub::proto::file_chunk::Data;
use streamhub::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};
use uuid::Uuid;

const SECRET: &str = "an hs256 secret of at least 32 bytes, for tests";
const URL_SECRET: &str = "a download-url secret of 32+ bytes, for tests";
/// Variables a developer's shell might set that would change what the binary does here.
const AUTH_ENV: [&str; 7] = [
    "STREAMHUB_AUTH",
    "STREAMHUB_AUTH_HS256_SECRET",
    "STREAMHUB_AUTH_HS256_SECRET_FILE",
    "STREAMHUB_AUTH_PUBLIC_KEY_FILE",
    "STREAMHUB_AUTH_AUDIENCE",
    "STREAMHUB_URL_SIGNING_SECRET",
    "STREAMHUB_LISTEN",
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A token with exactly these claims, signed HS256 with `secret`.
fn hs256_with(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn hs256(claims: Value) -> String {
    hs256_with(SECRET, claims)
}

fn user_token(sub: &str) -> String {
    hs256(json!({"iat": now(), "sub": sub, "role": "user", "exp": now() + 600}))
}

fn service_token(sub: &str) -> String {
    hs256(json!({"iat": now(), "sub": sub, "role": "service", "exp": now() + 600}))
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

type Client = common::AuthClient;
use common::client_as;
use common::client_with_header as client_with;

async fn hs256_server() -> TestServer {
    TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
    })
    .await
}

fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[track_caller]
fn expect_status<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

fn login(user: &str) -> PublishUserEventRequest {
    PublishUserEventRequest {
        user_id: user.into(),
        r#type: UserEventType::Login as i32,
        ..Default::default()
    }
}

fn record(id: &str, user: &str) -> DataRecord {
    DataRecord {
        id: id.into(),
        user_id: user.into(),
        r#type: UserEventType::Login as i32,
        data: None,
    }
}

fn note(user: &str) -> PublishNotificationRequest {
    PublishNotificationRequest {
        user_id: user.into(),
        topic: "t".into(),
        title: "hello".into(),
        ..Default::default()
    }
}

/// Every stored event of `user`, oldest first, as (sequence, user_id, id).
async fn events_of(client: &mut Client, user: &str) -> Vec<(u64, String, String)> {
    let mut stream = client
        .stream_user_events(StreamUserEventsRequest {
            user_id: user.into(),
            history_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        out.push((event.sequence, event.user_id, event.id));
    }
    out
}

async fn upload(client: &mut Client, bytes: &[u8]) -> UploadFileResponse {
    let messages = vec![
        FileChunk {
            offset: 0,
            data: Some(Data::Metadata(FileMetadata {
                filename: "a.bin".into(),
                total_size: bytes.len() as i64,
                ..Default::default()
            })),
        },
        FileChunk {
            offset: 0,
            data: Some(Data::Chunk(bytes.to_vec())),
        },
    ];
    client
        .upload_file(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner()
}

/// One plain HTTP/1.1 request; returns the status code and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<u8>) {
    within(30, &format!("{method} {path}"), async {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(
                format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut raw = Vec::new();
        socket.read_to_end(&mut raw).await.unwrap();
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP head");
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        (status, raw[end + 4..].to_vec())
    })
    .await
}

/// The path and query of a download URL on `addr`.
fn path_of(url: &str, addr: SocketAddr) -> String {
    url.strip_prefix(&format!("http://{addr}"))
        .unwrap_or_else(|| panic!("{url} is not on {addr}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn only_valid_tokens_get_through_and_refusals_store_nothing() {
    let server = hs256_server().await;
    let addr = server.addr;
    let now = now();
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(
            json!({"iat": now, "sub": "ann", "role": "user", "exp": now + 600})
                .to_string()
                .as_bytes()
        )
    );
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &json!({"iat": now, "sub": "ann", "exp": now + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    // (what, authorization header, expected code, start of the message)
    let cases: Vec<(&str, Option<String>, Code, &str)> = vec![
        ("valid", bearer(&user_token("ann")), Code::Ok, ""),
        (
            "no role is a user",
            bearer(&hs256(json!({"iat": now, "sub": "ann", "exp": now + 600}))),
            Code::Ok,
            "",
        ),
        (
            "expired",
            bearer(&hs256(json!({"iat": now, "sub": "ann", "exp": now - 120}))),
            Code::Unauthenticated,
            "token has expired",
        ),
        (
            "wrong signature",
            bearer(&hs256_with(
                "another secret that is also 32+ bytes long",
                json!({"iat": now, "sub": "ann", "exp": now + 600}),
            )),
            Code::Unauthenticated,
            "token signature is invalid",
        ),
        (
            "alg none",
            bearer(&alg_none),
            Code::Unauthenticated,
            "malformed token",
        ),
        (
            "another HMAC algorithm",
            bearer(&hs512),
            Code::Unauthenticated,
            "token algorithm HS512 is not accepted",
        ),
        (
            "missing header",
            None,
            Code::Unauthenticated,
            "missing authorization header",
        ),
        (
            "not Bearer",
            Some("Basic YW5uOnB3".into()),
            Code::Unauthenticated,
            "authorization scheme must be Bearer",
        ),
        (
            "garbage token",
            bearer("abc"),
            Code::Unauthenticated,
            "malformed token",
        ),
        (
            "unknown role",
            bearer(&hs256(
                json!({"iat": now, "sub": "ann", "role": "admin", "exp": now + 600}),
            )),
            Code::Unauthenticated,
            "token role \"admin\" is unknown",
        ),
        (
            "no sub",
            bearer(&hs256(
                json!({"iat": now, "role": "user", "exp": now + 600}),
            )),
            Code::Unauthenticated,
            "token has no sub claim",
        ),
        (
            "no exp",
            bearer(&hs256(json!({"iat": now, "sub": "ann", "role": "user"}))),
            Code::Unauthenticated,
            "token has no exp claim",
        ),
    ];
    within(60, "token table", async {
        let mut accepted = 0;
        for (what, header, expected, message) in &cases {
            let mut client = client_with(addr, header.as_deref()).await;
            // A unary call, a server stream and a client stream: all refused before a handler.
            let unary = client.publish_user_event(login("ann")).await;
            let stream = client
                .stream_user_events(StreamUserEventsRequest {
                    user_id: "ann".into(),
                    history_only: true,
                    ..Default::default()
                })
                .await;
            let batch = client
                .process_data_batch(tokio_stream::iter(vec![record("", "ann")]))
                .await;
            for (rpc, result) in [
                ("PublishUserEvent", unary.map(|_| ())),
                ("StreamUserEvents", stream.map(|_| ())),
                ("ProcessDataBatch", batch.map(|_| ())),
            ] {
                match result {
                    Ok(()) => assert_eq!(*expected, Code::Ok, "{what} {rpc}"),
                    Err(status) => {
                        assert_eq!(status.code(), *expected, "{what} {rpc}: {status:?}");
                        assert!(
                            status.message().starts_with(message),
                            "{what} {rpc}: {:?}",
                            status.message()
                        );
                    }
                }
            }
            if *expected == Code::Ok {
                accepted += 1;
            }
        }
        // Exactly the accepted calls stored events: one publish and one batch record each.
        let mut reader = client_as(addr, &user_token("ann")).await;
        let stored = events_of(&mut reader, "ann").await;
        assert_eq!(stored.len(), accepted * 2, "{stored:?}");
        assert_eq!(accepted, 2);
    })
    .await;

    // Health, reflection and /metrics stay open.
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "streaming.v1.StreamingService".into(),
        })
        .await
        .unwrap();
    let (status, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8(body).unwrap();
    // Refused calls are counted like any other finished call.
    assert!(
        metrics.contains(
            r#"streamhub_rpc_finished_total{rpc="PublishUserEvent",code="UNAUTHENTICATED"} 10"#
        ),
        "{metrics}"
    );
}

/// Spellings of a StreamingService path that differ from the real one never reach a handler
/// without a token: the layer checks the exact prefix the router serves.
#[tokio::test]
async fn odd_paths_never_reach_a_handler_without_a_token() {
    let server = hs256_server().await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    within(30, "odd paths", async {
        for path in [
            "/streaming.v1.StreamingService/PublishUserEvent",
            "//streaming.v1.StreamingService/PublishUserEvent",
            "/streaming.v1.StreamingService//PublishUserEvent",
            "/streaming.v1.StreamingService/PublishUserEvent/",
            "/Streaming.v1.StreamingService/PublishUserEvent",
            "/%73treaming.v1.StreamingService/PublishUserEvent",
            "/streaming.v1.StreamingService%2FPublishUserEvent",
            "/./streaming.v1.StreamingService/PublishUserEvent",
            "/x/../streaming.v1.StreamingService/PublishUserEvent",
        ] {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let codec = tonic_prost::ProstCodec::<PublishUserEventRequest, UserEvent>::default();
            let result = grpc
                .unary(
                    tonic::Request::new(login("ann")),
                    path.parse().unwrap(),
                    codec,
                )
                .await;
            let status = result.expect_err(path);
            assert!(
                matches!(status.code(), Code::Unauthenticated | Code::Unimplemented),
                "{path}: {status:?}"
            );
        }
        let mut service = client_as(server.addr, &service_token("backend")).await;
        assert_eq!(events_of(&mut service, "ann").await, vec![]);
    })
    .await;
}

#[tokio::test]
async fn rs256_and_eddsa_tokens_check_against_a_public_key_file() {
    let claims = json!({"iat": now(), "sub": "ann", "role": "user", "exp": now() + 600});
    for (public, private, alg) in [
        (
            "auth_rsa_public.pem",
            "auth_rsa_private.pem",
            Algorithm::RS256,
        ),
        (
            "auth_ed25519_public.pem",
            "auth_ed25519_private.pem",
            Algorithm::EdDSA,
        ),
    ] {
        let key_file = fixture(public);
        let server = TestServer::start_with(|c| {
            c.auth = true;
            c.auth_public_key_file = Some(key_file);
        })
        .await;
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ed_pem(&pem).unwrap(),
        };
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
        let mut client = client_as(server.addr, &token).await;
        let event = client
            .publish_user_event(login(""))
            .await
            .unwrap_or_else(|s| panic!("{alg:?}: {s:?}"))
            .into_inner();
        assert_eq!((event.user_id.as_str(), event.sequence), ("ann", 1));

        // The server has no HS256 key: an HS256 token is refused, whatever it was signed with
        // (here the public key's own PEM, the classic algorithm confusion).
        let public_pem = std::fs::read(fixture(public)).unwrap();
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        let mut client = client_as(server.addr, &confused).await;
        let status = expect_status(
            "HS256 against a public key",
            client.publish_user_event(login("ann")).await,
            Code::Unauthenticated,
        );
        assert_eq!(
            status.message(),
            "token algorithm HS256 is not accepted by this server"
        );

        // A token signed by another key of the same kind is refused.
        let other = match alg {
            Algorithm::RS256 => continue, // generating a second RSA key here is slow; the unit tests cover it
            _ => {
                // An Ed25519 PKCS#8 key made from 32 fixed bytes.
                let mut der = vec![
                    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04,
                    0x22, 0x04, 0x20,
                ];
                der.extend_from_slice(&[7u8; 32]);
                EncodingKey::from_ed_der(&der)
            }
        };
        let forged = jsonwebtoken::encode(&Header::new(alg), &claims, &other).unwrap();
        let mut client = client_as(server.addr, &forged).await;
        let status = expect_status(
            "another Ed25519 key",
            client.publish_user_event(login("ann")).await,
            Code::Unauthenticated,
        );
        assert_eq!(status.message(), "token signature is invalid");
    }
}

#[tokio::test]
async fn auth_without_a_key_or_with_a_private_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = streamhub::Config::in_dir(dir.path());
    config.auth = true;
    config.auth_hs256_secret = None;
    config.auth_hs256_secret_file = None;
    config.auth_public_key_file = None;
    let err = streamhub::server::App::open(config.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, streamhub::Error::InvalidArgument(m) if m.contains("no key is configured")),
        "{err:?}"
    );
    config.auth_public_key_file = Some(fixture("auth_ed25519_private.pem"));
    let err = streamhub::server::App::open(config.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("holds a private key"), "{err}");
    config.auth_public_key_file = None;
    config.auth_hs256_secret = Some("too short".to_string().into());
    let err = streamhub::server::App::open(config).await.unwrap_err();
    assert!(err.to_string().contains("at least 32"), "{err}");

    // The binary says so and exits with failure.
    let db = format!("sqlite://{}", dir.path().join("bin.db").display());
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamhub"));
    command
        .args([
            "serve",
            "--auth",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
        ])
        .arg("--storage-dir")
        .arg(dir.path().join("files"))
        .current_dir(dir.path());
    for name in AUTH_ENV {
        command.env_remove(name);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: --auth is on but no key is configured"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_user_acts_only_as_itself_on_every_rpc_that_names_a_user() {
    let server = hs256_server().await;
    let addr = server.addr;
    within(60, "act as", async {
        let mut ann = client_as(addr, &user_token("ann")).await;
        let denied = Code::PermissionDenied;

        // Unary and server-streaming calls for someone else.
        let mut codes: Vec<(&str, Code)> = vec![
            (
                "PublishUserEvent",
                code(ann.publish_user_event(login("bob")).await),
            ),
            (
                "StreamUserEvents",
                code(
                    ann.stream_user_events(StreamUserEventsRequest {
                        user_id: "bob".into(),
                        ..Default::default()
                    })
                    .await,
                ),
            ),
            (
                "PublishNotification",
                code(ann.publish_notification(note("bob")).await),
            ),
            (
                "SubscribeToNotifications",
                code(
                    ann.subscribe_to_notifications(SubscribeRequest {
                        user_id: "bob".into(),
                        ..Default::default()
                    })
                    .await,
                ),
            ),
            (
                "AcknowledgeNotifications",
                code(
                    ann.acknowledge_notifications(AcknowledgeNotificationsRequest {
                        user_id: "bob".into(),
                        up_to_sequence: 0,
                    })
                    .await,
                ),
            ),
        ];
        // A batch with one record for someone else fails whole: its good record is not kept.
        codes.push((
            "ProcessDataBatch",
            code(
                ann.process_data_batch(tokio_stream::iter(vec![
                    record("a1", "ann"),
                    record("b1", "bob"),
                ]))
                .await,
            ),
        ));
        // The first chat message, and a collaboration JOIN, bind the session to a user.
        codes.push((
            "Chat",
            code(
                ann.chat(tokio_stream::iter(vec![ChatMessage {
                    room_id: "r".into(),
                    user_id: "bob".into(),
                    ..Default::default()
                }]))
                .await,
            ),
        ));
        codes.push((
            "Collaborate",
            code(
                ann.collaborate(tokio_stream::iter(vec![CollaborationEvent {
                    document_id: "d".into(),
                    user_id: "bob".into(),
                    r#type: CollaborationEventType::Join as i32,
                    ..Default::default()
                }]))
                .await,
            ),
        ));
        let expected: Vec<(&str, Code)> = codes.iter().map(|(rpc, _)| (*rpc, denied)).collect();
        assert_eq!(codes, expected);

        // Nothing was stored for anyone by the refused calls.
        let mut service = client_as(addr, &service_token("backend")).await;
        assert_eq!(events_of(&mut service, "ann").await, vec![]);
        assert_eq!(events_of(&mut service, "bob").await, vec![]);

        // As itself, named or left empty (filled from the token's sub), everything works.
        let named = ann
            .publish_user_event(login("ann"))
            .await
            .unwrap()
            .into_inner();
        let empty = ann
            .publish_user_event(login(""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            [
                (named.user_id.as_str(), named.sequence),
                (empty.user_id.as_str(), empty.sequence)
            ],
            [("ann", 1), ("ann", 2)]
        );
        let batch = ann
            .process_data_batch(tokio_stream::iter(vec![
                record("a1", "ann"),
                record("a2", ""),
            ]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((batch.records_accepted, batch.records_rejected), (2, 0));
        let stored = events_of(&mut ann, "").await;
        let expected: Vec<(u64, String, String)> = vec![
            (1, "ann".into(), named.id.clone()),
            (2, "ann".into(), empty.id.clone()),
            (3, "ann".into(), "a1".into()),
            (4, "ann".into(), "a2".into()),
        ];
        assert_eq!(stored, expected);
        assert_eq!(events_of(&mut service, "bob").await, vec![]);

        let published = ann
            .publish_notification(note(""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((published.user_id.as_str(), published.sequence), ("ann", 1));
        let acked = ann
            .acknowledge_notifications(AcknowledgeNotificationsRequest {
                user_id: String::new(),
                up_to_sequence: 1,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(acked.acknowledged_through, 1);

        // Chat: joining with an empty user_id joins as ann; a later message naming bob is
        // refused because the session is bound to ann.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(ChatMessage {
            room_id: "r#ann".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut replies = ann
            .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let joined = replies.next().await.unwrap().unwrap();
        assert_eq!(
            (joined.user_id.as_str(), joined.content.as_str()),
            ("ann", "User ann joined the chat")
        );
        tx.send(ChatMessage {
            room_id: "r#ann".into(),
            user_id: "bob".into(),
            content: "hi".into(),
            r#type: ChatMessageType::Text as i32,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut ended = None;
        while let Some(item) = replies.next().await {
            if let Err(status) = item {
                ended = Some(status);
                break;
            }
        }
        let ended = ended.expect("the session ends with an error");
        assert_eq!(ended.code(), Code::InvalidArgument, "{ended:?}");

        // Collaborate: an empty user_id in the JOIN is ann.
        let (ctx, crx) = tokio::sync::mpsc::channel(4);
        ctx.send(CollaborationEvent {
            document_id: "d#ann".into(),
            r#type: CollaborationEventType::Join as i32,
            ..Default::default()
        })
        .await
        .unwrap();
        let collab = ann
            .collaborate(tokio_stream::wrappers::ReceiverStream::new(crx))
            .await;
        assert!(collab.is_ok(), "{collab:?}");
        drop(ctx);

        // GetChatHistory of a room ann may use (its `#ann` boundary), and GetFileInfo.
        let history = ann
            .get_chat_history(GetChatHistoryRequest {
                room_id: "r#ann".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(history.messages[0].content, "User ann joined the chat");
        let file = upload(&mut ann, b"abc").await;
        let info = service
            .get_file_info(GetFileInfoRequest {
                file_id: file.file_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.total_size, 3);
    })
    .await;
}

#[tokio::test]
async fn a_service_acts_for_any_user() {
    let server = hs256_server().await;
    within(60, "service", async {
        let mut service = client_as(server.addr, &service_token("backend")).await;
        let event = service
            .publish_user_event(login("bob"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((event.user_id.as_str(), event.sequence), ("bob", 1));
        let batch = service
            .process_data_batch(tokio_stream::iter(vec![
                record("b2", "bob"),
                record("c1", "carol"),
            ]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.records_accepted, 2);
        let notification = service
            .publish_notification(note("carol"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(notification.user_id, "carol");
        assert_eq!(
            events_of(&mut service, "bob").await,
            vec![
                (1, "bob".to_string(), event.id.clone()),
                (2, "bob".to_string(), "b2".to_string())
            ]
        );
        assert_eq!(
            events_of(&mut service, "carol").await,
            vec![(1, "carol".to_string(), "c1".to_string())]
        );
        // And bob, with his own token, sees what the service published for him.
        let mut bob = client_as(server.addr, &user_token("bob")).await;
        assert_eq!(events_of(&mut bob, "bob").await.len(), 2);
        let mut inbox = service
            .subscribe_to_notifications(SubscribeRequest {
                user_id: "carol".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(inbox.next().await.unwrap().unwrap().title, "hello");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Signed download URLs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn download_urls_are_signed_and_checked() {
    let server = TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
        c.url_signing_secret = Some(URL_SECRET.to_string().into());
        c.download_url_ttl_secs = 120;
    })
    .await;
    let addr = server.addr;
    let mut client = client_as(addr, &user_token("ann")).await;
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let stored = upload(&mut client, &bytes).await;
    let id: Uuid = stored.file_id.parse().unwrap();
    let path = path_of(&stored.download_url, addr);
    let (file_path, query) = path.split_once('?').expect("a signed URL has a query");
    assert_eq!(file_path, format!("/files/{id}"));
    let expires: u64 = query
        .strip_prefix("expires=")
        .and_then(|q| q.split('&').next())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("{query}"));
    let ttl = expires as i64 - now() as i64;
    assert!((118..=121).contains(&ttl), "ttl {ttl}");

    // The URL works, for GET and HEAD, with the exact bytes.
    assert_eq!(http(addr, "GET", &path).await, (200, bytes.clone()));
    assert_eq!(http(addr, "HEAD", &path).await.0, 200);

    // A signature made with the configured secret works; one that is expired, tampered with,
    // for another file, or missing gets 403.
    let signer = UrlSigner::new(URL_SECRET.as_bytes(), Duration::from_secs(60)).unwrap();
    let fresh = format!("/files/{id}?{}", signer.query(&id));
    assert_eq!(http(addr, "GET", &fresh).await, (200, bytes.clone()));
    let expired = format!("/files/{id}?{}", signer.query_at(&id, now() - 3600));
    let sig = query.split("sig=").nth(1).unwrap();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    let other = upload(&mut client, b"other").await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            expired,
            "the download URL has expired; ask for a new one\n",
        ),
        (
            "tampered signature",
            format!("/files/{id}?expires={expires}&sig={flipped}"),
            "the download URL's signature is invalid\n",
        ),
        (
            "later expiry",
            format!("/files/{id}?expires={}&sig={sig}", expires + 3600),
            "the download URL's signature is invalid\n",
        ),
        (
            "another file's signature",
            format!("/files/{}?{query}", other.file_id),
            "the download URL's signature is invalid\n",
        ),
        (
            "no signature",
            format!("/files/{id}"),
            "this download needs a signed URL (expires and sig)\n",
        ),
        (
            "no expiry",
            format!("/files/{id}?sig={sig}"),
            "this download needs a signed URL (expires and sig)\n",
        ),
        (
            "unknown file, unsigned",
            format!("/files/{}", Uuid::new_v4()),
            "this download needs a signed URL (expires and sig)\n",
        ),
    ];
    for (what, path, message) in cases {
        assert_eq!(
            http(addr, "GET", &path).await,
            (403, message.as_bytes().to_vec()),
            "{what}"
        );
        assert_eq!(http(addr, "HEAD", &path).await.0, 403, "{what} (HEAD)");
    }
    // The other file's own URL works.
    let other_path = path_of(&other.download_url, addr);
    assert_eq!(
        http(addr, "GET", &other_path).await,
        (200, b"other".to_vec())
    );
}

#[tokio::test]
async fn urls_signed_with_the_derived_key_survive_a_restart() {
    let configure = |c: &mut streamhub::Config| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
    };
    let server = TestServer::start_with(configure).await;
    let mut client = client_as(server.addr, &user_token("ann")).await;
    let stored = upload(&mut client, b"kept across restarts").await;
    let query = stored.download_url.split_once('?').unwrap().1.to_string();
    assert_eq!(
        http(
            server.addr,
            "GET",
            &format!("/files/{}?{query}", stored.file_id)
        )
        .await,
        (200, b"kept across restarts".to_vec())
    );
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, configure).await;
    assert_eq!(
        http(
            server.addr,
            "GET",
            &format!("/files/{}?{query}", stored.file_id)
        )
        .await,
        (200, b"kept across restarts".to_vec())
    );
    // The key is derived, not the secret itself: a URL signed with the raw secret fails.
    let raw = UrlSigner::new(SECRET.as_bytes(), Duration::from_secs(60)).unwrap();
    let id: Uuid = stored.file_id.parse().unwrap();
    assert_eq!(
        http(
            server.addr,
            "GET",
            &format!("/files/{id}?{}", raw.query(&id))
        )
        .await
        .0,
        403
    );
}

#[tokio::test]
async fn with_auth_off_download_urls_are_plain() {
    let server = TestServer::start().await;
    let mut client = client_with(server.addr, None).await;
    let stored = upload(&mut client, b"open").await;
    assert_eq!(
        stored.download_url,
        format!("http://{}/files/{}", server.addr, stored.file_id)
    );
    let path = path_of(&stored.download_url, server.addr);
    assert_eq!(
        http(server.addr, "GET", &path).await,
        (200, b"open".to_vec())
    );
    // A bogus signature is ignored, as is a token nobody checks.
    assert_eq!(
        http(server.addr, "GET", &format!("{path}?expires=1&sig=00")).await,
        (200, b"open".to_vec())
    );
    let mut with_garbage = client_with(server.addr, Some("Bearer not-a-token")).await;
    with_garbage.publish_user_event(login("ann")).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The binary: `streamhub token` and the start-up warning
// ---------------------------------------------------------------------------------------------

fn streamhub() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamhub"));
    for name in AUTH_ENV {
        command.env_remove(name);
    }
    command
}

#[tokio::test]
async fn the_token_command_mints_tokens_the_server_accepts() {
    let server = hs256_server().await;
    let dir = tempfile::tempdir().unwrap();
    let output = streamhub()
        .args([
            "token", "--sub", "svc-1", "--role", "service", "--ttl", "10m",
        ])
        .env("STREAMHUB_AUTH_HS256_SECRET", SECRET)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let mut client = client_as(server.addr, &token).await;
    let event = client
        .publish_user_event(login("dave"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(event.user_id, "dave");

    // From a secret file, as a user (the default role): only itself.
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let output = streamhub()
        .args(["token", "--sub", "erin", "--auth-hs256-secret-file"])
        .arg(&secret_file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let mut erin = client_as(server.addr, &token).await;
    assert_eq!(
        erin.publish_user_event(login(""))
            .await
            .unwrap()
            .into_inner()
            .user_id,
        "erin"
    );
    assert_eq!(
        code(erin.publish_user_event(login("dave")).await),
        Code::PermissionDenied
    );

    // The client commands send a token with --token (or STREAMHUB_TOKEN), and fail clearly
    // without one. They run off the runtime's thread: the server shares this runtime.
    let url = format!("http://{}", server.addr);
    let run = |args: Vec<String>| {
        let mut command = streamhub();
        command.args(args).current_dir(dir.path());
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let publish = |token: Option<&str>| {
        let mut args = vec!["events".to_string(), "--server".into(), url.clone()];
        if let Some(token) = token {
            args.extend(["--token".to_string(), token.to_string()]);
        }
        args.extend(["publish", "--user", "erin", "--type", "login"].map(String::from));
        args
    };
    let output = run(publish(Some(&token))).await.unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("erin"),
        "{output:?}"
    );
    let output = run(publish(None)).await.unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Unauthenticated"),
        "{output:?}"
    );

    // Without a secret it says what is missing.
    let output = streamhub()
        .args(["token", "--sub", "x"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("error: no HS256 secret"),
        "{output:?}"
    );
}

#[test]
fn a_non_loopback_bind_without_auth_logs_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("w.db").display());
    let mut child = streamhub()
        .args(["serve", "--listen", "0.0.0.0:0", "--database-url", &db])
        .arg("--storage-dir")
        .arg(dir.path().join("files"))
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut warned = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match seen.recv_timeout(left) {
            Ok(line) if line.contains("WARN") && line.contains("authentication is OFF") => {
                warned = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning about a non-loopback bind without auth");
}
