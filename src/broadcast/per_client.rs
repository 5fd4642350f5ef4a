//! Subscribers per client (`FANOUT_MAX_SUBSCRIBERS_PER_CLIENT`): one client — an address, as
//! [`ClientKey`] counts them, or the client listed proxies name — holds at most so many of the
//! replica's subscriber slots, so it cannot take them all and shed everyone else. A client is
//! remembered only while it holds a slot: the table is never larger than the subscribers.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::trusted_proxies::ClientKey;

pub(crate) struct PerClient {
    max: usize,
    held: Mutex<HashMap<ClientKey, usize>>,
}

impl PerClient {
    /// `max` ≥ 1 (a client entry never stays at zero).
    pub(crate) fn new(max: usize) -> PerClient {
        PerClient {
            max: max.max(1),
            held: Mutex::default(),
        }
    }

    /// Takes one of `client`'s places, unless it holds `max` already.
    pub(crate) fn take(&self, client: ClientKey) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(client).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives one of `client`'s places back; a client holding none is forgotten.
    pub(crate) fn give_back(&self, client: ClientKey) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClientKey {
        ClientKey::of(s.parse().expect("an address"))
    }

    #[test]
    fn a_client_holds_at_most_max_and_is_forgotten_at_zero() {
        let t = PerClient::new(2);
        let (a, b) = (key("192.0.2.1"), key("192.0.2.2"));
        assert!(t.take(a));
        assert!(t.take(a));
        assert!(!t.take(a), "the third");
        assert!(t.take(b), "another client");
        assert_eq!(t.clients(), 2);
        t.give_back(a);
        assert!(t.take(a), "a place given back is free again");
        t.give_back(a);
        t.give_back(a);
        t.give_back(b);
        assert_eq!(t.clients(), 0, "nobody holding a place is remembered");
        t.give_back(b);
        assert_eq!(t.clients(), 0, "a stray give-back changes nothing");
        // One IPv6 /64 is one client.
        assert!(t.take(key("2001:db8::1")));
        assert!(t.take(key("2001:db8::2")));
        assert!(!t.take(key("2001:db8::ffff")));
        assert!(t.take(key("2001:db8:0:1::1")));
    }
}
