//! Logging: `tracing` to stdout, as text or JSON lines; `RUST_LOG` filters (default `info`, with
//! Postgres server notices at `warn`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // `try_init` fails only if a subscriber is already set (e.g. twice in one process): keep it.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
