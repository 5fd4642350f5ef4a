//! A client process: holds thousands of SSE connections (one tokio task each, on one thread), and
//! accounts for what each received. Driven by the coordinator with one JSON command per line on
//! stdin; answers one JSON line per command on stdout (plus progress lines while collecting).

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::{BenchError, Result};
use crate::sse::{head_end, parse_head, FrameInfo, SseParser};

/// Where to open connections and the exact request to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnTarget {
    /// Server address.
    pub addr: SocketAddr,
    /// The full HTTP/1.1 request (head and blank line).
    pub request: String,
    /// How many connections this worker opens to it.
    pub count: usize,
}

/// A command from the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open connections; answer `Connected` once every one has its response head (or failed).
    Connect {
        targets: Vec<ConnTarget>,
        src_ips: Vec<Ipv4Addr>,
        parallel: usize,
        timeout_ms: u64,
        /// After the server ends a stream cleanly (its last chunk), reconnect as an SSE client
        /// does: after the server's `retry:`, with `Last-Event-ID` of the last complete frame.
        #[serde(default)]
        resume: bool,
    },
    /// Start a phase: every subscriber should now receive `count` frames. With `last` (coalesced
    /// list_changed), at most `count`, the last of them event `last`: a subscriber is complete
    /// once it has that one, and only fewer frames than `count` are not counted missing.
    Expect {
        count: u64,
        #[serde(default)]
        last: Option<u64>,
    },
    /// Wait until every open subscriber has the expected count (or `timeout_ms`), report the
    /// phase, and reset its counters. Progress lines are sent every second meanwhile.
    Collect { timeout_ms: u64, expect_hash: u64 },
    /// Close every connection and exit.
    Close,
}

/// A worker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to `Connect`.
    Connected {
        ok: usize,
        failed: usize,
        first_error: Option<String>,
    },
    /// Answer to `Expect` and `Close`.
    Ok,
    /// While collecting.
    Progress {
        complete: usize,
        open: usize,
        frames: u64,
    },
    /// Answer to `Collect`.
    Collected(PhaseReport),
    /// A command failed.
    Error { message: String },
}

/// One phase as seen by one worker (or, merged, by all).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Subscribers this worker opened.
    pub subscribers: usize,
    /// Of those, still open at the end.
    pub open: usize,
    /// Subscribers with exactly the expected frames and ids.
    pub complete: usize,
    /// Frames received (with data).
    pub frames: u64,
    /// Expected frames never received (summed over subscribers).
    pub missing: u64,
    /// Frames received beyond the expected count (summed).
    pub extra: u64,
    /// Subscribers with the right count but not the right set of events.
    pub wrong_set: usize,
    /// Frames whose id did not increase over the previous frame's.
    pub order_violations: u64,
    /// Subscribers whose connection ended (server close or error) during the run.
    pub closed: usize,
    /// Reconnections with `Last-Event-ID` after the server ended a stream cleanly (`resume`).
    #[serde(default)]
    pub resumed: u64,
    /// Earliest receive time (unix nanos) of a frame in the phase.
    pub first_recv_ns: u64,
    /// Latest receive time of a frame in the phase.
    pub last_recv_ns: u64,
    /// Publish→receive latency in microseconds, as `(value, count)` pairs.
    pub latency_us: Vec<(u64, u64)>,
    /// One example of why a connection ended.
    pub close_error: Option<String>,
}

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A well-mixed hash of a publish index; phase sets are compared by count and wrapping sum.
pub fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh latency histogram (1 µs … 1 h, 3 significant digits).
pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| BenchError::Protocol(format!("creating a histogram: {e}")))
}

#[derive(Debug, Default, Clone)]
struct Slot {
    count: u64,
    hash: u64,
    order_violations: u64,
    last_key: Option<u64>,
    /// The publish index of the last frame received.
    last_n: Option<u64>,
    /// Reconnections after a clean end, this phase.
    resumes: u64,
    closed: bool,
    error: Option<String>,
}

#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    hist: Histogram<u64>,
    first_recv_ns: u64,
    last_recv_ns: u64,
    expect: u64,
    expect_last: Option<u64>,
}

