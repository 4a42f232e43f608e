//! Files between tenants, against the real server with auth on: a file belongs to the user who
//! uploaded it (others get NOT_FOUND, or ALREADY_EXISTS for its id, whatever its state), service
//! tokens reach everything, GetFileInfo hands out a fresh signed download URL (renewing one that
//! expired, which answers 403), storage quotas hold per user at N and N+1 bytes, an idle upload
//! ends with DEADLINE_EXCEEDED keeping only its durable bytes reserved, a checksum mismatch keeps
//! nothing, and stalled transfers (600 uploads that send nothing, 300 downloads nobody reads) do
//! not slow another client's round trip.
mod common;

use common::{StoreKind, TestServer, http_get, poll_until, store_tests, wait_for_metrics, within};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use streamhub::auth::{Role, mint_hs256};
use streamhub::proto::file_chunk::Data;
use streamhub::proto::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use uuid::Uuid;

const SECRET: &str = "an hs256 secret of at least 32 bytes, for tests";
const CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type Client = common::AuthClient;

async fn client_for(addr: SocketAddr, token: Option<String>) -> Client {
    match token {
        Some(token) => common::client_as(addr, &token).await,
        None => common::client_with_header(addr, None).await,
    }
}

fn token(sub: &str, role: Role) -> String {
    mint_hs256(SECRET.as_bytes(), sub, role, Duration::from_secs(600), None).unwrap()
}

async fn user(addr: SocketAddr, sub: &str) -> Client {
    client_for(addr, Some(token(sub, Role::User))).await
}

async fn service(addr: SocketAddr) -> Client {
    client_for(addr, Some(token("backend", Role::Service))).await
}

async fn auth_server(adjust: impl FnOnce(&mut streamhub::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
        adjust(c);
    })
    .await
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + seed as u64 * 7 % 251) as u8)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn meta(total_size: usize, checksum: &str, file_id: &str) -> FileChunk {
    FileChunk {
        offset: 0,
        data: Some(Data::Metadata(FileMetadata {
            filename: "t.bin".into(),
            total_size: total_size as i64,
            checksum: checksum.into(),
            file_id: file_id.into(),
            ..Default::default()
        })),
    }
}

/// The chunks of `bytes[from..]`, each carrying its offset.
fn chunks(bytes: &[u8], from: usize) -> Vec<FileChunk> {
    bytes[from..]
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| FileChunk {
            offset: (from + i * CHUNK) as i64,
            data: Some(Data::Chunk(c.to_vec())),
        })
        .collect()
}

/// A whole upload: metadata, then `bytes[from..]`.
async fn upload_from(
    client: &mut Client,
    bytes: &[u8],
    checksum: &str,
    file_id: &str,
    from: usize,
) -> Result<UploadFileResponse, Status> {
    let mut msgs = vec![meta(bytes.len(), checksum, file_id)];
    msgs.extend(chunks(bytes, from));
    client
        .upload_file(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

async fn upload(client: &mut Client, bytes: &[u8]) -> UploadFileResponse {
    upload_from(client, bytes, &sha256_hex(bytes), "", 0)
        .await
        .expect("upload")
}

/// Asks whether `size` more bytes fit the caller's quota without storing anything: a one-shot
/// upload that sends its metadata and half-closes. It fits when the answer is INVALID_ARGUMENT
/// (the stream ended early; nothing kept), and does not when it is RESOURCE_EXHAUSTED.
async fn fits(client: &mut Client, size: usize) -> bool {
    let answer = client
        .upload_file(tokio_stream::iter(vec![meta(size, "", "")]))
        .await;
    match answer {
        Err(s) if s.code() == Code::InvalidArgument => true,
        Err(s) if s.code() == Code::ResourceExhausted => false,
        other => panic!("quota probe of {size} bytes: {other:?}"),
    }
}

/// An upload fed by a channel, for calls that stay open.
fn open_upload(
    client: &Client,
) -> (
    mpsc::Sender<FileChunk>,
    JoinHandle<Result<UploadFileResponse, Status>>,
) {
    let (tx, rx) = mpsc::channel(64);
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .upload_file(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner())
    });
    (tx, call)
}

