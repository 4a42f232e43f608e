//! The CLI's conventions, through the real binary against a real server: global flags in any
//! position, `--server HOST:PORT`, `--since` durations, `--after`, `--json` as the canonical
//! proto3 JSON mapping (and `events tail --json | events import`), completions, help, exit
//! status, errors in CLI terms, and an import that commits nothing when a line is bad.
//! What the CLI claims is checked through the generated gRPC client.

mod common;

use common::{TestServer, wait_for_metrics, within};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use streamhub::proto::{
    PublishUserEventRequest, QueryMetricsRequest, StreamUserEventsRequest, UserEvent,
    UserEventType, any_from_json, describe_any,
};

const WAIT: Duration = Duration::from_secs(30);

/// Waits (30 s at most) for a child to exit, without blocking the runtime.
async fn exit_of(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    within(30, what, async {
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The variables that would point the CLI elsewhere than the test says.
const ENV: &[&str] = &[
    "STREAMHUB_SERVER",
    "STREAMHUB_TOKEN",
    "STREAMHUB_CA_CERT",
    "STREAMHUB_CLIENT_CERT",
    "STREAMHUB_CLIENT_KEY",
    "STREAMHUB_LISTEN",
    "STREAMHUB_AUTH_HS256_SECRET",
    "STREAMHUB_AUTH_HS256_SECRET_FILE",
];

fn streamhub() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamhub"));
    for name in ENV {
        command.env_remove(name);
    }
    command.env("NO_COLOR", "1");
    command
}

/// Runs the binary to its end off the runtime's threads (the server runs on them), with
/// `stdin` as its input.
async fn run_with(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_vec();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let what = format!("streamhub {}", args.join(" "));
    within(60, &what, async move {
        tokio::task::spawn_blocking(move || {
            let mut child = streamhub()
                .args(&args)
                .envs(env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn streamhub");
            let mut input = child.stdin.take().expect("stdin");
            input.write_all(&stdin).expect("write stdin");
            drop(input);
            child.wait_with_output().expect("wait for streamhub")
        })
        .await
        .expect("runner thread")
    })
    .await
}

async fn run(args: &[&str]) -> Output {
    run_with(args, b"", &[]).await
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
}

/// The command failed with exit status 1, and its stderr says `needle`.
#[track_caller]
fn assert_fails_with(output: &Output, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

/// Every stdout line, each parsed as one JSON value.
#[track_caller]
fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    stdout(output)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
        })
        .collect()
}

/// A user's stored events, read through the gRPC client.
async fn stored_events(server: &TestServer, user: &str) -> Vec<UserEvent> {
    use tokio_stream::StreamExt;
    let mut client = server.client().await;
    let stream = client
        .stream_user_events(StreamUserEventsRequest {
            user_id: user.into(),
            history_only: true,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    stream
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("history")
}

async fn publish(server: &TestServer, user: &str, id: &str, data: serde_json::Value) {
    let mut client = server.client().await;
    client
        .publish_user_event(PublishUserEventRequest {
            user_id: user.into(),
            r#type: UserEventType::Login as i32,
            data: Some(any_from_json(&data)),
            id: id.into(),
        })
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_flags_go_before_or_after_the_command_and_json_is_canonical() {
    let server = TestServer::start().await;
    // A plain HOST:PORT means http://.
    let host_port = server.addr.to_string();

    let before = run(&[
        "--server",
        &host_port,
        "events",
        "publish",
        "u1",
        "--type",
        "login",
        "--id",
        "e1",
        "--data",
        r#"{"ip":"10.0.0.1"}"#,
        "--json",
    ])
    .await;
    assert_ok(&before);
    let after = run(&[
        "events", "publish", "--user", "u1", "--type", "logout", "--id", "e2", "--json",
        "--server", &host_port,
    ])
    .await;
    assert_ok(&after);
    // Between the group and its command, as older scripts put it.
    let between = run(&[
        "events",
        "--server",
        &server.url(),
        "publish",
        "u1",
        "--type",
        "profile_update",
        "--json",
    ])
    .await;
    assert_ok(&between);

    let first = &json_lines(&before)[0];
    let stored = stored_events(&server, "u1").await;
    assert_eq!(stored.len(), 3);
    let timestamp = stored[0].timestamp.expect("stored with a time").to_string();
    // proto3 JSON: lowerCamelCase names, the enum's full name, uint64 as a string, the Any
    // with its @type.
    assert_eq!(
        *first,
        serde_json::json!({
            "id": "e1",
            "userId": "u1",
            "type": "USER_EVENT_TYPE_LOGIN",
            "timestamp": timestamp,
            "data": {
                "@type": "type.googleapis.com/google.protobuf.Value",
                "value": {"ip": "10.0.0.1"}
            },
            "sequence": "1"
        })
    );
    let second = &json_lines(&after)[0];
    assert_eq!(second["id"], "e2");
    assert_eq!(second["type"], "USER_EVENT_TYPE_LOGOUT");
    assert_eq!(second["sequence"], "2");
    assert_eq!(json_lines(&between)[0]["sequence"], "3");

    // A global flag given to `serve` is refused rather than ignored.
    let serve = run(&["serve", "--server", &host_port]).await;
    assert_eq!(serve.status.code(), Some(2));
    assert!(stderr(&serve).contains("--server is for client commands"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_takes_a_duration_or_a_time_and_after_skips_sequences() {
    let server = TestServer::start().await;
    for id in ["a", "b", "c"] {
        publish(&server, "u1", id, serde_json::json!({"n": id})).await;
    }
    let url = server.url();
    let ids = |output: &Output| -> Vec<String> {
        json_lines(output)
            .iter()
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };

    let hour = run(&[
        "events",
        "tail",
        "u1",
        "--since",
        "1h",
        "--history-only",
        "--json",
        "--server",
        &url,
    ])
    .await;
    assert_ok(&hour);
    assert_eq!(ids(&hour), ["a", "b", "c"]);
    // A duration counts back from the CLI's now, which is after every publish above: `0s`
    // starts there and replays nothing. (Event times are the server's clock at append, so an
    // event older than an hour cannot be made through the server; `metrics query` below shows
    // `--since 1h` excluding older points.)
    let now = run(&[
        "events",
        "tail",
        "u1",
        "--since",
        "0s",
        "--history-only",
        "--json",
        "--server",
        &url,
    ])
    .await;
    assert_ok(&now);
    assert!(ids(&now).is_empty(), "{}", stdout(&now));

    let future = run(&[
        "events",
        "tail",
        "u1",
        "--since",
        "2999-01-01T00:00:00Z",
        "--history-only",
        "--json",
        "--server",
        &url,
    ])
    .await;
    assert_ok(&future);
    assert!(ids(&future).is_empty());

    let after = run(&[
        "events",
        "tail",
        "u1",
        "--after",
        "1",
        "--history-only",
        "--json",
        "--server",
        &url,
    ])
    .await;
    assert_eq!(ids(&after), ["b", "c"]);
    // The old spelling still works.
    let old = run(&[
        "events",
        "tail",
        "--user",
        "u1",
        "--from-seq",
        "2",
        "--history-only",
        "--json",
        "--server",
        &url,
    ])
    .await;
    assert_eq!(ids(&old), ["c"]);

    let bad = run(&[
        "events",
        "tail",
        "u1",
        "--since",
        "5 fortnights",
        "--server",
        &url,
    ])
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("90s, 15m, 1h, 7d"),
        "{}",
        stderr(&bad)
    );
}

/// The points `metrics query --json` answered: (how many, their sum), over every bucket.
fn counted(output: &Output) -> (u64, f64) {
    assert_ok(output);
    let answer = &json_lines(output)[0];
    let mut total = (0, 0.0);
    for series in answer["series"].as_array().into_iter().flatten() {
        for bucket in series["buckets"].as_array().into_iter().flatten() {
            let count = bucket["count"].as_str().expect("uint64 as a string");
            total.0 += count.parse::<u64>().expect("a count");
            total.1 += bucket["sum"].as_f64().expect("a sum");
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_1h_leaves_out_what_is_older_than_an_hour() {
    let server = TestServer::start().await;
    let url = server.url();
    // `metrics push` keeps a point's own timestamp, so points can be older than an hour. Each
    // lies at least five minutes from a boundary, far more than the CLI takes to start.
    let now = std::time::SystemTime::now();
    let ago = |minutes: u64| {
        (now - Duration::from_secs(minutes * 60))
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis()
    };
    let points: String = [(120, 1), (65, 2), (55, 4), (30, 8)]
        .iter()
        .map(|(minutes, value)| format!("cli_since {value} {}\n", ago(*minutes)))
        .collect();
    let push = run_with(
        &["metrics", "push", "--server", &url],
        points.as_bytes(),
        &[],
    )
    .await;
    assert_ok(&push);

    let query = |since: &'static str, until: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut args = vec![
                "metrics",
                "query",
                "cli_since",
                "--since",
                since,
                "--step",
                "1d",
                "--json",
                "--server",
                &url,
            ];
            if let Some(until) = until {
                args.extend(["--until", until]);
            }
            run(&args).await
        }
    };
    // The last hour: the points 55 and 30 minutes old, not those 65 and 120 minutes old.
    assert_eq!(counted(&query("1h", None).await), (2, 12.0));
    assert_eq!(counted(&query("90m", None).await), (3, 14.0));
    assert_eq!(counted(&query("1d", None).await), (4, 15.0));
    // `--until` counts back the same way: from three hours ago to one hour ago.
    assert_eq!(counted(&query("3h", Some("1h")).await), (2, 3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_json_pipes_into_import_on_another_server() {
    let source = TestServer::start().await;
    let target = TestServer::start().await;
    publish(
        &source,
        "ann",
        "x1",
        serde_json::json!({"ip": "10.0.0.1", "n": 2}),
    )
    .await;
    publish(&source, "ann", "x2", serde_json::json!(["a", true, null])).await;
    publish(&source, "ann", "x3", serde_json::json!("text")).await;

    let tail = run(&[
        "events",
        "tail",
        "ann",
        "--history-only",
        "--json",
        "--server",
        &source.url(),
    ])
    .await;
    assert_ok(&tail);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ann.jsonl");
    std::fs::write(&file, stdout(&tail)).expect("write the export");

    let import = run(&[
        "events",
        "import",
        file.to_str().expect("utf-8"),
        "--quiet",
        "--json",
        "--server",
        &target.addr.to_string(),
    ])
    .await;
    assert_ok(&import);
    let result = &json_lines(&import)[0];
    assert_eq!(result["recordsReceived"], "3");
    assert_eq!(result["recordsAccepted"], "3");
    assert!(result.get("recordsRejected").is_none(), "{result}");

    let copied = stored_events(&target, "ann").await;
    let original = stored_events(&source, "ann").await;
    let essence = |events: &[UserEvent]| -> Vec<_> {
        events
            .iter()
            .map(|e| {
                (
                    e.id.clone(),
                    e.user_id.clone(),
                    e.r#type,
                    // Compared as JSON: a Struct's encoded field order is not fixed.
                    e.data.as_ref().map(describe_any),
                    e.sequence,
                )
            })
            .collect()
    };
    assert_eq!(essence(&copied), essence(&original));

    // The same file again: all duplicates (ids are kept), nothing new, still success.
    let again = run(&[
        "events",
        "import",
        file.to_str().expect("utf-8"),
        "--quiet",
        "--json",
        "--server",
        &target.url(),
    ])
    .await;
    assert_ok(&again);
    assert_eq!(json_lines(&again)[0]["recordsDuplicate"], "3");
    assert_eq!(stored_events(&target, "ann").await.len(), 3);
}

/// Imports a file of `good` valid lines followed by a malformed one and checks that the CLI
/// fails naming that line only, that the call (if it reached the server) ended without a
/// commit, and that nothing was stored.
async fn import_with_a_bad_line_after(good: usize, call_reached_the_server: bool) {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.jsonl");
    let mut text = String::new();
    for i in 0..good {
        text.push_str(&format!(
            "{{\"id\": \"g{i}\", \"user_id\": \"bob\", \"type\": \"login\"}}\n"
        ));
    }
    text.push_str("{\"id\": \"bad\", \"user_id\": \n");
    std::fs::write(&file, text).expect("write");

    let import = run(&[
        "events",
        "import",
        file.to_str().expect("utf-8"),
        "--quiet",
        "--server",
        &server.url(),
    ])
    .await;
    let err = stderr(&import);
    assert_eq!(import.status.code(), Some(1), "{err}");
    let bad_line = format!("line {}", good + 1);
    assert!(err.contains(&format!("{bad_line}:")), "{err}");
    assert_eq!(
        err.matches("line").count(),
        1,
        "one line number only: {err}"
    );
    assert!(err.contains("nothing was imported"), "{err}");
    assert!(stdout(&import).is_empty());

    // The CLI has exited, so its connection is gone: any call it opened ends on the server,
    // and none ended with a commit (OK).
    wait_for_metrics(server.addr, "no import call open", WAIT, |text| {
        common::rpc_open(text, "ProcessDataBatch") == 0
            && (!call_reached_the_server
                || text.contains("streamhub_rpc_finished_total{rpc=\"ProcessDataBatch\""))
    })
    .await;
    let scrape = common::scrape(server.addr).await;
    assert!(
        !scrape.contains("streamhub_rpc_finished_total{rpc=\"ProcessDataBatch\",code=\"OK\"}"),
        "{scrape}"
    );
    assert!(stored_events(&server, "bob").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_second_line_cancels_the_import_and_nothing_is_stored() {
    import_with_a_bad_line_after(1, false).await;
}

/// Enough good lines that the call is streaming when the bad one is read: it must be
/// cancelled (RST_STREAM), not half-closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_line_mid_stream_cancels_the_call() {
    import_with_a_bad_line_after(20_000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_push_exits_non_zero_when_a_point_is_rejected() {
    let server = TestServer::start().await;
    let push = run_with(
        &["metrics", "push", "--server", &server.url()],
        b"cli_good 1\n9bad_name 2\ncli_good 3\n",
        &[],
    )
    .await;
    assert_eq!(push.status.code(), Some(1), "{}", stderr(&push));
    assert!(
        stdout(&push).contains("line 2: rejected"),
        "{}",
        stdout(&push)
    );
    assert!(
        stderr(&push).contains("1 points were rejected"),
        "{}",
        stderr(&push)
    );

    // The good points were stored all the same.
    let mut client = server.client().await;
    let now = std::time::SystemTime::now();
    let answer = client
        .query_metrics(QueryMetricsRequest {
            name: "cli_good".into(),
            start: Some((now - Duration::from_secs(3600)).into()),
            end: Some((now + Duration::from_secs(60)).into()),
            step_seconds: 7200,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner();
    let count: u64 = answer
        .series
        .iter()
        .flat_map(|s| &s.buckets)
        .map(|b| b.count)
        .sum();
    assert_eq!(count, 2);

    let clean = run_with(
        &["metrics", "push", "--json", "--server", &server.url()],
        b"cli_other 1\n",
        &[],
    )
    .await;
    assert_ok(&clean);
    let result = &json_lines(&clean)[0];
    assert_eq!(result["metricsStored"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_name_the_commands_in_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = run(&["completions", shell]).await;
        assert_ok(&output);
        let script = stdout(&output);
        assert!(script.len() > 1000, "{shell}: {script}");
        for command in ["events", "upload", "notify", "completions"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_shows_examples_and_the_server_flags_live_under_serve() {
    let help = run(&["--help"]).await;
    assert_ok(&help);
    let text = stdout(&help);
    assert!(text.contains("Examples:"), "{text}");
    assert!(
        text.contains("streamhub events tail u1 --since 1h --json"),
        "{text}"
    );
    assert!(
        text.contains("streamhub serve --listen localhost:50051"),
        "{text}"
    );
    assert!(text.contains("events import events.jsonl"), "{text}");
    assert!(!text.contains("--database-url"), "{text}");
    assert!(!text.contains("--max-upload-bytes"), "{text}");

    let serve = run(&["serve", "--help"]).await;
    assert_ok(&serve);
    assert!(stdout(&serve).contains("--listen"));
    assert!(stdout(&serve).contains("--database-url"));
}

/// `streamhub --listen …` without `serve` still starts the server.
#[test]
fn a_bare_listen_flag_still_serves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("streamhub.db").display());
    let mut child = streamhub()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--storage-dir",
        ])
        .arg(dir.path().join("files"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("streamhub serving") {
                let _ = tx.send(());
            }
        }
    });
    let served = rx.recv_timeout(WAIT);
    let _ = child.kill();
    let _ = child.wait();
    served.expect("the server announced that it serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_speak_of_flags_and_hint_at_tokens() {
    let server = TestServer::start().await;
    let ack = run(&[
        "notify",
        "ack",
        "u1",
        "--through",
        "5",
        "--server",
        &server.url(),
    ])
    .await;
    let err = stderr(&ack);
    assert_eq!(ack.status.code(), Some(1), "{err}");
    assert!(err.contains("--through 5 is past"), "{err}");
    assert!(!err.contains("up_to_sequence"), "{err}");

    // The first connection failing ends a tail at once, for events and notifications alike.
    for group in ["events", "notify"] {
        let tail = run(&[group, "tail", "u1", "--server", "127.0.0.1:1"]).await;
        assert_eq!(tail.status.code(), Some(1), "{group}: {}", stderr(&tail));
        assert!(
            stderr(&tail).contains("cannot reach streamhub at http://127.0.0.1:1"),
            "{group}: {}",
            stderr(&tail)
        );
    }

    const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";
    let secured = TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
    })
    .await;
    let url = secured.url();
    let refused = run(&[
        "events", "publish", "ann", "--type", "login", "--server", &url,
    ])
    .await;
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("Unauthenticated"), "{err}");
    assert!(
        err.contains("--token") && err.contains("STREAMHUB_TOKEN"),
        "{err}"
    );
    assert!(err.contains("streamhub token"), "{err}");

    let minted = run_with(
        &["token", "--sub", "ann"],
        b"",
        &[("STREAMHUB_AUTH_HS256_SECRET", SECRET)],
    )
    .await;
    assert_ok(&minted);
    let token = format!("Bearer {}", stdout(&minted).trim());
    // A pasted "Bearer " prefix is dropped; the token may follow the command.
    let accepted = run(&[
        "events", "publish", "ann", "--type", "login", "--json", "--server", &url, "--token",
        &token,
    ])
    .await;
    assert_ok(&accepted);
    assert_eq!(json_lines(&accepted)[0]["userId"], "ann");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_goes_before_or_after_the_command() {
    const SECRET: &str = "another-test-secret-that-is-long-enough-0123";
    let server = TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
    })
    .await;
    let url = server.url();
    let minted = run_with(
        &["token", "--sub", "ann"],
        b"",
        &[("STREAMHUB_AUTH_HS256_SECRET", SECRET)],
    )
    .await;
    assert_ok(&minted);
    let token = stdout(&minted).trim().to_string();

    // Without it the server refuses, so each success below used the token where it stood.
    let bare = run(&[
        "events", "publish", "ann", "--type", "login", "--server", &url,
    ])
    .await;
    assert_fails_with(&bare, "Unauthenticated");

    let positions: [Vec<&str>; 3] = [
        vec![
            "--token", &token, "events", "publish", "ann", "--type", "login", "--id", "t1",
            "--json", "--server", &url,
        ],
        vec![
            "events", "--token", &token, "publish", "ann", "--type", "login", "--id", "t2",
            "--json", "--server", &url,
        ],
        vec![
            "events", "publish", "ann", "--type", "login", "--id", "t3", "--json", "--server",
            &url, "--token", &token,
        ],
    ];
    for (n, args) in positions.iter().enumerate() {
        let out = run(args).await;
        assert_ok(&out);
        let event = &json_lines(&out)[0];
        assert_eq!(event["id"], format!("t{}", n + 1));
        assert_eq!(event["userId"], "ann");
    }

    // A streaming command takes it in either place too.
    for args in [
        vec![
            "--token",
            &token,
            "events",
            "tail",
            "ann",
            "--history-only",
            "--json",
            "--server",
            &url,
        ],
        vec![
            "events",
            "tail",
            "ann",
            "--history-only",
            "--json",
            "--server",
            &url,
            "--token",
            &token,
        ],
    ] {
        let out = run(&args).await;
        assert_ok(&out);
        let ids: Vec<_> = json_lines(&out).iter().map(|e| e["id"].clone()).collect();
        assert_eq!(ids, ["t1", "t2", "t3"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_id_auto_makes_a_uuid_and_quiet_hides_the_hint() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"hello, files").expect("write");
    let path = file.to_str().expect("utf-8");

    let auto = run(&[
        "upload",
        path,
        "--id",
        "auto",
        "--json",
        "--server",
        &server.url(),
    ])
    .await;
    assert_ok(&auto);
    let err = stderr(&auto);
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("upload id "))
        .unwrap_or_else(|| panic!("no id printed: {err}"));
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let answer = &json_lines(&auto)[0];
    assert_eq!(answer["fileId"], id);
    assert_eq!(answer["bytesUploaded"], "12");

    let loud = run(&["upload", path, "--server", &server.url()]).await;
    assert_ok(&loud);
    assert!(
        stderr(&loud).contains("hint: pass --id auto"),
        "{}",
        stderr(&loud)
    );
    let quiet = run(&["upload", path, "--quiet", "--server", &server.url()]).await;
    assert_ok(&quiet);
    assert!(!stderr(&quiet).contains("hint"), "{}", stderr(&quiet));
}

/// A TLS server's certificate and key (self-signed for 127.0.0.1), written to `dir`.
fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_mismatch_gets_a_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = tls_files(dir.path());
    let tls = TestServer::start_with({
        let (cert, key) = (cert.clone(), key);
        move |c| {
            c.tls_cert = Some(cert);
            c.tls_key = Some(key);
        }
    })
    .await;
    let plain = TestServer::start().await;

    // A plaintext client against the TLS server.
    let out = run(&[
        "events",
        "publish",
        "u1",
        "--type",
        "login",
        "--server",
        &tls.addr.to_string(),
    ])
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("hint: if the server speaks TLS"), "{err}");

    // With --ca-cert, HOST:PORT means https://; the same server then answers.
    let ca = cert.to_str().expect("utf-8");
    let ok = run(&[
        "events",
        "publish",
        "u1",
        "--type",
        "login",
        "--json",
        "--ca-cert",
        ca,
        "--server",
        &tls.addr.to_string(),
    ])
    .await;
    assert_ok(&ok);
    assert_eq!(json_lines(&ok)[0]["sequence"], "1");

    // A TLS client against the plaintext server.
    let out = run(&[
        "events",
        "publish",
        "u1",
        "--type",
        "login",
        "--ca-cert",
        ca,
        "--server",
        &plain.addr.to_string(),
    ])
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("hint: the server does not speak TLS"), "{err}");
}

/// A private CA (`ca.pem`), a server certificate it signed for 127.0.0.1 (`server.pem`,
/// `server.key`) and a client certificate it signed (`client.pem`, `client.key`), in `dir`.
fn mutual_tls_files(dir: &std::path::Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().expect("key"))
        .expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
    for (name, host) in [("server", "127.0.0.1"), ("client", "client.test")] {
        let params = rcgen::CertificateParams::new(vec![host.to_string()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("certificate");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write certificate");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_flags_go_before_or_after_the_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    mutual_tls_files(dir.path());
    let file = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    let server = TestServer::start_with({
        let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
        move |c| {
            c.tls_cert = Some(cert.into());
            c.tls_key = Some(key.into());
            c.tls_client_ca = Some(ca.into());
        }
    })
    .await;
    // A plain HOST:PORT: it means https:// only when --ca-cert has been seen, wherever it stood.
    let host_port = server.addr.to_string();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let tls: [&str; 6] = [
        "--ca-cert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
    ];
    let publish = |id: &'static str| {
        vec![
            "publish", "u1", "--type", "login", "--id", id, "--json", "--server", &host_port,
        ]
    };

    // Without the client certificate the server refuses the handshake; without --ca-cert the
    // server's certificate is not trusted (a client certificate alone still means https://);
    // without either the client speaks plaintext. So each success below used the flags where
    // they stood.
    let no_identity = run(&[&["events"], &tls[..2], &publish("x")[..]].concat()).await;
    assert_eq!(
        no_identity.status.code(),
        Some(1),
        "{}",
        stderr(&no_identity)
    );
    let untrusted = run(&[&["events"], &tls[2..], &publish("x")[..]].concat()).await;
    assert_fails_with(&untrusted, "invalid peer certificate");
    let plaintext = run(&[&["events"], &publish("x")[..]].concat()).await;
    assert_fails_with(&plaintext, "hint: if the server speaks TLS");

    let positions: [Vec<&str>; 4] = [
        [&tls[..], &["events"], &publish("s1")[..]].concat(),
        [&["events"], &tls[..], &publish("s2")[..]].concat(),
        [&["events"], &publish("s3")[..], &tls[..]].concat(),
        // Split: the CA before the command, the client identity after it.
        [&tls[..2], &["events"], &publish("s4")[..], &tls[2..]].concat(),
    ];
    for (n, args) in positions.iter().enumerate() {
        let out = run(args).await;
        assert_ok(&out);
        let event = &json_lines(&out)[0];
        assert_eq!(event["id"], format!("s{}", n + 1));
        assert_eq!(event["sequence"], (n + 1).to_string());
    }
    let stored: Vec<_> = stored_events_over_tls(&server, dir.path()).await;
    assert_eq!(stored, ["s1", "s2", "s3", "s4"]);
}

/// The ids of u1's stored events, read with the generated client over mutual TLS.
async fn stored_events_over_tls(server: &TestServer, dir: &std::path::Path) -> Vec<String> {
    use tokio_stream::StreamExt;
    let mut connect = streamhub::cli::Connect::plain(format!("https://{}", server.addr));
    connect.ca_cert = Some(dir.join("ca.pem"));
    connect.client_cert = Some(dir.join("client.pem"));
    connect.client_key = Some(dir.join("client.key"));
    let mut client = connect.client().await.expect("connect over mutual TLS");
    let stream = client
        .stream_user_events(StreamUserEventsRequest {
            user_id: "u1".into(),
            history_only: true,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    let events: Vec<UserEvent> = stream
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("history");
    events.into_iter().map(|e| e.id).collect()
}

/// A child's output lines, arriving on a channel.
fn lines_of(
    pipe: impl std::io::Read + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `text`; returns it.
async fn line_with(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, text: &str) -> String {
    let wait = async {
        loop {
            match lines.recv().await {
                Some(line) if line.contains(text) => return line,
                Some(_) => {}
                None => panic!("output ended before a line with {text:?}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no line with {text:?}"))
}

/// A server in this process on a chosen address, so that a restart keeps the address.
async fn serve_on(
    addr: std::net::SocketAddr,
    dir: &std::sync::Arc<tempfile::TempDir>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<streamhub::Result<()>>,
) {
    let mut config = streamhub::Config::in_dir(dir.path());
    config.shutdown_grace_secs = 1;
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = streamhub::server::App::open(config).await.expect("open");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reconnects_after_a_restart_and_says_so() {
    common::init_logs();
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
    let (addr, stop, task) = serve_on("127.0.0.1:0".parse().expect("addr"), &dir).await;
    let url = format!("http://{addr}");
    let mut client = common::connect(&url).await;
    let login = |id: &str| PublishUserEventRequest {
        user_id: "u1".into(),
        r#type: UserEventType::Login as i32,
        data: None,
        id: id.into(),
    };
    client
        .publish_user_event(login("r1"))
        .await
        .expect("publish");

    let mut child = streamhub()
        .args([
            "events",
            "tail",
            "u1",
            "--json",
            "--server",
            &addr.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let mut out = lines_of(child.stdout.take().expect("stdout"));
    let mut err = lines_of(child.stderr.take().expect("stderr"));
    line_with(&mut out, "\"r1\"").await;

    let _ = stop.send(());
    task.await.expect("server task").expect("clean stop");
    line_with(&mut err, "connection lost").await;

    let (_, stop, task) = serve_on(addr, &dir).await;
    let mut client = common::connect(&url).await;
    client
        .publish_user_event(login("r2"))
        .await
        .expect("publish");
    let note = line_with(&mut err, "reconnected").await;
    assert_eq!(note, format!("reconnected to {url}; resuming after #1"));
    let second: serde_json::Value =
        serde_json::from_str(&line_with(&mut out, "\"r2\"").await).expect("JSON");
    assert_eq!(second["sequence"], "2");

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    let status = exit_of(&mut child, "the tail to exit").await;
    assert_eq!(status.code(), Some(0));
    let _ = stop.send(());
    task.await.expect("server task").expect("clean stop");
}

/// Ctrl-C during an import cancels the call: the lines already sent are not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_an_import_in_flight() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("events.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());

    let mut child = streamhub()
        .args(["events", "import", "--quiet", "--server", &server.url()])
        .arg(&fifo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn import");
    let mut err = lines_of(child.stderr.take().expect("stderr"));
    // Opening the write end waits for the CLI to open the read end. Kept open: no end of file.
    let writer_path = fifo.clone();
    let mut writer = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(writer_path)
            .expect("open the FIFO")
    })
    .await
    .expect("opener");
    writer
        .write_all(b"{\"id\": \"c1\", \"user_id\": \"cat\", \"type\": \"login\"}\n")
        .expect("write a line");
    writer.flush().expect("flush");
    wait_for_metrics(server.addr, "the import call to open", WAIT, |text| {
        common::rpc_open(text, "ProcessDataBatch") == 1
    })
    .await;

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    line_with(&mut err, "interrupted; the call was cancelled").await;
    let status = exit_of(&mut child, "the import to exit").await;
    assert_eq!(status.code(), Some(1));
    drop(writer);
    wait_for_metrics(server.addr, "the import call to end", WAIT, |text| {
        common::rpc_open(text, "ProcessDataBatch") == 0
    })
    .await;
    let scrape = common::scrape(server.addr).await;
    assert!(
        !scrape.contains("streamhub_rpc_finished_total{rpc=\"ProcessDataBatch\",code=\"OK\"}"),
        "{scrape}"
    );
    assert!(stored_events(&server, "cat").await.is_empty());
}
