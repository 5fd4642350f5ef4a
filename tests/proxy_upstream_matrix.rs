//! the sidecar works with every upstream mode platforms run, for every official client.
//!
//! One Postgres deployment (one schema). Per upstream mode, a replica in proxy mode in front of its
//! own upstream with `FANOUT_MINT_SESSION_IDS=true` (so stateless upstreams get a session id, and
//! stateful ones keep theirs); the upstreams advertise `tools.listChanged` themselves (no
//! `FANOUT_ADVERTISE_LIST_CHANGED`, but for the 2.3 `MCPServer`, which advertises it only to
//! 2026-07-28 clients). One more proxy replica ("replica 2", in front of a stateless
//! FastMCP server of its own) is where the test publishes, through its admin endpoint.
//!
//! Upstream modes: the Python SDK 1.30 FastMCP server stateful / stateless × SSE / JSON answers,
//! the TypeScript SDK 1.32 `StreamableHTTPServerTransport` stateful (`sessionIdGenerator`) and
//! stateless (`undefined`), and the Python SDK 2.3 `MCPServer` (which speaks 2026-07-28 too).
//!
//! Clients on each mode's replica, unmodified (tests/e2e/): the Python SDK 1.30 client (GET stream)
//! and the TypeScript SDK 1.32 client (GET stream, `listChanged` handler that refetches
//! `tools/list`), and the Python SDK 2.3 client at 2026-07-28 (`subscriptions/listen`, a refetch on
//! each event), each making one `tools/call add(2, 40)` through the proxy. All cells run at once.
//!
//! Proven per cell: the legacy clients initialize (stateless upstream: a minted session id;
//! stateful: the upstream's own) and open their GET stream; the 2.3 client negotiates 2026-07-28
//! also in front of a 2025-era upstream (the proxy's era bridge, `FANOUT_BRIDGE_2026_CLIENTS=true`: `server/discover` answered from
//! its own handshake, requests forwarded at the upstream's version and session) and listens; every
//! client gets `42` from the upstream's tool and receives the one published
//! `notifications/tools/list_changed` exactly once (the legacy ones with its id); the refetches of
//! the TypeScript and 2.3 clients list the tool added upstream just before the publish.
//!
//! Also here: deleting a minted session ends its stream on every replica, and in JWT mode only its
//! owner may delete it; a session its owner used lately is not read again for each forwarded request; the era bridge renews its session when the upstream forgets it, and keeps
//! one upstream session per caller's credentials, opened with them, closing the least recently used
//! upstream beyond `FANOUT_BRIDGE_MAX_SESSIONS`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

mod e2e;

use std::path::Path;
use std::time::Duration;

use e2e::{
    call_text, get_streams, is_kind, is_notification, py1_client_with, py2_client, ts_client_with,
    wire_event_ids, Proc, Upstream,
};
use futures::future::join_all;
use mcp_fanout_testkit::Deployment;
use mcp_fanout_testkit::{Replica, SseRequest, StreamEnd};
use serde_json::{json, Value};

/// Upper bound for one step of one cell (a client starting, a notification arriving); every cell
/// runs at once on a small machine.
const STEP: Duration = Duration::from_secs(60);

const TOOLS: &str = "notifications/tools/list_changed";

/// The tool added to every upstream just before the publish: a refetch must list it.
const LATE_TOOL: &str = "added_late";

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Python SDK 1.30 FastMCP.
    Py1 { stateless: bool, json: bool },
    /// TypeScript SDK 1.32 `StreamableHTTPServerTransport` (SSE answers).
    Ts { stateless: bool },
    /// Python SDK 2.3 `MCPServer` (2026-07-28, and the handshake era with sessions of its own).
    Py2,
}

const MODES: [Mode; 7] = [
    Mode::Py1 {
        stateless: true,
        json: false,
    },
    Mode::Py1 {
        stateless: true,
        json: true,
    },
    Mode::Py1 {
        stateless: false,
        json: false,
    },
    Mode::Py1 {
        stateless: false,
        json: true,
    },
    Mode::Ts { stateless: false },
    Mode::Ts { stateless: true },
    Mode::Py2,
];

impl Mode {
    fn label(self) -> String {
        let state = |s: bool| if s { "stateless" } else { "stateful" };
        match self {
            Mode::Py1 { stateless, json } => format!(
                "py1-{}-{}",
                state(stateless),
                if json { "json" } else { "sse" }
            ),
            Mode::Ts { stateless } => format!("ts-{}", state(stateless)),
            Mode::Py2 => "py2".to_string(),
        }
    }

    fn stateless(self) -> bool {
        match self {
            Mode::Py1 { stateless, .. } | Mode::Ts { stateless } => stateless,
            Mode::Py2 => false,
        }
    }

