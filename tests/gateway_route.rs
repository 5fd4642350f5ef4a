//! The MCP 2026-07-28 gateway route, as documented (`docs/gateway/nginx.conf` and
//! `docs/gateway/haproxy.cfg`, each run as it is with its addresses replaced): a real nginx, or a
//! real HAProxy, sends POSTs whose `Mcp-Method` is `subscriptions/listen` to mcp-fanout, which
//! serves the stream itself, and everything else to the MCP server (the Python SDK 2.x
//! `MCPServer`, publishing through `FanoutSubscriptionBus`).
//!
//! Official 2026-07-28 clients (Python SDK 2.x `Client.listen`, TypeScript SDK 2.x
//! `client.listen`) use the one gateway URL: discovery and tool calls reach the MCP server, both
//! listen streams are mcp-fanout's (its `listen` subscriber gauge says 2), and the events a tool
//! publishes arrive on them once each, only for the URI each subscribed to.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

mod e2e;

use std::net::SocketAddr;
use std::time::Duration;

use e2e::{call_tools, py2_client, repo, ts2_client, Proc, Upstream};
use mcp_fanout_testkit::{Deployment, HaProxy, Nginx, Replica, ADMIN_TOKEN};

const STEP: Duration = Duration::from_secs(60);
const A: &str = "file:///a";

/// A documented recipe (`docs/gateway/<file>`) with each `(placeholder, replacement)` applied;
/// panics unless every placeholder is in it.
fn recipe(file: &str, replace: &[(String, String)]) -> String {
    let path = repo().join("docs/gateway").join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = text.clone();
    for (from, to) in replace {
        assert!(out.contains(from), "the recipe has `{from}`:\n{text}");
        out = out.replace(from.as_str(), to);
    }
    out
}

/// The events a listener printed: `T` (tools list_changed) or a `resources/updated` URI.
fn events(p: &Proc) -> Vec<String> {
    p.of_kind("event", 0)
        .into_iter()
        .map(|(_, l)| match l.value["event"].as_str() {
            Some("ToolsListChanged") => "T".to_string(),
            _ => l.value["uri"].as_str().unwrap_or("?").to_string(),
        })
        .collect()
}

/// An mcp-fanout replica and the Python SDK 2.x `MCPServer` publishing through it: the replica,
/// the server process, and their `host:port` addresses (server, mcp-fanout).
async fn fanout_and_server(dep: &Deployment) -> (Replica, Upstream, String, String) {
    e2e::ensure_setup();
    let fanout = dep.replica("fanout", &[]).await;
    let fanout_url = fanout.public_url("");
    let server = Upstream::py2bus(
        "mcp-server",
        &[],
        &[
            ("FANOUT_URL", fanout_url.as_str()),
            ("FANOUT_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    let server_addr = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_string();
    let fanout_addr = fanout.public_addr().to_string();
    (fanout, server, server_addr, fanout_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_2026_clients_listen_on_mcp_fanout_through_the_nginx_gateway_route() {
    through(Gateway::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_2026_clients_listen_on_mcp_fanout_through_the_haproxy_gateway_route() {
    through(Gateway::HaProxy).await;
}

enum Gateway {
    Nginx,
    HaProxy,
}

/// The route through `gateway` running its documented config, the MCP server and mcp-fanout
/// behind it.
async fn through(gateway: Gateway) {
    let schema = match gateway {
        Gateway::Nginx => "gateway_nginx",
        Gateway::HaProxy => "gateway_haproxy",
    };
    let dep = Deployment::fresh(schema).await.with_admin();
    let (fanout, _server, server, fanout_addr) = fanout_and_server(&dep).await;
    // Each recipe's placeholders: the MCP servers at 127.0.0.1:3000, mcp-fanout at
    // 127.0.0.1:8080, the gateway on port 8000.
    let (_running, addr): (Box<dyn std::any::Any>, SocketAddr) = match gateway {
        Gateway::Nginx => {
            let lb = Nginx::start(|listen| {
                recipe(
                    "nginx.conf",
                    &[
                        ("server 127.0.0.1:3000;".into(), format!("server {server};")),
                        (
                            "server 127.0.0.1:8080;".into(),
                            format!("server {fanout_addr};"),
                        ),
                        ("listen 8000;".into(), format!("listen {listen};")),
                    ],
                )
            })
            .await;
            let addr = lb.addr;
            (Box::new(lb), addr)
        }
        Gateway::HaProxy => {
            let lb = HaProxy::start(|listen| {
                recipe(
                    "haproxy.cfg",
                    &[
                        (
                            "server mcp1 127.0.0.1:3000".into(),
                            format!("server mcp1 {server}"),
                        ),
                        (
                            "server fanout1 127.0.0.1:8080".into(),
                            format!("server fanout1 {fanout_addr}"),
                        ),
                        ("bind :8000".into(), format!("bind {listen}")),
                    ],
                )
            })
            .await;
            let addr = lb.addr;
            (Box::new(lb), addr)
        }
    };
    clients_listen_through(&format!("http://{addr}/mcp"), &fanout).await;
}

/// Both official 2026 clients listen through the gateway at `url` (subscribed to [`A`]), tool calls
/// through it publish, and each hears its filter's events once, in order.
async fn clients_listen_through(url: &str, fanout: &Replica) {
    let py = py2_client("py-through-gateway", url, &["--uri", A]);
    let ts = ts2_client("ts-through-gateway", url, &["--uri", A]);
    for p in [&py, &ts] {
        let (_, connected) = p.wait_kind("connected", 0, STEP).await;
        assert_eq!(
            connected.value["protocol"],
            "2026-07-28",
            "{}: negotiated 2026-07-28 with the MCP server through the gateway",
            p.label()
        );
        let (_, ready) = p.wait_kind("ready", 0, STEP).await;
        assert_eq!(
            ready.value["honored"]["resourceSubscriptions"][0],
            A,
            "{}: mcp-fanout acknowledged the URI: {}",
            p.label(),
            ready.value
        );
    }
    fanout
        .wait_metric("mcp_fanout_subscribers{kind=\"listen\"}", STEP, |v| {
            v == 2.0
        })
        .await
        .expect("both listen streams are served by mcp-fanout, not the MCP server");

    // Tool calls through the gateway reach the MCP server, which publishes through mcp-fanout.
    call_tools(
        "calls-through-gateway",
        url,
        &[
            "touch_tools",
            r#"touch_resource:{"uri":"file:///b"}"#,
            &format!(r#"touch_resource:{{"uri":"{A}"}}"#),
            "touch_tools",
        ],
        STEP,
    )
    .await;
    for p in [&py, &ts] {
        p.wait_count("the 3 events of its filter", 3, STEP, |v| {
            v.get("kind").and_then(|k| k.as_str()) == Some("event")
        })
        .await;
    }
    // The last event is in: every earlier one has been delivered or filtered out (log order).
    for p in [&py, &ts] {
        assert_eq!(
            events(p),
            ["T", A, "T"],
            "{}\n{}",
            p.label(),
            p.transcript()
        );
    }
}
