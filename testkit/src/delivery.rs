//! Delivery checks across replicas: a background reader on every subscriber, then a check that each
//! got exactly the log (every event once, in order, nothing else) with the same bytes everywhere.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures::future::join_all;

use crate::follow::{Followed, Follower, Received};
use crate::replica::Replica;
use crate::sse::{SseRequest, StreamEnd};
use crate::tally::seq_of;
use crate::wait::{QUIET, SOON};

/// Opens `per_replica` plain `GET /mcp` streams on every replica, starts a background reader on
/// each, and waits until every replica counts them.
pub async fn follow_all(replicas: &[&Replica], per_replica: usize) -> Vec<Follower> {
    let mut followers = Vec::new();
    for r in replicas {
        for j in 0..per_replica {
            let label = format!("{}/sub{j}", r.label());
            let conn = r
                .subscribe(&SseRequest::mcp())
                .await
                .unwrap_or_else(|e| panic!("{label}: GET /mcp: {e}"));
            assert_eq!(conn.status(), 200, "{label}: GET /mcp status");
            followers.push(Follower::spawn(&label, conn));
        }
        r.wait_subscribers(per_replica as u64, SOON)
            .await
            .unwrap_or_else(|e| panic!("{}: subscribers registered: {e}", r.label()));
    }
    followers
}

/// Waits until every follower got the last of `expected` (or `timeout`), then checks that each got
/// exactly `expected`, once each, in order; with `stay_open`, also that no stream ended. Panics
/// with every follower's violations at once. Returns what each saw.
pub async fn expect_exactly(
    followers: Vec<Follower>,
    expected: &[String],
    timeout: Duration,
    stay_open: bool,
) -> Vec<Followed> {
    let last = expected.last().map_or(0, |id| seq_of(id));
    let results = join_all(followers.into_iter().map(|f| async move {
        let mut followed = f.finish(last, timeout).await?;
        // Anything after the last expected event (a late duplicate, an event that was never
        // published) must show up in the tally too: keep reading for a moment.
        if let Some(conn) = followed.conn.as_mut() {
            let until = Instant::now() + QUIET;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match conn.next_event(left).await {
                    Ok(Some(frame)) => followed.received.push(Received {
                        at: Instant::now(),
                        frame,
                    }),
                    Ok(None) => {
                        followed.end = Some(StreamEnd::Clean);
                        break;
                    }
                    Err(e) if e.is_timeout() => break,
                    Err(e) => {
                        followed.error = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        Ok::<Followed, crate::Error>(followed)
    }))
    .await;
    let mut seen = Vec::new();
    let mut problems = Vec::new();
    for r in results {
        let followed = r.expect("follower result");
        if let Some(err) = &followed.error {
            problems.push(format!("{}: read error {err}", followed.summary()));
        }
        if stay_open && followed.end.is_some() {
            problems.push(format!(
                "{}: the stream ended, but a healthy subscriber must stay connected",
                followed.summary()
            ));
        }
        if let Err(msg) = followed.tally(expected.iter().cloned()).check() {
            problems.push(format!("{msg}\n  ({})", followed.summary()));
        }
        seen.push(followed);
    }
    assert!(
        problems.is_empty(),
        "{} of {} subscribers did not get exactly the {} events of the log:\n{}",
        problems.len(),
        seen.len(),
        expected.len(),
        problems.join("\n")
    );
    seen
}

/// Every follower got the same bytes for the same event id.
pub fn assert_identical_frames(seen: &[Followed]) {
    let Some(first) = seen.first() else {
        return;
    };
    let reference: HashMap<String, Bytes> = first
        .events()
        .into_iter()
        .filter_map(|f| f.id.clone().map(|id| (id, f.raw.clone())))
        .collect();
    for other in &seen[1..] {
        for f in other.events() {
            let Some(id) = &f.id else { continue };
            if let Some(raw) = reference.get(id) {
                assert_eq!(
                    &f.raw, raw,
                    "event {id}: `{}` and `{}` got different bytes",
                    first.label, other.label
                );
            }
        }
    }
}

/// The log lines of every replica that mention the database, LISTEN or a warning/error, for
/// failure messages.
pub fn interesting_logs(replicas: &[&Replica]) -> String {
    let mut out = String::new();
    for r in replicas {
        for line in r.logs() {
            let l = line.to_ascii_lowercase();
            if l.contains("warn") || l.contains("error") || l.contains("listen") {
                out.push_str(&format!("[{}] {line}\n", r.label()));
            }
        }
    }
    out
}
