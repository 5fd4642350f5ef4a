//! Shared bits of the black-box tests: the binary under test and the usual timeouts.
#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::time::Duration;

use mcp_fanout_testkit::Replica;
use serde_json::{json, Value};

/// The binary cargo built for this package.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mcp-fanout"))
}

/// Upper bound for anything that should happen "promptly" (a frame after a publish, a metric update).
pub const SOON: Duration = Duration::from_secs(10);

/// A short wait used to show that something does *not* arrive.
pub const QUIET: Duration = Duration::from_millis(400);

/// Starts a replica with the kit's defaults (port 0, JSON logs) plus `envs`, ready.
pub async fn start(label: &str, envs: &[(&str, &str)]) -> Replica {
    Replica::start(bin(), label, envs)
        .await
        .unwrap_or_else(|e| panic!("replica `{label}` should start: {e}"))
}

/// A notification body for `/admin/publish` whose params carry a test tag and a sequence number.
pub fn note(method: &str, tag: &str, n: usize) -> Value {
    json!({ "method": method, "params": { "tag": tag, "n": n } })
}
