//! Harness of the end-to-end tests with the official MCP SDKs (tests/mcp_*.rs): installing them
//! (`scripts/e2e-setup`, run once per test process), starting the small MCP servers and the
//! unmodified SDK clients in `tests/e2e/` as subprocesses, and awaiting the JSON lines they print.
//!
//! Every script prints one JSON object per line on stdout; the harness keeps each line with the
//! instant it arrived and echoes it (prefixed with the process label) to the test's stderr, so a
//! failing test shows the clients' transcripts interleaved with the replicas' logs.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/e2e-setup` installs the SDKs.
pub fn e2e_dir() -> PathBuf {
    repo().join("target/e2e")
}

/// Runs `scripts/e2e-setup` (idempotent; under a second when already done) once per test
/// process. Nothing is skipped: if it fails, every e2e test fails with its output.
pub fn ensure_setup() {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let result = SETUP.get_or_init(|| {
        let script = repo().join("scripts/e2e-setup");
        let output = std::process::Command::new("bash")
            .arg(&script)
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}): it installs the official MCP SDKs (Python venvs target/e2e/py1 and \
                 target/e2e/py2 from PyPI, target/e2e/node by `npm ci`) that these tests drive; run it \
                 by hand to see why.\nstdout:\n{}\nstderr:\n{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The interpreter of one venv (`py1`: `mcp` 1.x, `py2`: `mcp` 2.x).
pub fn python(venv: &str) -> PathBuf {
    e2e_dir().join(venv).join("bin/python")
}

/// A script under `tests/e2e/`.
pub fn script(rel: &str) -> PathBuf {
    repo().join("tests/e2e").join(rel)
}

/// One line a script printed: its JSON (a non-JSON line becomes a JSON string) and when it
/// arrived.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub value: Value,
}

impl Line {
    /// The `kind` field of the line.
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
}

#[derive(Debug, Default)]
struct Output {
    lines: Vec<Line>,
    closed: bool,
}

/// A running script. Killed when dropped.
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Child,
    out: Arc<Mutex<Output>>,
    changed: Arc<Notify>,
}

impl Proc {
    /// Starts `program args…` with a clean environment (`PATH`, `HOME`, a UTF-8 locale, no proxy,
    /// no bytecode files in the work tree) plus `envs`.
    pub fn spawn(label: &str, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(repo())
            .env_clear()
            .env("LANG", "C.UTF-8")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for key in ["PATH", "HOME"] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot start {}: {e}", program.display()));
        let out = Arc::new(Mutex::new(Output::default()));
        let changed = Arc::new(Notify::new());
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pump_stdout(
                stdout,
                label.to_string(),
                Arc::clone(&out),
                Arc::clone(&changed),
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pump_stderr(stderr, format!("{label} stderr")));
        }
        Proc {
            label: label.to_string(),
            child,
            out,
            changed,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lock().lines.clone()
    }

    /// Lines of one `kind`, from index `from` on, with their indexes.
    pub fn of_kind(&self, kind: &str, from: usize) -> Vec<(usize, Line)> {
        self.lock()
            .lines
            .iter()
            .enumerate()
            .skip(from)
            .filter(|(_, l)| l.kind() == kind)
            .map(|(i, l)| (i, l.clone()))
            .collect()
    }

