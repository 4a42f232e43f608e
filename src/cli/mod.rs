//! The command line: the server (`serve`, the default) and the client commands of the same
//! binary. Client commands talk to a server only through the generated gRPC client; they never
//! open the database.

pub mod bench;
pub mod chat;
pub mod events;
pub mod files;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod token;

use crate::config::Config;
use crate::proto::streaming_service_client::StreamingServiceClient;
use clap::{Args, Parser, Subcommand};
use tonic::transport::Channel;

/// streamhub: a persistent, event-sourced gRPC streaming service.
///
/// With no command (or `serve`) it runs the server. The other commands are clients of a
/// running server.
#[derive(Debug, Parser)]
#[command(name = "streamhub", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: Config,
}

// Parsed once per process: the size of the `Serve` variant (all settings) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve(Config),
    /// Publish, tail and import user events.
    Events(events::EventsArgs),
    /// Upload a file, checksummed with SHA-256; with --id it is resumable.
    Upload(files::UploadArgs),
    /// Download a file by id, verify its SHA-256, then move it into place.
    Download(files::DownloadArgs),
    /// Look up a stored file, or how far an upload has come.
    Files(files::FilesArgs),
    /// Join a chat room interactively, or read its history.
    Chat(chat::ChatArgs),
    /// Send, tail and acknowledge notifications.
    Notify(notify::NotifyArgs),
    /// Push metrics in the Prometheus text style, or query them.
    Metrics(metrics::MetricsArgs),
    /// Stream numbers from stdin through ProcessLiveData and print each result.
    Live(live::LiveArgs),
    /// Measure throughput and latency against a running server.
    Bench(bench::BenchArgs),
    /// Mint a development bearer token (HS256) from the server's secret.
    Token(token::TokenArgs),
}

/// How a client command reaches the server.
#[derive(Debug, Clone, Args)]
pub struct Connect {
    /// gRPC endpoint of the server.
    #[arg(
        long,
        env = "STREAMHUB_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
}

impl Connect {
    /// Opens a channel to the server, failing fast with a readable message when it is down.
    pub async fn channel(&self) -> CliResult<Channel> {
        let endpoint = Channel::from_shared(self.server.clone())
            .map_err(|e| fail(format!("invalid --server {}: {e}", self.server)))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true);
        endpoint.connect().await.map_err(|e| {
            fail(format!(
                "cannot reach streamhub at {}: {}",
                self.server,
                crate::error::cause_chain(&e)
            ))
        })
    }

    pub async fn client(&self) -> CliResult<StreamingServiceClient<Channel>> {
        Ok(StreamingServiceClient::new(self.channel().await?)
            .max_decoding_message_size(64 * 1024 * 1024))
    }
}

/// A failed client command, already phrased for the person at the terminal. Client commands
/// are leaves, so a message is all they need.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError(format!("{:?}: {}", status.code(), status.message()))
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult<T> = std::result::Result<T, CliError>;

pub fn fail(text: impl Into<String>) -> CliError {
    CliError(text.into())
}
