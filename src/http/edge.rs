//! The one layer every request passes through on its way in and its answer on its way out: whose
//! forwarded headers are believed ([`trusted_proxies`](crate::trusted_proxies)), the
//! browser origin check and CORS ([`origin`](super::origin)), error counting (`http_errors`), and
//! panic recovery (a handler that panics answers `500 internal` and the service keeps serving).
//!
//! One hand-written layer rather than a middleware each: every `axum` layer wraps each route in
//! another boxed service that is cloned (allocated) on every request, and a `from_fn` middleware
//! boxes its `Next` and its future besides. Here a request costs one boxed future.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};

use super::error::{AppError, ErrorCode};
use super::origin::{self, ALLOW_HEADERS, ALLOW_METHODS, EXPOSE_HEADERS};
use crate::auth::SubscriberAuth;
use crate::metrics::CodeLabel;
use crate::server::ConnInfo;
use crate::state::AppState;

/// Wraps every route of a router in [`Edge`].
#[derive(Clone)]
pub struct EdgeLayer {
    pub st: AppState,
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            st: self.st.clone(),
        }
    }
}

/// A route behind the edge checks (see the module's doc).
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    st: AppState,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let st = self.st.clone();
        let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer);
        let origin = match admit(&st, &mut req, peer) {
            Admitted::Pass { origin, client } => {
                if let (Some(client), Some(conn)) =
                    (client, req.extensions_mut().get_mut::<ConnInfo>())
                {
                    conn.client = client;
                }
                origin
            }
            Admitted::Answered(answered) => return std::future::ready(Ok(answered)).boxed(),
        };
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req)));
        async move {
            let resp = match called {
                Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(never)) => match never {},
                    Err(panic) => panic_response(panic),
                },
                Err(panic) => panic_response(panic),
            };
            Ok(counted(&st, with_cors(resp, origin)))
        }
        .boxed()
    }
}

/// `handler` behind the edge, as [`Edge`] runs a route, for a request the listener answers
/// without the router (`POST /mcp`, see [`super::direct_post_mcp`]): the same checks, the same
/// answers, one future and no boxed service around it. The connection's details come beside
/// the request, not in its extensions (a map allocated per request).
pub async fn around<F, Fut>(
    st: AppState,
    mut conn: ConnInfo,
    mut req: Request,
    handler: F,
) -> Response
where
    F: FnOnce(AppState, ConnInfo, Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let resp = match admit(&st, &mut req, Some(conn.peer)) {
        Admitted::Pass { origin, client } => {
            if let Some(client) = client {
                conn.client = client;
            }
            let resp = match AssertUnwindSafe(handler(st.clone(), conn, req))
                .catch_unwind()
                .await
            {
                Ok(resp) => resp,
                Err(panic) => panic_response(panic),
            };
            counted(&st, with_cors(resp, origin))
        }
        Admitted::Answered(answered) => answered,
    };
    with_length(resp)
}