    /// How many lines satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.lock().lines.iter().filter(|l| pred(&l.value)).count()
    }

    /// The whole output, for failure messages.
    pub fn transcript(&self) -> String {
        let out = self.lock();
        let mut s = format!("--- {} ({} lines", self.label, out.lines.len());
        s.push_str(if out.closed { ", exited)\n" } else { ")\n" });
        for (i, l) in out.lines.iter().enumerate() {
            s.push_str(&format!("{i:4} {}\n", l.value));
        }
        s
    }

    /// The first line at index ≥ `from` that satisfies `pred`, awaited up to `timeout`. Panics
    /// with the transcript when it does not come (or the script exits first).
    pub async fn wait_line(
        &self,
        what: &str,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (usize, Line) {
        match self.try_wait_line(from, timeout, pred).await {
            Ok(found) => found,
            Err(why) => panic!(
                "{}: {why} while waiting for {what}\n{}",
                self.label,
                self.transcript()
            ),
        }
    }

    /// Like [`Proc::wait_line`], but returns why it failed instead of panicking.
    pub async fn try_wait_line(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<(usize, Line), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let out = self.lock();
                if let Some((i, l)) = out
                    .lines
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, l)| pred(&l.value))
                {
                    return Ok((i, l.clone()));
                }
                if out.closed {
                    return Err("the process exited".to_string());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!("timed out after {timeout:?}"));
            }
        }
    }

    /// Awaits the first line of `kind` at index ≥ `from`.
    pub async fn wait_kind(&self, kind: &str, from: usize, timeout: Duration) -> (usize, Line) {
        self.wait_line(&format!("a `{kind}` line"), from, timeout, |v| {
            v.get("kind").and_then(Value::as_str) == Some(kind)
        })
        .await
    }

    /// Awaits until `pred` holds for at least `n` lines.
    pub async fn wait_count(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let (count, closed) = {
                let out = self.lock();
                (
                    out.lines.iter().filter(|l| pred(&l.value)).count(),
                    out.closed,
                )
            };
            if count >= n {
                return;
            }
            let why = if closed {
                Some("the process exited".to_string())
            } else if tokio::time::timeout_at(deadline, notified).await.is_err() {
                Some(format!("timed out after {timeout:?}"))
            } else {
                None
            };
            if let Some(why) = why {
                let count = self.count(&pred);
                panic!(
                    "{}: {why} waiting for {n} × {what} (got {count})\n{}",
                    self.label,
                    self.transcript()
                );
            }
        }
    }

    /// Awaits until `f` (given every line so far) yields a value. Panics with the transcript when
    /// it does not within `timeout` (or the script exits first).
    pub async fn wait_state<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&[Line]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let closed = {
                let out = self.lock();
                if let Some(v) = f(&out.lines) {
                    return v;
                }
                out.closed
            };
            let why = if closed {
                Some("the process exited".to_string())
            } else if tokio::time::timeout_at(deadline, notified).await.is_err() {
                Some(format!("timed out after {timeout:?}"))
            } else {
                None
            };
            if let Some(why) = why {
                panic!(
                    "{}: {why} while waiting for {what}\n{}",
                    self.label,
                    self.transcript()
                );
            }
        }
    }

    /// Kills the process now.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        self.out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn pump_stdout<R: AsyncRead + Unpin>(
    out: R,
    label: String,
    sink: Arc<Mutex<Output>>,
    changed: Arc<Notify>,
) {
    let mut reader = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf).trim_end().to_string();
        eprintln!("[{label}] {text}");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        sink.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lines
            .push(Line {
                at: Instant::now(),
                value,
            });
        changed.notify_waiters();
    }
    sink.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .closed = true;
    changed.notify_waiters();
}

