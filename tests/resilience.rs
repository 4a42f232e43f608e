//! The server against peers that misbehave at the network level and against a full disk:
//! a client whose network goes silent (found by HTTP/2 keepalive), thousands of bidirectional
//! streams abandoned at once (every stream's work and memory released), and an upload that runs
//! out of disk (RESOURCE_EXHAUSTED, nothing left behind, the server goes on).
//!
//! Each test proves release by what the server itself reports (`/metrics` gauges, stored leave
//! notices, the storage directory, the server process's resident memory), never by timing alone.
//! They must never leave a mount or a process behind, also when they fail.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use streamhub::proto::file_chunk::Data;
use streamhub::proto::*;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::Streaming;

/// The tests of this file run one at a time: the keepalive test measures seconds and must not
/// share two cores with 2,000 streams being opened next to it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn next_ok<T: std::fmt::Debug>(stream: &mut Streaming<T>, what: &str) -> T {
    match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(other) => panic!("{what}: expected a message, got {other:?}"),
        Err(_) => panic!("{what}: nothing within 15 s"),
    }
}

fn hello(room: &str, user: &str) -> ChatMessage {
    ChatMessage {
        room_id: room.into(),
        user_id: user.into(),
        ..Default::default()
    }
}

/// Opens a Chat stream whose first message only joins; the sender keeps the stream open.
async fn join(
    client: &mut Client,
    room: &str,
    user: &str,
) -> (mpsc::Sender<ChatMessage>, Streaming<ChatMessage>) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello(room, user)).await.unwrap();
    let replies = client
        .chat(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|s| panic!("{user} could not join {room}: {s:?}"))
        .into_inner();
    (tx, replies)
}

