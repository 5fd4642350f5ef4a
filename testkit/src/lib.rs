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
//! - [`launch`]: the binary under test, the shared admin token, starting replicas.
//! - [`deployment`]: a deployment's database and schema on the shared Postgres, its replicas, its log.
//! - [`delivery`]: background readers on every replica and the check that each got exactly the log.
//! - [`load`]: publishers that keep going (retrying with idempotency keys) while faults are injected.
//! - [`flow`]: the multi-replica publish/deliver flow run directly and through PgBouncer.
//! - [`bodies`]: notification bodies with a tag and a number.
//! - [`identity`]: who a subscriber is, publish targets and the visibility rule (contract §3.5).
//! - [`requests`]: SSE opens, polls and publishes that must succeed.
//! - [`error_shape`]: the one JSON error shape (contract §4.1) on every kind of answer.
//! - [`cases`]: bad-input tables of raw requests and the errors they must get.
//! - [`shed`]: the shed check (`200` + `retry:` + clean end, contract §3.2).
//! - [`hostile`]: idle sockets, bodies that stop short, a misbehaving upstream MCP server.
//! - [`jwt`]: minting bearer tokens; [`openssl`]: the `openssl` CLI.
//! - [`h2c`]: HTTP/2 over cleartext with the `h2` crate, each stream's flow-control window in the
//!   test's hands (streams that never open it, streams read as fast as they come).
//! - [`nginx`], [`haproxy`]: real load balancers and gateways in front of replicas.
//! - [`ports`]: starting such a server on a free port, and knowing it is its own process that
//!   listens there.
//! - [`upstream`]: a recording HTTP/1.1 upstream for proxy mode (what it received; a canned answer,
//!   or one scripted per request, a 2025-era handshake among them).

pub mod bodies;
pub mod cases;
pub mod delivery;
pub mod deployment;
pub mod error;
pub mod error_shape;
pub mod flow;
pub mod follow;
pub mod h2c;
pub mod haproxy;
pub mod hostile;
pub mod http;
pub mod identity;
pub mod jwt;
pub mod launch;
pub mod load;
pub mod metrics;
pub mod nginx;
pub mod openssl;
pub mod poll;
pub mod ports;
pub mod postgres;
pub mod replica;
pub mod requests;
pub mod shed;
pub mod sse;
pub mod tally;
pub mod upstream;
pub mod wait;
pub mod wire;

pub use bodies::{body, note};
pub use delivery::{assert_identical_frames, expect_exactly, follow_all, interesting_logs};
pub use deployment::Deployment;
pub use error::{Error, Result};
pub use follow::{Followed, Follower, Received};
pub use haproxy::HaProxy;
pub use http::{
    client_from, error_code, raw_pipeline, raw_request, HttpResponse, RawRequest, RawResponse,
};
pub use launch::{
    bin, start, start_fails, start_memory, start_owned, start_with_open_files, with_admin,
    ADMIN_TOKEN,
};
pub use nginx::Nginx;
pub use poll::{PollAnswer, PollEvent};
pub use postgres::{shared_database, shared_server, LogRow, PgBouncer, PgCluster, PgServer};
pub use replica::{PublishOptions, Replica, Token};
pub use requests::{open_stream_with, poll_answer, poll_with, publish_n};
pub use shed::expect_shed;
pub use sse::{Frame, SseConn, SseRequest, StreamEnd};
pub use tally::{frame_ids, seq_of, EventId, Tally, TallyReport};
/// Re-exported for tests that need throwaway files (token files, data directories).
pub use tempfile;
pub use upstream::{Canned, Recorded, RecordingUpstream};
pub use wait::{wait_for, wait_until, QUIET, SOON};
