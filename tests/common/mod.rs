//! The integration-test harness: the real server on 127.0.0.1:0 with its own temporary database,
//! reached through the generated client. Logs stay quiet unless TEST_LOG is set.
#![allow(dead_code)]

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

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The log engine inside the server: hub receiver counts, writer figures.
    pub log: Log,
    pub dir: Arc<tempfile::TempDir>,
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

    /// Starts on an existing directory (a restart keeps the database).
    pub async fn start_in(dir: Arc<tempfile::TempDir>, adjust: impl FnOnce(&mut Config)) -> Self {
        init_logs();
        let mut config = Config::in_dir(dir.path());
        config.shutdown_grace_secs = 1;
        adjust(&mut config);
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

    /// Graceful shutdown; returns the directory so the database can be reopened.
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
    pub fn spawn(dir: &Path, extra_args: &[&str]) -> Self {
        let db = format!("sqlite://{}", dir.join("streamhub.db").display());
        let files: PathBuf = dir.join("files");
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamhub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
            .arg("--storage-dir")
            .arg(&files)
            .args(extra_args)
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
