//! `subscriptions/listen` (MCP 2026-07-28): the notification filter, the acknowledgement, and the
//! per-stream framing (every message carries the subscription id in `params._meta`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::KEEPALIVE_FRAME;
use crate::broadcast::stream::Framing;
use crate::event::{Chunk, StoredEvent};

pub const LISTEN_METHOD: &str = "subscriptions/listen";
pub const LISTEN_PROTOCOL_VERSION: &str = "2026-07-28";
pub const SUBSCRIPTION_ID_KEY: &str = "io.modelcontextprotocol/subscriptionId";
pub const PROTOCOL_VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";

/// JSON-RPC error codes used on `POST /mcp`.
pub mod codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INTERNAL: i64 = -32603;
    pub const SERVER_ERROR: i64 = -32000;
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// What a listen stream delivers: the honoured subset of the client's filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    pub resource_uris: Vec<String>,
}

impl Filter {
    /// Reads `params.notifications`. Unknown keys are ignored; only `true` opts into a list kind;
    /// `resourceSubscriptions` keeps its string entries.
    pub fn from_params(params: Option<&Value>) -> Filter {
        let n = params.and_then(|p| p.get("notifications"));
        let flag = |k: &str| {
            n.and_then(|n| n.get(k))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let resource_uris = n
            .and_then(|n| n.get("resourceSubscriptions"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Filter {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            resource_uris,
        }
    }

    /// The acknowledged subset, as sent back: only what is honoured, no unknown keys.
    pub fn acknowledged(&self) -> Value {
        let mut m = Map::new();
        if self.tools {
            m.insert("toolsListChanged".into(), true.into());
        }
        if self.prompts {
            m.insert("promptsListChanged".into(), true.into());
        }
        if self.resources {
            m.insert("resourcesListChanged".into(), true.into());
        }
        if !self.resource_uris.is_empty() {
            m.insert(
                "resourceSubscriptions".into(),
                self.resource_uris.clone().into(),
            );
        }
        Value::Object(m)
    }

    /// Whether the client opted into this event's kind.
    pub fn wants(&self, ev: &StoredEvent) -> bool {
        match ev.method.as_str() {
            "notifications/tools/list_changed" => self.tools,
            "notifications/prompts/list_changed" => self.prompts,
            "notifications/resources/list_changed" => self.resources,
            "notifications/resources/updated" => {
                !self.resource_uris.is_empty()
                    && serde_json::from_slice::<Value>(&ev.message())
                        .ok()
                        .and_then(|m| {
                            m.pointer("/params/uri")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        })
                        .is_some_and(|uri| self.resource_uris.contains(&uri))
            }
            _ => false,
        }
    }
}

fn data_frame(message: &Value) -> Bytes {
    Bytes::from(format!("data: {message}\n\n"))
}

/// The first message of the stream.
pub fn acknowledgement(subscription_id: &Value, filter: &Filter) -> Bytes {
    data_frame(&json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {
            "_meta": { SUBSCRIPTION_ID_KEY: subscription_id },
            "notifications": filter.acknowledged(),
        }
    }))
}

/// An event as this stream sends it: its message with the subscription id in `params._meta`
/// (no `id:` line: listen streams are not resumable).
pub fn event_frame(ev: &StoredEvent, subscription_id: &Value) -> Bytes {
    let mut message: Value = serde_json::from_slice(&ev.message()).unwrap_or(Value::Null);
    if let Some(obj) = message.as_object_mut() {
        let params = obj.entry("params").or_insert_with(|| json!({}));
        if let Some(params) = params.as_object_mut() {
            let meta = params.entry("_meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert(SUBSCRIPTION_ID_KEY.into(), subscription_id.clone());
            }
        }
    }
    data_frame(&message)
}

/// The graceful end: the `subscriptions/listen` result.
pub fn complete(subscription_id: &Value) -> Bytes {
    data_frame(&json!({
        "jsonrpc": "2.0",
        "id": subscription_id,
        "result": { "_meta": { SUBSCRIPTION_ID_KEY: subscription_id } }
    }))
}

/// A listen stream's framing: the events the client opted into, each carrying the subscription
/// id; the `subscriptions/listen` result ends it.
pub struct ListenFraming {
    pub filter: Filter,
    /// The subscription id: the listen request's JSON-RPC id.
    pub id: Value,
}

impl Framing for ListenFraming {
    const OBSERVES_LAG: bool = false;

