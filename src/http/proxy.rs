//! Proxy mode (`FANOUT_UPSTREAM`): the service stands in front of an MCP server. `GET /mcp` and
//! `subscriptions/listen` are served from the fan-out; every other `POST` and `DELETE` is
//! forwarded with method, headers, status and body intact, the response streamed back frame by
//! frame (a small one of known length is read whole first and written in one piece). Sessions are
//! recorded from `initialize` responses before they are relayed, so a client's immediate GET on
//! another replica finds its session.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ErrorCode;
use super::headers::MCP_SESSION_ID;
use super::kept_upstream;
use crate::mcp::direct_conn::Digits;
use crate::mcp::forward_client::{ForwardError, UpstreamBody};
use crate::mcp::in_flight::Lease;
use crate::mcp::upstream::Upstream;
use crate::per_client::ClientKey;
use crate::server::own_task::OwnTask;
use crate::session::{minted, Owner};
use crate::state::AppState;

/// The headers the proxy adds to say who the client is (`FANOUT_PROXY_FORWARDED_HEADERS`).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `Mcp-Session-Id` as a name (a `&str` key is parsed on every lookup).
const SESSION_ID: HeaderName = HeaderName::from_static(MCP_SESSION_ID);

/// What the proxy knows about a forwarded request.
pub struct Forward {
    pub method: Method,
    /// The request's headers as received; what is forwarded is made from them in place.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The JSON-RPC method, when the body is one.
    pub rpc_method: Option<String>,
    /// Owner to record for a session created by `initialize` (`None`: nobody).
    pub owner: Option<Owner>,
    /// The client's address (the TCP peer), for `X-Forwarded-For` / `Forwarded`.
    pub peer: SocketAddr,
    /// The address the request is from, as the edge judged it (`ConnInfo::client`): what
    /// `FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT` counts.
    pub client: IpAddr,
    /// The client connection's own task, when the request came on HTTP/1.x: it goes upstream on
    /// the connection kept there (`kept_upstream`).
    pub own_task: Option<OwnTask>,
}

/// Forwards one request upstream and relays the answer. An `initialize` from a client past its
/// session writes (`FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN`), or a request from a client past its
/// share of requests in flight (`FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT`), is answered `429` at once;
/// otherwise the client's place is held until the answer has been relayed (or dropped).
pub async fn forward(st: &AppState, up: &Upstream, f: Forward) -> Response {
    if let (Some(rate), Some("initialize")) = (&st.session_writes, f.rpc_method.as_deref()) {
        if let Err(wait) = rate.take(f.client, std::time::Instant::now()) {
            return too_many_sessions(&f.body, wait);
        }
    }
    let Some(table) = &up.per_client else {
        return forward_request(st, up, f).await;
    };
    let Some(place) = table.take(ClientKey::of(f.client)) else {
        return upstream_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_proxied_requests",
            &f.body,
            "this client has as many requests in flight through this replica as it may (FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT); wait for an answer",
        );
    };
    forward_request(st, up, f)
        .await
        .map(|body| holding(body, place))
}

