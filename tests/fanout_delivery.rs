//! Contract §3.2, §3.4, §7.1: every SSE subscriber receives every published event once, in
//! order, with increasing ids; frames are JSON-RPC notifications with no `event:` field; the same
//! event's bytes are identical on every live stream, on `Last-Event-ID` replay and in `/poll`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::identity::{open_stream, publish_to, Target, Who};
use mcp_fanout_testkit::{
    body, note, poll_answer, start, EventId, Frame, PollAnswer, SseConn, SseRequest, Tally, SOON,
};
use serde_json::{json, Value};

const SUBSCRIBERS: usize = 3;

/// 20 single publishes + 4 batches of 10, with params that exercise JSON escaping and number forms,
/// some without params and one in full JSON-RPC form.
fn bodies() -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = Vec::new();
    for n in 0..20 {
        let body = match n % 5 {
            0 => json!({ "method": "notifications/tools/list_changed" }),
            1 => json!({
                "method": "notifications/resources/updated",
                "params": { "uri": format!("file:///r/{n}.txt"), "n": n }
            }),
            2 => json!({
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": { "level": "info", "data": { "text": "ünïcödé ✓ \"quoted\"\nnew line\ttab", "n": n } }
            }),
            3 => json!({
                "method": "notifications/progress",
                "params": { "progress": 1.5e3, "total": 12345678901_i64, "neg": -0.25, "list": [1, [2, [3]], null, true] }
            }),
            _ => note("notifications/test/single", "fanout", n),
        };
        out.push(vec![body]);
    }
    for b in 0..4 {
        out.push(
            (0..10)
                .map(|i| note("notifications/test/batch", "fanout", 100 * b + i))
                .collect(),
        );
    }
    out
}

/// What a subscriber must see in `data` for a published body.
fn expected_message(body: &Value) -> (String, Option<Value>) {
    let method = body["method"].as_str().unwrap_or_default().to_string();
    let params = body.get("params").filter(|p| !p.is_null()).cloned();
    (method, params)
}

