//! Publishing through `POST /admin/publish`.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::{EventId, ServerError};

/// One notification to publish: the body of `POST /admin/publish`.
///
/// ```
/// use mcp_fanout_client::Notification;
/// use serde_json::json;
///
/// let n = Notification::new("notifications/resources/updated")
///     .params(json!({"uri": "file:///a.txt"}))
///     .tenant("acme");
/// assert_eq!(
///     serde_json::to_value(&n).unwrap(),
///     json!({"method": "notifications/resources/updated", "params": {"uri": "file:///a.txt"}, "tenant": "acme"})
/// );
/// assert_eq!(
///     serde_json::to_value(Notification::tools_list_changed()).unwrap(),
///     json!({"method": "notifications/tools/list_changed"})
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// `notifications/…`.
    pub method: String,
    /// A JSON object, or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
    /// Only subscribers of this tenant see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only the stream of this `Mcp-Session-Id` sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The event's own idempotency key (else the [`Publisher`] keys the whole call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Notification {
    /// A notification of `method`, for everyone, without params.
    pub fn new(method: impl Into<String>) -> Notification {
        Notification {
            method: method.into(),
            params: None,
            tenant: None,
            session: None,
            key: None,
        }
    }

    /// `notifications/tools/list_changed`.
    pub fn tools_list_changed() -> Notification {
        Notification::new("notifications/tools/list_changed")
    }

    /// `notifications/resources/list_changed`.
    pub fn resources_list_changed() -> Notification {
        Notification::new("notifications/resources/list_changed")
    }

    /// `notifications/prompts/list_changed`.
    pub fn prompts_list_changed() -> Notification {
        Notification::new("notifications/prompts/list_changed")
    }

    /// `notifications/resources/updated` for `uri`.
    pub fn resource_updated(uri: impl Into<String>) -> Notification {
        let mut params = Map::new();
        params.insert("uri".into(), Value::String(uri.into()));
        Notification {
            params: Some(params),
            ..Notification::new("notifications/resources/updated")
        }
    }

    /// Sets `params`; anything but a JSON object (or null) is left out, as the server would
    /// refuse it.
    pub fn params(mut self, params: Value) -> Notification {
        self.params = match params {
            Value::Object(map) => Some(map),
            _ => None,
        };
        self
    }

    /// Only subscribers of `tenant` see it.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Notification {
        self.tenant = Some(tenant.into());
        self
    }

    /// Only the stream of `session` sees it.
    pub fn session(mut self, session: impl Into<String>) -> Notification {
        self.session = Some(session.into());
        self
    }

    /// The event's own idempotency key.
    pub fn key(mut self, key: impl Into<String>) -> Notification {
        self.key = Some(key.into());
        self
    }
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The server refused it (bad input, credentials, an idempotency conflict…): retrying the
    /// same request cannot help.
    #[error(transparent)]
    Refused(#[from] ServerError),
    /// No answer but "unavailable" (connection errors, timeouts, `502`/`503`/`504`) until the
    /// retry deadline passed. Nothing or everything was published: a later retry with the
    /// same key tells which.
    #[error("not published after {attempts} attempts in {elapsed:?}: {last}")]
    Unavailable {
        attempts: u32,
        elapsed: Duration,
        /// The last failure.
        last: String,
        /// The idempotency key the attempts used (per call, or the events' own).
        key: Option<String>,
    },
    /// A `200` whose body is not the publish answer.
    #[error("unexpected answer to a publish: {0}")]
    UnexpectedAnswer(String),
    /// An empty batch (the server takes 1…`FANOUT_MAX_BATCH` events).
    #[error("a batch needs at least one notification")]
    EmptyBatch,
}

/// Publishes notifications through `POST /admin/publish` of one base URL (a replica's admin
/// listener, or a load balancer in front of them).
///
/// Every call carries an idempotency key, so retrying it is safe: an `Idempotency-Key` header
/// generated per call, or, when the events carry their own `key`, those (events without one get
/// a key derived from the call's). Connection errors, timeouts and `502`/`503`/`504` are retried
/// with exponential backoff and jitter until [`Publisher::retry_for`] has passed; any other
/// refusal is returned at once as [`PublishError::Refused`] with the server's error code.
///
/// ```no_run
/// # async fn run() -> Result<(), mcp_fanout_client::PublishError> {
/// use mcp_fanout_client::{Notification, Publisher};
///
/// let publisher = Publisher::new("http://fanout-admin:8081").token("s3cret");
/// let id = publisher.publish(&Notification::tools_list_changed()).await?;
/// println!("published {id}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    retry_for: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    attempt_timeout: Duration,
}

#[derive(Deserialize)]
struct OneAnswer {
    id: EventId,
}

