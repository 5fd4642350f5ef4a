//! JWT verification for subscribers: HS256 (`FANOUT_JWT_SECRET`), RS256/ES256 (a PEM public key),
//! or a JWKS (file or URL, refetched when a token names an unknown `kid`, at most once per
//! `FANOUT_JWKS_REFETCH_SECS`; tokens with known keys never wait for a refetch). A header with a
//! `crit` member is refused: no extension is understood here (RFC 7515 §4.1.11). `exp` is required, and
//! `nbf` checked when present, both with the configured leeway; issuer and audience are checked when
//! configured. The time claims (`exp`, `nbf`, `iat`) must be numbers of seconds (fractions allowed)
//! from 1970 to the end of year 9999; a token with one out of that range is refused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::RwLock;

use super::{AuthError, Identity, Principal};
use crate::config::{split_list, ServeConfig};
use crate::event::input::validate_tenant;
use crate::event::json::{parse_json, JsonError, StrictObject};

/// The latest time a token's time claims may name: 9999-12-31T23:59:59Z (RFC 3339's last second).
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("FANOUT_SUBSCRIBER_AUTH=jwt needs exactly one of FANOUT_JWT_SECRET, FANOUT_JWT_PUBLIC_KEY_FILE, FANOUT_JWT_JWKS")]
    KeySource,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the public key in {0} is neither an RSA nor an EC PEM key")]
    Key(String),
    #[error("the JWKS is invalid: {0}")]
    Jwks(String),
    #[error("FANOUT_SUBSCRIBER_AUTH=jwt needs FANOUT_JWT_AUDIENCE: this service's own identifier (e.g. its public MCP URL), so that tokens the same issuer made for other services are refused; FANOUT_JWT_ANY_AUDIENCE=true accepts them")]
    NoAudience,
    #[error("FANOUT_JWT_AUDIENCE and FANOUT_JWT_ANY_AUDIENCE=true contradict each other; set one")]
    AudienceAndAny,
}

enum Keys {
    Static {
        key: DecodingKey,
        algs: Vec<Algorithm>,
    },
    Jwks {
        source: JwksSource,
        /// The keys, and when they were last fetched (or a fetch last tried).
        set: Arc<RwLock<(JwkSet, Instant)>>,
        /// Held by the one refetch in flight; tokens with unknown key ids wait for it.
        refetch: tokio::sync::Mutex<()>,
        /// Least time between two refetches.
        every: Duration,
    },
}

#[derive(Clone)]
enum JwksSource {
    File(PathBuf),
    Url(String),
}

pub struct JwtVerifier {
    keys: Keys,
    validation: Validation,
    tenant_claim: String,
    leeway: Duration,
}

