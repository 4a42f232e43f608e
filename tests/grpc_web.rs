//! gRPC-Web and CORS on the server's one listener, against the real server: tonic's generated
//! client over tonic-web's client layer on a hyper client (HTTP/1.1, and HTTP/2 too), with and
//! without TLS, doing a unary call and a server-streaming call (replay, then a live event);
//! refusals (no token, another user's stream, an oversized message) as gRPC-Web statuses; and
//! raw HTTP/1.1 requests for what a browser relies on: preflight without a token, the allowed
//! and exposed headers, nothing for an origin that is not listed or when CORS is off, and a
//! defined grpc-status (never a hang) for malformed gRPC-Web bodies.

mod common;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::user_events::next_event;
use common::*;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use streamhub::Config;
use streamhub::auth::{Role, TokenGrants, mint_hs256_with};
use streamhub::proto::streaming_service_client::StreamingServiceClient;
use streamhub::proto::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
use tonic::Code;
use tonic_web::{GrpcWebCall, GrpcWebClientLayer, GrpcWebClientService};
use tower::{Layer, Service};

const SECRET: &str = "an hs256 secret of at least 32 bytes, for tests";
const ALLOWED: &str = "https://console.example";
const OTHER: &str = "https://evil.example";
const PUBLISH: &str = "/streaming.v1.StreamingService/PublishUserEvent";

// ---------------------------------------------------------------------------------------------
// A gRPC-Web client: tonic's generated client, tonic-web's client layer, a hyper client
// ---------------------------------------------------------------------------------------------

/// Between tonic-web's client layer and the hyper client: sends `authorization: Bearer …` (the
/// header a browser client's metadata becomes) and records each response's HTTP version, so a
/// test can prove which protocol carried its calls.
#[derive(Clone)]
struct Probe<S> {
    inner: S,
    token: Option<HeaderValue>,
    versions: Arc<Mutex<Vec<Version>>>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> Service<Request<B>> for Probe<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    R: 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Response<R>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(token) = &self.token {
            request.headers_mut().insert("authorization", token.clone());
        }
        let versions = self.versions.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            versions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(response.version());
            Ok(response)
        })
    }
}

type Transport<C> = GrpcWebClientService<Probe<HyperClient<C, GrpcWebCall<tonic::body::Body>>>>;
type WebClient<C> = StreamingServiceClient<Transport<C>>;

/// Which HTTP the hyper client speaks: HTTP/1.1, or HTTP/2 (prior knowledge on plaintext, ALPN
/// on TLS).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Http {
    One,
    Two,
}

impl Http {
    fn version(self) -> Version {
        match self {
            Http::One => Version::HTTP_11,
            Http::Two => Version::HTTP_2,
        }
    }
}

struct Web<C> {
    client: WebClient<C>,
    versions: Arc<Mutex<Vec<Version>>>,
}

impl<C> Web<C> {
    /// Every response so far came over `http`, and there was at least one.
    #[track_caller]
    fn assert_all_over(&self, http: Http) {
        let versions = self.versions.lock().unwrap().clone();
        assert!(!versions.is_empty(), "no response recorded");
        assert!(
            versions.iter().all(|v| *v == http.version()),
            "expected every response over {http:?}: {versions:?}"
        );
    }
}

fn web_client<C>(connector: C, origin: &str, http: Http, token: Option<&str>) -> Web<C>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut builder = HyperClient::builder(TokioExecutor::new());
    builder.http2_only(http == Http::Two);
    let hyper = builder.build(connector);
    let versions = Arc::new(Mutex::new(Vec::new()));
    let probe = Probe {
        inner: hyper,
        token: token.map(|t| HeaderValue::from_str(&format!("Bearer {t}")).expect("token")),
        versions: versions.clone(),
    };
    let transport = GrpcWebClientLayer::new().layer(probe);
    let origin: Uri = origin.parse().expect("origin");
    Web {
        client: StreamingServiceClient::with_origin(transport, origin),
        versions,
    }
}

fn plain_web_client(addr: SocketAddr, http: Http, token: Option<&str>) -> Web<HttpConnector> {
    web_client(HttpConnector::new(), &format!("http://{addr}"), http, token)
}

// ---------------------------------------------------------------------------------------------
// TLS: certificates made here, a connector that offers one ALPN protocol
// ---------------------------------------------------------------------------------------------