type Shared = Rc<RefCell<State>>;

/// The worker's entry point: a single-threaded runtime serving commands from stdin.
pub fn run() -> Result<()> {
    crate::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("building the worker runtime", e))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve())
}

async fn serve() -> Result<()> {
    let state: Shared = Rc::new(RefCell::new(State {
        slots: Vec::new(),
        hist: histogram()?,
        first_recv_ns: 0,
        last_recv_ns: 0,
        expect: 0,
        expect_last: None,
    }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| BenchError::io("reading a command", e))?
    {
        let cmd: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                send(
                    &mut out,
                    &Reply::Error {
                        message: format!("bad command {line:?}: {e}"),
                    },
                )
                .await?;
                continue;
            }
        };
        match cmd {
            Command::Connect {
                targets,
                src_ips,
                parallel,
                timeout_ms,
                resume,
            } => {
                let how = Opening {
                    parallel,
                    timeout_ms,
                    resume,
                };
                let reply = connect_all(&state, targets, src_ips, how).await;
                send(&mut out, &reply).await?;
            }
            Command::Expect { count, last } => {
                {
                    let mut st = state.borrow_mut();
                    st.expect = count;
                    st.expect_last = last;
                }
                send(&mut out, &Reply::Ok).await?;
            }
            Command::Collect {
                timeout_ms,
                expect_hash,
            } => {
                let report = collect(&state, &mut out, timeout_ms, expect_hash).await?;
                send(&mut out, &Reply::Collected(report)).await?;
            }
            Command::Close => {
                send(&mut out, &Reply::Ok).await?;
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn send(out: &mut tokio::io::Stdout, reply: &Reply) -> Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    out.write_all(&line)
        .await
        .map_err(|e| BenchError::io("writing a reply", e))?;
    out.flush()
        .await
        .map_err(|e| BenchError::io("flushing a reply", e))
}

/// How a worker opens its connections.
#[derive(Debug, Clone, Copy)]
struct Opening {
    /// Connections being opened at once.
    parallel: usize,
    /// Deadline for a connection and its response head.
    timeout_ms: u64,
    /// Reconnect after a clean end (see [`Command::Connect`]).
    resume: bool,
}

/// Why `read_loop` returns when the server ends a stream with its last chunk.
const CLEAN_END: &str = "stream ended by server (last chunk)";
/// Reconnection delay when the server sent no `retry:`.
const DEFAULT_RETRY_MS: u64 = 1000;

async fn connect_all(
    state: &Shared,
    targets: Vec<ConnTarget>,
    src_ips: Vec<Ipv4Addr>,
    how: Opening,
) -> Reply {
    let sem = Rc::new(tokio::sync::Semaphore::new(how.parallel.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::result::Result<(), String>>();
    let mut total = 0usize;
    let ips = if src_ips.is_empty() {
        vec![Ipv4Addr::LOCALHOST]
    } else {
        src_ips
    };
    for target in &targets {
        for _ in 0..target.count {
            let idx = {
                let mut st = state.borrow_mut();
                st.slots.push(Slot::default());
                st.slots.len() - 1
            };
            let src = ips[total % ips.len()];
            total += 1;
            let addr = target.addr;
            let request = target.request.clone();
            let state = Rc::clone(state);
            let tx = tx.clone();
            let sem = Rc::clone(&sem);
            tokio::task::spawn_local(async move {
                let permit = sem.acquire().await;
                let opened = open_within(addr, src, &request, how.timeout_ms).await;
                drop(permit);
                let why = match opened {
                    Ok((stream, parser, rest)) => {
                        let _ = tx.send(Ok(()));
                        follow(
                            stream,
                            parser,
                            rest,
                            &state,
                            idx,
                            (addr, src, &request),
                            how,
                        )
                        .await
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.clone()));
                        e
                    }
                };
                let mut st = state.borrow_mut();
                st.slots[idx].closed = true;
                st.slots[idx].error = Some(why);
            });
        }
    }
    drop(tx);
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    while ok + failed < total {
        match rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    Reply::Connected {
        ok,
        failed,
        first_error,
    }
}

/// [`open`] within `timeout_ms`.
async fn open_within(
    addr: SocketAddr,
    src: Ipv4Addr,
    request: &str,
    timeout_ms: u64,
) -> std::result::Result<(TcpStream, SseParser, Vec<u8>), String> {
    tokio::time::timeout(Duration::from_millis(timeout_ms), open(addr, src, request))
        .await
        .unwrap_or_else(|_| Err(format!("connect/head timed out after {timeout_ms} ms")))
}

/// Reads one subscriber's stream until it ends; with `how.resume`, a clean end is followed by a
/// reconnect with `Last-Event-ID` (counted in the slot) and reading goes on. Why it ended.
async fn follow(
    mut stream: TcpStream,
    mut parser: SseParser,
    mut first: Vec<u8>,
    state: &Shared,
    idx: usize,
    (addr, src, request): (SocketAddr, Ipv4Addr, &str),
    how: Opening,
) -> String {
    loop {
        let why = read_loop(stream, &mut parser, first, state, idx).await;
        if !how.resume || why != CLEAN_END {
            return why;
        }
        let Some(id) = parser
            .resume_id()
            .map(|id| String::from_utf8_lossy(id).into_owned())
        else {
            return why;
        };
        let retry = parser.retry_ms().unwrap_or(DEFAULT_RETRY_MS);
        tokio::time::sleep(Duration::from_millis(retry)).await;
        let again = with_last_event_id(request, &id);
        match open_within(addr, src, &again, how.timeout_ms).await {
            Ok((s, mut p, rest)) => {
                state.borrow_mut().slots[idx].resumes += 1;
                // The new stream's parser, keeping what a client keeps across reconnects.
                p.keep_across_reconnect(&parser);
                (stream, parser, first) = (s, p, rest);
            }
            Err(e) => return format!("resuming after a clean end: {e}"),
        }
    }
}

/// `request` (a head ending in a blank line) with `Last-Event-ID: id` in place of any it had.
fn with_last_event_id(request: &str, id: &str) -> String {
    let mut out = String::with_capacity(request.len() + id.len() + 17);
    for line in request.trim_end_matches("\r\n").split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("last-event-id:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Last-Event-ID: ");
    out.push_str(id);
    out.push_str("\r\n\r\n");
    out
}

async fn open(
    addr: SocketAddr,
    src: Ipv4Addr,
    request: &str,
) -> std::result::Result<(TcpStream, SseParser, Vec<u8>), String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if addr.ip().is_loopback() && src != Ipv4Addr::LOCALHOST {
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))
            .map_err(|e| format!("bind {src}: {e}"))?;
    }
    let mut stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr} from {src}: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write request: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut tmp)
            .await
            .map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err("closed before the response head".to_string());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = head_end(&buf) {
            let head = parse_head(&buf[..end - 4]).ok_or("unparsable response head")?;
            if head.status != 200 {
                return Err(format!(
                    "status {}: {}",
                    head.status,
                    String::from_utf8_lossy(&buf[..buf.len().min(300)])
                ));
            }
            let rest = buf[end..].to_vec();
            return Ok((stream, SseParser::new(head.chunked), rest));
        }
        if buf.len() > 16 * 1024 {
            return Err("response head too long".to_string());
        }
    }
}

