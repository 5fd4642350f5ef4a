//! Contract §3.5, §7.1, §7.3: tenants A and B, each with subscribers on two
//! replicas of one Postgres deployment (header mode: the tenant comes from the trusted gateway's
//! header), some with sessions, plus tenant-less subscribers. Events for A, for B, for one
//! session, for tenant + session, for nobody present, and untargeted are published through both
//! replicas — single HTTP publishes, a mixed batch and `SELECT publish(…)` from SQL. Every
//! subscriber gets exactly the events the rule lets it see, in log order, and not one other:
//! live, on `Last-Event-ID` replay from the other replica, and via `/poll` (immediate and
//! waiting) on the other replica — with the same bytes everywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use mcp_fanout_testkit::{
    body,
    identity::{open_stream, poll_ok, publish_to, visible_ids, Published, Target, Who},
    seq_of, Deployment, Follower, SseConn,
};

const T: Duration = Duration::from_secs(15);

fn header_mode() -> [(&'static str, &'static str); 1] {
    [("FANOUT_SUBSCRIBER_AUTH", "header")]
}

/// The subscribers: who they are and on which replica (0 or 1) they listen live.
fn subscribers() -> Vec<(Who, usize)> {
    vec![
        (Who::header_mode("A/r0", Some("A"), None), 0),
        (Who::header_mode("A+sA/r1", Some("A"), Some("sess-a")), 1),
        (Who::header_mode("A/r1", Some("A"), None), 1),
        (Who::header_mode("B+sB/r0", Some("B"), Some("sess-b")), 0),
        (Who::header_mode("B/r1", Some("B"), None), 1),
        (Who::header_mode("anon/r0", None, None), 0),
        (Who::header_mode("anon+sN/r1", None, Some("sess-n")), 1),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_subscriber_gets_exactly_what_it_may_see_live_on_replay_and_by_poll() {
    let pg = Deployment::fresh("tenants").await.with_admin();
    let replicas = pg.replicas("tenants-", 2, &header_mode()).await;
    let (r0, r1) = (&replicas[0], &replicas[1]);
    let subs = subscribers();

    // A cursor before everything: the replay and poll checks start after it.
    let start = publish_to(r0, body("start", 0), &Target::default()).await;

    // Live streams, each on its own replica.
    let mut followers = Vec::new();
    for (who, at) in &subs {
        let conn = open_stream(&replicas[*at], who).await;
        followers.push(Follower::spawn(&who.label, conn));
    }
    for (i, r) in replicas.iter().enumerate() {
        let n = subs.iter().filter(|(_, at)| *at == i).count() as u64;
        r.wait_subscribers(n, T)
            .await
            .unwrap_or_else(|e| panic!("{}: subscribers registered: {e}", r.label()));
    }

    // Publish through both replicas and SQL, alternating.
    let t = |tenant: Option<&str>, session: Option<&str>| Target::new(tenant, session);
    let singles = [
        t(Some("A"), None),
        t(Some("B"), None),
        t(None, Some("sess-a")),
        t(None, Some("sess-b")),
        t(Some("A"), Some("sess-a")),
        // Both set and matching nobody: B's session under tenant A.
        t(Some("A"), Some("sess-b")),
        t(None, None),
        t(Some("B"), Some("sess-b")),
        t(None, Some("sess-n")),
        // Tenants nobody has, one a prefix-extension of a real one.
        t(Some("C"), None),
        t(Some("AB"), None),
        // A session nobody presents.
        t(None, Some("sess-z")),
    ];
    let mut events: Vec<Published> = Vec::new();
    for (n, target) in singles.iter().enumerate() {
        let r = &replicas[n % 2];
        events.push(publish_to(r, body("single", n), target).await);
    }
    // One batch mixing targets, through r1.
    let batch_targets = [
        t(Some("B"), None),
        t(None, Some("sess-a")),
        t(None, None),
        // Tenant A with the tenant-less subscriber's session: nobody (it has no tenant).
        t(Some("A"), Some("sess-n")),
    ];
    let batch: Vec<serde_json::Value> = batch_targets
        .iter()
        .enumerate()
        .map(|(k, tg)| tg.apply(body("batch", k)))
        .collect();
    let ids = r1
        .publish_batch_ok(&batch)
        .await
        .unwrap_or_else(|e| panic!("batch publish: {e}"));
    for (id, target) in ids.into_iter().zip(batch_targets.iter()) {
        events.push(Published {
            id,
            target: target.clone(),
        });
    }
    // From SQL, with the same arguments.
    let client = pg.client().await;
    for (k, (tenant, session)) in [
        (Some("A"), None),
        (Some("B"), Some("sess-b")),
        (None, Some("sess-n")),
    ]
    .into_iter()
    .enumerate()
    {
        let id = pg
            .try_sql_publish(&client, &body("sql", k), tenant, session)
            .await
            .unwrap_or_else(|e| panic!("SQL publish {k}: {e}"));
        events.push(Published {
            id,
            target: t(tenant, session),
        });
    }
    // A fence everybody sees: it is delivered after every earlier event, so once it arrived,
    // anything wrongly visible would have arrived before it.
    let fence = publish_to(r0, body("fence", 0), &Target::default()).await;
    events.push(fence.clone());
    assert!(
        events
            .windows(2)
            .all(|w| seq_of(&w[0].id) < seq_of(&w[1].id)),
        "ids increase in publish order: {events:?}"
    );

    // Every subscriber sees something, someone sees each kind, and nobody sees everything: the
    // test is not vacuous.
    let expected: HashMap<String, Vec<String>> = subs
        .iter()
        .map(|(who, _)| (who.label.clone(), visible_ids(&events, who)))
        .collect();
    assert!(expected.values().all(|v| v.len() >= 3));
    assert!(expected.values().all(|v| v.len() < events.len()));

    // ---- live ----
    let fence_seq = seq_of(&fence.id);
    let seen = join_all(followers.into_iter().map(|f| f.finish(fence_seq, T))).await;
    let mut problems = Vec::new();
    let mut live_bytes: HashMap<String, String> = HashMap::new();
    let mut live_conns: Vec<SseConn> = Vec::new();
    for s in seen {
        let mut s = s.expect("follower");
        let want = &expected[&s.label];
        let got = s.event_ids();
        if &got != want {
            problems.push(format!(
                "live `{}`: expected {want:?}\n    got {got:?} ({})",
                s.label,
                s.summary()
            ));
        }
        if s.end.is_some() {
            problems.push(format!("live `{}`: the stream ended: {:?}", s.label, s.end));
        }
        for f in s.events() {
            let (Some(id), Some(data)) = (f.id.clone(), f.data.clone()) else {
                continue;
            };
            if let Some(prev) = live_bytes.insert(id.clone(), data.clone()) {
                if prev != data {
                    problems.push(format!("event {id}: different data on two streams"));
                }
            }
        }
        if let Some(c) = s.conn.take() {
            live_conns.push(c);
        }
    }
    assert!(
        problems.is_empty(),
        "live delivery broke the visibility rule:\n  {}",
        problems.join("\n  ")
    );

    // ---- Last-Event-ID replay, each on the other replica ----
    // (A replay with a session takes the session over, which ends the live stream of it: close
    // the live ones first.)
    drop(live_conns);
    for r in &replicas {
        r.wait_subscribers(0, T)
            .await
            .unwrap_or_else(|e| panic!("{}: live streams closed: {e}", r.label()));
    }
    let mut problems = Vec::new();
    for (who, at) in &subs {
        let other = &replicas[1 - *at];
        let mut conn = open_stream(other, &replay_of(who, &start.id)).await;
        let frames = conn
            .collect_until(T, |f| f.id.as_deref() == Some(fence.id.as_str()))
            .await
            .unwrap_or_else(|e| panic!("replay of `{}` on {}: {e}", who.label, other.label()));
        let got = mcp_fanout_testkit::frame_ids(&frames);
        let want = &expected[&who.label];
        if &got != want {
            problems.push(format!(
                "replay `{}` on {}: expected {want:?}\n    got {got:?}",
                who.label,
                other.label()
            ));
        }
        for f in &frames {
            if let (Some(id), Some(data)) = (&f.id, &f.data) {
                if live_bytes.get(id).is_some_and(|live| live != data) {
                    problems.push(format!("replayed {id}: data differs from live"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "Last-Event-ID replay broke the visibility rule:\n  {}",
        problems.join("\n  ")
    );

    // ---- /poll, on the other replica, from the start cursor ----
    let mut problems = Vec::new();
    for (who, at) in &subs {
        let other = &replicas[1 - *at];
        let answer = poll_ok(other, who, &format!("after={}&timeout=0", start.id)).await;
        let got: Vec<String> = answer.events.iter().filter_map(|e| e.id.clone()).collect();
        let want = &expected[&who.label];
        if &got != want || answer.events.iter().any(|e| e.id.is_none()) {
            problems.push(format!(
                "poll `{}` on {}: expected {want:?}\n    got {:?}",
                who.label,
                other.label(),
                answer.events
            ));
        }
        if answer.cursor != fence.id || answer.more {
            problems.push(format!(
                "poll `{}`: cursor {} (more {}), expected the fence {}",
                who.label, answer.cursor, answer.more, fence.id
            ));
        }
        for e in &answer.events {
            if let Some(id) = &e.id {
                if live_bytes.get(id).is_some_and(|live| *live != e.message) {
                    problems.push(format!("polled {id}: message differs from the live data"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "/poll broke the visibility rule:\n  {}",
        problems.join("\n  ")
    );

    // ---- waiting polls: each wakes only for an event it may see ----
    let waiting: Vec<_> = subs
        .iter()
        .map(|(who, at)| {
            let who = who.clone();
            let r = &replicas[*at];
            let after = fence.id.clone();
            async move {
                let a = poll_ok(r, &who, &format!("after={after}&timeout=20")).await;
                (who, a)
            }
        })
        .collect();
    let publisher = async {
        // Wait until every poll is registered as a waiting subscriber, then publish a round in
        // which every subscriber's first visible event comes after others it may not see.
        for (i, r) in replicas.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let n = subs.iter().filter(|(_, at)| *at == i).count() as f64;
            r.wait_metric(r#"mcp_fanout_subscribers{kind="poll"}"#, T, |v| v == n)
                .await
                .unwrap_or_else(|e| panic!("{}: waiting polls registered: {e}", r.label()));
        }
        let round = [
            t(Some("C"), None),
            t(Some("B"), Some("sess-a")),
            t(Some("A"), Some("sess-b")),
            t(Some("B"), None),
            t(Some("A"), None),
            t(None, Some("sess-n")),
            t(None, Some("sess-a")),
            t(Some("B"), Some("sess-b")),
            t(None, None),
        ];
        let mut out = Vec::new();
        for (n, target) in round.iter().enumerate() {
            out.push(publish_to(&replicas[n % 2], body("round", n), target).await);
        }
        out
    };
    let (answers, round) = tokio::join!(join_all(waiting), publisher);
    let mut problems = Vec::new();
    for (who, answer) in answers {
        let want = visible_ids(&round, &who);
        let got: Vec<String> = answer.events.iter().filter_map(|e| e.id.clone()).collect();
        // It answers as soon as something visible exists: a non-empty prefix of what it may see.
        if got.is_empty() || got.len() > want.len() || got[..] != want[..got.len()] {
            problems.push(format!(
                "waiting poll `{}`: expected a non-empty prefix of {want:?}\n    got {got:?}",
                who.label
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "waiting /poll broke the visibility rule:\n  {}",
        problems.join("\n  ")
    );
}

/// `who`'s request with `Last-Event-ID`.
fn replay_of(who: &Who, after: &str) -> Who {
    let mut w = who.clone();
    w.headers
        .push(("Last-Event-ID".to_string(), after.to_string()));
    w
}
