//! Systems under test: mcp-fanout (replicas the bench starts, in Postgres or memory mode, or
//! given URLs) and nchan; subscribing to them and publishing to them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_fanout_testkit::Replica;
use serde_json::{json, Value};

use crate::clients::SubTarget;
use crate::error::{BenchError, Result};
use crate::nchan::Nchan;
use crate::pg::{Durability, Pg};
use crate::procstat::{sample_all, ProcSample};
use crate::sse::order_key;
use crate::worker::{mix, now_ns};

/// The admin token the bench's replicas are started with.
pub const TOKEN: &str = "fanout-bench-token";

/// The method of every benchmark event.
pub const METHOD: &str = "notifications/tools/list_changed";

/// `application_name` of a replica's LISTEN connection.
pub const LISTEN_APP: &str = "mcp-fanout-listen";

/// The kit's HTTP client settings, with a larger pool for concurrent publishers.
pub fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(128)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// How the bench reaches mcp-fanout.
#[derive(Debug, Clone)]
pub struct FanoutOpts {
    /// The release binary.
    pub binary: PathBuf,
    /// Given URLs instead of replicas the bench starts.
    pub urls: Vec<String>,
    /// Admin token for given URLs.
    pub token: Option<String>,
    /// Postgres URL instead of a cluster of the bench's own.
    pub database_url: Option<String>,
    /// Durability of the bench's own cluster.
    pub durability: Durability,
    /// Memory mode (no database; one replica).
    pub memory: bool,
    /// Extra `KEY=VALUE` environment for the replicas.
    pub env: Vec<(String, String)>,
}

/// Finds `target/release/mcp-fanout`: next to this executable, then in the workspace.
pub fn find_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(BenchError::NoBinary(vec![p.to_path_buf()]))
        };
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            tried.push(dir.join("mcp-fanout"));
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    tried.push(ws.join("target/release/mcp-fanout"));
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        tried.push(Path::new(&dir).join("release/mcp-fanout"));
    }
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(BenchError::NoBinary(tried))
}