struct Pki {
    _dir: tempfile::TempDir,
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA cert");
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = leaf.signed_by(&key, &ca).expect("leaf cert");
        let cert_path = dir.path().join("server.pem");
        let key_path = dir.path().join("server.key");
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Pki {
            ca_pem: ca.pem(),
            cert: cert_path,
            key: key_path,
            _dir: dir,
        }
    }

    /// A connector that trusts the test CA and offers only `http`'s ALPN protocol.
    fn connector(&self, http: Http) -> TlsConnect {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![match http {
            Http::One => b"http/1.1".to_vec(),
            Http::Two => b"h2".to_vec(),
        }];
        TlsConnect {
            tls: TlsConnector::from(Arc::new(config)),
            negotiated: Arc::default(),
        }
    }
}

/// Connects over TLS and records the ALPN protocol each handshake settled on.
#[derive(Clone)]
struct TlsConnect {
    tls: TlsConnector,
    negotiated: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
}

impl Service<Uri> for TlsConnect {
    type Response = TokioIo<TlsConn>;
    type Error = std::io::Error;
    type Future = BoxFuture<TokioIo<TlsConn>, std::io::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let negotiated = self.negotiated.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let name = ServerName::try_from("localhost").expect("server name");
            let stream = tls.connect(name, tcp).await?;
            let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let h2 = alpn.as_deref() == Some(b"h2");
            negotiated.lock().unwrap().push(alpn);
            Ok(TokioIo::new(TlsConn { stream, h2 }))
        })
    }
}

/// A client TLS stream that tells hyper whether ALPN chose HTTP/2.
struct TlsConn {
    stream: TlsStream<TcpStream>,
    h2: bool,
}

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1: what a browser sends and reads
// ---------------------------------------------------------------------------------------------

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// Trailers sent as HTTP trailers (a gRPC-Web answer has none: they are in its body).
    trailers: Option<HeaderMap>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// The comma-separated list of a header, lower-cased and sorted.
    fn list(&self, name: &str) -> Vec<String> {
        let mut items: Vec<String> = self
            .headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().expect("ASCII header").split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        items.sort();
        items
    }

    /// The names of the `access-control-*` headers in the answer.
    fn cors_headers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers
            .keys()
            .map(|k| k.as_str().to_string())
            .filter(|k| k.starts_with("access-control-"))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The gRPC status of a gRPC-Web answer: from its trailers frame, or from the headers of
    /// a trailers-only answer; with its message and the messages before it.
    fn grpc_web(&self) -> GrpcWebAnswer {
        let mut answer = GrpcWebAnswer::default();
        let text = self
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/grpc-web-text"));
        let mut body = if text {
            use base64::Engine as _;
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(&self.body)
                    .expect("a base64 body"),
            )
        } else {
            self.body.clone()
        };
        while body.remaining() >= 5 {
            let flag = body.get_u8();
            let len = body.get_u32() as usize;
            assert!(body.remaining() >= len, "a truncated gRPC-Web frame");
            let frame = body.split_to(len);
            if flag & 0x80 != 0 {
                for line in String::from_utf8_lossy(&frame).split("\r\n") {
                    if let Some((name, value)) = line.split_once(':') {
                        let value = value.trim().to_string();
                        match name.trim().to_ascii_lowercase().as_str() {
                            "grpc-status" => answer.status = value.parse().ok(),
                            "grpc-message" => answer.message = Some(value),
                            _ => {}
                        }
                    }
                }
            } else {
                answer.messages.push(frame);
            }
        }
        assert_eq!(body.remaining(), 0, "bytes after the last gRPC-Web frame");
        if answer.status.is_none() {
            answer.status = self.header("grpc-status").and_then(|s| s.parse().ok());
            answer.message = self.header("grpc-message").map(str::to_string);
        }
        answer
    }
}

#[derive(Debug, Default)]
struct GrpcWebAnswer {
    status: Option<i32>,
    message: Option<String>,
    messages: Vec<Bytes>,
}

