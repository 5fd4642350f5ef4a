//! Contract §3.5, §4.1, §7.6: the bad-input table extended to every field and
//! header the identity work added — the tenant header of header mode, bearer tokens of every
//! broken form in JWT mode, a session presented by another principal, `Mcp-Session-Id` on
//! `/poll`, the `tenant` / `session` / `key` publish fields (types, lengths in bytes, control
//! characters, in a batch with its `index`), `Idempotency-Key` (alone and together with per-event
//! keys), and the SQL `publish(…)` arguments. Each gets its status and JSON error code in the one
//! error shape, nothing is published by a refused request, the boundaries are accepted, request
//! headers beyond the 64 KiB bound get `431`, a request naming `Authorization` or `Origin` twice is
//! refused (`401`, `403`), the tenant header or `Mcp-Session-Id` twice too (`400`), and the
//! service keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use mcp_fanout_testkit::{
    body,
    cases::{case, publish, run_cases, run_ok, sse, still_serves},
    identity::TENANT_HEADER,
    jwt::{b64url, hs256, now_secs},
    open_stream_with, start_memory, Deployment, RawRequest, SseRequest, ADMIN_TOKEN,
};
use serde_json::{json, Value};

const SECRET: &str = "bad-input-identity-secret";
const T: Duration = Duration::from_secs(10);

fn poll() -> RawRequest {
    RawRequest::new("GET", "/poll?timeout=0")
}

