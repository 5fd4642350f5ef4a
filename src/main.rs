//! The `mcp-fanout` binary: parses the command line and runs the command (a replica is
//! [`mcp_fanout::replica::serve`]).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mcp_fanout::config::{Cli, Command, MigrateArgs};
use mcp_fanout::db::{connect, Db, DbError};
use mcp_fanout::log::postgres::migrate;
use mcp_fanout::replica::{self, ServeError};
use mcp_fanout::server::workers;
use mcp_fanout::{allocator, cli, telemetry};

/// mimalloc, counting what each worker frees so it collects its heap before it sleeps (see
/// [`mcp_fanout::allocator`]).
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Cli(#[from] cli::CliError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Workers(#[from] workers::WorkersError),
}

fn main() -> ExitCode {
    let huge_pages = allocator::no_huge_pages();
    let cli = Cli::parse();
    // One TLS crypto provider for the process (Postgres TLS, JWKS over https).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(allocator::collect_before_sleeping)
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
            Command::Serve(config) => {
                telemetry::init(config.log_format);
                if let Err(e) = huge_pages {
                    tracing::warn!(error = %e, "cannot turn transparent huge pages off: freed memory may stay resident");
                }
                tokio::spawn(allocator::give_back_freed_memory());
                if config.upstream.is_some() {
                    // Proxy mode's public connections each stay on one thread.
                    let count = usize::try_from(config.connection_workers).unwrap_or(1);
                    workers::start(count, allocator::collect_before_sleeping)?;
                }
                Ok(replica::serve(*config).await?)
            }
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

async fn run_migrate(args: MigrateArgs) -> Result<(), StartError> {
    if args.print_sql {
        print!("{}", migrate::print_sql(&args.schema));
        return Ok(());
    }
    telemetry::init(args.log_format);
    let url = args.database_url.as_deref().unwrap_or_default();
    let timeout = Duration::from_millis(args.db_timeout_ms.max(1));
    let pool = connect::pool(
        url,
        connect::POOL_APP_NAME,
        timeout,
        1,
        connect::tls(args.db_ca_file.as_deref())?,
    )?;
    let schema = &args.schema;
    let applied = Db::new(pool, timeout.saturating_mul(4))
        .with_client(|mut client| async move { migrate::apply(&mut client, schema).await })
        .await?;
    tracing::info!(schema = args.schema, ?applied, "migrations up to date");
    Ok(())
}
