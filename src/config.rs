//! Typed server configuration: every setting is a flag with an environment fallback, and `.env`
//! is read at start (by `main`). Defaults live here and nowhere else.
//!
//! This module only describes settings; it never opens files or sockets.

use clap::{Args, ValueEnum};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// fsync on every commit: an acknowledged write survives power loss. The default.
    Full,
    /// fsync at WAL checkpoints only: an acknowledged write survives a process crash but not
    /// power loss.
    Normal,
}

/// Everything the server needs to start.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address for gRPC, gRPC health and reflection, and plain HTTP (download URLs, /metrics)
    /// on one listener: IP:PORT, or localhost:PORT for 127.0.0.1.
    #[arg(long, env = "STREAMHUB_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Database: a `sqlite:` URL (sqlite://path/to/file.db) for one server, created and migrated
    /// at start, which one server holds at a time (`<file>.lock`); or a `postgres:` URL
    /// (postgres://user:password@host/db), migrated at start, which several replicas share.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/streamhub.db"
    )]
    pub database_url: String,

    /// Directory for uploaded file bytes. On SQLite one server holds it at a time
    /// (`<dir>/.streamhub.lock`); PostgreSQL replicas share it.
    #[arg(long, env = "STREAMHUB_STORAGE_DIR", default_value = "data/files")]
    pub storage_dir: PathBuf,

    /// Base URL that download links are built on; defaults to http://<listen>.
    #[arg(long, env = "STREAMHUB_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// PEM certificate chain: with --tls-key, the listener (gRPC and HTTP) speaks only TLS.
    #[arg(long, env = "STREAMHUB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "STREAMHUB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): with it, clients must present a certificate signed by one of them
    /// (mutual TLS). Needs --tls-cert and --tls-key.
    #[arg(long, env = "STREAMHUB_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds a new connection gets to finish its TLS handshake (with TLS) or send its HTTP
    /// preface (without) before it is dropped, so that clients that connect and stall hold
    /// nothing for long.
    #[arg(
        long,
        env = "STREAMHUB_TLS_HANDSHAKE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub tls_handshake_timeout_secs: u64,

    /// Commit durability. `full` makes every acknowledged write survive power loss.
    #[arg(long, env = "STREAMHUB_SYNC", value_enum, default_value_t = SyncMode::Full)]
    pub sync: SyncMode,

    /// Bound on SQLite's write-ahead log, in bytes. When a commit leaves the WAL larger, the
    /// writer truncates it (a TRUNCATE checkpoint) before the next commit. Only a single
    /// transaction larger than the bound (a big import) passes it, and only until it commits.
    #[arg(long, env = "STREAMHUB_MAX_WAL_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_wal_bytes: u64,

    /// Largest file an upload may declare, in bytes; a larger `total_size` gets
    /// RESOURCE_EXHAUSTED before any byte is written.
    #[arg(long, env = "STREAMHUB_MAX_UPLOAD_BYTES", default_value_t = 8 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: u64,

    /// Seconds an interrupted resumable upload keeps its bytes before the sweep removes them.
    #[arg(long, env = "STREAMHUB_UPLOAD_EXPIRY_SECS", default_value_t = 24 * 60 * 60)]
    pub upload_expiry_secs: u64,

    /// Seconds between sweeps for expired uploads (one also runs at start).
    #[arg(long, env = "STREAMHUB_UPLOAD_SWEEP_SECS", default_value_t = 300)]
    pub upload_sweep_secs: u64,

    /// Largest `data` payload of one event, in bytes (encoded Any).
    #[arg(long, env = "STREAMHUB_MAX_EVENT_DATA_BYTES", default_value_t = 64 * 1024)]
    pub max_event_data_bytes: usize,

    /// Most records one ProcessDataBatch call may send; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAMHUB_MAX_BATCH_RECORDS", default_value_t = 1_000_000)]
    pub max_batch_records: u64,

    /// Most bytes (encoded records) one ProcessDataBatch call may send; bounds its memory.
    #[arg(long, env = "STREAMHUB_MAX_BATCH_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_batch_bytes: u64,

    /// Records each live stream key buffers for a slow subscriber before it falls back to the
    /// store. Smaller saves memory; larger saves store re-reads.
    #[arg(long, env = "STREAMHUB_HUB_CAPACITY", default_value_t = 1024)]
    pub hub_capacity: usize,

    /// Subscriptions (event and notification streams, chat and collaboration sessions) the
    /// server holds at once, each for its whole life; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAMHUB_MAX_SUBSCRIPTIONS", default_value_t = 10_000)]
    pub max_subscriptions: usize,

    /// Live streams one chat room or collaboration document may have; one more gets
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAMHUB_MAX_ROOM_MEMBERS", default_value_t = 10_000)]
    pub max_room_members: usize,

    /// Total bytes of stored and in-progress files (declared sizes); an upload that would pass
    /// it gets RESOURCE_EXHAUSTED before any byte is written.
    #[arg(long, env = "STREAMHUB_MAX_STORAGE_BYTES", default_value_t = 100 * 1024 * 1024 * 1024)]
    pub max_storage_bytes: u64,

    /// Subscriptions one user (a token's `sub`) holds at once: event and notification streams,
    /// chat and collaboration sessions. One more gets RESOURCE_EXHAUSTED; other users are not
    /// affected. Applies only with auth on; service tokens count only against the global limit.
    #[arg(
        long,
        env = "STREAMHUB_MAX_SUBSCRIPTIONS_PER_USER",
        default_value_t = 100
    )]
    pub max_subscriptions_per_user: usize,

    /// Bytes of stored files and in-progress uploads (declared sizes) one user may hold. Applies
    /// only with auth on; service tokens count only against the global quota.
    #[arg(long, env = "STREAMHUB_MAX_STORAGE_BYTES_PER_USER", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub max_storage_bytes_per_user: u64,

    /// Seconds an upload may send nothing, or a download's reader take nothing, before the call
    /// ends with DEADLINE_EXCEEDED. An idle upload keeps its durable bytes (resumable) and
    /// releases the rest of its declared size from the quota.
    #[arg(long, env = "STREAMHUB_TRANSFER_IDLE_SECS", default_value_t = 60)]
    pub transfer_idle_secs: u64,

    /// Seconds a connection may stay open with no call before it gets GOAWAY.
    #[arg(long, env = "STREAMHUB_IDLE_CONNECTION_SECS", default_value_t = 300)]
    pub idle_connection_secs: u64,

    /// Distinct series (label sets) one metric name may have; a point that would add one more
    /// is rejected in the CollectMetrics result.
    #[arg(
        long,
        env = "STREAMHUB_MAX_SERIES_PER_METRIC",
        default_value_t = 10_000
    )]
    pub max_series_per_metric: u64,

    /// Series one QueryMetrics call may match; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAMHUB_MAX_QUERY_SERIES", default_value_t = 1_000)]
    pub max_query_series: u64,

    /// Appends waiting for the single writer; callers wait when it is full.
    #[arg(long, env = "STREAMHUB_WRITER_QUEUE", default_value_t = 8192)]
    pub writer_queue: usize,

    /// Seconds between HTTP/2 keepalive pings to each client; also the idle time before TCP
    /// keepalive probes, which find dead HTTP/1.1 peers (gRPC-Web over plain HTTP has no pings).
    #[arg(long, env = "STREAMHUB_KEEPALIVE_INTERVAL_SECS", default_value_t = 30)]
    pub keepalive_interval_secs: u64,

    /// Seconds to wait for a ping's answer before the connection is dropped; also the interval
    /// between TCP keepalive probes (three unanswered ones close the connection).
    #[arg(long, env = "STREAMHUB_KEEPALIVE_TIMEOUT_SECS", default_value_t = 10)]
    pub keepalive_timeout_secs: u64,

    /// Concurrent HTTP/2 streams (RPCs) one connection may open. An HTTP/2 setting, not a gRPC
    /// status: a compliant client queues its next call until one of its streams ends.
    #[arg(long, env = "STREAMHUB_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

    /// Largest single gRPC message the server decodes, in bytes; a larger one gets
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAMHUB_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Require a bearer JWT (`authorization: Bearer <token>`) on every StreamingService call
    /// and a signature on download URLs. Off by default; on, the server refuses to start
    /// without a key.
    #[arg(
        long,
        env = "STREAMHUB_AUTH",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub auth: bool,

    /// Shared secret that HS256 tokens are signed with (at least 32 bytes). Prefer the
    /// environment or --auth-hs256-secret-file: a flag shows in the process list.
    #[arg(long, env = "STREAMHUB_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<crate::secret::Secret>,

    /// File holding the HS256 secret (surrounding whitespace is trimmed).
    #[arg(
        long,
        env = "STREAMHUB_AUTH_HS256_SECRET_FILE",
        conflicts_with = "auth_hs256_secret"
    )]
    pub auth_hs256_secret_file: Option<PathBuf>,

    /// PEM public key that RS256 (an RSA key) or EdDSA (an Ed25519 key) tokens are checked
    /// against; the algorithm follows from the key.
    #[arg(long, env = "STREAMHUB_AUTH_PUBLIC_KEY_FILE")]
    pub auth_public_key_file: Option<PathBuf>,

    /// Audience this server answers to. Set, a token must carry it in `aud`; unset, a token
    /// that names any audience is refused (it was meant for someone else).
    #[arg(long, env = "STREAMHUB_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// Issuer this server trusts. Set, a token's `iss` must equal it.
    #[arg(long, env = "STREAMHUB_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// Longest token lifetime accepted (`exp - iat`), in seconds. A longer-lived token, or one
    /// without `iat`, is refused: a leaked token stays useful only this long.
    #[arg(
        long,
        env = "STREAMHUB_AUTH_MAX_TOKEN_TTL_SECS",
        default_value_t = 86_400
    )]
    pub auth_max_token_ttl_secs: u64,

    /// Chat rooms any authenticated user may use: comma-separated patterns, exact ids or
    /// prefixes ending in `*` (`lobby,team-*`; `*` opens every room). Never opens an id with a
    /// `#` user boundary (direct messages).
    #[arg(long, env = "STREAMHUB_PUBLIC_ROOMS", value_delimiter = ',')]
    pub public_rooms: Vec<String>,

    /// Collaboration documents any authenticated user may use, in the syntax of --public-rooms.
    #[arg(long, env = "STREAMHUB_PUBLIC_DOCUMENTS", value_delimiter = ',')]
    pub public_documents: Vec<String>,

    /// Secret that download URLs are signed with when auth is on. Default: derived from the
    /// HS256 secret, or else random at each start (URLs then stop working after a restart).
    #[arg(long, env = "STREAMHUB_URL_SIGNING_SECRET", hide_env_values = true)]
    pub url_signing_secret: Option<crate::secret::Secret>,

    /// Seconds a signed download URL stays valid after the upload that returned it.
    #[arg(long, env = "STREAMHUB_DOWNLOAD_URL_TTL_SECS", default_value_t = 3600)]
    pub download_url_ttl_secs: u64,

    /// Web origins (`https://app.example.com`, comma-separated) whose pages may call the API
    /// from a browser: gRPC-Web, tus uploads and downloads. Unset, no CORS headers are sent and
    /// browsers allow only same-origin pages (the console). `*` allows any origin, for
    /// development (a warning is logged when auth is on). Tokens travel in `authorization`, never
    /// in cookies, so no origin gets credentials.
    #[arg(long, env = "STREAMHUB_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// Messages a chat member joining with sequence 0 gets replayed: the room's latest.
    #[arg(long, env = "STREAMHUB_CHAT_REPLAY_MESSAGES", default_value_t = 50)]
    pub chat_replay_messages: u64,

    /// Largest chat message `content`, in bytes.
    #[arg(long, env = "STREAMHUB_MAX_CHAT_CONTENT_BYTES", default_value_t = 16 * 1024)]
    pub max_chat_content_bytes: usize,

    /// Largest collaboration `payload` (an operation or a cursor), in bytes.
    #[arg(long, env = "STREAMHUB_MAX_COLLAB_PAYLOAD_BYTES", default_value_t = 64 * 1024)]
    pub max_collab_payload_bytes: usize,

    /// Presence and typing signals buffered per room for a slow member; past this a member
    /// resynchronises presence and misses stale typing and cursor signals (never stored ones).
    #[arg(long, env = "STREAMHUB_PRESENCE_CAPACITY", default_value_t = 256)]
    pub presence_capacity: usize,

    /// Largest notification (title, body and data together), in bytes.
    #[arg(long, env = "STREAMHUB_MAX_NOTIFICATION_BYTES", default_value_t = 64 * 1024)]
    pub max_notification_bytes: usize,

    /// Milliseconds CollectMetrics gathers points before it commits them, so a query sees them
    /// while the stream is still open.
    #[arg(long, env = "STREAMHUB_METRICS_COMMIT_MS", default_value_t = 200)]
    pub metrics_commit_ms: u64,

    /// Values in each key's sliding window in ProcessLiveData.
    #[arg(long, env = "STREAMHUB_LIVE_WINDOW", default_value_t = 100)]
    pub live_window: usize,

    /// |z-score| above which ProcessLiveData flags an input as an anomaly.
    #[arg(long, env = "STREAMHUB_LIVE_ANOMALY_Z", default_value_t = 3.0)]
    pub live_anomaly_z: f64,

    /// Distinct keys one ProcessLiveData stream may use; one more gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAMHUB_LIVE_MAX_KEYS", default_value_t = 10_000)]
    pub live_max_keys: usize,

    /// PostgreSQL only: connections this replica opens to the database (its appends, reads,
    /// file rows and presence leases share them; LISTEN holds one more of its own).
    #[arg(long, env = "STREAMHUB_PG_POOL_SIZE", default_value_t = 16)]
    pub pg_pool_size: u32,

    /// PostgreSQL only: milliseconds any one statement may run before the database cancels it
    /// (its call then fails with UNAVAILABLE and nothing of it is kept). 0 turns it off.
    #[arg(
        long,
        env = "STREAMHUB_PG_STATEMENT_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub pg_statement_timeout_ms: u64,

    /// PostgreSQL only: milliseconds before the first attempt to reconnect a lost LISTEN
    /// connection; each failed attempt doubles it, up to 30 s. Live records from other replicas
    /// wait meanwhile (the head check catches them up once it is back); none are lost.
    #[arg(long, env = "STREAMHUB_PG_LISTEN_BACKOFF_MS", default_value_t = 250)]
    pub pg_listen_backoff_ms: u64,

    /// PostgreSQL only: milliseconds between checks of the heads of streams this replica has
    /// live subscribers on. A notification from another replica that was lost is caught up
    /// within this time.
    #[arg(long, env = "STREAMHUB_PG_HEAD_CHECK_MS", default_value_t = 1_000)]
    pub pg_head_check_ms: u64,

    /// PostgreSQL only: seconds a replica's presence lease on a chat or collaboration member
    /// lasts unless renewed (renewed every third of it). After a replica dies, a survivor
    /// announces its members' leave once their leases lapse.
    #[arg(long, env = "STREAMHUB_PG_PRESENCE_LEASE_SECS", default_value_t = 15)]
    pub pg_presence_lease_secs: u64,

    /// Seconds that in-flight calls get to finish after a shutdown signal. Live streams end at
    /// once with UNAVAILABLE; idle client connections that ignore GOAWAY are cut after this.
    #[arg(long, env = "STREAMHUB_SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    pub shutdown_grace_secs: u64,
}

