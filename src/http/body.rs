//! Request bodies: content type and a bounded read (a body over the limit is `413`).

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::AppError;

/// `Content-Type: application/json`, parameters allowed.
pub fn require_json(headers: &HeaderMap) -> Result<(), AppError> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(AppError::UnsupportedMediaType)
    }
}

/// Reads the whole body, refusing more than `limit` bytes (declared or sent).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, AppError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(AppError::PayloadTooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(AppError::PayloadTooLarge(limit)),
        Err(e) => {
            tracing::debug!(error = %e, "reading a request body failed");
            Err(AppError::InvalidField {
                field: "body",
                reason: "could not be read completely".into(),
            })
        }
    }
}