async fn read_loop(
    mut stream: TcpStream,
    parser: &mut SseParser,
    first: Vec<u8>,
    state: &Shared,
    idx: usize,
) -> String {
    let mut buf = vec![0u8; 4096];
    let mut pending = first;
    let mut lat: Vec<u64> = Vec::new();
    loop {
        if !pending.is_empty() {
            absorb(parser, &pending, state, idx, &mut lat);
            pending = Vec::new();
        }
        if parser.done() {
            return CLEAN_END.to_string();
        }
        match stream.read(&mut buf).await {
            Ok(0) => return "connection closed by server".to_string(),
            Ok(n) => absorb(parser, &buf[..n], state, idx, &mut lat),
            Err(e) => return format!("read: {e}"),
        }
    }
}

fn absorb(parser: &mut SseParser, bytes: &[u8], state: &Shared, idx: usize, lat: &mut Vec<u64>) {
    let now = now_ns();
    let mut got: Vec<FrameInfo> = Vec::new();
    parser.feed(bytes, &mut |f| got.push(f));
    if got.is_empty() {
        return;
    }
    lat.clear();
    let mut st = state.borrow_mut();
    let slot = &mut st.slots[idx];
    for f in &got {
        slot.count += 1;
        if let Some(n) = f.n {
            slot.hash = slot.hash.wrapping_add(mix(n));
            slot.last_n = Some(n);
        }
        if let Some(k) = f.key {
            if slot.last_key.is_some_and(|last| k <= last) {
                slot.order_violations += 1;
            }
            slot.last_key = Some(k);
        }
        if let Some(t) = f.t {
            lat.push(now.saturating_sub(t) / 1000);
        }
    }
    for &us in lat.iter() {
        let _ = st.hist.record(us.max(1));
    }
    if st.first_recv_ns == 0 || now < st.first_recv_ns {
        st.first_recv_ns = now;
    }
    st.last_recv_ns = st.last_recv_ns.max(now);
}