/// The contents of a room's history, oldest first (at most 500).
async fn history(client: &mut Client, room: &str) -> Vec<String> {
    client
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            limit: 500,
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .messages
        .into_iter()
        .map(|m| m.content)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Dead peer
// ---------------------------------------------------------------------------------------------

/// A client whose network stops carrying bytes, with its sockets still open (no FIN, no RST):
/// with keepalive every 1 s and a 1 s timeout the server drops the connection within
/// interval + timeout (+ slack) and frees everything: the open-call gauges of StreamUserEvents
/// and Chat return to 0, the hub's receivers to 0, and the chat member's leave is stored.
/// Before the freeze, the same idle connection stays up for longer than that: keepalive pings
/// are answered through the healthy network and do not cut idle streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_found_by_keepalive_and_its_streams_are_freed() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start_with(|c| {
        c.keepalive_interval_secs = 1;
        c.keepalive_timeout_secs = 1;
    })
    .await;
    let addr = server.addr;
    within(60, "dead peer", async {
        let mut control = server.client().await;
        control
            .publish_user_event(PublishUserEventRequest {
                user_id: "ann".into(),
                r#type: UserEventType::Login as i32,
                ..Default::default()
            })
            .await
            .unwrap();

        let network = Freezable::to(addr).await;
        let mut peer = network.client().await;
        let mut events = peer
            .stream_user_events(StreamUserEventsRequest {
                user_id: "ann".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next_ok(&mut events, "ann's event").await.sequence, 1);
        let (_tx, mut chat) = join(&mut peer, "dead", "zed").await;
        assert_eq!(
            next_ok(&mut chat, "zed's join").await.content,
            "User zed joined the chat"
        );
        let live = |text: &str| {
            (
                rpc_open(text, "StreamUserEvents"),
                rpc_open(text, "Chat"),
                metric(text, "streamhub_hub_receivers"),
            )
        };
        assert_eq!(live(&scrape(addr).await), (1, 1, Some(2)));

        // Idle but healthy for three keepalive periods: nothing is cut.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            live(&scrape(addr).await),
            (1, 1, Some(2)),
            "healthy peer cut"
        );

        network.freeze();
        // Keepalive finds the silent peer after about interval + timeout (2 s); the deadline
        // is generous for a loaded machine, since without keepalive it would never happen.
        let took = wait_for_metrics(
            addr,
            "the silent peer's streams freed",
            Duration::from_secs(20),
            |text| live(text) == (0, 0, Some(0)),
        )
        .await;
        eprintln!("silent peer's streams freed {took:?} after the freeze (keepalive 1 s + 1 s)");

        // The session stores its leave notice as it ends.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let contents = history(&mut control, "dead").await;
            if contents == ["User zed joined the chat", "User zed left the chat"] {
                break;
            }
            assert!(Instant::now() < deadline, "no leave notice: {contents:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop((events, chat, peer, network));
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Abandoned streams
// ---------------------------------------------------------------------------------------------

const CONNECTIONS: usize = 20;
const STREAMS: usize = 2_000;
const ROOMS: usize = 200;

/// Opens `STREAMS` Chat streams over `CONNECTIONS` connections through one forwarder, one user
/// per stream, `STREAMS / ROOMS` members in each room, then cuts every connection at once (no
/// half-close, no RST_STREAM: the sockets go away) and waits until the server reports them all
/// gone. Returns the server's resident memory (KiB) with all streams open.
async fn abandon_a_round(server: &ChildServer, round: usize) -> u64 {
    let pid = server.child.id();
    let network = Cuttable::to(server.addr).await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(network.client().await);
    }
    let mut openers = tokio::task::JoinSet::new();
    for (conn, mut client) in clients.into_iter().enumerate() {
        openers.spawn(async move {
            let mut streams = Vec::new();
            for i in (conn..STREAMS).step_by(CONNECTIONS) {
                let room = format!("room-{}", i % ROOMS);
                streams.push(join(&mut client, &room, &format!("r{round}-u{i}")).await);
            }
            (client, streams)
        });
    }
    let mut held = Vec::new();
    while let Some(opened) = openers.join_next().await {
        held.push(opened.expect("opener"));
    }
    wait_for_metrics(
        server.addr,
        "every stream open",
        Duration::from_secs(30),
        |text| {
            rpc_open(text, "Chat") == STREAMS as u64
                && metric(text, "streamhub_hub_receivers") == Some(STREAMS as u64)
        },
    )
    .await;
    let loaded = rss_kib_of(pid);

    network.cut();
    drop(held);
    let took = wait_for_metrics(
        server.addr,
        "every abandoned stream released",
        Duration::from_secs(30),
        |text| {
            rpc_open(text, "Chat") == 0
                && metric(text, "streamhub_hub_receivers") == Some(0)
                && metric(text, "streamhub_hub_streams") == Some(0)
        },
    )
    .await;
    eprintln!("round {round}: {STREAMS} abandoned streams released in {took:?}");

    // Every abandoned member's session ended with its leave notice.
    let mut control = connect(&server.url()).await;
    let members = STREAMS / ROOMS;
    for room in 0..ROOMS {
        let room = format!("room-{room}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let contents = history(&mut control, &room).await;
            let ours = |what: &str| {
                contents
                    .iter()
                    .filter(|c| c.starts_with(&format!("User r{round}-")) && c.ends_with(what))
                    .count()
            };
            if (ours("joined the chat"), ours("left the chat")) == (members, members) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{room}: round {round} has {} joins and {} leaves, expected {members} each",
                ours("joined the chat"),
                ours("left the chat")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    loaded
}

/// 2,000 bidirectional Chat streams (20 connections, 200 rooms) are opened and abruptly
/// abandoned, twice. Each time the server releases every one: open calls, hub receivers and hub
/// streams return to 0 and every member's leave notice is stored. The server runs as its own
/// process so that its resident memory is measured alone: after a warm-up round (allocator
/// pools and SQLite caches exist), the second round leaves it within 40 MiB of where it stood
/// before that round (well under the 74 MiB a round costs when nothing of it is released).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_abandoned_streams_release_their_work_and_memory() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // `normal` sync: this test is about release, not durability, and fsyncs would only slow it.
    let server = ChildServer::spawn(dir.path(), &["--sync", "normal"]);
    let pid = server.child.id();
    within(120, "abandoned streams", async {
        let started = Instant::now();
        let warm = abandon_a_round(&server, 0).await;
        // Measured right after the warm-up round is released, the same point of round 2 that
        // `after` is measured at (which then gets up to 10 s to settle): no pause is needed.
        let before = rss_kib_of(pid);
        assert!(before > 0, "cannot read the server's RSS");

        let loaded = abandon_a_round(&server, 1).await;
        // Memory bound. What is measured: the server's RSS once round 2 is released, against
        // its RSS just before round 2. Expected: no growth, give or take allocator drift; round 2
        // reuses the pools round 0 left. Seven runs (debug build, 2 cores) moved by -10, -7, -5,
        // -3, -0.8, -0.5 and +2.6 MiB of 145 to 159 MiB, so the expected figure is drift of at most
        // DRIFT_KIB (10 MiB) either way. The bound, 4x that (40 MiB), keeps the required 4x
        // margin. It is still meaningful: a round the server cannot reuse costs about 74 MiB (2,000
        // more streams opened while 2,000 were held: +75.6 MiB in two runs, about 38 KiB a
        // stream), so a server that keeps more than about half of each round's work still fails.
        const DRIFT_KIB: u64 = 10 * 1024;
        let limit = before + 4 * DRIFT_KIB;
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let rss = rss_kib_of(pid);
            if rss <= limit || Instant::now() >= deadline {
                break rss;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!(
            "server RSS (KiB): warm-up round loaded {warm}; before round 2 {before}; \
             loaded {loaded}; after {after} (limit {limit}); both rounds took {:?}",
            started.elapsed()
        );
        assert!(
            after <= limit,
            "server RSS {after} KiB after abandoning {STREAMS} streams; it was {before} KiB \
             before (limit 4x {DRIFT_KIB} KiB of drift above it: {limit} KiB)"
        );
        // The server still serves.
        let mut client = connect(&server.url()).await;
        let (_tx, mut replies) = join(&mut client, "after", "someone").await;
        assert_eq!(
            next_ok(&mut replies, "join after").await.content,
            "User someone joined the chat"
        );
    })
    .await;
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted for one test; unmounted when dropped, also when the test fails.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "2m") at `path`, or says why it cannot.
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a server that did not stop): detach it now, it goes when released.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn regular_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // The single-server lock is the server's own, not a stored file.
                .filter(|name| name != ".streamhub.lock")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn upload_messages(total: usize, file_id: &str) -> Vec<FileChunk> {
    let mut messages = vec![FileChunk {
        data: Some(Data::Metadata(FileMetadata {
            filename: "big.bin".into(),
            total_size: total as i64,
            file_id: file_id.into(),
            ..Default::default()
        })),
        offset: 0,
    }];
    let mut rng = XorShift::new(total as u64);
    let mut left = total;
    while left > 0 {
        let mut chunk = vec![0u8; left.min(64 * 1024)];
        rng.fill(&mut chunk);
        left -= chunk.len();
        messages.push(FileChunk {
            data: Some(Data::Chunk(chunk)),
            offset: 0,
        });
    }
    messages
}

/// The storage directory is a 2 MiB tmpfs. An upload of 3 MiB (well under every configured
/// limit) runs out of disk: RESOURCE_EXHAUSTED, no part left in storage/tmp and no row (also for
/// a resumable upload, which keeps nothing it could not write), the space is free again, and a
/// small upload afterwards succeeds and downloads intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_fills_the_disk_gets_resource_exhausted_and_leaves_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // Declared before the mount, so that on a failure it is removed only after the unmount.
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let storage = dir.path().join("files");
    let mount = match Tmpfs::mount(&storage, "2m") {
        Ok(mount) => mount,
        Err(why) => {
            eprintln!("skipped: cannot mount tmpfs ({why})");
            return;
        }
    };
    let server = TestServer::start_in(dir.clone(), |c| {
        c.storage_dir = storage.clone();
    })
    .await;
    within(60, "disk full", async {
        let mut c = server.client().await;
        let resumable = uuid::Uuid::new_v4().to_string();
        for file_id in ["", resumable.as_str()] {
            let status = c
                .upload_file(tokio_stream::iter(upload_messages(3 << 20, file_id)))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(status.message(), "server storage is full");
            assert_eq!(regular_files(&storage.join("tmp")), Vec::<String>::new());
            assert_eq!(regular_files(&storage), Vec::<String>::new());
        }
        let status = c
            .get_upload_status(GetUploadStatusRequest {
                file_id: resumable.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::NotFound,
            "no row for the failed upload"
        );

        // The server goes on, with the space free again.
        let small = upload_messages(256 * 1024, "");
        let done = c
            .upload_file(tokio_stream::iter(small.clone()))
            .await
            .expect("a small upload after the full disk")
            .into_inner();
        assert_eq!(done.bytes_uploaded, 256 * 1024);
        let mut chunks = c
            .download_file(DownloadFileRequest {
                file_id: done.file_id.clone(),
                offset: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            if let Some(Data::Chunk(data)) = chunk.unwrap().data {
                bytes.extend(data);
            }
        }
        let sent: Vec<u8> = small
            .into_iter()
            .filter_map(|m| match m.data {
                Some(Data::Chunk(data)) => Some(data),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(bytes == sent, "the download differs from the upload");
        assert_eq!(regular_files(&storage), vec![done.file_id]);
    })
    .await;
    server.stop().await;
    drop(mount);
    drop(dir);
}
