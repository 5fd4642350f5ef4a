//! The accept loop: hyper-util connections with bounded headers, a write-stall deadline on every
//! socket (hyper has no write timeout), per-connection info for handlers, event streams handed
//! off to their own writers after the head, graceful shutdown.
//!
//! Open connections are capped below the open-file limit. At the cap, a connection just accepted
//! takes the place of the one with nothing in progress for the longest, which is closed
//! ([`idle`]); with every connection busy the loop stops accepting (new connections wait in the
//! kernel's listen backlog) until one closes. So `accept` never fails for want of a file
//! descriptor (one connection beyond the cap waits accepted, within the files kept for the
//! process), idle sockets never keep a client out, and the admin listener, which has a cap of its
//! own, keeps answering. Connections that do nothing are closed by their deadlines too.

pub mod handoff;
mod idle;
pub mod own_task;
mod parse_errors;
mod self_wake;
mod stall;
pub mod stream_watch;
pub mod workers;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::{ClosedLabel, CodeLabel};
use crate::per_client::{ClientKey, PerClient, Place};
use crate::socket::{SocketState, StreamCut};
use crate::trusted_proxies::TrustedProxies;
use handoff::HandOff;
use idle::{Idle, Sheddable};
use own_task::OwnTask;
use parse_errors::{Exchanges, ParseError};
use self_wake::SelfWake;
use stall::StallGuard;
use stream_watch::{StreamExec, StreamWatch, Watching};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most bytes hyper's h2 layer buffers per HTTP/2 stream beyond what the stream's flow-control
/// window lets out (hyper's default is 400 KiB).
const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// What handlers know about the connection a request came on.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The address this request is from: the peer's, unless a proxy listed in
    /// `FANOUT_TRUSTED_PROXIES` named another for it (set per request by the edge).
    pub client: IpAddr,
    /// The socket's unsent backlog and its bound, and why the server cut it (a write stall, a
    /// backlog over the bound), if it did.
    pub socket: SocketState,
    /// Where a stream response leaves hyper for its own writer (HTTP/1.1).
    pub handoff: HandOff,
    /// The connection's place under the listener's cap (and its client's, under
    /// `FANOUT_MAX_CONNECTIONS_PER_CLIENT`), held by everything that holds its socket (hyper's
    /// connection, a handed-off stream's writer).
    pub slot: Option<Arc<ConnSlot>>,
    /// The service's responses not yet all on the wire (tells hyper's own parse-error answers
    /// from them).
    pub exchanges: Exchanges,
    /// The connection's own task, where a handler keeps a handle for the next request, watched
    /// beside hyper's side (`own_task`): on HTTP/1.x requests only, whose handlers run inside
    /// that task.
    pub own_task: Option<OwnTask>,
}

impl ConnInfo {
    /// A connection's details as the accept loop makes them for a new connection from `peer`,
    /// without a place under a cap (for tests that drive handlers and sockets directly).
    #[cfg(test)]
    pub fn for_peer(peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            peer,
            client: peer.ip(),
            socket: SocketState::default(),
            handoff: HandOff::default(),
            slot: None,
            exchanges: Exchanges::default(),
            own_task: None,
        }
    }

    /// The request's own stream when the connection carries others (HTTP/2): the server resets it
    /// alone when it takes nothing for the write-stall deadline.
    pub fn stream_cut(&self) -> Option<StreamCut> {
        StreamWatch::current().map(|w| w.cut())
    }
}

/// A connection's places: under the listener's cap, and under its client's.
pub struct ConnSlot {
    _listener: OwnedSemaphorePermit,
    _client: Option<Place>,
}

/// Connections per client on a listener (`FANOUT_MAX_CONNECTIONS_PER_CLIENT`): the client is the
/// TCP peer (an address, an IPv6 /64); peers in `FANOUT_TRUSTED_PROXIES` carry many clients' requests
/// and are not bounded.
#[derive(Clone)]
pub struct ConnectionsPerClient {
    pub table: Arc<PerClient>,
    pub exempt: Option<TrustedProxies>,
}

