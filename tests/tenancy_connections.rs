//! Connections that stall or idle, against the real server: a connection that sends no HTTP
//! preface (nothing, half an HTTP/2 preface, half an HTTP/1 request line) is closed at the
//! opening deadline, while other clients go on; a connection with no open call gets GOAWAY at
//! the idle time, pings notwithstanding; and a connection holding a live subscription is not
//! touched by the idle time.

mod common;

use common::*;
use std::time::{Duration, Instant};
use streamhub::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough past a 1 s deadline for a loaded machine, and far below the 10 s default, so
/// that a close within it is the configured deadline's.
const CLOSED_BY: Duration = Duration::from_secs(8);

/// Waits until the server closes or resets `stream`; fails if it sends bytes instead, or if
/// nothing happens before `deadline`.
async fn closed_by_server(stream: &mut TcpStream, deadline: Instant, what: &str) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open at the deadline"));
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{what}: the server sent {n} bytes instead of closing"),
    }
}

async fn publish(client: &mut Client, user: &str, id: &str) -> UserEvent {
    client
        .publish_user_event(PublishUserEventRequest {
            user_id: user.into(),
            r#type: UserEventType::Login as i32,
            data: None,
            id: id.into(),
        })
        .await
        .expect("publish")
        .into_inner()
}

/// 200 connections that never send a byte, plus ones that send half a preface, are all closed
/// by the server once the 1 s opening deadline passes (not before), while a real client
/// connects and completes calls next to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_preface_are_closed_at_the_deadline() {
    let server = TestServer::start_with(|c| c.tls_handshake_timeout_secs = 1).await;
    let started = Instant::now();
    let mut stalled: Vec<(String, TcpStream)> = Vec::new();
    for n in 0..200 {
        let raw = TcpStream::connect(server.addr).await.expect("raw connect");
        stalled.push((format!("silent #{n}"), raw));
    }
    for (what, bytes) in [
        ("half an HTTP/2 preface", &b"PRI * HTTP/2.0\r\n\r\n"[..]),
        ("half an HTTP/1 request line", &b"GET /files/x HT"[..]),
    ] {
        let mut raw = TcpStream::connect(server.addr).await.expect("raw connect");
        raw.write_all(bytes).await.expect("partial preface");
        stalled.push((what.to_string(), raw));
    }

    // A real client is served meanwhile, and keeps its connection past the deadline: it sent
    // its preface in time.
    let mut client = server.client().await;
    let first = within(10, "a call next to stalled connections", async {
        publish(&mut client, "conn-a", "").await
    })
    .await;
    assert_eq!(first.sequence, 1);

    let deadline = started + CLOSED_BY;
    for (what, raw) in &mut stalled {
        closed_by_server(raw, deadline, what).await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before the 1 s deadline"
    );
    let second = within(10, "a call after the deadline", async {
        publish(&mut client, "conn-a", "").await
    })
    .await;
    assert_eq!(second.sequence, 2);
    server.stop().await;
}

