//! An rmcp 3.x MCP server (Streamable HTTP) whose `subscriptions/listen` spans every replica,
//! with mcp-fanout as the bus:
//!
//! - the tools publish their changes through mcp-fanout (`announce_tools` publishes
//!   `notifications/tools/list_changed`, `touch(uri)` publishes `notifications/resources/updated`);
//! - one [`Follower`] per process follows mcp-fanout's stream and hands each change to every open
//!   listen stream through a `tokio::sync::broadcast`;
//! - `listen` forwards what its client opted into to `context.sink()`: the list kinds it asked
//!   for, `resources/updated` only for the URIs it subscribed to.
//!
//! So a client listening on any replica hears what any replica published, once.
//!
//! ```sh
//! cargo run --release -p mcp-fanout-client --example rmcp_listen -- \
//!     --port 3000 --fanout http://127.0.0.1:8080 --token "$FANOUT_ADMIN_TOKEN"
//! ```
//!
//! It prints one JSON line per milestone on stdout (`listening` with the bound address,
//! `following` each time the follower's stream opens) and logs to stderr.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use mcp_fanout_client::{Follower, Item, Notification, Publisher};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig, SubscriptionFilter};
use rmcp::service::{SubscriptionContext, SubscriptionSendError, SubscriptionSink};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler};
use serde_json::json;
use tokio::sync::broadcast;

#[derive(Debug, Parser)]
struct Args {
    /// Port of the MCP endpoint (`/mcp`); 0 picks a free one (printed).
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// mcp-fanout's base URL (its public listener, or a load balancer); repeat for several
    /// replicas. The follower goes round them when it reconnects.
    #[arg(long, required = true)]
    fanout: Vec<String>,
    /// mcp-fanout's admin base URL, if the admin endpoints are on another listener (default:
    /// the first `--fanout`).
    #[arg(long)]
    fanout_admin: Option<String>,
    /// mcp-fanout's admin token (`FANOUT_ADMIN_TOKENS`), for publishing.
    #[arg(long, env = "FANOUT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Host names the MCP endpoint answers (`Host` header; loopback names by default).
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
}

/// A change from the bus, for every listen stream of this process.
#[derive(Debug, Clone)]
enum Change {
    ToolsListChanged,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated(String),
    /// Changes may have been missed (a resync of the follower, or a listen stream that fell
    /// behind): everything its client opted into must be refetched.
    Everything,
}

impl Change {
    fn of(item: Item) -> Option<Change> {
        match item {
            Item::Resync(_) => Some(Change::Everything),
            Item::Event(e) => match e.method.as_str() {
                "notifications/tools/list_changed" => Some(Change::ToolsListChanged),
                "notifications/prompts/list_changed" => Some(Change::PromptsListChanged),
                "notifications/resources/list_changed" => Some(Change::ResourcesListChanged),
                "notifications/resources/updated" => e
                    .params
                    .as_ref()
                    .and_then(|p| p.get("uri"))
                    .and_then(|u| u.as_str())
                    .map(|u| Change::ResourceUpdated(u.to_owned())),
                _ => None,
            },
        }
    }
}

#[derive(Clone)]
struct Server {
    publisher: Publisher,
    changes: broadcast::Sender<Change>,
    tool_router: ToolRouter<Server>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct TouchArgs {
    /// The resource that changed.
    uri: String,
}

#[tool_router]
impl Server {
    #[tool(description = "Add two integers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        a.saturating_add(b).to_string()
    }

    #[tool(description = "Tell the listeners of every replica that the tool list changed")]
    async fn announce_tools(&self) -> Result<String, String> {
        self.publish(Notification::tools_list_changed()).await
    }

    #[tool(description = "Tell the listeners of every replica that a resource changed")]
    async fn touch(
        &self,
        Parameters(TouchArgs { uri }): Parameters<TouchArgs>,
    ) -> Result<String, String> {
        self.publish(Notification::resource_updated(uri)).await
    }
}

