//! The client crate against the real `mcp-fanout` binary (built by cargo in the same target dir:
//! `cargo build -p mcp-fanout` first when running only this package's tests, or set
//! `MCP_FANOUT_BIN`).
//!
//! - A publisher's events, single and batched, reach a follower exactly, typed, with their ids;
//!   refusals carry the server's error code, field and batch index; a per-call idempotency key
//!   makes a keyed retry publish nothing new.
//! - A cursor the server cannot replay yields one `Resync` with the head, then the events after it.
//! - A publisher keeps retrying while nothing listens, and publishes once a replica comes up.
//! - Followers keep every event exactly once, in log order, while the replica they follow is
//!   SIGKILLed and restarted on Postgres with publishing going on throughout: one that follows
//!   only the killed replica, one that goes round two.
//! - A stream silent past the idle timeout is reopened, and nothing is lost meanwhile.
//! - A refused stream (a bad credential) ends the follower with the server's error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mcp_fanout_client::{
    Event, EventId, Follower, Item, Notification, PublishError, Publisher, Resync,
};
use mcp_fanout_testkit::launch::start_memory;
use mcp_fanout_testkit::postgres::free_port;
use mcp_fanout_testkit::{wait_until, Deployment, Replica, Tally, ADMIN_TOKEN, SOON};
use serde_json::json;
use tokio::task::JoinHandle;

const LONG: Duration = Duration::from_secs(60);

/// Everything a follower yielded, collected in the background.
struct Collected {
    items: Arc<Mutex<Vec<Item>>>,
    task: JoinHandle<()>,
    label: String,
    status: tokio::sync::watch::Receiver<mcp_fanout_client::Status>,
}

