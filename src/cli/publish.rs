//! `mcp-fanout publish`: one notification through the admin endpoint; prints the answer.

use clap::Args;
use serde_json::{json, Value};

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
}

pub async fn run(args: PublishArgs) -> Result<(), CliError> {
    let mut body = json!({ "method": args.method });
    if let Some(p) = &args.params {
        // Parsed as the server parses bodies: a repeated key is an error, not silently dropped.
        let params = parse_json(p.as_bytes()).map_err(|e| CliError::Params(e.to_string()))?;
        if !params.is_object() {
            return Err(CliError::Params("expected an object".into()));
        }
        body["params"] = params;
    }
    for (field, value) in [
        ("tenant", &args.tenant),
        ("session", &args.session),
        ("key", &args.key),
    ] {
        if let Some(v) = value {
            body[field] = Value::from(v.as_str());
        }
    }
    let url = format!("{}/admin/publish", args.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    for attempt in 0..args.repeat {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(args.interval_ms)).await;
        }
        let mut req = client.post(&url).json(&body);
        if let Some(t) = &args.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(CliError::Refused {
                status: status.as_u16(),
                body: text,
            });
        }
        println!("{text}");
    }
    Ok(())
}
