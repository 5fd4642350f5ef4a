//! How many session writes one client may cause (`FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN`).
//!
//! Two requests write a session:
//! - a stream that names one claims it (`GET /mcp` with `Mcp-Session-Id`): in Postgres mode an
//!   upsert, a generation drawn from the deployment's sequence and a control NOTIFY every replica
//!   reads;
//! - in proxy mode, an `initialize` records the session the upstream opened (or one minted for it):
//!   an upsert.
//!
//! `FANOUT_SESSION_CLAIMS_PER_MIN` (`claim_rate`) bounds how often one session is claimed. A
//! client that presents a new session id each time is not bound by it, nor by
//! `FANOUT_MAX_SESSIONS`, which bounds how many are remembered, not how fast they are written. So
//! such a client could make the database write as fast as it can connect, slowing every replica
//! and publisher that shares it. This bounds the writes per client: each client has a bucket of a
//! minute's allowance, refilled at the set rate. A stream whose client finds its bucket empty is
//! shed before its claim (`200`, `retry:`, a clean end); an `initialize` is answered `429` with
//! `Retry-After` before it is forwarded. Neither costs the database anything.
//!
//! Per client, as the other per-client bounds count clients (`ClientKey`: an IPv4 address, an IPv6
//! /64; behind `FANOUT_TRUSTED_PROXIES`, the client they name). So it is opt-in: behind a proxy
//! that is not listed, every client is the proxy's address and would share one allowance. Per
//! replica: a client spread over N replicas gets N times the rate. At most [`MAX_CLIENTS`] clients
//! are remembered; a bucket that has refilled is forgotten, and past that many clients with recent
//! writes, new ones share one bucket, so the table's memory is bounded and a flood from many
//! addresses gets one more client's allowance, not one each.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::per_client::{Buckets, ClientKey, Refusals};

/// Most clients remembered at once.
pub const MAX_CLIENTS: usize = 65_536;

struct Table {
    clients: Buckets,
    refused: Refusals,
}

pub struct ClientRate {
    table: Mutex<Table>,
}

impl ClientRate {
    /// `per_min` session writes per client a minute, as many at once; `None`: no bound.
    pub fn new(per_min: Option<u32>) -> Option<ClientRate> {
        let per_min = f64::from(per_min.filter(|n| *n > 0)?);
        Some(ClientRate {
            table: Mutex::new(Table {
                clients: Buckets::new(MAX_CLIENTS, per_min, per_min / 60.0),
                refused: Refusals::default(),
            }),
        })
    }

    /// Takes one of `client`'s session writes; `Err` says how long until it has one.
    pub fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = ClientKey::of(client);
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *guard;
        let left = t.clients.left(key, now);
        if left >= 1.0 {
            t.clients.take(key, now);
            return Ok(());
        }
        if let Some(refused) = t.refused.count(now) {
            tracing::warn!(
                client = %client,
                refused,
                "session writes refused: this client opened sessions faster than FANOUT_SESSION_WRITES_PER_CLIENT_PER_MIN (a client presenting a new session id each time?)"
            );
        }
        Err(t.clients.wait(left))
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clients
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn a_client_gets_a_minutes_allowance_then_the_rate_and_others_are_untouched() {
        let rate = ClientRate::new(Some(6)).expect("a bound");
        let t0 = Instant::now();
        for i in 0..6 {
            assert!(rate.take(ip("192.0.2.1"), t0).is_ok(), "write {i}");
        }
        let wait = rate
            .take(ip("192.0.2.1"), t0)
            .expect_err("past the allowance");
        assert_eq!(wait, Duration::from_secs(10), "one write every 10 s");
        assert!(
            rate.take(ip("192.0.2.2"), t0).is_ok(),
            "another client has its own"
        );
        assert!(
            rate.take(ip("2001:db8::1"), t0).is_ok(),
            "an IPv6 client too"
        );
        let later = t0 + Duration::from_secs(10);
        assert!(rate.take(ip("192.0.2.1"), later).is_ok(), "refilled one");
        assert!(rate.take(ip("192.0.2.1"), later).is_err());
    }

    #[test]
    fn one_ipv6_host_is_one_client_whatever_address_it_uses() {
        let rate = ClientRate::new(Some(2)).expect("a bound");
        let t0 = Instant::now();
        assert!(rate.take(ip("2001:db8:0:1::1"), t0).is_ok());
        assert!(rate.take(ip("2001:db8:0:1::2"), t0).is_ok());
        assert!(
            rate.take(ip("2001:db8:0:1:ffff::3"), t0).is_err(),
            "the same /64"
        );
        assert!(rate.take(ip("::ffff:192.0.2.9"), t0).is_ok());
        assert!(rate.take(ip("192.0.2.9"), t0).is_ok());
        assert!(
            rate.take(ip("192.0.2.9"), t0).is_err(),
            "an IPv4-mapped address is its IPv4 address"
        );
    }

    #[test]
    fn unset_or_zero_means_no_bound() {
        assert!(ClientRate::new(None).is_none());
        assert!(ClientRate::new(Some(0)).is_none());
    }

    #[test]
    fn past_the_table_bound_new_clients_share_one_allowance_until_buckets_refill() {
        let rate = ClientRate::new(Some(2)).expect("a bound");
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS {
            let a = u32::try_from(i).expect("fits") + (10 << 24);
            assert!(rate.take(IpAddr::from(a.to_be_bytes()), t0).is_ok());
        }
        // Full of clients that wrote just now: two newcomers share one allowance of two.
        assert!(rate.take(ip("192.0.2.1"), t0).is_ok());
        assert!(rate.take(ip("192.0.2.2"), t0).is_ok());
        assert!(
            rate.take(ip("192.0.2.3"), t0).is_err(),
            "the shared allowance is spent"
        );
        // A minute on, every bucket has refilled and is forgotten: a newcomer has its own.
        let later = t0 + Duration::from_secs(60);
        assert!(rate.take(ip("192.0.2.3"), later).is_ok());
        assert!(rate.take(ip("192.0.2.3"), later).is_ok());
        assert!(rate.take(ip("192.0.2.3"), later).is_err(), "watched alone");
        assert_eq!(rate.remembered(), 1, "the refilled buckets were forgotten");
    }
}
