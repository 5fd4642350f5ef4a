//! The HTTP client that carries proxied requests upstream: hyper-util's pooled client over
//! hyper's HTTP/1.1 connections (HTTP/2 when a TLS upstream offers it by ALPN), TLS by rustls with
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

/// The pooled client; cheap to clone (one pool).
pub type ForwardClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client (no I/O: connections are made on first use). `tls` says whom an `https://`
/// upstream's certificate may come from (`crate::tls`); its ALPN list is set here (`h2`, then
/// `http/1.1`).
pub fn build(tls: rustls::ClientConfig) -> ForwardClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // Each request and answer is one write: no Nagle delay on it.
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(https)
}
