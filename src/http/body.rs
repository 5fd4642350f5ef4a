//! Request bodies: content type, and a bounded read: a declared length over the limit is `413`
//! before anything is read, a body that grows past it (chunked) is cut there with `413`, and one
//! that does not arrive whole within the body deadline is `408` (the connection then closes).

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use futures::FutureExt;
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

/// How much of a body is read, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max_bytes: usize,
    pub within: Duration,
}

/// `413` when the declared `Content-Length` is over `limit` (nothing is read).
fn check_declared(headers: &HeaderMap, limit: usize) -> Result<(), AppError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(AppError::PayloadTooLarge(limit));
    }
    Ok(())
}

/// Reads the whole body, refusing more than `limit.max_bytes` bytes (declared or sent) and a
/// body that takes longer than `limit.within`.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: BodyLimit,
) -> Result<Bytes, AppError> {
    check_declared(headers, limit.max_bytes)?;
    let read = Limited::new(body, limit.max_bytes).collect();
    tokio::pin!(read);
    // A body that came with its head (the usual small request) is taken without arming the
    // deadline's timer; anything else is read against it.
    let read = match (&mut read).now_or_never() {
        Some(done) => Ok(done),
        None => tokio::time::timeout(limit.within, read).await,
    };
    match read {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(AppError::PayloadTooLarge(limit.max_bytes)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading a request body failed");
            Err(AppError::InvalidField {
                field: "body",
                reason: "could not be read completely".into(),
            })
        }
        Err(_) => {
            tracing::debug!(
                within_secs = limit.within.as_secs(),
                "a request body did not arrive in time"
            );
            Err(AppError::BodyTimeout(limit.within))
        }
    }
}