impl JwtVerifier {
    pub async fn from_config(c: &ServeConfig) -> Result<JwtVerifier, JwtConfigError> {
        let audiences: Vec<&str> = split_list(c.jwt_audience.as_deref()).collect();
        match (audiences.is_empty(), c.jwt_any_audience) {
            (true, false) => return Err(JwtConfigError::NoAudience),
            (false, true) => return Err(JwtConfigError::AudienceAndAny),
            (true, true) => tracing::warn!(
                "FANOUT_JWT_ANY_AUDIENCE=true: subscriber tokens are accepted whatever their `aud`, \
                 so a token the same issuer made for another service opens streams here"
            ),
            (false, false) => {}
        }
        let sources = [
            c.jwt_secret.is_some(),
            c.jwt_public_key_file.is_some(),
            c.jwt_jwks.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(JwtConfigError::KeySource);
        }
        let keys = if let Some(secret) = &c.jwt_secret {
            Keys::Static {
                key: DecodingKey::from_secret(secret.as_bytes()),
                algs: vec![Algorithm::HS256],
            }
        } else if let Some(path) = &c.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|source| JwtConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                Keys::Static {
                    key,
                    algs: vec![Algorithm::RS256],
                }
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                Keys::Static {
                    key,
                    algs: vec![Algorithm::ES256],
                }
            } else {
                return Err(JwtConfigError::Key(path.display().to_string()));
            }
        } else {
            let spec = c.jwt_jwks.clone().unwrap_or_default();
            let source = if spec.starts_with("http://") || spec.starts_with("https://") {
                JwksSource::Url(spec)
            } else {
                JwksSource::File(PathBuf::from(spec))
            };
            let set = fetch_jwks(&source).await?;
            Keys::Jwks {
                source,
                set: Arc::new(RwLock::new((set, Instant::now()))),
                refetch: tokio::sync::Mutex::new(()),
                every: Duration::from_secs(c.jwks_refetch_secs.max(1)),
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = match &keys {
            Keys::Static { algs, .. } => algs.clone(),
            Keys::Jwks { .. } => vec![Algorithm::RS256, Algorithm::ES256, Algorithm::HS256],
        };
        // `exp` always; `iss` / `aud` too when configured (a token without them is refused).
        let mut required = vec!["exp"];
        if c.jwt_issuer.is_some() {
            required.push("iss");
        }
        if !audiences.is_empty() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.leeway = c.jwt_leeway_secs;
        validation.validate_nbf = true;
        if let Some(iss) = &c.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        if audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&audiences);
        }
        Ok(JwtVerifier {
            keys,
            validation,
            tenant_claim: c.jwt_tenant_claim.clone(),
            leeway: Duration::from_secs(c.jwt_leeway_secs),
        })
    }

    pub async fn verify(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let token = super::authorization(headers)
            .map_err(|super::RepeatedHeader| {
                AuthError::Unauthenticated("the request names Authorization more than once".into())
            })?
            .and_then(super::bearer)
            .ok_or_else(|| AuthError::Unauthenticated("a bearer token is required".into()))?;
        let token = token.trim();
        check_header(token)?;
        let claims = self.decode(token).await?;
        let exp = numeric_date(&claims, "exp")?.ok_or_else(|| {
            AuthError::Unauthenticated("the token is not valid: the `exp` claim is missing".into())
        })?;
        // (Checked by the decoder too, on whole seconds: up to a second late; here with the
        // fraction.)
        let expires_at = exp.checked_add(self.leeway).unwrap_or(exp);
        if expires_at <= SystemTime::now() {
            return Err(AuthError::Unauthenticated(
                "the token is not valid: it has expired (`exp` is past)".into(),
            ));
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")? {
            // (Checked by the decoder too, on whole seconds; here with the fraction.)
            let latest = SystemTime::now().checked_add(self.leeway);
            if latest.is_some_and(|latest| nbf > latest) {
                return Err(AuthError::Unauthenticated(
                    "the token is not valid yet (`nbf` is in the future)".into(),
                ));
            }
        }
        numeric_date(&claims, "iat")?;
        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(AuthError::Unauthenticated(format!(
                    "the `{}` claim must be a non-empty string",
                    self.tenant_claim
                )))
            }
        };
        // The same tenants as a publish can target (a longer one could never match, and each
        // stream keeps it).
        if let Some(t) = &tenant {
            validate_tenant(t).map_err(|reason| {
                AuthError::Unauthenticated(format!("the `{}` claim {reason}", self.tenant_claim))
            })?;
        }
        let principal = Principal::Token {
            issuer: string_claim(&claims, "iss")?,
            subject: string_claim(&claims, "sub")?,
        };
        Ok(Identity {
            tenant,
            principal,
            expires_at: Some(expires_at),
        })
    }

    async fn decode(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        let invalid = |e: jsonwebtoken::errors::Error| {
            AuthError::Unauthenticated(format!("the token is not valid: {e}"))
        };
        match &self.keys {
            Keys::Static { key, .. } => decode::<StrictObject>(token, key, &self.validation)
                .map(|d| d.claims.0)
                .map_err(invalid),
            Keys::Jwks {
                source,
                set,
                refetch,
                every,
            } => {
                let head = decode_header(token).map_err(invalid)?;
                let kid = head.kid.unwrap_or_default();
                let mut key = find_key(&set.read().await.0, &kid);
                if key.is_none() {
                    // An unknown key id: the issuer may have rotated keys. One refetch at a time,
                    // rate-limited; the set's lock is never held across it, so tokens with known
                    // keys are verified meanwhile. Unknown ones wait for it (it may bring theirs).
                    let _flight = refetch.lock().await;
                    let due = {
                        let current = set.read().await;
                        key = find_key(&current.0, &kid);
                        current.1.elapsed() >= *every
                    };
                    if key.is_none() && due {
                        // Counted from the attempt: an issuer that fails is not asked again and
                        // again.
                        set.write().await.1 = Instant::now();
                        // A task of its own: the keys land even if this request goes away.
                        let (into, source) = (set.clone(), source.clone());
                        let fetch = tokio::spawn(async move {
                            match fetch_jwks(&source).await {
                                Ok(fresh) => *into.write().await = (fresh, Instant::now()),
                                Err(error) => tracing::warn!(%error, "cannot refresh the JWKS"),
                            }
                        });
                        let _ = fetch.await;
                        key = find_key(&set.read().await.0, &kid);
                    }
                }
                let key = key.ok_or_else(|| {
                    AuthError::Unauthenticated("the token's key is unknown".into())
                })?;
                if !self.validation.algorithms.contains(&head.alg) {
                    return Err(AuthError::Unauthenticated(format!(
                        "the token's algorithm {:?} is not accepted",
                        head.alg
                    )));
                }
                // One algorithm per decode: the key's family must match every listed algorithm.
                let mut validation = self.validation.clone();
                validation.algorithms = vec![head.alg];
                decode::<StrictObject>(token, &key, &validation)
                    .map(|d| d.claims.0)
                    .map_err(invalid)
            }
        }
    }
}

