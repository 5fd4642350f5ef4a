//! Failed admin-token attempts, counted per source address, so a token cannot be guessed at the
//! rate the replica answers.
//!
//! Each source has a bucket of `burst` attempts that refills at `per_min` a minute; a request
//! whose token is wrong takes one. A source whose bucket is empty is refused (`429`,
//! `Retry-After`) **before its token is compared**, whatever it presents: answering a right token
//! there would tell a guesser it had found it. So a client with the right token behind the same
//! address as a guesser (one NAT, one load balancer that hides client addresses) is refused with
//! it until the guessing stops; each refusal says so in a `warn` line (at most one every 10 s).
//!
//! A source is an IPv4 address or an IPv6 /64 (one host's usual allocation; an IPv4-mapped
//! address is its IPv4 address). At most [`MAX_SOURCES`] sources are remembered; a bucket that
//! has refilled is forgotten. Past that many sources with failures, new ones share one bucket, so
//! the table's memory is bounded whatever addresses the failures come from.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::per_client::{Buckets, ClientKey, Refusals};

/// Most sources remembered at once.
pub const MAX_SOURCES: usize = 4096;

struct Table {
    sources: Buckets,
    refused: Refusals,
}

pub struct FailedAttempts {
    table: Mutex<Table>,
}

impl FailedAttempts {
    /// `burst` failed attempts per source, then `per_min` a minute (both at least 1).
    pub fn new(burst: u32, per_min: u32) -> FailedAttempts {
        let (burst, per_sec) = (f64::from(burst.max(1)), f64::from(per_min.max(1)) / 60.0);
        FailedAttempts {
            table: Mutex::new(Table {
                sources: Buckets::new(MAX_SOURCES, burst, per_sec),
                refused: Refusals::default(),
            }),
        }
    }

    /// Whether `ip` may have its token compared now; `Err` says how long until it may.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut t = self.lock();
        let left = t.sources.left(ClientKey::of(ip), now);
        if left >= 1.0 {
            return Ok(());
        }
        let wait = t.sources.wait(left);
        if let Some(refused) = t.refused.count(now) {
            tracing::warn!(
                source = %ip,
                refused,
                retry_after_secs = wait.as_secs_f64().ceil(),
                "admin requests refused: too many failed token attempts from this address (a \
                 client with the right token at the same address is refused too until they stop)"
            );
        }
        Err(wait)
    }

    /// Counts a failed attempt of `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        self.lock().sources.take(ClientKey::of(ip), now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.lock().sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_source_gets_its_burst_then_one_attempt_per_refill() {
        let f = FailedAttempts::new(3, 60);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(f.check(a, t0), Ok(()));
            f.failed(a, t0);
        }
        let wait = f.check(a, t0).expect_err("the burst is used up");
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(f.check(ip("10.0.0.2"), t0), Ok(()), "another source");
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(f.check(a, t1), Ok(()), "one attempt a second");
        f.failed(a, t1);
        assert!(f.check(a, t1).is_err());
        let later = t1 + Duration::from_secs(60);
        assert_eq!(f.check(a, later), Ok(()));
    }

    #[test]
    fn attempts_compared_at_once_are_paid_back_before_the_next() {
        let f = FailedAttempts::new(2, 60);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        // Five attempts passed the check before any had failed.
        for _ in 0..5 {
            f.failed(a, t0);
        }
        let wait = f.check(a, t0).expect_err("in debt");
        assert_eq!(wait, Duration::from_secs(4), "3 owed, then 1 to spend");
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_a_mapped_ipv4_is_its_address() {
        let f = FailedAttempts::new(1, 60);
        let t0 = Instant::now();
        f.failed(ip("2001:db8:1:2::1"), t0);
        assert!(f.check(ip("2001:db8:1:2::ffff"), t0).is_err());
        assert_eq!(f.check(ip("2001:db8:1:3::1"), t0), Ok(()));
        f.failed(ip("192.0.2.7"), t0);
        assert!(f.check(ip("::ffff:192.0.2.7"), t0).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_refilled_sources_are_forgotten() {
        let f = FailedAttempts::new(1, 60);
        let t0 = Instant::now();
        let nth = |i: usize| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        for i in 0..MAX_SOURCES {
            f.failed(nth(i), t0);
        }
        assert_eq!(f.remembered(), MAX_SOURCES);
        // A new source finds the table full: it shares the overflow bucket.
        let extra = nth(MAX_SOURCES);
        f.failed(extra, t0);
        assert_eq!(f.remembered(), MAX_SOURCES);
        assert!(f.check(extra, t0).is_err());
        assert!(
            f.check(nth(MAX_SOURCES + 1), t0).is_err(),
            "the overflow is shared"
        );
        // Once the buckets have refilled, the next failure sweeps them out.
        let later = t0 + Duration::from_secs(2);
        f.failed(nth(MAX_SOURCES + 2), later);
        assert_eq!(f.remembered(), 1);
        assert!(f.check(nth(MAX_SOURCES + 2), later).is_err());
        assert_eq!(f.check(nth(0), later), Ok(()));
    }
}
