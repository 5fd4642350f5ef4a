use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mcp_fanout::config::{Cli, Command, ServeConfig};
use mcp_fanout::server::{self, ConnOptions};
use mcp_fanout::shutdown::shutdown_signal;
use mcp_fanout::state::State;
use mcp_fanout::{cli, http, telemetry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] mcp_fanout::state::StateError),
    #[error("DATABASE_URL is set, but the Postgres log is not built into this release yet")]
    PostgresNotYet,
    #[error(transparent)]
    Cli(#[from] cli::CliError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-fanout: {}", StartError::Runtime(e));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve(cli.serve)) {
            Command::Serve(config) => serve(config).await,
            Command::Publish(args) => Ok(cli::publish::run(args).await?),
            Command::Subscribe(args) => Ok(cli::subscribe::run(args).await?),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("mcp-fanout: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServeConfig) -> Result<(), StartError> {
    telemetry::init(config.log_format);
    let open_files = raise_open_file_limit();
    if config.database_url.is_some() {
        return Err(StartError::PostgresNotYet);
    }
    tracing::warn!(
        "DATABASE_URL is not set: running as a single replica with an in-memory log (events are lost on restart; do not scale this out)"
    );
    let st = State::memory(config.clone(), open_files)?;
    if st.admin_tokens.is_empty() {
        tracing::warn!("no admin tokens configured: /admin/* answers only loopback requests to localhost");
    }
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let public = bind(config.addr).await?;
    let public_addr = public.local_addr().map_err(|source| StartError::Bind {
        addr: config.addr,
        source,
    })?;
    let _ = st.public_addr.set(public_addr);
    let admin = match config.admin_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };

    let (public_router, admin_router) = http::app(st.clone());
    let opts = ConnOptions {
        write_stall: config.write_stall(),
    };
    let stop_accepting = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    tracing::info!(role = "public", addr = %public_addr, "listening");
    servers.spawn(server::serve(public, public_router, opts, stop_accepting.clone()));
    if let (Some(listener), Some(router)) = (admin, admin_router) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(role = "admin", addr = %addr, "listening");
        }
        servers.spawn(server::serve(listener, router, opts, stop_accepting.clone()));
    }
    st.lifecycle.set_ready();
    tracing::info!(
        replica = %st.replica_id,
        epoch = st.log.epoch(),
        max_subscribers = st.broadcaster.capacity(),
        "ready"
    );

    shutdown_signal().await;
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let deadline = tokio::time::Instant::now() + grace;
    st.lifecycle.begin_drain();
    let drain = Duration::from_secs(config.drain_secs).min(grace);
    tracing::info!(drain_secs = drain.as_secs(), subscribers = st.broadcaster.subscriber_count(), "draining");
    tokio::time::sleep(drain).await;
    st.lifecycle.stop();
    st.broadcaster.close();
    stop_accepting.cancel();
    tracing::info!(subscribers = st.broadcaster.subscriber_count(), "streams ended; closing connections");
    let all_done = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all_done).await.is_err() {
        tracing::warn!("shutdown grace expired with connections still open; exiting");
    }
    tracing::info!("stopped");
    Ok(())
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
