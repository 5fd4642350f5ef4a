//! Throwaway Postgres for black-box tests and benchmarks: a cluster from the system binaries in a
//! temp dir on a free port ([`PgCluster`]), one shared cluster per test process with a fresh
//! database per test ([`shared_database`], or the server named by `DATABASE_URL` when it is set),
//! a client for setup SQL and for reading the log table ([`PgServer`]), and PgBouncer in
//! transaction mode in front of a cluster ([`PgBouncer`]).
//!
//! `initdb` and `postgres` refuse to run as root; when the tests run as root (as CI does) the server
//! processes run as the `postgres` system user and their directories are chowned to it.
//!
//! Every server process is forked by one dedicated kit thread that lives as long as the test process
//! and is started with `PR_SET_PDEATHSIG`, so it dies with the test process even when no destructor
//! runs (the shared cluster lives in a static; a test binary may be killed). A [`PgCluster`] that is
//! dropped stops its server at once and removes its directory; directories left behind by a dead test
//! process are removed when the next one starts a cluster.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::error::{Error, Result};
use crate::tally::EventId;

/// How long a cluster (or PgBouncer) may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a fast shutdown may take before the server is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// `application_name` of the kit's own connections (so a test that terminates the service's
/// backends, or every client backend but its own, can tell them apart).
pub const KIT_APP_NAME: &str = "mcp-fanout-testkit";

/// The Postgres superuser of a kit cluster (`initdb -U postgres`, trust authentication).
pub const SUPERUSER: &str = "postgres";

/// Settings every kit cluster runs with: loopback TCP only, durability off (tests need speed, not
/// crash safety), room for many replicas' pools.
const SERVER_SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "shared_buffers=32MB",
    // Dynamic shared memory in files under the data dir: nothing is left in /dev/shm if the
    // server is ever killed outright.
    "dynamic_shared_memory_type=mmap",
];

// ---------------------------------------------------------------------------------------------
// Who the server processes run as, and where their files live.

/// A uid/gid the server processes are switched to (when the tests run as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// `None` when not root (the servers run as the current user); the `postgres` system user when
/// root, since `initdb` and `postgres` refuse to run as root.
pub fn server_user() -> Result<Option<RunAs>> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user("postgres").map(Some).map_err(|e| {
        Error::Setup(format!(
            "the tests run as root, initdb/postgres refuse root, and the `postgres` system user \
             could not be used: {e}"
        ))
    })
}

