//! Contract §3.4: a poll answers with every event committed before it asked, read from the log
//! without waiting for the bridge — also when many polls arrive at once. They share their reads
//! of the log's bounds (at most one query running and one waiting to start, whoever asks joining
//! the waiting one), so each must be answered from a query that started after it arrived. 20
//! rounds: an event published on replica A (its answer means committed), then 24 polls at once
//! on replica B at `timeout=0` from the position before it, while 8 more clients poll B without
//! pause: every answer holds the event, first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mcp_fanout_testkit::{body, poll_answer, Deployment, PollAnswer};

const ROUNDS: usize = 20;
const AT_ONCE: usize = 24;
const BACKGROUND: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_polls_still_sees_each_commit() {
    let pg = Deployment::fresh("pollflood").await;
    let replicas = pg.replicas("pollflood-", 2, &[]).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let http = b.http().clone();

    let stop = Arc::new(AtomicBool::new(false));
    let background: Vec<_> = (0..BACKGROUND)
        .map(|_| {
            let (http, stop, url) = (http.clone(), stop.clone(), b.public_url("/poll?timeout=0"));
            tokio::spawn(async move {
                let mut answered = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let resp = http.get(&url).send().await.expect("background poll");
                    assert_eq!(resp.status(), 200, "background poll");
                    answered += 1;
                }
                answered
            })
        })
        .collect();

    let mut before = poll_answer(b, "timeout=0").await.cursor;
    for round in 0..ROUNDS {
        let id = a.publish_ok(&body("round", round)).await.expect("publish");
        let url = b.public_url(&format!("/poll?after={before}&timeout=0"));
        let answers = futures::future::join_all((0..AT_ONCE).map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let resp = http.get(&url).send().await.expect("poll");
                assert_eq!(resp.status(), 200, "poll");
                PollAnswer::parse(&resp.bytes().await.expect("body")).expect("a poll answer")
            }
        }))
        .await;
        for answer in &answers {
            assert_eq!(
                answer.events.first().and_then(|e| e.id.as_deref()),
                Some(id.as_str()),
                "round {round}: a poll after the commit missed it: {answer:?}"
            );
        }
        before = id;
    }
    stop.store(true, Ordering::SeqCst);
    for task in background {
        assert!(task.await.expect("background poller") > 0);
    }
}