    /// Whether the upstream advertises `tools.listChanged` to handshake-era clients itself (the
    /// 2.3 `MCPServer` does not: its replica rewrites the `initialize` result).
    fn advertises_list_changed(self) -> bool {
        !matches!(self, Mode::Py2)
    }

    async fn start(self) -> Upstream {
        let label = format!("upstream-{}", self.label());
        match self {
            Mode::Py1 { stateless, json } => {
                let mut flags = vec!["--list-changed"];
                if stateless {
                    flags.push("--stateless");
                }
                if json {
                    flags.push("--json-response");
                }
                Upstream::py1(&label, &flags).await
            }
            Mode::Ts { stateless } => Upstream::ts(&label, stateless).await,
            Mode::Py2 => Upstream::start(e2e::UpstreamKind::V2, &label).await,
        }
    }
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mcp-fanout"))
}

async fn replica(label: &str, env: &[(&str, &str)]) -> Replica {
    Replica::start(bin(), label, env)
        .await
        .unwrap_or_else(|e| panic!("replica `{label}` should start and become ready: {e}"))
}

/// The text of the first content item of a `tools/call` result.
/// One upstream mode: its upstream, its proxy replica, the clients on it.
struct Cell {
    mode: Mode,
    upstream: Upstream,
    replica: Replica,
    py1: Proc,
    ts: Proc,
    py2: Proc,
}

impl Cell {
    fn name(&self) -> String {
        self.mode.label()
    }

    /// A legacy client is connected: `ready`, its tool call answered with the upstream's `42`,
    /// its first GET stream open with the priming frame (an id) in. Returns the `ready` line.
    async fn legacy_ready(&self, p: &Proc) -> Result<Value, String> {
        let name = format!("{} {}", self.name(), p.label());
        let (_, ready) = p
            .try_wait_line(0, STEP, |v| is_kind(v, "ready"))
            .await
            .map_err(|e| format!("{name}: {e} waiting for `ready`\n{}", p.transcript()))?;
        let (_, called) = p
            .try_wait_line(0, STEP, |v| is_kind(v, "called"))
            .await
            .map_err(|e| format!("{name}: {e} waiting for `called`\n{}", p.transcript()))?;
        if call_text(&called.value["result"]) != Some("42") {
            return Err(format!(
                "{name}: tools/call add(2, 40) through the proxy did not return the upstream's 42: \
                 {}",
                called.value
            ));
        }
        // The first SSE frame with an id is on the first GET stream (its priming frame).
        p.try_wait_line(0, STEP, |v| is_kind(v, "sse") && v["id"].is_string())
            .await
            .map_err(|e| {
                format!(
                    "{name}: {e} waiting for a GET stream with its priming frame\n{}",
                    p.transcript()
                )
            })?;
        if get_streams(&p.lines()).first().map(|s| s.status) != Some(200) {
            return Err(format!("{name}: its first GET stream\n{}", p.transcript()));
        }
        let session = ready.value["session"].as_str().unwrap_or("");
        // A stateless upstream issues none: the proxy mints one (its own form); a stateful one
        // issues its own, which must reach the client unchanged.
        let minted = session.starts_with("fanout.");
        if session.is_empty() || minted != self.mode.stateless() {
            return Err(format!(
                "{name}: session id {session:?}: expected {} id",
                if self.mode.stateless() {
                    "a minted"
                } else {
                    "the upstream's own"
                }
            ));
        }
        if ready.value.pointer("/capabilities/tools/listChanged") != Some(&json!(true)) {
            return Err(format!(
                "{name}: the upstream's tools.listChanged did not come through: {}",
                ready.value
            ));
        }
        let tools = e2e::tool_names(&ready.value["tools"]);
        if !(tools.contains(&"add".to_string()) && tools.contains(&"echo".to_string())) {
            return Err(format!("{name}: tools/list through the proxy: {tools:?}"));
        }
        Ok(ready.value)
    }

