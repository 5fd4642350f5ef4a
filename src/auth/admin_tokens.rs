//! Admin tokens (contract §4.1): bearer tokens compared in constant time (as digests); with no tokens
//! configured, only a loopback peer whose `Host` is a loopback name. Tokens from the token file
//! rotate without a restart: re-read on `SIGHUP` and when the file changes. Wrong tokens are
//! counted per source address ([`FailedAttempts`]): past the allowance, that address is refused
//! before its token is compared.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::failed_attempts::FailedAttempts;
use crate::config::split_list;

/// The shortest admin token not warned about: 16 bytes of a random alphabet are out of reach of
/// guessing even at the rate [`FailedAttempts`] lets through from many addresses.
pub const ADVISED_TOKEN_BYTES: usize = 16;

/// Why the admin rule refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminDenied {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("no admin tokens are configured: admin answers only loopback requests to localhost")]
    LoopbackOnly,
    /// This address used up its failed attempts: refused before its token is compared.
    #[error(
        "too many failed admin token attempts from this address; retry in {retry_after_secs} s"
    )]
    TooManyFailedAttempts { retry_after_secs: u64 },
}

/// Token digests (so comparison time does not depend on token length or content). Reloadable:
/// tokens rotate without a restart, and open streams are untouched.
pub struct AdminTokens {
    inline: Option<String>,
    file: Option<std::path::PathBuf>,
    digests: std::sync::RwLock<Vec<[u8; 32]>>,
    failed: FailedAttempts,
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
    pub fn load(
        inline: Option<&str>,
        file: Option<&Path>,
        failed: FailedAttempts,
    ) -> Result<AdminTokens, TokenError> {
        let tokens = AdminTokens {
            inline: inline.map(str::to_owned),
            file: file.map(Path::to_path_buf),
            digests: std::sync::RwLock::default(),
            failed,
        };
        tokens.reload()?;
        Ok(tokens)
    }