async fn forward_request(st: &AppState, up: &Upstream, f: Forward) -> Response {
    let Forward {
        method,
        mut headers,
        body: request_body,
        rpc_method,
        owner,
        peer,
        own_task,
        client: _,
    } = f;
    // Named twice, the upstream may act on the other one than this service does.
    let Ok(session) = crate::auth::one_header(&headers, &SESSION_ID) else {
        return upstream_error(
            StatusCode::BAD_REQUEST,
            "invalid_session_id",
            &request_body,
            "Mcp-Session-Id is named more than once",
        );
    };
    let session = session.and_then(|v| v.to_str().ok());
    let minted_session = session.filter(|s| up.mint_session_ids && minted::is_minted(s.as_bytes()));
    if let (Some(s), true) = (minted_session, method == Method::DELETE) {
        // The upstream never saw this session: ending it is ours to do.
        end_session(st, s).await;
        return StatusCode::OK.into_response();
    }
    // Each request forwarded holds an upstream connection until its answer is relayed: bounded,
    // or one HTTP/2 client connection could open 200 of them and the replica run out of files.
    // A request on the upstream connection kept for its client connection shares that
    // connection's permit (`kept_upstream`).
    let kept = kept_upstream::take(up, own_task.as_ref());
    let permit = match &kept {
        Some(kept) => kept.lease(),
        None => match up.in_flight.try_acquire(up.url.as_str()) {
            Some(permit) => std::sync::Arc::new(permit),
            None => return upstream_busy(up, &request_body),
        },
    };
    let minted = minted_session.is_some();
    // The session a successful DELETE ends here too.
    let deleted = session
        .filter(|_| method == Method::DELETE)
        .map(str::to_owned);
    to_upstream(
        &mut headers,
        up.forwarded_headers.then_some(peer),
        minted,
        request_body.len(),
    );
    // One timer for the answer's head and a held body: both are due by the same deadline.
    let timer = tokio::time::sleep(up.response_timeout);
    tokio::pin!(timer);
    let sent = before(
        timer.as_mut(),
        std::pin::pin!(kept_upstream::send(
            up,
            own_task.as_ref(),
            kept,
            &permit,
            method.clone(),
            headers,
            request_body.clone(),
        )),
    )
    .await;
    let mut resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(error)) => return no_answer(up, &error, &request_body),
        Err(_) => return upstream_timeout(up, &request_body),
    };
    let status = resp.status();
    let mut headers = std::mem::take(resp.headers_mut());
    strip_hop_by_hop(&mut headers);
    let rpc = rpc_method.as_deref();
    if rpc == Some("initialize") && status == StatusCode::NOT_FOUND {
        // An initialize carries no session, so this 404 is not "session not found": the URL is
        // not the MCP endpoint. The client only says "Session terminated".
        tracing::warn!(
            upstream = %up.url,
            "upstream answered initialize with 404: FANOUT_UPSTREAM must be the MCP endpoint itself, path included (e.g. http://127.0.0.1:8000/mcp)"
        );
    }
    if rpc == Some("initialize") && status.is_success() {
        record_session(st, up, &mut headers, owner.as_ref()).await;
    }
    if let (Some(s), true) = (&deleted, status.is_success()) {
        end_session(st, s).await;
    }
    let rewrite =
        up.advertise_list_changed && matches!(rpc, Some("initialize" | "server/discover"));
    let body = match relay_body(st, up, resp, &mut headers, rewrite, timer, permit).await {
        Ok(body) => body,
        Err(failed) => return body_failed(up, failed, &request_body),
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// An upstream session an `initialize` opened (or one minted for a stateless upstream), recorded
/// with its owner before the answer is relayed: the client's next request (its GET) may reach
/// another replica.
async fn record_session(
    st: &AppState,
    up: &Upstream,
    headers: &mut HeaderMap,
    owner: Option<&Owner>,
) {
    let mut session = headers
        .get(MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if session.is_none() && up.mint_session_ids {
        let minted = minted::mint();
        if let Ok(v) = HeaderValue::from_str(&minted) {
            headers.insert(HeaderName::from_static(MCP_SESSION_ID), v);
            session = Some(minted);
        }
    }
    // Record before relaying: the client's next request (its GET) may reach another replica.
    if let Some(s) = &session {
        let owner = owner.cloned().unwrap_or_else(Owner::nobody);
        if let Err(error) = st.sessions.register(s, &owner).await {
            tracing::warn!(%error, session = s, "cannot record the session; forwarding anyway");
        }
    }
}

/// Largest answer of known length (`Content-Length`) held whole before it is relayed, so its
/// head and body reach the client in one write: an upstream often sends the two in separate
/// segments, and relaying the head alone costs a second write, a second segment to the client and
/// another wake-up for both (nginx's `postpone_output` does the same for the same reason). An
/// event stream, or an answer without a length or larger than this, is relayed as it arrives.
const HOLD_WHOLE_MAX_BYTES: u64 = 16 * 1024;

/// Why an upstream answer's body could not be relayed.
enum BodyFailed {
    Cut,
    Timeout,
    /// An answer held for a rewrite found the body memory budget (`FANOUT_BODY_MEMORY_BYTES`, its
    /// size here) full.
    Busy(usize),
}

/// The replica's budget for the bytes of bodies it holds (`FANOUT_BODY_MEMORY_BYTES`): request
/// bodies, and answers held for a rewrite. One permit per byte, and how many there are.
type BodyMemory = (std::sync::Arc<Semaphore>, usize);

/// The replica's body memory budget.
fn body_memory(st: &AppState) -> BodyMemory {
    (st.body_memory.clone(), st.config.body_memory_bytes())
}

/// The size a held buffer of `size` bytes grows to when it must hold `needed`: doubled, as a
/// vector grows, but never past the bound (`max`) and a piece.
fn grown(size: usize, needed: usize, max: usize) -> usize {
    needed.max(size.saturating_mul(2).min(max.saturating_add(1)))
}

/// The body relayed to the client: the upstream's, or (`rewrite`) with `listChanged` advertised,
/// held whole up to `rewrite_max_bytes` within the response timeout (an event stream is rewritten
/// as it goes). A small answer of known length is held whole within the response timeout
/// ([`HOLD_WHOLE_MAX_BYTES`]); anything else streams.
async fn relay_body(
    st: &AppState,
    up: &Upstream,
    resp: axum::http::Response<UpstreamBody>,
    headers: &mut HeaderMap,
    rewrite: bool,
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    permit: Lease,
) -> Result<Body, BodyFailed> {
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    // The length hyper read from `Content-Length` (exact only when the answer stated one).
    let known_len = hyper::body::Body::size_hint(resp.body()).exact();
    Ok(if rewrite && !is_sse {
        headers.remove(header::CONTENT_LENGTH);
        // Watched from the start: an answer over the rewrite bound is relayed as it arrives, and
        // the relay (holding the permit) is then held to the stalled relays' budget like any other.
        let body = up.relays.relay(resp.into_body(), permit).into_data_stream();
        rewritten(st, up, body, known_len, advertise_list_changed, timer).await?
    } else if rewrite {
        headers.remove(header::CONTENT_LENGTH);
        up.relays.relay(
            Body::from_stream(rewrite_sse(
                resp.into_body().into_data_stream(),
                advertise_list_changed,
                up.rewrite_max_bytes,
                body_memory(st),
            )),
            permit,
        )
    } else if !is_sse && known_len.is_some_and(|n| n <= HOLD_WHOLE_MAX_BYTES) {
        Body::from(
            within(timer.as_mut(), std::pin::pin!(resp.into_body().collect()))
                .await?
                .to_bytes(),
        )
    } else {
        // Relayed as it arrives; held to the stalled relays' budget if its client stops reading.
        up.relays.relay(resp.into_body(), permit)
    })
}

/// A body relayed with what it holds (its share of the body memory budget) until it has been
/// written out or dropped. The body's length, when stated, is still told ([`Holding`]): the era
/// adapter holds an answer in a buffer of that size.
fn holding<B, G>(body: B, permit: G) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
    G: Send + 'static,
{
    Body::new(Holding {
        body,
        _permit: permit,
    })
}

/// A body and what it holds until it is dropped; its frames, end and size hint are the body's.
struct Holding<B, G> {
    body: B,
    _permit: G,
}

// What is held is never pinned: only the body is polled.
impl<B: Unpin, G> Unpin for Holding<B, G> {}

impl<B, G> hyper::body::Body for Holding<B, G>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// An answer to rewrite with `patch`, read whole before `timer` fires: the rewritten body. One
/// over `FANOUT_UPSTREAM_REWRITE_MAX_BYTES` is relayed unmodified as it arrives (`body` is a
/// watched relay, [`crate::mcp::relay_watch`], which holds its upstream connection's permit). The
/// memory the answer is held in is taken from the body memory budget — its stated length
/// (`known_len`) before a byte is read, else as the buffer grows (none left:
/// [`BodyFailed::Busy`]) — and held by the body relayed until it has been written out or dropped:
/// a client that does not read its answers cannot make the replica hold more than the budget.
async fn rewritten<S, E>(
    st: &AppState,
    up: &Upstream,
    body: S,
    known_len: Option<u64>,
    patch: Patch,
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
) -> Result<Body, BodyFailed>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin + Send + 'static,
    E: std::fmt::Display + Into<axum::BoxError> + Send + 'static,
{
    let memory = body_memory(st);
    let mut held = None;
    let read = before(
        timer,
        std::pin::pin!(hold(
            body,
            known_len,
            up.rewrite_max_bytes,
            &memory,
            &mut held
        )),
    )
    .await
    .map_err(|Elapsed| BodyFailed::Timeout)??;
    Ok(match read {
        Held::Whole(b) => holding(Body::from(rewrite_json(b, patch)), held),
        Held::Over(head, rest) => {
            tracing::warn!(
                upstream = %up.url,
                max_bytes = up.rewrite_max_bytes,
                "upstream answer too large to rewrite; relayed unmodified"
            );
            holding(
                Body::from_stream(futures::stream::iter([Ok(head)]).chain(rest)),
                held,
            )
        }
    })
}

/// The client's answer when the upstream answer's body could not be relayed: `502`
/// `upstream_cut`, `504` `upstream_timeout`, or `503` `answer_bodies_busy`, with the request's id.
fn body_failed(up: &Upstream, failed: BodyFailed, request_body: &[u8]) -> Response {
    match failed {
        BodyFailed::Busy(max) => retry_later(upstream_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "answer_bodies_busy",
            request_body,
            &format!(
                "this replica holds as many bytes of bodies as it may (FANOUT_BODY_MEMORY_BYTES = {max}); retry"
            ),
        )),
        BodyFailed::Cut => upstream_error(
            StatusCode::BAD_GATEWAY,
            "upstream_cut",
            request_body,
            "the upstream answer was cut",
        ),
        BodyFailed::Timeout => upstream_timeout(up, request_body),
    }
}

/// Reads an upstream body (`read`) before `timer` fires: a read error is a cut answer, the timer
/// a timeout.
async fn within<T, E: std::fmt::Display, R: std::future::Future<Output = Result<T, E>>>(
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
    read: std::pin::Pin<&mut R>,
) -> Result<T, BodyFailed> {
    match before(timer, read).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(error)) => {
            tracing::warn!(%error, "upstream body failed");
            Err(BodyFailed::Cut)
        }
        Err(Elapsed) => Err(BodyFailed::Timeout),
    }
}

