//! Contract §4.2: three replicas on one database heartbeat into it, and
//! `GET /admin/cluster` on any of them lists all three — distinct ids, each one's advertised
//! address (`FANOUT_ADVERTISE_ADDR`, or the bound public address), its subscriber count (0, 1 and
//! 2 open streams), its last delivered id, a recent heartbeat. A replica killed with SIGKILL (no
//! goodbye) disappears from every survivor's view within the stale limit
//! (`FANOUT_REPLICA_STALE_SECS=3`); one that shuts down cleanly disappears too. The endpoint needs
//! the admin token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mcp_fanout_testkit::{
    body, jwt::now_secs, open_stream_with, start_fails, start_owned, wait_for, Deployment, Replica,
    SseConn, SseRequest, ADMIN_TOKEN,
};
use serde_json::Value;

const STALE_SECS: u64 = 3;
const T: Duration = Duration::from_secs(15);
const ADVERTISED: &str = "fanout-2.replicas.example:8080";

/// One row of the view.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: String,
    address: Option<String>,
    subscribers: u64,
    last_delivered_id: String,
    last_heartbeat: f64,
}

/// `/admin/cluster` of `r`, as sent.
async fn view_json(r: &Replica) -> Result<Value, String> {
    let resp = r
        .http()
        .get(r.admin_url("/admin/cluster"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status} {v}"));
    }
    Ok(v)
}

/// `/admin/cluster` of `r`, keyed by address.
async fn view(r: &Replica) -> Result<BTreeMap<String, Row>, String> {
    let v = view_json(r).await?;
    let rows = v["replicas"]
        .as_array()
        .ok_or_else(|| format!("no `replicas` array: {v}"))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let r = Row {
            id: row["id"]
                .as_str()
                .ok_or_else(|| format!("no id: {row}"))?
                .to_string(),
            address: row["address"].as_str().map(ToString::to_string),
            subscribers: row["subscribers"]
                .as_u64()
                .ok_or_else(|| format!("no subscriber count: {row}"))?,
            last_delivered_id: row["last_delivered_id"]
                .as_str()
                .ok_or_else(|| format!("no last_delivered_id: {row}"))?
                .to_string(),
            last_heartbeat: row["last_heartbeat"]
                .as_f64()
                .ok_or_else(|| format!("no last_heartbeat: {row}"))?,
        };
        let key = r
            .address
            .clone()
            .unwrap_or_else(|| format!("<none:{}>", r.id));
        if out.insert(key.clone(), r).is_some() {
            return Err(format!("two rows with address {key}: {v}"));
        }
    }
    Ok(out)
}

/// Waits until every replica in `observers` shows exactly `want` (address → subscribers, and
/// every last delivered id = `last`); returns the last view of each.
async fn wait_view(
    observers: &[&Replica],
    want: &BTreeMap<String, u64>,
    last: &str,
) -> Vec<BTreeMap<String, Row>> {
    let mut views = Vec::new();
    for r in observers {
        let seen = std::sync::Mutex::new(None);
        let got = wait_for(&format!("the cluster view on {}", r.label()), T, || {
            let fut = view(r);
            let seen = &seen;
            async move {
                let v = fut.await;
                let ok = match &v {
                    Ok(rows) => {
                        rows.len() == want.len()
                            && want.iter().all(|(addr, n)| {
                                rows.get(addr).is_some_and(|row| {
                                    row.subscribers == *n && row.last_delivered_id == last
                                })
                            })
                    }
                    Err(_) => false,
                };
                let out = if ok { v.clone().ok() } else { None };
                *seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v);
                out
            }
        })
        .await;
        match got {
            Ok(rows) => views.push(rows),
            Err(e) => panic!(
                "{}: {e}\n  wanted (address → subscribers) {want:?}, last delivered {last}\n  last view: {seen:?}",
                r.label()
            ),
        }
    }
    views
}

