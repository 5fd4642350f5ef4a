use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mcp_fanout::auth::SubscriberAuth;
use mcp_fanout::bridge::backoff::Backoff;
use mcp_fanout::bridge::Bridge;
use mcp_fanout::cluster::PgCluster;
use mcp_fanout::config::{self, Cli, Command, MigrateArgs, MigrateMode, ServeConfig};
use mcp_fanout::log::postgres::retention::{self, Retention};
use mcp_fanout::log::postgres::writer::WriterTask;
use mcp_fanout::log::postgres::{connect, migrate, timed, DbError, PgLog};
use mcp_fanout::log::EventLog;
use mcp_fanout::server::{self, ConnOptions, RouterSlot};
use mcp_fanout::session::postgres::PgSessions;
use mcp_fanout::shutdown::ShutdownSignal;
use mcp_fanout::state::{AppState, State};
use mcp_fanout::supervise::{Supervisor, TaskError};
use mcp_fanout::{cli, http, telemetry};
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
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("subscriber auth: {0}")]
    Auth(#[from] mcp_fanout::auth::AuthConfigError),
    #[error(transparent)]
    Cli(#[from] cli::CliError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "the {role} listener stopped while the replica was serving; exiting so it is restarted"
    )]
    ListenerStopped { role: &'static str },
}

/// The Postgres-mode tasks, started (and supervised) once the state is built.
struct DbTasks {
    bridge: Arc<Bridge>,
    writer: WriterTask,
    pool: deadpool_postgres::Pool,
    retention: Retention,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the process (Postgres TLS, JWKS over https).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-fanout: {}", StartError::Runtime(e));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve(Box::new(cli.serve))) {
            Command::Serve(config) => serve(*config).await,
            Command::Migrate(args) => run_migrate(args).await,
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
    let mut signals = ShutdownSignal::install();
    let open_files = raise_open_file_limit();
    let bind = |addr| server::bind(addr).map_err(|source| StartError::Bind { addr, source });
    let public = bind(config.addr)?;
    let public_addr = public.local_addr().map_err(|source| StartError::Bind {
        addr: config.addr,
        source,
    })?;
    let admin = match config.admin_addr {
        Some(addr) => Some(bind(addr)?),
        None => None,
    };