async fn pump_stderr<R: AsyncRead + Unpin>(err: R, label: String) {
    let mut reader = BufReader::new(err);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => eprintln!("[{label}] {}", String::from_utf8_lossy(&buf).trim_end()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The MCP servers (upstreams) written with the official Python SDK.

/// Which upstream MCP server to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// `mcp` 1.x FastMCP, stateful sessions, SSE answers (the SDK's default).
    V1Sse,
    /// `mcp` 1.x FastMCP, stateful sessions, JSON answers (`json_response=True`).
    V1Json,
    /// `mcp` 1.x FastMCP, stateless (no session ids).
    V1Stateless,
    /// `mcp` 2.x MCPServer (protocol 2026-07-28 and the handshake era).
    V2,
}

/// A running upstream MCP server.
#[derive(Debug)]
pub struct Upstream {
    pub proc: Proc,
    /// Its MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub url: String,
}

impl Upstream {
    pub async fn start(kind: UpstreamKind, label: &str) -> Upstream {
        match kind {
            UpstreamKind::V1Sse => Upstream::py1(label, &[]).await,
            UpstreamKind::V1Json => Upstream::py1(label, &["--json-response"]).await,
            UpstreamKind::V1Stateless => Upstream::py1(label, &["--stateless"]).await,
            UpstreamKind::V2 => {
                ensure_setup();
                let s = script("py2/server.py");
                Upstream::spawn(
                    label,
                    &python("py2"),
                    &[s.to_str().expect("utf-8 path")],
                    &[],
                )
                .await
            }
        }
    }

    /// The Python SDK 2.x `MCPServer` of `tests/e2e/py2bus/server.py`, whose listen streams go
    /// through `FanoutSubscriptionBus` (clients/python) bound to `FANOUT_URL` with `FANOUT_TOKEN`
    /// (in `envs`); `--memory` in `flags` uses the SDK's in-memory bus instead. Its URL line comes
    /// once the bus stream is open.
    pub async fn py2bus(label: &str, flags: &[&str], envs: &[(&str, &str)]) -> Upstream {
        ensure_setup();
        let s = script("py2bus/server.py");
        let mut args = vec![s.to_str().expect("utf-8 path")];
        args.extend_from_slice(flags);
        Upstream::spawn(label, &python("py2bus"), &args, envs).await
    }

    /// The TypeScript SDK 2.x `createMcpHandler` server of `tests/e2e/node2/server.mjs` on node's
    /// http server, with `FanoutEventBus` (clients/typescript) bound to `FANOUT_URL` with
    /// `FANOUT_TOKEN` (in `envs`); `--memory` uses the SDK's in-memory bus.
    pub async fn ts2bus(label: &str, flags: &[&str], envs: &[(&str, &str)]) -> Upstream {
        ensure_setup();
        let s = e2e_dir().join("node2/server.mjs");
        let mut args = vec![s.to_str().expect("utf-8 path")];
        args.extend_from_slice(flags);
        Upstream::spawn(label, Path::new("node"), &args, envs).await
    }

    /// The `mcp` 1.x FastMCP server with these flags (`--stateless`, `--json-response`,
    /// `--list-changed`).
    pub async fn py1(label: &str, flags: &[&str]) -> Upstream {
        ensure_setup();
        let s = script("py1/server.py");
        let mut args = vec![s.to_str().expect("utf-8 path")];
        args.extend_from_slice(flags);
        Upstream::spawn(label, &python("py1"), &args, &[]).await
    }

    /// The TypeScript SDK server (`StreamableHTTPServerTransport`): stateful (a
    /// `sessionIdGenerator`) or stateless (`undefined`).
    pub async fn ts(label: &str, stateless: bool) -> Upstream {
        ensure_setup();
        let s = script("node/server.cjs");
        let mut args = vec![s.to_str().expect("utf-8 path")];
        if stateless {
            args.push("--stateless");
        }
        let modules = e2e_dir().join("node/node_modules");
        let node_path = [("NODE_PATH", modules.to_str().expect("utf-8 path"))];
        Upstream::spawn(label, Path::new("node"), &args, &node_path).await
    }

    async fn spawn(label: &str, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Upstream {
        let proc = Proc::spawn(label, program, args, envs);
        let (_, line) = proc
            .wait_line("its endpoint URL", 0, Duration::from_secs(30), |v| {
                v.get("url").is_some()
            })
            .await;
        let url = line.value["url"].as_str().expect("url").to_string();
        Upstream { proc, url }
    }

    /// `http://127.0.0.1:PORT<path>` on the upstream's own HTTP server.
    pub fn base(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches("/mcp"))
    }

    /// Adds a tool at run time (`POST /add-tool?name=…`).
    pub async fn add_tool(&self, name: &str) {
        let resp = http()
            .post(self.base(&format!("/add-tool?name={name}")))
            .send()
            .await
            .expect("POST /add-tool");
        assert_eq!(resp.status(), 200, "{}: POST /add-tool", self.proc.label());
    }

    /// Releases a `gated(key)` tool call (`POST /release?key=…`).
    pub async fn release(&self, key: &str) {
        let resp = http()
            .post(self.base(&format!("/release?key={key}")))
            .send()
            .await
            .expect("POST /release");
        assert_eq!(resp.status(), 200, "{}: POST /release", self.proc.label());
    }
}

// ---------------------------------------------------------------------------------------------
// The official SDK clients.

/// The Python SDK 1.x client (legacy GET stream) on `url`.
pub fn py1_client(label: &str, url: &str) -> Proc {
    py1_client_with(label, url, &[])
}

/// The Python SDK 1.x client with flags (`--call`: a `tools/call add(2, 40)` once ready).
pub fn py1_client_with(label: &str, url: &str, flags: &[&str]) -> Proc {
    ensure_setup();
    let s = script("py1/client.py");
    let mut args = vec![s.to_str().expect("utf-8 path"), url];
    args.extend_from_slice(flags);
    Proc::spawn(label, &python("py1"), &args, &[])
}

/// The TypeScript SDK client (legacy GET stream, `listChanged` handler for tools) on `url`.
pub fn ts_client(label: &str, url: &str) -> Proc {
    ts_client_with(label, url, &[])
}

/// The TypeScript SDK client with flags (`--call`: a `tools/call add(2, 40)` once ready).
pub fn ts_client_with(label: &str, url: &str, flags: &[&str]) -> Proc {
    ensure_setup();
    let s = script("node/client.cjs");
    let modules = e2e_dir().join("node/node_modules");
    let mut args = vec![s.to_str().expect("utf-8 path"), url];
    args.extend_from_slice(flags);
    Proc::spawn(
        label,
        Path::new("node"),
        &args,
        &[("NODE_PATH", modules.to_str().expect("utf-8 path"))],
    )
}

/// The Python SDK 2.x client on protocol 2026-07-28 (`listen()`), opted into tools (and
/// `extra` filter flags: `--prompts`, `--resources`) on `url`.
pub fn py2_client(label: &str, url: &str, extra: &[&str]) -> Proc {
    ensure_setup();
    let s = script("py2/client.py");
    let mut args = vec![s.to_str().expect("utf-8 path"), url];
    args.extend_from_slice(extra);
    Proc::spawn(label, &python("py2"), &args, &[])
}

/// The TypeScript SDK 2.x client on protocol 2026-07-28 (`client.listen()`, tools opted in unless
/// `--no-tools`; `--uri URI` subscribes to a resource) on `url`: `tests/e2e/node2/client.mjs`.
pub fn ts2_client(label: &str, url: &str, extra: &[&str]) -> Proc {
    ensure_setup();
    let s = e2e_dir().join("node2/client.mjs");
    let mut args = vec![s.to_str().expect("utf-8 path"), url];
    args.extend_from_slice(extra);
    Proc::spawn(label, Path::new("node"), &args, &[])
}

/// Calls tools on an MCP server with the Python SDK 2.x client (`tests/e2e/py2bus/call.py`), one
/// after another (`TOOL` or `TOOL:JSON-ARGS`), and awaits every answer; panics unless each is a
/// result that is not an error.
pub async fn call_tools(label: &str, url: &str, calls: &[&str], timeout: Duration) {
    ensure_setup();
    let s = script("py2bus/call.py");
    let mut args = vec![s.to_str().expect("utf-8 path"), url];
    args.extend_from_slice(calls);
    let p = Proc::spawn(label, &python("py2bus"), &args, &[]);
    p.wait_count("answered tool calls", calls.len(), timeout, |v| {
        is_kind(v, "called")
    })
    .await;
    for (_, line) in p.of_kind("called", 0) {
        let ok = line
            .value
            .get("result")
            .is_some_and(|r| r["isError"] != true);
        assert!(ok, "{label}: a tool call failed: {}", line.value);
    }
}

/// Runs `program args…` in the repository (with `MCP_FANOUT_BIN` = the binary under test) to its
/// end; panics with its output unless it succeeds. For the adapters' own test suites.
pub async fn run_to_success(what: &str, program: &Path, args: &[&str]) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(repo())
        .env("MCP_FANOUT_BIN", mcp_fanout_testkit::bin())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The official Python SDK 2.x client calling one tool (`tests/e2e/py2/call.py`); it prints a
/// `called` line with the result and exits.
pub fn py2_call(label: &str, url: &str, tool: &str, arguments: &Value) -> Proc {
    ensure_setup();
    let s = script("py2/call.py");
    let args = arguments.to_string();
    let argv = [s.to_str().expect("utf-8 path"), url, tool, args.as_str()];
    Proc::spawn(label, &python("py2"), &argv, &[])
}

/// The rmcp server of `clients/rust/examples/rmcp_listen.rs` (cargo builds it with the
/// workspace's examples: `cargo build -p mcp-fanout-client --example rmcp_listen`), or
/// `$RMCP_LISTEN_BIN`.
pub fn rmcp_listen_bin() -> PathBuf {
    let found = std::env::var_os("RMCP_LISTEN_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            let profile = exe.parent()?.parent()?;
            Some(profile.join("examples/rmcp_listen"))
        })
        .filter(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "the rmcp_listen example is not built: run `cargo build -p mcp-fanout-client \
             --example rmcp_listen` (cargo test --workspace builds it), or set RMCP_LISTEN_BIN"
        )
    })
}

