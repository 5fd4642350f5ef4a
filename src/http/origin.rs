//! Browser origin checks (SPEC §2 `FANOUT_ALLOWED_ORIGINS`, §4.1): a request whose `Origin` is
//! not allowed gets `403` on every endpoint. Allowed cross-origin requests get CORS headers, and
//! their preflights are answered here.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AppError;
use crate::state::AppState;

const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const ALLOW_HEADERS: &str =
    "authorization, content-type, accept, last-event-id, mcp-session-id, mcp-protocol-version, mcp-method, idempotency-key";
const EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version";

pub async fn check_origin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !origin_allowed(req.headers(), &st.allowed_origins) {
        return AppError::Forbidden("the request's Origin is not allowed").into_response();
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
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
    } else {
        next.run(req).await
    };
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

/// No `Origin`: allowed. Otherwise it must be listed, or same-origin (its host equals `Host`).
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if allowed.iter().any(|a| a == "*" || *a == origin) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            m.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        m
    }

    #[test]
    fn rules() {
        let none: Vec<String> = vec![];
        let listed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(&h(None, "svc:8080"), &none));
        assert!(origin_allowed(
            &h(Some("http://svc:8080"), "svc:8080"),
            &none
        ));
        assert!(!origin_allowed(
            &h(Some("https://evil.example"), "svc:8080"),
            &none
        ));
        assert!(!origin_allowed(&h(Some("null"), "svc:8080"), &none));
        assert!(origin_allowed(
            &h(Some("https://app.example"), "svc:8080"),
            &listed
        ));
        assert!(origin_allowed(
            &h(Some("HTTPS://APP.EXAMPLE/"), "svc:8080"),
            &listed
        ));
        assert!(!origin_allowed(
            &h(Some("https://app.example.evil"), "svc:8080"),
            &listed
        ));
    }
}
