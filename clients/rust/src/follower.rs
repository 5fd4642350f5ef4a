//! Following the `GET /mcp` stream across disconnects, with exact resume.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::{jitter, Backoff};
use crate::publisher::error_chain;
use crate::sse::{self, Sse};
use crate::{EventId, ServerError};

/// The protocol version the follower speaks: the server primes its streams (the cursor is known
/// from the first frame) and marks a resync with a priming frame.
const PROTOCOL_VERSION: &str = "2025-11-25";

/// The notifications of a resync: one per list kind, without an id.
const RESYNC_METHODS: [&str; 3] = [
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/prompts/list_changed",
];

/// One notification from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its id; resuming after it delivers what follows it.
    pub id: EventId,
    /// `notifications/…`.
    pub method: String,
    /// Its params (an object), if any.
    pub params: Option<Map<String, Value>>,
    /// The exact JSON-RPC text of the frame's `data:` line.
    pub message: String,
}

/// The server could not replay the stream from the follower's cursor exactly (the events after
/// it are no longer retained, or it belongs to another log): whatever the application derived
/// from past events must be refetched. The stream goes on from `head`, with no gap after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    /// The head of the log when the server answered; the follower's new cursor.
    pub head: EventId,
}

/// What a [`Follower`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(Event),
    Resync(Resync),
}

/// Why a [`Follower`] stopped: the server refused the stream in a way retrying cannot fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FollowError {
    /// `400`, `401`, `403`, `404`, `406`…: a bad credential, session or request.
    #[error(transparent)]
    Refused(#[from] ServerError),
    /// A base URL that is not a valid URL.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
}

/// Where the follower is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// A stream is open.
    pub connected: bool,
    /// The id of the last event yielded (or the cursor the server gave): where a reconnect
    /// resumes.
    pub cursor: Option<EventId>,
    /// Streams opened so far.
    pub connections: u64,
}

/// Settings of a [`Follower`].
#[derive(Debug, Clone)]
pub struct FollowerBuilder {
    urls: Vec<String>,
    token: Option<String>,
    session: Option<String>,
    cursor: Option<String>,
    initial_backoff: Duration,
    max_backoff: Duration,
    idle_timeout: Duration,
    buffer: usize,
    http: Option<reqwest::Client>,
}

impl FollowerBuilder {
    /// Another base URL: reconnects go round the URLs (one per replica; or one load balancer).
    pub fn url(mut self, base_url: impl AsRef<str>) -> FollowerBuilder {
        self.urls.push(stream_url(base_url.as_ref()));
        self
    }

    /// The subscriber bearer token (JWT mode).
    pub fn token(mut self, token: impl Into<String>) -> FollowerBuilder {
        self.token = Some(token.into());
        self
    }

    /// The `Mcp-Session-Id` to present (events published for this session are visible).
    pub fn session(mut self, session: impl Into<String>) -> FollowerBuilder {
        self.session = Some(session.into());
        self
    }

    /// Start after this event id (e.g. the last one the application stored) instead of the
    /// head. A cursor the server cannot replay from yields a [`Resync`] first.
    pub fn last_event_id(mut self, id: impl Into<String>) -> FollowerBuilder {
        self.cursor = Some(id.into());
        self
    }

    /// The first and the largest pause before reconnecting after a failure (jittered; default
    /// 200 ms and 10 s). A stream the server ended cleanly is reopened after its `retry:` hint.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> FollowerBuilder {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Reconnect when nothing, not even a keep-alive comment, arrives for this long (default
    /// 45 s: three of the server's default 15 s keep-alives).
    pub fn idle_timeout(mut self, idle: Duration) -> FollowerBuilder {
        self.idle_timeout = idle;
        self
    }

    /// How many items may wait for the application (default 256). When it is full the
    /// follower stops reading; the server ends a stream that falls too far behind, and the
    /// follower resumes it from its cursor.
    pub fn buffer(mut self, items: usize) -> FollowerBuilder {
        self.buffer = items.max(1);
        self
    }

    /// Use this HTTP client (proxies, TLS roots, …). It must not set a total request timeout.
    pub fn client(mut self, http: reqwest::Client) -> FollowerBuilder {
        self.http = Some(http);
        self
    }