    /// Everything is up: legacy clients ready, the 2.3 client at 2026-07-28 (whatever the
    /// upstream's era), its tool call answered, listening.
    async fn ready(&self) -> Result<(), String> {
        self.legacy_ready(&self.py1).await?;
        self.legacy_ready(&self.ts).await?;
        let p = &self.py2;
        let name = format!("{} {}", self.name(), p.label());
        let name = &name;
        let wait = |kind: &'static str| async move {
            p.try_wait_line(0, STEP, |v| is_kind(v, kind))
                .await
                .map(|(_, l)| l.value)
                .map_err(|e| format!("{name}: {e} waiting for `{kind}`\n{}", p.transcript()))
        };
        let connected = wait("connected").await?;
        if connected["protocol"] != "2026-07-28" {
            return Err(format!(
                "{}: negotiated {}",
                p.label(),
                connected["protocol"]
            ));
        }
        let called = wait("called").await?;
        if call_text(&called["result"]) != Some("42") {
            return Err(format!(
                "{}: tools/call add(2, 40) at 2026-07-28 did not return the upstream's 42: {called}",
                p.label()
            ));
        }
        wait("ready").await?;
        Ok(())
    }

    /// After the publish of `id`: each client got it, once.
    async fn delivered(&self, id: &str) -> Result<(), String> {
        for p in [&self.py1, &self.ts] {
            let name = format!("{} {}", self.name(), p.label());
            p.try_wait_line(0, STEP, |v| is_notification(v, TOOLS))
                .await
                .map_err(|e| format!("{name}: {e} waiting for {TOOLS}\n{}", p.transcript()))?;
            let ids = wire_event_ids(&p.lines());
            if ids != [id] {
                return Err(format!(
                    "{name}: event ids on its GET streams {ids:?}, expected exactly [{id}]"
                ));
            }
        }
        // The TypeScript client's listChanged handler, the 2.3 client's loop: each refetches.
        for p in [&self.ts, &self.py2] {
            let name = format!("{} {}", self.name(), p.label());
            let (_, refetched) = p
                .try_wait_line(0, STEP, |v| is_kind(v, "refetched"))
                .await
                .map_err(|e| format!("{name}: {e} waiting for the refetch\n{}", p.transcript()))?;
            if !e2e::tool_names(&refetched.value["tools"]).contains(&LATE_TOOL.to_string()) {
                return Err(format!(
                    "{name}: the refetch did not list the tool added upstream: {}",
                    refetched.value
                ));
            }
        }
        // Exactly once, also after the refetches had time to run.
        for p in [&self.py1, &self.ts, &self.py2] {
            let got = p.count(|v| is_notification(v, TOOLS));
            if got != 1 {
                return Err(format!(
                    "{} {}: {got} × {TOOLS}, expected 1\n{}",
                    self.name(),
                    p.label(),
                    p.transcript()
                ));
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_official_client_works_through_a_minting_proxy_for_every_upstream_mode() {
    e2e::ensure_setup();
    let pg = Deployment::fresh("matrix").await;
    let (database_url, schema) = (pg.url(), pg.schema.clone());

    let (upstreams, publisher_upstream) = tokio::join!(
        join_all(MODES.iter().map(|m| m.start())),
        Upstream::py1("upstream-replica2", &["--stateless", "--list-changed"]),
    );
    let proxy_env = |upstream: &str, advertise: bool| {
        let mut env = vec![
            ("DATABASE_URL".to_string(), database_url.clone()),
            ("FANOUT_SCHEMA".to_string(), schema.clone()),
            ("FANOUT_UPSTREAM".to_string(), upstream.to_string()),
            ("FANOUT_MINT_SESSION_IDS".to_string(), "true".to_string()),
            // The Python 2.3 client listens through 2025-era upstreams only with the bridge.
            ("FANOUT_BRIDGE_2026_CLIENTS".to_string(), "true".to_string()),
        ];
        if advertise {
            env.push((
                "FANOUT_ADVERTISE_LIST_CHANGED".to_string(),
                "true".to_string(),
            ));
        }
        env
    };
    let start = |label: String, env: Vec<(String, String)>| async move {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        replica(&label, &pairs).await
    };
    let (replicas, publisher) = tokio::join!(
        join_all(MODES.iter().zip(&upstreams).map(|(m, up)| start(
            format!("replica1-{}", m.label()),
            proxy_env(&up.url, !m.advertises_list_changed())
        ))),
        start("replica2".into(), proxy_env(&publisher_upstream.url, false)),
    );

    let cells: Vec<Cell> = MODES
        .iter()
        .zip(upstreams)
        .zip(replicas)
        .map(|((&mode, upstream), replica)| {
            let url = replica.public_url("/mcp");
            let label = mode.label();
            Cell {
                mode,
                py1: py1_client_with(&format!("{label}/py1"), &url, &["--call"]),
                ts: ts_client_with(&format!("{label}/ts"), &url, &["--call"]),
                py2: py2_client(&format!("{label}/py2"), &url, &["--call"]),
                upstream,
                replica,
            }
        })
        .collect();

    let failures: Vec<String> = join_all(cells.iter().map(Cell::ready))
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cells failed to connect:\n{}",
        failures.len(),
        cells.len(),
        failures.join("\n\n")
    );

    // A tool appears upstream, then the list_changed is published on replica 2.
    join_all(cells.iter().map(|c| c.upstream.add_tool(LATE_TOOL))).await;
    let id = publisher
        .publish_ok(&json!({ "method": TOOLS }))
        .await
        .expect("publish on replica 2");

    let failures: Vec<String> = join_all(cells.iter().map(|c| c.delivered(&id)))
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cells failed after the publish of {id}:\n{}",
        failures.len(),
        cells.len(),
        failures.join("\n\n")
    );
    for c in &cells {
        eprintln!(
            "[test] {}: py1, ts, py2 (listen) ok (replica {})",
            c.name(),
            c.replica.label()
        );
    }
}

/// A minted session is the proxy's own (the stateless upstream never saw it): its `DELETE` is
/// answered by the proxy, ends the session's stream on another replica, and forgets the session
/// (a GET presenting it is then `404 session_not_found`, so the client initializes again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_minted_session_ends_its_stream_on_every_replica() {
    e2e::ensure_setup();
    let pg = Deployment::fresh("minted_delete").await;
    let (database_url, schema) = (pg.url(), pg.schema.clone());
    let up = Upstream::py1("upstream-minted-delete", &["--stateless"]).await;
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("FANOUT_SCHEMA", schema.as_str()),
        ("FANOUT_UPSTREAM", up.url.as_str()),
        ("FANOUT_MINT_SESSION_IDS", "true"),
    ];
    let (a, b) = tokio::join!(replica("A", &env), replica("B", &env));

    let (session, stream_req, mut stream) = open_minted_session(&a, &[]).await;

    let deleted = e2e::http()
        .delete(b.public_url("/mcp"))
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("DELETE through B");
    assert_eq!(deleted.status(), 200, "DELETE of a minted session");
    expect_ended(&a, &stream_req, &mut stream).await;
}

