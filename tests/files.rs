//! Files against the real server: round trips of every edge size over gRPC and plain HTTP,
//! download resume, the exact status of every bad upload with nothing kept behind, resumable
//! uploads (cut off and resumed, wrong offsets, concurrent uploads, reused ids, restart and
//! expiry), crash safety under `kill -9`, and the server's memory during a 1 GiB upload and
//! download. Every test talks to the server through the generated gRPC client or a raw HTTP/1.1
//! socket, and looks at the storage directory and the `files` table (read-only) to prove that
//! nothing partial is kept.
//!
//! Every test runs on SQLite and on PostgreSQL (`store_tests!`: `<name>::sqlite`,
//! `<name>::postgres`; the PostgreSQL one skips when it is unreachable). On PostgreSQL the
//! `files` table is read from the test's own database; each server here is alone on its data,
//! so a restart's startup sweep has the same work to do on both stores.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use streamhub::proto::file_chunk::Data;
use streamhub::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use uuid::Uuid;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// The largest download chunk, and the chunk size these tests upload in.
const CHUNK: usize = 64 * KIB;

// ---------------------------------------------------------------------------------------------
// Helpers: deadlines, data, messages
// ---------------------------------------------------------------------------------------------

/// Polls `probe` every 20 ms until it answers `Ok`, failing after `limit` with its last `Err`.
async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    XorShift::new(seed).fill(&mut bytes);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    format!("{:x}", hasher.finalize())
}

fn new_id() -> String {
    Uuid::new_v4().to_string()
}

fn meta(filename: &str, total_size: i64, checksum: &str, file_id: &str) -> FileMetadata {
    FileMetadata {
        filename: filename.to_string(),
        total_size,
        content_type: String::new(),
        checksum: checksum.to_string(),
        file_id: file_id.to_string(),
        created_at: None,
        download_url: String::new(),
    }
}

fn metadata_msg(m: FileMetadata) -> FileChunk {
    FileChunk {
        offset: 0,
        data: Some(Data::Metadata(m)),
    }
}

fn chunk_msg(bytes: &[u8], offset: usize) -> FileChunk {
    FileChunk {
        offset: offset as i64,
        data: Some(Data::Chunk(bytes.to_vec())),
    }
}

/// The metadata message, then `data[start..]` in chunks of `size`. With `offsets` each chunk
/// carries its byte position; without, `offset` stays 0 (unset).
fn messages(
    m: FileMetadata,
    data: &[u8],
    start: usize,
    size: usize,
    offsets: bool,
) -> Vec<FileChunk> {
    let mut out = vec![metadata_msg(m)];
    let mut pos = start;
    while pos < data.len() {
        let end = (pos + size).min(data.len());
        out.push(chunk_msg(&data[pos..end], if offsets { pos } else { 0 }));
        pos = end;
    }
    out
}

/// Uploads `msgs` and half-closes after the last one.
async fn upload(client: &mut Client, msgs: Vec<FileChunk>) -> Result<UploadFileResponse, Status> {
    client
        .upload_file(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// Uploads `bytes` whole in 64 KiB chunks and expects success.
async fn upload_ok(client: &mut Client, m: FileMetadata, bytes: &[u8]) -> UploadFileResponse {
    let what = format!("{m:?}");
    upload(client, messages(m, bytes, 0, CHUNK, false))
        .await
        .unwrap_or_else(|s| panic!("upload {what} failed: {s:?}"))
}

/// Sends `msgs` and keeps the request stream open: the server must answer on what it has seen,
/// without waiting for a half-close.
async fn upload_held_open(
    client: &mut Client,
    msgs: Vec<FileChunk>,
) -> Result<UploadFileResponse, Status> {
    let (tx, rx) = mpsc::channel(msgs.len() + 1);
    for m in msgs {
        tx.try_send(m)
            .expect("the channel has room for every message");
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.upload_file(ReceiverStream::new(rx)),
    )
    .await
    .expect("the server answers while the request stream is still open");
    drop(tx);
    answer.map(|r| r.into_inner())
}

/// Starts an upload fed by a channel, for calls that must stay open or be cut off.
fn channel_upload(
    client: &Client,
    capacity: usize,
) -> (
    mpsc::Sender<FileChunk>,
    JoinHandle<Result<UploadFileResponse, Status>>,
) {
    let (tx, rx) = mpsc::channel(capacity);
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .upload_file(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner())
    });
    (tx, call)
}

/// Uploads, retrying for a few seconds while the server answers ABORTED: right after a client
/// cut its call, the server may not have noticed yet that the old call is gone.
async fn upload_retrying_aborted(
    client: &mut Client,
    msgs: Vec<FileChunk>,
) -> Result<UploadFileResponse, Status> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match upload(client, msgs.clone()).await {
            Err(s) if s.code() == Code::Aborted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other,
        }
    }
}

#[track_caller]
fn expect_code<T: fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got OK: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

