//! Browser origin checks (contract §2 `FANOUT_ALLOWED_ORIGINS`, §4.1): a request whose `Origin` is
//! not allowed gets `403` on every endpoint. Allowed cross-origin requests get CORS headers, and
//! their preflights are answered, by the edge layer ([`edge`](super::edge)) with these rules.

use axum::http::{header, HeaderMap};

use crate::config::AllowedHosts;

pub const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
pub const ALLOW_HEADERS: &str =
    "authorization, content-type, accept, last-event-id, mcp-session-id, mcp-protocol-version, mcp-method, idempotency-key";
pub const EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version";

/// No `Origin`: allowed. Otherwise it must be listed, or same-origin: the same scheme, host and
/// port as the request (see [`request_scheme`]; a missing port is the scheme's default).
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    // Two: which one a proxy in front checked is anyone's guess.
    let Ok(origin) = crate::auth::one_header(headers, header::ORIGIN) else {
        return false;
    };
    let Some(origin) = origin else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if allowed.iter().any(|a| a == "*" || *a == origin) {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let scheme = request_scheme(headers);
    match (
        SchemeHostPort::parse_origin(&origin),
        SchemeHostPort::of(scheme, &host.to_ascii_lowercase()),
    ) {
        (Some(o), Some(r)) => o == r,
        _ => false,
    }
}

/// Whether the request's `Host` (HTTP/2: its `:authority`, copied into `Host` by the server) is one
/// `allowed` lists — an entry without a port matches the name on any port, `name:port` that port
/// only — or an IP address (which no page's name can be rebound to). A request without a `Host` is
/// refused. Names are compared without regard to case.
pub fn host_allowed(headers: &HeaderMap, allowed: &AllowedHosts) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host = host.trim();
    let name = match host.rsplit_once(':') {
        // A colon inside brackets belongs to an IPv6 address, not to a port.
        Some((name, port)) if !port.contains(']') => name,
        _ => host,
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    allowed
        .names
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
}

/// The scheme the client used: `https` when the nearest proxy says so in `X-Forwarded-Proto`
/// (its first value), else `http`, the only one this listener speaks. With
/// `FANOUT_TRUSTED_PROXIES` set, only a listed proxy's header is left for this to read (the edge
/// removes anyone else's); unset, it is believed from any peer: a browser cannot set it on a
/// cross-origin request without a preflight, and the preflight, which carries no such header, is
/// itself refused by the origin check.
pub fn request_scheme(headers: &HeaderMap) -> &'static str {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    match forwarded {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    }
}

/// An origin's scheme, host and port (the default port made explicit).
#[derive(Debug, PartialEq, Eq)]
struct SchemeHostPort<'a> {
    scheme: &'a str,
    host: &'a str,
    port: u16,
}

impl<'a> SchemeHostPort<'a> {
    /// `scheme://host[:port]`, lower-cased; only `http` and `https`.
    fn parse_origin(origin: &'a str) -> Option<SchemeHostPort<'a>> {
        let (scheme, authority) = origin.split_once("://")?;
        SchemeHostPort::of(scheme, authority)
    }

    /// `authority` (`host`, `host:port`, `[v6]`, `[v6]:port`) under `scheme`.
    fn of(scheme: &'a str, authority: &'a str) -> Option<SchemeHostPort<'a>> {
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let (host, port) = match authority.rsplit_once(':') {
            // A colon inside brackets belongs to an IPv6 address, not to a port.
            Some((h, p)) if !p.contains(']') => (h, Some(p)),
            _ => (authority, None),
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return None;
        }
        let port = match port {
            None => default_port,
            Some(p) => p.parse().ok()?,
        };
        Some(SchemeHostPort { scheme, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            m.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        m
    }

    #[test]
    fn rules() {
        let none: Vec<String> = vec![];
        let listed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(&h(None, "svc:8080"), &none));
        assert!(origin_allowed(
            &h(Some("http://svc:8080"), "svc:8080"),
            &none
        ));
        assert!(!origin_allowed(
            &h(Some("https://evil.example"), "svc:8080"),
            &none
        ));
        assert!(!origin_allowed(&h(Some("null"), "svc:8080"), &none));
        assert!(origin_allowed(
            &h(Some("https://app.example"), "svc:8080"),
            &listed
        ));
        assert!(origin_allowed(
            &h(Some("HTTPS://APP.EXAMPLE/"), "svc:8080"),
            &listed
        ));
        assert!(!origin_allowed(
            &h(Some("https://app.example.evil"), "svc:8080"),
            &listed
        ));
    }

    #[test]
    fn same_origin_is_scheme_host_and_port() {
        let none: Vec<String> = vec![];
        let ok = |origin: &'static str, host: &'static str, proto: Option<&'static str>| {
            let mut m = h(Some(origin), host);
            if let Some(p) = proto {
                m.insert("x-forwarded-proto", HeaderValue::from_static(p));
            }
            origin_allowed(&m, &none)
        };
        assert!(ok("http://127.0.0.1:8080", "127.0.0.1:8080", None));
        assert!(!ok("https://127.0.0.1:8080", "127.0.0.1:8080", None));
        assert!(ok(
            "https://127.0.0.1:8080",
            "127.0.0.1:8080",
            Some("https")
        ));
        assert!(!ok(
            "http://127.0.0.1:8080",
            "127.0.0.1:8080",
            Some("https")
        ));
        assert!(ok("https://svc", "svc", Some("https, http")));
        assert!(ok("http://svc:80", "svc", None));
        assert!(ok("http://svc", "svc:80", None));
        assert!(ok("https://svc:443", "svc", Some("HTTPS")));
        assert!(!ok("http://svc:8081", "svc:8080", None));
        assert!(!ok("http://svc", "svc:8080", None));
        assert!(ok("http://[::1]:8080", "[::1]:8080", None));
        assert!(!ok("http://[::1]", "[::1]:8080", None));
        assert!(!ok("ftp://svc:8080", "svc:8080", None));
        assert!(!ok("http://user@svc:8080", "svc:8080", None));
        assert!(!ok("http://svc:8080/x", "svc:8080", None));
        assert!(!ok("http://svc:x", "svc:x", None));
    }

    #[test]
    fn a_host_is_allowed_by_name_on_any_port_or_by_name_and_port() {
        let allowed = AllowedHosts {
            names: ["fanout.example", "api.example:8443"]
                .map(String::from)
                .to_vec(),
        };
        let ok = |host: &'static str| host_allowed(&h(None, host), &allowed);
        assert!(ok("fanout.example"));
        assert!(ok("FANOUT.example:8080"));
        assert!(ok("api.example:8443"));
        assert!(!ok("api.example:443"));
        assert!(!ok("api.example"));
        assert!(ok("[::1]:9000"));
        assert!(ok("[::1]"));
        assert!(!ok("evil.example"));
        assert!(!ok("fanout.example.evil.example"));
        assert!(!host_allowed(&HeaderMap::new(), &allowed), "no Host");
        // IP addresses, whatever the list: no name can be rebound to one.
        for host in ["127.0.0.1", "127.0.0.2:80", "10.1.2.3", "[fe80::1]"] {
            assert!(ok(host), "{host}");
        }
        for host in ["localhost", "localhost.evil.example", "127.0.0.1.nip.io"] {
            assert!(!ok(host), "{host}");
        }
    }
}