/// `initialize` through `r` (with `headers`) for a minted session, and its GET stream on `r`,
/// primed: the session id, the stream's request and the stream.
async fn open_minted_session(
    r: &Replica,
    headers: &[(&str, &str)],
) -> (String, SseRequest, mcp_fanout_testkit::SseConn) {
    let init = e2e::post_rpc(&r.public_url("/mcp"), &e2e::initialize_request(1), headers).await;
    assert_eq!(init.status, 200, "initialize through {}", r.label());
    let session = init
        .header("mcp-session-id")
        .expect("a minted session id")
        .to_string();
    assert!(session.starts_with("fanout."), "minted: {session}");
    let stream_req = headers.iter().fold(
        SseRequest::mcp().protocol("2025-11-25").session(&session),
        |req, (n, v)| req.header(n, v),
    );
    let mut stream = r.subscribe(&stream_req).await.expect("GET /mcp");
    assert_eq!(stream.status(), 200, "the minted session's GET stream");
    let priming = stream
        .next_frame(STEP)
        .await
        .expect("read the stream")
        .expect("a priming frame");
    assert!(priming.is_priming(), "first frame: {}", priming.text());
    (session, stream_req, stream)
}

/// The deleted session's stream on `r` ends cleanly, and a new GET for it is `404`.
async fn expect_ended(
    r: &Replica,
    stream_req: &SseRequest,
    stream: &mut mcp_fanout_testkit::SseConn,
) {
    let (_, end) = stream.drain(STEP).await.expect("the stream ends");
    assert_eq!(end, StreamEnd::Clean, "the stream for the deleted session");
    let again = r.subscribe(stream_req).await.expect("GET /mcp again");
    assert_eq!(again.status(), 404, "a GET with the deleted session");
}

/// The symptom ("Session terminated" inside `initialize`) is what the Python SDK makes of a
/// `404` to its `initialize` POST. The proxy relays the upstream's answers as they are, so an
/// upstream URL that is not the MCP endpoint (here: the server's root, without `/mcp`) gives
/// exactly that — and the replica's log names the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_url_without_the_mcp_path_is_named_in_the_log() {
    e2e::ensure_setup();
    let up = Upstream::py1("upstream-wrong-path", &["--stateless"]).await;
    let root = up.base("/");
    let r = replica(
        "wrong-path",
        &[
            ("FANOUT_UPSTREAM", root.as_str()),
            ("FANOUT_MINT_SESSION_IDS", "true"),
        ],
    )
    .await;
    let init = e2e::post_rpc(&r.public_url("/mcp"), &e2e::initialize_request(1), &[]).await;
    assert_eq!(init.status, 404, "the upstream's own 404, relayed");
    assert!(
        init.header("mcp-session-id").is_none(),
        "no session is minted for a failed initialize"
    );
    r.wait_for_log("the 404 to initialize, explained", STEP, |v| {
        v.pointer("/fields/message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains("FANOUT_UPSTREAM must be the MCP endpoint"))
    })
    .await
    .expect("the replica logs why initialize got a 404");
}

