//! The HTTP surface: routers for the public listener (subscribers) and the admin listener
//! (publish, cluster, probes, metrics), sharing one error shape.

pub mod admin;
pub mod admin_auth;
pub mod body;
pub mod console;
pub mod edge;
pub mod era_adapter;
pub mod error;
pub mod headers;
pub mod kept_upstream;
pub mod listen;
pub mod ops;
pub mod origin;
pub mod poll;
pub mod proxy;
pub mod sse;
pub mod subscription;

use std::sync::Arc;

use axum::http::{Method, Uri};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures::FutureExt;
use tower_http::catch_panic::CatchPanicLayer;

use self::error::AppError;
use crate::server::DirectRoute;
use crate::state::AppState;

/// The routers: `(public, Some(admin))` when admin has its own listener, else `(all, None)`.
pub fn app(st: AppState) -> (Router, Option<Router>) {
    if st.config.admin_addr.is_some() {
        (
            finish(public_routes(), st.clone()),
            Some(finish(admin_routes(st.clone()), st)),
        )
    } else {
        (
            finish(public_routes().merge(admin_routes(st.clone())), st),
            None,
        )
    }
}

/// `POST /mcp` as the public router answers it (the edge around [`listen::post_mcp`]), for the
/// listener to call without the router (`server::RouterSlot::set_with_direct`). Tested against
/// the router's own answers in this module's tests.
pub fn direct_post_mcp(st: AppState) -> DirectRoute {
    Arc::new(move |req, conn| edge::around(st.clone(), conn, req, listen::post_mcp_on).boxed())
}

/// What a replica serves while its database is not ready yet: live, not ready; streams are shed
/// with a `retry:` (never an error status), everything else is `503 database_unavailable`.
pub fn starting(retry_ms: u64) -> Router {
    use axum::body::Body;
    use axum::http::{header, HeaderValue};
    let shed = move || async move {
        let mut resp = Response::new(Body::from(crate::mcp::retry_frame(
            crate::mcp::jittered_retry_ms(retry_ms),
        )));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    };
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/mcp", get(shed))
        .fallback(|| async { AppError::DatabaseUnavailable })
        .layer(CatchPanicLayer::custom(edge::panic_response))
}

fn public_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/mcp",
            get(sse::get_mcp)
                .post(listen::post_mcp)
                .delete(listen::delete_mcp),
        )
        .route("/poll", get(poll::poll))
}

fn admin_routes(st: AppState) -> Router<AppState> {
    let admin = Router::new()
        .route("/admin/publish", post(admin::publish))
        .route("/admin/cluster", get(admin::cluster))
        .route("/admin/stats", get(console::stats))
        .route_layer(middleware::from_fn_with_state(
            st.clone(),
            admin_auth::require_admin,
        ));
    Router::new()
        .merge(admin)
        .merge(console::routes(st))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
}

/// JSON 404/405, and origin checks, error counting and panic recovery ([`edge`]) for every route.
fn finish(router: Router<AppState>, st: AppState) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(edge::EdgeLayer { st: st.clone() })
        .with_state(st)
}

async fn not_found(uri: Uri) -> AppError {
    AppError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed(method: Method) -> AppError {
    AppError::MethodNotAllowed(method.to_string())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use clap::Parser;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::SubscriberAuth;
    use crate::config::Cli;
    use crate::server::ConnInfo;
    use crate::state::State;

    /// A replica with every edge check on: allowed origins and hosts, a trusted gateway that
    /// alone may name a tenant.
    fn state() -> AppState {
        let cli = Cli::try_parse_from([
            "mcp-fanout",
            "--allowed-origins",
            "https://app.example",
            "--allowed-hosts",
            "svc",
            "--trusted-proxies",
            "10.0.0.0/8",
            "--subscriber-auth",
            "header",
        ])
        .expect("flags parse");
        let auth = SubscriberAuth::Header(header::HeaderName::from_static("x-fanout-tenant"));
        State::memory(cli.serve, auth, 20_000).expect("state")
    }

    fn request(peer: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
        let peer: SocketAddr = peer.parse().expect("an address");
        let mut req = Request::post("/mcp");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut req = req.body(Body::from(body.to_owned())).expect("a request");
        req.extensions_mut().insert(ConnInfo::for_peer(peer));
        req
    }

    /// An answer as a client sees it, and what it added to `http_errors`.
    async fn seen(st: &AppState, resp: Response, errors_before: u64) -> (String, u64) {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("a body").to_bytes();
        let mut headers: Vec<String> = parts
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.sort();
        let text = format!(
            "{}\n{}\n{}",
            parts.status,
            headers.join("\n"),
            String::from_utf8_lossy(&body)
        );
        (text, errors(st) - errors_before)
    }

    fn errors(st: &AppState) -> u64 {
        let text = st.metrics.encode().expect("metrics encode");
        text.lines()
            .filter(|l| l.starts_with("mcp_fanout_http_errors_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    #[tokio::test]
    async fn the_direct_post_mcp_answers_as_the_router_does() {
        let ping = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
        let json = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2025-06-18"),
            ("mcp-method", "ping"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = vec![("host", "svc:8080")];
            all.extend_from_slice(&json);
            all.extend_from_slice(extra);
            all
        };
        let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
            (
                "an origin not allowed",
                request(
                    "10.1.1.1:5000",
                    &with(&[("origin", "https://evil.example"), ("x-fanout-tenant", "a")]),
                    ping,
                ),
                StatusCode::FORBIDDEN,
            ),
            (
                "a host not answered",
                request(
                    "10.1.1.1:5000",
                    &[("host", "evil.example"), ("x-fanout-tenant", "a")],
                    ping,
                ),
                StatusCode::FORBIDDEN,
            ),
            (
                "a tenant named by a peer that is not the gateway",
                request("127.0.0.1:5000", &with(&[("x-fanout-tenant", "a")]), ping),
                StatusCode::FORBIDDEN,
            ),
            (
                "a body that is not JSON, from an allowed origin",
                request(
                    "10.1.1.1:5000",
                    &with(&[("origin", "https://app.example"), ("x-fanout-tenant", "a")]),
                    "{not json",
                ),
                StatusCode::BAD_REQUEST,
            ),
            (
                "a method it does not answer, from an allowed origin (with CORS headers)",
                request(
                    "10.1.1.1:5000",
                    &with(&[("origin", "https://app.example"), ("x-fanout-tenant", "a")]),
                    ping,
                ),
                StatusCode::NOT_FOUND,
            ),
        ];
        for (case, req, status) in cases {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("a body").to_bytes();
            let copy = || {
                let mut r = Request::from_parts(parts.clone(), Body::from(body.clone()));
                *r.extensions_mut() = parts.extensions.clone();
                r
            };
            let st = state();
            let (router, _) = app(st.clone());
            let before = errors(&st);
            let routed = router.oneshot(copy()).await.expect("infallible");
            let routed = seen(&st, routed, before).await;
            let st = state();
            let before = errors(&st);
            let conn = parts
                .extensions
                .get::<ConnInfo>()
                .cloned()
                .expect("the connection's details");
            let direct = direct_post_mcp(st.clone())(copy(), conn).await;
            let direct = seen(&st, direct, before).await;
            assert!(
                routed.0.starts_with(status.as_str()),
                "{case}: the router answered {}",
                routed.0
            );
            assert_eq!(direct, routed, "{case}: the direct route answers otherwise");
            if case.contains("CORS") {
                assert!(
                    routed
                        .0
                        .contains("access-control-allow-origin: https://app.example"),
                    "{case}: {}",
                    routed.0
                );
            }
        }
    }
}
