//! Request bodies: content type, and a bounded read: a declared length over the limit is `413`
//! before anything is read, a body that grows past it (chunked) is cut there with `413`, and one
//! that does not arrive whole within the body deadline is `408` (the connection then closes).
//!
//! Bodies read under a memory budget (`POST`/`DELETE /mcp`: `FANOUT_BODY_MEMORY_BYTES`) hold one
//! permit per byte from the moment it is taken (a declared length: before anything is read; a
//! chunked body: as each piece arrives) until the request is handled. Per-request limits alone
//! would let many requests in progress at once — 200 HTTP/2 streams per connection, each sending
//! all but the last byte of its body and holding it until the body deadline — make the replica
//! hold hundreds of megabytes; past the budget a request is refused at once (`503`,
//! `request_bodies_busy`, `Retry-After`) and its connection closes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// How much of a body is read, for how long, and the budget its bytes are held under (if any).
#[derive(Debug, Clone)]
pub struct BodyLimit {
    pub max_bytes: usize,
    pub within: Duration,
    /// One permit per byte held, shared by every body read under it, and how many there are.
    pub memory: Option<(Arc<Semaphore>, usize)>,
}

/// A body read whole, and its share of the memory budget (given back when this drops).
pub struct HeldBody {
    pub bytes: Bytes,
    pub held: Option<OwnedSemaphorePermit>,
}

/// The declared `Content-Length`; `413` when it is over `limit` (nothing is read).
fn check_declared(headers: &HeaderMap, limit: usize) -> Result<Option<usize>, AppError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(AppError::PayloadTooLarge(limit)),
        Some(n) => Ok(usize::try_from(n).ok()),
        None => Ok(None),
    }
}

/// Takes `n` more bytes of the budget into `held`; `503` when they are not free. (The proxy takes
/// the bytes of answers it holds for a rewrite from the same budget.)
pub(crate) fn take(
    memory: Option<&(Arc<Semaphore>, usize)>,
    held: &mut Option<OwnedSemaphorePermit>,
    n: usize,
) -> Result<(), AppError> {
    let Some((memory, max)) = memory else {
        return Ok(());
    };
    if n == 0 {
        return Ok(());
    }
    let busy = || {
        tracing::debug!(
            bytes = n,
            max_bytes = *max,
            "the bodies held hold the whole body memory budget"
        );
        AppError::BodiesBusy(*max)
    };
    let permits = u32::try_from(n).map_err(|_| busy())?;
    let permit = memory
        .clone()
        .try_acquire_many_owned(permits)
        .map_err(|_| busy())?;
    match held {
        Some(h) => h.merge(permit),
        None => *held = Some(permit),
    }
    Ok(())
}

/// Collects `body` (at most `max` bytes), taking each piece's bytes of the budget beyond the
/// `prepaid` ones as it arrives.
async fn collect(
    mut body: Body,
    max: usize,
    memory: Option<&(Arc<Semaphore>, usize)>,
    prepaid: usize,
    mut held: Option<OwnedSemaphorePermit>,
) -> Result<HeldBody, AppError> {
    // The usual body comes in one frame: kept as it is, with no list made for it.
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::debug!(error = %e, "reading a request body failed");
            AppError::InvalidField {
                field: "body",
                reason: "could not be read completely".into(),
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let before = total;
        total += data.len();
        if total > max {
            return Err(AppError::PayloadTooLarge(max));
        }
        take(memory, &mut held, total.max(prepaid) - before.max(prepaid))?;
        match first {
            None => first = Some(data),
            Some(_) => rest.push(data),
        }
    }
    let bytes = match first {
        None => Bytes::new(),
        Some(one) if rest.is_empty() => one,
        Some(one) => {
            let mut all = BytesMut::with_capacity(total);
            all.extend_from_slice(&one);
            for p in rest {
                all.extend_from_slice(&p);
            }
            all.freeze()
        }
    };
    Ok(HeldBody { bytes, held })
}

/// Reads the whole body, refusing more than `limit.max_bytes` bytes (declared or sent), a body
/// that takes longer than `limit.within`, and one whose bytes the memory budget cannot hold.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: BodyLimit,
) -> Result<HeldBody, AppError> {
    let declared = check_declared(headers, limit.max_bytes)?;
    let memory = limit.memory.as_ref();
    // A declared length is taken whole before a byte is read.
    let mut held = None;
    let prepaid = declared.unwrap_or(0);
    take(memory, &mut held, prepaid)?;
    let read = collect(body, limit.max_bytes, memory, prepaid, held);
    tokio::pin!(read);
    // A body that came with its head (the usual small request) is taken without arming the
    // deadline's timer; anything else is read against it.
    let read = match (&mut read).now_or_never() {
        Some(done) => Ok(done),
        None => tokio::time::timeout(limit.within, read).await,
    };
    match read {
        Ok(collected) => collected,
        Err(_) => {
            tracing::debug!(
                within_secs = limit.within.as_secs(),
                "a request body did not arrive in time"
            );
            Err(AppError::BodyTimeout(limit.within))
        }
    }
}
