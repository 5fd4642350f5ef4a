//! Shared bits of the identity, targeting and hardening tests (issue 4) and the cluster view
//! (issue 5): deployments on a fresh Postgres database, subscriber requests with identity headers,
//! JWT minting, an independent statement of the visibility rule (SPEC §3.5) to compute what each
//! subscriber must get, the one error shape, and the `openssl` CLI.
//!
//! Included by path (`#[path = "common/identity.rs"] mod identity;`) next to `mod common;`, so test
//! files that do not use it are not affected.
#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use mcp_fanout_testkit::postgres::{self, PgServer};
use mcp_fanout_testkit::{
    EventId, HttpResponse, PollAnswer, RawResponse, Replica, SseConn, SseRequest,
};
use serde_json::{json, Value};

use crate::common::{bin, SOON};

/// The admin token every replica of these tests is started with.
pub const ADMIN_TOKEN: &str = "identity-admin-7f3a";

/// The default tenant header of header mode.
pub const TENANT_HEADER: &str = "x-fanout-tenant";

// ---------------------------------------------------------------------------------------------
// Deployments.

/// A deployment's database: a fresh database on the shared Postgres and a fresh schema name.
#[derive(Debug, Clone)]
pub struct Db {
    pub server: PgServer,
    pub db: String,
    pub schema: String,
}

impl Db {
    /// A fresh database on the shared test server.
    pub async fn fresh(schema_prefix: &str) -> Db {
        let (server, db) = postgres::shared_database()
            .await
            .expect("a database on the shared Postgres");
        Db {
            server: server.clone(),
            db,
            schema: postgres::unique_name(schema_prefix),
        }
    }

    /// The pool URL.
    pub fn url(&self) -> String {
        self.server.url(&self.db)
    }

    /// `DATABASE_URL`, `FANOUT_SCHEMA`, the admin token, then `extra` (which may override them).
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("DATABASE_URL".to_string(), self.url()),
            ("FANOUT_SCHEMA".to_string(), self.schema.clone()),
        ];
        env.extend(with_admin(extra));
        dedup(env)
    }

    /// Starts `n` replicas of this deployment at once and waits until every one is ready.
    pub async fn replicas(&self, prefix: &str, n: usize, extra: &[(&str, &str)]) -> Vec<Replica> {
        let env = self.env(extra);
        join_all((0..n).map(|i| {
            let env = env.clone();
            async move { start_owned(&format!("{prefix}{i}"), &env).await }
        }))
        .await
    }

    /// A client connection to the database.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.server
            .connect(&self.db)
            .await
            .expect("connect to the test database")
    }

    /// `SELECT <schema>.publish(method, params, tenant, session)`.
    pub async fn sql_publish(
        &self,
        client: &tokio_postgres::Client,
        body: &Value,
        tenant: Option<&str>,
        session: Option<&str>,
    ) -> Result<String, String> {
        let method = body["method"].as_str().expect("a method");
        postgres::sql_publish(
            client,
            &self.schema,
            method,
            body.get("params"),
            tenant,
            session,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// `extra` plus `FANOUT_ADMIN_TOKENS` (unless `extra` sets it).
pub fn with_admin(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![("FANOUT_ADMIN_TOKENS".to_string(), ADMIN_TOKEN.to_string())];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    dedup(env)
}

/// Later entries win.
fn dedup(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        out.retain(|(ok, _)| *ok != k);
        out.push((k, v));
    }
    out
}

/// Starts a replica with an owned environment and waits until it is ready.
pub async fn start_owned(label: &str, env: &[(String, String)]) -> Replica {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Replica::start(bin(), label, &pairs)
        .await
        .unwrap_or_else(|e| panic!("replica `{label}` should start and become ready: {e}"))
}

/// A memory-mode replica with the admin token plus `extra`.
pub async fn start_memory(label: &str, extra: &[(&str, &str)]) -> Replica {
    start_owned(label, &with_admin(extra)).await
}

// ---------------------------------------------------------------------------------------------
// Who a subscriber is, and what it may see.

/// A subscriber's identity as the service should derive it, plus the headers that present it.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// A label for messages.
    pub label: String,
    /// The tenant the service should derive (header mode: the header; JWT mode: the claim).
    pub tenant: Option<String>,
    /// `Mcp-Session-Id`.
    pub session: Option<String>,
    /// Extra request headers (the tenant header, `Authorization`).
    pub headers: Vec<(String, String)>,
}

impl Who {
    /// Header mode: the tenant header carries `tenant`.
    pub fn header_mode(label: &str, tenant: Option<&str>, session: Option<&str>) -> Who {
        let mut headers = Vec::new();
        if let Some(t) = tenant {
            headers.push((TENANT_HEADER.to_string(), t.to_string()));
        }
        Who {
            label: label.to_string(),
            tenant: tenant.map(ToString::to_string),
            session: session.map(ToString::to_string),
            headers,
        }
    }