/// mcp-fanout as a run sees it.
pub struct Fanout {
    /// The database (when the bench started the replicas in Postgres mode).
    pub pg: Option<Pg>,
    /// The database name on it.
    pub db: String,
    replicas: Vec<Replica>,
    /// Public addresses of the replicas (or the given URLs).
    pub public: Vec<SocketAddr>,
    /// Admin base URLs.
    pub admin: Vec<String>,
    token: Option<String>,
    http: reqwest::Client,
    /// The cursor new subscribers resume from (so nothing before the run counts).
    marker: std::sync::Mutex<Option<String>>,
    /// A connection for publishing through SQL (`SELECT <schema>.publish(…)`).
    sql: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Fanout {
    /// Starts `n` replicas (or wraps the given URLs).
    pub async fn start(opts: &FanoutOpts, n: usize) -> Result<Fanout> {
        let http = http_client()?;
        if !opts.urls.is_empty() {
            let mut public = Vec::new();
            let mut admin = Vec::new();
            for u in &opts.urls {
                let hostport = u
                    .trim_end_matches('/')
                    .strip_prefix("http://")
                    .ok_or_else(|| BenchError::Failed(format!("--url {u}: only http:// URLs")))?;
                let addr = tokio::net::lookup_host(hostport)
                    .await
                    .map_err(|e| BenchError::io(format!("resolving {hostport}"), e))?
                    .next()
                    .ok_or_else(|| BenchError::Failed(format!("--url {u} does not resolve")))?;
                public.push(addr);
                admin.push(u.trim_end_matches('/').to_string());
            }
            let f = Fanout {
                pg: None,
                db: String::new(),
                replicas: Vec::new(),
                public,
                admin,
                token: opts.token.clone(),
                http,
                marker: std::sync::Mutex::new(None),
                sql: tokio::sync::Mutex::new(None),
            };
            f.refresh_marker().await?;
            return Ok(f);
        }
        let (pg, db) = if opts.memory {
            (None, String::new())
        } else {
            let pg = Pg::start(opts.database_url.as_deref(), opts.durability).await?;
            let db = pg.server().fresh_database().await?;
            (Some(pg), db)
        };
        let url = pg.as_ref().map(|p| p.server().url(&db));
        let mut replicas = Vec::new();
        let count = if opts.memory { 1 } else { n.max(1) };
        for i in 0..count {
            let mut envs: Vec<(&str, &str)> = vec![
                ("FANOUT_ADMIN_TOKENS", TOKEN),
                ("RUST_LOG", "info"),
                ("FANOUT_LOG_FORMAT", "json"),
                ("FANOUT_ADDR", "127.0.0.1:0"),
            ];
            if let Some(u) = &url {
                envs.push(("DATABASE_URL", u));
            }
            for (k, v) in &opts.env {
                envs.push((k, v));
            }
            let label = format!("replica-{i}");
            replicas.push(Replica::start(&opts.binary, &label, &envs).await?);
        }
        let public = replicas.iter().map(Replica::public_addr).collect();
        let admin = replicas
            .iter()
            .map(|r| format!("http://{}", r.admin_addr()))
            .collect();
        let f = Fanout {
            pg,
            db,
            replicas,
            public,
            admin,
            token: Some(TOKEN.to_string()),
            http,
            marker: std::sync::Mutex::new(None),
            sql: tokio::sync::Mutex::new(None),
        };
        f.refresh_marker().await?;
        Ok(f)
    }

    /// Replica process ids (empty for given URLs).
    pub fn pids(&self) -> Vec<u32> {
        self.replicas.iter().map(Replica::pid).collect()
    }

    /// Publishes a marker event whose id new subscribers resume from.
    pub async fn refresh_marker(&self) -> Result<()> {
        let (ids, _) = self
            .post(0, &json!({"method": METHOD, "params": {"marker": true}}))
            .await?;
        *self
            .marker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ids.into_iter().next();
        Ok(())
    }

    /// Publishes one event through SQL (`SELECT mcp_fanout.publish(…)`, autocommit); returns its id.
    pub async fn sql_publish(&self, params: &Value) -> Result<String> {
        let mut guard = self.sql.lock().await;
        if guard.is_none() {
            let pg = self.pg.as_ref().ok_or_else(|| {
                BenchError::Failed("SQL publishing needs Postgres mode".to_string())
            })?;
            let client =
                mcp_fanout_testkit::postgres::connect_url(&pg.server().url(&self.db)).await?;
            *guard = Some(client);
        }
        let client = guard
            .as_ref()
            .ok_or_else(|| BenchError::Failed("no SQL connection".to_string()))?;
        let row = client
            .query_one(
                "SELECT mcp_fanout.publish($1::text, $2::text::jsonb, NULL, NULL)",
                &[&METHOD, &params.to_string()],
            )
            .await?;
        Ok(row.try_get::<_, String>(0)?)
    }

    /// One subscription target per replica (`GET /mcp`, protocol 2025-06-18, resuming from the
    /// marker).
    pub fn targets(&self) -> Vec<SubTarget> {
        let marker = self
            .marker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        self.public
            .iter()
            .map(|addr| {
                let resume = marker
                    .as_ref()
                    .map(|m| format!("Last-Event-ID: {m}\r\n"))
                    .unwrap_or_default();
                SubTarget {
                    addr: *addr,
                    request: format!(
                        "GET /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
                         MCP-Protocol-Version: 2025-06-18\r\n{resume}\r\n"
                    ),
                }
            })
            .collect()
    }

    /// `GET /healthz` on a replica's admin listener; an error unless it answers 2xx.
    pub async fn healthz(&self, replica: usize) -> Result<()> {
        let base = &self.admin[replica % self.admin.len()];
        let resp = self.http.get(format!("{base}/healthz")).send().await?;
        let status = resp.status();
        let _ = resp.bytes().await?;
        if !status.is_success() {
            return Err(BenchError::Protocol(format!("healthz answered {status}")));
        }
        Ok(())
    }

    async fn post(&self, replica: usize, body: &Value) -> Result<(Vec<String>, Duration)> {
        let base = &self.admin[replica % self.admin.len()];
        let mut req = self
            .http
            .post(format!("{base}/admin/publish"))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let started = Instant::now();
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        let took = started.elapsed();
        if !status.is_success() {
            return Err(BenchError::Protocol(format!(
                "publish answered {status}: {v}"
            )));
        }
        let ids = if let Some(id) = v.get("id").and_then(Value::as_str) {
            vec![id.to_string()]
        } else if let Some(ids) = v.get("ids").and_then(Value::as_array) {
            ids.iter()
                .filter_map(Value::as_str)
                .map(ToString::to_string)
                .collect()
        } else {
            return Err(BenchError::Protocol(format!("publish answered {v}")));
        };
        Ok((ids, took))
    }

    /// Sum of `mcp_fanout_subscribers` over the replicas.
    pub async fn subscribers(&self) -> Result<f64> {
        let mut total = 0.0;
        for base in &self.admin {
            let text = self
                .http
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            total +=
                mcp_fanout_testkit::metrics::value(&text, "mcp_fanout_subscribers")?.unwrap_or(0.0);
        }
        Ok(total)
    }

    /// The sum of one metric series over the replicas.
    pub async fn metric_sum(&self, selector: &str) -> Result<f64> {
        let mut total = 0.0;
        for base in &self.admin {
            let text = self
                .http
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            total += mcp_fanout_testkit::metrics::value(&text, selector)?.unwrap_or(0.0);
        }
        Ok(total)
    }
}

/// A system under test.
pub enum Sut {
    /// mcp-fanout.
    Fanout(Box<Fanout>),
    /// nginx + nchan.
    Nchan(Nchan, reqwest::Client),
}

/// Which way a publish goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST /admin/publish` on replica i.
    Admin(usize),
    /// Publisher task k uses replica k (mod the replica count).
    Spread,
    /// `SELECT mcp_fanout.publish(…)`.
    Sql,
}

