//! The integration-test harness: the real server on 127.0.0.1:0 with its own temporary database,
//! reached through the generated client. Logs stay quiet unless TEST_LOG is set.
//!
//! A server runs on either store ([`StoreKind`]): SQLite in its temporary directory, or a fresh
//! PostgreSQL database of its own ([`pg::TestDb`]). [`store_tests!`] runs one test body on both;
//! [`TestServer::replicas`] starts two servers on one PostgreSQL database and one storage
//! directory, and [`ChildServer::spawn_on`] the built binary on any database URL.
#![allow(dead_code)]

pub mod chat;
pub mod collab;
pub mod pg;
pub mod user_events;

pub use pg::{TestDb, postgres_ready};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use streamhub::Config;
use streamhub::log::Log;
use streamhub::proto::streaming_service_client::StreamingServiceClient;
use streamhub::server::App;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Client = StreamingServiceClient<Channel>;

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        streamhub::telemetry::init("debug,h2=info,hyper=info,tower=info");
    }
}

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `sqlite://<temp dir>/streamhub.db`: one server.
    Sqlite,
    /// A fresh PostgreSQL database per server home ([`TestDb`]): shareable by replicas.
    Postgres,
}

impl StoreKind {
    /// The skip rule: whether a test on this store can run here. Always for SQLite; for
    /// PostgreSQL see [`postgres_ready`] (one `skipped:` line and `false` when it is unreachable,
    /// a panic instead when STREAMHUB_REQUIRE_POSTGRES=1).
    pub async fn ready(self) -> bool {
        match self {
            StoreKind::Sqlite => true,
            StoreKind::Postgres => postgres_ready().await,
        }
    }

    pub fn is_postgres(self) -> bool {
        self == StoreKind::Postgres
    }

    /// A fresh place for a server on this store: a temporary directory and, for PostgreSQL, a
    /// database of its own.
    pub async fn home(self) -> Home {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let db = match self {
            StoreKind::Sqlite => None,
            StoreKind::Postgres => Some(Arc::new(TestDb::create().await)),
        };
        Home { dir, db }
    }
}

/// Where a server keeps its data: a temporary directory (files, and the SQLite database) and,
/// on PostgreSQL, its test database. Servers started on one home share everything: a restart
/// finds the data, and two replicas share the database and the storage directory. The database
/// is dropped once the last clone goes.
#[derive(Clone)]
pub struct Home {
    pub dir: Arc<tempfile::TempDir>,
    pub db: Option<Arc<TestDb>>,
}

impl Home {
    pub fn kind(&self) -> StoreKind {
        if self.db.is_some() {
            StoreKind::Postgres
        } else {
            StoreKind::Sqlite
        }
    }

    /// `DATABASE_URL` of this home.
    pub fn database_url(&self) -> String {
        match &self.db {
            Some(db) => db.url().to_string(),
            None => format!(
                "sqlite://{}",
                self.dir.path().join("streamhub.db").display()
            ),
        }
    }

    /// The shared storage directory (`<dir>/files`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// The test defaults on this home.
    pub fn config(&self) -> Config {
        let mut config = Config::in_dir(self.dir.path());
        config.shutdown_grace_secs = 1;
        if let Some(db) = &self.db {
            config.database_url = db.url().to_string();
            // Tests run side by side, some with two replicas: stay well under PostgreSQL's
            // default of 100 connections.
            config.pg_pool_size = 8;
        }
        config
    }
}

/// Prints `skipped: <why>` where a plain `cargo test` shows it. The test harness captures
/// `println!`/`eprintln!` of a passing test, so this writes to the process's stderr directly.
pub fn say_skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "skipped: {why}");
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The log engine inside the server: hub receiver counts, writer figures.
    pub log: Log,
    pub dir: Arc<tempfile::TempDir>,
    /// The PostgreSQL test database, kept alive as long as the server (`None` on SQLite).
    pub db: Option<Arc<TestDb>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<streamhub::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::start_in(dir, adjust).await
    }

    /// Starts on `kind`: a fresh temporary directory and, for PostgreSQL, a fresh database
    /// (check [`StoreKind::ready`] first; [`store_tests!`] does).
    pub async fn start_on(kind: StoreKind, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_at(kind.home().await, adjust).await
    }

    /// Starts on an existing directory (a restart keeps the database). SQLite.
    pub async fn start_in(dir: Arc<tempfile::TempDir>, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_at(Home { dir, db: None }, adjust).await
    }

    /// Two servers ("replicas") on one fresh PostgreSQL database and one storage directory,
    /// both adjusted by `adjust`. `None` when PostgreSQL is unreachable (the test was skipped:
    /// return).
    pub async fn replicas(adjust: impl Fn(&mut Config)) -> Option<(TestServer, TestServer)> {
        if !postgres_ready().await {
            return None;
        }
        let home = StoreKind::Postgres.home().await;
        let a = Self::start_at(home.clone(), &adjust).await;
        let b = Self::start_at(home, &adjust).await;
        Some((a, b))
    }

    /// What this server runs on, for a restart or a second replica on the same data.
    pub fn home(&self) -> Home {
        Home {
            dir: self.dir.clone(),
            db: self.db.clone(),
        }
    }

    pub fn kind(&self) -> StoreKind {
        self.home().kind()
    }

    /// Starts on `home` (a restart, or one more replica of it).
    pub async fn start_at(home: Home, adjust: impl FnOnce(&mut Config)) -> Self {
        init_logs();
        let mut config = home.config();
        adjust(&mut config);
        let Home { dir, db } = home;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = App::open(config).await.expect("open server");
        let log = app.log().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            log,
            dir,
            db,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    /// Graceful shutdown, then a new server on the same data.
    pub async fn restart(self, adjust: impl FnOnce(&mut Config)) -> Self {
        let home = self.home();
        self.stop().await;
        Self::start_at(home, adjust).await
    }

    /// Graceful shutdown; returns the directory so the database can be reopened (keep
    /// [`TestServer::home`] too for PostgreSQL: the database goes with its last handle).
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran cleanly");
        }
        self.dir.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn connect(url: &str) -> Client {
    let channel = Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    StreamingServiceClient::new(channel)
}