    /// JWT mode: `Authorization: Bearer <token>`; `tenant` is what the token's claim says.
    pub fn jwt(label: &str, token: &str, tenant: Option<&str>, session: Option<&str>) -> Who {
        Who {
            label: label.to_string(),
            tenant: tenant.map(ToString::to_string),
            session: session.map(ToString::to_string),
            headers: vec![("Authorization".to_string(), format!("Bearer {token}"))],
        }
    }

    /// Every header this subscriber sends (identity and session).
    pub fn all_headers(&self) -> Vec<(String, String)> {
        let mut h = self.headers.clone();
        if let Some(s) = &self.session {
            h.push(("Mcp-Session-Id".to_string(), s.clone()));
        }
        h
    }

    /// `GET /mcp` with this identity.
    pub fn sse(&self) -> SseRequest {
        self.all_headers()
            .iter()
            .fold(SseRequest::mcp(), |req, (n, v)| req.header(n, v))
    }
}

/// Where an event was published to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub tenant: Option<String>,
    pub session: Option<String>,
}

impl Target {
    pub fn new(tenant: Option<&str>, session: Option<&str>) -> Target {
        Target {
            tenant: tenant.map(ToString::to_string),
            session: session.map(ToString::to_string),
        }
    }

    /// The visibility rule of SPEC §3.5, stated independently of the service: a tenant-targeted
    /// event reaches only that tenant's subscribers; a session-targeted one only that session's;
    /// both set, both must match; neither, everyone.
    pub fn visible_to(&self, who: &Who) -> bool {
        let tenant_ok = match &self.tenant {
            None => true,
            Some(t) => who.tenant.as_deref() == Some(t.as_str()),
        };
        let session_ok = match &self.session {
            None => true,
            Some(s) => who.session.as_deref() == Some(s.as_str()),
        };
        tenant_ok && session_ok
    }

    /// `tenant` / `session` members for a publish body.
    pub fn apply(&self, mut body: Value) -> Value {
        if let Some(t) = &self.tenant {
            body["tenant"] = json!(t);
        }
        if let Some(s) = &self.session {
            body["session"] = json!(s);
        }
        body
    }
}

/// One published event: its id and target.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub target: Target,
}

/// The ids of `events` that `who` may see, in order.
pub fn visible_ids(events: &[Published], who: &Who) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.target.visible_to(who))
        .map(|e| e.id.clone())
        .collect()
}

/// The seq of an event id.
pub fn seq_of(id: &str) -> u64 {
    id.parse::<EventId>()
        .unwrap_or_else(|e| panic!("{id:?} is not an event id: {e}"))
        .seq
}

