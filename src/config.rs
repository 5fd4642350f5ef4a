//! Command line and environment configuration (contract §2). Every setting is a flag with an env var.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default number of open files kept free for the process itself when deriving the subscriber cap.
const RESERVED_FILES: u64 = 512;

/// Open files kept for the process itself when deriving the connection cap.
pub const RESERVED_CONN_FILES: u64 = 128;

/// Connections the admin listener (probes, metrics, publish) accepts, when it is separate.
pub const ADMIN_CONNECTIONS: u64 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "mcp-fanout",
    version,
    about = "Fans MCP server notifications out to every SSE subscriber on every replica",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of `serve`, the default subcommand.
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve(Box<ServeConfig>),
    /// Apply the database migrations and exit (`--print-sql` prints them for a DBA instead).
    Migrate(MigrateArgs),
    /// Publish one notification through a running service's admin endpoint.
    Publish(crate::cli::publish::PublishArgs),
    /// Subscribe to a running service's SSE stream and print each event as it arrives.
    Subscribe(crate::cli::subscribe::SubscribeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubscriberAuthMode {
    /// No tenant; the session id is the only identity.
    None,
    /// The tenant comes from a header set by a trusted gateway.
    Header,
    /// `Authorization: Bearer <JWT>`, verified.
    Jwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateMode {
    Auto,
    Skip,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Public listener (subscribers). Port 0 picks a free port; the bound address is logged.
    #[arg(long, env = "FANOUT_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// Separate listener for admin, metrics and probes. Unset: they share the public listener.
    #[arg(long, env = "FANOUT_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Postgres URL for the pool. Unset: single-replica in-memory mode.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Direct Postgres URL for the LISTEN connection (when DATABASE_URL goes through PgBouncer).
    #[arg(long, env = "FANOUT_LISTEN_DATABASE_URL", hide_env_values = true)]
    pub listen_database_url: Option<String>,

    /// Schema holding every database object; the NOTIFY channel derives from it.
    #[arg(long, env = "FANOUT_SCHEMA", default_value = "mcp_fanout", value_parser = parse_schema)]
    pub schema: String,

    /// Apply migrations at start (`auto`) or leave them to a DBA (`skip`).
    #[arg(long, env = "FANOUT_MIGRATE", value_enum, default_value = "auto")]
    pub migrate: MigrateMode,

    /// Connect, pool-wait and statement timeout, in milliseconds.
    #[arg(long, env = "FANOUT_DB_TIMEOUT_MS", default_value_t = 5000)]
    pub db_timeout_ms: u64,

    /// PEM file of CA certificates trusted for Postgres TLS (besides the Mozilla roots).
    #[arg(long, env = "FANOUT_DB_CA_FILE")]
    pub db_ca_file: Option<PathBuf>,

    /// Connections in the publish/read pool.
    #[arg(long, env = "FANOUT_DB_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub db_pool_size: u64,

    /// How often retention runs.
    #[arg(long, env = "FANOUT_RETENTION_INTERVAL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_interval_secs: u64,

    /// Comma-separated bearer tokens for /admin/*. None (and no file): admin answers loopback only.
    #[arg(long, env = "FANOUT_ADMIN_TOKENS", hide_env_values = true)]
    pub admin_tokens: Option<String>,

    /// File holding admin tokens (comma- or newline-separated).
    #[arg(long, env = "FANOUT_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Wrong admin tokens one address may present before it is limited to
    /// `FANOUT_ADMIN_FAILED_ATTEMPTS_PER_MIN`; a limited address is refused (429) before its token
    /// is compared, the right one included.
    #[arg(long, env = "FANOUT_ADMIN_FAILED_ATTEMPTS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_failed_attempts: u32,

    /// Wrong admin tokens a minute one address may present once its `FANOUT_ADMIN_FAILED_ATTEMPTS`
    /// are used up (the allowance refills at this rate).
    #[arg(long, env = "FANOUT_ADMIN_FAILED_ATTEMPTS_PER_MIN", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_failed_attempts_per_min: u32,

    /// How often one session may be claimed by a new stream, per minute, once its burst of 10 is
    /// used (each claim is a database write and a NOTIFY every replica reads); a stream past it is
    /// shed with `retry:`. `0`: no limit.
    #[arg(long, env = "FANOUT_SESSION_CLAIMS_PER_MIN", default_value_t = 60)]
    pub session_claims_per_min: u32,

    /// Most session writes one client (its address, as `FANOUT_TRUSTED_PROXIES` judges it) may
    /// cause a minute, as many at once: streams that claim a session and, in proxy mode,
    /// `initialize` requests that record one. Past it a stream is shed with `retry:` and an
    /// `initialize` answered `429`, before the database is written. Unset: no bound per client.
    #[arg(long, env = "FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN", value_parser = clap::value_parser!(u32).range(1..))]
    pub session_writes_per_client_per_min: Option<u32>,

    /// Recent events kept in memory per replica (in memory mode: the whole log).
    #[arg(long, env = "FANOUT_MEMORY_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_events: u64,

    /// Most bytes of recent events kept in memory per replica (in memory mode: the whole log).
    #[arg(long, env = "FANOUT_MEMORY_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_bytes: u64,

    /// A subscriber whose socket accepts nothing for this long is aborted.
    #[arg(long, env = "FANOUT_WRITE_STALL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_stall_secs: u64,

    /// Pacing, not a cut: the kernel queues at most about this many bytes a subscriber has not
    /// been sent yet; past it the server waits for the client to read (the write-stall deadline
    /// and `FANOUT_MAX_LAG_SECS` decide who is too slow).
    #[arg(long, env = "FANOUT_MAX_LAG_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_lag_bytes: u64,

    /// Most sessions remembered. Memory mode: past it a tenth is forgotten at once. Postgres mode
    /// (across the deployment): each retention pass forgets the rows past it. Fair share: the
    /// sessions of the principal holding the most go first, least recently used first.
    #[arg(long, env = "FANOUT_MAX_SESSIONS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_sessions: u64,

    /// Most concurrent subscribers on this replica. Default: the open-file limit minus 512.
    #[arg(long, env = "FANOUT_MAX_SUBSCRIBERS")]
    pub max_subscribers: Option<u64>,

    /// Most of this replica's subscribers one client may hold (its address: an IPv4 address or an
    /// IPv6 /64; behind `FANOUT_TRUSTED_PROXIES`, the client they name). Unset: no bound per client.
    #[arg(long, env = "FANOUT_MAX_SUBSCRIBERS_PER_CLIENT", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_subscribers_per_client: Option<u64>,

    /// A subscriber that stays behind the head this long is ended cleanly (it resumes from the log).
    #[arg(long, env = "FANOUT_MAX_LAG_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_lag_secs: u64,

    /// On SIGTERM: how long streams keep flowing while the load balancer stops routing.
    #[arg(long, env = "FANOUT_DRAIN_SECS", default_value_t = 5)]
    pub drain_secs: u64,

    /// On SIGTERM: the hard limit for exiting, counted from the signal.
    #[arg(long, env = "FANOUT_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,

    /// SSE keep-alive comment interval.
    #[arg(long, env = "FANOUT_KEEPALIVE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_secs: u64,

    /// The `retry:` hint (ms) sent to SSE clients; jittered to [R, 2R] on drains and sheds.
    #[arg(long, env = "FANOUT_RETRY_MS", default_value_t = 2000)]
    pub retry_ms: u64,

    /// Coalescing window (ms) of list_changed notifications; 0 = off (see docs/configuration.md).
    #[arg(long, env = "FANOUT_COALESCE_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub coalesce_ms: u64,

    /// Max life of one GET stream, jittered, for load-balancer rebalancing (0 = unlimited).
    #[arg(long, env = "FANOUT_MAX_STREAM_SECS", default_value_t = 0)]
    pub max_stream_secs: u64,

    /// How long the log keeps events.
    #[arg(long, env = "FANOUT_RETENTION_SECS", default_value_t = 86_400)]
    pub retention_secs: u64,

    /// How many events the log keeps.
    #[arg(long, env = "FANOUT_RETENTION_MAX_EVENTS", default_value_t = 1_000_000)]
    pub retention_max_events: u64,

    /// Largest accepted `params` of one event, measured as compact JSON.
    #[arg(long, env = "FANOUT_MAX_PAYLOAD_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(2..))]
    pub max_payload_bytes: u64,

    /// Most events in one publish request.
    #[arg(long, env = "FANOUT_MAX_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch: u64,

    /// Largest request body. Default: enough for a full batch of maximal events.
    #[arg(long, env = "FANOUT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,

    /// Largest `POST /mcp` body in standalone mode (JSON-RPC requests such as
    /// `subscriptions/listen`).
    #[arg(long, env = "FANOUT_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_request_bytes: u64,

    /// Proxy mode: largest `POST`/`DELETE /mcp` body forwarded to the upstream.
    #[arg(long, env = "FANOUT_MAX_PROXY_REQUEST_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_proxy_request_bytes: u64,

    /// Most bytes of `POST`/`DELETE /mcp` bodies the replica holds at once, over every request
    /// being read or handled (at least one body of the largest allowed size); past it a request
    /// is refused at once with `503` and `Retry-After` before its body is read.
    #[arg(long, env = "FANOUT_BODY_MEMORY_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_memory_bytes: u64,

    /// A new connection that has not started a request within this many seconds is closed.
    #[arg(long, env = "FANOUT_FIRST_REQUEST_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub first_request_secs: u64,

    /// A connection with no request in progress for this many seconds (between requests) is
    /// closed.
    #[arg(long, env = "FANOUT_IDLE_SECS", default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_secs: u64,

    /// A request body must arrive whole within this many seconds of the handler starting to
    /// read it (else `408`, and the connection closes).
    #[arg(long, env = "FANOUT_BODY_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,

    /// Most streams (requests in progress) one HTTP/2 connection may have open at once, as
    /// advertised in its `SETTINGS_MAX_CONCURRENT_STREAMS`; a stream past it is refused
    /// (`REFUSED_STREAM`, which clients retry). Each stream is bounded by the caps of what it
    /// does (subscribers, upstream connections); this bounds what one connection holds.
    #[arg(long, env = "FANOUT_HTTP2_MAX_STREAMS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub http2_max_streams: u32,

    /// Most open connections on the public listener; at it, a new one takes the place of the one
    /// idle the longest, or waits in the kernel's listen backlog while every connection has a
    /// request in progress. Default: derived from the open-file limit (see
    /// docs/configuration.md).
    #[arg(long, env = "FANOUT_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Most connections one client (its address: an IPv4 address or an IPv6 /64) may hold open on
    /// the public listener; peers in `FANOUT_TRUSTED_PROXIES` are not bounded. Unset: no bound.
    #[arg(long, env = "FANOUT_MAX_CONNECTIONS_PER_CLIENT", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_client: Option<u64>,

    /// Comma-separated browser origins allowed (e.g. `https://app.example.com`). Unset: only
    /// requests with no `Origin`, or a same-origin one.
    #[arg(long, env = "FANOUT_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,

    /// Comma-separated `Host` names the public endpoints (`/mcp`, `/poll`) answer besides IP
    /// addresses (`name` for any port, or `name:port`; `*` or unset: any). Against DNS rebinding.
    #[arg(long, env = "FANOUT_ALLOWED_HOSTS")]
    pub allowed_hosts: Option<String>,

    /// Comma-separated addresses and networks (CIDR) of the proxies in front whose forwarded
    /// headers are believed (`X-Forwarded-For`/`-Proto`/`-Host`, `Forwarded`), or `none`; any other
    /// peer's are removed. Unset: every peer's are believed (see docs/configuration.md).
    #[arg(long, env = "FANOUT_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<crate::trusted_proxies::TrustedProxies>,

    /// The header in which the proxies of FANOUT_TRUSTED_PROXIES name the client:
    /// `x-forwarded-for`, `forwarded` (RFC 7239 `for=`) or `x-real-ip`.
    #[arg(
        long,
        env = "FANOUT_CLIENT_ADDRESS_HEADER",
        value_enum,
        default_value = "x-forwarded-for"
    )]
    pub client_address_header: crate::trusted_proxies::ClientAddressHeader,

    /// How subscribers are identified: `none`, `header` (trusted gateway) or `jwt`.
    #[arg(
        long,
        env = "FANOUT_SUBSCRIBER_AUTH",
        value_enum,
        default_value = "none"
    )]
    pub subscriber_auth: SubscriberAuthMode,

    /// Header carrying the tenant in `header` mode.
    #[arg(long, env = "FANOUT_TENANT_HEADER", default_value = "x-fanout-tenant")]
    pub tenant_header: String,

    /// HS256 secret for subscriber JWTs.
    #[arg(long, env = "FANOUT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA → RS256, EC P-256 → ES256) for subscriber JWTs.
    #[arg(long, env = "FANOUT_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// JWKS for subscriber JWTs: a file path or an http(s) URL.
    #[arg(long, env = "FANOUT_JWT_JWKS")]
    pub jwt_jwks: Option<String>,

    /// Required `iss` of subscriber JWTs.
    #[arg(long, env = "FANOUT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of subscriber JWTs (comma-separated: any of them). Required in `jwt` mode
    /// unless `FANOUT_JWT_ANY_AUDIENCE=true`.
    #[arg(long, env = "FANOUT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Accept subscriber JWTs whatever their `aud` (instead of setting `FANOUT_JWT_AUDIENCE`).
    #[arg(long, env = "FANOUT_JWT_ANY_AUDIENCE", default_value_t = false, action = clap::ArgAction::Set)]
    pub jwt_any_audience: bool,

    /// Claim holding the subscriber's tenant.
    #[arg(long, env = "FANOUT_JWT_TENANT_CLAIM", default_value = "tenant")]
    pub jwt_tenant_claim: String,

    /// Clock leeway for `exp`/`nbf`; a stream ends this long after its token expires.
    #[arg(long, env = "FANOUT_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,

    /// With a JWKS URL or file: least time between two refetches a token with an unknown `kid`
    /// may trigger.
    #[arg(long, env = "FANOUT_JWKS_REFETCH_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwks_refetch_secs: u64,

    /// Address other replicas and operators should use for this one (shown by /admin/cluster).
    /// Default: the bound public address. In Kubernetes: `$(POD_IP):8080`.
    #[arg(long, env = "FANOUT_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// A replica not heard from for this long is dropped from /admin/cluster.
    #[arg(long, env = "FANOUT_REPLICA_STALE_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..))]
    pub replica_stale_secs: u64,

    /// How often a replica writes its row of /admin/cluster (its LISTEN state is written at once
    /// when it changes). Must be less than `FANOUT_REPLICA_STALE_SECS`.
    #[arg(long, env = "FANOUT_HEARTBEAT_SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_secs: u64,

    /// Proxy mode: the upstream MCP server's endpoint URL (e.g. `http://127.0.0.1:3000/mcp`), or
    /// its base URL with no path (`http://127.0.0.1:3000`: requests keep their own path, `/mcp`).
    /// GET streams and `subscriptions/listen` are served here; everything else is forwarded.
    #[arg(long, env = "FANOUT_UPSTREAM")]
    pub upstream: Option<String>,

    /// Proxy mode: how many threads serve the public listener's connections, each connection on
    /// one of them from accept to close (`server::workers`). Event streams handed off after their
    /// head, the fan-out and the admin listener run on the main runtime's threads (one per core,
    /// `TOKIO_WORKER_THREADS`) whatever this is. One keeps a proxied request's work on one core:
    /// ~16 % less CPU per request than the shared scheduler at a light load (bench/notes.md); raise
    /// it toward the core count when proxied requests alone keep a core busy, or for HTTP/2
    /// subscribers (an HTTP/2 connection's writes stay on its worker).
    #[arg(long, env = "FANOUT_CONNECTION_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connection_workers: u32,

    /// Proxy mode, for an `https://` upstream: PEM CA certificates trusted for its certificate,
    /// besides the Mozilla roots (a private CA, a mesh's own). Read once, at start.
    #[arg(long, env = "FANOUT_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Proxy mode, for an `https://` upstream: offer HTTP/2 (ALPN `h2`) as well as HTTP/1.1.
    /// Off (the default), requests go over HTTP/1.1, one connection per request in flight, as
    /// nginx's `proxy_pass` does; on, they share one HTTP/2 connection and at most the upstream's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` run at once — more wait for a stream, behind long calls.
    #[arg(long, env = "FANOUT_UPSTREAM_HTTP2", default_value_t = false, action = clap::ArgAction::Set)]
    pub upstream_http2: bool,

    /// Proxy mode: most requests forwarded upstream at once (each holds an upstream connection
    /// until its answer is relayed); past it a request is answered `503` with a JSON-RPC error at
    /// once. Default: the public connection cap, whose share of the open-file limit is kept for
    /// upstream connections — one HTTP/2 client connection may otherwise carry up to 200.
    #[arg(long, env = "FANOUT_UPSTREAM_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_max_connections: Option<u64>,

    /// Proxy mode: most forwarded requests one client (its address, as `FANOUT_TRUSTED_PROXIES`
    /// judges it) may have in flight at once; past it a request is answered `429` with a JSON-RPC
    /// error. Unset: no bound per client.
    #[arg(long, env = "FANOUT_MAX_PROXY_REQUESTS_PER_CLIENT", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_proxy_requests_per_client: Option<u64>,

    /// Proxy mode, for stateless upstreams: mint an `Mcp-Session-Id` on `initialize` when the
    /// upstream gives none (and strip it from forwarded requests).
    #[arg(long, env = "FANOUT_MINT_SESSION_IDS", default_value_t = false, action = clap::ArgAction::Set)]
    pub mint_session_ids: bool,

    /// Proxy mode: rewrite `initialize` / `server/discover` results to advertise `listChanged`
    /// for tools, prompts and resources (the sidecar delivers them).
    #[arg(long, env = "FANOUT_ADVERTISE_LIST_CHANGED", default_value_t = false, action = clap::ArgAction::Set)]
    pub advertise_list_changed: bool,

    /// Proxy mode: let MCP 2026-07-28 clients use a 2025-era upstream (one that does not answer
    /// `server/discover`): the replica makes an `initialize` handshake per caller's credentials
    /// (`Authorization`, `Cookie`, the tenant header of header mode), with those credentials, and
    /// forwards each caller's requests on its own upstream session. Off, such clients fall back to
    /// the 2025 handshake themselves.
    #[arg(long, env = "FANOUT_BRIDGE_2026_CLIENTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub bridge_2026_clients: bool,

    /// Proxy mode: how long the upstream has to send its response head (and, for an answer the
    /// proxy rewrites, its whole body) before the client gets a JSON-RPC error.
    #[arg(long, env = "FANOUT_UPSTREAM_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_timeout_secs: u64,

    /// Proxy mode: most bytes of one upstream answer (a JSON body, or one event of an event
    /// stream) held to rewrite it; a larger one is relayed unmodified.
    #[arg(long, env = "FANOUT_UPSTREAM_REWRITE_MAX_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_rewrite_max_bytes: u64,
    /// Proxy mode, with `FANOUT_BRIDGE_2026_CLIENTS`: most upstream sessions a replica keeps for
    /// bridged callers (one per set of credentials); the least recently used is closed upstream
    /// (`DELETE`) when a new caller needs one.
    #[arg(long, env = "FANOUT_BRIDGE_MAX_SESSIONS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub bridge_max_sessions: u64,

    /// Proxy mode: tell the upstream who the client is, as a proxy does: append its address to
    /// `X-Forwarded-For` and a `Forwarded` element (for, host, proto), and set
    /// `X-Forwarded-Proto` / `X-Forwarded-Host` unless a proxy in front set them. Off, forwarded
    /// requests carry the client's own headers only.
    #[arg(long, env = "FANOUT_PROXY_FORWARDED_HEADERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub proxy_forwarded_headers: bool,

    /// Log format; `RUST_LOG` filters.
    #[arg(long, env = "FANOUT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Postgres URL (a direct one, or through PgBouncer).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "print_sql"
    )]
    pub database_url: Option<String>,
    /// Schema holding every database object.
    #[arg(long, env = "FANOUT_SCHEMA", default_value = "mcp_fanout", value_parser = parse_schema)]
    pub schema: String,
    /// Print the SQL instead of applying it.
    #[arg(long)]
    pub print_sql: bool,
    /// Connect and statement timeout, in milliseconds.
    #[arg(long, env = "FANOUT_DB_TIMEOUT_MS", default_value_t = 5000)]
    pub db_timeout_ms: u64,
    /// PEM file of CA certificates trusted for Postgres TLS (besides the Mozilla roots).
    #[arg(long, env = "FANOUT_DB_CA_FILE")]
    pub db_ca_file: Option<PathBuf>,
    /// Log format; `RUST_LOG` filters.
    #[arg(long, env = "FANOUT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn parse_schema(s: &str) -> Result<String, String> {
    let ok_first = |c: char| c.is_ascii_lowercase() || c == '_';
    let ok_rest = |c: char| ok_first(c) || c.is_ascii_digit();
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if ok_first(c) && chars.all(ok_rest) && s.len() <= 40 => Ok(s.to_owned()),
        _ => Err("must match [a-z_][a-z0-9_]* and be at most 40 bytes".into()),
    }
}

