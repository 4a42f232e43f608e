//! TLS and mutual TLS on the one listener, against the real server: a gRPC round trip (publish,
//! then replay and live tail), mTLS with no certificate, a stranger's certificate and the right
//! one, handshakes that stall (they block no one and are cut at the deadline), plaintext and TLS
//! clients on the wrong kind of server, the HTTP download route over TLS, bad certificate files
//! that stop the start, and the CLI's TLS flags end to end. Certificates are made at test time
//! with rcgen; nothing is read from the machine's trust store.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhub::cli::Connect;
use streamhub::proto::*;
use streamhub::server::App;
use streamhub::{Config, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
use tokio_stream::StreamExt;
use tonic::Code;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A private CA, a server certificate for 127.0.0.1 and localhost, a client certificate from the
/// same CA, and a "stranger" client certificate from another CA; all as PEM files in `dir`.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

/// A leaf certificate for `names`, signed by `issuer`: (certificate PEM, key PEM).
fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let params = CertificateParams::new(names).expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        let ca = new_ca("streamhub test CA");
        let (server_cert, server_key) = leaf(&ca, &["localhost", "127.0.0.1"]);
        let (client_cert, client_key) = leaf(&ca, &["client.test"]);
        let other = new_ca("some other CA");
        let (stranger_cert, stranger_key) = leaf(&other, &["stranger.test"]);
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            stranger_cert: write("stranger.pem", &stranger_cert),
            stranger_key: write("stranger.key", &stranger_key),
            dir,
        }
    }

    /// Server settings for TLS, and for mTLS when `mutual`.
    fn server(&self, mutual: bool) -> impl FnOnce(&mut Config) + use<> {
        let (cert, key, ca) = (
            self.server_cert.clone(),
            self.server_key.clone(),
            self.ca.clone(),
        );
        move |config| {
            config.tls_cert = Some(cert);
            config.tls_key = Some(key);
            if mutual {
                config.tls_client_ca = Some(ca);
            }
        }
    }

    /// How the CLI would connect: trusting the test CA, with an optional client identity.
    fn connect(&self, url: String, identity: Option<(&Path, &Path)>) -> Connect {
        let mut connect = Connect::plain(url);
        connect.ca_cert = Some(self.ca.clone());
        if let Some((cert, key)) = identity {
            connect.client_cert = Some(cert.to_path_buf());
            connect.client_key = Some(key.to_path_buf());
        }
        connect
    }

    /// A raw TLS client that trusts the test CA, speaking HTTP/1.1 (ALPN), without a client
    /// certificate.
    fn http_connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        let pem = std::fs::read(&self.ca).expect("read CA");
        use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