/// `FANOUT_UPSTREAM` written as a base URL with no path (`http://127.0.0.1:PORT`), as a new user
/// writes it: requests keep their own path (`/mcp`), so the official 2.x client connects through
/// the proxy and calls the upstream's tool (it used to get the upstream's `404` to a request for
/// `/`, which the SDK reports as "Session terminated").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_base_url_without_a_path_forwards_to_the_requests_own_path() {
    e2e::ensure_setup();
    let up = Upstream::start(e2e::UpstreamKind::V2, "upstream-base-url").await;
    let base = up.base("");
    assert!(!base.ends_with('/'), "a base URL with no path: {base}");
    let r = replica("base-url", &[("FANOUT_UPSTREAM", base.as_str())]).await;
    let client = py2_client("py2-base-url", &r.public_url("/mcp"), &["--call"]);
    let (_, called) = client.wait_kind("called", 0, STEP).await;
    assert_eq!(
        called.value.pointer("/result/content/0/text"),
        Some(&json!("42")),
        "the upstream's tool answered through the proxy: {}",
        called.value
    );
    client.wait_kind("ready", 0, STEP).await;
}

/// The era bridge's own session with a stateful 2025-era upstream is renewed when the upstream
/// forgets it (a restart): the next 2026 request gets a `404` upstream, the replica performs a new
/// handshake and retries, and the client sees only the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_era_bridge_renews_its_session_when_the_upstream_forgets_it() {
    e2e::ensure_setup();
    let up = Upstream::ts("upstream-ts-forgetful", false).await;
    let r = replica(
        "bridge-renewal",
        &[
            ("FANOUT_UPSTREAM", up.url.as_str()),
            ("FANOUT_BRIDGE_2026_CLIENTS", "true"),
        ],
    )
    .await;
    let rpc = |id: u64, method: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        }}})
    };
    let modern = |method: &'static str| {
        [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ]
    };
    let url = r.public_url("/mcp");
    let discover =
        e2e::post_rpc(&url, &rpc(1, "server/discover"), &modern("server/discover")).await;
    assert_eq!(discover.status, 200, "server/discover through the bridge");
    let result = &discover.messages()[0]["result"];
    assert_eq!(
        result["supportedVersions"],
        json!(["2026-07-28"]),
        "{result}"
    );
    assert_eq!(
        result["capabilities"]["tools"]["listChanged"], true,
        "{result}"
    );
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "e2e-ts-upstream"
    );

    let list = |id: u64| {
        let url = url.clone();
        async move { e2e::post_rpc(&url, &rpc(id, "tools/list"), &modern("tools/list")).await }
    };
    let first = list(2).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.messages()[0]["result"]["resultType"], "complete");
    let forgot = e2e::http()
        .post(up.base("/forget-sessions"))
        .send()
        .await
        .expect("POST /forget-sessions");
    let forgot: Value = forgot.json().await.expect("JSON");
    assert_eq!(forgot["forgotten"], 1, "the bridge's one session: {forgot}");

    let second = list(3).await;
    assert_eq!(
        second.status, 200,
        "tools/list after the upstream forgot the session"
    );
    let tools = &second.messages()[0]["result"]["tools"];
    assert!(
        tools
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "add")),
        "{tools}"
    );
    let after: Value = e2e::http()
        .post(up.base("/forget-sessions"))
        .send()
        .await
        .expect("POST /forget-sessions")
        .json()
        .await
        .expect("JSON");
    assert_eq!(after["initialized"], 2, "one new handshake: {after}");
}