fn lookup_user(name: &str) -> Result<RunAs> {
    let cname = CString::new(name)
        .map_err(|_| Error::Setup(format!("user name {name:?} contains a NUL byte")))?;
    // SAFETY: an all-zero `passwd` is a valid value for an out-parameter (null pointers and zero
    // ids); getpwnam_r fills it with pointers into `buf`, which outlives every use below.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `cname` is NUL-terminated, `pwd` and `result`
    // are live locals, `buf` has the length passed.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            format!("looking up user {name:?}"),
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    if result.is_null() {
        return Err(Error::Setup(format!("there is no user {name:?}")));
    }
    Ok(RunAs {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// The directory holding every kit cluster's directory (`$TMPDIR/mcp-fanout-testkit`), created
/// world-traversable so the `postgres` user can reach its own subdirectory.
fn kit_root() -> Result<PathBuf> {
    let root = std::env::temp_dir().join("mcp-fanout-testkit");
    fs::create_dir_all(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(format!("making {} traversable", root.display()), e))?;
    static CLEANED: OnceLock<()> = OnceLock::new();
    CLEANED.get_or_init(|| remove_leftovers(&root));
    Ok(root)
}

/// Removes `<kind>-<pid>-*` directories whose test process is gone (killed before it could clean
/// up, or holding the never-dropped shared cluster).
fn remove_leftovers(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .split('-')
            .nth(1)
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: libc::pid_t) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A new directory `<root>/<kind>-<pid>-XXXXXX`, owned by the server user.
fn make_dir(kind: &str, owner: Option<RunAs>) -> Result<tempfile::TempDir> {
    let root = kit_root()?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{kind}-{}-", std::process::id()))
        .tempdir_in(&root)
        .map_err(|e| Error::io(format!("creating a directory in {}", root.display()), e))?;
    chown_to(dir.path(), owner)?;
    Ok(dir)
}

fn chown_to(path: &Path, owner: Option<RunAs>) -> Result<()> {
    if let Some(o) = owner {
        std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))
            .map_err(|e| Error::io(format!("chowning {} to the server user", path.display()), e))?;
    }
    Ok(())
}

/// The newest `bin` directory of the system's Postgres: `$MCP_FANOUT_PG_BIN` if set, else the
/// highest `/usr/lib/postgresql/<version>/bin`, else `pg_config --bindir`.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MCP_FANOUT_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.join("postgres").is_file() {
            return Ok(dir);
        }
        return Err(Error::Setup(format!(
            "MCP_FANOUT_PG_BIN={} has no `postgres` binary",
            dir.display()
        )));
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(version) = name
                .split('.')
                .map(str::parse::<u32>)
                .collect::<std::result::Result<Vec<u32>, _>>()
            else {
                continue;
            };
            let bin = entry.path().join("bin");
            if bin.join("postgres").is_file()
                && bin.join("initdb").is_file()
                && best.as_ref().is_none_or(|(v, _)| version > *v)
            {
                best = Some((version, bin));
            }
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("postgres").is_file() {
            return Ok(dir);
        }
    }
    Err(Error::Setup(
        "no Postgres server binaries found (looked in /usr/lib/postgresql/*/bin and `pg_config \
         --bindir`; install the `postgresql` package or set MCP_FANOUT_PG_BIN)"
            .to_string(),
    ))
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = l
        .local_addr()
        .map_err(|e| Error::io("reading a bound address", e))?
        .port();
    Ok(port)
}

/// A command with a clean environment, run in `cwd` as `owner` (when set).
fn server_command(bin: &Path, owner: Option<RunAs>, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("LC_ALL", "C").current_dir(cwd).stdin(Stdio::null());
    if let Some(o) = owner {
        cmd.uid(o.uid).gid(o.gid);
    }
    cmd
}

/// A log file (stdout and stderr of a server), appended to.
fn log_stdio(path: &Path) -> Result<(File, File)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let g = f
        .try_clone()
        .map_err(|e| Error::io(format!("duplicating {}", path.display()), e))?;
    Ok((f, g))
}

/// The last `max` bytes of a log file (lossy UTF-8), for error messages.
fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Processes that die with the test process.

struct SpawnJob {
    cmd: Command,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

/// The kit's spawner thread: `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
/// exits, so every server is forked by this one thread, which lives as long as the process.
fn spawner() -> std::io::Result<&'static mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<std::result::Result<mpsc::Sender<SpawnJob>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnJob>();
            std::thread::Builder::new()
                .name("testkit-pg-spawner".to_string())
                .spawn(move || {
                    for mut job in rx {
                        let _ = job.reply.send(job.cmd.spawn());
                    }
                    // The sender lives in a static, so this is never reached; never exit anyway.
                    loop {
                        std::thread::park();
                    }
                })
                .map(|_| tx)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| std::io::Error::other(format!("cannot start the spawner thread: {e}")))
}

