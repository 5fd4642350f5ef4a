//! Subscriber identity (contract §3.5, `FANOUT_SUBSCRIBER_AUTH`): who is asking on `/mcp` and `/poll`.
//!
//! - `none`: no tenant; a subscriber sees untargeted events and its own session's. The session id
//!   then acts as a bearer secret, and tenant-targeted events reach nobody.
//! - `header`: the tenant comes from a header set by a trusted gateway in front; only safe when
//!   clients cannot reach the replicas except through that gateway.
//! - `jwt`: `Authorization: Bearer <JWT>`, verified; the tenant comes from a claim. The principal
//!   (who owns a session) is the token's issuer, tenant and subject together; a token without
//!   `sub` names no one, so it cannot use a session.

pub mod admin_tokens;
pub mod failed_attempts;
pub mod jwt;

use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName};

use crate::config::{ServeConfig, SubscriberAuthMode};
use crate::event::input::{validate_tenant, MAX_TENANT_BYTES};
use crate::session::Owner;

/// A verified subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub tenant: Option<String>,
    /// Who the credential names (with the tenant, who owns the sessions this subscriber opens).
    pub principal: Principal,
    /// When the credential expires (leeway included): streams end then.
    pub expires_at: Option<SystemTime>,
}

/// Who a credential names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Principal {
    /// No credential (`none` mode; header mode without the header).
    #[default]
    Anonymous,
    /// Header mode: the tenant the gateway vouches for (the identity's tenant) is all there is.
    Tenant,
    /// A verified token: its `iss` and `sub` (the tenant is the identity's).
    Token {
        issuer: Option<String>,
        subject: Option<String>,
    },
}

/// Why a subscriber cannot use a session at all.
#[derive(Debug, thiserror::Error)]
#[error("a token without a `sub` claim cannot use a session")]
pub struct NoSubject;

impl Identity {
    /// Who owns the sessions this subscriber opens: the whole principal (a token's issuer, tenant
    /// and subject). A token without `sub` names no one: it cannot use a session.
    pub fn session_owner(&self) -> Result<Owner, NoSubject> {
        match (&self.principal, &self.tenant) {
            (Principal::Anonymous, _) | (Principal::Tenant, None) => Ok(Owner::anonymous()),
            (Principal::Tenant, Some(t)) => Ok(Owner::tenant(t)),
            (Principal::Token { subject: None, .. }, _) => Err(NoSubject),
            (
                Principal::Token {
                    issuer,
                    subject: Some(sub),
                },
                tenant,
            ) => Ok(Owner::token(issuer.as_deref(), tenant.as_deref(), sub)),
        }
    }
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
                // Named twice: which one the gateway set is anyone's guess.
                let tenant = match one_header(headers, name).map_err(|_| invalid_tenant(name))? {
                    None => None,
                    Some(v) => {
                        let t =
                            std::str::from_utf8(v.as_bytes()).map_err(|_| invalid_tenant(name))?;
                        validate_tenant(t).map_err(|_| invalid_tenant(name))?;
                        Some(t.to_owned())
                    }
                };
                Ok(Identity {
                    principal: if tenant.is_some() {
                        Principal::Tenant
                    } else {
                        Principal::Anonymous
                    },
                    tenant,
                    expires_at: None,
                })
            }
            SubscriberAuth::Jwt(v) => v.verify(headers).await,
        }
    }
}

/// A request naming an identity header (credentials, tenant, session, origin) more than once.
#[derive(Debug, Clone, Copy)]
pub struct RepeatedHeader;

/// The request's one `name` header, if any; an error when it has more than one — a proxy in
/// front, or the upstream, may act on the other one, so one request would say two things about
/// who it is.
pub fn one_header(
    headers: &HeaderMap,
    name: impl axum::http::header::AsHeaderName,
) -> Result<Option<&axum::http::HeaderValue>, RepeatedHeader> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(RepeatedHeader);
    }
    Ok(first)
}

/// The request's one `Authorization` header, as text.
pub fn authorization(headers: &HeaderMap) -> Result<Option<&str>, RepeatedHeader> {
    Ok(one_header(headers, axum::http::header::AUTHORIZATION)?.and_then(|v| v.to_str().ok()))
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
