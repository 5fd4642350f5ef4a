//! Admin authorization (SPEC §4.1): bearer tokens compared in constant time; with no tokens
//! configured, only a loopback peer whose `Host` is a loopback name.

use std::net::SocketAddr;
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::AppError;
use crate::config::split_list;
use crate::server::ConnInfo;
use crate::state::AppState;

/// Token digests (so comparison time does not depend on token length or content).
pub struct AdminTokens {
    digests: Vec<[u8; 32]>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl AdminTokens {
    pub fn load(inline: Option<&str>, file: Option<&Path>) -> Result<AdminTokens, TokenError> {
        let mut tokens: Vec<String> = split_list(inline).map(str::to_owned).collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
                path: path.display().to_string(),
                source,
            })?;
            tokens.extend(split_list(Some(&text)).map(str::to_owned));
        }
        Ok(AdminTokens {
            digests: tokens.iter().map(|t| digest(t.as_bytes())).collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether `presented` is one of the tokens; every token is compared.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let d = digest(presented);
        self.digests
            .iter()
            .fold(0u8, |acc, t| acc | t.ct_eq(&d).unwrap_u8())
            == 1
    }

    /// The admin rule for one request.
    pub fn authorize(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<(), AppError> {
        if self.is_empty() {
            return if peer.ip().is_loopback() && loopback_host(headers) {
                Ok(())
            } else {
                Err(AppError::Forbidden(
                    "no admin tokens are configured: admin answers only loopback requests to localhost",
                ))
            };
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or(AppError::Unauthorized)?;
        if self.accepts(presented) {
            Ok(())
        } else {
            Err(AppError::Unauthorized)
        }
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// `Host` is `localhost`, `127.0.0.1` or `[::1]`, with or without a port (no DNS rebinding).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !host.ends_with(']') =>
        {
            name
        }
        _ => host,
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "[::1]"
    )
}

pub async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(conn) = req.extensions().get::<ConnInfo>() else {
        return AppError::Internal.into_response();
    };
    if let Err(e) = st.admin_tokens.authorize(req.headers(), conn.peer) {
        return e.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(host: &'static str, auth: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(a));
        }
        h
    }

    #[test]
    fn tokens() {
        let t = AdminTokens::load(Some("alpha, beta"), None).expect("load");
        let peer: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
        assert!(t
            .authorize(&headers("svc", Some("Bearer beta")), peer)
            .is_ok());
        assert!(matches!(
            t.authorize(&headers("svc", Some("Bearer gamma")), peer),
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            t.authorize(&headers("svc", Some("beta")), peer),
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            t.authorize(&headers("svc", None), peer),
            Err(AppError::Unauthorized)
        ));
    }

    #[test]
    fn loopback_only_without_tokens() {
        let t = AdminTokens::load(None, None).expect("load");
        let lo: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let remote: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
        assert!(t.authorize(&headers("127.0.0.1:8080", None), lo).is_ok());
        assert!(t.authorize(&headers("localhost", None), lo).is_ok());
        assert!(t.authorize(&headers("[::1]:8080", None), lo).is_ok());
        assert!(
            t.authorize(&headers("evil.example:8080", None), lo)
                .is_err(),
            "DNS rebinding"
        );
        assert!(t
            .authorize(&headers("127.0.0.1:8080", None), remote)
            .is_err());
    }
}
