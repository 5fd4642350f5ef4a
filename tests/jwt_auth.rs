//! Contract §3.5; docs/identity.md: with
//! `FANOUT_SUBSCRIBER_AUTH=jwt`, a valid bearer token opens `/mcp` and `/poll` on every replica;
//! a missing, malformed, unsigned, badly signed, wrongly algorithmed, expired, `exp`-less,
//! wrong-audience or wrong-issuer token gets `401 unauthorized` with `WWW-Authenticate` on both;
//! the configured tenant claim (not a header, not another claim) decides what a subscriber sees;
//! a stream ends cleanly (`retry:`, then the end) within leeway + 1 s of its token's `exp`, and a
//! waiting poll does not outlive its token; RS256/ES256 public keys and a JWKS file verify tokens
//! too, and refuse an HS256 token "signed" with the public key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey};
use mcp_fanout_testkit::{
    body,
    error_shape::{expect_http_error, expect_sse_error},
    identity::{open_stream, poll_ok, publish_to, visible_ids, Published, Target, Who},
    jwt::{hs256, hs256_raw, hs256_raw_parts, now_secs, sign, unsigned_token},
    poll_with, seq_of, start_fails, start_memory, Deployment, Follower, Replica, SseRequest,
};
use serde_json::{json, Value};

const SECRET: &str = "jwt-test-secret-0b6f2c9e8d";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "mcp-fanout-tests";
const T: Duration = Duration::from_secs(15);