#[derive(Deserialize)]
struct BatchAnswer {
    ids: Vec<EventId>,
}

impl Publisher {
    /// A publisher for the service at `base_url` (`http://host:port`, without `/admin/publish`).
    /// Defaults: no token, retries for 30 s, backoff from 100 ms to 5 s, 10 s per attempt.
    pub fn new(base_url: impl AsRef<str>) -> Publisher {
        Publisher {
            http: reqwest::Client::new(),
            url: format!("{}/admin/publish", base_url.as_ref().trim_end_matches('/')),
            token: None,
            retry_for: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(10),
        }
    }

    /// The admin bearer token (`FANOUT_ADMIN_TOKENS`).
    pub fn token(mut self, token: impl Into<String>) -> Publisher {
        self.token = Some(token.into());
        self
    }

    /// How long to keep retrying an unavailable service (`Duration::ZERO`: one attempt).
    pub fn retry_for(mut self, deadline: Duration) -> Publisher {
        self.retry_for = deadline;
        self
    }

    /// The first and the largest pause between attempts.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Publisher {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// How long one attempt may take.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Publisher {
        self.attempt_timeout = timeout;
        self
    }

    /// Use this HTTP client (proxies, TLS roots, …).
    pub fn client(mut self, http: reqwest::Client) -> Publisher {
        self.http = http;
        self
    }

    /// Publishes one notification; its id once it is committed to the log.
    pub async fn publish(&self, notification: &Notification) -> Result<EventId, PublishError> {
        let body = serde_json::to_value(notification)
            .map_err(|e| PublishError::UnexpectedAnswer(e.to_string()))?;
        let header_key = notification.key.is_none().then(random_key);
        let answer = self.send(&body, header_key).await?;
        serde_json::from_slice::<OneAnswer>(&answer)
            .map(|a| a.id)
            .map_err(|e| unexpected(&answer, e))
    }

    /// Publishes a batch, all or nothing; their ids, in order (adjacent in the log).
    pub async fn publish_batch(
        &self,
        notifications: &[Notification],
    ) -> Result<Vec<EventId>, PublishError> {
        if notifications.is_empty() {
            return Err(PublishError::EmptyBatch);
        }
        let call_key = random_key();
        let keyed = notifications.iter().any(|n| n.key.is_some());
        let events: Vec<Notification> = notifications
            .iter()
            .enumerate()
            .map(|(i, n)| match (&n.key, keyed) {
                // The header and per-event keys cannot be combined: give the others a key too.
                (None, true) => n.clone().key(format!("{call_key}.{i}")),
                _ => n.clone(),
            })
            .collect();
        let body = serde_json::to_value(&events)
            .map_err(|e| PublishError::UnexpectedAnswer(e.to_string()))?;
        let answer = self.send(&body, (!keyed).then_some(call_key)).await?;
        let ids = serde_json::from_slice::<BatchAnswer>(&answer)
            .map(|a| a.ids)
            .map_err(|e| unexpected(&answer, e))?;
        if ids.len() != notifications.len() {
            return Err(PublishError::UnexpectedAnswer(format!(
                "{} ids for {} notifications",
                ids.len(),
                notifications.len()
            )));
        }
        Ok(ids)
    }

    /// Sends until an answer that is not "unavailable", or the deadline; the `200` body.
    async fn send(&self, body: &Value, key: Option<String>) -> Result<Vec<u8>, PublishError> {
        let started = Instant::now();
        let deadline = started + self.retry_for;
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let mut req = self
                .http
                .post(&self.url)
                .timeout(self.attempt_timeout)
                .json(body);
            if let Some(k) = &key {
                req = req.header("idempotency-key", k);
            }
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let last = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(bytes) if status == 200 => return Ok(bytes.to_vec()),
                        Ok(bytes) if matches!(status, 502..=504) => {
                            ServerError::from_answer(status, &bytes).to_string()
                        }
                        Ok(bytes) => {
                            return Err(ServerError::from_answer(status, &bytes).into());
                        }
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => error_chain(&e),
            };
            let pause = backoff.next_delay();
            if Instant::now() + pause > deadline {
                return Err(PublishError::Unavailable {
                    attempts,
                    elapsed: started.elapsed(),
                    last,
                    key,
                });
            }
            tracing::debug!(attempts, error = %last, pause_ms = pause.as_millis() as u64, "publish unavailable; retrying");
            tokio::time::sleep(pause).await;
        }
    }
}

/// 32 random hex digits: an idempotency key for one call.
fn random_key() -> String {
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

fn unexpected(answer: &[u8], e: serde_json::Error) -> PublishError {
    PublishError::UnexpectedAnswer(format!("{e}: {}", String::from_utf8_lossy(answer)))
}

/// An error with its sources (reqwest's own message is often only "error sending request").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
