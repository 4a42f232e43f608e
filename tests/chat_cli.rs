//! `streamhub chat` and `streamhub chat history`: the real binary against a real server, with
//! stdin piped in, stdout and stderr read line by line, and SIGINT delivered like a Ctrl-C.
//! What the CLI claims is checked against the room's stored history.

mod common;

use common::{Client, TestServer};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use streamhub::proto::{ChatMessage, ChatMessageType, GetChatHistoryRequest};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(20);

/// The CLI as a child process, its output lines arriving on channels.
struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    /// Every stdout line so far, in order.
    printed: Vec<String>,
}

fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Cli {
    fn spawn(server: &str, args: &[&str]) -> Cli {
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamhub"))
            .arg("chat")
            .args(args)
            .args(["--server", server])
            .env_remove("STREAMHUB_SERVER")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn streamhub chat");
        let stdout = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        Cli {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            printed: Vec::new(),
        }
    }

    fn type_lines(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until a stdout line ending with `suffix` has been printed (now or earlier).
    async fn printed_ending(&mut self, suffix: &str) -> String {
        if let Some(line) = self.printed.iter().find(|l| l.ends_with(suffix)) {
            return line.clone();
        }
        let wait = async {
            loop {
                let line = self.stdout.recv().await.expect("stdout ended");
                self.printed.push(line.clone());
                if line.ends_with(suffix) {
                    return line;
                }
            }
        };
        tokio::time::timeout(WAIT, wait).await.unwrap_or_else(|_| {
            panic!(
                "no stdout line ending {suffix:?}; printed so far: {:#?}",
                self.printed
            )
        })
    }

    /// Waits for a stderr line containing `text`.
    async fn noted(&mut self, text: &str) -> String {
        let wait = async {
            loop {
                let line = self.stderr.recv().await.expect("stderr ended");
                if line.contains(text) {
                    return line;
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no stderr line containing {text:?}"))
    }

    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code and all the rest of stdout.
    async fn finish(mut self) -> (i32, Vec<String>, Vec<String>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the CLI did not exit; printed {:#?}",
                self.printed
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        while let Some(line) = self.stdout.recv().await {
            self.printed.push(line);
        }
        let mut errors = Vec::new();
        while let Some(line) = self.stderr.recv().await {
            errors.push(line);
        }
        (status.code().expect("exit code"), self.printed, errors)
    }
}

/// `[7] 12:34:56 ann: hi` → `[7] ann: hi`, after checking that the clock is HH:MM:SS.
fn without_time(line: &str) -> String {
    let mut parts = line.splitn(3, ' ');
    let (seq, time, rest) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let digits: Vec<&str> = time.split(':').collect();
    assert!(
        digits.len() == 3
            && digits
                .iter()
                .all(|d| d.len() == 2 && d.bytes().all(|b| b.is_ascii_digit())),
        "{line:?} has no HH:MM:SS clock"
    );
    format!("{seq} {rest}")
}

fn timeless(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| without_time(l)).collect()
}

/// The sequence of a printed line, `[7] …` → 7.
fn sequence_of(line: &str) -> u64 {
    line.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line:?} does not start with [sequence]"))
}

async fn history(client: &mut Client, room: &str) -> Vec<ChatMessage> {
    client
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.into(),
            before_sequence: 0,
            limit: 500,
        })
        .await
        .expect("history")
        .into_inner()
        .messages
}

fn contents(messages: &[ChatMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| format!("{} {}", m.user_id, m.content))
        .collect()
}

/// A member joined through the generated client.
struct Member {
    tx: mpsc::Sender<ChatMessage>,
    replies: Streaming<ChatMessage>,
}

impl Member {
    async fn join(client: &mut Client, room: &str, user: &str) -> Member {
        let (tx, rx) = mpsc::channel(16);
        tx.send(ChatMessage {
            room_id: room.into(),
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let replies = client
            .chat(ReceiverStream::new(rx))
            .await
            .expect("join")
            .into_inner();
        Member { tx, replies }
    }

    async fn send(&self, kind: ChatMessageType, content: &str) {
        self.tx
            .send(ChatMessage {
                content: content.into(),
                r#type: kind as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> ChatMessage {
        tokio::time::timeout(WAIT, self.replies.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no error")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_lines_are_stored_in_order_and_the_room_prints_until_sigint() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut bob = Member::join(&mut client, "r", "bob").await;
    assert_eq!(bob.next().await.content, "User bob joined the chat");

    let mut ann = Cli::spawn(&server.url(), &["--room", "r", "--user", "ann"]);
    ann.type_lines("hello\nworld\n");
    ann.close_stdin();
    ann.printed_ending("ann: world").await;

    // Bob sees the join and both lines, in order, each with the CLI's own UUID.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = bob.next().await;
        if m.r#type == ChatMessageType::Text as i32 {
            assert!(uuid::Uuid::parse_str(&m.id).is_ok(), "client id {:?}", m.id);
        }
        seen.push((m.sequence, m.user_id, m.content));
    }
    assert_eq!(
        seen,
        [
            (2, "ann".to_string(), "User ann joined the chat".to_string()),
            (3, "ann".into(), "hello".into()),
            (4, "ann".into(), "world".into()),
        ]
    );

    // stdin has ended, but a pipe's end only stops the sending: the room keeps printing.
    bob.send(ChatMessageType::Typing, "typing").await;
    assert_eq!(ann.noted("is typing").await, "… bob is typing");
    bob.send(ChatMessageType::Text, "hi ann").await;
    ann.printed_ending("bob: hi ann").await;

    // Ctrl-C leaves: the CLI half-closes, prints its own leave notice and exits cleanly.
    ann.interrupt();
    let (code, printed, _) = ann.finish().await;
    assert_eq!(code, 0);
    assert_eq!(
        timeless(&printed),
        [
            "[1] -- User bob joined the chat",
            "[2] -- User ann joined the chat",
            "[3] ann: hello",
            "[4] ann: world",
            "[5] bob: hi ann",
            "[6] -- User ann left the chat",
        ]
    );
    assert_eq!(bob.next().await.sequence, 5);
    let left = bob.next().await;
    assert_eq!(
        (left.sequence, left.content.as_str()),
        (6, "User ann left the chat")
    );
    assert_eq!(
        contents(&history(&mut client, "r").await),
        [
            "bob User bob joined the chat",
            "ann User ann joined the chat",
            "ann hello",
            "ann world",
            "bob hi ann",
            "ann User ann left the chat",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_after_send_leaves_once_every_line_is_stored_and_commands_are_not_sent() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut bob = Member::join(&mut client, "r", "bob").await;
    assert_eq!(bob.next().await.sequence, 1);

    let long = "y".repeat(17_000);
    let mut ann = Cli::spawn(
        &server.url(),
        &["--room", "r", "--user", "ann", "--exit-after-send"],
    );
    ann.type_lines(&format!(
        "first\n\n   \n//slash\n/bogus\n{long}\n/typing\nlast\r\n"
    ));
    ann.close_stdin();
    let (code, printed, errors) = ann.finish().await;
    // The over-long line was not sent: everything else was stored, and the exit status says so.
    assert_eq!(code, 1, "stderr: {errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e == "error: 1 line(s) were refused and not sent"),
        "{errors:#?}"
    );
    assert_eq!(
        timeless(&printed),
        [
            "[1] -- User bob joined the chat",
            "[2] -- User ann joined the chat",
            "[3] ann: first",
            "[4] ann: /slash",
            "[5] ann: last",
            "[6] -- User ann left the chat",
        ]
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("unknown command /bogus")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("not sent: the line is 17000 bytes")),
        "{errors:#?}"
    );

    // Bob got the stored messages in order, and ann's one typing notice (never stored).
    let mut stored = Vec::new();
    let mut typing = Vec::new();
    while stored.len() < 5 {
        let m = bob.next().await;
        if m.r#type == ChatMessageType::Typing as i32 {
            typing.push((m.user_id, m.content, m.sequence));
        } else {
            stored.push(m.content);
        }
    }
    assert_eq!(
        stored,
        [
            "User ann joined the chat",
            "first",
            "/slash",
            "last",
            "User ann left the chat"
        ]
    );
    assert_eq!(typing, [("ann".to_string(), "typing".to_string(), 0)]);
    assert_eq!(history(&mut client, "r").await.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_prints_a_page_oldest_first_and_says_whether_older_ones_exist() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut ann = Member::join(&mut client, "h", "ann").await;
    for i in 1..=6 {
        ann.send(ChatMessageType::Text, &format!("m{i}")).await;
    }
    ann.send(ChatMessageType::Image, "https://example.com/cat.png")
        .await;
    drop(ann.tx);
    while ann.replies.next().await.is_some() {}

    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_streamhub"))
            .args(["chat", "history", "--server", &server.url()])
            .args(args)
            .env_remove("STREAMHUB_SERVER")
            .env("NO_COLOR", "1")
            .output()
            .expect("run chat history");
        let lines = |bytes: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(String::from)
                .collect()
        };
        (
            output.status.code(),
            lines(&output.stdout),
            lines(&output.stderr),
        )
    };
    let (code, out, err) = run(&["--room", "h", "--limit", "3"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        timeless(&out),
        [
            "[7] ann: m6",
            "[8] ann [image]: https://example.com/cat.png",
            "[9] -- User ann left the chat",
        ]
    );
    assert_eq!(
        err,
        ["(older messages exist: streamhub chat history --room \"h\" --before 7)"]
    );

    let (code, out, err) = run(&["--room", "h", "--before", "7"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        timeless(&out),
        [
            "[1] -- User ann joined the chat",
            "[2] ann: m1",
            "[3] ann: m2",
            "[4] ann: m3",
            "[5] ann: m4",
            "[6] ann: m5",
        ]
    );
    assert_eq!(err, ["(this is the beginning of the room)"]);

    let (code, out, err) = run(&["--room", "empty"]);
    assert_eq!(
        (code, out, err),
        (Some(0), vec![], vec!["(no messages)".to_string()])
    );
}

/// A server in this process on a chosen address, so that a restart keeps the address.
struct Restartable {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<streamhub::Result<()>>,
}

async fn serve_on(addr: SocketAddr, dir: &Arc<tempfile::TempDir>) -> (SocketAddr, Restartable) {
    let mut config = streamhub::Config::in_dir(dir.path());
    config.shutdown_grace_secs = 1;
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = streamhub::server::App::open(config).await.expect("open");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, Restartable { stop, task })
}

impl Restartable {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task").expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_it_rejoins_missing_and_repeating_nothing() {
    common::init_logs();
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let (addr, server) = serve_on("127.0.0.1:0".parse().unwrap(), &dir).await;
    let url = format!("http://{addr}");

    let mut ann = Cli::spawn(&url, &["--room", "r", "--user", "ann"]);
    ann.type_lines("one\n");
    ann.printed_ending("ann: one").await;

    // The server goes away; a line typed meanwhile waits for the rejoin.
    server.stop().await;
    ann.noted("connection lost (Unavailable").await;
    ann.type_lines("two\n");
    ann.noted("cannot rejoin yet").await;

    let (_, server) = serve_on(addr, &dir).await;
    // Bob posts around the time ann rejoins: before or after, ann must print it exactly once.
    let mut client = common::connect(&url).await;
    let bob = Member::join(&mut client, "r", "bob").await;
    bob.send(ChatMessageType::Text, "while you were away").await;
    ann.noted("rejoined r after #").await;
    ann.printed_ending("ann: two").await;
    ann.printed_ending("bob: while you were away").await;
    ann.type_lines("three\n");
    ann.printed_ending("ann: three").await;
    ann.close_stdin();
    ann.interrupt();
    let (code, printed, errors) = ann.finish().await;
    assert_eq!(code, 0, "stderr: {errors:#?}");

    // Every sequence of the room exactly once, none skipped: nothing missed, nothing repeated.
    let sequences: Vec<u64> = printed.iter().map(|l| sequence_of(l)).collect();
    let all: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(sequences, all, "{printed:#?}");
    let stored = history(&mut client, "r").await;
    assert_eq!(stored.len(), printed.len());
    let posts: Vec<String> = stored
        .iter()
        .filter(|m| m.r#type == ChatMessageType::Text as i32)
        .map(|m| m.content.clone())
        .collect();
    let count = |text: &str| posts.iter().filter(|p| p.as_str() == text).count();
    assert_eq!(
        (
            count("one"),
            count("two"),
            count("three"),
            count("while you were away")
        ),
        (1, 1, 1, 1),
        "{posts:?}"
    );
    let order: Vec<&str> = posts
        .iter()
        .map(String::as_str)
        .filter(|p| *p != "while you were away")
        .collect();
    assert_eq!(order, ["one", "two", "three"]);
    assert_eq!(
        printed.last().map(|l| without_time(l)),
        Some(format!("[{}] -- User ann left the chat", stored.len()))
    );
    drop(bob);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invocations_fail_with_a_clear_message_and_exit_code() {
    let server = TestServer::start().await;
    let url = server.url();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["chat", "--room", "r"], 2, "--user <USER>"),
        (&["chat", "--user", "u"], 2, "--room <ROOM>"),
        (
            &["chat", "--room", "r", "--user", "u", "history"],
            2,
            "cannot be used with",
        ),
        (&["chat", "history"], 2, "--room <ROOM>"),
        (
            &["chat", "history", "--room", "r", "--limit", "0"],
            2,
            "1..=500",
        ),
        (
            &["chat", "history", "--room", "r", "--limit", "501"],
            2,
            "1..=500",
        ),
        (
            &[
                "chat",
                "--room",
                "",
                "--user",
                "u",
                "--server",
                url.as_str(),
            ],
            1,
            "error: InvalidArgument: --room is required",
        ),
        (
            &[
                "chat",
                "--room",
                "r",
                "--user",
                "u\u{1}",
                "--server",
                url.as_str(),
            ],
            1,
            "error: InvalidArgument: --user must not contain control characters",
        ),
        (
            &[
                "chat",
                "--room",
                "r",
                "--user",
                "u",
                "--after",
                "99",
                "--server",
                url.as_str(),
            ],
            1,
            "has fewer messages than the #99 this client saw",
        ),
        (
            &["chat", "history", "--room", "", "--server", url.as_str()],
            1,
            "error: InvalidArgument: --room is required",
        ),
        (
            &[
                "chat",
                "--room",
                "r",
                "--user",
                "u",
                "--server",
                "http://127.0.0.1:1",
            ],
            1,
            "error: cannot reach streamhub at http://127.0.0.1:1",
        ),
        (
            &[
                "chat",
                "--room",
                "r",
                "--user",
                "u",
                "--server",
                "not a url",
            ],
            1,
            "error: invalid --server not a url",
        ),
    ];
    for (args, code, message) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_streamhub"))
            .args(*args)
            .env_remove("STREAMHUB_SERVER")
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(*code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    // Nothing was stored by the failed joins.
    let mut client = server.client().await;
    assert!(history(&mut client, "r").await.is_empty());
}