/// The timer fired first.
struct Elapsed;

/// `work`'s output, unless `timer` fires first. The same timer can bound several steps: it is
/// registered once, where a `timeout` per step would register (and remove) one each. `work` is
/// pinned where the caller awaits this, not moved in: a future taken by value would be stored
/// twice in this one's state (as its argument and where `select!` polls it), and the request's
/// future, boxed once per request, would be the larger by the size of the whole upstream send.
async fn before<F: std::future::Future>(
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
    work: std::pin::Pin<&mut F>,
) -> Result<F::Output, Elapsed> {
    tokio::select! {
        biased;
        out = work => Ok(out),
        () = timer => Err(Elapsed),
    }
}

/// The received headers made into the forwarded request's, in place: the hop-by-hop ones (and
/// those their `Connection` names) dropped first, so a client cannot name this hop's own
/// forwarded headers away; then who the client is added (`client`: `None` when
/// `FANOUT_PROXY_FORWARDED_HEADERS` is off). `Host` is the upstream's and `Content-Length` the
/// body's as sent (`body_len`): the received one is kept only when it states exactly that, as
/// digits with no leading zero, and is otherwise written anew. A minted session id stays here;
/// one the upstream issued goes back to it (a stateful upstream refuses a request without its
/// session id).
fn to_upstream(
    headers: &mut HeaderMap,
    client: Option<SocketAddr>,
    minted_session: bool,
    body_len: usize,
) {
    strip_hop_by_hop(headers);
    if let Some(peer) = client {
        add_forwarded(headers, peer);
    }
    headers.remove(header::HOST);
    if !states_length(headers, body_len) {
        headers.remove(header::CONTENT_LENGTH);
    }
    if minted_session {
        headers.remove(&SESSION_ID);
    }
}

