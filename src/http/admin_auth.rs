//! Admin authorization at the edge: every `/admin/*` request passes the admin rule
//! (`AdminTokens::authorize`) or gets its JSON error.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AppError;
use crate::server::ConnInfo;
use crate::state::AppState;

pub async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(conn) = req.extensions().get::<ConnInfo>() else {
        return AppError::Internal.into_response();
    };
    if let Err(e) = st.admin_tokens.authorize(req.headers(), conn.peer) {
        return AppError::from(e).into_response();
    }
    next.run(req).await
}
