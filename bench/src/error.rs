//! The one error type of the bench: every I/O path returns it, with what it was doing.

use std::path::PathBuf;

/// Result alias.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Everything that can go wrong while setting up, driving or measuring a run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket, file or process operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A prerequisite is missing (a binary, a package): the text says how to get it.
    #[error("{0}")]
    Missing(String),

    /// The test kit failed (replica launch, Postgres cluster).
    #[error("test kit: {0}")]
    Kit(#[from] mcp_fanout_testkit::Error),

    /// reqwest failed.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),

    /// A Postgres client call failed.
    #[error("Postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),

    /// JSON encoding or decoding failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// A peer (server, worker, publisher) answered something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),

    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(String),

    /// A worker process failed or exited.
    #[error("worker {id}: {what}")]
    Worker { id: usize, what: String },

    /// The binary under test was not found.
    #[error("mcp-fanout binary not found (looked at {0:?}); build it with `cargo build --release` or pass --binary")]
    NoBinary(Vec<PathBuf>),

    /// The run's accounting found loss, duplicates or disorder (smoke) or a bad argument.
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    /// Wraps an `io::Error` with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }
}
