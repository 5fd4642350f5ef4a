//! `mcp-fanout subscribe`: follows the SSE stream (resuming with `Last-Event-ID` across
//! disconnects) and prints `<id> <json>` per event.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use mcp_fanout_client::{Follower, Item};

use super::CliError;

#[derive(Debug, Clone, Args)]
pub struct SubscribeArgs {
    /// Base URL of the service's public listener.
    #[arg(long, env = "FANOUT_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Resume after this event id.
    #[arg(long)]
    pub last_event_id: Option<String>,
    /// Mcp-Session-Id to present.
    #[arg(long)]
    pub session: Option<String>,
    /// Subscriber bearer token (JWT mode).
    #[arg(long, env = "FANOUT_SUBSCRIBER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Exit after this many items (events, and `resync <head>` lines; 0 = run until stopped).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Fail if no event arrives within this many seconds (0 = wait forever).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// Print a line when the stream is open (`ready`), so scripts can publish after it.
    #[arg(long)]
    pub announce: bool,
}

pub async fn run(args: SubscribeArgs) -> Result<(), CliError> {
    let mut builder = Follower::builder(&args.url);
    if let Some(id) = &args.last_event_id {
        builder = builder.last_event_id(id);
    }
    if let Some(s) = &args.session {
        builder = builder.session(s);
    }
    if let Some(t) = &args.token {
        builder = builder.token(t);
    }
    let mut follower = builder.spawn()?;
    let mut out = std::io::stdout().lock();
    let limit = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    // An item that arrived while waiting for the stream to open (after a quick end and reopen).
    let mut first = None;
    if args.announce {
        let mut status = follower.watch_status();
        // The status sender goes away only when the follower stops (refused): `next` says why.
        let item = tokio::select! {
            biased;
            Ok(_) = status.wait_for(|s| s.connected) => None,
            item = follower.next() => Some(item),
        };
        match item {
            Some(Some(Err(e))) => return Err(e.into()),
            Some(item) => first = Some(item),
            None => {}
        }
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let mut got = 0u64;
    loop {
        // The deadline counts from the last item: keep-alives and reconnects do not reset it.
        let next = match (first.take(), limit) {
            (Some(item), _) => item,
            (None, Some(d)) => tokio::time::timeout(d, follower.next())
                .await
                .map_err(|_| CliError::Timeout(args.timeout))?,
            (None, None) => follower.next().await,
        };
        match next {
            None => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Item::Event(e))) => writeln!(out, "{} {}", e.id, e.message)?,
            Some(Ok(Item::Resync(r))) => writeln!(out, "resync {}", r.head)?,
        }
        out.flush()?;
        got += 1;
        if args.count > 0 && got >= args.count {
            return Ok(());
        }
    }
}
