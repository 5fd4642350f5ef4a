//! The upstream MCP server of proxy mode (`FANOUT_UPSTREAM`): its endpoint, the HTTP client
//! that reaches it, and how its sessions and capabilities are presented to clients. The
//! forwarding itself is the HTTP edge's (`http::proxy`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::forward_client::{self, ForwardClient};
use super::in_flight::InFlight;
use super::relay_watch::RelayWatch;
use crate::per_client::PerClient;
use crate::tls::TrustedCas;

pub struct Upstream {
    /// The era adapter's client (its own handshakes and session ends).
    pub(crate) client: reqwest::Client,
    /// Proxied requests' client (`forward_client`).
    pub(crate) forward: ForwardClient,
    pub(crate) url: reqwest::Url,
    /// `url` as the forwarding client takes it (parsed once).
    pub(crate) uri: axum::http::Uri,
    /// How to reach the upstream on a connection of one's own (plain `http://` over HTTP/1.1
    /// only; `forward_client::Direct`).
    pub(crate) direct: Option<forward_client::Direct>,
    /// Mint an `Mcp-Session-Id` on `initialize` when the upstream issues none.
    pub(crate) mint_session_ids: bool,
    /// Rewrite `initialize` / `server/discover` results to advertise `listChanged`.
    pub(crate) advertise_list_changed: bool,
    /// Bridge 2026-07-28 clients to a 2025-era upstream (`http::era_adapter`).
    pub(crate) bridge_2026_clients: bool,
    /// Add `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto` and `X-Forwarded-Host` to
    /// forwarded requests.
    pub(crate) forwarded_headers: bool,
    /// Whether the upstream speaks 2026-07-28 (learnt on the first adapted request).
    pub(crate) era: EraCache,
    /// The era adapter's upstream sessions, one per caller's credentials.
    pub(crate) adapter_sessions: AdapterSessions,
    /// How long the upstream has for its response head (and for an answer held to rewrite it).
    pub(crate) response_timeout: Duration,
    /// Most bytes of one answer (a JSON body, one event of a stream) held to rewrite it.
    pub(crate) rewrite_max_bytes: usize,
    /// The bound on the upstream connections held (`in_flight`).
    pub(crate) in_flight: InFlight,
    /// The answers relayed as they arrive, held to a budget when their clients stop reading.
    pub(crate) relays: RelayWatch,
    /// Forwarded requests in flight per client (`FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT`).
    pub(crate) per_client: Option<Arc<PerClient>>,
}

/// How the proxy presents the upstream (`FANOUT_MINT_SESSION_IDS`, `FANOUT_ADVERTISE_LIST_CHANGED`,
/// `FANOUT_BRIDGE_2026_CLIENTS`, `FANOUT_BRIDGE_MAX_SESSIONS`, `FANOUT_PROXY_FORWARDED_HEADERS`)
/// and how long and how much it waits for and holds of its answers
/// (`FANOUT_UPSTREAM_TIMEOUT_SECS`, `FANOUT_UPSTREAM_REWRITE_MAX_BYTES`).
#[derive(Debug, Clone, Default)]
pub struct UpstreamOptions {
    pub mint_session_ids: bool,
    pub advertise_list_changed: bool,
    pub bridge_2026_clients: bool,
    /// Most adapter sessions kept (at least one).
    pub bridge_max_sessions: usize,
    /// The request headers (lowercase names) that identify an adapted caller to the upstream.
    pub bridge_identity_headers: Vec<String>,
    pub forwarded_headers: bool,
    pub response_timeout: Duration,
    pub rewrite_max_bytes: usize,
    /// CA certificates trusted for an `https://` upstream besides the Mozilla roots
    /// (`FANOUT_UPSTREAM_CA_FILE`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Offer HTTP/2 to an `https://` upstream (`FANOUT_UPSTREAM_HTTP2`); else HTTP/1.1 only.
    pub http2: bool,
    /// Most requests forwarded at once (`FANOUT_UPSTREAM_MAX_CONNECTIONS`; at least one).
    pub max_connections: usize,
    /// Most requests one client may have in flight (`FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT`).
    pub max_requests_per_client: Option<usize>,
    /// Keep an upstream connection for each HTTP/1.x client connection (`http::kept_upstream`):
    /// only when the bound leaves one for every client connection (its default), since a kept
    /// connection holds its permit while idle.
    pub keep_per_client_connection: bool,
    /// Bytes the relays whose clients stopped reading may hold between them
    /// (`FANOUT_BODY_MEMORY_BYTES`; `relay_watch`).
    pub stalled_relays_budget: usize,
    /// Counts the stalled relays cut (`mcp_fanout_proxy_relays_cut_total`).
    pub relays_cut: prometheus_client::metrics::counter::Counter,
}