/// Starts the rmcp example server on a free port, publishing to and following the mcp-fanout at
/// `fanout` (base URL) with the admin `token`; returns it and its MCP endpoint URL once it
/// listens.
pub async fn rmcp_listen(label: &str, fanout: &str, token: &str) -> (Proc, String) {
    let bin = rmcp_listen_bin();
    let args = ["--port", "0", "--fanout", fanout, "--token", token];
    let proc = Proc::spawn(label, &bin, &args, &[("RUST_LOG", "info,rmcp=warn")]);
    let (_, line) = proc
        .wait_kind("listening", 0, Duration::from_secs(20))
        .await;
    let addr = line.value["addr"].as_str().unwrap_or_default().to_string();
    (proc, format!("http://{addr}/mcp"))
}

// ---------------------------------------------------------------------------------------------
// The GET streams of a legacy client, from its `get` / `sse` / `get_end` lines.

/// One GET /mcp a legacy SDK client made.
#[derive(Debug, Clone)]
pub struct GetStream {
    /// Index of its `get` line.
    pub get_idx: usize,
    /// When the harness read that line (the response head had arrived).
    pub opened: Instant,
    pub status: u64,
    /// The `Last-Event-ID` the SDK sent.
    pub last_event_id: Option<String>,
    /// Every SSE block with an id or data: `(id, method)`; a priming frame has a method of None.
    pub frames: Vec<(Option<String>, Option<String>)>,
    /// Index of its `get_end` line, once the body ended.
    pub end_idx: Option<usize>,
}

