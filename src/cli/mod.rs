//! The command line: the server (`serve`, the default) and the client commands of the same
//! binary, with one set of conventions for all of them: global connection flags accepted before
//! or after the command, `--json` as the canonical proto3 JSON mapping, `--since` as a duration
//! or an RFC 3339 time, `--after` for "after this sequence", and a non-zero exit status whenever
//! something was not stored or not sent.
//!
//! Client commands talk to a server only through the generated gRPC client; they never open the
//! database. This module parses and dispatches; it never decides what valid data is (the server
//! does).

pub mod bench;
pub mod chat;
pub mod events;
pub mod files;
pub mod format;
pub mod json;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod streams;
pub mod token;

use crate::config::Config;
use crate::proto::streaming_service_client::StreamingServiceClient;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

const EXAMPLES: &str = "\
Examples:
  streamhub serve --listen localhost:50051                 run a server (also: bare `streamhub`)
  streamhub events tail u1 --since 1h --json               replay an hour of u1's events, then follow
  streamhub --server db1:50051 events import events.jsonl  import a file atomically on another server

Global flags (--server, --token, --ca-cert, --client-cert, --client-key) go before or after the
command. `streamhub serve --help` lists the server's settings; `streamhub completions bash`
prints a completion script.";

/// streamhub: a persistent, event-sourced gRPC streaming service, and its client.
///
/// `streamhub serve` (or a bare `streamhub`) runs the server; the other commands are clients of a
/// running server.
#[derive(Debug, Parser)]
#[command(
    name = "streamhub",
    version,
    subcommand_required = true,
    arg_required_else_help = false,
    after_help = EXAMPLES,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub connect: Connect,
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
    /// Push metrics in the Prometheus text style, query them, or list their series.
    Metrics(metrics::MetricsArgs),
    /// List the streams of one kind: users' events, inboxes, chat rooms, documents.
    Streams(streams::StreamsArgs),
    /// Stream numbers from stdin through ProcessLiveData and print each result.
    Live(live::LiveArgs),
    /// Measure throughput and latency against a running server.
    Bench(bench::BenchArgs),
    /// Mint a development bearer token (HS256) from the server's secret.
    Token(token::TokenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    ///
    /// For example `streamhub completions bash > /etc/bash_completion.d/streamhub`, or
    /// `streamhub completions zsh > "${fpath[1]}/_streamhub"`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// Parses the command line. A bare `streamhub`, or one that starts with a flag the top level
/// does not know (`streamhub --listen …`), means `streamhub serve …`, as before `serve` existed.
/// The server's settings are `serve`'s alone, so the top-level help stays about the commands.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let args = default_to_serve(args.into_iter().collect());
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    if let Some(("serve", serve)) = matches.subcommand() {
        for id in ["server", "token", "ca_cert", "client_cert", "client_key"] {
            if serve.value_source(id) == Some(ValueSource::CommandLine) {
                let flag = format!("--{}", id.replace('_', "-"));
                return Err(Cli::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "{flag} is for client commands; the server's own flags are listed by \
                         `streamhub serve --help` (it listens on --listen)"
                    ),
                ));
            }
        }
    }
    Ok(cli)
}

/// Inserts `serve` after the program name when no command is given.
fn default_to_serve(mut args: Vec<OsString>) -> Vec<OsString> {
    let first = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    let insert = match first.as_deref() {
        None => true,
        Some(flag) if flag.starts_with('-') => {
            let name = flag.split('=').next().unwrap_or(flag);
            !top_level_flag(name)
        }
        Some(_) => false,
    };
    if insert {
        args.insert(1.min(args.len()), OsString::from("serve"));
    }
    args
}

/// Whether `name` (`--server`, `-h`, …) is a flag of the top level rather than of `serve`.
fn top_level_flag(name: &str) -> bool {
    let command = Cli::command();
    let builtin = ["-h", "--help", "-V", "--version"];
    builtin.contains(&name)
        || command.get_arguments().any(|arg| {
            arg.get_long()
                .is_some_and(|long| name == format!("--{long}"))
                || arg
                    .get_short()
                    .is_some_and(|short| name == format!("-{short}"))
        })
}

/// Runs one client command (everything but `serve`).
pub async fn run(command: Command, connect: Connect) -> CliResult<()> {
    match command {
        Command::Serve(_) => Err(fail("`serve` is not a client command")),
        Command::Events(args) => events::run(&connect, args).await,
        Command::Upload(args) => files::upload(&connect, args).await,
        Command::Download(args) => files::download(&connect, args).await,
        Command::Files(args) => files::run_files(&connect, args).await,
        Command::Chat(args) => chat::run(&connect, args).await,
        Command::Notify(args) => notify::run(&connect, args).await,
        Command::Metrics(args) => metrics::run(&connect, args).await,
        Command::Streams(args) => streams::run(&connect, args).await,
        Command::Live(args) => live::run(&connect, args).await,
        Command::Bench(args) => bench::run(&connect, args).await,
        Command::Token(args) => token::run(args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "streamhub", &mut script);
            write_stdout(&script)
        }
    }
}

