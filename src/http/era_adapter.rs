//! Proxy mode: 2026-07-28 clients in front of a 2025-era upstream. The proxy serves
//! `subscriptions/listen` itself, but a 2026 client first asks `server/discover` (a 2025 upstream
//! does not know it, so the client falls back to the handshake era, where it cannot listen) and
//! then sends its requests at 2026-07-28 with no session (which a 2025 upstream refuses).
//!
//! So, once per upstream, the proxy learns its era (a `server/discover` probe). A modern upstream
//! gets every request as is. For a 2025-era one, the proxy performs the `initialize` handshake
//! itself — one per caller's credentials (its identity headers: `Authorization`, `Cookie`, the
//! tenant header of header mode), sent on that handshake, so no two principals share an upstream
//! session — and keeps that session (at most `FANOUT_BRIDGE_MAX_SESSIONS` per replica, the least
//! recently used closed upstream with `DELETE`; renewed on a `404`). It answers `server/discover`
//! from the caller's handshake result, and forwards each 2026 request with that handshake's
//! protocol version and session id. Results get the fields the 2026 wire requires (`resultType`;
//! `ttlMs` and `cacheScope` on cacheable results), with the defaults a 2026 server SDK uses
//! (`complete`, `0`, `private`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::headers::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use super::proxy::{self, Forward};
use crate::mcp::upstream::{AdapterSlot, Credentials, Era, Handshake, Upstream};
use crate::state::AppState;

/// The protocol revision adapted to.
pub const MODERN: &str = "2026-07-28";

/// The version the proxy's own handshake asks for.
const HANDSHAKE_VERSION: &str = "2025-11-25";

const DISCOVER: &str = "server/discover";