impl ServeConfig {
    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.db_timeout_ms.max(1))
    }
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs)
    }
    pub fn write_stall(&self) -> Duration {
        Duration::from_secs(self.write_stall_secs)
    }
    pub fn max_lag(&self) -> Duration {
        Duration::from_secs(self.max_lag_secs)
    }
    pub fn max_lag_bytes(&self) -> usize {
        usize::try_from(self.max_lag_bytes).unwrap_or(usize::MAX)
    }
    pub fn retry(&self) -> Duration {
        Duration::from_millis(self.retry_ms)
    }
    pub fn coalesce_window(&self) -> Duration {
        Duration::from_millis(self.coalesce_ms)
    }
    pub fn max_stream_age(&self) -> Option<Duration> {
        (self.max_stream_secs > 0).then(|| Duration::from_secs(self.max_stream_secs))
    }
    /// The body limit: explicit, or room for a full batch of maximal events plus envelope.
    pub fn body_limit(&self) -> usize {
        let derived = self
            .max_batch
            .saturating_mul(self.max_payload_bytes.saturating_add(1024));
        to_usize(self.max_body_bytes.unwrap_or(derived))
    }
    /// The `POST /mcp` body limit: the proxy's in proxy mode, else the JSON-RPC request limit.
    pub fn mcp_body_limit(&self) -> usize {
        if self.upstream.is_some() {
            to_usize(self.max_proxy_request_bytes)
        } else {
            to_usize(self.max_request_bytes)
        }
    }
    /// `FANOUT_BODY_MEMORY_BYTES`, raised to one body of the largest allowed size.
    pub fn body_memory_bytes(&self) -> usize {
        to_usize(self.body_memory_bytes).max(self.mcp_body_limit())
    }
    pub fn request_limit(&self) -> usize {
        to_usize(self.max_request_bytes)
    }
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_timeout_secs)
    }
    pub fn upstream_rewrite_max_bytes(&self) -> usize {
        to_usize(self.upstream_rewrite_max_bytes)
    }
    /// Connection caps `(public, admin)` under the open-file limit. The process keeps
    /// [`RESERVED_CONN_FILES`] files for itself (logs, the runtime, JWKS and DNS lookups) plus
    /// its Postgres connections; the admin listener, when separate, has [`ADMIN_CONNECTIONS`] of
    /// its own; in proxy mode each public connection may hold an upstream connection too.
    pub fn connection_caps(&self, open_file_limit: u64) -> (usize, usize) {
        let admin = if self.admin_addr.is_some() {
            ADMIN_CONNECTIONS
        } else {
            0
        };
        let postgres = if self.database_url.is_some() {
            self.db_pool_size.saturating_add(3)
        } else {
            0
        };
        let free = open_file_limit
            .saturating_sub(RESERVED_CONN_FILES)
            .saturating_sub(postgres)
            .saturating_sub(admin);
        let derived = if self.upstream.is_some() {
            free / 2
        } else {
            free
        };
        let public = self.max_connections.unwrap_or(derived.max(16));
        (to_usize(public), to_usize(admin))
    }
    /// Proxy mode's bound on requests forwarded at once: explicit, or the public connection cap
    /// (the open files [`Self::connection_caps`] keeps for upstream connections).
    pub fn upstream_connection_cap(&self, open_file_limit: u64) -> usize {
        match self.upstream_max_connections {
            Some(n) => to_usize(n),
            None => self.connection_caps(open_file_limit).0,
        }
    }
    /// The subscriber cap: explicit, or the open-file limit minus a reserve.
    pub fn subscriber_cap(&self, open_file_limit: u64) -> usize {
        to_usize(
            self.max_subscribers
                .unwrap_or_else(|| open_file_limit.saturating_sub(RESERVED_FILES).max(1)),
        )
    }
    pub fn allowed_origins(&self) -> Vec<String> {
        split_list(self.allowed_origins.as_deref())
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect()
    }

    /// The `Host` names the public endpoints answer; `None`: any.
    pub fn allowed_hosts(&self) -> Option<AllowedHosts> {
        let names: Vec<String> = split_list(self.allowed_hosts.as_deref())
            .map(str::to_ascii_lowercase)
            .collect();
        (!names.is_empty() && !names.iter().any(|h| h == "*")).then_some(AllowedHosts { names })
    }
}

