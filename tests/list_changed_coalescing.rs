//! Coalescing: with `FANOUT_COALESCE_MS` a burst of 500 `list_changed` (published in
//! about 50 ms, interleaved with other notifications) reaches a slow-ish subscriber as far fewer
//! frames; the last one of each kind carries the newest id of that kind; nothing of another method
//! is dropped; and a client resuming from any id it was given loses nothing of another method and
//! still gets the newest `list_changed` after that id. Per session: another session's list_changed
//! never show up, the subscriber's own are coalesced apart from the broadcast ones. Memory and
//! Postgres mode; and with coalescing off every list_changed arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::path::Path;
use std::time::Duration;

use mcp_fanout_testkit::{
    shared_database, EventId, Frame, HttpResponse, PollAnswer, Replica, SseConn, SseRequest, Tally,
};
use serde_json::{json, Value};
use tokio::time::Instant;

const TOOLS: &str = "notifications/tools/list_changed";
const PROMPTS: &str = "notifications/prompts/list_changed";
const OTHER: &str = "notifications/resources/updated";
const DONE: &str = "notifications/test/done";
const SESSION: &str = "coalesce-subscriber";
const ANOTHER: &str = "coalesce-someone-else";
/// 10 requests × 50 tools/list_changed = 500, each with 5 other notifications among them.
const REQUESTS: usize = 10;
const LIST_PER_REQUEST: usize = 50;
const OTHER_EVERY: usize = 10;
const WINDOW_MS: &str = "100";
const SOON: Duration = Duration::from_secs(20);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mcp-fanout"))
}

fn seq(id: &str) -> u64 {
    id.parse::<EventId>()
        .unwrap_or_else(|e| panic!("{id}: {e}"))
        .seq
}

/// What was published: every id with its method and session target, in log order.
struct Published {
    events: Vec<(String, &'static str, Option<&'static str>)>,
    done: String,
}

impl Published {
    /// The ids a viewer of [`SESSION`] may see, of `method`, after `after` (a seq).
    fn visible(&self, method: &str, after: u64) -> Vec<&str> {
        self.events
            .iter()
            .filter(|(id, m, s)| *m == method && *s != Some(ANOTHER) && seq(id) > after)
            .map(|(id, _, _)| id.as_str())
            .collect()
    }
}

/// One request of the burst: tools/list_changed with an other-method event every few, one
/// prompts/list_changed for the subscriber's session and one for another session.
fn request(req: usize) -> Vec<(Value, &'static str, Option<&'static str>)> {
    let mut batch = Vec::new();
    for i in 0..LIST_PER_REQUEST {
        batch.push((json!({ "method": TOOLS }), TOOLS, None));
        if i % OTHER_EVERY == OTHER_EVERY - 1 {
            let uri = format!("file:///r{req}-{i}");
            batch.push((
                json!({ "method": OTHER, "params": { "uri": uri } }),
                OTHER,
                None,
            ));
        }
    }
    for s in [SESSION, ANOTHER] {
        batch.push((json!({ "method": PROMPTS, "session": s }), PROMPTS, Some(s)));
    }
    batch
}

/// The burst: [`REQUESTS`] requests sent at once (group commit takes them together).
async fn publish_burst(r: &Replica) -> Published {
    let started = Instant::now();
    let sent = (0..REQUESTS).map(|req| async move {
        let batch = request(req);
        let bodies: Vec<Value> = batch.iter().map(|(b, _, _)| b.clone()).collect();
        let ids = r.publish_batch_ok(&bodies).await.expect("burst published");
        ids.into_iter()
            .zip(batch)
            .map(|(id, (_, method, session))| (id, method, session))
            .collect::<Vec<_>>()
    });
    let mut events: Vec<_> = futures::future::join_all(sent)
        .await
        .into_iter()
        .flatten()
        .collect();
    events.sort_by_key(|(id, _, _)| seq(id));
    eprintln!(
        "published {} events ({} list_changed) in {:?}",
        events.len(),
        REQUESTS * LIST_PER_REQUEST,
        started.elapsed()
    );
    let done = r
        .publish_ok(&json!({ "method": DONE }))
        .await
        .expect("sentinel published");
    Published { events, done }
}

