//! Test kit for `mcp-fanout`: start real replica processes, talk to them over real TCP, and count
//! what every subscriber received.
//!
//! - [`replica`]: one `mcp-fanout` process (clean env, log pump, bound addresses, signals, publish,
//!   probes, metrics).
//! - [`sse`]: a raw-TCP SSE client that keeps each frame's exact bytes.
//! - [`tally`]: loss / duplicate / order accounting against the published ids.
//! - [`http`]: raw-TCP requests for malformed input, and small reqwest helpers.
//! - [`metrics`]: Prometheus text parsing.
//! - [`poll`]: the `/poll` answer with each message's exact bytes.
//! - [`wait`]: awaiting conditions with deadlines.
//! - [`wire`]: HTTP/1.1 response head and body framing.
//! - [`postgres`]: a throwaway Postgres cluster from the system binaries (or `DATABASE_URL`), one
//!   shared per test process with a database per test, setup SQL and log-table reads, PgBouncer.
//! - [`follow`]: reading an SSE stream in the background while a test publishes and injects faults.

pub mod error;
pub mod follow;
pub mod http;
pub mod metrics;
pub mod poll;
pub mod postgres;
pub mod replica;
pub mod sse;
pub mod tally;
pub mod wait;
pub mod wire;

pub use error::{Error, Result};
pub use follow::{Followed, Follower, Received};
pub use http::{error_code, raw_request, HttpResponse, RawRequest, RawResponse};
pub use poll::{PollAnswer, PollEvent};
pub use postgres::{shared_database, shared_server, LogRow, PgBouncer, PgCluster, PgServer};
pub use replica::{PublishOptions, Replica, Token};
pub use sse::{Frame, SseConn, SseRequest, StreamEnd};
pub use tally::{EventId, Tally, TallyReport};
/// Re-exported for tests that need throwaway files (token files, data directories).
pub use tempfile;
pub use wait::{wait_for, wait_until};
