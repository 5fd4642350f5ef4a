//! What a connection's streams share with its socket: how many bytes the kernel still holds for the
//! client (written by the server, not yet acknowledged: `SIOCOUTQ`), the bound on its unsent
//! backlog, and why the server cut the connection, if it did. The accept loop ([`crate::server`])
//! keeps it; a stream sets the bound (the kernel then paces writes: past it, the socket takes
//! nothing more until the client has read enough); the socket's writers and the subscriber guard
//! read it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why the server cut a connection under a stream (set before the stream drops, so the drop is
/// counted with this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The socket accepted nothing for the write-stall deadline.
    WriteStall,
}

impl Cut {
    fn code(self) -> u8 {
        match self {
            Cut::WriteStall => 1,
        }
    }

    fn from_code(code: u8) -> Option<Cut> {
        match code {
            1 => Some(Cut::WriteStall),
            _ => None,
        }
    }
}

/// Why the server cut one stream of a connection that carries others (an HTTP/2 stream), if it
/// did. Cheap to clone.
#[derive(Clone, Default)]
pub struct StreamCut(Arc<AtomicU8>);

impl StreamCut {
    pub fn cut(&self, why: Cut) {
        // The first reason stays.
        let _ = self
            .0
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn reason(&self) -> Option<Cut> {
        Cut::from_code(self.0.load(Ordering::Acquire))
    }
}

/// A connection's socket as its streams see it. Cheap to clone (one shared allocation).
#[derive(Clone, Default)]
pub struct SocketState(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// The socket's descriptor while it is open (reset before it closes, so a reused number is
    /// never asked about).
    fd: Mutex<Option<RawFd>>,
    cut: AtomicU8,
    /// Most unsent bytes the kernel queues for a stream on this connection; 0 = no stream, no
    /// bound.
    max_backlog: AtomicUsize,
}

impl SocketState {
    fn fd(&self) -> MutexGuard<'_, Option<RawFd>> {
        self.0.fd.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ties the state to an open socket for as long as the returned guard holds it: the guard
    /// unties them when it drops (before the socket closes) or gives the socket away.
    pub fn attach<S: AsRawFd>(&self, socket: S) -> Attached<S> {
        *self.fd() = Some(socket.as_raw_fd());
        Attached {
            attachment: Attachment(self.clone()),
            socket,
        }
    }

    /// The socket is about to close (or to be given away without this state).
    fn detach(&self) {
        *self.fd() = None;
    }

    /// Bytes the kernel holds for the client: written, not yet acknowledged. `None` when the socket
    /// is closed or the platform cannot tell.
    pub fn unacknowledged(&self) -> Option<usize> {
        let fd = self.fd();
        fd.and_then(unacknowledged)
    }

    /// An event stream runs on this connection: the kernel queues at most about `max` bytes the
    /// client has not been sent yet; past that, writes to the socket wait (they do not fail) until
    /// the client reads. Whether the writer is too slow is for the write-stall deadline and the
    /// lag limit to say, not for this bound.
    pub fn bound_backlog(&self, max: usize) {
        self.0.max_backlog.store(max, Ordering::Release);
        if let Some(fd) = *self.fd() {
            pace(fd, max);
        }
    }

    pub fn max_backlog(&self) -> usize {
        self.0.max_backlog.load(Ordering::Acquire)
    }

    pub fn cut(&self, why: Cut) {
        // The first reason stays.
        let _ = self
            .0
            .cut
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn cut_reason(&self) -> Option<Cut> {
        Cut::from_code(self.0.cut.load(Ordering::Acquire))
    }
}

/// A socket tied to its [`SocketState`] (see [`SocketState::attach`]): while this holds the
/// socket, it is open, so the state may ask the kernel about its descriptor. Dropping it unties
/// the state before the socket closes; [`Attached::into_inner`] unties it and gives the socket
/// away.
pub struct Attached<S: AsRawFd> {
    // Declared first, so it drops (and detaches) before `socket` closes.
    attachment: Attachment,
    socket: S,
}

/// Unties a state from its socket when dropped.
struct Attachment(SocketState);

impl Drop for Attachment {
    fn drop(&mut self) {
        self.0.detach();
    }
}

impl<S: AsRawFd> Attached<S> {
    /// The same socket (the same descriptor) as another type, still tied to the state: `to`
    /// converts it (a tokio socket to std's and back, moving it between runtimes). The state is
    /// untied while `to` runs (it may close the socket when it fails; the state then stays
    /// untied) and tied again to what it returns.
    pub fn try_map<T: AsRawFd, E>(
        self,
        to: impl FnOnce(S) -> Result<T, E>,
    ) -> Result<Attached<T>, E> {
        let Attached { attachment, socket } = self;
        attachment.0.detach();
        let socket = to(socket)?;
        *attachment.0.fd() = Some(socket.as_raw_fd());
        Ok(Attached { attachment, socket })
    }

