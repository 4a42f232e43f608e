//! Data that an operator mistake cannot destroy: one server per database and storage
//! directory, unsupported database URLs refused and a PostgreSQL URL served without a trace of
//! their password, a WAL that stays bounded under sustained writes and is truncated by a clean
//! shutdown, and a startup sweep that keeps what it cannot prove is its own (a missing file
//! stays a broken record that answers DATA_LOSS; a file with no row moves to `orphans/`, and
//! the startup log lists it).
mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamhub::proto::file_chunk::Data;
use streamhub::proto::*;
use tonic::Code;
use uuid::Uuid;

/// Runs the binary as a second server and waits for it to exit (a refused start exits at
/// once; the deadline turns a server that wrongly starts into a failure, not a hang).
fn run_refused_server(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamhub"));
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL")
        .env_remove("STREAMHUB_LISTEN")
        .env_remove("STREAMHUB_STORAGE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn streamhub");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "the second server did not exit within 30 s; its log:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The built binary as a server that starts, with its whole log (stderr) kept for the test:
/// every line from the first to the last one it writes before it exits.
struct LoggedServer {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LoggedServer {
    /// Starts on `database_url` (in its environment, as an operator would give a password),
    /// files in `<dir>/files`, logging at `rust_log`; returns once it announces `streamhub
    /// serving` (30 s at most).
    fn spawn(dir: &Path, database_url: &str, rust_log: &str) -> LoggedServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamhub"));
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        if streamhub::store::is_postgres_url(database_url) {
            command.args(["--pg-pool-size", "8"]);
        }
        let mut child = command
            .arg("--storage-dir")
            .arg(dir.join("files"))
            .current_dir(dir)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", rust_log)
            .env_remove("STREAMHUB_LISTEN")
            .env_remove("STREAMHUB_STORAGE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn streamhub");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, announced) = std::sync::mpsc::channel();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("streamhub serving")
                        && let Some(rest) = line.split("addr=").nth(1)
                        && let Some(addr) = rest.split_whitespace().next()
                        && let Ok(addr) = addr.parse::<SocketAddr>()
                    {
                        let _ = found.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            })
        };
        let mut server = LoggedServer {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            reader: Some(reader),
        };
        match announced.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => server.addr = addr,
            Err(_) => panic!(
                "the server did not announce its address within 30 s; its log:\n{}",
                server.log_so_far()
            ),
        }
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log_so_far(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, a clean exit (30 s at most), and then its whole log.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit within 30 s of SIGTERM; its log:\n{}",
                self.log_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Its stderr is closed now: the reader has every line.
        self.reader.take().unwrap().join().expect("log reader");
        let log = self.log_so_far();
        assert!(status.success(), "the server exited with {status}:\n{log}");
        log
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that a second server exited with an error naming the first one as the holder of
/// `what` ("database", "storage directory").
fn assert_refused_for(output: &Output, what: &str, first: &ChildServer) {
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the second server started:\n{log}"
    );
    let holder = format!(
        "the {what} is in use by another server (pid={}, listen={})",
        first.child.id(),
        first.addr
    );
    assert!(log.contains(&holder), "expected `{holder}` in:\n{log}");
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

async fn upload(client: &mut Client, filename: &str, bytes: &[u8]) -> UploadFileResponse {
    let mut messages = vec![FileChunk {
        offset: 0,
        data: Some(Data::Metadata(FileMetadata {
            filename: filename.to_string(),
            total_size: bytes.len() as i64,
            checksum: sha256_hex(bytes),
            ..Default::default()
        })),
    }];
    for (i, chunk) in bytes.chunks(64 * 1024).enumerate() {
        messages.push(FileChunk {
            offset: (i * 64 * 1024) as i64,
            data: Some(Data::Chunk(chunk.to_vec())),
        });
    }
    client
        .upload_file(tokio_stream::iter(messages))
        .await
        .expect("upload")
        .into_inner()
}

/// Downloads a whole file over gRPC: its bytes, or the status it ended with.
async fn download(client: &mut Client, file_id: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = client
        .download_file(DownloadFileRequest {
            file_id: file_id.to_string(),
            offset: 0,
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await? {
        if let Some(Data::Chunk(chunk)) = message.data {
            bytes.extend_from_slice(&chunk);
        }
    }
    Ok(bytes)
}

#[tokio::test]
async fn a_second_server_on_the_same_database_is_refused_and_the_first_keeps_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let first = ChildServer::spawn(dir.path(), &[]);
    let mut client = connect(&first.url()).await;
    let bytes = b"kept safe from a second server".to_vec();
    let uploaded = upload(&mut client, "safe.txt", &bytes).await;

    let other_storage = dir.path().join("other-files");
    let db = sqlite_url(&dir.path().join("streamhub.db"));
    let output = run_refused_server(
        dir.path(),
        &[
            "--database-url",
            &db,
            "--storage-dir",
            other_storage.to_str().unwrap(),
        ],
        &[],
    );
    assert_refused_for(&output, "database", &first);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("streamhub.db.lock"), "{log}");

    // The first server is untouched: it still serves the file it stored.
    assert_eq!(
        download(&mut client, &uploaded.file_id).await.unwrap(),
        bytes
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_storage_directory_is_refused_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = ChildServer::spawn(dir.path(), &[]);
    let mut client = connect(&first.url()).await;
    let bytes = vec![7u8; 200_000];
    let uploaded = upload(&mut client, "big.bin", &bytes).await;

    // Its own database, the first one's files: before the lock, its startup sweep removed
    // every file of the first server as having no row.
    let other_db = sqlite_url(&dir.path().join("other.db"));
    let storage = dir.path().join("files");
    let output = run_refused_server(
        dir.path(),
        &[
            "--database-url",
            &other_db,
            "--storage-dir",
            storage.to_str().unwrap(),
        ],
        &[],
    );
    assert_refused_for(&output, "storage directory", &first);
    assert!(
        storage.join(&uploaded.file_id).is_file(),
        "the stored file is still there"
    );
    assert_eq!(
        download(&mut client, &uploaded.file_id).await.unwrap(),
        bytes
    );

    // After the first server is gone (even by kill -9), the lock is free again.
    first.kill9();
    let again = ChildServer::spawn(dir.path(), &[]);
    let mut client = connect(&again.url()).await;
    assert_eq!(
        download(&mut client, &uploaded.file_id).await.unwrap(),
        bytes
    );
}

#[tokio::test]
async fn an_unsupported_database_url_is_refused_without_its_password_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let password = "s3cret-pa55";
    let url = format!("mysql://app:{password}@127.0.0.1:3306/streamhub");
    let output = run_refused_server(dir.path(), &[], &[("DATABASE_URL", &url)]);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a mysql:// URL was accepted:\n{log}"
    );
    assert!(
        log.contains("unsupported DATABASE_URL scheme `mysql:`"),
        "{log}"
    );
    assert!(
        log.contains("mysql://app:***@127.0.0.1:3306/streamhub"),
        "the URL is named, redacted: {log}"
    );
    assert!(
        !log.contains(password),
        "the password reached the log:\n{log}"
    );
    let created: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(created.is_empty(), "nothing is created: {created:?}");
}

