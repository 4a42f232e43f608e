//! tus 1.0 uploads under `/files/`, against the real server over raw HTTP/1.1: the capabilities
//! OPTIONS announces; creation and creation-with-upload; a PATCH cut off mid-body resumed from
//! the offset HEAD reports; offset conflicts (409); chunk checksums in sha1 and sha256, a
//! mismatch (460) that leaves the offset where it was, an unknown algorithm (400); a whole-file
//! checksum mismatch (460, then 404); termination; expiry; version (412) and size (413) refusals;
//! concurrent PATCHes (423, also across two replicas on PostgreSQL); a stalled body (408, its
//! bytes kept); a crash mid-chunk (SIGKILL: an unverified chunk is never adopted); access with
//! auth on; and files that cross between tus and UploadFile both ways,
//! each checked byte for byte and by SHA-256 through DownloadFile and the signed URL.
//!
//! The HTTP client is a few lines over a TCP socket, so that a test can stop a body half-way,
//! hold it open, or cut the connection.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{AuthClient, StoreKind, TestServer, poll_until, store_tests, within};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use streamhub::auth::{Role, mint_hs256};
use streamhub::proto::file_chunk::Data;
use streamhub::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const SECRET: &str = "an hs256 secret of at least 32 bytes, for tests";

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// One HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header that must be there.
    #[track_caller]
    fn must(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }

    fn offset(&self) -> u64 {
        self.must("upload-offset").parse().expect("a number")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response to the end of the connection (every request says `connection: close`).
/// A server that answers before reading a whole body may close with a reset once its answer is
/// out: what arrived before it counts.
async fn read_reply(socket: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if !raw.is_empty() => {
                eprintln!("response ended with {e} after {} bytes", raw.len());
                break;
            }
            Err(e) => panic!("read response: {e}"),
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Where requests go, and as whom.
#[derive(Clone)]
struct Http {
    addr: SocketAddr,
    /// A bearer token sent with every tus request.
    token: Option<String>,
}

impl Http {
    fn open(addr: SocketAddr) -> Self {
        Http { addr, token: None }
    }

    fn as_token(addr: SocketAddr, token: String) -> Self {
        Http {
            addr,
            token: Some(token),
        }
    }

    /// Writes a request head (with `content-length` when given), then `body`, in one write, and
    /// returns the open socket.
    async fn start(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        content_length: Option<usize>,
        body: &[u8],
    ) -> TcpStream {
        let mut socket = TcpStream::connect(self.addr).await.expect("connect");
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(len) = content_length {
            head.push_str(&format!("content-length: {len}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        socket.write_all(&bytes).await.expect("send request");
        socket
    }

    /// A whole request and its response, with exactly the headers given.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Reply {
        let length =
            (!body.is_empty() || method == "POST" || method == "PATCH").then_some(body.len());
        let mut socket = self.start(method, path, headers, length, body).await;
        read_reply(&mut socket).await
    }

    /// The headers of a tus request: `Tus-Resumable` and the token, then `extra`.
    fn tus_headers(&self, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let mut headers = vec![("tus-resumable", "1.0.0".to_string())];
        if let Some(token) = &self.token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        for (name, value) in extra {
            // Leaked names: a handful per test, for a `'static` header list.
            headers.push((Box::leak(name.to_string().into_boxed_str()), value.clone()));
        }
        headers
    }

    async fn tus(&self, method: &str, path: &str, extra: &[(&str, String)], body: &[u8]) -> Reply {
        self.raw(method, path, &self.tus_headers(extra), body).await
    }

    /// POST /files/ with `Upload-Length` and `Upload-Metadata`; the path of the new upload.
    async fn create(&self, length: usize, metadata: &str) -> String {
        let reply = self
            .tus(
                "POST",
                "/files/",
                &[
                    ("upload-length", length.to_string()),
                    ("upload-metadata", metadata.to_string()),
                ],
                b"",
            )
            .await;
        assert_eq!(reply.status, 201, "creation: {reply:?} {}", reply.text());
        self.path_of(&reply)
    }

    /// The path of `Location`, which is relative (`/files/<uuid>`) without `--public-url`, and
    /// absolute on it (`http://<addr>/files/<uuid>` when a test sets it to this server).
    fn path_of(&self, reply: &Reply) -> String {
        let location = reply.must("location");
        let path = location
            .strip_prefix(&format!("http://{}", self.addr))
            .or_else(|| location.starts_with('/').then_some(location))
            .unwrap_or_else(|| panic!("Location {location} is not on this server"));
        let id = path.strip_prefix("/files/").expect("under /files/");
        uuid::Uuid::parse_str(id).expect("a UUID id");
        path.to_string()
    }

    async fn head(&self, path: &str) -> Reply {
        self.tus("HEAD", path, &[], b"").await
    }

    async fn patch(&self, path: &str, offset: usize, body: &[u8]) -> Reply {
        self.patch_with(path, offset, body, &[]).await
    }

    /// A PATCH after an interrupted one, retried while the server still holds the upload for
    /// the interrupted request (423: it records the offset first, then lets go).
    async fn patch_unlocked(&self, path: &str, offset: usize, body: &[u8]) -> Reply {
        self.patch_unlocked_with(path, offset, body, &[]).await
    }

    async fn patch_unlocked_with(
        &self,
        path: &str,
        offset: usize,
        body: &[u8],
        extra: &[(&str, String)],
    ) -> Reply {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let reply = self.patch_with(path, offset, body, extra).await;
            if reply.status != 423 || std::time::Instant::now() > deadline {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn patch_with(
        &self,
        path: &str,
        offset: usize,
        body: &[u8],
        extra: &[(&str, String)],
    ) -> Reply {
        let mut headers = vec![
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("upload-offset", offset.to_string()),
        ];
        headers.extend(extra.iter().cloned());
        self.tus("PATCH", path, &headers, body).await
    }

    /// A PATCH that declares `content_length` bytes and sends only `first`, left open.
    async fn open_patch(
        &self,
        path: &str,
        offset: usize,
        content_length: usize,
        first: &[u8],
    ) -> TcpStream {
        let headers = self.tus_headers(&[
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("upload-offset", offset.to_string()),
        ]);
        self.start("PATCH", path, &headers, Some(content_length), first)
            .await
    }
}

/// An `Upload-Metadata` value of these pairs.
fn tus_metadata(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k} {}", B64.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn upload_checksum(algorithm: &str, bytes: &[u8]) -> (&'static str, String) {
    let digest = match algorithm {
        "sha1" => Sha1::digest(bytes).to_vec(),
        _ => Sha256::digest(bytes).to_vec(),
    };
    (
        "upload-checksum",
        format!("{algorithm} {}", B64.encode(digest)),
    )
}

fn id_of(path: &str) -> String {
    path.trim_start_matches("/files/").to_string()
}

// ---------------------------------------------------------------------------------------------
// gRPC helpers
// ---------------------------------------------------------------------------------------------

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = common::XorShift::new(seed);
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn token(sub: &str, role: Role) -> String {
    mint_hs256(SECRET.as_bytes(), sub, role, Duration::from_secs(600), None).unwrap()
}

async fn grpc(addr: SocketAddr, token: Option<&str>) -> AuthClient {
    match token {
        Some(token) => common::client_as(addr, token).await,
        None => common::client_with_header(addr, None).await,
    }
}

async fn auth_server(adjust: impl FnOnce(&mut streamhub::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
        adjust(c);
    })
    .await
}

async fn status(
    client: &mut AuthClient,
    id: &str,
) -> Result<GetUploadStatusResponse, tonic::Status> {
    client
        .get_upload_status(GetUploadStatusRequest { file_id: id.into() })
        .await
        .map(|r| r.into_inner())
}

async fn info(client: &mut AuthClient, id: &str) -> Result<FileMetadata, tonic::Status> {
    client
        .get_file_info(GetFileInfoRequest { file_id: id.into() })
        .await
        .map(|r| r.into_inner())
}

async fn download(client: &mut AuthClient, id: &str) -> Vec<u8> {
    let mut stream = client
        .download_file(DownloadFileRequest {
            file_id: id.into(),
            offset: 0,
        })
        .await
        .expect("DownloadFile")
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.next().await {
        if let Some(Data::Chunk(bytes)) = message.expect("a chunk").data {
            out.extend_from_slice(&bytes);
        }
    }
    out
}

/// Waits until a PATCH (or UploadFile) call holding `id` has received `bytes`: the live figure
/// GetUploadStatus reports while a call holds the upload.
async fn wait_for_live(client: &AuthClient, id: &str, bytes: usize) {
    poll_until(
        &format!("{bytes} bytes of {id} received"),
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            async move {
                match status(&mut client, id).await {
                    Ok(s) if s.bytes_received == bytes as i64 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

/// [`wait_for_live`] for a request this test holds open on `socket`: should the server answer
/// that request instead (it refused it), the wait fails at once with that answer.
async fn wait_for_held(client: &AuthClient, id: &str, bytes: usize, socket: &TcpStream) {
    poll_until(
        &format!("{bytes} bytes of {id} received by the held request"),
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            let mut peek = [0u8; 512];
            let answered = match socket.try_read(&mut peek) {
                Ok(n) if n > 0 => Some(String::from_utf8_lossy(&peek[..n]).into_owned()),
                _ => None,
            };
            async move {
                if let Some(answer) = answered {
                    panic!("the held request was answered: {answer}");
                }
                match status(&mut client, id).await {
                    Ok(s) if s.bytes_received == bytes as i64 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

/// Waits until HEAD reports `offset` (the durable offset, recorded once a PATCH has ended).
async fn wait_for_offset(http: &Http, path: &str, offset: usize) {
    poll_until(
        &format!("HEAD {path} at offset {offset}"),
        Duration::from_secs(20),
        || {
            let http = http.clone();
            async move {
                let reply = http.head(path).await;
                match reply.header("upload-offset") {
                    Some(o) if reply.status == 200 && o == offset.to_string() => Ok(()),
                    _ => Err(format!("{reply:?}")),
                }
            }
        },
    )
    .await
}

/// The file is complete with exactly `bytes`: GetFileInfo's SHA-256, DownloadFile, and a GET of
/// the download URL GetFileInfo hands out.
async fn assert_stored(http: &Http, client: &mut AuthClient, id: &str, bytes: &[u8]) {
    let metadata = info(client, id).await.expect("GetFileInfo");
    assert_eq!(metadata.checksum, sha256_hex(bytes), "the recorded SHA-256");
    assert_eq!(metadata.total_size, bytes.len() as i64);
    assert!(download(client, id).await == bytes, "DownloadFile bytes");
    let path = metadata
        .download_url
        .strip_prefix(&format!("http://{}", http.addr))
        .expect("a download URL on this server")
        .to_string();
    // A plain GET: no tus header, so the download route answers.
    let reply = Http::open(http.addr).raw("GET", &path, &[], b"").await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    assert!(reply.body == bytes, "signed-URL bytes");
    assert_eq!(
        reply.must("etag"),
        format!("\"{}\"", sha256_hex(bytes)),
        "the download's ETag"
    );
}

// ---------------------------------------------------------------------------------------------
// Capabilities and refusals
// ---------------------------------------------------------------------------------------------

/// OPTIONS lists the version, extensions, size limit and checksum algorithms, with no token and
/// no `Tus-Resumable`; a request in another tus version (or none) gets 412 with `Tus-Version`;
/// without `Tus-Resumable`, GET and HEAD on `/files/{id}` stay downloads.
#[tokio::test]
async fn options_version_and_routing() {
    let server = auth_server(|c| c.max_upload_bytes = 123_456).await;
    let http = Http::open(server.addr);
    within(60, "options", async {
        let some_id = format!("/files/{}", uuid::Uuid::new_v4());
        for path in ["/files/", "/files", some_id.as_str()] {
            let reply = http.raw("OPTIONS", path, &[], b"").await;
            assert_eq!(reply.status, 204, "OPTIONS {path}: {reply:?}");
            assert_eq!(reply.must("tus-resumable"), "1.0.0");
            assert_eq!(reply.must("tus-version"), "1.0.0");
            assert_eq!(
                reply.must("tus-extension"),
                "creation,creation-with-upload,termination,expiration,checksum"
            );
            assert_eq!(reply.must("tus-max-size"), "123456");
            assert_eq!(reply.must("tus-checksum-algorithm"), "sha1,sha256");
        }
        // Another version, or none, on every tus method: 412 before auth is even looked at.
        for version in [Some("0.2.2"), Some("2.0.0"), None] {
            let headers: Vec<(&str, String)> = version
                .map(|v| vec![("tus-resumable", v.to_string())])
                .unwrap_or_default();
            for (method, path) in [
                ("POST", "/files/"),
                ("PATCH", some_id.as_str()),
                ("DELETE", some_id.as_str()),
            ] {
                let reply = http
                    .raw(
                        method,
                        path,
                        &[headers.clone(), vec![("upload-length", "1".into())]].concat(),
                        b"",
                    )
                    .await;
                assert_eq!(
                    reply.status, 412,
                    "{method} {path} with {version:?}: {reply:?}"
                );
                assert_eq!(reply.must("tus-version"), "1.0.0");
                assert_eq!(reply.must("tus-resumable"), "1.0.0");
            }
            if let Some(version) = version {
                let reply = http
                    .raw(
                        "HEAD",
                        &some_id,
                        &[("tus-resumable", version.to_string())],
                        b"",
                    )
                    .await;
                assert_eq!(reply.status, 412, "HEAD with {version}");
            }
        }
        // No Tus-Resumable: the download route, unchanged (an unsigned URL with auth on is 403).
        for method in ["GET", "HEAD"] {
            let reply = http.raw(method, &some_id, &[], b"").await;
            assert_eq!(reply.status, 403, "{method} download: {reply:?}");
            assert_eq!(reply.header("tus-resumable"), None, "not a tus answer");
        }
        let reply = http.raw("GET", "/files/not-a-uuid", &[], b"").await;
        assert_eq!(reply.status, 400, "a download of a non-UUID id");
    })
    .await;
}

/// One bad-input case: what it is, its headers, its body, and the status it must get.
type Case = (
    &'static str,
    Vec<(&'static str, String)>,
    &'static [u8],
    u16,
);

/// Every malformed creation and PATCH gets its status, and none of them creates or moves an
/// upload.
#[tokio::test]
async fn bad_requests_are_refused() {
    let server = TestServer::start_with(|c| c.max_upload_bytes = 1_000).await;
    let http = Http::open(server.addr);
    within(60, "bad requests", async {
        let length = |n: &str| ("upload-length", n.to_string());
        let meta = |m: String| ("upload-metadata", m);
        let creations: Vec<Case> = vec![
            ("no Upload-Length", vec![], b"", 400),
            ("negative length", vec![length("-1")], b"", 400),
            ("not a number", vec![length("ten")], b"", 400),
            ("over Tus-Max-Size", vec![length("1001")], b"", 413),
            (
                "far over",
                vec![length("99999999999999999999999")],
                b"",
                413,
            ),
            (
                "deferred length",
                vec![("upload-defer-length", "1".into())],
                b"",
                400,
            ),
            (
                "concatenation",
                vec![length("5"), ("upload-concat", "partial".into())],
                b"",
                400,
            ),
            (
                "metadata not base64",
                vec![length("5"), meta("filename !!".into())],
                b"",
                400,
            ),
            (
                "duplicate key",
                vec![
                    length("5"),
                    meta(tus_metadata(&[("filename", "a"), ("filename", "b")])),
                ],
                b"",
                400,
            ),
            (
                "filename with a slash",
                vec![length("5"), meta(tus_metadata(&[("filename", "../x")]))],
                b"",
                400,
            ),
            (
                "filetype not a media type",
                vec![length("5"), meta(tus_metadata(&[("filetype", "nonsense")]))],
                b"",
                400,
            ),
            (
                "checksum not hex SHA-256",
                vec![length("5"), meta(tus_metadata(&[("checksum", "abc")]))],
                b"",
                400,
            ),
            (
                "a body of another type",
                vec![length("5"), ("content-type", "text/plain".into())],
                b"hello",
                415,
            ),
            (
                "a body longer than the upload",
                vec![
                    length("3"),
                    ("content-type", "application/offset+octet-stream".into()),
                ],
                b"hello",
                413,
            ),
            (
                "unknown chunk algorithm",
                vec![
                    length("5"),
                    ("content-type", "application/offset+octet-stream".into()),
                    ("upload-checksum", format!("md5 {}", B64.encode([0u8; 16]))),
                ],
                b"hello",
                400,
            ),
        ];
        for (what, headers, body, expected) in creations {
            let reply = http.tus("POST", "/files/", &headers, body).await;
            assert_eq!(reply.status, expected, "{what}: {reply:?} {}", reply.text());
            assert_eq!(reply.must("tus-resumable"), "1.0.0", "{what}");
            assert_eq!(reply.header("location"), None, "{what}: nothing created");
        }

        let path = http.create(10, "").await;
        let octets = (
            "content-type",
            "application/offset+octet-stream".to_string(),
        );
        let patches: Vec<Case> = vec![
            (
                "no content type",
                vec![("upload-offset", "0".into())],
                b"abc",
                415,
            ),
            (
                "another content type",
                vec![
                    ("upload-offset", "0".into()),
                    ("content-type", "application/octet-stream".into()),
                ],
                b"abc",
                415,
            ),
            ("no Upload-Offset", vec![octets.clone()], b"abc", 400),
            (
                "negative offset",
                vec![octets.clone(), ("upload-offset", "-1".into())],
                b"abc",
                400,
            ),
            (
                "offset ahead",
                vec![octets.clone(), ("upload-offset", "3".into())],
                b"abc",
                409,
            ),
            (
                "longer than the upload",
                vec![octets.clone(), ("upload-offset", "0".into())],
                b"eleven byte",
                413,
            ),
            (
                "checksum algorithm unknown",
                vec![
                    octets.clone(),
                    ("upload-offset", "0".into()),
                    ("upload-checksum", format!("crc32 {}", B64.encode([0u8; 4]))),
                ],
                b"abc",
                400,
            ),
            (
                "checksum of the wrong length",
                vec![
                    octets.clone(),
                    ("upload-offset", "0".into()),
                    ("upload-checksum", format!("sha1 {}", B64.encode([0u8; 32]))),
                ],
                b"abc",
                400,
            ),
            (
                "checksum not base64",
                vec![
                    octets.clone(),
                    ("upload-offset", "0".into()),
                    ("upload-checksum", "sha1 ###".into()),
                ],
                b"abc",
                400,
            ),
            (
                "checksum without a digest",
                vec![
                    octets.clone(),
                    ("upload-offset", "0".into()),
                    ("upload-checksum", "sha1".into()),
                ],
                b"abc",
                400,
            ),
        ];
        for (what, headers, body, expected) in patches {
            let reply = http.tus("PATCH", &path, &headers, body).await;
            assert_eq!(
                reply.status,
                expected,
                "PATCH {what}: {reply:?} {}",
                reply.text()
            );
            assert_eq!(reply.must("tus-resumable"), "1.0.0", "{what}");
            assert_eq!(http.head(&path).await.offset(), 0, "{what} moved nothing");
        }
        // Ids that name no upload, and methods tus does not have.
        let missing = format!("/files/{}", uuid::Uuid::new_v4());
        assert_eq!(http.head(&missing).await.status, 404);
        assert_eq!(http.patch(&missing, 0, b"x").await.status, 404);
        assert_eq!(http.tus("DELETE", &missing, &[], b"").await.status, 404);
        assert_eq!(http.head("/files/not-a-uuid").await.status, 404);
        assert_eq!(http.tus("PUT", &path, &[], b"x").await.status, 405);
        assert_eq!(http.tus("GET", &path, &[], b"").await.status, 405);
        let reply = http.tus("PUT", "/files/", &[], b"x").await;
        assert_eq!((reply.status, reply.must("allow")), (405, "POST, OPTIONS"));
        assert_eq!(reply.must("tus-resumable"), "1.0.0");
        // After all that, the upload is whole and at 0; it still completes.
        assert_eq!(http.patch(&path, 0, b"0123456789").await.status, 204);
        assert_eq!(http.head(&path).await.offset(), 10);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Creation, PATCH, checksums
// ---------------------------------------------------------------------------------------------

store_tests!(
    creation_and_patches_store_a_file,
    creation_with_upload,
    an_interrupted_patch_resumes_from_its_durable_offset,
    chunk_checksums_verify_before_the_offset_moves,
    a_whole_file_checksum_mismatch_deletes_the_upload,
    termination_and_expiry,
    a_concurrent_patch_is_locked_out,
    tus_and_upload_file_continue_each_other,
);

/// POST creates (201, an absolute Location, offset 0, an expiry), HEAD describes (metadata as
/// sent, never cached), PATCHes append, and the file is the same as UploadFile's: GetFileInfo
/// has its SHA-256, name and type, DownloadFile and the signed URL return its bytes.
async fn creation_and_patches_store_a_file(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let http = Http::open(server.addr);
    within(120, "creation and patches", async {
        let bytes = data(1, 700_000);
        let metadata = tus_metadata(&[
            ("filename", "report 1.pdf"),
            ("filetype", "application/pdf"),
            ("checksum", &sha256_hex(&bytes)),
            ("relativePath", "docs/report 1.pdf"),
        ]);
        let before = SystemTime::now();
        let reply = http
            .tus(
                "POST",
                "/files/",
                &[
                    ("upload-length", bytes.len().to_string()),
                    ("upload-metadata", metadata.clone()),
                ],
                b"",
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        assert_eq!(reply.offset(), 0);
        assert_eq!(reply.must("tus-resumable"), "1.0.0");
        let expires =
            httpdate::parse_http_date(reply.must("upload-expires")).expect("an HTTP date");
        let day = Duration::from_secs(24 * 3600);
        assert!(
            expires >= before + day - Duration::from_secs(1)
                && expires <= SystemTime::now() + day + Duration::from_secs(1),
            "Upload-Expires is the upload expiry from now: {expires:?}"
        );
        let path = http.path_of(&reply);
        let id = id_of(&path);
        assert_eq!(
            reply.must("location"),
            format!("/files/{id}"),
            "relative without --public-url, so a page keeps its own origin"
        );

        let head = http.head(&path).await;
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.offset(), 0);
        assert_eq!(head.must("upload-length"), bytes.len().to_string());
        assert_eq!(
            head.must("upload-metadata"),
            metadata,
            "the metadata as sent"
        );
        assert_eq!(head.must("cache-control"), "no-store");
        assert!(head.header("upload-expires").is_some());

        let cut = 300_000;
        let reply = http.patch(&path, 0, &bytes[..cut]).await;
        assert_eq!(reply.status, 204, "{reply:?} {}", reply.text());
        assert_eq!(reply.offset(), cut as u64);
        assert!(reply.header("upload-expires").is_some());
        assert_eq!(http.head(&path).await.offset(), cut as u64);
        let mut client = grpc(server.addr, None).await;
        let live = status(&mut client, &id).await.expect("GetUploadStatus");
        assert_eq!(
            (live.bytes_received, live.total_size, live.complete),
            (cut as i64, bytes.len() as i64, false)
        );

        let reply = http.patch(&path, cut, &bytes[cut..]).await;
        assert_eq!(reply.status, 204, "{reply:?} {}", reply.text());
        assert_eq!(reply.offset(), bytes.len() as u64);
        assert_eq!(
            reply.header("upload-expires"),
            None,
            "a complete upload does not expire"
        );
        let head = http.head(&path).await;
        assert_eq!((head.status, head.offset()), (200, bytes.len() as u64));
        assert_eq!(head.header("upload-expires"), None);

        assert_stored(&http, &mut client, &id, &bytes).await;
        let metadata = info(&mut client, &id).await.unwrap();
        assert_eq!(metadata.filename, "report 1.pdf");
        assert_eq!(metadata.content_type, "application/pdf");
        assert!(status(&mut client, &id).await.unwrap().complete);
        // A retried last PATCH (empty, at the end) changes nothing; one more byte has no room.
        assert_eq!(http.patch(&path, bytes.len(), b"").await.status, 204);
        assert_eq!(http.patch(&path, bytes.len(), b"x").await.status, 413);
        assert_eq!(http.patch(&path, 0, b"x").await.status, 409);
        assert_stored(&http, &mut client, &id, &bytes).await;

        // An empty file is complete at creation.
        let empty = http
            .create(0, &tus_metadata(&[("filename", "empty")]))
            .await;
        let head = http.head(&empty).await;
        assert_eq!((head.offset(), head.must("upload-length")), (0, "0"));
        assert_stored(&http, &mut client, &id_of(&empty), b"").await;
    })
    .await;
}

/// A creation may carry the first bytes (creation-with-upload): all of them completes the file
/// at once, some of them leave the upload at that offset for PATCH to continue.
async fn creation_with_upload(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let http = Http::open(server.addr);
    let mut client = grpc(server.addr, None).await;
    within(120, "creation with upload", async {
        let bytes = data(2, 200_000);
        let octets = (
            "content-type",
            "application/offset+octet-stream".to_string(),
        );
        let reply = http
            .tus(
                "POST",
                "/files/",
                &[
                    ("upload-length", bytes.len().to_string()),
                    (
                        "upload-metadata",
                        tus_metadata(&[("filename", "whole.bin")]),
                    ),
                    octets.clone(),
                    upload_checksum("sha256", &bytes),
                ],
                &bytes,
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?} {}", reply.text());
        assert_eq!(reply.offset(), bytes.len() as u64);
        let path = http.path_of(&reply);
        assert_stored(&http, &mut client, &id_of(&path), &bytes).await;

        let half = 80_000;
        let reply = http
            .tus(
                "POST",
                "/files/",
                &[("upload-length", bytes.len().to_string()), octets.clone()],
                &bytes[..half],
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        assert_eq!(reply.offset(), half as u64);
        let path = http.path_of(&reply);
        assert_eq!(http.head(&path).await.offset(), half as u64);
        assert_eq!(http.patch(&path, half, &bytes[half..]).await.status, 204);
        assert_stored(&http, &mut client, &id_of(&path), &bytes).await;

        // A creation body whose checksum does not match: 460, and the upload stays at 0.
        let reply = http
            .tus(
                "POST",
                "/files/",
                &[
                    ("upload-length", bytes.len().to_string()),
                    octets,
                    upload_checksum("sha1", b"something else"),
                ],
                &bytes[..half],
            )
            .await;
        assert_eq!(reply.status, 460, "{reply:?}");
        let path = http.path_of(&reply);
        assert_eq!(http.head(&path).await.offset(), 0);
    })
    .await;
}

/// A PATCH whose connection is cut mid-body keeps the bytes that arrived: HEAD reports them
/// once the server has recorded them, a PATCH from elsewhere is a 409, and one from there
/// finishes a file with exactly the bytes sent.
async fn an_interrupted_patch_resumes_from_its_durable_offset(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let http = Http::open(server.addr);
    let mut client = grpc(server.addr, None).await;
    within(120, "interrupted patch", async {
        let bytes = data(3, 1 << 20);
        let metadata = tus_metadata(&[("filename", "big.bin"), ("checksum", &sha256_hex(&bytes))]);
        let path = http.create(bytes.len(), &metadata).await;
        let id = id_of(&path);
        let cut = 300_000;
        let socket = http.open_patch(&path, 0, bytes.len(), &bytes[..cut]).await;
        wait_for_held(&client, &id, cut, &socket).await;
        drop(socket); // The connection goes away mid-body.
        wait_for_offset(&http, &path, cut).await;

        // Small bodies: a refused one is not read.
        let reply = http.patch_unlocked(&path, 0, &bytes[..1000]).await;
        assert_eq!(reply.status, 409, "a PATCH from the start: {reply:?}");
        let reply = http
            .patch(&path, cut + 1, &bytes[cut + 1..cut + 1001])
            .await;
        assert_eq!(reply.status, 409, "a PATCH past the offset");
        assert_eq!(http.head(&path).await.offset(), cut as u64);

        // A second interruption, then the rest.
        let second = 700_000;
        let socket = http
            .open_patch(&path, cut, bytes.len() - cut, &bytes[cut..second])
            .await;
        wait_for_held(&client, &id, second, &socket).await;
        drop(socket);
        wait_for_offset(&http, &path, second).await;
        let reply = http.patch_unlocked(&path, second, &bytes[second..]).await;
        assert_eq!(reply.status, 204, "{reply:?} {}", reply.text());
        assert_eq!(reply.offset(), bytes.len() as u64);
        assert_stored(&http, &mut client, &id, &bytes).await;
    })
    .await;
}

/// `Upload-Checksum` in sha1 and sha256: a matching chunk moves the offset; a mismatch is 460
/// with the chunk discarded and the offset where it was, so that the file, once complete, holds
/// exactly the verified chunks.
async fn chunk_checksums_verify_before_the_offset_moves(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let http = Http::open(server.addr);
    let mut client = grpc(server.addr, None).await;
    within(120, "chunk checksums", async {
        let bytes = data(4, 300_000);
        let path = http.create(bytes.len(), "").await;
        let (a, b) = (100_000, 200_000);
        let wrong = bytes.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>();

        for algorithm in ["sha1", "sha256"] {
            // The right length, the wrong bytes.
            let reply = http
                .patch_with(
                    &path,
                    0,
                    &wrong[..a],
                    &[upload_checksum(algorithm, &bytes[..a])],
                )
                .await;
            assert_eq!(reply.status, 460, "{algorithm} mismatch: {reply:?}");
            assert_eq!(
                http.head(&path).await.offset(),
                0,
                "{algorithm}: offset unchanged"
            );
        }
        let reply = http
            .patch_with(
                &path,
                0,
                &bytes[..a],
                &[upload_checksum("sha1", &bytes[..a])],
            )
            .await;
        assert_eq!((reply.status, reply.offset()), (204, a as u64), "sha1 OK");
        // A mismatch after verified bytes cuts only its own chunk.
        let reply = http
            .patch_with(
                &path,
                a,
                &wrong[a..b],
                &[upload_checksum("sha256", &bytes[a..b])],
            )
            .await;
        assert_eq!(reply.status, 460);
        assert_eq!(http.head(&path).await.offset(), a as u64);
        let reply = http
            .patch_with(
                &path,
                a,
                &bytes[a..b],
                &[upload_checksum("sha256", &bytes[a..b])],
            )
            .await;
        assert_eq!((reply.status, reply.offset()), (204, b as u64), "sha256 OK");
        // An unknown algorithm is refused before any byte counts.
        let reply = http
            .patch_with(
                &path,
                b,
                &bytes[b..b + 1000],
                &[(
                    "upload-checksum",
                    format!("sha512 {}", B64.encode([0u8; 64])),
                )],
            )
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(http.head(&path).await.offset(), b as u64);
        // A checksummed chunk cut off mid-body counts for nothing (it cannot be verified).
        let headers = http.tus_headers(&[
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("upload-offset", b.to_string()),
            upload_checksum("sha1", &bytes[b..]),
        ]);
        let socket = http
            .start(
                "PATCH",
                &path,
                &headers,
                Some(bytes.len() - b),
                &bytes[b..b + 50_000],
            )
            .await;
        wait_for_held(&client, &id_of(&path), b + 50_000, &socket).await;
        drop(socket);
        // The live figure goes back to the offset before the chunk once it is cut off; the
        // request may hold the upload a moment longer (423 meanwhile).
        wait_for_live(&client, &id_of(&path), b).await;
        assert_eq!(http.head(&path).await.offset(), b as u64);
        let reply = http
            .patch_unlocked_with(
                &path,
                b,
                &bytes[b..],
                &[upload_checksum("sha1", &bytes[b..])],
            )
            .await;
        assert_eq!((reply.status, reply.offset()), (204, bytes.len() as u64));
        assert_stored(&http, &mut client, &id_of(&path), &bytes).await;
    })
    .await;
}

/// The `checksum` metadata (the whole file's SHA-256) is checked by the last PATCH: a mismatch
/// is 460, and the upload is gone (HEAD 404, GetUploadStatus NOT_FOUND, no quota held).
async fn a_whole_file_checksum_mismatch_deletes_the_upload(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let http = Http::open(server.addr);
    let mut client = grpc(server.addr, None).await;
    within(60, "whole-file checksum", async {
        let bytes = data(5, 50_000);
        let declared = sha256_hex(b"not these bytes");
        let path = http
            .create(bytes.len(), &tus_metadata(&[("checksum", &declared)]))
            .await;
        assert_eq!(http.patch(&path, 0, &bytes[..20_000]).await.status, 204);
        let reply = http.patch(&path, 20_000, &bytes[20_000..]).await;
        assert_eq!(reply.status, 460, "{reply:?} {}", reply.text());
        assert_eq!(http.head(&path).await.status, 404);
        assert_eq!(http.patch(&path, 20_000, b"x").await.status, 404);
        let gone = status(&mut client, &id_of(&path)).await.unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
    })
    .await;
}

/// DELETE terminates an unfinished upload (204, then 404 everywhere); a complete one is a file
/// and stays (403). An upload untouched past `--upload-expiry-secs` is gone: 404, and the sweep
/// removes it.
async fn termination_and_expiry(kind: StoreKind) {
    let server = TestServer::start_on(kind, |c| {
        c.upload_expiry_secs = 2;
        c.upload_sweep_secs = 1;
    })
    .await;
    let http = Http::open(server.addr);
    let mut client = grpc(server.addr, None).await;
    within(120, "termination and expiry", async {
        let path = http.create(1000, "").await;
        assert_eq!(http.patch(&path, 0, &[7u8; 400]).await.status, 204);
        let reply = http.tus("DELETE", &path, &[], b"").await;
        assert_eq!(reply.status, 204, "{reply:?}");
        assert_eq!(reply.must("tus-resumable"), "1.0.0");
        assert_eq!(http.head(&path).await.status, 404);
        assert_eq!(http.patch(&path, 400, &[7u8; 600]).await.status, 404);
        assert_eq!(http.tus("DELETE", &path, &[], b"").await.status, 404);
        assert_eq!(
            status(&mut client, &id_of(&path)).await.unwrap_err().code(),
            Code::NotFound
        );

        let done = http.create(3, "").await;
        assert_eq!(http.patch(&done, 0, b"abc").await.status, 204);
        assert_eq!(http.tus("DELETE", &done, &[], b"").await.status, 403);
        assert_stored(&http, &mut client, &id_of(&done), b"abc").await;

        // Expiry: Upload-Expires is the last write plus the expiry; after it, 404.
        let path = http.create(1000, "").await;
        let reply = http.patch(&path, 0, &[1u8; 10]).await;
        let expires = httpdate::parse_http_date(reply.must("upload-expires")).unwrap();
        assert!(
            expires <= SystemTime::now() + Duration::from_secs(3),
            "{expires:?}"
        );
        poll_until("the upload expires", Duration::from_secs(30), || {
            let http = http.clone();
            let path = path.clone();
            async move {
                let reply = http.head(&path).await;
                (reply.status == 404)
                    .then_some(())
                    .ok_or(format!("{reply:?}"))
            }
        })
        .await;
        assert!(SystemTime::now() >= expires, "not before Upload-Expires");
        assert_eq!(http.patch(&path, 10, &[1u8; 10]).await.status, 404);
        // The sweep removes the row too: GetUploadStatus stops finding it.
        poll_until(
            "the sweep removes the upload",
            Duration::from_secs(30),
            || {
                let mut client = client.clone();
                let id = id_of(&path);
                async move {
                    match status(&mut client, &id).await {
                        Err(s) if s.code() == Code::NotFound => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await;
        // The complete file does not expire.
        assert_stored(&http, &mut client, &id_of(&done), b"abc").await;
    })
    .await;
}

/// A PATCH while another one holds the upload gets 423 (so does DELETE); HEAD still answers with
/// the durable offset. On PostgreSQL the claim holds across replicas: a PATCH on the other
/// replica gets 423 too.
async fn a_concurrent_patch_is_locked_out(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let http = Http::open(server.addr);
    let client = grpc(server.addr, None).await;
    within(120, "concurrent patch", async {
        let bytes = data(6, 100_000);
        let path = http.create(bytes.len(), "").await;
        let id = id_of(&path);
        let mut held = http.open_patch(&path, 0, 60_000, &bytes[..10_000]).await;
        wait_for_held(&client, &id, 10_000, &held).await;
        let reply = http.patch(&path, 0, &bytes[..1000]).await;
        assert_eq!(reply.status, 423, "{reply:?}");
        assert_eq!(reply.must("tus-resumable"), "1.0.0");
        assert_eq!(http.tus("DELETE", &path, &[], b"").await.status, 423);
        let head = http.head(&path).await;
        assert_eq!((head.status, head.offset()), (200, 0), "the durable offset");
        // The held PATCH finishes its body and succeeds.
        held.write_all(&bytes[10_000..60_000]).await.unwrap();
        let reply = read_reply(&mut held).await;
        assert_eq!((reply.status, reply.offset()), (204, 60_000), "{reply:?}");
        assert_eq!(
            http.patch(&path, 60_000, &bytes[60_000..]).await.status,
            204
        );
        let mut client = client.clone();
        assert_stored(&http, &mut client, &id, &bytes).await;
    })
    .await;
    drop(server);

    if kind == StoreKind::Postgres {
        let Some((a, b)) = TestServer::replicas(|_| {}).await else {
            return;
        };
        let (on_a, on_b) = (Http::open(a.addr), Http::open(b.addr));
        let client_a = grpc(a.addr, None).await;
        within(120, "concurrent patch across replicas", async {
            let bytes = data(7, 50_000);
            let path = on_a.create(bytes.len(), "").await;
            let held = on_a
                .open_patch(&path, 0, bytes.len(), &bytes[..5_000])
                .await;
            wait_for_held(&client_a, &id_of(&path), 5_000, &held).await;
            let reply = on_b.patch(&path, 0, &bytes[..1000]).await;
            assert_eq!(reply.status, 423, "the other replica: {reply:?}");
            assert_eq!(on_b.head(&path).await.offset(), 0);
        })
        .await;
    }
}

/// The same file either way: an UploadFile resumable upload cut off mid-way is seen by tus HEAD
/// (offset, length, its metadata in tus form) and finished by PATCH; a tus upload left half-way
/// is finished by UploadFile naming its id.
async fn tus_and_upload_file_continue_each_other(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let http = Http::open(server.addr);
    let mut client = grpc(server.addr, None).await;
    within(120, "tus and UploadFile", async {
        // UploadFile first, tus after.
        let bytes = data(8, 400_000);
        let id = uuid::Uuid::new_v4().to_string();
        let meta = |id: &str| FileChunk {
            offset: 0,
            data: Some(Data::Metadata(FileMetadata {
                filename: "grpc.bin".into(),
                total_size: bytes.len() as i64,
                content_type: "image/png".into(),
                checksum: sha256_hex(&bytes),
                file_id: id.into(),
                ..Default::default()
            })),
        };
        let (tx, rx) = mpsc::channel(16);
        let mut uploader = client.clone();
        let call = tokio::spawn(async move { uploader.upload_file(ReceiverStream::new(rx)).await });
        tx.send(meta(&id)).await.unwrap();
        let cut = 128 * 1024;
        for (i, chunk) in bytes[..cut].chunks(64 * 1024).enumerate() {
            tx.send(FileChunk {
                offset: (i * 64 * 1024) as i64,
                data: Some(Data::Chunk(chunk.to_vec())),
            })
            .await
            .unwrap();
        }
        wait_for_live(&client, &id, cut).await;
        call.abort();
        let _ = call.await;
        drop(tx);
        let path = format!("/files/{id}");
        wait_for_offset(&http, &path, cut).await;
        let head = http.head(&path).await;
        assert_eq!(head.must("upload-length"), bytes.len().to_string());
        assert_eq!(
            head.must("upload-metadata"),
            tus_metadata(&[
                ("filename", "grpc.bin"),
                ("filetype", "image/png"),
                ("checksum", &sha256_hex(&bytes)),
            ])
        );
        let reply = http.patch_unlocked(&path, cut, &bytes[cut..]).await;
        assert_eq!(reply.status, 204, "{reply:?} {}", reply.text());
        assert_stored(&http, &mut client, &id, &bytes).await;

        // tus first, UploadFile after.
        let bytes = data(9, 300_000);
        let path = http
            .create(
                bytes.len(),
                &tus_metadata(&[("filename", "tus.bin"), ("checksum", &sha256_hex(&bytes))]),
            )
            .await;
        let id = id_of(&path);
        let cut = 100_000;
        assert_eq!(http.patch(&path, 0, &bytes[..cut]).await.status, 204);
        let answer = client
            .upload_file(tokio_stream::iter(
                std::iter::once(FileChunk {
                    offset: 0,
                    data: Some(Data::Metadata(FileMetadata {
                        filename: "tus.bin".into(),
                        total_size: bytes.len() as i64,
                        checksum: sha256_hex(&bytes),
                        file_id: id.clone(),
                        ..Default::default()
                    })),
                })
                .chain(
                    bytes[cut..]
                        .chunks(64 * 1024)
                        .enumerate()
                        .map(|(i, c)| FileChunk {
                            offset: (cut + i * 64 * 1024) as i64,
                            data: Some(Data::Chunk(c.to_vec())),
                        })
                        .collect::<Vec<_>>(),
                ),
            ))
            .await
            .expect("UploadFile continues the tus upload")
            .into_inner();
        assert_eq!(answer.file_id, id);
        assert!(answer.checksum_verified);
        let head = http.head(&path).await;
        assert_eq!((head.status, head.offset()), (200, bytes.len() as u64));
        assert_stored(&http, &mut client, &id, &bytes).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Limits and access
// ---------------------------------------------------------------------------------------------

/// A body that stalls for `--transfer-idle-secs` ends with 408, keeping what arrived (no thread
/// waits on it meanwhile); the per-user storage quota refuses a creation that does not fit (413)
/// and a PATCH that would need more than is free.
#[tokio::test]
async fn stalls_and_quotas() {
    let server = auth_server(|c| {
        c.transfer_idle_secs = 1;
        c.max_storage_bytes_per_user = 10_000;
    })
    .await;
    let alice = Http::as_token(server.addr, token("alice", Role::User));
    let client = grpc(server.addr, Some(&token("alice", Role::User))).await;
    within(60, "stalls and quotas", async {
        let path = alice.create(8_000, "").await;
        let mut stalled = alice.open_patch(&path, 0, 8_000, &[3u8; 1_000]).await;
        wait_for_held(&client, &id_of(&path), 1_000, &stalled).await;
        // Nothing more is sent: the server answers on its own once the idle time has passed.
        let reply = read_reply(&mut stalled).await;
        assert_eq!(reply.status, 408, "{reply:?}");
        assert_eq!(
            alice.head(&path).await.offset(),
            1_000,
            "the bytes that arrived"
        );

        // 8,000 declared, of 10,000: an interrupted upload reserves only its kept 1,000 bytes,
        // so a creation of 9,000 fits, and one of 9,001 does not.
        let reply = alice
            .tus("POST", "/files/", &[("upload-length", "9001".into())], b"")
            .await;
        assert_eq!(
            reply.status,
            413,
            "over the per-user quota: {}",
            reply.text()
        );
        assert_eq!(reply.header("location"), None);
        let other = alice.create(9_000, "").await;
        // 2,500 kept there: 3,500 in use. The first upload's PATCH needs its whole 8,000 again,
        // which does not fit; the offset stays.
        assert_eq!(alice.patch(&other, 0, &[4u8; 2_500]).await.status, 204);
        let reply = alice.patch_unlocked(&path, 1_000, &[3u8; 1_000]).await;
        assert_eq!(reply.status, 413, "{}", reply.text());
        assert_eq!(alice.head(&path).await.offset(), 1_000);
        // Terminating the other upload frees its bytes.
        assert_eq!(alice.tus("DELETE", &other, &[], b"").await.status, 204);
        assert_eq!(alice.patch(&path, 1_000, &[3u8; 7_000]).await.status, 204);
        assert_eq!(alice.head(&path).await.offset(), 8_000);
    })
    .await;
}

/// With auth on a tus request needs a bearer token (401 without or with a bad one; OPTIONS needs
/// none); an upload is its creator's: another user gets 404 on HEAD, PATCH and DELETE, and a
/// service token reaches it. The owner's file is downloadable by its signed URL only.
#[tokio::test]
async fn access_with_auth_on() {
    let server = auth_server(|_| {}).await;
    let addr = server.addr;
    let anonymous = Http::open(addr);
    let alice = Http::as_token(addr, token("alice", Role::User));
    let bob = Http::as_token(addr, token("bob", Role::User));
    let backend = Http::as_token(addr, token("backend", Role::Service));
    within(60, "access", async {
        let some = format!("/files/{}", uuid::Uuid::new_v4());
        for (method, path) in [
            ("POST", "/files/"),
            ("HEAD", some.as_str()),
            ("PATCH", some.as_str()),
            ("DELETE", some.as_str()),
        ] {
            let reply = anonymous
                .tus(method, path, &[("upload-length", "5".into())], b"")
                .await;
            assert_eq!(reply.status, 401, "{method} without a token: {reply:?}");
            assert_eq!(reply.must("www-authenticate"), "Bearer");
            let forged = Http::as_token(addr, "not.a.token".into());
            let reply = forged
                .tus(method, path, &[("upload-length", "5".into())], b"")
                .await;
            assert_eq!(reply.status, 401, "{method} with a bad token");
        }
        let expired_or_foreign = mint_hs256(
            b"another secret of at least 32 bytes!!",
            "alice",
            Role::User,
            Duration::from_secs(60),
            None,
        )
        .unwrap();
        let reply = Http::as_token(addr, expired_or_foreign).head(&some).await;
        assert_eq!(reply.status, 401, "a token signed by another key");
        assert_eq!(
            anonymous.raw("OPTIONS", "/files/", &[], b"").await.status,
            204
        );

        let bytes = data(10, 20_000);
        let path = alice
            .create(bytes.len(), &tus_metadata(&[("filename", "alice.txt")]))
            .await;
        assert_eq!(alice.patch(&path, 0, &bytes[..5_000]).await.status, 204);
        // Bob: exactly what an id that does not exist gets.
        assert_eq!(bob.head(&path).await.status, 404);
        assert_eq!(bob.head(&some).await.status, 404);
        for reply in [
            bob.patch(&path, 5_000, &bytes[5_000..6_000]).await,
            bob.tus("DELETE", &path, &[], b"").await,
        ] {
            assert_eq!(reply.status, 404, "{reply:?}");
            assert_eq!(reply.text(), format!("no upload {}\n", id_of(&path)));
        }
        let missing = bob.tus("DELETE", &some, &[], b"").await;
        assert_eq!(missing.text(), format!("no upload {}\n", id_of(&some)));
        assert_eq!(alice.head(&path).await.offset(), 5_000, "untouched by bob");
        // A service reaches it, and may continue it.
        assert_eq!(backend.head(&path).await.offset(), 5_000);
        assert_eq!(
            backend
                .patch(&path, 5_000, &bytes[5_000..10_000])
                .await
                .status,
            204
        );
        assert_eq!(
            alice.patch(&path, 10_000, &bytes[10_000..]).await.status,
            204
        );
        let mut alice_grpc = grpc(addr, Some(&token("alice", Role::User))).await;
        assert_stored(&alice, &mut alice_grpc, &id_of(&path), &bytes).await;
        let mut bob_grpc = grpc(addr, Some(&token("bob", Role::User))).await;
        assert_eq!(
            info(&mut bob_grpc, &id_of(&path)).await.unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(
            bob.head(&path).await.status,
            404,
            "a complete file is still alice's"
        );
        // Unsigned, the download route refuses.
        assert_eq!(anonymous.raw("GET", &path, &[], b"").await.status, 403);
    })
    .await;
}

/// A server killed (SIGKILL) while a checksummed chunk is half written adopts none of it at its
/// next start: the offset is the one before that chunk, and the upload continues from there to
/// the exact file. Without a checksum, the bytes that reached the part are kept, as tus asks.
#[tokio::test]
async fn a_crash_mid_checksummed_chunk_adopts_none_of_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    within(120, "crash mid-chunk", async {
        let bytes = data(11, 200_000);
        let child = common::ChildServer::spawn(dir.path(), &[]);
        let http = Http::open(child.addr);
        let client = grpc(child.addr, None).await;
        let checked = http.create(bytes.len(), "").await;
        let plain = http.create(bytes.len(), "").await;
        for path in [&checked, &plain] {
            assert_eq!(http.patch(path, 0, &bytes[..1_000]).await.status, 204);
        }
        let mut extra = vec![
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("upload-offset", "1000".to_string()),
        ];
        let plain_body = http
            .start(
                "PATCH",
                &plain,
                &http.tus_headers(&extra),
                Some(bytes.len() - 1_000),
                &bytes[1_000..60_000],
            )
            .await;
        extra.push(upload_checksum("sha256", &bytes[1_000..]));
        let checked_body = http
            .start(
                "PATCH",
                &checked,
                &http.tus_headers(&extra),
                Some(bytes.len() - 1_000),
                &bytes[1_000..60_000],
            )
            .await;
        wait_for_held(&client, &id_of(&plain), 60_000, &plain_body).await;
        wait_for_held(&client, &id_of(&checked), 60_000, &checked_body).await;
        child.kill9();

        let child = common::ChildServer::spawn(dir.path(), &[]);
        let http = Http::open(child.addr);
        let mut client = grpc(child.addr, None).await;
        assert_eq!(
            http.head(&checked).await.offset(),
            1_000,
            "the unverified chunk is cut off"
        );
        assert_eq!(
            http.head(&plain).await.offset(),
            60_000,
            "unchecked bytes are kept"
        );
        for (path, from) in [(&checked, 1_000), (&plain, 60_000)] {
            let reply = http.patch(path, from, &bytes[from..]).await;
            assert_eq!(
                (reply.status, reply.offset()),
                (204, bytes.len() as u64),
                "{path}"
            );
            assert_stored(&http, &mut client, &id_of(path), &bytes).await;
        }
    })
    .await;
}

/// With `--public-url`, `Location` is absolute on the public base (a proxy with a path prefix
/// keeps its prefix); the upload is reached under it.
#[tokio::test]
async fn a_configured_public_url_makes_locations_absolute() {
    let server = TestServer::start_with(|c| {
        c.public_url = Some("https://uploads.example/base".to_string());
    })
    .await;
    let http = Http::open(server.addr);
    within(60, "absolute location", async {
        let reply = http
            .tus(
                "POST",
                "/files/",
                &[("upload-length", "3".to_string())],
                b"",
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        let location = reply.must("location");
        let id = location
            .strip_prefix("https://uploads.example/base/files/")
            .unwrap_or_else(|| panic!("Location {location} is not on the public base"));
        uuid::Uuid::parse_str(id).expect("a UUID id");
        let head = http.head(&format!("/files/{id}")).await;
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.offset(), 0);
    })
    .await;
}

/// A chunked PATCH body (no declared length) that runs past `Upload-Length` gets 413 and keeps
/// none of its bytes, even those that fitted before the overflowing part arrived; the upload
/// then continues from where it stood.
#[tokio::test]
async fn a_chunked_body_past_the_length_keeps_nothing() {
    let server = TestServer::start().await;
    let http = Http::open(server.addr);
    within(60, "chunked overflow", async {
        let path = http.create(10, "").await;
        let headers = http.tus_headers(&[
            ("upload-offset", "0".to_string()),
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("transfer-encoding", "chunked".to_string()),
        ]);
        // Two chunks: 5 bytes that fit, then 10 that do not.
        let body = b"5\r\nabcde\r\na\r\nfghijklmno\r\n0\r\n\r\n";
        let mut socket = http.start("PATCH", &path, &headers, None, body).await;
        let reply = read_reply(&mut socket).await;
        assert_eq!(reply.status, 413, "{reply:?} {}", reply.text());
        assert_eq!(http.head(&path).await.offset(), 0, "nothing of it kept");

        let bytes = b"0123456789";
        let reply = http.patch(&path, 0, bytes).await;
        assert_eq!(reply.status, 204, "{reply:?} {}", reply.text());
        assert_eq!(reply.offset(), 10);
        let mut client = grpc(server.addr, None).await;
        assert_stored(&http, &mut client, &id_of(&path), bytes).await;
    })
    .await;
}
