//! `FANOUT_MAX_CONNECTIONS_PER_CLIENT`: one client address holds at most so many connections on
//! the public listener, so it cannot take the listener's whole cap. Past it a new connection is
//! answered `429 too_many_connections` (JSON, `connection: close`, counted in `http_errors`) and
//! closed, while the client's open connections carry on and other clients are served; a
//! connection the client closes frees its place. A peer in `FANOUT_TRUSTED_PROXIES` (a load
//! balancer carrying many clients' connections) is not bounded.
//!
//! The replicas listen on 127.0.0.1; connections from 127.0.0.2 to .5 play different clients (the
//! test kit's own client, which keeps a connection open, is on 127.0.0.1).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mcp_fanout_testkit::requests::open_stream_with;
use mcp_fanout_testkit::sse::SseRequest;
use mcp_fanout_testkit::{start_memory, wait_for, Replica};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const T: Duration = Duration::from_secs(20);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// A `GET /healthz` on a new connection from `source`: the whole answer, read to the close.
async fn healthz_from(addr: SocketAddr, source: &str) -> String {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(ip(source), 0))
        .expect("bind the source");
    let mut tcp = tokio::time::timeout(T, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write the request");
    let mut answer = Vec::new();
    tokio::time::timeout(T, tcp.read_to_end(&mut answer))
        .await
        .expect("the answer in time")
        .expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn refused_count(r: &Replica) -> f64 {
    let refused = r#"mcp_fanout_http_errors_total{code="too_many_connections"}"#;
    r.count(refused).await.expect("metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_connections_is_answered_429_and_others_are_served() {
    let r = start_memory(
        "connections-per-client",
        &[("FANOUT_MAX_CONNECTIONS_PER_CLIENT", "2")],
    )
    .await;
    let addr = r.public_addr();
    let greedy = ip("127.0.0.4");
    let mut a = open_stream_with(&r, SseRequest::mcp().from_source(greedy), "a").await;
    let b = open_stream_with(&r, SseRequest::mcp().from_source(greedy), "b").await;
    r.wait_subscribers(2, T).await.expect("two streams");

    let refused = healthz_from(addr, "127.0.0.4").await;
    assert!(
        refused.starts_with("HTTP/1.1 429 "),
        "a third connection: {refused}"
    );
    assert!(
        refused.contains("\"code\":\"too_many_connections\"")
            && refused.contains("FANOUT_MAX_CONNECTIONS_PER_CLIENT")
            && refused.to_ascii_lowercase().contains("connection: close"),
        "{refused}"
    );
    assert_eq!(refused_count(&r).await, 1.0);

    let other = healthz_from(addr, "127.0.0.3").await;
    assert!(
        other.starts_with("HTTP/1.1 200 "),
        "another client: {other}"
    );

    // The client's open connections carry on.
    let id = r
        .publish_ok(&json!({"method": "notifications/tools/list_changed"}))
        .await
        .expect("publish");
    let got = a.events(1, T).await.expect("a's event");
    assert_eq!(got[0].id.as_deref(), Some(id.as_str()));

    // A connection it closes frees its place.
    drop(b);
    let served = wait_for("a connection served in b's place", T, || async {
        healthz_from(addr, "127.0.0.4")
            .await
            .starts_with("HTTP/1.1 200 ")
            .then_some(())
    })
    .await;
    assert!(served.is_ok(), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_proxy_is_not_bounded() {
    let r = start_memory(
        "connections-per-client-proxy",
        &[
            ("FANOUT_MAX_CONNECTIONS_PER_CLIENT", "1"),
            ("FANOUT_TRUSTED_PROXIES", "127.0.0.2"),
        ],
    )
    .await;
    let addr = r.public_addr();
    let proxy = ip("127.0.0.2");
    let _one = open_stream_with(&r, SseRequest::mcp().from_source(proxy), "one").await;
    let _two = open_stream_with(&r, SseRequest::mcp().from_source(proxy), "two").await;
    r.wait_subscribers(2, T).await.expect("two streams");
    let third = healthz_from(addr, "127.0.0.2").await;
    assert!(
        third.starts_with("HTTP/1.1 200 "),
        "the proxy's third: {third}"
    );
    // A client that is not the proxy is bounded.
    let _mine = open_stream_with(&r, SseRequest::mcp().from_source(ip("127.0.0.5")), "mine").await;
    let refused = healthz_from(addr, "127.0.0.5").await;
    assert!(refused.starts_with("HTTP/1.1 429 "), "{refused}");
}