impl Server {
    async fn publish(&self, n: Notification) -> Result<String, String> {
        match self.publisher.publish(&n).await {
            Ok(id) => Ok(id.to_string()),
            Err(error) => {
                tracing::warn!(%error, method = %n.method, "publish failed");
                Err(error.to_string())
            }
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new("rmcp-listen-fanout", "0.1.0"))
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.changes.subscribe();
        let sink = context.sink().clone();
        loop {
            let change = tokio::select! {
                _ = context.cancelled() => return Ok(()),
                change = changes.recv() => change,
            };
            let change = match change {
                Ok(c) => c,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a listen stream fell behind; its client refetches");
                    Change::Everything
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            match forward(&sink, &change).await {
                Ok(()) => {}
                Err(SubscriptionSendError::SubscriptionClosed) => return Ok(()),
                Err(error) => tracing::warn!(%error, "cannot forward a change"),
            }
        }
    }
}

/// Sends `change` to one listen stream if its client opted into it.
async fn forward(sink: &SubscriptionSink, change: &Change) -> Result<(), SubscriptionSendError> {
    let f = sink.accepted();
    let on = |flag: Option<bool>| flag == Some(true);
    let uris = f.resource_subscriptions.clone().unwrap_or_default();
    match change {
        Change::ToolsListChanged if on(f.tools_list_changed) => {
            sink.notify_tool_list_changed().await
        }
        Change::PromptsListChanged if on(f.prompts_list_changed) => {
            sink.notify_prompt_list_changed().await
        }
        Change::ResourcesListChanged if on(f.resources_list_changed) => {
            sink.notify_resource_list_changed().await
        }
        Change::ResourceUpdated(uri) if uris.contains(uri) => {
            sink.notify_resource_updated(uri.clone()).await
        }
        Change::Everything => {
            if on(f.tools_list_changed) {
                sink.notify_tool_list_changed().await?;
            }
            if on(f.prompts_list_changed) {
                sink.notify_prompt_list_changed().await?;
            }
            if on(f.resources_list_changed) {
                sink.notify_resource_list_changed().await?;
            }
            for uri in uris {
                sink.notify_resource_updated(uri).await?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The process's one follower, fanned out to its listen streams.
async fn pump(mut follower: Follower, changes: broadcast::Sender<Change>) {
    let mut status = follower.watch_status();
    let announce = tokio::spawn(async move {
        let mut connections = 0;
        while status.changed().await.is_ok() {
            let s = status.borrow_and_update().clone();
            if s.connected && s.connections > connections {
                connections = s.connections;
                let cursor = s.cursor.map(|c| c.to_string());
                println!(
                    "{}",
                    json!({"kind": "following", "connections": connections, "cursor": cursor})
                );
            }
        }
    });
    while let Some(item) = follower.next().await {
        match item {
            Ok(item) => {
                if let Some(change) = Change::of(item) {
                    // No listen stream open: nobody to tell.
                    let _ = changes.send(change);
                }
            }
            Err(error) => {
                tracing::error!(%error, "mcp-fanout refused the follower; no more changes from other replicas");
                break;
            }
        }
    }
    announce.abort();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let first = args.fanout.first().cloned().unwrap_or_default();
    let mut publisher = Publisher::new(args.fanout_admin.as_deref().unwrap_or(&first));
    if let Some(t) = &args.token {
        publisher = publisher.token(t);
    }
    let mut follower = Follower::builder(&first);
    for url in args.fanout.iter().skip(1) {
        follower = follower.url(url);
    }
    let follower = follower.spawn()?;
    let (changes, _) = broadcast::channel(1024);
    tokio::spawn(pump(follower, changes.clone()));

    let server = Server {
        publisher,
        changes,
        tool_router: Server::tool_router(),
    };
    let mut config =
        StreamableHttpServerConfig::default().with_sse_keep_alive(Some(Duration::from_secs(15)));
    if !args.allowed_hosts.is_empty() {
        config = config.with_allowed_hosts(args.allowed_hosts.clone());
    }
    let service: StreamableHttpService<Server, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(server.clone()), Default::default(), config);
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind, args.port)).await?;
    let addr = listener.local_addr()?;
    println!("{}", json!({"kind": "listening", "addr": addr.to_string()}));
    tracing::info!(%addr, fanout = ?args.fanout, "serving MCP on /mcp");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