impl GetStream {
    /// Ids of the frames that carried a message (not priming frames).
    pub fn event_ids(&self) -> Vec<String> {
        self.frames
            .iter()
            .filter(|(_, m)| m.is_some())
            .filter_map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether any frame carried an `id:` (so the SDK has a cursor from this stream).
    pub fn saw_id(&self) -> bool {
        self.frames.iter().any(|(id, _)| id.is_some())
    }
}

/// The GET streams in `lines`, in order.
pub fn get_streams(lines: &[Line]) -> Vec<GetStream> {
    let mut streams: Vec<GetStream> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match l.kind() {
            "get" => streams.push(GetStream {
                get_idx: i,
                opened: l.at,
                status: l.value["status"].as_u64().unwrap_or(0),
                last_event_id: l.value["last_event_id"].as_str().map(str::to_owned),
                frames: Vec::new(),
                end_idx: None,
            }),
            "sse" => {
                if let Some(s) = streams.last_mut() {
                    s.frames.push((
                        l.value["id"].as_str().map(str::to_owned),
                        l.value["method"].as_str().map(str::to_owned),
                    ));
                }
            }
            "get_end" => {
                if let Some(s) = streams.last_mut() {
                    s.end_idx = Some(i);
                }
            }
            _ => {}
        }
    }
    streams
}

