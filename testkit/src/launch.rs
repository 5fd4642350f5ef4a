//! Starting the binary under test: where cargo put it, the admin token tests share, and starting a
//! replica with a borrowed or an owned environment (later entries win).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::replica::Replica;

/// The name of the binary target the kit launches.
pub const BIN_NAME: &str = "mcp-fanout";

/// The admin token the tests that need a known one start their replicas with.
pub const ADMIN_TOKEN: &str = "identity-admin-7f3a";

/// The `mcp-fanout` binary cargo built for this test run: `$MCP_FANOUT_BIN` if set, else
/// `$CARGO_BIN_EXE_mcp-fanout` if cargo set it at run time, else the binary next to the running
/// test's `deps/` directory (`target/<profile>/mcp-fanout`, where cargo builds a package's
/// binaries before its integration tests). Panics when none exists.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let found = ["MCP_FANOUT_BIN", "CARGO_BIN_EXE_mcp-fanout"]
            .iter()
            .filter_map(std::env::var_os)
            .map(PathBuf::from)
            .chain(beside_deps())
            .find(|p| p.is_file());
        found.unwrap_or_else(|| {
            panic!(
                "the {BIN_NAME} binary was not found (set MCP_FANOUT_BIN, or run the tests with \
                 cargo, which builds it next to target/<profile>/deps)"
            )
        })
    })
}

/// `target/<profile>/mcp-fanout` for a test running from `target/<profile>/deps/`.
fn beside_deps() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.ends_with("deps") {
        dir = dir.parent()?;
    }
    Some(dir.join(BIN_NAME))
}

/// Starts a replica with the kit's defaults (port 0, JSON logs) plus `envs`, ready; panics if it
/// does not start.
pub async fn start(label: &str, envs: &[(&str, &str)]) -> Replica {
    Replica::start(bin(), label, envs)
        .await
        .unwrap_or_else(|e| panic!("replica `{label}` should start and become ready: {e}"))
}

/// [`start`] with the replica's open-file limit (soft and hard) lowered to `open_files`.
pub async fn start_with_open_files(label: &str, envs: &[(&str, &str)], open_files: u64) -> Replica {
    Replica::start_with_open_files(bin(), label, envs, Some(open_files))
        .await
        .unwrap_or_else(|e| panic!("replica `{label}` should start and become ready: {e}"))
}

/// [`start`] with an owned environment.
pub async fn start_owned(label: &str, env: &[(String, String)]) -> Replica {
    start(label, &borrowed(env)).await
}

/// A memory-mode replica with [`ADMIN_TOKEN`] plus `extra`.
pub async fn start_memory(label: &str, extra: &[(&str, &str)]) -> Replica {
    start_owned(label, &with_admin(extra)).await
}

/// `extra` plus `FANOUT_ADMIN_TOKENS` = [`ADMIN_TOKEN`] (unless `extra` sets it).
pub fn with_admin(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = owned(&[("FANOUT_ADMIN_TOKENS", ADMIN_TOKEN)]);
    env.extend(owned(extra));
    dedup(env)
}

/// `(&str, &str)` pairs as owned strings.
pub fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Owned pairs as `(&str, &str)`.
pub fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// One entry per key; the later entry wins, in the place of the last one.
pub fn dedup(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        out.retain(|(ok, _)| *ok != k);
        out.push((k, v));
    }
    out
}

/// Runs the binary with only `env` (and loopback port-0 listeners) and waits up to `within` for
/// it to exit; panics unless it exits unsuccessfully. Returns what it wrote (stdout, then
/// stderr), for the test to check that the start failed for the reason it names.
pub async fn start_fails(env: &[(String, String)], within: std::time::Duration) -> String {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.env_clear()
        .env("FANOUT_ADDR", "127.0.0.1:0")
        .env("FANOUT_ADMIN_ADDR", "127.0.0.1:0")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the start did not stop within {within:?}: {env:?}"))
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the start must fail: {text}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_entries_win() {
        let env = dedup(owned(&[("A", "1"), ("B", "2"), ("A", "3")]));
        assert_eq!(env, owned(&[("B", "2"), ("A", "3")]));
        let admin = with_admin(&[("FANOUT_ADMIN_TOKENS", "other")]);
        assert_eq!(admin, owned(&[("FANOUT_ADMIN_TOKENS", "other")]));
    }
}