/// The built `streamhub` binary running as a child process, so that `kill -9` is real.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// The binary on `<dir>/streamhub.db` (SQLite), files in `<dir>/files`.
    pub fn spawn(dir: &Path, extra_args: &[&str]) -> Self {
        let db = format!("sqlite://{}", dir.join("streamhub.db").display());
        Self::spawn_on(dir, &db, extra_args)
    }

    /// The binary on a server home: its database (SQLite or PostgreSQL) and storage directory.
    /// Several children on one PostgreSQL home are replicas of one deployment.
    pub fn spawn_at(home: &Home, extra_args: &[&str]) -> Self {
        Self::spawn_on(home.dir.path(), &home.database_url(), extra_args)
    }

    /// The binary with `DATABASE_URL=database_url` (in its environment, not its command line,
    /// where a password would show), files in `<dir>/files`.
    pub fn spawn_on(dir: &Path, database_url: &str, extra_args: &[&str]) -> Self {
        let files: PathBuf = dir.join("files");
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamhub"));
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        if streamhub::store::is_postgres_url(database_url) {
            command.args(["--pg-pool-size", "8"]);
        }
        let mut child = command
            .arg("--storage-dir")
            .arg(&files)
            .args(extra_args)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "info")
            .env_remove("STREAMHUB_LISTEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn streamhub");
        let stderr = child.stderr.take().expect("stderr");
        let (found, addr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("[child] {line}");
                }
                if !sent
                    && line.contains("streamhub serving")
                    && let Some(rest) = line.split("addr=").nth(1)
                    && let Some(addr) = rest.split_whitespace().next()
                    && let Ok(addr) = addr.parse::<SocketAddr>()
                {
                    let _ = found.send(addr);
                    sent = true;
                }
            }
        });
        let addr = addr
            .recv_timeout(Duration::from_secs(30))
            .expect("child server announced its address");
        ChildServer { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic PRNG (xorshift64*), so tests need no extra crate: random timings and
/// file contents that can be generated in order, never held whole.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Fills `buf`; buffers whose length is a multiple of 8 continue one another seamlessly.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            word.copy_from_slice(&x[..word.len()]);
        }
    }
}

/// A TCP forwarder in front of a server: clients connect through it, and [`Cuttable::cut`]
/// closes every connection it carries at once, the way a dead network or a killed client
/// process looks to the server (no RST_STREAM, no half-close: the socket just goes away).
pub struct Cuttable {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Cuttable {
    pub async fn to(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every forwarding task, which
            // drops both sockets of each connection.
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Cuttable { addr, task }
    }

    /// A client whose one connection runs through this forwarder.
    pub async fn client(&self) -> Client {
        connect(&format!("http://{}", self.addr)).await
    }

