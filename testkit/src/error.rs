//! The one error type of the test kit: every I/O path returns it instead of panicking, so a test's
//! `expect("why")` shows both what the test was doing and what went wrong underneath.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias used throughout the kit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while driving a replica process or talking to it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binary could not be started at all.
    #[error("failed to start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A socket or process operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A condition was not met, or a peer said nothing, before the deadline.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },

    /// The replica process exited while we were still waiting for it to do something.
    #[error("replica `{label}` exited ({status}) before {what}")]
    Exited {
        label: String,
        status: String,
        what: String,
    },

    /// reqwest failed (connect, send, read).
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),

    /// A body that had to be JSON was not.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// The peer spoke something that is not valid HTTP/1.1 or SSE, or not what the caller required.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A Postgres client call (connect, query) failed.
    #[error("Postgres: {}", pg_text(.0))]
    Postgres(#[from] tokio_postgres::Error),

    /// A test fixture (a Postgres cluster, PgBouncer) could not be set up; the text says why and,
    /// when it helps, shows the tail of the server's log.
    #[error("setup failed: {0}")]
    Setup(String),

    /// The connection closed before the body was complete (no terminating chunk, short
    /// `Content-Length`, or a reset): the stream was cut, not ended cleanly.
    #[error("stream truncated: {0}")]
    Truncated(String),
}

impl Error {
    /// Wraps an `io::Error` with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A timeout error for `what`.
    pub fn timeout(what: impl Into<String>, after: Duration) -> Self {
        Error::Timeout {
            what: what.into(),
            after,
        }
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

/// A Postgres error with its cause (the server's message and SQLSTATE for `db error`).
fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {}: {}{}",
            db.severity(),
            db.code().code(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}
