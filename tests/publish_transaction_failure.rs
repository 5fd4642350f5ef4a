//! The publish transaction is pipelined (its statements are sent together). A statement that fails
//! inside it must leave nothing half-written: no event, no idempotency key, no moved head; the
//! publish is refused with a JSON error, later publishes get the very next seq, and subscribers
//! see every committed event once, in order, and nothing else.

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

    for round in 1..=4 {
        // A batch with a kept event and a refused one, all or nothing; its key is a per-event
        // key (odd rounds) or the request's Idempotency-Key (even rounds).
        let per_event = round % 2 == 1;
        let key = |e: serde_json::Value| {
            let mut e = e;
            if per_event {
                e["key"] = json!(format!("ev-{round}"));
            }
            e
        };
        let opts = PublishOptions {
            idempotency_key: (!per_event).then(|| format!("req-{round}")),
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

    assert_eq!(
        pg.log_ids().await,
        expected,
        "the log holds the committed events only"
    );
    expect_exactly(followers, &expected, SOON, true).await;
}