    /// Closes every connection through the forwarder, now.
    pub fn cut(self) {
        self.task.abort();
    }
}

/// Resident memory of this process (the test and its in-process server), in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

use tokio_util::sync::CancellationToken;

/// A TCP forwarder that can stop forwarding without closing anything: after
/// [`Freezable::freeze`] both sockets of every connection stay open but no byte moves in either
/// direction, the way a peer looks when its machine dies or its network drops packets. The server
/// sees no FIN and no RST; only its HTTP/2 keepalive can find out.
pub struct Freezable {
    pub addr: SocketAddr,
    frozen: CancellationToken,
    task: JoinHandle<()>,
}

/// Copies `from` to `to` until either side ends; once `frozen` is cancelled, holds both halves
/// open and moves nothing, forever.
async fn forward_until_frozen(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let step = async {
            let n = from.read(&mut buf).await?;
            to.write_all(&buf[..n]).await?;
            Ok::<usize, std::io::Error>(n)
        };
        tokio::select! {
            _ = frozen.cancelled() => std::future::pending::<()>().await,
            step = step => match step {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

impl Freezable {
    pub async fn to(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let frozen = CancellationToken::new();
        let token = frozen.clone();
        let task = tokio::spawn(async move {
            // Dropped with this task: every link, and so every socket, goes with it.
            let mut links = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let frozen = token.clone();
                links.spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    let up = forward_until_frozen(in_read, out_write, frozen.clone());
                    let down = forward_until_frozen(out_read, in_write, frozen);
                    tokio::join!(up, down);
                });
            }
        });
        Freezable { addr, frozen, task }
    }

    /// A client whose one connection runs through this forwarder.
    pub async fn client(&self) -> Client {
        connect(&format!("http://{}", self.addr)).await
    }

    /// Stops moving bytes on every connection, keeping the sockets open.
    pub fn freeze(&self) {
        self.frozen.cancel();
    }
}

impl Drop for Freezable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET path` over plain HTTP/1.1 (the server's `/metrics` and download routes); returns the
/// status line's code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// `METHOD path` over HTTP/1.1 with `connection: close`: the status code and the body.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send request");
    let mut response = Vec::new();
    socket
        .read_to_end(&mut response)
        .await
        .expect("read response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The server's `/metrics` text.
pub async fn scrape(addr: SocketAddr) -> String {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}

/// The value of one exact metric line, e.g. `streamhub_rpc_open{rpc="Chat"}`.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `streamhub_rpc_open{rpc="<rpc>"}` of a scrape.
pub fn rpc_open(text: &str, rpc: &str) -> u64 {
    metric(text, &format!("streamhub_rpc_open{{rpc=\"{rpc}\"}}"))
        .unwrap_or_else(|| panic!("no streamhub_rpc_open for {rpc} in:\n{text}"))
}

/// Scrapes `/metrics` every 50 ms until `cond` holds; fails after `limit` with the last scrape.
/// Returns how long it took.
pub async fn wait_for_metrics(
    addr: SocketAddr,
    what: &str,
    limit: Duration,
    mut cond: impl FnMut(&str) -> bool,
) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        let text = scrape(addr).await;
        if cond(&text) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server has no `rpc` call open: every handler of it has returned (a
/// cancelled call's handler, and whatever it had received, are gone).
pub async fn rpc_calls_closed(addr: SocketAddr, rpc: &str) {
    wait_for_metrics(
        addr,
        &format!("no {rpc} call open"),
        Duration::from_secs(15),
        |text| rpc_open(text, rpc) == 0,
    )
    .await;
}

/// Resident memory of another process, in KiB (0 when it cannot be read).
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs a test body with an overall deadline, so that a bug fails the test instead of hanging it.
pub async fn within<T>(secs: u64, what: &str, body: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), body).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {secs} s"),
    }
}

/// Polls `cond` every 10 ms until it holds, failing after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Re-checks `probe` every 20 ms until it answers `Ok`, and returns that value. After `limit` it
/// fails the test, naming `what` and the probe's last `Err` (what it saw instead). For
/// conditions that take an await to check (a history read, a query), where [`wait_for`] cannot.
/// The probe is an async closure, so it may borrow the test's own connection between checks.
pub async fn poll_until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one `authorization` header value (or none) on every call.
#[derive(Clone)]
pub struct Authorization(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Authorization {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client whose calls carry an `authorization` header.
pub type AuthClient =
    StreamingServiceClient<tonic::service::interceptor::InterceptedService<Channel, Authorization>>;

/// A client that sends `authorization: <header>` (the whole value, for malformed-header tests),
/// or no header.
pub async fn client_with_header(addr: SocketAddr, header: Option<&str>) -> AuthClient {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let value = header.map(|h| h.parse().expect("an ASCII header value"));
    StreamingServiceClient::with_interceptor(channel, Authorization(value))
}

/// A client that sends `authorization: Bearer <token>`.
pub async fn client_as(addr: SocketAddr, token: &str) -> AuthClient {
    client_with_header(addr, Some(&format!("Bearer {token}"))).await
}

/// One test body on both stores, without a copy. The body is an ordinary async function of the
/// test file that takes the store:
///
/// ```ignore
/// store_tests!(appends_replay);
/// /// What it shows.
/// async fn appends_replay(kind: StoreKind) {
///     let server = TestServer::start_on(kind, |_| {}).await;
///     …
/// }
/// ```
///
/// makes a module of the same name with two `#[tokio::test]`s (multi-threaded, 2 workers) that
/// call it: `appends_replay::sqlite` and `appends_replay::postgres`. The PostgreSQL one follows
/// the skip rule ([`StoreKind::ready`]) first. Several names may be given at once.
#[allow(unused_macros)]
macro_rules! store_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::StoreKind::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::common::StoreKind::Postgres.ready().await {
                    super::$name($crate::common::StoreKind::Postgres).await
                }
            }
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use store_tests;