/// One HTTP/1.1 request with these headers and body, answered in full within 15 s.
async fn raw(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut request = Request::builder()
        .method(method.clone())
        .uri(format!("http://{addr}{path}"))
        .version(Version::HTTP_11);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    within(15, &format!("{method} {path}"), async {
        let response = client.request(request).await.expect("an HTTP answer");
        assert_eq!(response.version(), Version::HTTP_11);
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("the whole body");
        let trailers = collected.trailers().cloned();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    })
    .await
}

/// One gRPC-Web frame: flag, big-endian length, bytes.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(flag);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.to_vec()
}

/// A gRPC-Web PublishUserEvent as a browser sends it, from `origin` (if any) with `token`.
async fn raw_publish(
    addr: SocketAddr,
    origin: Option<&str>,
    token: Option<&str>,
    request: &PublishUserEventRequest,
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
        ("x-user-agent", "grpc-web-javascript/0.1"),
    ];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    raw(
        addr,
        Method::POST,
        PUBLISH,
        &headers,
        frame(0, &request.encode_to_vec()),
    )
    .await
}

/// A browser's preflight for a gRPC-Web call (or a tus PATCH) from `origin`.
async fn preflight(addr: SocketAddr, origin: &str, method: &str, headers: &str) -> Answer {
    raw(
        addr,
        Method::OPTIONS,
        PUBLISH,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", headers),
        ],
        Bytes::new(),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

fn user_token(sub: &str) -> String {
    mint_hs256_with(
        SECRET.as_bytes(),
        sub,
        Role::User,
        Duration::from_secs(3600),
        &TokenGrants::default(),
    )
    .expect("token")
}

fn with_auth(config: &mut Config) {
    config.auth = true;
    config.auth_hs256_secret = Some(SECRET.to_string().into());
}

fn event(user: &str, id: &str) -> PublishUserEventRequest {
    PublishUserEventRequest {
        user_id: user.to_string(),
        r#type: UserEventType::Login as i32,
        data: None,
        id: id.to_string(),
    }
}

/// The exact `streamhub_rpc_finished_total` line for `rpc` and `code`, 0 when absent.
fn finished(text: &str, rpc: &str, code: &str) -> u64 {
    metric(
        text,
        &format!("streamhub_rpc_finished_total{{rpc=\"{rpc}\",code=\"{code}\"}}"),
    )
    .unwrap_or(0)
}

/// A unary call and a server-streaming call through `web`: two events published, a live
/// stream that replays them and then gets a third, published while it is open; and a
/// history-only stream that ends with OK (its trailers frame read). Sequences and ids exact.
async fn unary_and_streaming<C>(web: &mut Web<C>, user: &str)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let client = &mut web.client;
    for (n, id) in [(1, "e1"), (2, "e2")] {
        let stored = client
            .publish_user_event(event(user, id))
            .await
            .unwrap_or_else(|s| panic!("PublishUserEvent {id} over gRPC-Web: {s:?}"))
            .into_inner();
        assert_eq!((stored.sequence, stored.id.as_str()), (n, id));
        assert_eq!(stored.user_id, user);
    }
    let mut live = client
        .stream_user_events(common::user_events::live(user))
        .await
        .expect("StreamUserEvents over gRPC-Web")
        .into_inner();
    for (n, id) in [(1, "e1"), (2, "e2")] {
        let replayed = next_event(&mut live).await;
        assert_eq!((replayed.sequence, replayed.id.as_str()), (n, id));
    }
    // The stream holds its connection (HTTP/1.1 has one call per connection at a time): the
    // publish goes out on another from the same client.
    let stored = client
        .publish_user_event(event(user, "e3"))
        .await
        .expect("a publish while the stream is open")
        .into_inner();
    assert_eq!(stored.sequence, 3);
    let tailed = next_event(&mut live).await;
    assert_eq!(
        (tailed.sequence, tailed.id.as_str(), tailed.user_id.as_str()),
        (3, "e3", user)
    );
    drop(live);

    let mut history = client
        .stream_user_events(StreamUserEventsRequest {
            user_id: user.to_string(),
            history_only: true,
            ..Default::default()
        })
        .await
        .expect("a history-only stream")
        .into_inner();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), history.message()).await {
            Err(_) => panic!("the history-only stream neither sent nor ended within 20 s"),
            Ok(Err(status)) => panic!("the history-only stream failed: {status:?}"),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(event))) => seen.push((event.sequence, event.id)),
        }
    }
    assert_eq!(
        seen,
        vec![(1, "e1".into()), (2, "e2".into()), (3, "e3".into())]
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// gRPC-Web over plaintext HTTP/1.1 and HTTP/2 (prior knowledge): unary, replay and live tail,
/// history to its OK end; each response came over the protocol asked for; the RPC metrics count
/// the calls by their names, and a native gRPC client on the same listener sees the same log.
#[tokio::test]
async fn unary_and_server_streaming_over_http1_and_http2() {
    let server = TestServer::start().await;
    within(60, "gRPC-Web round trips", async {
        for (http, user) in [(Http::One, "ann"), (Http::Two, "bob")] {
            let mut web = plain_web_client(server.addr, http, None);
            unary_and_streaming(&mut web, user).await;
            web.assert_all_over(http);
        }
        // The same records for a native gRPC client.
        let mut native = server.client().await;
        let mut stream = common::user_events::open(
            &mut native,
            StreamUserEventsRequest {
                user_id: "ann".into(),
                history_only: true,
                ..Default::default()
            },
        )
        .await;
        let mut ids = Vec::new();
        while let Some(event) = stream.message().await.expect("history") {
            ids.push(event.id);
        }
        assert_eq!(ids, ["e1", "e2", "e3"]);
        // Counted by RPC name: 3 publishes and 2 streams per protocol, all OK once closed.
        rpc_calls_closed(server.addr, "StreamUserEvents").await;
        let text = scrape(server.addr).await;
        assert_eq!(finished(&text, "PublishUserEvent", "OK"), 6, "{text}");
        // Each live stream was dropped by its client (CANCELLED); the history streams ended OK;
        // the native stream too.
        assert_eq!(finished(&text, "StreamUserEvents", "OK"), 3, "{text}");
        assert_eq!(
            finished(&text, "StreamUserEvents", "CANCELLED"),
            2,
            "{text}"
        );
    })
    .await;
}

/// The same over TLS: ALPN settles on what the client offers (http/1.1, or h2), and gRPC-Web
/// works on both.
#[tokio::test]
async fn unary_and_server_streaming_over_tls() {
    let pki = Pki::new();
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    let server = TestServer::start_with(move |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    within(60, "gRPC-Web over TLS", async {
        for (http, user, alpn) in [
            (Http::One, "ann", b"http/1.1".as_slice()),
            (Http::Two, "bob", b"h2".as_slice()),
        ] {
            let connector = pki.connector(http);
            let negotiated = connector.negotiated.clone();
            let mut web = web_client(
                connector,
                &format!("https://localhost:{}", server.addr.port()),
                http,
                None,
            );
            unary_and_streaming(&mut web, user).await;
            web.assert_all_over(http);
            let negotiated = negotiated.lock().unwrap().clone();
            assert!(!negotiated.is_empty());
            assert!(
                negotiated.iter().all(|p| p.as_deref() == Some(alpn)),
                "{http:?}: {negotiated:?}"
            );
        }
    })
    .await;
}

/// With auth on, a gRPC-Web call carries its token like a gRPC call: none is UNAUTHENTICATED, a
/// user's own stream is served, another user's is PERMISSION_DENIED and its publish too; the
/// refusals are counted by RPC name.
#[tokio::test]
async fn auth_over_grpc_web_refuses_the_right_calls() {
    let server = TestServer::start_with(with_auth).await;
    within(60, "gRPC-Web with auth", async {
        let ann_token = user_token("ann");
        let mut anonymous = plain_web_client(server.addr, Http::One, None);
        let mut ann = plain_web_client(server.addr, Http::One, Some(&ann_token));

        let refused = anonymous
            .client
            .publish_user_event(event("ann", "a1"))
            .await
            .expect_err("no token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        let refused = anonymous
            .client
            .stream_user_events(common::user_events::live("ann"))
            .await
            .expect_err("no token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

        let stored = ann
            .client
            .publish_user_event(event("ann", "a1"))
            .await
            .expect("ann publishes as herself")
            .into_inner();
        assert_eq!((stored.sequence, stored.id.as_str()), (1, "a1"));
        let mut own = ann
            .client
            .stream_user_events(common::user_events::live("ann"))
            .await
            .expect("ann reads her own stream")
            .into_inner();
        assert_eq!(next_event(&mut own).await.id, "a1");
        drop(own);

        let refused = ann
            .client
            .stream_user_events(common::user_events::live("bob"))
            .await
            .expect_err("ann may not read bob's stream");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        let refused = ann
            .client
            .publish_user_event(event("bob", "b1"))
            .await
            .expect_err("ann may not publish as bob");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        ann.assert_all_over(Http::One);

        rpc_calls_closed(server.addr, "StreamUserEvents").await;
        let text = scrape(server.addr).await;
        for (rpc, code) in [
            ("PublishUserEvent", "UNAUTHENTICATED"),
            ("StreamUserEvents", "UNAUTHENTICATED"),
            ("PublishUserEvent", "PERMISSION_DENIED"),
            ("StreamUserEvents", "PERMISSION_DENIED"),
            ("PublishUserEvent", "OK"),
        ] {
            assert_eq!(finished(&text, rpc, code), 1, "{rpc} {code}:\n{text}");
        }
    })
    .await;
}

/// The message limit bounds gRPC-Web requests too: a message over --max-message-bytes gets
/// RESOURCE_EXHAUSTED, and nothing is stored.
#[tokio::test]
async fn the_message_limit_bounds_grpc_web_requests() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 1024).await;
    within(60, "an oversized gRPC-Web message", async {
        let mut web = plain_web_client(server.addr, Http::One, None);
        let mut big = event("ann", "big");
        big.data = Some(prost_types::Any {
            type_url: "type.googleapis.com/test.Blob".into(),
            value: vec![7; 4096],
        });
        let refused = web
            .client
            .publish_user_event(big.clone())
            .await
            .expect_err("over the limit");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        // Raw, as a browser sends it: the status in a gRPC-Web answer.
        let answer = raw_publish(server.addr, None, None, &big).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.grpc_web().status,
            Some(Code::ResourceExhausted as i32)
        );
        // In base64 text mode too: the limit counts the decoded message, not the text.
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(frame(0, &big.encode_to_vec()));
        let answer = raw(
            server.addr,
            Method::POST,
            PUBLISH,
            &[("content-type", "application/grpc-web-text")],
            text,
        )
        .await;
        assert_eq!(
            answer.grpc_web().status,
            Some(Code::ResourceExhausted as i32)
        );
        let stored = web
            .client
            .publish_user_event(event("ann", "small"))
            .await
            .expect("a message under the limit")
            .into_inner();
        assert_eq!((stored.sequence, stored.id.as_str()), (1, "small"));
    })
    .await;
}

/// A preflight from a listed origin is answered before auth (no token) with what a gRPC-Web or
/// tus client needs; an unlisted origin gets no `access-control-allow-origin`; a refused call
/// from a listed origin is a gRPC-Web answer whose status the page may read.
#[tokio::test]
async fn cors_preflight_needs_no_token_and_refusals_are_readable() {
    let server = TestServer::start_with(|c| {
        with_auth(c);
        c.cors_origins = vec![ALLOWED.to_string(), "http://localhost:5173".to_string()];
    })
    .await;
    let addr = server.addr;

    let asked = "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout";
    let answer = preflight(addr, ALLOWED, "POST", asked).await;
    assert!(answer.status.is_success(), "{:?}", answer.status);
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(
        answer.list("access-control-allow-methods"),
        ["delete", "get", "head", "options", "patch", "post"]
    );
    let allowed = answer.list("access-control-allow-headers");
    for header in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "connect-protocol-version",
        "tus-resumable",
        "upload-length",
        "upload-offset",
        "upload-metadata",
        "upload-checksum",
        "upload-concat",
        "upload-defer-length",
        "x-http-method-override",
    ] {
        assert!(
            allowed.contains(&header.to_string()),
            "{header}: {allowed:?}"
        );
    }
    assert_eq!(answer.header("access-control-max-age"), Some("600"));
    assert_eq!(answer.header("access-control-allow-credentials"), None);
    assert!(answer.list("vary").contains(&"origin".to_string()));
    assert!(answer.body.is_empty());

    // A tus client's preflight for a PATCH under /files/ is answered the same way.
    let tus = raw(
        addr,
        Method::OPTIONS,
        "/files/some-upload",
        &[
            ("origin", "http://localhost:5173"),
            ("access-control-request-method", "PATCH"),
            (
                "access-control-request-headers",
                "tus-resumable,upload-offset,content-type",
            ),
        ],
        Bytes::new(),
    )
    .await;
    assert!(tus.status.is_success(), "{:?}", tus.status);
    assert_eq!(
        tus.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );

    // An origin that is not listed: the browser gets nothing to allow it.
    for (what, answer) in [
        ("preflight", preflight(addr, OTHER, "POST", asked).await),
        (
            "call",
            raw_publish(addr, Some(OTHER), None, &event("ann", "x")).await,
        ),
    ] {
        assert_eq!(answer.header("access-control-allow-origin"), None, "{what}");
    }
    // Look-alikes of a listed origin are other origins.
    for origin in [
        "https://console.example.evil",
        "http://console.example",
        "https://console.example:8443",
    ] {
        let answer = preflight(addr, origin, "POST", asked).await;
        assert_eq!(
            answer.header("access-control-allow-origin"),
            None,
            "{origin}"
        );
    }

    // No token, from the listed origin: UNAUTHENTICATED as a gRPC-Web answer (HTTP 200, a
    // gRPC-Web content type), with the headers the page needs to read it.
    let answer = raw_publish(addr, Some(ALLOWED), None, &event("ann", "x")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("content-type"),
        Some("application/grpc-web+proto")
    );
    let refused = answer.grpc_web();
    assert_eq!(
        refused.status,
        Some(Code::Unauthenticated as i32),
        "{refused:?}"
    );
    assert!(refused.messages.is_empty());
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(
        answer.list("access-control-expose-headers"),
        [
            "grpc-message",
            "grpc-status",
            "grpc-status-details-bin",
            "location",
            "tus-checksum-algorithm",
            "tus-extension",
            "tus-max-size",
            "tus-resumable",
            "tus-version",
            "upload-expires",
            "upload-length",
            "upload-metadata",
            "upload-offset",
        ]
    );

    // With a token, from the listed origin: the stored event, then an OK trailers frame.
    let ann = user_token("ann");
    let answer = raw_publish(addr, Some(ALLOWED), Some(&ann), &event("ann", "a1")).await;
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    let ok = answer.grpc_web();
    assert_eq!(ok.status, Some(0), "{ok:?}");
    assert_eq!(ok.messages.len(), 1);
    let stored = UserEvent::decode(ok.messages[0].clone()).expect("a UserEvent");
    assert_eq!((stored.sequence, stored.id.as_str()), (1, "a1"));
    assert!(
        answer.trailers.is_none(),
        "gRPC-Web carries trailers in the body"
    );

    // Another user's stream, from the listed origin: PERMISSION_DENIED, readable.
    let answer = raw_publish(addr, Some(ALLOWED), Some(&ann), &event("bob", "b1")).await;
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(
        answer.grpc_web().status,
        Some(Code::PermissionDenied as i32)
    );

    // The plain HTTP routes get CORS too; a bare OPTIONS (tus discovery) is left to the routes.
    let metrics = raw(
        addr,
        Method::GET,
        "/metrics",
        &[("origin", ALLOWED)],
        Bytes::new(),
    )
    .await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.header("access-control-allow-origin"), Some(ALLOWED));
    let bare = raw(
        addr,
        Method::OPTIONS,
        "/metrics",
        &[("origin", ALLOWED)],
        Bytes::new(),
    )
    .await;
    assert_eq!(bare.header("access-control-allow-methods"), None);
}

