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

use axum::http::{Method, Uri};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use self::error::AppError;
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