/// The event ids of SSE frames that carry an id and non-empty data.
pub fn frame_ids(frames: &[mcp_fanout_testkit::Frame]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.data.as_deref().is_some_and(|d| !d.is_empty()))
        .filter_map(|f| f.id.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// Opens `GET /mcp` as `who` on `r`; panics unless it is a `200` event stream.
pub async fn open_stream(r: &Replica, who: &Who) -> SseConn {
    open_stream_with(r, who.sse(), &who.label).await
}

/// Opens an SSE request on `r`; panics unless it is a `200` event stream.
pub async fn open_stream_with(r: &Replica, req: SseRequest, label: &str) -> SseConn {
    let conn = r
        .subscribe(&req)
        .await
        .unwrap_or_else(|e| panic!("{label}: GET /mcp on {}: {e}", r.label()));
    assert_eq!(
        conn.status(),
        200,
        "{label}: GET /mcp on {} status",
        r.label()
    );
    assert_eq!(
        conn.header("content-type"),
        Some("text/event-stream"),
        "{label}: an event stream"
    );
    conn
}

/// `GET /poll?<query>` on the public address with extra headers.
pub async fn poll_with(r: &Replica, query: &str, headers: &[(String, String)]) -> HttpResponse {
    let mut req = r
        .http()
        .get(r.public_url(&format!("/poll?{query}")))
        .timeout(Duration::from_secs(75));
    for (n, v) in headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /poll?{query} on {}: {e}", r.label()));
    HttpResponse::read(resp)
        .await
        .unwrap_or_else(|e| panic!("reading /poll?{query} on {}: {e}", r.label()))
}

/// `GET /poll` as `who`; panics unless it answers `200` with a well-formed body.
pub async fn poll_ok(r: &Replica, who: &Who, query: &str) -> PollAnswer {
    let resp = poll_with(r, query, &who.all_headers()).await;
    assert_eq!(
        resp.status,
        200,
        "{}: GET /poll?{query} on {}: {}",
        who.label,
        r.label(),
        resp.text()
    );
    PollAnswer::parse(&resp.body)
        .unwrap_or_else(|e| panic!("{}: /poll answer {:?}: {e}", who.label, resp.text()))
}

/// `POST /admin/publish` of `target.apply(body)`; returns the id.
pub async fn publish_to(r: &Replica, body: Value, target: &Target) -> Published {
    let body = target.apply(body);
    let id = r
        .publish_ok(&body)
        .await
        .unwrap_or_else(|e| panic!("publish {body} on {}: {e}", r.label()));
    Published {
        id,
        target: target.clone(),
    }
}

/// A small notification body.
pub fn body(tag: &str, n: usize) -> Value {
    json!({ "method": "notifications/test/targeted", "params": { "tag": tag, "n": n } })
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Checks the one error shape (`{"error":{"code","message","field"?,"index"?}}`, JSON) and the
/// status and code; returns the body, or what is wrong.
pub fn check_error(status: u16, code: &str, got_status: u16, text: &str) -> Result<Value, String> {
    if got_status != status {
        return Err(format!(
            "status {got_status}, expected {status}; body {text}"
        ));
    }
    let body: Value = serde_json::from_str(text)
        .map_err(|e| format!("the error body is not JSON ({e}): {text:?}"))?;
    let err = body
        .get("error")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("no `error` object: {body}"))?;
    if body.as_object().map(|o| o.len()) != Some(1) {
        return Err(format!("more than `error` at the top: {body}"));
    }
    if let Some(key) = err
        .keys()
        .find(|k| !["code", "message", "field", "index"].contains(&k.as_str()))
    {
        return Err(format!("unexpected member {key:?} in {body}"));
    }
    if err.get("code") != Some(&json!(code)) {
        return Err(format!("code is not {code:?}: {body}"));
    }
    if err
        .get("message")
        .and_then(Value::as_str)
        .is_none_or(|m| m.trim().is_empty())
    {
        return Err(format!("no human message: {body}"));
    }
    Ok(body)
}

/// [`check_error`], panicking.
pub fn expect_error(what: &str, status: u16, code: &str, got_status: u16, text: &str) -> Value {
    check_error(status, code, got_status, text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// [`check_error`] on a raw answer, also checking a JSON content type.
pub fn check_raw_error(resp: &RawResponse, status: u16, code: &str) -> Result<Value, String> {
    let ct = resp.header("content-type").unwrap_or_default();
    if !ct.starts_with("application/json") {
        return Err(format!(
            "content type {ct:?}, expected JSON ({} {})",
            resp.status(),
            resp.text()
        ));
    }
    check_error(status, code, resp.status(), &resp.text())
}

/// `error.code` of a JSON error body, if it is one.
pub fn error_code_of(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text)
        .ok()?
        .get("error")?
        .get("code")?
        .as_str()
        .map(ToString::to_string)
}

/// [`expect_error`] on a reqwest answer, also checking a JSON content type.
pub fn expect_http_error(what: &str, resp: &HttpResponse, status: u16, code: &str) -> Value {
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{what}: JSON content type, got {ct:?} ({} {})",
        resp.status,
        resp.text()
    );
    expect_error(what, status, code, resp.status.as_u16(), &resp.text())
}

/// [`check_raw_error`], panicking.
pub fn expect_raw_error(what: &str, resp: &RawResponse, status: u16, code: &str) -> Value {
    check_raw_error(resp, status, code).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Reads a non-`200` SSE answer's body and checks it is the given error.
pub async fn expect_sse_error(what: &str, mut conn: SseConn, status: u16, code: &str) -> Value {
    let got = conn.status();
    let ct = conn.header("content-type").unwrap_or_default().to_string();
    let body = conn
        .body_to_end(SOON)
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the error body: {e}"));
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        ct.starts_with("application/json"),
        "{what}: JSON content type, got {ct:?} ({got} {text})"
    );
    expect_error(what, status, code, got, &text)
}

// ---------------------------------------------------------------------------------------------
// JWT.

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// An HS256 token over `claims` signed with `secret`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign an HS256 token")
}

/// A token with the given algorithm and key (and optional `kid`).
pub fn sign(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    kid: Option<&str>,
    claims: &Value,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(ToString::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign a token")
}

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned token (`alg: none`) over `claims`.
pub fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

// ---------------------------------------------------------------------------------------------
// openssl.

/// Runs `openssl args…` in `dir`; panics with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("running openssl {args:?} (is the openssl CLI installed?): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64url_matches_the_rfc_vectors() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(b"foob"), "Zm9vYg");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn the_rule() {
        let a = Who::header_mode("a", Some("A"), Some("s1"));
        let anon = Who::header_mode("n", None, None);
        assert!(Target::default().visible_to(&a) && Target::default().visible_to(&anon));
        assert!(Target::new(Some("A"), None).visible_to(&a));
        assert!(!Target::new(Some("A"), None).visible_to(&anon));
        assert!(Target::new(None, Some("s1")).visible_to(&a));
        assert!(!Target::new(Some("B"), Some("s1")).visible_to(&a));
        assert!(!Target::new(Some("A"), Some("s2")).visible_to(&a));
    }
}
