//! One `mcp-fanout` process: started with a clean environment, its JSON logs pumped to the test's
//! stderr (prefixed with the replica's label) and scanned for the `listening` lines that give the
//! bound addresses, plus HTTP helpers for publishing, probing and scraping metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::http::{client, HttpResponse};
use crate::metrics;
use crate::sse::{SseConn, SseRequest};
use crate::wait::{wait_for, wait_until};

/// The environment every test replica gets unless the test overrides a key: port 0 on loopback, JSON
/// logs (the kit reads the bound addresses from them), info level.
pub const DEFAULT_ENV: &[(&str, &str)] = &[
    ("FANOUT_ADDR", "127.0.0.1:0"),
    ("FANOUT_LOG_FORMAT", "json"),
    ("RUST_LOG", "info"),
];

/// How long a replica may take to log its addresses and become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Per-request timeout of the kit's HTTP client (long-polls pass their own).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Which bearer token a request carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Token {
    /// The first token of `FANOUT_ADMIN_TOKENS` the replica was started with, if any.
    #[default]
    Configured,
    /// No `Authorization` header.
    None,
    /// `Authorization: Bearer <this>`.
    Bearer(String),
}

/// Options of one publish request.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The token to send.
    pub token: Token,
    /// An `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// `Content-Type` (default `application/json`).
    pub content_type: Option<String>,
    /// Any other headers.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Default, Clone)]
struct Addrs {
    public: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// A running replica. The process is killed when this is dropped.
#[derive(Debug)]
pub struct Replica {
    label: String,
    child: Child,
    pid: u32,
    public: SocketAddr,
    admin: SocketAddr,
    token: Option<String>,
    http: reqwest::Client,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    /// Starts `bin` with [`DEFAULT_ENV`] overridden/extended by `envs` (and nothing else from the
    /// test's environment but `PATH`), waits for its addresses and for `/readyz` to answer `200`.
    pub async fn start(bin: &Path, label: &str, envs: &[(&str, &str)]) -> Result<Replica> {
        Replica::start_with_open_files(bin, label, envs, None).await
    }

    /// [`Replica::start`], the process's open-file limit (soft and hard) set to `open_files`.
    pub async fn start_with_open_files(
        bin: &Path,
        label: &str,
        envs: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Result<Replica> {
        let mut all: Vec<(&str, &str)> = DEFAULT_ENV
            .iter()
            .filter(|(k, _)| !envs.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        all.extend_from_slice(envs);
        let replica = Replica::spawn_with(bin, label, &all, open_files).await?;
        replica.wait_ready(START_TIMEOUT).await?;
        Ok(replica)
    }

    /// Starts `bin` with exactly `envs` plus `PATH` (no defaults), and waits only for the
    /// `listening` log lines (public, and admin when `FANOUT_ADMIN_ADDR` is set).
    pub async fn spawn(bin: &Path, label: &str, envs: &[(&str, &str)]) -> Result<Replica> {
        Replica::spawn_with(bin, label, envs, None).await
    }

    /// [`Replica::spawn`], optionally with the open-file limit (soft and hard) set to
    /// `open_files` in the child before it runs.
    pub async fn spawn_with(
        bin: &Path,
        label: &str,
        envs: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Result<Replica> {
        let mut cmd = Command::new(bin);
        if let Some(limit) = open_files {
            let limit = libc::rlim_t::try_from(limit)
                .map_err(|_| Error::Protocol(format!("open-file limit {limit} is too large")))?;
            // SAFETY: the closure runs in the forked child before exec and only calls
            // setrlimit(2), which is async-signal-safe; it touches no memory of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            bin: PathBuf::from(bin),
            source,
        })?;
        let pid = child.id().ok_or_else(|| {
            Error::Protocol(format!("replica `{label}` has no pid right after spawn"))
        })?;

        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, mut addr_rx) = watch::channel(Addrs::default());
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pump(
                stdout,
                label.to_string(),
                Arc::clone(&logs),
                Some(addr_tx),
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pump(
                stderr,
                format!("{label} stderr"),
                Arc::clone(&logs),
                None,
            ));
        }

        let need_admin = envs
            .iter()
            .any(|(k, v)| *k == "FANOUT_ADMIN_ADDR" && !v.is_empty());
        let deadline = Instant::now() + START_TIMEOUT;
        let addrs = loop {
            {
                let a = addr_rx.borrow_and_update();
                if let Some(public) = a.public {
                    if !need_admin || a.admin.is_some() {
                        break (public, a.admin.unwrap_or(public));
                    }
                }
            }
            tokio::select! {
                changed = addr_rx.changed() => {
                    if changed.is_err() {
                        // stdout closed: the process is exiting.
                        let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                        return Err(Error::Exited {
                            label: label.to_string(),
                            status: match status {
                                Ok(Ok(s)) => s.to_string(),
                                _ => "stdout closed".to_string(),
                            },
                            what: "logging its listening addresses".to_string(),
                        });
                    }
                }
                status = child.wait() => {
                    return Err(Error::Exited {
                        label: label.to_string(),
                        status: match status {
                            Ok(s) => s.to_string(),
                            Err(e) => format!("wait failed: {e}"),
                        },
                        what: "logging its listening addresses".to_string(),
                    });
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::timeout(
                        format!("replica `{label}` to log `listening` (role public{})",
                            if need_admin { " and admin" } else { "" }),
                        START_TIMEOUT,
                    ));
                }
            }
        };

