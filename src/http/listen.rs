//! `POST /mcp`: JSON-RPC requests. `subscriptions/listen` (MCP 2026-07-28) opens a notification
//! stream fed by the same broadcaster and visibility rule as the GET stream, filtered to the kinds
//! the client opted into and framed per stream (contract §3.3). Any other method is "method not found"
//! in standalone mode. Errors here are JSON-RPC error objects.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

use super::body::{read_body, require_json, BodyLimit, HeldBody};
use super::era_adapter;
use super::error::{AppError, ErrorCode};
use super::headers::{self, MCP_PROTOCOL_VERSION};
use super::proxy::{self, Forward};
use super::sse::event_stream;
use super::subscription::{self, Open, Opened, Request};
use crate::auth::Identity;
use crate::broadcast::pump::Ends;
use crate::broadcast::stream::{Parts, Stream};
use crate::broadcast::{Coalescer, Feed, SubscriberKind};
use crate::event::{parse_json, scan_method, JsonError, Viewer};
use crate::mcp::listen::{self, codes, Filter, ListenFraming, Refusal, LISTEN_METHOD};
use crate::metrics::ShedReason;
use crate::server::handoff::Chunks;
use crate::server::ConnInfo;
use crate::session::{minted, Owner, Ownership, SessionError};
use crate::state::AppState;

pub const MCP_METHOD: &str = "mcp-method";

/// A JSON-RPC error answer.
pub struct RpcError {
    status: StatusCode,
    id: Value,
    code: i64,
    message: String,
    data: Option<Value>,
    /// Close the connection after the answer (the body was not read whole).
    close: bool,
    /// The `code` label it is counted under in the `http_errors` metric.
    metric_code: &'static str,
}

impl RpcError {
    fn new(status: StatusCode, id: &Value, code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            status,
            id: id.clone(),
            code,
            message: message.into(),
            data: None,
            close: false,
            metric_code: codes::name(code),
        }
    }

    /// An HTTP-edge error (auth, origin, limits) as a JSON-RPC error with the same status.
    fn from_app(e: AppError, id: &Value) -> RpcError {
        let status = e.status();
        let code = if status.is_server_error() {
            codes::INTERNAL
        } else {
            codes::SERVER_ERROR
        };
        let mut rpc = RpcError::new(status, id, code, e.to_string());
        rpc.close = e.leaves_body_unread();
        // Counted as the same refusal elsewhere is.
        rpc.metric_code = e.code();
        rpc
    }
}

