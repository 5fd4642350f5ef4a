//! `subscriptions/listen` (MCP 2026-07-28): the notification filter, the acknowledgement, and the
//! per-stream framing (every message carries the subscription id in `params._meta`).

use std::sync::Arc;

use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::KEEPALIVE_FRAME;
use crate::broadcast::stream::Framing;
use crate::event::{Chunk, ListChanged, StoredEvent};

pub const LISTEN_METHOD: &str = "subscriptions/listen";
pub const LISTEN_PROTOCOL_VERSION: &str = "2026-07-28";
pub const SUBSCRIPTION_ID_KEY: &str = "io.modelcontextprotocol/subscriptionId";
pub const PROTOCOL_VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";

/// JSON-RPC error codes used on `POST /mcp`.
pub mod codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
    pub const SERVER_ERROR: i64 = -32000;
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

    /// The code's name: the `code` label of the `http_errors` metric.
    pub fn name(code: i64) -> &'static str {
        match code {
            PARSE_ERROR => "parse_error",
            INVALID_REQUEST => "invalid_request",
            METHOD_NOT_FOUND => "method_not_found",
            INVALID_PARAMS => "invalid_params",
            INTERNAL => "internal_error",
            SERVER_ERROR => "server_error",
            HEADER_MISMATCH => "header_mismatch",
            UNSUPPORTED_PROTOCOL_VERSION => "unsupported_protocol_version",
            _ => "jsonrpc_error",
        }
    }
}

/// A `POST /mcp` request that is not answered with a stream: the JSON-RPC error it gets (boxed
/// where returned: it is large).
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// The request's id (`null` when it has none that can be trusted).
    pub id: Value,
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl Refusal {
    fn new(status: StatusCode, id: &Value, code: i64, message: impl Into<String>) -> Box<Refusal> {
        Box::new(Refusal {
            status,
            id: id.clone(),
            code,
            message: message.into(),
            data: None,
        })
    }

    fn invalid(message: &str) -> Box<Refusal> {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            codes::INVALID_REQUEST,
            message,
        )
    }
}

/// What a valid JSON-RPC message on `POST /mcp` asks for.
#[derive(Debug)]
pub enum Request {
    /// A notification: nothing in this protocol revision needs one from clients here.
    Notification,
    /// `subscriptions/listen`, with its id (the subscription id) and its filter.
    Listen { id: Value, filter: Filter },
}

/// Validates a JSON-RPC message against its `Mcp-Method` and `MCP-Protocol-Version` headers
/// (contract §3.3): a 2.0 request or notification, an id that is a string or a number, headers that
/// match the body, `subscriptions/listen` at 2026-07-28 (any other method is not found).
pub fn validate(
    msg: &Value,
    mcp_method: Option<&[u8]>,
    protocol_version: Option<&[u8]>,
) -> Result<Request, Box<Refusal>> {
    let (method, id) = match (&msg["jsonrpc"], &msg["method"], msg.get("id")) {
        (Value::String(v), Value::String(m), id) if v == "2.0" => (m.as_str(), id),
        _ => {
            return Err(Refusal::invalid(
                "Invalid Request: expected a JSON-RPC 2.0 request with a string method",
            ))
        }
    };
    let Some(id) = id else {
        return Ok(Request::Notification);
    };
    if !(id.is_string() || exact_integer(id)) {
        return Err(Refusal::invalid(
            "Invalid Request: id must be a string or an integer (within 64 bits, echoed exactly)",
        ));
    }
    let version = matching_headers(msg, method, id, mcp_method, protocol_version)?;
    if method != LISTEN_METHOD {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            id,
            codes::METHOD_NOT_FOUND,
            format!("Method not found: {method} (this service answers only {LISTEN_METHOD})"),
        ));
    }
    if id_bytes(id) > MAX_SUBSCRIPTION_ID_BYTES {
        return Err(Refusal::invalid(
            "Invalid Request: a subscriptions/listen id must be at most 256 bytes (it is the \
             subscription id, kept for the stream's life and sent in each of its messages)",
        ));
    }
    if version != LISTEN_PROTOCOL_VERSION {
        let mut e = Refusal::new(
            StatusCode::BAD_REQUEST,
            id,
            codes::UNSUPPORTED_PROTOCOL_VERSION,
            "Unsupported protocol version",
        );
        e.data = Some(json!({ "supported": [LISTEN_PROTOCOL_VERSION], "requested": version }));
        return Err(e);
    }
    let filter = Filter::from_params(msg.get("params")).map_err(|reason| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            id,
            codes::INVALID_PARAMS,
            format!("Invalid params: {reason}"),
        )
    })?;
    Ok(Request::Listen {
        id: id.clone(),
        filter,
    })
}