async fn collect(
    state: &Shared,
    out: &mut tokio::io::Stdout,
    timeout_ms: u64,
    expect_hash: u64,
) -> Result<PhaseReport> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let mut next_progress = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let (complete, open, frames) = {
            let st = state.borrow();
            let expect = st.expect;
            let last = st.expect_last;
            let mut complete = 0;
            let mut open = 0;
            let mut frames = 0;
            for s in &st.slots {
                frames += s.count;
                if !s.closed {
                    open += 1;
                    let done = match last {
                        Some(n) => s.last_n == Some(n),
                        None => s.count >= expect,
                    };
                    if done {
                        complete += 1;
                    }
                }
            }
            (complete, open, frames)
        };
        let now = tokio::time::Instant::now();
        if complete == open || now >= deadline {
            break;
        }
        if now >= next_progress {
            send(
                out,
                &Reply::Progress {
                    complete,
                    open,
                    frames,
                },
            )
            .await?;
            next_progress = now + Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A moment for duplicates that would follow the last expected frame.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut st = state.borrow_mut();
    let expect = st.expect;
    let last = st.expect_last;
    let mut r = PhaseReport {
        subscribers: st.slots.len(),
        first_recv_ns: st.first_recv_ns,
        last_recv_ns: st.last_recv_ns,
        ..PhaseReport::default()
    };
    for s in &mut st.slots {
        r.frames += s.count;
        r.order_violations += s.order_violations;
        r.resumed += s.resumes;
        if s.closed {
            r.closed += 1;
            if r.close_error.is_none() {
                r.close_error.clone_from(&s.error);
            }
        } else {
            r.open += 1;
        }
        if let Some(n) = last {
            // Coalesced: the newest must be there (it counts as the one missing otherwise).
            if s.last_n != Some(n) {
                r.missing += 1;
            } else if s.count > expect {
                r.extra += s.count - expect;
            } else if s.order_violations == 0 {
                r.complete += 1;
            }
        } else if s.count < expect {
            r.missing += expect - s.count;
        } else if s.count > expect {
            r.extra += s.count - expect;
        } else if s.hash != expect_hash {
            r.wrong_set += 1;
        } else if s.order_violations == 0 {
            r.complete += 1;
        }
        s.count = 0;
        s.hash = 0;
        s.order_violations = 0;
        s.last_n = None;
        s.resumes = 0;
    }
    r.latency_us = st
        .hist
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    st.hist.reset();
    st.first_recv_ns = 0;
    st.last_recv_ns = 0;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_request_carries_one_last_event_id() {
        let head = "GET /mcp HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e-1\r\nAccept: text/event-stream\r\n\r\n";
        assert_eq!(
            with_last_event_id(head, "e-9"),
            "GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nLast-Event-ID: e-9\r\n\r\n"
        );
        let plain = "GET /mcp HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            with_last_event_id(plain, "e-2"),
            "GET /mcp HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e-2\r\n\r\n"
        );
    }
}
