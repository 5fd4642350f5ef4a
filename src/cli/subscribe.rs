//! `mcp-fanout subscribe`: opens the SSE stream and prints `<id> <json>` per event.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;

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
    /// Exit after this many events (0 = run until the stream ends).
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
    let url = format!("{}/mcp", args.url.trim_end_matches('/'));
    let mut req = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(id) = &args.last_event_id {
        req = req.header("last-event-id", id);
    }
    if let Some(s) = &args.session {
        req = req.header("mcp-session-id", s);
    }
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    if !status.is_success() {
        return Err(CliError::Refused {
            status: status.as_u16(),
            body: resp.text().await.unwrap_or_default(),
        });
    }
    let mut out = std::io::stdout().lock();
    if args.announce {
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut got = 0u64;
    // The deadline counts from the last *event*, not the last chunk: keep-alives do not reset it.
    let mut deadline =
        (args.timeout > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(args.timeout));
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, body.next()).await {
                Ok(n) => n,
                Err(_) => return Err(CliError::Timeout(args.timeout)),
            },
            None => body.next().await,
        };
        let Some(chunk) = next else { break };
        buf.extend_from_slice(&chunk?);
        while let Some(end) = find_block_end(&buf) {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let (mut id, mut data) = (None, None);
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                }
            }
            if let Some(data) = data.filter(|d| !d.is_empty()) {
                writeln!(out, "{} {data}", id.as_deref().unwrap_or("-"))?;
                out.flush()?;
                got += 1;
                if let Some(d) = deadline.as_mut() {
                    *d = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
                }
                if args.count > 0 && got >= args.count {
                    return Ok(());
                }
            }
        }
    }
    if args.count > 0 {
        return Err(CliError::Ended {
            wanted: args.count,
            got,
        });
    }
    Ok(())
}

/// Index of the first `\n\n` (end of an SSE block).
fn find_block_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}