/// Longest the probe and the handshake may take together.
const LEARN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The wait after a first era probe the upstream did not answer; it doubles with each such probe
/// in a row, up to [`PROBE_BACKOFF_MAX`].
const PROBE_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const PROBE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Methods whose 2026-07-28 results are cacheable (`ttlMs`, `cacheScope` required).
const CACHEABLE: [&str; 5] = [
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("the upstream is unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("the upstream did not answer the probe or handshake within {LEARN_TIMEOUT:?} (or FANOUT_UPSTREAM_TIMEOUT_SECS, if shorter)")]
    Timeout,
    /// A recent probe found the upstream down (it timed out or could not connect): no new one
    /// until its backoff has passed.
    #[error("a recent era probe found the upstream down; the next one is due later")]
    Down,
    #[error("the upstream answered the server/discover probe with {0}")]
    Probe(StatusCode),
    /// An answer that is neither a 2026-07-28 discover result nor a 2025-era refusal of one (an
    /// error of the upstream's HTTP stack, a proxy in front of it, a rate limit).
    #[error("the upstream's answer to the server/discover probe ({0}) does not say its era")]
    NoEra(StatusCode),
    #[error("the upstream's initialize answer has no result: {0}")]
    NoResult(String),
    /// The probe's or the handshake's answer ran past `FANOUT_UPSTREAM_REWRITE_MAX_BYTES` before
    /// its first JSON-RPC message ended: it is not read further.
    #[error("the upstream's answer to the adapter is over {0} bytes (FANOUT_UPSTREAM_REWRITE_MAX_BYTES)")]
    TooLarge(usize),
    /// Every upstream connection this replica may hold is in use (`FANOUT_UPSTREAM_MAX_CONNECTIONS`):
    /// the adapter's own requests count toward the bound like forwarded ones.
    #[error("every upstream connection of this replica is in use")]
    Busy,
}

/// Whether a request speaks 2026-07-28.
pub fn is_modern_request(headers: &HeaderMap) -> bool {
    headers
        .get(MCP_PROTOCOL_VERSION)
        .is_some_and(|v| v.as_bytes() == MODERN.as_bytes())
}

/// Forwards a 2026-07-28 request (not `subscriptions/listen`) to the upstream, bridging it when
/// the upstream is of the 2025 era.
pub async fn forward(st: &AppState, up: &Upstream, f: Forward) -> Response {
    let credentials = up.adapter_sessions().credentials(&f.headers);
    match era(up, &credentials).await {
        Ok(Era::Legacy) => {}
        Ok(Era::Modern) => return proxy::forward(st, up, f).await,
        Err(AdapterError::Busy) => return proxy::upstream_busy(up, &f.body),
        Err(AdapterError::Down) => {
            tracing::debug!(upstream = %up.url(), "the upstream's era is unknown and it was down at the last probe; forwarding as is");
            return proxy::forward(st, up, f).await;
        }
        Err(error) => {
            tracing::warn!(%error, upstream = %up.url(), "cannot learn the upstream's protocol era; forwarding as is");
            return proxy::forward(st, up, f).await;
        }
    }
    let mut hs = match session(up, &credentials, None).await {
        Ok(hs) => hs,
        Err(AdapterError::Busy) => return proxy::upstream_busy(up, &f.body),
        Err(error) => {
            tracing::warn!(%error, upstream = %up.url(), "cannot open the caller's bridge session; forwarding as is");
            return proxy::forward(st, up, f).await;
        }
    };
    if f.rpc_method.as_deref() == Some(DISCOVER) {
        return discover_answer(up, &hs, &f.body);
    }
    // At most one renewal: the second answer is returned whatever it is.
    let mut renewed = false;
    loop {
        // The forward's deadline: the rewritten answer is due whole by then too.
        let deadline = tokio::time::Instant::now() + up.response_timeout();
        let resp = proxy::forward(
            st,
            up,
            Forward {
                method: f.method.clone(),
                headers: adapted_headers(&f.headers, &hs),
                body: f.body.clone(),
                rpc_method: f.rpc_method.clone(),
                owner: f.owner.clone(),
                peer: f.peer,
                client: f.client,
                own_task: f.own_task.clone(),
            },
        )
        .await;
        if resp.status() != StatusCode::NOT_FOUND || hs.session.is_none() || renewed {
            let patch: proxy::Patch = if CACHEABLE.contains(&f.rpc_method.as_deref().unwrap_or(""))
            {
                complete_cacheable_result
            } else {
                complete_result
            };
            return proxy::patch_response(st, up, resp, patch, deadline, &f.body).await;
        }
        // The upstream forgot the caller's session (restart, idle expiry): a new handshake.
        match session(up, &credentials, Some(&hs)).await {
            Ok(new) => hs = new,
            Err(error) => {
                tracing::warn!(%error, upstream = %up.url(), "cannot renew the bridge session");
                return resp;
            }
        }
        renewed = true;
    }
}

/// How long the probe or a handshake has: `FANOUT_UPSTREAM_TIMEOUT_SECS`, at most [`LEARN_TIMEOUT`].
fn learn_timeout(up: &Upstream) -> std::time::Duration {
    LEARN_TIMEOUT.min(up.response_timeout())
}

/// The cached era, learnt now if unknown (the probe carries the caller's credentials). A probe
/// that times out or cannot connect (the upstream is down, whoever asks) is not repeated for a
/// while ([`PROBE_BACKOFF_MIN`], doubling to [`PROBE_BACKOFF_MAX`]): the requests that queued
/// behind it, and those that come meanwhile, go upstream as sent instead of each waiting out a
/// probe of its own in turn. A refusal that may depend on the caller (its credentials, a rate
/// limit) is not: the next caller probes with its own.
async fn era(up: &Upstream, credentials: &Credentials) -> Result<Era, AdapterError> {
    let mut known = up.era_cache().0.lock().await;
    if let Some(era) = known.era {
        return Ok(era);
    }
    if known
        .quiet_until
        .is_some_and(|until| tokio::time::Instant::now() < until)
    {
        return Err(AdapterError::Down);
    }
    // The probe holds an upstream connection: within the bound, as every upstream request.
    let _permit = up
        .in_flight
        .try_acquire(up.url().as_str())
        .ok_or(AdapterError::Busy)?;
    // Bounded: every 2026 request of this replica waits for it.
    let probed = match tokio::time::timeout(learn_timeout(up), probe(up, credentials)).await {
        Ok(probed) => probed,
        Err(_) => Err(AdapterError::Timeout),
    };
    match probed {
        Ok(era) => {
            tracing::info!(upstream = %up.url(), modern = era == Era::Modern, "learnt the upstream's protocol era");
            known.era = Some(era);
            Ok(era)
        }
        Err(e @ (AdapterError::Timeout | AdapterError::Unreachable(_))) => {
            let backoff = known
                .backoff
                .saturating_mul(2)
                .clamp(PROBE_BACKOFF_MIN, PROBE_BACKOFF_MAX);
            known.backoff = backoff;
            known.quiet_until = Some(tokio::time::Instant::now() + backoff);
            tracing::warn!(error = %e, upstream = %up.url(), retry_in_ms = backoff.as_millis() as u64, "the upstream did not answer the era probe: requests go as sent until the next probe");
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// The caller's adapter session: the one its credentials have, made now if none — or, with
/// `stale`, a new handshake replacing that one (the upstream forgot it).
async fn session(
    up: &Upstream,
    credentials: &Credentials,
    stale: Option<&Arc<Handshake>>,
) -> Result<Arc<Handshake>, AdapterError> {
    let (slot, evicted) = up.adapter_sessions().slot(credentials);
    for old in evicted {
        // Closing it upstream holds a connection too. At the bound it is left to expire there
        // (as with an upstream that does not support DELETE): callers cycling credentials cannot
        // make the replica open connections past the bound.
        match up.in_flight.permit() {
            Some(permit) => {
                tokio::spawn(close(up.client().clone(), up.url().clone(), old, permit));
            }
            None => {
                tracing::debug!(upstream = %up.url(), "every upstream connection in use: an evicted bridge session is left to expire upstream");
            }
        }
    }
    // Only this caller's requests wait for its handshake.
    let mut current = slot.handshake.lock().await;
    if let Some(hs) = &*current {
        if stale.is_none_or(|stale| !Arc::ptr_eq(stale, hs)) {
            return Ok(hs.clone());
        }
    }
    let _permit = up
        .in_flight
        .try_acquire(up.url().as_str())
        .ok_or(AdapterError::Busy)?;
    let hs = tokio::time::timeout(learn_timeout(up), handshake(up, credentials))
        .await
        .map_err(|_| AdapterError::Timeout)??;
    let hs = Arc::new(hs);
    tracing::debug!(
        upstream = %up.url(),
        renewed = stale.is_some(),
        sessions = up.adapter_sessions().len(),
        "opened a bridge session"
    );
    *current = Some(hs.clone());
    Ok(hs)
}

/// Closes an evicted adapter session upstream (`DELETE` with its credentials; an upstream that
/// does not support it answers `405`, and its session expires there on its own).
async fn close(
    client: reqwest::Client,
    url: reqwest::Url,
    slot: Arc<AdapterSlot>,
    _permit: OwnedSemaphorePermit,
) {
    let Some(hs) = slot.handshake.lock().await.take() else {
        return;
    };
    let Some(session) = hs.session.as_deref() else {
        return;
    };
    let mut req = client
        .delete(url.clone())
        .header(MCP_SESSION_ID, session)
        .header(MCP_PROTOCOL_VERSION, hs.version.as_str())
        .timeout(LEARN_TIMEOUT);
    for (name, value) in &slot.credentials {
        req = req.header(name, value);
    }
    match req.send().await {
        Ok(resp) => {
            tracing::debug!(upstream = %url, status = resp.status().as_u16(), "closed an evicted bridge session");
        }
        Err(error) => {
            tracing::warn!(%error, upstream = %url, "cannot close an evicted bridge session");
        }
    }
}

fn request(
    up: &Upstream,
    version: &str,
    session: Option<&str>,
    credentials: &Credentials,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut req = up
        .client()
        .post(up.url().clone())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header(MCP_PROTOCOL_VERSION, version)
        .body(body.to_string());
    for (name, value) in credentials {
        req = req.header(name, value);
    }
    if let Some(s) = session {
        req = req.header(MCP_SESSION_ID, s);
    }
    req
}

/// The upstream's era, from its answer to a 2026-07-28 `server/discover`: an error when the
/// answer does not say (see [`era_of`]), so that the era is learnt on a later request.
async fn probe(up: &Upstream, credentials: &Credentials) -> Result<Era, AdapterError> {
    let body = json!({
        "jsonrpc": "2.0", "id": "mcp-fanout-probe", "method": DISCOVER,
        "params": { "_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {}
        } }
    });
    let resp = request(up, MODERN, None, credentials, &body)
        .header("mcp-method", DISCOVER)
        .send()
        .await?;
    let status = resp.status();
    if !(status.is_success() || status == StatusCode::BAD_REQUEST) {
        // Not an answer about the era (a failure, this caller's credentials refused, a rate
        // limit): learn it on a later request.
        return Err(AdapterError::Probe(status));
    }
    let msg = first_message(resp, up.rewrite_max_bytes).await?;
    era_of(status, &msg).ok_or(AdapterError::NoEra(status))
}

/// What a `server/discover` answer (`2xx` or `400`, its first JSON-RPC message) says of the
/// upstream's era: `Modern` for a result listing 2026-07-28; `Legacy` only on a positive
/// 2025-era sign — a result listing other versions, or a JSON-RPC error refusing the method or
/// the 2026 request: `-32601` (method not found), `-32600` / `-32602` (the Python SDK 1.x:
/// "Missing session ID", "Unsupported protocol version", a validation error), or `-32000` saying
/// so (the TypeScript SDK 1.x: "Unsupported protocol version", "Mcp-Session-Id header is
/// required", "Server not initialized"). Anything else (a `400` from an authorization layer for a
/// malformed credential, say) is `None`: not cached, so that one caller's request cannot make a
/// 2026 upstream 2025-era for the replica's life.
fn era_of(status: StatusCode, msg: &Value) -> Option<Era> {
    if status.is_success() {
        if let Some(versions) = msg
            .pointer("/result/supportedVersions")
            .and_then(Value::as_array)
        {
            let modern = versions.iter().any(|v| v.as_str() == Some(MODERN));
            return Some(if modern { Era::Modern } else { Era::Legacy });
        }
    }
    if msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return None;
    }
    let error = msg.get("error")?;
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let legacy = match error.get("code").and_then(Value::as_i64)? {
        // -32602 invalid params, -32601 method not found, -32600 invalid request.
        -32602..=-32600 => true,
        -32000 => ["protocol version", "session", "not initialized"]
            .iter()
            .any(|sign| message.contains(sign)),
        _ => false,
    };
    legacy.then_some(Era::Legacy)
}

/// The adapter's `initialize` + `notifications/initialized` with the upstream, with the caller's
/// credentials.
async fn handshake(up: &Upstream, credentials: &Credentials) -> Result<Handshake, AdapterError> {
    let init = json!({
        "jsonrpc": "2.0", "id": "mcp-fanout-bridge", "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "mcp-fanout-bridge", "version": env!("CARGO_PKG_VERSION") }
        }
    });
    let resp = request(up, HANDSHAKE_VERSION, None, credentials, &init)
        .send()
        .await?;
    let session = resp
        .headers()
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = resp.status();
    let msg = first_message(resp, up.rewrite_max_bytes).await?;
    let Some(result) = msg.get("result").filter(|_| status.is_success()) else {
        return Err(AdapterError::NoResult(format!("{status}: {msg}")));
    };
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or(HANDSHAKE_VERSION)
        .to_string();
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    request(up, &version, session.as_deref(), credentials, &initialized)
        .send()
        .await?;
    Ok(Handshake {
        version,
        session,
        result: result.clone(),
    })
}

/// The first JSON-RPC message of an answer: its JSON body, or the first `data:` of its SSE
/// body that is an answer (read only until then: an SSE answer may stay open). At most `max`
/// bytes are read ([`AdapterError::TooLarge`] past them): the upstream's answer is held in memory.
async fn first_message(resp: reqwest::Response, max: usize) -> Result<Value, AdapterError> {
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(AdapterError::TooLarge(max));
    }
    // Whether the limit ended the body (the SSE decoder reports it as any other body error).
    let over = Arc::new(AtomicBool::new(false));
    let mut read = 0usize;
    let chunks = resp.bytes_stream().map({
        let over = over.clone();
        move |chunk| {
            let chunk = chunk.map_err(AdapterError::Unreachable)?;
            read = read.saturating_add(chunk.len());
            if read > max {
                over.store(true, Ordering::Relaxed);
                return Err(AdapterError::TooLarge(max));
            }
            Ok(chunk)
        }
    });
    if !sse {
        let body: Vec<bytes::Bytes> = chunks.try_collect().await?;
        return Ok(serde_json::from_slice(&body.concat()).unwrap_or(Value::Null));
    }
    let mut messages = mcp_fanout_client::sse::messages(Box::pin(chunks));
    while let Some(msg) = messages.next().await {
        match msg {
            Ok(v) if v.get("result").is_some() || v.get("error").is_some() => return Ok(v),
            Ok(_) => {}
            Err(_) if over.load(Ordering::Relaxed) => return Err(AdapterError::TooLarge(max)),
            Err(e) => return Err(AdapterError::NoResult(format!("its stream failed: {e}"))),
        }
    }
    Ok(Value::Null)
}

