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
//! Which header names the client is `FANOUT_CLIENT_ADDRESS_HEADER`: `x-forwarded-for` (the
//! default, walked as above), `forwarded` (RFC 7239: the `for=` parameters of its elements, walked
//! the same way) or `x-real-ip` (one address, the nearest listed proxy's word). It must be the one
//! the proxies in front write: a proxy passes the others on as the client sent them, and the walk
//! would take the client's own claim for its address.
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

/// The header in which the listed proxies name the client (`FANOUT_CLIENT_ADDRESS_HEADER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ClientAddressHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`, each hop appending the address it saw.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239), each hop appending an element.
    Forwarded,
    /// `X-Real-IP: client`, set (not appended) by the nearest proxy.
    XRealIp,
}

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
    /// as its `from` header says (see the module's doc); for any other, the forwarded headers
    /// removed and the peer's address.
    pub fn judge(
        &self,
        peer: SocketAddr,
        headers: &mut HeaderMap,
        from: ClientAddressHeader,
    ) -> Judged {
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
        let client = match from {
            ClientAddressHeader::XForwardedFor => {
                self.client_behind(peer, headers, "x-forwarded-for", |value| {
                    value.split(',').map(|entry| entry_address(entry.trim()))
                })
            }
            ClientAddressHeader::Forwarded => {
                self.client_behind(peer, headers, "forwarded", |value| {
                    forwarded_entries(value).into_iter()
                })
            }
            ClientAddressHeader::XRealIp => real_ip(headers).map_or(peer, canonical),
        };
        Judged {
            client,
            trusted_peer: true,
        }
    }

    /// Walks the addresses the header `name` lists, from the last (the hop nearest this one)
    /// towards the first, while they are on the list. An entry that is not an address stops the
    /// walk at the trusted hop before it. `entries` splits one header value into its entries'
    /// addresses, first to last (`None` for an entry that is not one).
    fn client_behind<'h, E>(
        &self,
        peer: IpAddr,
        headers: &'h HeaderMap,
        name: &str,
        entries: impl Fn(&'h str) -> E,
    ) -> IpAddr
    where
        E: DoubleEndedIterator<Item = Option<IpAddr>>,
    {
        let mut client = peer;
        for value in headers.get_all(name).iter().rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for entry in entries(value).rev() {
                let Some(ip) = entry else {
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

/// One `Forwarded` value's `for=` addresses, an element each (RFC 7239 §4: elements separated by
/// `,`, their parameters by `;`, a value a token or a quoted string). An element without `for=`,
/// or whose node is `unknown` or an obfuscated identifier (`_hidden`), is not an address.
fn forwarded_entries(value: &str) -> Vec<Option<IpAddr>> {
    split_unquoted(value, ',')
        .into_iter()
        .map(|element| {
            split_unquoted(element, ';').into_iter().find_map(|pair| {
                let (name, node) = pair.split_once('=')?;
                if !name.trim().eq_ignore_ascii_case("for") {
                    return None;
                }
                let node = node.trim();
                let node = node
                    .strip_prefix('"')
                    .and_then(|n| n.strip_suffix('"'))
                    .unwrap_or(node);
                entry_address(node)
            })
        })
        .collect()
}

/// `s` split at each `sep` outside a quoted string (a `\` inside one escapes the next character).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `X-Real-IP`: the one address the nearest proxy set (its last value if it came more than once).
fn real_ip(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get_all("x-real-ip").iter().next_back()?;
    entry_address(value.to_str().ok()?.trim())
}

/// An `X-Forwarded-For` entry or a `Forwarded` node: an address, possibly with a port
/// (`192.0.2.1:443`, `[2001:db8::1]:443`) or in brackets.
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
            t.judge(
                sa("203.0.113.9:4000"),
                &mut h,
                ClientAddressHeader::XForwardedFor
            ),
            Judged {
                client: ip("203.0.113.9"),
                trusted_peer: false
            }
        );
        assert_eq!(h.len(), 1, "only the unrelated header is left: {h:?}");
        // With nothing trusted, every peer is judged so.
        let mut h = xff(&["198.51.100.1"]);
        assert_eq!(
            list("none")
                .judge(
                    sa("10.0.0.1:4000"),
                    &mut h,
                    ClientAddressHeader::XForwardedFor
                )
                .client,
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
            let judged = t.judge(peer, &mut h, ClientAddressHeader::XForwardedFor);
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

    fn judged_by(from: ClientAddressHeader, name: &'static str, values: &[&'static str]) -> IpAddr {
        let mut h = HeaderMap::new();
        // A forged X-Forwarded-For the proxies in front pass on untouched: never read here.
        h.append("x-forwarded-for", HeaderValue::from_static("192.0.2.66"));
        for v in values {
            h.append(name, HeaderValue::from_static(v));
        }
        let judged = list("10.0.0.0/8").judge(sa("10.0.0.5:4000"), &mut h, from);
        assert!(judged.trusted_peer);
        judged.client
    }

    #[test]
    fn forwarded_names_the_client_in_its_for_parameters() {
        let judge = |values| judged_by(ClientAddressHeader::Forwarded, "forwarded", values);
        assert_eq!(judge(&[]), ip("10.0.0.5"), "no header: the peer");
        assert_eq!(judge(&["for=198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(
            judge(&["for=1.2.3.4, for=198.51.100.1;proto=https, For=10.0.0.9;by=10.0.0.1"]),
            ip("198.51.100.1"),
            "walked from the right, names and parameters in any case and order"
        );
        assert_eq!(
            judge(&["for=1.2.3.4", "proto=http;for=198.51.100.1", "for=10.0.0.9"]),
            ip("198.51.100.1"),
            "header lines in order"
        );
        assert_eq!(
            judge(&[r#"for="[2001:db8:cafe::17]:4711""#]),
            ip("2001:db8:cafe::17"),
            "a quoted IPv6 node with a port"
        );
        assert_eq!(
            judge(&[r#"for="198.51.100.1:80";host="a,b;c", for=10.0.0.9"#]),
            ip("198.51.100.1"),
            "separators inside a quoted value do not split"
        );
        assert_eq!(
            judge(&["for=198.51.100.1, for=_hidden, for=10.0.0.9"]),
            ip("10.0.0.9"),
            "an obfuscated node stops at the trusted hop"
        );
        assert_eq!(
            judge(&["for=198.51.100.1, proto=https"]),
            ip("10.0.0.5"),
            "an element without for= stops at the peer"
        );
    }

    #[test]
    fn x_real_ip_is_the_nearest_proxy_word() {
        let judge = |values| judged_by(ClientAddressHeader::XRealIp, "x-real-ip", values);
        assert_eq!(judge(&[]), ip("10.0.0.5"), "no header: the peer");
        assert_eq!(judge(&["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(judge(&["1.2.3.4", "198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(
            judge(&["unknown"]),
            ip("10.0.0.5"),
            "not an address: the peer"
        );
    }

    #[test]
    fn with_the_default_header_a_forged_x_forwarded_for_behind_such_proxies_is_believed() {
        // Why the setting exists: proxies that write Forwarded pass X-Forwarded-For on as sent.
        assert_eq!(
            judged_by(
                ClientAddressHeader::XForwardedFor,
                "forwarded",
                &["for=198.51.100.1"]
            ),
            ip("192.0.2.66")
        );
    }
}
