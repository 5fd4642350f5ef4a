//! The Postgres a run measures against: a durable cluster of the bench's own (fsync and
//! `synchronous_commit` on, for headline figures), the test kit's fast throwaway cluster (fsync
//! off, for smoke runs), or a server given by URL.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mcp_fanout_testkit::postgres::{free_port, postgres_bin_dir, server_user, RunAs};
use mcp_fanout_testkit::{PgCluster, PgServer};

use crate::error::{BenchError, Result};

/// How durable the bench's own cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Durability {
    /// fsync=on, synchronous_commit=on, full_page_writes=on (the headline setting).
    On,
    /// The test kit's cluster: fsync=off, synchronous_commit=off.
    Off,
}

/// A running Postgres.
pub enum Pg {
    /// The bench's own durable cluster.
    Own(OwnCluster),
    /// The kit's fast cluster.
    Kit(PgCluster),
    /// A server given by URL.
    External(PgServer),
}

impl Pg {
    /// Starts (or names) the Postgres for a run.
    pub async fn start(url: Option<&str>, durability: Durability) -> Result<Pg> {
        if let Some(url) = url {
            return Ok(Pg::External(PgServer::from_url(url)?));
        }
        match durability {
            Durability::Off => Ok(Pg::Kit(PgCluster::start().await?)),
            Durability::On => Ok(Pg::Own(OwnCluster::start().await?)),
        }
    }

    /// Client helpers and URLs.
    pub fn server(&self) -> &PgServer {
        match self {
            Pg::Own(c) => &c.server,
            Pg::Kit(c) => c.server(),
            Pg::External(s) => s,
        }
    }

    /// The settings that matter for durability, as the server reports them.
    pub async fn settings(&self) -> Result<String> {
        let rows = self
            .server()
            .query(
                self.server().admin_db(),
                "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings \
                 WHERE name IN ('fsync','synchronous_commit','full_page_writes','wal_level','shared_buffers','max_connections','server_version')",
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default())
    }
}

/// A cluster of the bench's own: `initdb` in a temp dir and `postgres` on a free loopback port,
/// durable (fsync on). Stopped (fast shutdown) and removed on drop.
pub struct OwnCluster {
    server: PgServer,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl OwnCluster {
    /// initdb + start; returns once it accepts connections.
    pub async fn start() -> Result<OwnCluster> {
        let bin = postgres_bin_dir()?;
        let owner = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("fanout-bench-pg-")
            .tempdir()
            .map_err(|e| BenchError::io("creating the Postgres directory", e))?;
        chown(dir.path(), owner)?;
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let out = run_as(&bin.join("initdb"), owner, dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| BenchError::io("running initdb", e))?;
        if !out.status.success() {
            return Err(BenchError::Missing(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let port = free_port()?;
        let logf = std::fs::File::create(&log)
            .map_err(|e| BenchError::io("creating the Postgres log", e))?;
        chown(&log, owner)?;
        let logf2 = logf
            .try_clone()
            .map_err(|e| BenchError::io("duplicating the Postgres log", e))?;
        let mut cmd = run_as(&bin.join("postgres"), owner, dir.path());
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path());
        for s in [
            "listen_addresses=127.0.0.1",
            "fsync=on",
            "synchronous_commit=on",
            "full_page_writes=on",
            "max_connections=300",
            "shared_buffers=256MB",
            "max_wal_size=2GB",
            "dynamic_shared_memory_type=mmap",
        ] {
            cmd.arg("-c").arg(s);
        }
        cmd.stdout(logf).stderr(logf2).process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
        // which is async-signal-safe: the server gets SIGQUIT if the bench dies.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGQUIT as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::io("starting postgres", e))?;
        let server = PgServer::from_url(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))?;
        let mut cluster = OwnCluster {
            server,
            child: Some(child),
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if cluster.server.query("postgres", "SELECT 1").await.is_ok() {
                return Ok(cluster);
            }
            if let Some(c) = cluster.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(BenchError::Missing(format!(
                        "postgres exited ({status}); log: {}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BenchError::Timeout(
                    "postgres to accept connections".to_string(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
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

fn run_as(bin: &PathBuf, owner: Option<RunAs>, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("LC_ALL", "C")
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(cwd)
        .stdin(Stdio::null());
    if let Some(o) = owner {
        cmd.uid(o.uid).gid(o.gid);
    }
    cmd
}

fn chown(path: &Path, owner: Option<RunAs>) -> Result<()> {
    if let Some(o) = owner {
        std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))
            .map_err(|e| BenchError::io(format!("chowning {}", path.display()), e))?;
    }
    Ok(())
}