/// A body of a known size gets its `Content-Length`, as axum's router gives it.
fn with_length(mut resp: Response) -> Response {
    use axum::body::HttpBody;
    if !resp.headers().contains_key(header::CONTENT_LENGTH) {
        if let Some(size) = resp.body().size_hint().exact() {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
    }
    resp
}

/// What the edge makes of a request on its way in.
enum Admitted {
    /// It goes on to its route; its `Origin` is for the CORS headers of its answer, and `client`
    /// is who a trusted proxy says the request is from (the connection's `ConnInfo::client`).
    Pass {
        origin: Option<HeaderValue>,
        client: Option<std::net::IpAddr>,
    },
    /// The edge answers it itself (a refusal, a CORS preflight), counted.
    Answered(Response),
}

/// The edge's checks on a request on its way in from `peer`.
fn admit(st: &AppState, req: &mut Request, peer: Option<std::net::SocketAddr>) -> Admitted {
    let mut client = None;
    // First, so nothing after reads a forwarded header a peer not trusted to send it sent.
    if let Some(trusted) = &st.config.trusted_proxies {
        if let Some(peer) = peer {
            let judged = trusted.judge(peer, req.headers_mut(), st.config.client_address_header);
            if !judged.trusted_peer && names_a_tenant(st, req) {
                let resp = AppError::Forbidden(
                    "the tenant header is accepted only from the gateway (FANOUT_TRUSTED_PROXIES)",
                )
                .into_response();
                return Admitted::Answered(counted(st, resp));
            }
            client = Some(judged.client);
        }
    }
    if let Some(hosts) = &st.allowed_hosts {
        // The public endpoints only: the admin listener has its own rules (tokens, or a
        // loopback Host).
        let public = matches!(req.uri().path(), "/mcp" | "/poll");
        if public && !origin::host_allowed(req.headers(), hosts) {
            let resp = AppError::Forbidden(
                "the request's Host is not one this service answers (FANOUT_ALLOWED_HOSTS)",
            )
            .into_response();
            return Admitted::Answered(counted(st, resp));
        }
    }
    if !origin::origin_allowed(req.headers(), &st.allowed_origins) {
        let resp = AppError::Forbidden("the request's Origin is not allowed").into_response();
        return Admitted::Answered(counted(st, resp));
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        return Admitted::Answered(counted(st, with_cors(preflight_answer(), origin)));
    }
    Admitted::Pass { origin, client }
}

/// The answer to an allowed CORS preflight.
fn preflight_answer() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// An allowed cross-origin request's answer says so.
fn with_cors(mut resp: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

/// `header` mode's tenant header on a public endpoint (`/mcp`, `/poll`): who the tenant is, which
/// only the gateway may say.
fn names_a_tenant(st: &AppState, req: &Request) -> bool {
    let SubscriberAuth::Header(name) = &st.subscriber_auth else {
        return false;
    };
    matches!(req.uri().path(), "/mcp" | "/poll") && req.headers().contains_key(name)
}

/// An error answer is counted under its code (`http_errors`).
fn counted(st: &AppState, resp: Response) -> Response {
    if let Some(ErrorCode(code)) = resp.extensions().get::<ErrorCode>() {
        st.metrics
            .http_errors
            .get_or_create(&CodeLabel { code })
            .inc();
    }
    resp
}

pub fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    AppError::Internal.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SubscriberAuth;
    use crate::config::Cli;
    use crate::state::State;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use clap::Parser;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app() -> (Router, AppState) {
        let cli = Cli::try_parse_from(["mcp-fanout"]).expect("defaults parse");
        let st = State::memory(cli.serve, SubscriberAuth::None, 20_000).expect("state");
        let router = Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/boom",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("a handler bug");
                    }
                    "unreachable"
                }),
            )
            .layer(EdgeLayer { st: st.clone() })
            .with_state(st.clone());
        (router, st)
    }

    fn counted(st: &AppState, code: &'static str) -> u64 {
        st.metrics
            .http_errors
            .get_or_create(&CodeLabel { code })
            .get()
    }

    async fn call(router: &Router, path: &str, origin: Option<&str>) -> Response {
        let mut req = axum::http::Request::get(path).header(header::HOST, "svc:8080");
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        router
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    #[tokio::test]
    async fn a_panic_is_a_counted_json_500_and_the_service_keeps_serving() {
        let (router, st) = app();
        let resp = call(&router, "/boom", None).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
        assert_eq!(v["error"]["code"], "internal_error", "{v}");
        assert_eq!(counted(&st, "internal_error"), 1);
        let resp = call(&router, "/ok", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn origins_are_checked_and_an_allowed_one_gets_cors_headers() {
        let (router, st) = app();
        let refused = call(&router, "/ok", Some("https://evil.example")).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(counted(&st, "forbidden"), 1);
        let same = call(&router, "/ok", Some("http://svc:8080")).await;
        assert_eq!(same.status(), StatusCode::OK);
        assert_eq!(
            same.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://svc:8080"
        );
        assert_eq!(same.headers()[header::VARY], "origin");
        let plain = call(&router, "/ok", None).await;
        assert!(!plain
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }
}