fn https(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

fn publish_req(user: &str, id: &str) -> PublishUserEventRequest {
    PublishUserEventRequest {
        user_id: user.to_string(),
        r#type: UserEventType::Login as i32,
        data: None,
        id: id.to_string(),
    }
}

/// Why a connect-and-call failed.
#[derive(Debug)]
enum Failure {
    /// The CLI's connect step: the TCP connection or the TLS handshake (or the file checks).
    Connect(String),
    /// The call itself, with the status tonic made of it.
    Call(Code, String),
}

impl Failure {
    /// A failure at the transport: the connection could not be made or was torn down, never
    /// an answer from the service. With TLS 1.3 the client finishes its side of the handshake
    /// before the server has checked the client's certificate, so a refused client may learn
    /// of it at connect or only at its first call; and a plaintext client reads a TLS alert as
    /// a bad HTTP/2 frame, or sees the connection closed. So tonic reports one of four codes,
    /// each with its own fixed message, depending on where the request was when the
    /// connection broke.
    #[track_caller]
    fn assert_transport(&self, what: &str) {
        let ok = match self {
            Failure::Connect(m) => m.starts_with("cannot reach streamhub at"),
            Failure::Call(Code::Unavailable, _) => true,
            Failure::Call(Code::Unknown, m) => m == "transport error",
            Failure::Call(Code::Cancelled, m) => m == "operation was canceled",
            Failure::Call(Code::Internal, m) => m.starts_with("h2 protocol error"),
            Failure::Call(..) => false,
        };
        assert!(ok, "{what}: expected a transport failure, got {self:?}");
    }
}

/// Connects with `connect` and publishes one event.
async fn try_publish(connect: &Connect, user: &str, id: &str) -> Result<UserEvent, Failure> {
    let mut client = connect
        .client()
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    client
        .publish_user_event(publish_req(user, id))
        .await
        .map(|r| r.into_inner())
        .map_err(|s| Failure::Call(s.code(), s.message().to_string()))
}

/// True while the server has neither closed nor reset `stream`, and sent it nothing.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The start of a TLS ClientHello record, cut off: a record header promising 512 bytes, and the
/// handshake header. A server waits for the rest.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Publish over TLS, replay what was stored, and follow it live: the same exact sequences and
/// ids as in plaintext, by IP and by host name (both are in the certificate).
#[tokio::test]
async fn grpc_round_trip_over_tls() {
    let pki = Pki::new();
    let server = TestServer::start_with(pki.server(false)).await;
    within(30, "round trip", async {
        let mut client = pki
            .connect(https(server.addr), None)
            .client()
            .await
            .expect("TLS connect by IP");
        for (n, id) in ["e1", "e2"].into_iter().enumerate() {
            let event = client
                .publish_user_event(publish_req("alice", id))
                .await
                .expect("publish over TLS")
                .into_inner();
            assert_eq!((event.id.as_str(), event.sequence), (id, n as u64 + 1));
        }

        let by_name = format!("https://localhost:{}", server.addr.port());
        let mut other = pki
            .connect(by_name, None)
            .client()
            .await
            .expect("TLS connect by host name");
        let mut live = other
            .stream_user_events(StreamUserEventsRequest {
                user_id: "alice".into(),
                ..Default::default()
            })
            .await
            .expect("subscribe over TLS")
            .into_inner();
        let replayed: Vec<(String, u64)> = vec![
            live.next().await.expect("1st").expect("1st ok"),
            live.next().await.expect("2nd").expect("2nd ok"),
        ]
        .into_iter()
        .map(|e| (e.id, e.sequence))
        .collect();
        assert_eq!(replayed, vec![("e1".to_string(), 1), ("e2".to_string(), 2)]);

        client
            .publish_user_event(publish_req("alice", "e3"))
            .await
            .expect("publish while tailing");
        let tailed = live.next().await.expect("live event").expect("live ok");
        assert_eq!((tailed.id.as_str(), tailed.sequence), ("e3", 3));
    })
    .await;
    server.stop().await;
}

/// With --tls-client-ca, a client without a certificate and a client with a certificate from
/// another CA are both refused; the CA's own client gets through.
#[tokio::test]
async fn mutual_tls_requires_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let server = TestServer::start_with(pki.server(true)).await;
    within(30, "mTLS", async {
        let url = https(server.addr);
        try_publish(&pki.connect(url.clone(), None), "bob", "a")
            .await
            .expect_err("a client without a certificate must be refused")
            .assert_transport("no client certificate");

        let stranger = pki.connect(
            url.clone(),
            Some((pki.stranger_cert.as_path(), pki.stranger_key.as_path())),
        );
        try_publish(&stranger, "bob", "b")
            .await
            .expect_err("a certificate from another CA must be refused")
            .assert_transport("a certificate from another CA");

        let member = pki.connect(
            url,
            Some((pki.client_cert.as_path(), pki.client_key.as_path())),
        );
        let event = try_publish(&member, "bob", "c")
            .await
            .expect("the CA's client gets through");
        // The refused calls stored nothing: this is the user's first event.
        assert_eq!((event.id.as_str(), event.sequence), ("c", 1));
    })
    .await;
    server.stop().await;
}

/// Many connections that never finish a handshake (silent, or a ClientHello cut short) do not
/// delay a real client: it connects and completes a call while all of them are still open.
/// A server that handled handshakes one at a time would hold the real client until the stalled
/// ones timed out: 64 x 10 minutes, far past the deadline below, so the deadline tells the two
/// apart without asserting how fast the call is.
#[tokio::test]
async fn stalled_handshakes_do_not_block_other_clients() {
    let pki = Pki::new();
    // A handshake deadline far longer than the test, so that every stalled connection is
    // certainly still open below.
    let server = TestServer::start_with(|c| {
        pki.server(false)(c);
        c.tls_handshake_timeout_secs = 600;
    })
    .await;
    within(120, "a client past stalled handshakes", async {
        let mut stalled = Vec::new();
        for n in 0..64 {
            let mut raw = TcpStream::connect(server.addr).await.expect("raw connect");
            if n % 2 == 1 {
                raw.write_all(PARTIAL_CLIENT_HELLO)
                    .await
                    .expect("partial hello");
            }
            stalled.push(raw);
        }
        let event = try_publish(&pki.connect(https(server.addr), None), "carol", "x")
            .await
            .expect("a real client completes its call");
        assert_eq!(event.sequence, 1);
        let open = stalled.iter().filter(|s| still_open(s)).count();
        assert_eq!(
            open,
            stalled.len(),
            "every stalled connection is still open"
        );
    })
    .await;
    server.stop().await;
}