/// One upstream session of the era adapter with a 2025-era upstream (made by `http::era_adapter`).
#[derive(Debug)]
pub struct Handshake {
    pub version: String,
    pub session: Option<String>,
    /// The `initialize` result (capabilities, serverInfo, instructions).
    pub result: Value,
}

/// The upstream's protocol era.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Modern,
    Legacy,
}

/// What the proxy knows of its upstream's era (per replica; learnt on the first 2026 request).
#[derive(Debug, Default)]
pub struct EraCache(pub tokio::sync::Mutex<EraKnowledge>);

/// The era once learnt; until then, whether the last probes found the upstream down.
#[derive(Debug, Default)]
pub struct EraKnowledge {
    pub era: Option<Era>,
    /// After a probe that timed out or could not connect: no probe before this instant (the
    /// requests meanwhile go upstream as sent), and the wait after the next such failure.
    pub quiet_until: Option<tokio::time::Instant>,
    pub backoff: std::time::Duration,
}

/// The identity headers of one adapted caller, as it sent them.
pub type Credentials = Vec<(HeaderName, HeaderValue)>;

/// The era adapter's upstream sessions: one per set of caller credentials (so no two principals
/// share an upstream session), at most `max`; the least recently used makes room.
pub struct AdapterSessions {
    max: usize,
    identity_headers: Vec<HeaderName>,
    inner: Mutex<AdapterInner>,
}

#[derive(Default)]
struct AdapterInner {
    tick: u64,
    /// SHA-256 of the credentials → (the slot, when it was last used)
    slots: HashMap<[u8; 32], (Arc<AdapterSlot>, u64)>,
}

/// One caller's upstream session: the credentials it is opened with, and its handshake (made on
/// first use, renewed when the upstream forgets it).
pub struct AdapterSlot {
    pub credentials: Credentials,
    pub handshake: tokio::sync::Mutex<Option<Arc<Handshake>>>,
}

impl AdapterSessions {
    fn new(max: usize, identity_headers: &[String]) -> AdapterSessions {
        AdapterSessions {
            max: max.max(1),
            identity_headers: identity_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            inner: Mutex::default(),
        }
    }