/// Parses a listen address: `IP:PORT`, or `localhost:PORT` (127.0.0.1, so a server meant for
/// this machine never binds a public interface by accident).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match text.strip_prefix("localhost:").map(str::parse::<u16>) {
        Some(Ok(port)) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        _ => Err(format!(
            "`{text}` is not a listen address; use IP:PORT (127.0.0.1:50051, 0.0.0.0:50051, \
             [::]:50051) or localhost:PORT"
        )),
    }
}

/// Parses one `--cors-origins` entry: `*`, or an origin as a browser sends it in `Origin`
/// (`scheme://host[:port]`, http or https, no path), lower-cased, with one trailing `/` dropped
/// (a browser never sends it, so it would match nothing). A blank entry stays blank and allows
/// nothing, so that `STREAMHUB_CORS_ORIGINS=` in a `.env` means none.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "*" {
        return Ok(trimmed.to_string());
    }
    let origin = trimmed
        .strip_suffix('/')
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    let refuse = |why: &str| {
        Err(format!(
            "`{text}` is not a CORS origin ({why}); use scheme://host[:port] \
             (https://app.example.com, http://localhost:5173) or `*`"
        ))
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return refuse("no scheme");
    };
    if scheme != "http" && scheme != "https" {
        return refuse("only http and https pages send an origin");
    }
    if authority.is_empty() {
        return refuse("no host");
    }
    if authority
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '@' | '*') || c.is_whitespace() || c.is_control())
    {
        return refuse("an origin has no path, query, user or wildcard");
    }
    let host_end = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => end + 1,
            None => return refuse("an unclosed IPv6 bracket"),
        }
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, port) = authority.split_at(host_end);
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return refuse("no host");
    }
    if let Some(port) = port.strip_prefix(':') {
        if port.parse::<u16>().is_err() {
            return refuse("a port is a number up to 65535");
        }
    } else if !port.is_empty() {
        return refuse("unexpected text after the host");
    }
    Ok(origin)
}