/// Writes all of `bytes` to stdout. A reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> CliResult<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Prints one line of results on stdout. A reader that went away (`tail --json | head -1`)
/// ends the command with a silent failure (an empty message) instead of a panic, so a tail
/// stops when nobody reads it.
pub fn print_line(line: &str) -> CliResult<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => fail(""),
            _ => fail(format!("cannot write to stdout: {e}")),
        })
}

/// How a client command reaches the server. Every flag is global: it may come before or after
/// the command (`streamhub --server X events tail u1` or `streamhub events tail u1 --server X`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection (global: before or after the command)")]
pub struct Connect {
    /// The server: a URL (http://… or https://…), or HOST:PORT, which means http:// (https://
    /// with --ca-cert or --client-cert).
    #[arg(
        long,
        global = true,
        env = "STREAMHUB_SERVER",
        default_value = "127.0.0.1:50051",
        value_name = "URL|HOST:PORT"
    )]
    pub server: String,

    /// PEM CA certificate that an https:// server's certificate must chain to (a private CA).
    /// Without it the system's trusted roots are used.
    #[arg(long, global = true, env = "STREAMHUB_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate, for a server that requires mutual TLS (with --client-key).
    #[arg(long, global = true, env = "STREAMHUB_CLIENT_CERT", value_name = "PEM")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "STREAMHUB_CLIENT_KEY", value_name = "PEM")]
    pub client_key: Option<PathBuf>,

    /// A JWT sent as `authorization: Bearer …` on every call, for a server with --auth on
    /// (`streamhub token` mints one for development). A pasted `Bearer ` prefix is dropped.
    #[arg(
        long,
        global = true,
        env = "STREAMHUB_TOKEN",
        hide_env_values = true,
        value_name = "JWT"
    )]
    pub token: Option<String>,
}

/// What this process's connection looked like, for the hints of [`CliError::from`]: a status
/// alone does not say whether a token was sent or TLS was spoken. A client process talks to one
/// server, so one record is enough.
static SENT_TOKEN: AtomicBool = AtomicBool::new(false);
static SPOKE_TLS: AtomicBool = AtomicBool::new(false);
static SPOKE_PLAIN: AtomicBool = AtomicBool::new(false);

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

    /// The server as a URL: `http://` or `https://` as given, and a plain `HOST:PORT` with
    /// `http://` (or `https://` when a CA or client certificate is given: that means TLS).
    pub fn url(&self) -> CliResult<String> {
        let server = self.server.trim();
        if let Some((scheme, rest)) = server.split_once("://") {
            if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                || rest.is_empty()
            {
                return Err(fail(format!(
                    "invalid --server {server}: use http://HOST:PORT, https://HOST:PORT or \
                     HOST:PORT"
                )));
            }
            return Ok(server.to_string());
        }
        let port_ok = server
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok || server.contains(char::is_whitespace) || server.contains('/') {
            return Err(fail(format!(
                "invalid --server {server}: use HOST:PORT (127.0.0.1:50051), http://HOST:PORT or \
                 https://HOST:PORT"
            )));
        }
        let tls = self.ca_cert.is_some() || self.client_cert.is_some();
        Ok(format!("{}://{server}", if tls { "https" } else { "http" }))
    }

    /// The endpoint to connect to, with TLS set up for an https:// server. Calls made on it
    /// fail fast when the server is down.
    pub fn endpoint(&self) -> CliResult<Endpoint> {
        let url = self.url()?;
        let mut endpoint = Channel::from_shared(url.clone())
            .map_err(|e| fail(format!("invalid --server {}: {e}", self.server)))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true);
        match self.tls_config(&url)? {
            Some(tls) => {
                SPOKE_TLS.store(true, Ordering::Relaxed);
                endpoint = endpoint.tls_config(tls).map_err(|e| {
                    let hint = if self.ca_cert.is_none() {
                        " (--ca-cert names the CA to trust instead of the system's)"
                    } else {
                        ""
                    };
                    fail(format!("TLS setup for {url}: {e}{hint}"))
                })?;
            }
            None => SPOKE_PLAIN.store(true, Ordering::Relaxed),
        }
        Ok(endpoint)
    }

    /// Opens a channel to the server, failing fast with a readable message when it is down.
    pub async fn channel(&self) -> CliResult<Channel> {
        let endpoint = self.endpoint()?;
        endpoint
            .connect()
            .await
            .map_err(|e| self.unreachable(&crate::error::cause_chain(&e)))
    }

    /// "cannot reach streamhub at …", with a hint when the cause looks like a TLS mismatch.
    pub fn unreachable(&self, cause: &str) -> CliError {
        let url = self.url().unwrap_or_else(|_| self.server.clone());
        let tls = url.starts_with("https");
        let hint = if tls && looks_like_plaintext_peer(cause) {
            "\nhint: the server does not speak TLS there; use an http:// --server (or HOST:PORT \
             without --ca-cert)"
        } else {
            ""
        };
        fail(format!("cannot reach streamhub at {url}: {cause}{hint}"))
    }

    /// The TLS settings for an https:// server, `None` for http://. TLS options against an
    /// http:// server are an error rather than silently ignored: the person meant TLS.
    fn tls_config(&self, url: &str) -> CliResult<Option<ClientTlsConfig>> {
        let https = url
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if !https {
            if self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some() {
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

    /// The token as sent: trimmed, without a pasted `Bearer ` prefix; `None` when empty.
    pub fn bare_token(&self) -> Option<&str> {
        let token = self.token.as_deref()?.trim();
        let token = match token.get(..6) {
            Some(prefix)
                if prefix.eq_ignore_ascii_case("bearer")
                    && token[6..].chars().next().is_none_or(char::is_whitespace) =>
            {
                token[6..].trim_start()
            }
            _ => token,
        };
        (!token.is_empty()).then_some(token)
    }

    /// A client on an open channel that sends this connection's token, if any.
    pub fn client_on(&self, channel: Channel) -> CliResult<Client> {
        let token = match self.bare_token() {
            None => None,
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| fail("--token is not a valid header value"))?,
            ),
        };
        SENT_TOKEN.store(token.is_some(), Ordering::Relaxed);
        Ok(
            StreamingServiceClient::with_interceptor(channel, BearerToken(token))
                .max_decoding_message_size(64 * 1024 * 1024),
        )
    }
}

