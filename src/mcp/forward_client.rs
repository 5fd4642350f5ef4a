//! The HTTP client that carries proxied requests upstream: hyper-util's pooled client over
//! hyper's HTTP/1.1 connections (HTTP/2 by ALPN with `FANOUT_UPSTREAM_HTTP2`), TLS by rustls with
//! the Mozilla roots plus `FANOUT_UPSTREAM_CA_FILE` (`crate::tls`) — the HTTP stack and nothing
//! on top. What a general-purpose client adds per request and a proxy must not do anyway is left
//! out: no redirect handling (a 3xx is relayed, never followed: a re-sent `POST` could repeat a
//! call and carry the client's credentials to another origin), no proxy from
//! `HTTP_PROXY`/`ALL_PROXY` (the upstream is reached directly, as nginx's `proxy_pass` does), no
//! URL parsing (the target URI is parsed once, at start).
//!
//! A plain `http://` upstream spoken to over HTTP/1.1 can also be reached on a connection of one's
//! own ([`Direct`], a [`DirectConn`]): the edge keeps one for each HTTP/1.x client connection
//! (`http::kept_upstream`), and its answers are read by that client connection's task as it
//! relays them, with no connection task of their own as the pool's have.

use std::time::Duration;

use axum::http::{HeaderValue, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;

pub use super::direct_conn::{DirectBody, DirectConn, DirectError, RequestBytes};

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

/// How a plain `http://` upstream spoken to over HTTP/1.1 is reached on a connection of one's
/// own, with what the pooled client would add to each request (the target in origin form and
/// `Host`), worked out once.
#[derive(Debug, Clone)]
pub struct Direct {
    host: String,
    port: u16,
    /// `Host`: the upstream's name, and its port unless it is 80 (as the pooled client writes it).
    host_header: HeaderValue,
    /// The path (and query) requests are sent to.
    origin_form: String,
}

/// Why a request went unanswered on the pooled client or on a [`Direct`] connection.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting to the upstream: timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimedOut,
    #[error(transparent)]
    Direct(#[from] DirectError),
}

impl ForwardError {
    /// The upstream could not be reached (as opposed to failing on the way, or answering badly).
    pub fn is_connect(&self) -> bool {
        match self {
            ForwardError::Pooled(e) => e.is_connect(),
            ForwardError::Connect(_) | ForwardError::ConnectTimedOut => true,
            ForwardError::Direct(_) => false,
        }
    }

    /// The upstream sent something that is not an HTTP answer (a head over the bound, a malformed
    /// status line or header), as opposed to not being reached or closing.
    pub fn is_invalid_answer(&self) -> bool {
        match self {
            ForwardError::Direct(e) => e.is_invalid_answer(),
            _ => {
                let mut source = std::error::Error::source(self);
                while let Some(e) = source {
                    if let Some(h) = e.downcast_ref::<hyper::Error>() {
                        return h.is_parse() || h.is_parse_too_large() || h.is_parse_status();
                    }
                    source = e.source();
                }
                false
            }
        }
    }
}

/// Why an upstream answer's body was cut.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error(transparent)]
    Pooled(#[from] hyper::Error),
    #[error(transparent)]
    Direct(#[from] DirectError),
}

/// An upstream answer's body: from the pooled client, or read from a [`DirectConn`].
#[derive(Debug)]
pub enum UpstreamBody {
    Pooled(Incoming),
    Direct(DirectBody),
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match self.get_mut() {
            UpstreamBody::Pooled(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Direct(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Pooled(b) => b.is_end_stream(),
            UpstreamBody::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Pooled(b) => b.size_hint(),
            UpstreamBody::Direct(b) => b.size_hint(),
        }
    }
}

impl Direct {
    /// For `uri` (the upstream's, absolute): `None` for an `https://` upstream, or with
    /// `FANOUT_UPSTREAM_HTTP2` (those stay on the pooled client, which does TLS and ALPN).
    pub fn new(uri: &Uri, http2: bool) -> Option<Direct> {
        if http2 || uri.scheme_str() != Some("http") {
            return None;
        }
        let name = uri.host()?;
        let port = uri.port_u16().unwrap_or(80);
        let host_header = match uri.port_u16().filter(|p| *p != 80) {
            Some(p) => HeaderValue::from_str(&format!("{name}:{p}")).ok()?,
            None => HeaderValue::from_str(name).ok()?,
        };
        let origin_form = uri.path_and_query()?.as_str().to_owned();
        // An IPv6 address is written in brackets in a URL, not in a socket address.
        let host = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Some(Direct {
            host,
            port,
            host_header,
            origin_form,
        })
    }

    /// A request as it goes on a connection of one's own: origin-form target, `Host` set.
    pub fn request(
        &self,
        method: &axum::http::Method,
        headers: &axum::http::HeaderMap,
        body: &Bytes,
    ) -> RequestBytes {
        RequestBytes::new(method, &self.origin_form, &self.host_header, headers, body)
    }

    /// A new connection to the upstream (within [`CONNECT_TIMEOUT`], `TCP_NODELAY`).
    pub async fn connect(&self) -> Result<DirectConn, ForwardError> {
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| ForwardError::ConnectTimedOut)?
            .map_err(ForwardError::Connect)?;
        // Each request and answer is one write: no Nagle delay on it.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed on an upstream connection");
        }
        Ok(DirectConn::new(tcp))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

    use super::*;

    #[test]
    fn a_direct_connection_is_for_plain_http_over_http1_only() {
        let d = Direct::new(&"http://mcp.internal:8000/mcp?x=1".parse().unwrap(), false).unwrap();
        assert_eq!((d.host.as_str(), d.port), ("mcp.internal", 8000));
        assert_eq!(d.host_header, "mcp.internal:8000");
        assert_eq!(d.origin_form, "/mcp?x=1");
        let d = Direct::new(&"http://[::1]/mcp".parse().unwrap(), false).unwrap();
        assert_eq!((d.host.as_str(), d.port), ("::1", 80));
        assert_eq!(d.host_header, "[::1]");
        assert!(Direct::new(&"https://mcp.internal/mcp".parse().unwrap(), false).is_none());
        assert!(Direct::new(&"http://mcp.internal/mcp".parse().unwrap(), true).is_none());
    }
}