fn check_event_frame(who: &str, frame: &Frame, id: &str, body: &Value) {
    assert_eq!(frame.id.as_deref(), Some(id), "{who}: frame id");
    assert_eq!(
        frame.event,
        None,
        "{who}: event frames carry no `event:` field: {:?}",
        frame.text()
    );
    assert!(
        frame.retry.is_none() && frame.comments.is_empty() && frame.other_fields.is_empty(),
        "{who}: an event frame is exactly `id:` + `data:`, got {:?}",
        frame.text()
    );
    let data = frame.data.as_deref().unwrap_or_default();
    assert_eq!(
        frame.raw,
        format!("id: {id}\ndata: {data}\n\n").as_bytes(),
        "{who}: frame bytes are `id: <id>\\ndata: <json>\\n\\n`"
    );
    let msg: Value = serde_json::from_str(data)
        .unwrap_or_else(|e| panic!("{who}: data is not JSON ({e}): {data:?}"));
    let obj = msg
        .as_object()
        .unwrap_or_else(|| panic!("{who}: data is not a JSON object: {data}"));
    assert_eq!(
        obj.get("jsonrpc"),
        Some(&json!("2.0")),
        "{who}: jsonrpc 2.0 in {data}"
    );
    assert!(
        !obj.contains_key("id"),
        "{who}: a notification has no JSON-RPC id: {data}"
    );
    let (method, params) = expected_message(body);
    assert_eq!(
        obj.get("method"),
        Some(&json!(method)),
        "{who}: method in {data}"
    );
    match params {
        Some(p) => assert_eq!(obj.get("params"), Some(&p), "{who}: params in {data}"),
        None => assert!(
            obj.get("params")
                .is_none_or(|p| p.is_null() || p == &json!({})),
            "{who}: an event published without params has none: {data}"
        ),
    }
    for key in obj.keys() {
        assert!(
            ["jsonrpc", "method", "params"].contains(&key.as_str()),
            "{who}: unexpected member {key:?} in the notification {data}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_subscribers_get_every_event_once_in_order_with_identical_bytes() {
    let r = start("fanout", &[]).await;
    // An event before anyone subscribes: the cursor for replay and /poll of everything that follows.
    let anchor = r
        .publish_ok(&note("notifications/test/anchor", "fanout", 0))
        .await
        .expect("anchor publish");
    let anchor_id: EventId = anchor.parse().expect("publish returns an <epoch>-<seq> id");

    let mut subs: Vec<SseConn> = Vec::new();
    for i in 0..SUBSCRIBERS {
        let session = format!("fanout-session-{i}");
        let s = r
            .subscribe(&SseRequest::mcp().session(&session))
            .await
            .expect("subscribe");
        assert_eq!(s.status(), 200, "GET /mcp status");
        let ct = s.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
        assert_eq!(s.header("cache-control"), Some("no-cache"));
        assert_eq!(s.header("x-accel-buffering"), Some("no"));
        assert_eq!(
            s.header("mcp-session-id"),
            Some(session.as_str()),
            "Mcp-Session-Id is echoed"
        );
        subs.push(s);
    }
    r.wait_subscribers(SUBSCRIBERS as u64, SOON)
        .await
        .expect("all three subscribers registered");

    let mut published: Vec<(String, Value)> = Vec::new();
    for group in bodies() {
        if group.len() == 1 {
            let id = r.publish_ok(&group[0]).await.expect("single publish");
            published.push((id, group[0].clone()));
        } else {
            let ids = r.publish_batch_ok(&group).await.expect("batch publish");
            published.extend(ids.into_iter().zip(group));
        }
    }
    let n = published.len();
    for (id, _) in &published {
        let parsed: EventId = id.parse().expect("publish ids are <epoch>-<seq>");
        assert_eq!(parsed.epoch, anchor_id.epoch, "one epoch per process");
        assert!(parsed.seq > anchor_id.seq, "{id} after the anchor {anchor}");
    }
    let ids: Vec<String> = published.iter().map(|(id, _)| id.clone()).collect();

    let mut live: Vec<Vec<Frame>> = Vec::new();
    for (i, s) in subs.iter_mut().enumerate() {
        let who = format!("subscriber {i}");
        let frames = s.events(n, SOON).await.expect("every event arrives");
        let mut tally = Tally::new(&who, ids.clone());
        tally.observe_frames(&frames);
        tally.assert_exact();
        for (frame, (id, body)) in frames.iter().zip(&published) {
            check_event_frame(&who, frame, id, body);
        }
        live.push(frames);
    }
    for other in &live[1..] {
        for (a, b) in live[0].iter().zip(other) {
            assert_eq!(
                a.raw, b.raw,
                "one event, one framing: identical bytes on every stream"
            );
        }
    }

    // Replay from the anchor and from the middle: same bytes as live, then nothing more.
    for (from, skip) in [(anchor.clone(), 0), (ids[29].clone(), 30)] {
        let mut s = r
            .subscribe(&SseRequest::mcp().last_event_id(&from))
            .await
            .expect("subscribe with Last-Event-ID");
        assert_eq!(s.status(), 200);
        let replay = s.events(n - skip, SOON).await.expect("replayed events");
        for (i, (got, want)) in replay.iter().zip(&live[0][skip..]).enumerate() {
            assert_eq!(
                got.raw, want.raw,
                "replay after {from}, event #{i}: bytes identical to the live frame"
            );
        }
    }

    // /poll returns the same messages, byte for byte.
    let answer = poll_answer(&r, &format!("after={anchor}&timeout=0")).await;
    assert!(!answer.more, "{n} events fit in one answer");
    assert_eq!(answer.cursor, ids[n - 1], "cursor is the last returned id");
    assert_eq!(
        answer.events.len(),
        n,
        "poll returns every event after the anchor"
    );
    for (ev, frame) in answer.events.iter().zip(&live[0]) {
        assert_eq!(ev.id.as_deref(), frame.id.as_deref(), "poll ids in order");
        assert_eq!(
            Some(ev.message.as_str()),
            frame.data.as_deref(),
            "poll `message` is byte-identical to the stream's data line"
        );
    }

    // Nothing after the head: an empty answer with the cursor unchanged.
    let answer = poll_answer(&r, &format!("after={}&timeout=0", ids[n - 1])).await;
    assert!(answer.events.is_empty(), "{answer:?}");
    assert_eq!(answer.cursor, ids[n - 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_publish_and_paginates() {
    let r = start("long-poll", &[("FANOUT_MAX_BATCH", "1000")]).await;
    let first = r
        .publish_ok(&note("notifications/test/poll", "poll", 0))
        .await
        .expect("publish");

    let waiting = {
        let http = r.http().clone();
        let url = r.public_url(&format!("/poll?after={first}&timeout=20"));
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let resp = http
                .get(url)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("long poll");
            let status = resp.status();
            let body = resp.bytes().await.expect("long poll body");
            (status, body, started.elapsed())
        })
    };
    // Give the poll a chance to be waiting server-side before publishing (a waiting poll counts as a
    // subscriber, contract §2). Not asserted: if it arrives late it still must return the event at once.
    let _ = r.wait_subscribers(1, Duration::from_secs(3)).await;
    let second = r
        .publish_ok(&note("notifications/test/poll", "poll", 1))
        .await
        .expect("publish");
    let (status, body, took) = waiting.await.expect("poll task");
    assert_eq!(status, 200);
    let answer = PollAnswer::parse(&body).expect("poll shape");
    assert_eq!(
        answer
            .events
            .iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>(),
        vec![Some(second.clone())]
    );
    assert_eq!(answer.cursor, second);
    assert!(
        took < Duration::from_secs(10),
        "the poll answered when the event was published, not at its timeout ({took:?})"
    );

    // 1200 events after `second`: answers carry at most 1000, with `more`, and the cursor walks on.
    let mut ids = Vec::new();
    for chunk in 0..3 {
        let batch: Vec<Value> = (0..400)
            .map(|i| note("notifications/test/page", "poll", chunk * 400 + i))
            .collect();
        ids.extend(r.publish_batch_ok(&batch).await.expect("batch"));
    }
    let mut cursor = second;
    let mut got = Vec::new();
    let mut answers = 0;
    loop {
        let a = poll_answer(&r, &format!("after={cursor}&timeout=0")).await;
        answers += 1;
        assert!(a.events.len() <= 1000, "at most 1000 events per answer");
        got.extend(a.events.iter().filter_map(|e| e.id.clone()));
        cursor = a.cursor;
        if !a.more {
            break;
        }
        assert!(answers < 5, "pagination terminates");
    }
    assert_eq!(answers, 2, "1200 events take two answers");
    let mut tally = Tally::new("poller", ids);
    for id in &got {
        tally.observe(id);
    }
    tally.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_keepalive_comments_not_events() {
    let r = start("keepalive", &[("FANOUT_KEEPALIVE_SECS", "1")]).await;
    let mut s = r.subscribe(&SseRequest::mcp()).await.expect("subscribe");
    assert_eq!(s.status(), 200);
    for _ in 0..2 {
        let f = s
            .next_frame(Duration::from_secs(5))
            .await
            .expect("a keep-alive within the interval")
            .expect("stream open");
        assert!(
            f.is_comment_only(),
            "an idle stream only gets comments: {:?}",
            f.text()
        );
        assert!(!f.comments.is_empty(), "{:?}", f.text());
    }
}

/// A stream woken only by events it may not see (another tenant's, published more often than the
/// keep-alive interval) still gets its keep-alives: the interval runs from the stream's last
/// write, not from its last wake-up, so a proxy's idle timeout never cuts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_woken_only_by_events_it_may_not_see_still_gets_keepalives() {
    let r = start(
        "keepalive_filtered",
        &[
            ("FANOUT_KEEPALIVE_SECS", "1"),
            ("FANOUT_SUBSCRIBER_AUTH", "header"),
        ],
    )
    .await;
    let mut s = open_stream(&r, &Who::header_mode("A", Some("A"), None)).await;
    r.wait_subscribers(1, Duration::from_secs(10))
        .await
        .expect("subscriber registered");
    let done = tokio::sync::Notify::new();
    // The load, not a synchronisation: tenant B's events every 200 ms until the reader is done.
    let publisher = async {
        let to_b = Target::new(Some("B"), None);
        let mut i = 0;
        loop {
            tokio::select! {
                () = done.notified() => return i,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            publish_to(&r, body("for-b", i), &to_b).await;
            i += 1;
        }
    };
    let reader = async {
        for n in 0..2 {
            let f = s
                .next_frame(Duration::from_secs(3))
                .await
                .unwrap_or_else(|e| panic!("keep-alive {n} while B's events flow: {e}"))
                .expect("stream open");
            assert!(
                f.is_comment_only(),
                "only keep-alives reach A: {:?}",
                f.text()
            );
        }
        done.notify_one();
    };
    let (published, ()) = tokio::join!(publisher, reader);
    assert!(
        published >= 5,
        "B's events kept waking the stream ({published} published)"
    );
}
