//! docs/identity.md, `FANOUT_JWT_JWKS` as a URL: a token naming an unknown `kid` makes the replica
//! refetch the key set (at most once per `FANOUT_JWKS_REFETCH_SECS`), and tokens whose keys are
//! known are verified while that refetch is in flight — an identity provider that is slow to
//! answer (here: one whose second answer is held until the test lets it go) does not stall every
//! authenticated request. Once the refetch returns, a token signed with the new key is accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use mcp_fanout_testkit::jwt::{now_secs, sign};
use mcp_fanout_testkit::{poll_with, start_memory, wait_until, Replica};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const T: Duration = Duration::from_secs(20);

/// A JWKS endpoint: answers the first fetch at once and each later one only with a permit of
/// `gate`; counts the fetches it has begun to answer.
struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    body: Arc<Mutex<Vec<u8>>>,
    gate: Arc<Semaphore>,
}

impl JwksServer {
    async fn start(first: &JwkSet) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        let fetches = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(serde_json::to_vec(first).expect("jwks json")));
        let gate = Arc::new(Semaphore::new(0));
        let (f, b, g) = (fetches.clone(), body.clone(), gate.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (f, b, g) = (f.clone(), b.clone(), g.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if f.fetch_add(1, Ordering::SeqCst) > 0 {
                        let Ok(permit) = g.acquire().await else {
                            return;
                        };
                        permit.forget();
                    }
                    let body = b.lock().expect("body").clone();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                });
            }
        });
        JwksServer {
            url,
            fetches,
            body,
            gate,
        }
    }
}

fn ec_key(dir: &std::path::Path, name: &str) -> EncodingKey {
    let key = format!("{name}.key");
    mcp_fanout_testkit::openssl::openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    EncodingKey::from_ec_pem(&std::fs::read(dir.join(&key)).expect("read key")).expect("EC key")
}

fn jwk(key: &EncodingKey, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, Algorithm::ES256).expect("jwk");
    jwk.common.key_id = Some(kid.to_string());
    jwk
}

/// The status of `GET /poll?timeout=0` with this bearer token, if answered within `within`.
async fn poll_status(r: &Replica, token: &str, within: Duration) -> Option<u16> {
    let headers = [("authorization".to_string(), format!("Bearer {token}"))];
    tokio::time::timeout(within, poll_with(r, "timeout=0", &headers))
        .await
        .ok()
        .map(|resp| resp.status.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_keys_are_verified_while_a_refetch_for_an_unknown_kid_is_in_flight() {
    let dir = mcp_fanout_testkit::tempfile::tempdir().expect("tempdir");
    let (old, new) = (ec_key(dir.path(), "old"), ec_key(dir.path(), "new"));
    let jwks = JwksServer::start(&JwkSet {
        keys: vec![jwk(&old, "old")],
    })
    .await;
    let r = start_memory(
        "jwks-refetch",
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
            ("FANOUT_JWT_JWKS", jwks.url.as_str()),
            ("FANOUT_JWKS_REFETCH_SECS", "1"),
        ],
    )
    .await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "fetched at start");
    let claims = json!({ "sub": "alice", "exp": now_secs() + 600 });
    let known = sign(Algorithm::ES256, &old, Some("old"), &claims);
    let rotated = sign(Algorithm::ES256, &new, Some("new"), &claims);
    assert_eq!(poll_status(&r, &known, T).await, Some(200));
    assert_eq!(
        poll_status(&r, &rotated, T).await,
        Some(401),
        "a key not in the set (no refetch within FANOUT_JWKS_REFETCH_SECS of the last)"
    );

    // The provider rotates; the replica's next refetch is held on the provider's side.
    *jwks.body.lock().expect("body") = serde_json::to_vec(&JwkSet {
        keys: vec![jwk(&old, "old"), jwk(&new, "new")],
    })
    .expect("jwks json");
    // Tokens with the new kid, one after another until one finds the refetch window open: that
    // one begins the refetch and stays waiting in it (its request is kept alive).
    let mut tries = Vec::new();
    wait_until("a token with the new kid starts a refetch", T, || {
        let fetches = jwks.fetches.load(Ordering::SeqCst);
        if fetches < 2 {
            let (url, token) = (r.public_url("/poll?timeout=0"), rotated.clone());
            tries.push(tokio::spawn(async move {
                reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .timeout(T)
                    .send()
                    .await
                    .map(|resp| resp.status().as_u16())
            }));
        }
        async move { fetches == 2 }
    })
    .await
    .expect("the refetch begins");

    // While it is held: a token whose key is known is answered at once, again and again.
    for _ in 0..3 {
        assert_eq!(
            poll_status(&r, &known, Duration::from_secs(5)).await,
            Some(200),
            "a known key does not wait for the refetch"
        );
    }

    // The provider answers: the new key is in the set.
    jwks.gate.add_permits(1);
    wait_until("the rotated key is accepted", T, || async {
        poll_status(&r, &rotated, T).await == Some(200)
    })
    .await
    .expect("after the refetch the new key verifies tokens");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "one refetch");
    // The request that began it waited for it and was verified with the new key.
    let last = tries.pop().expect("a try").await.expect("joined");
    assert_eq!(
        last.ok(),
        Some(200),
        "the waiting request gets the refetched key"
    );
}
