//! The upstream MCP server of proxy mode (`FANOUT_UPSTREAM`): its endpoint, the HTTP client
//! that reaches it, and how its sessions and capabilities are presented to clients. The
//! forwarding itself is the HTTP edge's (`http::proxy`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub struct Upstream {
    pub(crate) client: reqwest::Client,
    pub(crate) url: reqwest::Url,
    /// Mint an `Mcp-Session-Id` on `initialize` when the upstream issues none.
    pub(crate) mint_session_ids: bool,
    /// Rewrite `initialize` / `server/discover` results to advertise `listChanged`.
    pub(crate) advertise_list_changed: bool,
    /// Bridge 2026-07-28 clients to a 2025-era upstream (`http::era_bridge`).
    pub(crate) bridge_2026_clients: bool,
    /// Whether the upstream speaks 2026-07-28 (learnt on the first bridged request).
    pub(crate) era: EraCache,
}

/// How the proxy presents the upstream (`FANOUT_MINT_SESSION_IDS`, `FANOUT_ADVERTISE_LIST_CHANGED`,
/// `FANOUT_BRIDGE_2026_CLIENTS`).
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamOptions {
    pub mint_session_ids: bool,
    pub advertise_list_changed: bool,
    pub bridge_2026_clients: bool,
}

/// The proxy's own session with a 2025-era upstream (made by `http::era_bridge`).
#[derive(Debug)]
pub struct Handshake {
    pub version: String,
    pub session: Option<String>,
    /// The `initialize` result (capabilities, serverInfo, instructions).
    pub result: Value,
}

/// The upstream's protocol era.
#[derive(Debug, Clone)]
pub enum Era {
    Modern,
    Legacy(Arc<Handshake>),
}

/// What the proxy knows of its upstream's era (per replica; learnt on the first 2026 request).
#[derive(Debug, Default)]
pub struct EraCache(pub tokio::sync::Mutex<Option<Era>>);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("FANOUT_UPSTREAM is not a valid http(s) URL: {0}")]
    Url(String),
    #[error("cannot build the upstream client: {0}")]
    Client(String),
}

/// The one path the proxy serves and forwards (`/mcp`): where a request goes upstream when
/// `FANOUT_UPSTREAM` names only the server.
pub const PROXIED_PATH: &str = "/mcp";

/// Whether the URL as written has a path (`http://h:8000/` and `http://h:8000/mcp` do;
/// `http://h:8000` and `http://h:8000?x` do not), as nginx's `proxy_pass` reads it.
fn written_with_path(raw: &str) -> bool {
    let rest = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    rest.find(['/', '?', '#'])
        .is_some_and(|i| rest[i..].starts_with('/'))
}

impl Upstream {
    /// `url` with a path is where every forwarded request goes; without one (a base URL), a
    /// request goes to its own path on that server, as nginx's `proxy_pass` without a URI.
    pub fn new(raw: &str, options: UpstreamOptions) -> Result<Upstream, UpstreamConfigError> {
        let mut url =
            reqwest::Url::parse(raw).map_err(|e| UpstreamConfigError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamConfigError::Url(url.to_string()));
        }
        if !written_with_path(raw) {
            // The proxy forwards only requests to `PROXIED_PATH`, so their own path is that one.
            url.set_path(PROXIED_PATH);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| UpstreamConfigError::Client(e.to_string()))?;
        Ok(Upstream {
            client,
            url,
            mint_session_ids: options.mint_session_ids,
            advertise_list_changed: options.advertise_list_changed,
            bridge_2026_clients: options.bridge_2026_clients,
            era: EraCache::default(),
        })
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn advertises_list_changed(&self) -> bool {
        self.advertise_list_changed
    }

    pub fn bridges_2026_clients(&self) -> bool {
        self.bridge_2026_clients
    }

    pub fn era_cache(&self) -> &EraCache {
        &self.era
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(raw: &str) -> String {
        match Upstream::new(raw, UpstreamOptions::default()) {
            Ok(up) => up.url().to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn a_base_url_forwards_to_the_requests_own_path() {
        assert_eq!(target("http://127.0.0.1:8000"), "http://127.0.0.1:8000/mcp");
        assert_eq!(target("https://mcp.example"), "https://mcp.example/mcp");
        assert_eq!(target("http://u:p@h:1?x=1"), "http://u:p@h:1/mcp?x=1");
    }

    #[test]
    fn a_written_path_is_kept_as_it_is() {
        assert_eq!(
            target("http://127.0.0.1:8000/mcp"),
            "http://127.0.0.1:8000/mcp"
        );
        assert_eq!(target("http://127.0.0.1:8000/"), "http://127.0.0.1:8000/");
        assert_eq!(target("http://h/api/v1/mcp"), "http://h/api/v1/mcp");
        assert!(target("ftp://h").starts_with("error: "));
    }
}