/// `*` allows any origin (and the server still checks tokens).
#[tokio::test]
async fn cors_wildcard_allows_any_origin() {
    let server = TestServer::start_with(|c| {
        with_auth(c);
        c.cors_origins = vec!["*".to_string()];
    })
    .await;
    let answer = preflight(server.addr, OTHER, "POST", "authorization,content-type").await;
    assert!(answer.status.is_success(), "{:?}", answer.status);
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
    let answer = raw_publish(server.addr, Some(OTHER), None, &event("ann", "x")).await;
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
    assert_eq!(answer.grpc_web().status, Some(Code::Unauthenticated as i32));
}

/// Without --cors-origins no answer carries a CORS header, and a preflight is not answered as
/// one; gRPC-Web itself still works (same-origin pages, non-browser clients).
#[tokio::test]
async fn without_cors_origins_no_cors_headers_at_all() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let answers = [
        (
            "preflight",
            preflight(addr, ALLOWED, "POST", "content-type,x-grpc-web").await,
        ),
        (
            "call",
            raw_publish(addr, Some(ALLOWED), None, &event("ann", "n1")).await,
        ),
        (
            "metrics",
            raw(
                addr,
                Method::GET,
                "/metrics",
                &[("origin", ALLOWED)],
                Bytes::new(),
            )
            .await,
        ),
    ];
    for (what, answer) in &answers {
        assert_eq!(answer.cors_headers(), Vec::<String>::new(), "{what}");
    }
    assert_eq!(answers[1].1.grpc_web().status, Some(0));
}