impl Via {
    fn for_task(self, k: usize) -> Via {
        match self {
            Via::Spread => Via::Admin(k),
            other => other,
        }
    }
}

/// What publishing returned: per event its publish index, order key and the time it was sent.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Publish indexes (the `"n"` in params).
    pub ns: Vec<u64>,
    /// Order keys of the returned ids (mcp-fanout only).
    pub keys: Vec<u64>,
    /// Unix nanos when the first publish was sent.
    pub start_ns: u64,
    /// Unix nanos when the last answer arrived.
    pub end_ns: u64,
    /// Per request: answer time, µs.
    pub request_us: Vec<u64>,
}

impl Published {
    /// The wrapping sum of `mix(n)`: what every subscriber's set must hash to.
    pub fn hash(&self) -> u64 {
        self.ns.iter().fold(0u64, |h, &n| h.wrapping_add(mix(n)))
    }

    /// Events published.
    pub fn count(&self) -> u64 {
        self.ns.len() as u64
    }

    fn absorb(&mut self, other: Published) {
        self.ns.extend(other.ns);
        self.keys.extend(other.keys);
        self.request_us.extend(other.request_us);
        if self.start_ns == 0 || (other.start_ns != 0 && other.start_ns < self.start_ns) {
            self.start_ns = other.start_ns;
        }
        self.end_ns = self.end_ns.max(other.end_ns);
    }
}

/// The params of event `n`: publish index, send time, and `pad` bytes of padding.
pub fn params(n: u64, pad: usize) -> Value {
    if pad == 0 {
        json!({"n": n, "t": now_ns()})
    } else {
        json!({"n": n, "t": now_ns(), "pad": "x".repeat(pad)})
    }
}

impl Sut {
    /// Starts nchan.
    pub async fn nchan() -> Result<Sut> {
        Ok(Sut::Nchan(Nchan::start().await?, http_client()?))
    }