#[tokio::test]
async fn a_passworded_url_in_the_serving_log_is_redacted() {
    // A PostgreSQL server that cannot be reached: the refusal names the URL, never its
    // password. (A server that starts on a passworded URL: the test after this one.)
    let dir = tempfile::tempdir().unwrap();
    let output = run_refused_server(
        dir.path(),
        &[],
        &[("DATABASE_URL", "postgres://admin:hunter2@db.internal/app")],
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains("postgres://admin:***@db.internal/app"),
        "{log}"
    );
    assert!(
        !log.contains("hunter2"),
        "the password reached the log:\n{log}"
    );
}

/// `url` with `password` in its `user:password@`, and the password it now carries. A URL that
/// has one already (from STREAMHUB_TEST_POSTGRES_URL) keeps it, so that the server still gets
/// in; PostgreSQL here trusts local connections and takes any password.
fn with_password(url: &str, password: &str) -> (String, String) {
    let start = url.find("://").expect("a URL") + 3;
    let authority_end = start
        + url[start..]
            .find(['/', '?', '#'])
            .unwrap_or(url.len() - start);
    let at = start
        + url[start..authority_end]
            .rfind('@')
            .expect("the PostgreSQL test URL names a user");
    match url[start..at].split_once(':') {
        Some((_, existing)) => (url.to_string(), existing.to_string()),
        None => (
            format!("{}:{password}{}", &url[..at], &url[at..]),
            password.to_string(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passworded_postgres_url_never_reaches_the_log_of_a_server_that_starts() {
    let Some(db) = TestDb::for_test().await else {
        return;
    };
    let (url, password) = with_password(db.url(), "s3cret-pw");
    let user_start = url.find("://").unwrap() + 3;
    let user = url[user_start..].split([':', '@']).next().unwrap();
    let redacted = streamhub::secret::redact_url(&url);
    assert!(redacted.contains(&format!("{user}:***@")), "{redacted}");
    let dir = tempfile::tempdir().unwrap();
    // Debug, not only info: no line at any level an operator may turn on shows the password.
    let server = LoggedServer::spawn(dir.path(), &url, "debug,h2=info,hyper=info,tower=info");

    // It serves on that database: a file goes in and comes back.
    let mut client = connect(&server.url()).await;
    let bytes = b"stored through a passworded URL".to_vec();
    let uploaded = within(60, "upload", upload(&mut client, "pw.txt", &bytes)).await;
    let back = within(60, "download", download(&mut client, &uploaded.file_id)).await;
    assert_eq!(back.unwrap(), bytes);
    drop(client);

    let log = server.stop();
    let serving: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("streamhub serving"))
        .collect();
    assert_eq!(serving.len(), 1, "one serving line:\n{log}");
    assert!(
        serving[0].contains(&format!("database={redacted}")),
        "the serving line names the database, redacted ({redacted}): {}",
        serving[0]
    );
    assert!(
        log.contains(&format!("{user}:***@")),
        "the redacted form is in the log:\n{log}"
    );
    assert!(
        !log.contains(&password),
        "the password reached the log:\n{log}"
    );
}

#[tokio::test]
async fn the_wal_stays_within_its_bound_under_sustained_writes_and_a_clean_stop_truncates_it() {
    const BOUND: u64 = 8 * 1024 * 1024;
    let server = TestServer::start_with(|c| c.max_wal_bytes = BOUND).await;
    let wal = server.dir.path().join("streamhub.db-wal");

    // A sampler watches the WAL the whole time, not only between batches.
    let largest = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (wal, largest, done) = (wal.clone(), largest.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                largest.fetch_max(size, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // A live subscriber holds read snapshots while the writes go on.
    let mut reader = server.client().await;
    let mut tail = reader
        .stream_user_events(StreamUserEventsRequest {
            user_id: "wal-0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // Four unary publishers run beside the imports below for as long as they do (and for at
    // least 150 appends each), with 1 KiB each: the writer interleaves group commits with the
    // imports' transactions of their own.
    const PUBLISHERS: usize = 4;
    let imports_done = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut client = server.client().await;
        let imports_done = imports_done.clone();
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut during_imports = 0;
            let mut n = 0usize;
            while n < 150 || !imports_done.load(Ordering::Relaxed) {
                let request = PublishUserEventRequest {
                    user_id: format!("wal-{}", n % 8),
                    r#type: UserEventType::Logout as i32,
                    data: Some(prost_types::Any {
                        type_url: "type.googleapis.com/test.Blob".into(),
                        value: vec![(n % 251) as u8; 1024],
                    }),
                    id: format!("p{p}-{n}"),
                };
                let event = client
                    .publish_user_event(request)
                    .await
                    .expect("publish")
                    .into_inner();
                if !imports_done.load(Ordering::Relaxed) {
                    during_imports += 1;
                }
                acked.push(event);
                n += 1;
            }
            (acked, during_imports)
        }));
    }

    // Four writers, 48 batches of 400 records with 1 KiB each: about 20 MB of events in
    // import transactions of about 400 KiB. Without the bound, the WAL grew to 98 MB on this
    // load.
    const WRITERS: usize = 4;
    const BATCHES: usize = 12;
    const RECORDS: usize = 400;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = server.client().await;
        writers.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let records: Vec<DataRecord> = (0..RECORDS)
                    .map(|i| DataRecord {
                        id: format!("w{w}-b{b}-r{i}"),
                        user_id: format!("wal-{}", i % 8),
                        r#type: UserEventType::Login as i32,
                        data: Some(prost_types::Any {
                            type_url: "type.googleapis.com/test.Blob".into(),
                            value: vec![(i % 251) as u8; 1024],
                        }),
                    })
                    .collect();
                let result = client
                    .process_data_batch(tokio_stream::iter(records))
                    .await
                    .expect("batch")
                    .into_inner();
                assert_eq!(result.records_accepted, RECORDS as u64);
            }
        }));
    }
    for writer in writers {
        within(120, "the writers", writer).await.unwrap();
    }
    imports_done.store(true, Ordering::Relaxed);
    let mut unary = Vec::new();
    for publisher in publishers {
        let (acked, during_imports) = within(60, "the publishers", publisher).await.unwrap();
        assert!(
            during_imports > 0,
            "no unary append was acknowledged while the imports ran"
        );
        unary.extend(acked);
    }
    // The subscriber saw every event of its stream, in order, the unary ones exactly as
    // answered: the truncations lost nothing.
    let unary_on_tail: Vec<UserEvent> =
        unary.into_iter().filter(|e| e.user_id == "wal-0").collect();
    let expected = (WRITERS * BATCHES * RECORDS / 8 + unary_on_tail.len()) as u64;
    let seen = within(60, "the subscriber's events", async {
        let mut seen = Vec::new();
        while (seen.len() as u64) < expected {
            let event = tail.message().await.unwrap().expect("an event");
            assert_eq!(event.sequence, seen.len() as u64 + 1);
            seen.push(event);
        }
        seen
    })
    .await;
    for event in &unary_on_tail {
        assert_eq!(&seen[event.sequence as usize - 1], event);
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let largest = largest.load(Ordering::Relaxed);
    eprintln!(
        "largest WAL: {largest} bytes (bound {BOUND}); {} unary appends on the tail's stream",
        unary_on_tail.len()
    );
    assert!(
        largest < 32 * 1024 * 1024,
        "the WAL reached {largest} bytes with a bound of {BOUND}"
    );
    drop(tail);

    let dir = server.stop().await;
    let after = std::fs::metadata(dir.path().join("streamhub.db-wal")).map_or(0, |m| m.len());
    assert_eq!(after, 0, "a clean shutdown leaves the WAL truncated");
}