/// Malformed gRPC-Web requests get a defined answer, never a hang (each within 15 s): a
/// gRPC-Web status for bodies that cannot be decoded, HTTP 405 for a gRPC-Web GET. The
/// well-formed rows (binary and base64 text) show the table's requests reach the RPC.
#[tokio::test]
async fn malformed_grpc_web_requests_get_a_defined_status() {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let server = TestServer::start().await;
    let t1 = frame(0, &event("ann", "t1").encode_to_vec());
    let t2 = frame(0, &event("ann", "t2").encode_to_vec());
    let t1_text = b64(&t1);
    /// One request of the table and what it must get.
    struct Row {
        what: &'static str,
        method: Method,
        path: &'static str,
        content_type: &'static str,
        body: Vec<u8>,
        http: StatusCode,
        grpc: Option<Code>,
    }
    let post = |what, content_type, body: Vec<u8>, grpc| Row {
        what,
        method: Method::POST,
        path: PUBLISH,
        content_type,
        body,
        http: StatusCode::OK,
        grpc: Some(grpc),
    };
    let (binary, text) = ("application/grpc-web+proto", "application/grpc-web-text");
    let rows = [
        post("well-formed", binary, t1.clone(), Code::Ok),
        post("well-formed text", text, b64(&t2).into_bytes(), Code::Ok),
        post("empty body", binary, vec![], Code::Internal),
        post("truncated prefix", binary, vec![0, 0, 0], Code::Internal),
        post(
            "truncated message",
            binary,
            t1[..8].to_vec(),
            Code::Internal,
        ),
        post("not protobuf", binary, frame(0, &[0xff; 9]), Code::Internal),
        post(
            "compressed, no encoding",
            binary,
            frame(1, &t1[5..]),
            Code::Internal,
        ),
        post(
            "bad base64",
            text,
            b"!!!!not base64".to_vec(),
            Code::Internal,
        ),
        post(
            "base64 cut short",
            text,
            t1_text.as_bytes()[..t1_text.len() - 3].to_vec(),
            Code::Internal,
        ),
        // tonic reads a unary call's first message, for gRPC-Web as for gRPC: a retry of t1.
        post(
            "two messages to a unary call",
            binary,
            [t1.clone(), t1.clone()].concat(),
            Code::Ok,
        ),
        Row {
            path: "/streaming.v1.StreamingService/Nope",
            ..post("unknown method", binary, t1.clone(), Code::Unimplemented)
        },
        Row {
            method: Method::GET,
            http: StatusCode::METHOD_NOT_ALLOWED,
            grpc: None,
            ..post("GET", binary, vec![], Code::Ok)
        },
    ];
    for row in rows {
        let answer = raw(
            server.addr,
            row.method,
            row.path,
            &[("content-type", row.content_type), ("x-grpc-web", "1")],
            row.body,
        )
        .await;
        assert_eq!(answer.status, row.http, "{}", row.what);
        let got = answer.grpc_web();
        assert_eq!(
            got.status,
            row.grpc.map(|c| c as i32),
            "{}: {got:?}",
            row.what
        );
    }
    // Only t1 (its repeats answered with the stored event, by id) and t2 were stored.
    let mut native = server.client().await;
    let mut history = common::user_events::open(
        &mut native,
        StreamUserEventsRequest {
            user_id: "ann".into(),
            history_only: true,
            ..Default::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    while let Some(event) = history.message().await.expect("history") {
        ids.push(event.id);
    }
    assert_eq!(ids, ["t1", "t2"]);
}
