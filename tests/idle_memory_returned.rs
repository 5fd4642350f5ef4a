//! A replica gone quiet after a peak gives the memory it freed back to the system: 2,000
//! subscribers connect and leave, and with nothing else happening the replica's resident memory
//! falls back from its peak. The allocator (mimalloc) gives freed memory back only as it is next
//! used, so an idle replica kept it resident (~20 MB after 3,000 subscribers had come and gone,
//! for ever); the replica now asks it to every 5 s.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic; see clippy.toml

use std::time::Duration;

use mcp_fanout_testkit::{start_memory, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SUBSCRIBERS: usize = 2_000;
/// What must come back at least: 2,000 subscribers took ~26 MB; ~6 MB came back on a quiet
/// machine, 3 MB beside two busy loops (the part freed on the thread that runs the give-back; the
/// other worker's comes back as it next allocates). The old code gave back nothing: the resident
/// size stayed at its peak to the byte.
const RETURNED: u64 = 1024 * 1024;

/// An event stream on `GET /mcp`, its head read.
async fn subscribe(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("request");
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.expect("the answer's head");
        assert!(n > 0, "closed before the head");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_freed_after_a_peak_goes_back_to_the_system() {
    let r = start_memory("idle-memory", &[]).await;
    let addr = r.public_addr();
    let mut streams = Vec::with_capacity(SUBSCRIBERS);
    for chunk in 0..SUBSCRIBERS / 100 {
        let opened = futures::future::join_all((0..100).map(|_| subscribe(addr))).await;
        streams.extend(opened);
        assert_eq!(streams.len(), (chunk + 1) * 100);
    }
    let peak = r.rss_bytes().expect("RSS");
    drop(streams);
    // Every subscriber gone (the replica has noticed each close).
    wait_until("the subscribers gone", Duration::from_secs(30), || async {
        r.metric("mcp_fanout_subscribers")
            .await
            .ok()
            .flatten()
            .is_some_and(|n| n == 0.0)
    })
    .await
    .expect("subscribers gone");
    wait_until(
        "the memory freed given back",
        Duration::from_secs(30),
        || async { r.rss_bytes().expect("RSS") + RETURNED <= peak },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: peak {peak} bytes, now {}",
            r.rss_bytes().unwrap_or_default()
        )
    });
}
