//! `POST /admin/publish` (contract §4.1) and `GET /admin/cluster` (contract §4.2).

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::body::{read_body, require_json, BodyLimit};
use super::error::AppError;
use crate::event::input::{parse_publish_body, validate_visible_ascii, MAX_KEY_BYTES};
use crate::event::EventId;
use crate::log::AppendRequest;
use crate::state::AppState;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub async fn publish(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    require_json(&headers)?;
    let limit = BodyLimit {
        max_bytes: st.config.body_limit(),
        within: st.config.body_timeout(),
        // Only holders of an admin token get here (checked before the body is read).
        memory: None,
    };
    let bytes = read_body(&headers, body, limit).await?.bytes;
    let request_key = idempotency_key(&headers)?;
    let req = parse_publish_body(&bytes, st.publish_limits())?;
    if request_key.is_some() && req.events.iter().any(|e| e.key.is_some()) {
        return Err(AppError::InvalidField {
            field: "key",
            reason: "cannot be combined with an Idempotency-Key header; use one or the other"
                .into(),
        });
    }
    if st.lifecycle.is_stopped() {
        return Err(AppError::ShuttingDown);
    }
    let appended = st
        .log
        .append(AppendRequest {
            events: req.events,
            request_key,
        })
        .await
        .map_err(|e| match AppError::from(e) {
            AppError::DatabaseUnavailable => AppError::PublishUnavailable,
            other => other,
        })?;
    st.metrics
        .events_published
        .inc_by(appended.new_events as u64);
    let epoch = st.log.epoch();
    let mut ids = appended
        .seqs
        .iter()
        .map(|&seq| EventId { epoch, seq }.to_string());
    let answer = if req.batch {
        json!({ "ids": ids.collect::<Vec<_>>() })
    } else {
        json!({ "id": ids.next() })
    };
    Ok(Json(answer).into_response())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let invalid = |reason: String| AppError::InvalidField {
        field: "Idempotency-Key",
        reason,
    };
    let s =
        std::str::from_utf8(v.as_bytes()).map_err(|_| invalid("must be visible ASCII".into()))?;
    validate_visible_ascii(s, MAX_KEY_BYTES).map_err(invalid)?;
    Ok(Some(s.to_owned()))
}

/// Every live replica (Postgres mode), or this one (memory mode).
pub async fn cluster(
    State(st): State<AppState>,
) -> Result<Json<crate::cluster::ClusterView>, AppError> {
    match crate::cluster::view(&st.cluster).await {
        Ok(v) => Ok(Json(v)),
        Err(error) => {
            tracing::warn!(%error, "cannot read the cluster view");
            Err(AppError::DatabaseUnavailable)
        }
    }
}
