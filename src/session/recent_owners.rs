//! Which sessions this replica has lately seen their owners use (Postgres mode): a request the
//! proxy forwards in one skips the database's read of its owner.
//!
//! Only "this owner's" is remembered, never "another's" or "unknown". It stays true while the row
//! exists (a session's owner never changes), and once the row is gone (its `DELETE` through
//! another replica, a trim, idle cleanup) a forwarded request in it is the upstream's to answer,
//! as it would be for an unknown session: the remembered answer leads to what the true one
//! would. (One case differs: a row forgotten and then bound by another principal, which needs the
//! session id, say by a poll; for what is left of the 30 s its former owner's requests in it are
//! still forwarded by the replicas that remember it.) A remembered answer is used for
//! [`REMEMBER_FOR`], half of the store's mark interval, so a session in use is still read (and
//! marked) at least every half a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one read of a session's owner stands for the requests after it.
pub const REMEMBER_FOR: Duration = Duration::from_secs(30);

/// Most sessions remembered at once: ~200 B each, so about 2 MB (at most ~7 MB with the longest
/// owner keys remembered). Past it, new sessions are read from the database each time until
/// expired ones are swept (at most once per [`REMEMBER_FOR`]), so a client holding many sessions
/// costs bounded memory and O(1) per request.
pub const MOST_REMEMBERED: usize = 10_000;

/// Owner keys longer than this (a token's issuer and subject are not bounded here) are not
/// remembered: their requests read the database each time.
pub const LONGEST_OWNER_KEY: usize = 512;

pub struct RecentOwners {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Session id → (the owner's key, when the database last said it was theirs).
    seen: HashMap<String, (String, Instant)>,
    /// No sweep of expired entries before this.
    next_sweep: Instant,
}

impl RecentOwners {
    pub fn new() -> RecentOwners {
        RecentOwners {
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                next_sweep: Instant::now(),
            }),
        }
    }

    /// Whether the database said, within [`REMEMBER_FOR`], that `session` is `owner_key`'s.
    pub fn is_theirs(&self, session: &str, owner_key: &str) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        inner
            .seen
            .get(session)
            .is_some_and(|(key, at)| key == owner_key && at.elapsed() < REMEMBER_FOR)
    }

    /// The database has just said `session` is `owner_key`'s.
    pub fn remember(&self, session: &str, owner_key: &str) {
        if owner_key.len() > LONGEST_OWNER_KEY {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let now = Instant::now();
        if let Some(entry) = inner.seen.get_mut(session) {
            *entry = (owner_key.to_owned(), now);
            return;
        }
        if inner.seen.len() >= MOST_REMEMBERED {
            if now < inner.next_sweep {
                return;
            }
            inner.next_sweep = now + REMEMBER_FOR;
            inner
                .seen
                .retain(|_, (_, at)| now.duration_since(*at) < REMEMBER_FOR);
            if inner.seen.len() >= MOST_REMEMBERED {
                return;
            }
        }
        inner
            .seen
            .insert(session.to_owned(), (owner_key.to_owned(), now));
    }

    /// `session` was forgotten here (its `DELETE`).
    pub fn forget(&self, session: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.seen.remove(session);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|i| i.seen.len()).unwrap_or(0)
    }
}

impl Default for RecentOwners {
    fn default() -> Self {
        RecentOwners::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_remembered_owner_is_answered() {
        let r = RecentOwners::new();
        assert!(!r.is_theirs("s", "alpha"), "nothing remembered yet");
        r.remember("s", "alpha");
        assert!(r.is_theirs("s", "alpha"));
        assert!(
            !r.is_theirs("s", "beta"),
            "another owner is read from the database"
        );
        assert!(!r.is_theirs("t", "alpha"), "another session too");
        r.forget("s");
        assert!(!r.is_theirs("s", "alpha"), "forgotten with its DELETE");
        let long = "k".repeat(LONGEST_OWNER_KEY + 1);
        r.remember("s", &long);
        assert!(!r.is_theirs("s", &long), "a key past the bound is not kept");
    }

    #[test]
    fn past_the_bound_nothing_more_is_remembered_until_a_sweep() {
        let r = RecentOwners::new();
        for i in 0..MOST_REMEMBERED + 50 {
            r.remember(&format!("s{i}"), "alpha");
        }
        assert_eq!(r.len(), MOST_REMEMBERED, "bounded");
        assert!(r.is_theirs("s0", "alpha"), "the first ones are kept");
        assert!(
            !r.is_theirs(&format!("s{}", MOST_REMEMBERED), "alpha"),
            "the ones past the bound are read each time"
        );
    }
}
