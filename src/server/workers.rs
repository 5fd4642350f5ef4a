//! Connection workers: single-threaded runtimes (`FANOUT_CONNECTION_WORKERS`, default one), each
//! serving the connections handed to it from accept to close, as nginx's worker processes do.
//! Proxy mode's public listener uses them (see `ConnOptions::on_workers`); everything else runs on
//! the process's main runtime.
//!
//! On tokio's shared multi-thread scheduler a connection's wake-ups land on whichever worker
//! thread holds the I/O driver at the time, so a proxied request's two halves (the client's
//! request, the upstream's answer) run on one core or the other, each time from that core's cold
//! caches, and two requests ready at once wake the sleeping worker (a futex, two context
//! switches). Here a connection stays on the thread it was handed to: its socket is registered
//! with that thread's reactor, and what it spawns (an HTTP/2 stream's task) runs there too.
//! Measured on a proxied `tools/call` (bench/notes.md, "Connection workers for proxy mode").
//!
//! What must not wait behind requests leaves them: an event stream handed off after its head
//! (`super::handoff`) is written by a task on the main runtime, as on every other listener, so a
//! fan-out's writes are spread over the main runtime's workers and a worker's requests never
//! queue behind them (nor they behind requests). The broadcaster, the database bridge, the accept
//! loops and the admin listener stay on the main runtime; the two meet only through channels and
//! wakers, which work across runtimes.
//!
//! Connections are handed out in turn. A worker's connections share its one thread: a handler
//! must not block (none does: the CPU-heavy work is bounded per request).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::net::TcpStream;
use tokio::runtime::Handle;

use crate::socket::Attached;

/// The process's connection workers, once started (never, in tests that serve in-process: their
/// connections run on the caller's runtime).
static WORKERS: OnceLock<Workers> = OnceLock::new();

struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("cannot start a connection worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot build a connection worker's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("a connection worker thread ended while starting")]
    Gone,
}

/// Starts `count` connection workers (at least one) for the rest of the process; `on_park` runs
/// whenever one is about to sleep (as the main runtime's `on_thread_park`). A second call does
/// nothing.
pub fn start(count: usize, on_park: fn()) -> Result<(), WorkersError> {
    if WORKERS.get().is_some() {
        return Ok(());
    }
    let mut handles = Vec::with_capacity(count.max(1));
    for i in 0..count.max(1) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("conn-worker-{i}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_park(on_park)
                    .build();
                match rt {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        // Runs the connections spawned onto it for the rest of the process.
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(WorkersError::Thread)?;
        let handle = rx
            .recv()
            .map_err(|_| WorkersError::Gone)?
            .map_err(WorkersError::Runtime)?;
        handles.push(handle);
    }
    let _ = WORKERS.set(Workers {
        handles,
        next: AtomicUsize::new(0),
    });
    Ok(())
}

/// Whether the workers run (the binary starts them in proxy mode; in-process tests never do).
pub fn started() -> bool {
    WORKERS.get().is_some()
}

/// Runs `serve` (a connection, from its socket to its end) on the next worker in turn, or where
/// the caller runs when no workers run (callers check [`started`] first, to keep the socket where
/// it is).
pub fn spawn<F>(serve: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = match WORKERS.get() {
        Some(w) => &w.handles[w.next.fetch_add(1, Ordering::Relaxed) % w.handles.len()],
        None => {
            drop(tokio::spawn(serve));
            return;
        }
    };
    drop(handle.spawn(serve));
}

/// A socket that can leave one runtime's reactor and join another's (its descriptor unchanged).
pub(super) trait Movable: Sized {
    /// The socket while it belongs to no reactor.
    type Detached: Send + 'static;
    /// Deregisters it from the current runtime's reactor.
    fn detach(self) -> io::Result<Self::Detached>;
    /// Registers it with the reactor of the runtime this is called on.
    fn attach(detached: Self::Detached) -> io::Result<Self>;
}

impl Movable for TcpStream {
    type Detached = std::net::TcpStream;

    fn detach(self) -> io::Result<std::net::TcpStream> {
        self.into_std()
    }

    fn attach(detached: std::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::from_std(detached)
    }
}

/// A socket with its state attached stays attached through the move.
impl Movable for Attached<TcpStream> {
    type Detached = Attached<std::net::TcpStream>;

    fn detach(self) -> io::Result<Self::Detached> {
        self.try_map(TcpStream::into_std)
    }

    fn attach(detached: Self::Detached) -> io::Result<Self> {
        detached.try_map(TcpStream::from_std)
    }
}

/// The task that runs `serve` with `socket` on whichever runtime it is spawned onto: the socket
/// leaves this runtime's reactor now and joins the other's when the task first runs. `None` (the
/// socket closed, the failure logged) when it cannot leave.
pub(super) fn moved<S, F, Fut>(
    socket: S,
    peer: SocketAddr,
    serve: F,
) -> Option<impl Future<Output = ()> + Send + 'static>
where
    S: Movable + Send + 'static,
    F: FnOnce(S) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let detached = match socket.detach() {
        Ok(detached) => detached,
        Err(error) => {
            tracing::warn!(%error, %peer, "cannot move a socket to another runtime");
            return None;
        }
    };
    Some(async move {
        match S::attach(detached) {
            Ok(socket) => serve(socket).await,
            Err(error) => tracing::warn!(%error, %peer, "cannot move a socket to another runtime"),
        }
    })
}
