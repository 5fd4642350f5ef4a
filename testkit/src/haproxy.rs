//! A real HAProxy (`/usr/sbin/haproxy`, no root: foreground, its config in a temporary directory).
//! Killed when dropped.

use std::net::SocketAddr;
use std::path::Path;

use tokio::process::{Child, Command};

use crate::ports::spawn_on_free_port;

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// A running HAProxy.
#[derive(Debug)]
pub struct HaProxy {
    _child: Child,
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl HaProxy {
    /// HAProxy with `config(listen)` as its whole configuration, where `listen` is the
    /// `127.0.0.1:PORT` its frontend must bind (a free port). The configuration is checked first
    /// (`haproxy -c`, its output in the panic); then it runs in the foreground until it listens
    /// there itself (again on another port if that one was taken: [`crate::ports`]).
    pub async fn start(config: impl Fn(&str) -> String) -> HaProxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is required (apt-get install haproxy; .ci/run installs it)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let conf_path = dir.path().join("haproxy.cfg");
        let (child, addr) = spawn_on_free_port("haproxy", |addr| {
            std::fs::write(&conf_path, config(&addr.to_string())).expect("write haproxy.cfg");
            check(&conf_path);
            let mut cmd = Command::new(HAPROXY);
            cmd.arg("-db").arg("-f").arg(&conf_path);
            cmd
        })
        .await;
        HaProxy {
            _child: child,
            _dir: dir,
            addr,
        }
    }
}

/// `haproxy -c`: the configuration is valid, or a panic with haproxy's own words.
fn check(conf_path: &Path) {
    let check = std::process::Command::new(HAPROXY)
        .arg("-c")
        .arg("-f")
        .arg(conf_path)
        .output()
        .expect("run haproxy -c");
    assert!(
        check.status.success(),
        "haproxy -c rejects the configuration:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