/// A connection that stalls in its handshake is closed by the server once the handshake
/// deadline (1 s here) passes: not before, and before the default deadline (10 s) would have
/// passed, so it is the configured one. Meanwhile another client completes a call.
#[tokio::test]
async fn stalled_handshakes_are_closed_at_the_deadline() {
    const CLOSED_BY: Duration = Duration::from_secs(8);
    let pki = Pki::new();
    let server = TestServer::start_with(|c| {
        pki.server(false)(c);
        c.tls_handshake_timeout_secs = 1;
    })
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.expect("raw connect");
    let mut partial = TcpStream::connect(server.addr).await.expect("raw connect");
    partial
        .write_all(PARTIAL_CLIENT_HELLO)
        .await
        .expect("partial hello");

    let event = within(10, "a call next to stalled handshakes", async {
        try_publish(&pki.connect(https(server.addr), None), "dave", "y").await
    })
    .await
    .expect("a real client completes its call");
    assert_eq!(event.sequence, 1);

    for (what, raw) in [("silent", &mut silent), ("partial hello", &mut partial)] {
        let mut buf = [0u8; 64];
        // Waits for the close itself; the deadline only tells "closed at the configured 1 s"
        // from "closed at the default 10 s, or never", with room for a loaded machine.
        let read = tokio::time::timeout_at((started + CLOSED_BY).into(), raw.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: not closed within {CLOSED_BY:?} of connecting"));
        let elapsed = started.elapsed();
        match read {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{what}: the server sent {n} bytes instead of closing"),
        }
        assert!(
            elapsed >= Duration::from_millis(900),
            "{what}: closed after {elapsed:?}, before the 1 s deadline"
        );
    }
    server.stop().await;
}

/// A plaintext gRPC client against a TLS server fails with an error (no hang), and so does a
/// TLS client against a plaintext server; both servers keep serving their own kind.
#[tokio::test]
async fn clients_of_the_wrong_kind_fail_cleanly() {
    let pki = Pki::new();
    let tls_server = TestServer::start_with(pki.server(false)).await;
    let plain_server = TestServer::start().await;
    within(30, "wrong kinds", async {
        try_publish(&Connect::plain(tls_server.url()), "erin", "p")
            .await
            .expect_err("plaintext against TLS must fail")
            .assert_transport("plaintext against TLS");
        // The handshake itself fails here, so the connect step reports it.
        match try_publish(&pki.connect(https(plain_server.addr), None), "erin", "q").await {
            Err(Failure::Connect(m)) => assert!(
                m.starts_with(&format!(
                    "cannot reach streamhub at {}",
                    https(plain_server.addr)
                )),
                "{m}"
            ),
            other => panic!("TLS against plaintext must fail to connect, got {other:?}"),
        }

        let over_tls = try_publish(&pki.connect(https(tls_server.addr), None), "erin", "r")
            .await
            .expect("the TLS server still serves TLS");
        assert_eq!(over_tls.sequence, 1);
        let plain = try_publish(&Connect::plain(plain_server.url()), "erin", "s")
            .await
            .expect("the plaintext server still serves plaintext");
        assert_eq!(plain.sequence, 1);
    })
    .await;
    tls_server.stop().await;
    plain_server.stop().await;
}

/// The download route over TLS (ALPN http/1.1): the upload's download_url is https:// on the
/// listener, and GET returns the exact bytes. Plain HTTP on the TLS port gets no response.
#[tokio::test]
async fn http_download_over_tls() {
    let pki = Pki::new();
    let server = TestServer::start_with(pki.server(false)).await;
    within(30, "HTTPS download", async {
        let mut client = pki
            .connect(https(server.addr), None)
            .client()
            .await
            .expect("TLS connect");
        let bytes: Vec<u8> = (0..100_000u32).map(|n| (n % 251) as u8).collect();
        let chunks = vec![
            FileChunk {
                offset: 0,
                data: Some(file_chunk::Data::Metadata(FileMetadata {
                    filename: "tls.bin".into(),
                    total_size: bytes.len() as i64,
                    ..Default::default()
                })),
            },
            FileChunk {
                offset: 0,
                data: Some(file_chunk::Data::Chunk(bytes.clone())),
            },
        ];
        let uploaded = client
            .upload_file(tokio_stream::iter(chunks))
            .await
            .expect("upload over TLS")
            .into_inner();
        let expected_url = format!("https://{}/files/{}", server.addr, uploaded.file_id);
        assert_eq!(uploaded.download_url, expected_url);

        let tcp = TcpStream::connect(server.addr).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let mut tls = pki
            .http_connector()
            .connect(name, tcp)
            .await
            .expect("TLS handshake with ALPN http/1.1");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let request = format!(
            "GET /files/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            uploaded.file_id, server.addr
        );
        tls.write_all(request.as_bytes()).await.expect("send GET");
        let mut raw = Vec::new();
        // The server may end with a close_notify or just a FIN; either ends the body.
        let _ = tls.read_to_end(&mut raw).await;
        let head_end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP head");
        let head = String::from_utf8_lossy(&raw[..head_end]);
        assert!(head.starts_with("HTTP/1.1 200 "), "head: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {}", bytes.len())),
            "head: {head}"
        );
        assert!(raw[head_end + 4..] == bytes[..], "the body differs");

        // Plain HTTP on the TLS port: the handshake fails and the server closes.
        let mut plain = TcpStream::connect(server.addr).await.expect("connect");
        plain
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("send plain GET");
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "plain HTTP got an HTTP answer on the TLS port"
        );
    })
    .await;
    server.stop().await;
}