/// A TLS client's handshake answered by a plaintext server: rustls reads HTTP/2 bytes as a
/// record of an unknown type.
fn looks_like_plaintext_peer(cause: &str) -> bool {
    [
        "InvalidContentType",
        "corrupt message",
        "WrongVersion",
        "HeaderTooLarge",
    ]
    .iter()
    .any(|needle| cause.contains(needle))
}

/// A plaintext client's first call answered by a TLS server: the connection breaks in one of
/// the ways tonic reports as a transport failure with a fixed message.
fn looks_like_tls_peer(status: &Status) -> bool {
    // Made on this side, from a broken connection (not a server's UNAVAILABLE answer).
    let local = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable => local,
        Code::Unknown => status.message() == "transport error",
        Code::Cancelled => status.message() == "operation was canceled",
        Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
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

/// Proto field names the server's messages start with, and the CLI flag a person typed for
/// each. The flags are the same in every command, so one table serves them all.
const FIELD_FLAGS: &[(&str, &str)] = &[
    ("up_to_sequence", "--through"),
    ("after_sequence", "--after"),
    ("before_sequence", "--before"),
    ("start_time", "--since"),
    ("user_id", "--user"),
    ("room_id", "--room"),
    ("file_id", "--id"),
    ("topic", "--topic"),
    ("step_seconds", "--step"),
    ("start", "--since"),
    ("end", "--until"),
    ("limit", "--limit"),
    ("id", "--id"),
];

/// A server message with a leading proto field name replaced by the CLI flag for it:
/// "up_to_sequence 9 is past …" → "--through 9 is past …".
pub fn with_flag_names(message: &str) -> String {
    let word_end = message
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(message.len());
    let (word, rest) = message.split_at(word_end);
    match FIELD_FLAGS.iter().find(|(field, _)| *field == word) {
        Some((_, flag)) => format!("{flag}{rest}"),
        None => message.to_string(),
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        let message = match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                with_flag_names(status.message())
            }
            _ => status.message().to_string(),
        };
        let mut text = format!("{:?}: {message}", status.code());
        // Only a status made on this side (a broken connection, a refused TLS handshake) has a
        // source; its chain says what happened ("received fatal alert: CertificateRequired").
        if let Some(source) = std::error::Error::source(&status) {
            let cause = crate::error::cause_chain(source);
            if !text.ends_with(&cause) {
                text.push_str(": ");
                text.push_str(&cause);
            }
        }
        if let Some(hint) = hint_for(&status) {
            text.push_str("\nhint: ");
            text.push_str(hint);
        }
        CliError(text)
    }
}

