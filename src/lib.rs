//! streamhub: a persistent, event-sourced gRPC streaming service.
//!
//! The layers point down only: `service` (one module per capability) → `log` (writer, hub,
//! catch-up subscription) → `store` (every line of SQL). `server` wires them to a listener, and
//! `cli` is the client side of the same binary, which talks to a server only through the
//! generated gRPC client.

pub mod auth;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod conn;
pub mod error;
pub mod files;
pub mod http;
pub mod introspect;
pub mod limits;
pub mod lock;
pub mod log;
pub mod message_limit;
pub mod presence;
pub mod proto;
pub mod secret;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use error::{Error, Result};