#[tokio::test]
async fn a_stored_file_whose_bytes_are_missing_is_kept_and_answers_data_loss() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let bytes = b"bytes an operator will delete by mistake".to_vec();
    let uploaded = upload(&mut client, "gone.txt", &bytes).await;
    let dir = server.stop().await;
    std::fs::remove_file(dir.path().join("files").join(&uploaded.file_id)).unwrap();

    // The startup sweep keeps the row.
    let server = TestServer::start_in(dir, |_| {}).await;
    let mut client = server.client().await;
    let info = client
        .get_file_info(GetFileInfoRequest {
            file_id: uploaded.file_id.clone(),
        })
        .await
        .expect("GetFileInfo still answers from the row")
        .into_inner();
    assert_eq!(info.filename, "gone.txt");
    assert_eq!(info.total_size, bytes.len() as i64);
    assert_eq!(info.checksum, sha256_hex(&bytes));

    let status = download(&mut client, &uploaded.file_id).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(!status.message().contains('/'), "no path: {status:?}");

    let path = format!("/files/{}", uploaded.file_id);
    let (code, body) = http_request(server.addr, "GET", &path).await;
    assert_eq!(code, 500);
    assert_eq!(
        body,
        "the file's bytes are missing from the server's storage\n"
    );
    let (code, _) = http_request(server.addr, "HEAD", &path).await;
    assert_eq!(code, 500);

    // Another restart still keeps it: a broken record is never silently deleted.
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    let mut client = server.client().await;
    assert_eq!(
        client
            .get_file_info(GetFileInfoRequest {
                file_id: uploaded.file_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .filename,
        "gone.txt"
    );
}

store_tests!(a_stored_file_with_no_row_is_moved_to_orphans_not_deleted);

/// The servers run as child processes, so that the test reads their whole startup log.
async fn a_stored_file_with_no_row_is_moved_to_orphans_not_deleted(kind: StoreKind) {
    let home = kind.home().await;
    let files = home.storage_dir();
    std::fs::create_dir_all(&files).unwrap();
    let orphan = Uuid::new_v4().to_string();
    let bytes = b"a file some other database knows about".to_vec();
    std::fs::write(files.join(&orphan), &bytes).unwrap();
    // A name the server never writes is left where it is.
    std::fs::write(files.join("README.operator"), b"notes").unwrap();

    let server = LoggedServer::spawn(home.dir.path(), &home.database_url(), "info");
    // The startup sweep runs before the first call is answered.
    let mut client = connect(&server.url()).await;
    let status = client
        .get_file_info(GetFileInfoRequest {
            file_id: orphan.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let moved = files.join("orphans").join(&orphan);
    assert_eq!(std::fs::read(&moved).unwrap(), bytes, "moved whole");
    assert!(
        !files.join(&orphan).exists(),
        "no longer among stored files"
    );
    assert_eq!(
        std::fs::read(files.join("README.operator")).unwrap(),
        b"notes"
    );
    drop(client);
    // The startup log lists it, at its new place.
    const MOVED: &str = "stored files with no row moved to the orphans directory (not deleted)";
    let log = server.stop();
    let listed: Vec<&str> = log.lines().filter(|l| l.contains(MOVED)).collect();
    assert_eq!(listed.len(), 1, "one line lists the orphans:\n{log}");
    assert!(listed[0].contains("count=1"), "{}", listed[0]);
    assert!(
        listed[0].contains(&format!("{:?}", moved.display().to_string())),
        "the line names {}: {}",
        moved.display(),
        listed[0]
    );

    // A restart leaves the orphans directory alone.
    let server = LoggedServer::spawn(home.dir.path(), &home.database_url(), "info");
    let mut client = connect(&server.url()).await;
    let status = client
        .get_file_info(GetFileInfoRequest { file_id: orphan })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(std::fs::read(&moved).unwrap(), bytes);
    drop(client);
    let log = server.stop();
    assert!(!log.contains(MOVED), "nothing more is moved:\n{log}");
}

#[tokio::test]
async fn the_root_page_says_what_this_is() {
    let server = TestServer::start().await;
    let (code, body) = http_request(server.addr, "GET", "/").await;
    assert_eq!(code, 200);
    assert!(
        body.starts_with(&format!("streamhub {}\n", env!("CARGO_PKG_VERSION"))),
        "{body}"
    );
    assert!(body.contains("streaming.v1.StreamingService"), "{body}");
    assert!(body.contains("docs/contract.md"), "{body}");
    assert!(body.contains("GET /console"), "{body}");
    assert!(body.contains("tus 1.0 uploads at /files/"), "{body}");
}
