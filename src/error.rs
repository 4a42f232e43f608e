//! The one error type of the server, and the one place where it becomes a `tonic::Status`.
//!
//! Client-facing messages are written for the caller. Storage and I/O faults are logged here with
//! their whole cause chain and reach the client only as a generic INTERNAL: never SQL text, never a
//! file path.

use std::sync::Arc;
use tonic::Status;

/// Everything a request can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    DataLoss(String),
    /// A transfer that moved nothing for its idle time (`--transfer-idle-secs`).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// No valid credentials: a missing, malformed, expired or wrongly signed token.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that do not allow this request (a user acting as someone else).
    #[error("{0}")]
    PermissionDenied(String),
    /// The server is shutting down; the client should retry elsewhere or later.
    #[error("server is shutting down")]
    Unavailable,
    /// A database fault. `Arc` so that one failed group commit can answer every request in it.
    #[error("storage failure")]
    Storage(#[source] Arc<sqlx::Error>),
    /// A fault of the log engine's own SQLite connections (the writer thread and the readers).
    #[error("storage failure")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    #[error("migration failure")]
    Migrate(#[source] Arc<sqlx::migrate::MigrateError>),
    #[error("i/o failure")]
    Io(#[source] Arc<std::io::Error>),
    /// A setting the server cannot start with: a missing or unusable file, a flag without its
    /// partner. Only ever seen by the operator at start.
    #[error("{0}")]
    Config(String),
    /// A broken invariant: a bug, never the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// True when SQLite reported a full disk or database, which the client sees as
    /// RESOURCE_EXHAUSTED rather than INTERNAL.
    fn is_disk_full(&self) -> bool {
        const SQLITE_FULL: &str = "13";
        match self {
            Error::Storage(e) => matches!(
                e.as_ref(),
                sqlx::Error::Database(db) if db.code().as_deref() == Some(SQLITE_FULL)
            ),
            Error::Sqlite(e) => matches!(
                e.as_ref(),
                rusqlite::Error::SqliteFailure(failure, _)
                    if failure.code == rusqlite::ErrorCode::DiskFull
            ),
            Error::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

impl Error {
    /// True when the database could not be reached or gave up on the statement (PostgreSQL: a
    /// lost connection, a full pool, the statement timeout, a server shutting down): the client
    /// may retry, so it sees UNAVAILABLE rather than INTERNAL. Nothing of the call was kept.
    fn is_database_unreachable(&self) -> bool {
        let Error::Storage(e) = self else {
            return false;
        };
        match e.as_ref() {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
            sqlx::Error::Database(db) => db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some_and(|pg| {
                    let code = pg.code();
                    // 57014 query_canceled (statement_timeout), 57P01-57P03 shutdown or starting
                    // up, class 08 connection exceptions, 53300 too many connections.
                    code == "57014"
                        || code.starts_with("57P")
                        || code.starts_with("08")
                        || code == "53300"
                }),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Storage(Arc::new(e))
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(Arc::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Migrate(Arc::new(e))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

/// Renders an error and every `source()` below it on one line, for logs.
pub fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their cause's text; say each part once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::OutOfRange(m) => Status::out_of_range(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::DataLoss(m) => Status::data_loss(m),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Unavailable => Status::unavailable("server is shutting down"),
            ref fault if fault.is_database_unreachable() => {
                tracing::error!(error = %cause_chain(fault), "database unavailable");
                Status::unavailable("the database is unavailable; retry")
            }
            ref fault if fault.is_disk_full() => {
                tracing::error!(error = %cause_chain(fault), "storage is full");
                Status::resource_exhausted("server storage is full")
            }
            fault => {
                tracing::error!(error = %cause_chain(&fault), "request failed");
                Status::internal("internal error")
            }
        }
    }
}
