//! Contract §3.1, §3.2, §3.4, §7.3: a subscriber that read some events on one
//! replica and reconnects with `Last-Event-ID` to another replica — one that delivered the missed
//! events live, and one started after they were published (so only the Postgres log has them) —
//! gets exactly the missed events in log order, then live ones, nothing twice; `/poll` on another
//! replica agrees. A cursor below the pruned watermark (retention by count, waited for in
//! `<schema>.meta.pruned`) yields the resync on another replica, for old and new protocol versions,
//! and on `/poll`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{
    note, open_stream_with, poll_answer, publish_n, seq_of, Deployment, SseConn, SseRequest, Tally,
    QUIET, SOON,
};
use serde_json::{json, Value};

const RESYNC_METHODS: [&str; 3] = [
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/prompts/list_changed",
];

/// Reads `expected.len()` events and checks them exactly, then checks that nothing else follows.
async fn expect_events(who: &str, conn: &mut SseConn, expected: &[String]) {
    let frames = conn
        .events(expected.len(), SOON)
        .await
        .unwrap_or_else(|e| panic!("{who}: {e}"));
    let mut tally = Tally::new(who, expected.iter().cloned());
    tally.observe_frames(&frames);
    tally.assert_exact();
    match conn.next_event(QUIET).await {
        Err(e) if e.is_timeout() => {}
        other => panic!("{who}: nothing more expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn last_event_id_on_another_replica_yields_exactly_the_missed_events() {
    let pg = Deployment::fresh("resume").await;
    let replicas = pg.replicas("resume-", 2, &[]).await;
    let (a, b) = (&replicas[0], &replicas[1]);

    // Read the first five on A, then go away.
    let mut conn = open_stream_with(a, SseRequest::mcp(), a.label()).await;
    a.wait_subscribers(1, SOON).await.expect("registered");
    let first = publish_n(a, "notifications/test/resume", "before", 5).await;
    expect_events("first connection on A", &mut conn, &first).await;
    let cursor = conn
        .last_event_id()
        .expect("the stream carried ids")
        .to_string();
    assert_eq!(cursor, first[4]);
    drop(conn);

    // Missed while away: through both replicas and from SQL.
    let mut missed_published = publish_n(a, "notifications/test/resume", "missed-a", 4).await;
    missed_published.extend(publish_n(b, "notifications/test/resume", "missed-b", 4).await);
    let client = pg.client().await;
    for i in 0..2 {
        missed_published.push(
            pg.sql_publish(&client, "notifications/test/resume_sql", &json!({ "n": i }))
                .await,
        );
    }
    let missed = pg.log_ids_after(seq_of(&cursor)).await;
    assert_eq!(missed, missed_published, "the log holds what was published");

    // A replica that started after the events were published has only the log to read them from.
    let c = pg.replica("resume-late", &[]).await;

    for (r, protocol) in [(b, None), (&c, Some("2025-11-25")), (b, Some("2025-06-18"))] {
        let who = format!("resume from {cursor} on {} ({protocol:?})", r.label());
        let mut req = SseRequest::mcp().last_event_id(&cursor);
        if let Some(p) = protocol {
            req = req.protocol(p);
        }
        // Everything after the cursor: the missed events, plus the live events of earlier rounds.
        let missed = pg.log_ids_after(seq_of(&cursor)).await;
        let mut conn = open_stream_with(r, req, r.label()).await;
        let frames = conn
            .events(missed.len(), SOON)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert!(
            frames.iter().all(|f| !f.is_priming()),
            "{who}: no priming frame when a cursor is given"
        );
        let mut tally = Tally::new(&who, missed.iter().cloned());
        tally.observe_frames(&frames);
        tally.assert_exact();
        // Then live events, with no gap or duplicate at the seam.
        let live = a
            .publish_ok(&note("notifications/test/live", "live", 0))
            .await
            .expect("live publish");
        expect_events(
            &format!("{who}, live"),
            &mut conn,
            std::slice::from_ref(&live),
        )
        .await;
    }

    // /poll on another replica agrees with the log.
    let all_after = pg.log_ids_after(seq_of(&cursor)).await;
    for r in [b, &c] {
        let answer = poll_answer(r, &format!("after={cursor}&timeout=0")).await;
        let ids: Vec<String> = answer.events.iter().filter_map(|e| e.id.clone()).collect();
        assert_eq!(ids, all_after, "{}: /poll after {cursor}", r.label());
        assert_eq!(Some(&answer.cursor), all_after.last());
    }
}

/// Checks the resync sequence (contract §3.2) and returns nothing more than it.
async fn expect_resync(who: &str, conn: &mut SseConn, modern: bool, head: &str) {
    let n = if modern { 4 } else { 3 };
    let frames = conn
        .events(n, SOON)
        .await
        .unwrap_or_else(|e| panic!("{who}: the resync frames: {e}"));
    for (i, method) in RESYNC_METHODS.iter().enumerate() {
        let f = &frames[i];
        let msg: Value = f
            .json()
            .unwrap_or_else(|e| panic!("{who}: resync frame {i} ({e}): {:?}", f.text()));
        assert_eq!(
            msg["method"],
            json!(method),
            "{who}: resync frame {i}: {:?}",
            f.text()
        );
        let want_id = (!modern && i == 2).then_some(head);
        assert_eq!(
            f.id.as_deref(),
            want_id,
            "{who}: resync frame {i} id (the last one carries the head for older protocols): {:?}",
            f.text()
        );
    }
    if modern {
        assert!(
            frames[3].is_priming() && frames[3].id.as_deref() == Some(head),
            "{who}: a priming frame at the head {head} follows the resync: {:?}",
            frames[3].text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cursor_below_the_pruned_watermark_yields_a_resync_on_another_replica() {
    let pg = Deployment::fresh("pruned").await;
    let env = [
        ("FANOUT_RETENTION_MAX_EVENTS", "5"),
        ("FANOUT_RETENTION_INTERVAL_SECS", "1"),
    ];
    let replicas = pg.replicas("pruned-", 2, &env).await;
    let (p, q) = (&replicas[0], &replicas[1]);

    let old = publish_n(p, "notifications/test/resume", "old", 3).await;
    publish_n(q, "notifications/test/resume", "newer", 20).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let pruned = loop {
        let pruned = pg.server.pruned(&pg.db, &pg.schema).await.expect("pruned");
        if pruned > seq_of(&old[1]) {
            break pruned;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention (max 5 events, every 1 s) did not advance {}.meta.pruned past {} within 15 s (it is {pruned})",
            pg.schema,
            seq_of(&old[1])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let oldest_kept = pg
        .psql(&format!("SELECT min(seq) FROM {}.events", pg.schema))
        .await;
    assert!(
        oldest_kept.parse::<u64>().expect("min seq") > pruned,
        "events up to the watermark {pruned} are gone (oldest kept {oldest_kept})"
    );
    let epoch = pg.server.epoch(&pg.db, &pg.schema).await.expect("epoch");
    let cursor = &old[0];

    for (r, modern) in [(q, true), (p, false)] {
        let head = format!(
            "{epoch}-{}",
            pg.server.head(&pg.db, &pg.schema).await.expect("head")
        );
        let who = format!(
            "cursor {cursor} below the watermark {pruned} on {}",
            r.label()
        );
        let mut req = SseRequest::mcp().last_event_id(cursor);
        if modern {
            req = req.protocol("2025-11-25");
        }
        let mut conn = open_stream_with(r, req, r.label()).await;
        expect_resync(&who, &mut conn, modern, &head).await;
        assert_eq!(
            conn.last_event_id(),
            Some(head.as_str()),
            "{who}: cursor moved to the head"
        );
        let live = p
            .publish_ok(&note("notifications/test/after_resync", "pruned", 0))
            .await
            .expect("publish after the resync");
        expect_events(
            &format!("{who}, live"),
            &mut conn,
            std::slice::from_ref(&live),
        )
        .await;
    }

    // /poll on the other replica: the resync notifications with null ids and the head as cursor.
    let head_now = format!(
        "{epoch}-{}",
        pg.server.head(&pg.db, &pg.schema).await.expect("head")
    );
    let answer = poll_answer(q, &format!("after={cursor}&timeout=0")).await;
    let methods: Vec<String> = answer
        .events
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.message).expect("message JSON")["method"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        methods, RESYNC_METHODS,
        "/poll with a pruned cursor: {:?}",
        answer.events
    );
    assert!(
        answer.events.iter().all(|e| e.id.is_none()),
        "resync events carry id null"
    );
    assert_eq!(answer.cursor, head_now, "/poll resync cursor is the head");
}
