//! A real nginx in front of replicas (`/usr/sbin/nginx`, no root: its own prefix, temp paths and
//! pid file in a temporary directory, one worker, in the foreground). Killed when dropped.

use std::net::SocketAddr;
use std::path::Path;

use tokio::process::{Child, Command};

use crate::ports::spawn_on_free_port;

pub const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    _child: Child,
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl Nginx {
    /// Round robin over `upstreams` on `location /` (HTTP/1.1 to the replicas, no buffering, the
    /// next replica on a connect error), as deployments run it in front of mcp-fanout.
    pub async fn balancing(upstreams: &[SocketAddr]) -> Nginx {
        let servers: String = upstreams
            .iter()
            .map(|a| format!("server {a} max_fails=1 fail_timeout=30s;\n"))
            .collect();
        Nginx::start(|listen| {
            format!(
                "upstream fanout {{\n{servers}}}\n\
                 server {{\n listen {listen};\n location / {{\n\
                 proxy_pass http://fanout;\n proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n proxy_buffering off;\n\
                 proxy_read_timeout 1h;\n proxy_connect_timeout 2s;\n\
                 proxy_next_upstream error timeout;\n }}\n }}\n"
            )
        })
        .await
    }

    /// nginx with `http_body(listen)` as the body of its `http {}` block, where `listen` is the
    /// `127.0.0.1:PORT` its `server` must listen on (a free port). Waits until it listens there
    /// itself (again on another port if that one was taken: [`crate::ports`]).
    pub async fn start(http_body: impl Fn(&str) -> String) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is required (apt-get install nginx; .ci/run installs it)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let conf_path = dir.path().join("nginx.conf");
        let p = dir.path().display().to_string();
        let (child, addr) = spawn_on_free_port("nginx", |addr| {
            let body = http_body(&addr.to_string());
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
                 error_log {p}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {p}/body;\n\
                 proxy_temp_path {p}/proxy;\n fastcgi_temp_path {p}/fastcgi;\n\
                 uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n{body}}}\n"
            );
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut cmd = Command::new(NGINX);
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.path().join("error.log"));
            cmd
        })
        .await;
        Nginx {
            _child: child,
            _dir: dir,
            addr,
        }
    }
}