/// Every unusable TLS setting stops the start with an error that names the flag and the file,
/// before the database is created.
#[tokio::test]
async fn bad_tls_settings_refuse_to_start() {
    let pki = Pki::new();
    let files = pki.dir.path();
    let garbage = files.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("write garbage");
    let missing = files.join("missing.pem");
    let p = |path: &Path| Some(path.to_path_buf());

    type Case = (
        &'static str,
        Option<PathBuf>,
        Option<PathBuf>,
        Option<PathBuf>,
        u64,
        String,
    );
    let cases: Vec<Case> = vec![
        (
            "missing certificate file",
            p(&missing),
            p(&pki.server_key),
            None,
            10,
            format!(
                "--tls-cert {}: No such file or directory",
                missing.display()
            ),
        ),
        (
            "certificate file without PEM",
            p(&garbage),
            p(&pki.server_key),
            None,
            10,
            format!(
                "--tls-cert {}: no CERTIFICATE block found (PEM expected)",
                garbage.display()
            ),
        ),
        (
            "a key where the certificate belongs",
            p(&pki.server_key),
            p(&pki.server_key),
            None,
            10,
            format!(
                "--tls-cert {}: no CERTIFICATE block found",
                pki.server_key.display()
            ),
        ),
        (
            "key file without a key",
            p(&pki.server_cert),
            p(&pki.server_cert),
            None,
            10,
            format!(
                "--tls-key {}: no usable private key",
                pki.server_cert.display()
            ),
        ),
        (
            "key of another certificate",
            p(&pki.server_cert),
            p(&pki.client_key),
            None,
            10,
            format!(
                "--tls-cert {} with --tls-key {}: ",
                pki.server_cert.display(),
                pki.client_key.display()
            ),
        ),
        (
            "certificate without key",
            p(&pki.server_cert),
            None,
            None,
            10,
            "--tls-cert needs --tls-key".to_string(),
        ),
        (
            "key without certificate",
            None,
            p(&pki.server_key),
            None,
            10,
            "--tls-key needs --tls-cert".to_string(),
        ),
        (
            "client CA without TLS",
            None,
            None,
            p(&pki.ca),
            10,
            "--tls-client-ca needs --tls-cert and --tls-key".to_string(),
        ),
        (
            "client CA file without PEM",
            p(&pki.server_cert),
            p(&pki.server_key),
            p(&garbage),
            10,
            format!(
                "--tls-client-ca {}: no CERTIFICATE block found",
                garbage.display()
            ),
        ),
        (
            "missing client CA file",
            p(&pki.server_cert),
            p(&pki.server_key),
            p(&missing),
            10,
            format!("--tls-client-ca {}: No such file", missing.display()),
        ),
        (
            "zero handshake timeout",
            p(&pki.server_cert),
            p(&pki.server_key),
            None,
            0,
            "--tls-handshake-timeout-secs must be at least 1".to_string(),
        ),
    ];
    for (what, cert, key, client_ca, timeout, expected) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::in_dir(dir.path());
        config.tls_cert = cert;
        config.tls_key = key;
        config.tls_client_ca = client_ca;
        config.tls_handshake_timeout_secs = timeout;
        match App::open(config).await {
            Ok(_) => panic!("{what}: the server started"),
            Err(Error::Config(message)) => assert!(
                message.starts_with(&expected),
                "{what}: message {message:?} should start with {expected:?}"
            ),
            Err(other) => panic!("{what}: expected a settings error, got {other:?}"),
        }
        assert!(
            !dir.path().join("streamhub.db").exists(),
            "{what}: the database was created before the settings were checked"
        );
    }
}

