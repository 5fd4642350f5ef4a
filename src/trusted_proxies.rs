//! Whose forwarded headers are believed (`FANOUT_TRUSTED_PROXIES`, contract §2, §3.5): the proxies
//! in front of a replica (an ingress, a load balancer, a mesh sidecar) say who the client is and
//! which scheme and host it used, in `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`
//! and `Forwarded`. Anyone else can write the same headers, so with the setting given:
//!
//! - a request from a peer **not** on the list has those headers removed at the edge, before
//!   anything reads them: the origin check sees the scheme this listener speaks, proxy mode tells
//!   the upstream only what the replica saw itself;
//! - the client's address (the request's `ConnInfo::client`) is the peer's, unless the peer is on
//!   the list: then it is read from `X-Forwarded-For`, right to left, skipping the addresses on
//!   the list — the first one that is not is the client (what the nearest untrusted hop
//!   connected from; anything to its left was written by the client itself). Admin
//!   authorization counts failed attempts per client address and applies its loopback rule to it.
//!
//! The same list says whose tenant header `header` mode believes (the edge refuses it from any
//! other peer). Unset, every peer's headers are believed as they come and the client is the peer (the
//! behaviour before the setting existed); `none` trusts no peer.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::{header, HeaderMap, HeaderName};
use ipnet::IpNet;

use crate::per_client::canonical;

/// The headers through which a proxy in front speaks for the client: removed from the requests of
/// peers not on the list.
const FORWARDED_HEADERS: [HeaderName; 7] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

/// What the edge made of a request's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    /// The address the request is from (the edge puts it in the request's `ConnInfo::client`).
    pub client: IpAddr,
    /// The peer is on the list: what it says for the client (forwarded headers, a gateway's tenant
    /// header) is believed.
    pub trusted_peer: bool,
}

/// The peers whose forwarded headers are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// Why a `FANOUT_TRUSTED_PROXIES` entry is not an address or a network.
#[derive(Debug, thiserror::Error)]
#[error("FANOUT_TRUSTED_PROXIES: `{entry}` is not an IP address or a network (CIDR, e.g. 10.0.0.0/8 or fd00::/8); give a comma-separated list of them, or `none` alone")]
pub struct BadTrustedProxy {
    entry: String,
}

impl FromStr for TrustedProxies {
    type Err = BadTrustedProxy;

    /// A comma-separated list of addresses and networks (`10.0.0.0/8`, `192.0.2.7`, `fd00::/8`),
    /// or `none`. Blank entries are skipped; anything else that does not parse is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(TrustedProxies { nets: Vec::new() });
        }
        let mut nets = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => match entry.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(canonical(ip)),
                    Err(_) => {
                        return Err(BadTrustedProxy {
                            entry: entry.to_owned(),
                        })
                    }
                },
            };
            nets.push(net);
        }
        Ok(TrustedProxies { nets })
    }
}

impl TrustedProxies {
    /// Whether `ip` (an IPv4-mapped IPv6 address as its IPv4 address) is on the list.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// What the edge does with a request from `peer`: for a peer on the list, the client's address
    /// as its `X-Forwarded-For` says (see the module's doc); for any other, the forwarded headers
    /// removed and the peer's address.
    pub fn judge(&self, peer: SocketAddr, headers: &mut HeaderMap) -> Judged {
        let peer = canonical(peer.ip());
        if !self.contains(peer) {
            for name in &FORWARDED_HEADERS {
                headers.remove(name);
            }
            return Judged {
                client: peer,
                trusted_peer: false,
            };
        }
        Judged {
            client: self.client_behind(peer, headers),
            trusted_peer: true,
        }
    }

    /// Walks `X-Forwarded-For` from its last entry (the hop nearest this one) towards its first,
    /// while the entries are on the list. An entry that is not an address stops the walk at the
    /// trusted hop before it.
    fn client_behind(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for entry in value.rsplit(',') {
                let Some(ip) = entry_address(entry.trim()) else {
                    return client;
                };
                client = canonical(ip);
                if !self.contains(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:443`,
/// `[2001:db8::1]:443`) or in brackets.
fn entry_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn list(s: &str) -> TrustedProxies {
        s.parse().expect("a valid list")
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("a socket address")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn parses_addresses_networks_and_none() {
        let t = list(" 10.0.0.0/8, 192.0.2.7 ,fd00::/8,, 10.1.2.3/8");
        assert!(t.contains(ip("10.200.0.1")));
        assert!(t.contains(ip("192.0.2.7")));
        assert!(!t.contains(ip("192.0.2.8")));
        assert!(t.contains(ip("fd12::1")));
        assert!(t.contains(ip("::ffff:10.9.9.9")), "a mapped IPv4 address");
        assert!(!t.contains(ip("203.0.113.1")));
        for nobody in [list("none"), list("")] {
            assert!(!nobody.contains(ip("127.0.0.1")) && !nobody.contains(ip("::1")));
        }
        for bad in ["10.0.0.0/33", "example.com", "10.0.0", "*", "none"] {
            let err = format!("10.0.0.0/8, {bad}")
                .parse::<TrustedProxies>()
                .expect_err(bad)
                .to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn an_untrusted_peer_loses_its_forwarded_headers_and_is_the_client() {
        let t = list("10.0.0.0/8");
        let mut h = xff(&["198.51.100.1"]);
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=198.51.100.1"));
        h.insert("x-real-ip", HeaderValue::from_static("198.51.100.1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert_eq!(
            t.judge(sa("203.0.113.9:4000"), &mut h),
            Judged {
                client: ip("203.0.113.9"),
                trusted_peer: false
            }
        );
        assert_eq!(h.len(), 1, "only the unrelated header is left: {h:?}");
        // With nothing trusted, every peer is judged so.
        let mut h = xff(&["198.51.100.1"]);
        assert_eq!(
            list("none").judge(sa("10.0.0.1:4000"), &mut h).client,
            ip("10.0.0.1")
        );
        assert!(h.is_empty());
    }

    #[test]
    fn behind_trusted_peers_the_client_is_the_last_untrusted_entry() {
        let t = list("10.0.0.0/8");
        let peer = sa("10.0.0.5:4000");
        let judge = |values: &[&'static str]| {
            let mut h = xff(values);
            let judged = t.judge(peer, &mut h);
            assert!(judged.trusted_peer);
            assert_eq!(h.get_all("x-forwarded-for").iter().count(), values.len());
            judged.client
        };
        assert_eq!(judge(&[]), ip("10.0.0.5"), "no header: the peer");
        assert_eq!(judge(&["198.51.100.1"]), ip("198.51.100.1"));
        // What the client wrote itself, to the left of its own address, is not believed.
        assert_eq!(
            judge(&["1.2.3.4, 198.51.100.1, 10.0.0.9"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            judge(&["1.2.3.4", "198.51.100.1, 10.0.0.9"]),
            ip("198.51.100.1"),
            "header lines in order"
        );
        assert_eq!(
            judge(&["10.0.0.8, 10.0.0.9"]),
            ip("10.0.0.8"),
            "all trusted"
        );
        assert_eq!(
            judge(&["198.51.100.1, unknown, 10.0.0.9"]),
            ip("10.0.0.9"),
            "an entry that is not an address stops at the trusted hop"
        );
        assert_eq!(judge(&["198.51.100.1:5555"]), ip("198.51.100.1"));
        assert_eq!(judge(&["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(judge(&["[2001:db8::1]"]), ip("2001:db8::1"));
        assert_eq!(judge(&["::ffff:198.51.100.1"]), ip("198.51.100.1"));
    }
}
