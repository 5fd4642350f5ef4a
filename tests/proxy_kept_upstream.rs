//! Proxy mode keeps one upstream connection for each HTTP/1.x client connection, spoken to by
//! that connection's task (docs/proxy.md, "Upstream connections"; `http::kept_upstream`):
//!
//! - two client connections taking turns each keep their own upstream connection (the pooled
//!   client handed the one idle connection to whichever asked next);
//! - the upstream connection is closed with its client connection, and when that connection's
//!   HTTP side ends with an event stream handed off (the pool kept idle ones for 30 s);
//! - one the upstream closes after an answer is replaced, the next request answered without an
//!   error;
//! - a request the upstream took and then closed on without answering is answered `502` and
//!   never sent twice (only one whose write failed goes again, on a new connection);
//! - a kept connection holds a permit of `FANOUT_UPSTREAM_MAX_CONNECTIONS` while idle too (the
//!   requests on it none of their own), so the replica's upstream connections stay within the
//!   bound when HTTP/2 clients' requests go on the pooled client beside them.
//!
//! The upstream is the test kit's recording server: each request it records carries the address
//! of the upstream connection it came on, and it counts the connections open to it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mcp_fanout_testkit::h2c::reqwest_h2c;
use mcp_fanout_testkit::upstream::{Canned, Recorded, RecordingUpstream, Reply};
use mcp_fanout_testkit::{start_memory, wait_until, Replica};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const STEP: Duration = Duration::from_secs(20);

/// One HTTP/1.1 client connection to the replica, and the task driving it.
struct Client {
    send: http1::SendRequest<Full<Bytes>>,
    conn: JoinHandle<()>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { send, conn }
    }

    /// A `tools/call` with JSON-RPC id `id`: its status and body.
    async fn call(&mut self, id: &str) -> (u16, Value) {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 1, "b": 2}}});
        let req = hyper::Request::post("/mcp")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.send.ready().await.unwrap();
        let resp = tokio::time::timeout(STEP, self.send.send_request(req))
            .await
            .expect("an answer in time")
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn close(self) {
        drop(self.send);
        self.conn.abort();
    }
}

/// Answers each call with its own id.
fn echo(log: &[Recorded]) -> Vec<u8> {
    let id = log
        .last()
        .map(|r| r.json()["id"].clone())
        .unwrap_or(Value::Null);
    Canned::json(&json!({"jsonrpc": "2.0", "id": id, "result": {"isError": false}})).to_bytes()
}

/// The upstream connections (their client-side addresses) the calls with ids starting with
/// `prefix` came on.
fn connections_of(up: &RecordingUpstream, prefix: &str) -> BTreeSet<SocketAddr> {
    up.received()
        .iter()
        .filter(|r| {
            r.json()["id"]
                .as_str()
                .is_some_and(|id| id.starts_with(prefix))
        })
        .map(|r| r.peer)
        .collect()
}

/// Waits until `n` connections are open to `up` (each closed by the replica counted at once).
async fn wait_for_connections(up: &RecordingUpstream, n: usize, what: &str) {
    wait_until(what, STEP, || async move { up.open_connections() == n })
        .await
        .unwrap();
}