fn ev(extra: &Value) -> Value {
    let mut v = json!({ "method": "notifications/test/bad" });
    for (k, x) in extra.as_object().expect("object") {
        v[k] = x.clone();
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tenant_headers_sessions_and_publish_fields_get_json_errors() {
    let r = start_memory(
        "bad-identity-header",
        &[("FANOUT_SUBSCRIBER_AUTH", "header")],
    )
    .await;
    let addr = r.public_addr();

    // Bind a session to tenant A first (a poll binds without streaming).
    let bind = poll()
        .header(TENANT_HEADER, "A")
        .header("Mcp-Session-Id", "owned-by-a")
        .send(addr, T)
        .await
        .expect("bind");
    assert_eq!(bind.status(), 200, "binding poll: {}", bind.text());
    let published_before = r
        .metric("mcp_fanout_events_published_total")
        .await
        .expect("metrics")
        .unwrap_or(0.0);

    let long_tenant = "t".repeat(257);
    let long_tenant_multibyte = "é".repeat(129); // 258 bytes, 129 characters
    let long_session = "s".repeat(129);
    let long_key = "k".repeat(129);
    let mut cases = Vec::new();

    // ---- the tenant header, on both subscriber endpoints ----
    for (what, req) in [("/mcp", sse("/mcp")), ("/poll", poll())] {
        let bad_values: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("over 256 bytes", long_tenant.as_bytes().to_vec()),
            (
                "over 256 bytes in 129 characters",
                long_tenant_multibyte.as_bytes().to_vec(),
            ),
            ("with a TAB", b"acme\tcorp".to_vec()),
            ("not UTF-8", vec![b'a', 0xff, 0xfe, b'b']),
            (
                "with a C1 control (U+0085)",
                "acme\u{85}corp".as_bytes().to_vec(),
            ),
        ];
        for (name, value) in bad_values {
            cases.push(
                case(
                    format!("tenant header {name} on {what}"),
                    req.clone().header_bytes(TENANT_HEADER, &value),
                    400,
                    "invalid_field",
                )
                .field("tenant header"),
            );
        }
    }
    // ---- named twice: the tenant header (each value valid), on both endpoints ----
    for (what, req) in [("/mcp", sse("/mcp")), ("/poll", poll())] {
        cases.push(
            case(
                format!("the tenant header twice on {what}"),
                req.header(TENANT_HEADER, "A").header(TENANT_HEADER, "B"),
                400,
                "invalid_field",
            )
            .field("tenant header"),
        );
    }
    // ---- Mcp-Session-Id on /poll (the stream's cases are in bad_input.rs) ----
    for (name, value) in [
        ("over 128 bytes", long_session.as_bytes().to_vec()),
        ("with a space", b"a b".to_vec()),
        ("not ASCII", "sé".as_bytes().to_vec()),
        ("with a TAB", b"a\tb".to_vec()),
    ] {
        cases.push(case(
            format!("Mcp-Session-Id {name} on /poll"),
            poll().header_bytes("Mcp-Session-Id", &value),
            400,
            "invalid_session_id",
        ));
    }
    cases.push(case(
        "Mcp-Session-Id twice on /poll (its owner's and another)",
        poll()
            .header(TENANT_HEADER, "A")
            .header("Mcp-Session-Id", "owned-by-a")
            .header("Mcp-Session-Id", "another"),
        400,
        "invalid_session_id",
    ));
    // ---- a session owned by another principal ----
    for (what, req) in [("/mcp", sse("/mcp")), ("/poll", poll())] {
        cases.push(case(
            format!("another tenant's session on {what}"),
            req.clone()
                .header(TENANT_HEADER, "B")
                .header("Mcp-Session-Id", "owned-by-a"),
            403,
            "forbidden",
        ));
        cases.push(case(
            format!("a tenant's session without a tenant on {what}"),
            req.header("Mcp-Session-Id", "owned-by-a"),
            403,
            "forbidden",
        ));
    }

    // ---- publish: tenant ----
    let tenant_cases: Vec<(&str, Value)> = vec![
        ("a number", json!(5)),
        ("a boolean", json!(true)),
        ("an object", json!({ "id": "A" })),
        ("an array", json!(["A"])),
        ("empty", json!("")),
        ("over 256 bytes", json!(long_tenant)),
        (
            "over 256 bytes in 129 characters",
            json!(long_tenant_multibyte),
        ),
        ("with U+0001", json!("a\u{1}b")),
        ("with a newline", json!("a\nb")),
        ("with a TAB", json!("a\tb")),
        ("with DEL", json!("a\u{7f}b")),
        ("with a C1 control (U+0085)", json!("a\u{85}b")),
    ];
    for (name, v) in tenant_cases {
        cases.push(
            case(
                format!("publish tenant {name}"),
                publish(ADMIN_TOKEN, &ev(&json!({ "tenant": v }))),
                400,
                "invalid_field",
            )
            .field("tenant"),
        );
    }
    // ---- publish: session ----
    let session_cases: Vec<(&str, Value)> = vec![
        ("a number", json!(7)),
        ("an object", json!({})),
        ("a boolean", json!(false)),
        ("empty", json!("")),
        ("over 128 bytes", json!(long_session)),
        ("with a space", json!("a b")),
        ("not ASCII", json!("sé")),
        ("with a control byte", json!("a\u{1}b")),
        ("with DEL", json!("a\u{7f}b")),
    ];
    for (name, v) in session_cases {
        cases.push(
            case(
                format!("publish session {name}"),
                publish(ADMIN_TOKEN, &ev(&json!({ "session": v }))),
                400,
                "invalid_field",
            )
            .field("session"),
        );
    }
    // ---- publish: key ----
    for (name, v) in [
        ("empty", json!("")),
        ("over 128 bytes", json!(long_key)),
        ("with a space", json!("a b")),
        ("not ASCII", json!("ké")),
    ] {
        cases.push(
            case(
                format!("publish key {name}"),
                publish(ADMIN_TOKEN, &ev(&json!({ "key": v }))),
                400,
                "invalid_field",
            )
            .field("key"),
        );
    }
    // ---- in a batch: the failing index, and nothing of the batch published ----
    let batch = json!([
        ev(&json!({ "tenant": "A" })),
        ev(&json!({ "session": "s1" })),
        ev(&json!({ "tenant": "" })),
    ]);
    cases.push(
        case(
            "batch with an empty tenant at index 2",
            publish(ADMIN_TOKEN, &batch),
            400,
            "invalid_field",
        )
        .field("tenant")
        .index(2),
    );
    let batch = json!([ev(&json!({})), ev(&json!({ "session": "x y" }))]);
    cases.push(
        case(
            "batch with a bad session at index 1",
            publish(ADMIN_TOKEN, &batch),
            400,
            "invalid_field",
        )
        .field("session")
        .index(1),
    );
    // Typos of the new fields are refused, never ignored (that would broadcast a private event).
    for typo in ["tenat", "Tenant", "sesion", "session_id", "tenant_id"] {
        cases.push(case(
            format!("publish with the unknown field {typo:?}"),
            publish(ADMIN_TOKEN, &ev(&json!({ typo: "x" }))),
            400,
            "unknown_field",
        ));
    }
    // ---- Idempotency-Key ----
    cases.push(case(
        "Idempotency-Key together with a per-event key",
        publish(ADMIN_TOKEN, &ev(&json!({ "key": "k1" }))).header("Idempotency-Key", "req-1"),
        400,
        "invalid_field",
    ));
    cases.push(case(
        "Idempotency-Key together with a per-event key in a batch",
        publish(
            ADMIN_TOKEN,
            &json!([ev(&json!({})), ev(&json!({ "key": "k2" }))]),
        )
        .header("Idempotency-Key", "req-2"),
        400,
        "invalid_field",
    ));
    for (name, value) in [
        ("empty", Vec::new()),
        ("over 128 bytes", long_key.as_bytes().to_vec()),
        ("with a space", b"a b".to_vec()),
        ("not ASCII", "ké".as_bytes().to_vec()),
        ("with a TAB", b"a\tb".to_vec()),
    ] {
        cases.push(
            case(
                format!("Idempotency-Key {name}"),
                publish(ADMIN_TOKEN, &ev(&json!({}))).header_bytes("Idempotency-Key", &value),
                400,
                "invalid_field",
            )
            .field("Idempotency-Key"),
        );
    }
    run_cases("identity bad-input", addr, cases, T).await;

    // Request headers are bounded on the accept loop (64 KiB): a tenant header far beyond that is
    // refused by the HTTP layer itself with 431, before any handler runs.
    let huge = "t".repeat(80 * 1024);
    for (what, req) in [("/mcp", sse("/mcp")), ("/poll", poll())] {
        let resp = req
            .header(TENANT_HEADER, &huge)
            .send(addr, T)
            .await
            .unwrap_or_else(|e| panic!("an 80 KiB tenant header on {what}: {e}"));
        assert_eq!(
            resp.status(),
            431,
            "an 80 KiB tenant header on {what}: {}",
            resp.text()
        );
    }

    assert_eq!(
        r.metric("mcp_fanout_events_published_total")
            .await
            .expect("metrics")
            .unwrap_or(0.0),
        published_before,
        "no refused publish published anything"
    );

    // ---- the boundaries are accepted ----
    let tenant_256 = "é".repeat(128);
    let ok = vec![
        (
            "tenant header of 256 bytes (128 two-byte characters)".to_string(),
            poll().header(TENANT_HEADER, &tenant_256),
        ),
        (
            "tenant header with spaces and punctuation".to_string(),
            poll().header(TENANT_HEADER, "Acme Corp / EU-1"),
        ),
        (
            "the owner's own session".to_string(),
            poll()
                .header(TENANT_HEADER, "A")
                .header("Mcp-Session-Id", "owned-by-a"),
        ),
        (
            "Mcp-Session-Id of 128 bytes on /poll".to_string(),
            poll().header("Mcp-Session-Id", &"s".repeat(128)),
        ),
        (
            "publish tenant of 256 bytes".to_string(),
            publish(ADMIN_TOKEN, &ev(&json!({ "tenant": tenant_256 }))),
        ),
        (
            "publish session of 128 bytes, tenant and key".to_string(),
            publish(
                ADMIN_TOKEN,
                &ev(&json!({ "session": "s".repeat(128), "tenant": "A", "key": "k".repeat(128) })),
            ),
        ),
        (
            "publish tenant and session null".to_string(),
            publish(
                ADMIN_TOKEN,
                &ev(&json!({ "tenant": null, "session": null })),
            ),
        ),
        (
            "Idempotency-Key of 128 bytes".to_string(),
            publish(ADMIN_TOKEN, &ev(&json!({}))).header("Idempotency-Key", &"i".repeat(128)),
        ),
    ];
    run_ok(addr, ok, T).await;
    still_serves(&r, &[(TENANT_HEADER, "A")]).await;
}

/// A token over arbitrary header and payload text, signed with HS256 and `SECRET`.
fn signed_raw(header: &str, payload: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{signing_input}.{sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_bearer_tokens_of_every_form_get_401_with_www_authenticate() {
    let r = start_memory(
        "bad-identity-jwt",
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
            ("FANOUT_JWT_SECRET", SECRET),
        ],
    )
    .await;
    let addr = r.public_addr();
    let valid = hs256(SECRET, &json!({ "sub": "u", "exp": now_secs() + 600 }));
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    // `Authorization: Bearer` of a correctly signed token over this payload text.
    let raw = |payload: &str| format!("Bearer {}", signed_raw(hs, payload)).into_bytes();
    let exp = now_secs() + 600;
    let forms: Vec<(&str, Vec<u8>)> = vec![
        ("an empty Authorization header", Vec::new()),
        ("the scheme alone", b"Bearer".to_vec()),
        ("two segments", b"Bearer abc.def".to_vec()),
        ("four segments", format!("Bearer {valid}.xyz").into_bytes()),
        (
            "a valid token followed by junk",
            format!("Bearer {valid} junk").into_bytes(),
        ),
        (
            "a header that is not base64url",
            b"Bearer !!!.e30.sig".to_vec(),
        ),
        (
            "a payload that is not JSON (correctly signed)",
            format!("Bearer {}", signed_raw(hs, "hello")).into_bytes(),
        ),
        (
            "a payload that is a JSON array (correctly signed)",
            format!("Bearer {}", signed_raw(hs, "[1,2]")).into_bytes(),
        ),
        (
            "exp as a string (correctly signed)",
            format!(
                "Bearer {}",
                signed_raw(hs, &format!(r#"{{"sub":"u","exp":"{exp}"}}"#))
            )
            .into_bytes(),
        ),
        (
            "a header naming an unknown algorithm (correctly signed)",
            format!(
                "Bearer {}",
                signed_raw(
                    r#"{"alg":"XS999","typ":"JWT"}"#,
                    &format!(r#"{{"sub":"u","exp":{exp}}}"#)
                )
            )
            .into_bytes(),
        ),
        (
            "a signature of the wrong length",
            format!("Bearer {}AAAA", valid).into_bytes(),
        ),
        (
            "a 32 KiB token",
            format!(
                "Bearer {}.{}.{}",
                "a".repeat(11_000),
                "b".repeat(11_000),
                "c".repeat(11_000)
            )
            .into_bytes(),
        ),
        ("non-UTF-8 bytes", b"Bearer \xff\xfe.\xfd.x".to_vec()),
        (
            "nbf 10 minutes ahead (beyond the leeway)",
            format!(
                "Bearer {}",
                hs256(
                    SECRET,
                    &json!({ "sub": "u", "exp": exp + 600, "nbf": now_secs() + 600 })
                )
            )
            .into_bytes(),
        ),
        (
            "nbf 10 minutes ahead, with a fraction",
            raw(&format!(
                r#"{{"sub":"u","exp":{},"nbf":{}.5}}"#,
                exp + 600,
                now_secs() + 600
            )),
        ),
        (
            "nbf as a string",
            raw(&format!(r#"{{"sub":"u","exp":{exp},"nbf":"0"}}"#)),
        ),
        (
            "exp of 2^63",
            raw(r#"{"sub":"u","exp":9223372036854775808}"#),
        ),
        (
            "exp of 2^64 - 1",
            raw(r#"{"sub":"u","exp":18446744073709551615}"#),
        ),
        ("exp of 2^63 as a float", raw(r#"{"sub":"u","exp":9.3e18}"#)),
        (
            "exp just past the end of year 9999",
            raw(r#"{"sub":"u","exp":253402300800}"#),
        ),
        ("exp of 1e300", raw(r#"{"sub":"u","exp":1e300}"#)),
        (
            "iat of 2^63",
            raw(&format!(
                r#"{{"sub":"u","exp":{exp},"iat":9223372036854775808}}"#
            )),
        ),
        (
            "iat negative",
            raw(&format!(r#"{{"sub":"u","exp":{exp},"iat":-1}}"#)),
        ),
        (
            "iat as a string",
            raw(&format!(r#"{{"sub":"u","exp":{exp},"iat":"now"}}"#)),
        ),
        (
            "sub that is a number",
            raw(&format!(r#"{{"sub":42,"exp":{exp}}}"#)),
        ),
        (
            "a tenant claim that is a list (correctly signed)",
            format!(
                "Bearer {}",
                hs256(
                    SECRET,
                    &json!({ "sub": "u", "exp": exp, "tenant": ["a", "b"] })
                )
            )
            .into_bytes(),
        ),
    ];
    let mut cases = Vec::new();
    for (name, value) in &forms {
        for (what, req) in [("/mcp", sse("/mcp")), ("/poll", poll())] {
            cases.push(
                case(
                    format!("{name} on {what}"),
                    req.header_bytes("Authorization", value),
                    401,
                    "unauthorized",
                )
                .with_header("www-authenticate"),
            );
        }
    }
    // A valid token does not open the admin surface, nor does the admin token open a stream.
    cases.push(
        case(
            "a subscriber JWT on /admin/publish",
            RawRequest::new("POST", "/admin/publish")
                .header("Authorization", &format!("Bearer {valid}"))
                .json(&body("x", 0)),
            401,
            "unauthorized",
        )
        .with_header("www-authenticate"),
    );
    cases.push(
        case(
            "the admin token on /mcp",
            sse("/mcp").header("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
            401,
            "unauthorized",
        )
        .with_header("www-authenticate"),
    );
    // Two Authorization headers are no credential, even when one is valid (a proxy in front may
    // have checked the other); two Origins are no origin.
    for (what, req) in [("/mcp", sse("/mcp")), ("/poll", poll())] {
        cases.push(
            case(
                format!("a valid token and a second Authorization on {what}"),
                req.header("Authorization", &format!("Bearer {valid}"))
                    .header("Authorization", "Bearer junk"),
                401,
                "unauthorized",
            )
            .with_header("www-authenticate"),
        );
    }
    cases.push(case(
        "the admin token and a second Authorization on /admin/publish",
        RawRequest::new("POST", "/admin/publish")
            .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .header("Authorization", "Bearer junk")
            .json(&body("x", 0)),
        401,
        "unauthorized",
    ));
    cases.push(case(
        "two Origin headers on /poll",
        poll()
            .header("Authorization", &format!("Bearer {valid}"))
            // The first alone is same-origin, and would be served.
            .header("Origin", &format!("http://{addr}"))
            .header("Origin", "http://evil.example"),
        403,
        "forbidden",
    ));
    run_cases("identity bad-input", addr, cases, T).await;
    r.wait_subscribers(0, T)
        .await
        .expect("no refused request is a subscriber");
    // The boundaries of the time claims are accepted (the leeway is the default 30 s).
    let now = now_secs();
    let ok_payloads = [
        (
            "exp with a fraction",
            format!(r#"{{"sub":"u","exp":{exp}.5}}"#),
        ),
        (
            "nbf 10 s ahead, within the leeway",
            format!(r#"{{"sub":"u","exp":{exp},"nbf":{}}}"#, now + 10),
        ),
        (
            "nbf in the past, with a fraction",
            format!(r#"{{"sub":"u","exp":{exp},"nbf":{}.25}}"#, now - 100),
        ),
        (
            "iat with a fraction",
            format!(r#"{{"sub":"u","exp":{exp},"iat":{now}.75}}"#),
        ),
        (
            "exp at the last second of year 9999",
            r#"{"sub":"u","exp":253402300799}"#.to_string(),
        ),
    ];
    let ok = ok_payloads
        .iter()
        .map(|(name, payload)| {
            (
                (*name).to_string(),
                poll().header(
                    "Authorization",
                    &format!("Bearer {}", signed_raw(hs, payload)),
                ),
            )
        })
        .collect();
    run_ok(addr, ok, T).await;
    let auth = format!("Bearer {valid}");
    still_serves(&r, &[("Authorization", auth.as_str())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_publish_refuses_bad_tenant_and_session_arguments() {
    let pg = Deployment::fresh("badsql").await.with_admin();
    // One replica applies the schema (and shows the refused calls published nothing).
    let replicas = pg.replicas("bad-sql-", 1, &[]).await;
    let r = &replicas[0];
    let mut s = open_stream_with(r, SseRequest::mcp(), "sql watcher").await;
    r.wait_subscribers(1, T).await.expect("registered");
    let client = pg.client().await;
    let b = body("sql", 0);
    let long_tenant = "t".repeat(257);
    let long_session = "s".repeat(129);
    let bad: Vec<(&str, Option<&str>, Option<&str>)> = vec![
        ("empty tenant", Some(""), None),
        ("tenant over 256 bytes", Some(long_tenant.as_str()), None),
        ("tenant with a control character", Some("a\u{1}b"), None),
        ("tenant with a newline", Some("a\nb"), None),
        ("empty session", None, Some("")),
        ("session over 128 bytes", None, Some(long_session.as_str())),
        ("session with a space", None, Some("a b")),
        ("session not ASCII", None, Some("sé")),
    ];
    let mut problems = Vec::new();
    for (name, tenant, session) in bad {
        if let Ok(id) = pg.try_sql_publish(&client, &b, tenant, session).await {
            problems.push(format!(
                "{name}: SELECT publish(…) answered {id}, expected an error"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "SQL publish accepted bad targets:\n  {}",
        problems.join("\n  ")
    );
    let tenant_256 = "é".repeat(128);
    let ok = pg
        .try_sql_publish(&client, &b, Some(&tenant_256), Some(&"s".repeat(128)))
        .await
        .expect("the boundaries are accepted");
    let fence = pg
        .try_sql_publish(&client, &b, None, None)
        .await
        .expect("an untargeted SQL publish");
    let ids = pg
        .server
        .log_ids(&pg.db, &pg.schema)
        .await
        .expect("the log");
    assert_eq!(
        ids,
        vec![ok, fence.clone()],
        "the log holds only the accepted events"
    );
    let ev = s.next_event(T).await.expect("event").expect("open");
    assert_eq!(
        ev.id.as_deref(),
        Some(fence.as_str()),
        "the stream gets the untargeted one"
    );
}
