//! Contract §2 and §3.5 (docs/identity.md, "Whose forwarded headers are believed"): with
//! `FANOUT_TRUSTED_PROXIES` set, only the listed proxies' forwarded headers
//! (`X-Forwarded-For`/`-Proto`/`-Host`, `Forwarded`, `X-Real-IP`) are believed. A request from
//! any other peer has them removed at the edge: the upstream of proxy mode hears what the replica
//! saw itself, the origin check uses the scheme the listener speaks, and the admin limit counts
//! the peer whatever address it claims. Behind a listed proxy the client is the last
//! `X-Forwarded-For` entry not on the list: each client behind one load balancer has its own
//! failed-attempt allowance, and the no-token loopback rule applies to that client, not to a
//! loopback sidecar in front. In `header` mode the tenant header is accepted only from a listed
//! gateway (`403` from anyone else). A value that is not a list of addresses stops the start.
//!
//! The replicas listen on 127.0.0.1; connections from 127.0.0.2 play the trusted proxy, from
//! 127.0.0.1 a client that reaches the replica directly; two tests put a real nginx in front, one
//! writing `X-Forwarded-For`, one only `Forwarded` (read with `FANOUT_CLIENT_ADDRESS_HEADER`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::net::IpAddr;
use std::time::Duration;

use mcp_fanout_testkit::error_shape::expect_http_error;
use mcp_fanout_testkit::{
    start, start_fails, start_memory, Canned, HttpResponse, Nginx, RecordingUpstream, Replica,
};
use serde_json::json;

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "admin-token-behind-proxies-7c2d";
const PROXY: &str = "127.0.0.2";
const DIRECT: &str = "127.0.0.1";

/// A client whose connections come from `source`.
fn client_from(source: &str) -> reqwest::Client {
    let ip: IpAddr = source.parse().expect("a source address");
    mcp_fanout_testkit::client_from(ip, T).expect("a client")
}

