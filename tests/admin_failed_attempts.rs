//! Contract §4.1: wrong admin tokens are limited per source address. An address gets
//! `FANOUT_ADMIN_FAILED_ATTEMPTS` wrong tokens, then `FANOUT_ADMIN_FAILED_ATTEMPTS_PER_MIN` a
//! minute; past that it is answered `429 too_many_failed_attempts` with `Retry-After`, before its
//! token is compared — the right token included, so a guess cannot be confirmed. Requests without
//! a token do not count. Another address keeps its own allowance and is served; the refusals are
//! counted and logged, and the address is served again once its allowance has refilled.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::net::IpAddr;
use std::time::Duration;

use mcp_fanout_testkit::{
    error_shape::expect_http_error, start_memory, wait_for, HttpResponse, Replica,
};

const TOKEN: &str = "admin-token-for-attempts-4e1f";
const T: Duration = Duration::from_secs(20);

/// A client whose connections come from `source`.
fn client_from(source: &str) -> reqwest::Client {
    let ip: IpAddr = source.parse().expect("a source address");
    mcp_fanout_testkit::client_from(ip, T).expect("a client")
}

async fn cluster(r: &Replica, client: &reqwest::Client, token: Option<&str>) -> HttpResponse {
    let mut req = client.get(r.admin_url("/admin/cluster"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("GET /admin/cluster");
    HttpResponse::read(resp).await.expect("read the answer")
}

async fn replica(label: &str, attempts: &str, per_min: &str) -> Replica {
    start_memory(
        label,
        &[
            ("FANOUT_ADMIN_TOKENS", TOKEN),
            ("FANOUT_ADMIN_FAILED_ATTEMPTS", attempts),
            ("FANOUT_ADMIN_FAILED_ATTEMPTS_PER_MIN", per_min),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_out_of_attempts_is_refused_even_the_right_token_and_others_are_served() {
    // One attempt a minute once the five are used: nothing refills within the test.
    let r = replica("attempts", "5", "1").await;
    let (guesser, neighbour) = (client_from("127.0.0.1"), client_from("127.0.0.2"));

    for i in 0..3 {
        let resp = cluster(&r, &guesser, None).await;
        expect_http_error(&format!("no token #{i}"), &resp, 401, "unauthorized");
    }
    for i in 0..5 {
        let resp = cluster(&r, &guesser, Some("guess")).await;
        expect_http_error(&format!("wrong token #{i}"), &resp, 401, "unauthorized");
    }
    let refused = cluster(&r, &guesser, Some("guess")).await;
    expect_http_error(
        "the sixth wrong token",
        &refused,
        429,
        "too_many_failed_attempts",
    );
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        (1..=60).contains(&retry),
        "Retry-After is within a minute: {retry}"
    );
    let right = cluster(&r, &guesser, Some(TOKEN)).await;
    expect_http_error(
        "the right token from the guessing address",
        &right,
        429,
        "too_many_failed_attempts",
    );

    let served = cluster(&r, &neighbour, Some(TOKEN)).await;
    assert_eq!(served.status, 200, "another address: {}", served.text());
    let wrong = cluster(&r, &neighbour, Some("guess")).await;
    expect_http_error("another address's own attempt", &wrong, 401, "unauthorized");

    assert_eq!(
        r.metric("mcp_fanout_http_errors_total{code=\"too_many_failed_attempts\"}")
            .await
            .expect("metrics"),
        Some(2.0)
    );
    let logged = wait_for("the refusal logged", T, || {
        let logs = r.logs();
        async move {
            logs.iter()
                .any(|l| l.contains("too many failed token attempts") && l.contains("127.0.0.1"))
                .then_some(())
        }
    })
    .await;
    assert!(logged.is_ok(), "no warning names the address: {logged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_is_served_again_once_its_attempts_refill() {
    // Two attempts, then one a second.
    let r = replica("attempts-refill", "2", "60").await;
    let guesser = client_from("127.0.0.1");
    let mut seen_429 = false;
    for _ in 0..50 {
        let resp = cluster(&r, &guesser, Some("guess")).await;
        if resp.status == 429 {
            seen_429 = true;
            break;
        }
        expect_http_error("a wrong token", &resp, 401, "unauthorized");
    }
    assert!(seen_429, "the attempts ran out");
    let served = wait_for("the right token served again", T, || {
        let fut = cluster(&r, &guesser, Some(TOKEN));
        async move { (fut.await.status == 200).then_some(()) }
    })
    .await;
    assert!(served.is_ok(), "{served:?}");
}