/// In proxy + JWT mode a session's `DELETE` is its owner's, as its GET is, and so are the POSTs
/// and the resuming GETs (a cursor of the upstream's) the proxy forwards in it: without a
/// credential they get `401`, from another principal (the same `sub` of another tenant, a token
/// without `sub`) `403`, and her stream goes on; her own call goes through, her own `DELETE` ends
/// the session on every replica. A minted id that was
/// never recorded is `404`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_owner_deletes_a_session_in_jwt_mode() {
    use mcp_fanout_testkit::error_shape::expect_http_error;
    use mcp_fanout_testkit::http::HttpResponse;
    use mcp_fanout_testkit::jwt::{hs256, now_secs};

    const SECRET: &str = "owner-delete-secret";
    e2e::ensure_setup();
    let pg = Deployment::fresh("owner_delete").await.with_admin();
    let up = Upstream::py1("upstream-owner-delete", &["--stateless"]).await;
    let replicas = pg
        .replicas(
            "odel-",
            2,
            &[
                ("FANOUT_UPSTREAM", up.url.as_str()),
                ("FANOUT_MINT_SESSION_IDS", "true"),
                ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
                ("FANOUT_JWT_ANY_AUDIENCE", "true"),
                ("FANOUT_JWT_SECRET", SECRET),
            ],
        )
        .await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let bearer = |claims: Value| {
        let mut claims = claims;
        claims["exp"] = json!(now_secs() + 600);
        format!("Bearer {}", hs256(SECRET, &claims))
    };
    let alice = bearer(json!({ "sub": "alice", "tenant": "A" }));

    let (session, stream_req, mut stream) =
        open_minted_session(a, &[("authorization", alice.as_str())]).await;

    // A request through B in `session`, with `authorization` if any.
    let send = |req: reqwest::RequestBuilder, session: String, authorization: Option<String>| async move {
        let mut req = req
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(auth) = authorization {
            req = req.header("authorization", auth);
        }
        HttpResponse::read(req.send().await.expect("a request through B"))
            .await
            .expect("its answer")
    };
    let delete = |session, auth| send(e2e::http().delete(b.public_url("/mcp")), session, auth);
    let refused = [
        ("no credential", None, 401, "unauthorized"),
        (
            "alice of tenant B",
            Some(bearer(json!({ "sub": "alice", "tenant": "B" }))),
            403,
            "forbidden",
        ),
        (
            "a token of tenant A without sub",
            Some(bearer(json!({ "tenant": "A" }))),
            403,
            "forbidden",
        ),
    ];
    // Her session named in a forwarded POST or in a GET resuming an upstream stream (a cursor
    // that is not ours): refused alike, before anything reaches the upstream.
    let post = |session, auth| {
        let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 1, "b": 2}}});
        let req = e2e::http()
            .post(b.public_url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(call.to_string());
        send(req, session, auth)
    };
    let resume = |session, auth| {
        let req = e2e::http()
            .get(b.public_url("/mcp"))
            .header("accept", "text/event-stream")
            .header("last-event-id", "an-upstream-event-7");
        send(req, session, auth)
    };
    for (what, auth, status, code) in refused {
        let resp = delete(session.clone(), auth.clone()).await;
        expect_http_error(
            &format!("DELETE of alice's session by {what}"),
            &resp,
            status,
            code,
        );
        let resp = resume(session.clone(), auth.clone()).await;
        expect_http_error(
            &format!("a resuming GET of alice's session by {what}"),
            &resp,
            status,
            code,
        );
        let resp = post(session.clone(), auth).await;
        assert_eq!(
            resp.status.as_u16(),
            status,
            "tools/call in alice's session by {what}: {}",
            resp.text()
        );
        let answer: Value = serde_json::from_slice(&resp.body).expect("a JSON-RPC answer");
        assert!(
            answer["error"]["message"].is_string() && answer.get("result").is_none(),
            "tools/call in alice's session by {what}: {answer}"
        );
    }
    // Her own call in her session is forwarded.
    let hers = post(session.clone(), Some(alice.clone())).await;
    assert_eq!(hers.status.as_u16(), 200, "her own call: {}", hers.text());
    // Her stream goes on: her session's next event is the next thing on it.
    let id = b
        .publish_ok(&json!({
            "method": "notifications/test/after-deletes",
            "session": session,
        }))
        .await
        .expect("publish to her session");
    let ev = stream
        .next_event(STEP)
        .await
        .expect("read the stream")
        .expect("the stream is still open after the refused DELETEs");
    assert_eq!(ev.id.as_deref(), Some(id.as_str()), "{}", ev.text());

    let never = delete(
        "fanout.0123456789abcdefghijklmnopqrstuv".to_string(),
        Some(alice.clone()),
    )
    .await;
    expect_http_error(
        "DELETE of a minted id never recorded",
        &never,
        404,
        "session_not_found",
    );

    let deleted = delete(session.clone(), Some(alice.clone())).await;
    assert_eq!(
        deleted.status.as_u16(),
        200,
        "her own DELETE: {}",
        deleted.text()
    );
    expect_ended(a, &stream_req, &mut stream).await;
}

