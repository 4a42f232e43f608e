//! The command line: the server (`serve`, the default) and the client commands of the same
//! binary. Client commands talk to a server only through the generated gRPC client; they never
//! open the database.

pub mod bench;
pub mod chat;
pub mod events;
pub mod files;
pub mod format;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod token;

use crate::config::Config;
use crate::proto::streaming_service_client::StreamingServiceClient;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

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
    /// gRPC endpoint of the server; https://… speaks TLS.
    #[arg(
        long,
        env = "STREAMHUB_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,

    /// PEM CA certificate that an https:// server's certificate must chain to (a private CA).
    /// Without it the system's trusted roots are used.
    #[arg(long, env = "STREAMHUB_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate, for a server that requires mutual TLS (with --client-key).
    #[arg(long, env = "STREAMHUB_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, env = "STREAMHUB_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// A JWT sent as `authorization: Bearer …` on every call, for a server with --auth on
    /// (`streamhub token` mints one for development).
    #[arg(long, env = "STREAMHUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Connect {
    /// A plaintext connection to `server`, with no TLS options.
    pub fn plain(server: impl Into<String>) -> Self {
        Connect {
            server: server.into(),
            ca_cert: None,
            client_cert: None,
            client_key: None,
            token: None,
        }
    }

    /// Opens a channel to the server, failing fast with a readable message when it is down.
    pub async fn channel(&self) -> CliResult<Channel> {
        let mut endpoint = Channel::from_shared(self.server.clone())
            .map_err(|e| fail(format!("invalid --server {}: {e}", self.server)))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some(tls) = self.tls_config()? {
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                let hint = if self.ca_cert.is_none() {
                    " (--ca-cert names the CA to trust instead of the system's)"
                } else {
                    ""
                };
                fail(format!("TLS setup for {}: {e}{hint}", self.server))
            })?;
        }
        endpoint.connect().await.map_err(|e| {
            fail(format!(
                "cannot reach streamhub at {}: {}",
                self.server,
                crate::error::cause_chain(&e)
            ))
        })
    }

    /// The TLS settings for an https:// server, `None` for http://. TLS options against an
    /// http:// server are an error rather than silently ignored: the person meant TLS.
    fn tls_config(&self) -> CliResult<Option<ClientTlsConfig>> {
        let https = self
            .server
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if !https {
            if self.ca_cert.is_some() || self.client_cert.is_some() {
                return Err(fail(format!(
                    "--ca-cert, --client-cert and --client-key need an https:// --server, not {}",
                    self.server
                )));
            }
            return Ok(None);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_cert {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read_certificates_pem(
                path,
                "--ca-cert",
            )?)),
            None => tls.with_native_roots(),
        };
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let cert = read_certificates_pem(cert, "--client-cert")?;
                let key = read_key_pem(key, "--client-key")?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => return Err(fail("--client-cert and --client-key go together")),
        }
        Ok(Some(tls))
    }

    pub async fn client(&self) -> CliResult<Client> {
        self.client_on(self.channel().await?)
    }

    /// A client on an open channel that sends this connection's token, if any.
    pub fn client_on(&self, channel: Channel) -> CliResult<Client> {
        let token = match &self.token {
            None => None,
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| fail("--token is not a valid header value"))?,
            ),
        };
        Ok(
            StreamingServiceClient::with_interceptor(channel, BearerToken(token))
                .max_decoding_message_size(64 * 1024 * 1024),
        )
    }
}

/// The generated client as every client command uses it: with the bearer token attached.
pub type Client = StreamingServiceClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Debug, Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
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
        let mut text = format!("{:?}: {}", status.code(), status.message());
        // Only a status made on this side (a broken connection, a refused TLS handshake) has a
        // source; its chain says what happened ("received fatal alert: CertificateRequired").
        if let Some(source) = std::error::Error::source(&status) {
            let cause = crate::error::cause_chain(source);
            if !text.ends_with(&cause) {
                text.push_str(": ");
                text.push_str(&cause);
            }
        }
        CliError(text)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult<T> = std::result::Result<T, CliError>;

/// A PEM file holding at least one certificate, checked here so that a wrong file is named
/// instead of failing later as an unexplained handshake error.
fn read_certificates_pem(path: &Path, flag: &str) -> CliResult<Vec<u8>> {
    let pem = read_file(path, flag)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("{flag} {}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(fail(format!(
            "{flag} {}: no CERTIFICATE block found (PEM expected)",
            path.display()
        )));
    }
    Ok(pem)
}

/// A PEM file holding a private key (PKCS#8, PKCS#1 or SEC1), checked like the certificates.
fn read_key_pem(path: &Path, flag: &str) -> CliResult<Vec<u8>> {
    let pem = read_file(path, flag)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        fail(format!(
            "{flag} {}: no usable private key (PEM with PRIVATE KEY expected): {e}",
            path.display()
        ))
    })?;
    Ok(pem)
}

fn read_file(path: &Path, flag: &str) -> CliResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| fail(format!("{flag} {}: {e}", path.display())))
}

pub fn fail(text: impl Into<String>) -> CliError {
    CliError(text.into())
}
