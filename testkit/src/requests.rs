//! Requests that must succeed, with the check in the helper: an SSE stream that must open as a
//! `200` event stream, a `/poll` with extra headers, a run of publishes.

use std::time::Duration;

use crate::bodies::note;
use crate::http::HttpResponse;
use crate::poll::PollAnswer;
use crate::replica::Replica;
use crate::sse::{SseConn, SseRequest};

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

/// `GET /poll?<query>` on the public address with extra headers (a long-poll may take 75 s).
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

/// Publishes `n` notifications [`note`]`(method, tag, 0..n)` on `r`, one request each; their ids,
/// in order. Panics on a failed publish.
pub async fn publish_n(r: &Replica, method: &str, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            r.publish_ok(&note(method, tag, i))
                .await
                .unwrap_or_else(|e| panic!("{}: publish {tag} {i}: {e}", r.label())),
        );
    }
    ids
}

/// `GET /poll?<query>` on `r`; panics unless it answers `200` with a well-formed body.
pub async fn poll_answer(r: &Replica, query: &str) -> PollAnswer {
    let resp = r
        .poll(query)
        .await
        .unwrap_or_else(|e| panic!("GET /poll?{query} on {}: {e}", r.label()));
    assert_eq!(
        resp.status,
        200,
        "GET /poll?{query} on {}: {}",
        r.label(),
        resp.text()
    );
    PollAnswer::parse(&resp.body).unwrap_or_else(|e| {
        panic!(
            "/poll?{query} on {}: answer {:?}: {e}",
            r.label(),
            resp.text()
        )
    })
}
