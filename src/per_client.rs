//! Places per client: one client — a [`ClientKey`] — holds at most `max` of something at once
//! (`FANOUT_MAX_SUBSCRIBERS_PER_CLIENT` of a replica's subscribers, `FANOUT_MAX_CONNECTIONS_PER_CLIENT`
//! of its public connections), so it cannot take them all and leave everyone else without. A
//! [`Place`] gives itself back when dropped; a client is remembered only while it holds one, so the
//! table is never larger than what it bounds.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One client, as limits count clients: an IPv4 address, or an IPv6 /64 (one host's usual
/// allocation, so a host cannot multiply itself by its addresses); an IPv4-mapped address is its
/// IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Net([u8; 8]),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match canonical(ip) {
            IpAddr::V4(v4) => ClientKey::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                ClientKey::V6Net([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        }
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack listener's IPv4 peer) as its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

pub struct PerClient {
    max: usize,
    held: Mutex<HashMap<ClientKey, usize>>,
}

/// One of a client's places, given back when dropped.
pub struct Place {
    table: Arc<PerClient>,
    client: ClientKey,
}

impl PerClient {
    /// `max` ≥ 1 (a client entry never stays at zero).
    pub fn new(max: usize) -> Arc<PerClient> {
        Arc::new(PerClient {
            max: max.max(1),
            held: Mutex::default(),
        })
    }

    /// One of `client`'s places, unless it holds `max` already.
    pub fn take(self: &Arc<Self>, client: ClientKey) -> Option<Place> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(client).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Place {
            table: self.clone(),
            client,
        })
    }

    fn give_back(&self, client: ClientKey) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Entry::Occupied(mut e) = held.entry(client) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Clients holding a place now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.table.give_back(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClientKey {
        ClientKey::of(s.parse().expect("an address"))
    }

    #[test]
    fn refusals_are_logged_at_most_every_ten_seconds_with_the_count_since() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.count(t0), Some(1), "the first is logged");
        assert_eq!(r.count(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.count(t0 + Duration::from_secs(9)), None);
        assert_eq!(
            r.count(t0 + Duration::from_secs(10)),
            Some(3),
            "ten seconds on, with the two not logged"
        );
        assert_eq!(r.count(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn a_client_holds_at_most_max_and_is_forgotten_at_zero() {
        let t = PerClient::new(2);
        let (a, b) = (key("192.0.2.1"), key("192.0.2.2"));
        let a1 = t.take(a).expect("a's first");
        let a2 = t.take(a).expect("a's second");
        assert!(t.take(a).is_none(), "the third");
        let b1 = t.take(b).expect("another client");
        assert_eq!(t.clients(), 2);
        drop(a1);
        let a3 = t.take(a).expect("a place given back is free again");
        drop((a2, a3, b1));
        assert_eq!(t.clients(), 0, "nobody holding a place is remembered");
        // One IPv6 /64 is one client; a mapped IPv4 address is its IPv4 address.
        let v6 = [
            t.take(key("2001:db8::1")).expect("1"),
            t.take(key("2001:db8::2")).expect("2"),
        ];
        assert!(t.take(key("2001:db8::ffff")).is_none());
        assert!(t.take(key("2001:db8:0:1::1")).is_some());
        let _mapped = t.take(key("::ffff:192.0.2.1")).expect("mapped");
        let _plain = t.take(key("192.0.2.1")).expect("the same client's second");
        assert!(t.take(key("192.0.2.1")).is_none());
        drop(v6);
    }
}

/// A token bucket's state: what was left at `at` (may be below zero: uses counted while earlier
/// ones were in progress, which the refill then pays back). The admin attempt limit, the session
/// claim rate and the session writes per client keep one per key.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub left: f64,
    pub at: Instant,
}

impl Bucket {
    /// What is left at `now`: what was plus `per_sec` a second since, at most `burst`.
    pub fn refilled(self, now: Instant, burst: f64, per_sec: f64) -> f64 {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.left + secs * per_sec).min(burst)
    }
}

/// Least time between two searches of a full [`Buckets`] table for refilled buckets (a flood of
/// new clients does not make each of them pass over the table).
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// A token bucket per client, `burst` deep and refilled at `per_sec`, for at most `max` clients:
/// a bucket that has refilled is forgotten (looked for when the table is full), and past `max`
/// clients with buckets, new ones share one. So its memory is bounded whatever addresses the
/// clients use, and a flood from many addresses gets one more client's allowance, not one each.
pub struct Buckets {
    max: usize,
    burst: f64,
    per_sec: f64,
    clients: HashMap<ClientKey, Bucket>,
    /// Shared by the clients that found the table full.
    overflow: Option<Bucket>,
    purged_at: Option<Instant>,
}

impl Buckets {
    pub fn new(max: usize, burst: f64, per_sec: f64) -> Buckets {
        Buckets {
            max,
            burst,
            per_sec,
            clients: HashMap::new(),
            overflow: None,
            purged_at: None,
        }
    }

    /// What `client` has left at `now`: its bucket's, the shared one's when the table is full
    /// and it has none, else a full bucket.
    pub fn left(&self, client: ClientKey, now: Instant) -> f64 {
        let bucket = match self.clients.get(&client) {
            Some(b) => Some(*b),
            None if self.clients.len() >= self.max => self.overflow,
            None => None,
        };
        bucket.map_or(self.burst, |b| b.refilled(now, self.burst, self.per_sec))
    }

    /// Takes one from `client`'s bucket (or the shared one), even past empty (the refill pays it
    /// back before the next is left).
    pub fn take(&mut self, client: ClientKey, now: Instant) {
        let (burst, per_sec) = (self.burst, self.per_sec);
        if !self.clients.contains_key(&client)
            && self.clients.len() >= self.max
            && self
                .purged_at
                .is_none_or(|at| now.duration_since(at) >= PURGE_EVERY)
        {
            self.purged_at = Some(now);
            self.clients
                .retain(|_, b| b.refilled(now, burst, per_sec) < burst);
        }
        let full = Bucket {
            left: burst,
            at: now,
        };
        let bucket = if self.clients.len() < self.max || self.clients.contains_key(&client) {
            self.clients.entry(client).or_insert(full)
        } else {
            self.overflow.get_or_insert(full)
        };
        let left = bucket.refilled(now, burst, per_sec);
        *bucket = Bucket {
            left: left - 1.0,
            at: now,
        };
    }

    /// How long until a bucket with `left` at hand has one to take.
    pub fn wait(&self, left: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - left) / self.per_sec).max(0.0))
    }

    /// Clients with a bucket of their own.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Least time between two `warn` lines about refusals ([`Refusals`]).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Refusals counted between two `warn` lines, one at most every 10 s, so a flood of refusals
/// cannot flood the log. The admin attempt limit, the session claim rate and the session writes
/// per client keep one.
#[derive(Default)]
pub struct Refusals {
    since_log: u64,
    logged_at: Option<Instant>,
}

impl Refusals {
    /// Counts one refusal at `now`; `Some(n)` when a line is due, `n` the refusals since the last.
    pub fn count(&mut self, now: Instant) -> Option<u64> {
        self.since_log += 1;
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < LOG_EVERY)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.since_log))
    }
}