/// What becomes of a new connection under [`ConnectionsPerClient`].
enum Admit {
    /// Its peer is a listed proxy: not bounded.
    Exempt,
    /// It holds one of its client's places.
    Placed(Place),
    /// Its client holds its share already.
    Refused,
}

impl ConnectionsPerClient {
    fn admit(&self, peer: IpAddr) -> Admit {
        if self.exempt.as_ref().is_some_and(|t| t.contains(peer)) {
            return Admit::Exempt;
        }
        self.table
            .take(ClientKey::of(peer))
            .map_or(Admit::Refused, Admit::Placed)
    }
}

/// Refused connections being answered at once, at most; past it one is closed unanswered.
const MAX_REFUSALS_ANSWERING: usize = 64;

#[derive(Clone)]
pub struct ConnOptions {
    /// The listener's name in logs and metrics (`public`, `admin`).
    pub role: &'static str,
    pub write_stall: Duration,
    /// A connection that has not started a request this long after accept is closed.
    pub first_request: Duration,
    /// A connection with no request in progress this long is closed.
    pub idle: Duration,
    /// Most open connections on the listener.
    pub max_connections: usize,
    /// Most streams open at once on one HTTP/2 connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub http2_max_streams: u32,
    /// Give each connection an [`OwnTask`] (proxy mode's public listener: its handlers may keep
    /// an upstream connection there). Off, a connection's task polls nothing beside hyper.
    pub own_tasks: bool,
    /// Most connections one client may hold open (`None`: no bound per client).
    pub per_client: Option<ConnectionsPerClient>,
    /// Serve each connection on one of the connection [`workers`] (when they run), not on the
    /// listener's runtime.
    pub on_workers: bool,
}

/// The listen backlog asked for (the kernel bounds it by `net.core.somaxconn`): connections past
/// the cap wait there.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with a backlog deep enough for connections to wait past the cap.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How often reaching the connection cap is logged, at most.
const CAP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where the listeners count what happens below the router, once the replica's state is built
/// (the listeners serve before; what happens while the replica starts is not counted): the
/// requests hyper refuses while parsing them and the connections refused at accept
/// (`http_errors`), and the connections closed for doing nothing (`connections_closed`).
#[derive(Clone, Default)]
pub struct ListenerCounts(Arc<OnceLock<ListenerFamilies>>);

/// The metric families [`ListenerCounts`] counts into.
pub struct ListenerFamilies {
    pub http_errors: Family<CodeLabel, Counter>,
    pub connections_closed: Family<ClosedLabel, Counter>,
}

impl ListenerCounts {
    /// Counts from now on into `families` (the first call wins). Every listener's reasons are
    /// created at zero, so rates and alerts see zeros, not gaps.
    pub fn count_into(&self, families: ListenerFamilies) {
        for listener in ["public", "admin"] {
            for why in Idle::ALL {
                let _ = families.connections_closed.get_or_create(&ClosedLabel {
                    listener,
                    reason: why.as_str(),
                });
            }
        }
        let _ = self.0.set(families);
    }

    fn count(&self, code: &'static str) {
        if let Some(f) = self.0.get() {
            f.http_errors.get_or_create(&CodeLabel { code }).inc();
        }
    }

    fn closed(&self, listener: &'static str, why: Idle) {
        if let Some(f) = self.0.get() {
            f.connections_closed
                .get_or_create(&ClosedLabel {
                    listener,
                    reason: why.as_str(),
                })
                .inc();
        }
    }
}