    /// The caller's identity headers (every value, in order).
    pub fn credentials(&self, headers: &HeaderMap) -> Credentials {
        self.identity_headers
            .iter()
            .flat_map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(move |v| (name.clone(), v.clone()))
            })
            .collect()
    }

    /// The slot for `credentials` (made if new), and the slots evicted to make room for it: their
    /// sessions are to be closed upstream.
    pub fn slot(&self, credentials: &Credentials) -> (Arc<AdapterSlot>, Vec<Arc<AdapterSlot>>) {
        let key = credentials_key(credentials);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((slot, used)) = inner.slots.get_mut(&key) {
            *used = tick;
            return (slot.clone(), Vec::new());
        }
        let mut evicted = Vec::new();
        while inner.slots.len() >= self.max {
            let Some(oldest) = inner
                .slots
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((slot, _)) = inner.slots.remove(&oldest) {
                evicted.push(slot);
            }
        }
        let slot = Arc::new(AdapterSlot {
            credentials: credentials.clone(),
            handshake: tokio::sync::Mutex::new(None),
        });
        inner.slots.insert(key, (slot.clone(), tick));
        (slot, evicted)
    }

    /// How many sessions are kept.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slots
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SHA-256 over the length-prefixed names and values (no two credential sets share a key).
fn credentials_key(credentials: &Credentials) -> [u8; 32] {
    let mut h = Sha256::new();
    for (name, value) in credentials {
        for part in [name.as_str().as_bytes(), value.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    h.finalize().into()
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("FANOUT_UPSTREAM is not a valid http(s) URL: {0}")]
    Url(String),
    #[error("cannot build the upstream client: {0}")]
    Client(String),
    #[error("FANOUT_UPSTREAM_CA_FILE: {0}")]
    Ca(#[from] crate::tls::TlsError),
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
        // Both clients trust the same roots: the Mozilla ones plus the operator's CA file.
        let cas = TrustedCas::load(options.ca_file.as_deref())?;
        let mut client = reqwest::Client::builder();
        for cert in cas.extra() {
            let cert = reqwest::Certificate::from_der(cert)
                .map_err(|e| UpstreamConfigError::Client(e.to_string()))?;
            client = client.add_root_certificate(cert);
        }
        if !options.http2 {
            client = client.http1_only();
        }
        let client = client
            .connect_timeout(forward_client::CONNECT_TIMEOUT)
            .pool_idle_timeout(forward_client::POOL_IDLE_TIMEOUT)
            // A redirect is relayed to the client, never followed here: a re-sent POST could
            // repeat a call, and would carry the client's credentials to another origin.
            .redirect(reqwest::redirect::Policy::none())
            // The upstream is reached directly, as nginx's `proxy_pass` does: `HTTP_PROXY` and
            // friends, set for a pod's egress, would otherwise route every call (credentials
            // included) through that proxy unless `NO_PROXY` listed the upstream; and matching
            // them is work on every request.
            .no_proxy()
            .build()
            .map_err(|e| UpstreamConfigError::Client(e.to_string()))?;
        let forward = forward_client::build(cas.client_config()?, options.http2);
        let uri = url
            .as_str()
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| UpstreamConfigError::Url(e.to_string()))?;
        let direct = forward_client::Direct::new(&uri, options.http2)
            .filter(|_| options.keep_per_client_connection);
        Ok(Upstream {
            client,
            forward,
            url,
            uri,
            direct,
            mint_session_ids: options.mint_session_ids,
            advertise_list_changed: options.advertise_list_changed,
            bridge_2026_clients: options.bridge_2026_clients,
            forwarded_headers: options.forwarded_headers,
            era: EraCache::default(),
            adapter_sessions: AdapterSessions::new(
                options.bridge_max_sessions,
                &options.bridge_identity_headers,
            ),
            response_timeout: options.response_timeout,
            rewrite_max_bytes: options.rewrite_max_bytes,
            in_flight: InFlight::new(options.max_connections),
            relays: RelayWatch::new(options.stalled_relays_budget, options.relays_cut),
            per_client: options.max_requests_per_client.map(PerClient::new),
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

    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    pub fn rewrite_max_bytes(&self) -> usize {
        self.rewrite_max_bytes
    }

    pub fn era_cache(&self) -> &EraCache {
        &self.era
    }

    pub fn adapter_sessions(&self) -> &AdapterSessions {
        &self.adapter_sessions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(auth: &str) -> Credentials {
        vec![(
            HeaderName::from_static("authorization"),
            HeaderValue::from_str(auth).expect("a header value"),
        )]
    }

    #[test]
    fn one_slot_per_credentials_least_recently_used_evicted() {
        let b = AdapterSessions::new(2, &["authorization".to_owned(), "cookie".to_owned()]);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer a"));
        headers.insert("x-other", HeaderValue::from_static("ignored"));
        assert_eq!(b.credentials(&headers), creds("Bearer a"));
        let (a1, none) = b.slot(&creds("Bearer a"));
        let (a2, _) = b.slot(&creds("Bearer a"));
        assert!(Arc::ptr_eq(&a1, &a2) && none.is_empty());
        let (bob, _) = b.slot(&creds("Bearer b"));
        assert!(!Arc::ptr_eq(&a1, &bob));
        let (_, _) = b.slot(&creds("Bearer a")); // a is now the most recently used
        let (_, evicted) = b.slot(&creds("Bearer c"));
        assert_eq!(evicted.len(), 1);
        assert!(
            Arc::ptr_eq(&evicted[0], &bob),
            "bob was the least recently used"
        );
        assert_eq!(b.len(), 2);
        let (anonymous, _) = b.slot(&Vec::new());
        assert!(anonymous.credentials.is_empty());
        // A name/value boundary cannot be moved to forge another caller's key.
        assert_ne!(
            credentials_key(&creds("ab")),
            credentials_key(&vec![
                (
                    HeaderName::from_static("authorization"),
                    HeaderValue::from_static("a")
                ),
                (
                    HeaderName::from_static("authorization"),
                    HeaderValue::from_static("b")
                ),
            ])
        );
    }
}

#[cfg(test)]
mod upstream_url_tests {
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