/// In Postgres mode a request forwarded in a session its owner used lately does not read the
/// session's owner again (one read stands for 30 s, `session::recent_owners`): with the sessions
/// table locked, so that every read of it waits out `FANOUT_DB_TIMEOUT_MS`, alpha's call in her
/// session is still forwarded and answered, while beta naming it (never remembered: another's
/// is asked each time) gets `503`; once the lock is gone, beta is refused with `403` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_its_owner_used_lately_is_not_read_again_for_each_request() {
    e2e::ensure_setup();
    let pg = Deployment::fresh("recent_owner").await;
    let up = Upstream::py1("upstream-recent-owner", &["--stateless", "--json-response"]).await;
    let r = pg
        .replica(
            "recent-owner",
            &[
                ("FANOUT_UPSTREAM", up.url.as_str()),
                ("FANOUT_MINT_SESSION_IDS", "true"),
                ("FANOUT_SUBSCRIBER_AUTH", "header"),
                ("FANOUT_DB_TIMEOUT_MS", "1000"),
            ],
        )
        .await;
    let url = r.public_url("/mcp");
    let alpha = [("x-fanout-tenant", "alpha")];
    let init = e2e::post_rpc(&url, &e2e::initialize_request(1), &alpha).await;
    assert_eq!(init.status, 200, "initialize");
    let session = init
        .header("mcp-session-id")
        .expect("a minted session id")
        .to_string();
    let call = |id: u64, tenant: &'static str| {
        let (url, session) = (url.clone(), session.clone());
        async move {
            let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 2, "b": 40}}});
            let headers = [
                ("x-fanout-tenant", tenant),
                ("mcp-session-id", session.as_str()),
                ("mcp-protocol-version", "2025-11-25"),
            ];
            e2e::post_rpc(&url, &body, &headers).await
        }
    };
    let answered = |a: &e2e::Answer, what: &str| {
        assert_eq!(
            a.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let messages = a.messages();
        assert_eq!(
            messages.first().and_then(|m| call_text(&m["result"])),
            Some("42"),
            "{what}: {messages:?}"
        );
    };
    answered(&call(2, "alpha").await, "alpha's call in her session");
    assert_eq!(
        call(3, "beta").await.status,
        403,
        "beta naming alpha's session"
    );

    // Every read of the sessions table now waits for this lock, and times out.
    let mut holder = pg.client().await;
    let lock = holder.transaction().await.expect("begin");
    lock.batch_execute(&format!(
        "LOCK TABLE {}.sessions IN ACCESS EXCLUSIVE MODE",
        pg.schema
    ))
    .await
    .expect("lock the sessions table");
    answered(
        &call(4, "alpha").await,
        "alpha's call while the sessions table is locked",
    );
    let beta = call(5, "beta").await;
    assert_eq!(
        beta.status,
        503,
        "beta's call waits for the table: {}",
        String::from_utf8_lossy(&beta.body)
    );
    lock.rollback().await.expect("release the lock");
    assert_eq!(
        call(6, "beta").await.status,
        403,
        "beta, the table readable again"
    );
    answered(&call(7, "alpha").await, "alpha's call after the lock");
}

/// The era bridge gives each caller's credentials an upstream session of its own, opened with
/// them: two principals' 2026 clients reach a stateful 2025-era upstream on distinct sessions whose
/// handshakes carried their own `Authorization` (the upstream's `whoami` tool reports it), and a
/// caller without credentials gets a third. With `FANOUT_BRIDGE_MAX_SESSIONS=2`, that third one
/// evicts the least recently used, which the replica closes upstream with `DELETE`; its owner's
/// next request opens a new session, with its own credentials again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_era_bridge_keeps_an_upstream_session_per_principal() {
    e2e::ensure_setup();
    let up = Upstream::ts("upstream-ts-principals", false).await;
    let r = replica(
        "bridge-principals",
        &[
            ("FANOUT_UPSTREAM", up.url.as_str()),
            ("FANOUT_BRIDGE_2026_CLIENTS", "true"),
            ("FANOUT_BRIDGE_MAX_SESSIONS", "2"),
        ],
    )
    .await;
    let url = r.public_url("/mcp");
    let whoami = |id: u64, authorization: Option<&'static str>| {
        let url = url.clone();
        async move {
            let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
                "name": "whoami", "arguments": {},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {}
                }
            }});
            let mut headers = vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ];
            if let Some(a) = authorization {
                headers.push(("authorization", a));
            }
            let answer = e2e::post_rpc(&url, &body, &headers).await;
            assert_eq!(answer.status, 200, "whoami as {authorization:?}");
            let result = answer.messages()[0]["result"].clone();
            assert_eq!(result["resultType"], "complete", "{result}");
            let text = call_text(&result).unwrap_or_else(|| panic!("a text result: {result}"));
            serde_json::from_str::<Value>(text).expect("whoami's JSON")
        }
    };
    let sessions = || async {
        e2e::http()
            .get(up.base("/sessions"))
            .send()
            .await
            .expect("GET /sessions")
            .json::<Value>()
            .await
            .expect("JSON")
    };
    const ALICE: &str = "Bearer alice-credential";
    const BOB: &str = "Bearer bob-credential";

    let alice = whoami(1, Some(ALICE)).await;
    let bob = whoami(2, Some(BOB)).await;
    for (who, seen, auth) in [("alice", &alice, ALICE), ("bob", &bob, BOB)] {
        assert_eq!(
            seen["handshakeAuthorization"], auth,
            "{who}'s upstream session was opened with {who}'s credentials: {seen}"
        );
        assert_eq!(seen["requestAuthorization"], auth, "{who}: {seen}");
    }
    assert!(
        alice["session"].is_string() && alice["session"] != bob["session"],
        "two principals, two upstream sessions: {alice} {bob}"
    );
    let alice_again = whoami(3, Some(ALICE)).await;
    assert_eq!(
        alice_again["session"], alice["session"],
        "alice keeps her session"
    );

    // A caller without credentials: a session of its own, opened without any; bob's (the least
    // recently used) makes room and is closed upstream.
    let anonymous = whoami(4, None).await;
    assert_eq!(
        anonymous["handshakeAuthorization"],
        Value::Null,
        "{anonymous}"
    );
    assert!(
        anonymous["session"] != alice["session"] && anonymous["session"] != bob["session"],
        "{anonymous}"
    );
    let bob_session = bob["session"].clone();
    mcp_fanout_testkit::wait_until(
        "bob's evicted session is deleted upstream",
        STEP,
        || async {
            let s = sessions().await;
            s["deleted"] == 1
                && s["live"]
                    .as_array()
                    .is_some_and(|l| l.iter().all(|x| x["id"] != bob_session))
        },
    )
    .await
    .expect("the evicted session is closed upstream");

    let bob_again = whoami(5, Some(BOB)).await;
    assert_eq!(bob_again["handshakeAuthorization"], BOB, "{bob_again}");
    assert!(
        bob_again["session"] != bob["session"] && bob_again["session"] != alice["session"],
        "bob gets a new session of his own: {bob_again}"
    );
    // Bob's return made room by evicting alice's (now the least recently used).
    let want: Vec<(Value, Value)> = vec![
        (anonymous["session"].clone(), Value::Null),
        (bob_again["session"].clone(), json!(BOB)),
    ];
    let waited = mcp_fanout_testkit::wait_until(
        "alice's evicted session is deleted upstream",
        STEP,
        || async {
            let s = sessions().await;
            let mut live: Vec<(Value, Value)> = s["live"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|x| (x["id"].clone(), x["authorization"].clone()))
                        .collect()
                })
                .unwrap_or_default();
            live.sort_by_key(|(id, _)| id.to_string());
            let mut want = want.clone();
            want.sort_by_key(|(id, _)| id.to_string());
            s["deleted"] == 2 && s["initialized"] == 4 && live == want
        },
    )
    .await;
    if let Err(e) = waited {
        panic!("{e}: the upstream's sessions: {}", sessions().await);
    }
}