/// Whether `headers` has one `Content-Length`, `len` written as `len` writes itself (so hyper
/// sends it as it is, with no value made for it).
fn states_length(headers: &HeaderMap, len: usize) -> bool {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    v.as_bytes() == Digits::of(len as u64).as_bytes()
}

/// Removes the hop-by-hop headers and those their `Connection` names. A message without any
/// (the usual one) is only looked at; one with a single `Connection` header (the usual one
/// otherwise: `keep-alive`) allocates nothing, and only the hop-by-hop names it has are looked up
/// to be removed.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of `HOP_BY_HOP` the message has, in one pass over its names.
    let present = headers.keys().fold(0u16, |seen, name| {
        HOP_BY_HOP
            .iter()
            .position(|h| h == name)
            .map_or(seen, |i| seen | 1 << i)
    });
    if present == 0 {
        return;
    }
    let mut connection = headers.get_all(header::CONNECTION).iter();
    if let (Some(_), Some(_)) = (connection.next(), connection.next()) {
        // Named in several headers: gathered first, as removing needs the map.
        let named: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for v in &named {
            remove_named(headers, v);
        }
    } else if let Some(v) = headers.remove(header::CONNECTION) {
        remove_named(headers, &v);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(name);
        }
    }
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1, and the legacy
/// `Proxy-Connection` and `Keep-Alive`): never forwarded either way, and neither is any header a
/// `Connection` header names. `Proxy-Authorization` is a credential for this hop (the service
/// takes none), `Proxy-Authenticate` the upstream's challenge for its own hop.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the headers a `Connection` value names (a list of header names). One that is
/// hop-by-hop itself is left to [`strip_hop_by_hop`]'s own pass, without making a name of it.
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(list) = connection.to_str() else {
        return;
    };
    for token in list.split(',').map(str::trim) {
        if HOP_BY_HOP
            .iter()
            .any(|h| h.as_str().eq_ignore_ascii_case(token))
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// Every value of `name` in `received`, joined with `, ` (`None` when there is none).
fn joined(received: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = received
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    let mut out = String::with_capacity(first.len() + 64);
    out.push_str(first);
    for v in values {
        out.push_str(", ");
        out.push_str(v);
    }
    Some(out)
}

/// Says who the client is, as a proxy does: its address appended to `X-Forwarded-For` and a
/// `Forwarded` element for this hop (`for`, `host`, `proto`) appended to any the request brought;
/// `X-Forwarded-Proto` and `X-Forwarded-Host` set to this hop's (`http`, the request's `Host`)
/// unless a proxy in front already set them. Existing values are kept as received: an upstream
/// believes only the entries its own trusted proxies appended (here, the last). With
/// `FANOUT_TRUSTED_PROXIES` set, a request from a peer not on it comes here without any (the edge
/// removed them), so the upstream hears only what this replica saw.
fn add_forwarded(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip();
    let host = headers
        .get(header::HOST)
        .filter(|h| h.to_str().is_ok_and(|h| !h.contains(['"', '\\'])));
    // Each value written once into its string, sized for this hop's part (writing to a `String`
    // cannot fail).
    let mut xff = joined(headers, &X_FORWARDED_FOR).unwrap_or_else(|| String::with_capacity(48));
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    push_ip(&mut xff, ip);
    let mut forwarded = joined(headers, &header::FORWARDED)
        .unwrap_or_else(|| String::with_capacity(80 + host.map_or(0, HeaderValue::len)));
    if !forwarded.is_empty() {
        forwarded.push_str(", ");
    }
    forwarded.push_str("for=");
    match ip {
        IpAddr::V4(_) => push_ip(&mut forwarded, ip),
        IpAddr::V6(v6) => {
            let _ = write!(forwarded, "\"[{v6}]\"");
        }
    }
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        forwarded.push_str(";host=\"");
        forwarded.push_str(h);
        forwarded.push('"');
    }
    forwarded.push_str(";proto=http");
    let proto_set = headers.contains_key(&X_FORWARDED_PROTO);
    let forwarded_host = host
        .filter(|_| !headers.contains_key(&X_FORWARDED_HOST))
        .cloned();
    // The strings become the values' bytes (checked, not copied).
    fn set(headers: &mut HeaderMap, name: HeaderName, value: String) {
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            headers.insert(name, v);
        }
    }
    set(headers, X_FORWARDED_FOR, xff);
    set(headers, header::FORWARDED, forwarded);
    if !proto_set {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(h) = forwarded_host {
        headers.insert(X_FORWARDED_HOST, h);
    }
}

/// Writes an address as `Display` does (an IPv4 one digit by digit: the formatter's machinery
/// costs more than the rest of the header).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Ends a session's streams on every replica and forgets it (after its `DELETE`).
async fn end_session(st: &AppState, session: &str) {
    st.broadcaster.end_session(session);
    if let Err(error) = st.sessions.forget(session).await {
        tracing::warn!(%error, session, "cannot forget the session");
    }
}

/// A JSON-RPC error answering the request in `request_body` (its id, when it has one), counted
/// in `http_errors` as `code`.
/// The id of a request answered by the proxy itself (`null` when it has none).
pub(super) fn request_id(body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null)
}

fn upstream_error(
    status: StatusCode,
    code: &'static str,
    request_body: &[u8],
    message: &str,
) -> Response {
    let id = request_id(request_body);
    (
        status,
        axum::Extension(ErrorCode(code)),
        axum::Json(
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32000, "message": message } }),
        ),
    )
        .into_response()
}

