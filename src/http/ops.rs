//! Probes and metrics (contract §5).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::AppError;
use crate::state::AppState;

/// The process is alive.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `200` once started and until shutdown begins, except while the LISTEN bridge is failing (it
/// restarts); a database outage does not unready.
pub async fn readyz(State(st): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    if st.lifecycle.is_draining() {
        return Err(AppError::ShuttingDown);
    }
    if st.lifecycle.is_bridge_failed() {
        return Err(AppError::BridgeFailed);
    }
    if !st.lifecycle.is_ready() {
        return Err(AppError::DatabaseUnavailable);
    }
    Ok(Json(json!({ "status": "ready" })))
}

pub async fn metrics(State(st): State<AppState>) -> Result<Response, AppError> {
    let budget = st.config.body_memory_bytes();
    let held = budget.saturating_sub(st.body_memory.available_permits());
    st.metrics
        .body_memory_held
        .set(i64::try_from(held).unwrap_or(i64::MAX));
    let text = st.metrics.encode().map_err(|_| AppError::Internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}