/// A raw HTTP/2 connection with no open call gets GOAWAY (NO_ERROR) and closes at the idle
/// time, although the server pings it every second and it pings the server five times a second:
/// pings are not activity. A request answered first does not hold the connection open: the
/// idle time counts from the end of its response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_goaway() {
    let server = TestServer::start_with(|c| {
        c.idle_connection_secs = 1;
        c.keepalive_interval_secs = 1;
    })
    .await;
    within(30, "idle GOAWAY", async {
        for with_a_request in [false, true] {
            let tcp = TcpStream::connect(server.addr).await.expect("connect");
            let (mut h2, mut connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
            let mut pings = connection.ping_pong().expect("ping handle");
            let opened = Instant::now();
            let driven = tokio::spawn(async move {
                let result = connection.await;
                (result, Instant::now())
            });
            let pinger = tokio::spawn(async move {
                loop {
                    if pings.ping(h2::Ping::opaque()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            let mut quiet_since = opened;
            if with_a_request {
                let request = http::Request::get(format!("http://{}/metrics", server.addr))
                    .body(())
                    .expect("request");
                let (response, _) = h2.send_request(request, true).expect("send");
                let response = response.await.expect("response");
                assert_eq!(response.status(), 200);
                let mut body = response.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.expect("body");
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                quiet_since = Instant::now();
            }
            let (result, closed_at) = tokio::time::timeout(CLOSED_BY, driven)
                .await
                .unwrap_or_else(|_| panic!("request {with_a_request}: no GOAWAY in time"))
                .expect("connection task");
            pinger.abort();
            match result {
                Ok(()) => {}
                Err(e) => assert!(
                    e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR),
                    "request {with_a_request}: {e:?}"
                ),
            }
            let idle = closed_at - quiet_since;
            assert!(
                idle >= Duration::from_millis(900),
                "request {with_a_request}: closed {idle:?} after its last call, before the idle time"
            );
            // A new request on the closed connection is refused by the client: it saw GOAWAY.
            let request = http::Request::get(format!("http://{}/metrics", server.addr))
                .body(())
                .expect("request");
            assert!(h2.send_request(request, true).is_err());
        }
    })
    .await;
    server.stop().await;
}

/// A connection holding a live subscription is not idle. With a 1 s idle time, a raw HTTP/2
/// connection holds a StreamUserEvents call; 3 s later the connection still takes a new request
/// (it got no GOAWAY), and the subscription delivers an event published then. A connection that
/// opened at the same time with no call was meanwhile sent away, so the idle time did pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_an_open_call_is_not_idle() {
    use prost::Message;
    let server = TestServer::start_with(|c| {
        c.idle_connection_secs = 1;
        c.keepalive_interval_secs = 1;
    })
    .await;
    within(30, "open call outlives the idle time", async {
        let tcp = TcpStream::connect(server.addr).await.expect("connect");
        let (h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let driven = tokio::spawn(connection);
        let mut h2 = h2.ready().await.expect("ready");
        let request = http::Request::post(format!(
            "http://{}/streaming.v1.StreamingService/StreamUserEvents",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
        let (response, mut send) = h2.send_request(request, false).expect("send");
        let message = StreamUserEventsRequest {
            user_id: "held".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        send.send_data(frame.into(), true).expect("request message");
        let response = response.await.expect("response headers");
        assert_eq!(response.status(), 200);
        let mut events = response.into_body();
        let subscribed = Instant::now();

        // A bystander connection with no call: it gets GOAWAY after the idle time.
        let tcp = TcpStream::connect(server.addr).await.expect("connect");
        let (_bystander, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::time::timeout(CLOSED_BY, connection)
            .await
            .expect("the bystander gets GOAWAY")
            .ok();
        assert!(subscribed.elapsed() >= Duration::from_millis(900));

        // Three idle times in all: the held connection is still open and takes a new request.
        tokio::time::sleep_until((subscribed + Duration::from_secs(3)).into()).await;
        assert!(!driven.is_finished(), "the held connection was closed");
        let mut h2 = h2
            .ready()
            .await
            .expect("no GOAWAY: still ready for requests");
        let probe = http::Request::get(format!("http://{}/metrics", server.addr))
            .body(())
            .expect("request");
        let (probe, _) = h2.send_request(probe, true).expect("a new request");
        assert_eq!(probe.await.expect("answered").status(), 200);

        let mut publisher = server.client().await;
        let published = publish(&mut publisher, "held", "after-idle").await;
        let mut received = Vec::new();
        let delivered = loop {
            let chunk = events
                .data()
                .await
                .expect("the subscription is still open")
                .expect("data");
            let _ = events.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
            if received.len() >= 5 {
                let len = u32::from_be_bytes([received[1], received[2], received[3], received[4]])
                    as usize;
                if received.len() >= 5 + len {
                    break UserEvent::decode(&received[5..5 + len]).expect("an event");
                }
            }
        };
        assert_eq!(delivered, published);
        assert!(subscribed.elapsed() >= Duration::from_secs(3));
    })
    .await;
    server.stop().await;
}

/// With TLS, the deadline covers the handshake and the HTTP preface together: a client that
/// finishes its handshake (ALPN h2) and then sends nothing is closed once the 1 s deadline passes,
/// not before; one that sends the preface in time is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_without_a_preface_is_closed_at_the_deadline() {
    use std::sync::Arc;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::crypto::ring;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let dir = tempfile::tempdir().expect("temp dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert_path = dir.path().join("server.pem");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
    let server = TestServer::start_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
        c.tls_handshake_timeout_secs = 1;
    })
    .await;

    let mut roots = RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("trust");
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").expect("name");

    let started = Instant::now();
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut silent = connector
        .connect(name.clone(), tcp)
        .await
        .expect("the handshake completes");
    let handshaken = started.elapsed();
    // Another client finishes its handshake and sends its preface: it is served.
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let (mut h2, connection) = h2::client::handshake(tls).await.expect("h2 over TLS");
    tokio::spawn(connection);

    let mut buf = [0u8; 64];
    let read = tokio::time::timeout_at((started + CLOSED_BY).into(), silent.read(&mut buf))
        .await
        .expect("closed within the deadline and its margin");
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("the server sent {n} bytes instead of closing"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?} (handshake done after {handshaken:?}), before the 1 s deadline"
    );
    // The served client is still served after the deadline.
    let request = http::Request::get(format!("https://localhost:{}/metrics", server.addr.port()))
        .body(())
        .expect("request");
    let (response, _) = h2.send_request(request, true).expect("send");
    assert_eq!(response.await.expect("answered").status(), 200);
    server.stop().await;
}