/// The client's headers with the handshake's protocol version and session.
fn adapted_headers(headers: &HeaderMap, hs: &Handshake) -> HeaderMap {
    let mut out = headers.clone();
    if let Ok(v) = HeaderValue::from_str(&hs.version) {
        out.insert(HeaderName::from_static(MCP_PROTOCOL_VERSION), v);
    }
    out.remove(MCP_SESSION_ID);
    if let Some(v) = hs
        .session
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        out.insert(HeaderName::from_static(MCP_SESSION_ID), v);
    }
    out
}

/// `server/discover` answered for a 2025-era upstream, from the proxy's handshake.
fn discover_answer(up: &Upstream, hs: &Handshake, body: &Bytes) -> Response {
    let id = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|m| m.get("id").cloned())
        .unwrap_or(Value::Null);
    let mut result = json!({
        "supportedVersions": [MODERN],
        "capabilities": hs.result.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        "resultType": "complete",
        "cacheScope": "private",
        "ttlMs": 0,
    });
    if let Some(info) = hs.result.get("serverInfo") {
        result["_meta"] = json!({ "io.modelcontextprotocol/serverInfo": info });
    }
    if let Some(instructions) = hs.result.get("instructions") {
        result["instructions"] = instructions.clone();
    }
    let mut msg = json!({ "jsonrpc": "2.0", "id": id, "result": result });
    if up.advertises_list_changed() {
        proxy::advertise_list_changed(&mut msg);
    }
    (StatusCode::OK, axum::Json(msg)).into_response()
}

