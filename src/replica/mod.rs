//! A serving replica as a process: its listeners, its state, its background tasks and its one
//! shutdown sequence ([`drain`]). `main` parses the command line and calls [`serve`].

mod drain;
mod listeners;
mod open;
mod tasks;

use std::time::Duration;

use crate::config::to_usize;
use crate::config::ServeConfig;
use crate::db::DbError;
use crate::http;
use crate::per_client::PerClient;
use crate::server::{
    ConnOptions, ConnectionsPerClient, ListenerCounts, ListenerFamilies, RouterSlot,
};
use crate::shutdown::ShutdownSignal;
use crate::supervise::Supervisor;
use listeners::Listeners;
use tokio_util::sync::CancellationToken;

/// Why a replica could not start, or stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("subscriber auth: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    #[error(
        "the {role} listener stopped while the replica was serving; exiting so it is restarted"
    )]
    ListenerStopped { role: &'static str },
}

/// Serves until SIGTERM/SIGINT, then runs the shutdown sequence. Probes are answered from the
/// moment the listeners are bound (503 until the state is ready); a signal while starting stops
/// at once.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let mut signals = ShutdownSignal::install();
    let open_files = raise_open_file_limit();
    let public = listeners::bind("public", config.addr)?;
    let public_addr = public.addr;
    let admin = match config.admin_addr {
        Some(addr) => Some(listeners::bind("admin", addr)?),
        None => None,
    };
    let starting = || RouterSlot::new(http::starting(config.retry_ms));
    let public_slot = starting();
    let admin_slot = admin.as_ref().map(|_| starting());
    let mut listeners = Listeners::new();
    let (public_opts, admin_opts) = conn_options(&config, open_files);
    let refused = ListenerCounts::default();
    listeners.serve(public, public_slot.clone(), public_opts, refused.clone());
    if let (Some(bound), Some(slot)) = (admin, admin_slot.clone()) {
        listeners.serve(bound, slot, admin_opts, refused.clone());
    }
    let grace = Duration::from_secs(config.shutdown_grace_secs);

    let (st, db) = tokio::select! {
        built = open::build_state(&config, open_files) => built?,
        _ = signals.recv() => {
            drain::before_serving(listeners, grace).await;
            return Ok(());
        }
    };
    let _ = st.cluster.public_addr.set(public_addr);
    refused.count_into(ListenerFamilies {
        http_errors: st.metrics.http_errors.clone(),
        connections_closed: st.metrics.connections_closed.clone(),
    });
    if st.admin_tokens.is_empty() {
        tracing::warn!(
            "no admin tokens configured: /admin/* answers only loopback requests to localhost"
        );
    }
    if st.allowed_hosts.is_none() && public_addr.ip().is_loopback() {
        // Where DNS rebinding is the usual attack: a browser on this machine.
        tracing::warn!(
            addr = %public_addr,
            "FANOUT_ALLOWED_HOSTS is not set: /mcp and /poll answer any Host name, so a page whose name is pointed at this address can read them (DNS rebinding); set FANOUT_ALLOWED_HOSTS=localhost (IP addresses are always answered)"
        );
    }
    if st.config.trusted_proxies.is_none()
        && st.config.client_address_header != crate::trusted_proxies::ClientAddressHeader::default()
    {
        tracing::warn!(
            header = ?st.config.client_address_header,
            "FANOUT_CLIENT_ADDRESS_HEADER is set but FANOUT_TRUSTED_PROXIES is not: no proxy is believed to name the client, so every client is its peer's address; list the proxies in front"
        );
    }
    if st.config.trusted_proxies.is_none()
        && st.upstream.is_some()
        && st.config.proxy_forwarded_headers
    {
        tracing::warn!(
            "FANOUT_TRUSTED_PROXIES is not set: the X-Forwarded-Proto, X-Forwarded-Host and Forwarded headers any client sends reach the upstream as if a proxy in front had set them; list the proxies in front (or `none`)"
        );
    }
    if st.config.trusted_proxies.is_none()
        && matches!(st.subscriber_auth, crate::auth::SubscriberAuth::Header(_))
    {
        tracing::warn!(
            "FANOUT_SUBSCRIBER_AUTH=header and FANOUT_TRUSTED_PROXIES is not set: a client that reaches a replica without the gateway can name any tenant; list the gateway's addresses so the tenant header is accepted only from it"
        );
    }
    let stop_tasks = CancellationToken::new();
    let sup = Supervisor::new(st.metrics.clone(), stop_tasks.clone());
    let heartbeat = tasks::start(&sup, &st, &config, db);
    let (public_router, admin_router) = http::app(st.clone());
    public_slot.set_with_direct(public_router, http::direct_post_mcp(st.clone()));
    if let (Some(slot), Some(router)) = (admin_slot, admin_router) {
        slot.set(router);
    }
    tracing::info!(
        replica = %st.cluster.replica_id,
        epoch = st.log.epoch(),
        max_subscribers = st.broadcaster.capacity(),
        "serving"
    );

    tokio::select! {
        _ = signals.recv() => {}
        role = listeners.one_stopped() => {
            stop_tasks.cancel();
            return Err(ServeError::ListenerStopped { role });
        }
    }
    let running = drain::Running {
        listeners,
        stop_tasks,
        heartbeat,
    };
    let timings = drain::Timings {
        drain: Duration::from_secs(config.drain_secs),
        grace,
    };
    drain::run(&st, running, timings).await;
    Ok(())
}

/// The public and admin listeners' connection options: the same deadlines, each its own cap.
fn conn_options(config: &ServeConfig, open_files: u64) -> (ConnOptions, ConnOptions) {
    let (public_cap, admin_cap) = config.connection_caps(open_files);
    tracing::info!(
        max_connections = public_cap,
        admin_max_connections = admin_cap,
        "connection caps"
    );
    let public = ConnOptions {
        role: "public",
        write_stall: config.write_stall(),
        first_request: Duration::from_secs(config.first_request_secs),
        idle: Duration::from_secs(config.idle_secs),
        max_connections: public_cap,
        http2_max_streams: config.http2_max_streams,
        // Proxy mode keeps an upstream connection in an HTTP/1.x client connection's task.
        own_tasks: config.upstream.is_some(),
        // Proxy mode's connections each stay on one thread (when the binary runs the workers).
        on_workers: config.upstream.is_some(),
        per_client: config
            .max_connections_per_client
            .map(|max| ConnectionsPerClient {
                table: PerClient::new(to_usize(max)),
                exempt: config.trusted_proxies.clone(),
            }),
    };
    let admin = ConnOptions {
        role: "admin",
        max_connections: admin_cap,
        own_tasks: false,
        per_client: None,
        on_workers: false,
        ..public.clone()
    };
    (public, admin)
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::info!(open_files = n, "open-file limit");
            n
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    }
}
