//! The `openssl` CLI, for tests that need certificates and keys.

use std::path::Path;

/// Runs `openssl args…` in `dir`; panics with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("running openssl {args:?} (is the openssl CLI installed?): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