/// The headers a request must carry, equal to its body: `Mcp-Method` to its method, and
/// `MCP-Protocol-Version` to the version in its `params._meta`, if any. Returns the version.
fn matching_headers(
    msg: &Value,
    method: &str,
    id: &Value,
    mcp_method: Option<&[u8]>,
    protocol_version: Option<&[u8]>,
) -> Result<String, Box<Refusal>> {
    let mismatch = |m: String| Refusal::new(StatusCode::BAD_REQUEST, id, codes::HEADER_MISMATCH, m);
    match mcp_method {
        None => {
            return Err(mismatch(
                "Header mismatch: the Mcp-Method header is required".into(),
            ))
        }
        Some(h) if h != method.as_bytes() => {
            return Err(mismatch(format!(
            "Header mismatch: Mcp-Method header value '{}' does not match body value '{method}'",
            String::from_utf8_lossy(h)
        )))
        }
        Some(_) => {}
    }
    let Some(version) = protocol_version.map(|v| String::from_utf8_lossy(v).into_owned()) else {
        return Err(mismatch(
            "Header mismatch: the MCP-Protocol-Version header is required".into(),
        ));
    };
    if let Some(body_version) = msg
        .pointer("/params/_meta")
        .and_then(|m| m.get(PROTOCOL_VERSION_META_KEY))
    {
        if body_version.as_str() != Some(version.as_str()) {
            return Err(mismatch(format!(
                "Header mismatch: MCP-Protocol-Version header value '{version}' does not match body value {body_version}"
            )));
        }
    }
    Ok(version)
}

/// Most bytes of a listen request's id (a string's UTF-8, a number as written): it is the
/// subscription id, kept as long as the stream and copied into each message (a 1 MB id was
/// ~1.1 MB per stream, and each event ~1 GB of framing at 1,000 such streams).
pub const MAX_SUBSCRIPTION_ID_BYTES: usize = 256;

/// An id MCP allows as a number (an integer) that is echoed as the number it is: one held exactly
/// in 64 bits, or written with a zero fraction and within 2^53 (`1.0`). A larger integer or a
/// fraction would come back as a different number (`12345678901234567890123` as
/// `1.2345678901234568e22`), and a client could not match the answer to its request.
fn exact_integer(id: &Value) -> bool {
    const EXACT_IN_F64: f64 = 9_007_199_254_740_992.0; // 2^53
    let Value::Number(n) = id else {
        return false;
    };
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.fract() == 0.0 && f.abs() <= EXACT_IN_F64)
}

fn id_bytes(id: &Value) -> usize {
    match id {
        Value::String(s) => s.len(),
        other => other.to_string().len(),
    }
}

/// Most URIs one listen stream's `resourceSubscriptions` may name.
pub const MAX_RESOURCE_SUBSCRIPTIONS: usize = 256;

/// Most bytes of URIs one listen stream's `resourceSubscriptions` may hold, all together: a
/// filter lives as long as its stream, so its size is a subscriber's memory (a 1 MiB body of
/// URIs was ~3 MiB per stream; 300 of them took a replica from 21 to 891 MiB).
pub const MAX_RESOURCE_SUBSCRIPTION_BYTES: usize = 16 * 1024;

