//! Contract §1, §6: events of any allowed size travel through the log, not
//! the NOTIFY (whose payload is capped at 8000 bytes): a 60 KB params event, published over HTTP
//! and from SQL, reaches a subscriber on every replica intact and byte-identical. A NOTIFY forged
//! on the deployment's channel by another role (a future seq, garbage, an empty or huge payload,
//! the control channel too) delivers nothing, and a real event after the forgeries still arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::{
    open_stream_with, postgres::quote_literal, Deployment, Frame, SseConn, SseRequest, QUIET, SOON,
};
use serde_json::{json, Value};

const LARGE: usize = 60 * 1024;

/// Params whose compact JSON is a little over 60 KB: multi-byte text, escapes and nesting.
fn large_params(tag: &str) -> Value {
    let unit = "ünïcödé ✓ \"quoted\" back\\slash tab\t line\n 0123456789 ";
    let build = |units: usize| {
        json!({
            "tag": tag,
            "blob": unit.repeat(units),
            "nested": { "list": [1, 2.5, -3, true, null, "x"], "empty": {} },
        })
    };
    let size = |v: &Value| serde_json::to_string(v).map(|s| s.len()).unwrap_or(0);
    let base = size(&build(0));
    let per_unit = size(&build(1)) - base;
    let params = build((LARGE - base).div_ceil(per_unit));
    let total = size(&params);
    assert!(
        (LARGE..=65536).contains(&total),
        "test params are {total} bytes; they must be 60 KB and within the default 64 KiB limit"
    );
    params
}

/// The next event of each stream.
async fn next_events(conns: &mut [SseConn], what: &str) -> Vec<Frame> {
    let mut out = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let f = c
            .next_event(SOON)
            .await
            .unwrap_or_else(|e| panic!("subscriber {i}: {what}: {e}"))
            .unwrap_or_else(|| panic!("subscriber {i}: stream ended before {what}"));
        out.push(f);
    }
    out
}

/// Nothing but keep-alives arrives on any stream for a while.
async fn expect_silence(conns: &mut [SseConn], why: &str) {
    for (i, c) in conns.iter_mut().enumerate() {
        match c.next_event(QUIET).await {
            Err(e) if e.is_timeout() => {}
            Ok(Some(f)) => panic!("subscriber {i}: {why}, yet received {:?}", f.text()),
            Ok(None) => panic!("subscriber {i}: the stream ended ({why})"),
            Err(e) => panic!("subscriber {i}: {e} ({why})"),
        }
    }
}

