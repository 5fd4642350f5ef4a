//! How often one session may be claimed (`FANOUT_SESSION_CLAIMS_PER_MIN`).
//!
//! Each stream opened for a session claims it: in Postgres mode one durable write (the owner and a
//! new generation) and one control NOTIFY that every replica reads. A client stuck in a reconnect
//! loop (a bug that closes its stream as soon as it opens, two streams fighting over one session)
//! would make that write as fast as it can connect, slowing the database every replica and
//! publisher shares. So each session has a bucket of [`BURST`] claims that refills at the set rate;
//! a stream whose session finds its bucket empty is shed before the claim (`200`, `retry:`, a clean
//! end: the client comes back after the hint), which costs the database nothing. A client that
//! reconnects as told never comes near it.
//!
//! Per session and owner, not per client: clients behind one address (a NAT, a load balancer not
//! listed in `FANOUT_TRUSTED_PROXIES`) never share a bucket, so one stuck client slows only
//! itself, and another principal presenting a session's id (refused with `403` at the claim)
//! spends its own bucket, not the owner's. Per replica: a loop spread over N replicas gets N times
//! the rate. At most [`MAX_WATCHED`] sessions are watched at once; a full bucket is forgotten, and
//! past that many sessions with claims in their last refill time a new one is not limited (a flood
//! of distinct ids is bounded by `FANOUT_MAX_SESSIONS`, not here).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Owner;
use crate::per_client::{Bucket, Refusals};

/// Claims a session may make at once before the rate applies.
pub const BURST: f64 = 10.0;

/// Most sessions watched at once.
pub const MAX_WATCHED: usize = 65_536;

/// Least time between two searches of the full table.
const PURGE_EVERY: Duration = Duration::from_secs(1);

struct Table {
    sessions: HashMap<String, Bucket>,
    /// When the full table was last searched for refilled buckets (at most once a
    /// [`PURGE_EVERY`]: a flood of new ids does not make each claim pass over the table).
    purged_at: Option<Instant>,
    shed: Refusals,
}

pub struct ClaimRate {
    per_sec: f64,
    table: Mutex<Table>,
}

impl ClaimRate {
    /// [`BURST`] claims per session, then `per_min` a minute; `None` for `0` (no limit).
    pub fn new(per_min: u32) -> Option<ClaimRate> {
        (per_min > 0).then(|| ClaimRate {
            per_sec: f64::from(per_min) / 60.0,
            table: Mutex::new(Table {
                sessions: HashMap::new(),
                purged_at: None,
                shed: Refusals::default(),
            }),
        })
    }

    /// Takes one of `owner`'s claims of `session`; `false` when none is left (the stream is shed).
    pub fn take(&self, session: &str, owner: &Owner, now: Instant) -> bool {
        // A session id is a header value: no line break, so the key names one pair.
        let key = format!("{}\n{session}", owner.key());
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *guard;
        let per_sec = self.per_sec;
        if !t.sessions.contains_key(&key) && t.sessions.len() >= MAX_WATCHED {
            if t.purged_at
                .is_none_or(|at| now.duration_since(at) >= PURGE_EVERY)
            {
                t.purged_at = Some(now);
                t.sessions
                    .retain(|_, b| b.refilled(now, BURST, per_sec) < BURST);
            }
            if t.sessions.len() >= MAX_WATCHED {
                return true;
            }
        }
        let bucket = t.sessions.entry(key).or_insert(Bucket {
            left: BURST,
            at: now,
        });
        let left = bucket.refilled(now, BURST, per_sec);
        if left < 1.0 {
            if let Some(shed) = t.shed.count(now) {
                tracing::warn!(
                    session,
                    shed,
                    "streams shed: their session was claimed more often than FANOUT_SESSION_CLAIMS_PER_MIN (a client reconnecting in a loop?)"
                );
            }
            return false;
        }
        *bucket = Bucket {
            left: left - 1.0,
            at: now,
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_gets_its_burst_then_the_rate_and_others_are_untouched() {
        let anyone = Owner::nobody();
        let rate = ClaimRate::new(60).expect("a limit");
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(rate.take("a", &anyone, t0), "claim {i} of the burst");
        }
        assert!(!rate.take("a", &anyone, t0), "past the burst");
        assert!(
            rate.take("b", &anyone, t0),
            "another session has its own bucket"
        );
        let later = t0 + Duration::from_millis(1000);
        assert!(rate.take("a", &anyone, later), "one a second refills");
        assert!(!rate.take("a", &anyone, later));
        let much_later = t0 + Duration::from_secs(3600);
        for i in 0..10 {
            assert!(
                rate.take("a", &anyone, much_later),
                "refilled to the burst, not past it: {i}"
            );
        }
        assert!(!rate.take("a", &anyone, much_later));
    }

    #[test]
    fn another_owner_presenting_the_id_spends_its_own_bucket() {
        let rate = ClaimRate::new(60).expect("a limit");
        let t0 = Instant::now();
        let (owner, other) = (Owner::tenant("owner"), Owner::tenant("other"));
        for _ in 0..10 {
            assert!(rate.take("s", &other, t0));
        }
        assert!(
            !rate.take("s", &other, t0),
            "the other principal is limited"
        );
        assert!(rate.take("s", &owner, t0), "the owner is not");
    }

    #[test]
    fn zero_means_no_limit() {
        assert!(ClaimRate::new(0).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_full_buckets_first() {
        let anyone = Owner::nobody();
        let rate = ClaimRate::new(60).expect("a limit");
        let t0 = Instant::now();
        for i in 0..MAX_WATCHED {
            assert!(rate.take(&format!("s{i}"), &anyone, t0));
        }
        // Full of sessions that claimed just now: a new one is let through, not watched.
        assert!(rate.take("new", &anyone, t0));
        for _ in 0..20 {
            assert!(
                rate.take("new", &anyone, t0),
                "not watched while the table is full"
            );
        }
        // Once the others' buckets have refilled they are forgotten and the new one is watched.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert!(rate.take("new", &anyone, later));
        }
        assert!(!rate.take("new", &anyone, later), "watched again");
        let held = rate.table.lock().expect("lock").sessions.len();
        assert_eq!(held, 1, "the refilled buckets were forgotten");
    }
}
