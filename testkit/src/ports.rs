//! Servers the kit cannot give port 0 (nginx, HAProxy): a free port is chosen first and bound by
//! the server later, so another process can take it in between. Then "something accepts on the
//! port" would be that other process, and a test would talk to the wrong server. So a server
//! counts as started only once *its own process* holds a listening socket on the port
//! ([`listens_on`]) and accepts; one that exits first is started again on another port.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::wait::{wait_for, SOON};

/// How many ports a server is tried on before the start fails.
const ATTEMPTS: usize = 5;

/// Whether process `pid` itself holds a socket listening on TCP `port` (IPv4 or IPv6): the
/// listening sockets' inodes in `/proc/net/tcp{,6}` against the process's open files. `None` when
/// its open files cannot be read (another user's process without `CAP_SYS_PTRACE`): then only
/// whether something answers can tell, as before this check.
pub fn listens_on(pid: u32, port: u16) -> Option<bool> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| listening_inodes(&text, port))
        .collect();
    Some(
        fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter_map(|target| {
                let t = target.to_string_lossy().into_owned();
                Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .any(|inode| inodes.contains(&inode)),
    )
}

/// Whether `pid` listens on `port` as far as can be told: yes, or its open files cannot be read.
pub fn may_listen_on(pid: u32, port: u16) -> bool {
    listens_on(pid, port).unwrap_or(true)
}

/// The inodes of the sockets in LISTEN state (`0A`) on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = *f.get(3)? == "0A";
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.get(9).map(|s| s.to_string()))
                .flatten()
        })
        .collect()
}

/// Starts `command(addr)` for a free `127.0.0.1` port (stdout discarded, stderr inherited, killed
/// on drop) and waits until that process itself listens on it and accepts. If it exits first (its
/// port was taken), it is started again on another port. Panics naming `what` if no attempt
/// listens.
pub async fn spawn_on_free_port(
    what: &str,
    mut command: impl FnMut(SocketAddr) -> Command,
) -> (Child, SocketAddr) {
    let mut exits = Vec::new();
    for _ in 0..ATTEMPTS {
        let port = crate::postgres::free_port().unwrap_or_else(|e| panic!("{what}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = command(addr)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        // `Ok` once it listens itself, `Err(status)` if it exited first.
        let started = wait_for(&format!("{what} listening on {addr}"), SOON, || {
            let exited = child.try_wait().ok().flatten();
            let own = child.id().is_some_and(|pid| may_listen_on(pid, port));
            async move {
                match exited {
                    Some(status) => Some(Err(status)),
                    None if own && TcpStream::connect(addr).await.is_ok() => Some(Ok(())),
                    None => None,
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        match started {
            Ok(()) => return (child, addr),
            Err(status) => exits.push(format!("port {port}: exited {status}")),
        }
    }
    panic!("{what} did not start on any of {ATTEMPTS} ports: {exits:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_this_process_s_own_and_a_closed_one_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(listens_on(std::process::id(), port), Some(true));
        // Another process (pid 1) does not hold it (or its files cannot be read).
        assert_ne!(listens_on(1, port), Some(true));
        drop(l);
        assert_eq!(listens_on(std::process::id(), port), Some(false));
    }

    /// A server whose first port is taken by someone else: that someone's accepting is not
    /// taken for the server's start; the server is started again on another port.
    #[tokio::test]
    async fn a_server_whose_port_was_taken_is_started_on_another() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken_port = taken.local_addr().expect("addr").port();
        let mut ports = Vec::new();
        let (child, addr) = spawn_on_free_port("http.server", |addr| {
            let port = if ports.is_empty() {
                taken_port
            } else {
                addr.port()
            };
            ports.push(port);
            let mut cmd = Command::new("python3");
            cmd.args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ]);
            cmd
        })
        .await;
        assert_eq!(ports.len(), 2, "tried {ports:?}");
        assert_ne!(addr.port(), taken_port);
        let pid = child.id().expect("running");
        assert_eq!(listens_on(pid, addr.port()), Some(true));
        assert_eq!(listens_on(pid, taken_port), Some(false));
    }
}
