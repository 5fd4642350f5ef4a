//! Connection workers: one single-threaded runtime per core, each serving the connections handed
//! to it from accept to close, as nginx's worker processes do.
//!
//! On tokio's shared multi-thread scheduler a connection's task, its upstream connection's task
//! and the I/O driver's wake-ups move between the worker threads: a request pays for wakes across
//! threads, work stealing and the cache lines that travel with them. Here a connection stays on
//! the thread it was handed to: its socket is registered with that thread's reactor, and
//! everything it spawns (an HTTP/2 stream, a handed-off event stream's writer, an upstream
//! connection, from the worker's own pool) runs there too. Measured on a proxied request against
//! a static upstream (2 cores, 8 connections, alternating): 38.5–40 µs of CPU against 43–49 on the
//! shared scheduler, ~20 % more requests per second (BENCHMARKS.md, `proxy-overhead`). The
//! broadcaster, the database bridge, the accept loops and everything else stay on the process's
//! main runtime; the two meet only through channels and wakers, which work across runtimes.
//!
//! Connections are handed out in turn. A worker's connections share its one core: a handler must
//! not block (none does: the CPU-heavy work is bounded per request).

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// The process's connection workers, once started (`None` in tests that serve in-process: their
/// connections run on the caller's runtime).
static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// The worker this thread is (`None` on any other thread).
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

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

/// Starts `count` connection workers (at least one) for the rest of the process; a second call
/// does nothing.
pub fn start(count: usize) -> Result<(), WorkersError> {
    if WORKERS.get().is_some() {
        return Ok(());
    }
    let mut handles = Vec::with_capacity(count.max(1));
    for i in 0..count.max(1) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("conn-worker-{i}"))
            .spawn(move || {
                CURRENT.with(|c| c.set(Some(i)));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
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

/// Runs `serve` (a connection, from its socket to its end) on the next worker, or on the
/// caller's runtime when no workers were started.
pub fn spawn<F>(serve: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match WORKERS.get() {
        Some(w) => {
            let i = w.next.fetch_add(1, Ordering::Relaxed) % w.handles.len();
            w.handles[i].spawn(serve);
        }
        None => {
            tokio::spawn(serve);
        }
    }
}

/// Whether connections run on workers of their own (their sockets must then be registered on the
/// worker's reactor, not the acceptor's).
pub fn started() -> bool {
    WORKERS.get().is_some()
}

/// Per-thread resources a connection uses (the proxy's upstream pools): one per worker and one
/// for every other thread.
pub fn pools() -> usize {
    count() + 1
}

/// The calling thread's index among [`pools`]: its worker's, else the last.
pub fn pool_index() -> usize {
    current().unwrap_or_else(|| pools() - 1)
}

/// How many workers run (0 before [`start`], and in tests that serve in-process).
pub fn count() -> usize {
    WORKERS.get().map_or(0, |w| w.handles.len())
}

/// The worker the calling thread is, if it is one.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}
