//! The `streamhub` binary: parses flags, then runs the server or a client command. Everything
//! else lives in the library; this file never holds a rule of its own.

use streamhub::cli::Command;

/// mimalloc instead of the system allocator: replays, imports and fan-out allocate many small,
/// short-lived buffers, and glibc's allocator both spends more time on them and holds on to
/// freed memory after a large import.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // `.env` first, so its values act as environment for the flags below. A missing file is fine.
    let _ = dotenvy::dotenv();
    let cli = streamhub::cli::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Serve(config) => serve(config).await,
            command => {
                streamhub::telemetry::init("warn");
                streamhub::cli::run(command, cli.connect)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    });
    // Not waiting for blocked stdin readers: a client command that is done is done.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Nothing to say (stdout was closed by its reader): only the status.
        Err(message) if message.is_empty() => std::process::ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
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
