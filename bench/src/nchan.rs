//! nginx with the nchan module, for `--compare nchan`: the shipped `bench/nchan/nginx.conf` in a
//! temp prefix, on a free port. `proxy-overhead` runs its nginx (`bench/proxy/nginx.conf`) the
//! same way, through [`Nchan::start_conf`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{BenchError, Result};

/// The configuration that ships in the repository.
pub const CONF: &str = include_str!("../nchan/nginx.conf");

const MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

const HOW: &str = "`--compare nchan` needs nginx with the nchan module: \
                   apt-get install -y nginx libnginx-mod-nchan";

/// A running nginx (+ nchan, unless started with another configuration). Stopped on drop.
pub struct Nchan {
    child: Option<Child>,
    /// Loopback port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn nginx_bin(how: &str) -> Result<PathBuf> {
    let debian = PathBuf::from("/usr/sbin/nginx");
    if debian.is_file() {
        return Ok(debian);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("nginx");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    Err(BenchError::Missing(format!("nginx not found. {how}")))
}

impl Nchan {
    /// Starts nginx and waits until the publisher location answers.
    pub async fn start() -> Result<Nchan> {
        nginx_bin(HOW)?;
        if !std::path::Path::new(MODULE).is_file() {
            return Err(BenchError::Missing(format!("{MODULE} not found. {HOW}")));
        }
        Nchan::start_conf(CONF, &[], "/pub", HOW).await
    }

    /// Starts nginx with `template` (`@PORT@` and `@PREFIX@` replaced, then each of `vars`) and
    /// waits until `probe` answers below 500; `how` says how to install what is missing.
    /// The port is chosen before nginx binds it, so another process can take it in between: nginx
    /// counts as started only once its own process listens there, and one that exits because
    /// the port was taken is started again on another.
    pub async fn start_conf(
        template: &str,
        vars: &[(&str, String)],
        probe: &str,
        how: &str,
    ) -> Result<Nchan> {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            if let Some(n) = Nchan::start_on_free_port(template, vars, probe, how).await? {
                return Ok(n);
            }
        }
        Err(BenchError::Missing(format!(
            "nginx: its port was taken on each of {ATTEMPTS} tries"
        )))
    }

    /// One attempt of [`Nchan::start_conf`]: `None` if nginx exited because its port was taken.
    async fn start_on_free_port(
        template: &str,
        vars: &[(&str, String)],
        probe: &str,
        how: &str,
    ) -> Result<Option<Nchan>> {
        let bin = nginx_bin(how)?;
        let dir = tempfile::Builder::new()
            .prefix("fanout-bench-nchan-")
            .tempdir()
            .map_err(|e| BenchError::io("creating the nginx prefix", e))?;
        let prefix = dir.path().to_string_lossy().into_owned();
        let port = mcp_fanout_testkit::postgres::free_port()?;
        let mut conf = template
            .replace("@PORT@", &port.to_string())
            .replace("@PREFIX@", &prefix);
        for (name, value) in vars {
            conf = conf.replace(name, value);
        }
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .map_err(|e| BenchError::io(format!("writing {}", conf_path.display()), e))?;
        let err_path = dir.path().join("error.log");
        let child = Command::new(&bin)
            .arg("-p")
            .arg(format!("{prefix}/"))
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&err_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {}", bin.display()), e))?;
        let mut n = Nchan {
            child: Some(child),
            port,
            _dir: dir,
        };
        let http = crate::sut::http_client()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let own = n
                .child
                .as_ref()
                .is_some_and(|c| mcp_fanout_testkit::ports::may_listen_on(c.id(), port));
            if own {
                if let Ok(resp) = http.get(n.url(probe)).send().await {
                    // 404 "no channel" before anyone subscribed is an answer too (nchan), and so
                    // is the MCP server's 405/406 to a bare GET (proxy).
                    if resp.status().as_u16() < 500 {
                        return Ok(Some(n));
                    }
                }
            }
            if let Some(c) = n.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = std::fs::read_to_string(&err_path).unwrap_or_default();
                    if log.contains("Address already in use") {
                        return Ok(None);
                    }
                    return Err(BenchError::Missing(format!(
                        "nginx exited ({status}): {log}. {how}"
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BenchError::Timeout(format!(
                    "nginx to answer on port {port}: {}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        match &self.child {
            Some(c) => {
                let mut v = vec![c.id()];
                v.extend(crate::procstat::children(c.id()));
                v
            }
            None => Vec::new(),
        }
    }
}

impl Drop for Nchan {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on our own unreaped child (SIGQUIT: graceful nginx stop).
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
