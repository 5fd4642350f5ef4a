//! The one error type of the HTTP edge: every error becomes the JSON shape of contract §4.1.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::admin_tokens::AdminDenied;
use crate::auth::{AuthError, NoSubject};
use crate::event::{InputError, InvalidEventId};
use crate::log::LogError;
use crate::mcp::SUPPORTED_VERSIONS;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("`{field}` {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("{0}")]
    InvalidEventId(#[from] InvalidEventId),
    #[error("Mcp-Session-Id {0}")]
    InvalidSessionId(String),
    #[error("MCP-Protocol-Version {0:?} is not supported (supported: {SUPPORTED_VERSIONS})")]
    UnsupportedProtocolVersion(String),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("too many failed admin token attempts from this address; retry in {0} s")]
    TooManyFailedAttempts(u64),
    #[error("this client holds as many subscribers on this replica as it may (FANOUT_MAX_SUBSCRIBERS_PER_CLIENT); end one first")]
    TooManySubscribers,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("this Mcp-Session-Id is unknown (initialize first)")]
    SessionNotFound,
    #[error("method {0} is not allowed on this path")]
    MethodNotAllowed(String),
    #[error("this endpoint answers with text/event-stream; the Accept header must list it")]
    NotAcceptable,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive within {} s", .0.as_secs())]
    BodyTimeout(std::time::Duration),
    #[error("this replica holds as many bytes of request bodies as it may (FANOUT_BODY_MEMORY_BYTES = {0}); retry")]
    BodiesBusy(usize),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("this idempotency key was used before with a different body")]
    IdempotencyConflict { index: Option<usize> },
    #[error("the database is unavailable; retry later")]
    DatabaseUnavailable,
    /// A publish the database could not take: said so, since a retry is then safe.
    #[error("the database is unavailable; nothing was published, retry later")]
    PublishUnavailable,
    #[error("this replica is shutting down; retry on another")]
    ShuttingDown,
    #[error(
        "this replica cannot follow the event log (its LISTEN bridge failed and is restarting)"
    )]
    BridgeFailed,
    #[error("internal error")]
    Internal,
}

/// Marks an error response with its code, for the `http_errors` metric.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Input(InputError::PayloadTooLarge { .. }) | AppError::PayloadTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            AppError::Input(_)
            | AppError::InvalidField { .. }
            | AppError::InvalidEventId(_)
            | AppError::InvalidSessionId(_)
            | AppError::UnsupportedProtocolVersion(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized | AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::TooManyFailedAttempts(_) | AppError::TooManySubscribers => {
                StatusCode::TOO_MANY_REQUESTS
            }
            AppError::NotFound(_) | AppError::SessionNotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            AppError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::IdempotencyConflict { .. } => StatusCode::CONFLICT,
            AppError::DatabaseUnavailable
            | AppError::PublishUnavailable
            | AppError::ShuttingDown
            | AppError::BridgeFailed
            | AppError::BodiesBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AppError::Input(e) => match e {
                InputError::InvalidJson(_) => "invalid_json",
                InputError::InvalidField { .. } => "invalid_field",
                InputError::UnknownField { .. } => "unknown_field",
                InputError::InvalidMethod { .. } => "invalid_method",
                InputError::NotANotification { .. } => "not_a_notification",
                InputError::InvalidParams { .. } => "invalid_params",
                InputError::EmptyBatch => "empty_batch",
                InputError::BatchTooLarge { .. } => "batch_too_large",
                InputError::PayloadTooLarge { .. } => "payload_too_large",
            },
            AppError::InvalidField { .. } => "invalid_field",
            AppError::InvalidEventId(_) => "invalid_event_id",
            AppError::InvalidSessionId(_) => "invalid_session_id",
            AppError::UnsupportedProtocolVersion(_) => "unsupported_protocol_version",
            AppError::Unauthorized | AppError::Unauthenticated(_) => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::TooManyFailedAttempts(_) => "too_many_failed_attempts",
            AppError::TooManySubscribers => "too_many_subscribers",
            AppError::NotFound(_) => "not_found",
            AppError::SessionNotFound => "session_not_found",
            AppError::MethodNotAllowed(_) => "method_not_allowed",
            AppError::NotAcceptable => "not_acceptable",
            AppError::PayloadTooLarge(_) => "payload_too_large",
            AppError::BodyTimeout(_) => "request_timeout",
            AppError::BodiesBusy(_) => "request_bodies_busy",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::IdempotencyConflict { .. } => "idempotency_conflict",
            AppError::DatabaseUnavailable | AppError::PublishUnavailable => "database_unavailable",
            AppError::ShuttingDown => "shutting_down",
            AppError::BridgeFailed => "bridge_failed",
            AppError::Internal => "internal_error",
        }
    }

    /// The request's body was refused before it was read whole: the connection cannot carry
    /// another request, and closes after the answer.
    pub fn leaves_body_unread(&self) -> bool {
        matches!(
            self,
            AppError::PayloadTooLarge(_) | AppError::BodyTimeout(_) | AppError::BodiesBusy(_)
        )
    }

    fn field(&self) -> Option<&str> {
        match self {
            AppError::Input(e) => e.field(),
            AppError::InvalidField { field, .. } => Some(field),
            AppError::InvalidEventId(_) => Some("Last-Event-ID"),
            AppError::InvalidSessionId(_) => Some("Mcp-Session-Id"),
            AppError::UnsupportedProtocolVersion(_) => Some("MCP-Protocol-Version"),
            _ => None,
        }
    }

    fn index(&self) -> Option<usize> {
        match self {
            AppError::Input(e) => e.index(),
            AppError::IdempotencyConflict { index } => *index,
            _ => None,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let Some(field) = self.field() {
            error["field"] = field.into();
        }
        if let Some(index) = self.index() {
            error["index"] = index.into();
        }
        let status = self.status();
        let mut resp = (status, axum::Json(json!({ "error": error }))).into_response();
        let headers = resp.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="mcp-fanout""#),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let AppError::TooManyFailedAttempts(secs) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.leaves_body_unread() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.extensions_mut().insert(ErrorCode(self.code()));
        resp
    }
}

impl From<NoSubject> for AppError {
    fn from(_: NoSubject) -> AppError {
        AppError::Forbidden("a token without a `sub` claim cannot use a session")
    }
}

impl From<AuthError> for AppError {
    fn from(e: AuthError) -> AppError {
        match e {
            AuthError::Unauthenticated(reason) => AppError::Unauthenticated(reason),
            AuthError::InvalidTenantHeader { .. } => AppError::InvalidField {
                field: "tenant header",
                reason: e.to_string(),
            },
        }
    }
}

impl From<AdminDenied> for AppError {
    fn from(e: AdminDenied) -> AppError {
        match e {
            AdminDenied::Unauthorized => AppError::Unauthorized,
            AdminDenied::LoopbackOnly => AppError::Forbidden(
                "no admin tokens are configured: admin answers only loopback requests to localhost",
            ),
            AdminDenied::TooManyFailedAttempts { retry_after_secs } => {
                AppError::TooManyFailedAttempts(retry_after_secs)
            }
        }
    }
}

impl From<LogError> for AppError {
    fn from(e: LogError) -> AppError {
        match e {
            LogError::Unavailable(source) => {
                tracing::warn!(error = %source, "log unavailable");
                AppError::DatabaseUnavailable
            }
            LogError::IdempotencyConflict { index } => AppError::IdempotencyConflict { index },
            LogError::CursorPruned { .. } | LogError::Internal(_) => {
                tracing::error!(error = %e, "log error");
                AppError::Internal
            }
        }
    }
}
