//! Contract §3.2, §3.5: sessions are shared by every replica through the
//! database. The first stream for an `Mcp-Session-Id` binds it to its principal (a token's issuer,
//! tenant and subject together; the tenant in header mode); the same id presented by another
//! principal — on another replica, or with the same `sub` from another tenant or issuer — gets
//! `403 forbidden` on `/mcp` (replay included) and `/poll`, and the owner's stream is untouched. A
//! token without `sub` names no one: it cannot use a session at all. Rows the previous release
//! wrote (owned by `sub` alone) grant no token anything; a header-mode row of that release stays
//! its tenant's. One stream per
//! session, newest wins, across replicas: a second stream for the session on another replica ends
//! the first cleanly (`retry:` then the end, counted as `taken_over`), and the new stream carries
//! the session's events from then on. At most `FANOUT_MAX_SESSIONS` are remembered (memory mode:
//! at once; Postgres mode: trimmed by each retention pass): past it the least recently used are
//! forgotten (and may be bound again by whoever presents them next), the recently used keep their
//! owner.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{
    body,
    error_shape::{expect_http_error, expect_sse_error},
    identity::{open_stream, poll_ok, publish_to, Target, Who},
    jwt::{hs256, now_secs},
    poll_with, start_memory, wait_until, Deployment, Replica, SseConn,
};
use serde_json::json;

const SECRET: &str = "session-binding-secret-51d0";
const JWT_ENV: [(&str, &str); 3] = [
    ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
    ("FANOUT_JWT_ANY_AUDIENCE", "true"),
    ("FANOUT_JWT_SECRET", SECRET),
];
const T: Duration = Duration::from_secs(15);

fn token(sub: &str, tenant: &str) -> String {
    hs256(
        SECRET,
        &json!({ "sub": sub, "tenant": tenant, "exp": now_secs() + 600 }),
    )
}

/// `who` is refused with `403 forbidden` on `/mcp` and `/poll` of `r`.
async fn expect_forbidden(r: &Replica, who: &Who) {
    let conn = r
        .subscribe(&who.sse())
        .await
        .unwrap_or_else(|e| panic!("{}: GET /mcp: {e}", who.label));
    expect_sse_error(
        &format!("{} on /mcp of {}", who.label, r.label()),
        conn,
        403,
        "forbidden",
    )
    .await;
    let resp = poll_with(r, "timeout=0", &who.all_headers()).await;
    expect_http_error(
        &format!("{} on /poll of {}", who.label, r.label()),
        &resp,
        403,
        "forbidden",
    );
}

/// Reads until the event with `id` arrives; fails on anything else but keep-alives.
async fn expect_event(conn: &mut SseConn, what: &str, id: &str) {
    let ev = conn
        .next_event(T)
        .await
        .unwrap_or_else(|e| panic!("{what}: waiting for {id}: {e}"))
        .unwrap_or_else(|| panic!("{what}: the stream ended before {id}"));
    assert_eq!(ev.id.as_deref(), Some(id), "{what}: {}", ev.text());
}