/// A session used only through the proxy (no GET stream holds it) is in use: each request
/// forwarded in it marks it, so a flood of new session ids past `FANOUT_MAX_SESSIONS` (another
/// principal's polls, each binding one) pushes the flood's own oldest ids out, not hers — and the
/// flooder cannot then have her session forwarded, or bind it and lock her out (the probe's
/// re-check found both when only streams and polls marked a session). Memory mode, bound 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_used_only_through_the_proxy_is_not_pushed_out() {
    use mcp_fanout_testkit::jwt::{hs256, now_secs};
    use mcp_fanout_testkit::{poll_with, start_memory};

    const SECRET: &str = "in-use-secret";
    e2e::ensure_setup();
    let up = Upstream::py1("upstream-in-use", &["--stateless"]).await;
    let r = start_memory(
        "in-use",
        &[
            ("FANOUT_UPSTREAM", up.url.as_str()),
            ("FANOUT_MINT_SESSION_IDS", "true"),
            ("FANOUT_SUBSCRIBER_AUTH", "jwt"),
            ("FANOUT_JWT_ANY_AUDIENCE", "true"),
            ("FANOUT_JWT_SECRET", SECRET),
            ("FANOUT_MAX_SESSIONS", "50"),
        ],
    )
    .await;
    let bearer = |sub: &str| {
        let claims = json!({ "sub": sub, "exp": now_secs() + 600 });
        format!("Bearer {}", hs256(SECRET, &claims))
    };
    let (alice, bob) = (bearer("alice"), bearer("bob"));
    let init = e2e::post_rpc(
        &r.public_url("/mcp"),
        &e2e::initialize_request(1),
        &[("authorization", alice.as_str())],
    )
    .await;
    assert_eq!(init.status, 200, "initialize");
    let session = init
        .header("mcp-session-id")
        .expect("a minted session id")
        .to_string();
    let call = |auth: String| {
        let (url, session) = (r.public_url("/mcp"), session.clone());
        async move {
            let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 1, "b": 2}}});
            let headers = [
                ("authorization", auth.as_str()),
                ("mcp-session-id", session.as_str()),
                ("mcp-protocol-version", "2025-11-25"),
            ];
            e2e::post_rpc(&url, &body, &headers).await.status
        }
    };
    // Bob's poll naming `session`: binds it to him if it is free.
    let bind = |session: String| {
        let headers = [
            ("authorization".to_string(), bob.clone()),
            ("mcp-session-id".to_string(), session),
        ];
        let r = &r;
        async move { poll_with(r, "timeout=0", &headers).await.status.as_u16() }
    };
    for n in 0..40 {
        assert_eq!(bind(format!("bob-{n}")).await, 200, "bob binds {n}");
    }
    assert_eq!(call(alice.clone()).await, 200, "her call in her session");
    for n in 40..80 {
        assert_eq!(bind(format!("bob-{n}")).await, 200, "bob binds {n}");
    }
    assert_eq!(call(bob.clone()).await, 403, "bob's call in her session");
    assert_eq!(
        bind(session.clone()).await,
        403,
        "bob's poll in her session"
    );
    assert_eq!(call(alice).await, 200, "she still has it");
}