    fn events(&mut self, events: Vec<Arc<StoredEvent>>) -> Option<(Chunk, u64)> {
        // Framed per stream: each message carries this subscription's id.
        let mut out = BytesMut::new();
        let mut sent = 0u64;
        for ev in events.iter().filter(|e| self.filter.wants(e)) {
            out.extend_from_slice(&event_frame(ev, &self.id));
            sent += 1;
        }
        (sent > 0).then(|| (Chunk::Bytes(out.freeze()), sent))
    }

    fn keepalive(&self) -> Bytes {
        Bytes::from_static(KEEPALIVE_FRAME)
    }

    /// The graceful end: the `subscriptions/listen` result, then close.
    fn end(&mut self, _cursor: u64) -> Bytes {
        complete(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Target;
    use std::time::SystemTime;

    fn ev(method: &str, params: Option<&str>) -> StoredEvent {
        StoredEvent::new("e", 1, method, params, Target::default(), SystemTime::now())
    }

    #[test]
    fn filter_honours_known_keys_only() {
        let p = json!({"notifications": {"toolsListChanged": true, "promptsListChanged": false,
            "resourceSubscriptions": ["file:///a", 3], "bogus": true}});
        let f = Filter::from_params(Some(&p));
        assert_eq!(
            f.acknowledged(),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["file:///a"]})
        );
        assert!(f.wants(&ev("notifications/tools/list_changed", None)));
        assert!(!f.wants(&ev("notifications/prompts/list_changed", None)));
        assert!(f.wants(&ev(
            "notifications/resources/updated",
            Some(r#"{"uri":"file:///a"}"#)
        )));
        assert!(!f.wants(&ev(
            "notifications/resources/updated",
            Some(r#"{"uri":"file:///b"}"#)
        )));
        assert!(!f.wants(&ev("notifications/custom", None)));
        assert_eq!(Filter::from_params(None).acknowledged(), json!({}));
    }

    #[test]
    fn frames_carry_the_subscription_id() {
        let id = json!(7);
        let f = event_frame(&ev("notifications/tools/list_changed", None), &id);
        let text = std::str::from_utf8(&f).expect("utf8");
        assert!(text.starts_with("data: ") && text.ends_with("\n\n") && !text.contains("\nid:"));
        let msg: Value =
            serde_json::from_str(text.trim_start_matches("data: ").trim()).expect("json");
        assert_eq!(msg["params"]["_meta"][SUBSCRIPTION_ID_KEY], 7);
        let with_meta = ev(
            "notifications/resources/updated",
            Some(r#"{"uri":"u","_meta":{"x":1}}"#),
        );
        let msg: Value = serde_json::from_str(
            std::str::from_utf8(&event_frame(&with_meta, &json!("s")))
                .expect("utf8")
                .trim_start_matches("data: ")
                .trim(),
        )
        .expect("json");
        assert_eq!(
            msg["params"]["_meta"],
            json!({"x": 1, SUBSCRIPTION_ID_KEY: "s"})
        );
        let done: Value = serde_json::from_str(
            std::str::from_utf8(&complete(&json!(7)))
                .expect("utf8")
                .trim_start_matches("data: ")
                .trim(),
        )
        .expect("json");
        assert_eq!(done["id"], 7);
        assert_eq!(done["result"]["_meta"][SUBSCRIPTION_ID_KEY], 7);
    }
}