/// A forwarded request that got no answer head: `502`, counted as `upstream_invalid` when the
/// upstream sent something that is not an HTTP answer (a head over the client's bound, a malformed
/// status line or header), as `upstream_unreachable` otherwise (no connection, or closed before
/// answering) — so an alert on unreachable upstreams is not set off by one that answers badly.
fn no_answer(up: &Upstream, error: &ForwardError, request_body: &[u8]) -> Response {
    if error.is_invalid_answer() {
        tracing::warn!(%error, upstream = %up.url, "the upstream's answer is not valid HTTP");
        return upstream_error(
            StatusCode::BAD_GATEWAY,
            "upstream_invalid",
            request_body,
            "the upstream MCP server's answer is not valid HTTP (or its head is too large)",
        );
    }
    tracing::warn!(%error, upstream = %up.url, "upstream unreachable");
    upstream_error(
        StatusCode::BAD_GATEWAY,
        "upstream_unreachable",
        request_body,
        "the upstream MCP server is unreachable",
    )
}

/// Every upstream connection this replica may hold is in use (`FANOUT_UPSTREAM_MAX_CONNECTIONS`):
/// `503` at once, with `Retry-After`, counted as `upstream_busy`.
pub(crate) fn upstream_busy(up: &Upstream, request_body: &[u8]) -> Response {
    retry_later(upstream_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_busy",
        request_body,
        &format!(
            "every upstream connection of this replica is in use (FANOUT_UPSTREAM_MAX_CONNECTIONS = {}); retry",
            up.in_flight.max()
        ),
    ))
}

/// An `initialize` from a client past its session writes (`FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN`):
/// `429` before anything is forwarded (the session the upstream would open could not be recorded),
/// with `Retry-After` when the client's allowance has one again.
fn too_many_sessions(request_body: &[u8], wait: std::time::Duration) -> Response {
    let mut resp = upstream_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_sessions",
        request_body,
        "this client opened sessions faster than FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN allows; retry after the Retry-After seconds",
    );
    let secs = wait.as_secs_f64().ceil().max(1.0);
    if let Ok(v) = HeaderValue::from_str(&format!("{secs:.0}")) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// A refusal the client may retry in a second (`Retry-After: 1`).
fn retry_later(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn upstream_timeout(up: &Upstream, request_body: &[u8]) -> Response {
    let secs = up.response_timeout.as_secs();
    tracing::warn!(upstream = %up.url, timeout_secs = secs, "the upstream did not answer in time");
    upstream_error(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        request_body,
        &format!("the upstream MCP server did not answer within {secs} s"),
    )
}

/// A body read up to a bound: whole, or the first part over the bound and the rest unread.
enum Held<S> {
    Whole(Bytes),
    Over(Bytes, S),
}

/// Reads `body` whole if it is at most `max` bytes; past that, stops and gives back what was
/// read and the rest of the stream. The buffer's memory is taken from `memory` into `held` before
/// it is allocated: a stated length (`known_len`, at most `max`) whole before a byte is read, in
/// a buffer of exactly that size; otherwise each time the buffer grows, by what it grows (its
/// capacity, not only the bytes in it: a buffer that doubles holds up to twice what it was sent).
async fn hold<S, E>(
    mut body: S,
    known_len: Option<u64>,
    max: usize,
    memory: &BodyMemory,
    held: &mut Option<OwnedSemaphorePermit>,
) -> Result<Held<S>, BodyFailed>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let busy = |_| BodyFailed::Busy(memory.1);
    let stated = known_len
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= max);
    let mut accounted = stated.unwrap_or(0);
    super::body::take(Some(memory), held, accounted).map_err(busy)?;
    let mut buf = bytes::BytesMut::with_capacity(accounted);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| {
            tracing::warn!(%error, "upstream body failed");
            BodyFailed::Cut
        })?;
        let needed = buf.len() + chunk.len();
        if needed > buf.capacity() {
            let target = grown(buf.capacity(), needed, max);
            super::body::take(Some(memory), held, target.saturating_sub(accounted))
                .map_err(busy)?;
            accounted = accounted.max(target);
            // A new buffer of exactly that size (`reserve` would double past the bound).
            let mut grown = bytes::BytesMut::with_capacity(target);
            grown.extend_from_slice(&buf);
            buf = grown;
        }
        buf.extend_from_slice(&chunk);
        if buf.len() > max {
            return Ok(Held::Over(buf.freeze(), body));
        }
    }
    Ok(Held::Whole(buf.freeze()))
}

/// Sets `listChanged: true` on the tools/prompts/resources capabilities of an `initialize` or
/// `server/discover` result (the sidecar delivers those notifications now).
pub fn advertise_list_changed(msg: &mut Value) -> bool {
    let Some(caps) = msg
        .pointer_mut("/result/capabilities")
        .and_then(Value::as_object_mut)
    else {
        return false;
    };
    for kind in ["tools", "prompts", "resources"] {
        let entry = caps.entry(kind).or_insert_with(|| json!({}));
        if let Some(obj) = entry.as_object_mut() {
            obj.insert("listChanged".into(), true.into());
        }
    }
    true
}

/// What a rewrite does to one JSON-RPC message; `false` = leave it as it was.
pub type Patch = fn(&mut Value) -> bool;

