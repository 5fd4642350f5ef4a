//! `proxy-overhead`: what standing in front of an MCP server costs. The same stateless FastMCP
//! upstream (`bench/proxy_upstream.py`, Python SDK 1.x, JSON answers) is loaded by `wrk` with
//! `tools/call` requests directly, through mcp-fanout in proxy mode (memory mode,
//! `FANOUT_UPSTREAM`), and through nginx `proxy_pass` with keepalive upstream connections
//! (`bench/proxy/nginx.conf`): requests/s, p50/p99, the latency each proxy adds to the direct
//! figures, and the proxy's CPU per request (`/proc`, nginx: master + workers).
//!
//! `mcp-fanout-session` is mcp-fanout as a deployment runs it: Postgres mode (the bench's own
//! cluster), `FANOUT_MINT_SESSION_IDS=true`, and every call in the session an `initialize`
//! through it opened, so the proxy checks the session's owner for each forwarded request.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::error::{BenchError, Result};
use crate::nchan::Nchan;
use crate::procstat::{sample_all, ProcSample};
use crate::progress;
use crate::scenarios::{Ctx, Row};
use crate::sut::{Fanout, FanoutOpts};

/// The wrk script: a `tools/call` POST with the SDK clients' headers.
const LUA: &str = include_str!("../proxy/tools_call.lua");

/// nginx in front of the upstream.
const NGINX_CONF: &str = include_str!("../proxy/nginx.conf");

/// The upstream server script.
const UPSTREAM_PY: &str = include_str!("../proxy_upstream.py");

/// The static upstream (`--upstream static`): nginx answering every request with the result.
const STATIC_CONF: &str = include_str!("../proxy/static_upstream.conf");

const WRK_HOW: &str = "`proxy-overhead` needs wrk: apt-get install -y wrk";
const PY_HOW: &str = "`proxy-overhead` needs the Python SDK 1.x venv: ./scripts/e2e-setup py1 \
                      (or pass --python PATH to an interpreter with mcp 1.x and uvicorn)";
const NGINX_HOW: &str = "`proxy-overhead` compares with nginx: apt-get install -y nginx";

/// The systems a run measures, in order (direct first: the others are compared with it).
pub const SYSTEMS: [&str; 5] = [
    "direct",
    "mcp-fanout",
    "nginx",
    "hyper-floor",
    SESSION_SYSTEM,
];

/// Systems measured only when named (`--systems …,lean-floor`): a proxy with no HTTP library
/// (`lean_floor`), to see how close to nginx a tokio proxy gets that does less than hyper, and the
/// same carrying each head through the `http` crate's types.
pub const LEAN_FLOORS: [&str; 2] = ["lean-floor", "lean-floor-http"];

/// mcp-fanout in Postgres mode, every call in a session (see the module's docs).
const SESSION_SYSTEM: &str = "mcp-fanout-session";

/// One wrk load: connections, threads, seconds.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
}

/// What wrk reported.
#[derive(Debug, Clone, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
}

/// Which upstream the proxies stand in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamKind {
    /// The stateless FastMCP server (`bench/proxy_upstream.py`): a real MCP server, ~370–600
    /// calls/s on one core, so the load is the upstream's pace.
    Python,
    /// nginx answering every request with the call's result (`bench/proxy/static_upstream.conf`):
    /// tens of thousands of answers/s, so the proxy is the bottleneck and its CPU per request
    /// is measured over many more requests.
    Static,
}

/// The upstream server's process; killed on drop.
enum UpstreamProc {
    Python(tokio::process::Child),
    Static(Nchan),
}

/// The upstream MCP server.
struct UpstreamServer {
    proc: UpstreamProc,
    url: String,
    port: u16,
}

/// `target/e2e/py1/bin/python` in the workspace, or `given`.
fn find_python(given: Option<&Path>) -> Result<PathBuf> {
    let p = given.map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e/py1/bin/python"),
        Path::to_path_buf,
    );
    if p.exists() {
        Ok(p)
    } else {
        Err(BenchError::Missing(format!(
            "{} not found. {PY_HOW}",
            p.display()
        )))
    }
}

fn find_wrk() -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("wrk"))
        .find(|c| c.is_file())
        .ok_or_else(|| BenchError::Missing(format!("wrk not found. {WRK_HOW}")))
}

impl UpstreamServer {
    async fn start(
        kind: UpstreamKind,
        python: Option<&Path>,
        dir: &Path,
    ) -> Result<UpstreamServer> {
        match kind {
            UpstreamKind::Python => UpstreamServer::start_python(&find_python(python)?, dir).await,
            UpstreamKind::Static => {
                let n = Nchan::start_conf(STATIC_CONF, &[], "/mcp", NGINX_HOW).await?;
                Ok(UpstreamServer {
                    url: n.url("/mcp"),
                    port: n.port,
                    proc: UpstreamProc::Static(n),
                })
            }
        }
    }

