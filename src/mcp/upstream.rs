//! The upstream MCP server of proxy mode (`FANOUT_UPSTREAM`): its endpoint, the HTTP client
//! that reaches it, and how its sessions and capabilities are presented to clients. The
//! forwarding itself is the HTTP edge's (`http::proxy`).

use std::time::Duration;

pub struct Upstream {
    pub(crate) client: reqwest::Client,
    pub(crate) url: reqwest::Url,
    /// Mint an `Mcp-Session-Id` on `initialize` when the upstream issues none.
    pub(crate) mint_session_ids: bool,
    /// Rewrite `initialize` / `server/discover` results to advertise `listChanged`.
    pub(crate) advertise_list_changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("FANOUT_UPSTREAM is not a valid http(s) URL: {0}")]
    Url(String),
    #[error("cannot build the upstream client: {0}")]
    Client(String),
}

impl Upstream {
    pub fn new(
        url: &str,
        mint_session_ids: bool,
        advertise_list_changed: bool,
    ) -> Result<Upstream, UpstreamConfigError> {
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
            mint_session_ids,
            advertise_list_changed,
        })
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }
}
