//! Fuzzes every parser that reads request input: the publish body, cursors, and the headers of
//! the subscriber endpoints. None may panic, whatever the bytes.
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mcp_fanout::event::input::{parse_publish_body, PublishLimits};
use mcp_fanout::event::Cursor;
use mcp_fanout::http::headers;

fuzz_target!(|data: &[u8]| {
    let limits = PublishLimits {
        max_payload_bytes: 65_536,
        max_batch: 1000,
    };
    let _ = parse_publish_body(data, limits);
    let _ = Cursor::parse(Some(data));
    if let Ok(v) = HeaderValue::from_bytes(data) {
        let mut h = HeaderMap::new();
        for name in ["accept", "mcp-session-id", "mcp-protocol-version", "last-event-id"] {
            h.insert(name, v.clone());
        }
        let _ = headers::require_event_stream(&h);
        let _ = headers::protocol_version(&h);
        let _ = headers::session_id(&h);
        let _ = headers::cursor(&h, std::str::from_utf8(data).ok());
    }
    if let Ok(q) = std::str::from_utf8(data) {
        let _ = headers::query_param(Some(q), "after");
    }
});
