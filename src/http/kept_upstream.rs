//! Where a proxied request goes upstream: on the connection kept for its client connection, or on
//! the pooled client.
//!
//! An HTTP/1.x client connection runs one request at a time, and its handler runs inside the
//! connection's own task. So a request from one goes upstream on a connection kept for that client
//! connection ([`forward_client::Direct`], a [`DirectConn`]), with no HTTP library's client in
//! between: the request is written in one piece and the answer read by the same task as it
//! relays it — no hand-over to a connection task, no channel. The kept connection is reused by
//! the client connection's next request while the upstream keeps it open, replaced when it is not
//! usable (an answer not read to its end, the upstream closed it or sent something unasked), and
//! closed with the client connection (or once its HTTP side ends with an event stream handed
//! off). Between requests it waits in the client connection's [`OwnTask`], which watches it: one
//! the upstream closes is closed here at once.
//!
//! A kept connection holds one permit of `FANOUT_UPSTREAM_MAX_CONNECTIONS` for its life, idle
//! too, and the requests on it take none of their own ([`Lease`]): the bound stays a bound on the
//! upstream connections open, and so on the replica's files, whatever the mix of HTTP/1.x clients
//! keeping connections and HTTP/2 clients' requests on the pool. Connections are kept only when
//! the bound is at least the connection cap (its default: one for every client connection);
//! with a smaller bound (more clients than the upstream may serve at once) idle clients would
//! hold every permit, so every request uses the pool, as before (`Upstream::direct` is `None`).
//!
//! HTTP/2 client requests (concurrent on one connection, each in a task of its own), and an
//! `https://` or HTTP/2 upstream, use the pooled client (`forward_client::build`).

use axum::http::{HeaderMap, Method, Request, Response};
use bytes::Bytes;
use http_body_util::Full;

use crate::mcp::forward_client::{Direct, DirectConn, ForwardError, UpstreamBody};
use crate::mcp::in_flight::Lease;
use crate::mcp::upstream::Upstream;
use crate::server::own_task::{self, OwnTask};

/// The upstream connection kept for a client connection, idle, and the permit of
/// `FANOUT_UPSTREAM_MAX_CONNECTIONS` it holds for its life.
pub struct Kept {
    conn: DirectConn,
    lease: Lease,
}

impl own_task::Kept for Kept {
    fn poll_gone(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.conn.poll_gone(cx)
    }
}

impl Kept {
    /// The permit the kept connection holds, which the request sent on it shares.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }
}

/// Takes the connection kept for the request's client connection, if one is kept and the request
/// may use it (an HTTP/1.x client connection, `own`; a plain HTTP/1.1 upstream).
pub fn take(up: &Upstream, own: Option<&OwnTask>) -> Option<Kept> {
    up.direct.as_ref()?;
    own?.take_kept::<Kept>()
}

/// Sends a request (`method`, `headers` as forwarded, `body`) upstream: on `kept` when it is
/// still usable, else on a new connection, kept for `own` once its answer has been read to the
/// end and holding `lease`; on the pooled client when there is nothing to keep (an HTTP/2 client,
/// an `https://` or HTTP/2 upstream).
pub async fn send(
    up: &Upstream,
    own: Option<&OwnTask>,
    kept: Option<Kept>,
    lease: &Lease,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<UpstreamBody>, ForwardError> {
    if let (Some(own), Some(direct)) = (own, &up.direct) {
        return send_kept(direct, own, kept, lease, &method, &headers, &body).await;
    }
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = up.uri.clone();
    *req.headers_mut() = headers;
    Ok(up.forward.request(req).await?.map(UpstreamBody::Pooled))
}

async fn send_kept(
    direct: &Direct,
    own: &OwnTask,
    kept: Option<Kept>,
    lease: &Lease,
    method: &Method,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response<UpstreamBody>, ForwardError> {
    let req = direct.request(method, headers, body);
    // An idle connection the upstream closed, or sent something unasked on, is replaced. A new
    // connection takes over the permit of the one kept before (if any).
    let (mut conn, lease, reused) = match kept.and_then(|mut k| k.conn.is_reusable().then_some(k)) {
        Some(Kept { conn, lease }) => (conn, lease, true),
        None => (direct.connect().await?, lease.clone(), false),
    };
    if let Err(error) = conn.write(&req).await {
        if !reused {
            return Err(ForwardError::Direct(error.into()));
        }
        // Closed by the upstream while it was idle, the close not seen yet: nothing of the
        // request was taken. A new connection carries it, as the pool retries such a request.
        tracing::debug!(%error, "kept upstream connection closed; sending on a new one");
        conn = direct.connect().await?;
        conn.write(&req)
            .await
            .map_err(|e| ForwardError::Direct(e.into()))?;
    }
    let own = own.clone();
    let home = Box::new(move |conn: DirectConn| own.keep(Kept { conn, lease }));
    Ok(conn.answer(method, home).await?.map(UpstreamBody::Direct))
}
