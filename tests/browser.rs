//! The web console: its HTTP routes (assets, types, caching, 404s) against the in-process
//! server, and the whole console in headless Chromium: `tests/browser/console.mjs` (Node with
//! playwright-core) against the real binary with auth on, the streamhub CLI on the other end of
//! each check. Without `/usr/bin/chromium`, `node` or `console/node_modules/playwright-core`
//! the browser test prints one `skipped:` line and passes, unless STREAMHUB_REQUIRE_BROWSER=1
//! (CI), which makes a missing piece a failure. It must never download a browser.

mod common;

use common::{ChildServer, TestServer, within};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SECRET: &str = "browser-test-secret-0123456789abcdef0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run: every wait inside it has its own 30 s deadline; this only bounds a
/// hang of Node or Chromium themselves.
const BROWSER_RUN: Duration = Duration::from_secs(600);

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
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to EOF, with a
/// deadline. The console's responses carry Content-Length, so no chunked decoding is needed.
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    within(
        60,
        &format!("{method} {path}"),
        send(addr, method, path, headers),
    )
    .await
}

async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of the HTTP head");
    let head = std::str::from_utf8(&raw[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// A request (method, path), the status it gets, and for a served asset its type and bytes.
type RouteCase = (
    &'static str,
    &'static str,
    u16,
    Option<(&'static str, Vec<u8>)>,
);

fn repo_file(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

/// Every console path, and the paths next to them that must not serve anything: the embedded
/// bytes are exactly `console/dist/`, with the right type; no token is needed for the page
/// itself (its API calls carry one); anything else under /console is 404.
#[tokio::test]
async fn console_routes_serve_the_embedded_assets_and_nothing_else() {
    let server = TestServer::start_with(|c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
    })
    .await;
    let addr = server.addr;
    let index = repo_file("console/dist/index.html");
    let cases: &[RouteCase] = &[
        (
            "GET",
            "/console",
            200,
            Some(("text/html; charset=utf-8", index.clone())),
        ),
        (
            "GET",
            "/console/",
            200,
            Some(("text/html; charset=utf-8", index.clone())),
        ),
        (
            "GET",
            "/console/index.html",
            200,
            Some(("text/html; charset=utf-8", index.clone())),
        ),
        (
            "GET",
            "/console/app.js",
            200,
            Some((
                "text/javascript; charset=utf-8",
                repo_file("console/dist/app.js"),
            )),
        ),
        (
            "GET",
            "/console/app.css",
            200,
            Some(("text/css; charset=utf-8", repo_file("console/dist/app.css"))),
        ),
        (
            "GET",
            "/console/favicon.svg",
            200,
            Some(("image/svg+xml", repo_file("console/dist/favicon.svg"))),
        ),
        ("GET", "/console/app.js?v=1", 200, None),
        ("GET", "/console/nope.js", 404, None),
        ("GET", "/console/APP.JS", 404, None),
        ("GET", "/console/app.js/", 404, None),
        ("GET", "/console/app.js/more", 404, None),
        ("GET", "/console/dist/app.js", 404, None),
        ("GET", "/console/../Cargo.toml", 404, None),
        ("GET", "/console/%2e%2e/Cargo.toml", 404, None),
        ("GET", "/console/src/main.ts", 404, None),
        ("GET", "/console//app.js", 404, None),
        ("POST", "/console", 405, None),
        ("PUT", "/console/app.js", 405, None),
        ("DELETE", "/console/", 405, None),
    ];
    for (method, path, status, expect) in cases {
        let reply = http(addr, method, path, &[]).await;
        assert_eq!(reply.status, *status, "{method} {path}");
        if let Some((content_type, body)) = expect {
            assert_eq!(reply.header("content-type"), Some(*content_type), "{path}");
            assert_eq!(
                &reply.body, body,
                "{path}: the embedded bytes are console/dist's"
            );
            assert_eq!(reply.header("cache-control"), Some("no-cache"), "{path}");
            assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
            assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
            let csp = reply.header("content-security-policy").expect("CSP");
            assert!(csp.contains("default-src 'self'"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            let etag = reply.header("etag").expect("ETag");
            assert!(
                etag.starts_with('"') && etag.ends_with('"') && etag.len() == 26,
                "{etag}"
            );
        }
    }

    // Revalidation: the ETag (strong or weak, alone or in a list) gets 304 with no body;
    // another one gets the asset.
    let first = http(addr, "GET", "/console/app.js", &[]).await;
    let etag = first.header("etag").expect("ETag").to_string();
    let weak = format!("W/{etag}");
    let listed = format!("\"other\", {etag}");
    for (value, status) in [
        (etag.as_str(), 304),
        (weak.as_str(), 304),
        (listed.as_str(), 304),
        ("*", 304),
        ("\"other\"", 200),
    ] {
        let reply = http(addr, "GET", "/console/app.js", &[("If-None-Match", value)]).await;
        assert_eq!(reply.status, status, "If-None-Match: {value}");
        if status == 304 {
            assert!(reply.body.is_empty());
            assert_eq!(reply.header("etag"), Some(etag.as_str()));
        }
    }
    // Each asset has its own ETag; HEAD has the headers and no body.
    let index_etag = http(addr, "GET", "/console", &[]).await;
    assert_ne!(index_etag.header("etag"), Some(etag.as_str()));
    let head = http(addr, "HEAD", "/console/app.js", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
}

/// Why the browser test cannot run here, if it cannot.
fn missing_browser_piece() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("node is not installed".into());
    }
    let playwright =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("console/node_modules/playwright-core");
    if !playwright.exists() {
        return Some(format!(
            "{} is missing (npm ci in console/)",
            playwright.display()
        ));
    }
    None
}

/// Reads a child's stream on its own thread, line by line, into the channel.
fn collect(stream: impl Read + Send + 'static, into: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if into.send(line).is_err() {
                break;
            }
        }
    });
}