    /// Starts following, on the current Tokio runtime.
    pub fn spawn(self) -> Result<Follower, FollowError> {
        for url in &self.urls {
            reqwest::Url::parse(url).map_err(|e| FollowError::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        }
        let cursor = self.cursor.as_deref().and_then(|c| c.parse().ok());
        let (items_tx, items) = mpsc::channel(self.buffer);
        let (status_tx, status) = watch::channel(Status {
            cursor,
            ..Status::default()
        });
        let task = tokio::spawn(run(self, items_tx, status_tx));
        Ok(Follower {
            items,
            status,
            task,
        })
    }
}

/// One `GET /mcp` stream, kept open: it resumes with `Last-Event-ID` after every disconnect, so
/// the application sees every event after its start exactly once, in log order, whatever
/// happens to connections and replicas meanwhile.
///
/// - The items are [`Item::Event`]s and, when the server cannot replay from the cursor (it was
///   pruned, or names another log), one [`Item::Resync`] before the events that follow the head.
/// - Keep-alive comments and priming frames (an `id:` with empty data, which sets the cursor)
///   are handled inside; a stream silent past [`FollowerBuilder::idle_timeout`] is reopened.
/// - Reconnects go round the base URLs, after the server's `retry:` hint when it ended the
///   stream, or with exponential backoff and jitter after a failure.
/// - An `Err` item means the server refused the stream (bad credential, unknown session…): it
///   is the last item.
///
/// Dropping the follower closes its stream.
///
/// ```no_run
/// # async fn run() {
/// use futures_util::StreamExt;
/// use mcp_fanout_client::{Follower, Item};
///
/// let mut follower = Follower::builder("http://fanout-a:8080")
///     .url("http://fanout-b:8080")
///     .spawn()
///     .expect("valid URLs");
/// while let Some(item) = follower.next().await {
///     match item {
///         Ok(Item::Event(e)) => println!("{} {} {:?}", e.id, e.method, e.params),
///         Ok(Item::Resync(r)) => println!("refetch everything; now at {}", r.head),
///         Err(e) => { eprintln!("{e}"); break }
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Follower {
    items: mpsc::Receiver<Result<Item, FollowError>>,
    status: watch::Receiver<Status>,
    task: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    /// Settings for following the service at `base_url` (`http://host:port`, without `/mcp`).
    pub fn builder(base_url: impl AsRef<str>) -> FollowerBuilder {
        FollowerBuilder {
            urls: vec![stream_url(base_url.as_ref())],
            token: None,
            session: None,
            cursor: None,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(45),
            buffer: 256,
            http: None,
        }
    }

    /// Follows `base_url` from its head with the defaults.
    pub fn new(base_url: impl AsRef<str>) -> Result<Follower, FollowError> {
        Follower::builder(base_url).spawn()
    }

    /// Where the follower is now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of every change of [`Follower::status`].
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until a stream is open (returns at once if one is).
    pub async fn connected(&self) {
        let mut status = self.status.clone();
        // An error means the follower stopped: nothing to wait for.
        let _ = status.wait_for(|s| s.connected).await;
    }
}

impl Stream for Follower {
    type Item = Result<Item, FollowError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.poll_recv(cx)
    }
}

fn stream_url(base: &str) -> String {
    format!("{}/mcp", base.trim_end_matches('/'))
}

/// The JSON-RPC notification of a frame.
#[derive(Deserialize)]
struct Message {
    method: String,
    #[serde(default)]
    params: Option<Map<String, Value>>,
}

/// How one stream ended.
enum Ended {
    /// The server ended it cleanly, with this reconnect hint.
    Clean { retry: Option<Duration> },
    /// The connection broke; `received`: after the stream carried something (so it worked).
    Broken { why: String, received: bool },
    /// The application dropped the follower.
    Closed,
}

/// The follower's state carried from stream to stream.
struct Cursor {
    at: Option<EventId>,
    /// The raw cursor the application gave, until an id from the server replaces it.
    initial: Option<String>,
}

impl Cursor {
    fn header(&self) -> Option<String> {
        match &self.at {
            Some(id) => Some(id.to_string()),
            None => self.initial.clone(),
        }
    }

    fn set(&mut self, id: EventId) {
        self.initial = None;
        self.at = Some(id);
    }
}

