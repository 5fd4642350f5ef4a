//! Admin authorization at the edge: every `/admin/*` request passes the admin rule
//! (`AdminTokens::authorize`) or gets its JSON error.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AppError;
use crate::server::ConnInfo;
use crate::state::AppState;

pub async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(e) = authorize(&st, &req) {
        return e.into_response();
    }
    next.run(req).await
}

/// The admin rule for `req`, applied to its client: the address trusted proxies named
/// (`FANOUT_TRUSTED_PROXIES`, judged at the edge), else the TCP peer's.
pub fn authorize(st: &AppState, req: &Request) -> Result<(), AppError> {
    let Some(conn) = req.extensions().get::<ConnInfo>() else {
        return Err(AppError::Internal);
    };
    st.admin_tokens
        .authorize(req.headers(), conn.client)
        .map_err(AppError::from)
}