/// Spawns `cmd` so that it receives `signal` when the test process dies.
fn spawn_tied(mut cmd: Command, signal: libc::c_int) -> std::io::Result<Child> {
    // SAFETY: getpid(2) has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (prctl, getppid); it runs after the uid/gid switch, which would otherwise reset
    // the death signal.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The test process died before the death signal was armed.
                return Err(std::io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner()?
        .send(SpawnJob { cmd, reply })
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread dropped a request"))?
}

fn send_signal(pid: u32, sig: libc::c_int, what: &str) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| Error::Protocol(format!("pid {pid} of {what} does not fit pid_t")))?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(Error::io(
            format!("sending signal {sig} to {what}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A server child process: signals, waits without blocking the runtime, kill on drop.
#[derive(Debug)]
struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .map_err(|e| Error::io(format!("checking on {}", self.what), e))
    }

    /// Whether this process itself listens on `port`: until it does, whatever accepts there is
    /// another process that took the port first ([`crate::ports`]).
    fn listens_on(&self, port: u16) -> bool {
        crate::ports::may_listen_on(self.child.id(), port)
    }

    /// Sends `sig`, waits up to `timeout` for the exit, then kills.
    async fn stop(mut self, sig: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        send_signal(self.child.id(), sig, &self.what)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill_now();
                return Err(Error::timeout(
                    format!("{} to exit after signal {sig} (killed)", self.what),
                    timeout,
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Blocking: `sig`, a short wait, then SIGKILL and reap.
    fn stop_blocking(&mut self, sig: libc::c_int, timeout: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = send_signal(self.child.id(), sig, &self.what);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_now();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A server to talk to.

static NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique across the test processes on this machine: `<prefix>_<pid>_<n>_<micros>`
/// (lower case, a valid unquoted SQL identifier when `prefix` is).
pub fn unique_name(prefix: &str) -> String {
    let n = NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() % 1_000_000_000)
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{micros}", std::process::id())
}

/// `[a-z_][a-z0-9_]*`: what the kit interpolates into SQL as a database, schema or role name.
fn check_ident(kind: &str, name: &str) -> Result<()> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b == b'_' || b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b == b'_' || b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(Error::Protocol(format!(
            "{kind} name {name:?} is not [a-z_][a-z0-9_]* (≤ 63 bytes)"
        )))
    }
}

/// A Postgres server reachable by URL: a kit cluster, PgBouncer, or the server of `DATABASE_URL`.
/// Knows how to build the URL of any database on it and runs setup SQL over short-lived
/// connections (each call connects anew, so one `PgServer` serves every test runtime).
#[derive(Debug, Clone)]
pub struct PgServer {
    /// `postgres://[userinfo@]host[:port]`
    prefix: String,
    /// `?…` or empty.
    query: String,
    /// The database named in the URL (for `CREATE DATABASE`); `postgres` if none.
    admin_db: String,
}

impl PgServer {
    /// From a `postgres://` or `postgresql://` URL; its database is the one used for administration.
    pub fn from_url(url: &str) -> Result<PgServer> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| {
                Error::Setup(format!(
                    "{url:?} is not a postgres:// URL (only URLs are supported)"
                ))
            })?;
        let scheme_len = url.len() - rest.len();
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let prefix = url[..scheme_len + authority_end].to_string();
        let after = &rest[authority_end..];
        let (path, query) = match after.find('?') {
            Some(q) => (&after[..q], after[q..].to_string()),
            None => (after, String::new()),
        };
        let db = path.trim_start_matches('/');
        Ok(PgServer {
            prefix,
            query,
            admin_db: if db.is_empty() {
                "postgres".to_string()
            } else {
                db.to_string()
            },
        })
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}{}", self.prefix, self.query)
    }

    /// The URL of database `db` for `user` (no password: the kit's clusters trust loopback).
    pub fn url_as(&self, user: &str, db: &str) -> String {
        let (scheme, authority) = self
            .prefix
            .split_once("://")
            .unwrap_or(("postgres", &self.prefix));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        format!("{scheme}://{user}@{host}/{db}{}", self.query)
    }

    /// The database used for `CREATE DATABASE` and other cluster-wide statements.
    pub fn admin_db(&self) -> &str {
        &self.admin_db
    }

    /// A connection to `db` (driven on the caller's runtime; `application_name` is
    /// [`KIT_APP_NAME`]).
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        connect_url(&self.url(db)).await
    }

    /// A connection to `db` as `user`.
    pub async fn connect_as(&self, user: &str, db: &str) -> Result<tokio_postgres::Client> {
        connect_url(&self.url_as(user, db)).await
    }

    /// Runs `sql` (one or more statements, simple protocol) on `db` and returns every row, each
    /// column as text (`None` for NULL).
    pub async fn query(&self, db: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let client = self.connect(db).await?;
        simple_rows(&client, sql).await
    }

    /// Like `psql -At -c sql`: rows as lines, columns joined by `|`, NULL as an empty string.
    pub async fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let rows = self.query(db, sql).await?;
        Ok(rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|c| c.as_deref().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The first column of the first row of `sql` on `db`.
    pub async fn scalar(&self, db: &str, sql: &str) -> Result<Option<String>> {
        Ok(self
            .query(db, sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten())
    }

    /// `CREATE DATABASE name`.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        check_ident("database", name)?;
        self.query(&self.admin_db, &format!("CREATE DATABASE {name}"))
            .await
            .map(|_| ())
    }

    /// Creates a database with a fresh name `t_…` and returns the name.
    pub async fn fresh_database(&self) -> Result<String> {
        let name = unique_name("t");
        self.create_database(&name).await?;
        Ok(name)
    }

    /// Creates a role that can log in (trust authentication: no password) and returns its name.
    pub async fn create_login_role(&self, prefix: &str) -> Result<String> {
        let name = unique_name(prefix);
        check_ident("role", &name)?;
        self.query(&self.admin_db, &format!("CREATE ROLE {name} LOGIN"))
            .await?;
        Ok(name)
    }

    /// Terminates every backend of `db` whose `application_name` is `app` (not the kit's own
    /// connections); returns how many were signalled.
    pub async fn terminate_app(&self, db: &str, app: &str) -> Result<usize> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = {} AND application_name = {} AND pid <> pg_backend_pid()",
            quote_literal(db),
            quote_literal(app)
        );
        self.count(db, &sql).await
    }

    /// Terminates every client backend of `db` except the one running this statement; returns
    /// how many were signalled.
    pub async fn terminate_all_clients(&self, db: &str) -> Result<usize> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = {} AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            quote_literal(db)
        );
        self.count(db, &sql).await
    }

    /// How many backends of `db` have `application_name = app`.
    pub async fn backends(&self, db: &str, app: &str) -> Result<usize> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = {} AND application_name = {}",
            quote_literal(db),
            quote_literal(app)
        );
        self.count(db, &sql).await
    }

    async fn count(&self, db: &str, sql: &str) -> Result<usize> {
        let v = self.scalar(db, sql).await?.unwrap_or_default();
        v.parse()
            .map_err(|_| Error::Protocol(format!("{sql} returned {v:?}, not a count")))
    }

    /// `<schema>.meta.epoch`.
    pub async fn epoch(&self, db: &str, schema: &str) -> Result<String> {
        check_ident("schema", schema)?;
        self.scalar(db, &format!("SELECT epoch FROM {schema}.meta"))
            .await?
            .ok_or_else(|| Error::Protocol(format!("{schema}.meta has no epoch")))
    }

    /// `<schema>.head.seq`.
    pub async fn head(&self, db: &str, schema: &str) -> Result<u64> {
        check_ident("schema", schema)?;
        self.number(db, &format!("SELECT seq FROM {schema}.head"))
            .await
    }

    /// `<schema>.meta.pruned`, the pruned watermark.
    pub async fn pruned(&self, db: &str, schema: &str) -> Result<u64> {
        check_ident("schema", schema)?;
        self.number(db, &format!("SELECT pruned FROM {schema}.meta"))
            .await
    }

    async fn number(&self, db: &str, sql: &str) -> Result<u64> {
        let v = self.scalar(db, sql).await?.unwrap_or_default();
        v.parse()
            .map_err(|_| Error::Protocol(format!("{sql} returned {v:?}, not a number")))
    }

    /// Every event id in `<schema>.events` after `after` (a seq), in log order: the truth every
    /// subscriber is checked against.
    pub async fn log_ids_after(&self, db: &str, schema: &str, after: u64) -> Result<Vec<String>> {
        check_ident("schema", schema)?;
        let rows = self
            .query(
                db,
                &format!(
                    "SELECT (SELECT epoch FROM {schema}.meta) || '-' || seq FROM {schema}.events \
                     WHERE seq > {after} ORDER BY seq"
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    /// Every event id in `<schema>.events`, in log order.
    pub async fn log_ids(&self, db: &str, schema: &str) -> Result<Vec<String>> {
        self.log_ids_after(db, schema, 0).await
    }

    /// Every event of `<schema>.events` after `after`: `(id, method, params text)`, in log order.
    pub async fn log_events_after(
        &self,
        db: &str,
        schema: &str,
        after: u64,
    ) -> Result<Vec<LogRow>> {
        check_ident("schema", schema)?;
        let rows = self
            .query(
                db,
                &format!(
                    "SELECT (SELECT epoch FROM {schema}.meta) || '-' || seq, method, params, tenant, \
                     session FROM {schema}.events WHERE seq > {after} ORDER BY seq"
                ),
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                let mut it = r.into_iter();
                let id = it
                    .next()
                    .flatten()
                    .ok_or_else(|| Error::Protocol("a log row without an id".to_string()))?;
                let method = it.next().flatten().unwrap_or_default();
                Ok(LogRow {
                    id,
                    method,
                    params: it.next().flatten(),
                    tenant: it.next().flatten(),
                    session: it.next().flatten(),
                })
            })
            .collect()
    }
}

/// `SELECT <schema>.publish(method, params, tenant, session)` on `client` (inside whatever
/// transaction the caller has open: pass a `Transaction` to publish inside it); returns the id it
/// answers.
pub async fn sql_publish<C: tokio_postgres::GenericClient>(
    client: &C,
    schema: &str,
    method: &str,
    params: Option<&serde_json::Value>,
    tenant: Option<&str>,
    session: Option<&str>,
) -> Result<String> {
    check_ident("schema", schema)?;
    use tokio_postgres::types::Type;
    let params = params.map(ToString::to_string);
    // Unnamed statements (`query_typed`), so this works through PgBouncer in transaction mode.
    let row = client
        .query_typed_one(
            &format!("SELECT {schema}.publish($1, ($2::text)::jsonb, $3, $4)"),
            &[
                (&method, Type::TEXT),
                (&params, Type::TEXT),
                (&tenant, Type::TEXT),
                (&session, Type::TEXT),
            ],
        )
        .await?;
    row.try_get::<_, String>(0).map_err(Error::from)
}

/// One row of `<schema>.events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    /// `<epoch>-<seq>`
    pub id: String,
    /// The notification method.
    pub method: String,
    /// The params as stored (compact JSON text).
    pub params: Option<String>,
    /// Target tenant.
    pub tenant: Option<String>,
    /// Target session.
    pub session: Option<String>,
}