        let token = envs
            .iter()
            .find(|(k, _)| *k == "FANOUT_ADMIN_TOKENS")
            .and_then(|(_, v)| v.split(',').map(str::trim).find(|t| !t.is_empty()))
            .map(ToString::to_string);

        Ok(Replica {
            label: label.to_string(),
            child,
            pid,
            public: addrs.0,
            admin: addrs.1,
            token,
            http: client(REQUEST_TIMEOUT)?,
            logs,
        })
    }

    /// The label used in log prefixes.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's resident memory (`VmRSS` of `/proc/<pid>/status`), in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        crate::hostile::rss_of(self.pid)
    }

    /// The public (subscriber) address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    /// The admin/ops address (the public one when `FANOUT_ADMIN_ADDR` is unset).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://<public>/<path>`.
    pub fn public_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.public, path_and_query)
    }

    /// `http://<admin>/<path>`.
    pub fn admin_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.admin, path_and_query)
    }

    /// The first configured admin token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The kit's HTTP client (no proxy, loopback).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Every log line (stdout and stderr) so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits for a log line that parses as JSON and satisfies `pred`; returns it.
    pub async fn wait_for_log<F>(&self, what: &str, timeout: Duration, mut pred: F) -> Result<Value>
    where
        F: FnMut(&Value) -> bool,
    {
        let logs = Arc::clone(&self.logs);
        wait_for(&format!("log line: {what}"), timeout, || {
            let found = logs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pred(v));
            async move { found }
        })
        .await
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// Sends SIGINT (what Ctrl-C does).
    pub fn sigint(&self) -> Result<()> {
        self.signal(libc::SIGINT)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid)
            .map_err(|_| Error::Protocol(format!("pid {} does not fit pid_t", self.pid)))?;
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's, which is
        // not reaped before `wait_exit`/drop.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            return Err(Error::io(
                format!("sending signal {sig} to replica `{}`", self.label),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Starts killing the process (SIGKILL) without waiting.
    pub fn kill(&mut self) -> Result<()> {
        self.child
            .start_kill()
            .map_err(|e| Error::io(format!("killing replica `{}`", self.label), e))
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err(Error::io(
                format!("waiting for replica `{}` to exit", self.label),
                e,
            )),
            Err(_) => Err(Error::timeout(
                format!("replica `{}` to exit", self.label),
                timeout,
            )),
        }
    }

    /// `GET` on the public address.
    pub async fn get(&self, path_and_query: &str) -> Result<HttpResponse> {
        HttpResponse::read(
            self.http
                .get(self.public_url(path_and_query))
                .send()
                .await?,
        )
        .await
    }

    /// `GET` on the admin/ops address.
    pub async fn admin_get(&self, path_and_query: &str) -> Result<HttpResponse> {
        HttpResponse::read(self.http.get(self.admin_url(path_and_query)).send().await?).await
    }

    /// `GET /poll?<query>` with a client timeout long enough for the server-side one.
    pub async fn poll(&self, query: &str) -> Result<HttpResponse> {
        let url = if query.is_empty() {
            self.public_url("/poll")
        } else {
            self.public_url(&format!("/poll?{query}"))
        };
        let resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(75))
            .send()
            .await?;
        HttpResponse::read(resp).await
    }

    /// Status of `/readyz`.
    pub async fn readyz(&self) -> Result<StatusCode> {
        Ok(self.admin_get("/readyz").await?.status)
    }

    /// Waits until `/readyz` answers `200`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        wait_until(
            &format!("replica `{}` /readyz 200", self.label),
            timeout,
            || async { matches!(self.readyz().await, Ok(StatusCode::OK)) },
        )
        .await
    }

    /// `POST /admin/publish` with the configured token.
    pub async fn publish(&self, body: &Value) -> Result<(StatusCode, Value)> {
        self.publish_with(body, &PublishOptions::default()).await
    }

    /// `POST /admin/publish` with a given token choice.
    pub async fn publish_with_token(
        &self,
        body: &Value,
        token: Token,
    ) -> Result<(StatusCode, Value)> {
        self.publish_with(
            body,
            &PublishOptions {
                token,
                ..PublishOptions::default()
            },
        )
        .await
    }

    /// `POST /admin/publish` with options. A body that is not JSON comes back as a JSON string.
    pub async fn publish_with(
        &self,
        body: &Value,
        opts: &PublishOptions,
    ) -> Result<(StatusCode, Value)> {
        let resp = self.publish_response(body, opts).await?;
        Ok((resp.status, resp.json_or_text()))
    }

    /// `POST /admin/publish`, returning the whole response (headers included).
    pub async fn publish_response(
        &self,
        body: &Value,
        opts: &PublishOptions,
    ) -> Result<HttpResponse> {
        let mut req = self
            .http
            .post(self.admin_url("/admin/publish"))
            .header(
                "Content-Type",
                opts.content_type.as_deref().unwrap_or("application/json"),
            )
            .body(body.to_string());
        let token = match &opts.token {
            Token::Configured => self.token.clone(),
            Token::None => None,
            Token::Bearer(t) => Some(t.clone()),
        };
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(k) = &opts.idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        for (n, v) in &opts.headers {
            req = req.header(n, v);
        }
        HttpResponse::read(req.send().await?).await
    }

    /// Publishes one event and returns its id; anything but `200 {"id": "…"}` is an error.
    pub async fn publish_ok(&self, body: &Value) -> Result<String> {
        let (status, resp) = self.publish(body).await?;
        match (status, resp.get("id").and_then(Value::as_str)) {
            (StatusCode::OK, Some(id)) => Ok(id.to_string()),
            _ => Err(Error::Protocol(format!(
                "publish of {body} on `{}` answered {status} {resp}",
                self.label
            ))),
        }
    }

    /// Publishes a batch and returns its ids; anything but `200 {"ids": […]}` of the right length is
    /// an error.
    pub async fn publish_batch_ok(&self, events: &[Value]) -> Result<Vec<String>> {
        let body = Value::Array(events.to_vec());
        let (status, resp) = self.publish(&body).await?;
        let ids: Option<Vec<String>> = resp.get("ids").and_then(Value::as_array).and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(ToString::to_string))
                .collect()
        });
        match (status, ids) {
            (StatusCode::OK, Some(ids)) if ids.len() == events.len() => Ok(ids),
            _ => Err(Error::Protocol(format!(
                "batch publish of {} events on `{}` answered {status} {resp}",
                events.len(),
                self.label
            ))),
        }
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> Result<String> {
        let resp = self.admin_get("/metrics").await?;
        if resp.status != StatusCode::OK {
            return Err(Error::Protocol(format!(
                "/metrics on `{}` answered {}: {}",
                self.label,
                resp.status,
                resp.text()
            )));
        }
        Ok(resp.text())
    }

    /// The value of a series such as `mcp_fanout_subscribers_dropped_total{reason="write_stall"}`
    /// (summed over every series whose labels include the given ones); `None` when absent.
    pub async fn metric(&self, selector: &str) -> Result<Option<f64>> {
        metrics::value(&self.metrics_text().await?, selector)
    }

    /// A counter's value, `0` before its first increment (a labelled counter appears then).
    pub async fn count(&self, selector: &str) -> Result<f64> {
        Ok(self.metric(selector).await?.unwrap_or(0.0))
    }

    /// `mcp_fanout_subscribers_dropped_total{reason="…"}`: how many subscribers this replica
    /// dropped for `reason` (`0` before the first).
    pub async fn dropped(&self, reason: &str) -> Result<f64> {
        self.count(&format!(
            r#"mcp_fanout_subscribers_dropped_total{{reason="{reason}"}}"#
        ))
        .await
    }

    /// Waits until a series exists and `pred` accepts its value; returns the value.
    pub async fn wait_metric<F>(&self, selector: &str, timeout: Duration, pred: F) -> Result<f64>
    where
        F: Fn(f64) -> bool,
    {
        let last = Mutex::new(None);
        let result = wait_for(
            &format!("metric {selector} on `{}`", self.label),
            timeout,
            || {
                let fut = self.metric(selector);
                let pred = &pred;
                let last = &last;
                async move {
                    let v = fut.await.ok().flatten();
                    *last
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = v;
                    v.filter(|v| pred(*v))
                }
            },
        )
        .await;
        result.map_err(|e| match e {
            Error::Timeout { what, after } => Error::Timeout {
                what: format!(
                    "{what} (last value {:?})",
                    *last
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                ),
                after,
            },
            other => other,
        })
    }

    /// Waits until the `mcp_fanout_subscribers` gauge equals `n`.
    pub async fn wait_subscribers(&self, n: u64, timeout: Duration) -> Result<()> {
        #[allow(clippy::cast_precision_loss)]
        let want = n as f64;
        self.wait_metric("mcp_fanout_subscribers", timeout, |v| v == want)
            .await
            .map(|_| ())
    }

    /// Waits until the `mcp_fanout_listen_connected` gauge says the LISTEN connection is `up` (1)
    /// or down (0).
    pub async fn wait_listen(&self, up: bool, timeout: Duration) -> Result<()> {
        let want = if up { 1.0 } else { 0.0 };
        self.wait_metric("mcp_fanout_listen_connected", timeout, |v| v == want)
            .await
            .map(|_| ())
    }

    /// Opens an SSE stream on the public address.
    pub async fn subscribe(&self, req: &SseRequest) -> Result<SseConn> {
        SseConn::connect(self.public, req, REQUEST_TIMEOUT).await
    }
}