async fn status(client: &mut Client, file_id: &str) -> Result<GetUploadStatusResponse, Status> {
    client
        .get_upload_status(GetUploadStatusRequest {
            file_id: file_id.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn info(client: &mut Client, file_id: &str) -> Result<FileMetadata, Status> {
    client
        .get_file_info(GetFileInfoRequest {
            file_id: file_id.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

/// What DownloadFile sent: its metadata message, the bytes, and how many chunk messages.
struct Downloaded {
    meta: FileMetadata,
    bytes: Vec<u8>,
    chunks: usize,
}

impl fmt::Debug for Downloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Downloaded")
            .field("meta", &self.meta)
            .field("bytes", &self.bytes.len())
            .field("chunks", &self.chunks)
            .finish()
    }
}

/// Downloads from `offset`, checking the framing: metadata first, then chunks of at most 64 KiB
/// whose offsets are the contiguous byte positions from `offset`.
async fn download(client: &mut Client, file_id: &str, offset: i64) -> Result<Downloaded, Status> {
    let mut stream = client
        .download_file(DownloadFileRequest {
            file_id: file_id.to_string(),
            offset,
        })
        .await?
        .into_inner();
    let meta = match stream.message().await? {
        Some(FileChunk {
            data: Some(Data::Metadata(m)),
            ..
        }) => m,
        other => panic!("download {file_id}: the first message must be metadata, got {other:?}"),
    };
    let mut bytes = Vec::new();
    let mut chunks = 0;
    let mut pos = offset;
    while let Some(msg) = stream.message().await? {
        match msg.data {
            Some(Data::Chunk(c)) => {
                assert!(
                    c.len() <= CHUNK,
                    "download {file_id}: a chunk of {} bytes is over 64 KiB",
                    c.len()
                );
                assert_eq!(msg.offset, pos, "download {file_id}: chunk offset");
                pos += c.len() as i64;
                bytes.extend_from_slice(&c);
                chunks += 1;
            }
            other => panic!("download {file_id}: a second message that is not a chunk: {other:?}"),
        }
    }
    Ok(Downloaded {
        meta,
        bytes,
        chunks,
    })
}

/// Downloads the whole file and checks bytes and SHA-256 against `expected`.
async fn assert_downloads(client: &mut Client, file_id: &str, expected: &[u8]) -> Downloaded {
    let got = download(client, file_id, 0)
        .await
        .unwrap_or_else(|s| panic!("download {file_id}: {s:?}"));
    assert_eq!(
        got.bytes.len(),
        expected.len(),
        "download {file_id}: length"
    );
    assert!(got.bytes == expected, "download {file_id}: bytes differ");
    assert_eq!(sha256_hex(&got.bytes), sha256_hex(expected));
    assert_eq!(got.meta.total_size, expected.len() as i64);
    assert_eq!(got.meta.checksum, sha256_hex(expected));
    got
}

// ---------------------------------------------------------------------------------------------
// Helpers: what the server keeps on disk and in the table
// ---------------------------------------------------------------------------------------------

/// Every regular file under `root`, recursively, with its length; nothing if `root` is missing.
/// The storage directory's lock file is not counted.
fn regular_files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && entry.file_name() != ".streamhub.lock" {
                // The single-server lock is the server's own, not a stored file.
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((entry.path(), len));
            }
        }
    }
    out.sort();
    out
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One row of the `files` table.
#[derive(Debug, Clone)]
struct FileRow {
    file_id: String,
    total_size: i64,
    checksum: String,
    bytes_received: i64,
    complete: bool,
    resumable: bool,
}

/// The `files` table of a server home, read through a connection of its own (read-only on
/// SQLite; on PostgreSQL it only SELECTs).
async fn file_rows(home: &Home) -> Vec<FileRow> {
    let rows: Vec<(String, i64, String, i64, bool, bool)> = match &home.db {
        Some(db) => {
            let mut conn = db.connect().await;
            let rows = sqlx::query_as(
                "SELECT file_id, total_size, checksum, bytes_received, complete, resumable \
                 FROM files ORDER BY file_id COLLATE \"C\"",
            )
            .fetch_all(&mut conn)
            .await
            .expect("read the files table");
            let _ = conn.close().await;
            rows
        }
        None => {
            let mut conn = SqliteConnectOptions::new()
                .filename(home.dir.path().join("streamhub.db"))
                .read_only(true)
                .connect()
                .await
                .expect("open the database read-only");
            let rows: Vec<(String, i64, String, i64, i64, i64)> = sqlx::query_as(
                "SELECT file_id, total_size, checksum, bytes_received, complete, resumable \
                 FROM files ORDER BY file_id",
            )
            .fetch_all(&mut conn)
            .await
            .expect("read the files table");
            let _ = conn.close().await;
            rows.into_iter()
                .map(|(id, total, sum, received, complete, resumable)| {
                    (id, total, sum, received, complete != 0, resumable != 0)
                })
                .collect()
        }
    };
    rows.into_iter()
        .map(
            |(file_id, total_size, checksum, bytes_received, complete, resumable)| FileRow {
                file_id,
                total_size,
                checksum,
                bytes_received,
                complete,
                resumable,
            },
        )
        .collect()
}

/// The storage directory holds no regular file (recursively, temp files included) and the
/// `files` table has no row. The server gets a few seconds, for clean-up that runs as the call
/// is torn down.
async fn assert_nothing_kept(home: &Home, what: &str) {
    let storage = home.storage_dir();
    eventually(
        &format!("{what}: nothing kept"),
        Duration::from_secs(5),
        async || {
            let files = regular_files(&storage);
            let rows = file_rows(home).await;
            if files.is_empty() && rows.is_empty() {
                Ok(())
            } else {
                Err(format!("files {files:?}, rows {rows:?}"))
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Helpers: a tiny HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    fn expect_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }
}

/// One request on a fresh connection with `Connection: close`; reads the response to EOF.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    within(60, &format!("HTTP {method} {path}"), async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("HTTP connect");
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("HTTP send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("HTTP read");
        parse_http(method, &raw)
    })
    .await
}

fn parse_http(method: &str, raw: &[u8]) -> HttpResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no end of the HTTP head in {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(500)])
            )
        });
    let head = std::str::from_utf8(&raw[..end]).expect("an ASCII HTTP head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(
        parts.next(),
        Some("HTTP/1.1"),
        "status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect();
    let rest = &raw[end + 4..];
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if method == "HEAD" {
        assert!(
            rest.is_empty(),
            "a HEAD response carries no body, got {} bytes",
            rest.len()
        );
        return response;
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        response.body = dechunk(rest);
    } else {
        response.body = rest.to_vec();
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().expect("a numeric Content-Length");
            assert_eq!(
                response.body.len(),
                len,
                "the body length differs from Content-Length"
            );
        }
    }
    response
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let line = std::str::from_utf8(&rest[..line_end]).expect("ASCII chunk size");
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
        rest = &rest[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn file_path(file_id: &str) -> String {
    format!("/files/{file_id}")
}

/// Checks a single-range GET: 206, the exact slice, Content-Range and Content-Length.
async fn assert_range(addr: SocketAddr, file_id: &str, bytes: &[u8], range: &str) {
    let size = bytes.len();
    // The slice that `range` means (a `bytes=` spec with one range; the end is clamped).
    let spec = range.strip_prefix("bytes=").expect("a bytes= range");
    let (a, b) = spec.split_once('-').expect("a-b");
    let (first, last) = if a.is_empty() {
        let n: usize = b.parse().unwrap();
        (size - n.min(size), size - 1)
    } else {
        let first: usize = a.parse().unwrap();
        let last = if b.is_empty() {
            size - 1
        } else {
            b.parse::<usize>().unwrap().min(size - 1)
        };
        (first, last)
    };
    let r = http(addr, "GET", &file_path(file_id), &[("Range", range)]).await;
    assert_eq!(r.status, 206, "Range {range} of {size}: {r:?}");
    assert_eq!(
        r.expect_header("content-range"),
        format!("bytes {first}-{last}/{size}"),
        "Range {range}"
    );
    assert_eq!(
        r.expect_header("content-length"),
        (last - first + 1).to_string(),
        "Range {range}"
    );
    assert!(
        r.body == bytes[first..=last],
        "Range {range} of {size}: the body is not the exact slice ({} bytes)",
        r.body.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Round trips
// ---------------------------------------------------------------------------------------------

store_tests!(round_trip_every_edge_size_over_grpc_and_http);
/// Every edge size uploads in 64 KiB chunks and comes back identical over gRPC and HTTP, with
/// the response, GetFileInfo, GetUploadStatus and the download metadata all agreeing.
async fn round_trip_every_edge_size_over_grpc_and_http(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(120, "round trips", async {
        let mut client = server.client().await;
        let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 10 * MIB];
        let mut ids = HashSet::new();
        for (i, &size) in sizes.iter().enumerate() {
            let bytes = data(100 + i as u64, size);
            let sum = sha256_hex(&bytes);
            // Every other upload declares its checksum; the rest leave it to the server.
            let declared = if i % 2 == 0 {
                sum.clone()
            } else {
                String::new()
            };
            let name = format!("round-trip-{size}.bin");
            let started = Instant::now();
            let response =
                upload_ok(&mut client, meta(&name, size as i64, &declared, ""), &bytes).await;
            let upload_time = started.elapsed();
            let id = response.file_id.clone();
            Uuid::parse_str(&id)
                .unwrap_or_else(|_| panic!("a server-assigned file_id is a UUID: {id:?}"));
            assert!(ids.insert(id.clone()), "file_id {id} handed out twice");
            assert_eq!(
                response,
                UploadFileResponse {
                    file_id: id.clone(),
                    bytes_uploaded: size as i64,
                    download_url: format!("http://{}/files/{id}", server.addr),
                    checksum_verified: !declared.is_empty(),
                },
                "size {size}"
            );

            let file = info(&mut client, &id).await.expect("GetFileInfo");
            assert_eq!(file.file_id, id);
            assert_eq!(file.filename, name);
            assert_eq!(file.total_size, size as i64);
            assert_eq!(file.content_type, "application/octet-stream");
            assert_eq!(
                file.checksum, sum,
                "the recorded checksum is the lowercase hex SHA-256"
            );
            let created = file.created_at.expect("created_at is set");
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            assert!(
                (created.seconds - now.as_secs() as i64).abs() <= 60,
                "created_at {created:?} is not now"
            );

            assert_eq!(
                status(&mut client, &id).await.expect("GetUploadStatus"),
                GetUploadStatusResponse {
                    file_id: id.clone(),
                    bytes_received: size as i64,
                    total_size: size as i64,
                    complete: true,
                }
            );

            let started = Instant::now();
            let got = assert_downloads(&mut client, &id, &bytes).await;
            let download_time = started.elapsed();
            assert_eq!(got.meta, file, "the download metadata is GetFileInfo's");
            assert_eq!(got.chunks, size.div_ceil(CHUNK), "size {size}: chunk count");

            let r = http(server.addr, "GET", &file_path(&id), &[]).await;
            assert_eq!(r.status, 200, "GET size {size}: {r:?}");
            assert_eq!(r.expect_header("content-length"), size.to_string());
            assert!(r.body == bytes, "GET size {size}: the body differs");

            match size {
                0 => {
                    let r = http(
                        server.addr,
                        "GET",
                        &file_path(&id),
                        &[("Range", "bytes=0-0")],
                    )
                    .await;
                    assert_eq!(r.status, 416, "any range of an empty file: {r:?}");
                }
                1 => assert_range(server.addr, &id, &bytes, "bytes=0-0").await,
                _ => {
                    let range = format!("bytes={}-{}", size / 3, size - size / 4 - 1);
                    assert_range(server.addr, &id, &bytes, &range).await;
                }
            }
            eprintln!("size {size}: upload {upload_time:?}, download {download_time:?}");
        }
        // Nothing but the finished files is left in the storage directory.
        let files = regular_files(&server.home().storage_dir());
        let mut names: Vec<String> = files.iter().map(|(p, _)| file_name(p)).collect();
        names.sort();
        let mut expected: Vec<String> = ids.into_iter().collect();
        expected.sort();
        assert_eq!(
            names, expected,
            "the storage directory holds exactly the files"
        );
    })
    .await;
    server.stop().await;
}

store_tests!(odd_chunk_sizes_offsets_and_metadata_round_trip);
/// Uploads in odd chunk sizes, with and without chunk offsets, and a content type and a
/// non-ASCII filename that come back as given.
async fn odd_chunk_sizes_offsets_and_metadata_round_trip(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "odd chunks", async {
        let mut client = server.client().await;

        // 1000-byte chunks, each with its byte position as offset.
        let bytes = data(7, 300_001);
        let sum = sha256_hex(&bytes);
        let mut m = meta("résumé 2024 (final).pdf", bytes.len() as i64, &sum, "");
        m.content_type = "application/pdf".into();
        let msgs = messages(m.clone(), &bytes, 0, 1000, true);
        assert_eq!(msgs.len(), 1 + 301);
        let response = upload(&mut client, msgs).await.expect("1000-byte chunks");
        assert!(response.checksum_verified);
        assert_eq!(response.bytes_uploaded, bytes.len() as i64);
        let file = info(&mut client, &response.file_id).await.expect("info");
        assert_eq!(file.filename, "résumé 2024 (final).pdf");
        assert_eq!(file.content_type, "application/pdf");
        assert_eq!(file.checksum, sum);
        assert_downloads(&mut client, &response.file_id, &bytes).await;

        // Mixed sizes (1 byte up to just over 64 KiB), no offsets, no declared checksum.
        let bytes = data(8, 400_000);
        let sizes = [1, 999, 4096, 65_537, 7, 65_536, 12_345, 2];
        let mut msgs = vec![metadata_msg(meta("", bytes.len() as i64, "", ""))];
        let mut pos = 0;
        for i in 0.. {
            if pos == bytes.len() {
                break;
            }
            let end = (pos + sizes[i % sizes.len()]).min(bytes.len());
            msgs.push(chunk_msg(&bytes[pos..end], 0));
            pos = end;
        }
        let response = upload(&mut client, msgs).await.expect("mixed chunks");
        assert!(!response.checksum_verified);
        let file = info(&mut client, &response.file_id).await.expect("info");
        assert_eq!(file.filename, "", "an empty filename is allowed");
        assert_eq!(file.checksum, sha256_hex(&bytes));
        assert_downloads(&mut client, &response.file_id, &bytes).await;
    })
    .await;
    server.stop().await;
}

store_tests!(download_url_uses_the_configured_public_base);
/// `download_url` is built on the configured public base URL.
async fn download_url_uses_the_configured_public_base(kind: StoreKind) {
    let server = TestServer::start_on(kind, |config| {
        config.public_url = Some("https://files.example.com".into());
    })
    .await;
    within(30, "public url", async {
        let mut client = server.client().await;
        let response = upload_ok(&mut client, meta("a.txt", 3, "", ""), b"abc").await;
        assert_eq!(
            response.download_url,
            format!("https://files.example.com/files/{}", response.file_id)
        );
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Download resume
// ---------------------------------------------------------------------------------------------

store_tests!(download_from_an_offset_returns_exactly_the_tail);
async fn download_from_an_offset_returns_exactly_the_tail(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "download offsets", async {
        let mut client = server.client().await;
        let size = 3 * CHUNK + 1234;
        let bytes = data(21, size);
        let id = upload_ok(&mut client, meta("tail.bin", size as i64, "", ""), &bytes)
            .await
            .file_id;
        let whole = info(&mut client, &id).await.expect("info");

        for offset in [0, 1, 1000, CHUNK - 1, CHUNK, CHUNK + 1, size - 1, size] {
            let got = download(&mut client, &id, offset as i64)
                .await
                .unwrap_or_else(|s| panic!("download from {offset}: {s:?}"));
            assert_eq!(
                got.meta, whole,
                "offset {offset}: the metadata is the whole file's"
            );
            assert!(
                got.bytes == bytes[offset..],
                "offset {offset}: got {} bytes, not exactly the tail of {}",
                got.bytes.len(),
                size - offset
            );
            if offset == size {
                assert_eq!(got.chunks, 0, "from the end: metadata, then nothing");
            }
        }

        for offset in [-1, i64::MIN, size as i64 + 1, i64::MAX] {
            expect_code(
                &format!("download from {offset}"),
                download(&mut client, &id, offset).await,
                Code::OutOfRange,
            );
        }

        // An empty file: offset 0 is the end.
        let empty = upload_ok(&mut client, meta("empty", 0, "", ""), b"")
            .await
            .file_id;
        let got = download(&mut client, &empty, 0).await.expect("empty");
        assert_eq!((got.meta.total_size, got.chunks), (0, 0));
        expect_code(
            "an empty file from 1",
            download(&mut client, &empty, 1).await,
            Code::OutOfRange,
        );
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. HTTP
// ---------------------------------------------------------------------------------------------

store_tests!(http_get_head_and_byte_ranges_on_the_grpc_port);
/// GET and HEAD on the gRPC port: headers, body, single ranges of every form, 416, 404, 400.
async fn http_get_head_and_byte_ranges_on_the_grpc_port(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "http", async {
        let mut client = server.client().await;
        let size = 200_000;
        let bytes = data(31, size);
        let sum = sha256_hex(&bytes);
        let mut m = meta("report-2024_v1.txt", size as i64, &sum, "");
        m.content_type = "text/plain".into();
        let response = upload_ok(&mut client, m, &bytes).await;
        let id = response.file_id.clone();

        // The download_url itself works (what `curl -O` does).
        let base = format!("http://{}", server.addr);
        let path = response
            .download_url
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("{} is on {base}", response.download_url));
        let get = http(server.addr, "GET", path, &[]).await;
        assert_eq!(get.status, 200, "{get:?}");
        assert!(get.body == bytes, "the GET body differs");
        assert_eq!(get.expect_header("content-length"), size.to_string());
        assert!(
            get.expect_header("content-type").starts_with("text/plain"),
            "{get:?}"
        );
        assert!(
            get.expect_header("content-disposition")
                .contains("report-2024_v1.txt"),
            "{get:?}"
        );
        assert!(get.expect_header("etag").contains(&sum), "{get:?}");
        assert_eq!(get.expect_header("accept-ranges"), "bytes");
        // Same origin as the console: never sniffed, never run.
        assert_eq!(get.expect_header("x-content-type-options"), "nosniff");
        assert_eq!(
            get.expect_header("content-security-policy"),
            "sandbox; default-src 'none'"
        );

        let head = http(server.addr, "HEAD", &file_path(&id), &[]).await;
        assert_eq!(head.status, 200, "{head:?}");
        assert!(head.body.is_empty());
        for name in [
            "content-length",
            "content-type",
            "content-disposition",
            "etag",
            "accept-ranges",
            "x-content-type-options",
            "content-security-policy",
        ] {
            assert_eq!(head.header(name), get.header(name), "HEAD {name}");
        }

        for range in [
            "bytes=0-0",
            "bytes=0-65535",
            "bytes=1000-1999",
            "bytes=65536-131072",
            "bytes=199999-199999",
            "bytes=150000-",
            "bytes=0-",
            "bytes=-500",
            "bytes=-1",
            "bytes=-200000",
            "bytes=100-999999999",
        ] {
            assert_range(server.addr, &id, &bytes, range).await;
        }
        for range in ["bytes=200000-", "bytes=200000-200010", "bytes=999999-"] {
            let r = http(server.addr, "GET", &file_path(&id), &[("Range", range)]).await;
            assert_eq!(r.status, 416, "unsatisfiable {range}: {r:?}");
        }

        // The default content type.
        let plain = upload_ok(&mut client, meta("x.bin", 5, "", ""), b"12345")
            .await
            .file_id;
        let r = http(server.addr, "GET", &file_path(&plain), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"12345");
        assert!(
            r.expect_header("content-type")
                .starts_with("application/octet-stream"),
            "{r:?}"
        );

        // Unknown and malformed ids.
        for method in ["GET", "HEAD"] {
            let r = http(server.addr, method, &file_path(&new_id()), &[]).await;
            assert_eq!(r.status, 404, "{method} unknown id: {r:?}");
            for bad in ["not-a-uuid", "..%2F..%2Fetc%2Fpasswd", "12345"] {
                let r = http(server.addr, method, &file_path(bad), &[]).await;
                assert_eq!(r.status, 400, "{method} bad id {bad}: {r:?}");
            }
        }

        // gRPC still works on the same port after the HTTP traffic.
        assert_downloads(&mut client, &id, &bytes).await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Failures: the exact status, and nothing kept
// ---------------------------------------------------------------------------------------------

store_tests!(bad_uploads_get_their_exact_status_and_keep_nothing);
/// Every bad upload gets its exact status, and afterwards the storage directory (temp files
/// included) and the `files` table hold nothing. Cases marked "held open" keep the request
/// stream open, so the server must answer on what it has seen, before any half-close.
async fn bad_uploads_get_their_exact_status_and_keep_nothing(kind: StoreKind) {
    const MAX: usize = MIB;
    let server = TestServer::start_on(kind, |config| config.max_upload_bytes = MAX as u64).await;
    let home = server.home();
    let dir_text = home.dir.path().display().to_string();
    within(120, "bad uploads", async {
        let mut client = server.client().await;
        let ten = data(41, 10);
        let ten_sum = sha256_hex(&ten);
        let big = data(42, 200 * KIB);
        let other_sum = sha256_hex(b"something else");

        // (what, messages, held open, expected code)
        let mut cases: Vec<(String, Vec<FileChunk>, bool, Code)> = vec![
            (
                "chunk before metadata".into(),
                vec![chunk_msg(b"abc", 0), metadata_msg(meta("a", 3, "", ""))],
                true,
                Code::InvalidArgument,
            ),
            (
                "second metadata after a chunk".into(),
                vec![
                    metadata_msg(meta("a", 10, "", "")),
                    chunk_msg(&ten[..5], 0),
                    metadata_msg(meta("a", 10, "", "")),
                ],
                true,
                Code::InvalidArgument,
            ),
            (
                "second metadata straight after the first".into(),
                vec![
                    metadata_msg(meta("a", 10, "", "")),
                    metadata_msg(meta("a", 10, "", "")),
                ],
                true,
                Code::InvalidArgument,
            ),
            (
                "more bytes than declared, in one chunk".into(),
                vec![metadata_msg(meta("a", 9, "", "")), chunk_msg(&ten, 0)],
                true,
                Code::InvalidArgument,
            ),
            (
                "more bytes than declared, after the exact size".into(),
                vec![
                    metadata_msg(meta("a", 10, &ten_sum, "")),
                    chunk_msg(&ten, 0),
                    chunk_msg(b"x", 0),
                ],
                true,
                Code::InvalidArgument,
            ),
            (
                "more bytes than declared, across 64 KiB chunks".into(),
                messages(meta("a", 100_000, "", ""), &big, 0, CHUNK, false),
                true,
                Code::InvalidArgument,
            ),
            (
                "bytes for an empty file".into(),
                vec![metadata_msg(meta("a", 0, "", "")), chunk_msg(b"x", 0)],
                true,
                Code::InvalidArgument,
            ),
            (
                "fewer bytes than declared".into(),
                vec![metadata_msg(meta("a", 11, "", "")), chunk_msg(&ten, 0)],
                false,
                Code::InvalidArgument,
            ),
            (
                "fewer bytes than declared, over several chunks".into(),
                messages(
                    meta("a", big.len() as i64 + 1, "", ""),
                    &big,
                    0,
                    CHUNK,
                    false,
                ),
                false,
                Code::InvalidArgument,
            ),
            (
                "metadata only, no bytes".into(),
                vec![metadata_msg(meta("a", 5, "", ""))],
                false,
                Code::InvalidArgument,
            ),
            (
                "a first message with neither metadata nor chunk".into(),
                vec![FileChunk {
                    offset: 0,
                    data: None,
                }],
                true,
                Code::InvalidArgument,
            ),
            (
                "a message with neither metadata nor chunk after the metadata".into(),
                vec![
                    metadata_msg(meta("a", 10, "", "")),
                    chunk_msg(&ten[..5], 0),
                    FileChunk {
                        offset: 0,
                        data: None,
                    },
                ],
                true,
                Code::InvalidArgument,
            ),
            (
                "an empty request stream".into(),
                vec![],
                false,
                Code::InvalidArgument,
            ),
            (
                "checksum mismatch".into(),
                vec![
                    metadata_msg(meta("a", 10, &other_sum, "")),
                    chunk_msg(&ten, 0),
                ],
                false,
                Code::DataLoss,
            ),
            (
                "checksum mismatch over several chunks".into(),
                messages(
                    meta("a", big.len() as i64, &other_sum, ""),
                    &big,
                    0,
                    CHUNK,
                    false,
                ),
                false,
                Code::DataLoss,
            ),
            (
                "oversize declaration".into(),
                vec![
                    metadata_msg(meta("a", MAX as i64 + 1, "", "")),
                    chunk_msg(&ten, 0),
                ],
                true,
                Code::ResourceExhausted,
            ),
            (
                "oversize declaration of i64::MAX".into(),
                vec![metadata_msg(meta("a", i64::MAX, "", ""))],
                true,
                Code::ResourceExhausted,
            ),
            (
                "negative total_size".into(),
                vec![metadata_msg(meta("a", -1, "", "")), chunk_msg(&ten, 0)],
                true,
                Code::InvalidArgument,
            ),
            (
                "wrong chunk offset".into(),
                vec![
                    metadata_msg(meta("a", 10, "", "")),
                    chunk_msg(&ten[..5], 0),
                    chunk_msg(&ten[5..], 4),
                ],
                true,
                Code::FailedPrecondition,
            ),
        ];
        let long_name = "a".repeat(300);
        let long_utf8 = "é".repeat(128); // 256 bytes
        for name in [
            "../x",
            "/etc/passwd",
            "a\0b",
            long_name.as_str(),
            long_utf8.as_str(),
            ".",
            "..",
            "a/b",
            "a\\b",
            "tab\there",
            "line\nbreak",
            "bell\u{7}",
            "del\u{7f}",
        ] {
            cases.push((
                format!("filename {name:?}"),
                vec![metadata_msg(meta(name, 10, "", "")), chunk_msg(&ten, 0)],
                true,
                Code::InvalidArgument,
            ));
        }
        let short = &ten_sum[..63];
        let long = format!("{ten_sum}0");
        let not_hex = "g".repeat(64);
        for sum in ["abc", short, long.as_str(), not_hex.as_str(), "sha256:abc"] {
            cases.push((
                format!("checksum {sum:?}"),
                vec![metadata_msg(meta("a", 10, sum, "")), chunk_msg(&ten, 0)],
                true,
                Code::InvalidArgument,
            ));
        }
        for id in ["not-a-uuid", "12345", "../../etc/passwd", " "] {
            cases.push((
                format!("file_id {id:?}"),
                vec![metadata_msg(meta("a", 10, "", id)), chunk_msg(&ten, 0)],
                true,
                Code::InvalidArgument,
            ));
        }

        for (what, msgs, held_open, code) in cases {
            let result = if held_open {
                upload_held_open(&mut client, msgs).await
            } else {
                upload(&mut client, msgs).await
            };
            let status = expect_code(&what, result, code);
            assert!(
                !status.message().contains(&dir_text),
                "{what}: the message leaks a path: {status:?}"
            );
            assert_nothing_kept(&home, &what).await;
        }

        // Resumable uploads (a client file_id) that fail this way keep nothing either.
        let id = new_id();
        let resumable_cases = [
            (
                "resumable: checksum mismatch",
                vec![
                    metadata_msg(meta("a", 10, &other_sum, &id)),
                    chunk_msg(&ten, 0),
                ],
                false,
                Code::DataLoss,
            ),
            (
                "resumable: checksum mismatch over several chunks",
                messages(
                    meta("a", big.len() as i64, &other_sum, &id),
                    &big,
                    0,
                    CHUNK,
                    true,
                ),
                false,
                Code::DataLoss,
            ),
            (
                "resumable: bad filename",
                vec![metadata_msg(meta("../x", 10, "", &id)), chunk_msg(&ten, 0)],
                true,
                Code::InvalidArgument,
            ),
            (
                "resumable: oversize declaration",
                vec![metadata_msg(meta("a", MAX as i64 + 1, "", &id))],
                true,
                Code::ResourceExhausted,
            ),
            (
                "resumable: negative total_size",
                vec![metadata_msg(meta("a", -5, "", &id))],
                true,
                Code::InvalidArgument,
            ),
            (
                "resumable: malformed checksum",
                vec![metadata_msg(meta("a", 10, "abc", &id))],
                true,
                Code::InvalidArgument,
            ),
        ];
        for (what, msgs, held_open, code) in resumable_cases {
            let result = if held_open {
                upload_held_open(&mut client, msgs).await
            } else {
                upload(&mut client, msgs).await
            };
            expect_code(what, result, code);
            expect_code(
                &format!("{what}: GetUploadStatus"),
                status(&mut client, &id).await,
                Code::NotFound,
            );
            assert_nothing_kept(&home, what).await;
        }

        // The edges that are allowed: exactly the maximum size, a 255-byte filename, an empty
        // filename, and after all those failures the server still works.
        let max = data(43, MAX);
        let response = upload_ok(&mut client, meta("max", MAX as i64, "", ""), &max).await;
        assert_downloads(&mut client, &response.file_id, &max).await;
        let name255 = "n".repeat(255);
        let response = upload_ok(&mut client, meta(&name255, 10, &ten_sum, ""), &ten).await;
        assert!(response.checksum_verified);
        assert_eq!(
            info(&mut client, &response.file_id).await.unwrap().filename,
            name255
        );
        let response = upload_ok(&mut client, meta("", 10, "", ""), &ten).await;
        assert_downloads(&mut client, &response.file_id, &ten).await;
        assert_eq!(file_rows(&home).await.len(), 3);
    })
    .await;
    server.stop().await;
}

store_tests!(lookups_of_malformed_and_unknown_ids);
/// GetUploadStatus, GetFileInfo, DownloadFile and HTTP GET with ids that are not UUIDs or that
/// nobody uploaded.
async fn lookups_of_malformed_and_unknown_ids(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "lookups", async {
        let mut client = server.client().await;
        // Something is stored, so "unknown" is not merely "empty".
        let known = upload_ok(&mut client, meta("k", 3, "", ""), b"abc")
            .await
            .file_id;
        let unknown = new_id();
        for (id, code) in [
            ("", Code::InvalidArgument),
            ("not-a-uuid", Code::InvalidArgument),
            ("../../etc/passwd", Code::InvalidArgument),
            (&known[..35], Code::InvalidArgument),
            (unknown.as_str(), Code::NotFound),
        ] {
            expect_code(
                &format!("GetUploadStatus {id:?}"),
                status(&mut client, id).await,
                code,
            );
            expect_code(
                &format!("GetFileInfo {id:?}"),
                info(&mut client, id).await,
                code,
            );
            expect_code(
                &format!("DownloadFile {id:?}"),
                download(&mut client, id, 0).await,
                code,
            );
        }
        let r = http(server.addr, "GET", &file_path(&unknown), &[]).await;
        assert_eq!(r.status, 404, "{r:?}");
        let r = http(server.addr, "GET", &file_path("not-a-uuid"), &[]).await;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(info(&mut client, &known).await.is_ok());
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Resumable uploads
// ---------------------------------------------------------------------------------------------

/// Starts a resumable upload on its own connection, sends the metadata and `bytes[..cut]` (with
/// offsets), waits until the server has taken those bytes in, then cuts the call off the way a
/// client that goes away does (the call is dropped: RST_STREAM, no half-close). Returns once
/// GetUploadStatus reports exactly `cut` bytes of an incomplete file, and the server's `files`
/// table (on `home`) records them.
async fn cut_off(
    url: &str,
    probe: &mut Client,
    home: &Home,
    m: &FileMetadata,
    bytes: &[u8],
    cut: usize,
) {
    cut_off_unsettled(url, probe, &home.storage_dir(), m, bytes, cut).await;
    // GetUploadStatus may answer from the live call before the server has recorded the
    // interruption; wait until the table holds it too, so what follows starts from a settled
    // server (the recording is the server's last step before it lets go of the call).
    let id = m.file_id.as_str();
    eventually(
        &format!("the table to record {cut} bytes of {id}"),
        Duration::from_secs(10),
        async || {
            let rows = file_rows(home).await;
            match rows.iter().find(|r| r.file_id == id) {
                Some(r) if r.bytes_received == cut as i64 && !r.complete => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// [`cut_off`] without waiting for the server to record the interruption.
async fn cut_off_unsettled(
    url: &str,
    probe: &mut Client,
    storage: &Path,
    m: &FileMetadata,
    bytes: &[u8],
    cut: usize,
) {
    let id = m.file_id.clone();
    let uploader = connect(url).await;
    let (tx, call) = channel_upload(&uploader, 4);
    drop(uploader);
    for msg in messages(m.clone(), &bytes[..cut], 0, CHUNK, true) {
        tx.send(msg).await.expect("the call takes chunks");
    }
    // A dropped call loses what is still in flight, so first wait until the server shows the
    // bytes: live in GetUploadStatus, or in a temp file of exactly that length.
    // (Proceeding without that sign, as this once did after 5 s, only moved the failure to the
    // status check after the cut.)
    eventually(
        &format!("the server to hold {cut} bytes of {id} before the cut"),
        Duration::from_secs(30),
        async || {
            let live = matches!(status(probe, &id).await, Ok(s) if s.bytes_received == cut as i64);
            let on_disk = regular_files(storage)
                .iter()
                .any(|(_, len)| *len == cut as u64);
            if live || on_disk {
                Ok(())
            } else {
                Err("neither GetUploadStatus nor a temp file shows them".to_string())
            }
        },
    )
    .await;
    call.abort();
    assert!(
        call.await.expect_err("the call was aborted").is_cancelled(),
        "the upload call is cut off, not finished"
    );
    let total = m.total_size;
    eventually(
        &format!("GetUploadStatus to show {cut} bytes of {id} after the cut"),
        Duration::from_secs(10),
        async || match status(probe, &id).await {
            Ok(s) if s.bytes_received == cut as i64 && !s.complete => {
                assert_eq!(s.file_id, id);
                assert_eq!(s.total_size, total);
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // The request stream ends only now, after the call is gone: no late half-close.
    drop(tx);
}

store_tests!(resumable_upload_cut_off_at_60_percent_resumes_with_only_the_rest);
/// An upload cut off at 60 % keeps its bytes; GetUploadStatus reports them; the file is not
/// visible until complete; a new call with only the rest completes it and it verifies.
async fn resumable_upload_cut_off_at_60_percent_resumes_with_only_the_rest(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let home = server.home();
    let storage = home.storage_dir();
    within(60, "resume", async {
        let mut client = server.client().await;
        let size = MIB + 54_321;
        let bytes = data(51, size);
        let sum = sha256_hex(&bytes);
        let id = new_id();
        let m = meta("resume.bin", size as i64, &sum, &id);
        let cut = size * 6 / 10;
        cut_off(&server.url(), &mut client, &home, &m, &bytes, cut).await;

        // Incomplete: not a file yet.
        expect_code(
            "info of an incomplete file",
            info(&mut client, &id).await,
            Code::NotFound,
        );
        expect_code(
            "download of an incomplete file",
            download(&mut client, &id, 0).await,
            Code::NotFound,
        );
        let r = http(server.addr, "GET", &file_path(&id), &[]).await;
        assert_eq!(r.status, 404, "HTTP GET of an incomplete file: {r:?}");
        let rows = file_rows(&home).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(rows[0].resumable && !rows[0].complete, "{rows:?}");

        // The rest only, from the reported offset.
        let rest = messages(m.clone(), &bytes, cut, CHUNK, true);
        let sent: usize = rest
            .iter()
            .map(|c| match &c.data {
                Some(Data::Chunk(b)) => b.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(sent, size - cut);
        let response = upload_retrying_aborted(&mut client, rest)
            .await
            .expect("the resumed upload completes");
        assert_eq!(
            response,
            UploadFileResponse {
                file_id: id.clone(),
                bytes_uploaded: size as i64,
                download_url: format!("http://{}/files/{id}", server.addr),
                checksum_verified: true,
            }
        );
        assert_downloads(&mut client, &id, &bytes).await;
        let r = http(server.addr, "GET", &file_path(&id), &[]).await;
        assert!(
            r.status == 200 && r.body == bytes,
            "HTTP GET after resume: {r:?}"
        );
        assert_eq!(
            status(&mut client, &id).await.expect("status"),
            GetUploadStatusResponse {
                file_id: id.clone(),
                bytes_received: size as i64,
                total_size: size as i64,
                complete: true,
            }
        );
        // Only the finished file is left.
        eventually(
            "only the finished file is left",
            Duration::from_secs(5),
            async || {
                let files = regular_files(&storage);
                let names: Vec<String> = files.iter().map(|(p, _)| file_name(p)).collect();
                if names == [id.clone()] && files[0].1 == size as u64 {
                    Ok(())
                } else {
                    Err(format!("{files:?}"))
                }
            },
        )
        .await;
        // A resumable upload from scratch that nobody interrupts works as well.
        let id2 = new_id();
        let response = upload_ok(&mut client, meta("again", size as i64, &sum, &id2), &bytes).await;
        assert_eq!(response.file_id, id2);
        assert_downloads(&mut client, &id2, &bytes).await;
    })
    .await;
    server.stop().await;
}

store_tests!(resumable_upload_with_a_wrong_offset_gets_failed_precondition);
/// A chunk offset that is set and differs from the bytes received so far gets
/// FAILED_PRECONDITION, and the bytes already kept stay; the right offset then completes.
async fn resumable_upload_with_a_wrong_offset_gets_failed_precondition(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let home = server.home();
    within(60, "wrong offset", async {
        let mut client = server.client().await;
        let size = 300_000;
        let bytes = data(61, size);
        let sum = sha256_hex(&bytes);

        // A fresh resumable upload whose first chunk claims to start at 5.
        let fresh = new_id();
        expect_code(
            "a fresh upload starting at offset 5",
            upload_held_open(
                &mut client,
                vec![
                    metadata_msg(meta("w", size as i64, &sum, &fresh)),
                    chunk_msg(&bytes[5..1000], 5),
                ],
            )
            .await,
            Code::FailedPrecondition,
        );

        let id = new_id();
        let m = meta("wrong-offset.bin", size as i64, &sum, &id);
        let cut = 100_000;
        cut_off(&server.url(), &mut client, &home, &m, &bytes, cut).await;

        // Offset 0 on the first chunk of a continuing call is a restart from byte 0, not
        // "offset not set": appending it would corrupt the kept bytes.
        for wrong in [cut + 1, cut - 1, 1, size, 0] {
            let chunk = &bytes[wrong.min(size - 1)..(wrong + 1000).min(size)];
            let msgs = vec![metadata_msg(m.clone()), chunk_msg(chunk, wrong)];
            // Right after the cut the server may still hold the old call for a moment.
            let deadline = Instant::now() + Duration::from_secs(15);
            let result = loop {
                match upload_held_open(&mut client, msgs.clone()).await {
                    Err(s) if s.code() == Code::Aborted && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    other => break other,
                }
            };
            expect_code(
                &format!("resume at offset {wrong} instead of {cut}"),
                result,
                Code::FailedPrecondition,
            );
            let s = status(&mut client, &id).await.expect("status");
            assert_eq!(
                (s.bytes_received, s.complete),
                (cut as i64, false),
                "after offset {wrong}: the kept bytes stay"
            );
        }

        // Right first chunk, wrong second chunk.
        expect_code(
            "a second chunk with a stale offset",
            upload_held_open(
                &mut client,
                vec![
                    metadata_msg(m.clone()),
                    chunk_msg(&bytes[cut..cut + 1000], cut),
                    chunk_msg(&bytes[cut + 1000..cut + 2000], cut),
                ],
            )
            .await,
            Code::FailedPrecondition,
        );
        let s = status(&mut client, &id).await.expect("status");
        assert!(!s.complete);
        let at = s.bytes_received as usize;
        assert!(
            at == cut || at == cut + 1000,
            "after the stale offset the server holds {at} bytes, expected {cut} or {}",
            cut + 1000
        );

        // Resume from what the server reports: completes and verifies.
        let response = upload(&mut client, messages(m.clone(), &bytes, at, 1000, true))
            .await
            .expect("resume from the reported offset");
        assert!(response.checksum_verified);
        assert_eq!(response.bytes_uploaded, size as i64);
        assert_downloads(&mut client, &id, &bytes).await;
    })
    .await;
    server.stop().await;
}

store_tests!(concurrent_uploads_to_one_id_the_second_gets_aborted);
/// While one upload to a file_id is open, a second one gets ABORTED, and the first is unharmed.
async fn concurrent_uploads_to_one_id_the_second_gets_aborted(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "concurrent", async {
        let mut client = server.client().await;
        let size = 500_000;
        let bytes = data(71, size);
        let sum = sha256_hex(&bytes);
        let id = new_id();
        let m = meta("concurrent.bin", size as i64, &sum, &id);
        let first_part = 100_000;

        let (tx, first) = channel_upload(&client, 4);
        for msg in messages(m.clone(), &bytes[..first_part], 0, CHUNK, true) {
            tx.send(msg).await.expect("the first call takes chunks");
        }
        // The first upload has started once the server knows the id.
        eventually(
            "the first upload to start",
            Duration::from_secs(10),
            async || {
                status(&mut client, &id)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{s:?}"))
            },
        )
        .await;

        // The whole file, half-closed: still ABORTED, because the first call holds the id.
        expect_code(
            "a second upload to the same id",
            upload(&mut client, messages(m.clone(), &bytes, 0, CHUNK, false)).await,
            Code::Aborted,
        );
        // Held open, from where the first one is: ABORTED at once.
        expect_code(
            "a third upload to the same id, held open",
            upload_held_open(&mut client, vec![metadata_msg(m.clone())]).await,
            Code::Aborted,
        );

        // The first finishes as if nothing happened.
        for msg in messages(m.clone(), &bytes, first_part, CHUNK, true)
            .into_iter()
            .skip(1)
        {
            tx.send(msg).await.expect("the first call takes the rest");
        }
        drop(tx);
        let response = first
            .await
            .expect("first call task")
            .expect("the first upload completes");
        assert_eq!(response.file_id, id);
        assert!(response.checksum_verified);
        assert_downloads(&mut client, &id, &bytes).await;
    })
    .await;
    server.stop().await;
}

store_tests!(reusing_the_id_of_a_complete_file_gets_already_exists);
/// The file_id of a complete file cannot be uploaded again, with any content; the file stays.
async fn reusing_the_id_of_a_complete_file_gets_already_exists(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "reuse", async {
        let mut client = server.client().await;
        let bytes = data(81, 70_000);
        let sum = sha256_hex(&bytes);
        let id = new_id();
        let m = meta("once.bin", bytes.len() as i64, &sum, &id);
        assert_eq!(upload_ok(&mut client, m.clone(), &bytes).await.file_id, id);

        expect_code(
            "the same upload again",
            upload(&mut client, messages(m.clone(), &bytes, 0, CHUNK, false)).await,
            Code::AlreadyExists,
        );
        let other = data(82, 10);
        expect_code(
            "other content under the same id, held open",
            upload_held_open(
                &mut client,
                messages(meta("x", 10, "", &id), &other, 0, CHUNK, true),
            )
            .await,
            Code::AlreadyExists,
        );
        assert_downloads(&mut client, &id, &bytes).await;
        let rows = file_rows(&server.home()).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(regular_files(&server.home().storage_dir()).len(), 1);
    })
    .await;
    server.stop().await;
}

store_tests!(resumable_uploads_survive_a_restart_and_expire_by_sweep);
/// An interrupted resumable upload survives a restart and resumes there; an expired one is
/// removed by the startup sweep, and one interrupted later by the periodic sweep. Complete files
/// never expire.
async fn resumable_uploads_survive_a_restart_and_expire_by_sweep(kind: StoreKind) {
    let size = 400_000;
    let bytes = data(91, size);
    let sum = sha256_hex(&bytes);
    let (kept, expiring, swept) = (new_id(), new_id(), new_id());

    let server = TestServer::start_on(kind, |_| {}).await;
    let home = server.home();
    let cut_at = within(60, "before the restart", async {
        let mut client = server.client().await;
        for (id, cut) in [(&kept, 150_000), (&expiring, 250_000)] {
            let m = meta("r", size as i64, &sum, id);
            cut_off(&server.url(), &mut client, &home, &m, &bytes, cut).await;
        }
        Instant::now()
    })
    .await;
    server.stop().await;

    // Restart with the default expiry: both are still there; one resumes.
    let server = TestServer::start_at(home.clone(), |_| {}).await;
    within(60, "after the restart", async {
        let mut client = server.client().await;
        for (id, cut) in [(&kept, 150_000), (&expiring, 250_000)] {
            let s = status(&mut client, id).await.expect("status after restart");
            assert_eq!(
                s,
                GetUploadStatusResponse {
                    file_id: id.to_string(),
                    bytes_received: cut,
                    total_size: size as i64,
                    complete: false,
                }
            );
        }
        let m = meta("r", size as i64, &sum, &kept);
        let response = upload(&mut client, messages(m, &bytes, 150_000, CHUNK, true))
            .await
            .expect("resume after a restart");
        assert!(response.checksum_verified);
        assert_downloads(&mut client, &kept, &bytes).await;
    })
    .await;
    server.stop().await;

    // Restart with a 1 s expiry once the interrupted upload is older than that: the startup
    // sweep removes its bytes and its row; the complete file stays.
    tokio::time::sleep_until((cut_at + Duration::from_millis(1500)).into()).await;
    let server = TestServer::start_at(home.clone(), |config| {
        config.upload_expiry_secs = 1;
        config.upload_sweep_secs = 1;
    })
    .await;
    within(60, "sweeps", async {
        let mut client = server.client().await;
        eventually(
            "the startup sweep to remove the expired upload",
            Duration::from_secs(10),
            async || only_file(&home, &kept).await,
        )
        .await;
        expect_code(
            "status of a swept upload",
            status(&mut client, &expiring).await,
            Code::NotFound,
        );

        // A new interrupted upload expires through the periodic sweep.
        let m = meta("s", size as i64, &sum, &swept);
        cut_off(&server.url(), &mut client, &home, &m, &bytes, 100_000).await;
        eventually(
            "the periodic sweep to remove an expired upload",
            Duration::from_secs(15),
            async || match status(&mut client, &swept).await {
                Err(s) if s.code() == Code::NotFound => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
        eventually(
            "the periodic sweep to remove its bytes",
            Duration::from_secs(5),
            async || only_file(&home, &kept).await,
        )
        .await;
        assert_downloads(&mut client, &kept, &bytes).await;
        // A swept id can be uploaded afresh.
        let response = upload_ok(&mut client, meta("s", size as i64, &sum, &swept), &bytes).await;
        assert_eq!(response.file_id, swept);
    })
    .await;
    server.stop().await;
}

/// The storage directory holds exactly one file, `<storage>/<id>`, and the table one row, its.
async fn only_file(home: &Home, id: &str) -> Result<(), String> {
    let files = regular_files(&home.storage_dir());
    let rows = file_rows(home).await;
    let expected = home.storage_dir().join(id);
    if files.len() == 1 && files[0].0 == expected && rows.len() == 1 && rows[0].file_id == id {
        Ok(())
    } else {
        Err(format!("files {files:?}, rows {rows:?}"))
    }
}

store_tests!(cancelled_one_shot_uploads_keep_nothing_even_with_every_byte_sent);
/// A client that goes away in the middle of a one-shot upload (no file_id), or after sending
/// every byte but before half-closing, leaves nothing: without a half-close the upload is not
/// finished, and nobody could ever learn a server-assigned id. Repeated, because the server sees
/// the cancel and the end of the call on different tasks.
async fn cancelled_one_shot_uploads_keep_nothing_even_with_every_byte_sent(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let home = server.home();
    let storage = home.storage_dir();
    within(120, "cancelled uploads", async {
        let client = server.client().await;
        let size = 100_000;
        for i in 0..30u64 {
            let bytes = data(200 + i, size);
            let m = meta("cancelled", size as i64, &sha256_hex(&bytes), "");
            let upto = if i % 3 == 2 { size / 2 } else { size };
            let (tx, call) = channel_upload(&client, 8);
            for msg in messages(m, &bytes[..upto], 0, CHUNK, true) {
                tx.send(msg).await.expect("the call takes chunks");
            }
            eventually(
                &format!("#{i}: the server to hold {upto} bytes"),
                Duration::from_secs(5),
                async || {
                    let files = regular_files(&storage);
                    if files.iter().any(|(_, len)| *len == upto as u64) {
                        Ok(())
                    } else {
                        Err(format!("{files:?}"))
                    }
                },
            )
            .await;
            call.abort();
            assert!(call.await.expect_err("aborted").is_cancelled());
            assert_nothing_kept(
                &home,
                &format!("#{i}: a one-shot upload cancelled after {upto} of {size} bytes"),
            )
            .await;
            drop(tx);
        }
    })
    .await;
    server.stop().await;
}

/// Adds `n` interrupted resumable uploads (fresh, so no sweep expires them, and holding no
/// bytes) straight to the `files` table of a stopped server: a store with many pending uploads,
/// which makes each sweep's pass over the table take a while. The same rows on either store.
async fn seed_pending_uploads(home: &Home, n: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    match &home.db {
        Some(db) => {
            let mut conn = db.connect().await;
            sqlx::query(
                "INSERT INTO files (file_id, filename, content_type, total_size, checksum, \
                 resumable, bytes_received, complete, created_at_micros, updated_at_micros) \
                 SELECT '00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'), 'pending', \
                 'application/octet-stream', 1000, '', TRUE, 0, FALSE, $2, $2 \
                 FROM generate_series(1::bigint, $1) AS i",
            )
            .bind(n as i64)
            .bind(now)
            .execute(&mut conn)
            .await
            .expect("seed pending uploads");
            let _ = conn.close().await;
        }
        None => {
            let mut conn = SqliteConnectOptions::new()
                .filename(home.dir.path().join("streamhub.db"))
                .connect()
                .await
                .expect("open the database");
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
                 INSERT INTO files (file_id, filename, content_type, total_size, checksum, \
                 resumable, bytes_received, complete, created_at_micros, updated_at_micros) \
                 SELECT printf('00000000-0000-4000-8000-%012x', i), 'pending', \
                 'application/octet-stream', 1000, '', 1, 0, 0, ?2, ?2 FROM n",
            )
            .bind(n as i64)
            .bind(now)
            .execute(&mut conn)
            .await
            .expect("seed pending uploads");
            let _ = conn.close().await;
        }
    }
}

store_tests!(uploads_during_periodic_sweeps_are_never_lost);
/// The periodic sweep runs (every second here, over a table with 20 000 pending uploads) while
/// many small uploads start and finish: it must never take the part of an upload in progress or
/// the file of one being committed. Every upload succeeds, and every acknowledged file downloads
/// afterwards.
async fn uploads_during_periodic_sweeps_are_never_lost(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    let home = server.home();
    server.stop().await;
    seed_pending_uploads(&home, 20_000).await;
    let server = TestServer::start_at(home.clone(), |config| config.upload_sweep_secs = 1).await;
    let storage = home.storage_dir();
    // The server answers once its startup sweep has examined all 20 000 rows (it sweeps before
    // it serves), which takes long on a loaded machine. Wait for that first, so that the
    // uploads below run during the periodic sweeps this test is about, and so that the time it
    // takes is not counted against their deadline.
    let mut probe = server.client().await;
    let answer = within(300, "the startup sweep of 20 000 pending uploads", async {
        status(&mut probe, &new_id()).await
    })
    .await;
    expect_code("status of an unknown id", answer, Code::NotFound);
    let acked: Arc<Mutex<Vec<(String, u64, usize)>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let until = Instant::now() + Duration::from_millis(4500);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let mut client = server.client().await;
        let (acked, failed) = (acked.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0u64.. {
                if Instant::now() >= until {
                    return;
                }
                let seed = (t << 32) | n;
                let size = [1000, 1, 20_000, 70_000][(n % 4) as usize];
                let bytes = data(seed, size);
                // Half resumable (a client id), half one-shot.
                let id = if n % 2 == 0 { new_id() } else { String::new() };
                let m = meta("sweep", size as i64, &sha256_hex(&bytes), &id);
                match upload(&mut client, messages(m, &bytes, 0, CHUNK, false)).await {
                    Ok(r) => acked.lock().unwrap().push((r.file_id, seed, size)),
                    Err(s) => failed.lock().unwrap().push(format!("#{t}/{n}: {s:?}")),
                }
            }
        }));
    }
    within(60, "uploads during sweeps", async {
        for task in tasks {
            task.await.expect("uploader");
        }
    })
    .await;
    let acked = acked.lock().unwrap().clone();
    let failed = failed.lock().unwrap().clone();
    within(120, "verify after the sweeps", async {
        let mut client = server.client().await;
        let mut lost = Vec::new();
        for (id, seed, size) in &acked {
            let expected = data(*seed, *size);
            match download(&mut client, id, 0).await {
                Ok(got) if got.bytes == expected => {}
                Ok(got) => lost.push(format!("{id}: {} bytes differ", got.bytes.len())),
                Err(s) => lost.push(format!(
                    "{id}: {s:?}; on disk: {}",
                    storage.join(id).exists()
                )),
            }
        }
        eprintln!(
            "{} uploads acknowledged, {} failed, {} acknowledged files lost",
            acked.len(),
            failed.len(),
            lost.len()
        );
        assert!(
            failed.is_empty() && lost.is_empty(),
            "while sweeps ran, {} of {} acknowledged files were lost, e.g. {:#?}; and {} uploads \
             failed, e.g. {:#?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)],
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    })
    .await;
    server.stop().await;
}

store_tests!(graceful_stop_right_after_an_interruption_keeps_its_bytes);
/// A graceful stop that comes right after a client went away from a resumable upload keeps
/// what the interrupted upload received: after the restart GetUploadStatus reports the same bytes
/// as just before the stop, and resuming from there completes.
async fn graceful_stop_right_after_an_interruption_keeps_its_bytes(kind: StoreKind) {
    let size = 400_000;
    let cut = 250_000;
    let bytes = data(97, size);
    let sum = sha256_hex(&bytes);
    let id = new_id();
    let m = meta("stop", size as i64, &sum, &id);
    let server = TestServer::start_on(kind, |_| {}).await;
    let home = server.home();
    let storage = home.storage_dir();
    within(30, "cut off", async {
        let mut client = server.client().await;
        cut_off_unsettled(&server.url(), &mut client, &storage, &m, &bytes, cut).await;
    })
    .await;
    within(30, "stop", server.stop()).await;
    let server = TestServer::start_at(home, |_| {}).await;
    within(30, "after the restart", async {
        let mut client = server.client().await;
        let s = status(&mut client, &id)
            .await
            .expect("status after restart");
        assert_eq!(
            (s.bytes_received, s.complete),
            (cut as i64, false),
            "GetUploadStatus reported {cut} bytes before the stop"
        );
        let response = upload(&mut client, messages(m.clone(), &bytes, cut, CHUNK, true))
            .await
            .expect("resume after the restart");
        assert!(response.checksum_verified);
        assert_downloads(&mut client, &id, &bytes).await;
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Crash safety
// ---------------------------------------------------------------------------------------------

/// One upload the crash test started.
#[derive(Debug, Clone)]
struct Attempt {
    /// The client-chosen id of a resumable upload; empty for a server-assigned one.
    client_id: String,
    filename: String,
    seed: u64,
    size: usize,
    declared: String,
    sum: String,
}

impl Attempt {
    fn meta(&self) -> FileMetadata {
        meta(
            &self.filename,
            self.size as i64,
            &self.declared,
            &self.client_id,
        )
    }

    fn bytes(&self) -> Vec<u8> {
        data(self.seed, self.size)
    }
}

store_tests!(crash_kill9_during_uploads_keeps_every_acknowledged_file);
/// Concurrent uploads (whole ones, resumable ones, and two held open half-way) to a built
/// server binary killed with SIGKILL. After a restart on the same directory: every upload that
/// was answered OK downloads and verifies; every complete row has its file and every stored file
/// its complete row; no temp file of a one-shot upload is left; and every interrupted resumable
/// upload resumes from the bytes the server reports and verifies.
async fn crash_kill9_during_uploads_keeps_every_acknowledged_file(kind: StoreKind) {
    const SIZES: [usize; 7] = [0, 1, 10_000, 65_537, 300_000, 1_000_000, 2_500_000];
    let home = kind.home().await;
    let storage = home.storage_dir();
    let child = ChildServer::spawn_at(&home, &[]);
    let url = child.url();

    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let acked: Arc<Mutex<Vec<(String, Attempt)>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let mut client = connect(&url).await;
        let (attempts, acked, unexpected, killed) = (
            attempts.clone(),
            acked.clone(),
            unexpected.clone(),
            killed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for n in 0u64.. {
                let size = SIZES[((t * 3 + n) % SIZES.len() as u64) as usize];
                let seed = (t << 32) | n;
                let bytes = data(seed, size);
                let sum = sha256_hex(&bytes);
                let attempt = Attempt {
                    client_id: if (t + n) % 2 == 0 {
                        new_id()
                    } else {
                        String::new()
                    },
                    filename: format!("crash-{t}-{n}"),
                    seed,
                    size,
                    declared: if n % 3 == 0 {
                        String::new()
                    } else {
                        sum.clone()
                    },
                    sum,
                };
                attempts.lock().unwrap().push(attempt.clone());
                match upload(
                    &mut client,
                    messages(
                        attempt.meta(),
                        &bytes,
                        0,
                        CHUNK,
                        !attempt.client_id.is_empty(),
                    ),
                )
                .await
                {
                    Ok(response) => {
                        assert_eq!(response.bytes_uploaded, size as i64);
                        if !attempt.client_id.is_empty() {
                            assert_eq!(response.file_id, attempt.client_id);
                        }
                        acked.lock().unwrap().push((response.file_id, attempt));
                    }
                    Err(status) => {
                        if !killed.load(Ordering::SeqCst) {
                            unexpected
                                .lock()
                                .unwrap()
                                .push(format!("{attempt:?}: {status:?}"));
                        }
                        return;
                    }
                }
            }
        }));
    }
    // Two uploads held open half-way until the kill: one resumable, one not.
    let mut held = Vec::new();
    for (k, resumable) in [(0u64, true), (1, false)] {
        let size = 1_000_000;
        let seed = 0xDEAD_0000 + k;
        let bytes = data(seed, size);
        let sum = sha256_hex(&bytes);
        let attempt = Attempt {
            client_id: if resumable { new_id() } else { String::new() },
            filename: format!("held-{k}"),
            seed,
            size,
            declared: sum.clone(),
            sum,
        };
        attempts.lock().unwrap().push(attempt.clone());
        let client = connect(&url).await;
        let (tx, call) = channel_upload(&client, 4);
        for msg in messages(attempt.meta(), &bytes[..size / 2], 0, CHUNK, true) {
            tx.send(msg).await.expect("the held call takes chunks");
        }
        held.push((tx, call));
    }

    wait_until_acked(&acked, started).await;
    killed.store(true, Ordering::SeqCst);
    child.kill9();
    within(30, "uploaders notice the kill", async {
        for task in tasks {
            task.await.expect("uploader task");
        }
        for (tx, call) in held {
            let result = call.await.expect("held call task");
            assert!(result.is_err(), "a held upload cannot succeed: {result:?}");
            drop(tx);
        }
    })
    .await;
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "uploads failed before the kill: {unexpected:?}"
    );
    let acked = acked.lock().unwrap().clone();
    let attempts = attempts.lock().unwrap().clone();

    killed_sessions_ended(&home).await;
    let child = ChildServer::spawn_at(&home, &[]);
    let mut client = connect(&child.url()).await;
    within(180, "verify after the restart", async {
        // 1. Every upload answered OK is there and verifies.
        for (id, attempt) in &acked {
            let file = info(&mut client, id)
                .await
                .unwrap_or_else(|s| panic!("acknowledged {id} ({attempt:?}): {s:?}"));
            assert_eq!(file.total_size, attempt.size as i64);
            assert_eq!(file.checksum, attempt.sum);
            assert_eq!(file.filename, attempt.filename);
            assert_downloads(&mut client, id, &attempt.bytes()).await;
        }

        // 2. After the startup sweep: no temp file but those of interrupted resumable uploads;
        // every complete row has its file at <storage>/<id> and every stored file its row.
        let by_sum: HashMap<&str, &Attempt> =
            attempts.iter().map(|a| (a.sum.as_str(), a)).collect();
        let resumable_ids: HashSet<&str> = attempts
            .iter()
            .filter(|a| !a.client_id.is_empty())
            .map(|a| a.client_id.as_str())
            .collect();
        let rows = eventually(
            "the startup sweep to leave only whole files and resumable parts",
            Duration::from_secs(10),
            async || {
                let rows = file_rows(&home).await;
                let complete: HashMap<&str, &FileRow> = rows
                    .iter()
                    .filter(|r| r.complete)
                    .map(|r| (r.file_id.as_str(), r))
                    .collect();
                let incomplete: HashSet<&str> = rows
                    .iter()
                    .filter(|r| !r.complete)
                    .map(|r| r.file_id.as_str())
                    .collect();
                let mut problems = Vec::new();
                for row in rows.iter().filter(|r| !r.complete) {
                    if !row.resumable || !resumable_ids.contains(row.file_id.as_str()) {
                        problems.push(format!("an incomplete one-shot row {row:?}"));
                    }
                    if !(0..=row.total_size).contains(&row.bytes_received) {
                        problems.push(format!("an incomplete row out of bounds {row:?}"));
                    }
                }
                for row in complete.values() {
                    let path = storage.join(&row.file_id);
                    match std::fs::metadata(&path) {
                        Ok(m) if m.len() == row.total_size as u64 => {}
                        other => problems.push(format!("complete row {row:?}: file {other:?}")),
                    }
                }
                for (path, len) in regular_files(&storage) {
                    let name = file_name(&path);
                    if path.parent() == Some(storage.as_path()) {
                        if !complete.contains_key(name.as_str()) {
                            problems.push(format!("{path:?} ({len} B) has no complete row"));
                        }
                    } else if !incomplete.iter().any(|id| name.contains(id)) {
                        problems.push(format!(
                            "leftover temp file {path:?} ({len} B) of no interrupted resumable \
                             upload"
                        ));
                    }
                }
                if problems.is_empty() {
                    Ok(rows)
                } else {
                    Err(format!("{problems:#?}"))
                }
            },
        )
        .await;

        // 3. Complete rows nobody was told about (the crash came between commit and answer)
        // hold whole, verified uploads too.
        let acked_ids: HashSet<&str> = acked.iter().map(|(id, _)| id.as_str()).collect();
        let mut unacked_complete = 0;
        for row in rows.iter().filter(|r| r.complete) {
            if acked_ids.contains(row.file_id.as_str()) {
                continue;
            }
            unacked_complete += 1;
            let attempt = by_sum
                .get(row.checksum.as_str())
                .unwrap_or_else(|| panic!("complete row {row:?} matches no upload"));
            assert_downloads(&mut client, &row.file_id, &attempt.bytes()).await;
        }

        // 4. Every interrupted resumable upload resumes from the bytes the server reports.
        let mut resumed = 0;
        for attempt in attempts.iter().filter(|a| !a.client_id.is_empty()) {
            let id = &attempt.client_id;
            if acked_ids.contains(id.as_str()) {
                continue;
            }
            let s = match status(&mut client, id).await {
                Err(s) if s.code() == Code::NotFound => continue, // never started, or nothing kept
                Err(s) => panic!("status of {id}: {s:?}"),
                Ok(s) => s,
            };
            let bytes = attempt.bytes();
            if s.complete {
                assert_downloads(&mut client, id, &bytes).await;
                continue;
            }
            assert_eq!(s.total_size, attempt.size as i64);
            assert!(
                (0..=attempt.size as i64).contains(&s.bytes_received),
                "{s:?}"
            );
            let from = s.bytes_received as usize;
            let response = upload(
                &mut client,
                messages(attempt.meta(), &bytes, from, CHUNK, true),
            )
            .await
            .unwrap_or_else(|e| panic!("resume {id} from {from} after the crash: {e:?}"));
            assert_eq!(response.checksum_verified, !attempt.declared.is_empty());
            assert_downloads(&mut client, id, &bytes).await;
            resumed += 1;
        }
        eprintln!(
            "killed after {} acknowledged uploads of {} started; {unacked_complete} complete but \
             unacknowledged; {resumed} resumed after the restart",
            acked.len(),
            attempts.len()
        );
    })
    .await;
    drop(client);
    drop(child);
}

/// On PostgreSQL, waits until the database has no session left but the caller's: those of a
/// server killed with SIGKILL end once PostgreSQL sees their sockets close, and with them the
/// upload claims they held (session advisory locks). Until then the next server's startup sweep
/// rightly leaves those uploads alone, as another replica's. Nothing to wait for on SQLite,
/// whose single-server lock the OS drops with the process.
async fn killed_sessions_ended(home: &Home) {
    let Some(db) = &home.db else {
        return;
    };
    let mut conn = db.connect().await;
    eventually(
        "the killed server's PostgreSQL sessions to end",
        Duration::from_secs(30),
        async || {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut conn)
            .await
            .expect("read pg_stat_activity");
            match left {
                0 => Ok(()),
                n => Err(format!("{n} sessions")),
            }
        },
    )
    .await;
    let _ = conn.close().await;
}

async fn wait_until_acked(acked: &Mutex<Vec<(String, Attempt)>>, started: Instant) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = acked.lock().unwrap().len();
        if n >= 12 && started.elapsed() >= Duration::from_secs(1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} uploads acknowledged in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

store_tests!(crash_between_rename_and_row_update_leaves_a_whole_file_or_a_truthful_status);
/// The state a crash leaves between the commit's rename and the row update: the whole file is
/// in place under its id while its row is still incomplete. The test builds that state on a
/// stopped server (the part moved into place as `<storage>/<id>`), once for an upload that was
/// interrupted and resumed before, once for one on its first try. After a restart the server
/// must tell the truth: either a complete, verified file with its row, or no file, and then
/// GetUploadStatus reports bytes the server really holds, so that a client resuming from there
/// (offsets set) finishes with a verified file.
async fn crash_between_rename_and_row_update_leaves_a_whole_file_or_a_truthful_status(
    kind: StoreKind,
) {
    let size = 300_000;
    let bytes = data(95, size);
    let sum = sha256_hex(&bytes);
    let (resumed, first_try) = (new_id(), new_id());
    let server = TestServer::start_on(kind, |_| {}).await;
    let home = server.home();
    let storage = home.storage_dir();
    within(60, "before the crash", async {
        let mut client = server.client().await;
        for (id, cut) in [(&resumed, 120_000), (&first_try, 0)] {
            let m = meta("torn", size as i64, &sum, id);
            cut_off(&server.url(), &mut client, &home, &m, &bytes, cut).await;
        }
    })
    .await;
    server.stop().await;
    for id in [&resumed, &first_try] {
        for (path, _) in regular_files(&storage.join("tmp")) {
            if file_name(&path).contains(id.as_str()) {
                std::fs::remove_file(&path).expect("remove the part");
            }
        }
        std::fs::write(storage.join(id), &bytes).expect("the renamed, whole file");
    }

    let server = TestServer::start_at(home, |_| {}).await;
    within(60, "after the crash", async {
        let mut client = server.client().await;
        for id in [&resumed, &first_try] {
            match status(&mut client, id).await {
                Ok(s) if s.complete => {
                    assert_eq!(s.bytes_received, size as i64);
                    assert_downloads(&mut client, id, &bytes).await;
                }
                Ok(s) => {
                    eventually(
                        &format!("{id}: no whole file for an incomplete row"),
                        Duration::from_secs(5),
                        async || match storage.join(id).exists() {
                            false => Ok(()),
                            true => Err("the file is still in place".into()),
                        },
                    )
                    .await;
                    let from = s.bytes_received as usize;
                    let m = meta("torn", size as i64, &sum, id);
                    let response = upload(&mut client, messages(m, &bytes, from, CHUNK, true))
                        .await
                        .unwrap_or_else(|e| {
                            panic!(
                                "{id}: GetUploadStatus reported {from} bytes after the crash, \
                                 but resuming from there fails: {e:?}"
                            )
                        });
                    assert!(response.checksum_verified);
                    assert_downloads(&mut client, id, &bytes).await;
                }
                Err(e) if e.code() == Code::NotFound => {
                    let left: Vec<_> = regular_files(&storage)
                        .into_iter()
                        .filter(|(p, _)| file_name(p).contains(id.as_str()))
                        .collect();
                    assert!(left.is_empty(), "{id}: no row, but {left:?}");
                    let m = meta("torn", size as i64, &sum, id);
                    upload_ok(&mut client, m, &bytes).await;
                    assert_downloads(&mut client, id, &bytes).await;
                }
                Err(e) => panic!("{id}: {e:?}"),
            }
        }
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Bounded memory (the slow one)
// ---------------------------------------------------------------------------------------------

/// VmRSS and VmHWM of a process, in bytes.
fn proc_memory(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Samples a process's VmRSS every 5 ms on a thread of its own and keeps the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(proc_memory(pid).0, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The peak since the last call, and a fresh start.
    fn take_peak(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

store_tests!(slow_1gib_upload_and_download_keep_server_rss_under_128mib);
/// The slow test: 1 GiB up and down through a built server binary, generated and hashed on the
/// fly on the client side, with the server's resident memory sampled from /proc throughout.
/// The bound: peak RSS (sampled, and the kernel's VmHWM high-water mark) stays under 128 MiB
/// above the RSS measured just before the upload.
async fn slow_1gib_upload_and_download_keep_server_rss_under_128mib(kind: StoreKind) {
    const SIZE: u64 = 1 << 30;
    // Memory bound. Expected: the server streams through bounded buffers and grows by about
    // 4 MiB over its baseline while 1 GiB goes up and down (measured: 58.5 MiB before, 62.5 MiB
    // peak; debug build, under load). The bound is 128 MiB, over 4x (32x) that, so allocator
    // noise never fails it, while a server holding any large part of the file in memory does.
    const BOUND: u64 = 128 * MIB as u64;
    let home = kind.home().await;
    let child = ChildServer::spawn_at(&home, &[]);
    let pid = child.child.id();
    let mut client = connect(&child.url()).await;

    within(900, "1 GiB up and down", async {
        // Warm up the upload and download paths, so the baseline is a server that has done both.
        let warm = data(1, 3 * MIB);
        let id = upload_ok(&mut client, meta("warm", warm.len() as i64, "", ""), &warm)
            .await
            .file_id;
        assert_downloads(&mut client, &id, &warm).await;
        let (baseline, _) = proc_memory(pid);
        let sampler = RssSampler::start(pid);

        // Upload: a producer generates, hashes and sends 64 KiB chunks through a small channel.
        let started = Instant::now();
        let (tx, call) = channel_upload(&client, 8);
        let sent = Arc::new(AtomicUsize::new(0));
        let producer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut generator = XorShift::new(0x1_0000_0000);
                let mut hasher = Sha256::new();
                tx.send(metadata_msg(meta("big.bin", SIZE as i64, "", "")))
                    .await
                    .expect("metadata");
                let mut left = SIZE as usize;
                while left > 0 {
                    let mut buf = vec![0; left.min(CHUNK)];
                    generator.fill(&mut buf);
                    hasher.update(&buf);
                    left -= buf.len();
                    sent.fetch_add(buf.len(), Ordering::Relaxed);
                    if tx.send(chunk_msg(&buf, 0)).await.is_err() {
                        break;
                    }
                }
                format!("{:x}", hasher.finalize())
            })
        };
        let response = call.await.expect("upload task").unwrap_or_else(|s| {
            panic!(
                "1 GiB upload failed after {} bytes: {s:?}",
                sent.load(Ordering::Relaxed)
            )
        });
        let sum = producer.await.expect("producer");
        let upload_time = started.elapsed();
        let upload_peak = sampler.take_peak();
        assert_eq!(response.bytes_uploaded, SIZE as i64);
        assert!(!response.checksum_verified);
        let file = info(&mut client, &response.file_id).await.expect("info");
        assert_eq!(file.checksum, sum, "the server's SHA-256 of 1 GiB");
        assert_eq!(file.total_size, SIZE as i64);

        // Download over gRPC, hashed on the fly.
        let started = Instant::now();
        let mut stream = client
            .download_file(DownloadFileRequest {
                file_id: response.file_id.clone(),
                offset: 0,
            })
            .await
            .expect("download")
            .into_inner();
        match stream.message().await.expect("first message") {
            Some(FileChunk {
                data: Some(Data::Metadata(m)),
                ..
            }) => assert_eq!(m, file),
            other => panic!("the first message must be metadata, got {other:?}"),
        }
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        while let Some(msg) = stream.message().await.expect("download chunk") {
            let Some(Data::Chunk(c)) = msg.data else {
                panic!("a download message that is not a chunk");
            };
            assert!(c.len() <= CHUNK);
            assert_eq!(msg.offset as u64, received);
            received += c.len() as u64;
            hasher.update(&c);
        }
        let download_time = started.elapsed();
        let download_peak = sampler.take_peak();
        drop(sampler);
        assert_eq!(received, SIZE);
        assert_eq!(
            format!("{:x}", hasher.finalize()),
            sum,
            "downloaded SHA-256"
        );

        let (_, hwm) = proc_memory(pid);
        let mb = |b: u64| b as f64 / MIB as f64;
        let rate = |d: Duration| SIZE as f64 / MIB as f64 / d.as_secs_f64();
        eprintln!(
            "1 GiB: upload {upload_time:?} ({:.0} MiB/s), download {download_time:?} ({:.0} \
             MiB/s); server RSS before {:.1} MiB, peak during upload {:.1} MiB, during download \
             {:.1} MiB, VmHWM {:.1} MiB; bound {:.0} MiB above before",
            rate(upload_time),
            rate(download_time),
            mb(baseline),
            mb(upload_peak),
            mb(download_peak),
            mb(hwm),
            mb(BOUND)
        );
        for (what, peak) in [
            ("upload", upload_peak),
            ("download", download_peak),
            ("VmHWM", hwm),
        ] {
            assert!(
                peak.saturating_sub(baseline) < BOUND,
                "{what}: server RSS peaked at {:.1} MiB, {:.1} MiB above the {:.1} MiB before",
                mb(peak),
                mb(peak.saturating_sub(baseline)),
                mb(baseline)
            );
        }
    })
    .await;
    drop(client);
    drop(child);
}