/// Applies `patch` to a relayed answer (its JSON body, or each SSE `data:` as it arrives), the
/// answer to `request_body`. A JSON body is read whole by `deadline`, the forward's (the upstream
/// has `FANOUT_UPSTREAM_TIMEOUT_SECS` for its head and a rewritten answer whole), else the client
/// gets `504`; one cut short, `502`.
pub async fn patch_response(
    st: &AppState,
    up: &Upstream,
    resp: Response,
    patch: Patch,
    deadline: tokio::time::Instant,
    request_body: &[u8],
) -> Response {
    let (mut parts, body) = resp.into_parts();
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = if is_sse {
        Body::from_stream(rewrite_sse(
            body.into_data_stream(),
            patch,
            up.rewrite_max_bytes,
            body_memory(st),
        ))
    } else {
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        let known_len = hyper::body::Body::size_hint(&body).exact();
        match rewritten(st, up, body.into_data_stream(), known_len, patch, timer).await {
            Ok(body) => body,
            Err(failed) => return body_failed(up, failed, request_body),
        }
    };
    Response::from_parts(parts, body)
}

/// `body` with `patch` applied, or as it was (not JSON, or nothing to patch). The rewritten copy
/// is held in about the memory the original took from the budget, which is given back: it is
/// written into a buffer of the original's size plus some room for the fields a patch adds, and
/// trimmed if it outgrew that (a growing vector doubles: `to_string` held up to twice the answer).
fn rewrite_json(body: Bytes, patch: Patch) -> Bytes {
    /// Room for what a patch adds (a few fields) before the buffer has to grow.
    const PATCH_ROOM: usize = 1024;
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    if !patch(&mut v) {
        return body;
    }
    let mut out = Vec::with_capacity(body.len() + PATCH_ROOM);
    drop(body);
    if let Err(error) = serde_json::to_writer(&mut out, &v) {
        // Writing a `Value` to a vector cannot fail; if it did, the answer would be cut.
        tracing::error!(%error, "re-serializing a rewritten answer failed");
    }
    if out.capacity() - out.len() > PATCH_ROOM {
        out.shrink_to_fit();
    }
    Bytes::from(out)
}

/// Where the SSE rewrite is in its upstream stream.
struct SseRewrite<S> {
    upstream: std::pin::Pin<Box<S>>,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no block end (the next search starts just before).
    scanned: usize,
    eof: bool,
    /// A block outgrew the bound, or the budget: everything from there on is relayed as it
    /// arrives.
    relaying: bool,
    /// The body memory budget, and what `buf` holds of it (its capacity).
    memory: BodyMemory,
    held: Option<OwnedSemaphorePermit>,
}

/// A rewrite buffer that empties with at most this much room keeps it (and its share of the
/// budget) for the next block; a larger one is given back.
const SSE_BUFFER_KEPT_BYTES: usize = 16 * 1024;