/// A token whose header names a member twice is refused, as one whose claims do (those are read by
/// [`StrictObject`] as the decoder deserializes them): a decoder keeps the last of them, a verifier
/// in front of or behind the service may keep the first, and the same token would carry two
/// algorithms or keys, subjects or tenants (a publish body naming a key twice is refused too,
/// `event::json`). So is one with a `crit` member: it names extensions the recipient must
/// understand or refuse the token (RFC 7515 §4.1.11), and none is understood here. The header is a
/// few dozen bytes; the claims are parsed once.
fn check_header(token: &str) -> Result<(), AuthError> {
    let invalid =
        |why: String| AuthError::Unauthenticated(format!("the token is not valid: {why}"));
    let segment = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| invalid("its header is not base64url".into()))?;
    match parse_json(&bytes) {
        Err(JsonError::DuplicateKey { key, .. }) => {
            Err(invalid(format!("its header names {key:?} twice")))
        }
        Ok(Value::Object(header)) if header.contains_key("crit") => Err(invalid(
            "its header's `crit` names extensions this service does not understand".into(),
        )),
        // Anything else wrong with it is the decoder's to say.
        _ => Ok(()),
    }
}

/// A time claim: absent, or a number of seconds since 1970 (a fraction allowed) up to the end of
/// year 9999; anything else refuses the token.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<SystemTime>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let secs = value.as_f64().ok_or_else(|| {
        AuthError::Unauthenticated(format!(
            "the `{name}` claim must be a number of seconds since 1970"
        ))
    })?;
    if !(0.0..=MAX_NUMERIC_DATE).contains(&secs) {
        return Err(AuthError::Unauthenticated(format!(
            "the `{name}` claim is out of range (0 to {MAX_NUMERIC_DATE}, the end of year 9999)"
        )));
    }
    Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .map(Some)
        .ok_or_else(|| {
            AuthError::Unauthenticated(format!("the `{name}` claim is not a representable time"))
        })
}

/// A string claim (`iss`, `sub`): absent or empty is `None`; another type refuses the token.
fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AuthError::Unauthenticated(format!(
            "the `{name}` claim must be a string"
        ))),
    }
}

fn find_key(set: &JwkSet, kid: &str) -> Option<DecodingKey> {
    let jwk = if kid.is_empty() {
        set.keys.first()
    } else {
        set.find(kid)
    }?;
    DecodingKey::from_jwk(jwk).ok()
}

async fn fetch_jwks(source: &JwksSource) -> Result<JwkSet, JwtConfigError> {
    let text = match source {
        JwksSource::File(path) => {
            std::fs::read_to_string(path).map_err(|source| JwtConfigError::Read {
                path: path.display().to_string(),
                source,
            })?
        }
        JwksSource::Url(url) => {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| JwtConfigError::Jwks(e.to_string()))?;
            client
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| JwtConfigError::Jwks(format!("{url}: {e}")))?
                .text()
                .await
                .map_err(|e| JwtConfigError::Jwks(format!("{url}: {e}")))?
        }
    };
    serde_json::from_str(&text).map_err(|e| JwtConfigError::Jwks(e.to_string()))
}