/// A 2025 result made a valid 2026-07-28 one: `resultType` (absent = `complete`).
fn complete_result(msg: &mut Value) -> bool {
    match msg.get_mut("result").and_then(Value::as_object_mut) {
        Some(result) if !result.contains_key("resultType") => {
            result.insert("resultType".into(), "complete".into());
            true
        }
        _ => false,
    }
}

/// [`complete_result`], plus the caching directives of a cacheable result (`ttlMs: 0`,
/// `cacheScope: "private"`: immediately stale, never shared).
fn complete_cacheable_result(msg: &mut Value) -> bool {
    let mut changed = complete_result(msg);
    if let Some(result) = msg.get_mut("result").and_then(Value::as_object_mut) {
        for (key, default) in [("ttlMs", json!(0)), ("cacheScope", json!("private"))] {
            if !result.contains_key(key) {
                result.insert(key.into(), default);
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_2025_era_refusal_of_discover_makes_an_upstream_legacy() {
        let ok = StatusCode::OK;
        let bad = StatusCode::BAD_REQUEST;
        let error = |code: i64, message: &str| json!({"jsonrpc": "2.0", "id": "server-error", "error": {"code": code, "message": message}});
        let result = |versions: Value| json!({"jsonrpc": "2.0", "id": 1, "result": {"supportedVersions": versions}});
        assert_eq!(era_of(ok, &result(json!([MODERN]))), Some(Era::Modern));
        assert_eq!(
            era_of(ok, &result(json!(["2025-11-25"]))),
            Some(Era::Legacy)
        );
        // The Python SDK 1.x (stateful, stateless), the TypeScript SDK 1.x, a plain JSON-RPC server.
        for (status, msg) in [
            (bad, error(-32600, "Bad Request: Missing session ID")),
            (bad, error(-32600, "Bad Request: Unsupported protocol version: 2026-07-28. Supported versions: 2025-11-25")),
            (bad, error(-32000, "Bad Request: Unsupported protocol version: 2026-07-28 (supported versions: 2025-11-25)")),
            (bad, error(-32000, "Bad Request: Mcp-Session-Id header is required")),
            (bad, error(-32000, "Bad Request: Server not initialized")),
            (ok, error(-32601, "Method not found")),
        ] {
            assert_eq!(era_of(status, &msg), Some(Era::Legacy), "{msg}");
        }
        // Not a sign of the era: learnt later.
        for (status, msg) in [
            (
                bad,
                json!({"error": "invalid_request", "error_description": "malformed Authorization"}),
            ),
            (bad, Value::Null),
            (bad, error(-32000, "rate limited")),
            (ok, Value::Null),
            (ok, json!({"jsonrpc": "2.0", "id": 1, "result": {}})),
        ] {
            assert_eq!(era_of(status, &msg), None, "{status} {msg}");
        }
    }

    #[test]
    fn results_get_the_fields_the_2026_wire_requires() {
        let mut list = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}});
        assert!(complete_cacheable_result(&mut list));
        assert_eq!(
            list["result"],
            json!({"tools": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private"})
        );
        assert!(!complete_cacheable_result(&mut list), "already complete");
        let mut call = json!({"jsonrpc": "2.0", "id": 2, "result": {"content": []}});
        assert!(complete_result(&mut call));
        assert_eq!(
            call["result"],
            json!({"content": [], "resultType": "complete"})
        );
        let mut error = json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -1, "message": "x"}});
        assert!(!complete_result(&mut error));
        let mut note = json!({"jsonrpc": "2.0", "method": "notifications/message"});
        assert!(!complete_cacheable_result(&mut note));
    }
}