impl<S> SseRewrite<S> {
    /// Bytes of the budget `buf` holds.
    fn accounted(&self) -> usize {
        self.held
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Makes room in `buf` for `more` bytes, taken from the body memory budget first ([`grown`]);
    /// `false` when the budget has not that much left.
    fn room_for(&mut self, more: usize, max_bytes: usize) -> bool {
        let needed = self.buf.len().saturating_add(more);
        let accounted = self.accounted();
        if needed <= accounted {
            return true;
        }
        let target = grown(accounted, needed, max_bytes);
        if super::body::take(Some(&self.memory), &mut self.held, target - accounted).is_err() {
            return false;
        }
        self.buf.reserve_exact(target - self.buf.len());
        true
    }

    /// After a block went out: an empty buffer larger than [`SSE_BUFFER_KEPT_BYTES`] is freed
    /// and its share of the budget given back.
    fn shrink(&mut self) {
        if self.buf.is_empty() && self.accounted() > SSE_BUFFER_KEPT_BYTES {
            self.buf = Vec::new();
            self.held = None;
        }
    }

    /// Stops rewriting: what the buffer holds and all that follows is relayed as it is, and the
    /// buffer's share of the budget is given back (the bytes leave with the next frame).
    fn relay_from_here(&mut self) {
        self.relaying = true;
        self.held = None;
    }
}

/// Rewrites the `data:` of SSE blocks carrying the result, relaying every block as it completes.
/// A block that grows past `max_bytes` without ending is relayed unmodified, and so is the rest
/// of the stream after it. The buffer a block is gathered in is taken from the body memory budget
/// (`memory`) as it grows; when the budget has no more room, the stream is relayed unmodified from
/// there on, as for a block over the bound: the blocks held for a rewrite, in every stream
/// together, never hold more than the budget.
///
/// The one SSE code in `src/` that does not use the shared parser (`mcp_fanout_client::sse`, the
/// `sse-stream` crate): a relay must pass the upstream's bytes through unchanged — its `event:`
/// and `id:` lines, comments, line endings (CRLF or LF), field order — and rewrite only the one
/// `data:` line it patches. A parser yields decoded fields, so re-encoding its output would
/// change the other bytes (and drop comments); this splits blocks and lines without decoding.
fn rewrite_sse<E: std::error::Error + Send + Sync + 'static, S>(
    upstream: S,
    patch: Patch,
    max_bytes: usize,
    memory: BodyMemory,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
{
    let state = SseRewrite {
        upstream: Box::pin(upstream),
        buf: Vec::new(),
        scanned: 0,
        eof: false,
        relaying: false,
        memory,
        held: None,
    };
    futures::stream::unfold(state, move |mut s| async move {
        loop {
            if s.relaying && !s.buf.is_empty() {
                let held = std::mem::take(&mut s.buf);
                return Some((Ok(Bytes::from(held)), s));
            }
            if !s.relaying {
                if let Some(end) = block_end(&s.buf, s.scanned) {
                    let block: Vec<u8> = s.buf.drain(..end).collect();
                    s.scanned = 0;
                    s.shrink();
                    return Some((Ok(rewrite_block(&block, patch)), s));
                }
                s.scanned = s.buf.len();
                if s.buf.len() > max_bytes {
                    tracing::warn!(
                        max_bytes,
                        "an upstream event too large to rewrite; the stream is relayed unmodified"
                    );
                    s.relay_from_here();
                    continue;
                }
            }
            if s.eof {
                if s.buf.is_empty() {
                    return None;
                }
                let rest = std::mem::take(&mut s.buf);
                return Some((Ok(Bytes::from(rest)), s));
            }
            match s.upstream.next().await {
                Some(Ok(chunk)) if s.relaying => return Some((Ok(chunk), s)),
                Some(Ok(chunk)) => {
                    if !s.room_for(chunk.len(), max_bytes) {
                        // Not a warning: clients can cause it at will (the budget's gauge shows it).
                        tracing::debug!(
                            budget_bytes = s.memory.1,
                            "the body memory budget is full (FANOUT_BODY_MEMORY_BYTES): an upstream event stream is relayed unmodified"
                        );
                        s.relay_from_here();
                    }
                    s.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    s.eof = true;
                    return Some((Err(std::io::Error::other(e)), s));
                }
                None => s.eof = true,
            }
        }
    })
}

/// End (exclusive) of the first complete SSE block, blank line included; `buf[..scanned]` is
/// known to hold none (a separator may straddle its end).
fn block_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let from = scanned.saturating_sub(3).min(buf.len());
    let tail = &buf[from..];
    let lf = tail
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| from + i + 2);
    let crlf = tail
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn rewrite_block(block: &[u8], patch: Patch) -> Bytes {
    let Ok(text) = std::str::from_utf8(block) else {
        return Bytes::copy_from_slice(block);
    };
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let (content, eol) = match line.strip_suffix("\r\n") {
            Some(c) => (c, "\r\n"),
            None => line.strip_suffix('\n').map_or((line, ""), |c| (c, "\n")),
        };
        match content.strip_prefix("data:") {
            Some(data) => {
                let data = data.strip_prefix(' ').unwrap_or(data);
                let rewritten = serde_json::from_str::<Value>(data)
                    .ok()
                    .and_then(|mut v| patch(&mut v).then(|| v.to_string()));
                match rewritten {
                    Some(v) => {
                        out.push_str("data: ");
                        out.push_str(&v);
                        out.push_str(eol);
                    }
                    None => out.push_str(line),
                }
            }
            None => out.push_str(line),
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = map(&[
            ("connection", "close, X-Secret-Hop"),
            ("connection", "x-other-hop"),
            ("x-secret-hop", "s"),
            ("x-other-hop", "o"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "300"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer t"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "cookie"]);
        let cookies: Vec<&[u8]> = h.get_all("cookie").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        // Nothing to drop: the map is left as it was.
        let mut plain = map(&[("content-type", "application/json"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn forwarded_headers_append_this_hop() {
        let peer: SocketAddr = "10.1.200.3:5555".parse().expect("addr");
        let mut h = map(&[("host", "svc:8080")]);
        add_forwarded(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.1.200.3");
        assert_eq!(
            h["forwarded"],
            r#"for=10.1.200.3;host="svc:8080";proto=http"#
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "svc:8080");

        let mut h = map(&[
            ("host", "svc"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=203.0.113.7;proto=https"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "mcp.example"),
        ]);
        let v6: SocketAddr = "[::1]:5555".parse().expect("addr");
        add_forwarded(&mut h, v6);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 198.51.100.1, ::1");
        assert_eq!(
            h["forwarded"],
            r#"for=203.0.113.7;proto=https, for="[::1]";host="svc";proto=http"#
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "mcp.example");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);

        // A host that cannot be quoted is left out of `Forwarded` and not echoed.
        let mut h = map(&[("host", "a\"b")]);
        add_forwarded(&mut h, peer);
        assert_eq!(h["forwarded"], "for=10.1.200.3;proto=http");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn the_forwarded_request_keeps_this_hops_entries_whatever_connection_names() {
        let peer: SocketAddr = "10.1.2.3:5555".parse().expect("addr");
        let mut h = map(&[
            ("host", "svc:8080"),
            ("content-length", "12"),
            (
                "connection",
                "x-forwarded-for, forwarded, x-forwarded-proto",
            ),
            ("x-forwarded-for", "203.0.113.7"),
            ("mcp-session-id", "minted"),
            ("accept", "*/*"),
        ]);
        to_upstream(&mut h, Some(peer), true, 11);
        // The client's own entry named in `Connection` is dropped; this hop's is there.
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["forwarded"], r#"for=10.1.2.3;host="svc:8080";proto=http"#);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "svc:8080");
        for gone in ["host", "content-length", "connection", "mcp-session-id"] {
            assert!(!h.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(h["accept"], "*/*");

        // Off, and an upstream's session: only the hop's own headers go.
        let mut h = map(&[("host", "svc"), ("mcp-session-id", "theirs")]);
        to_upstream(&mut h, None, false, 0);
        assert!(!h.contains_key("x-forwarded-for") && !h.contains_key("forwarded"));
        assert_eq!(h["mcp-session-id"], "theirs");
    }

    #[test]
    fn a_content_length_is_kept_only_when_it_states_the_body_exactly() {
        for (sent, body_len, kept) in [
            (&["12"][..], 12, true),
            (&["0"][..], 0, true),
            (&["18446744073709551615"][..], usize::MAX, true),
            (&["12"][..], 11, false),
            (&["012"][..], 12, false),
            (&["+12"][..], 12, false),
            (&["12 "][..], 12, false),
            (&["12", "12"][..], 12, false),
            (&[][..], 12, false),
        ] {
            let mut h = HeaderMap::new();
            for v in sent {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            to_upstream(&mut h, None, false, body_len);
            assert_eq!(
                h.contains_key(header::CONTENT_LENGTH),
                kept,
                "{sent:?} for {body_len} bytes"
            );
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn advertises_list_changed_in_json_and_sse() {
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tools":{"listChanged":false},"logging":{}},"serverInfo":{"name":"x"}}}"#;
        let v: Value = serde_json::from_slice(&rewrite_json(
            Bytes::from_static(body),
            advertise_list_changed,
        ))
        .expect("json");
        assert_eq!(v["result"]["capabilities"]["tools"]["listChanged"], true);
        assert_eq!(v["result"]["capabilities"]["prompts"]["listChanged"], true);
        assert_eq!(v["result"]["serverInfo"]["name"], "x");
        let block = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"capabilities\":{}}}\r\n\r\n";
        let out = rewrite_block(block, advertise_list_changed);
        let text = std::str::from_utf8(&out).expect("utf8");
        assert!(text.starts_with("event: message\r\ndata: ") && text.ends_with("\r\n\r\n"));
        assert!(text.contains(r#""listChanged":true"#));
        let untouched = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n";
        assert_eq!(
            &rewrite_block(untouched, advertise_list_changed)[..],
            &untouched[..]
        );
        assert_eq!(block_end(b"data: a\n\ndata: b", 0), Some(9));
        // A separator straddling what was scanned before is found.
        assert_eq!(block_end(b"data: a\r\n\r\ndata: b", 8), Some(11));
        assert_eq!(block_end(b"data: a\n", 8), None);
    }

    fn chunks(parts: &[&[u8]]) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        )
    }

    /// A body memory budget of `bytes`.
    fn budget(bytes: usize) -> BodyMemory {
        (std::sync::Arc::new(Semaphore::new(bytes)), bytes)
    }

    async fn relayed(
        s: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
        max: usize,
    ) -> Vec<u8> {
        relayed_within(s, max, budget(1 << 20)).await
    }

    async fn relayed_within(
        s: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
        max: usize,
        memory: BodyMemory,
    ) -> Vec<u8> {
        let out: Vec<Result<Bytes, std::io::Error>> =
            rewrite_sse(s, advertise_list_changed, max, memory)
                .collect()
                .await;
        out.into_iter()
            .flat_map(|c| c.expect("no error").to_vec())
            .collect()
    }

    #[tokio::test]
    async fn sse_blocks_split_anywhere_are_rewritten_and_an_endless_one_relayed_as_is() {
        // The separator straddles two chunks.
        let got = relayed(
            chunks(&[
                b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"capabilities\":{}}}\r\n\r",
                b"\n",
            ]),
            1024,
        )
        .await;
        let text = String::from_utf8(got).expect("utf8");
        assert!(text.contains(r#""listChanged":true"#), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");

        // An event that outgrows the bound is relayed unmodified, whole, and so is what follows.
        let big = vec![b'x'; 4096];
        let parts: Vec<&[u8]> = vec![b"data: ", &big, &big, b"\n\n", b"data: {\"id\":1}\n\n"];
        let input: Vec<u8> = parts.concat();
        let got = relayed(chunks(&parts), 1024).await;
        assert_eq!(got, input);
    }

    #[tokio::test]
    async fn sse_blocks_are_gathered_within_the_body_memory_budget() {
        let init = b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"capabilities\":{}}}\n\n";
        // Room for the small block: rewritten, and its buffer's share kept for the next one.
        let memory = budget(4096);
        let got = relayed_within(chunks(&[init]), 1 << 20, memory.clone()).await;
        assert!(String::from_utf8_lossy(&got).contains(r#""listChanged":true"#));
        assert_eq!(
            memory.0.available_permits(),
            4096,
            "all given back at the end"
        );

        // A block larger than what is left of the budget (but within the bound) is relayed
        // unmodified, whole, and so is what follows; nothing stays taken.
        let memory = budget(4096);
        let big = vec![b'x'; 3000];
        let parts: Vec<&[u8]> = vec![b"data: ", &big, &big, b"\n\n", init];
        let input: Vec<u8> = parts.concat();
        let got = relayed_within(chunks(&parts), 1 << 20, memory.clone()).await;
        assert_eq!(got, input);
        assert_eq!(memory.0.available_permits(), 4096);

        // The budget held while a block is gathered, given back once a large one has gone out.
        let memory = budget(1 << 20);
        let mut stream = Box::pin(rewrite_sse(
            chunks(&[b"data: ", &big, b"\n\n"]),
            advertise_list_changed,
            1 << 20,
            memory.clone(),
        ));
        let first = stream.next().await.expect("a block").expect("no error");
        assert_eq!(first.len(), 6 + 3000 + 2);
        assert!(stream.next().await.is_none());
        drop(stream);
        assert_eq!(memory.0.available_permits(), 1 << 20);
    }
}
