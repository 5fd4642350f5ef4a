//! Proxy mode in front of a misbehaving upstream MCP server: a silent upstream gets a JSON-RPC
//! error after `FANOUT_UPSTREAM_TIMEOUT_SECS` (counted as `http_errors{code="upstream_timeout"}`),
//! an answer cut short a `502` (`upstream_cut`); a large answer relayed on an HTTP/2 stream whose
//! client never opens its window is reset after `FANOUT_WRITE_STALL_SECS` and its upstream
//! connection let go, so such streams cannot keep others' calls out; with `FANOUT_ADVERTISE_LIST_CHANGED=true` an
//! `initialize` answer too large to rewrite (a huge JSON body, an event that never ends) is
//! relayed unmodified with the replica's memory bounded; when the client leaves, the upstream
//! connection is closed. Answers whose clients stop reading are held to a budget: past it the
//! stalled ones are cut, their upstream connections closed, long before the write stall. Event
//! streams gathered block by block for a rewrite hold their blocks within the body memory budget.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::h2c::{H2Conn, H2End, H2Stream, Reason};
use mcp_fanout_testkit::hostile::{
    drain_response, response_on, send_head_and_part, with_peak_rss, BadUpstream, Drained,
    Misbehaviour,
};
use mcp_fanout_testkit::upstream::{connections_to, Canned, Recorded, RecordingUpstream};
use mcp_fanout_testkit::{start_memory, wait_until, RawRequest, Replica, SOON};
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// What the replica may hold, beyond its memory before, while relaying an answer of any size.
const RSS_SLACK: u64 = 64 * 1024 * 1024;
/// Long enough for anything that should happen here.
const PATIENCE: Duration = Duration::from_secs(60);
/// The rewrite bound the tests run with.
const REWRITE_MAX: &str = "262144";

async fn proxy_for(up: &BadUpstream, label: &str) -> Replica {
    start_memory(
        label,
        &[
            ("FANOUT_UPSTREAM", &up.url()),
            ("FANOUT_ADVERTISE_LIST_CHANGED", "true"),
            ("FANOUT_UPSTREAM_TIMEOUT_SECS", "2"),
            ("FANOUT_UPSTREAM_REWRITE_MAX_BYTES", REWRITE_MAX),
        ],
    )
    .await
}

/// A JSON-RPC request `POST /mcp` with an SDK client's `Accept`, on a kept-alive connection.
fn rpc(id: i64, method: &str, params: Value) -> RawRequest {
    RawRequest::new("POST", "/mcp")
        .header("Accept", "application/json, text/event-stream")
        .header("Connection", "keep-alive")
        .json(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
}

fn initialize() -> RawRequest {
    let params = json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": { "name": "hostile-test", "version": "1" }
    });
    rpc(7, "initialize", params)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_a_json_rpc_error_after_the_timeout() {
    let up = BadUpstream::start(Misbehaviour::Silent)
        .await
        .expect("upstream");
    let r = proxy_for(&up, "silent-upstream").await;
    gets_a_timeout_error(&up, &r, initialize(), 7).await;
}

/// Sends `req` (JSON-RPC id `id`) through `r`: the client gets a `504` JSON-RPC error answering
/// it, and the proxy closes its upstream connection (it gave up on that request).
async fn gets_a_timeout_error(up: &BadUpstream, r: &Replica, req: RawRequest, id: i64) {
    let resp = req
        .send(r.public_addr(), SOON)
        .await
        .expect("the client is answered though the upstream does not finish");
    assert_eq!(resp.status(), 504, "{}", resp.text());
    let body: Value = resp.json().expect("json");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(body["id"], id, "the error answers the request: {body}");
    assert!(body["error"]["code"].is_i64(), "{body}");
    assert_eq!(
        r.metric("mcp_fanout_http_errors_total{code=\"upstream_timeout\"}")
            .await
            .expect("metrics"),
        Some(1.0),
        "counted as upstream_timeout"
    );
    wait_until("the upstream connection to close", SOON, || async {
        up.ended() >= 1
    })
    .await
    .expect("the proxy closes the upstream's connection");
}

