//! The HTTP client that carries proxied requests upstream: hyper-util's pooled client over
//! hyper's HTTP/1.1 connections (HTTP/2 by ALPN with `FANOUT_UPSTREAM_HTTP2`), TLS by rustls with
//! the Mozilla roots plus `FANOUT_UPSTREAM_CA_FILE` (`crate::tls`) — the HTTP stack and nothing
//! on top. What a general-purpose client adds per request and a proxy must not do anyway is left
//! out: no redirect handling (a 3xx is relayed, never followed: a re-sent `POST` could repeat a
//! call and carry the client's credentials to another origin), no proxy from
//! `HTTP_PROXY`/`ALL_PROXY` (the upstream is reached directly, as nginx's `proxy_pass` does), no
//! URL parsing (the target URI is parsed once, at start).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long connecting to the upstream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes an upstream HTTP/1.1 connection's read buffer grows to, and so the largest answer
/// head accepted. hyper's default (~400 KiB) is kept by every connection once one large answer has
/// grown it — pooled idle ones too (the keep-alive read allocates it whole) — outside the body
/// memory budget: with 1,000 upstream answers in flight that was ~400 MB. Bounded here, each
/// connection holds at most this much beyond what the budget counts (the request heads the
/// replica accepts are bounded the same, `server::MAX_HEADER_BYTES`).
pub const READ_BUF_MAX_BYTES: usize = 64 * 1024;

/// The pooled client; cheap to clone (one pool).
pub type ForwardClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client (no I/O: connections are made on first use). `tls` says whom an `https://`
/// upstream's certificate may come from (`crate::tls`); its ALPN list is set here: `http/1.1`
/// only, or with `http2` also `h2` first (`FANOUT_UPSTREAM_HTTP2`). Over HTTP/1.1 each request in
/// flight has a connection of its own (the pool opens one when none is idle); over HTTP/2 all of
/// them share one connection, so at most the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` run at
/// once and the rest wait for a stream — a quick call behind long ones — which is why it is
/// opt-in.
pub fn build(tls: rustls::ClientConfig, http2: bool) -> ForwardClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // Each request and answer is one write: no Nagle delay on it.
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let https = if http2 {
        https.enable_http2().wrap_connector(http)
    } else {
        https.wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .http1_max_buf_size(READ_BUF_MAX_BYTES)
        .build(https)
}
