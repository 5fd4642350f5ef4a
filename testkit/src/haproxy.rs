//! A real HAProxy (`/usr/sbin/haproxy`, no root: foreground, its config in a temporary directory).
//! Killed when dropped.

use std::net::SocketAddr;
use std::path::Path;

use tokio::process::{Child, Command};

use crate::wait::spawn_listening;

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
    /// (`haproxy -c`, its output in the panic); then it runs in the foreground until it accepts.
    pub async fn start(config: impl FnOnce(&str) -> String) -> HaProxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is required (apt-get install haproxy; .ci/run installs it)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::postgres::free_port().expect("a free port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let conf_path = dir.path().join("haproxy.cfg");
        std::fs::write(&conf_path, config(&addr.to_string())).expect("write haproxy.cfg");
        let check = Command::new(HAPROXY)
            .arg("-c")
            .arg("-f")
            .arg(&conf_path)
            .output()
            .await
            .expect("run haproxy -c");
        assert!(
            check.status.success(),
            "haproxy -c rejects the configuration:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = spawn_listening(
            "haproxy",
            Command::new(HAPROXY).arg("-db").arg("-f").arg(&conf_path),
            addr,
        )
        .await;
        HaProxy {
            _child: child,
            _dir: dir,
            addr,
        }
    }
}