/// An HTTP/2 request names its host in `:authority`, which hyper puts in the URI, not in a `Host`
/// header: it is copied into `Host` (for a request without one), so what comes after sees the host
/// whatever the version — the proxy's `Forwarded: host=` and `X-Forwarded-Host`, the same-origin
/// check.
fn host_from_authority<B>(req: &mut hyper::Request<B>) {
    if req.version() != hyper::Version::HTTP_2 || req.headers().contains_key(hyper::header::HOST) {
        return;
    }
    let authority = req
        .uri()
        .authority()
        .and_then(|a| hyper::header::HeaderValue::from_str(a.as_str()).ok());
    if let Some(value) = authority {
        req.headers_mut().insert(hyper::header::HOST, value);
    }
}

/// A request the listener answers without its router: the handler behind the edge, called
/// directly with the connection's details (see [`RouterSlot::set_with_direct`]).
pub type DirectRoute =
    Arc<dyn Fn(hyper::Request<Body>, ConnInfo) -> BoxFuture<'static, Response> + Send + Sync>;

/// What a listener serves: its router, and the route it answers before it (`POST /mcp`, the
/// request a proxying replica answers most).
struct Served {
    router: Router,
    post_mcp: Option<DirectRoute>,
}

/// The router a listener serves, replaceable while serving: a replica answers probes with a
/// "starting" router while the database comes up, then switches to the full one.
#[derive(Clone)]
pub struct RouterSlot(Arc<std::sync::RwLock<Served>>);

impl RouterSlot {
    pub fn new(router: Router) -> RouterSlot {
        RouterSlot(Arc::new(std::sync::RwLock::new(Served {
            router,
            post_mcp: None,
        })))
    }

    pub fn set(&self, router: Router) {
        self.replace(Served {
            router,
            post_mcp: None,
        });
    }

    /// `router`, with `POST /mcp` answered by `post_mcp` without it. `post_mcp` must answer as
    /// the router's own route would (the same layers around the same handler): what it saves is
    /// the router's work per request — the route lookup, a boxed service cloned and a future
    /// boxed per layer — on the request a proxying replica answers most.
    pub fn set_with_direct(&self, router: Router, post_mcp: DirectRoute) {
        self.replace(Served {
            router,
            post_mcp: Some(post_mcp),
        });
    }

    fn replace(&self, served: Served) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = served;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Served> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The route answering `req` without the router, if there is one.
    fn direct_for<B>(&self, req: &hyper::Request<B>) -> Option<DirectRoute> {
        if req.method() != hyper::Method::POST || req.uri().path() != "/mcp" {
            return None;
        }
        self.read().post_mcp.clone()
    }

    fn current(&self) -> Router {
        self.read().router.clone()
    }
}

/// A request's answer in the making: by a route the listener answers itself, or by the router.
enum Answering<R> {
    Direct(BoxFuture<'static, Response>),
    Routed(R),
}

/// Serves the slot's router on `listener` until `stop` is cancelled, then waits for open
/// connections and handed-off streams to finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    slot: RouterSlot,
    opts: ConnOptions,
    stop: CancellationToken,
    refused: ListenerCounts,
) {
    let builder = http_builder(opts.write_stall, opts.http2_max_streams);
    let graceful = GracefulShutdown::new();
    let writers = TaskTracker::new();
    let mut cap = Cap {
        slots: Arc::new(Semaphore::new(opts.max_connections.max(1))),
        sheddable: Arc::new(Sheddable::default()),
        logged: None,
    };
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_ANSWERING));
    let mut refusal_logged: Option<Instant> = None;
    // Connections served on the workers have their handed-off streams written here.
    let on_workers = opts.on_workers && workers::started();
    let home = on_workers.then(Handle::current);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends (files opened elsewhere in the process): back off
                    // instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The client's bound first: a client past it never makes room for itself.
        let client_place = match opts.per_client.as_ref().map(|l| l.admit(peer.ip())) {
            None | Some(Admit::Exempt) => None,
            Some(Admit::Placed(place)) => Some(place),
            Some(Admit::Refused) => {
                refuse(stream, peer, &refusals, &refused, &opts);
                if refusal_logged.is_none_or(|at| at.elapsed() >= CAP_LOG_EVERY) {
                    refusal_logged = Some(Instant::now());
                    tracing::warn!(%peer, "a client holds as many connections as it may (FANOUT_MAX_CONNECTIONS_PER_CLIENT); refusing its next ones");
                }
                continue;
            }
        };
        let Some(slot_permit) = cap.slot(&stop, &opts).await else {
            break;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let conn = Connection {
            peer,
            slot: slot.clone(),
            slot_permit,
            client_place,
            member: cap.sheddable.join(),
            builder: builder.clone(),
            graceful: graceful.watcher(),
            writers: writers.clone(),
            counts: refused.clone(),
            opts: opts.clone(),
            home: home.clone(),
        };
        if !on_workers {
            tokio::spawn(conn.serve(stream));
            continue;
        }
        // Moved to a worker's reactor: the socket leaves this runtime's first.
        if let Some(task) = workers::moved(stream, peer, |stream| conn.serve(stream)) {
            workers::spawn(task);
        }
    }
    drop(listener);
    graceful.shutdown().await;
    writers.close();
    writers.wait().await;
}