/// The binary: a bad key file ends `serve` with exit status 1 and one `error:` line, no panic.
#[test]
fn the_binary_refuses_to_start_on_a_bad_key() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("streamhub.db").display());
    let output = Command::new(env!("CARGO_BIN_EXE_streamhub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
        .arg("--storage-dir")
        .arg(dir.path().join("files"))
        .arg("--tls-cert")
        .arg(&pki.server_cert)
        .arg("--tls-key")
        .arg(&pki.server_cert)
        .env_remove("STREAMHUB_LISTEN")
        .output()
        .expect("run streamhub");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let expected = format!(
        "error: --tls-key {}: no usable private key",
        pki.server_cert.display()
    );
    assert!(stderr.contains(&expected), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// The real binary with --tls-cert/--tls-key/--tls-client-ca, and the CLI with --ca-cert,
/// --client-cert and --client-key: a publish goes through; without the client certificate the
/// CLI exits 1 with an error line; TLS options against an http:// server are refused.
#[test]
fn cli_flags_end_to_end_with_mutual_tls() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::spawn(
        dir.path(),
        &[
            "--tls-cert",
            pki.server_cert.to_str().expect("utf-8 path"),
            "--tls-key",
            pki.server_key.to_str().expect("utf-8 path"),
            "--tls-client-ca",
            pki.ca.to_str().expect("utf-8 path"),
        ],
    );
    let url = https(server.addr);
    let cli = |extra: &[&Path]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamhub"));
        command
            .args(["events", "--server", &url, "--ca-cert"])
            .arg(&pki.ca);
        if let [cert, key] = extra {
            command
                .arg("--client-cert")
                .arg(cert)
                .arg("--client-key")
                .arg(key);
        }
        command
            .args([
                "publish", "--user", "frank", "--type", "login", "--id", "f1", "--json",
            ])
            .env_remove("STREAMHUB_SERVER")
            .output()
            .expect("run the CLI")
    };

    let ok = cli(&[&pki.client_cert, &pki.client_key]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let event: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(event["id"], "f1");
    assert_eq!(event["sequence"], "1");

    let refused = cli(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");

    let plain = Command::new(env!("CARGO_BIN_EXE_streamhub"))
        .args(["events", "--server", "http://127.0.0.1:9", "--ca-cert"])
        .arg(&pki.ca)
        .args(["publish", "--user", "frank", "--type", "login"])
        .output()
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("--ca-cert, --client-cert and --client-key need an https:// --server"),
        "stderr: {stderr}"
    );
    server.terminate();
}

/// The client checks its PEM files before connecting, naming the flag and the file.
#[tokio::test]
async fn client_tls_files_are_checked_before_connecting() {
    let pki = Pki::new();
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM").expect("write garbage");
    let url = "https://127.0.0.1:9".to_string();

    let mut bad_ca = Connect::plain(url.clone());
    bad_ca.ca_cert = Some(garbage.clone());
    let mut key_as_cert = pki.connect(url.clone(), None);
    key_as_cert.client_cert = Some(pki.client_key.clone());
    key_as_cert.client_key = Some(pki.client_key.clone());
    let mut cert_as_key = pki.connect(url.clone(), None);
    cert_as_key.client_cert = Some(pki.client_cert.clone());
    cert_as_key.client_key = Some(pki.client_cert.clone());
    let mut half = pki.connect(url, None);
    half.client_cert = Some(pki.client_cert.clone());

    let cases = [
        (
            bad_ca,
            format!(
                "--ca-cert {}: no CERTIFICATE block found",
                garbage.display()
            ),
        ),
        (
            key_as_cert,
            format!(
                "--client-cert {}: no CERTIFICATE block found",
                pki.client_key.display()
            ),
        ),
        (
            cert_as_key,
            format!(
                "--client-key {}: no usable private key",
                pki.client_cert.display()
            ),
        ),
        (
            half,
            "--client-cert and --client-key go together".to_string(),
        ),
    ];
    for (connect, expected) in cases {
        let err = connect.client().await.expect_err("must fail").to_string();
        assert!(
            err.starts_with(&expected),
            "{err:?} should start with {expected:?}"
        );
    }
    // Good files pass the checks: the failure is then the connection, not a file.
    let good = pki.connect(
        "https://127.0.0.1:9".into(),
        Some((pki.client_cert.as_path(), pki.client_key.as_path())),
    );
    let err = good.client().await.expect_err("nothing listens on port 9");
    assert!(
        err.to_string().starts_with("cannot reach streamhub at"),
        "{err}"
    );
}