#[test]
fn the_console_in_chromium() {
    if let Some(why) = missing_browser_piece() {
        if std::env::var("STREAMHUB_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("STREAMHUB_REQUIRE_BROWSER=1 but {why}");
        }
        common::say_skipped(&why);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("hs256.secret");
    std::fs::write(&secret, SECRET).expect("secret file");
    let secret_arg = secret.to_str().expect("UTF-8 temp path");
    let server = ChildServer::spawn(
        dir.path(),
        &["--auth", "--auth-hs256-secret-file", secret_arg],
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let screenshots = root.join("target/browser-screenshots");

    let mut node = Command::new("node");
    node.arg(root.join("tests/browser/console.mjs"))
        .arg("--url")
        .arg(server.url())
        .arg("--cli")
        .arg(env!("CARGO_BIN_EXE_streamhub"))
        .arg("--screenshots")
        .arg(&screenshots)
        .current_dir(dir.path())
        // `streamhub token` in the script reads the server's secret from here; no other
        // setting of this environment may change what the CLI or the tokens say.
        .env("STREAMHUB_AUTH_HS256_SECRET_FILE", &secret)
        .env_remove("STREAMHUB_AUTH_HS256_SECRET")
        .env_remove("STREAMHUB_AUTH_AUDIENCE")
        .env_remove("STREAMHUB_AUTH_ISSUER")
        .env_remove("STREAMHUB_TOKEN")
        .env_remove("STREAMHUB_CA_CERT")
        .env_remove("STREAMHUB_CLIENT_CERT")
        .env_remove("STREAMHUB_CLIENT_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = node.spawn().expect("spawn node");
    let pid = child.id().to_string();
    let (lines, output) = mpsc::channel();
    collect(child.stdout.take().expect("stdout"), lines.clone());
    collect(child.stderr.take().expect("stderr"), lines);

    let (done, finished) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done.send(());
        (child, status)
    });
    let ended = finished.recv_timeout(BROWSER_RUN).is_ok();
    if !ended {
        // Node hung: end it (by its own pid, nothing else) so the test can report.
        let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
    }
    let (_child, status) = waiter.join().expect("waiter");
    let log: Vec<String> = output.try_iter().collect();
    let log = log.join("\n");
    println!("{log}");
    assert!(
        ended,
        "the browser run did not end within {BROWSER_RUN:?}:\n{log}"
    );
    let status = status.expect("node's exit status");
    assert!(
        status.success(),
        "tests/browser/console.mjs failed ({status}); screenshots in {}:\n{log}",
        screenshots.display()
    );
    for shot in [
        "02-streams-tail.png",
        "03-chat.png",
        "04-files-paused.png",
        "06-metrics.png",
    ] {
        let path = screenshots.join(shot);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "no screenshot {}", path.display());
    }
    drop(server);
}
