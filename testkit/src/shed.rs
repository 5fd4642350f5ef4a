//! The shed check (contract §3.2): a GET a replica cannot serve — at `FANOUT_MAX_SUBSCRIBERS`,
//! draining, or without the database — gets `200`, an event stream, a `retry:` uniform in [R, 2R]
//! (R = `FANOUT_RETRY_MS`) and an immediate clean end; never `404`/`503`, which would make
//! EventSource and the SDK clients give up for good.

use std::time::Duration;

use crate::replica::Replica;
use crate::requests::open_stream_with;
use crate::sse::{Frame, SseRequest};

/// How long a shed stream may take to end ("at once", with room for a loaded machine).
pub const SHED_END: Duration = Duration::from_secs(3);

/// Sends `req` to `r` and checks it is shed: `200`, `text/event-stream`, a clean end within
/// [`SHED_END`], and exactly one block — a `retry:` in [`retry_ms`, 2 × `retry_ms`] with no id and
/// no data. Panics naming `what` otherwise; returns the `retry:` value.
pub async fn expect_shed(r: &Replica, req: SseRequest, retry_ms: u64, what: &str) -> u64 {
    let mut conn = open_stream_with(r, req, &format!("shed {what}")).await;
    let frames = conn
        .read_to_end(SHED_END)
        .await
        .unwrap_or_else(|e| panic!("shed {what}: the stream should end at once, cleanly: {e}"));
    let [block] = frames.as_slice() else {
        panic!(
            "shed {what}: exactly one block (the retry: hint), got {:?}",
            frames.iter().map(Frame::text).collect::<Vec<_>>()
        );
    };
    assert!(
        !block.is_event(),
        "shed {what}: no event, no id: {:?}",
        block.text()
    );
    let retry = block
        .retry
        .unwrap_or_else(|| panic!("shed {what}: a retry: hint, got {:?}", block.text()));
    assert!(
        (retry_ms..=2 * retry_ms).contains(&retry),
        "shed {what}: retry {retry} in [{retry_ms}, {}]",
        2 * retry_ms
    );
    retry
}