    /// The socket, no longer tied to the state (which no longer asks the kernel about it).
    pub fn into_inner(self) -> S {
        let Attached { attachment, socket } = self;
        drop(attachment);
        socket
    }
}

impl<S: AsRawFd> std::ops::Deref for Attached<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.socket
    }
}

impl<S: AsRawFd> std::ops::DerefMut for Attached<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.socket
    }
}

/// The client acknowledged bytes between two readings of a socket's [`SocketState::unacknowledged`]
/// (nothing new was written in between): it reads, however slowly.
pub fn drained(before: Option<usize>, after: Option<usize>) -> bool {
    matches!((before, after), (Some(b), Some(a)) if a < b)
}

/// `SIOCOUTQ` (= `TIOCOUTQ`) on a TCP socket: bytes in its send queue not yet acknowledged by the
/// peer.
#[cfg(target_os = "linux")]
fn unacknowledged(fd: RawFd) -> Option<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is an open socket: the caller holds the lock that an [`Attached`] guard takes
    // to detach before its socket closes. TIOCOUTQ writes one c_int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int) };
    if rc < 0 {
        return None;
    }
    usize::try_from(queued).ok()
}

/// Other platforms: the kernel's queue is not known (only the writer's own pending bytes count).
#[cfg(not(target_os = "linux"))]
fn unacknowledged(_fd: RawFd) -> Option<usize> {
    None
}

/// `TCP_NOTSENT_LOWAT`: the socket reports itself writable, and takes more data, only while fewer
/// than `max` of its bytes are still unsent, so a reader's pace sets the writer's.
#[cfg(target_os = "linux")]
fn pace(fd: RawFd, max: usize) {
    let lowat = libc::c_int::try_from(max).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket: the caller holds the lock that an [`Attached`] guard takes
    // to detach before its socket closes. The option value is one c_int, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &lowat as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set");
    }
}

/// Other platforms: the kernel's own send buffer bounds the backlog.
#[cfg(not(target_os = "linux"))]
fn pace(_fd: RawFd, _max: usize) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn the_kernel_queue_of_a_socket_whose_peer_never_reads_is_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpSocket::new_v4().expect("socket");
        client.set_recv_buffer_size(4096).expect("rcvbuf");
        let _client = client.connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let state = SocketState::default();
        let mut server = state.attach(server);
        assert_eq!(state.unacknowledged(), Some(0));
        // Write until the socket is full: whatever it took beyond the peer's small window is held.
        let chunk = vec![b'x'; 64 * 1024];
        while tokio::time::timeout(
            std::time::Duration::from_millis(200),
            server.write_all(&chunk),
        )
        .await
        .is_ok()
        {}
        let held = state.unacknowledged().expect("linux tells");
        assert!(held > 64 * 1024, "held {held}");
        let server = server.into_inner();
        assert_eq!(state.unacknowledged(), None);
        let again = state.attach(server);
        assert!(state.unacknowledged().is_some());
        drop(again);
        assert_eq!(state.unacknowledged(), None, "dropping the guard detaches");
        state.cut(Cut::WriteStall);
        assert_eq!(state.cut_reason(), Some(Cut::WriteStall));
    }

    #[tokio::test]
    async fn a_socket_moved_between_types_stays_tied_and_one_lost_in_the_move_does_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let state = SocketState::default();
        let fd = server.as_raw_fd();
        let moved = state
            .attach(server)
            .try_map(tokio::net::TcpStream::into_std)
            .expect("to std")
            .try_map(tokio::net::TcpStream::from_std)
            .expect("back to tokio");
        assert_eq!(moved.as_raw_fd(), fd);
        assert_eq!(state.unacknowledged(), Some(0), "still tied");
        let lost: Result<Attached<tokio::net::TcpStream>, &str> = moved.try_map(|socket| {
            drop(socket);
            Err("lost")
        });
        assert!(lost.is_err());
        assert_eq!(state.unacknowledged(), None, "untied");
    }
}