/// The `Host` names the public endpoints answer (`FANOUT_ALLOWED_HOSTS`), besides IP addresses
/// (no DNS name can be rebound to an address written as such).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Lower-cased `name` (any port) or `name:port` entries.
    pub names: Vec<String>,
}

/// Splits a comma-separated setting, dropping blanks.
pub fn split_list(s: Option<&str>) -> impl Iterator<Item = &str> {
    s.unwrap_or("")
        .split([',', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

pub fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_validated() {
        assert!(parse_schema("mcp_fanout").is_ok());
        assert!(parse_schema("_x9").is_ok());
        assert!(parse_schema("9x").is_err());
        assert!(parse_schema("Upper").is_err());
        assert!(parse_schema("").is_err());
        assert!(parse_schema(&"a".repeat(41)).is_err());
        assert!(parse_schema(&"a".repeat(40)).is_ok());
    }

    #[test]
    fn upstream_connections_default_to_the_public_cap_their_files_are_kept_for() {
        let cli = Cli::try_parse_from(["mcp-fanout", "--upstream", "http://127.0.0.1:1/mcp"])
            .expect("parse");
        let (public, _) = cli.serve.connection_caps(20_000);
        assert_eq!(public, (20_000 - RESERVED_CONN_FILES as usize) / 2);
        // Public connections plus as many upstream ones stay under the limit.
        assert_eq!(cli.serve.upstream_connection_cap(20_000), public);
        let cli = Cli::try_parse_from([
            "mcp-fanout",
            "--upstream",
            "http://127.0.0.1:1/mcp",
            "--upstream-max-connections",
            "7",
        ])
        .expect("parse");
        assert_eq!(cli.serve.upstream_connection_cap(20_000), 7);
        assert!(Cli::try_parse_from(["mcp-fanout", "--upstream-max-connections", "0"]).is_err());
    }

    #[test]
    fn defaults_parse_and_derive_limits() {
        let cli = Cli::try_parse_from(["mcp-fanout"]).expect("defaults parse");
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.body_limit(), 1000 * (65_536 + 1024));
        assert_eq!(cli.serve.subscriber_cap(20_000), 19_488);
        assert_eq!(cli.serve.max_stream_age(), None);
        // A client that stops reading is dropped promptly: 10 s without progress, or 1 MiB
        // unsent.
        assert_eq!(cli.serve.write_stall(), Duration::from_secs(10));
        assert_eq!(cli.serve.max_lag_bytes(), 1024 * 1024);
        // Connections: below the open-file limit, with room for the process and, when set, the
        // admin listener, Postgres and proxied upstream connections.
        assert_eq!(cli.serve.connection_caps(20_000), (19_872, 0));
        let cli = Cli::try_parse_from([
            "mcp-fanout",
            "--admin-addr",
            "127.0.0.1:0",
            "--database-url",
            "postgres://x@localhost/y",
            "--upstream",
            "http://127.0.0.1:1/mcp",
        ])
        .expect("parse");
        assert_eq!(
            cli.serve.connection_caps(1024),
            // Postgres: the pool (8) + 3 (the writer's and the LISTEN connections among them).
            ((1024 - 128 - 11 - 64) / 2, 64)
        );
        assert_eq!(cli.serve.mcp_body_limit(), 16 * 1024 * 1024);
    }
}
