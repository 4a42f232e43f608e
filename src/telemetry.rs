//! Logging setup: structured `tracing` output filtered by `RUST_LOG` (default `info`).
//! It configures output only; it never decides what is logged.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, writing to stderr so that client commands keep stdout for
/// their results. A second call (as in tests) is a no-op.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
