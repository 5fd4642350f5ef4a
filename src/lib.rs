//! mcp-fanout: fans MCP server notifications out to every SSE subscriber on every replica.
//!
//! The data flow, module by module:
//! events come in through [`http::admin`] (or SQL, with the Postgres log), are appended to the
//! [`log`] (the ordered, durable truth), are pushed into each replica's [`broadcast`]er, and go out
//! to subscribers through [`http::sse`] and [`http::poll`]. [`event`] holds the event types and the
//! one function that frames an event for the wire.

pub mod allocator;
pub mod auth;
pub mod bridge;
pub mod broadcast;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod event;
pub mod http;
pub mod log;
pub mod mcp;
pub mod metrics;
pub mod per_client;
pub mod replica;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod socket;
pub mod state;
pub mod stats;
pub mod supervise;
pub mod telemetry;
pub mod tls;
pub mod trusted_proxies;