    /// Starts `bench/proxy_upstream.py` and waits for the URL it prints.
    async fn start_python(python: &Path, dir: &Path) -> Result<UpstreamServer> {
        let script = dir.join("proxy_upstream.py");
        std::fs::write(&script, UPSTREAM_PY)
            .map_err(|e| BenchError::io(format!("writing {}", script.display()), e))?;
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(&script);
        let what = format!("the upstream MCP server ({})", python.display());
        let (child, url) = spawn_announcing(cmd, &what, "url", Duration::from_secs(30))
            .await
            .map_err(|e| match e {
                BenchError::Failed(m) => BenchError::Missing(format!("{m}. {PY_HOW}")),
                other => other,
            })?;
        let port = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| u.port())
            .ok_or_else(|| BenchError::Protocol(format!("upstream URL {url} has no port")))?;
        Ok(UpstreamServer {
            proc: UpstreamProc::Python(child),
            url,
            port,
        })
    }

    fn pid(&self) -> Vec<u32> {
        match &self.proc {
            UpstreamProc::Python(child) => child.id().into_iter().collect(),
            UpstreamProc::Static(n) => n.pids(),
        }
    }
}

/// A system under load: where wrk points, and the proxy's processes (none for `direct`).
enum Front {
    Direct,
    /// mcp-fanout, and the session its calls are made in (if any).
    Fanout(Box<Fanout>, Option<String>),
    Nginx(Nchan),
    /// A bare proxy: this process run as `hyper-floor UPSTREAM` (`hyper_floor`) or
    /// `lean-floor UPSTREAM` (`lean_floor`).
    Floor {
        child: tokio::process::Child,
        addr: String,
    },
}

impl Front {
    async fn start(system: &str, fanout: &FanoutOpts, up: &UpstreamServer) -> Result<Front> {
        progress(&format!("starting {system} in front of {}", up.url));
        Ok(match system {
            "direct" => Front::Direct,
            "mcp-fanout" | SESSION_SYSTEM => {
                let in_session = system == SESSION_SYSTEM;
                let mut opts = FanoutOpts {
                    memory: !in_session,
                    ..fanout.clone()
                };
                let base = format!("http://127.0.0.1:{}", up.port);
                opts.env.push(("FANOUT_UPSTREAM".into(), base));
                if in_session {
                    opts.env
                        .push(("FANOUT_MINT_SESSION_IDS".into(), "true".into()));
                }
                let f = Fanout::start(&opts, 1).await?;
                let session = if in_session {
                    Some(open_session(&format!("http://{}/mcp", f.public[0])).await?)
                } else {
                    None
                };
                Front::Fanout(Box::new(f), session)
            }
            "hyper-floor" | "lean-floor" | "lean-floor-http" => {
                let (child, addr) = start_floor(system, &up.url).await?;
                Front::Floor { child, addr }
            }
            _ => {
                let vars = [("@UPSTREAM_PORT@", up.port.to_string())];
                Front::Nginx(Nchan::start_conf(NGINX_CONF, &vars, "/mcp", NGINX_HOW).await?)
            }
        })
    }

    fn url(&self, up: &UpstreamServer) -> String {
        match self {
            Front::Direct => up.url.clone(),
            Front::Fanout(f, _) => format!("http://{}/mcp", f.public[0]),
            Front::Nginx(n) => n.url("/mcp"),
            Front::Floor { addr, .. } => format!("http://{addr}/mcp"),
        }
    }

    /// The session the calls are made in, if any.
    fn session(&self) -> Option<&str> {
        match self {
            Front::Fanout(_, session) => session.as_deref(),
            _ => None,
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Front::Direct => Vec::new(),
            Front::Fanout(f, _) => f.pids(),
            Front::Nginx(n) => n.pids(),
            Front::Floor { child, .. } => child.id().into_iter().collect(),
        }
    }
}

/// Starts this executable as the `system` proxy (`hyper-floor` or a lean floor) in front of
/// `upstream`; its address.
async fn start_floor(system: &str, upstream: &str) -> Result<(tokio::process::Child, String)> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::io("finding the bench's own executable", e))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(system).arg(upstream);
    spawn_announcing(
        cmd,
        &format!("the {system} proxy"),
        "addr",
        Duration::from_secs(10),
    )
    .await
}