/// Reads lines from a child's output, echoes them to the test's stderr with a label, keeps them, and
/// (for stdout) picks the bound addresses out of the `listening` lines.
async fn pump<R>(
    out: R,
    label: String,
    logs: Arc<Mutex<Vec<String>>>,
    addrs: Option<watch::Sender<Addrs>>,
) where
    R: AsyncRead + Unpin,
{
    let mut reader = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        eprintln!("[{label}] {line}");
        if let Some(tx) = &addrs {
            if let Some((role, addr)) = listening(&line) {
                tx.send_modify(|a| match role.as_str() {
                    "admin" => a.admin = Some(addr),
                    _ => a.public = Some(addr),
                });
            }
        }
        logs.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
    }
}

/// `(role, addr)` from a `{"fields":{"message":"listening","role":…,"addr":…}}` line.
fn listening(line: &str) -> Option<(String, SocketAddr)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    let role = fields.get("role")?.as_str()?.to_string();
    let addr = fields.get("addr")?.as_str()?.parse().ok()?;
    Some((role, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_listening_lines() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"listening","role":"public","addr":"127.0.0.1:40123"},"target":"x"}"#;
        let (role, addr) = listening(line).expect("listening line");
        assert_eq!(role, "public");
        assert_eq!(addr.port(), 40123);
        assert!(listening(r#"{"fields":{"message":"other"}}"#).is_none());
        assert!(listening("not json").is_none());
    }
}