    /// `mcp-fanout` or `nchan`.
    pub fn name(&self) -> &'static str {
        match self {
            Sut::Fanout(_) => "mcp-fanout",
            Sut::Nchan(..) => "nchan",
        }
    }

    /// Where subscribers connect.
    pub fn targets(&self) -> Vec<SubTarget> {
        match self {
            Sut::Fanout(f) => f.targets(),
            Sut::Nchan(n, _) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], n.port));
                vec![SubTarget {
                    addr,
                    request: format!(
                        "GET /sub HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
                    ),
                }]
            }
        }
    }

    /// Server processes.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Sut::Fanout(f) => f.pids(),
            Sut::Nchan(n, _) => n.pids(),
        }
    }

    /// RSS and CPU of the server processes.
    pub fn sample(&self) -> Result<ProcSample> {
        sample_all(&self.pids())
    }

    /// Subscribers the server counts.
    pub async fn subscribers(&self) -> Result<f64> {
        match self {
            Sut::Fanout(f) => f.subscribers().await,
            Sut::Nchan(n, http) => {
                let resp = http
                    .get(n.url("/pub"))
                    .header("Accept", "application/json")
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    return Ok(0.0);
                }
                let v: Value = resp.json().await?;
                Ok(v.get("subscribers").and_then(Value::as_f64).unwrap_or(0.0))
            }
        }
    }

    /// Waits until the server counts `n` subscribers.
    pub async fn wait_subscribers(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        #[allow(clippy::cast_precision_loss)]
        let want = n as f64;
        let mut next_note = Instant::now() + Duration::from_secs(5);
        loop {
            let have = self.subscribers().await?;
            if have >= want {
                return Ok(());
            }
            if Instant::now() >= next_note {
                crate::progress(&format!(
                    "  … {} counts {have} of {n} subscribers",
                    self.name()
                ));
                next_note = Instant::now() + Duration::from_secs(5);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Timeout(format!(
                    "{} to count {n} subscribers (has {have})",
                    self.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes one event `n` (through replica `via`); returns its order key and the request time.
    pub async fn publish_one(&self, via: Via, n: u64, pad: usize) -> Result<Option<u64>> {
        let message = json!({"method": METHOD, "params": params(n, pad)});
        match self {
            Sut::Fanout(f) => {
                let id = match via {
                    Via::Sql => f.sql_publish(&message["params"]).await?,
                    Via::Admin(i) => f
                        .post(i, &message)
                        .await?
                        .0
                        .into_iter()
                        .next()
                        .unwrap_or_default(),
                    Via::Spread => f
                        .post(0, &message)
                        .await?
                        .0
                        .into_iter()
                        .next()
                        .unwrap_or_default(),
                };
                Ok(order_key(id.as_bytes()))
            }
            Sut::Nchan(nc, http) => {
                let mut full = message;
                full["jsonrpc"] = json!("2.0");
                let resp = http
                    .post(nc.url("/pub"))
                    .header("Content-Type", "application/json")
                    .body(full.to_string())
                    .send()
                    .await?;
                let status = resp.status();
                let _ = resp.bytes().await?;
                if !status.is_success() {
                    return Err(BenchError::Protocol(format!(
                        "nchan publish answered {status}"
                    )));
                }
                Ok(None)
            }
        }
    }

    /// Publishes a batch of events `first..first+len` in one request (mcp-fanout only).
    pub async fn publish_batch(
        &self,
        via: Via,
        first: u64,
        len: u64,
        pad: usize,
    ) -> Result<Vec<u64>> {
        let via = match via {
            Via::Admin(i) => i,
            _ => 0,
        };
        let Sut::Fanout(f) = self else {
            return Err(BenchError::Failed(
                "batches are an mcp-fanout feature".to_string(),
            ));
        };
        let body: Vec<Value> = (first..first + len)
            .map(|n| json!({"method": METHOD, "params": params(n, pad)}))
            .collect();
        let (ids, _) = f.post(via, &Value::Array(body)).await?;
        if ids.len() as u64 != len {
            return Err(BenchError::Protocol(format!(
                "batch of {len} answered {} ids",
                ids.len()
            )));
        }
        Ok(ids
            .iter()
            .filter_map(|id| order_key(id.as_bytes()))
            .collect())
    }

    /// Publishes `count` events (in requests of `batch`), `publishers` requests in flight, back
    /// to back; events `first..first+count`.
    pub async fn burst(
        self: &Arc<Self>,
        via: Via,
        first: u64,
        count: u64,
        publishers: usize,
        batch: u64,
        pad: usize,
    ) -> Result<Published> {
        let batch = batch.max(1);
        let next = Arc::new(AtomicU64::new(first));
        let end = first + count;
        let mut tasks = Vec::new();
        for k in 0..publishers.max(1) {
            let sut = Arc::clone(self);
            let next = Arc::clone(&next);
            let via = via.for_task(k);
            tasks.push(tokio::spawn(async move {
                let mut p = Published::default();
                loop {
                    let n = next.fetch_add(batch, Ordering::Relaxed);
                    if n >= end {
                        break;
                    }
                    let len = batch.min(end - n);
                    let sent = now_ns();
                    if p.start_ns == 0 {
                        p.start_ns = sent;
                    }
                    if len == 1 {
                        let key = sut.publish_one(via, n, pad).await?;
                        p.keys.extend(key);
                    } else {
                        p.keys.extend(sut.publish_batch(via, n, len, pad).await?);
                    }
                    let done = now_ns();
                    p.request_us.push(done.saturating_sub(sent) / 1000);
                    p.end_ns = done;
                    p.ns.extend(n..n + len);
                }
                Ok::<Published, BenchError>(p)
            }));
        }
        join_all(tasks).await
    }

    /// Publishes for `duration` with `publishers` loops, each sending single events (`batch` =
    /// 1) or batches; events numbered from `first`.
    pub async fn for_duration(
        self: &Arc<Self>,
        via: Via,
        first: u64,
        duration: Duration,
        publishers: usize,
        batch: u64,
        pad: usize,
    ) -> Result<Published> {
        let next = Arc::new(AtomicU64::new(first));
        let stop = Instant::now() + duration;
        let mut tasks = Vec::new();
        for k in 0..publishers.max(1) {
            let sut = Arc::clone(self);
            let next = Arc::clone(&next);
            let via = via.for_task(k);
            tasks.push(tokio::spawn(async move {
                let mut p = Published::default();
                while Instant::now() < stop {
                    let n = next.fetch_add(batch, Ordering::Relaxed);
                    let sent = now_ns();
                    if p.start_ns == 0 {
                        p.start_ns = sent;
                    }
                    if batch <= 1 {
                        let key = sut.publish_one(via, n, pad).await?;
                        p.keys.extend(key);
                        p.ns.push(n);
                    } else {
                        let keys = sut.publish_batch(via, n, batch, pad).await?;
                        p.keys.extend(keys);
                        p.ns.extend(n..n + batch);
                    }
                    let done = now_ns();
                    p.request_us.push(done.saturating_sub(sent) / 1000);
                    p.end_ns = done;
                }
                Ok::<Published, BenchError>(p)
            }));
        }
        join_all(tasks).await
    }

    /// Publishes one event every `1/rate` seconds for `duration` (each publish on its own task so
    /// a slow answer does not slow the rate); events numbered from `first`.
    pub async fn at_rate(
        self: &Arc<Self>,
        via: Via,
        first: u64,
        rate: f64,
        duration: Duration,
    ) -> Result<Published> {
        let sut = Arc::clone(self);
        paced(rate, duration, first, move |n| {
            let sut = Arc::clone(&sut);
            async move {
                let key = sut.publish_one(via, n, 0).await?;
                Ok(key)
            }
        })
        .await
    }

    /// `GET /healthz` on replica 0's admin listener every `1/rate` seconds for `duration`, each on
    /// its own task like [`Sut::at_rate`]'s publishes: the same client's round trip to the replica
    /// with nothing published (mcp-fanout only).
    pub async fn health_at_rate(
        self: &Arc<Self>,
        rate: f64,
        duration: Duration,
    ) -> Result<Published> {
        let sut = Arc::clone(self);
        paced(rate, duration, 0, move |_| {
            let sut = Arc::clone(&sut);
            async move {
                match &*sut {
                    Sut::Fanout(f) => f.healthz(0).await?,
                    Sut::Nchan(..) => {
                        return Err(BenchError::Failed(
                            "health_at_rate needs mcp-fanout".to_string(),
                        ))
                    }
                }
                Ok(None)
            }
        })
        .await
    }
}

/// Runs `one(n)` for `n` from `first`, one every `1/rate` seconds for `duration`, each on its own
/// task (a slow answer does not slow the rate); each answer's time and order key recorded.
async fn paced<F, Fut>(rate: f64, duration: Duration, first: u64, one: F) -> Result<Published>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<Option<u64>>> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for n in first..first + total {
        ticker.tick().await;
        let request = one(n);
        tasks.push(tokio::spawn(async move {
            let mut p = Published::default();
            let sent = now_ns();
            p.start_ns = sent;
            let key = request.await?;
            p.end_ns = now_ns();
            p.request_us.push(p.end_ns.saturating_sub(sent) / 1000);
            p.ns.push(n);
            p.keys.extend(key);
            Ok::<Published, BenchError>(p)
        }));
    }
    join_all(tasks).await
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Result<Published>>>) -> Result<Published> {
    let mut all = Published::default();
    for t in tasks {
        let p = t
            .await
            .map_err(|e| BenchError::Failed(format!("a publisher task failed: {e}")))??;
        all.absorb(p);
    }
    Ok(all)
}