/// The stream ends cleanly, with a bare `retry:` block last and no event before it.
async fn expect_clean_end(conn: &mut SseConn, what: &str) {
    let frames = conn
        .read_to_end(T)
        .await
        .unwrap_or_else(|e| panic!("{what}: the stream should end cleanly: {e}"));
    assert!(
        frames.iter().all(|f| !f.is_event()),
        "{what}: no event after the takeover: {:?}",
        frames.iter().map(|f| f.text()).collect::<Vec<_>>()
    );
    assert!(
        frames.last().is_some_and(|f| f.retry.is_some()),
        "{what}: a retry: hint before the end, got {:?}",
        frames.iter().map(|f| f.text()).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwt_sessions_belong_to_their_subject_and_the_newest_stream_wins_across_replicas() {
    let pg = Deployment::fresh("sessions").await.with_admin();
    let replicas = pg.replicas("sess-", 2, &JWT_ENV).await;
    let (r0, r1) = (&replicas[0], &replicas[1]);
    let session = "sess-owned-by-alice";
    // Same tenant: ownership is about the principal, not the tenant.
    let alice = Who::jwt(
        "alice",
        &token("alice", "acme"),
        Some("acme"),
        Some(session),
    );
    let mallory = Who::jwt(
        "mallory (same tenant)",
        &token("mallory", "acme"),
        Some("acme"),
        Some(session),
    );
    // A token for the same subject, freshly minted: still alice.
    let alice_again = Who::jwt(
        "alice (new token)",
        &token("alice", "acme"),
        Some("acme"),
        Some(session),
    );

    // Alice binds the session on r0.
    let mut first = open_stream(r0, &alice).await;
    r0.wait_subscribers(1, T)
        .await
        .expect("r0: alice registered");

    // Mallory presents it on r1 (and on r0): 403 on both endpoints.
    expect_forbidden(r1, &mallory).await;
    expect_forbidden(r0, &mallory).await;
    // Mallory became no subscriber anywhere and took nothing over.
    r1.wait_subscribers(0, T).await.expect("r1: nobody");
    // (Alice's own poll on r1 is fine; an empty `after` is absent: from the head.)
    let head = poll_ok(r1, &alice, "timeout=0&after=").await;
    assert!(head.events.is_empty(), "a fresh poll starts at the head");
    let e1 = publish_to(r1, body("to-session", 1), &Target::new(None, Some(session))).await;
    expect_event(
        &mut first,
        "alice's stream after mallory's attempts",
        &e1.id,
    )
    .await;
    // A committed event is served at once, even if r1's bridge has not pushed it yet (contract §3.4).
    let polled = poll_ok(r1, &alice, &format!("timeout=0&after={}", head.cursor)).await;
    assert_eq!(
        polled
            .events
            .iter()
            .filter_map(|e| e.id.clone())
            .collect::<Vec<_>>(),
        vec![e1.id.clone()],
        "alice polls her session's event on r1"
    );

    // Alice (new token, same sub) opens a second stream for the session on r1: the first ends.
    let mut second = open_stream(r1, &alice_again).await;
    assert_eq!(
        second.header("mcp-session-id"),
        Some(session),
        "the session id is echoed"
    );
    expect_clean_end(&mut first, "alice's first stream on r0, taken over from r1").await;
    r0.wait_metric(
        r#"mcp_fanout_subscribers_dropped_total{reason="taken_over"}"#,
        T,
        |v| v == 1.0,
    )
    .await
    .expect("r0 counts the takeover");
    r0.wait_subscribers(0, T).await.expect("r0: none left");
    r1.wait_subscribers(1, T).await.expect("r1: the new stream");

    // The session's events now reach the new stream, published through either replica.
    let e2 = publish_to(r0, body("to-session", 2), &Target::new(None, Some(session))).await;
    expect_event(&mut second, "the new stream on r1", &e2.id).await;

    // And back again: a third stream on r0 ends the one on r1.
    let mut third = open_stream(r0, &alice).await;
    expect_clean_end(&mut second, "the second stream on r1, taken over from r0").await;
    r1.wait_metric(
        r#"mcp_fanout_subscribers_dropped_total{reason="taken_over"}"#,
        T,
        |v| v == 1.0,
    )
    .await
    .expect("r1 counts the takeover");
    let e3 = publish_to(r1, body("to-session", 3), &Target::new(None, Some(session))).await;
    expect_event(&mut third, "the third stream on r0", &e3.id).await;

    // Mallory is still refused, on either replica, after all that.
    expect_forbidden(r1, &mallory).await;
    expect_forbidden(r0, &mallory).await;
    let e4 = publish_to(r0, body("to-session", 4), &Target::new(None, Some(session))).await;
    expect_event(&mut third, "the third stream after mallory again", &e4.id).await;

    // Streams for other sessions, and streams without a session, are never taken over.
    let bystander = Who::jwt(
        "bob",
        &token("bob", "acme"),
        Some("acme"),
        Some("sess-of-bob"),
    );
    let mut bob = open_stream(r1, &bystander).await;
    let anon = Who::jwt("carol", &token("carol", "acme"), Some("acme"), None);
    let mut carol1 = open_stream(r0, &anon).await;
    let mut carol2 = open_stream(r1, &anon).await;
    r0.wait_subscribers(2, T).await.expect("r0: alice + carol");
    r1.wait_subscribers(2, T).await.expect("r1: bob + carol");
    let e5 = publish_to(r1, body("all", 5), &Target::default()).await;
    for (conn, what) in [
        (&mut third, "alice"),
        (&mut bob, "bob"),
        (&mut carol1, "carol on r0"),
        (&mut carol2, "carol on r1"),
    ] {
        expect_event(conn, what, &e5.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_mode_sessions_belong_to_their_tenant_across_replicas() {
    let pg = Deployment::fresh("hsessions").await.with_admin();
    let replicas = pg
        .replicas("hsess-", 2, &[("FANOUT_SUBSCRIBER_AUTH", "header")])
        .await;
    let (r0, r1) = (&replicas[0], &replicas[1]);
    let session = "sess-of-tenant-a";
    let a = Who::header_mode("tenant A", Some("A"), Some(session));
    let b = Who::header_mode("tenant B", Some("B"), Some(session));
    let nobody = Who::header_mode("no tenant", None, Some(session));

    // First use is a poll on r1: it binds the session to A too.
    let _ = poll_ok(r1, &a, "timeout=0").await;
    expect_forbidden(r0, &b).await;
    expect_forbidden(r0, &nobody).await;

    let mut first = open_stream(r0, &a).await;
    r0.wait_subscribers(1, T).await.expect("r0: A registered");
    expect_forbidden(r1, &b).await;
    let e1 = publish_to(r1, body("s", 1), &Target::new(Some("A"), Some(session))).await;
    expect_event(&mut first, "A's stream", &e1.id).await;

    // A again, on r1: the first stream ends.
    let mut second = open_stream(r1, &a).await;
    expect_clean_end(&mut first, "A's first stream, taken over").await;
    let e2 = publish_to(r0, body("s", 2), &Target::new(None, Some(session))).await;
    expect_event(&mut second, "A's second stream", &e2.id).await;

    // A row the previous release wrote in header mode (owned by the tenant) stays the tenant's.
    let legacy = "sess-of-a-from-the-previous-release";
    pg.client()
        .await
        .execute(
            &format!(
                "INSERT INTO {}.sessions (session, principal) VALUES ($1, $2)",
                pg.schema
            ),
            &[&legacy, &"A"],
        )
        .await
        .expect("insert a row as the previous release did");
    expect_forbidden(r1, &Who::header_mode("tenant B", Some("B"), Some(legacy))).await;
    let mut legacy_stream =
        open_stream(r1, &Who::header_mode("tenant A", Some("A"), Some(legacy))).await;
    let e4 = publish_to(r0, body("s", 4), &Target::new(Some("A"), Some(legacy))).await;
    expect_event(
        &mut legacy_stream,
        "A's session of the previous release",
        &e4.id,
    )
    .await;

    // A session first used without a tenant belongs to "no tenant": a tenant cannot take it.
    let loose = "sess-without-tenant";
    let anon = Who::header_mode("no tenant", None, Some(loose));
    let mut anon_stream = open_stream(r1, &anon).await;
    expect_forbidden(r0, &Who::header_mode("tenant A", Some("A"), Some(loose))).await;
    let e3 = publish_to(r0, body("s", 3), &Target::new(None, Some(loose))).await;
    expect_event(&mut anon_stream, "the tenant-less session's stream", &e3.id).await;
}

/// Tenant B's `alice`, or another issuer's, is not tenant A's `alice`: neither reads her
/// session's events (live, replayed or polled) nor ends her stream by claiming the session. Two
/// tokens without `sub` are not one owner: neither can use a session. A row of the previous
/// release, keyed by `sub` alone, is no token's; and that release's own claim statement takes no
/// session this one bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_belongs_to_the_whole_principal_not_to_the_subject_alone() {
    let pg = Deployment::fresh("principal").await.with_admin();
    let replicas = pg.replicas("princ-", 2, &JWT_ENV).await;
    let (r0, r1) = (&replicas[0], &replicas[1]);
    let session = "sess-of-alice-at-a";
    let claims = |sub: Option<&str>, tenant: &str, iss: Option<&str>| {
        let mut c = json!({ "tenant": tenant, "exp": now_secs() + 600 });
        if let Some(sub) = sub {
            c["sub"] = json!(sub);
        }
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        hs256(SECRET, &c)
    };
    let alice = Who::jwt(
        "alice of tenant A",
        &claims(Some("alice"), "A", Some("https://idp.example")),
        Some("A"),
        Some(session),
    );
    let intruders = [
        Who::jwt(
            "alice of tenant B",
            &claims(Some("alice"), "B", Some("https://idp.example")),
            Some("B"),
            Some(session),
        ),
        Who::jwt(
            "alice of tenant A from another issuer",
            &claims(Some("alice"), "A", Some("https://other.example")),
            Some("A"),
            Some(session),
        ),
        Who::jwt(
            "alice of tenant A, no issuer",
            &claims(Some("alice"), "A", None),
            Some("A"),
            Some(session),
        ),
        Who::jwt(
            "tenant A, no sub",
            &claims(None, "A", Some("https://idp.example")),
            Some("A"),
            Some(session),
        ),
    ];

    let mut owner = open_stream(r0, &alice).await;
    r0.wait_subscribers(1, T)
        .await
        .expect("r0: alice registered");
    let before = publish_to(r1, body("all", 0), &Target::default()).await;
    expect_event(&mut owner, "alice", &before.id).await;
    let e1 = publish_to(
        r1,
        body("to-her-session", 1),
        &Target::new(None, Some(session)),
    )
    .await;
    expect_event(&mut owner, "alice, her session's event", &e1.id).await;

    for who in &intruders {
        for r in [r0, r1] {
            // A replay from before her event, and a poll from there: both refused.
            let replay = r
                .subscribe(&who.sse().last_event_id(&before.id))
                .await
                .unwrap_or_else(|e| panic!("{}: GET /mcp: {e}", who.label));
            expect_sse_error(
                &format!("{} replaying on /mcp of {}", who.label, r.label()),
                replay,
                403,
                "forbidden",
            )
            .await;
            let resp = poll_with(
                r,
                &format!("timeout=0&after={}", before.id),
                &who.all_headers(),
            )
            .await;
            expect_http_error(
                &format!("{} on /poll of {}", who.label, r.label()),
                &resp,
                403,
                "forbidden",
            );
        }
    }
    // Her stream was not taken over: the next event of her session is the next thing on it.
    let e2 = publish_to(
        r0,
        body("to-her-session", 2),
        &Target::new(None, Some(session)),
    )
    .await;
    expect_event(&mut owner, "alice after the intruders", &e2.id).await;
    for r in [r0, r1] {
        assert_eq!(
            r.dropped("taken_over").await.expect("metrics"),
            0.0,
            "{}: no stream was taken over",
            r.label()
        );
    }

    // Two tokens without `sub`, same tenant: neither binds a session, so neither reads the other's.
    let loose = "sess-of-no-one";
    let nobody1 = Who::jwt(
        "no sub #1",
        &claims(None, "A", None),
        Some("A"),
        Some(loose),
    );
    let nobody2 = Who::jwt(
        "no sub #2",
        &claims(None, "A", Some("https://idp.example")),
        Some("A"),
        Some(loose),
    );
    expect_forbidden(r0, &nobody1).await;
    expect_forbidden(r1, &nobody2).await;
    expect_forbidden(r1, &nobody1).await;
    // Without a session such a token still subscribes: it sees its tenant's events.
    let mut plain = open_stream(
        r1,
        &Who::jwt(
            "no sub, no session",
            &claims(None, "A", None),
            Some("A"),
            None,
        ),
    )
    .await;
    let e3 = publish_to(r0, body("tenant A", 3), &Target::new(Some("A"), None)).await;
    expect_event(&mut plain, "a token without sub, without a session", &e3.id).await;
    expect_event(&mut owner, "alice, her tenant's event", &e3.id).await;

    // A row the previous release wrote for tenant A's alice: owned by `sub` alone.
    let client = pg.client().await;
    let legacy = "sess-of-the-previous-release";
    client
        .execute(
            &format!(
                "INSERT INTO {}.sessions (session, principal) VALUES ($1, $2)",
                pg.schema
            ),
            &[&legacy, &"alice"],
        )
        .await
        .expect("insert a row as the previous release did");
    for (who, r) in intruders.iter().zip([r0, r1, r0, r1]) {
        let mut who = who.clone();
        who.session = Some(legacy.to_string());
        expect_forbidden(r, &who).await;
    }
    // The previous release's claim (still running during a rolling upgrade) compares `sub` alone:
    // it takes no session this release bound, for the same `sub` nor for a token without one.
    let old_claim = format!(
        "INSERT INTO {s}.sessions AS t (session, principal) VALUES ($1, $2) \
         ON CONFLICT (session) DO UPDATE SET generation = t.generation + 1, last_seen = clock_timestamp() \
         WHERE t.principal IS NOT DISTINCT FROM EXCLUDED.principal RETURNING t.generation",
        s = pg.schema
    );
    for principal in [Some("alice"), None] {
        let rows = client
            .query(&old_claim, &[&session, &principal])
            .await
            .expect("the previous release's claim");
        assert!(
            rows.is_empty(),
            "the previous release's claim as {principal:?} took alice's session"
        );
    }
    let e4 = publish_to(
        r1,
        body("to-her-session", 4),
        &Target::new(None, Some(session)),
    )
    .await;
    expect_event(&mut owner, "alice at the end", &e4.id).await;
}

/// A header-mode poll as `tenant` naming `session`: its status.
async fn poll_as(r: &Replica, tenant: &str, session: String) -> u16 {
    let headers = [
        ("x-fanout-tenant".to_string(), tenant.to_string()),
        ("mcp-session-id".to_string(), session),
    ];
    poll_with(r, "timeout=0", &headers).await.status.as_u16()
}

/// Alpha opens a stream for `live` (the oldest use of all), binds `first`; beta binds `hers`;
/// then alpha binds 25 more ids: past a bound of 20. The stream is returned, open.
async fn alpha_binds_past_the_bound(r: &Replica) -> SseConn {
    let live = open_stream(r, &Who::header_mode("alpha", Some("alpha"), Some("live"))).await;
    r.wait_subscribers(1, T)
        .await
        .expect("alpha's stream registered");
    assert_eq!(poll_as(r, "alpha", "first".into()).await, 200);
    assert_eq!(poll_as(r, "beta", "first".into()).await, 403, "alpha's");
    assert_eq!(poll_as(r, "beta", "hers".into()).await, 200);
    for i in 0..25 {
        assert_eq!(poll_as(r, "alpha", format!("s{i}")).await, 200);
    }
    live
}

/// Once the bound of 20 took effect: a recently used session keeps its owner, `first` (alpha's
/// least recently used) was forgotten and is bound by whoever presents it next, and the replica
/// said so; `live`, older than all of them, was spared: its stream holds it, still alpha's, and
/// gets the session's events. Beta's one session, used before alpha's 25, was kept: alpha's ids
/// pushed out alpha's own (on a least-recently-used trim alone, alpha could then bind beta's).
async fn expect_the_least_recently_used_forgotten(r: &Replica, mut live: SseConn) {
    assert_eq!(
        poll_as(r, "alpha", "hers".into()).await,
        403,
        "the sessions of whoever holds the most are forgotten first: beta's stays beta's"
    );
    assert_eq!(
        poll_as(r, "beta", "live".into()).await,
        403,
        "a session an open stream holds is never forgotten to make room"
    );
    let e = publish_to(r, body("to-live", 1), &Target::new(None, Some("live"))).await;
    expect_event(&mut live, "alpha's live stream", &e.id).await;
    assert_eq!(
        poll_as(r, "beta", "s24".into()).await,
        403,
        "a recently used session keeps its owner"
    );
    assert_eq!(
        poll_as(r, "beta", "first".into()).await,
        200,
        "the least recently used was forgotten: whoever presents it next binds it"
    );
    assert_eq!(poll_as(r, "alpha", "first".into()).await, 403, "now beta's");
    r.wait_for_log("the bound, said", T, |v| {
        v.pointer("/fields/message")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|m| m.contains("session table full"))
            && v.pointer("/fields/max_sessions") == Some(&json!(20))
            && v.pointer("/fields/forgotten")
                .and_then(serde_json::Value::as_i64)
                .is_some_and(|n| n >= 1)
    })
    .await
    .expect("the replica says it forgot sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_mode_past_the_session_bound_the_least_recently_used_are_forgotten() {
    let r = start_memory(
        "session-bound",
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "header"),
            ("FANOUT_MAX_SESSIONS", "20"),
        ],
    )
    .await;
    // The table reaches its bound while alpha binds: the least recently used go at once.
    let live = alpha_binds_past_the_bound(&r).await;
    expect_the_least_recently_used_forgotten(&r, live).await;
}

/// Postgres mode: the same bound across the deployment. Each retention pass forgets the least
/// recently used rows past `FANOUT_MAX_SESSIONS` (a flood of new session ids grew the table for
/// the whole retention before), and says so; the recently used keep their owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_postgres_mode_retention_trims_sessions_past_the_bound_least_recently_used_first() {
    let pg = Deployment::fresh("sbound").await.with_admin();
    let r = pg
        .replica(
            "sbound",
            &[
                ("FANOUT_SUBSCRIBER_AUTH", "header"),
                ("FANOUT_MAX_SESSIONS", "20"),
                ("FANOUT_RETENTION_INTERVAL_SECS", "1"),
            ],
        )
        .await;
    let live = alpha_binds_past_the_bound(&r).await;
    let client = pg.client().await;
    // Not counting `live`: its stream's lease keeps it past the bound.
    let count = format!(
        "SELECT count(*) FROM {}.sessions WHERE session <> 'live'",
        pg.schema
    );
    wait_until("the table trimmed to its bound", T, || async {
        let n: i64 = client.query_one(&count, &[]).await.unwrap().get(0);
        n <= 20
    })
    .await
    .expect("retention trims the sessions table to FANOUT_MAX_SESSIONS");
    let first = format!(
        "SELECT count(*) FROM {}.sessions WHERE session = 'first'",
        pg.schema
    );
    let kept: i64 = client.query_one(&first, &[]).await.unwrap().get(0);
    assert_eq!(kept, 0, "the least recently used row is the one forgotten");
    expect_the_least_recently_used_forgotten(&r, live).await;
}

/// A session forgotten and bound again (by another principal) draws a generation above every one
/// it had: the new claim ends the old owner's stream, on another replica too. With a per-row count
/// the new row restarted at 1 — the old stream's own — and both streams stayed open, two
/// principals receiving one session's events (found probing the release binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_bound_again_after_it_was_forgotten_ends_the_older_stream() {
    let pg = Deployment::fresh("regen").await.with_admin();
    let replicas = pg
        .replicas("regen-", 2, &[("FANOUT_SUBSCRIBER_AUTH", "header")])
        .await;
    let (r0, r1) = (&replicas[0], &replicas[1]);
    let session = "forgotten-then-bound";
    let mut alpha = open_stream(r0, &Who::header_mode("alpha", Some("alpha"), Some(session))).await;
    r0.wait_subscribers(1, T)
        .await
        .expect("alpha's stream registered");
    // The row is forgotten (as retention or a trim would).
    pg.client()
        .await
        .execute(
            &format!("DELETE FROM {}.sessions WHERE session = $1", pg.schema),
            &[&session],
        )
        .await
        .expect("forget the row");
    let mut beta = open_stream(r1, &Who::header_mode("beta", Some("beta"), Some(session))).await;
    expect_clean_end(&mut alpha, "alpha's stream, its session claimed anew").await;
    let e = publish_to(r1, body("after", 1), &Target::new(None, Some(session))).await;
    expect_event(&mut beta, "beta's stream", &e.id).await;
}