/// An accepted connection and what serving it needs.
struct Connection {
    peer: SocketAddr,
    slot: RouterSlot,
    slot_permit: OwnedSemaphorePermit,
    client_place: Option<Place>,
    member: idle::Member,
    builder: auto::Builder<StreamExec>,
    graceful: Watcher,
    writers: TaskTracker,
    counts: ListenerCounts,
    opts: ConnOptions,
    /// The runtime the listener serves on, where a handed-off stream's writer runs, when the
    /// connection is served on a worker.
    home: Option<Handle>,
}

impl Connection {
    /// Serves the connection until it ends, is closed for doing nothing, or is drained; on the
    /// runtime it is polled on (its socket registered there).
    async fn serve(self, stream: TcpStream) {
        let Connection {
            peer,
            slot,
            slot_permit,
            client_place,
            member,
            builder,
            graceful,
            writers,
            counts,
            opts,
            home,
        } = self;
        let info = ConnInfo {
            peer,
            client: peer.ip(),
            socket: SocketState::default(),
            handoff: HandOff::default(),
            slot: Some(Arc::new(ConnSlot {
                _listener: slot_permit,
                _client: client_place,
            })),
            exchanges: Exchanges::default(),
            own_task: opts.own_tasks.then(OwnTask::default),
        };
        let own_task = info.own_task.clone();
        let activity = member.activity().clone();
        let io = TokioIo::new(
            StallGuard::new(
                stream,
                opts.write_stall,
                info.clone(),
                writers,
                counts.clone(),
            )
            .timing_heads(activity.clone())
            .writing_streams_on(home),
        );
        let handoff = info.handoff.clone();
        let (first_request, idle, role) = (opts.first_request, opts.idle, opts.role);
        let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            let mut conn = info.clone();
            if req.version() >= hyper::Version::HTTP_2 {
                // Its handler runs as a task of its own, beside the connection's other streams.
                conn.own_task = None;
            }
            host_from_authority(&mut req);
            let in_flight = activity.begin(req.version() < hyper::Version::HTTP_2);
            let exchange = info.exchanges.begin();
            let answering = match slot.direct_for(&req) {
                Some(route) => Answering::Direct(route(req.map(Body::new), conn)),
                None => {
                    req.extensions_mut().insert(conn);
                    Answering::Routed(slot.current().oneshot(req))
                }
            };
            async move {
                let resp = match answering {
                    Answering::Direct(answer) => answer.await,
                    Answering::Routed(answer) => answer.await?,
                };
                let resp = exchange.carried_by(resp);
                // The request is in progress until its response body is done; on HTTP/2 the
                // body is under its stream's write-stall deadline, whatever it carries.
                let watch = StreamWatch::current();
                Ok::<_, Infallible>(resp.map(|body| Watching::new(body, watch, in_flight)))
            }
        });
        let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(svc));
        let conn = graceful.watch(conn.into_owned());
        // The connection's wakes during its own poll (hyper's body channel, each request) are
        // answered in place, not by a trip through the scheduler (see `self_wake`).
        SelfWake::new(async move {
            tokio::select! {
                ended = conn => {
                    if let Err(error) = ended {
                        // A handed-off stream ends hyper's side with an error, by design.
                        if !handoff.is_handed_off() {
                            tracing::debug!(%error, %peer, "connection ended with an error");
                        }
                    }
                }
                never = OwnTask::run_if_any(own_task.as_ref()) => match never {},
                why = member.expired(first_request, idle) => {
                    counts.closed(role, why);
                    tracing::debug!(%peer, reason = why.as_str(), "closing a connection that does nothing");
                }
            }
            drop(member);
            if let Some(own) = &own_task {
                own.end();
            }
        })
        .await;
    }
}