fn claims(sub: &str, extra: &Value) -> Value {
    let mut c = json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now_secs(),
        "exp": now_secs() + 600,
    });
    for (k, v) in extra.as_object().expect("an object") {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn good(sub: &str, extra: &Value) -> String {
    hs256(SECRET, &claims(sub, extra))
}

/// What is wrong with how `r` answers one credential that must be refused on `/mcp` and `/poll`
/// (`401 unauthorized`, the JSON error shape, `WWW-Authenticate: Bearer…`); empty when right.
async fn refusal_problems(r: &Replica, what: &str, authorization: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut req = SseRequest::mcp();
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    let conn = r
        .subscribe(&req)
        .await
        .unwrap_or_else(|e| panic!("{what}: GET /mcp: {e}"));
    let www = conn.header("www-authenticate").map(ToString::to_string);
    if conn.status() == 401 {
        let what_mcp = format!("{what} on /mcp");
        let checked = tokio::spawn(async move {
            expect_sse_error(&what_mcp, conn, 401, "unauthorized").await;
        })
        .await;
        if let Err(e) = checked {
            problems.push(format!("{what} on /mcp: {e}"));
        }
        if !www.as_deref().is_some_and(|w| w.starts_with("Bearer")) {
            problems.push(format!(
                "{what} on /mcp: WWW-Authenticate: Bearer…, got {www:?}"
            ));
        }
    } else {
        problems.push(format!(
            "{what} on /mcp on {}: expected 401 unauthorized, got {} ({})",
            r.label(),
            conn.status(),
            if conn.status() == 200 {
                "the stream was opened"
            } else {
                "see the replica log"
            }
        ));
    }

    let headers: Vec<(String, String)> = authorization
        .map(|a| vec![("Authorization".to_string(), a.to_string())])
        .unwrap_or_default();
    let resp = poll_with(r, "timeout=0", &headers).await;
    if resp.status == 401 {
        let what_poll = format!("{what} on /poll");
        let resp2 = resp.clone();
        if let Err(e) = tokio::spawn(async move {
            expect_http_error(&what_poll, &resp2, 401, "unauthorized");
        })
        .await
        {
            problems.push(format!("{what} on /poll: {e}"));
        }
        if !resp
            .header("www-authenticate")
            .is_some_and(|w| w.starts_with("Bearer"))
        {
            problems.push(format!(
                "{what} on /poll: WWW-Authenticate: Bearer…, got {:?}",
                resp.header("www-authenticate")
            ));
        }
    } else {
        problems.push(format!(
            "{what} on /poll on {}: expected 401 unauthorized, got {} {}",
            r.label(),
            resp.status,
            resp.text()
        ));
    }
    problems
}

/// Panics unless `r` refuses the credential on `/mcp` and `/poll` as it must.
async fn expect_401(r: &Replica, what: &str, authorization: Option<&str>) {
    let problems = refusal_problems(r, what, authorization).await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_valid_tokens_are_accepted_and_the_tenant_claim_decides_visibility() {
    let pg = Deployment::fresh("jwt").await.with_admin();
    let replicas = pg
        .replicas(
            "jwt-",
            2,
            &[
                ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
                ("FANOUT_JWT_SECRET", SECRET),
                ("FANOUT_JWT_ISSUER", ISSUER),
                ("FANOUT_JWT_AUDIENCE", AUDIENCE),
                // The tenant comes from `org`; tokens also carry a decoy `tenant` claim.
                ("FANOUT_JWT_TENANT_CLAIM", "org"),
                ("FANOUT_JWT_LEEWAY_SECS", "5"),
            ],
        )
        .await;
    let (r0, r1) = (&replicas[0], &replicas[1]);

    // ---- refused credentials, on both replicas ----
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        (
            "a bearer scheme without a token",
            Some("Bearer".to_string()),
        ),
        (
            "a bearer scheme with an empty token",
            Some("Bearer ".to_string()),
        ),
        ("not a JWT", Some(bearer("not-a-jwt"))),
        ("three garbage segments", Some(bearer("abc.def.ghi"))),
        (
            "a Basic credential",
            Some("Basic dXNlcjpwYXNzd29yZA==".to_string()),
        ),
        (
            "the token without a scheme",
            Some(good("alice", &json!({ "org": "A" }))),
        ),
        (
            "a wrong signature",
            Some(bearer(&hs256(
                "another-secret-entirely",
                &claims("alice", &json!({ "org": "A" })),
            ))),
        ),
        (
            "a tampered payload",
            Some(bearer(&{
                let t = good("alice", &json!({ "org": "A" }));
                let parts: Vec<&str> = t.split('.').collect();
                let forged = mcp_fanout_testkit::jwt::b64url(
                    claims("alice", &json!({ "org": "B" }))
                        .to_string()
                        .as_bytes(),
                );
                format!("{}.{forged}.{}", parts[0], parts[2])
            })),
        ),
        (
            "an unsigned token (alg none)",
            Some(bearer(&unsigned_token(&claims(
                "alice",
                &json!({ "org": "A" }),
            )))),
        ),
        (
            "HS384, an algorithm not configured",
            Some(bearer(&sign(
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                None,
                &claims("alice", &json!({ "org": "A" })),
            ))),
        ),
        (
            "expired (beyond the leeway)",
            Some(bearer(&good(
                "alice",
                &json!({ "org": "A", "exp": now_secs() - 120, "iat": now_secs() - 600 }),
            ))),
        ),
        (
            "no exp claim",
            Some(bearer(&good("alice", &json!({ "org": "A", "exp": null })))),
        ),
        (
            "a wrong audience",
            Some(bearer(&good(
                "alice",
                &json!({ "org": "A", "aud": "someone-else" }),
            ))),
        ),
        (
            "no audience",
            Some(bearer(&good("alice", &json!({ "org": "A", "aud": null })))),
        ),
        (
            "a wrong issuer",
            Some(bearer(&good(
                "alice",
                &json!({ "org": "A", "iss": "https://evil.example" }),
            ))),
        ),
        (
            "no issuer",
            Some(bearer(&good("alice", &json!({ "org": "A", "iss": null })))),
        ),
        (
            "a tenant claim that is an object",
            Some(bearer(&good("alice", &json!({ "org": { "id": "A" } })))),
        ),
        // The tenants a publish can target: 1 to 256 bytes without control characters.
        (
            "a tenant claim of 257 bytes",
            Some(bearer(&good("alice", &json!({ "org": "a".repeat(257) })))),
        ),
        (
            "a tenant claim with a control character",
            Some(bearer(&good("alice", &json!({ "org": "A\u{1}" })))),
        ),
    ];
    // (Checked at the end, so one wrongly accepted form does not hide the rest of the test.)
    let mut refusals = Vec::new();
    for (i, (what, auth)) in cases.iter().enumerate() {
        refusals.extend(refusal_problems(&replicas[i % 2], what, auth.as_deref()).await);
    }
    for r in &replicas {
        // (A wrongly accepted stream was dropped: wait for the replica to notice.)
        r.wait_subscribers(0, T)
            .await
            .unwrap_or_else(|e| panic!("{}: no subscriber left: {e}", r.label()));
    }

    // ---- valid tokens: the `org` claim decides ----
    let alice = good("alice", &json!({ "org": "A", "tenant": "B" }));
    let bob = good("bob", &json!({ "org": "B", "tenant": "A" }));
    let carol = good("carol", &json!({ "tenant": "A" })); // no `org`: no tenant
    let dave = good("dave", &json!({ "org": 42 })); // a numeric claim is the tenant "42"
    let mut carol_who = Who::jwt(
        "carol (no org claim; sends the tenant header)",
        &carol,
        None,
        None,
    );
    // In JWT mode the gateway header means nothing.
    carol_who
        .headers
        .push(("x-fanout-tenant".to_string(), "A".to_string()));
    let subs = vec![
        (Who::jwt("alice/A on r0", &alice, Some("A"), None), 0),
        (Who::jwt("alice/A on r1", &alice, Some("A"), None), 1),
        (Who::jwt("bob/B on r1", &bob, Some("B"), None), 1),
        (carol_who, 0),
        (Who::jwt("dave/42 on r1", &dave, Some("42"), None), 1),
    ];

    let start = publish_to(r0, body("start", 0), &Target::default()).await;
    let mut followers = Vec::new();
    for (who, at) in &subs {
        followers.push(Follower::spawn(
            &who.label,
            open_stream(&replicas[*at], who).await,
        ));
    }
    r0.wait_subscribers(2, T).await.expect("r0 subscribers");
    r1.wait_subscribers(3, T).await.expect("r1 subscribers");

    let t = |tenant: Option<&str>| Target::new(tenant, None);
    let mut events: Vec<Published> = Vec::new();
    for (n, target) in [
        t(Some("A")),
        t(Some("B")),
        t(None),
        t(Some("42")),
        t(Some("org")),
        t(Some("B")),
        t(Some("A")),
    ]
    .iter()
    .enumerate()
    {
        events.push(publish_to(&replicas[n % 2], body("jwt", n), target).await);
    }
    let fence = publish_to(r1, body("fence", 0), &Target::default()).await;
    events.push(fence.clone());

    let seen = join_all(
        followers
            .into_iter()
            .map(|f| f.finish(seq_of(&fence.id), T)),
    )
    .await;
    let mut problems = Vec::new();
    for (s, (who, at)) in seen.into_iter().zip(&subs) {
        let s = s.expect("follower");
        let want = visible_ids(&events, who);
        if s.event_ids() != want || s.end.is_some() {
            problems.push(format!(
                "live `{}`: expected {want:?}\n    got {:?} ({})",
                who.label,
                s.event_ids(),
                s.summary()
            ));
        }
        // And the same through /poll on the other replica.
        let other = &replicas[1 - *at];
        let answer = poll_ok(other, who, &format!("after={}&timeout=0", start.id)).await;
        let got: Vec<String> = answer.events.iter().filter_map(|e| e.id.clone()).collect();
        if got != want {
            problems.push(format!(
                "poll `{}` on {}: expected {want:?}\n    got {got:?}",
                who.label,
                other.label()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the tenant claim did not decide visibility:\n  {}",
        problems.join("\n  ")
    );
    assert!(
        refusals.is_empty(),
        "credentials that must be refused with 401 were not:\n  {}",
        refusals.join("\n  ")
    );
}

/// Opens a stream with a token expiring at `exp` on `r`, checks it carries events, and returns
/// when (Unix seconds) it ended, after checking it ended cleanly with a `retry:` block last.
async fn stream_until_expiry(r: &Replica, exp: u64) -> f64 {
    let token = hs256(SECRET, &json!({ "sub": "exp-user", "exp": exp }));
    let who = Who::jwt("expiring", &token, None, None);
    let mut conn = open_stream(r, &who).await;
    r.wait_subscribers(1, T).await.expect("registered");
    let id = r
        .publish_ok(&body("before-expiry", 0))
        .await
        .expect("publish");
    let ev = conn
        .next_event(T)
        .await
        .expect("the event")
        .expect("stream open");
    assert_eq!(
        ev.id.as_deref(),
        Some(id.as_str()),
        "{}: live event",
        r.label()
    );
    let frames = conn
        .read_to_end(Duration::from_secs(12))
        .await
        .unwrap_or_else(|e| panic!("{}: the stream should end at expiry: {e}", r.label()));
    let ended = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let last = frames.last().unwrap_or_else(|| {
        panic!(
            "{}: the stream ended without a retry: block (no frames)",
            r.label()
        )
    });
    assert!(
        last.retry.is_some() && !last.is_event(),
        "{}: the last block before the end is a bare retry: hint, got {:?}",
        r.label(),
        last.text()
    );
    assert!(
        frames.iter().all(|f| !f.is_event()),
        "{}: nothing but keep-alives and the retry: block after the event: {:?}",
        r.label(),
        frames.iter().map(|f| f.text()).collect::<Vec<_>>()
    );
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_ends_cleanly_when_its_token_expires_and_a_poll_does_not_outlive_it() {
    let jwt = |leeway: &'static str| {
        [
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
            ("FANOUT_JWT_SECRET", SECRET),
            ("FANOUT_JWT_LEEWAY_SECS", leeway),
        ]
    };
    let (env0, env2) = (jwt("0"), jwt("2"));
    let (strict, lenient) = tokio::join!(
        start_memory("jwt-leeway0", &env0),
        start_memory("jwt-leeway2", &env2),
    );

    // A token with 3 s left (leeway 0), one with 2 s left (leeway 2), and a waiting poll whose
    // token has 2 s left while it asks to wait 20 s.
    let exp_strict = now_secs() + 3;
    let exp_lenient = now_secs() + 2;
    let exp_poll = now_secs() + 2;
    let poll_token = hs256(SECRET, &json!({ "sub": "poller", "exp": exp_poll }));
    let poller = Who::jwt("poller", &poll_token, None, None);
    let started = Instant::now();
    let (end_strict, end_lenient, poll) = tokio::join!(
        stream_until_expiry(&strict, exp_strict),
        stream_until_expiry(&lenient, exp_lenient),
        async {
            let a = poll_ok(&strict, &poller, "timeout=20").await;
            let at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_secs_f64();
            (a, at)
        },
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Within leeway + 1 s of exp (and not before exp - a clock tick of slack): the bound of the
    // contract, plus 250 ms for this client to read the end.
    #[allow(clippy::cast_precision_loss)]
    let check = |what: &str, ended: f64, exp: u64, leeway: f64| {
        let exp = exp as f64;
        assert!(
            ended >= exp + leeway - 0.25 && ended <= exp + leeway + 1.0 + 0.25,
            "{what}: ended at {ended:.3}, expected within [{:.3}, {:.3}] (exp {exp}, leeway {leeway})",
            exp + leeway,
            exp + leeway + 1.0
        );
    };
    check("leeway 0 stream", end_strict, exp_strict, 0.0);
    check("leeway 2 stream", end_lenient, exp_lenient, 2.0);

    let (answer, answered_at) = poll;
    assert!(
        answer.events.iter().all(|e| e.id.is_some()),
        "no resync for a fresh poll: {answer:?}"
    );
    #[allow(clippy::cast_precision_loss)]
    let limit = exp_poll as f64 + 1.0 + 0.25;
    assert!(
        answered_at <= limit,
        "a waiting poll must not wait past its token's expiry: answered at {answered_at:.3}, exp {exp_poll}"
    );

    for r in [&strict, &lenient] {
        r.wait_metric(
            r#"mcp_fanout_subscribers_dropped_total{reason="token_expired"}"#,
            T,
            |v| v == 1.0,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: counted as token_expired: {e}", r.label()));
        r.wait_subscribers(0, T).await.expect("no subscriber left");
    }

    // The same token, now expired, is refused on a new request.
    let expired = hs256(SECRET, &json!({ "sub": "exp-user", "exp": exp_strict }));
    expect_401(
        &strict,
        "the expired token",
        Some(&format!("Bearer {expired}")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rs256_es256_public_keys_and_a_jwks_verify_tokens() {
    let dir = mcp_fanout_testkit::tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Two RSA keys (one is not configured anywhere) and an EC P-256 key, PKCS#8.
    for (name, args) in [
        (
            "rsa",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "rsa-other",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "ec",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
    ] {
        let key = format!("{name}.key");
        let mut a = vec!["genpkey"];
        a.extend(args.iter().copied());
        a.extend(["-out", key.as_str()]);
        mcp_fanout_testkit::openssl::openssl(d, &a);
        mcp_fanout_testkit::openssl::openssl(
            d,
            &[
                "pkey",
                "-in",
                &key,
                "-pubout",
                "-out",
                &format!("{name}.pub"),
            ],
        );
    }
    let read = |f: &str| std::fs::read(d.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
    let rsa = EncodingKey::from_rsa_pem(&read("rsa.key")).expect("RSA key");
    let rsa_other = EncodingKey::from_rsa_pem(&read("rsa-other.key")).expect("RSA key");
    let ec = EncodingKey::from_ec_pem(&read("ec.key")).expect("EC key");

    // A JWKS with both public keys.
    let mut jwk_ec = jsonwebtoken::jwk::Jwk::from_encoding_key(&ec, Algorithm::ES256).expect("jwk");
    jwk_ec.common.key_id = Some("ec-1".to_string());
    let mut jwk_rsa =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).expect("jwk");
    jwk_rsa.common.key_id = Some("rsa-1".to_string());
    let jwks = jsonwebtoken::jwk::JwkSet {
        keys: vec![jwk_ec, jwk_rsa],
    };
    std::fs::write(
        d.join("jwks.json"),
        serde_json::to_vec(&jwks).expect("jwks json"),
    )
    .expect("write jwks");

    let path = |f: &str| d.join(f).to_string_lossy().into_owned();
    let (rsa_pub, ec_pub, jwks_path) = (path("rsa.pub"), path("ec.pub"), path("jwks.json"));
    let env_rsa = [
        ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
        ("FANOUT_JWT_ANY_AUDIENCE", "true"),
        ("FANOUT_JWT_PUBLIC_KEY_FILE", rsa_pub.as_str()),
    ];
    let env_ec = [
        ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
        ("FANOUT_JWT_ANY_AUDIENCE", "true"),
        ("FANOUT_JWT_PUBLIC_KEY_FILE", ec_pub.as_str()),
    ];
    let env_jwks = [
        ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
        ("FANOUT_JWT_ANY_AUDIENCE", "true"),
        ("FANOUT_JWT_JWKS", jwks_path.as_str()),
    ];
    let (r_rsa, r_ec, r_jwks) = tokio::join!(
        start_memory("jwt-rs256", &env_rsa),
        start_memory("jwt-es256", &env_ec),
        start_memory("jwt-jwks", &env_jwks),
    );

    let c = json!({ "sub": "k", "exp": now_secs() + 600, "tenant": "T" });
    let rs = sign(Algorithm::RS256, &rsa, None, &c);
    let rs_kid = sign(Algorithm::RS256, &rsa, Some("rsa-1"), &c);
    let rs_other = sign(Algorithm::RS256, &rsa_other, None, &c);
    let es = sign(Algorithm::ES256, &ec, None, &c);
    let es_kid = sign(Algorithm::ES256, &ec, Some("ec-1"), &c);
    let es_unknown_kid = sign(Algorithm::ES256, &ec, Some("nope"), &c);
    // Algorithm confusion: an HS256 token whose "secret" is the public key PEM.
    let confused_rsa = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&read("rsa.pub")),
        None,
        &c,
    );
    let confused_ec = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&read("ec.pub")),
        None,
        &c,
    );

    let matrix = [
        ("rs", "RS256 by the configured key", &rs, true),
        ("rs", "RS256 by another key", &rs_other, false),
        ("rs", "ES256", &es, false),
        (
            "rs",
            "HS256 keyed with the public PEM",
            &confused_rsa,
            false,
        ),
        ("es", "ES256 by the configured key", &es, true),
        ("es", "RS256", &rs, false),
        ("es", "HS256 keyed with the public PEM", &confused_ec, false),
        ("jwks", "ES256 with kid ec-1", &es_kid, true),
        ("jwks", "RS256 with kid rsa-1", &rs_kid, true),
        ("jwks", "RS256 by a key not in the set", &rs_other, false),
        ("jwks", "ES256 with an unknown kid", &es_unknown_kid, false),
    ];
    let mut keys = Vec::new();
    for (which, name, token, accepted) in matrix {
        let r = match which {
            "rs" => &r_rsa,
            "es" => &r_ec,
            _ => &r_jwks,
        };
        let headers = vec![("Authorization".to_string(), format!("Bearer {token}"))];
        let resp = poll_with(r, "timeout=0", &headers).await;
        let what = format!("{}: {name}", r.label());
        let code = mcp_fanout_testkit::error_shape::error_code_of(&resp.text());
        match (accepted, resp.status.as_u16(), code.as_deref()) {
            (true, 200, _) | (false, 401, Some("unauthorized")) => {}
            _ => keys.push(format!(
                "{what}: expected {}, got {} {}",
                if accepted { "200" } else { "401 unauthorized" },
                resp.status,
                resp.text()
            )),
        }
    }
    // An accepted key-pair token also opens a stream that sees its tenant's events.
    let who = Who::jwt("es256 stream", &es, Some("T"), None);
    let mut conn = open_stream(&r_ec, &who).await;
    r_ec.wait_subscribers(1, T).await.expect("registered");
    let hidden = publish_to(&r_ec, body("other", 0), &Target::new(Some("U"), None)).await;
    let shown = publish_to(&r_ec, body("mine", 0), &Target::new(Some("T"), None)).await;
    let ev = conn.next_event(T).await.expect("event").expect("open");
    assert_eq!(
        ev.id.as_deref(),
        Some(shown.id.as_str()),
        "the stream skips {} (tenant U) and gets its own tenant's event",
        hidden.id
    );
    assert!(
        keys.is_empty(),
        "key-pair / JWKS verification:\n  {}",
        keys.join("\n  ")
    );
}

/// A fractional `exp` is a time like any other: a token expiring in ten minutes and a half keeps
/// its stream open and its poll waiting (it is not read as 1970, which would end the stream right
/// after priming and answer every poll at once: a reconnect loop). So does a token expiring at the
/// last second of year 9999.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fractional_or_far_exp_is_honoured_as_a_time() {
    let r = start_memory(
        "jwt-fraction",
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
            ("FANOUT_JWT_SECRET", SECRET),
            ("FANOUT_JWT_LEEWAY_SECS", "0"),
        ],
    )
    .await;
    #[allow(clippy::cast_precision_loss)]
    let fractional = now_secs() as f64 + 600.5;
    let tokens = [
        (
            "exp in ten minutes and a half",
            hs256(SECRET, &json!({ "sub": "frac", "exp": fractional })),
        ),
        (
            "exp at the end of year 9999",
            hs256(SECRET, &json!({ "sub": "far", "exp": 253_402_300_799_u64 })),
        ),
    ];
    for (n, (what, token)) in tokens.iter().enumerate() {
        let who = Who::jwt(what, token, None, None);
        let mut conn = open_stream(&r, &who).await;
        r.wait_subscribers(1, T)
            .await
            .expect("the stream registered");
        // A waiting poll: it must still be waiting when the event is published.
        let (answer, id) = tokio::join!(poll_ok(&r, &who, "timeout=20"), async {
            r.wait_subscribers(2, T)
                .await
                .unwrap_or_else(|e| panic!("{what}: the poll is waiting: {e}"));
            r.publish_ok(&body("fraction", n)).await.expect("publish")
        });
        let ev = conn
            .next_event(T)
            .await
            .unwrap_or_else(|e| panic!("{what}: the stream: {e}"))
            .unwrap_or_else(|| panic!("{what}: the stream ended before the event"));
        assert_eq!(ev.id.as_deref(), Some(id.as_str()), "{what}: {}", ev.text());
        assert_eq!(
            answer
                .events
                .iter()
                .filter_map(|e| e.id.clone())
                .collect::<Vec<_>>(),
            vec![id.clone()],
            "{what}: the poll waited for the event"
        );
        drop(conn);
        r.wait_subscribers(0, T).await.expect("none left");
    }
    assert_eq!(
        r.dropped("token_expired").await.expect("metrics"),
        0.0,
        "no stream ended for an expired token"
    );
}

/// A signed token whose claims name a claim twice, or whose header names a member twice, is
/// refused (`401`): the decoder would keep the
/// last `sub` or tenant, a gateway verifying the same token may keep the first, and the same
/// credential would be two principals. The same claims named once are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_naming_a_claim_twice_is_refused() {
    let r = start_memory(
        "jwt-repeated-claims",
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
            ("FANOUT_JWT_SECRET", SECRET),
        ],
    )
    .await;
    let exp = now_secs() + 600;
    let repeated = [
        (
            "`sub` twice",
            format!(r#"{{"sub":"alice","exp":{exp},"sub":"mallory"}}"#),
        ),
        (
            "the tenant claim twice",
            format!(r#"{{"sub":"alice","tenant":"a","exp":{exp},"tenant":"b"}}"#),
        ),
        (
            "`exp` twice",
            format!(r#"{{"sub":"alice","exp":{exp},"exp":{}}}"#, exp + 1),
        ),
    ];
    let mut problems = Vec::new();
    for (what, claims) in &repeated {
        let bearer = format!("Bearer {}", hs256_raw(SECRET, claims));
        problems.extend(refusal_problems(&r, what, Some(&bearer)).await);
    }
    let header_twice = hs256_raw_parts(
        SECRET,
        r#"{"alg":"HS256","typ":"JWT","alg":"HS256"}"#,
        &format!(r#"{{"sub":"alice","exp":{exp}}}"#),
    );
    let bearer = format!("Bearer {header_twice}");
    problems.extend(refusal_problems(&r, "the header's `alg` twice", Some(&bearer)).await);
    // RFC 7515 §4.1.11: a `crit` extension the recipient does not understand refuses the token.
    let critical = hs256_raw_parts(
        SECRET,
        r#"{"alg":"HS256","typ":"JWT","crit":["x-unknown"],"x-unknown":1}"#,
        &format!(r#"{{"sub":"alice","exp":{exp}}}"#),
    );
    let bearer = format!("Bearer {critical}");
    problems.extend(refusal_problems(&r, "a `crit` extension", Some(&bearer)).await);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let once = hs256_raw(
        SECRET,
        &format!(r#"{{"sub":"alice","tenant":"a","exp":{exp}}}"#),
    );
    let who = Who::jwt("the claims named once", &once, Some("a"), None);
    let _conn = open_stream(&r, &who).await;
    r.wait_subscribers(1, T)
        .await
        .expect("the same claims named once open a stream");
}

/// `exp` is kept with its fraction (identity.md): a token whose `exp` + leeway passed a fraction
/// of a second ago is refused, on every path. The decoder compares whole seconds, so such a token
/// was accepted for up to a second past its expiry (the third hostile probe: 16 of 20 at 0.7 s).
/// Each round waits for the middle of a wall-clock second and signs `exp` 0.2 s after that
/// second began — already past (leeway 0), and not past in whole seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exp_a_fraction_of_a_second_past_is_refused() {
    let r = start_memory(
        "jwt-exp-fraction",
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
            ("FANOUT_JWT_SECRET", SECRET),
            ("FANOUT_JWT_LEEWAY_SECS", "0"),
        ],
    )
    .await;
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
    };
    let token = |exp: f64| {
        format!(
            "Bearer {}",
            hs256(SECRET, &json!({ "sub": "alice", "exp": exp }))
        )
    };
    let live = token(now().as_secs_f64() + 60.5);
    let ok = poll_with(&r, "timeout=0", &[("authorization".into(), live)]).await;
    assert_eq!(ok.status, 200, "a live token: {}", ok.text());
    for round in 0..3 {
        // The middle of a second: the request is answered before the next one begins.
        while !(400..600).contains(&now().subsec_millis()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let exp = now().as_secs() as f64 + 0.2;
        let auth = token(exp);
        let resp = poll_with(&r, "timeout=0", &[("authorization".into(), auth.clone())]).await;
        expect_http_error(&format!("round {round}: /poll"), &resp, 401, "unauthorized");
        let conn = r
            .subscribe(&SseRequest::mcp().header("authorization", &auth))
            .await
            .expect("GET /mcp");
        expect_sse_error(
            &format!("round {round}: GET /mcp"),
            conn,
            401,
            "unauthorized",
        )
        .await;
    }
}

/// `FANOUT_JWT_AUDIENCE` is required in `jwt` mode (MCP servers must refuse tokens made for
/// another service of the same issuer): without it, or with it and `FANOUT_JWT_ANY_AUDIENCE=true`
/// both, the start fails naming the settings. A comma-separated list accepts a token naming any of
/// its entries (as a string or in an array) and refuses one naming none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audience_is_required_and_a_list_accepts_any_of_its_entries() {
    let jwt = |extra: &[(&str, &str)]| {
        let mut env = vec![
            ("FANOUT_SUBSCRIBER_AUTH".to_string(), "jwt".to_string()),
            ("FANOUT_JWT_SECRET".to_string(), SECRET.to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    };
    let text = start_fails(&jwt(&[]), Duration::from_secs(30)).await;
    assert!(
        text.contains("needs FANOUT_JWT_AUDIENCE") && text.contains("FANOUT_JWT_ANY_AUDIENCE=true"),
        "no audience: the error names both settings: {text}"
    );
    let text = start_fails(
        &jwt(&[
            ("FANOUT_JWT_AUDIENCE", AUDIENCE),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
        ]),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        text.contains("contradict each other"),
        "both: the error says so: {text}"
    );

    let r = start_memory(
        "jwt-audiences",
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_SECRET", SECRET),
            (
                "FANOUT_JWT_AUDIENCE",
                "https://mcp.example.com/mcp, mcp-fanout-tests",
            ),
        ],
    )
    .await;
    let token = |aud: Value| {
        format!(
            "Bearer {}",
            hs256(
                SECRET,
                &json!({ "sub": "u", "aud": aud, "exp": now_secs() + 600 })
            )
        )
    };
    for aud in [
        json!("https://mcp.example.com/mcp"),
        json!(AUDIENCE),
        json!(["another-api", AUDIENCE]),
    ] {
        let conn = r
            .subscribe(&SseRequest::mcp().header("Authorization", &token(aud.clone())))
            .await
            .expect("GET /mcp");
        assert_eq!(conn.status(), 200, "aud {aud} is one of the list");
    }
    for aud in [json!("another-api"), json!(["another-api", "a-third"])] {
        expect_401(&r, &format!("aud {aud}"), Some(&token(aud.clone()))).await;
    }
}
