//! Bad-input tables: raw requests written byte for byte, each with the status and error code it
//! must get (in the one error shape), run together so a failure lists every mismatch at once; and
//! the check that the service still serves afterwards.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::bodies::body;
use crate::error_shape::check_raw_error_in;
use crate::http::RawRequest;
use crate::replica::Replica;
use crate::requests::open_stream_with;
use crate::sse::SseRequest;
use crate::wait::SOON;

/// `POST /admin/publish` with `Authorization: Bearer <token>` and a JSON content type, body as is.
pub fn publish_raw(token: &str, body: impl Into<Vec<u8>>) -> RawRequest {
    RawRequest::new("POST", "/admin/publish")
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .body(body)
}

/// [`publish_raw`] of a JSON value.
pub fn publish(token: &str, body: &Value) -> RawRequest {
    publish_raw(token, body.to_string())
}

/// `GET <path>` with `Accept: text/event-stream`.
pub fn sse(path: &str) -> RawRequest {
    RawRequest::new("GET", path).header("Accept", "text/event-stream")
}

/// One bad request and what it must get.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub req: RawRequest,
    pub status: u16,
    /// Acceptable codes: one, except where contract §4.1 leaves two equally valid readings.
    pub codes: Vec<&'static str>,
    /// `error.field` it must name.
    pub field: Option<&'static str>,
    /// `error.index` it must name.
    pub index: Option<u64>,
    /// A header the answer must carry.
    pub header: Option<&'static str>,
    /// Text `error.message` must contain.
    pub message: Option<String>,
}

/// A case answered `status` with `code`.
pub fn case(name: impl Into<String>, req: RawRequest, status: u16, code: &'static str) -> Case {
    Case {
        name: name.into(),
        req,
        status,
        codes: vec![code],
        field: None,
        index: None,
        header: None,
        message: None,
    }
}

impl Case {
    /// Also accepts `code`.
    pub fn or_code(mut self, code: &'static str) -> Self {
        self.codes.push(code);
        self
    }

    /// The error must name `field`.
    pub fn field(mut self, f: &'static str) -> Self {
        self.field = Some(f);
        self
    }

    /// The error must name `index`.
    pub fn index(mut self, i: u64) -> Self {
        self.index = Some(i);
        self
    }

    /// `error.message` must contain `text`.
    pub fn message_contains(mut self, text: impl Into<String>) -> Self {
        self.message = Some(text.into());
        self
    }

    /// The answer must carry header `h`.
    pub fn with_header(mut self, h: &'static str) -> Self {
        self.header = Some(h);
        self
    }

    /// Sends the case to `addr`; `Err` with everything wrong about the answer.
    async fn check(&self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        let resp = self
            .req
            .send(addr, timeout)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let body = check_raw_error_in(&resp, self.status, &self.codes)?;
        let mut wrong = Vec::new();
        if let Some(f) = self.field {
            if body["error"]["field"] != json!(f) {
                wrong.push(format!("error.field should be {f:?}: {body}"));
            }
        }
        if let Some(i) = self.index {
            if body["error"]["index"] != json!(i) {
                wrong.push(format!("error.index should be {i}: {body}"));
            }
        }
        if let Some(m) = &self.message {
            if !body["error"]["message"]
                .as_str()
                .is_some_and(|text| text.contains(m.as_str()))
            {
                wrong.push(format!("error.message should contain {m:?}: {body}"));
            }
        }
        if let Some(h) = self.header {
            if resp.header(h).is_none() {
                wrong.push(format!("missing header {h}"));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }
}

/// Sends every case to `addr` (each within `timeout`); collects every mismatch, then fails once
/// with all of them, naming the table `what`.
pub async fn run_cases(what: &str, addr: SocketAddr, cases: Vec<Case>, timeout: Duration) {
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = c.check(addr, timeout).await {
            failures.push(format!("{}: {e}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {what} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

/// Requests that must be accepted: each must answer `200`.
pub async fn run_ok(addr: SocketAddr, cases: Vec<(String, RawRequest)>, timeout: Duration) {
    let mut failures = Vec::new();
    for (name, req) in cases {
        match req.send(addr, timeout).await {
            Ok(r) if r.status() == 200 => {}
            Ok(r) => failures.push(format!(
                "{name}: expected 200, got {} {}",
                r.status(),
                r.text()
            )),
            Err(e) => failures.push(format!("{name}: request failed: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "boundary cases that must be accepted were not:\n  {}",
        failures.join("\n  ")
    );
}

/// The service still serves: `/healthz` is `200`, a stream opens (with `headers`), and a publish
/// is delivered to it.
pub async fn still_serves(r: &Replica, headers: &[(&str, &str)]) {
    let h = r.admin_get("/healthz").await.expect("healthz");
    assert_eq!(h.status, 200, "/healthz after bad input");
    let req = headers
        .iter()
        .fold(SseRequest::mcp(), |q, (n, v)| q.header(n, v));
    let mut s = open_stream_with(r, req, "after the bad input").await;
    r.wait_subscribers(1, SOON)
        .await
        .expect("subscriber registered");
    let id = r
        .publish_ok(&body("still", 0))
        .await
        .expect("a normal publish still works");
    let f = s.next_event(SOON).await.expect("event").expect("open");
    assert_eq!(f.id.as_deref(), Some(id.as_str()), "and is delivered");
}