/// Reads events until the sentinel, `pause` after each (a slow-ish reader). A priming frame is
/// left out.
async fn read_until_done(conn: &mut SseConn, pause: Duration) -> Vec<Frame> {
    read_primed(conn, pause).await.1
}

/// The priming frame's id, if any, and the events until the sentinel.
async fn read_primed(conn: &mut SseConn, pause: Duration) -> (Option<String>, Vec<Frame>) {
    let mut priming = None;
    let mut frames = Vec::new();
    loop {
        let f = conn
            .next_event(SOON)
            .await
            .expect("an event")
            .unwrap_or_else(|| panic!("stream ended after {} events", frames.len()));
        if f.is_priming() {
            priming = f.id;
            continue;
        }
        let done = f.method().as_deref() == Some(DONE);
        frames.push(f);
        if done {
            return (priming, frames);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Each delivered event as (id, method).
type Seen = Vec<(String, String)>;

fn seen(frames: &[Frame]) -> Seen {
    frames
        .iter()
        .map(|f| {
            let id = f.id.clone().expect("every event frame has an id");
            (id, f.method().unwrap_or_default())
        })
        .collect()
}

fn of<'a>(seen: &'a Seen, method: &str) -> Vec<&'a str> {
    seen.iter()
        .filter(|(_, m)| m == method)
        .map(|(id, _)| id.as_str())
        .collect()
}

/// What a stream (or poll) that starts after `after` (a seq) must show: every other-method event
/// once, in order; the newest list_changed of each kind, none of another session; ids increasing.
fn check_stream(label: &str, seen: &Seen, p: &Published, after: u64) {
    let ids: Vec<u64> = seen.iter().map(|(id, _)| seq(id)).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{label}: ids increase: {ids:?}"
    );
    assert!(
        ids.first().is_none_or(|first| *first > after),
        "{label}: nothing at or before the cursor"
    );
    let mut others = Tally::new(label, p.visible(OTHER, after));
    for id in of(seen, OTHER) {
        others.observe(id);
    }
    if let Err(e) = others.check() {
        panic!("{label}: events of another method: {e}");
    }
    for method in [TOOLS, PROMPTS] {
        let want = p.visible(method, after);
        let got = of(seen, method);
        assert_eq!(
            got.last(),
            want.last(),
            "{label}: the last {method} carries the newest id of that kind"
        );
        assert!(
            got.iter().all(|id| want.contains(id)),
            "{label}: {method} only of its own session"
        );
    }
}

/// `/poll` as the subscriber's session, without waiting.
async fn poll(r: &Replica, after: &str) -> PollAnswer {
    let resp = r
        .http()
        .get(r.public_url(&format!("/poll?after={after}&timeout=0")))
        .header("Mcp-Session-Id", SESSION)
        .send()
        .await
        .expect("poll answered");
    let resp = HttpResponse::read(resp).await.expect("poll body");
    assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    PollAnswer::parse(&resp.body).expect("a poll answer")
}