impl From<Box<Refusal>> for RpcError {
    fn from(r: Box<Refusal>) -> RpcError {
        RpcError {
            status: r.status,
            id: r.id,
            code: r.code,
            message: r.message,
            data: r.data,
            close: false,
            metric_code: codes::name(r.code),
        }
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(data) = self.data {
            error["data"] = data;
        }
        let mut resp = (
            self.status,
            axum::Json(json!({ "jsonrpc": "2.0", "id": self.id, "error": error })),
        )
            .into_response();
        resp.extensions_mut().insert(ErrorCode(self.metric_code));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="mcp-fanout""#),
            );
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// `POST /mcp`. Takes the request whole: its headers move on to the upstream (proxy mode) as
/// they are, and the connection's details are read in place (extractors would copy both).
pub async fn post_mcp(State(st): State<AppState>, req: axum::extract::Request) -> Response {
    let Some(conn) = req.extensions().get::<ConnInfo>().cloned() else {
        tracing::error!("a request without its connection's details");
        return AppError::Internal.into_response();
    };
    post_mcp_on(st, conn, req).await
}

/// [`post_mcp`] with the connection's details beside the request, not in its extensions: what
/// the route runs, and what the listener's direct route (`super::direct_post_mcp`) calls.
pub async fn post_mcp_on(st: AppState, conn: ConnInfo, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    match handle(st, &conn, parts.version, parts.headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `DELETE /mcp`: forwarded in proxy mode (and the session's streams end on every replica);
/// standalone, there is nothing to delete. Only the session's owner may delete it.
pub async fn delete_mcp(
    State(st): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(up) = &st.upstream else {
        return AppError::MethodNotAllowed("DELETE".into()).into_response();
    };
    let owner = match authorize_delete(&st, &headers).await {
        Ok(owner) => owner,
        Err(e) => return e.into_response(),
    };
    // Its share of the body memory is held until the answer's head is back.
    let (bytes, _held) = match read_body(&headers, body, mcp_body_limit(&st)).await {
        Ok(b) => (b.bytes, b.held),
        Err(e) => return e.into_response(),
    };
    let forward = Forward {
        method: axum::http::Method::DELETE,
        headers,
        body: bytes,
        rpc_method: None,
        owner,
        peer: conn.peer,
        client: conn.client,
        own_task: conn.own_task.clone(),
    };
    proxy::forward(&st, up, forward).await
}

/// Who may delete a session: the caller is identified as for its GET (`401` for a missing or
/// invalid credential), and a session recorded here must be the caller's (`403` otherwise; a
/// token without `sub` owns none). A minted session that is not recorded is `404`: there is
/// nothing to end. An upstream's session that is not recorded is the upstream's to answer.
async fn authorize_delete(st: &AppState, headers: &HeaderMap) -> Result<Option<Owner>, AppError> {
    let identity = st.subscriber_auth.identify(headers).await?;
    let Some(session) = headers::session_id(headers)? else {
        return Ok(None);
    };
    let owner = identity.session_owner()?;
    match callers_session(st, &session, &owner, SessionUse::Delete).await? {
        Ownership::Unknown if minted::is_minted(session.as_bytes()) => {
            Err(AppError::SessionNotFound)
        }
        _ => Ok(Some(owner)),
    }
}

/// A forwarded request's session, if it names one, must be the caller's (a token without `sub`
/// can use none), as for its GET and its DELETE.
async fn forwardable_session(
    st: &AppState,
    headers: &HeaderMap,
    identity: &Identity,
) -> Result<(), AppError> {
    if let Some(session) = headers::session_id(headers)? {
        callers_session(
            st,
            &session,
            &identity.session_owner()?,
            SessionUse::Forward,
        )
        .await?;
    }
    Ok(())
}

/// Whether `owner` may name `session` in a request the proxy forwards: `403` when a session
/// recorded here is another principal's; a session not recorded here is the upstream's to answer
/// (`Unknown`). The owner's session is marked used: one used only through the proxy (no stream)
/// must not age out of the table while its requests come, and be bound by someone else.
pub(super) async fn callers_session(
    st: &AppState,
    session: &str,
    owner: &Owner,
    why: SessionUse,
) -> Result<Ownership, AppError> {
    let ownership = match why {
        SessionUse::Forward => st.sessions.use_to_forward(session, owner).await,
        SessionUse::Delete => st.sessions.use_if_owned(session, owner).await,
    };
    match ownership {
        Ok(Ownership::Other) | Err(SessionError::Forbidden) => Err(AppError::Forbidden(
            "this session belongs to another principal",
        )),
        Ok(mine_or_unknown) => Ok(mine_or_unknown),
        Err(SessionError::Unavailable(error)) => {
            tracing::warn!(%error, "cannot check the session's owner");
            Err(AppError::DatabaseUnavailable)
        }
    }
}

/// What a caller names a session for.
pub(super) enum SessionUse {
    /// A request forwarded in it: "the owner's" may come from what the store read lately.
    Forward,
    /// Its `DELETE`: an unknown minted session is `404`, so the store is asked each time.
    Delete,
}

/// A body that is not one JSON value (or names a key twice): JSON-RPC's parse error, `400`.
fn parse_error(e: &JsonError) -> RpcError {
    RpcError::new(
        StatusCode::BAD_REQUEST,
        &Value::Null,
        codes::PARSE_ERROR,
        format!("Parse error: {e}"),
    )
}

async fn handle(
    st: AppState,
    conn: &ConnInfo,
    http_version: Version,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RpcError> {
    let null = Value::Null;
    // Who is asking, and whether the declared length fits, before a byte of the body is read.
    let identity = st
        .subscriber_auth
        .identify(&headers)
        .await
        .map_err(|e| RpcError::from_app(e.into(), &null))?;
    // The body's share of the body memory is held until this request is handled.
    let HeldBody { bytes, held: _held } = read_body(&headers, body, mcp_body_limit(&st))
        .await
        .map_err(|e| RpcError::from_app(e, &null))?;
    // An object naming a key twice is refused in both modes (the upstream could read the other
    // value than the one the service acted on). The method is found by a scan (no `Value`
    // built: a proxied body needs nothing more); a listen request is parsed whole below. A body
    // that is not JSON is the upstream's to answer, or refused below as a listen request.
    let rpc_method = match scan_method(&bytes) {
        Ok(method) => method,
        Err(e @ JsonError::DuplicateKey { .. }) => return Err(parse_error(&e)),
        Err(_) => None,
    };
    // Proxy mode: everything but `subscriptions/listen` goes to the upstream, untouched.
    if let Some(up) = &st.upstream {
        if rpc_method.as_deref() != Some(LISTEN_METHOD) {
            let adapted = up.bridges_2026_clients() && era_adapter::is_modern_request(&headers);
            if !adapted {
                if let Err(e) = forwardable_session(&st, &headers, &identity).await {
                    return Err(RpcError::from_app(e, &proxy::request_id(&bytes)));
                }
            }
            // The owner of a session this request creates upstream; a request that names no
            // one (a token without `sub`) creates a session nobody can use here. Only an
            // `initialize` (or an adapted request, which may open one) records a session, so
            // no other request pays for working it out.
            let owner = (adapted || rpc_method.as_deref() == Some("initialize"))
                .then(|| identity.session_owner().unwrap_or_else(|_| Owner::nobody()));
            let forward = Forward {
                method: axum::http::Method::POST,
                headers,
                body: bytes,
                rpc_method,
                owner,
                peer: conn.peer,
                client: conn.client,
                own_task: conn.own_task.clone(),
            };
            if adapted {
                // Boxed: the adapter's future is larger than the plain forward's, and the
                // request's future (boxed once per request) would be its size on every request.
                return Ok(Box::pin(era_adapter::forward(&st, up, forward)).await);
            }
            return Ok(proxy::forward(&st, up, forward).await);
        }
    }
    if bytes.len() > st.config.request_limit() {
        // Proxy mode reads up to the proxy's limit; a listen request gets the JSON-RPC one.
        return Err(RpcError::from_app(
            AppError::PayloadTooLarge(st.config.request_limit()),
            &null,
        ));
    }
    require_json(&headers).map_err(|e| RpcError::from_app(e, &null))?;
    let msg = parse_json(&bytes).map_err(|e| parse_error(&e))?;
    let request = listen::validate(
        &msg,
        headers.get(MCP_METHOD).map(|v| v.as_bytes()),
        headers.get(MCP_PROTOCOL_VERSION).map(|v| v.as_bytes()),
    )?;
    match request {
        listen::Request::Notification => Ok(StatusCode::ACCEPTED.into_response()),
        listen::Request::Listen { id, filter } => {
            open_stream(&st, conn, http_version, identity, id, filter).await
        }
    }
}

/// The `subscriptions/listen` stream: the acknowledgement, then the events the filter wants.
async fn open_stream(
    st: &AppState,
    conn: &ConnInfo,
    http_version: Version,
    identity: Identity,
    id: Value,
    filter: Filter,
) -> Result<Response, RpcError> {
    let request = Request {
        kind: SubscriberKind::Listen,
        session: None,
        owner: None,
        expires_at: identity.expires_at,
    };
    let opened = match subscription::open(st, conn, request).await {
        Ok(Open::Opened(o)) => o,
        Ok(Open::Shed(reason)) => return Err(shed_error(reason, &id)),
        Err(e) => return Err(RpcError::from_app(e, &id)),
    };
    let Opened {
        guard,
        bounds,
        expires,
        ..
    } = opened;
    let head = bounds.head;
    let viewer = Viewer {
        tenant: identity.tenant,
        session: None,
    };
    // Never closed for rebalancing (2026 clients do not re-listen): no max age.
    let ends = Ends {
        shutdown: st.broadcaster.listens_ending(),
        taken_over: None,
        max_age: None,
        expires,
        max_lag: st.config.max_lag(),
    };
    let stream = Stream::from(Parts {
        preamble: Some(listen::acknowledgement(&id, &filter)),
        framing: ListenFraming::new(filter, id),
        feed: Feed::new(st.broadcaster.clone(), st.log.clone(), viewer, head),
        coalescer: Coalescer::new(st.config.coalesce_window()),
        ends,
        keepalive: st.config.keepalive(),
        pending_max_age: None,
        guard,
        claim: None,
    });
    let chunks: Chunks = Box::pin(stream.chunks());
    Ok(event_stream(conn.handoff.offer(http_version, chunks)))
}

/// A listen request turned away: `503`, to listen on another replica or later; `429` for a client
/// that holds its share of the streams already.
fn shed_error(reason: ShedReason, id: &Value) -> RpcError {
    let (status, message) = match reason {
        ShedReason::Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is shutting down; listen on another",
        ),
        ShedReason::Capacity => (
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is at its subscriber limit; retry later",
        ),
        ShedReason::Database => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is unavailable; retry later",
        ),
        ShedReason::ClientLimit => (
            StatusCode::TOO_MANY_REQUESTS,
            "this client holds as many streams on this replica as it may (FANOUT_MAX_SUBSCRIBERS_PER_CLIENT); end one first",
        ),
        // Listen streams claim no session; kept for completeness (these two).
        ShedReason::ClaimRate => (
            StatusCode::TOO_MANY_REQUESTS,
            "this session was claimed more often than FANOUT_SESSION_CLAIMS_PER_MIN allows; retry later",
        ),
        ShedReason::SessionWrites => (
            StatusCode::TOO_MANY_REQUESTS,
            "this client opened sessions faster than FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN allows; retry later",
        ),
    };
    RpcError::new(status, id, codes::SERVER_ERROR, message)
}

/// `POST`/`DELETE /mcp` bodies: the proxy's limit in proxy mode, else the JSON-RPC request one.
fn mcp_body_limit(st: &AppState) -> BodyLimit {
    BodyLimit {
        max_bytes: st.config.mcp_body_limit(),
        within: st.config.body_timeout(),
        memory: Some((st.body_memory.clone(), st.config.body_memory_bytes())),
    }
}