/// A memory-mode replica in proxy mode in front of `up`, with `extra` settings.
async fn proxy_for(label: &str, up: &RecordingUpstream, extra: &[(&str, &str)]) -> Replica {
    let url = up.url("/mcp");
    let mut env = vec![("FANOUT_UPSTREAM", url.as_str())];
    env.extend_from_slice(extra);
    start_memory(label, &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_connection_keeps_its_own_upstream_connection_and_closes_it_with_itself() {
    let up = RecordingUpstream::scripted(|log| Reply::Answer(echo(log)))
        .await
        .unwrap();
    let r = proxy_for("kept-upstream", &up, &[]).await;
    let mut a = Client::connect(r.public_addr()).await;
    let mut b = Client::connect(r.public_addr()).await;
    // Taking turns: with one pool, the idle connection would go to whichever asks next.
    for i in 0..10 {
        for (client, name) in [(&mut a, "a"), (&mut b, "b")] {
            let id = format!("{name}-{i}");
            let (status, body) = client.call(&id).await;
            assert_eq!(status, 200, "{id}: {body}");
            assert_eq!(body["id"], id.as_str(), "{id} answered with its own id");
        }
    }
    let (on_a, on_b) = (connections_of(&up, "a-"), connections_of(&up, "b-"));
    assert_eq!(
        on_a.len(),
        1,
        "a's 10 calls came on one upstream connection: {on_a:?}"
    );
    assert_eq!(
        on_b.len(),
        1,
        "b's 10 calls came on one upstream connection: {on_b:?}"
    );
    assert_ne!(
        on_a, on_b,
        "a and b each have their own upstream connection"
    );
    assert_eq!(up.open_connections(), 2);

    // Each upstream connection ends with its client connection (no idle pool keeps it).
    a.close();
    wait_for_connections(&up, 1, "a's upstream connection to close with a").await;
    let (status, _) = b.call("b-after").await;
    assert_eq!(status, 200, "b goes on on its own upstream connection");
    assert_eq!(connections_of(&up, "b-"), on_b);
    b.close();
    wait_for_connections(&up, 0, "b's upstream connection to close with b").await;
    assert_eq!(r.get("/healthz").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_the_upstream_closes_is_replaced_without_an_error() {
    let up = RecordingUpstream::scripted(|log| Reply::AnswerAndClose(echo(log)))
        .await
        .unwrap();
    let r = proxy_for("kept-upstream-closed", &up, &[]).await;
    let mut c = Client::connect(r.public_addr()).await;
    for i in 0..10 {
        let id = format!("c-{i}");
        let (status, body) = c.call(&id).await;
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["id"], id.as_str());
        // The upstream closed it after answering; the replica closes its side as it sees that.
        wait_for_connections(
            &up,
            0,
            "the upstream connection the upstream ended to close",
        )
        .await;
    }
    assert_eq!(
        connections_of(&up, "c-").len(),
        10,
        "each call on a new upstream connection"
    );
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_upstream_took_and_closed_on_is_answered_502_and_never_sent_twice() {
    // The second request on the kept connection is read by the upstream, which then closes the
    // connection without a word: it may have acted on it, so it is not sent again.
    let up = RecordingUpstream::scripted(|log| {
        if log.len() == 2 {
            Reply::AnswerAndClose(Vec::new())
        } else {
            Reply::Answer(echo(log))
        }
    })
    .await
    .unwrap();
    let r = proxy_for("kept-upstream-taken", &up, &[]).await;
    let mut c = Client::connect(r.public_addr()).await;
    let (status, body) = c.call("t-0").await;
    assert_eq!((status, body["id"].as_str()), (200, Some("t-0")));
    let (status, body) = c.call("t-1").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body["id"], "t-1",
        "the error carries the request's id: {body}"
    );
    // The next request goes on a new connection and is answered.
    let (status, body) = c.call("t-2").await;
    assert_eq!((status, body["id"].as_str()), (200, Some("t-2")));
    let ids: Vec<String> = up
        .received()
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, ["t-0", "t-1", "t-2"], "each request received once");
    assert_eq!(connections_of(&up, "t-").len(), 2);
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_connection_closes_when_its_client_connection_hands_off_an_event_stream() {
    let up = RecordingUpstream::scripted(|log| Reply::Answer(echo(log)))
        .await
        .unwrap();
    let r = proxy_for("kept-upstream-handoff", &up, &[]).await;
    let mut c = Client::connect(r.public_addr()).await;
    let (status, _) = c.call("h-0").await;
    assert_eq!(status, 200);
    assert_eq!(up.open_connections(), 1);
    // The same connection opens the fan-out's event stream: hyper's side of it ends once the
    // head is out (the stream has a writer of its own), and the upstream connection with it.
    let get = hyper::Request::get("/mcp")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    c.send.ready().await.unwrap();
    let resp = tokio::time::timeout(STEP, c.send.send_request(get))
        .await
        .expect("the stream's head in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    wait_for_connections(&up, 0, "the upstream connection to close at the hand-off").await;
    // The stream itself goes on: an event published now reaches it.
    r.publish_ok(&json!({"method": "notifications/tools/list_changed"}))
        .await
        .unwrap();
    let mut seen = String::new();
    tokio::time::timeout(STEP, async {
        while !seen.contains("notifications/tools/list_changed") {
            let frame = stream.frame().await.expect("the stream is open").unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await
    .expect("the event on the handed-off stream");
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_upstream_connections_count_toward_the_bound_while_idle() {
    // Calls whose id starts with "held" get a head and never their body.
    let up = RecordingUpstream::scripted(|log| {
        let held = log
            .last()
            .and_then(|r| r.json()["id"].as_str().map(|id| id.starts_with("held")))
            .unwrap_or(false);
        if held {
            Reply::Stall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Reply::Answer(echo(log))
        }
    })
    .await
    .unwrap();
    // Four client connections, and so (the default bound) four upstream connections.
    let r = proxy_for(
        "kept-upstream-bound",
        &up,
        &[("FANOUT_MAX_CONNECTIONS", "4")],
    )
    .await;
    let mut a = Client::connect(r.public_addr()).await;
    let mut b = Client::connect(r.public_addr()).await;
    for (client, id) in [(&mut a, "a-0"), (&mut b, "b-0")] {
        assert_eq!(client.call(id).await.0, 200);
    }
    // a and b are idle, each keeping its upstream connection. An HTTP/2 client's two calls the
    // upstream holds take the third and fourth permits.
    let h2 = reqwest_h2c(STEP).unwrap();
    let url = r.public_url("/mcp");
    let call = |id: &'static str| {
        h2.post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": "add", "arguments": {}}})
                .to_string(),
            )
            .send()
    };
    let held = [tokio::spawn(call("held-1")), tokio::spawn(call("held-2"))];
    wait_until("the held calls to reach the upstream", STEP, || async {
        connections_of(&up, "held").len() == 2
    })
    .await
    .unwrap();
    assert_eq!(up.open_connections(), 4);
    let refused = call("h2-1").await.unwrap();
    assert_eq!(
        refused.status(),
        503,
        "past the bound: a and b's idle connections count"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["id"], "h2-1", "{body}");
    assert_eq!(up.open_connections(), 4, "no fifth upstream connection");
    // a leaves: its connection and permit with it, and the next call is forwarded.
    a.close();
    wait_for_connections(&up, 3, "a's upstream connection to close with a").await;
    let answered = call("h2-2").await.unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(b.call("b-1").await.0, 200, "b still has its own");
    for h in held {
        h.abort();
    }
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_bound_below_the_connection_cap_idle_clients_hold_no_upstream_connection() {
    // More client connections than the upstream may take calls at once (the bound's purpose):
    // connections are not kept, or idle clients would hold every permit and refuse the others.
    let up = RecordingUpstream::scripted(|log| Reply::Answer(echo(log)))
        .await
        .unwrap();
    let r = proxy_for(
        "kept-upstream-small-bound",
        &up,
        &[
            ("FANOUT_MAX_CONNECTIONS", "8"),
            ("FANOUT_UPSTREAM_MAX_CONNECTIONS", "2"),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = Client::connect(r.public_addr()).await;
        let id = format!("c{i}-0");
        let (status, body) = c.call(&id).await;
        assert_eq!(status, 200, "{id}, with {i} idle clients before it: {body}");
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.call(&format!("c{i}-1")).await.0, 200);
    }
    for c in clients {
        c.close();
    }
}