async fn streams(r: &Replica, n: usize) -> Vec<SseConn> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(open_stream_with(r, SseRequest::mcp(), &format!("{}/sub{i}", r.label())).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_lists_all_live_replicas_and_a_killed_one_ages_out() {
    let pg = Deployment::fresh("cluster").await.with_admin();
    let stale = STALE_SECS.to_string();
    let base = pg.env(&[
        ("FANOUT_REPLICA_STALE_SECS", stale.as_str()),
        ("FANOUT_DRAIN_SECS", "0"),
    ]);
    let mut advertised = base.clone();
    advertised.push(("FANOUT_ADVERTISE_ADDR".to_string(), ADVERTISED.to_string()));
    let (r0, r1, mut r2) = tokio::join!(
        start_owned("cluster-0", &base),
        start_owned("cluster-1", &base),
        start_owned("cluster-2", &advertised),
    );
    let addr_of = |r: &Replica| r.public_addr().to_string();

    // The view needs the admin token.
    let resp = r0
        .http()
        .get(r0.admin_url("/admin/cluster"))
        .send()
        .await
        .expect("GET /admin/cluster");
    assert_eq!(resp.status(), 401, "no token, no view");

    // 0, 1 and 2 open streams.
    let s1 = streams(&r1, 1).await;
    let mut s2 = streams(&r2, 2).await;
    r1.wait_subscribers(1, T).await.expect("r1: 1");
    r2.wait_subscribers(2, T).await.expect("r2: 2");
    let last = r0.publish_ok(&body("cluster", 0)).await.expect("publish");
    for s in &mut s2 {
        let ev = s.next_event(T).await.expect("event").expect("open");
        assert_eq!(ev.id.as_deref(), Some(last.as_str()));
    }

    let want: BTreeMap<String, u64> = [
        (addr_of(&r0), 0),
        (addr_of(&r1), 1),
        (ADVERTISED.to_string(), 2),
    ]
    .into_iter()
    .collect();
    let views = wait_view(&[&r0, &r1, &r2], &want, &last).await;
    let ids: Vec<String> = views[0].values().map(|r| r.id.clone()).collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "three distinct replica ids: {ids:?}");
    #[allow(clippy::cast_precision_loss)]
    let now = now_secs() as f64;
    for (i, v) in views.iter().enumerate() {
        let vids: Vec<String> = v.values().map(|r| r.id.clone()).collect();
        assert_eq!(vids, ids, "replica {i} sees the same ids");
        for row in v.values() {
            assert!(
                row.last_heartbeat > now - STALE_SECS as f64 - 1.0
                    && row.last_heartbeat < now + 2.0,
                "a recent heartbeat (now {now}): {row:?}"
            );
        }
    }

    // The counts follow the streams: close r1's, open one on r0.
    drop(s1);
    let _s0 = streams(&r0, 1).await;
    let want: BTreeMap<String, u64> = [
        (addr_of(&r0), 1),
        (addr_of(&r1), 0),
        (ADVERTISED.to_string(), 2),
    ]
    .into_iter()
    .collect();
    wait_view(&[&r0, &r1, &r2], &want, &last).await;

    // SIGKILL r2: no goodbye; it ages out of both survivors' views within the stale limit.
    r2.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    r2.wait_exit(T).await.expect("r2 exits");
    let want: BTreeMap<String, u64> = [(addr_of(&r0), 1), (addr_of(&r1), 0)].into_iter().collect();
    let last2 = r1.publish_ok(&body("cluster", 1)).await.expect("publish");
    wait_view(&[&r0, &r1], &want, &last2).await;
    let took = killed_at.elapsed();
    eprintln!("the killed replica left the view {took:?} after SIGKILL");
    // Its last heartbeat was at most one interval (2 s) before the kill, so it must be gone
    // within the stale limit of the kill (plus the view's own round trip).
    assert!(
        took <= Duration::from_secs(STALE_SECS) + Duration::from_millis(750),
        "the killed replica disappeared after {took:?}, more than the stale limit of {STALE_SECS} s"
    );

    // A clean shutdown removes the replica at once.
    r1.sigterm().expect("SIGTERM");
    let mut r1 = r1;
    r1.wait_exit(Duration::from_secs(30))
        .await
        .expect("r1 exits");
    let rows = view(&r0).await.expect("the view after a clean shutdown");
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        vec![addr_of(&r0)],
        "a replica that shut down cleanly is removed at once: {rows:?}"
    );
}

/// `listen_connected` of the one row of `r`'s view.
async fn listen_connected(r: &Replica) -> Result<Option<bool>, String> {
    let v = view_json(r).await?;
    match v["replicas"].as_array().map(Vec::as_slice) {
        Some([row]) => Ok(row["listen_connected"].as_bool()),
        _ => Err(format!("not one row: {v}")),
    }
}

async fn wait_listen_connected(r: &Replica, want: bool, what: &str) {
    let seen = std::sync::Mutex::new(None);
    let got = wait_for(what, Duration::from_secs(30), || {
        let fut = listen_connected(r);
        let seen = &seen;
        async move {
            let v = fut.await;
            let ok = v == Ok(Some(want));
            *seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v);
            ok.then_some(())
        }
    })
    .await;
    if let Err(e) = got {
        panic!("{what}: {e}; last view: {seen:?}");
    }
}

/// The view shows a replica's LISTEN state as it changes, not at its next heartbeat: with
/// heartbeats an hour apart, the row says connected once the replica is up (its first heartbeat
/// went out before the LISTEN connection was), down once that connection is lost and cannot come
/// back (its role may no longer log in), and connected again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_shows_a_listen_change_at_once_not_at_the_next_heartbeat() {
    let pg = Deployment::fresh("clusterlisten").await.with_admin();
    let role = pg
        .server
        .create_login_role("fanout_listen")
        .await
        .expect("a role for the LISTEN connection");
    pg.psql(&format!("ALTER ROLE {role} SUPERUSER")).await;
    let listen_url = pg.server.url_as(&role, &pg.db);
    let r = pg
        .replica(
            "clusterlisten",
            &[
                ("FANOUT_LISTEN_DATABASE_URL", listen_url.as_str()),
                ("FANOUT_HEARTBEAT_SECS", "3000"),
                ("FANOUT_REPLICA_STALE_SECS", "3600"),
            ],
        )
        .await;
    wait_listen_connected(&r, true, "the row says LISTEN connected after the start").await;

    pg.psql(&format!("ALTER ROLE {role} NOLOGIN")).await;
    pg.psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ))
    .await;
    wait_listen_connected(&r, false, "the row says LISTEN down once it is lost").await;
    assert_eq!(
        r.metric("mcp_fanout_listen_connected")
            .await
            .expect("metrics"),
        Some(0.0),
        "the gauge agrees"
    );

    pg.psql(&format!("ALTER ROLE {role} LOGIN")).await;
    wait_listen_connected(&r, true, "the row says LISTEN connected once it is back").await;
}

/// A heartbeat as long as the stale limit would drop live replicas from the view: the start fails
/// and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_not_below_the_stale_limit_stops_the_start() {
    let pg = Deployment::fresh("clusterbeat").await;
    let env = pg.env(&[
        ("FANOUT_HEARTBEAT_SECS", "10"),
        ("FANOUT_REPLICA_STALE_SECS", "10"),
    ]);
    let text = start_fails(&env, T).await;
    assert!(
        text.contains(
            "FANOUT_HEARTBEAT_SECS (10) must be less than FANOUT_REPLICA_STALE_SECS (10)"
        ),
        "the error names both settings: {text}"
    );
}