async fn run(
    cfg: FollowerBuilder,
    items: mpsc::Sender<Result<Item, FollowError>>,
    status: watch::Sender<Status>,
) {
    let http = cfg.http.clone().unwrap_or_default();
    let mut cursor = Cursor {
        at: cfg.cursor.as_deref().and_then(|c| c.parse().ok()),
        initial: cfg.cursor.clone(),
    };
    let mut backoff = Backoff::new(cfg.initial_backoff, cfg.max_backoff);
    let mut next_url = 0usize;
    loop {
        let url = &cfg.urls[next_url % cfg.urls.len()];
        next_url = next_url.wrapping_add(1);
        let pause = match open(&http, &cfg, url, cursor.header()).await {
            Err(Open::Refused(e)) => {
                tracing::warn!(url = %url, status = e.status, code = %e.code, message = %e.message, "the stream was refused; the follower stops");
                let _ = items.send(Err(FollowError::Refused(e))).await;
                return;
            }
            Err(Open::Unavailable(why)) => {
                let pause = backoff.next_delay();
                tracing::debug!(url = %url, error = %why, pause_ms = pause.as_millis() as u64, "cannot open the stream; retrying");
                pause
            }
            Ok(resp) => {
                status.send_modify(|s| {
                    s.connected = true;
                    s.connections += 1;
                });
                let ended = read(resp, &cfg, &mut cursor, &items, &status).await;
                status.send_modify(|s| s.connected = false);
                match ended {
                    Ended::Closed => return,
                    Ended::Clean { retry } => {
                        backoff.reset();
                        tracing::debug!(url = %url, retry_ms = retry.map(|r| r.as_millis() as u64), "the server ended the stream; resuming");
                        retry.unwrap_or_else(|| jitter(cfg.initial_backoff))
                    }
                    Ended::Broken { why, received } => {
                        if received {
                            backoff.reset();
                        }
                        let pause = backoff.next_delay();
                        tracing::debug!(url = %url, error = %why, pause_ms = pause.as_millis() as u64, "the stream broke; resuming");
                        pause
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = items.closed() => return,
        }
    }
}

enum Open {
    Refused(ServerError),
    Unavailable(String),
}

async fn open(
    http: &reqwest::Client,
    cfg: &FollowerBuilder,
    url: &str,
    cursor: Option<String>,
) -> Result<reqwest::Response, Open> {
    let mut req = http
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", PROTOCOL_VERSION);
    if let Some(c) = cursor {
        req = req.header("last-event-id", c);
    }
    if let Some(s) = &cfg.session {
        req = req.header("mcp-session-id", s);
    }
    if let Some(t) = &cfg.token {
        req = req.bearer_auth(t);
    }
    let resp = match tokio::time::timeout(cfg.idle_timeout, req.send()).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(Open::Unavailable(error_chain(&e))),
        Err(_) => return Err(Open::Unavailable("no answer in time".into())),
    };
    let status = resp.status().as_u16();
    if status == 200 {
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if sse {
            return Ok(resp);
        }
        return Err(Open::Unavailable(
            "a 200 answer that is not text/event-stream".into(),
        ));
    }
    let body = tokio::time::timeout(cfg.idle_timeout, resp.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let error = ServerError::from_answer(status, &body);
    // Overload, a restarting replica behind a proxy, a timeout: another try can succeed.
    if matches!(status, 408 | 429) || status >= 500 {
        return Err(Open::Unavailable(error.to_string()));
    }
    Err(Open::Refused(error))
}

/// Reads one stream to its end, yielding its items and moving the cursor.
async fn read(
    resp: reqwest::Response,
    cfg: &FollowerBuilder,
    cursor: &mut Cursor,
    items: &mpsc::Sender<Result<Item, FollowError>>,
    status: &watch::Sender<Status>,
) -> Ended {
    let mut blocks = sse::decode(resp.bytes_stream(), Some(cfg.idle_timeout));
    let mut retry = None;
    // The id-less list_changed of a resync arrived; the priming frame that follows gives the head.
    let mut resyncing = false;
    let mut received = false;
    loop {
        let block = tokio::select! {
            block = blocks.next() => block,
            _ = items.closed() => return Ended::Closed,
        };
        let Sse {
            id, data, retry: r, ..
        } = match block {
            None => return Ended::Clean { retry },
            Some(Ok(block)) => block,
            Some(Err(e)) => {
                return Ended::Broken {
                    why: error_chain(&e),
                    received,
                }
            }
        };
        received = true;
        if let Some(ms) = r {
            retry = Some(Duration::from_millis(ms));
        }
        let data = data.filter(|d| !d.is_empty());
        let id = match id.as_deref().map(str::parse::<EventId>) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "a frame with an id that is not the server's; skipped");
                continue;
            }
        };
        let item = match (id, data) {
            // A resync notification: the three come without an id, then the priming frame.
            (None, Some(data)) => {
                match serde_json::from_str::<Message>(&data) {
                    Ok(m) if RESYNC_METHODS.contains(&m.method.as_str()) => resyncing = true,
                    _ => tracing::warn!(message = %data, "a frame without an id; skipped"),
                }
                continue;
            }
            (None, None) => continue,
            // Priming (or the cursor handed back at a stream's end): sets the cursor.
            (Some(id), None) => {
                let item = resyncing.then(|| Item::Resync(Resync { head: id.clone() }));
                resyncing = false;
                match item {
                    Some(item) => (id, Some(item)),
                    None => {
                        cursor.set(id.clone());
                        status.send_modify(|s| s.cursor = Some(id));
                        continue;
                    }
                }
            }
            (Some(id), Some(data)) => {
                if cursor
                    .at
                    .as_ref()
                    .is_some_and(|c| !id.is_after(c) && c.epoch() == id.epoch())
                {
                    tracing::warn!(id = %id, "an event at or before the cursor; skipped");
                    continue;
                }
                match serde_json::from_str::<Message>(&data) {
                    Ok(m) => {
                        let event = Event {
                            id: id.clone(),
                            method: m.method,
                            params: m.params,
                            message: data,
                        };
                        (id, Some(Item::Event(event)))
                    }
                    Err(e) => {
                        tracing::warn!(id = %id, error = %e, "an event that is not a JSON-RPC notification; skipped");
                        (id, None)
                    }
                }
            }
        };
        let (id, item) = item;
        if let Some(item) = item {
            if items.send(Ok(item)).await.is_err() {
                return Ended::Closed;
            }
        }
        cursor.set(id.clone());
        status.send_modify(|s| s.cursor = Some(id));
    }
}