/// The forged (or, from the proxy, true) headers a request carries.
fn forwarded(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("X-Forwarded-For", "198.51.100.1")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "victim.example")
        .header(
            "Forwarded",
            "for=198.51.100.1;proto=https;host=victim.example",
        )
        .header("X-Real-IP", "198.51.100.1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_hears_forwarded_headers_only_from_listed_proxies() {
    let up = RecordingUpstream::start(Canned::json(
        &json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}),
    ))
    .await
    .expect("upstream");
    let r = start_memory(
        "trusted-proxies-upstream",
        &[
            ("FANOUT_UPSTREAM", &up.url("/mcp")),
            ("FANOUT_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.2"),
        ],
    )
    .await;
    let addr = r.public_addr();
    let call = |source: &str| {
        forwarded(client_from(source).post(r.public_url("/mcp")))
            .header("Accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
    };

    let direct = call(DIRECT).await.expect("a direct call");
    assert_eq!(direct.status(), 200);
    let via_proxy = call(PROXY).await.expect("a call through the proxy");
    assert_eq!(via_proxy.status(), 200);

    let got = up.received();
    assert_eq!(got.len(), 2, "two forwarded requests: {got:?}");
    // From a peer not on the list: only what this replica saw.
    let d = &got[0];
    assert_eq!(
        d.header_all("x-forwarded-for"),
        ["127.0.0.1"],
        "{:?}",
        d.headers
    );
    assert_eq!(
        d.header_all("forwarded"),
        [format!("for=127.0.0.1;host=\"{addr}\";proto=http").as_str()]
    );
    assert_eq!(d.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(
        d.header_all("x-forwarded-host"),
        [addr.to_string().as_str()]
    );
    assert_eq!(d.header("x-real-ip"), None);
    // From a listed proxy: its headers kept, this hop appended.
    let p = &got[1];
    assert_eq!(
        p.header_all("x-forwarded-for"),
        ["198.51.100.1, 127.0.0.2"],
        "{:?}",
        p.headers
    );
    assert_eq!(
        p.header_all("forwarded"),
        [format!(
            "for=198.51.100.1;proto=https;host=victim.example, for=127.0.0.2;host=\"{addr}\";proto=http"
        )
        .as_str()]
    );
    assert_eq!(p.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(p.header_all("x-forwarded-host"), ["victim.example"]);
    assert_eq!(p.header("x-real-ip"), Some("198.51.100.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_check_believes_the_scheme_only_from_listed_proxies() {
    let r = start_memory(
        "trusted-proxies-origin",
        &[("FANOUT_TRUSTED_PROXIES", PROXY)],
    )
    .await;
    let https = format!("https://127.0.0.1:{}", r.public_addr().port());
    let healthz = |source: &str| {
        client_from(source)
            .get(r.public_url("/healthz"))
            .header("Origin", &https)
            .header("X-Forwarded-Proto", "https")
            .send()
    };
    let direct = HttpResponse::read(healthz(DIRECT).await.expect("direct"))
        .await
        .expect("read");
    expect_http_error(
        "an https origin, the scheme claimed by the client",
        &direct,
        403,
        "forbidden",
    );
    let via_proxy = healthz(PROXY).await.expect("through the proxy");
    assert_eq!(via_proxy.status(), 200, "the proxy said https");
}

async fn cluster_view(
    client: &reqwest::Client,
    url: &str,
    claimed: &str,
    token: &str,
) -> HttpResponse {
    let resp = client
        .get(url)
        .header("X-Forwarded-For", claimed)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /admin/cluster");
    HttpResponse::read(resp).await.expect("read the answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_count_per_client_behind_a_listed_proxy_and_per_peer_otherwise() {
    // Two wrong tokens, then one a minute: nothing refills within the test.
    let r = start_memory(
        "trusted-proxies-attempts",
        &[
            ("FANOUT_ADMIN_TOKENS", TOKEN),
            ("FANOUT_ADMIN_FAILED_ATTEMPTS", "2"),
            ("FANOUT_ADMIN_FAILED_ATTEMPTS_PER_MIN", "1"),
            ("FANOUT_TRUSTED_PROXIES", PROXY),
        ],
    )
    .await;
    let url = r.admin_url("/admin/cluster");
    let (proxy, direct) = (client_from(PROXY), client_from(DIRECT));

    // Behind the proxy, one client guesses until it is refused...
    for i in 0..2 {
        let resp = cluster_view(&proxy, &url, "198.51.100.1", "guess").await;
        expect_http_error(&format!("wrong token #{i}"), &resp, 401, "unauthorized");
    }
    let refused = cluster_view(&proxy, &url, "198.51.100.1", TOKEN).await;
    expect_http_error(
        "the guesser, right token",
        &refused,
        429,
        "too_many_failed_attempts",
    );
    // ...what it writes to the left of its own address does not make it another client...
    let refused = cluster_view(&proxy, &url, "203.0.113.50, 198.51.100.1", TOKEN).await;
    expect_http_error(
        "the guesser behind a claim",
        &refused,
        429,
        "too_many_failed_attempts",
    );
    // ...and another client behind the same proxy is served.
    let served = cluster_view(&proxy, &url, "198.51.100.2", TOKEN).await;
    assert_eq!(served.status, 200, "another client: {}", served.text());

    // A peer not on the list is counted as itself, whatever it claims to forward.
    for i in 0..2 {
        let claimed = format!("192.0.2.{i}");
        let resp = cluster_view(&direct, &url, &claimed, "guess").await;
        expect_http_error(
            &format!("direct wrong token #{i}"),
            &resp,
            401,
            "unauthorized",
        );
    }
    let refused = cluster_view(&direct, &url, "192.0.2.99", TOKEN).await;
    expect_http_error(
        "a fresh claimed address",
        &refused,
        429,
        "too_many_failed_attempts",
    );

    let logged = r
        .wait_for_log("the refusal, naming the client", T, |line| {
            let line = line.to_string();
            line.contains("too many failed token attempts") && line.contains("198.51.100.1")
        })
        .await;
    assert!(logged.is_ok(), "no warning names the client: {logged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_a_client_behind_a_loopback_sidecar_is_not_loopback() {
    // No admin tokens: loopback requests to localhost only. The sidecar in front is on loopback.
    let r = start(
        "trusted-proxies-sidecar",
        &[("FANOUT_TRUSTED_PROXIES", "127.0.0.1")],
    )
    .await;
    let port = r.admin_addr().port();
    let get = |xff: Option<&str>| {
        let mut req = client_from(DIRECT)
            .get(r.admin_url("/admin/cluster"))
            .header("Host", format!("localhost:{port}"));
        if let Some(x) = xff {
            req = req.header("X-Forwarded-For", x);
        }
        req.send()
    };
    let local = get(None).await.expect("a local request");
    assert_eq!(local.status(), 200, "the sidecar's host itself");
    let outside = HttpResponse::read(get(Some("203.0.113.5")).await.expect("forwarded"))
        .await
        .expect("read");
    expect_http_error("a client the sidecar forwarded", &outside, 403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_is_not_addresses_stops_the_start() {
    for bad in ["10.0.0.0/33", "ingress.example", "none, 10.0.0.0/8"] {
        let out = start_fails(
            &[
                ("FANOUT_TRUSTED_PROXIES".to_string(), bad.to_string()),
                ("FANOUT_ADMIN_TOKENS".to_string(), TOKEN.to_string()),
            ],
            T,
        )
        .await;
        assert!(
            out.contains("FANOUT_TRUSTED_PROXIES"),
            "the error names the setting for {bad}: {out}"
        );
    }
    let out = start_fails(
        &[
            (
                "FANOUT_CLIENT_ADDRESS_HEADER".to_string(),
                "x-client-ip".to_string(),
            ),
            ("FANOUT_TRUSTED_PROXIES".to_string(), PROXY.to_string()),
        ],
        T,
    )
    .await;
    assert!(
        out.contains("client-address-header") && out.contains("forwarded"),
        "the error names the setting and its values: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_address_header_without_trusted_proxies_is_warned_about() {
    let r = start_memory(
        "trusted-proxies-header-alone",
        &[("FANOUT_CLIENT_ADDRESS_HEADER", "forwarded")],
    )
    .await;
    r.wait_for_log("the start warning", T, |line| {
        line.to_string()
            .contains("FANOUT_CLIENT_ADDRESS_HEADER is set but FANOUT_TRUSTED_PROXIES is not")
    })
    .await
    .expect("a warning that the setting has no effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_header_mode_only_a_listed_gateway_may_name_the_tenant() {
    let r = start_memory(
        "trusted-proxies-tenant",
        &[
            ("FANOUT_SUBSCRIBER_AUTH", "header"),
            ("FANOUT_TRUSTED_PROXIES", PROXY),
        ],
    )
    .await;
    let poll = |source: &str, tenant: Option<&str>| {
        let mut req = client_from(source).get(r.public_url("/poll?timeout=0"));
        if let Some(t) = tenant {
            req = req.header("X-Fanout-Tenant", t);
        }
        req.send()
    };
    let forged = HttpResponse::read(poll(DIRECT, Some("acme")).await.expect("direct"))
        .await
        .expect("read");
    expect_http_error("a tenant named by a client", &forged, 403, "forbidden");
    assert!(
        forged.text().contains("FANOUT_TRUSTED_PROXIES"),
        "the refusal names the setting: {}",
        forged.text()
    );
    let untenanted = poll(DIRECT, None).await.expect("direct, no tenant");
    assert_eq!(untenanted.status(), 200, "no tenant claimed");
    let gateway = poll(PROXY, Some("acme"))
        .await
        .expect("through the gateway");
    assert_eq!(gateway.status(), 200, "the gateway names the tenant");
    assert_eq!(
        r.metric("mcp_fanout_http_errors_total{code=\"forbidden\"}")
            .await
            .expect("metrics"),
        Some(1.0)
    );
}

/// Behind a real nginx that appends the client's address (`$proxy_add_x_forwarded_for`, as
/// deployments configure it) and connects from an address of its own, listed: each client is
/// itself, and one that writes its own `X-Forwarded-For` is still itself.
/// A replica whose admin listener is reached through a real nginx (connecting from 127.0.0.9, the
/// listed proxy) that forwards with `forwarding` (an nginx directive); two wrong tokens per client,
/// then one a minute. `header` is `FANOUT_CLIENT_ADDRESS_HEADER`, if set. The replica, nginx and
/// the URL of `/admin/cluster` through it.
async fn admin_behind_nginx(
    name: &str,
    forwarding: &str,
    header: Option<&'static str>,
) -> (Replica, Nginx, String) {
    let mut env = vec![
        ("FANOUT_ADMIN_TOKENS", TOKEN),
        ("FANOUT_ADMIN_FAILED_ATTEMPTS", "2"),
        ("FANOUT_ADMIN_FAILED_ATTEMPTS_PER_MIN", "1"),
        ("FANOUT_TRUSTED_PROXIES", "127.0.0.9"),
    ];
    if let Some(h) = header {
        env.push(("FANOUT_CLIENT_ADDRESS_HEADER", h));
    }
    let r = start_memory(name, &env).await;
    let admin = r.admin_addr();
    let nginx = Nginx::start(|listen| {
        format!(
            "server {{\n listen {listen};\n location / {{\n proxy_pass http://{admin};\n\
             proxy_bind 127.0.0.9;\n proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n {forwarding}\n }}\n }}\n"
        )
    })
    .await;
    let url = format!("http://{}/admin/cluster", nginx.addr);
    (r, nginx, url)
}

/// Through nginx, the client at 127.0.0.2 guesses twice (claiming `claims[0]`, `claims[1]` in its
/// `X-Forwarded-For`) and is then refused the right token (claiming `claims[2]`), while the client
/// at 127.0.0.3 (claiming `claims[0]`) is served; the log names the guesser.
async fn guesser_refused_neighbour_served(r: &Replica, url: &str, claims: [&str; 3]) {
    let (guesser, neighbour) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    for (i, claimed) in claims[..2].iter().enumerate() {
        let resp = cluster_view(&guesser, url, claimed, "guess").await;
        expect_http_error(&format!("wrong token #{i}"), &resp, 401, "unauthorized");
    }
    let refused = cluster_view(&guesser, url, claims[2], TOKEN).await;
    expect_http_error(
        "the guesser through nginx, right token",
        &refused,
        429,
        "too_many_failed_attempts",
    );
    let served = cluster_view(&neighbour, url, claims[0], TOKEN).await;
    assert_eq!(
        served.status,
        200,
        "another client through the same nginx, claiming the guesser's address: {}",
        served.text()
    );
    r.wait_for_log("the refusal names the guesser", T, |line| {
        let line = line.to_string();
        line.contains("too many failed token attempts") && line.contains("127.0.0.2")
    })
    .await
    .expect("the guesser named in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_real_nginx_each_client_is_counted_as_itself() {
    let xff = "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;";
    let (r, _nginx, url) = admin_behind_nginx("trusted-proxies-nginx", xff, None).await;
    // What the guesser writes itself is kept by nginx, left of the address nginx saw: not
    // believed.
    guesser_refused_neighbour_served(&r, &url, ["198.51.100.7", "198.51.100.7", "198.51.100.8"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_nginx_that_writes_forwarded_the_client_is_read_from_it() {
    // nginx writes `Forwarded: for=<the address it saw>` and passes the client's own
    // X-Forwarded-For on untouched, as a proxy configured for RFC 7239 alone does.
    let forwarded = "proxy_set_header Forwarded \"for=$remote_addr;proto=$scheme\";";

    // Told to read Forwarded: the guesser is counted as the address nginx saw, whatever
    // X-Forwarded-For it makes up for each attempt.
    let name = "trusted-proxies-forwarded";
    let (r, _nginx, url) = admin_behind_nginx(name, forwarded, Some("forwarded")).await;
    guesser_refused_neighbour_served(&r, &url, ["198.51.100.0", "198.51.100.1", "198.51.100.99"])
        .await;

    // Left at X-Forwarded-For, the same deployment believes the guesser's claims: each made-up
    // address is a fresh client. This is what the setting is for.
    let name = "trusted-proxies-forwarded-unset";
    let (_r, _nginx, url) = admin_behind_nginx(name, forwarded, None).await;
    let guesser = client_from("127.0.0.2");
    for i in 0..3 {
        let claimed = format!("198.51.100.{}", 10 + i);
        let resp = cluster_view(&guesser, &url, &claimed, "guess").await;
        expect_http_error(
            &format!("unset, wrong token #{i}"),
            &resp,
            401,
            "unauthorized",
        );
    }
    let served = cluster_view(&guesser, &url, "198.51.100.20", TOKEN).await;
    assert_eq!(served.status, 200, "unset: {}", served.text());
}