/// A poll naming a session its owner used within the last minute reads it and writes nothing (each
/// such poll was a durable write, a WAL flush each: one client's polls drove thousands of commits
/// a second); one not used for longer marks it again; another principal is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_of_a_freshly_used_session_writes_nothing() {
    let pg = Deployment::fresh("freshpoll").await.with_admin();
    let r = pg
        .replica("freshpoll", &[("FANOUT_SUBSCRIBER_AUTH", "header")])
        .await;
    let client = pg.client().await;
    let seen = format!(
        "SELECT last_seen::text FROM {}.sessions WHERE session = 'polled'",
        pg.schema
    );
    let last_seen = || async {
        client
            .query_one(&seen, &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    assert_eq!(poll_as(&r, "alpha", "polled".into()).await, 200, "binds it");
    let bound = last_seen().await;
    for _ in 0..5 {
        assert_eq!(poll_as(&r, "alpha", "polled".into()).await, 200);
    }
    assert_eq!(last_seen().await, bound, "fresh: read, not written");
    assert_eq!(poll_as(&r, "beta", "polled".into()).await, 403, "alpha's");
    client
        .execute(
            &format!(
                "UPDATE {}.sessions SET last_seen = last_seen - interval '2 minutes' \
                 WHERE session = 'polled'",
                pg.schema
            ),
            &[],
        )
        .await
        .unwrap();
    let stale = last_seen().await;
    assert_eq!(poll_as(&r, "alpha", "polled".into()).await, 200);
    assert_ne!(
        last_seen().await,
        stale,
        "not used for a while: marked again"
    );
}
