//! Contract §4.1, §7.1: every publish answers the ids of exactly the events it committed, in
//! order, adjacent in the log, however the replicas' writers group concurrent requests into
//! transactions — requests without keys (committed in one round trip, numbered by the database
//! after the head), with an `Idempotency-Key`, with per-event keys, singles and arrays, from two
//! replicas and from SQL at once. The log has no gap and no event twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::collections::HashMap;

use futures::future::join_all;
use mcp_fanout_testkit::{note, Deployment, PublishOptions, Replica};
use reqwest::StatusCode;
use serde_json::{json, Value};

const METHOD: &str = "notifications/test/group";
const TASKS: usize = 24;
const ROUNDS: usize = 6;

/// What task `t` publishes in round `r`, and its options: the shapes alternate.
fn request(t: usize, r: usize) -> (Value, PublishOptions, Vec<String>) {
    let tag = |i: usize| format!("t{t}-r{r}-e{i}");
    let event = |i: usize| note(METHOD, &tag(i), i);
    match (t + r) % 4 {
        0 => (event(0), PublishOptions::default(), vec![tag(0)]),
        1 => (
            json!([event(0), event(1), event(2)]),
            PublishOptions::default(),
            (0..3).map(tag).collect(),
        ),
        2 => (
            event(0),
            PublishOptions {
                idempotency_key: Some(tag(0)),
                ..PublishOptions::default()
            },
            vec![tag(0)],
        ),
        _ => {
            let keyed = |i: usize| {
                let mut e = event(i);
                e["key"] = json!(tag(i));
                e
            };
            (
                json!([keyed(0), keyed(1)]),
                PublishOptions::default(),
                (0..2).map(tag).collect(),
            )
        }
    }
}

/// The ids a publish answered, one per event.
fn answered(status: StatusCode, body: &Value) -> Vec<String> {
    assert_eq!(status, StatusCode::OK, "publish: {body}");
    match (body.get("id"), body.get("ids")) {
        (Some(id), _) => vec![id.as_str().expect("a string id").to_owned()],
        (_, Some(ids)) => ids
            .as_array()
            .expect("an array of ids")
            .iter()
            .map(|v| v.as_str().expect("string ids").to_owned())
            .collect(),
        _ => panic!("no id in {body}"),
    }
}

async fn publish_all(replica: &Replica, t: usize) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for r in 0..ROUNDS {
        let (body, options, tags) = request(t, r);
        let (status, answer) = replica
            .publish_with(&body, &options)
            .await
            .expect("publish request");
        let ids = answered(status, &answer);
        assert_eq!(ids.len(), tags.len(), "one id per event: {answer}");
        pairs.extend(tags.into_iter().zip(ids));
    }
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_answer_the_ids_of_exactly_their_events() {
    let pg = Deployment::fresh("group_commit").await.with_admin();
    let replicas = pg.replicas("group", 2, &[]).await;
    let sql = pg.client().await;
    let sql_publishes = async {
        let mut pairs = Vec::new();
        for i in 0..ROUNDS * 2 {
            let tag = format!("sql-{i}");
            let params = json!({ "tag": tag, "n": i });
            let id = pg.sql_publish(&sql, METHOD, &params).await;
            pairs.push((tag, id));
        }
        pairs
    };
    let http = join_all((0..TASKS).map(|t| publish_all(&replicas[t % 2], t)));
    let (http, from_sql) = tokio::join!(http, sql_publishes);
    let answers: HashMap<String, String> = http.into_iter().flatten().chain(from_sql).collect();

    let log = pg
        .server
        .log_events_after(&pg.db, &pg.schema, 0)
        .await
        .expect("read the log");
    let mut logged: HashMap<String, String> = HashMap::new();
    for row in &log {
        let params: Value =
            serde_json::from_str(row.params.as_deref().expect("params")).expect("JSON params");
        let tag = params["tag"].as_str().expect("a tag").to_owned();
        assert!(
            logged.insert(tag.clone(), row.id.clone()).is_none(),
            "{tag} is in the log twice"
        );
    }
    let seqs: Vec<u64> = log
        .iter()
        .map(|row| {
            let (_, seq) = row.id.rsplit_once('-').expect("epoch-seq");
            seq.parse().expect("a seq")
        })
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "the log's seqs have no gap");
    assert_eq!(
        logged.len(),
        answers.len(),
        "every published event is in the log, once"
    );
    for (tag, id) in &answers {
        assert_eq!(
            logged.get(tag),
            Some(id),
            "the answer for {tag} names the event that carries it"
        );
    }
}
