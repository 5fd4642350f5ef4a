//! The publish transaction is pipelined (its statements are sent together). A statement that fails
//! inside it must leave nothing half-written: no event, no idempotency key, no moved head; the
//! publish is refused with a JSON error, later publishes get the very next seq, and subscribers
//! see every committed event once, in order, and nothing else. The same when the head row is
//! missing: refused, nothing written, on the keyless and the keyed path.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use mcp_fanout_testkit::{
    expect_exactly, follow_all, seq_of, Deployment, PublishOptions, Replica, SOON,
};
use serde_json::json;

const REFUSED: &str = "notifications/test/refused";
const KEPT: &str = "notifications/test/kept";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_failing_inside_the_publish_transaction_writes_nothing() {
    let pg = Deployment::fresh("pubfail").await;
    let replicas = pg.replicas("pubfail-", 1, &[]).await;
    let r = &replicas[0];
    let followers = follow_all(&[r as &Replica], 2).await;

    let mut expected = vec![r
        .publish_ok(&json!({ "method": KEPT, "params": { "n": 0 } }))
        .await
        .expect("first publish")];

    // The database refuses one method, from inside the insert statement.
    let s = &pg.schema;
    pg.client()
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.method = '{REFUSED}' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON {s}.events \
             FOR EACH ROW EXECUTE FUNCTION {s}.refuse();"
        ))
        .await
        .expect("install the refusing trigger");

    for round in 1..=6 {
        // A batch with a kept event and a refused one, all or nothing; its key is a per-event
        // key (rounds 1, 3) or the request's Idempotency-Key (rounds 2, 4); rounds 5 and 6 name
        // no key (the one-trip transaction, `append_events`).
        let keyless = round > 4;
        let per_event = !keyless && round % 2 == 1;
        let key = |e: serde_json::Value| {
            let mut e = e;
            if per_event {
                e["key"] = json!(format!("ev-{round}"));
            }
            e
        };
        let opts = PublishOptions {
            idempotency_key: (!keyless && !per_event).then(|| format!("req-{round}")),
            ..PublishOptions::default()
        };
        let batch = json!([
            key(json!({ "method": KEPT, "params": { "round": round } })),
            { "method": REFUSED, "params": { "round": round } },
        ]);
        let (status, body) = r.publish_with(&batch, &opts).await.expect("publish");
        assert!(
            status.is_server_error(),
            "round {round}: refused by the database: {status} {body}"
        );
        assert!(body["error"]["code"].is_string(), "a JSON error: {body}");

        // Nothing of it was written: the keys are free (another body under them is accepted,
        // not a 409 conflict), and the head did not move (the next seq follows the last one).
        let last = seq_of(expected.last().expect("an event"));
        let other = json!([key(json!({ "method": KEPT, "params": { "other": round } }))]);
        let (status, body) = r.publish_with(&other, &opts).await.expect("publish");
        assert_eq!(
            status, 200,
            "round {round}: the keys were not recorded: {body}"
        );
        let id = body["ids"][0]
            .as_str()
            .unwrap_or_else(|| panic!("ids: {body}"))
            .to_string();
        assert_eq!(
            seq_of(&id),
            last + 1,
            "round {round}: the head did not move"
        );
        expected.push(id);
    }

    // The head row gone (the schema altered outside mcp-fanout): every publish is refused with
    // a JSON error and writes nothing, with and without a key; put back, numbering goes on.
    let client = pg.client().await;
    client
        .batch_execute(&format!("DELETE FROM {s}.head"))
        .await
        .expect("delete the head row");
    let headless = json!([{ "method": KEPT, "params": { "headless": true } }]);
    for opts in [
        PublishOptions::default(),
        PublishOptions {
            idempotency_key: Some("headless".to_string()),
            ..PublishOptions::default()
        },
    ] {
        let (status, body) = r.publish_with(&headless, &opts).await.expect("publish");
        assert!(
            status.is_server_error(),
            "no head row: refused: {status} {body}"
        );
        assert!(body["error"]["code"].is_string(), "a JSON error: {body}");
    }
    let last = seq_of(expected.last().expect("an event"));
    client
        .batch_execute(&format!("INSERT INTO {s}.head (seq) VALUES ({last})"))
        .await
        .expect("put the head row back");
    let id = r
        .publish_ok(&json!({ "method": KEPT, "params": { "head": "back" } }))
        .await
        .expect("publish with the head back");
    assert_eq!(seq_of(&id), last + 1, "numbering goes on from the head");
    expected.push(id);

    assert_eq!(
        pg.log_ids().await,
        expected,
        "the log holds the committed events only"
    );
    expect_exactly(followers, &expected, SOON, true).await;
}
