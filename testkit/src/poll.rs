//! The `/poll` answer (contract §3.4), with each `message` kept as the exact JSON text the server sent,
//! so it can be compared byte for byte with the `data:` line of the same event on a stream.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::Result;

/// One event of a `/poll` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollEvent {
    /// The event id; `None` for resync notifications (`"id": null`).
    pub id: Option<String>,
    /// The `message` exactly as it appeared in the answer's bytes.
    pub message: String,
}

impl PollEvent {
    /// `message` parsed.
    pub fn json(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.message)?)
    }

    /// The JSON-RPC method of `message`.
    pub fn method(&self) -> Option<String> {
        self.json()
            .ok()?
            .get("method")?
            .as_str()
            .map(ToString::to_string)
    }
}

/// A `/poll` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollAnswer {
    /// The events, in order.
    pub events: Vec<PollEvent>,
    /// The id to pass as `after` next time.
    pub cursor: String,
    /// More events are waiting.
    pub more: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    events: Vec<WireEvent<'a>>,
    cursor: String,
    more: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent<'a> {
    id: Option<String>,
    #[serde(borrow)]
    message: &'a RawValue,
}

impl PollAnswer {
    /// Parses an answer body; unknown top-level or per-event fields are an error (the shape is
    /// part of the contract).
    pub fn parse(body: &[u8]) -> Result<PollAnswer> {
        let wire: Wire<'_> = serde_json::from_slice(body)?;
        Ok(PollAnswer {
            events: wire
                .events
                .into_iter()
                .map(|e| PollEvent {
                    id: e.id,
                    message: e.message.get().to_string(),
                })
                .collect(),
            cursor: wire.cursor,
            more: wire.more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_message_bytes() {
        let body = br#"{"events":[{"id":"e-1","message":{"jsonrpc":"2.0","method":"notifications/x","params":{"b":1, "a":"\u00e9"}}},{"id":null,"message":{"method":"m"}}],"cursor":"e-1","more":false}"#;
        let a = PollAnswer::parse(body).expect("parse");
        assert_eq!(
            a.events[0].message,
            r#"{"jsonrpc":"2.0","method":"notifications/x","params":{"b":1, "a":"\u00e9"}}"#
        );
        assert_eq!(a.events[1].id, None);
        assert_eq!(a.cursor, "e-1");
        assert!(!a.more);
    }
}
