//! The `streamhub` binary: parses flags, then runs the server or a client command.

use clap::Parser;
use streamhub::cli::{Cli, Command};

/// mimalloc instead of the system allocator: replays, imports and fan-out allocate many small,
/// short-lived buffers, and glibc's allocator both spends more time on them and holds on to
/// freed memory after a large import.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // `.env` first, so its values act as environment for the flags below. A missing file is fine.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let outcome = match cli.command {
            None => serve(cli.serve).await,
            Some(Command::Serve(config)) => serve(config).await,
            Some(Command::Events(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::events::run(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(Command::Upload(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::files::upload(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(Command::Download(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::files::download(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(Command::Files(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::files::run_files(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(Command::Chat(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::chat::run(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(Command::Notify(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::notify::run(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(Command::Metrics(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::metrics::run(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(Command::Live(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::live::run(args)
                    .await
                    .map_err(|e| e.to_string())
            }
            Some(Command::Token(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::token::run(args).map_err(|e| e.to_string())
            }
            Some(Command::Bench(args)) => {
                streamhub::telemetry::init("warn");
                streamhub::cli::bench::run(args)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match outcome {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

async fn serve(config: streamhub::Config) -> Result<(), String> {
    streamhub::telemetry::init("info,sqlx=warn");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    streamhub::server::run(listener, config, streamhub::server::shutdown_signal())
        .await
        .map_err(|e| streamhub::error::cause_chain(&e))
}