impl LogRow {
    /// The seq part of the id.
    pub fn seq(&self) -> Result<u64> {
        Ok(self.id.parse::<EventId>()?.seq)
    }
}

/// `'text'` with quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A connection to `url`, driven on the caller's runtime, with [`KIT_APP_NAME`] unless the URL
/// names another application.
pub async fn connect_url(url: &str) -> Result<tokio_postgres::Client> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    if cfg.get_application_name().is_none() {
        cfg.application_name(KIT_APP_NAME);
    }
    cfg.connect_timeout(Duration::from_secs(5));
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), cfg.connect(NoTls))
        .await
        .map_err(|_| Error::timeout(format!("connecting to {url}"), Duration::from_secs(10)))??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs `sql` with the simple protocol; every row's columns as text.
pub async fn simple_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(ToString::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// A throwaway cluster.

/// A Postgres cluster of its own: `initdb` in a temp dir, `postgres` on a free loopback port with
/// trust authentication for `postgres`. Dropping it stops the server at once (immediate shutdown,
/// then SIGKILL) and removes the directory.
#[derive(Debug)]
pub struct PgCluster {
    server: PgServer,
    port: u16,
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    owner: Option<RunAs>,
    proc: Mutex<Option<Proc>>,
    /// Removed on drop, after the server is gone.
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// `initdb` and start a new cluster; returns when it accepts connections.
    pub async fn start() -> Result<PgCluster> {
        PgCluster::start_kind("pg").await
    }

    async fn start_kind(kind: &str) -> Result<PgCluster> {
        let bin_dir = postgres_bin_dir()?;
        let owner = server_user()?;
        let dir = make_dir(kind, owner)?;
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        let log_path = dir.path().join("postgres.log");
        fs::create_dir(&socket_dir)
            .map_err(|e| Error::io(format!("creating {}", socket_dir.display()), e))?;
        chown_to(&socket_dir, owner)?;
        // Create the log as the server user too, so both initdb and postgres can append.
        File::create(&log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        chown_to(&log_path, owner)?;

        let mut initdb = server_command(&bin_dir.join("initdb"), owner, dir.path());
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let initdb_bin = bin_dir.join("initdb");
        let out = tokio::task::spawn_blocking(move || initdb.output())
            .await
            .map_err(|e| Error::Setup(format!("the initdb task failed: {e}")))?
            .map_err(|source| Error::Spawn {
                bin: initdb_bin,
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Setup(format!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }

        let mut cluster = PgCluster {
            server: PgServer::from_url("postgres://postgres@127.0.0.1:1/postgres")?,
            port: 0,
            bin_dir,
            data_dir,
            socket_dir,
            log_path,
            owner,
            proc: Mutex::new(None),
            dir,
        };
        // A port can be taken between choosing it and binding it: try a few.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            cluster.server = PgServer::from_url(&format!(
                "postgres://{SUPERUSER}@127.0.0.1:{}/postgres",
                cluster.port
            ))?;
            match cluster.launch().await {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let log = tail(&cluster.log_path, 4096);
                    if !log.contains("could not bind") && !log.contains("already in use") {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Setup("postgres did not start".to_string())))
    }

    /// The server's address and client helpers.
    pub fn server(&self) -> &PgServer {
        &self.server
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`
    pub fn url(&self, db: &str) -> String {
        self.server.url(db)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of the kit's files for this cluster (data, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock_proc().as_ref().map(|p| p.child.id())
    }

    /// The end of the server log (for failure messages).
    pub fn log_tail(&self) -> String {
        tail(&self.log_path, 8192)
    }

    /// See [`PgServer::create_database`].
    pub async fn create_database(&self, name: &str) -> Result<()> {
        self.server.create_database(name).await
    }

    /// See [`PgServer::fresh_database`].
    pub async fn fresh_database(&self) -> Result<String> {
        self.server.fresh_database().await
    }

    /// See [`PgServer::psql`].
    pub async fn psql(&self, db: &str, sql: &str) -> Result<String> {
        self.server.psql(db, sql).await
    }

    fn lock_proc(&self) -> std::sync::MutexGuard<'_, Option<Proc>> {
        self.proc.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn postgres_command(&self) -> Result<Command> {
        let (out, err) = log_stdio(&self.log_path)?;
        let mut cmd = server_command(&self.bin_dir.join("postgres"), self.owner, self.dir.path());
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir);
        for setting in SERVER_SETTINGS {
            cmd.arg("-c").arg(setting);
        }
        // Its own process group: a Ctrl-C at the terminal goes to the tests, which stop it.
        cmd.stdout(out).stderr(err).process_group(0);
        Ok(cmd)
    }

    /// Starts the postmaster and waits until it accepts connections.
    async fn launch(&self) -> Result<()> {
        if self.lock_proc().is_some() {
            return Err(Error::Setup(format!(
                "the cluster on port {} is already running",
                self.port
            )));
        }
        let cmd = self.postgres_command()?;
        let bin = self.bin_dir.join("postgres");
        // SIGQUIT: immediate shutdown, which still releases shared memory.
        let child =
            spawn_tied(cmd, libc::SIGQUIT).map_err(|source| Error::Spawn { bin, source })?;
        *self.lock_proc() = Some(Proc {
            child,
            what: format!("postgres on port {}", self.port),
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (exited, own) = {
                let mut guard = self.lock_proc();
                match guard.as_mut() {
                    Some(p) => (p.try_wait()?, p.listens_on(self.port)),
                    None => (None, false),
                }
            };
            if let Some(status) = exited {
                *self.lock_proc() = None;
                return Err(Error::Setup(format!(
                    "postgres on port {} exited ({status}) while starting; log:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            if own {
                if let Ok(client) = self.server.connect("postgres").await {
                    if client.simple_query("SELECT 1").await.is_ok() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Setup(format!(
                    "postgres on port {} did not accept connections within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fast shutdown (SIGINT: sessions are terminated, a checkpoint is written) and waits for the
    /// exit. The data stays; [`PgCluster::start_again`] brings the same cluster back.
    pub async fn stop(&self) -> Result<()> {
        self.stop_with(libc::SIGINT).await
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the next start).
    pub async fn stop_immediate(&self) -> Result<()> {
        self.stop_with(libc::SIGQUIT).await
    }

    async fn stop_with(&self, sig: libc::c_int) -> Result<()> {
        let proc = self.lock_proc().take();
        match proc {
            Some(p) => p.stop(sig, STOP_TIMEOUT).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Starts the stopped cluster again: same data directory, same port.
    pub async fn start_again(&self) -> Result<()> {
        self.launch().await
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        let mut guard = self.lock_proc();
        match guard.as_mut() {
            Some(p) => matches!(p.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut p) = self.lock_proc().take() {
            p.stop_blocking(libc::SIGQUIT, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One server per test process.

#[derive(Debug)]
enum Shared {
    Cluster(PgCluster),
    External(PgServer),
}

/// The server shared by every test of this process: the one named by `DATABASE_URL` when that is
/// set (non-empty), else one kit cluster started on first use. It is never dropped; its
/// postmaster dies with the test process (see the module docs). Tests isolate themselves with
/// their own database ([`shared_database`]); tests that break the server (terminate backends,
/// restart it) start a [`PgCluster`] of their own.
pub async fn shared_server() -> Result<&'static PgServer> {
    static SHARED: tokio::sync::OnceCell<Shared> = tokio::sync::OnceCell::const_new();
    let shared = SHARED
        .get_or_try_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.trim().is_empty() => {
                    let server = PgServer::from_url(url.trim())?;
                    server
                        .query(server.admin_db(), "SELECT 1")
                        .await
                        .map_err(|e| {
                            Error::Setup(format!(
                                "DATABASE_URL is set but its server does not answer: {e}"
                            ))
                        })?;
                    Ok(Shared::External(server))
                }
                _ => Ok::<Shared, Error>(Shared::Cluster(PgCluster::start_kind("shared").await?)),
            }
        })
        .await?;
    Ok(match shared {
        Shared::Cluster(c) => c.server(),
        Shared::External(s) => s,
    })
}

/// A fresh database on the [`shared_server`]: the server and the database's name.
pub async fn shared_database() -> Result<(&'static PgServer, String)> {
    let server = shared_server().await?;
    let db = server.fresh_database().await?;
    Ok((server, db))
}

// ---------------------------------------------------------------------------------------------
// PgBouncer.

/// Where the kit looks for PgBouncer: `$MCP_FANOUT_PGBOUNCER`, `/usr/sbin/pgbouncer`, or `PATH`.
pub fn pgbouncer_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MCP_FANOUT_PGBOUNCER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::Setup(format!(
            "MCP_FANOUT_PGBOUNCER={} is not a file (is pgbouncer installed?)",
            p.display()
        )));
    }
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    if debian.is_file() {
        return Ok(debian);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("pgbouncer");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::Setup(
        "pgbouncer is not installed (looked for $MCP_FANOUT_PGBOUNCER, /usr/sbin/pgbouncer and \
         `pgbouncer` on PATH): install it with `apt-get install -y pgbouncer`"
            .to_string(),
    ))
}

/// PgBouncer in transaction pooling mode on a free loopback port, in front of a kit cluster,
/// trusting `postgres`; every database name maps to the same name on the cluster. Stopped on drop.
#[derive(Debug)]
pub struct PgBouncer {
    server: PgServer,
    port: u16,
    log_path: PathBuf,
    proc: Mutex<Option<Proc>>,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts PgBouncer in front of `cluster`.
    pub async fn start(cluster: &PgCluster) -> Result<PgBouncer> {
        PgBouncer::start_for("127.0.0.1", cluster.port()).await
    }

    /// Starts PgBouncer in front of the Postgres at `host:port` (trust authentication for
    /// `postgres` is assumed there).
    pub async fn start_for(host: &str, pg_port: u16) -> Result<PgBouncer> {
        let bin = pgbouncer_bin()?;
        let owner = server_user()?;
        // A port can be taken between choosing it and binding it: try a few.
        let mut last = None;
        for _ in 0..5 {
            let bouncer = PgBouncer::launch(&bin, owner, host, pg_port)?;
            match bouncer.wait_ready().await {
                Ok(()) => return Ok(bouncer),
                Err(e) => {
                    if !bouncer.log_tail().contains("Address already in use") {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Setup("pgbouncer did not start".to_string())))
    }

    fn launch(bin: &Path, owner: Option<RunAs>, host: &str, pg_port: u16) -> Result<PgBouncer> {
        let dir = make_dir("pgbouncer", owner)?;
        let ini = dir.path().join("pgbouncer.ini");
        let users = dir.path().join("userlist.txt");
        let log_path = dir.path().join("pgbouncer.log");
        let port = free_port()?;
        let config = format!(
            "[databases]\n\
             * = host={host} port={pg_port}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             admin_users = {SUPERUSER}\n\
             pool_mode = transaction\n\
             max_client_conn = 500\n\
             default_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            users = users.display()
        );
        for (path, text) in [
            (&users, format!("\"{SUPERUSER}\" \"\"\n")),
            (&ini, config),
            (&log_path, String::new()),
        ] {
            fs::write(path, text)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            chown_to(path, owner)?;
        }
        let (out, err) = log_stdio(&log_path)?;
        let mut cmd = server_command(bin, owner, dir.path());
        cmd.arg(&ini).stdout(out).stderr(err).process_group(0);
        let child = spawn_tied(cmd, libc::SIGKILL).map_err(|source| Error::Spawn {
            bin: bin.to_path_buf(),
            source,
        })?;
        Ok(PgBouncer {
            server: PgServer::from_url(&format!(
                "postgres://{SUPERUSER}@127.0.0.1:{port}/postgres"
            ))?,
            port,
            log_path,
            proc: Mutex::new(Some(Proc {
                child,
                what: format!("pgbouncer on port {port}"),
            })),
            dir,
        })
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (exited, own) = {
                let mut guard = self.proc.lock().unwrap_or_else(PoisonError::into_inner);
                match guard.as_mut() {
                    Some(p) => (p.try_wait()?, p.listens_on(self.port)),
                    None => (None, false),
                }
            };
            if let Some(status) = exited {
                return Err(Error::Setup(format!(
                    "pgbouncer on port {} exited ({status}) while starting; log:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            if own {
                if let Ok(rows) = self.server.query("postgres", "SELECT 1").await {
                    if !rows.is_empty() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Setup(format!(
                    "pgbouncer on port {} did not serve within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<pgbouncer port>/<db>`
    pub fn url(&self, db: &str) -> String {
        self.server.url(db)
    }

    /// Client helpers that go through PgBouncer.
    pub fn server(&self) -> &PgServer {
        &self.server
    }

    /// The directory of its config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `SHOW <what>` on the admin console (`SHOW CLIENTS`, `SHOW POOLS`, …): every row as text.
    pub async fn show(&self, what: &str) -> Result<Vec<Vec<Option<String>>>> {
        let client = connect_url(&self.server.url("pgbouncer")).await?;
        simple_rows(&client, &format!("SHOW {what}")).await
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path, 8192)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut p) = self
            .proc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            p.stop_blocking(libc::SIGTERM, Duration::from_secs(3));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_for_other_databases_and_users() {
        let s = PgServer::from_url("postgres://u:p@h:5433/db?sslmode=disable").expect("url");
        assert_eq!(s.url("x"), "postgres://u:p@h:5433/x?sslmode=disable");
        assert_eq!(s.url_as("r", "x"), "postgres://r@h:5433/x?sslmode=disable");
        assert_eq!(s.admin_db(), "db");
        let s = PgServer::from_url("postgresql://h").expect("url");
        assert_eq!(s.url("x"), "postgresql://h/x");
        assert_eq!(s.admin_db(), "postgres");
        assert!(PgServer::from_url("host=h dbname=x").is_err());
    }

    #[test]
    fn identifiers_and_names() {
        assert!(check_ident("db", "t_1_2_3").is_ok());
        for bad in ["", "1a", "A", "a-b", "a;drop"] {
            assert!(check_ident("db", bad).is_err(), "{bad:?}");
        }
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(check_ident("db", &a).is_ok());
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
