//! The one layer every request passes through on its way in and its answer on its way out: the
//! browser origin check and CORS ([`origin`](super::origin)), error counting (`http_errors`), and
//! panic recovery (a handler that panics answers `500 internal` and the service keeps serving).
//!
//! One hand-written layer rather than a middleware each: every `axum` layer wraps each route in
//! another boxed service that is cloned (allocated) on every request, and a `from_fn` middleware
//! boxes its `Next` and its future besides. Here a request costs one boxed future.

use std::any::Any;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};

use super::error::{AppError, ErrorCode};
use super::origin::{self, ALLOW_HEADERS, ALLOW_METHODS, EXPOSE_HEADERS};
use crate::metrics::CodeLabel;
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

    fn call(&mut self, req: Request) -> Self::Future {
        let st = self.st.clone();
        if !origin::origin_allowed(req.headers(), &st.allowed_origins) {
            let resp = AppError::Forbidden("the request's Origin is not allowed").into_response();
            return std::future::ready(Ok(counted(&st, resp))).boxed();
        }
        let origin = req.headers().get(header::ORIGIN).cloned();
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let resp = with_cors(preflight_answer(), origin);
            return std::future::ready(Ok(counted(&st, resp))).boxed();
        }
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