    /// Reads the tokens again (inline + file). On error the current tokens stay. Tokens shorter
    /// than [`ADVISED_TOKEN_BYTES`] are accepted (refusing one at a rotation would lock the
    /// operator out) and counted in a warning.
    pub fn reload(&self) -> Result<usize, TokenError> {
        let mut tokens: Vec<String> = split_list(self.inline.as_deref())
            .map(str::to_owned)
            .collect();
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
                path: path.display().to_string(),
                source,
            })?;
            tokens.extend(split_list(Some(&text)).map(str::to_owned));
        }
        let short = tokens
            .iter()
            .filter(|t| t.len() < ADVISED_TOKEN_BYTES)
            .count();
        if short > 0 {
            tracing::warn!(
                short_tokens = short,
                advised_bytes = ADVISED_TOKEN_BYTES,
                "admin tokens shorter than advised: a short token can be guessed from many \
                 addresses, even with failed attempts limited per address; use long random ones \
                 (e.g. `openssl rand -hex 32`)"
            );
        }
        let digests: Vec<[u8; 32]> = tokens.iter().map(|t| digest(t.as_bytes())).collect();
        let n = digests.len();
        *self.digests.write().unwrap_or_else(|p| p.into_inner()) = digests;
        Ok(n)
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.digests.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether `presented` is one of the tokens; every token is compared.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let d = digest(presented);
        self.digests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .fold(0u8, |acc, t| acc | t.ct_eq(&d).unwrap_u8())
            == 1
    }

    /// The admin rule for one request. A request with no token is refused without counting as a
    /// failed attempt (there is nothing to guess with); one with a wrong token counts.
    /// `client` is the request's address: the TCP peer's, or the one trusted proxies named
    /// (`FANOUT_TRUSTED_PROXIES`).
    pub fn authorize(&self, headers: &HeaderMap, client: IpAddr) -> Result<(), AdminDenied> {
        if self.is_empty() {
            return if client.is_loopback() && loopback_host(headers) {
                Ok(())
            } else {
                Err(AdminDenied::LoopbackOnly)
            };
        }
        let now = Instant::now();
        self.failed
            .check(client, now)
            .map_err(|wait| AdminDenied::TooManyFailedAttempts {
                retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
            })?;
        // More than one Authorization header is no credential.
        let presented = super::authorization(headers)
            .ok()
            .flatten()
            .and_then(super::bearer)
            .map(str::as_bytes)
            .ok_or(AdminDenied::Unauthorized)?;
        if self.accepts(presented) {
            Ok(())
        } else {
            self.failed.failed(client, now);
            Err(AdminDenied::Unauthorized)
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

/// Reloads the admin tokens on SIGHUP and whenever the token file changes (polled every 2 s).
pub async fn watch(tokens: Arc<AdminTokens>, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let modified =
        |p: Option<&Path>| p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let mut seen = modified(tokens.file());
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let reason = tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangup => "SIGHUP",
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                let now = modified(tokens.file());
                if now == seen { continue; }
                seen = now;
                "token file changed"
            }
        };
        match tokens.reload() {
            Ok(count) => tracing::info!(reason, count, "admin tokens reloaded"),
            Err(error) => {
                tracing::warn!(%error, reason, "admin tokens not reloaded; keeping the current ones")
            }
        }
    }
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
        let t = AdminTokens::load(Some("alpha, beta"), None, FailedAttempts::new(20, 60))
            .expect("load");
        let peer: IpAddr = "10.0.0.1".parse().expect("addr");
        assert!(t
            .authorize(&headers("svc", Some("Bearer beta")), peer)
            .is_ok());
        assert!(matches!(
            t.authorize(&headers("svc", Some("Bearer gamma")), peer),
            Err(AdminDenied::Unauthorized)
        ));
        assert!(matches!(
            t.authorize(&headers("svc", Some("beta")), peer),
            Err(AdminDenied::Unauthorized)
        ));
        assert!(matches!(
            t.authorize(&headers("svc", None), peer),
            Err(AdminDenied::Unauthorized)
        ));
    }

    #[test]
    fn wrong_tokens_use_up_an_address_then_even_the_right_one_is_refused() {
        let t = AdminTokens::load(Some("alpha"), None, FailedAttempts::new(2, 1)).expect("load");
        let peer: IpAddr = "10.0.0.1".parse().expect("addr");
        let other: IpAddr = "10.0.0.2".parse().expect("addr");
        for _ in 0..3 {
            // No token is not a guess: it does not count.
            assert_eq!(
                t.authorize(&headers("svc", None), peer),
                Err(AdminDenied::Unauthorized)
            );
        }
        for _ in 0..2 {
            assert_eq!(
                t.authorize(&headers("svc", Some("Bearer guess")), peer),
                Err(AdminDenied::Unauthorized)
            );
        }
        // One attempt a minute: the next is 60 s away (59 if this thread stalled a second).
        assert!(matches!(
            t.authorize(&headers("svc", Some("Bearer alpha")), peer),
            Err(AdminDenied::TooManyFailedAttempts {
                retry_after_secs: 59..=60
            })
        ));
        assert!(t
            .authorize(&headers("svc", Some("Bearer alpha")), other)
            .is_ok());
    }

    #[test]
    fn tokens_rotate_by_reloading_the_file() {
        let path = std::env::temp_dir().join(format!("mcp-fanout-tokens-{}", std::process::id()));
        std::fs::write(&path, "old-token\n").expect("write");
        let t = AdminTokens::load(Some("inline"), Some(&path), FailedAttempts::new(20, 60))
            .expect("load");
        assert!(t.accepts(b"old-token") && t.accepts(b"inline"));
        std::fs::write(&path, "new-token\n").expect("rewrite");
        assert_eq!(t.reload().expect("reload"), 2);
        assert!(t.accepts(b"new-token") && !t.accepts(b"old-token") && t.accepts(b"inline"));
        std::fs::remove_file(&path).expect("remove");
        assert!(t.reload().is_err(), "a missing file is an error");
        assert!(t.accepts(b"new-token"), "and the current tokens stay");
    }

    #[test]
    fn loopback_only_without_tokens() {
        let t = AdminTokens::load(None, None, FailedAttempts::new(20, 60)).expect("load");
        let lo: IpAddr = "127.0.0.1".parse().expect("addr");
        let remote: IpAddr = "10.0.0.1".parse().expect("addr");
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