/// Every message id a legacy client received on its GET streams, in order.
pub fn wire_event_ids(lines: &[Line]) -> Vec<String> {
    get_streams(lines)
        .iter()
        .flat_map(GetStream::event_ids)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// A plain HTTP client (no proxy).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

/// `line.kind == "notification"` with this JSON-RPC method.
pub fn is_notification(v: &Value, method: &str) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("notification")
        && v.pointer("/message/method").and_then(Value::as_str) == Some(method)
}

/// `line.kind == kind`.
pub fn is_kind(v: &Value, kind: &str) -> bool {
    v.get("kind").and_then(Value::as_str) == Some(kind)
}

/// Splits SSE text into complete blocks (each with its trailing blank line), keeping the rest.
pub fn take_blocks(buf: &mut Vec<u8>) -> Vec<bytes::Bytes> {
    let mut blocks = Vec::new();
    loop {
        let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
        let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        let end = match (lf, crlf) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        blocks.push(bytes::Bytes::from(buf.drain(..end).collect::<Vec<u8>>()));
    }
    blocks
}

/// A whole HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub async fn read(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("read the answer body");
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The JSON-RPC messages of the body: the `data:` of each SSE block for `text/event-stream`,
    /// else the JSON body (an array gives its elements).
    pub fn messages(&self) -> Vec<Value> {
        let sse = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if sse {
            let mut buf = self.body.to_vec();
            take_blocks(&mut buf)
                .into_iter()
                .filter_map(|b| mcp_fanout_testkit::Frame::parse(b).ok())
                .filter_map(|f| f.json().ok())
                .collect()
        } else {
            match serde_json::from_slice::<Value>(&self.body) {
                Ok(Value::Array(a)) => a,
                Ok(v) => vec![v],
                Err(_) => Vec::new(),
            }
        }
    }
}

/// POSTs one JSON-RPC message to an MCP endpoint as the SDK clients do (`Accept` listing JSON and
/// SSE), with extra headers.
pub async fn post_rpc(url: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut req = http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Answer::read(req.send().await.expect("POST to the MCP endpoint")).await
}

/// An `initialize` request as a 2025-11-25 client sends it.
pub fn initialize_request(id: u64) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": { "name": "mcp-fanout-e2e-raw", "version": "1.0.0" }
        }
    })
}

/// The tool names a client script reported (a JSON array of strings).
pub fn tool_names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The text of a `tools/call` result's first content item (`add` answers its sum as text).
pub fn call_text(result: &Value) -> Option<&str> {
    result.pointer("/content/0/text").and_then(Value::as_str)
}

/// `tools/call` of `tool` with `arguments` to `url` over `client`, as an SDK client sends it
/// (2025-06-18, without a session: for stateless upstreams).
pub fn tool_call(
    client: &reqwest::Client,
    url: &str,
    id: u64,
    tool: &str,
    arguments: Value,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .json(
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}),
        )
}

/// A `gated(key)` call to a py1 server with SSE answers, read until its log message has come
/// through: in flight upstream, its result held until `Upstream::release(key)`.
pub struct Gated {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    seen: Vec<u8>,
}

impl Gated {
    pub async fn start(client: &reqwest::Client, url: &str, id: u64, key: &str) -> Gated {
        use futures::StreamExt;
        let resp = tool_call(client, url, id, "gated", serde_json::json!({ "key": key }))
            .send()
            .await
            .expect("the gated call's head");
        assert_eq!(resp.status(), 200, "gated call {key}");
        let mut g = Gated {
            stream: resp.bytes_stream().boxed(),
            seen: Vec::new(),
        };
        tokio::time::timeout(Duration::from_secs(60), async {
            while !String::from_utf8_lossy(&g.seen).contains("notifications/message") {
                let chunk = g.stream.next().await.expect("more of the answer");
                g.seen.extend_from_slice(&chunk.expect("a chunk"));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("gated call {key}: its log message"));
        g
    }

    /// Reads the answer to its end (once released); returns all of it.
    pub async fn finish(mut self) -> String {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(chunk) = self.stream.next().await {
                self.seen.extend_from_slice(&chunk.expect("a chunk"));
            }
        })
        .await
        .expect("the gated call ends once released");
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}
