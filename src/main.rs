//! The `mcp-fanout` binary: parses the command line and runs the command (a replica is
//! [`mcp_fanout::replica::serve`]).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mcp_fanout::config::{Cli, Command, MigrateArgs};
use mcp_fanout::db::{connect, Db, DbError};
use mcp_fanout::log::postgres::migrate;
use mcp_fanout::replica::{self, ServeError};
use mcp_fanout::{cli, telemetry};

/// mimalloc, not glibc's malloc: buffers allocated on one worker thread and freed on the other
/// (a request read on one, its answer written on another) took glibc's arena locks, about one
/// futex call per two proxied requests; mimalloc frees across threads without a lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often freed memory is looked for to give back.
const GIVE_BACK_EVERY: Duration = Duration::from_secs(5);

/// Gives the memory freed since the last look back to the system, every [`GIVE_BACK_EVERY`].
/// mimalloc gives back (decommits) free memory a while after it was freed, but only when the
/// allocator is next used: a replica gone quiet after a peak (thousands of connections closed, an
/// attack over) kept it resident, ~20 MB after 3,000 subscribers had come and gone.
async fn give_back_freed_memory() {
    let mut every = tokio::time::interval(GIVE_BACK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

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
            Command::Serve(config) => {
                telemetry::init(config.log_format);
                tokio::spawn(give_back_freed_memory());
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
