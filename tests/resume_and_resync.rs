//! Contract §3.1, §3.2, §3.4, §7.3: `Last-Event-ID: k` yields exactly the events after k, then
//! live ones, with no gap or duplicate at the seam; a cursor from another epoch, above the head, not of
//! the id form, or below the pruned watermark yields the three resync notifications and a cursor at the
//! head (reconnecting with it does not resync again); a priming event appears only for a cursor-less
//! 2025-11-25 client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{
    note, poll_answer, publish_n, start, EventId, Frame, PollAnswer, SseConn, SseRequest, Tally,
    QUIET, SOON,
};
use serde_json::{json, Value};

const RESYNC_METHODS: [&str; 3] = [
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/prompts/list_changed",
];
const SENTINEL: &str = "notifications/test/done";

/// A valid id of the same shape with a different epoch.
fn other_epoch(id: &str) -> String {
    let parsed: EventId = id.parse().expect("an event id");
    let mut epoch: Vec<char> = parsed.epoch.chars().collect();
    epoch[0] = if epoch[0] == 'a' { 'b' } else { 'a' };
    format!("{}-{}", epoch.into_iter().collect::<String>(), parsed.seq)
}

fn above_head(head: &str) -> String {
    let parsed: EventId = head.parse().expect("an event id");
    parsed.with_seq(parsed.seq + 1000).to_string()
}

fn assert_no_event_field(who: &str, frames: &[Frame]) {
    for f in frames {
        assert_eq!(f.event, None, "{who}: no `event:` field: {:?}", f.text());
    }
}

/// Reads the resync sequence for `protocol` (None = header absent) and checks it ends at `head`.
async fn expect_resync(who: &str, conn: &mut SseConn, protocol: Option<&str>, head: &str) {
    let modern = protocol == Some("2025-11-25");
    let n = if modern { 4 } else { 3 };
    let frames = conn
        .events(n, SOON)
        .await
        .unwrap_or_else(|e| panic!("{who}: the resync frames: {e}"));
    assert_no_event_field(who, &frames);
    for (i, method) in RESYNC_METHODS.iter().enumerate() {
        let f = &frames[i];
        let msg = f.json().unwrap_or_else(|e| {
            panic!("{who}: resync frame {i} is not JSON ({e}): {:?}", f.text())
        });
        assert_eq!(msg["jsonrpc"], json!("2.0"), "{who}: {:?}", f.text());
        assert_eq!(
            msg["method"],
            json!(method),
            "{who}: resync frame {i}: {:?}",
            f.text()
        );
        assert!(
            msg.get("id").is_none(),
            "{who}: a notification has no JSON-RPC id"
        );
        let carries_head = !modern && i == 2;
        if carries_head {
            assert_eq!(
                f.id.as_deref(),
                Some(head),
                "{who}: for older protocols the last resync notification carries id: <head>: {:?}",
                f.text()
            );
        } else {
            assert_eq!(
                f.id,
                None,
                "{who}: resync notification {i} carries no id: {:?}",
                f.text()
            );
        }
    }
    if modern {
        let p = &frames[3];
        assert!(
            p.is_priming(),
            "{who}: for 2025-11-25 the resync is followed by a priming frame: {:?}",
            p.text()
        );
        assert_eq!(
            p.id.as_deref(),
            Some(head),
            "{who}: the priming frame is at the head"
        );
    }
    assert_eq!(
        conn.last_event_id(),
        Some(head),
        "{who}: the client's cursor is now the head"
    );
}

fn request(protocol: Option<&str>) -> SseRequest {
    match protocol {
        Some(p) => SseRequest::mcp().protocol(p),
        None => SseRequest::mcp(),
    }
}

