//! Where a proxied request goes upstream: on the connection kept for its client connection, or on
//! the pooled client.
//!
//! An HTTP/1.x client connection runs one request at a time, and its handler runs inside the
//! connection's own task. So a request from one goes upstream on a connection kept for that client
//! connection ([`forward_client::Direct`]), driven inside the same task (`server::own_task`):
//! handing the request over, the answer back and each chunk of its body are wakes within one
//! task, not trips through the scheduler to the pool's connection task (often on the other
//! worker). The kept connection is reused by the client connection's next request while the
//! upstream keeps it open, replaced when it is not ready (an answer not read to its end, the
//! upstream closed it), and closed with the client connection (or once its HTTP side ends with an
//! event stream handed off).
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

use axum::http::{Request, Response};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;

use crate::mcp::forward_client::{Direct, DirectSender, ForwardError};
use crate::mcp::in_flight::Lease;
use crate::mcp::upstream::Upstream;
use crate::server::own_task::OwnTask;

/// The upstream connection kept for a client connection: its sender, and the permit of
/// `FANOUT_UPSTREAM_MAX_CONNECTIONS` it holds for its life.
pub struct Kept {
    sender: DirectSender,
    lease: Lease,
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

/// Sends `req` (its target the upstream's absolute URI) upstream: on `kept` when it is ready, else
/// on a new connection kept for `own` from now on and holding `lease`; on the pooled client when
/// there is nothing to keep (an HTTP/2 client, an `https://` or HTTP/2 upstream).
pub async fn send(
    up: &Upstream,
    own: Option<&OwnTask>,
    kept: Option<Kept>,
    lease: &Lease,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, ForwardError> {
    match (own, &up.direct) {
        (Some(own), Some(direct)) => send_kept(direct, own, kept, lease, req).await,
        _ => Ok(up.forward.request(req).await?),
    }
}

async fn send_kept(
    direct: &Direct,
    own: &OwnTask,
    kept: Option<Kept>,
    lease: &Lease,
    mut req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, ForwardError> {
    direct.address(&mut req);
    if let Some(Kept { mut sender, lease }) = kept.filter(|k| k.sender.is_ready()) {
        let answer = sender.try_send_request(req);
        own.put_back(Kept { sender, lease });
        match answer.await {
            Ok(resp) => return Ok(resp),
            // Not sent: the connection ended meanwhile (the upstream closed it while it was
            // idle). A new one carries it, as the pool retries such a request.
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(e.into_error().into()),
            },
        }
    }
    // A new connection replaces the one kept before (if any), and takes over its permit.
    let (mut sender, connection) = direct.connect().await?;
    let answer = sender.send_request(req);
    // The connection holds its permit for as long as it is open, its handle kept or not (a
    // handle dropped as not ready leaves its connection open until a new one replaces it).
    let held = lease.clone();
    own.drive(
        async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
            drop(held);
        },
        Kept {
            sender,
            lease: lease.clone(),
        },
    );
    Ok(answer.await?)
}