impl Config {
    /// The defaults, with the database and files under `dir`: what tests and embedders start from.
    pub fn in_dir(dir: &std::path::Path) -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        // Parse no flags: the built-in defaults, with the same environment fallback as the binary.
        let mut config = <Defaults as clap::Parser>::try_parse_from(["streamhub"])
            .map(|d| d.config)
            .unwrap_or_else(|e| panic!("built-in defaults must parse: {e}"));
        config.database_url = format!("sqlite://{}", dir.join("streamhub.db").display());
        config.storage_dir = dir.join("files");
        config
    }

    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }

    /// Whether the database is PostgreSQL (several replicas) rather than SQLite (one server).
    pub fn is_postgres(&self) -> bool {
        crate::store::is_postgres_url(&self.database_url)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_an_address_or_localhost() {
        assert_eq!(
            parse_listen("127.0.0.1:5").unwrap(),
            "127.0.0.1:5".parse().unwrap()
        );
        assert_eq!(parse_listen("[::]:7").unwrap(), "[::]:7".parse().unwrap());
        assert_eq!(
            parse_listen("localhost:50051").unwrap(),
            "127.0.0.1:50051".parse().unwrap()
        );
        for bad in ["localhost", "localhost:x", "example.com:1", "", ":80"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cors_origins_are_browser_origins_or_a_wildcard() {
        for (text, origin) in [
            ("*", "*"),
            (" * ", "*"),
            ("", ""),
            ("  ", ""),
            ("https://app.example.com", "https://app.example.com"),
            ("https://App.Example.com/", "https://app.example.com"),
            ("http://localhost:5173", "http://localhost:5173"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://[::1]:3000", "http://[::1]:3000"),
        ] {
            assert_eq!(parse_origin(text).as_deref(), Ok(origin), "{text}");
        }
        for bad in [
            "app.example.com",
            "ftp://example.com",
            "https://",
            "https://example.com/app",
            "https://example.com?x",
            "https://user@example.com",
            "https://*.example.com",
            "https://example.com:99999",
            "https://example.com:",
            "https://[::1",
            "https://[::1]x",
            "https://exa mple.com",
            "null",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad:?}");
        }
    }
}