impl Collected {
    async fn start(label: &str, follower: Follower) -> Collected {
        follower.connected().await;
        let status = follower.watch_status();
        let items = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&items);
        let who = label.to_string();
        let task = tokio::spawn(async move {
            let mut follower = follower;
            while let Some(item) = follower.next().await {
                match item {
                    Ok(item) => sink.lock().expect("lock").push(item),
                    Err(e) => panic!("{who}: the follower stopped: {e}"),
                }
            }
        });
        Collected {
            items,
            task,
            label: label.to_string(),
            status,
        }
    }

    /// Streams the follower opened so far.
    fn connections(&self) -> u64 {
        self.status.borrow().connections
    }

    fn items(&self) -> Vec<Item> {
        self.items.lock().expect("lock").clone()
    }

    fn events(&self) -> Vec<Event> {
        self.items()
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(e),
                Item::Resync(_) => None,
            })
            .collect()
    }

    async fn wait_items(&self, n: usize, timeout: Duration) -> Vec<Item> {
        wait_until(&format!("{}: {n} items", self.label), timeout, || async {
            self.items.lock().expect("lock").len() >= n
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; got {:#?}", self.items()));
        self.items()
    }

    /// Waits for `expected`, then checks the events are exactly those ids, in order.
    async fn expect_exactly(&self, expected: &[String], timeout: Duration) {
        self.wait_items(expected.len(), timeout).await;
        let mut tally = Tally::new(&self.label, expected.iter().cloned());
        for e in self.events() {
            tally.observe(&e.id.to_string());
        }
        tally.assert_exact();
        assert!(
            self.items().iter().all(|i| matches!(i, Item::Event(_))),
            "{}: no resync expected: {:?}",
            self.label,
            self.items()
        );
    }
}

impl Drop for Collected {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn base(r: &Replica) -> String {
    r.public_url("")
}

fn ids(ids: &[EventId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_reach_the_follower_typed_and_refusals_carry_the_code() {
    let r = start_memory("client", &[]).await;
    let publisher = Publisher::new(base(&r)).token(ADMIN_TOKEN);
    let follower = Follower::new(base(&r)).expect("follower");
    let seen = Collected::start("follower", follower).await;

    let one = publisher
        .publish(&Notification::tools_list_changed().params(json!({"b": 1, "a": "x\ny"})))
        .await
        .expect("publish one");
    let batch = publisher
        .publish_batch(&[
            Notification::resource_updated("file:///a.txt"),
            Notification::new("notifications/message").params(json!({"level": "info"})),
            Notification::prompts_list_changed(),
        ])
        .await
        .expect("publish a batch");
    assert_eq!(batch.len(), 3);
    assert!(
        batch[0].is_after(&one) && batch[1].seq() == batch[0].seq() + 1,
        "{one} {batch:?}"
    );
    let mut expected = vec![one.to_string()];
    expected.extend(ids(&batch));
    seen.expect_exactly(&expected, SOON).await;
    let events = seen.events();
    assert_eq!(events[0].method, "notifications/tools/list_changed");
    assert_eq!(
        events[0]
            .params
            .as_ref()
            .map(|p| serde_json::Value::Object(p.clone())),
        Some(json!({"b": 1, "a": "x\ny"})),
        "params, key order kept"
    );
    assert_eq!(
        events[0].message,
        r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"b":1,"a":"x\ny"}}"#
    );
    assert_eq!(events[1].method, "notifications/resources/updated");
    assert_eq!(
        events[1].params.as_ref().map(|p| p["uri"].clone()),
        Some(json!("file:///a.txt"))
    );
    assert_eq!(events[3].params, None);

    // Refusals: typed, with the server's code, field and index; nothing retried or published.
    let refused = |e: PublishError| match e {
        PublishError::Refused(s) => s,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let bad_token = Publisher::new(base(&r)).token("wrong");
    let e = refused(
        bad_token
            .publish(&Notification::tools_list_changed())
            .await
            .expect_err("401"),
    );
    assert_eq!((e.status, e.code.as_str()), (401, "unauthorized"), "{e}");
    let e = refused(
        publisher
            .publish_batch(&[
                Notification::tools_list_changed(),
                Notification::new("tools/not-a-notification"),
            ])
            .await
            .expect_err("a bad method"),
    );
    assert_eq!((e.status, e.index), (400, Some(1)), "{e}");
    assert!(
        !e.code.is_empty() && e.message.contains("notifications/"),
        "{e}"
    );
    assert!(matches!(
        publisher.publish_batch(&[]).await,
        Err(PublishError::EmptyBatch)
    ));

    // An event's own key: publishing it again answers the same id and publishes nothing.
    let keyed = Notification::resources_list_changed().key("client-k1");
    let first = publisher.publish(&keyed).await.expect("keyed");
    let again = publisher.publish(&keyed).await.expect("keyed again");
    assert_eq!(first, again);
    // In a batch with some keys, the others get keys from the call: a retry is still exact.
    let mixed = [
        Notification::new("notifications/test/mixed").key("client-k2"),
        Notification::new("notifications/test/mixed"),
    ];
    let mixed_ids = publisher.publish_batch(&mixed).await.expect("mixed batch");
    let marker = publisher
        .publish(&Notification::new("notifications/test/marker"))
        .await
        .expect("marker");
    expected.extend([first.to_string()]);
    expected.extend(ids(&mixed_ids));
    expected.push(marker.to_string());
    seen.expect_exactly(&expected, SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_that_cannot_be_replayed_yields_one_resync_then_the_events_after_the_head() {
    let r = start_memory("client-resync", &[]).await;
    let publisher = Publisher::new(base(&r)).token(ADMIN_TOKEN);
    let head = publisher
        .publish(&Notification::tools_list_changed())
        .await
        .expect("publish");

    // A cursor of another log: the server cannot replay after it.
    let follower = Follower::builder(base(&r))
        .last_event_id("zzzzzz-5")
        .spawn()
        .expect("follower");
    let seen = Collected::start("resyncing follower", follower).await;
    let items = seen.wait_items(1, SOON).await;
    assert_eq!(items, vec![Item::Resync(Resync { head: head.clone() })]);

    let next = publisher
        .publish(&Notification::new("notifications/test/after"))
        .await
        .expect("publish after");
    let items = seen.wait_items(2, SOON).await;
    assert!(
        matches!(&items[..], [Item::Resync(_), Item::Event(e)] if e.id == next),
        "{items:?}"
    );

    // A replayable cursor: exactly what follows it, and no resync.
    let follower = Follower::builder(base(&r))
        .last_event_id(head.to_string())
        .spawn()
        .expect("follower");
    let resumed = Collected::start("resumed follower", follower).await;
    resumed.expect_exactly(&[next.to_string()], SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_retries_until_a_replica_listens_and_gives_up_at_its_deadline() {
    let port = free_port().expect("a free port");
    let url = format!("http://127.0.0.1:{port}");

    let quick = Publisher::new(&url)
        .token(ADMIN_TOKEN)
        .backoff(Duration::from_millis(20), Duration::from_millis(50))
        .retry_for(Duration::from_millis(300));
    match quick.publish(&Notification::tools_list_changed()).await {
        Err(PublishError::Unavailable { attempts, .. }) => assert!(attempts >= 2, "{attempts}"),
        other => panic!("nothing listens: expected Unavailable, got {other:?}"),
    }

    let patient = Publisher::new(&url)
        .token(ADMIN_TOKEN)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .retry_for(LONG);
    let pending = tokio::spawn(async move {
        patient
            .publish(&Notification::new("notifications/test/patient"))
            .await
    });
    let addr = format!("127.0.0.1:{port}");
    let r = start_memory("client-late", &[("FANOUT_ADDR", &addr)]).await;
    let id = pending
        .await
        .expect("join")
        .expect("published once the replica listens");
    let answer = r
        .poll(&format!("after={}-0&timeout=0", id.epoch()))
        .await
        .expect("poll")
        .json()
        .expect("poll JSON");
    assert_eq!(
        answer["events"],
        json!([{"id": id.to_string(), "message": {"jsonrpc": "2.0", "method": "notifications/test/patient"}}]),
        "published once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_keep_every_event_once_while_their_replica_is_killed_and_restarted() {
    let pg = Deployment::fresh("client_follow").await.with_admin();
    let mut a = pg.replica("follow-a", &[]).await;
    let b = pg.replica("follow-b", &[]).await;
    let quick = |f: mcp_fanout_client::FollowerBuilder| {
        f.backoff(Duration::from_millis(50), Duration::from_millis(500))
            .spawn()
            .expect("follower")
    };
    // Only A: while A is down it keeps retrying, and resumes on A once it is back.
    let only_a = Collected::start("follower of A", quick(Follower::builder(base(&a)))).await;
    // A and B: it goes on from B.
    let both = Collected::start(
        "follower of A and B",
        quick(Follower::builder(base(&a)).url(base(&b))),
    )
    .await;

    // Publishing through B throughout, with idempotent retries.
    let publisher = Publisher::new(base(&b))
        .token(ADMIN_TOKEN)
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let mut published = Vec::new();
        let mut i = 0u64;
        while !*stop.borrow() {
            let n = Notification::new("notifications/test/follow").params(json!({"n": i}));
            published.push(publisher.publish(&n).await.expect("publish through B"));
            i += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(15)) => {}
                _ = stop.changed() => {}
            }
        }
        published
    });

    wait_until("events before the kill", SOON, || async {
        only_a.events().len() >= 10 && both.events().len() >= 10
    })
    .await
    .expect("events flow");
    a.kill().expect("SIGKILL A");
    a.wait_exit(SOON).await.expect("A exits");
    let at_kill = only_a.events().len();
    // The follower of both goes on through B while A is down.
    wait_until("the follower of A and B goes on from B", SOON, || async {
        both.events().len() >= at_kill + 10
    })
    .await
    .expect("events through B while A is down");
    let addr = a.public_addr();
    let a = pg.replica_at("follow-a2", addr, &[]).await;
    wait_until(
        "the follower of A resumes on the restarted A",
        SOON,
        || async { only_a.events().len() >= at_kill + 20 },
    )
    .await
    .expect("events after A restarted");
    stop_tx.send(true).expect("stop the load");
    let published = ids(&load.await.expect("join"));

    let log = pg.log_ids().await;
    assert_eq!(log, published, "the log holds exactly what was published");
    only_a.expect_exactly(&log, SOON).await;
    both.expect_exactly(&log, SOON).await;
    for f in [&only_a, &both] {
        assert!(f.connections() >= 2, "{}: it reconnected", f.label);
    }
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_reopened_after_the_idle_timeout_and_loses_nothing() {
    // Keep-alives every 30 s: a follower that tolerates 400 ms of silence reopens its stream.
    let r = start_memory("client-idle", &[("FANOUT_KEEPALIVE_SECS", "30")]).await;
    let follower = Follower::builder(base(&r))
        .idle_timeout(Duration::from_millis(400))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .spawn()
        .expect("follower");
    let seen = Collected::start("idle follower", follower).await;
    wait_until("the silent stream reopened twice", SOON, || async {
        seen.connections() >= 3
    })
    .await
    .expect("reopened after the idle timeout");
    let publisher = Publisher::new(base(&r)).token(ADMIN_TOKEN);
    let mut published = Vec::new();
    for _ in 0..5 {
        let id = publisher
            .publish(&Notification::new("notifications/test/idle"))
            .await
            .expect("publish");
        published.push(id.to_string());
    }
    seen.expect_exactly(&published, SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_ends_the_follower_with_the_servers_error() {
    let r = start_memory(
        "client-refused",
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
            ("FANOUT_JWT_SECRET", "not-shared"),
        ],
    )
    .await;
    let mut follower = Follower::builder(base(&r))
        .token("not-a-jwt")
        .spawn()
        .expect("follower");
    let item = tokio::time::timeout(SOON, follower.next())
        .await
        .expect("an item");
    match item {
        Some(Err(mcp_fanout_client::FollowError::Refused(e))) => {
            assert_eq!(e.status, 401, "{e}");
            assert!(!e.code.is_empty() && !e.message.is_empty(), "{e}");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    let end = tokio::time::timeout(SOON, follower.next())
        .await
        .expect("the end");
    assert!(end.is_none(), "the refusal is the last item: {end:?}");
    assert!(!follower.status().connected);
}