    // Serve probes at once; the full routers replace the starting one when the state is ready.
    let public_slot = RouterSlot::new(http::starting(config.retry_ms));
    let admin_slot = admin
        .as_ref()
        .map(|_| RouterSlot::new(http::starting(config.retry_ms)));
    let (public_cap, admin_cap) = config.connection_caps(open_files);
    tracing::info!(
        max_connections = public_cap,
        admin_max_connections = admin_cap,
        "connection caps"
    );
    let opts = ConnOptions {
        write_stall: config.write_stall(),
        first_request: Duration::from_secs(config.first_request_secs),
        idle: Duration::from_secs(config.idle_secs),
        max_connections: public_cap,
    };
    let admin_opts = ConnOptions {
        max_connections: admin_cap,
        ..opts
    };
    let stop_accepting = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    tracing::info!(role = "public", addr = %public_addr, "listening");
    // Each listener's task, by role.
    let mut roles = vec![(
        servers
            .spawn(server::serve(
                public,
                public_slot.clone(),
                opts,
                stop_accepting.clone(),
            ))
            .id(),
        "public",
    )];
    if let (Some(listener), Some(slot)) = (admin, admin_slot.clone()) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(role = "admin", addr = %addr, "listening");
        }
        let task = servers.spawn(server::serve(
            listener,
            slot,
            admin_opts,
            stop_accepting.clone(),
        ));
        roles.push((task.id(), "admin"));
    }

    let stop_tasks = CancellationToken::new();
    let (st, db_tasks) = tokio::select! {
        st = build_state(&config, open_files) => st?,
        _ = signals.recv() => {
            stop_accepting.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(config.shutdown_grace_secs), async {
                while servers.join_next().await.is_some() {}
            })
            .await;
            return Ok(());
        }
    };
    let _ = st.cluster.public_addr.set(public_addr);
    if st.admin_tokens.is_empty() {
        tracing::warn!(
            "no admin tokens configured: /admin/* answers only loopback requests to localhost"
        );
    }
    let (public_router, admin_router) = http::app(st.clone());
    let sup = Supervisor::new(st.metrics.clone(), stop_tasks.clone());
    if let Some(db) = db_tasks {
        supervise_db_tasks(&sup, &st, &config, db);
    }
    let (broadcaster, sessions) = (st.broadcaster.clone(), st.sessions.clone());
    sup.spawn("session_keep_alive", move |stop| {
        let (b, s) = (broadcaster.clone(), sessions.clone());
        until_stopped(mcp_fanout::session::keep_alive(b, s, stop))
    });
    // Memory mode has no cluster view to heartbeat into.
    let cluster = st.cluster.clone();
    let heartbeats = cluster.db.is_some().then(|| {
        sup.spawn("replica_heartbeat", move |stop| {
            until_stopped(mcp_fanout::cluster::heartbeat(cluster.clone(), stop))
        })
    });
    let (metrics, series) = (st.metrics.clone(), st.series.clone());
    sup.spawn("stats_sampler", move |stop| {
        let (m, s) = (metrics.clone(), series.clone());
        until_stopped(mcp_fanout::stats::series::run(m, s, stop))
    });
    let tokens = st.admin_tokens.clone();
    sup.spawn("admin_token_watch", move |stop| {
        until_stopped(mcp_fanout::auth::admin_tokens::watch(tokens.clone(), stop))
    });
    public_slot.set(public_router);
    if let (Some(slot), Some(router)) = (admin_slot, admin_router) {
        slot.set(router);
    }
    tracing::info!(
        replica = %st.cluster.replica_id,
        epoch = st.log.epoch(),
        max_subscribers = st.broadcaster.capacity(),
        "serving"
    );

    // Until a signal; a listener that stops on its own (it cannot be restarted: its socket is
    // gone) ends the process with a failure, so the orchestrator restarts it.
    tokio::select! {
        _ = signals.recv() => {}
        Some(ended) = servers.join_next_with_id() => {
            let (id, cause) = match ended {
                Ok((id, ())) => (id, "it returned".to_owned()),
                Err(error) => (error.id(), error.to_string()),
            };
            let role = roles
                .iter()
                .find_map(|(task, role)| (*task == id).then_some(*role))
                .unwrap_or("public");
            tracing::error!(role, cause, "listener stopped while serving; exiting");
            stop_tasks.cancel();
            return Err(StartError::ListenerStopped { role });
        }
    }
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let deadline = tokio::time::Instant::now() + grace;
    st.lifecycle.begin_drain();
    let drain = Duration::from_secs(config.drain_secs).min(grace);
    tracing::info!(
        drain_secs = drain.as_secs(),
        subscribers = st.broadcaster.subscriber_count(),
        "draining"
    );
    tokio::time::sleep(drain).await;
    st.lifecycle.stop();
    st.broadcaster.close();
    stop_accepting.cancel();
    // 2026 clients do not re-listen: their streams last until the end of the grace, then get
    // their `complete` result just before the process exits.
    let listens_end = deadline
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(deadline)
        .max(tokio::time::Instant::now());
    let ending = st.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(listens_end).await;
        ending.lifecycle.end_listens();
    });
    tracing::info!(
        subscribers = st.broadcaster.subscriber_count(),
        "streams ended; closing connections"
    );
    let all_done = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all_done).await.is_err() {
        tracing::warn!("shutdown grace expired with connections still open; exiting");
    }
    stop_tasks.cancel();
    // Leave the cluster view (bounded: the database may be gone).
    if let Some(heartbeats) = heartbeats {
        let _ = tokio::time::timeout_at(
            deadline.max(tokio::time::Instant::now() + Duration::from_secs(1)),
            heartbeats,
        )
        .await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A future that runs until the replica stops, as a supervised task (returning before is an
/// unexpected exit).
async fn until_stopped(task: impl std::future::Future<Output = ()>) -> Result<(), TaskError> {
    task.await;
    Ok(())
}

/// The bridge (readiness and the LISTEN gauge go down whenever it fails), the publish writer and
/// retention, supervised.
fn supervise_db_tasks(sup: &Supervisor, st: &AppState, config: &ServeConfig, db: DbTasks) {
    let (lifecycle, metrics) = (st.lifecycle.clone(), st.metrics.clone());
    let bridge = db.bridge;
    sup.spawn_with(
        "bridge",
        move |stop| {
            let b = bridge.clone();
            async move { b.run(stop).await.map_err(TaskError::from) }
        },
        move || {
            metrics.listen_connected.set(0);
            lifecycle.set_bridge_failed(true);
        },
    );
    let writer = db.writer;
    sup.spawn("publish_writer", move |stop| {
        until_stopped(writer.clone().run(stop))
    });
    let (pool, schema, timeout, policy) = (
        db.pool,
        config.schema.clone(),
        config.db_timeout(),
        db.retention,
    );
    sup.spawn("retention", move |stop| {
        until_stopped(retention::run(
            pool.clone(),
            schema.clone(),
            timeout,
            policy,
            stop,
        ))
    });
}

/// The replica's state: in memory, or on Postgres once the database is reachable and migrated
/// (retrying with backoff meanwhile; `/readyz` answers 503 until then), with the tasks Postgres
/// mode runs.
async fn build_state(
    config: &ServeConfig,
    open_files: u64,
) -> Result<(AppState, Option<DbTasks>), StartError> {
    let auth = SubscriberAuth::from_config(config).await?;
    let Some(url) = config.database_url.as_deref() else {
        tracing::warn!(
            "DATABASE_URL is not set: running as a single replica with an in-memory log (events are lost on restart; do not scale this out)"
        );
        let st = State::memory(config.clone(), auth, open_files)?;
        st.lifecycle.set_ready();
        return Ok((st, None));
    };
    let timeout = config.db_timeout();
    let tls = connect::tls(config.db_ca_file.as_deref())?;
    let pool = connect::pool(
        url,
        timeout,
        config::to_usize(config.db_pool_size),
        tls.clone(),
    )?;
    let listen_url = config.listen_database_url.as_deref().unwrap_or(url);
    let listen_config = connect::pg_config(listen_url, connect::LISTEN_APP_NAME, timeout)?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let (log, head) = loop {
        match open_log(&pool, config, timeout).await {
            Ok(ready) => break ready,
            Err(error) => {
                tracing::warn!(%error, "the database is not ready; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    let st = State::postgres(
        config.clone(),
        auth,
        open_files,
        log.clone(),
        Arc::new(PgSessions::new(pool.clone(), &config.schema, timeout)),
        PgCluster {
            pool: pool.clone(),
            schema: config.schema.clone(),
            timeout,
            stale_after: Duration::from_secs(config.replica_stale_secs),
        },
        head,
    )?;
    let bridge = Arc::new(Bridge {
        broadcaster: st.broadcaster.clone(),
        metrics: st.metrics.clone(),
        lifecycle: st.lifecycle.clone(),
        replica_id: st.cluster.replica_id.clone(),
        log: log.clone(),
        listen_config,
        tls,
        heartbeat_every: Duration::from_secs(2),
        heartbeat_timeout: timeout.max(Duration::from_secs(4)),
        timeout,
    });
    let tasks = DbTasks {
        bridge,
        writer: log.writer_task(),
        pool,
        retention: Retention {
            max_age: Duration::from_secs(config.retention_secs),
            max_events: config.retention_max_events,
            every: Duration::from_secs(config.retention_interval_secs),
        },
    };
    Ok((st, Some(tasks)))
}

async fn open_log(
    pool: &deadpool_postgres::Pool,
    config: &ServeConfig,
    timeout: Duration,
) -> Result<(Arc<PgLog>, u64), DbError> {
    let schema = &config.schema;
    timed(timeout.saturating_mul(4), async {
        let mut client = pool.get().await.map_err(DbError::Checkout)?;
        match config.migrate {
            MigrateMode::Auto => {
                let applied = migrate::apply(&mut client, schema).await?;
                if !applied.is_empty() {
                    tracing::info!(schema, ?applied, "migrations applied");
                }
            }
            MigrateMode::Skip => {
                let pending = migrate::pending(&client, schema).await?;
                if !pending.is_empty() {
                    return Err(DbError::NotMigrated(pending));
                }
            }
        }
        Ok(())
    })
    .await?;
    let log = PgLog::open(pool.clone(), schema, timeout, config.max_payload_bytes).await?;
    let head = log
        .bounds()
        .await
        .map_err(|e| DbError::Pool(e.to_string()))?
        .head;
    tracing::info!(schema, epoch = log.epoch(), head, "event log open");
    Ok((Arc::new(log), head))
}

async fn run_migrate(args: MigrateArgs) -> Result<(), StartError> {
    if args.print_sql {
        print!("{}", migrate::print_sql(&args.schema));
        return Ok(());
    }
    telemetry::init(config::LogFormat::Text);
    let url = args.database_url.as_deref().unwrap_or_default();
    let timeout = Duration::from_millis(args.db_timeout_ms.max(1));
    let pool = connect::pool(url, timeout, 1, connect::tls(args.db_ca_file.as_deref())?)?;
    let applied = timed(timeout.saturating_mul(4), async {
        let mut client = pool.get().await.map_err(DbError::Checkout)?;
        migrate::apply(&mut client, &args.schema).await
    })
    .await?;
    tracing::info!(schema = args.schema, ?applied, "migrations up to date");
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
