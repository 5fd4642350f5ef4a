//! The operator console (`GET /admin/console`): one hand-written page (HTML, JS, CSS embedded in
//! the binary) that polls `GET /admin/stats` and publishes through `POST /admin/publish`.
//!
//! A browser cannot put a bearer token on a navigation, so the page and its two assets carry no
//! data and are served without a token; the page asks for the token, keeps it in
//! `sessionStorage`, and sends it on every data call, which `require_admin` checks like any other
//! `/admin/*` call. With no tokens configured the page itself answers only as `/admin/*` does
//! (a loopback peer with a loopback `Host`). Every answer carries a strict Content-Security-Policy:
//! only the page's own script and style, fetches to its own origin, nothing inline; and
//! `Cross-Origin-Resource-Policy: same-origin`.

mod stats;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::state::AppState;

const PAGE: &str = include_str!("console.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// No inline script or style, no other origin, no framing, no forms posting anywhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page and its assets.
pub fn routes(st: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/admin/console",
            get(|| asset(PAGE, "text/html; charset=utf-8")),
        )
        .route(
            "/admin/console/console.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/admin/console/console.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route_layer(middleware::from_fn_with_state(st, page_access))
        .layer(middleware::map_response(same_origin_only))
}

/// Every console answer (page, assets, refusals) may be read only by its own origin: no other
/// site can embed or load it even as a `no-cors` resource.
async fn same_origin_only(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    resp
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// With tokens configured the static page is open (it holds no data, and a navigation cannot
/// carry the token); with none, it answers only where `/admin/*` would.
async fn page_access(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.admin_tokens.is_empty() {
        if let Err(e) = super::admin_auth::authorize(&st, &req) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// `GET /admin/stats` (behind `require_admin`): see [`stats::view`].
pub async fn stats(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(stats::view(&st).await)
}