/// A connection over its client's bound: answered `429 too_many_connections` (counted) and closed,
/// by a task of its own while fewer than [`MAX_REFUSALS_ANSWERING`] are being answered; else
/// closed at once, so refusals never hold more than that many sockets.
fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    refusals: &Arc<Semaphore>,
    refused: &ListenerCounts,
    opts: &ConnOptions,
) {
    refused.count(ParseError::TooManyConnections.code());
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let limit = opts.write_stall;
    tokio::spawn(async move {
        parse_errors::answer(stream, ParseError::TooManyConnections, limit, peer).await;
        drop(permit);
    });
}

/// hyper's HTTP/1.1 and HTTP/2 settings: header limits and timeouts, h2's stream limit and send
/// buffer.
fn http_builder(write_stall: Duration, http2_max_streams: u32) -> auto::Builder<StreamExec> {
    // HTTP/2 streams run as tasks of their own, each under the write-stall deadline.
    let mut builder = auto::Builder::new(StreamExec { write_stall });
    builder
        .http1()
        .timer(TokioTimer::new())
        // Off: it would time every wait for a head, idle keep-alives included; heads are timed
        // from their first byte instead (`idle::HEAD_WITHIN`).
        .header_read_timeout(None)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        // Set here, not left to hyper, whose default (200) is not part of its stable API.
        .max_concurrent_streams(http2_max_streams)
        // What h2 buffers per stream beyond what its flow-control window lets out.
        .max_send_buf_size(H2_MAX_SEND_BUF);
    builder
}

/// A listener's connection cap, and what makes room under it.
struct Cap {
    /// One permit per place under the cap.
    slots: Arc<Semaphore>,
    /// The listener's connections, which may be asked to make room.
    sheddable: Arc<Sheddable>,
    /// When reaching the cap with every connection busy was last logged.
    logged: Option<Instant>,
}

impl Cap {
    /// A place under the cap for a connection just accepted. At the cap, the connection with
    /// nothing in progress for the longest is asked to close ([`idle`]) and its place is taken
    /// when it has; with every connection busy, the new one waits (the ones after it in the
    /// listen backlog) until one closes or goes idle — the first to go idle gives up its place —
    /// as it is said at most every `CAP_LOG_EVERY`. `None` once `stop` is cancelled.
    async fn slot(
        &mut self,
        stop: &CancellationToken,
        opts: &ConnOptions,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        let asked = self.sheddable.want_place();
        if !asked && self.logged.is_none_or(|at| at.elapsed() >= CAP_LOG_EVERY) {
            self.logged = Some(Instant::now());
            tracing::warn!(
                listener = opts.role,
                max_connections = opts.max_connections,
                "connection cap reached with every connection busy; new connections wait for one to close or go idle"
            );
        }
        let place = tokio::select! {
            _ = stop.cancelled() => None,
            p = self.slots.clone().acquire_owned() => p.ok(),
        };
        self.sheddable.place_found();
        place
    }
}