fn check_large(frames: &[Frame], id: &str, method: &str, params: &Value) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            f.id.as_deref(),
            Some(id),
            "subscriber {i}: the large event's id"
        );
        let msg = f.json().expect("the large event's data is JSON");
        assert_eq!(msg["method"], json!(method), "subscriber {i}");
        assert!(
            msg["params"] == *params,
            "subscriber {i}: the 60 KB params arrived changed ({} bytes of data)",
            f.data.as_deref().map_or(0, str::len)
        );
        assert!(
            f.raw.len() > LARGE,
            "subscriber {i}: the frame carries the whole payload"
        );
        assert_eq!(
            f.raw, frames[0].raw,
            "subscriber {i}: byte-identical to subscriber 0 (another replica)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_60kb_event_arrives_intact_everywhere_and_forged_notifies_deliver_nothing() {
    let pg = Deployment::fresh("big").await;
    let replicas = pg.replicas("big-", 3, &[]).await;
    let mut conns = Vec::new();
    for r in &replicas {
        conns.push(open_stream_with(r, SseRequest::mcp(), r.label()).await);
        r.wait_subscribers(1, SOON)
            .await
            .expect("subscriber registered");
    }

    // 60 KB over HTTP (through the second replica), delivered by every replica.
    let http_params = large_params("http");
    let http_id = replicas[1]
        .publish_ok(&json!({"method": "notifications/test/large", "params": http_params}))
        .await
        .expect("publish 60 KB over HTTP");
    let frames = next_events(&mut conns, "the 60 KB HTTP event").await;
    check_large(&frames, &http_id, "notifications/test/large", &http_params);
    let stored = pg
        .psql(&format!(
            "SELECT octet_length(params) FROM {}.events ORDER BY seq DESC LIMIT 1",
            pg.schema
        ))
        .await;
    assert_eq!(
        stored,
        serde_json::to_string(&http_params)
            .expect("json")
            .len()
            .to_string(),
        "the log stores the params as compact JSON"
    );

    // 60 KB from SQL.
    let client = pg.client().await;
    let sql_params = large_params("sql");
    let sql_id = pg
        .sql_publish(&client, "notifications/test/large_sql", &sql_params)
        .await;
    let frames = next_events(&mut conns, "the 60 KB SQL event").await;
    check_large(
        &frames,
        &sql_id,
        "notifications/test/large_sql",
        &sql_params,
    );

    // Forged NOTIFYs from another role that can merely log in.
    let role = pg
        .server
        .create_login_role("forger")
        .await
        .expect("create a login role");
    let forger = pg
        .server
        .connect_as(&role, &pg.db)
        .await
        .expect("connect as the forger role");
    let events_channel = format!("\"{}.events\"", pg.schema);
    let control_channel = format!("\"{}.control\"", pg.schema);
    let head = pg.server.head(&pg.db, &pg.schema).await.expect("head");
    let huge = "9".repeat(7000);
    let forged_payloads = [
        "999999".to_string(),
        (head + 1).to_string(),
        "garbage".to_string(),
        String::new(),
        "-1".to_string(),
        "1; DROP TABLE x".to_string(),
        format!(
            "{{\"seq\":{},\"method\":\"notifications/forged\"}}",
            head + 1
        ),
        huge,
    ];
    for p in &forged_payloads {
        forger
            .batch_execute(&format!("NOTIFY {events_channel}, {}", quote_literal(p)))
            .await
            .expect("any role may NOTIFY");
    }
    forger
        .batch_execute(&format!("NOTIFY {control_channel}, 'garbage'"))
        .await
        .expect("NOTIFY on the control channel");
    expect_silence(&mut conns, "only forged NOTIFYs were sent").await;
    let head_after = pg.server.head(&pg.db, &pg.schema).await.expect("head");
    assert_eq!(head_after, head, "forged NOTIFYs commit nothing");

    // A real event after the forgeries arrives everywhere, with the seq right after the head.
    let real_id = replicas[2]
        .publish_ok(&mcp_fanout_testkit::note(
            "notifications/test/real",
            "big",
            0,
        ))
        .await
        .expect("publish the real event");
    let frames = next_events(&mut conns, "the real event after the forged NOTIFYs").await;
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.id.as_deref(), Some(real_id.as_str()), "subscriber {i}");
        assert_eq!(
            f.method().as_deref(),
            Some("notifications/test/real"),
            "subscriber {i}: {:?}",
            f.text()
        );
    }
    // …and one more from SQL, with the forger still connected.
    let sql_real = pg
        .sql_publish(
            &client,
            "notifications/test/real_sql",
            &json!({"after": "forgery"}),
        )
        .await;
    let frames = next_events(&mut conns, "a SQL event after the forged NOTIFYs").await;
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.id.as_deref(), Some(sql_real.as_str()), "subscriber {i}");
    }
    expect_silence(&mut conns, "every real event was delivered once").await;

    let log = pg.log_ids().await;
    assert_eq!(log, vec![http_id, sql_id, real_id, sql_real], "the log");
    for r in &replicas {
        assert_eq!(
            r.metric("mcp_fanout_listen_connected")
                .await
                .expect("metrics"),
            Some(1.0),
            "{}: still listening after the forgeries",
            r.label()
        );
    }
}