/// What a listen stream delivers: the honoured subset of the client's filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    /// Each URI once, in the client's order.
    pub resource_uris: Vec<String>,
}

impl Filter {
    /// Reads `params.notifications`. Unknown keys are ignored; only `true` opts into a list kind;
    /// `resourceSubscriptions` keeps its string entries, each once, within
    /// [`MAX_RESOURCE_SUBSCRIPTIONS`] and [`MAX_RESOURCE_SUBSCRIPTION_BYTES`] (else the reason).
    pub fn from_params(params: Option<&Value>) -> Result<Filter, String> {
        let n = params.and_then(|p| p.get("notifications"));
        let flag = |k: &str| {
            n.and_then(|n| n.get(k))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let mut resource_uris: Vec<String> = Vec::new();
        let mut bytes = 0usize;
        let uris = n
            .and_then(|n| n.get("resourceSubscriptions"))
            .and_then(Value::as_array);
        for uri in uris.into_iter().flatten().filter_map(Value::as_str) {
            if resource_uris.iter().any(|u| u == uri) {
                continue;
            }
            bytes += uri.len();
            if resource_uris.len() == MAX_RESOURCE_SUBSCRIPTIONS
                || bytes > MAX_RESOURCE_SUBSCRIPTION_BYTES
            {
                return Err(format!(
                    "notifications.resourceSubscriptions names at most {MAX_RESOURCE_SUBSCRIPTIONS} \
                     URIs of at most {MAX_RESOURCE_SUBSCRIPTION_BYTES} bytes together; open more \
                     listen streams for more"
                ));
            }
            resource_uris.push(uri.to_owned());
        }
        Ok(Filter {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            resource_uris,
        })
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
        if let Some(list) = ListChanged::of(&ev.method) {
            return match list {
                ListChanged::Tools => self.tools,
                ListChanged::Prompts => self.prompts,
                ListChanged::Resources => self.resources,
            };
        }
        ev.method == "notifications/resources/updated"
            && !self.resource_uris.is_empty()
            && serde_json::from_slice::<Value>(&ev.message())
                .ok()
                .and_then(|m| {
                    m.pointer("/params/uri")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .is_some_and(|uri| self.resource_uris.contains(&uri))
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
/// (no `id:` line: listen streams are not resumable). `meta` is the stream's
/// [`meta_member`]: the message's bytes are copied with it spliced in as the last member of
/// `params` — nothing parsed or encoded per stream and event — unless `params` is not an object
/// or may name `_meta` already, which takes the parse.
pub fn event_frame(ev: &StoredEvent, meta: &str, subscription_id: &Value) -> Bytes {
    let message = ev.message();
    let (head, tail): (&[u8], &str) = match ev.params() {
        // `{"jsonrpc":"2.0","method":…}` → `…,"params":{<meta>}}`
        None => (&message[..message.len() - 1], ",\"params\":{"),
        Some(p) if p.starts_with(b"{") && p.ends_with(b"}") && !contains(&p, b"\"_meta\"") => {
            // `…,"params":{…}}` → `…,"params":{…,<meta>}}`
            let head = &message[..message.len() - 2];
            (head, if p.len() == 2 { "" } else { "," })
        }
        Some(_) => return event_frame_parsed(ev, subscription_id),
    };
    let mut out = BytesMut::with_capacity(head.len() + meta.len() + 16);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(head);
    out.extend_from_slice(tail.as_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(b"}}\n\n");
    out.freeze()
}

/// `"_meta":{"io.modelcontextprotocol/subscriptionId":<id>}`: what each of a stream's messages
/// gets in `params`, encoded once per stream.
pub fn meta_member(subscription_id: &Value) -> String {
    format!(
        "\"_meta\":{}",
        json!({ SUBSCRIPTION_ID_KEY: subscription_id })
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// [`event_frame`] by parsing the message and adding the id to its `params._meta`.
fn event_frame_parsed(ev: &StoredEvent, subscription_id: &Value) -> Bytes {
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
    filter: Filter,
    /// The subscription id: the listen request's JSON-RPC id.
    id: Value,
    /// [`meta_member`] of the id.
    meta: String,
}

impl ListenFraming {
    pub fn new(filter: Filter, id: Value) -> ListenFraming {
        let meta = meta_member(&id);
        ListenFraming { filter, id, meta }
    }
}

impl Framing for ListenFraming {
    fn events(&mut self, events: Vec<Arc<StoredEvent>>) -> Option<(Chunk, u64)> {
        // Framed per stream: each message carries this subscription's id.
        let mut out = BytesMut::new();
        let mut sent = 0u64;
        for ev in events.iter().filter(|e| self.filter.wants(e)) {
            out.extend_from_slice(&event_frame(ev, &self.meta, &self.id));
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
        let f = Filter::from_params(Some(&p)).expect("a filter");
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
        assert_eq!(
            Filter::from_params(None).expect("no filter").acknowledged(),
            json!({})
        );
    }

    #[test]
    fn resource_subscriptions_are_bounded() {
        let filter = |uris: Vec<String>| {
            Filter::from_params(Some(
                &json!({"notifications": {"resourceSubscriptions": uris}}),
            ))
        };
        let many = |n: usize, len: usize| -> Vec<String> {
            (0..n).map(|i| format!("{i:0>len$}")).collect()
        };
        let at = filter(many(MAX_RESOURCE_SUBSCRIPTIONS, 64)).expect("at the bounds");
        assert_eq!(at.resource_uris.len(), MAX_RESOURCE_SUBSCRIPTIONS);
        assert!(
            filter(many(MAX_RESOURCE_SUBSCRIPTIONS + 1, 8)).is_err(),
            "one URI too many"
        );
        assert!(
            filter(many(1, MAX_RESOURCE_SUBSCRIPTION_BYTES + 1)).is_err(),
            "too many bytes"
        );
        // The same URI named again counts once.
        let same = filter(vec!["file:///a".to_owned(); 10_000]).expect("one URI");
        assert_eq!(same.resource_uris, vec!["file:///a".to_owned()]);
    }

    /// The splice gives the bytes the parse gives (for params stored compact, as the log stores
    /// them), and leaves to the parse what it cannot splice.
    #[test]
    fn spliced_frames_are_the_parsed_ones() {
        let ids = [json!(7), json!("sub-1"), json!("q\"uote\\é"), json!(-2.5)];
        let params = [
            None,
            Some("{}"),
            Some(r#"{"uri":"file:///a"}"#),
            Some(r#"{"b":[1,{"c":null}],"a":"x\ny","z":{"_metaX":1}}"#),
            Some(r#"{"uri":"u","_meta":{"x":1}}"#),
            Some(r#"{"nested":{"_meta":{"x":1}}}"#),
            Some(r#"[1,2]"#),
        ];
        for id in &ids {
            for p in params {
                let e = ev("notifications/resources/updated", p);
                assert_eq!(
                    event_frame(&e, &meta_member(id), id),
                    event_frame_parsed(&e, id),
                    "params {p:?}, id {id}"
                );
            }
        }
    }

    #[test]
    fn frames_carry_the_subscription_id() {
        let id = json!(7);
        let f = event_frame(
            &ev("notifications/tools/list_changed", None),
            &meta_member(&id),
            &id,
        );
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
            std::str::from_utf8(&event_frame(
                &with_meta,
                &meta_member(&json!("s")),
                &json!("s"),
            ))
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

    #[test]
    fn requests_are_validated_against_their_headers() {
        let listen = json!({"jsonrpc": "2.0", "id": 1, "method": LISTEN_METHOD,
            "params": {"_meta": {PROTOCOL_VERSION_META_KEY: LISTEN_PROTOCOL_VERSION}}});
        let m = Some(LISTEN_METHOD.as_bytes());
        let v = Some(LISTEN_PROTOCOL_VERSION.as_bytes());
        assert!(matches!(
            validate(&listen, m, v),
            Ok(Request::Listen { id, .. }) if id == 1
        ));
        let note = json!({"jsonrpc": "2.0", "method": "notifications/x"});
        assert!(matches!(
            validate(&note, None, None),
            Ok(Request::Notification)
        ));
        let refused = |msg: &Value, m, v| validate(msg, m, v).err().map(|r| (r.status, r.code));
        let bad = json!({"jsonrpc": "1.0", "id": 1, "method": LISTEN_METHOD});
        assert_eq!(
            refused(&bad, m, v),
            Some((StatusCode::BAD_REQUEST, codes::INVALID_REQUEST))
        );
        let bad_id = json!({"jsonrpc": "2.0", "id": [1], "method": LISTEN_METHOD});
        assert_eq!(
            refused(&bad_id, m, v),
            Some((StatusCode::BAD_REQUEST, codes::INVALID_REQUEST))
        );
        for (m, v) in [
            (None, v),
            (Some(&b"tools/list"[..]), v),
            (m, None),
            (m, Some(&b"2025-11-25"[..])),
        ] {
            assert_eq!(
                refused(&listen, m, v),
                Some((StatusCode::BAD_REQUEST, codes::HEADER_MISMATCH))
            );
        }
        let other = json!({"jsonrpc": "2.0", "id": "a", "method": "tools/list"});
        assert_eq!(
            refused(&other, Some(b"tools/list"), v),
            Some((StatusCode::NOT_FOUND, codes::METHOD_NOT_FOUND))
        );
        let old = json!({"jsonrpc": "2.0", "id": 1, "method": LISTEN_METHOD});
        assert_eq!(
            refused(&old, m, Some(b"2025-11-25")),
            Some((StatusCode::BAD_REQUEST, codes::UNSUPPORTED_PROTOCOL_VERSION))
        );
        // The subscription id: at most 256 bytes (UTF-8), kept for the stream's life.
        let with_id = |id: Value| {
            let mut l = listen.clone();
            l["id"] = id;
            l
        };
        assert!(validate(&with_id(json!("é".repeat(128))), m, v).is_ok());
        assert!(validate(&with_id(json!(u64::MAX)), m, v).is_ok());
        assert!(validate(&with_id(json!(i64::MIN)), m, v).is_ok());
        // Numbers only as integers it echoes exactly (MCP ids are strings or integers).
        let parsed = |text: &str| -> Value {
            let written = with_id(json!("ID")).to_string();
            serde_json::from_str(&written.replacen(r#""ID""#, text, 1)).expect("JSON")
        };
        assert!(validate(&parsed("1.0"), m, v).is_ok());
        for inexact in ["12345678901234567890123", "1.5", "-0.25", "1e300"] {
            assert_eq!(
                refused(&parsed(inexact), m, v),
                Some((StatusCode::BAD_REQUEST, codes::INVALID_REQUEST)),
                "{inexact}"
            );
        }
        assert_eq!(
            refused(&with_id(json!(format!("{}x", "é".repeat(128)))), m, v),
            Some((StatusCode::BAD_REQUEST, codes::INVALID_REQUEST))
        );
    }

    #[test]
    fn the_listen_framing_writes_only_what_the_filter_wants() {
        let mut framing = ListenFraming::new(
            Filter {
                tools: true,
                ..Filter::default()
            },
            json!(3),
        );
        let unwanted = vec![Arc::new(ev("notifications/prompts/list_changed", None))];
        assert!(
            framing.events(unwanted).is_none(),
            "nothing to write: read on"
        );
        let mixed = vec![
            Arc::new(ev("notifications/tools/list_changed", None)),
            Arc::new(ev("notifications/custom", None)),
        ];
        let (chunk, delivered) = framing.events(mixed).expect("a write");
        assert_eq!(delivered, 1);
        assert_eq!(
            chunk.into_bytes(),
            event_frame_parsed(&ev("notifications/tools/list_changed", None), &json!(3))
        );
        assert_eq!(framing.end(0), complete(&json!(3)));
    }
}
