//! MCP protocol specifics: protocol versions, resync notifications, priming and control frames;
//! `subscriptions/listen` (2026-07-28) in [`listen`]; the proxy mode's upstream server in [`upstream`], the client that reaches it in
//! [`forward_client`], the bound on its connections in [`in_flight`].

pub mod direct_conn;
pub mod forward_client;
pub mod in_flight;
pub mod listen;
pub mod relay_watch;
pub mod upstream;

use bytes::Bytes;

use crate::event::ListChanged;

/// `MCP-Protocol-Version` values this service speaks on the GET stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProtocolVersion {
    V2025_03_26,
    V2025_06_18,
    V2025_11_25,
}

pub const SUPPORTED_VERSIONS: &str = "2025-03-26, 2025-06-18, 2025-11-25";

impl ProtocolVersion {
    /// Absent means 2025-03-26 (the MCP spec's rule for clients that do not send it).
    pub fn parse(raw: Option<&[u8]>) -> Result<ProtocolVersion, String> {
        match raw {
            None => Ok(ProtocolVersion::V2025_03_26),
            Some(b"2025-03-26") => Ok(ProtocolVersion::V2025_03_26),
            Some(b"2025-06-18") => Ok(ProtocolVersion::V2025_06_18),
            Some(b"2025-11-25") => Ok(ProtocolVersion::V2025_11_25),
            Some(other) => Err(String::from_utf8_lossy(other).into_owned()),
        }
    }

    /// From 2025-11-25 on, clients expect a priming event (id + empty data).
    pub fn primes(self) -> bool {
        self >= ProtocolVersion::V2025_11_25
    }
}

/// One notification per list kind: makes any MCP client refetch everything.
pub const RESYNC_METHODS: [&str; 3] = ListChanged::METHODS;

/// The JSON-RPC text of a parameterless notification.
pub fn notification_json(method: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":{}}}"#,
        serde_json::Value::from(method)
    )
}

/// The resync: the three notifications, then the cursor moved to `head_id` (a priming frame for
/// ≥ 2025-11-25; an `id:` on the last notification for older clients).
pub fn resync_frames(head_id: &str, version: ProtocolVersion) -> Bytes {
    let mut out = String::new();
    for (i, method) in RESYNC_METHODS.iter().enumerate() {
        let last = i + 1 == RESYNC_METHODS.len();
        if last && !version.primes() {
            out.push_str("id: ");
            out.push_str(head_id);
            out.push('\n');
        }
        out.push_str("data: ");
        out.push_str(&notification_json(method));
        out.push_str("\n\n");
    }
    if version.primes() {
        out.push_str(&priming_frame(head_id, None));
    }
    Bytes::from(out)
}

/// `id: <head>` with empty data (not dispatched by clients, but it sets their cursor).
pub fn priming_frame(head_id: &str, retry_ms: Option<u64>) -> String {
    match retry_ms {
        Some(ms) => format!("id: {head_id}\nretry: {ms}\ndata: \n\n"),
        None => format!("id: {head_id}\ndata: \n\n"),
    }
}

/// The last block of a stream the server ends: when to reconnect.
pub fn retry_frame(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

pub const KEEPALIVE_FRAME: &[u8] = b": keepalive\n\n";

/// A reconnect hint uniform in [R, 2R], so clients ended together do not return together.
pub fn jittered_retry_ms(base_ms: u64) -> u64 {
    use rand::Rng;
    rand::rng().random_range(base_ms..=base_ms.saturating_mul(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            ProtocolVersion::parse(None),
            Ok(ProtocolVersion::V2025_03_26)
        );
        assert!(ProtocolVersion::parse(Some(b"2025-11-25"))
            .expect("ok")
            .primes());
        assert!(!ProtocolVersion::parse(Some(b"2025-06-18"))
            .expect("ok")
            .primes());
        assert!(ProtocolVersion::parse(Some(b"2024-11-05")).is_err());
    }

    #[test]
    fn resync_moves_the_cursor_for_both_generations() {
        let old = resync_frames("e-9", ProtocolVersion::V2025_06_18);
        let old = std::str::from_utf8(&old).expect("utf8");
        assert_eq!(old.matches("id: e-9").count(), 1);
        assert!(old.ends_with("id: e-9\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/prompts/list_changed\"}\n\n"));
        let new = resync_frames("e-9", ProtocolVersion::V2025_11_25);
        let new = std::str::from_utf8(&new).expect("utf8");
        assert!(new.ends_with("id: e-9\ndata: \n\n"));
        assert_eq!(new.matches("id:").count(), 1);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let r = jittered_retry_ms(1000);
            assert!((1000..=2000).contains(&r));
        }
        assert_eq!(jittered_retry_ms(0), 0);
    }
}