async fn status(client: &mut Client, id: &str) -> Result<GetUploadStatusResponse, Status> {
    client
        .get_upload_status(GetUploadStatusRequest { file_id: id.into() })
        .await
        .map(|r| r.into_inner())
}

async fn info(client: &mut Client, id: &str) -> Result<FileMetadata, Status> {
    client
        .get_file_info(GetFileInfoRequest { file_id: id.into() })
        .await
        .map(|r| r.into_inner())
}

/// DownloadFile read to the end: the bytes.
async fn download(client: &mut Client, id: &str) -> Result<Vec<u8>, Status> {
    let mut stream = client
        .download_file(DownloadFileRequest {
            file_id: id.into(),
            offset: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.next().await {
        if let Some(Data::Chunk(bytes)) = message?.data {
            out.extend_from_slice(&bytes);
        }
    }
    Ok(out)
}

#[track_caller]
fn expect_status<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got OK: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

/// Status until it is the row's (no call holds the upload) and shows `bytes`.
async fn wait_for_kept(client: &mut Client, id: &str, bytes: usize) {
    poll_until(
        &format!("upload {id} interrupted with {bytes} bytes"),
        Duration::from_secs(15),
        || {
            let mut client = client.clone();
            async move {
                match status(&mut client, id).await {
                    Ok(s) if s.bytes_received == bytes as i64 && !s.complete => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

/// Resumes, retrying while the server still holds the interrupted call (ABORTED).
async fn resume(
    client: &mut Client,
    bytes: &[u8],
    checksum: &str,
    id: &str,
    from: usize,
) -> Result<UploadFileResponse, Status> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match upload_from(client, bytes, checksum, id, from).await {
            Err(s) if s.code() == Code::Aborted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other,
        }
    }
}

/// Sends `bytes[..cut]` of a resumable upload, waits until the server holds them, and cuts
/// the call off (the client resets its stream).
async fn interrupted(client: &mut Client, bytes: &[u8], checksum: &str, id: &str, cut: usize) {
    let (tx, call) = open_upload(client);
    tx.send(meta(bytes.len(), checksum, id)).await.unwrap();
    for c in chunks(&bytes[..cut], 0) {
        tx.send(c).await.unwrap();
    }
    poll_until("the first bytes arrive", Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            match status(&mut client, id).await {
                Ok(s) if s.bytes_received == cut as i64 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    call.abort();
    let _ = call.await;
    drop(tx);
}

// ---------------------------------------------------------------------------------------------
// Ownership
// ---------------------------------------------------------------------------------------------

/// Info, download and status are the owner's (and services'); anyone else gets exactly the
/// answer for an id that does not exist. An upload naming someone else's id gets ALREADY_EXISTS
/// with one message whether that upload is complete, interrupted or in progress, and continuing
/// it is for the owner and services only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_belong_to_their_uploader_and_others_cannot_probe_them() {
    let server = auth_server(|_| {}).await;
    let addr = server.addr;
    within(120, "ownership", async {
        let mut alice = user(addr, "alice").await;
        let mut bob = user(addr, "bob").await;
        let mut backend = service(addr).await;

        // Complete.
        let bytes = data(1, 150_000);
        let stored = upload(&mut alice, &bytes).await;
        let done = stored.file_id.clone();
        // Interrupted, resumable.
        let partial = data(2, 300_000);
        let partial_sum = sha256_hex(&partial);
        let cut_id = Uuid::new_v4().to_string();
        interrupted(&mut alice, &partial, &partial_sum, &cut_id, 2 * CHUNK).await;
        wait_for_kept(&mut alice, &cut_id, 2 * CHUNK).await;
        // In progress: a call holds it open.
        let running = data(3, 200_000);
        let running_id = Uuid::new_v4().to_string();
        let (running_tx, running_call) = open_upload(&alice);
        running_tx
            .send(meta(running.len(), &sha256_hex(&running), &running_id))
            .await
            .unwrap();
        running_tx
            .send(chunks(&running, 0).remove(0))
            .await
            .unwrap();
        poll_until(
            "the running upload is recorded",
            Duration::from_secs(15),
            || {
                let mut alice = alice.clone();
                let id = running_id.clone();
                async move { status(&mut alice, &id).await.map_err(|s| format!("{s:?}")) }
            },
        )
        .await;

        // The owner sees everything.
        let mine = info(&mut alice, &done).await.expect("owner's info");
        assert_eq!(mine.total_size, bytes.len() as i64);
        assert_eq!(download(&mut alice, &done).await.expect("owner"), bytes);
        let s = status(&mut alice, &cut_id).await.expect("owner's status");
        assert_eq!(
            (s.bytes_received, s.total_size),
            (2 * CHUNK as i64, 300_000)
        );

        // Bob gets what a never-used id gets, message and all.
        let unknown = Uuid::new_v4().to_string();
        let not_found = |s: Status, id: &str, of_unknown: &Status| {
            assert_eq!(s.code(), Code::NotFound, "{s:?}");
            assert_eq!(
                s.message().replace(id, "ID"),
                of_unknown.message().replace(&unknown, "ID"),
                "the answer for another user's file must not differ from an unknown id's"
            );
        };
        let info_unknown = expect_status(
            "info, unknown",
            info(&mut bob, &unknown).await,
            Code::NotFound,
        );
        let download_unknown = expect_status(
            "download, unknown",
            download(&mut bob, &unknown).await,
            Code::NotFound,
        );
        let status_unknown = expect_status(
            "status, unknown",
            status(&mut bob, &unknown).await,
            Code::NotFound,
        );
        not_found(
            info(&mut bob, &done).await.unwrap_err(),
            &done,
            &info_unknown,
        );
        not_found(
            download(&mut bob, &done).await.unwrap_err(),
            &done,
            &download_unknown,
        );
        for id in [&done, &cut_id, &running_id] {
            not_found(status(&mut bob, id).await.unwrap_err(), id, &status_unknown);
        }

        // Bob naming alice's ids: ALREADY_EXISTS, one message for every state.
        let mut messages = Vec::new();
        for (what, id) in [
            ("complete", &done),
            ("interrupted", &cut_id),
            ("in progress", &running_id),
        ] {
            let answer = upload_from(&mut bob, &partial, &partial_sum, id, 0).await;
            let s = expect_status(
                &format!("bob reuses a {what} id"),
                answer,
                Code::AlreadyExists,
            );
            messages.push(s.message().replace(id.as_str(), "ID"));
        }
        assert!(
            messages.iter().all(|m| *m == messages[0]),
            "the state leaks through the message: {messages:?}"
        );
        // Bob's refused resume left alice's kept bytes alone.
        let s = status(&mut alice, &cut_id).await.unwrap();
        assert_eq!(s.bytes_received, 2 * CHUNK as i64);

        // A service reaches everything.
        assert_eq!(
            info(&mut backend, &done)
                .await
                .expect("service info")
                .file_id,
            done
        );
        assert_eq!(download(&mut backend, &done).await.expect("service"), bytes);
        assert_eq!(
            status(&mut backend, &running_id)
                .await
                .expect("service status")
                .total_size,
            200_000
        );

        // The owner resumes; the file verifies and stays hers.
        let resumed = resume(&mut alice, &partial, &partial_sum, &cut_id, 2 * CHUNK)
            .await
            .expect("owner resumes");
        assert!(resumed.checksum_verified);
        assert_eq!(download(&mut alice, &cut_id).await.unwrap(), partial);
        expect_status(
            "bob, resumed file",
            info(&mut bob, &cut_id).await,
            Code::NotFound,
        );

        // A service may continue a user's interrupted upload too.
        let third = data(4, 200_000);
        let third_sum = sha256_hex(&third);
        let third_id = Uuid::new_v4().to_string();
        interrupted(&mut alice, &third, &third_sum, &third_id, CHUNK).await;
        wait_for_kept(&mut alice, &third_id, CHUNK).await;
        resume(&mut backend, &third, &third_sum, &third_id, CHUNK)
            .await
            .expect("service resumes");
        assert_eq!(download(&mut alice, &third_id).await.unwrap(), third);

        drop(running_tx);
        let _ = running_call.await;
    })
    .await;
}

/// GetFileInfo carries a fresh signed URL for the owner and for services, and it works over
/// plain HTTP; with auth off it is the plain URL UploadFile returns.
#[tokio::test]
async fn file_info_carries_a_working_download_url() {
    let server = auth_server(|_| {}).await;
    let addr = server.addr;
    within(60, "download url", async {
        let mut alice = user(addr, "alice").await;
        let mut backend = service(addr).await;
        let bytes = b"shared by link".to_vec();
        let stored = upload(&mut alice, &bytes).await;
        for client in [&mut alice, &mut backend] {
            let url = info(client, &stored.file_id).await.unwrap().download_url;
            assert!(url.contains("sig="), "a signed URL: {url}");
            let path = url
                .strip_prefix(&format!("http://{addr}"))
                .expect("on this server");
            let (code, body) = http_get(addr, path).await;
            assert_eq!((code, body.as_bytes()), (200, bytes.as_slice()), "{url}");
        }
        let unsigned = format!("/files/{}", stored.file_id);
        assert_eq!(http_get(addr, &unsigned).await.0, 403);
    })
    .await;
    drop(server);

    let open = TestServer::start().await;
    within(60, "download url, auth off", async {
        let mut anyone = client_for(open.addr, None).await;
        let stored = upload(&mut anyone, b"open").await;
        let url = info(&mut anyone, &stored.file_id)
            .await
            .unwrap()
            .download_url;
        assert_eq!(url, stored.download_url);
        assert!(!url.contains('?'), "{url}");
    })
    .await;
}

store_tests!(an_expired_download_link_is_refused_and_file_info_renews_it);

/// The `expires` of a signed download URL (unix seconds).
fn expires_of(url: &str) -> u64 {
    url.split(['?', '&'])
        .find_map(|pair| pair.strip_prefix("expires="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no expires in {url}"))
}

/// A signed download URL stops working once --download-url-ttl-secs have passed: 403, saying
/// it expired. GetFileInfo then gives the owner a fresh URL that works, and the old one stays
/// refused.
async fn an_expired_download_link_is_refused_and_file_info_renews_it(kind: StoreKind) {
    // Small, so that the link expires within a few seconds, yet enough for a fresh link to be
    // used well before it does (a link is good for at least the TTL: whole seconds, refused
    // only once the clock is past `expires`).
    const TTL_SECS: u64 = 3;
    let server = TestServer::start_on(kind, |c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
        c.download_url_ttl_secs = TTL_SECS;
    })
    .await;
    let addr = server.addr;
    within(60, "expired download url", async {
        let mut alice = user(addr, "alice").await;
        let bytes = b"shared by a link that expires".to_vec();
        let stored = upload(&mut alice, &bytes).await;
        let old = stored.download_url.clone();
        assert!(old.contains("sig="), "a signed URL: {old}");
        let old_path = old
            .strip_prefix(&format!("http://{addr}"))
            .expect("on this server")
            .to_string();

        // Until it expires it serves the file; then it answers 403. Any other answer fails.
        let refusal = poll_until(
            "the upload's link expires",
            Duration::from_secs(TTL_SECS + 30),
            || {
                let (path, bytes) = (old_path.clone(), bytes.clone());
                async move {
                    match http_get(addr, &path).await {
                        (403, body) => Ok(body),
                        (200, body) => {
                            assert_eq!(body.as_bytes(), bytes.as_slice(), "{path}");
                            Err("200: still valid".to_string())
                        }
                        (code, body) => panic!("{path}: {code} {body}"),
                    }
                }
            },
        )
        .await;
        assert_eq!(refusal, "the download URL has expired; ask for a new one\n");

        // The owner asks again and gets a fresh link, valid past the old one's expiry.
        let fresh = info(&mut alice, &stored.file_id)
            .await
            .expect("owner's info")
            .download_url;
        assert!(fresh.contains("sig="), "a signed URL: {fresh}");
        assert!(
            expires_of(&fresh) > expires_of(&old),
            "renewed: {fresh} after {old}"
        );
        let fresh_path = fresh
            .strip_prefix(&format!("http://{addr}"))
            .expect("on this server");
        let (code, body) = http_get(addr, fresh_path).await;
        assert_eq!((code, body.as_bytes()), (200, bytes.as_slice()), "{fresh}");

        // The expired link stays refused.
        assert_eq!(http_get(addr, &old_path).await.0, 403, "{old}");
    })
    .await;
}

/// Files stored with auth off (or before owners existed) have no owner: with auth on they are
/// for services only.
#[tokio::test]
async fn files_without_an_owner_are_for_services_only() {
    let open = TestServer::start().await;
    let id = within(60, "upload with auth off", async {
        let mut anyone = client_for(open.addr, None).await;
        upload(&mut anyone, b"legacy").await.file_id
    })
    .await;
    let dir = open.stop().await;
    let server = TestServer::start_in(dir, |c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
    })
    .await;
    within(60, "legacy rows", async {
        let mut alice = user(server.addr, "alice").await;
        let mut backend = service(server.addr).await;
        expect_status(
            "a user, legacy info",
            info(&mut alice, &id).await,
            Code::NotFound,
        );
        expect_status(
            "a user, legacy download",
            download(&mut alice, &id).await,
            Code::NotFound,
        );
        expect_status(
            "a user names a legacy id",
            upload_from(&mut alice, b"x", "", &id, 0).await,
            Code::AlreadyExists,
        );
        assert_eq!(download(&mut backend, &id).await.unwrap(), b"legacy");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Quotas
// ---------------------------------------------------------------------------------------------

/// A user holds at most N bytes (declared sizes, stored and in progress): exactly N fits, one
/// more byte does not, and another user is unaffected. Services count only against the global
/// quota, which applies to everyone.
#[tokio::test]
async fn per_user_storage_quota_at_n_and_n_plus_one() {
    const N: usize = 100_000;
    let server = auth_server(|c| {
        c.max_storage_bytes_per_user = N as u64;
        c.max_storage_bytes = (3 * N) as u64;
    })
    .await;
    let addr = server.addr;
    within(60, "quota", async {
        let mut alice = user(addr, "alice").await;
        let mut bob = user(addr, "bob").await;
        let mut backend = service(addr).await;

        assert!(!fits(&mut alice, N + 1).await, "N + 1 never fits");
        upload(&mut alice, &data(1, 60_000)).await;
        assert!(fits(&mut alice, N - 60_000).await);
        assert!(!fits(&mut alice, N - 60_000 + 1).await);
        upload(&mut alice, &data(2, N - 60_000)).await;
        // At N exactly: not one byte more, and the refusal happens before any byte is sent.
        let refused = expect_status(
            "alice at N, one byte more",
            upload_from(&mut alice, b"x", "", "", 0).await,
            Code::ResourceExhausted,
        );
        assert!(!refused.message().contains("bob"), "{refused:?}");
        let empty = upload(&mut alice, b"").await;
        assert_eq!(empty.bytes_uploaded, 0, "an empty file always fits");

        // Bob is unaffected.
        assert!(fits(&mut bob, N).await);
        assert!(!fits(&mut bob, N + 1).await);

        // A service is not held to the per-user quota, only to the global one (3N; alice holds
        // N): 2N fits it, 2N + 1 does not.
        assert!(fits(&mut backend, 2 * N).await);
        assert!(!fits(&mut backend, 2 * N + 1).await);
        upload(&mut backend, &data(3, 2 * N - 10)).await;
        // The global quota now leaves 10 bytes, for bob too.
        assert!(fits(&mut bob, 10).await);
        assert!(!fits(&mut bob, 11).await);
    })
    .await;
}

/// An upload that sends nothing for --transfer-idle-secs ends with DEADLINE_EXCEEDED. Its kept
/// bytes still count against the quota; the rest of its declared size is released, and it can
/// be resumed (which reserves its whole size again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upload_ends_keeps_its_bytes_and_releases_the_rest() {
    const N: usize = 1_000_000;
    let server = auth_server(|c| {
        c.max_storage_bytes_per_user = N as u64;
        c.transfer_idle_secs = 1;
    })
    .await;
    let addr = server.addr;
    within(60, "idle upload", async {
        let mut alice = user(addr, "alice").await;
        let mut bob = user(addr, "bob").await;
        let bytes = data(5, 600_000);
        let sum = sha256_hex(&bytes);
        let id = Uuid::new_v4().to_string();
        let kept = 3 * CHUNK;

        let (tx, call) = open_upload(&alice);
        tx.send(meta(bytes.len(), &sum, &id)).await.unwrap();
        for c in chunks(&bytes[..kept], 0) {
            tx.send(c).await.unwrap();
        }
        // While the call runs, the whole declared size is reserved.
        poll_until("the bytes arrive", Duration::from_secs(15), || {
            let mut alice = alice.clone();
            let id = id.clone();
            async move {
                match status(&mut alice, &id).await {
                    Ok(s) if s.bytes_received == kept as i64 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        assert!(!fits(&mut alice, N - bytes.len() + 1).await);

        // Then it sends nothing (the stream stays open) and the server ends it.
        let ended = call.await.unwrap();
        let ended = expect_status("an idle upload", ended, Code::DeadlineExceeded);
        assert!(ended.message().contains("sent nothing"), "{ended:?}");
        drop(tx);
        wait_for_kept(&mut alice, &id, kept).await;

        // Only the kept bytes still count.
        assert!(fits(&mut alice, N - kept).await);
        assert!(!fits(&mut alice, N - kept + 1).await);
        assert!(fits(&mut bob, N).await, "bob is unaffected");

        // An upload that sends nothing at all, not even metadata, ends the same way.
        let (silent_tx, silent) = open_upload(&alice);
        expect_status(
            "an upload with no metadata",
            silent.await.unwrap(),
            Code::DeadlineExceeded,
        );
        drop(silent_tx);

        // Resumable afterwards: the resume reserves the whole size again, and completes.
        let done = resume(&mut alice, &bytes, &sum, &id, kept)
            .await
            .expect("resume after going idle");
        assert!(done.checksum_verified);
        assert_eq!(download(&mut alice, &id).await.unwrap(), bytes);
        assert!(fits(&mut alice, N - bytes.len()).await);
        assert!(!fits(&mut alice, N - bytes.len() + 1).await);
    })
    .await;
}

/// A resume that no longer fits the quota is refused, and the kept bytes stay as they were.
#[tokio::test]
async fn a_resume_over_quota_is_refused_and_keeps_its_bytes() {
    const N: usize = 400_000;
    let server = auth_server(|c| c.max_storage_bytes_per_user = N as u64).await;
    within(60, "resume over quota", async {
        let mut alice = user(server.addr, "alice").await;
        let bytes = data(6, 300_000);
        let sum = sha256_hex(&bytes);
        let id = Uuid::new_v4().to_string();
        interrupted(&mut alice, &bytes, &sum, &id, CHUNK).await;
        wait_for_kept(&mut alice, &id, CHUNK).await;
        // Once the server has seen the cut, the upload reserves only its kept bytes.
        poll_until(
            "the reservation shrinks to the kept bytes",
            Duration::from_secs(15),
            || {
                let mut alice = alice.clone();
                async move {
                    if fits(&mut alice, N - CHUNK).await {
                        Ok(())
                    } else {
                        Err("N - kept does not fit yet".to_string())
                    }
                }
            },
        )
        .await;
        // Interrupted, it holds CHUNK bytes: fill the rest of the quota.
        upload(&mut alice, &data(7, N - CHUNK)).await;
        let refused = resume(&mut alice, &bytes, &sum, &id, CHUNK).await;
        expect_status("resume over quota", refused, Code::ResourceExhausted);
        let s = status(&mut alice, &id).await.expect("still there");
        assert_eq!(s.bytes_received, CHUNK as i64);
    })
    .await;
}

/// A checksum mismatch is a failure: nothing is kept (no row, so NOT_FOUND), and the quota it
/// reserved is released, for a fresh upload and for a resumed one alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_keeps_nothing_and_releases_the_quota() {
    const N: usize = 500_000;
    let server = auth_server(|c| c.max_storage_bytes_per_user = N as u64).await;
    within(60, "checksum mismatch", async {
        let mut alice = user(server.addr, "alice").await;
        let bytes = data(8, 300_000);
        let wrong = sha256_hex(b"something else");

        let fresh = Uuid::new_v4().to_string();
        let answer = upload_from(&mut alice, &bytes, &wrong, &fresh, 0).await;
        expect_status("fresh, wrong checksum", answer, Code::DataLoss);
        expect_status(
            "nothing kept",
            status(&mut alice, &fresh).await,
            Code::NotFound,
        );
        assert!(fits(&mut alice, N).await, "the quota is released");

        let resumed = Uuid::new_v4().to_string();
        interrupted(&mut alice, &bytes, &wrong, &resumed, 2 * CHUNK).await;
        wait_for_kept(&mut alice, &resumed, 2 * CHUNK).await;
        assert!(
            !fits(&mut alice, N - 2 * CHUNK + 1).await,
            "kept bytes count"
        );
        let answer = resume(&mut alice, &bytes, &wrong, &resumed, 2 * CHUNK).await;
        expect_status("resumed, wrong checksum", answer, Code::DataLoss);
        expect_status(
            "nothing kept",
            status(&mut alice, &resumed).await,
            Code::NotFound,
        );
        assert!(fits(&mut alice, N).await, "the quota is released");
        let storage = server.dir.path().join("files");
        let left: Vec<_> = walk(&storage);
        assert!(left.is_empty(), "files left behind: {left:?}");
    })
    .await;
}

/// Regular files under `root`, recursively.
fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if !path.ends_with(".lock") && !path.to_string_lossy().ends_with(".lock") {
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Isolated transfers
// ---------------------------------------------------------------------------------------------

/// A download whose reader takes nothing for --transfer-idle-secs is ended: when the reader
/// comes back, the stream ends with DEADLINE_EXCEEDED before the end of the file. A plain-HTTP
/// download is cut off the same way (the body is shorter than its Content-Length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_download_is_ended_after_the_idle_time() {
    let server = TestServer::start_with(|c| c.transfer_idle_secs = 1).await;
    let addr = server.addr;
    within(60, "unread download", async {
        let mut client = client_for(addr, None).await;
        let bytes = data(9, 16 * 1024 * 1024);
        let stored = upload(&mut client, &bytes).await;
        let mut stream = client
            .download_file(DownloadFileRequest {
                file_id: stored.file_id.clone(),
                offset: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert!(matches!(first.data, Some(Data::Metadata(_))));
        // The stimulus is the reader's silence itself: it takes nothing for three idle times.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut received = 0usize;
        let ended = loop {
            match stream.next().await {
                Some(Ok(FileChunk {
                    data: Some(Data::Chunk(c)),
                    ..
                })) => received += c.len(),
                Some(Ok(_)) => {}
                Some(Err(status)) => break status,
                None => panic!("the stream ended cleanly after {received} bytes"),
            }
        };
        assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
        assert!(received < bytes.len(), "{received}");

        // Plain HTTP: read the head, then nothing for a while.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let path = stored
            .download_url
            .strip_prefix(&format!("http://{addr}"))
            .unwrap()
            .to_string();
        socket
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = [0u8; 256];
        let n = socket.read(&mut head).await.unwrap();
        assert!(
            head[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&head[..n])
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut rest = Vec::new();
        socket.read_to_end(&mut rest).await.unwrap();
        assert!(
            n + rest.len() < bytes.len(),
            "the connection closes before the whole body: {} bytes",
            n + rest.len()
        );
    })
    .await;
}

/// 600 uploads that send their metadata and then nothing, plus 300 downloads of a 16 MiB file
/// that nobody reads, over 4 connections: another client's 1 MiB upload and download still
/// finish within 10 s (a wide margin for a loaded test machine; `streamhub bench files --phases
/// stalled` measures the real figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_transfers_do_not_slow_another_client() {
    const UPLOADS: usize = 600;
    const DOWNLOADS: usize = 300;
    const CONNECTIONS: usize = 4;
    let server = TestServer::start().await;
    let addr = server.addr;
    within(240, "stalled transfers", async {
        let mut setup = client_for(addr, None).await;
        let big = upload(&mut setup, &data(10, 16 * 1024 * 1024)).await;

        let mut pool = Vec::new();
        for _ in 0..CONNECTIONS {
            pool.push(client_for(addr, None).await);
        }
        let mut stalled_uploads = Vec::new();
        let mut ids = Vec::new();
        for i in 0..UPLOADS {
            let id = Uuid::new_v4().to_string();
            let (tx, call) = open_upload(&pool[i % CONNECTIONS]);
            tx.send(meta(1024 * 1024, "", &id)).await.unwrap();
            stalled_uploads.push((tx, call));
            ids.push(id);
        }
        let mut unread = Vec::new();
        for i in 0..DOWNLOADS {
            let stream = pool[i % CONNECTIONS]
                .clone()
                .download_file(DownloadFileRequest {
                    file_id: big.file_id.clone(),
                    offset: 0,
                })
                .await
                .expect("a download starts")
                .into_inner();
            unread.push(stream);
        }
        // Every stalled upload is recorded (its metadata was handled), and every download open.
        for id in &ids {
            poll_until("a stalled upload is recorded", Duration::from_secs(120), || {
                let mut setup = setup.clone();
                async move { status(&mut setup, id).await.map_err(|s| format!("{s:?}")) }
            })
            .await;
        }
        wait_for_metrics(addr, "300 open downloads", Duration::from_secs(60), |text| {
            common::rpc_open(text, "DownloadFile") >= DOWNLOADS as u64
                && common::rpc_open(text, "UploadFile") >= UPLOADS as u64
        })
        .await;

        // Another client, on its own connection.
        let mut other = client_for(addr, None).await;
        let bytes = data(11, 1024 * 1024);
        let started = Instant::now();
        let stored = upload(&mut other, &bytes).await;
        let back = download(&mut other, &stored.file_id).await.unwrap();
        let took = started.elapsed();
        assert_eq!(back, bytes);
        eprintln!("1 MiB round trip under {UPLOADS} stalled uploads and {DOWNLOADS} unread downloads: {took:?}");
        assert!(took < Duration::from_secs(10), "round trip took {took:?}");

        drop(unread);
        for (tx, call) in stalled_uploads {
            drop(tx);
            call.abort();
        }
    })
    .await;
}
