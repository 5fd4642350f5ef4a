//! `mcp-fanout publish`: one notification through the admin endpoint; prints the answer.

use std::time::Duration;

use clap::Args;
use mcp_fanout_client::{Notification, Publisher};
use serde_json::json;

use super::CliError;
use crate::event::parse_json;

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Base URL of the service's admin listener.
    #[arg(long, env = "FANOUT_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Admin bearer token.
    #[arg(long, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Notification method.
    #[arg(long, default_value = "notifications/tools/list_changed")]
    pub method: String,
    /// Params, as a JSON object.
    #[arg(long)]
    pub params: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub session: Option<String>,
    /// Idempotency key: a retry with the same key publishes nothing new.
    #[arg(long)]
    pub key: Option<String>,
    /// Publish this many times (each a new event unless `--key` is given).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Pause between repeats, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Keep retrying this many seconds while the service is unreachable or answers 502/503/504
    /// (each publish carries an idempotency key, so a retry never publishes twice); 0 = once.
    #[arg(long, default_value_t = 10)]
    pub retry_secs: u64,
}

pub async fn run(args: PublishArgs) -> Result<(), CliError> {
    let mut n = Notification::new(args.method.as_str());
    if let Some(p) = &args.params {
        // Parsed as the server parses bodies: a repeated key is an error, not silently dropped.
        let params = parse_json(p.as_bytes()).map_err(|e| CliError::Params(e.to_string()))?;
        if !params.is_object() {
            return Err(CliError::Params("expected an object".into()));
        }
        n = n.params(params);
    }
    n.tenant = args.tenant;
    n.session = args.session;
    n.key = args.key;
    let mut publisher = Publisher::new(&args.url).retry_for(Duration::from_secs(args.retry_secs));
    if let Some(t) = &args.token {
        publisher = publisher.token(t);
    }
    for attempt in 0..args.repeat {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        let id = publisher.publish(&n).await?;
        println!("{}", json!({ "id": id }));
    }
    Ok(())
}