/// A hint for a status a person can act on from the command line.
fn hint_for(status: &Status) -> Option<&'static str> {
    match status.code() {
        Code::Unauthenticated if !SENT_TOKEN.load(Ordering::Relaxed) => Some(
            "the server requires a token: pass --token JWT or set STREAMHUB_TOKEN (`streamhub \
             token --sub USER` mints a development token from the server's secret)",
        ),
        Code::Unauthenticated => {
            Some("the server refused the token of --token / STREAMHUB_TOKEN; mint a fresh one")
        }
        _ if SPOKE_PLAIN.load(Ordering::Relaxed)
            && !SPOKE_TLS.load(Ordering::Relaxed)
            && looks_like_tls_peer(status) =>
        {
            Some(
                "if the server speaks TLS, use an https:// --server (or HOST:PORT with \
                 --ca-cert)",
            )
        }
        _ => None,
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult<T> = std::result::Result<T, CliError>;

/// One message of a client stream fed from a task, or the end of the input.
#[derive(Debug)]
pub enum Feed<T> {
    Item(T),
    /// Everything was sent: the stream may end (a half-close, which the server takes as
    /// "commit").
    End,
}

/// A client stream that ends only at [`Feed::End`]. When the feeding task stops without it (a
/// bad input line, a failed read, an abort), the stream stays open instead of ending, so the
/// call is never half-closed by accident: dropping it then cancels it (RST_STREAM) and the
/// server keeps nothing.
#[derive(Debug)]
pub struct FeedStream<T>(tokio::sync::mpsc::Receiver<Feed<T>>);

impl<T> FeedStream<T> {
    pub fn new(receiver: tokio::sync::mpsc::Receiver<Feed<T>>) -> Self {
        FeedStream(receiver)
    }
}

impl<T> tokio_stream::Stream for FeedStream<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        use std::task::Poll;
        match self.0.poll_recv(cx) {
            Poll::Ready(Some(Feed::Item(item))) => Poll::Ready(Some(item)),
            Poll::Ready(Some(Feed::End)) => Poll::Ready(None),
            // The feeder is gone without saying "end": never end the stream.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn every_option_and_argument_has_a_help_line() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !arg.is_hide_set() && !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "streamhub", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:#?}");
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_means_serve_and_global_flags_go_anywhere() {
        let serve = |line: &str| {
            matches!(
                parse(args(line)),
                Ok(Cli {
                    command: Command::Serve(_),
                    ..
                })
            )
        };
        assert!(serve("streamhub"));
        assert!(serve("streamhub --listen localhost:7"));
        assert!(serve("streamhub --sync=normal"));
        assert!(serve("streamhub serve --listen 127.0.0.1:7"));
        for line in [
            "streamhub --server a:1 events tail u1",
            "streamhub events tail u1 --server a:1",
            "streamhub events --server a:1 tail u1",
        ] {
            let cli = parse(args(line)).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(cli.connect.server, "a:1", "{line}");
            assert!(matches!(cli.command, Command::Events(_)), "{line}");
        }
        assert!(parse(args("streamhub serve --token x")).is_err());
        assert!(parse(args("streamhub --server a:1")).is_err());
    }

    #[test]
    fn servers_are_urls_or_host_port() {
        let url = |server: &str, ca: bool| {
            let mut connect = Connect::plain(server);
            connect.ca_cert = ca.then(|| PathBuf::from("ca.pem"));
            connect.url().map_err(|e| e.0)
        };
        assert_eq!(
            url("localhost:50051", false).as_deref(),
            Ok("http://localhost:50051")
        );
        assert_eq!(
            url("10.0.0.1:443", true).as_deref(),
            Ok("https://10.0.0.1:443")
        );
        assert_eq!(url("[::1]:7", false).as_deref(), Ok("http://[::1]:7"));
        assert_eq!(url("https://x:1", false).as_deref(), Ok("https://x:1"));
        assert_eq!(url("http://x:1", true).as_deref(), Ok("http://x:1"));
        for bad in ["not a url", "x", "x:port", "ftp://x:1", ":80", "http://"] {
            assert!(url(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pasted_bearer_prefix_is_dropped() {
        let mut connect = Connect::plain("x:1");
        for (given, sent) in [
            ("abc", Some("abc")),
            ("Bearer abc", Some("abc")),
            ("bearer   abc \n", Some("abc")),
            ("  ", None),
            ("Bearer ", None),
        ] {
            connect.token = Some(given.into());
            assert_eq!(connect.bare_token(), sent, "{given:?}");
        }
    }

    #[test]
    fn server_messages_name_the_flags() {
        assert_eq!(
            with_flag_names("up_to_sequence 9 is past the user's last notification (3)"),
            "--through 9 is past the user's last notification (3)"
        );
        assert_eq!(with_flag_names("room_id is required"), "--room is required");
        assert_eq!(with_flag_names("identity unknown"), "identity unknown");
        assert_eq!(with_flag_names(""), "");
    }
}