fn tools_call() -> RawRequest {
    rpc(
        9,
        "tools/call",
        json!({ "name": "add", "arguments": { "a": 1, "b": 2 } }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_answer_whose_body_stalls_gets_a_json_rpc_error_after_the_timeout() {
    // A small answer of known length is held whole before it is relayed (head and body in one
    // write): a body that never completes is the upstream not answering in time, like a silent
    // upstream, and not a `200` the client would wait on for ever.
    let up = BadUpstream::start(Misbehaviour::StalledBody {
        length: 200,
        sent: 20,
    })
    .await
    .expect("upstream");
    let r = proxy_for(&up, "stalled-small-body").await;
    gets_a_timeout_error(&up, &r, tools_call(), 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_gets_a_json_rpc_error_counted_as_upstream_cut() {
    let up = BadUpstream::start(Misbehaviour::CutBody {
        length: 200,
        sent: 20,
    })
    .await
    .expect("upstream");
    let r = proxy_for(&up, "cut-body").await;
    let resp = tools_call()
        .send(r.public_addr(), SOON)
        .await
        .expect("the client is answered");
    assert_eq!(resp.status(), 502, "{}", resp.text());
    let body: Value = resp.json().expect("json");
    assert_eq!(body["id"], 9, "the error answers the request: {body}");
    assert_eq!(
        body["error"]["message"], "the upstream answer was cut",
        "{body}"
    );
    assert_eq!(
        r.metric("mcp_fanout_http_errors_total{code=\"upstream_cut\"}")
            .await
            .expect("metrics"),
        Some(1.0),
        "counted as upstream_cut"
    );
}

/// An upstream that answers with something that is not an HTTP answer gets the caller a `502`
/// JSON-RPC error counted as `upstream_invalid`, not `upstream_unreachable` (it was: an alert on
/// unreachable upstreams fired for one that answers badly); the replica keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_http_is_counted_as_upstream_invalid() {
    for (how, label) in [
        (Misbehaviour::HugeHead { bytes: 1024 * 1024 }, "huge-head"),
        (Misbehaviour::NotHttp, "not-http"),
    ] {
        let up = BadUpstream::start(how).await.expect("upstream");
        let r = proxy_for(&up, label).await;
        let resp = tools_call()
            .send(r.public_addr(), SOON)
            .await
            .expect("the client is answered");
        assert_eq!(resp.status(), 502, "{label}: {}", resp.text());
        let body: Value = resp.json().expect("json");
        assert_eq!(
            body["id"], 9,
            "{label}: the error answers the request: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not valid HTTP")),
            "{label}: {body}"
        );
        for (code, want) in [
            ("upstream_invalid", Some(1.0)),
            ("upstream_unreachable", None),
        ] {
            assert_eq!(
                r.metric(&format!("mcp_fanout_http_errors_total{{code=\"{code}\"}}"))
                    .await
                    .expect("metrics"),
                want,
                "{label}: {code}"
            );
        }
        r.wait_ready(SOON).await.expect("the replica keeps serving");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_is_relayed_as_it_arrives() {
    // Over the hold bound (16 KiB) the answer streams: the client has the head and the part the
    // upstream sent although the rest never comes, and no timeout cuts a started answer.
    const LENGTH: u64 = 1024 * 1024;
    const SENT: u64 = 64 * 1024;
    let up = BadUpstream::start(Misbehaviour::StalledBody {
        length: LENGTH,
        sent: SENT,
    })
    .await
    .expect("upstream");
    let r = proxy_for(&up, "stalled-large-body").await;
    let mut conn = send_head_and_part(r.public_addr(), &tools_call(), b"")
        .await
        .expect("send");
    let drained = drain_response(&mut conn, "POST", SENT, SOON)
        .await
        .expect("the head and the part sent are relayed before the rest comes");
    assert_eq!(drained.head.status, 200);
    assert_eq!(
        drained.head.header("content-length"),
        Some(LENGTH.to_string().as_str())
    );
    assert_eq!(drained.body_bytes, SENT);
    assert!(!drained.ended, "the rest never came");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_body_over_its_limit_is_refused_before_it_is_read() {
    let up = BadUpstream::start(Misbehaviour::Silent)
        .await
        .expect("upstream");
    let r = start_memory(
        "proxy-body-limit",
        &[
            ("FANOUT_UPSTREAM", &up.url()),
            ("FANOUT_MAX_PROXY_REQUEST_BYTES", "65536"),
        ],
    )
    .await;
    let mut conn = send_head_and_part(
        r.public_addr(),
        &RawRequest::new("POST", "/mcp")
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Length", "1048576")
            .header("Connection", "keep-alive"),
        &[b' '; 4096],
    )
    .await
    .expect("send");
    let resp = response_on(&mut conn, "POST", SOON)
        .await
        .expect("answered before the body is sent");
    assert_eq!(resp.status(), 413, "{}", resp.text());
    let body: Value = resp.json().expect("json");
    assert_eq!(body["jsonrpc"], "2.0", "a JSON-RPC error: {body}");
    assert_eq!(up.accepted(), 0, "nothing reached the upstream");
}

/// What a client got for its `initialize` through a proxy in front of a misbehaving upstream.
struct Relayed {
    up: BadUpstream,
    /// Kept open: the client is still there.
    conn: TcpStream,
    drained: Drained,
    rss_before: u64,
    rss_peak: u64,
    _replica: Replica,
}

/// Sends `initialize` through a proxy in front of an upstream that answers `how`, and reads the
/// answer (up to `max_body` bytes of its body), sampling the replica's memory meanwhile.
async fn initialize_through(how: Misbehaviour, label: &str, max_body: u64) -> Relayed {
    let up = BadUpstream::start(how).await.expect("upstream");
    let r = proxy_for(&up, label).await;
    let rss_before = r.rss_bytes().expect("rss");
    let ((conn, drained), rss_peak) = with_peak_rss(r.pid(), async {
        let mut conn = send_head_and_part(r.public_addr(), &initialize(), b"")
            .await
            .expect("send");
        let drained = drain_response(&mut conn, "POST", max_body, Duration::from_secs(120))
            .await
            .expect("the answer is relayed as it comes");
        (conn, drained)
    })
    .await;
    Relayed {
        up,
        conn,
        drained,
        rss_before,
        rss_peak,
        _replica: r,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_initialize_answer_is_relayed_unmodified_in_bounded_memory() {
    const HUGE: u64 = 128 * 1024 * 1024;
    let Relayed {
        drained,
        rss_before: before,
        rss_peak: peak,
        ..
    } = initialize_through(
        Misbehaviour::HugeJson { bytes: HUGE },
        "huge-upstream",
        u64::MAX,
    )
    .await;
    assert_eq!(drained.head.status, 200);
    assert!(
        peak <= before + RSS_SLACK,
        "RSS went from {before} to {peak} bytes relaying a {HUGE}-byte answer"
    );
    assert!(drained.ended, "the answer ends");
    assert_eq!(drained.body_bytes, HUGE, "relayed whole, unmodified");
    assert!(
        drained
            .first
            .starts_with(br#"{"jsonrpc":"2.0","id":1,"result":"#),
        "unmodified: {}",
        String::from_utf8_lossy(&drained.first)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_never_ends_is_relayed_and_the_upstream_closed_when_the_client_leaves() {
    const READ: u64 = 16 * 1024 * 1024;
    let Relayed {
        up,
        conn,
        drained,
        rss_before: before,
        rss_peak: peak,
        _replica,
    } = initialize_through(Misbehaviour::EndlessEvent, "endless-upstream", READ).await;
    assert_eq!(drained.head.status, 200);
    assert_eq!(
        drained.head.header("content-type"),
        Some("text/event-stream")
    );
    assert!(drained.body_bytes >= READ);
    assert!(
        drained.first.starts_with(b"event: message\ndata: xxxx"),
        "{}",
        String::from_utf8_lossy(&drained.first)
    );
    assert!(
        peak <= before + RSS_SLACK,
        "RSS went from {before} to {peak} bytes relaying an endless event"
    );

    // The client leaves: the proxy stops reading and closes the upstream connection.
    drop(conn);
    wait_until("the upstream connection to close", SOON, || async {
        up.ended() >= 1
    })
    .await
    .expect("the proxy closes the upstream connection after the client left");
    let written = up.written();
    assert!(written >= READ);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_answer_an_http2_client_never_takes_is_reset_and_lets_its_upstream_connection_go()
{
    const ANSWER: u64 = 1 << 20;
    let up = BadUpstream::start(Misbehaviour::HugeJson { bytes: ANSWER })
        .await
        .expect("upstream");
    let url = up.url();
    let r = start_memory(
        "h2-stuck-proxied",
        &[
            ("FANOUT_UPSTREAM", url.as_str()),
            ("FANOUT_UPSTREAM_MAX_CONNECTIONS", "2"),
            ("FANOUT_WRITE_STALL_SECS", "2"),
        ],
    )
    .await;
    let (_conn, mut stuck) = calls_never_taken(&r, 2, "tools/call").await;
    // Each holds one of the two upstream connections the replica may have.
    assert_eq!(up.accepted(), 2);

    // Reset after the deadline, as a stuck event stream is; the upstream connections closed.
    for s in &mut stuck {
        let end = s.ended(PATIENCE).await.expect("the stream ends");
        assert_eq!(end, H2End::Reset(Reason::CANCEL));
    }
    wait_until("the upstream connections let go", PATIENCE, || async {
        up.ended() >= 2
    })
    .await
    .expect("the proxy closes the stuck answers' upstream connections");

    // Another client's call gets the whole answer.
    let resp = tools_call()
        .send(r.public_addr(), PATIENCE)
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body.len() as u64, ANSWER);
}

/// Answers relayed to clients that stop reading them are held to a budget (`mcp::relay_watch`):
/// past `FANOUT_BODY_MEMORY_BYTES` / 192 KiB stalled answers (here 4), the stalled ones are cut —
/// their upstream connections closed, counted as `mcp_fanout_proxy_relays_cut_total` — long before
/// the write stall (here 120 s) would end them, while other clients' calls are answered whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_whose_clients_stop_reading_are_cut_past_their_budget() {
    stalled_answers_past_the_budget_are_cut("stalled-relays", "tools/call", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_answers_too_large_to_rewrite_are_held_to_the_same_budget() {
    // An `initialize` answer is held for the `listChanged` rewrite; one over the rewrite bound is
    // relayed unmodified as it arrives, and a client that stops reading it is cut like any other.
    // The bound is small so that the parts held before the answer went over it (one upstream read
    // each, from the body memory budget until the stream ends) leave that budget room for all 20.
    stalled_answers_past_the_budget_are_cut(
        "stalled-initialize",
        "initialize",
        &[
            ("FANOUT_ADVERTISE_LIST_CHANGED", "true"),
            ("FANOUT_UPSTREAM_REWRITE_MAX_BYTES", "1024"),
        ],
    )
    .await;
}

/// 20 `method` calls whose 1 MB answers are never taken, with a stalled relays' budget of 4
/// shares: 16 are cut and their upstream connections closed, while other clients' calls are
/// answered whole.
async fn stalled_answers_past_the_budget_are_cut(label: &str, method: &str, env: &[(&str, &str)]) {
    const ANSWER: u64 = 1 << 20;
    const STUCK: u64 = 20;
    const KEPT: u64 = 4;
    const CUT: &str = "mcp_fanout_proxy_relays_cut_total";
    let text = "x".repeat(ANSWER as usize);
    let answer = Canned::json(
        &json!({"jsonrpc": "2.0", "id": 9, "result": {"content": [{"type": "text", "text": text}]}}),
    );
    let up = RecordingUpstream::scripted(move |_: &[Recorded]| answer.clone().into())
        .await
        .expect("upstream");
    let url = up.url("/mcp");
    let budget = (KEPT * 192 * 1024).to_string();
    let mut settings = vec![
        ("FANOUT_UPSTREAM", url.as_str()),
        ("FANOUT_WRITE_STALL_SECS", "120"),
        ("FANOUT_MAX_PROXY_REQUEST_BYTES", "65536"),
        ("FANOUT_BODY_MEMORY_BYTES", budget.as_str()),
    ];
    settings.extend_from_slice(env);
    let r = start_memory(label, &settings).await;
    let (_conn, stuck) = calls_never_taken(&r, STUCK, method).await;

    // Other clients' calls come (each new relay has the replica look at the stalled ones) and are
    // answered whole, until the stalled answers past the budget are cut.
    wait_until(
        "the stalled answers past the budget cut",
        PATIENCE,
        || async {
            let resp = tools_call()
                .send(r.public_addr(), PATIENCE)
                .await
                .expect("answered");
            assert_eq!(
                resp.status(),
                200,
                "{}",
                String::from_utf8_lossy(&resp.body)
            );
            let answer: Value = serde_json::from_slice(&resp.body).expect("a whole JSON answer");
            assert_eq!(
                answer["result"]["content"][0]["text"]
                    .as_str()
                    .map(str::len),
                Some(text.len())
            );
            r.metric(CUT).await.ok().flatten().unwrap_or(0.0) >= (STUCK - KEPT) as f64
        },
    )
    .await
    .expect("stalled answers cut");
    assert_eq!(
        r.metric(CUT).await.ok().flatten(),
        Some((STUCK - KEPT) as f64),
        "the ones within the budget are kept"
    );
    // Their upstream connections are closed: the replica's open ones to the upstream are the
    // ones kept and those the other clients' calls left in the pool.
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("the upstream's port");
    wait_until(
        "the cut answers' upstream connections closed",
        PATIENCE,
        || async { connections_to(port) <= (KEPT + 2) as usize },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {} connections open", connections_to(port)));
    drop(stuck);
}

/// `n` `method` requests (`tools/call` or `initialize`) on one HTTP/2 connection whose streams
/// start with a window of 0 bytes, never opened: each answered `200`, its answer never taken.
async fn calls_never_taken(r: &Replica, n: u64, method: &str) -> (H2Conn, Vec<H2Stream>) {
    let mut conn = H2Conn::connect(r.public_addr(), 0)
        .await
        .expect("an HTTP/2 connection");
    let params = if method == "initialize" {
        json!({ "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": { "name": "stalled", "version": "0" } })
    } else {
        json!({ "name": "add", "arguments": { "a": 1, "b": 2 } })
    };
    let body = bytes::Bytes::from(
        json!({ "jsonrpc": "2.0", "id": 9, "method": method, "params": params }).to_string(),
    );
    let headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let mut stuck = Vec::new();
    for _ in 0..n {
        let s = conn
            .post("/mcp", &headers, body.clone())
            .await
            .expect("a proxied call's answer head");
        assert_eq!(s.status(), 200);
        stuck.push(s);
    }
    (conn, stuck)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_gathered_for_a_rewrite_hold_no_more_than_the_body_memory_budget() {
    // An `initialize` answered as an event stream is rewritten block by block; a block is gathered
    // whole first. 20 streams whose first block stops 200 KB in and never ends, with a body memory
    // budget of 1 MiB: the blocks gathered hold at most the budget, and the streams past it are
    // relayed unmodified as they arrive (the old code gathered every one, outside the budget, and
    // relayed none).
    const STREAMS: usize = 20;
    const PARTIAL: usize = 200_000;
    const BUDGET: u64 = 1 << 20;
    let mut stalled =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            .to_vec();
    stalled.extend_from_slice(br#"data: {"jsonrpc":"2.0","id":1,"result":{"instructions":""#);
    stalled.extend(std::iter::repeat_n(b'x', PARTIAL));
    let up = RecordingUpstream::scripted(move |_: &[Recorded]| {
        mcp_fanout_testkit::upstream::Reply::Stall(stalled.clone())
    })
    .await
    .expect("upstream");
    let url = up.url("/mcp");
    let budget = BUDGET.to_string();
    let r = start_memory(
        "sse-rewrite-budget",
        &[
            ("FANOUT_UPSTREAM", url.as_str()),
            ("FANOUT_ADVERTISE_LIST_CHANGED", "true"),
            ("FANOUT_BODY_MEMORY_BYTES", budget.as_str()),
            // The budget is at least one request body of the largest size.
            ("FANOUT_MAX_PROXY_REQUEST_BYTES", "65536"),
        ],
    )
    .await;
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": { "name": "gathered", "version": "0" } } })
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Each client reads what comes; a stream relayed unmodified brings the 200 KB.
    let received: Vec<_> = (0..STREAMS)
        .map(|_| {
            let (addr, request) = (r.public_addr(), request.clone());
            let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = got.clone();
            let task = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.write_all(request.as_bytes()).await.expect("request");
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
            (got, task)
        })
        .collect();
    let relayed = || {
        received
            .iter()
            .filter(|(got, _)| got.load(std::sync::atomic::Ordering::Relaxed) >= PARTIAL)
            .count()
    };
    wait_until("the streams past the budget relayed", PATIENCE, || async {
        relayed() >= STREAMS - 5
    })
    .await
    .unwrap_or_else(|e| {
        let got: Vec<usize> = received
            .iter()
            .map(|(g, _)| g.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        panic!(
            "{e}: {} of {STREAMS} relayed; bytes received: {got:?}",
            relayed()
        )
    });
    // Those still gathered hold their blocks within the budget: each holds more than the part
    // it was sent, so at most 5 fit.
    let held = r
        .metric("mcp_fanout_body_memory_held_bytes")
        .await
        .expect("/metrics")
        .unwrap_or(0.0);
    assert!(
        (PARTIAL as f64..=BUDGET as f64).contains(&held),
        "{held} bytes held, budget {BUDGET}: the blocks still gathered are counted in it"
    );
    assert_eq!(
        up.received().len(),
        STREAMS,
        "every initialize was forwarded"
    );
    for (_, task) in received {
        task.abort();
    }
}