async fn coalesced_burst(r: &Replica) {
    let mut slow = r
        .subscribe(
            &SseRequest::mcp()
                .protocol("2025-11-25")
                .session(SESSION)
                .recv_buffer(4096),
        )
        .await
        .expect("subscribed");
    r.wait_subscribers(1, SOON)
        .await
        .expect("subscriber registered");
    let (published, (priming, frames)) = tokio::join!(
        publish_burst(r),
        read_primed(&mut slow, Duration::from_millis(5))
    );
    let frames = seen(&frames);
    check_stream("slow subscriber", &frames, &published, 0);
    assert_eq!(frames.last().map(|(id, _)| id), Some(&published.done));
    let tools = of(&frames, TOOLS).len();
    let prompts = of(&frames, PROMPTS).len();
    eprintln!(
        "{} tools/list_changed and {} prompts/list_changed (own session) reached the subscriber as {tools} and {prompts} frames; {} frames in all",
        REQUESTS * LIST_PER_REQUEST,
        REQUESTS,
        frames.len()
    );
    assert!(
        tools * 10 <= REQUESTS * LIST_PER_REQUEST,
        "500 list_changed must reach the subscriber as far fewer frames, got {tools}"
    );
    let coalesced = r
        .metric("mcp_fanout_events_coalesced_total")
        .await
        .expect("metrics")
        .unwrap_or(0.0);
    assert!(coalesced >= 450.0, "counted as coalesced: {coalesced}");

    // Resuming from every id the subscriber was given loses nothing of another method.
    let given = priming.iter().map(String::as_str);
    for id in given.chain(frames.iter().map(|(id, _)| id.as_str())) {
        if id == published.done {
            continue;
        }
        let mut resumed = r
            .subscribe(
                &SseRequest::mcp()
                    .protocol("2025-11-25")
                    .session(SESSION)
                    .last_event_id(id),
            )
            .await
            .expect("resumed");
        let replayed = seen(&read_until_done(&mut resumed, Duration::ZERO).await);
        check_stream(
            &format!("resumed from {id}"),
            &replayed,
            &published,
            seq(id),
        );
        // A long-poll from the same id answers by the same rule.
        let answer = poll(r, id).await;
        let polled: Seen = answer
            .events
            .iter()
            .map(|e| (e.id.clone().expect("an id"), e.method().unwrap_or_default()))
            .collect();
        assert!(
            !answer.more,
            "one answer holds the whole burst once coalesced"
        );
        check_stream(&format!("polled after {id}"), &polled, &published, seq(id));
    }
}

/// The test resumes one session from every id it was given, a stream after another as fast as it
/// can: no claim rate (`FANOUT_SESSION_CLAIMS_PER_MIN`), which would shed such a loop.
const NO_CLAIM_RATE: (&str, &str) = ("FANOUT_SESSION_CLAIMS_PER_MIN", "0");

async fn memory_replica(label: &str, window_ms: &str) -> Replica {
    Replica::start(
        bin(),
        label,
        &[("FANOUT_COALESCE_MS", window_ms), NO_CLAIM_RATE],
    )
    .await
    .expect("replica starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_changed_burst_is_coalesced_in_memory_mode_and_resume_loses_nothing() {
    let r = memory_replica("coalesce-mem", WINDOW_MS).await;
    coalesced_burst(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_changed_burst_is_coalesced_in_postgres_mode_and_resume_loses_nothing() {
    let (server, db) = shared_database().await.expect("a database");
    let url = server.url(&db);
    let r = Replica::start(
        bin(),
        "coalesce-pg",
        &[
            ("DATABASE_URL", url.as_str()),
            ("FANOUT_COALESCE_MS", WINDOW_MS),
            NO_CLAIM_RATE,
        ],
    )
    .await
    .expect("replica starts");
    coalesced_burst(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_coalescing_off_every_list_changed_arrives() {
    let r = memory_replica("coalesce-off", "0").await;
    let mut sub = r
        .subscribe(&SseRequest::mcp().protocol("2025-11-25").session(SESSION))
        .await
        .expect("subscribed");
    r.wait_subscribers(1, SOON)
        .await
        .expect("subscriber registered");
    let (published, frames) =
        tokio::join!(publish_burst(&r), read_until_done(&mut sub, Duration::ZERO));
    let frames = seen(&frames);
    check_stream("subscriber", &frames, &published, 0);
    for method in [TOOLS, PROMPTS, OTHER] {
        let mut all = Tally::new(method, published.visible(method, 0));
        for id in of(&frames, method) {
            all.observe(id);
        }
        all.assert_exact();
    }
    let coalesced = r
        .metric("mcp_fanout_events_coalesced_total")
        .await
        .expect("metrics");
    assert_eq!(coalesced, Some(0.0));
}