/// Reads until the sentinel and returns every event frame before it.
async fn until_sentinel(who: &str, conn: &mut SseConn) -> Vec<Frame> {
    conn.collect_until(Duration::from_secs(30), |f| {
        f.method().as_deref() == Some(SENTINEL)
    })
    .await
    .unwrap_or_else(|e| panic!("{who}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_yields_exactly_the_events_after_it_then_live_ones() {
    let r = start("resume", &[]).await;
    let ids = publish_n(&r, "notifications/test/e", "resume", 10).await;

    // Header; with every supported protocol version (no priming when there is a cursor).
    for protocol in [None, Some("2025-06-18"), Some("2025-11-25")] {
        let who = format!("resume from ids[3] ({protocol:?})");
        let mut c = r
            .subscribe(&request(protocol).last_event_id(&ids[3]))
            .await
            .expect("subscribe");
        assert_eq!(c.status(), 200, "{who}");
        let replay = c.events(6, SOON).await.expect("replay");
        assert!(
            replay.iter().all(|f| !f.is_priming()),
            "{who}: no priming frame when the client sent a cursor"
        );
        let mut t = Tally::new(&who, ids[4..].to_vec());
        t.observe_frames(&replay);
        t.assert_exact();
        // Nothing else is pending: the next thing is a live event.
        assert!(
            c.next_event(QUIET).await.is_err_and(|e| e.is_timeout()),
            "{who}: nothing after the replay until the next publish"
        );
    }

    // Query parameter when there is no header; the header wins when both are present.
    let mut q = r
        .subscribe(&SseRequest::new(&format!("/mcp?last_event_id={}", ids[7])))
        .await
        .expect("subscribe with query cursor");
    let mut both = r
        .subscribe(
            &SseRequest::new(&format!("/mcp?last_event_id={}", ids[1])).last_event_id(&ids[5]),
        )
        .await
        .expect("subscribe with header and query");
    let got_q = q.events(2, SOON).await.expect("query replay");
    let got_both = both.events(4, SOON).await.expect("header replay");
    let mut t = Tally::new("query cursor", ids[8..].to_vec());
    t.observe_frames(&got_q);
    t.assert_exact();
    let mut t = Tally::new("header over query", ids[6..].to_vec());
    t.observe_frames(&got_both);
    t.assert_exact();

    // Then live events, no gap and no duplicate.
    let live = publish_n(&r, "notifications/test/e", "resume-live", 3).await;
    for (who, c) in [("query cursor", &mut q), ("header over query", &mut both)] {
        let frames = c.events(3, SOON).await.expect("live events");
        let mut t = Tally::new(who, live.clone());
        t.observe_frames(&frames);
        t.assert_exact();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_while_events_are_being_published_has_no_gap_or_duplicate_at_the_seam() {
    let r = std::sync::Arc::new(start("seam", &[]).await);
    let total = 300;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let publisher = {
        let r = std::sync::Arc::clone(&r);
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..total {
                let id = r
                    .publish_ok(&note("notifications/test/seam", "seam", i))
                    .await
                    .expect("publish");
                ids.push(id.clone());
                let _ = tx.send(id);
                if i % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            ids.push(
                r.publish_ok(&json!({ "method": SENTINEL }))
                    .await
                    .expect("sentinel"),
            );
            ids
        })
    };
    // Resume from several points while the publisher runs: each subscriber connects with a cursor
    // some events behind the head, so its replay meets live publishes at the seam.
    let mut seen = Vec::new();
    let mut subs = Vec::new();
    while let Some(id) = rx.recv().await {
        seen.push(id);
        if [30, 100, 180, 260].contains(&seen.len()) {
            let cursor = seen[seen.len() - 20].clone();
            let c = r
                .subscribe(&SseRequest::mcp().last_event_id(&cursor))
                .await
                .expect("subscribe mid-stream");
            assert_eq!(c.status(), 200);
            subs.push((cursor, c));
        }
    }
    let ids = publisher.await.expect("publisher");
    for (cursor, mut c) in subs {
        let who = format!("resumed from {cursor}");
        let frames = until_sentinel(&who, &mut c).await;
        let from = ids
            .iter()
            .position(|id| *id == cursor)
            .expect("cursor is published")
            + 1;
        let mut t = Tally::new(&who, ids[from..].to_vec());
        t.observe_frames(&frames);
        t.assert_exact();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreplayable_cursors_resync_to_the_head_and_the_head_does_not_resync_again() {
    let r = start("resync", &[]).await;
    let mut head = publish_n(&r, "notifications/test/e", "resync", 3)
        .await
        .pop()
        .expect("published");

    for protocol in [None, Some("2025-06-18"), Some("2025-11-25")] {
        for (kind, cursor) in [
            ("another epoch", other_epoch(&head)),
            ("above the head", above_head(&head)),
            ("not an event id", "not-an-event-id".to_string()),
            ("zero-padded seq", {
                let p: EventId = head.parse().expect("id");
                format!("{}-0{}", p.epoch, p.seq)
            }),
        ] {
            let who = format!("cursor {kind} ({cursor}), protocol {protocol:?}");
            let mut c = r
                .subscribe(&request(protocol).last_event_id(&cursor))
                .await
                .expect("subscribe");
            assert_eq!(c.status(), 200, "{who}: a resync is a normal stream");
            expect_resync(&who, &mut c, protocol, &head).await;

            // Live from the head.
            let next = r
                .publish_ok(&note("notifications/test/after-resync", kind, 0))
                .await
                .expect("publish");
            let f = c.next_event(SOON).await.expect("live event").expect("open");
            assert_eq!(
                f.id.as_deref(),
                Some(next.as_str()),
                "{who}: live after the resync"
            );

            // Reconnecting with the cursor the resync gave (the head at that time) replays exactly
            // what came after it, with no second resync.
            let mut again = r
                .subscribe(&request(protocol).last_event_id(&head))
                .await
                .expect("reconnect");
            let f = again.next_event(SOON).await.expect("replay").expect("open");
            assert_eq!(
                f.id.as_deref(),
                Some(next.as_str()),
                "{who}: reconnecting with the head resumes without a resync: {:?}",
                f.text()
            );
            assert_ne!(f.method().as_deref(), Some(RESYNC_METHODS[0]), "{who}");
            head = next;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_below_the_pruned_watermark_resyncs_and_one_above_it_replays() {
    let r = start("pruned", &[("FANOUT_MEMORY_EVENTS", "5")]).await;
    let ids = publish_n(&r, "notifications/test/e", "pruned", 20).await;
    let head = ids[19].clone();

    for protocol in [None, Some("2025-11-25")] {
        let who = format!("pruned cursor, protocol {protocol:?}");
        let mut c = r
            .subscribe(&request(protocol).last_event_id(&ids[2]))
            .await
            .expect("subscribe");
        assert_eq!(c.status(), 200);
        expect_resync(&who, &mut c, protocol, &head).await;
    }

    // The newest events are retained: a cursor among them replays exactly.
    let mut c = r
        .subscribe(&SseRequest::mcp().last_event_id(&ids[16]))
        .await
        .expect("subscribe");
    let frames = c.events(3, SOON).await.expect("replay of retained events");
    let mut t = Tally::new("retained cursor", ids[17..].to_vec());
    t.observe_frames(&frames);
    t.assert_exact();

    // /poll tells the same: the resync notifications with no ids, and the head as cursor.
    let a = poll_answer(&r, &format!("after={}&timeout=0", ids[2])).await;
    assert_poll_resync("poll below the watermark", &a, &head);
}

fn assert_poll_resync(who: &str, a: &PollAnswer, head: &str) {
    let methods: Vec<Option<String>> = a.events.iter().map(|e| e.method()).collect();
    assert_eq!(
        methods,
        RESYNC_METHODS
            .iter()
            .map(|m| Some((*m).to_string()))
            .collect::<Vec<_>>(),
        "{who}: the three resync notifications"
    );
    assert!(
        a.events.iter().all(|e| e.id.is_none()),
        "{who}: resync notifications have \"id\": null: {a:?}"
    );
    for e in &a.events {
        let v: Value = e.json().expect("message is JSON");
        assert_eq!(v["jsonrpc"], json!("2.0"), "{who}");
    }
    assert_eq!(a.cursor, head, "{who}: the cursor is the head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_resyncs_unreplayable_cursors_and_not_the_head() {
    let r = start("poll-resync", &[]).await;
    let head = publish_n(&r, "notifications/test/e", "poll-resync", 2)
        .await
        .pop()
        .expect("published");
    for cursor in [other_epoch(&head), above_head(&head), "garbage".to_string()] {
        let a = poll_answer(&r, &format!("after={cursor}&timeout=0")).await;
        assert_poll_resync(&format!("poll after {cursor}"), &a, &head);
        let a = poll_answer(&r, &format!("after={}&timeout=0", a.cursor)).await;
        assert!(a.events.is_empty(), "no second resync from the head: {a:?}");
        assert_eq!(a.cursor, head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priming_event_only_for_a_cursorless_2025_11_25_client() {
    let r = start("priming", &[("FANOUT_KEEPALIVE_SECS", "60")]).await;

    // Before any event: the priming id is the (empty) head, and resuming from it loses nothing.
    let mut fresh = r
        .subscribe(&SseRequest::mcp().protocol("2025-11-25"))
        .await
        .expect("subscribe");
    assert_eq!(fresh.status(), 200);
    let p = fresh
        .next_event(SOON)
        .await
        .expect("priming")
        .expect("open");
    assert!(
        p.is_priming(),
        "first frame is the priming event: {:?}",
        p.text()
    );
    assert!(
        p.retry.is_some(),
        "the priming event carries a retry: hint: {:?}",
        p.text()
    );
    let empty_head = p.id.clone().expect("priming id");
    let e0 = r
        .publish_ok(&note("notifications/test/p", "priming", 0))
        .await
        .expect("publish");
    let mut resumed = r
        .subscribe(
            &SseRequest::mcp()
                .protocol("2025-11-25")
                .last_event_id(&empty_head),
        )
        .await
        .expect("resume from the priming id");
    let f = resumed
        .next_event(SOON)
        .await
        .expect("event")
        .expect("open");
    assert_eq!(
        f.id.as_deref(),
        Some(e0.as_str()),
        "resuming from a priming id taken before any event replays the first event: {:?}",
        f.text()
    );
    assert!(
        !f.is_priming(),
        "no priming frame for a client with a cursor"
    );

    // After events: the priming id is the current head; an empty Last-Event-ID counts as absent.
    let mut primed = Vec::new();
    for req in [
        SseRequest::mcp().protocol("2025-11-25"),
        SseRequest::mcp().protocol("2025-11-25").last_event_id(""),
    ] {
        let mut c = r.subscribe(&req).await.expect("subscribe");
        let p = c.next_event(SOON).await.expect("priming").expect("open");
        assert!(p.is_priming(), "{:?}", p.text());
        assert_eq!(p.id.as_deref(), Some(e0.as_str()), "priming id is the head");
        primed.push(c);
    }

    // Older protocols get no empty-data frame: the first frame is the next real event.
    let mut old = Vec::new();
    for protocol in [None, Some("2025-03-26"), Some("2025-06-18")] {
        old.push((
            protocol,
            r.subscribe(&request(protocol)).await.expect("subscribe"),
        ));
    }
    // Subscribers: `fresh`, `resumed`, the two in `primed`, and the three old ones.
    r.wait_subscribers(7, SOON)
        .await
        .expect("subscribers registered");
    let e1 = r
        .publish_ok(&note("notifications/test/p", "priming", 1))
        .await
        .expect("publish");
    for (protocol, mut c) in old {
        let f = c.next_event(SOON).await.expect("frame").expect("open");
        assert_eq!(
            f.id.as_deref(),
            Some(e1.as_str()),
            "protocol {protocol:?}: the first frame is the event, no priming: {:?}",
            f.text()
        );
        assert!(f.data.as_deref().is_some_and(|d| !d.is_empty()));
    }
    let f = fresh.next_event(SOON).await.expect("event").expect("open");
    assert_eq!(
        f.id.as_deref(),
        Some(e0.as_str()),
        "the primed stream continues live"
    );
}