/// Starts `cmd` (killed on drop) and waits up to `within` for the one JSON line it prints when it
/// serves; `field` of that line. An exit before it is [`BenchError::Failed`].
async fn spawn_announcing(
    mut cmd: tokio::process::Command,
    what: &str,
    field: &str,
    within: Duration,
) -> Result<(tokio::process::Child, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::io(format!("starting {what}"), e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Failed(format!("{what}: stdout is not piped")))?;
    let line = tokio::time::timeout(within, BufReader::new(stdout).lines().next_line())
        .await
        .map_err(|_| BenchError::Timeout(format!("{what} to start")))?
        .map_err(|e| BenchError::io(format!("reading {what}'s stdout"), e))?
        .ok_or_else(|| BenchError::Failed(format!("{what} exited")))?;
    let v: Value = serde_json::from_str(&line)?;
    let value = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| BenchError::Protocol(format!("{what} printed {line}")))?
        .to_string();
    Ok((child, value))
}

/// An `initialize` through the proxy at `url`: the session id it answers with.
async fn open_session(url: &str) -> Result<String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "fanout-bench", "version": "1.0.0"}
    }});
    let resp = crate::sut::http_client()?
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status();
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match session {
        Some(s) if status == reqwest::StatusCode::OK => Ok(s),
        _ => Err(BenchError::Protocol(format!(
            "initialize through {url} answered {status} without a session: {}",
            resp.text().await.unwrap_or_default()
        ))),
    }
}

/// One `tools/call` as wrk sends it (in `session`, if any), checked: `200` and the tool's result
/// (1 + 2).
async fn check_answer(url: &str, session: Option<&str>) -> Result<()> {
    let body = LUA
        .lines()
        .find_map(|l| l.strip_prefix("wrk.body = '"))
        .and_then(|l| l.strip_suffix('\''))
        .ok_or_else(|| BenchError::Failed("no wrk.body in tools_call.lua".into()))?;
    let mut req = crate::sut::http_client()?
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18");
    if let Some(s) = session {
        req = req.header("Mcp-Session-Id", s);
    }
    let resp = req.body(body.to_string()).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let result = v.pointer("/result/structuredContent/result").cloned();
    if status != reqwest::StatusCode::OK || result != Some(json!(3)) {
        return Err(BenchError::Protocol(format!(
            "tools/call through {url} answered {status}: {text}"
        )));
    }
    Ok(())
}

/// `1.23ms`, `456.78us`, `1.02s` → milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|x| x * factor)
}

/// Reads wrk's report (`--latency`).
fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => r.p50_ms = wrk_ms(v).unwrap_or(0.0),
            ["99%", v] => r.p99_ms = wrk_ms(v).unwrap_or(0.0),
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", v] => r.non_2xx = v.parse().unwrap_or(0),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                r.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    if r.requests == 0 {
        return Err(BenchError::Protocol(format!(
            "wrk reported no requests:\n{out}"
        )));
    }
    Ok(r)
}

