//! Contract §4.1, §7.5: a publish retried with the same idempotency key returns the same
//! id(s) and delivers once — with the `Idempotency-Key` header (single and batch), with per-event
//! `"key"`s, and with concurrent retries; the same key with another body is `409`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::{
    error_code, start, PublishOptions, Replica, SseRequest, Tally, QUIET, SOON,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SENTINEL: &str = "notifications/test/done";

fn with_key(key: &str) -> PublishOptions {
    PublishOptions {
        idempotency_key: Some(key.to_string()),
        ..PublishOptions::default()
    }
}

async fn publish_keyed(r: &Replica, body: &Value, key: &str) -> (StatusCode, Value) {
    r.publish_with(body, &with_key(key))
        .await
        .expect("publish request")
}

fn id_of(who: &str, (status, body): &(StatusCode, Value)) -> String {
    assert_eq!(*status, StatusCode::OK, "{who}: {body}");
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{who}: an id: {body}"))
        .to_string()
}

fn ids_of(who: &str, (status, body): &(StatusCode, Value)) -> Vec<String> {
    assert_eq!(*status, StatusCode::OK, "{who}: {body}");
    body["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: ids: {body}"))
        .iter()
        .map(|v| v.as_str().expect("string ids").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_returns_the_same_ids_and_delivers_once() {
    let r = start("idempotency", &[]).await;
    let mut sub = r.subscribe(&SseRequest::mcp()).await.expect("subscribe");
    assert_eq!(sub.status(), 200);
    r.wait_subscribers(1, SOON)
        .await
        .expect("subscriber registered");
    let mut unique = Vec::new();

    // Header key, single event.
    let a =
        json!({ "method": "notifications/resources/updated", "params": { "uri": "file:///a" } });
    let first = id_of("first publish", &publish_keyed(&r, &a, "k-single").await);
    for attempt in 1..=2 {
        let again = id_of("retry", &publish_keyed(&r, &a, "k-single").await);
        assert_eq!(again, first, "retry {attempt} returns the original id");
    }
    unique.push(first);

    // The same key with another body is a conflict, and publishes nothing.
    let other =
        json!({ "method": "notifications/resources/updated", "params": { "uri": "file:///b" } });
    let (status, body) = publish_keyed(&r, &other, "k-single").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), Some("idempotency_conflict"), "{body}");

    // Header key, batch.
    let batch = json!([
        { "method": "notifications/test/b", "params": { "n": 1 } },
        { "method": "notifications/test/b", "params": { "n": 2 } },
        { "method": "notifications/test/b", "params": { "n": 3 } },
    ]);
    let ids = ids_of("batch", &publish_keyed(&r, &batch, "k-batch").await);
    assert_eq!(ids.len(), 3);
    let again = ids_of("batch retry", &publish_keyed(&r, &batch, "k-batch").await);
    assert_eq!(again, ids, "a batch retry returns the original ids");
    unique.extend(ids);

    // Per-event keys.
    let keyed = json!([
        { "method": "notifications/test/k", "params": { "n": 1 }, "key": "ev-1" },
        { "method": "notifications/test/k", "params": { "n": 2 }, "key": "ev-2" },
    ]);
    let (status, body) = r.publish(&keyed).await.expect("publish");
    let ids = ids_of("per-event keys", &(status, body));
    let (status, body) = r.publish(&keyed).await.expect("publish");
    assert_eq!(ids_of("per-event keys retry", &(status, body)), ids);
    let single = id_of(
        "one keyed event alone",
        &r.publish(
            &json!({ "method": "notifications/test/k", "params": { "n": 1 }, "key": "ev-1" }),
        )
        .await
        .expect("publish"),
    );
    assert_eq!(
        single, ids[0],
        "an event key identifies the event, alone or in a batch"
    );
    let (status, body) = r
        .publish(
            &json!({ "method": "notifications/test/k", "params": { "n": 999 }, "key": "ev-2" }),
        )
        .await
        .expect("publish");
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), Some("idempotency_conflict"), "{body}");
    unique.extend(ids);

    // Concurrent retries of one request: one event.
    let c = json!({ "method": "notifications/test/concurrent", "params": { "x": 1 } });
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = r.http().clone();
        let url = r.admin_url("/admin/publish");
        let body = c.to_string();
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", "k-concurrent")
                .body(body)
                .send()
                .await
                .expect("send");
            let status = resp.status();
            let body: Value = resp.json().await.expect("json");
            (status, body)
        }));
    }
    let mut concurrent_ids = Vec::new();
    for t in tasks {
        concurrent_ids.push(id_of("concurrent retry", &t.await.expect("task")));
    }
    concurrent_ids.dedup();
    assert_eq!(
        concurrent_ids.len(),
        1,
        "every concurrent retry gets the one id"
    );
    unique.extend(concurrent_ids);

    unique.push(
        r.publish_ok(&json!({ "method": SENTINEL }))
            .await
            .expect("sentinel"),
    );
    let frames = sub
        .collect_until(SOON, |f| f.method().as_deref() == Some(SENTINEL))
        .await
        .expect("events until the sentinel");
    let mut tally = Tally::new("subscriber", unique.clone());
    tally.observe_frames(&frames);
    tally.assert_exact();
    assert!(
        sub.next_event(QUIET).await.is_err_and(|e| e.is_timeout()),
        "nothing after the sentinel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deduplicated_retry_is_not_counted_as_a_published_event() {
    let r = start("idempotency-metric", &[]).await;
    let ev = json!({ "method": "notifications/test/m", "params": { "n": 1 } });
    let first = id_of("publish", &publish_keyed(&r, &ev, "k-metric").await);
    for _ in 0..3 {
        assert_eq!(
            id_of("retry", &publish_keyed(&r, &ev, "k-metric").await),
            first
        );
    }
    let batch = json!([
        { "method": "notifications/test/m", "params": { "n": 2 }, "key": "m-2" },
        { "method": "notifications/test/m", "params": { "n": 3 }, "key": "m-3" },
    ]);
    let ids = ids_of("batch", &r.publish(&batch).await.expect("publish"));
    assert_eq!(
        ids_of("batch retry", &r.publish(&batch).await.expect("publish")),
        ids
    );
    // Three events were committed; the retries committed nothing (contract §4.1 "publishes nothing
    // new"; the metric is "events committed through this replica").
    assert_eq!(
        r.metric("mcp_fanout_events_published_total")
            .await
            .expect("metrics"),
        Some(3.0),
        "mcp_fanout_events_published_total counts committed events, not answered retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_doubled_idempotency_keys_are_refused() {
    let r = start("idempotency-bad", &[]).await;
    let ev = json!({ "method": "notifications/test/x" });
    let cases: Vec<(&str, Value, Option<String>)> = vec![
        ("empty header key", ev.clone(), Some(String::new())),
        (
            "header key over 128 bytes",
            ev.clone(),
            Some("k".repeat(129)),
        ),
        (
            "header key with a space",
            ev.clone(),
            Some("a b".to_string()),
        ),
        (
            "empty event key",
            json!({ "method": "notifications/test/x", "key": "" }),
            None,
        ),
        (
            "event key over 128 bytes",
            json!({ "method": "notifications/test/x", "key": "k".repeat(129) }),
            None,
        ),
        (
            "event key with non-ASCII",
            json!({ "method": "notifications/test/x", "key": "clé" }),
            None,
        ),
        (
            "both a header key and an event key",
            json!({ "method": "notifications/test/x", "key": "ev" }),
            Some("hdr".to_string()),
        ),
    ];
    for (name, body, header) in cases {
        let opts = PublishOptions {
            idempotency_key: header,
            ..PublishOptions::default()
        };
        let (status, resp) = r.publish_with(&body, &opts).await.expect("publish request");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {resp}");
        assert_eq!(error_code(&resp), Some("invalid_field"), "{name}: {resp}");
    }
    // A 128-byte key is fine.
    let (status, resp) = publish_keyed(&r, &ev, &"k".repeat(128)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(
        r.metric("mcp_fanout_events_published_total")
            .await
            .expect("metrics"),
        Some(1.0),
        "refused requests publish nothing"
    );
}
