//! Everything a replica shares between its handlers and tasks.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::auth::admin_tokens::{AdminTokens, TokenError};
use crate::auth::failed_attempts::FailedAttempts;
use crate::auth::SubscriberAuth;
use crate::bridge::ListenState;
use crate::broadcast::{Broadcaster, RingLimits};
use crate::cluster::{Cluster, PgCluster};
use crate::config::{to_usize, ServeConfig, SubscriberAuthMode};
use crate::event::id::random_epoch;
use crate::event::PublishLimits;
use crate::log::memory::{MemoryLimits, MemoryLog};
use crate::log::EventLog;
use crate::metrics::Metrics;
use crate::session::claim_rate::ClaimRate;
use crate::session::client_rate::ClientRate;
use crate::session::memory::MemorySessions;
use crate::session::SessionStore;
use crate::shutdown::Lifecycle;

pub type AppState = Arc<State>;

pub struct State {
    pub config: ServeConfig,
    /// Proxy mode's upstream MCP server.
    pub upstream: Option<crate::mcp::upstream::Upstream>,
    /// This replica in the cluster view (and the database-backed view in Postgres mode).
    pub cluster: Arc<Cluster>,
    pub sessions: Arc<dyn SessionStore>,
    pub subscriber_auth: SubscriberAuth,
    pub log: Arc<dyn EventLog>,
    pub broadcaster: Broadcaster,
    pub metrics: Arc<Metrics>,
    /// The operator console's time series.
    pub series: Arc<crate::stats::series::Series>,
    pub admin_tokens: Arc<AdminTokens>,
    pub lifecycle: Arc<Lifecycle>,
    pub allowed_origins: Vec<String>,
    /// The `Host` names the public endpoints answer (`None`: any).
    pub allowed_hosts: Option<crate::config::AllowedHosts>,
    /// How often one session may be claimed (`FANOUT_SESSION_CLAIMS_PER_MIN`; `None`: no limit).
    pub claim_rate: Option<ClaimRate>,
    /// How many session writes one client may cause (`FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN`;
    /// `None`: no bound).
    pub session_writes: Option<ClientRate>,
    /// One permit per byte of `POST`/`DELETE /mcp` bodies held (`FANOUT_BODY_MEMORY_BYTES`).
    pub body_memory: Arc<tokio::sync::Semaphore>,
    pub started_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Upstream(#[from] crate::mcp::upstream::UpstreamConfigError),
    #[error("admin tokens: {0}")]
    Tokens(#[from] TokenError),
    #[error("FANOUT_HEARTBEAT_SECS ({heartbeat}) must be less than FANOUT_REPLICA_STALE_SECS ({stale}), or replicas drop out of /admin/cluster between heartbeats")]
    HeartbeatNotBelowStale { heartbeat: u64, stale: u64 },
}

/// What differs between the two modes: the event log, the session store and, in Postgres mode,
/// the database-backed cluster view.
struct Stores {
    log: Arc<dyn EventLog>,
    sessions: Arc<dyn SessionStore>,
    cluster: Option<PgCluster>,
}

impl State {
    /// The embedded single-replica mode: an in-memory log bounded by the memory settings, whose
    /// commits feed the broadcaster directly.
    pub fn memory(
        config: ServeConfig,
        auth: SubscriberAuth,
        open_file_limit: u64,
    ) -> Result<AppState, StateError> {
        let limits = RingLimits {
            max_events: to_usize(config.memory_events.min(config.retention_max_events.max(1))),
            max_bytes: to_usize(config.memory_bytes),
        };
        let retention = std::time::Duration::from_secs(config.retention_secs);
        let max_sessions = to_usize(config.max_sessions);
        Self::assemble(config, auth, open_file_limit, 0, limits, |broadcaster| {
            let sink = broadcaster.clone();
            Stores {
                log: Arc::new(MemoryLog::new(
                    random_epoch(),
                    MemoryLimits {
                        max_events: limits.max_events,
                        max_bytes: limits.max_bytes,
                    },
                    Box::new(move |events| sink.push(events)),
                )),
                sessions: Arc::new({
                    let streams = broadcaster.clone();
                    MemorySessions::new(retention, max_sessions)
                        .sparing(move || streams.held_sessions())
                }),
                cluster: None,
            }
        })
    }

    /// The Postgres mode: the ring starts at the log's head; the bridge feeds it.
    pub fn postgres(
        config: ServeConfig,
        auth: SubscriberAuth,
        open_file_limit: u64,
        log: Arc<dyn EventLog>,
        sessions: Arc<dyn SessionStore>,
        cluster: PgCluster,
        head: u64,
    ) -> Result<AppState, StateError> {
        let limits = RingLimits {
            max_events: to_usize(config.memory_events),
            max_bytes: to_usize(config.memory_bytes),
        };
        Self::assemble(config, auth, open_file_limit, head, limits, |_| Stores {
            log,
            sessions,
            cluster: Some(cluster),
        })
    }

    /// The state around a broadcaster whose ring starts at `head`; `stores` gets the broadcaster
    /// (the memory log feeds it directly).
    fn assemble(
        config: ServeConfig,
        subscriber_auth: SubscriberAuth,
        open_file_limit: u64,
        head: u64,
        limits: RingLimits,
        stores: impl FnOnce(&Broadcaster) -> Stores,
    ) -> Result<AppState, StateError> {
        let metrics = Arc::new(Metrics::new());
        let broadcaster = Broadcaster::new(
            head,
            limits,
            config.subscriber_cap(open_file_limit),
            metrics.clone(),
        );
        if let Some(max) = config.max_subscribers_per_client {
            broadcaster.limit_per_client(to_usize(max));
        }
        let Stores {
            log,
            sessions,
            cluster,
        } = stores(&broadcaster);
        let upstream = match &config.upstream {
            Some(url) => Some(crate::mcp::upstream::Upstream::new(
                url,
                crate::mcp::upstream::UpstreamOptions {
                    mint_session_ids: config.mint_session_ids,
                    advertise_list_changed: config.advertise_list_changed,
                    bridge_2026_clients: config.bridge_2026_clients,
                    response_timeout: config.upstream_timeout(),
                    rewrite_max_bytes: config.upstream_rewrite_max_bytes(),
                    bridge_max_sessions: to_usize(config.bridge_max_sessions),
                    bridge_identity_headers: bridge_identity_headers(&config),
                    forwarded_headers: config.proxy_forwarded_headers,
                    stalled_relays_budget: config.body_memory_bytes(),
                    relays_cut: metrics.proxy_relays_cut.clone(),
                    ca_file: config.upstream_ca_file.clone(),
                    http2: config.upstream_http2,
                    max_connections: config.upstream_connection_cap(open_file_limit),
                    max_requests_per_client: config.max_proxy_requests_per_client.map(to_usize),
                    keep_per_client_connection: config.upstream_connection_cap(open_file_limit)
                        >= config.connection_caps(open_file_limit).0,
                },
            )?),
            None => None,
        };
        let admin_tokens = AdminTokens::load(
            config.admin_tokens.as_deref(),
            config.admin_token_file.as_deref(),
            FailedAttempts::new(
                config.admin_failed_attempts,
                config.admin_failed_attempts_per_min,
            ),
        )?;
        let cluster = Arc::new(Cluster {
            replica_id: random_epoch(),
            advertise_addr: config.advertise_addr.clone(),
            public_addr: OnceLock::new(),
            epoch: log.epoch().to_owned(),
            broadcaster: broadcaster.clone(),
            metrics: metrics.clone(),
            listening: Arc::new(ListenState::new(metrics.listen_connected.clone())),
            db: cluster,
        });
        Ok(Arc::new(State {
            allowed_origins: config.allowed_origins(),
            allowed_hosts: config.allowed_hosts(),
            body_memory: Arc::new(tokio::sync::Semaphore::new(config.body_memory_bytes())),
            claim_rate: ClaimRate::new(config.session_claims_per_min),
            session_writes: ClientRate::new(config.session_writes_per_client_per_min),
            config,
            subscriber_auth,
            upstream,
            sessions,
            cluster,
            log,
            broadcaster,
            metrics,
            series: Arc::default(),
            admin_tokens: Arc::new(admin_tokens),
            lifecycle: Arc::default(),
            started_at: SystemTime::now(),
        }))
    }

    pub fn publish_limits(&self) -> PublishLimits {
        PublishLimits {
            max_payload_bytes: to_usize(self.config.max_payload_bytes),
            max_batch: to_usize(self.config.max_batch),
        }
    }
}

/// The request headers that say who an adapted caller is to the upstream (the era adapter keeps one
/// upstream session per set of their values): `Authorization`, `Cookie`, and in header mode the
/// tenant header the gateway sets.
fn bridge_identity_headers(config: &ServeConfig) -> Vec<String> {
    let mut names = vec!["authorization".to_owned(), "cookie".to_owned()];
    if config.subscriber_auth == SubscriberAuthMode::Header {
        names.push(config.tenant_header.to_ascii_lowercase());
    }
    names
}
