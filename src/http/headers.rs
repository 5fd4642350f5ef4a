//! Parsing of the request headers the subscriber endpoints read (contract §3.2, §3.5).

use axum::http::{header, HeaderMap};

use super::error::AppError;
use crate::event::input::{validate_visible_ascii, MAX_SESSION_BYTES};
use crate::event::Cursor;
use crate::mcp::ProtocolVersion;

pub const MCP_SESSION_ID: &str = "mcp-session-id";
pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const LAST_EVENT_ID: &str = "last-event-id";

/// `Accept` must list `text/event-stream` (a bare `*/*` does not count).
pub fn require_event_stream(headers: &HeaderMap) -> Result<(), AppError> {
    let listed = headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|item| {
                item.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            })
        })
    });
    if listed {
        Ok(())
    } else {
        Err(AppError::NotAcceptable)
    }
}

pub fn protocol_version(headers: &HeaderMap) -> Result<ProtocolVersion, AppError> {
    ProtocolVersion::parse(headers.get(MCP_PROTOCOL_VERSION).map(|v| v.as_bytes()))
        .map_err(AppError::UnsupportedProtocolVersion)
}

/// `Mcp-Session-Id`: visible ASCII, at most 128 bytes.
pub fn session_id(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(v) = crate::auth::one_header(headers, MCP_SESSION_ID)
        .map_err(|_| AppError::InvalidSessionId("is named more than once".into()))?
    else {
        return Ok(None);
    };
    let s = std::str::from_utf8(v.as_bytes())
        .map_err(|_| AppError::InvalidSessionId("must be visible ASCII".into()))?;
    validate_visible_ascii(s, MAX_SESSION_BYTES).map_err(AppError::InvalidSessionId)?;
    Ok(Some(s.to_owned()))
}

/// The cursor: the `Last-Event-ID` header, else the query's `last_event_id` (a browser's first
/// connect).
pub fn cursor(headers: &HeaderMap, query_value: Option<&str>) -> Result<Cursor, AppError> {
    let raw = headers
        .get(LAST_EVENT_ID)
        .map(|v| v.as_bytes())
        .or(query_value.map(str::as_bytes));
    Ok(Cursor::parse(raw)?)
}

/// The first value of `name` in a raw query string (percent-decoded; never fails).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn accept_must_list_event_stream() {
        assert!(require_event_stream(&h(&[("accept", "text/event-stream")])).is_ok());
        assert!(require_event_stream(&h(&[(
            "accept",
            "application/json, text/event-stream;q=0.9"
        )]))
        .is_ok());
        assert!(require_event_stream(&h(&[("accept", "*/*")])).is_err());
        assert!(require_event_stream(&h(&[])).is_err());
    }

    #[test]
    fn header_cursor_wins_over_query() {
        let c = cursor(&h(&[("last-event-id", "e-1")]), Some("e-2")).expect("ok");
        assert_eq!(
            c,
            Cursor::At {
                epoch: "e".into(),
                seq: 1
            }
        );
        let c = cursor(&h(&[]), Some("e-2")).expect("ok");
        assert_eq!(
            c,
            Cursor::At {
                epoch: "e".into(),
                seq: 2
            }
        );
        assert_eq!(
            query_param(Some("a=1&last_event_id=x%2Dy-3"), "last_event_id").as_deref(),
            Some("x-y-3")
        );
    }

    #[test]
    fn session_ids_are_checked() {
        assert_eq!(
            session_id(&h(&[("mcp-session-id", "abc")]))
                .expect("ok")
                .as_deref(),
            Some("abc")
        );
        assert!(session_id(&h(&[("mcp-session-id", "a b")])).is_err());
        let long: &'static str = Box::leak("x".repeat(129).into_boxed_str());
        assert!(session_id(&h(&[("mcp-session-id", long)])).is_err());
    }
}
