//! Subscriber identity (SPEC §3.5, `FANOUT_SUBSCRIBER_AUTH`): who is asking on `/mcp` and `/poll`.
//!
//! - `none`: no tenant; a subscriber sees untargeted events and its own session's. The session id
//!   then acts as a bearer secret, and tenant-targeted events reach nobody.
//! - `header`: the tenant comes from a header set by a trusted gateway in front; only safe when
//!   clients cannot reach the replicas except through that gateway.
//! - `jwt`: `Authorization: Bearer <JWT>`, verified; the tenant comes from a claim, the principal
//!   (who owns a session) from `sub`.

pub mod admin_tokens;
pub mod jwt;

use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName};

use crate::config::{ServeConfig, SubscriberAuthMode};
use crate::event::input::MAX_TENANT_BYTES;

/// A verified subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub tenant: Option<String>,
    /// Who owns the sessions this subscriber opens (JWT `sub`; the tenant in header mode).
    pub principal: Option<String>,
    /// When the credential expires (leeway included): streams end then.
    pub expires_at: Option<SystemTime>,
}

/// Why a subscriber's request was not identified; the HTTP edge maps it to its answer.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential, or not a valid one (`401`).
    #[error("{0}")]
    Unauthenticated(String),
    /// The trusted gateway's tenant header is malformed (`400`).
    #[error("{header} must be 1 to {MAX_TENANT_BYTES} bytes of text without control characters")]
    InvalidTenantHeader { header: String },
}

pub enum SubscriberAuth {
    None,
    Header(HeaderName),
    Jwt(Box<jwt::JwtVerifier>),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("FANOUT_TENANT_HEADER is not a valid header name")]
    HeaderName,
    #[error(transparent)]
    Jwt(#[from] jwt::JwtConfigError),
}

impl SubscriberAuth {
    pub async fn from_config(c: &ServeConfig) -> Result<SubscriberAuth, AuthConfigError> {
        Ok(match c.subscriber_auth {
            SubscriberAuthMode::None => SubscriberAuth::None,
            SubscriberAuthMode::Header => SubscriberAuth::Header(
                HeaderName::from_bytes(c.tenant_header.as_bytes())
                    .map_err(|_| AuthConfigError::HeaderName)?,
            ),
            SubscriberAuthMode::Jwt => {
                SubscriberAuth::Jwt(Box::new(jwt::JwtVerifier::from_config(c).await?))
            }
        })
    }

    /// Authenticates one subscriber request.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        match self {
            SubscriberAuth::None => Ok(Identity::default()),
            SubscriberAuth::Header(name) => {
                let tenant = match headers.get(name) {
                    None => None,
                    Some(v) => {
                        let t =
                            std::str::from_utf8(v.as_bytes()).map_err(|_| invalid_tenant(name))?;
                        if t.is_empty()
                            || t.len() > MAX_TENANT_BYTES
                            || t.chars().any(char::is_control)
                        {
                            return Err(invalid_tenant(name));
                        }
                        Some(t.to_owned())
                    }
                };
                Ok(Identity {
                    principal: tenant.clone(),
                    tenant,
                    expires_at: None,
                })
            }
            SubscriberAuth::Jwt(v) => v.verify(headers).await,
        }
    }
}

/// The credentials of an `Authorization: Bearer …` value (the scheme is case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn invalid_tenant(name: &HeaderName) -> AuthError {
    AuthError::InvalidTenantHeader {
        header: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("abc"), None);
    }
}