async fn run_wrk(
    wrk: &Path,
    script: &Path,
    url: &str,
    session: Option<&str>,
    load: Load,
) -> Result<WrkResult> {
    let out = tokio::process::Command::new(wrk)
        .env("MCP_SESSION_ID", session.unwrap_or_default())
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| BenchError::io(format!("running {}", wrk.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_wrk(&text)
}

/// Settings of a `proxy-overhead` run.
pub struct ProxyRun {
    pub upstream: UpstreamKind,
    pub python: Option<PathBuf>,
    pub loads: Vec<Load>,
    pub systems: Vec<String>,
    pub rounds: usize,
    /// Each connection's wait before each request (wrk's `delay()`), if any.
    pub pace_ms: Option<u64>,
}

impl Default for ProxyRun {
    /// What `report` runs: 10 s at 8 connections (2 threads), then 10 s at 1, every system once.
    fn default() -> ProxyRun {
        let load = |connections, threads| Load {
            connections,
            threads,
            duration: Duration::from_secs(10),
        };
        ProxyRun {
            upstream: UpstreamKind::Python,
            python: None,
            loads: vec![load(8, 2), load(1, 1)],
            systems: SYSTEMS.iter().map(ToString::to_string).collect(),
            rounds: 1,
            pace_ms: None,
        }
    }
}

/// The wrk script, with each request delayed by `pace_ms` when set.
fn paced(pace_ms: Option<u64>) -> String {
    match pace_ms {
        Some(ms) => format!("{LUA}\nfunction delay()\n    return {ms}\nend\n"),
        None => LUA.to_owned(),
    }
}

/// `proxy-overhead`: one row per system, load and round.
pub async fn proxy_overhead(ctx: &mut Ctx, run: &ProxyRun) -> Result<()> {
    let wrk = find_wrk()?;
    let dir = tempfile::Builder::new()
        .prefix("fanout-bench-proxy-")
        .tempdir()
        .map_err(|e| BenchError::io("creating a temp dir", e))?;
    let script = dir.path().join("tools_call.lua");
    std::fs::write(&script, paced(run.pace_ms))
        .map_err(|e| BenchError::io(format!("writing {}", script.display()), e))?;
    let up = UpstreamServer::start(run.upstream, run.python.as_deref(), dir.path()).await?;
    check_answer(&up.url, None).await?;
    for round in 1..=run.rounds.max(1) {
        // Per load, the direct figures of this round (the baseline of the added latency).
        let mut direct: Vec<Option<WrkResult>> = vec![None; run.loads.len()];
        for system in &run.systems {
            let front = Front::start(system, &ctx.fanout, &up).await?;
            let url = front.url(&up);
            let session = front.session();
            check_answer(&url, session).await?;
            let warm = Load {
                connections: 8,
                threads: 2,
                duration: Duration::from_secs(2),
            };
            run_wrk(&wrk, &script, &url, session, warm).await?;
            for (i, load) in run.loads.iter().enumerate() {
                let pids = front.pids();
                let (before, up_before) = (sample_all(&pids)?, sample_all(&up.pid())?);
                let r = run_wrk(&wrk, &script, &url, session, *load).await?;
                let (after, up_after) = (sample_all(&pids)?, sample_all(&up.pid())?);
                if system == "direct" {
                    direct[i] = Some(r.clone());
                }
                let cpu = Cpu {
                    proxy: after.since(&before),
                    upstream: up_after.since(&up_before),
                    has_proxy: !pids.is_empty(),
                };
                let mut row = row(
                    run.upstream,
                    system,
                    round,
                    *load,
                    &r,
                    direct[i].as_ref(),
                    cpu,
                );
                if let Some(ms) = run.pace_ms {
                    row.case.push_str(&format!(", paced {ms} ms"));
                    row.set("pace_ms", ms);
                }
                ctx.push(row);
            }
        }
    }
    Ok(())
}

/// CPU used during one load.
struct Cpu {
    proxy: ProcSample,
    upstream: ProcSample,
    has_proxy: bool,
}

fn row(
    upstream: UpstreamKind,
    system: &str,
    round: usize,
    load: Load,
    r: &WrkResult,
    direct: Option<&WrkResult>,
    cpu: Cpu,
) -> Row {
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    let per_request = |us: u64| round3(us as f64 / r.requests.max(1) as f64);
    let mut row = Row::new(
        "proxy-overhead",
        system,
        format!(
            "tools/call{}, {} connection(s), {} s, round {round}",
            match upstream {
                UpstreamKind::Python => "",
                UpstreamKind::Static => " (static upstream)",
            },
            load.connections,
            load.duration.as_secs()
        ),
    );
    row.set("connections", load.connections)
        .set("requests", r.requests)
        .set("requests_per_s", r.rps.round())
        .set("p50_ms", round3(r.p50_ms))
        .set("p99_ms", round3(r.p99_ms));
    if let Some(d) = direct.filter(|_| system != "direct") {
        row.set("added_p50_ms", round3(r.p50_ms - d.p50_ms))
            .set("added_p99_ms", round3(r.p99_ms - d.p99_ms))
            .set("rps_vs_direct", round3(r.rps / d.rps.max(1.0)));
    }
    if cpu.has_proxy {
        row.set("proxy_cpu_ms", round3(cpu.proxy.cpu_us as f64 / 1000.0))
            .set("proxy_cpu_us_per_request", per_request(cpu.proxy.cpu_us));
    }
    row.set(
        "upstream_cpu_us_per_request",
        per_request(cpu.upstream.cpu_us),
    )
    .set("non_2xx", r.non_2xx)
    .set("socket_errors", r.socket_errors)
    .set("ok", r.non_2xx == 0 && r.socket_errors == 0);
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_reports() {
        let out = "Running 10s test @ http://127.0.0.1:1/mcp
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.10ms    1.20ms  30.00ms   90.00%
  Latency Distribution
     50%  850.00us
     75%    5.00ms
     90%    6.00ms
     99%    1.20s
  16000 requests in 10.00s, 3.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   1600.00
Transfer/sec:    300.00KB
";
        let r = parse_wrk(out).expect("parses");
        assert_eq!(r.requests, 16000);
        assert!((r.p50_ms - 0.85).abs() < 1e-9);
        assert!((r.p99_ms - 1200.0).abs() < 1e-9);
        assert!((r.rps - 1600.0).abs() < 1e-9);
        assert_eq!((r.non_2xx, r.socket_errors), (4, 3));
        assert!(parse_wrk("nothing").is_err());
    }
}
