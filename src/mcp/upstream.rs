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
    /// Add `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto` and `X-Forwarded-Host` to
    /// forwarded requests.
    pub(crate) forwarded_headers: bool,
    /// Whether the upstream speaks 2026-07-28 (learnt on the first bridged request).
    pub(crate) era: EraCache,
}

/// How the proxy presents the upstream (`FANOUT_MINT_SESSION_IDS`, `FANOUT_ADVERTISE_LIST_CHANGED`,
/// `FANOUT_BRIDGE_2026_CLIENTS`, `FANOUT_PROXY_FORWARDED_HEADERS`).
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamOptions {
    pub mint_session_ids: bool,
    pub advertise_list_changed: bool,
    pub bridge_2026_clients: bool,
    pub forwarded_headers: bool,
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

impl Upstream {
    pub fn new(url: &str, options: UpstreamOptions) -> Result<Upstream, UpstreamConfigError> {
        let url = reqwest::Url::parse(url).map_err(|e| UpstreamConfigError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamConfigError::Url(url.to_string()));
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
            forwarded_headers: options.forwarded_headers,
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
